//! The README's tables checked against the code: a binary's effective configuration (its
//! `--check` output) flattened to dotted keys, and each documented default compared with it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a broken README fails the test loudly"
)]

/// A table's configuration as dotted keys and TOML values.
pub fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&path, inner, out),
            other => {
                out.insert(path, other.to_string());
            }
        }
    }
}

/// A section of the README, from its heading to the next.
pub fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    readme
        .split(heading)
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap()
        .to_owned()
}

/// Checks each table row of `section` whose key `flat` holds: its default (second cell) is
/// the code's. Returns the keys checked and those `flat` lacks.
pub fn check_rows(
    section: &str,
    flat: &std::collections::BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let normal = |s: &str| s.replace(['"', '`', ' '], "");
    let (mut checked, mut unknown) = (Vec::new(), Vec::new());
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        let Some(code) = flat.get(key) else {
            unknown.push(key.to_owned());
            continue;
        };
        let stated = cells[1];
        // A default in words ("(required)", "as outbound...") is not a value to compare.
        if !stated.starts_with('`') {
            continue;
        }
        let (a, b) = (normal(stated), normal(code));
        // Durations may be written in other units ("10m", "600s").
        let same = match (
            mesh_core::config::parse_duration(&a),
            mesh_core::config::parse_duration(&b),
        ) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        };
        assert!(
            same,
            "README states {key} = {stated}; the code's default is {code}"
        );
        checked.push(key.to_owned());
    }
    (checked, unknown)
}
