//! Claimed jobs are never leased to nobody: those claimed for a caller that went away before
//! receiving them (its call was cancelled or timed out), or by a script call whose reply was
//! lost, go back to their queue at once, not after their lease, and the claim does not count
//! as an attempt; a claim call that runs twice answers its jobs again.

use std::time::Duration;

use jobd_client::proto::{self, EventType, JobState};

use crate::harness::*;

/// Claims the job of `queue` as another worker and completes it; returns the job's events.
async fn run_to_the_end(server: &TestServer, queue: &str, id: &str) -> Vec<proto::JobEvent> {
    let mut workers = server.workers().await;
    let claimed = claim(&mut workers, queue).await;
    let job = claimed.job.as_ref().unwrap();
    assert_eq!(job.id, id);
    assert_eq!(job.attempt, 1, "the released claim did not count");
    complete(&mut workers, &claimed, b"done").await.unwrap();
    let (events, end) = watch_to_end(&mut server.jobs().await, id, 0).await;
    end.expect("the watch ends with OK");
    events
}

const RELEASED_THEN_RUN: [EventType; 5] = [
    EventType::Queued,
    EventType::Started,
    EventType::Released,
    EventType::Started,
    EventType::Completed,
];

/// A worker id that the proxy watches for: the call carrying it (a claim of its, or a
/// submission's hand-off to it) is the one that loses its reply or is held back.
const UNLUCKY: &str = "unlucky-worker";

/// A claim request of `UNLUCKY`'s, with a lease and an acknowledgement timeout of 60 s: longer
/// than any wait of these tests, so that only a release can bring its job back in time.
fn unlucky_claim_request(queue: &str, wait: Duration) -> proto::ClaimJobRequest {
    proto::ClaimJobRequest {
        worker_id: UNLUCKY.to_owned(),
        lease: Some(pb_duration(Duration::from_secs(60))),
        ack_timeout: Some(pb_duration(Duration::from_secs(60))),
        ..claim_request(queue, wait)
    }
}

