//! Protocol detection on a connection's first bytes: every prefix of any input gets a verdict
//! or asks for more, never panics, and a verdict never changes as more bytes come.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let whole = mesh_core::detect::verdict(data);
        for n in 0..data.len() {
            if let Some(early) = mesh_core::detect::verdict(&data[..n]) {
                assert_eq!(Some(early), whole, "the verdict on {n} bytes changed later");
                break;
            }
        }
    });
}
