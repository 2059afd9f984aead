//! Compiles the wire protocol with protox (pure Rust), so a build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mesofs.proto");
    let fds = protox::compile(["proto/mesofs.proto"], ["proto"])?;
    // Watch and leader events as shared buffers: one encoding, handed to every watcher.
    tonic_prost_build::configure()
        .bytes(".mesofs.v1.WatchEvent.json")
        .bytes(".mesofs.v1.LeaderEvent.json")
        .compile_fds(fds)?;
    Ok(())
}
