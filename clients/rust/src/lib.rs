//! The Rust client of jobd: a submitter ([`Client`]), a worker runtime
//! ([`Worker`]) and typed errors ([`Error`], one [`ErrorReason`] per `google.rpc.ErrorInfo`
//! reason jobd sends).
//!
//! Code map, in reading order:
//! - `error.rs`: [`Error`], decoded from a status's `ErrorInfo`; never from message text.
//! - `service_config.rs`: per-method deadlines and retry policies, from jobd's published
//!   `docs/service-config.json`, compiled in.
//! - `client.rs`: [`Client`] and [`ClientBuilder`] (endpoint, token, TLS); unary calls with
//!   retries on UNAVAILABLE; `submit`, `submit_many`, `get`, `cancel`.
//! - `spec.rs`: [`JobSpec`], a submission and its options.
//! - `watch.rs`: `watch` (a stream that resumes after the last sequence received) and
//!   `submit_and_wait`.
//! - `trace.rs`: W3C `traceparent` out of the caller's OpenTelemetry context, and back into a
//!   handler's span.
//! - `worker/`: [`Worker`] (claims, batching, shutdown), its per-job task (heartbeats,
//!   cancellation) and [`JobContext`], what a handler gets.
//!
//! A worker:
//! ```no_run
//! use jobd_client::{Client, JobContext, Worker};
//!
//! # async fn run() -> Result<(), jobd_client::Error> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//! Worker::new(client, ["emails"])
//!     .handle("welcome", |job: JobContext| async move {
//!         Ok(format!("welcome sent to {}", job.text()))
//!     })
//!     .run() // until SIGTERM or Ctrl-C
//!     .await
//! # }
//! ```
#![forbid(unsafe_code)]

mod client;
mod error;
mod service_config;
mod spec;
mod trace;
mod watch;
mod worker;

pub use client::{Client, ClientBuilder, Transport};
pub use error::{BoxError, Error, NonRetryable, Rejection};
pub use proto::{ErrorReason, EventType, Job, JobEvent, JobState};
pub use service_config::RetryPolicy;
pub use spec::JobSpec;
pub use tonic::Code;
pub use worker::{JobContext, Worker};

/// The generated protobuf messages and gRPC clients of `jobd.v1`, for calls this library does
/// not wrap (`ListJobs`, `GetQueueStats`); [`Client::jobs`] and [`Client::workers`] give stubs
/// on the same connection.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("jobd.v1");
}

/// The result of this library's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
