//! Cancellation of queued and running jobs: never reported as completion.

use std::time::Duration;

use jobd_client::proto::{self, EventType, JobState};
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let watcher = watch_in_background(&server, &job.id).await;

    let cancelled = cancel(&mut jobs, &job.id, "not needed").await;
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert_eq!(cancelled.cancel_reason, "not needed");
    assert!(cancelled.finished_at.is_some());

    let (events, end) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();
    end.expect("the stream ends with OK");
    assert_eq!(types(&events), [EventType::Queued, EventType::Cancelled]);
    assert_eq!(events[1].reason, "not needed");

    // The cancelled job is no longer claimable.
    let none = workers
        .claim_job(claim_request("q", Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(none.job.is_none());

    // Cancelling again returns the job unchanged.
    let again = cancel(&mut jobs, &job.id, "again").await;
    assert_eq!(again, cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_tells_the_worker_and_refuses_its_result() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    let watcher = watch_in_background(&server, &job.id).await;

    let cancelled = cancel(&mut jobs, &job.id, "").await;
    assert_eq!(cancelled.state(), JobState::Cancelled);

    let (events, end) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();
    end.expect("the stream ends with OK");
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Cancelled]
    );

    let beat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(beat.cancelled, "the heartbeat tells the worker to stop");
    assert!(beat.lease_expires_at.is_none());

    let refused = complete(&mut workers, &claimed, b"too late")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("cancelled"),
        "{}",
        refused.message()
    );
    let stored = get(&mut jobs, &job.id).await;
    assert_eq!(
        stored.state(),
        JobState::Cancelled,
        "cancellation is never reported as completion"
    );
    assert!(stored.result.is_empty());
    assert_eq!(stored.last_sequence, 3);
}
