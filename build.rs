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
        // Every frame is moved through several layers of tonic and the gateway, and a oneof is
        // as large as its largest variant: boxing the rare, large payloads keeps the frequent
        // ones (events, pings) small.
        .boxed(".arcp.v1.ServerFrame.payload.session_welcome")
        .boxed(".arcp.v1.ServerFrame.payload.session_jobs")
        .boxed(".arcp.v1.ServerFrame.payload.job_accepted")
        .boxed(".arcp.v1.ServerFrame.payload.job_subscribed")
        .boxed(".arcp.v1.ServerFrame.payload.job_result")
        .boxed(".arcp.v1.ServerFrame.payload.session_error")
        .boxed(".arcp.v1.ServerFrame.payload.job_error")
        .boxed(".arcp.v1.JobEvent.body.tool_call")
        .boxed(".arcp.v1.JobEvent.body.tool_result")
        .boxed(".arcp.v1.JobEvent.body.status")
        .boxed(".arcp.v1.JobEvent.body.metric")
        .boxed(".arcp.v1.JobEvent.body.artifact_ref")
        .boxed(".arcp.v1.JobEvent.body.delegate")
        .boxed(".arcp.v1.JobEvent.body.result_chunk")
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
