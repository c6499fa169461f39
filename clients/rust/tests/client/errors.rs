//! Every reason of errors.proto that a real jobd can be made to give maps to its `ErrorReason`,
//! with its metadata.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jobd_client::{Client, Code, Error, ErrorReason, JobSpec, JobState, RetryPolicy, proto};

use crate::harness::{Stack, claim, eventually, heartbeat, job_key, queue};

fn reason_of<T: std::fmt::Debug>(outcome: Result<T, Error>) -> (ErrorReason, Error) {
    let error = outcome.expect_err("a refusal");
    let reason = error
        .reason()
        .unwrap_or_else(|| panic!("a jobd reason in {error:?}"));
    (reason, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reasons_of_requests_and_jobs() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("errors");

    let (reason, e) = reason_of(client.submit(JobSpec::new("bad queue!", "k")).await);
    assert_eq!(reason, ErrorReason::InvalidRequest);
    assert_eq!(e.metadata("field"), Some("queue"));
    let big = vec![b'x'; 1024 * 1024 + 1];
    let (reason, e) = reason_of(client.submit(JobSpec::new(&q, "k").payload(big)).await);
    assert_eq!(reason, ErrorReason::PayloadTooLarge);
    assert_eq!(e.metadata("limit"), Some("1048576"));
    // 17 jobs of 1 MiB: over SubmitJobs's 16 MiB request limit, refused before it is read.
    let specs = (0..17).map(|_| JobSpec::new(&q, "k").payload(vec![b'x'; 1024 * 1024]));
    let (reason, e) = reason_of(client.submit_many(specs).await);
    assert_eq!(reason, ErrorReason::MessageTooLarge);
    assert!(e.metadata("limit").is_some());

    let job = client
        .submit(JobSpec::new(&q, "k").payload("a").idempotency_key("same"))
        .await
        .unwrap();
    let other = JobSpec::new(&q, "k").payload("b").idempotency_key("same");
    let (reason, e) = reason_of(client.submit(other).await);
    assert_eq!(reason, ErrorReason::IdempotencyConflict);
    assert_eq!(e.metadata("key"), Some("same"));

    let unknown = format!(
        "{}{}",
        &job.id[..job.id.len() - 26],
        "01".to_owned() + &"0".repeat(24)
    );
    let (reason, _) = reason_of(client.get(&unknown).await);
    assert_eq!(reason, ErrorReason::JobNotFound);
    let past: Vec<_> = client.watch(&job.id, 99).collect().await;
    let (reason, e) = reason_of(past.into_iter().next().expect("one item"));
    assert_eq!(reason, ErrorReason::PastLastEvent);
    assert_eq!(e.metadata("last_sequence"), Some("1"));

    let claimed = claim(&client, &q, 60, 60).await;
    let (reason, _) = reason_of(heartbeat(&client, &job.id, "not-a-token", None).await);
    assert_eq!(reason, ErrorReason::LeaseTokenUnknown);
    client.cancel(&job.id, "").await.expect("cancelled");
    // A heartbeat says `cancelled` in its reply; an outcome reported after is refused.
    let late = proto::CompleteJobRequest {
        job_id: job.id.clone(),
        lease_token: claimed.lease_token.clone(),
        ..Default::default()
    };
    let (reason, _) = reason_of(
        client
            .workers()
            .complete_job(late)
            .await
            .map_err(Error::from),
    );
    assert_eq!(reason, ErrorReason::JobCancelled);

    let done = client.submit(JobSpec::new(&q, "k")).await.unwrap();
    let claimed = claim(&client, &q, 60, 60).await;
    let complete = proto::CompleteJobRequest {
        job_id: done.id.clone(),
        lease_token: claimed.lease_token.clone(),
        ..Default::default()
    };
    client
        .workers()
        .complete_job(complete)
        .await
        .expect("completed");
    let (reason, e) = reason_of(client.cancel(&done.id, "").await);
    assert_eq!(reason, ErrorReason::JobFinished);
    assert_eq!(e.metadata("state"), Some("COMPLETED"));
}

/// jobd's due index: the sorted set of queues its sweeper visits, scored by when (Redis ms).
const DUE_INDEX: &str = "jobd:{:queues}:due";

/// The queue's time in the due index, once it is a time (not absent or `inf`).
fn due_time(stack: &Stack, q: &str) -> Option<f64> {
    let reply = stack.redis.command(&format!("ZSCORE {DUE_INDEX} {q}"));
    reply
        .lines()
        .nth(1)?
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite())
}

