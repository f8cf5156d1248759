//! The destination API's payloads as a proxy receives them: any bytes decoded as an `Update`
//! or a `LookupReply` give endpoints (malformed ones skipped) or an error, never a panic, and
//! what is kept encodes back to what it says.

use mesh_discovery::remote::{destination, endpoints, proto, update};
use prost::Message as _;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(message) = proto::Update::decode(data) {
            let kept = endpoints(message);
            assert!(kept.iter().all(|e| e.addr.port() != 0));
            let set: mesh_discovery::EndpointSet =
                std::sync::Arc::new(kept.iter().map(|e| (e.addr, e.clone())).collect());
            let again = endpoints(update(&set));
            assert_eq!(again.len(), set.len());
        }
        if let Ok(reply) = proto::LookupReply::decode(data) {
            let _ = destination(reply);
        }
    });
}
