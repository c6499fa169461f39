//! One clock: every time jobd records or compares is Redis's, so replicas whose clocks disagree
//! neither expire healthy leases, nor promote delayed jobs early, nor order a queue wrongly; and
//! a heartbeat that reaches Redis late can neither shorten the lease nor put the job's events
//! out of time order.

use std::time::{Duration, Instant};

use jobd_client::proto::{self, EventType, JobState};
use tonic::Code;

use crate::harness::*;

/// libfaketime, which `.ci/install` installs: a process started with it preloaded reads a
/// clock `FAKETIME` off the real one.
fn faketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketimeMT.so.1"))
        .find(|library| library.exists());
    found
        .expect("libfaketime is installed (.ci/install)")
        .display()
        .to_string()
}

/// The jobd binary with its clock `offset` off the machine's (e.g. "+5s"), against `redis`.
async fn replica_with_clock(redis: &RedisServer, offset: &str) -> Running {
    let library = faketime();
    Running::start_with_env(
        &redis.url(),
        &[],
        &[
            ("LD_PRELOAD", library.as_str()),
            ("FAKETIME", offset),
            // Timers and sleeps run on the real monotonic clock.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_changes_no_time() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let fast = replica_with_clock(&redis, "+5s").await;
    let mut fast_jobs = fast.jobs().await;
    let (mut jobs, mut workers) = server.clients().await;

    // FIFO: a job submitted through the fast replica, then one through the other, are claimed
    // in that order (the fast clock would have put the first 5 s behind the second).
    let first = submit(&mut fast_jobs, "fifo", b"").await;
    let second = submit(&mut jobs, "fifo", b"").await;
    assert!(
        millis_of(&first.created_at) <= millis_of(&second.created_at),
        "created by Redis's clock"
    );
    for expected in [&first.id, &second.id] {
        let claimed = claim(&mut workers, "fifo").await;
        assert_eq!(&claimed.job.as_ref().unwrap().id, expected);
        complete(&mut workers, &claimed, b"").await.unwrap();
    }

    // A delayed job is not claimable before its time, whatever replica's sweeper looks.
    let mut delayed = submit_request("later");
    delayed.start = Some(proto::submit_job_request::Start::Delay(pb_duration(
        Duration::from_secs(3),
    )));
    let submitted_at = Instant::now();
    let delayed = submit_with(&mut jobs, delayed).await.job.unwrap();
    job_becomes(
        &jobs,
        &delayed.id,
        Duration::from_secs(10),
        "the job to be due",
        |job| job.state() == JobState::Queued,
    )
    .await;
    let waited = submitted_at.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "due after {waited:?}"
    );

    // A healthy lease of 4 s, kept alive with heartbeats every second through the other
    // replica for 6 s, is never taken away (the fast clock would see it run out at once).
    let mut leased = submit_request("leased");
    leased.lease = Some(pb_duration(Duration::from_secs(4)));
    let job = submit_with(&mut jobs, leased).await.job.unwrap();
    let mut request = claim_request("leased", Duration::from_secs(5));
    request.lease = None;
    let claimed = workers.claim_job(request).await.unwrap().into_inner();
    for _ in 0..6 {
        acknowledge(&mut workers, &job.id, &claimed.lease_token).await;
        // Paced as a worker's heartbeats are: what is under test is the time between them.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    complete(&mut workers, &claimed, b"kept").await.unwrap();
    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Completed]
    );
    let _ = fast.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_reaches_redis_late_neither_shortens_the_lease_nor_reorders_events() {
    let redis = RedisServer::start().await;
    let proxy = FaultyProxy::start(redis.port()).await;
    let direct = TestServer::start(&redis).await;
    let delayed = TestServer::start_with(&proxy.url(), Settings::default()).await;
    let (mut jobs, mut workers) = direct.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    let beat = |lease: u64, value: f64, message: &str| proto::HeartbeatRequest {
        job_id: job.id.clone(),
        lease_token: claimed.lease_token.clone(),
        lease: Some(pb_duration(Duration::from_secs(lease))),
        progress: Some(proto::Progress {
            value: Some(value),
            message: message.to_owned(),
        }),
    };

    // A heartbeat asking for a 1 s lease is held back on its way to Redis for 2.5 s; its
    // caller hears UNAVAILABLE after the 1 s command timeout, as with a Redis stall...
    proxy.delay(b"held-back", Duration::from_millis(2500));
    let mut late_workers = delayed.workers().await;
    let early = beat(1, 10.0, "held-back");
    let late = tokio::spawn(async move { late_workers.heartbeat(early).await });
    proxy.struck().await;
    // ... while a later one, asking for 30 s, gets through at once.
    let on_time = workers
        .heartbeat(beat(30, 20.0, "on time"))
        .await
        .unwrap()
        .into_inner();
    let refused = late.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // Then the held-back heartbeat is applied, by Redis's clock: after the later one in the
    // log and in time, and the lease stays where the later one put it.
    let events = first_events(&mut jobs, &job.id, 4).await;
    let progress: Vec<&str> = events[2..]
        .iter()
        .map(|event| event.progress.as_ref().unwrap().message.as_str())
        .collect();
    assert_eq!(progress, ["on time", "held-back"]);
    assert!(millis_of(&events[3].time) >= millis_of(&events[2].time));
    let job = get(&mut jobs, &job.id).await;
    assert_eq!(job.state(), JobState::Running);
    assert!(
        millis_of(&job.lease_expires_at) >= millis_of(&on_time.lease_expires_at),
        "the lease was not moved back"
    );
    complete(&mut workers, &claimed, b"done").await.unwrap();
}
