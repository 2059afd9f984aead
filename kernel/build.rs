//! Compiles the wire protocol with protox (pure Rust), so a build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mesofs.proto");
    let fds = protox::compile(["proto/mesofs.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
