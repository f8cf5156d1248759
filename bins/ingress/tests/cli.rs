//! The mesh-ingress command line: `--check` on the example configuration, errors that name
//! the key or the file at fault, and the README's table of the ingress's keys against the
//! code's defaults.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mesh_integration::docs::{check_rows, flatten, readme_section};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-ingress");

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/ingress/ingress.toml")
}

/// Runs the binary with `--config` on `toml` (written to a file) and `args`: exit code,
/// stdout, stderr.
fn run(toml: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("mesh-ingress-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let file = dir.join(format!(
        "{}-{}.toml",
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace("::", "-"),
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(&file)
        .env_remove("MESH__LOG")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_configuration_checks() {
    let out = Command::new(BIN)
        .arg("--check")
        .arg("--config")
        .arg(example())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(effective["routes"].as_array().map(Vec::len), Some(3));
}

#[test]
fn bad_configurations_name_the_key_or_the_file() {
    for (toml, needle) in [
        ("", "an [https] or an [http] listener"),
        ("[https]\n", "https.certificates"),
        (
            "[http]\nredirect_to_https = true\n",
            "http.redirect_to_https",
        ),
        (
            "[http]\n[edge.rate_limit]\nrequests_per_second = 5\nburst = 0\n",
            "edge.rate_limit.burst",
        ),
        (
            "[http]\n[edge]\nrequest_id_header = \"bad header\"\n",
            "edge.request_id_header",
        ),
        (
            "[http]\n[[services]]\nauthority = \"db:5432\"\nendpoints = [\"127.0.0.1:5432\"]\nopaque = true\nlisten = \"127.0.0.1:0\"\n",
            "services[0].opaque",
        ),
        ("[http]\nlisten_port = 80\n", "listen_port"),
    ] {
        let (code, _, stderr) = run(toml, &["--check"]);
        assert_eq!(code, Some(2), "{toml:?}: {stderr}");
        assert!(stderr.contains(needle), "{toml:?}: {stderr}");
    }
    // A certificate file that is not there: named at start, exit 1.
    let (code, _, stderr) = run(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[https]\nlisten = \"127.0.0.1:0\"\n\
         [[https.certificates]]\ncert = \"/nonexistent/tls.crt\"\nkey = \"/nonexistent/tls.key\"\n",
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("https.certificates[0]") && stderr.contains("/nonexistent/tls.crt"),
        "{stderr}"
    );
    // A route to a service that is not configured: named.
    let (code, _, stderr) = run(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"r\"\nbackends = [{ service = \"nobody:80\" }]\n",
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("nobody:80") && stderr.contains("route \"r\""),
        "{stderr}"
    );
}

/// The ingress's effective configuration with both listeners and one certificate, flattened.
fn ingress_defaults() -> BTreeMap<String, String> {
    let (code, stdout, stderr) = run(
        "[http]\n[https]\n[[https.certificates]]\ncert = \"c\"\nkey = \"k\"\n\
         [kubernetes]\ngateway = \"edge/mesh-ingress\"\nplaintext = false\n\
         [identity]\nname = \"spiffe://cluster.local/ns/edge/sa/mesh-ingress\"\n\
         trust_anchors = \"ca.crt\"\ncontroller = \"127.0.0.1:8080\"\n\
         controller_identity = \"spiffe://cluster.local/ns/mesh-system/sa/mesh-controller\"\n\
         token_file = \"token\"\n",
        &["--check"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let effective: toml::Table = toml::from_str(&stdout).unwrap();
    let mut flat = BTreeMap::new();
    flatten("", &effective, &mut flat);
    flat
}

/// The README's table of the ingress's keys states each default as the code has it, and every
/// key of the ingress's own sections has its row.
#[test]
fn the_readme_states_the_ingress_defaults_the_code_has() {
    let flat = ingress_defaults();
    let section = readme_section("## Ingress");
    let (checked, _) = check_rows(&section, &flat);
    assert!(checked.len() >= 12, "only {checked:?}");
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split(" | ").next().unwrap_or_default())
        .collect();
    let undocumented: Vec<&String> = flat
        .keys()
        .filter(|key| {
            ["https.", "http.", "edge."]
                .iter()
                .any(|p| key.starts_with(p))
        })
        .filter(|key| !key.starts_with("https.certificates"))
        .filter(|key| !rows.iter().any(|first| first.contains(&format!("`{key}`"))))
        .collect();
    assert!(
        undocumented.is_empty(),
        "ingress keys the README lacks: {undocumented:?}"
    );
}
