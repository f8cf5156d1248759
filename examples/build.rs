//! Compiles `proto/demo.proto` with protox (pure Rust, so no `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = root.join("demo.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    // `bytes` fields as `Bytes`: echoing a payload of several MiB is a cheap clone.
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
