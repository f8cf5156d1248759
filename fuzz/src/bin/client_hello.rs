//! The ClientHello peek of the inbound side: any bytes, split anywhere, give a verdict or ask
//! for more, never panic; an SNI found is lowercase with no trailing dot.

use mesh_tls::accept::{Hello, parse_hello};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Some(Hello::Tls(Some(sni))) = parse_hello(data) {
            assert!(!sni.ends_with('.'), "{sni:?}");
            assert_eq!(sni, sni.to_ascii_lowercase());
        }
    });
}
