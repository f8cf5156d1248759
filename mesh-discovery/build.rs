//! Compiles `proto/destination.proto` with protox (pure Rust, so no `protoc` is needed), only
//! with the `destination` feature: build dependencies cannot be optional per feature, so the
//! work is skipped here instead.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_DESTINATION").is_none() {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = root.join("destination.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
