//! Configuration loading: a TOML file (or an embedded default), then `MESH__` environment
//! variables on top, into one typed struct; durations written as `"10s"`, `"250ms"`.
//!
//! Keys are separated by a double underscore in the environment: `MESH__OUTBOUND__LISTEN`
//! sets `outbound.listen`. A bad value fails with the key, the value and what was expected.
//!
//! The prefix is `MESH__`, not `MESH_`, because Kubernetes gives every container variables for
//! each Service of its namespace (`<NAME>_SERVICE_HOST`, `<NAME>_PORT_80_TCP`, ...), and a
//! Service named `mesh` or `mesh-api` would otherwise feed `MESH_SERVICE_HOST` to the
//! configuration as an unknown key, and stop every proxy of the namespace. Only a Service
//! whose name starts with `mesh--` produces `MESH__...`; variables of that shape (a last key
//! ending in `_SERVICE_HOST`, `_SERVICE_PORT...` or `_PORT...`, which no configuration key
//! does) are left out too.
//!
//! With no `MESH__` variable set, the TOML goes straight into the typed struct; only with
//! variables to merge (or when that fails, for the same errors either way) does it go through
//! the `config` crate, whose map of every value with its origin peaked at 3 MB for 1,000
//! services, memory the allocator then kept.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// The environment variables' prefix: `MESH__SECTION__KEY`.
pub const ENV_PREFIX: &str = "MESH__";

/// Whether `name` is one of the variables Kubernetes makes for a Service (its name in
/// capitals, then `_SERVICE_HOST`, `_SERVICE_PORT[_<PORT NAME>]`, `_PORT`, or
/// `_PORT_<number>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`), judged on the part after the last `__`.
pub fn is_kubernetes_service_variable(name: &str) -> bool {
    let last = name.rsplit("__").next().unwrap_or(name);
    let Some((_, suffix)) = ["_SERVICE_HOST", "_SERVICE_PORT", "_PORT"]
        .iter()
        .filter_map(|marker| last.find(marker).map(|at| (at, &last[at + marker.len()..])))
        .find(|(at, _)| *at > 0)
    else {
        return false;
    };
    if last.ends_with("_SERVICE_HOST") || last.contains("_SERVICE_PORT") {
        return true;
    }
    // `_PORT`, or `_PORT_<number>_<protocol>[_PROTO|_PORT|_ADDR]`.
    let mut parts = suffix.split('_').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (None, ..) => suffix.is_empty(),
        (Some(number), Some(protocol), field, None) => {
            number.chars().all(|c| c.is_ascii_digit())
                && !number.is_empty()
                && matches!(protocol, "TCP" | "UDP" | "SCTP")
                && field.is_none_or(|f| matches!(f, "PROTO" | "PORT" | "ADDR"))
        }
        _ => false,
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not valid TOML.
    #[error("cannot load configuration from {path}: {message}")]
    Source {
        /// The file or source.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A key holds a value of the wrong shape.
    #[error("invalid configuration: key `{key}`{value}: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// ` = <value>` when known.
        value: String,
        /// What was expected.
        message: String,
    },
    /// The values are well-formed but do not fit together.
    #[error("invalid configuration: {0}")]
    Semantic(String),
}

/// A value that does not fit: the field that holds it, the value, and what was expected.
///
/// Every `validate()` of the mesh's configuration types returns this one error, with the field
/// relative to the type (`max_retries`); whoever holds the type names its place with
/// [`within`](Invalid::within) (`outbound.services[2].retry.max_retries`), and the loader turns
/// it into a [`ConfigError::Invalid`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` = {value}: {expected}")]
pub struct Invalid {
    /// The dotted field.
    pub field: String,
    /// The value as configured.
    pub value: String,
    /// What was expected instead.
    pub expected: String,
}

