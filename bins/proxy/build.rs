//! Lays out the code mesh-proxy runs in one place, for a smaller resident set.
//!
//! A sidecar's code pages count in its RSS like its heap does. Of mesh-proxy's 13 MiB of
//! machine code a proxy runs about 2.5 MiB, spread over the whole of it; the kernel maps the
//! pages around each one that is first used (fault-around), so under load 7.5 MiB of code was
//! resident. `symbol-order.txt` lists the functions that run, hottest first (measured by
//! `bench/symbol_order.py` under valgrind), and lld places them at the start of `.text`:
//! resident code falls to about 2.5 MiB and peak RSS under the bench's S1 load from 15 MiB to
//! 10 MiB, with the hot loop on fewer pages (CPU per request no worse, measured side by side).
//!
//! Function names carry a hash of the features their crate was built with, so the list fits a
//! mesh-proxy built alone (`cargo build --release -p mesh-proxy`); names that are missing are
//! skipped and that code keeps its usual order, so a stale list costs memory, never
//! correctness. `python3 bench/symbol_order.py --check` says how much of it still fits.
//!
//! Only release builds for `x86_64-unknown-linux-gnu` use it: there rustc links with its own
//! lld by default. Builds that name another linker, or set `MESH_PROXY_SYMBOL_ORDER=off`, link
//! as usual.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=MESH_PROXY_SYMBOL_ORDER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let default_linker = var("RUSTC_LINKER").is_empty()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link")
        && var("TARGET") == "x86_64-unknown-linux-gnu";
    if var("PROFILE") != "release" || !default_linker || var("MESH_PROXY_SYMBOL_ORDER") == "off" {
        return;
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if !list.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=mesh-proxy=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bin=mesh-proxy=-Wl,--no-warn-symbol-ordering");
}
