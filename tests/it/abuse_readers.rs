//! Clients that do not read their replies: a stream whose client never opens its HTTP/2
//! flow-control window holds its result's share of the stream-result budget for the send
//! timeout at most, then ends, and the other watchers' results go on.

use std::time::{Duration, Instant};

use bytes::Bytes;
use jobd_client::proto::{self, EventType};
use tokio::task::JoinHandle;
use tonic::Code;

use crate::harness::*;

const MIB: usize = 1024 * 1024;

/// The send timeout of these tests' jobd.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// How much longer than the send timeout a watcher behind the stalled streams may wait.
const SLACK: Duration = Duration::from_secs(10);

fn settings(extra: &[&str]) -> Settings {
    let mut flags = vec![format!("--send-timeout={}s", SEND_TIMEOUT.as_secs())];
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    Settings {
        extra: flags,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_client_never_opens_its_window_are_reset_and_other_watches_go_on() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(&redis.url(), settings(&[])).await;
    let ids = finished_with_big_results(&server, "stalled", 6).await;
    let address = server.addr.to_string();
    let started = Instant::now();

    // Four watches of 1 MiB results, the whole stream-result budget (4 MiB), on a connection
    // whose streams may be sent 65,535 bytes each (HTTP/2's default window), never more. Each
    // has its result coming: that result holds its room in the budget.
    let mut stingy = Stingy::connect(&address, 65_535).await;
    let mut stalled = Vec::new();
    for id in &ids[..4] {
        let mut body = stingy.watch(id, 0).await;
        let mut received = Vec::new();
        let read = read_until(&mut body, &mut received, big_message_started);
        tokio::time::timeout(SLACK, read)
            .await
            .expect("the result starts coming");
        stalled.push((body, received));
    }

    // Another client's watch gets its result once the send timeout has ended those streams.
    let mut jobs = server.jobs().await;
    let watched = watch_to_end(&mut jobs, &ids[4], 0);
    let (events, ended) = tokio::time::timeout(SEND_TIMEOUT + SLACK, watched)
        .await
        .expect("the result comes within the send timeout and the slack");
    ended.expect("the watch ends OK");
    let waited = started.elapsed();
    let last = events.last().unwrap();
    assert_eq!(
        (last.r#type(), last.result.len()),
        (EventType::Completed, MIB)
    );
    assert!(
        waited >= SEND_TIMEOUT,
        "came after {waited:?}, with the budget held"
    );

    // Each stalled stream was reset: REFUSED_STREAM, which gRPC clients report as UNAVAILABLE
    // (and resume), before it got its result.
    for (mut body, mut received) in stalled {
        let ended = read_to_end(&mut body, &mut received).await;
        let error = ended.expect_err("the stalled stream is reset");
        assert_eq!(error.reason(), Some(h2::Reason::REFUSED_STREAM), "{error}");
        assert_eq!(tonic::Status::from(error).code(), Code::Unavailable);
        assert!(received.len() < MIB, "{} bytes received", received.len());
    }

    // Only the streams ended: the connection still serves, and a result that fits the
    // stream's window comes whole.
    let small = finished_with_result(&server, "stalled.small", b"small").await;
    let mut body = stingy.watch(&small, 0).await;
    let mut received = Vec::new();
    read_to_end(&mut body, &mut received)
        .await
        .expect("the watch ends OK");
    assert!(received.ends_with(b"small"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_window_never_lets_a_result_start_is_closed() {
    let redis = RedisServer::start().await;
    let budget = format!("--max-stream-result-bytes-in-flight={MIB}");
    let server = TestServer::start_with(&redis.url(), settings(&[&budget])).await;
    let ids = finished_with_big_results(&server, "shut", 2).await;
    let address = server.addr.to_string();
    let mut jobs = server.jobs().await;
    let (events, _) = watch_to_end(&mut jobs, &ids[0], 0).await;
    let completed = events.last().unwrap().sequence;

    // A window of 0: not one byte of the result, its only message, can be sent; hyper holds
    // its first chunk, waiting for a window that never opens.
    let mut stingy = Stingy::connect(&address, 0).await;
    let mut body = stingy.watch(&ids[0], completed - 1).await;

    let watched = watch_to_end(&mut jobs, &ids[1], 0);
    let (events, ended) = tokio::time::timeout(SEND_TIMEOUT + SLACK, watched)
        .await
        .expect("the result comes within the send timeout and the slack");
    ended.expect("the watch ends OK");
    assert_eq!(events.last().unwrap().result.len(), MIB);

    // Its connection was closed: the stream ends in error, having received nothing.
    let mut received = Vec::new();
    let ended = tokio::time::timeout(SEND_TIMEOUT + SLACK, read_to_end(&mut body, &mut received))
        .await
        .expect("the stalled stream ends");
    let error = ended.expect_err("the stream ends with its connection");
    assert!(received.is_empty(), "{} bytes received", received.len());
    assert!(
        error.reason().is_none(),
        "no reset but the connection's end: {error}"
    );
    // A connection lost under a call: tonic says UNKNOWN, grpc-core and grpc-js UNAVAILABLE,
    // and the client libraries resume a watch on either.
    assert_eq!(tonic::Status::from(error).code(), Code::Unknown);
    let closed = tokio::time::timeout(SLACK, &mut stingy.connection).await;
    closed
        .expect("the connection is closed")
        .expect("not aborted")
        .ok();
}

/// `count` jobs of `queue`, completed with results of 1 MiB, the default largest.
async fn finished_with_big_results(server: &TestServer, queue: &str, count: u8) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(finished_with_result(server, queue, &vec![i; MIB]).await);
    }
    ids
}

/// A job of `queue`, completed with `result`.
async fn finished_with_result(server: &TestServer, queue: &str, result: &[u8]) -> String {
    let (mut jobs, mut workers) = server.clients().await;
    submit(&mut jobs, queue, b"").await;
    let claimed = claim(&mut workers, queue).await;
    complete(&mut workers, &claimed, result).await.unwrap();
    claimed.job.unwrap().id
}

/// An HTTP/2 client that reads what it is sent but never opens a flow-control window: each
/// stream may be sent `window` bytes, the connection 16 MiB in all.
struct Stingy {
    address: String,
    send: h2::client::SendRequest<Bytes>,
    connection: JoinHandle<Result<(), h2::Error>>,
}

impl Drop for Stingy {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Stingy {
    async fn connect(address: &str, window: u32) -> Self {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(16 * MIB as u32)
            .handshake(tcp)
            .await
            .expect("an HTTP/2 connection");
        Self {
            address: address.to_owned(),
            send,
            connection: tokio::spawn(connection),
        }
    }

    /// A WatchJob of `id` after `after`, once jobd answered (its headers came): its body.
    async fn watch(&mut self, id: &str, after: u64) -> h2::RecvStream {
        let message = prost::Message::encode_to_vec(&proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: after,
        });
        let mut frame = vec![0];
        frame.extend((message.len() as u32).to_be_bytes());
        frame.extend(message);
        let uri = format!("http://{}/jobd.v1.JobService/WatchJob", self.address);
        let request = http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .expect("the connection is open");
        let (response, mut sending) = send.send_request(request, false).unwrap();
        sending.send_data(frame.into(), true).unwrap();
        let response = response.await.expect("jobd answers");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        response.into_body()
    }
}

/// Reads `body` into `received` until `done` says so, never releasing its window.
async fn read_until(body: &mut h2::RecvStream, received: &mut Vec<u8>, done: fn(&[u8]) -> bool) {
    while !done(received) {
        let data = body.data().await.expect("more data").expect("no error");
        received.extend_from_slice(&data);
    }
}

/// Reads the rest of `body` into `received`, never releasing its window: how it ended, OK
/// (its trailers say so) or in error.
async fn read_to_end(body: &mut h2::RecvStream, received: &mut Vec<u8>) -> Result<(), h2::Error> {
    while let Some(data) = body.data().await {
        received.extend_from_slice(&data?);
    }
    let trailers = body.trailers().await?.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    Ok(())
}

/// Whether `received`, the start of a gRPC response body, has reached a message of 1 MiB or
/// more.
fn big_message_started(received: &[u8]) -> bool {
    let mut at = 0;
    while let Some(head) = received.get(at..at + 5) {
        let length = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        if length >= MIB {
            return true;
        }
        at += 5 + length;
    }
    false
}
