//! Retries with backoff, lease expiry, delayed jobs, priorities, idempotency keys, retention.

use std::time::{Duration, Instant};

use jobd_client::proto::{self, EventType, JobState};
use tonic::Code;

use crate::harness::*;

fn backoff(initial_ms: u64, multiplier: f64) -> Option<proto::BackoffPolicy> {
    Some(proto::BackoffPolicy {
        initial: Some(pb_duration(Duration::from_millis(initial_ms))),
        multiplier: Some(multiplier),
        max: None,
        jitter: Some(0.0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_twice_then_completed_retries_per_the_backoff_policy() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut request = submit_request("retry");
    request.max_attempts = 3;
    request.backoff = backoff(200, 2.0);
    let id = submit_with(&mut jobs, request).await.job.unwrap().id;

    let first = claim(&mut workers, "retry").await;
    let failed = fail(&mut workers, &first, "boom 1", true).await;
    assert_eq!(failed.state(), JobState::Scheduled);
    let waiting = get(&mut jobs, &id).await;
    assert_eq!(waiting.state(), JobState::Scheduled);
    assert_eq!((waiting.attempt, waiting.error.as_str()), (1, "boom 1"));
    assert_eq!(millis_of(&waiting.run_at), millis_of(&failed.retry_at));
    let none = workers
        .claim_job(claim_request("retry", Duration::ZERO))
        .await
        .unwrap();
    assert!(
        none.into_inner().job.is_none(),
        "not claimable during the backoff"
    );

    let second = claim(&mut workers, "retry").await;
    assert_eq!(second.job.as_ref().unwrap().attempt, 2);
    fail(&mut workers, &second, "boom 2", true).await;
    let third = claim(&mut workers, "retry").await;
    assert_eq!(third.job.as_ref().unwrap().attempt, 3);
    complete(&mut workers, &third, b"finally").await.unwrap();

    let (events, end) = watch_to_end(&mut jobs, &id, 0).await;
    end.expect("the stream ends with OK");
    use EventType::*;
    assert_eq!(
        types(&events),
        [
            Queued,
            Started,
            RetryScheduled,
            Queued,
            Started,
            RetryScheduled,
            Queued,
            Started,
            Completed
        ]
    );
    let attempts: Vec<u32> = events.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [0, 1, 1, 1, 2, 2, 2, 3, 3]);
    for (retry, delay, error) in [(&events[2], 200, "boom 1"), (&events[5], 400, "boom 2")] {
        assert_eq!(retry.error, error);
        assert_eq!(
            millis_of(&retry.run_at) - millis_of(&retry.time),
            delay,
            "backoff delay"
        );
    }
    // Each retry became claimable at its time, not before, and promptly.
    for (retry, queued) in [(&events[2], &events[3]), (&events[5], &events[6])] {
        let late = millis_of(&queued.time) - millis_of(&retry.run_at);
        assert!(
            (0..1000).contains(&late),
            "claimable {late} ms after its time"
        );
    }
    let done = get(&mut jobs, &id).await;
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_and_exhausted_failures_end_failed() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;

    let id = submit_with(&mut jobs, submit_request("a"))
        .await
        .job
        .unwrap()
        .id;
    let claimed = claim(&mut workers, "a").await;
    let failed = fail(&mut workers, &claimed, "bad input", false).await;
    assert_eq!(failed.state(), JobState::Failed);
    assert!(failed.retry_at.is_none());
    let (events, end) = watch_to_end(&mut jobs, &id, 0).await;
    end.expect("the stream ends with OK after FAILED");
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Failed]
    );
    assert_eq!(
        get(&mut jobs, &id).await.attempt,
        1,
        "attempts were left, but not used"
    );

    let mut request = submit_request("b");
    request.max_attempts = 2;
    request.backoff = backoff(0, 1.0);
    let id = submit_with(&mut jobs, request).await.job.unwrap().id;
    let first = claim(&mut workers, "b").await;
    assert_eq!(
        fail(&mut workers, &first, "e1", true).await.state(),
        JobState::Scheduled
    );
    let second = claim(&mut workers, "b").await;
    assert_eq!(
        fail(&mut workers, &second, "e2", true).await.state(),
        JobState::Failed
    );
    let (events, end) = watch_to_end(&mut jobs, &id, 0).await;
    end.expect("the stream ends with OK after FAILED");
    assert_eq!(events.last().unwrap().r#type(), EventType::Failed);
    assert_eq!(events.last().unwrap().error, "e2");
    let job = get(&mut jobs, &id).await;
    assert_eq!(
        (job.state(), job.attempt, job.error.as_str()),
        (JobState::Failed, 2, "e2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workers_job_is_claimed_again_and_its_late_calls_refused() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut request = submit_request("q");
    request.backoff = backoff(0, 1.0);
    let id = submit_with(&mut jobs, request).await.job.unwrap().id;

    let mut silent = claim_request("q", Duration::ZERO);
    silent.lease = Some(pb_duration(Duration::from_secs(1)));
    let silent = workers.claim_job(silent).await.unwrap().into_inner();
    let claimed_at = Instant::now();
    assert_eq!(silent.job.as_ref().unwrap().id, id);
    // It acknowledges the job, then goes silent: its attempt counts.
    acknowledge(&mut workers, &id, &silent.lease_token).await;

    let again = claim(&mut workers, "q").await;
    let after = claimed_at.elapsed();
    assert_eq!(again.job.as_ref().unwrap().id, id);
    assert_eq!(again.job.as_ref().unwrap().attempt, 2);
    assert!(
        after < Duration::from_secs(2) + Duration::from_millis(500),
        "took {after:?}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "not before the lease ran out: {after:?}"
    );

    let refused = complete(&mut workers, &silent, b"late").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let beat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: id.clone(),
            lease_token: silent.lease_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(beat.code(), Code::FailedPrecondition);
    complete(&mut workers, &again, b"ok").await.unwrap();

    let (events, end) = watch_to_end(&mut jobs, &id, 0).await;
    end.unwrap();
    assert_eq!(events[2].r#type(), EventType::RetryScheduled);
    assert_eq!(events[2].error, "lease expired");
    assert_eq!(&events.last().unwrap().result[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_recover_each_expired_lease_exactly_once() {
    const JOBS: usize = 200;
    let redis = RedisServer::start().await;
    let a = TestServer::start(&redis).await;
    let b = TestServer::start(&redis).await;
    let mut jobs = a.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let mut request = submit_request("many");
        request.max_attempts = 2;
        request.backoff = backoff(100, 1.0);
        request.lease = Some(pb_duration(Duration::from_secs(3)));
        ids.push(submit_with(&mut jobs, request).await.job.unwrap().id);
    }
    // Claim every job through both servers, well within the lease, and let every lease run out.
    let mut claimers = Vec::new();
    for worker in 0..10 {
        let mut workers = if worker % 2 == 0 {
            a.workers().await
        } else {
            b.workers().await
        };
        claimers.push(tokio::spawn(async move {
            // No lease asked for: the job's own (3 s) applies.
            let mut request = claim_request("many", Duration::from_secs(5));
            request.lease = None;
            for _ in 0..JOBS / 10 {
                let claimed = workers
                    .claim_job(request.clone())
                    .await
                    .unwrap()
                    .into_inner();
                let job = claimed.job.expect("a job");
                let lease = millis_of(&claimed.lease_expires_at) - millis_of(&job.started_at);
                assert_eq!(lease, 3000, "the job's own lease applies");
                assert_eq!(job.attempt, 1, "claimed before any lease expired");
                // Acknowledged, then silent: each lease runs out and costs an attempt.
                acknowledge(&mut workers, &job.id, &claimed.lease_token).await;
            }
        }));
    }
    for claimer in claimers {
        claimer.await.unwrap();
    }
    let mut workers = [a.workers().await, b.workers().await];
    eventually(
        Duration::from_secs(20),
        "every job to be queued again",
        || {
            let mut jobs = jobs.clone();
            async move { (stats(&mut jobs, "many").await.queued == JOBS as u64).then_some(()) }
        },
    )
    .await;

    let mut b_jobs = b.jobs().await;
    for id in &ids {
        let job = get(&mut jobs, id).await;
        assert_eq!(job.state(), JobState::Queued, "{id}");
        assert_eq!(job.attempt, 1, "{id}: one attempt so far");
        assert_eq!(job.error, "lease expired");
        assert_eq!(
            job.last_sequence, 4,
            "{id}: QUEUED STARTED RETRY_SCHEDULED QUEUED, once each"
        );
        let events = first_events(&mut b_jobs, id, 4).await;
        use EventType::*;
        assert_eq!(types(&events), [Queued, Started, RetryScheduled, Queued]);
    }
    let claimed = claim(&mut workers[0], "many").await;
    assert_eq!(claimed.job.unwrap().attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_is_claimable_at_its_time_and_not_before() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut request = submit_request("later");
    request.start = Some(proto::submit_job_request::Start::Delay(pb_duration(
        Duration::from_millis(1500),
    )));
    let submitted = submit_with(&mut jobs, request).await.job.unwrap();
    assert_eq!(submitted.state(), JobState::Scheduled);
    let due = millis_of(&submitted.run_at);
    assert_eq!(due - millis_of(&submitted.created_at), 1500);

    let early = workers
        .claim_job(claim_request("later", Duration::ZERO))
        .await
        .unwrap();
    assert!(
        early.into_inner().job.is_none(),
        "not claimable before its time"
    );
    let claimed = claim(&mut workers, "later").await;
    assert_eq!(claimed.job.as_ref().unwrap().id, submitted.id);

    let events = first_events(&mut jobs, &submitted.id, 3).await;
    use EventType::*;
    assert_eq!(types(&events), [Scheduled, Queued, Started]);
    assert_eq!(millis_of(&events[0].run_at), due);
    // By the server's clock: claimable (QUEUED) and claimed (STARTED) within 100 ms of due.
    for event in &events[1..] {
        let late = millis_of(&event.time) - due;
        assert!(
            (0..=100).contains(&late),
            "{:?} {late} ms after its time",
            event.r#type()
        );
    }

    // A run_at in the past means at once.
    let mut request = submit_request("now");
    request.start = Some(proto::submit_job_request::Start::RunAt(
        prost_types::Timestamp {
            seconds: 1_000_000_000,
            nanos: 0,
        },
    ));
    let job = submit_with(&mut jobs, request).await.job.unwrap();
    assert_eq!(job.state(), JobState::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_first_fifo_within_a_priority() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut ids = std::collections::HashMap::new();
    for (name, priority) in [("a", 0), ("b", 5), ("c", 0), ("d", 10), ("e", 5), ("f", -3)] {
        let mut request = submit_request("prio");
        request.priority = priority;
        ids.insert(submit_with(&mut jobs, request).await.job.unwrap().id, name);
    }
    let mut order = String::new();
    for _ in 0..6 {
        let claimed = claim(&mut workers, "prio").await;
        order.push_str(ids[&claimed.job.unwrap().id]);
    }
    assert_eq!(order, "dbeacf");

    let mut bad = submit_request("prio");
    bad.priority = 1001;
    let status = jobs.submit_job(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("priority"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_idempotency_key_create_one_job() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let keyed = |payload: &[u8]| {
        let mut request = submit_request("idem");
        request.idempotency_key = "order-42".into();
        request.payload = payload.to_vec().into();
        request
    };
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (mut jobs, request) = (server.jobs().await, keyed(b"order"));
        tasks.push(tokio::spawn(async move {
            submit_with(&mut jobs, request).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for task in tasks {
        let response = task.await.unwrap();
        ids.insert(response.job.unwrap().id);
        created += usize::from(response.created);
    }
    assert_eq!(ids.len(), 1, "every caller got the same job");
    assert_eq!(created, 1, "exactly one caller created it");
    let job_keys = redis.keys(JOB_KEYS);
    assert_eq!(job_keys.len(), 1, "one job in Redis: {job_keys:?}");
    let mut jobs = server.jobs().await;
    assert_eq!(stats(&mut jobs, "idem").await.queued, 1);

    // The key with another request is refused, naming the key, and writes nothing: not the
    // payload, nor the kind, nor an option may differ. Trace context may.
    let mut other_kind = keyed(b"order");
    other_kind.kind = "other".into();
    let mut other_priority = keyed(b"order");
    other_priority.priority = 5;
    for request in [keyed(b"another order"), other_kind, other_priority] {
        let refused = jobs.submit_job(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
        assert!(refused.message().contains("\"order-42\""), "{refused:?}");
    }
    assert_eq!(redis.keys(JOB_KEYS), job_keys);
    let mut traced = tonic::Request::new(keyed(b"order"));
    traced.metadata_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let again = jobs.submit_job(traced).await.unwrap().into_inner();
    assert!(!again.created);
    assert!(ids.contains(&again.job.unwrap().id));

    // Another key is another job; so is the same key in another queue.
    let mut request = submit_request("idem");
    request.idempotency_key = "order-43".into();
    let other = submit_with(&mut jobs, request).await;
    assert!(other.created);
    assert!(!ids.contains(&other.job.unwrap().id));
    let mut elsewhere = keyed(b"another order");
    elsewhere.queue = "idem-2".into();
    assert!(submit_with(&mut jobs, elsewhere).await.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_count_jobs_by_state() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    for _ in 0..5 {
        submit_with(&mut jobs, submit_request("s")).await;
    }
    let mut delayed = submit_request("s");
    delayed.start = Some(proto::submit_job_request::Start::Delay(pb_duration(
        Duration::from_secs(3600),
    )));
    let delayed = submit_with(&mut jobs, delayed).await.job.unwrap();
    let done = claim(&mut workers, "s").await;
    complete(&mut workers, &done, b"").await.unwrap();
    let failed = claim(&mut workers, "s").await;
    fail(&mut workers, &failed, "x", false).await;
    claim(&mut workers, "s").await;
    let queued = submit_with(&mut jobs, submit_request("s"))
        .await
        .job
        .unwrap();
    cancel(&mut jobs, &queued.id, "").await;
    assert_eq!(
        stats(&mut jobs, "s").await,
        proto::QueueStats {
            queue: "s".into(),
            queued: 2,
            scheduled: 1,
            running: 1,
            completed: 1,
            failed: 1,
            cancelled: 1,
        }
    );
    // Cancelling the scheduled job takes it out of the schedule.
    cancel(&mut jobs, &delayed.id, "").await;
    let after = stats(&mut jobs, "s").await;
    assert_eq!((after.scheduled, after.cancelled), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_leave_no_keys_once_their_retention_passes() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let mut request = submit_request("short");
        request.retention = Some(pb_duration(Duration::from_secs(1)));
        if i % 3 == 0 {
            request.idempotency_key = format!("key-{i}");
        }
        ids.push(submit_with(&mut jobs, request).await.job.unwrap().id);
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 3 == 2 {
            cancel(&mut jobs, id, "").await;
            continue;
        }
        let claimed = claim(&mut workers, "short").await;
        if i % 3 == 0 {
            complete(&mut workers, &claimed, b"r").await.unwrap();
        } else {
            fail(&mut workers, &claimed, "no", false).await;
        }
    }
    let remaining = eventually(Duration::from_secs(15), "every key to go", || async {
        let mut keys = redis.keys("jobd:*");
        keys.retain(|key| key != "jobd:queues");
        keys.is_empty().then_some(keys)
    })
    .await;
    assert!(remaining.is_empty());
    for id in ids.iter().step_by(37) {
        let status = jobs
            .get_job(proto::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    assert_eq!(
        stats(&mut jobs, "short").await,
        proto::QueueStats {
            queue: "short".into(),
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scheduling_options_are_refused_by_field() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    type Change = Box<dyn Fn(&mut proto::SubmitJobRequest)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|r| r.max_attempts = 101), "max_attempts"),
        (
            Box::new(|r| {
                r.backoff = Some(proto::BackoffPolicy {
                    multiplier: Some(0.5),
                    ..Default::default()
                })
            }),
            "backoff.multiplier",
        ),
        (
            Box::new(|r| {
                r.backoff = Some(proto::BackoffPolicy {
                    jitter: Some(2.0),
                    ..Default::default()
                })
            }),
            "backoff.jitter",
        ),
        (
            Box::new(|r| {
                r.start = Some(proto::submit_job_request::Start::Delay(pb_duration(
                    Duration::from_secs(400 * 86400),
                )))
            }),
            "delay",
        ),
        (
            Box::new(|r| r.lease = Some(pb_duration(Duration::from_millis(10)))),
            "lease",
        ),
        (
            Box::new(|r| r.retention = Some(pb_duration(Duration::from_secs(31 * 86400)))),
            "retention",
        ),
        (
            Box::new(|r| {
                r.idempotency_key = "k".into();
                r.idempotency_ttl = Some(pb_duration(Duration::from_secs(2 * 86400)));
            }),
            "idempotency_ttl",
        ),
        (
            Box::new(|r| r.idempotency_key = "x".repeat(257)),
            "idempotency_key",
        ),
    ];
    for (change, field) in cases {
        let mut request = submit_request("q");
        change(&mut request);
        let status = jobs.submit_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    assert!(redis.keys(JOB_KEYS).is_empty(), "nothing written");
}

/// How many times the sweepers visited a queue: each visit (sweep.lua) runs ZRANGEBYSCORE ten
/// times (trimming three sets, reading the head of five, the due and the expired), and only
/// the sweepers' reads of the due index (two a second per replica) run it too. How often
/// queues are swept is what the tests below assert, so Redis's command statistics count it.
fn sweeps(redis: &RedisServer) -> u64 {
    redis.command_calls("zrangebyscore") / 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_queues_are_not_swept_every_second() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    // Twenty queues, each with a finished job retained and nothing scheduled or running.
    for queue in 0..20 {
        let queue = format!("idle-{queue}");
        submit(&mut jobs, &queue, b"").await;
        let claimed = claim(&mut workers, &queue).await;
        complete(&mut workers, &claimed, b"").await.unwrap();
    }
    // Each is due when its claim's acknowledgement deadline (5 s) passes.
    eventually(
        Duration::from_secs(12),
        "every queue to be swept",
        || async { (sweeps(&redis) >= 20).then_some(()) },
    )
    .await;
    // A queue's visit while its job still ran is followed by one within a second, which finds
    // it idle: measure once a second and a half has passed without any sweep.
    // (A quiet period, only time passing can show.)
    eventually(Duration::from_secs(10), "the sweeps to settle", || async {
        let before = sweeps(&redis);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (sweeps(&redis) == before).then_some(())
    })
    .await;
    let before = sweeps(&redis);
    // That sweeps do not come every second, only time passing can show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Swept every second, the twenty queues would take sixty sweeps in these three seconds.
    let during = sweeps(&redis) - before;
    assert!(during < 20, "{during} sweeps of idle queues in 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_is_swept_again_once_another_server_claims_in_it() {
    let redis = RedisServer::start().await;
    let a = TestServer::start(&redis).await;
    let b = TestServer::start(&redis).await;
    // The queue is known to b, and idle there: its one job is ready, nothing is scheduled or
    // running.
    let mut request = submit_request("elsewhere");
    request.backoff = backoff(0, 1.0);
    let id = submit_with(&mut b.jobs().await, request)
        .await
        .job
        .unwrap()
        .id;
    // A queue whose jobs are all ready has nothing due: in the due index, never visited.
    until(
        Duration::from_secs(5),
        "the queue to be in the due index",
        || redis.cli(&["ZSCORE", "jobd:{:queues}:due", "elsewhere"]) == "inf",
    )
    .await;

    // Claimed through a, with a lease of 1 s; then a goes away, and its sweeper with it.
    let mut silent = claim_request("elsewhere", Duration::ZERO);
    silent.lease = Some(pb_duration(Duration::from_secs(1)));
    let mut a_workers = a.workers().await;
    let silent = a_workers.claim_job(silent).await.unwrap().into_inner();
    assert_eq!(silent.job.as_ref().unwrap().id, id);
    let claimed_at = Instant::now();
    acknowledge(&mut a_workers, &id, &silent.lease_token).await;
    a.stop().await.unwrap();

    // b heard of the claim (its STARTED event) and recovers the lease when it runs out, not
    // at its next visit of an idle queue.
    let mut jobs = b.jobs().await;
    job_becomes(
        &jobs,
        &id,
        Duration::from_secs(10),
        "the lease to be recovered",
        |job| job.error == "lease expired",
    )
    .await;
    let after = claimed_at.elapsed();
    assert!(after < Duration::from_secs(3), "took {after:?}");
    let again = claim(&mut b.workers().await, "elsewhere").await;
    assert_eq!(again.job.as_ref().unwrap().attempt, 2);
    complete(&mut b.workers().await, &again, b"ok")
        .await
        .unwrap();
    let done = get(&mut jobs, &id).await;
    assert_eq!(done.state(), JobState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_naming_one_key_many_times_submits_and_reads_it_once() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let keyed = |payload: &[u8]| proto::SubmitJobRequest {
        idempotency_key: "dup".into(),
        payload: payload.to_vec().into(),
        ..submit_request("dups")
    };
    let batch = || proto::SubmitJobsRequest {
        jobs: vec![keyed(&[7; 1024]); 1000],
    };
    for round in 0..2 {
        let (scripts, reads) = (redis.command_calls("evalsha"), redis.command_calls("hmget"));
        let began = std::time::Instant::now();
        let results = jobs
            .submit_jobs(batch())
            .await
            .unwrap()
            .into_inner()
            .results;
        let ids: std::collections::HashSet<String> = results
            .iter()
            .map(|result| result.job.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "one job for one key");
        let created = results.iter().filter(|result| result.created).count();
        assert_eq!(created, usize::from(round == 0));
        let scripts = redis.command_calls("evalsha") - scripts;
        let reads = redis.command_calls("hmget") - reads;
        // Redis counts every script: the sweeper's read of the due index, once a second
        // (`sweeper::POLL`), may fall in the window too. One per copy would be 1,000.
        let sweeps = began.elapsed().as_secs() + 1;
        assert!(
            scripts <= 2 + sweeps && reads <= 2,
            "{scripts} scripts ({sweeps} may be the sweeper's), {reads} reads"
        );
    }
    assert_eq!(redis.keys(JOB_KEYS).len(), 1);

    // The key named twice in one batch with two different requests: refused whole.
    let request = proto::SubmitJobsRequest {
        jobs: vec![
            submit_request("dups"),
            proto::SubmitJobRequest {
                idempotency_key: "other".into(),
                ..keyed(b"a")
            },
            proto::SubmitJobRequest {
                idempotency_key: "other".into(),
                ..keyed(b"b")
            },
        ],
    };
    let refused = jobs.submit_jobs(request).await;
    let conflict = assert_reason(refused, tonic::Code::AlreadyExists, "IDEMPOTENCY_CONFLICT");
    assert_eq!(conflict["key"], "other");
    assert_eq!(redis.keys(JOB_KEYS).len(), 1, "nothing written");
}