/// Waits until `q` is due at a time (its claim's deadline), then hides it from the sweeper
/// (`+inf`), so that the claim outlives its deadline until `release_to_sweeper`.
async fn hide_from_sweeper(stack: &Stack, q: &str) {
    eventually(
        Duration::from_secs(10),
        "the claim's deadline in the due index",
        || async { due_time(stack, q) },
    )
    .await;
    let reply = stack
        .redis
        .command(&format!("ZADD {DUE_INDEX} XX +inf {q}"));
    assert!(reply.starts_with(':'), "ZADD: {reply}");
}

/// Makes `q` due now: the sweeper ends the claims whose deadline passed.
fn release_to_sweeper(stack: &Stack, q: &str) {
    let reply = stack.redis.command(&format!("ZADD {DUE_INDEX} XX 0 {q}"));
    assert!(reply.starts_with(':'), "ZADD: {reply}");
}

/// Sleeps until just past `at`.
async fn sleep_past(at: prost_types::Timestamp) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let until = Duration::new(at.seconds as u64, at.nanos as u32);
    tokio::time::sleep(until.saturating_sub(now) + Duration::from_millis(50)).await;
}

/// Waits until the sweeper has ended the job's claim.
async fn claim_ended(client: &Client, job_id: &str) {
    eventually(
        Duration::from_secs(10),
        "the sweeper to end the claim",
        || async {
            let job = client.get(job_id).await.ok()?;
            (job.state() != JobState::Running).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reasons_of_leases() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("leases");
    let job = client.submit(JobSpec::new(&q, "k")).await.unwrap();

    // Past its deadline a claim's token is dead (LEASE_EXPIRED) until the sweeper ends the
    // claim (LEASE_STALE after); the sweeper is kept away so that the call sees the former.
    let claimed = claim(&client, &q, 60, 1).await;
    hide_from_sweeper(&stack, &q).await;
    sleep_past(claimed.ack_deadline.expect("an ack deadline")).await;
    let (reason, e) = reason_of(heartbeat(&client, &job.id, &claimed.lease_token, None).await);
    assert_eq!(reason, ErrorReason::LeaseExpired);
    assert_eq!(e.metadata("deadline"), Some("ack"));
    release_to_sweeper(&stack, &q);
    claim_ended(&client, &job.id).await;
    let (reason, e) = reason_of(heartbeat(&client, &job.id, &claimed.lease_token, None).await);
    assert_eq!(reason, ErrorReason::LeaseStale);
    assert_eq!(e.metadata("state"), Some("QUEUED"));

    // Acknowledged (its first heartbeat), a claim's deadline is its lease's end.
    let claimed = claim(&client, &q, 1, 1).await;
    let renewed = heartbeat(&client, &job.id, &claimed.lease_token, None)
        .await
        .expect("acknowledged");
    hide_from_sweeper(&stack, &q).await;
    sleep_past(renewed.lease_expires_at.expect("a lease end")).await;
    let (reason, e) = reason_of(heartbeat(&client, &job.id, &claimed.lease_token, None).await);
    assert_eq!(reason, ErrorReason::LeaseExpired);
    assert_eq!(e.metadata("deadline"), Some("lease"));
    release_to_sweeper(&stack, &q);
    claim_ended(&client, &job.id).await;
    let (reason, _) = reason_of(heartbeat(&client, &job.id, &claimed.lease_token, None).await);
    assert_eq!(reason, ErrorReason::LeaseStale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhausted_with_one_watch_stream() {
    let stack = Stack::start_with(&["--max-watch-streams=1"]).await;
    let client = stack.client().await;
    let job = client
        .submit(JobSpec::new(queue("budget"), "k"))
        .await
        .unwrap();
    let first = client.watch(&job.id, 0);
    futures::pin_mut!(first);
    first
        .next()
        .await
        .expect("the first event")
        .expect("an event");
    let second: Vec<_> = client.watch(&job.id, 0).take(1).collect().await;
    let (reason, e) = reason_of(second.into_iter().next().expect("one item"));
    assert_eq!(reason, ErrorReason::BudgetExhausted);
    assert_eq!(e.metadata("limit"), Some("1"));
    assert!(e.metadata("budget").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_and_unavailable() {
    let stack = Stack::start().await;
    let client = Client::builder(stack.jobd.endpoint())
        .retry(RetryPolicy::NONE)
        .retry_submissions(false)
        .connect()
        .await
        .unwrap();
    let job = client
        .submit(JobSpec::new(queue("oom"), "k"))
        .await
        .unwrap();
    assert!(
        stack
            .redis
            .command("CONFIG SET maxmemory 1")
            .starts_with("+OK")
    );
    let (reason, e) = reason_of(client.submit(JobSpec::new(queue("oom"), "k")).await);
    assert_eq!(reason, ErrorReason::RedisOutOfMemory);
    assert!(e.is_unavailable(), "retried as UNAVAILABLE by callers");
    assert!(
        stack
            .redis
            .command("CONFIG SET maxmemory 0")
            .starts_with("+OK")
    );

    stack.redis.pause();
    let outcome = client.get(&job.id).await;
    stack.redis.resume();
    let (reason, e) = reason_of(outcome);
    assert_eq!(reason, ErrorReason::RedisUnavailable);
    assert!(e.is_unavailable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_job_is_internal() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let job = client
        .submit(JobSpec::new(queue("corrupt"), "k"))
        .await
        .unwrap();
    let reply = stack
        .redis
        .command(&format!("HSET {} state no-such-state", job_key(&job.id)));
    assert!(reply.starts_with(':'), "HSET: {reply}");
    let (reason, e) = reason_of(client.get(&job.id).await);
    assert_eq!(reason, ErrorReason::Internal);
    assert_eq!(e.code(), Some(Code::Internal));
    let rejection = e.rejection().expect("a rejection");
    assert!(rejection.metadata.is_empty(), "{:?}", rejection.metadata);
    assert_eq!(
        rejection.message, "internal error",
        "the cause goes to jobd's log only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_in_jobd_is_deadline_exceeded() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    // A claim that would wait 10 s on an empty queue, with a deadline of 0.3 s. tonic's client
    // bounds only the wait for the response headers, which jobd sends at once for a call with a
    // deadline: the status that comes is jobd's.
    let mut request = tonic::Request::new(proto::ClaimJobsRequest {
        claim: Some(proto::ClaimJobRequest {
            queues: vec![queue("idle")],
            worker_id: "w".into(),
            wait: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        }),
        max_jobs: 1,
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let outcome = client.workers().claim_jobs(request).await;
    let took = started.elapsed();
    let (reason, e) = reason_of(outcome.map_err(Error::from));
    assert_eq!(reason, ErrorReason::DeadlineExceeded);
    assert_eq!(e.code(), Some(Code::DeadlineExceeded));
    assert!(e.rejection().unwrap().metadata.is_empty());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "ended after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ended_by_a_shutdown_is_shutting_down() {
    let mut stack = Stack::start().await;
    // No resume: the status jobd ended the stream with is what the watch yields.
    let client = Client::builder(stack.jobd.endpoint())
        .watch_resume(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let job = client
        .submit(JobSpec::new(queue("shutdown"), "k"))
        .await
        .unwrap();
    let mut events = Box::pin(client.watch(&job.id, 0));
    let first = events
        .next()
        .await
        .expect("the first event")
        .expect("an event");
    assert_eq!(first.sequence, 1, "the stream is open and following");
    let watching = tokio::spawn(async move { events.next().await });
    tokio::task::block_in_place(|| stack.jobd.stop());
    let next = tokio::time::timeout(Duration::from_secs(10), watching)
        .await
        .expect("the stream ends")
        .unwrap()
        .expect("an item");
    let (reason, e) = reason_of(next);
    assert_eq!(reason, ErrorReason::ShuttingDown);
    assert!(e.is_unavailable(), "resumed like any UNAVAILABLE");
    assert!(e.rejection().unwrap().metadata.is_empty());
}
