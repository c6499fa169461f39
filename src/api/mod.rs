//! The gRPC surface: generated types, the two services, and the mapping of errors to status.
//! Handlers read as convert -> act -> convert.

mod auth;
mod body;
mod codec;
mod convert;
mod deadline;
mod error;
mod health;
mod job_service;
mod methods;
mod observe;
mod reason;
mod replies;
mod server;
mod services;
mod size;
mod streams;
mod tls;
mod transport;
mod unsent;
mod worker_service;

pub use error::ApiError;
pub use server::{ServerOptions, serve};
pub use services::{Limits, Services};
pub use tls::TlsSettings;
pub use transport::Transport;

use auth::AuthLayer;
use deadline::DeadlineLayer;
use health::Readiness;
use job_service::JobApi;
use observe::ObserveLayer;
use size::{RequestLimits, SizeLayer};
use worker_service::WorkerApi;

/// Types and clients generated from `proto/jobd/v1`.
pub mod proto {
    // SubmitAndWatchJobsResponse's oneof holds a JobEvent or a whole SubmitJobsResponse; the
    // stream sends many of the first and one of the second, so neither is boxed.
    #![allow(clippy::large_enum_variant)]

    tonic::include_proto!("jobd.v1");

    /// The encoded descriptors of the protos, comments included, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/jobd_descriptor.bin"));
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use prost::Message;

    use super::proto::FILE_DESCRIPTOR_SET;

    /// Operators read the API with `grpcurl describe`: every element must say what it is.
    #[test]
    fn every_message_field_enum_and_method_is_documented() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut checked = 0;
        for file in set.file.iter().filter(|file| file.package() == "jobd.v1") {
            let info = file.source_code_info.as_ref().expect("comments are kept");
            let documented: HashSet<&[i32]> = info
                .location
                .iter()
                .filter(|l| {
                    l.leading_comments().trim().len() + l.trailing_comments().trim().len() > 0
                })
                .map(|l| l.path.as_slice())
                .collect();
            let mut expect = |path: Vec<i32>, what: &str| {
                assert!(
                    documented.contains(path.as_slice()),
                    "{}: {what} has no comment",
                    file.name()
                );
                checked += 1;
            };
            // Paths per descriptor.proto: messages 4, fields 2; enums 5, values 2; services 6, methods 2.
            for (i, message) in file.message_type.iter().enumerate() {
                expect(vec![4, i as i32], message.name());
                for (j, field) in message.field.iter().enumerate() {
                    expect(
                        vec![4, i as i32, 2, j as i32],
                        &format!("{}.{}", message.name(), field.name()),
                    );
                }
            }
            for (i, enumeration) in file.enum_type.iter().enumerate() {
                expect(vec![5, i as i32], enumeration.name());
                for (j, value) in enumeration.value.iter().enumerate() {
                    expect(vec![5, i as i32, 2, j as i32], value.name());
                }
            }
            for (i, service) in file.service.iter().enumerate() {
                expect(vec![6, i as i32], service.name());
                for (j, method) in service.method.iter().enumerate() {
                    expect(vec![6, i as i32, 2, j as i32], method.name());
                }
            }
        }
        assert!(checked > 100, "checked {checked} elements");
    }
}
