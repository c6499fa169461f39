//! Calls whose deadline only the server keeps: tonic's `Channel` enforces a call's
//! `grpc-timeout` header itself, and ends the call when its own timer fires (as CANCELLED);
//! over it, a test would see the client's timer, not what the server answers.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jobd_client::proto::{
    job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tokio::task::JoinHandle;

/// One HTTP/2 connection with no deadline of its own.
#[derive(Clone)]
pub struct BareConnection(SendRequest<tonic::body::Body>);

/// A client of each service over one `BareConnection` to jobd at `address`.
pub async fn bare_clients(
    address: &str,
) -> (
    JobServiceClient<BareConnection>,
    WorkerServiceClient<BareConnection>,
) {
    let connection = BareConnection::open(address).await;
    let origin: http::Uri = format!("http://{address}").parse().unwrap();
    (
        JobServiceClient::with_origin(connection.clone(), origin.clone()),
        WorkerServiceClient::with_origin(connection, origin),
    )
}

/// `message` with a `grpc-timeout` header set by hand, e.g. "300m".
pub fn with_deadline<T>(message: T, timeout: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("grpc-timeout", timeout.parse().unwrap());
    request
}

impl BareConnection {
    pub async fn open(address: &str) -> Self {
        Self::open_watched(address).await.0
    }

    /// A connection, and the task that serves it, which ends when the connection does (after
    /// the server's GOAWAY, once its streams are done; or when it is cut).
    pub async fn open_watched(address: &str) -> (Self, JoinHandle<Result<(), hyper::Error>>) {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("jobd accepts connections");
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("an HTTP/2 connection");
        (Self(send), tokio::spawn(connection))
    }

    /// A client of each service over this connection to jobd at `address`.
    pub fn clients(
        &self,
        address: &str,
    ) -> (
        JobServiceClient<BareConnection>,
        WorkerServiceClient<BareConnection>,
    ) {
        let origin: http::Uri = format!("http://{address}").parse().unwrap();
        (
            JobServiceClient::with_origin(self.clone(), origin.clone()),
            WorkerServiceClient::with_origin(self.clone(), origin),
        )
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for BareConnection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}
