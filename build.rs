//! Compiles `proto/arcp/v1/arcp.proto` into `OUT_DIR` with a vendored `protoc`, so building the
//! gateway needs no system protobuf compiler, and writes the descriptor set that server
//! reflection serves.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // prost-build finds protoc through this variable; build scripts run single-threaded.
    env::set_var("PROTOC", protoc);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("arcp_descriptor.bin"))
        .codec_path("crate::transport::grpc::codec::ArcpCodec")
        .compile_protos(
            &["proto/arcp/v1/arcp.proto"],
            &[
                "proto",
                well_known.to_str().ok_or("non-UTF-8 protoc include path")?,
            ],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
