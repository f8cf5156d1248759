//! gRPC status codes: the one type the mesh reads, writes, classifies and configures them with.
//!
//! A [`Code`] is what a `grpc-status` header or trailer carries. The 17 codes gRPC defines
//! have names ([`Code::UNAVAILABLE`], and `"unavailable"` in configuration); a peer may still
//! send a number outside them, which is kept as it came (metrics show it as it is) and counts
//! as the application's answer, like any code that is not a [failure](Code::is_failure).
//!
//! Renderings:
//!
//! - on the wire and in metrics labels, the decimal number ([`Display`](std::fmt::Display),
//!   `HeaderValue::from(code)`): `14`;
//! - in configuration, the name in kebab case (`"unavailable"`, `"resource-exhausted"`); a
//!   name in upper or snake case (`UNAVAILABLE`, `resource_exhausted`) or the number (`14`)
//!   reads too. Only the 17 defined codes are accepted there.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

/// The header (or trailer) that carries a gRPC status.
pub const GRPC_STATUS: &str = "grpc-status";

/// A gRPC status code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(u16);

/// The names of the defined codes, by number, in kebab case.
const NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

impl Code {
    /// OK (0): not an error.
    pub const OK: Code = Code(0);
    /// CANCELLED (1): the caller cancelled.
    pub const CANCELLED: Code = Code(1);
    /// UNKNOWN (2).
    pub const UNKNOWN: Code = Code(2);
    /// INVALID_ARGUMENT (3).
    pub const INVALID_ARGUMENT: Code = Code(3);
    /// DEADLINE_EXCEEDED (4).
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    /// NOT_FOUND (5).
    pub const NOT_FOUND: Code = Code(5);
    /// ALREADY_EXISTS (6).
    pub const ALREADY_EXISTS: Code = Code(6);
    /// PERMISSION_DENIED (7).
    pub const PERMISSION_DENIED: Code = Code(7);
    /// RESOURCE_EXHAUSTED (8).
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    /// FAILED_PRECONDITION (9).
    pub const FAILED_PRECONDITION: Code = Code(9);
    /// ABORTED (10).
    pub const ABORTED: Code = Code(10);
    /// OUT_OF_RANGE (11).
    pub const OUT_OF_RANGE: Code = Code(11);
    /// UNIMPLEMENTED (12).
    pub const UNIMPLEMENTED: Code = Code(12);
    /// INTERNAL (13).
    pub const INTERNAL: Code = Code(13);
    /// UNAVAILABLE (14).
    pub const UNAVAILABLE: Code = Code(14);
    /// DATA_LOSS (15).
    pub const DATA_LOSS: Code = Code(15);
    /// UNAUTHENTICATED (16).
    pub const UNAUTHENTICATED: Code = Code(16);

    /// The code of this number, if gRPC defines it (0 to 16).
    pub const fn new(code: u16) -> Option<Code> {
        if (code as usize) < NAMES.len() {
            Some(Code(code))
        } else {
            None
        }
    }

    /// The code a peer sent, defined or not.
    pub const fn from_wire(code: u16) -> Code {
        Code(code)
    }

    /// The code in a `grpc-status` value: a decimal number (surrounding spaces allowed).
    pub fn from_header(value: &HeaderValue) -> Option<Code> {
        std::str::from_utf8(value.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()
            .map(Code)
    }

    /// The number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// Is this one of the 17 codes gRPC defines?
    pub const fn is_defined(self) -> bool {
        (self.0 as usize) < NAMES.len()
    }

    /// The name, in kebab case (`"unavailable"`); `None` for a code gRPC does not define.
    pub fn name(self) -> Option<&'static str> {
        NAMES.get(usize::from(self.0)).copied()
    }

    /// Does this status mean the endpoint or the path failed (rather than the application
    /// answering)? UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE and DATA_LOSS do.
    pub const fn is_failure(self) -> bool {
        matches!(
            self,
            Code::UNKNOWN
                | Code::DEADLINE_EXCEEDED
                | Code::INTERNAL
                | Code::UNAVAILABLE
                | Code::DATA_LOSS
        )
    }
}

/// The `grpc-status` in these headers or trailers, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers.get(GRPC_STATUS).and_then(Code::from_header)
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{}", name.to_ascii_uppercase().replace('-', "_")),
            None => write!(f, "Code({})", self.0),
        }
    }
}

/// The decimal number: the `grpc-status` value and the metrics label.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Code> for HeaderValue {
    fn from(code: Code) -> HeaderValue {
        HeaderValue::from(code.0)
    }
}

