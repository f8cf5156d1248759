//! The iptables backends (`iptables-nft` or `iptables-legacy`, and their `ip6tables`
//! twins): two chains of our own in the `nat` table of each family, filled by
//! `iptables-restore --noflush` (declaring a chain there empties it, so a second install
//! replaces the first), and one jump to each from `PREROUTING` and `OUTPUT` (removed, then
//! added: never two).

use crate::{
    Capture, Firewall, IPTABLES_INBOUND_CHAIN as IN, IPTABLES_OUTBOUND_CHAIN as OUT, Step,
};

/// One address family's tools and loopback.
struct Family {
    iptables: &'static str,
    restore: &'static str,
    loopback: &'static str,
    v6: bool,
}

fn families(firewall: Firewall) -> [Family; 2] {
    let legacy = firewall == Firewall::IptablesLegacy;
    [
        Family {
            iptables: if legacy {
                "iptables-legacy"
            } else {
                "iptables-nft"
            },
            restore: if legacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            },
            loopback: "127.0.0.0/8",
            v6: false,
        },
        Family {
            iptables: if legacy {
                "ip6tables-legacy"
            } else {
                "ip6tables-nft"
            },
            restore: if legacy {
                "ip6tables-legacy-restore"
            } else {
                "ip6tables-nft-restore"
            },
            loopback: "::1/128",
            v6: true,
        },
    ]
}

/// The jumps into our chains, as `-t nat <op> <hook> -p tcp -j <chain>`.
fn jumps(family: &Family, op: &str) -> Vec<Step> {
    [("PREROUTING", IN), ("OUTPUT", OUT)]
        .into_iter()
        .map(|(hook, chain)| {
            Step::run(&[
                family.iptables,
                "-w",
                "-t",
                "nat",
                op,
                hook,
                "-p",
                "tcp",
                "-j",
                chain,
            ])
        })
        .collect()
}

/// Creates our chains, or empties them when they exist.
fn declare_chains(family: &Family, rules: &[String]) -> Step {
    let rules: String = rules.iter().map(|r| format!("{r}\n")).collect();
    let input = format!("*nat\n:{IN} - [0:0]\n:{OUT} - [0:0]\n{rules}COMMIT\n");
    Step::run(&[family.restore, "-w", "--noflush"]).with_input(input)
}

fn port_rules(chain: &str, ports: &crate::PortList) -> Vec<String> {
    ports
        .ranges()
        .iter()
        .map(|(a, b)| {
            let ports = if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            };
            format!("-A {chain} -p tcp --dport {ports} -j RETURN")
        })
        .collect()
}

pub(crate) fn install(c: &Capture, firewall: Firewall) -> Vec<Step> {
    let mut steps = Vec::new();
    for family in families(firewall) {
        let mut rules = Vec::new();
        for port in [c.inbound_port, c.outbound_port, c.admin_port] {
            rules.push(format!("-A {IN} -p tcp --dport {port} -j RETURN"));
        }
        rules.extend(port_rules(IN, &c.skip_inbound_ports));
        rules.push(format!(
            "-A {IN} -p tcp -j REDIRECT --to-ports {}",
            c.inbound_port
        ));
        rules.push(format!(
            "-A {OUT} -m owner --uid-owner {} -j RETURN",
            c.proxy_uid
        ));
        rules.push(format!("-A {OUT} -o lo -j RETURN"));
        rules.push(format!("-A {OUT} -d {} -j RETURN", family.loopback));
        rules.extend(port_rules(OUT, &c.skip_outbound_ports));
        let cidrs = if family.v6 {
            c.skip_outbound_cidrs.v6()
        } else {
            c.skip_outbound_cidrs.v4()
        };
        rules.extend(
            cidrs
                .iter()
                .map(|cidr| format!("-A {OUT} -d {cidr} -j RETURN")),
        );
        rules.push(format!(
            "-A {OUT} -p tcp -j REDIRECT --to-ports {}",
            c.outbound_port
        ));
        steps.push(declare_chains(&family, &rules));
        steps.extend(jumps(&family, "-D").into_iter().map(Step::may_fail));
        steps.extend(jumps(&family, "-A"));
    }
    steps
}

pub(crate) fn uninstall(firewall: Firewall) -> Vec<Step> {
    let mut steps = Vec::new();
    for family in families(firewall) {
        // Declaring the chains first makes every later step valid, present or not: a failure
        // is then a real one (no rights, no such tool), never "nothing to remove".
        steps.push(declare_chains(&family, &[]));
        steps.extend(jumps(&family, "-D").into_iter().map(Step::may_fail));
        for chain in [IN, OUT] {
            steps.push(Step::run(&[
                family.iptables,
                "-w",
                "-t",
                "nat",
                "-X",
                chain,
            ]));
        }
    }
    steps
}