impl Invalid {
    /// `field` holds `value`, where `expected` was expected.
    pub fn new(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// A field that must be set and is not.
    pub fn missing(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(field, "(missing)", why)
    }

    /// The same error, with the field placed under `section` (`retry` becomes
    /// `outbound.services[0].retry`).
    pub fn within(mut self, section: &str) -> Self {
        if !section.is_empty() {
            self.field = format!("{section}.{}", self.field);
        }
        self
    }
}

impl From<Invalid> for ConfigError {
    fn from(e: Invalid) -> Self {
        ConfigError::Invalid {
            key: e.field,
            value: format!(" = {}", e.value),
            message: e.expected,
        }
    }
}

/// The longest duration a setting may take: longer ones are surely a mistake (and would
/// overflow deadlines).
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Checks that `value` lies in `min..=max` (durations are written as configured, `"250ms"`).
pub fn check_duration(
    field: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), Invalid> {
    if value < min || value > max || value.is_zero() {
        let expected = if min.is_zero() || min <= Duration::from_nanos(1) {
            format!(
                "expected a duration above 0 and at most {}",
                format_duration(max)
            )
        } else {
            format!(
                "expected {} to {}",
                format_duration(min),
                format_duration(max)
            )
        };
        return Err(Invalid::new(field, format_duration(value), expected));
    }
    Ok(())
}

/// Checks a duration setting: above 0 and at most [`MAX_SETTING_DURATION`].
pub fn check_setting_duration(field: &str, value: Duration) -> Result<(), Invalid> {
    check_duration(field, value, Duration::ZERO, MAX_SETTING_DURATION)
}

/// Checks that `value` lies in `min..=max`.
pub fn check_range<T>(field: &str, value: T, min: T, max: T) -> Result<(), Invalid>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(Invalid::new(
            field,
            &value,
            format!("expected {min} to {max}"),
        ));
    }
    Ok(())
}

/// Checks an HTTP/2 window: at least the default 65535, at most 2^31 - 1 (RFC 9113, 6.9).
pub fn check_window(field: &str, window: u32) -> Result<(), Invalid> {
    check_range(field, window, 65_535, i32::MAX as u32).map_err(|e| Invalid {
        expected: "expected 65535 to 2147483647 bytes".into(),
        ..e
    })
}

/// Where the configuration text comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A TOML file.
    File(&'a Path),
    /// TOML text, such as an embedded default.
    Toml(&'a str),
    /// Only defaults and the environment.
    None,
}

/// Loads `T` from `source`, then the `MESH__*` environment variables.
pub fn load<T: DeserializeOwned>(source: Source<'_>) -> Result<T, ConfigError> {
    load_with_env(source, std::env::vars())
}

/// Loads `T` from `source`, then from `env` (pairs of name and value; names that do not start
/// with `MESH__`, and Kubernetes' Service variables, are ignored).
pub fn load_with_env<T: DeserializeOwned>(
    source: Source<'_>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let file_text;
    let (text, name) = match source {
        Source::File(path) => {
            file_text = std::fs::read_to_string(path).map_err(|e| ConfigError::Source {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            (Some(file_text.as_str()), path.display().to_string())
        }
        Source::Toml(text) => (Some(text), "embedded configuration".to_owned()),
        Source::None => (None, String::new()),
    };
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !is_kubernetes_service_variable(k))
        .collect();
    // With nothing to merge, the text goes straight into `T`: the merging loader holds the
    // whole file as a map of values with their origins at once (3 MB for 1,000 services),
    // and what the allocator keeps of that peak stays in the proxy's RSS. Anything that
    // does not load this way loads through the merging loader, so its errors (and any value
    // only it accepts) stay as they are.
    if env.is_empty()
        && let Ok(value) = toml::from_str::<T>(text.unwrap_or_default())
    {
        return Ok(value);
    }
    let mut builder = config::Config::builder();
    if let Some(text) = text {
        builder = builder.add_source(toml_source(text, &name)?);
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env)),
    );
    let merged = builder.build().map_err(|e| from_config_error(e, None))?;
    let lookup = merged.clone();
    merged
        .try_deserialize()
        .map_err(|e| from_config_error(e, Some(&lookup)))
}

fn toml_source(
    text: &str,
    name: &str,
) -> Result<config::File<config::FileSourceString, config::FileFormat>, ConfigError> {
    // Parse once here so that a syntax error names the file and the line.
    if let Err(e) = text.parse::<toml_check::Table>() {
        return Err(ConfigError::Source {
            path: name.to_owned(),
            message: e.to_string(),
        });
    }
    Ok(config::File::from_str(text, config::FileFormat::Toml))
}

