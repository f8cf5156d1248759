//! `grpc-timeout`: any header value parses or is refused, never panics; what we write parses
//! back and is never longer than what it encodes.

use mesh_core::timeout::{encode_grpc_timeout, parse_grpc_timeout};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(timeout) = parse_grpc_timeout(data) {
            let written = encode_grpc_timeout(timeout);
            let back = parse_grpc_timeout(written.as_bytes());
            assert!(
                back.is_ok_and(|b| b <= timeout),
                "{timeout:?} -> {written:?}"
            );
        }
    });
}
