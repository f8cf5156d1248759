//! `mesh-proxy init` for real, in network namespaces this test makes and always removes: each
//! firewall backend installs its rules once however often it runs, `--uninstall` removes
//! exactly ours, `--dry-run` prints the rules and changes nothing, bad input and missing
//! rights fail by name and leave nothing behind, and captured traffic (IPv4 and IPv6) really
//! reaches the proxy's listener while the proxy's own user goes straight out; IPv6 keeps its
//! original destination through two proxies. Addresses come from the benchmarking ranges
//! only: 198.18.0.0/15, and IPv6's 2001:2::/48.
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

/// Joins `pod` and `peer` with a veth pair, as two pods on one node: `pod` gets
/// 198.18.<net>.1/30 and 2001:2:0:<net>::1/64, `peer` .2 and ::2 (2001:2::/48 is IPv6's
/// benchmarking range, as 198.18.0.0/15 is IPv4's).
fn veth_pair(pod: &Netns, peer: &Netns, net: u8) -> String {
    let (a, b) = (format!("{}a", &pod.0[5..]), format!("{}b", &pod.0[5..]));
    let (a, b) = (
        &a[a.len().saturating_sub(15)..],
        &b[b.len().saturating_sub(15)..],
    );
    sh(&[
        "ip", "link", "add", a, "netns", &pod.0, "type", "veth", "peer", "name", b, "netns",
        &peer.0,
    ]);
    for (ns, dev, host) in [(pod, a, 1), (peer, b, 2)] {
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{net}.{host}/30"),
            "dev",
            dev,
        ]);
        // No duplicate address detection: the address is usable at once.
        let v6 = format!("2001:2:0:{net}::{host}/64");
        ns.exec(&["ip", "-6", "addr", "add", &v6, "dev", dev, "nodad"]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    // Neighbour discovery waits for the link-local addresses' duplicate detection: until it
    // ends, a first SYN may go unanswered for a second, as in a pod whose network is not
    // ready yet.
    for _ in 0..50 {
        let tentative = [pod, peer].iter().any(|ns| {
            !ns.exec(&["ip", "-6", "addr", "show", "tentative"])
                .is_empty()
        });
        if !tentative {
            break;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "a synchronous test waiting for the kernel, with no runtime to block"
        )]
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    a.to_owned()
}

#[test]
fn captured_connections_reach_the_proxy_and_the_proxy_user_goes_straight_out() {
    if !root_or_skip("captured_connections_reach_the_proxy_and_the_proxy_user_goes_straight_out") {
        return;
    }
    for firewall in FIREWALLS {
        let pod = Netns::new();
        let peer = Netns::new();
        veth_pair(&pod, &peer, 0);
        // Servers on `::` answer IPv4 and IPv6 alike.
        let _app = Killed(serve(&peer, "::", 8080, "peer"));
        let _outbound = Killed(serve(&pod, "::", 4140, "outbound-listener"));
        let _inbound = Killed(serve(&pod, "::", 4143, "inbound-listener"));
        let _pod_app = Killed(serve(&pod, "::", 8080, "pod-app"));
        for peer_ip in ["198.18.0.2", "2001:2:0:0::2"] {
            assert_eq!(
                dial(&pod, "0", peer_ip, 8080),
                "peer",
                "{firewall} {peer_ip}: before capture"
            );
        }

        let out = pod.init(&["--firewall", firewall, "--proxy-uid", "2102"]);
        assert!(out.status.success(), "{firewall}: {}", text(&out.stderr));
        for (peer_ip, pod_ip, lo) in [
            ("198.18.0.2", "198.18.0.1", "127.0.0.1"),
            ("2001:2:0:0::2", "2001:2:0:0::1", "::1"),
        ] {
            // The app's connection is captured; the proxy's own (its uid) is not.
            assert_eq!(
                dial(&pod, "0", peer_ip, 8080),
                "outbound-listener",
                "{firewall} {peer_ip}"
            );
            assert_eq!(
                dial(&pod, "2102", peer_ip, 8080),
                "peer",
                "{firewall} {peer_ip}: proxy uid"
            );
            // Loopback stays the pod's own.
            assert_eq!(
                dial(&pod, "0", lo, 8080),
                "pod-app",
                "{firewall} {lo}: loopback"
            );
            // From the peer, any port of the pod reaches the inbound listener.
            for port in [8080, 4143] {
                assert_eq!(
                    dial(&peer, "0", pod_ip, port),
                    "inbound-listener",
                    "{firewall} {pod_ip}:{port}"
                );
            }
        }
    }
}

