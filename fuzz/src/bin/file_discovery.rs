//! The services file of file discovery, as YAML and as JSON: any bytes are services or one
//! line that says what is wrong, never a panic.

use std::path::Path;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        for name in ["services.yaml", "services.json"] {
            match mesh_discovery::file::parse(Path::new(name), data) {
                Ok(services) => {
                    for endpoints in services.values() {
                        for e in endpoints {
                            assert_ne!(e.addr.port(), 0);
                        }
                    }
                }
                Err(why) => assert!(!why.is_empty()),
            }
        }
    });
}
