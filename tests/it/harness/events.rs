//! Following jobs through their events: WatchJob streams opened, read to their end (now or in
//! the background) or for their first events, and what the events say.

use std::time::Duration;

use jobd_client::proto;
use tokio::task::JoinHandle;

use super::{
    clients::{Jobs, PendingClaim},
    jobd::Jobd,
};

/// A WatchJob stream read to its end in the background: its events, and how it ended.
pub type Watcher = JoinHandle<(Vec<proto::JobEvent>, Result<(), tonic::Status>)>;

/// Opens a WatchJob stream from the start and reads its first event (QUEUED, sequence 1), so
/// the stream is established when this returns.
pub async fn open_watch(jobs: &mut Jobs, id: &str) -> tonic::Streaming<proto::JobEvent> {
    open_watch_stream(jobs, id).await.1
}

/// Reads a whole WatchJob stream: its events, and how it ended.
pub async fn watch_to_end(
    jobs: &mut Jobs,
    id: &str,
    after: u64,
) -> (Vec<proto::JobEvent>, Result<(), tonic::Status>) {
    let stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: after,
        })
        .await;
    match stream {
        Ok(stream) => read_to_end(stream.into_inner(), Vec::new()).await,
        Err(status) => (Vec::new(), Err(status)),
    }
}

/// Watches a job from the start in the background. Returns once the stream is established
/// (its first event read), with the task that reads the rest, as `watch_to_end` does.
pub async fn watch_in_background(server: &impl Jobd, id: &str) -> Watcher {
    let mut jobs = server.jobs().await;
    let (first, stream) = open_watch_stream(&mut jobs, id).await;
    tokio::spawn(read_to_end(stream, vec![first]))
}

/// Reads the first `count` events of a job's stream (the job need not be finished).
pub async fn first_events(jobs: &mut Jobs, id: &str, count: usize) -> Vec<proto::JobEvent> {
    let (first, mut stream) = open_watch_stream(jobs, id).await;
    let mut events = vec![first];
    while events.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the event arrives")
            .expect("the stream is healthy")
            .expect("the stream goes on");
        events.push(event);
    }
    events
}

async fn open_watch_stream(
    jobs: &mut Jobs,
    id: &str,
) -> (proto::JobEvent, tonic::Streaming<proto::JobEvent>) {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: 0,
        })
        .await
        .expect("watch succeeds")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("a healthy stream")
        .expect("a first event");
    assert_eq!(first.sequence, 1);
    (first, stream)
}

async fn read_to_end(
    mut stream: tonic::Streaming<proto::JobEvent>,
    mut events: Vec<proto::JobEvent>,
) -> (Vec<proto::JobEvent>, Result<(), tonic::Status>) {
    loop {
        match stream.message().await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, Ok(())),
            Err(status) => return (events, Err(status)),
        }
    }
}

pub fn types(events: &[proto::JobEvent]) -> Vec<proto::EventType> {
    events.iter().map(|e| e.r#type()).collect()
}

pub fn sequences(events: &[proto::JobEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// Asserts what shutdown does to open calls: every stream ends with UNAVAILABLE naming the
/// sequence to resume after, and every waiting claim returns no job.
pub async fn assert_ended_by_shutdown(
    streams: Vec<tonic::Streaming<proto::JobEvent>>,
    claims: Vec<PendingClaim>,
    resume_after: u64,
) {
    let resume = format!("after_sequence={resume_after}");
    for mut stream in streams {
        let status = stream
            .message()
            .await
            .expect_err("the stream ends with a status");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&resume), "{}", status.message());
    }
    for claim in claims {
        let response = claim
            .await
            .unwrap()
            .expect("the claim returns normally")
            .into_inner();
        assert!(response.job.is_none(), "a waiting claim returns no job");
    }
}
