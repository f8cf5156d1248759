//! The nftables backend: one `inet` table (IPv4 and IPv6), replaced whole in one transaction.
//! Declaring the table and deleting it before defining it makes the script idempotent and
//! atomic: a second install leaves exactly one set of rules, with no moment without any.

use crate::{Capture, NFT_TABLE, Step};

/// `table; delete table`: removes the table whether or not it exists.
fn reset() -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

fn set(items: &[String]) -> String {
    format!("{{ {} }}", items.join(", "))
}

pub(crate) fn install(c: &Capture) -> Vec<Step> {
    let own_ports = [c.inbound_port, c.outbound_port, c.admin_port].map(|p| p.to_string());
    let mut inbound = vec![
        "type nat hook prerouting priority -100; policy accept;".to_owned(),
        format!("tcp dport {} return", set(&own_ports)),
    ];
    if !c.skip_inbound_ports.is_empty() {
        inbound.push(format!(
            "tcp dport {} return",
            set(&c.skip_inbound_ports.items())
        ));
    }
    inbound.push(format!("meta l4proto tcp redirect to :{}", c.inbound_port));

    let mut outbound = vec![
        "type nat hook output priority -100; policy accept;".to_owned(),
        format!("meta skuid {} return", c.proxy_uid),
        "oifname \"lo\" return".to_owned(),
        "ip daddr 127.0.0.0/8 return".to_owned(),
        "ip6 daddr ::1 return".to_owned(),
    ];
    if !c.skip_outbound_ports.is_empty() {
        outbound.push(format!(
            "tcp dport {} return",
            set(&c.skip_outbound_ports.items())
        ));
    }
    let (v4, v6) = (c.skip_outbound_cidrs.v4(), c.skip_outbound_cidrs.v6());
    if !v4.is_empty() {
        outbound.push(format!("ip daddr {} return", set(&v4)));
    }
    if !v6.is_empty() {
        outbound.push(format!("ip6 daddr {} return", set(&v6)));
    }
    outbound.push(format!("meta l4proto tcp redirect to :{}", c.outbound_port));

    let chain = |name: &str, rules: &[String]| {
        let body: String = rules.iter().map(|r| format!("\t\t{r}\n")).collect();
        format!("\tchain {name} {{\n{body}\t}}\n")
    };
    let script = format!(
        "{}table inet {NFT_TABLE} {{\n{}{}}}\n",
        reset(),
        chain("inbound", &inbound),
        chain("outbound", &outbound),
    );
    vec![Step::run(&["nft", "-f", "-"]).with_input(script)]
}

pub(crate) fn uninstall() -> Vec<Step> {
    vec![Step::run(&["nft", "-f", "-"]).with_input(reset())]
}