/// IPv6 end to end: the client's connection to a service's virtual IPv6 address is captured,
/// its original destination read (`IP6T_SO_ORIGINAL_DST`), balanced to the peer pod, captured
/// again there and handed to the app on the port it was sent to.
#[test]
fn ipv6_connections_keep_their_original_destination_through_both_proxies() {
    if !root_or_skip("ipv6_connections_keep_their_original_destination_through_both_proxies") {
        return;
    }
    let client = Netns::new();
    let server = Netns::new();
    let dev = veth_pair(&client, &server, 2);
    // The virtual address is routed like any other, and held by no interface.
    let vip = "2001:2:0:3::100";
    client.exec(&["ip", "-6", "route", "add", "2001:2:0:3::/64", "dev", &dev]);
    let _app = Killed(serve_http(&server, "127.0.0.1", 80, "v6-app"));

    let dir = std::env::temp_dir().join(format!("mesh-ipv6-{}", std::process::id()));
    let bin = world_readable(&dir, "mesh-proxy", Some(BIN), "");
    let client_config = world_readable(
        &dir,
        "client.toml",
        None,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:4191\"\n\
             [outbound]\nlisten = \"[::]:4140\"\ntransparent = true\n\
             [[outbound.services]]\nauthority = \"web.demo:80\"\n\
             addresses = [\"[{vip}]:80\"]\nendpoints = [\"[2001:2:0:2::2]:80\"]\n"
        ),
    );
    let server_config = world_readable(
        &dir,
        "server.toml",
        None,
        "[admin]\nlisten = \"127.0.0.1:4191\"\n[outbound]\nlisten = \"127.0.0.1:4140\"\n\
         [inbound]\nlisten = \"[::]:4143\"\napp = \"127.0.0.1:80\"\ntransparent = true\n",
    );
    let mut proxies = Vec::new();
    for (pod, config) in [(&client, &client_config), (&server, &server_config)] {
        let out = pod.init(&["--proxy-uid", "2102"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let proxy = Command::new("ip")
            .args([
                "netns", "exec", &pod.0, "setpriv", "--reuid", "2102", "--regid", "2102",
            ])
            .args(["--clear-groups", &bin, "--config", config])
            .stderr(std::fs::File::create(format!("{config}.log")).unwrap())
            .spawn()
            .unwrap();
        proxies.push(Killed(proxy));
        assert!(support::wait_ready(pod), "a proxy never became ready");
    }

    let answer = http_get(&client, vip, 80, "/");
    assert!(
        answer.contains(" 200 OK") && answer.ends_with("v6-app"),
        "{answer}"
    );
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("request_total{direction=\"outbound\"")
                && l.contains("dst_service=\"web.demo:80\"")),
        "{metrics}"
    );
    let metrics = http_get(&server, "127.0.0.1", 4191, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("request_total{direction=\"inbound\"")
                && l.contains("authority=\"127.0.0.1:80\"")),
        "{metrics}"
    );
    drop(proxies);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inbound_transparent_mode_serves_every_port_of_the_pod() {
    if !root_or_skip("inbound_transparent_mode_serves_every_port_of_the_pod") {
        return;
    }
    let pod = Netns::new();
    let peer = Netns::new();
    veth_pair(&pod, &peer, 1);

    // The pod's app: two HTTP ports and a server-speaks-first port, on loopback only.
    let _web = Killed(serve_http(&pod, "127.0.0.1", 8080, "web"));
    let _api = Killed(serve_http(&pod, "127.0.0.1", 9090, "api"));
    let _db = Killed(serve(&pod, "127.0.0.1", 3306, "db-banner"));
    let _smtp = Killed(serve(&pod, "127.0.0.1", 2526, "smtp-banner"));

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
    // A server that speaks first on an opaque port (3306 is by default): forwarded at once.
    assert_eq!(dial(&peer, "0", "198.18.1.1", 3306), "db-banner");
    // On a port nobody marked: detected as opaque after the detection timeout, forwarded.
    assert_eq!(dial(&peer, "0", "198.18.1.1", 2526), "smtp-banner");

    let metrics = http_get(&pod, "127.0.0.1", 4191, "/metrics");
    for authority in ["127.0.0.1:8080", "127.0.0.1:9090"] {
        let series = format!("direction=\"inbound\",authority=\"{authority}\"");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