impl FromStr for Code {
    type Err = String;

    /// A name in any case, with `-` or `_` (`"unavailable"`, `"RESOURCE_EXHAUSTED"`), or a
    /// number; only the defined codes.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let normal = text.to_ascii_lowercase().replace('_', "-");
        let code = match normal.parse::<u16>() {
            Ok(n) => n,
            Err(_) => NAMES
                .iter()
                .position(|n| *n == normal)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| {
                    format!(
                        "{text:?} is not a gRPC status (expected a name such as \"unavailable\" \
                         or a number from 0 to 16)"
                    )
                })?,
        };
        Code::new(code).ok_or_else(|| format!("{code} is not a gRPC status (0 to 16)"))
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u16(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Code;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gRPC status name or number")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Code, E> {
                u16::try_from(n)
                    .ok()
                    .and_then(Code::new)
                    .ok_or_else(|| E::custom(format!("{n} is not a gRPC status (0 to 16)")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Code, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("{n} is not a gRPC status (0 to 16)")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Code, E> {
                text.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any error")]

    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(Code::UNAVAILABLE.as_u16(), 14);
        assert_eq!(Code::UNAVAILABLE.name(), Some("unavailable"));
        assert_eq!(Code::RESOURCE_EXHAUSTED.name(), Some("resource-exhausted"));
        assert_eq!(Code::new(16), Some(Code::UNAUTHENTICATED));
        assert_eq!(Code::new(17), None);
        assert_eq!(Code::from_wire(99).name(), None);
        assert!(!Code::from_wire(99).is_defined());
        for n in 0..17 {
            let code = Code::new(n).unwrap();
            assert_eq!(code.name().unwrap().parse::<Code>(), Ok(code));
            assert_eq!(n.to_string().parse::<Code>(), Ok(code));
        }
        assert_eq!("RESOURCE_EXHAUSTED".parse(), Ok(Code::RESOURCE_EXHAUSTED));
        assert_eq!(" data_loss ".parse(), Ok(Code::DATA_LOSS));
        assert!("17".parse::<Code>().unwrap_err().contains("17"));
        assert!("sometimes".parse::<Code>().is_err());
        assert_eq!(
            format!("{:?}", Code::DEADLINE_EXCEEDED),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(format!("{:?}", Code::from_wire(99)), "Code(99)");
    }

    #[test]
    fn the_failure_set() {
        let failures: Vec<u16> = (0..17)
            .filter_map(Code::new)
            .filter(|c| c.is_failure())
            .map(Code::as_u16)
            .collect();
        assert_eq!(failures, [2, 4, 13, 14, 15]);
        assert!(!Code::from_wire(99).is_failure());
    }

    #[test]
    fn headers_and_labels_carry_the_number() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert(GRPC_STATUS, HeaderValue::from(Code::UNAVAILABLE));
        assert_eq!(h[GRPC_STATUS], "14");
        assert_eq!(grpc_status(&h), Some(Code::UNAVAILABLE));
        h.insert(GRPC_STATUS, HeaderValue::from_static(" 0 "));
        assert_eq!(grpc_status(&h), Some(Code::OK));
        // A code gRPC does not define is kept as it came.
        h.insert(GRPC_STATUS, HeaderValue::from_static("42"));
        assert_eq!(grpc_status(&h), Some(Code::from_wire(42)));
        assert_eq!(Code::from_wire(42).to_string(), "42");
        h.insert(GRPC_STATUS, HeaderValue::from_static("fourteen"));
        assert_eq!(grpc_status(&h), None);
        assert_eq!(Code::OK.to_string(), "0");
        assert_eq!(Code::UNAVAILABLE.to_string(), "14");
    }

    #[test]
    fn configuration_reads_names_or_numbers() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct C {
            codes: Vec<Code>,
        }
        let c: C = toml::from_str(r#"codes = ["unavailable", "RESOURCE_EXHAUSTED", 4]"#).unwrap();
        assert_eq!(
            c.codes,
            [
                Code::UNAVAILABLE,
                Code::RESOURCE_EXHAUSTED,
                Code::DEADLINE_EXCEEDED
            ]
        );
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("\"deadline-exceeded\""), "{text}");
        assert_eq!(toml::from_str::<C>(&text).unwrap(), c);
        let err = toml::from_str::<C>("codes = [17]").unwrap_err();
        assert!(err.to_string().contains("17"), "{err}");
        assert!(toml::from_str::<C>("codes = [-1]").is_err());
    }
}