/// A jobd whose Redis connections go through `proxy`, with the queue "lost" known and the
/// scripts loaded (a job submitted and claimed), so that the call the proxy acts on is the one
/// that claims, not a load of its script.
async fn through(proxy: &FaultyProxy) -> TestServer {
    let server = TestServer::start_with(&proxy.url(), Settings::default()).await;
    submit(&mut server.jobs().await, "lost", b"").await;
    claim(&mut server.workers().await, "lost").await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_caller_goes_away_mid_call_puts_its_job_back() {
    let redis = RedisServer::start().await;
    let proxy = FaultyProxy::start(redis.port()).await;
    let server = through(&proxy).await;
    let jobs = server.jobs().await;
    let job = submit(&mut jobs.clone(), "back", b"").await;

    // The claim's call is held back on its way to Redis, so that it is in flight when its
    // caller gives up; it reaches Redis later, within the 1 s command timeout.
    proxy.delay(UNLUCKY.as_bytes(), Duration::from_millis(500));
    let request = unlucky_claim_request("back", Duration::ZERO);
    let claiming = claim_in_background(server.workers().await, request);
    proxy.struck().await;
    claiming.abort();

    // The claim was made once its call reached Redis, for nobody: the job is back, its
    // attempt uncounted.
    let back = back_in_queue(&jobs, &job.id, 3).await;
    assert_eq!(back.attempt, 0);
    let events = run_to_the_end(&server, "back", &job.id).await;
    assert_eq!(types(&events), RELEASED_THEN_RUN);
    assert_eq!(events[2].attempt, 0);
    assert_eq!(events[3].attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_to_a_claim_whose_caller_went_away_goes_back() {
    let redis = RedisServer::start().await;
    // The queue is known to Redis before the measured submission, through a jobd of its own:
    // the wake-up of this first job cannot reach the jobd under test, and take the claim
    // below out of its park after the fact.
    let first = {
        let earlier = TestServer::start(&redis).await;
        let (mut jobs, mut workers) = earlier.clients().await;
        let first = submit(&mut jobs, "gone", b"").await;
        claim(&mut workers, "gone").await;
        first
    };
    let proxy = FaultyProxy::start(redis.port()).await;
    let server = through(&proxy).await;
    let jobs = server.jobs().await;

    // A claim that finds the queue empty, and parks.
    let request = unlucky_claim_request("gone", Duration::from_secs(10));
    let parked = waiting_claim(&server, request).await;
    // A submission takes the parked claim (its hand-off names the claim's worker); its call is
    // held back on its way to Redis, so that it is in flight...
    proxy.delay(UNLUCKY.as_bytes(), Duration::from_millis(500));
    let mut submitter = jobs.clone();
    let submitting = tokio::spawn(async move { submit(&mut submitter, "gone", b"").await });
    proxy.struck().await;
    // ... when the claim's caller gives up.
    parked.abort();

    let job = submitting.await.unwrap();
    assert_ne!(job.id, first.id);
    let back = back_in_queue(&jobs, &job.id, 3).await;
    assert_eq!(back.attempt, 0);
    let events = run_to_the_end(&server, "gone", &job.id).await;
    assert_eq!(types(&events), RELEASED_THEN_RUN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_dead_and_a_second_release_changes_nothing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "fence", b"").await;
    let claimed = claim(&mut workers, "fence").await;
    let ulid = job.id.strip_prefix("fence.").expect("ids are queue.ulid");
    let key = format!("jobd:{{fence}}:job:{ulid}");
    let run_release_script = |token: &str| {
        redis.cli(&[
            "EVAL",
            lua_script!("release"),
            "3",
            "jobd:{fence}:ready",
            "jobd:{fence}:running",
            &key,
            "jobd:wake:jobs",
            "jobd:wake:queues",
            "fence",
            "the claim's reply never reached a worker",
            "undelivered",
            "256",
            &job.id,
            token,
        ])
    };

    // Another lease's token puts nothing back.
    assert_eq!(run_release_script("not-the-token"), "stale\nrunning");
    assert_eq!(
        get(&mut jobs, &job.id).await.state,
        JobState::Running as i32
    );
    assert_eq!(run_release_script(&claimed.lease_token), "ok");
    assert_eq!(
        run_release_script(&claimed.lease_token),
        "again",
        "run twice, nothing changes"
    );
    let back = get(&mut jobs, &job.id).await;
    assert_eq!(back.state, JobState::Queued as i32);
    assert_eq!(back.attempt, 0);
    assert_eq!(
        redis.cli(&["ZRANGE", "jobd:{fence}:running", "0", "-1"]),
        ""
    );
    assert_eq!(
        redis.cli(&["ZRANGE", "jobd:{fence}:ready", "0", "-1"]),
        job.id
    );

    // The released lease's holder is refused, as a stale worker is.
    let refused = complete(&mut workers, &claimed, b"late").await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_script_run_twice_answers_its_first_runs_claims_again_and_no_more() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&mut jobs, "replay", b"").await.id);
    }
    let key = |id: &str| {
        format!(
            "jobd:{{replay}}:job:{}",
            id.strip_prefix("replay.").unwrap()
        )
    };
    let keys: Vec<String> = ids.iter().map(|id| key(id)).collect();
    let tokens = ["token-1", "token-2", "token-3"];
    // One claimer wanting 2 of the 3 candidates, as jobd makes the call.
    let run = || {
        let mut args = vec![
            "EVAL",
            lua_script!("claim"),
            "6",
            "jobd:{replay}:ready",
            "jobd:{replay}:running",
        ];
        args.extend(keys.iter().map(String::as_str));
        args.push("jobd:{replay}:due");
        args.extend([
            "jobd:wake:jobs",
            "30000",
            "1",
            "256",
            "w",
            "",
            "2",
            "5000",
            "4000000",
            "1",
        ]);
        for (id, token) in ids.iter().zip(tokens) {
            args.extend([id.as_str(), token]);
        }
        // The reply but its first line, the time the script ran, and the due index's mark
        // the first run ends with (`due:...`).
        redis
            .cli(&args)
            .lines()
            .skip(1)
            .filter(|line| !line.starts_with("due:"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // No claimer's reply is full; claimer 1 gets two jobs: id, token, lease expiry,
    // acknowledgement deadline, size.
    let first = run();
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 13, "{first}");
    assert_eq!(lines[0], "", "no full reply");
    assert_eq!(&lines[1..4], ["1", ids[0].as_str(), "token-1"]);
    assert_eq!(&lines[7..10], ["1", ids[1].as_str(), "token-2"]);
    let expires: u64 = lines[4].parse().unwrap();
    let ack: u64 = lines[5].parse().unwrap();
    assert_eq!(expires - ack, 25_000, "acknowledged 5 s into a 30 s lease");
    // Again, as fred would resend it after a lost reply: the same claims, nothing written twice,
    // and the third job, which the first run left, still ready.
    assert_eq!(run(), first);
    assert_eq!(redis.cli(&["HGET", &keys[0], "seq"]), "2");
    assert_eq!(redis.cli(&["HGET", &keys[0], "attempt"]), "1");
    assert_eq!(
        redis.cli(&["ZRANGE", "jobd:{replay}:ready", "0", "-1"]),
        ids[2]
    );
    assert_eq!(redis.cli(&["ZCARD", "jobd:{replay}:running"]), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_is_lost_puts_its_job_back() {
    let redis = RedisServer::start().await;
    let proxy = FaultyProxy::start(redis.port()).await;
    let server = through(&proxy).await;
    let jobs = server.jobs().await;
    let job = submit(&mut jobs.clone(), "lost", b"").await;

    // The claim's script runs in Redis, but its reply never comes back: the call fails.
    proxy.lose_replies_after(UNLUCKY.as_bytes());
    let mut workers = server.workers().await;
    let refused = workers
        .claim_job(unlucky_claim_request("lost", Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    proxy.lossy_connection_closed().await;

    // The job it claimed for nobody is back, its attempt uncounted.
    let back = back_in_queue(&jobs, &job.id, 3).await;
    assert_eq!(back.attempt, 0);
    let events = run_to_the_end(&server, "lost", &job.id).await;
    assert_eq!(types(&events), RELEASED_THEN_RUN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_whose_reply_is_lost_puts_its_job_back() {
    let redis = RedisServer::start().await;
    let proxy = FaultyProxy::start(redis.port()).await;
    let server = through(&proxy).await;

    let mut jobs = server.jobs().await;
    // A claim finds the queue empty and parks; a submission hands its job to it, in a script
    // whose reply is lost (the hand-off's arguments name the claim's worker): the submission
    // fails...
    // (A queue no job went to yet: no wake-up still on its way can take the claim out of its
    // park after the fact.)
    let request = unlucky_claim_request("handed", Duration::from_secs(10));
    let parked = waiting_claim(&server, request).await;
    proxy.lose_replies_after(UNLUCKY.as_bytes());
    let refused = jobs
        .submit_job(submit_request("handed"))
        .await
        .expect_err("the hand-off's reply is lost");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    proxy.lossy_connection_closed().await;

    // ... but its job was made, and is not lost. The parked claim, answered with nothing, looks
    // again: it gets the job back from the hand-off nobody heard of, at attempt 1, unless its
    // look went through the connection that stopped answering (UNAVAILABLE); then the job
    // waits in the queue for the next claim.
    let events = match parked.await.unwrap().map(|response| response.into_inner()) {
        Ok(claimed @ proto::ClaimJobResponse { job: Some(_), .. }) => {
            let job = claimed.job.as_ref().unwrap();
            assert_eq!(job.attempt, 1, "the lost hand-off did not count");
            let mut workers = server.workers().await;
            complete(&mut workers, &claimed, b"done").await.unwrap();
            let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
            end.expect("the watch ends with OK");
            events
        }
        other => {
            if let Err(status) = other {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            }
            let id = eventually(Duration::from_secs(5), "the job to be queued again", || {
                let ready = redis.cli(&["ZRANGE", "jobd:{handed}:ready", "0", "-1"]);
                async move { (!ready.is_empty()).then_some(ready) }
            })
            .await;
            run_to_the_end(&server, "handed", &id).await
        }
    };
    assert_eq!(types(&events), RELEASED_THEN_RUN);
}