mod toml_check {
    pub(super) type Table = toml::Table;
}

fn from_config_error(e: config::ConfigError, merged: Option<&config::Config>) -> ConfigError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::Invalid {
            value: format!(" = {unexpected}"),
            key,
            message: format!("expected {expected}"),
        },
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => {
            let value = merged
                .and_then(|m| m.get_string(&key).ok())
                .map(|v| format!(" = {v:?}"))
                .unwrap_or_default();
            ConfigError::Invalid {
                key,
                value,
                message: error.to_string(),
            }
        }
        other => ConfigError::Source {
            path: "configuration".to_owned(),
            message: other.to_string(),
        },
    }
}

/// Parses `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"365d"`, `"1.5s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (expected e.g. \"10s\" or \"250ms\")"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "{text:?} has no unit (expected ms, s, m, h or d, e.g. \"10s\")"
            ));
        }
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `#[serde(with = "mesh_core::config::duration")]` for `Duration` fields.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `"10s"`-style text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// Writes `"10s"`-style text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        listen: SocketAddr,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        port: u16,
        #[serde(with = "duration")]
        timeout: Duration,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_the_file() {
        let c: Outer = load_with_env(
            Source::Toml("listen = \"127.0.0.1:1\"\n[inner]\nport = 2\ntimeout = \"1s\"\n"),
            env(&[
                ("MESH__INNER__PORT", "3"),
                ("MESH__LISTEN", "127.0.0.1:4"),
                ("OTHER", "x"),
                // What Kubernetes sets for Services named `mesh`, `mesh-api` and `mesh--inner`.
                ("MESH_SERVICE_HOST", "10.96.0.9"),
                ("MESH_SERVICE_PORT", "80"),
                ("MESH_SERVICE_PORT_HTTP", "80"),
                ("MESH_PORT", "tcp://10.96.0.9:80"),
                ("MESH_PORT_80_TCP", "tcp://10.96.0.9:80"),
                ("MESH_PORT_80_TCP_PROTO", "tcp"),
                ("MESH_PORT_80_TCP_PORT", "80"),
                ("MESH_PORT_80_TCP_ADDR", "10.96.0.9"),
                ("MESH_API_SERVICE_HOST", "10.96.0.10"),
                ("MESH__INNER_SERVICE_HOST", "10.96.0.11"),
                ("MESH__INNER_PORT_53_UDP_ADDR", "10.96.0.11"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:4".parse().unwrap());
        assert_eq!(c.inner.port, 3);
        assert_eq!(c.inner.timeout, Duration::from_secs(1));
    }

    #[test]
    fn kubernetes_service_variables() {
        for name in [
            "MESH_SERVICE_HOST",
            "MESH_API_SERVICE_PORT_GRPC",
            "MESH__X_PORT",
            "MESH__X_PORT_8080_SCTP_PROTO",
            "MESH__OUTBOUND__A_SERVICE_HOST",
        ] {
            assert!(is_kubernetes_service_variable(name), "{name}");
        }
        for name in [
            "MESH__INNER__PORT",
            "MESH__OUTBOUND__LISTEN",
            "MESH__X_PORT_HTTP_TCP",
            "MESH__X_PORT_80_TCP_NAME",
            "MESH__PORTS",
        ] {
            assert!(!is_kubernetes_service_variable(name), "{name}");
        }
    }

    #[test]
    fn a_bad_value_names_key_and_value() {
        let e =
            load_with_env::<Outer>(Source::Toml("listen = \"nowhere\"\n"), env(&[])).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("listen"), "{text}");
        assert!(text.contains("nowhere"), "{text}");

        let e = load_with_env::<Outer>(
            Source::Toml("listen = \"127.0.0.1:1\"\n[inner]\ntimeout = \"ten\"\n"),
            env(&[]),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("inner.timeout"), "{text}");
        assert!(text.contains("ten"), "{text}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_named() {
        let e = load_with_env::<Outer>(
            Source::Toml("listen = \"127.0.0.1:1\"\nlisten_typo = 1\n"),
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen_typo"), "{e}");
        let e = load_with_env::<Outer>(Source::Toml("listen = \n"), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Source { .. }), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
