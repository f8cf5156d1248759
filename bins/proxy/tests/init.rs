//! `mesh-proxy init` for real, in network namespaces this test makes and always removes: each
//! firewall backend installs its rules once however often it runs, `--uninstall` removes
//! exactly ours, `--dry-run` prints the rules and changes nothing, bad input and missing
//! rights fail by name and leave nothing behind, and captured traffic really reaches the
//! proxy's listener while the proxy's own user goes straight out. Addresses come from
//! 198.18.0.0/15 only.
//!
//! Needs root (network namespaces, firewall rules), `ip`, `nft`, `iptables-nft`,
//! `iptables-legacy`, `setpriv` and `python3`. Without root the tests fail in CI and are
//! skipped, saying so, elsewhere.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod support;

use std::process::Command;

use support::{
    BIN, Killed, Netns, dial, http_get, root_or_skip, serve, serve_http, sh, text, world_readable,
};
const FIREWALLS: [&str; 3] = ["nft", "iptables", "iptables-legacy"];

fn ours(rules: &str) -> Vec<&str> {
    rules
        .lines()
        .filter(|l| l.contains("MESH_") || l.contains("mesh_capture"))
        .collect()
}

#[test]
fn each_backend_installs_once_and_uninstall_removes_exactly_ours() {
    if !root_or_skip("each_backend_installs_once_and_uninstall_removes_exactly_ours") {
        return;
    }
    for firewall in FIREWALLS {
        let ns = Netns::new();
        // Someone else's rules, which must survive our uninstall.
        ns.exec(&["nft", "add", "table", "inet", "someone_else"]);
        ns.exec(&["iptables-legacy", "-t", "nat", "-N", "SOMEONE_ELSE"]);
        let before = ns.rules();
        let args = [
            "--firewall",
            firewall,
            "--proxy-uid",
            "2102",
            "--skip-inbound-ports",
            "22,8000-8100",
            "--skip-outbound-ports",
            "5432",
            "--skip-outbound-cidrs",
            "198.19.0.0/16,fd00::/8",
        ];
        let first = ns.init(&args);
        assert!(
            first.status.success(),
            "{firewall}: {}",
            text(&first.stderr)
        );
        let once = ns.rules();
        let second = ns.init(&args);
        assert!(
            second.status.success(),
            "{firewall}: {}",
            text(&second.stderr)
        );
        assert_eq!(
            ns.rules(),
            once,
            "{firewall}: a second run (a pod restart) left one set"
        );

        let expected: &[&str] = match firewall {
            "nft" => &[
                "table inet mesh_capture",
                "tcp dport { 4140, 4143, 4191 } return",
                "tcp dport { 22, 8000-8100 } return",
                "meta l4proto tcp redirect to :4143",
                "meta skuid 2102 return",
                "tcp dport 5432 return",
                "ip daddr 198.19.0.0/16 return",
                "ip6 daddr fd00::/8 return",
                "meta l4proto tcp redirect to :4140",
            ],
            _ => &[
                "-A PREROUTING -p tcp -j MESH_INBOUND",
                "-A OUTPUT -p tcp -j MESH_OUTBOUND",
                "-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A MESH_INBOUND -p tcp -m tcp --dport 8000:8100 -j RETURN",
                "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
                "-A MESH_OUTBOUND -d 198.19.0.0/16 -j RETURN",
                "-A MESH_OUTBOUND -d fd00::/8 -j RETURN",
                "-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            ],
        };
        for rule in expected {
            assert!(once.contains(rule), "{firewall}: no {rule:?} in\n{once}");
        }
        if firewall != "nft" {
            // Both families, each with its chains and two jumps, once.
            let jumps = ours(&once)
                .iter()
                .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
                .count();
            assert_eq!(jumps, 4, "{firewall}:\n{once}");
        }

        let removed = ns.init(&["--firewall", firewall, "--uninstall"]);
        assert!(
            removed.status.success(),
            "{firewall}: {}",
            text(&removed.stderr)
        );
        let after = ns.rules();
        assert!(ours(&after).is_empty(), "{firewall}: ours left:\n{after}");
        assert!(
            after.contains("someone_else") && after.contains("SOMEONE_ELSE"),
            "{after}"
        );
        assert_eq!(ours(&before), ours(&after));
        // Uninstalling again is not an error: there is nothing left to remove.
        let again = ns.init(&["--firewall", firewall, "--uninstall"]);
        assert!(
            again.status.success(),
            "{firewall}: {}",
            text(&again.stderr)
        );
    }
}

#[test]
fn dry_run_prints_the_exact_rules_and_changes_nothing() {
    if !root_or_skip("dry_run_prints_the_exact_rules_and_changes_nothing") {
        return;
    }
    let ns = Netns::new();
    let before = ns.rules();
    let out = ns.init(&[
        "--dry-run",
        "--proxy-uid",
        "1337",
        "--skip-outbound-cidrs",
        "198.19.0.0/16",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "# nft -f -\n\
         table inet mesh_capture\n\
         delete table inet mesh_capture\n\
         table inet mesh_capture {\n\
         \tchain inbound {\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\ttcp dport { 4143, 4140, 4191 } return\n\
         \t\tmeta l4proto tcp redirect to :4143\n\
         \t}\n\
         \tchain outbound {\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tmeta skuid 1337 return\n\
         \t\toifname \"lo\" return\n\
         \t\tip daddr 127.0.0.0/8 return\n\
         \t\tip6 daddr ::1 return\n\
         \t\tip daddr { 198.19.0.0/16 } return\n\
         \t\tmeta l4proto tcp redirect to :4140\n\
         \t}\n\
         }\n"
    );
    let iptables = ns.init(&["--dry-run", "--firewall", "iptables-legacy"]);
    let printed = text(&iptables.stdout);
    for line in [
        "# iptables-legacy-restore -w --noflush",
        ":MESH_INBOUND - [0:0]",
        "-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A MESH_OUTBOUND -d ::1/128 -j RETURN",
        "# ip6tables-legacy -w -t nat -A OUTPUT -p tcp -j MESH_OUTBOUND",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in\n{printed}"
        );
    }
    let uninstall = ns.init(&["--dry-run", "--uninstall"]);
    assert_eq!(
        text(&uninstall.stdout),
        "# nft -f -\ntable inet mesh_capture\ndelete table inet mesh_capture\n"
    );
    assert_eq!(ns.rules(), before, "a dry run changes nothing");
}

#[test]
fn bad_input_is_refused_by_name_and_installs_nothing() {
    if !root_or_skip("bad_input_is_refused_by_name_and_installs_nothing") {
        return;
    }
    let ns = Netns::new();
    let before = ns.rules();
    for (args, needle) in [
        (vec!["--firewall", "pf"], "unknown firewall \"pf\""),
        (vec!["--skip-inbound-ports", "22,ssh"], "\"ssh\""),
        (vec!["--skip-outbound-ports", "9000-80"], "\"9000-80\""),
        (
            vec!["--skip-outbound-cidrs", "198.18.0.0/40"],
            "\"198.18.0.0/40\"",
        ),
        (vec!["--proxy-uid=root"], "--proxy-uid"),
    ] {
        let out = ns.init(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert_eq!(ns.rules(), before);
}

#[test]
fn without_rights_it_fails_naming_the_command_and_leaves_nothing() {
    if !root_or_skip("without_rights_it_fails_naming_the_command_and_leaves_nothing") {
        return;
    }
    // A copy any user may run: the build directory may sit where an unprivileged user cannot.
    let dir = std::env::temp_dir().join(format!("mesh-init-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("mesh-proxy");
    std::fs::copy(BIN, &bin).unwrap();
    for path in [&dir, &bin] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = bin.to_str().unwrap();
    for (firewall, command) in [
        ("nft", "`nft -f -` failed"),
        ("iptables", "`iptables-nft-restore -w --noflush` failed"),
        (
            "iptables-legacy",
            "`iptables-legacy-restore -w --noflush` failed",
        ),
    ] {
        let ns = Netns::new();
        let before = ns.rules();
        // The same namespace, as an unprivileged user: no CAP_NET_ADMIN.
        let out = ns.run(&[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
            bin,
            "init",
            "--firewall",
            firewall,
        ]);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{firewall}: installed without rights"
        );
        assert!(stderr.contains(command), "{firewall}: {stderr}");
        assert_eq!(ns.rules(), before, "{firewall}: something was left behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn captured_connections_reach_the_proxy_and_the_proxy_user_goes_straight_out() {
    if !root_or_skip("captured_connections_reach_the_proxy_and_the_proxy_user_goes_straight_out") {
        return;
    }
    for firewall in FIREWALLS {
        // A pod and a peer joined by a veth pair, as two pods on one node.
        let pod = Netns::new();
        let peer = Netns::new();
        let (a, b) = (format!("{}a", &pod.0[5..]), format!("{}b", &pod.0[5..]));
        let (a, b) = (
            &a[a.len().saturating_sub(15)..],
            &b[b.len().saturating_sub(15)..],
        );
        sh(&[
            "ip", "link", "add", a, "netns", &pod.0, "type", "veth", "peer", "name", b, "netns",
            &peer.0,
        ]);
        pod.exec(&["ip", "addr", "add", "198.18.0.1/30", "dev", a]);
        pod.exec(&["ip", "link", "set", a, "up"]);
        peer.exec(&["ip", "addr", "add", "198.18.0.2/30", "dev", b]);
        peer.exec(&["ip", "link", "set", b, "up"]);

        let _app = Killed(serve(&peer, "198.18.0.2", 8080, "peer"));
        let _outbound = Killed(serve(&pod, "0.0.0.0", 4140, "outbound-listener"));
        let _inbound = Killed(serve(&pod, "0.0.0.0", 4143, "inbound-listener"));
        let _pod_app = Killed(serve(&pod, "0.0.0.0", 8080, "pod-app"));
        assert_eq!(
            dial(&pod, "0", "198.18.0.2", 8080),
            "peer",
            "{firewall}: before capture"
        );

        let out = pod.init(&["--firewall", firewall, "--proxy-uid", "2102"]);
        assert!(out.status.success(), "{firewall}: {}", text(&out.stderr));
        // The app's connection is captured; the proxy's own (its uid) is not.
        assert_eq!(
            dial(&pod, "0", "198.18.0.2", 8080),
            "outbound-listener",
            "{firewall}"
        );
        assert_eq!(
            dial(&pod, "2102", "198.18.0.2", 8080),
            "peer",
            "{firewall}: proxy uid"
        );
        // Loopback stays the pod's own.
        assert_eq!(
            dial(&pod, "0", "127.0.0.1", 8080),
            "pod-app",
            "{firewall}: loopback"
        );
        // From the peer, any port of the pod reaches the inbound listener.
        assert_eq!(
            dial(&peer, "0", "198.18.0.1", 8080),
            "inbound-listener",
            "{firewall}"
        );
        assert_eq!(
            dial(&peer, "0", "198.18.0.1", 4143),
            "inbound-listener",
            "{firewall}"
        );
    }
}

#[test]
fn inbound_transparent_mode_serves_every_port_of_the_pod() {
    if !root_or_skip("inbound_transparent_mode_serves_every_port_of_the_pod") {
        return;
    }
    let pod = Netns::new();
    let peer = Netns::new();
    let (a, b) = (format!("{}a", &pod.0[5..]), format!("{}b", &pod.0[5..]));
    sh(&[
        "ip", "link", "add", &a, "netns", &pod.0, "type", "veth", "peer", "name", &b, "netns",
        &peer.0,
    ]);
    pod.exec(&["ip", "addr", "add", "198.18.1.1/30", "dev", &a]);
    pod.exec(&["ip", "link", "set", &a, "up"]);
    peer.exec(&["ip", "addr", "add", "198.18.1.2/30", "dev", &b]);
    peer.exec(&["ip", "link", "set", &b, "up"]);

    // The pod's app: two HTTP ports and a server-speaks-first port, on loopback only.
    let _web = Killed(serve_http(&pod, "127.0.0.1", 8080, "web"));
    let _api = Killed(serve_http(&pod, "127.0.0.1", 9090, "api"));
    let _db = Killed(serve(&pod, "127.0.0.1", 3306, "db-banner"));

    let dir = std::env::temp_dir().join(format!("mesh-transparent-{}", std::process::id()));
    let bin = world_readable(&dir, "mesh-proxy", Some(BIN), "");
    let config = world_readable(
        &dir,
        "mesh.toml",
        None,
        "[admin]\nlisten = \"127.0.0.1:4191\"\n[outbound]\nlisten = \"127.0.0.1:4140\"\n\
         [inbound]\nlisten = \"0.0.0.0:4143\"\napp = \"127.0.0.1:8080\"\ntransparent = true\n\
         detect_timeout = \"500ms\"\n",
    );
    let out = pod.init(&["--proxy-uid", "2102"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let proxy = Command::new("ip")
        .args([
            "netns", "exec", &pod.0, "setpriv", "--reuid", "2102", "--regid", "2102",
        ])
        .args(["--clear-groups", &bin, "--config", &config])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _proxy = Killed(proxy);
    let ready = support::wait_ready(&pod);
    assert!(ready, "the proxy never became ready");

    // From the peer, each port of the pod reaches the app's port of that number, through the
    // one inbound listener.
    let web = http_get(&peer, "198.18.1.1", 8080, "/");
    assert!(web.contains(" 200 OK") && web.ends_with("web"), "{web}");
    let api = http_get(&peer, "198.18.1.1", 9090, "/");
    assert!(api.contains(" 200 OK") && api.ends_with("api"), "{api}");
    // A server that speaks first: detected as opaque after the detection timeout, forwarded.
    assert_eq!(dial(&peer, "0", "198.18.1.1", 3306), "db-banner");

    let metrics = http_get(&pod, "127.0.0.1", 4191, "/metrics");
    for authority in ["127.0.0.1:8080", "127.0.0.1:9090"] {
        let series = format!("direction=\"inbound\",authority=\"{authority}\"");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
