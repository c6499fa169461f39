//! Generates the jobd client stubs from the repository's `proto/` with protox (pure Rust, no
//! system `protoc`), so they cannot drift from the protos; nothing generated is checked in.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "jobd/v1/errors.proto",
    "jobd/v1/job.proto",
    "jobd/v1/job_service.proto",
    "jobd/v1/worker_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The protos of the checkout this crate lives in: clients/rust/../../proto.
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let service_config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/service-config.json");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    println!("cargo:rerun-if-changed={}", service_config.display());
    let descriptors = protox::compile(PROTOS, [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".jobd.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
