//! Generates the gRPC code from `proto/` with a vendored `protoc`, so building needs no system
//! protobuf compiler. The generated code lands in `OUT_DIR`; it is never edited by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; point it at the vendored binary.
    unsafe_set_protoc(&protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = "proto/blufio/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("blufio_control_v1_descriptor.bin"))
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}

#[allow(
    unsafe_code,
    reason = "set_var is unsafe in edition 2024; the build script has one thread"
)]
fn unsafe_set_protoc(path: &std::path::Path) {
    // SAFETY: a build script runs on a single thread, so no other thread reads the environment
    // while it is modified.
    unsafe { std::env::set_var("PROTOC", path) };
}
