//! The gRPC surface: generated types, the two services, and the mapping of errors to status.
//! Handlers read as convert -> act -> convert.

mod convert;
mod error;
mod health;
mod job_service;
mod observe;
mod watch;
mod worker_service;

pub use error::ApiError;
pub use health::Readiness;
pub use job_service::JobApi;
pub use observe::ObserveLayer;
pub use worker_service::WorkerApi;

/// Types and clients generated from `proto/jobd/v1`.
pub mod proto {
    tonic::include_proto!("jobd.v1");

    /// The encoded descriptors of the protos, comments included, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/jobd_descriptor.bin"));
}
