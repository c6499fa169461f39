//! Redis trouble: callers get UNAVAILABLE within a bounded time, never a hang, and service
//! resumes when Redis is back; a call whose reply was lost is safe to repeat.

use std::time::{Duration, Instant};

use jobd_client::proto::{EventType, JobState};
use tonic::Code;

use crate::harness::*;

/// Command timeout of the test servers is 1 s; allow scheduling slack on a busy machine.
const BOUND: Duration = Duration::from_secs(4);

async fn submit_status(server: &TestServer) -> (Result<(), tonic::Status>, Duration) {
    let mut jobs = server.jobs().await;
    let started = Instant::now();
    let result = jobs.submit_job(submit_request("q")).await.map(|_| ());
    (result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gives_unavailable_in_bounded_time() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;

    redis.signal("STOP");
    let (result, took) = submit_status(&server).await;
    let status = result.expect_err("submit fails while Redis is frozen");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(took < BOUND, "took {took:?}");
    assert!(
        !status.message().to_lowercase().contains("timeout"),
        "no Redis error text"
    );
    let started = Instant::now();
    let status = jobs
        .get_job(jobd_client::proto::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(started.elapsed() < BOUND);

    redis.signal("CONT");
    eventually(Duration::from_secs(15), "service to resume", || async {
        submit_status(&server).await.0.ok()
    })
    .await;
    assert_eq!(get(&mut jobs, &job.id).await.id, job.id, "nothing was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_gives_unavailable_then_service_resumes_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    submit(&mut jobs, "q", b"").await;

    redis.stop();
    for _ in 0..3 {
        let (result, took) = submit_status(&server).await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        assert!(took < BOUND, "took {took:?}");
    }

    redis.restart().await;
    eventually(Duration::from_secs(15), "service to resume", || async {
        submit_status(&server).await.0.ok()
    })
    .await;
    // The connections came back named.
    eventually(Duration::from_secs(10), "named connections", || async {
        (redis.clients_named(&server.client_name_prefix()).len() == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_reply_is_lost_is_recorded_once_and_safe_to_repeat() {
    let redis = RedisServer::start().await;
    let proxy = FaultyProxy::start(redis.port()).await;
    let server = TestServer::start_with(&proxy.url(), Settings::default()).await;
    let (mut jobs, mut workers) = server.clients().await;
    // A first job completed, so that the call whose reply is lost is the completion, not a
    // load of its script.
    submit(&mut jobs, "q", b"").await;
    let first = claim(&mut workers, "q").await;
    complete(&mut workers, &first, b"first").await.unwrap();
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;

    // Redis records the completion, but its reply never comes back: the worker is told
    // UNAVAILABLE, and does what it should, call again.
    proxy.lose_replies_after(b"the-lost-result");
    let lost = complete(&mut workers, &claimed, b"the-lost-result")
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    proxy.lossy_connection_closed().await;
    complete(&mut workers, &claimed, b"the-lost-result")
        .await
        .expect("the repeated completion succeeds");

    let done = get(&mut jobs, &job.id).await;
    assert_eq!(done.state, JobState::Completed as i32);
    assert_eq!(done.result.as_ref(), b"the-lost-result");
    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.expect("the watch ends with OK");
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Completed],
        "completed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_every_call_fails_within_the_command_timeout_of_its_arrival() {
    const CALLERS: usize = 20;
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    // The queue registered and every script loaded before Redis freezes.
    submit(&mut jobs, "busy", b"").await;
    let claimed = claim(&mut workers, "busy").await;
    complete(&mut workers, &claimed, b"").await.unwrap();
    for _ in 0..CALLERS {
        submit(&mut jobs, "busy", b"").await;
    }
    let clients: Vec<_> = futures::future::join_all((0..CALLERS).map(|_| server.client())).await;

    // Submissions and claims of one queue, arriving while each other's group-commit calls are
    // in flight: each waits for Redis at most the command timeout (1 s) from its arrival, not
    // for the calls queued before it to time out first.
    redis.signal("STOP");
    let calls = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| async move {
            // Paced over the first half second, so that most arrive during another's call.
            tokio::time::sleep(Duration::from_millis(25 * i as u64)).await;
            let started = Instant::now();
            let code = if i % 2 == 0 {
                let mut jobs = client.jobs();
                jobs.submit_job(submit_request("busy"))
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code()
            } else {
                let mut workers = client.workers();
                let claim = claim_request("busy", Duration::ZERO);
                workers
                    .claim_job(claim)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code()
            };
            (code, started.elapsed())
        });
    let outcomes = futures::future::join_all(calls).await;
    redis.signal("CONT");
    for (i, (code, took)) in outcomes.into_iter().enumerate() {
        assert_eq!(code, Code::Unavailable, "call {i}");
        assert!(took < Duration::from_millis(1100), "call {i} took {took:?}");
    }
}
