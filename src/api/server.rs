//! The gRPC server: jobd's two services, health and reflection, behind the layers that observe
//! every call and end it at its deadline.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::task::TaskTracker;
use tonic::transport::{Server, server::TcpIncoming};

use super::{
    AuthLayer, DeadlineLayer, JobApi, ObserveLayer, Readiness, TlsSettings, WorkerApi,
    proto::{
        self, job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
    },
    reason::ReasonLayer,
    services::Shared,
    tls,
};
use crate::auth::Gate;

/// Room for the rest of a request beside a payload of the maximum size, so that an oversized
/// payload reaches validation and gets a status that names it.
const REQUEST_OVERHEAD: usize = 64 * 1024;

/// The largest SubmitJobs request, whatever the payload limit of each job.
const BATCH_REQUEST_LIMIT: usize = 16 * 1024 * 1024;

/// What the server offers beside the services, and how it keeps its perimeter.
pub struct ServerOptions {
    /// Serve gRPC reflection (v1 and v1alpha).
    pub reflection: bool,
    /// Who may call what.
    pub gate: Arc<Gate>,
    /// Serve over TLS with these settings; plaintext without.
    pub tls: Option<Arc<TlsSettings>>,
    /// Serve health alone, in plaintext, here too: kubelet's gRPC probes speak no TLS.
    pub health_listener: Option<TcpListener>,
}

/// Serves `services` on `listener` until `stop` resolves, then finishes the calls under way
/// (streams and waiting claims end on the services' shutdown token). Readiness reports
/// `ready`, NOT_SERVING until it first says otherwise.
pub async fn serve(
    services: Shared,
    listener: TcpListener,
    options: ServerOptions,
    ready: watch::Receiver<bool>,
    tasks: &TaskTracker,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Set before serving starts: NOT_SERVING until the first probe says otherwise.
    let mut readiness = Readiness::new(reporter);
    readiness.set(false).await;
    tasks.spawn(readiness.follow(ready));
    if let Some(listener) = options.health_listener {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let health = Server::builder()
            .layer(ReasonLayer)
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(incoming, services.shutdown.clone().cancelled_owned());
        tasks.spawn(async move {
            if let Err(error) = health.await {
                tracing::error!(%error, "the health server failed");
            }
        });
    }

    let decode_limit = services.limits.max_payload + REQUEST_OVERHEAD;
    let metrics = services.metrics.clone();
    let shutdown = services.shutdown.clone();
    // Observe outside Deadline, so that a call ended at its deadline is recorded as such;
    // tonic's own timeout wraps both, and Deadline leaves it nothing to end (see deadline.rs).
    // Auth innermost: a refusal is observed, and answered at once.
    // Reasons outermost, so that every status the others or tonic make gets one.
    let mut routes = Server::builder()
        .layer(ReasonLayer)
        .layer(ObserveLayer::new(metrics.clone()))
        .layer(DeadlineLayer)
        .layer(AuthLayer::new(options.gate, metrics))
        .add_service(health_service)
        .add_service(
            JobServiceServer::new(JobApi::new(services.clone()))
                .max_decoding_message_size(decode_limit.max(BATCH_REQUEST_LIMIT)),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi::new(services))
                .max_decoding_message_size(decode_limit),
        );
    if options.reflection {
        // Both reflection versions, so that every grpcurl release works.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        routes = routes
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
    }
    let served = match options.tls {
        Some(settings) => {
            let incoming = tls::incoming(listener, settings, tasks, shutdown);
            routes.serve_with_incoming_shutdown(incoming, stop).await
        }
        None => {
            // Small gRPC frames must not wait for Nagle's algorithm (and the peer's delayed
            // ACK).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            routes.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    served.context("gRPC server failed")
}
