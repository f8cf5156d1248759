//! Label and field selectors, parsed and matched the way the API server does
//! (`k8s.io/apimachinery/pkg/labels` and `.../fields`).

use std::collections::BTreeSet;

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector: requirements ANDed together; empty matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Comma,
    Open,
    Close,
}

fn tokenize(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' => {
                chars.next();
                out.push(Token::Comma);
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            '>' => {
                chars.next();
                out.push(Token::Gt);
            }
            '<' => {
                chars.next();
                out.push(Token::Lt);
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Token::DoubleEq);
                } else {
                    out.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Token::NotEq);
                } else {
                    out.push(Token::Not);
                }
            }
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || ",()=!<>".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                out.push(Token::Ident(ident));
            }
        }
    }
    out
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    name_ok && prefix_ok
}

fn valid_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) if valid_key(&k) => Ok(k),
            Some(Token::Ident(k)) => Err(format!("invalid label key \"{k}\"")),
            other => Err(format!(
                "found '{}', expected: identifier",
                show(other.as_ref())
            )),
        }
    }

    /// A single value, possibly empty (`k=` followed by `,` or the end).
    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident(_)) => match self.next() {
                Some(Token::Ident(v)) if valid_value(&v) => Ok(v),
                Some(Token::Ident(v)) => Err(format!("invalid label value: \"{v}\"")),
                _ => Err("unreachable".to_owned()),
            },
            None | Some(Token::Comma) => Ok(String::new()),
            other => Err(format!("found '{}', expected: identifier", show(other))),
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            other => return Err(format!("found '{}', expected: '('", show(other.as_ref()))),
        }
        let mut set = BTreeSet::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) if valid_value(&v) => {
                    set.insert(v);
                }
                Some(Token::Ident(v)) => return Err(format!("invalid label value: \"{v}\"")),
                Some(Token::Close) if set.is_empty() => {
                    // `k in ()`: the server accepts an empty value, as `k in ("")`.
                    set.insert(String::new());
                    return Ok(set);
                }
                other => {
                    return Err(format!(
                        "found '{}', expected: identifier",
                        show(other.as_ref())
                    ));
                }
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(set),
                other => {
                    return Err(format!(
                        "found '{}', expected: ',' or ')'",
                        show(other.as_ref())
                    ));
                }
            }
        }
    }

    fn int(&mut self) -> Result<i64, String> {
        match self.next() {
            Some(Token::Ident(v)) => v.parse().map_err(|_| {
                format!("for 'Gt', 'Lt' operators, the value must be an integer: {v}")
            }),
            other => Err(format!(
                "found '{}', expected: integer",
                show(other.as_ref())
            )),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        match self.peek() {
            None | Some(Token::Comma) => Ok(Requirement::Exists(key)),
            Some(Token::Eq | Token::DoubleEq) => {
                self.next();
                Ok(Requirement::Equals(key, self.value()?))
            }
            Some(Token::NotEq) => {
                self.next();
                Ok(Requirement::NotEquals(key, self.value()?))
            }
            Some(Token::Gt) => {
                self.next();
                Ok(Requirement::Gt(key, self.int()?))
            }
            Some(Token::Lt) => {
                self.next();
                Ok(Requirement::Lt(key, self.int()?))
            }
            Some(Token::Ident(op)) if op == "in" => {
                self.next();
                Ok(Requirement::In(key, self.set()?))
            }
            Some(Token::Ident(op)) if op == "notin" => {
                self.next();
                Ok(Requirement::NotIn(key, self.set()?))
            }
            other => Err(format!(
                "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                show(other)
            )),
        }
    }
}

fn show(t: Option<&Token>) -> String {
    match t {
        None => "".to_owned(),
        Some(Token::Ident(s)) => s.clone(),
        Some(Token::Not) => "!".to_owned(),
        Some(Token::Eq) => "=".to_owned(),
        Some(Token::DoubleEq) => "==".to_owned(),
        Some(Token::NotEq) => "!=".to_owned(),
        Some(Token::Gt) => ">".to_owned(),
        Some(Token::Lt) => "<".to_owned(),
        Some(Token::Comma) => ",".to_owned(),
        Some(Token::Open) => "(".to_owned(),
        Some(Token::Close) => ")".to_owned(),
    }
}

impl LabelSelector {
    /// Parses `labelSelector` syntax: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
    /// `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`, comma-separated (AND).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut p = Parser {
            tokens: tokenize(s),
            pos: 0,
        };
        let mut reqs = Vec::new();
        if p.tokens.is_empty() {
            return Ok(Self(reqs));
        }
        loop {
            reqs.push(
                p.requirement()
                    .map_err(|e| format!("unable to parse requirement: {e}"))?,
            );
            match p.next() {
                None => return Ok(Self(reqs)),
                Some(Token::Comma) => {}
                other => {
                    return Err(format!(
                        "unable to parse requirement: found '{}', expected: ','",
                        show(other.as_ref())
                    ));
                }
            }
        }
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`,
/// comma-separated (AND), with `\,` `\=` `\\` escapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    parts.push(cur);
    parts
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    ));
                }
                None => {
                    return Err("invalid field selector: unterminated escape sequence".to_owned());
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Finds the first unescaped occurrence of `op` in `s`.
fn find_unescaped(s: &str, op: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if s[i..].starts_with(op) {
            return Some(i);
        }
    }
    None
}

impl FieldSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_unescaped(s, ',') {
            let (field, equal, value) = if let Some(i) = find_unescaped(&part, "!=") {
                (&part[..i], false, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "==") {
                (&part[..i], true, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "=") {
                (&part[..i], true, &part[i + 1..])
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            reqs.push((field.trim().to_owned(), equal, unescape(value)?));
        }
        Ok(Self(reqs))
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _, _)| f.as_str())
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field_value(obj, field);
            (actual == *value) == *equal
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The string value of a selectable field, as the server's field set renders
/// it (missing strings are empty, booleans are `true`/`false`).
pub(crate) fn field_value(obj: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None if field == "spec.hostNetwork" => "false".to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selector_forms() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=api", false),
            ("app!=api", true),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web, tier=back", false),
            ("app in (web, api)", true),
            ("app in (api)", false),
            ("app notin (api)", true),
            ("missing notin (api)", true),
            ("missing in (api)", false),
            ("n>4", true),
            ("n<4", false),
            ("kubernetes.io/service-name", false),
        ] {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&o), want, "{sel}");
        }
        let s = LabelSelector::parse("kubernetes.io/service-name=web").unwrap();
        assert!(s.matches(&obj(json!({"kubernetes.io/service-name": "web"}))));
        assert!(
            LabelSelector::parse("app=")
                .unwrap()
                .matches(&obj(json!({"app": ""})))
        );
    }

    #[test]
    fn label_selector_errors() {
        for sel in [
            "app in web",
            "=x",
            "app=a b",
            "app in (a",
            "a,,b",
            "Bad Key=1",
        ] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selector_forms() {
        let o = obj(json!({}));
        for (sel, want) in [
            ("metadata.name=a", true),
            ("metadata.name==a", true),
            ("metadata.name!=a", false),
            ("metadata.name=a,metadata.namespace=ns", true),
            ("metadata.name=a,metadata.namespace=other", false),
            ("spec.nodeName=n1", true),
        ] {
            let s = FieldSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&o), want, "{sel}");
        }
        let s = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert_eq!(s.0[0].2, "a,b");
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
