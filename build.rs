//! Compiles the protos with protox (pure Rust, no system `protoc`) and keeps the encoded
//! descriptor set, comments included, for server reflection.

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/jobd/v1/errors.proto",
    "proto/jobd/v1/job.proto",
    "proto/jobd/v1/job_service.proto",
    "proto/jobd/v1/worker_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("jobd_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Clients use the client library's stubs (clients/rust), the tests and jobd-bench included.
        .build_client(false)
        .build_server(true)
        .bytes(".jobd.v1")
        // Smaller starting buffers than tonic's default; see src/api/codec.rs.
        .codec_path("crate::api::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
