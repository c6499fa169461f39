//! The gRPC server: jobd's two services, health and reflection, behind the layers that observe
//! every call and end it at its deadline.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::pb::health_server::{Health, HealthServer};

use super::{
    AuthLayer, DeadlineLayer, JobApi, ObserveLayer, Readiness, RequestLimits, SizeLayer,
    TlsSettings, WorkerApi,
    proto::{
        self, job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
    },
    reason::ReasonLayer,
    replies::HoldLayer,
    services::Shared,
    tls,
    transport::Transport,
};
use crate::auth::Gate;

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
    /// The HTTP/2 and TCP settings of every connection, health's included.
    pub transport: Transport,
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
    let health_service = health(ready, tasks).await;
    let transport = options.transport;
    let sizes = RequestLimits::new(services.limits.max_payload);
    if let Some(listener) = options.health_listener {
        let health = health_service.clone();
        let shutdown = services.shutdown.clone();
        serve_health(health, listener, &transport, sizes, shutdown, tasks);
    }

    let metrics = services.metrics.clone();
    let shutdown = services.shutdown.clone();
    // Reasons outermost: every status the others or tonic make gets one. Observe outside
    // Deadline: a call ended at its deadline is recorded so (see deadline.rs). Size bounds each
    // request message before tonic decodes it. Auth: a refusal is observed and answered at
    // once. Hold innermost: a reply's payload permit goes with its body whatever the others do.
    let mut routes = transport
        .server()
        .layer(ReasonLayer)
        .layer(ObserveLayer::new(metrics.clone()))
        .layer(DeadlineLayer)
        .layer(SizeLayer::new(sizes))
        .layer(AuthLayer::new(options.gate, metrics))
        .layer(HoldLayer::new(transport.send_timeout))
        .add_service(health_service)
        .add_service(
            JobServiceServer::new(JobApi::new(services.clone()))
                .max_decoding_message_size(sizes.largest()),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi::new(services))
                .max_decoding_message_size(sizes.largest()),
        );
    if options.reflection {
        // Both reflection versions, so that every grpcurl release works.
        routes = routes
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
    }
    let tcp = transport.incoming(listener);
    let slots = transport.connection_slots();
    let served = match options.tls {
        Some(settings) => {
            let incoming = tls::incoming(tcp, settings, tasks, shutdown)
                .map(move |tls| tls.map(|tls| slots.admit(&transport, tls)));
            routes.serve_with_incoming_shutdown(incoming, stop).await
        }
        None => {
            let incoming = tcp.map(move |tcp| tcp.map(|tcp| slots.admit(&transport, tcp)));
            routes.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    served.context("gRPC server failed")
}

/// Serves health alone, in plaintext, on `listener` (kubelet's gRPC probes speak no TLS),
/// until `shutdown`.
fn serve_health<H: Health>(
    health: HealthServer<H>,
    listener: TcpListener,
    transport: &Transport,
    sizes: RequestLimits,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let aged = transport.clone();
    let incoming = transport
        .incoming(listener)
        .map(move |tcp| tcp.map(|tcp| aged.aged(tcp)));
    let server = transport
        .server()
        .layer(ReasonLayer)
        .layer(SizeLayer::new(sizes))
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    tasks.spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the health server failed");
        }
    });
}

/// The health service: NOT_SERVING until the first readiness probe says otherwise (set
/// before serving starts), then following `ready`.
async fn health(ready: watch::Receiver<bool>, tasks: &TaskTracker) -> HealthServer<impl Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    let mut readiness = Readiness::new(reporter);
    readiness.set(false).await;
    tasks.spawn(readiness.follow(ready));
    service
}

/// Reflection over jobd's protos and health's.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
