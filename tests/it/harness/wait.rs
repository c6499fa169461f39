//! Waiting, the one way: `eventually` polls an observable condition until it holds, and fails
//! the test at a deadline. The conditions tests wait on by name are built on it here.
//!
//! A future that ends by itself (a task, a stream's next message, a process's exit) is awaited
//! under `tokio::time::timeout` instead; its bound is often what the test asserts.
//!
//! No test sleeps to let something happen. A sleep stays only where no condition can replace
//! it: to prove that something does not happen within a time, to let an idle period pass, to
//! pace calls, or as a stall itself; each says which.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use jobd_client::proto;
use tokio::task::JoinHandle;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use super::{
    clients::{Jobs, PendingClaim, READINESS, get, status},
    jobd::{Jobd, TestServer},
};

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `eventually`, for a condition read without waiting on anything (a redis-cli call, a
/// counter, a log).
pub async fn until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    eventually(timeout, what, || std::future::ready(done().then_some(()))).await;
}

/// Waits until exactly `count` claims wait for a job on `server` (its `jobd.claims.waiting`):
/// each found its queues empty and parked, so that a job submitted through `server` now goes
/// straight to one of them.
pub async fn claims_waiting(server: &TestServer, count: i64) {
    until(
        Duration::from_secs(10),
        &format!("{count} claims to wait"),
        || server.claims_waiting() == count,
    )
    .await;
}

/// Runs `claim`, a call that claims on `server` and waits for a job there, in the background,
/// and returns once it waits: one claim more waits than before. Claims started so, one after
/// another, wait in that order; those that waited before must go on waiting meanwhile (or
/// have been answered).
pub async fn spawn_parked<T: Send + 'static>(
    server: &TestServer,
    claim: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let before = server.claims_waiting();
    let claim = tokio::spawn(claim);
    claims_waiting(server, before + 1).await;
    claim
}

/// The ClaimJob `request` on `server`, in the background; returns once it waits there, as
/// `spawn_parked` does.
pub async fn waiting_claim(server: &TestServer, request: proto::ClaimJobRequest) -> PendingClaim {
    let mut workers = server.workers().await;
    spawn_parked(server, async move { workers.claim_job(request).await }).await
}

/// Waits until every readiness service of `server` reports `wanted`, failing the test after
/// `within`; returns how long that took.
pub async fn readiness_becomes(
    server: &impl Jobd,
    wanted: ServingStatus,
    within: Duration,
) -> Duration {
    let health = HealthClient::new(server.channel().await);
    let started = Instant::now();
    eventually(within, &format!("readiness to be {wanted:?}"), || {
        let mut health = health.clone();
        async move {
            for service in READINESS {
                if status(&mut health, service).await != wanted {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    started.elapsed()
}

/// Waits until the job `id`, as GetJob reads it, is `wanted`, failing the test after `within`;
/// returns the job as it was then.
pub async fn job_becomes(
    jobs: &Jobs,
    id: &str,
    within: Duration,
    what: &str,
    wanted: impl Fn(&proto::Job) -> bool,
) -> proto::Job {
    let wanted = &wanted;
    eventually(within, what, || {
        let (mut jobs, id) = (jobs.clone(), id.to_owned());
        async move {
            let job = get(&mut jobs, &id).await;
            wanted(&job).then_some(job)
        }
    })
    .await
}

/// Waits, 5 s at most, until the job `id` is QUEUED again with `sequence` events: back in its
/// queue after a claim, sooner than any lease of these tests (30 s by default) could explain.
pub async fn back_in_queue(jobs: &Jobs, id: &str, sequence: u64) -> proto::Job {
    job_becomes(
        jobs,
        id,
        Duration::from_secs(5),
        "the job to be back in its queue",
        |job| job.state() == proto::JobState::Queued && job.last_sequence == sequence,
    )
    .await
}
