//! The worker protocol: a claimed job is acknowledged (a heartbeat, or its outcome) by its
//! acknowledgement deadline, or it goes back to its queue at no cost; a worker may give a job
//! back (ReleaseJob); a job that no worker ever acknowledges ends after its free deliveries.

use std::time::{Duration, Instant};

use jobd_client::proto::{self, EventType, JobState};
use tonic::Code;

use crate::harness::*;

/// A claim of `queue` that must be acknowledged within 1 s, with a 30 s lease.
fn short_ack_claim_request(queue: &str, wait: Duration) -> proto::ClaimJobRequest {
    proto::ClaimJobRequest {
        ack_timeout: Some(pb_duration(Duration::from_secs(1))),
        ..claim_request(queue, wait)
    }
}

/// A job of `queue` allowed one attempt only.
fn one_attempt_request(queue: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        max_attempts: 1,
        ..submit_request(queue)
    }
}

/// ReleaseJob: gives the job `id` back with `reason`.
async fn release(
    workers: &mut Workers,
    id: &str,
    token: &str,
    reason: &str,
) -> Result<proto::ReleaseJobResponse, tonic::Status> {
    workers
        .release_job(proto::ReleaseJobRequest {
            job_id: id.to_owned(),
            lease_token: token.to_owned(),
            reason: reason.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_job_goes_back_at_no_cost_and_an_acknowledged_one_keeps_its_lease() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let lost = submit_with(&mut jobs, one_attempt_request("ack"))
        .await
        .job
        .unwrap();
    let kept = submit_with(&mut jobs, one_attempt_request("ack"))
        .await
        .job
        .unwrap();

    // Both claimed with 1 s to acknowledge; the reply of the first never reaches a worker
    // (it is dropped here), the second is acknowledged at once.
    let claims = claim_jobs(
        &mut workers,
        short_ack_claim_request("ack", Duration::ZERO),
        2,
    )
    .await;
    assert_eq!(claims.len(), 2);
    let (first, second) = (&claims[0], &claims[1]);
    assert_eq!(first.job.as_ref().unwrap().id, lost.id);
    let started = millis_of(&first.job.as_ref().unwrap().started_at);
    assert_eq!(millis_of(&first.ack_deadline), started + 1000);
    assert_eq!(
        millis_of(&first.job.as_ref().unwrap().ack_deadline),
        started + 1000
    );
    assert_eq!(millis_of(&first.lease_expires_at), started + 30_000);
    acknowledge(&mut workers, &kept.id, &second.lease_token).await;
    assert!(
        get(&mut jobs, &kept.id).await.ack_deadline.is_none(),
        "acknowledged: no deadline but the lease's"
    );

    // The unacknowledged job is back within a second of its deadline, its claim not counted.
    let back = back_in_queue(&jobs, &lost.id, 3).await;
    assert_eq!(back.attempt, 0);
    let events = first_events(&mut jobs, &lost.id, 3).await;
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Released]
    );
    assert_eq!(events[2].reason, "not acknowledged by its worker in time");
    assert_eq!(events[2].attempt, 0);
    let late = millis_of(&events[2].time) - millis_of(&first.ack_deadline);
    assert!(
        (0..1000).contains(&late),
        "released {late} ms after its deadline"
    );

    // Meanwhile the acknowledged job, whose deadline passed as well, kept its lease.
    assert_eq!(get(&mut jobs, &kept.id).await.state(), JobState::Running);
    // The silent claim's token is dead; the job runs for the next worker, first attempt.
    let refused = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: lost.id.clone(),
            lease_token: first.lease_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("back in its queue"),
        "{refused:?}"
    );
    let again = claim(&mut workers, "ack").await;
    assert_eq!(again.job.as_ref().unwrap().id, lost.id);
    assert_eq!(again.job.as_ref().unwrap().attempt, 1);
    complete(&mut workers, &again, b"ran once").await.unwrap();
    let kept_claim = proto::ClaimJobResponse {
        job: second.job.clone(),
        lease_token: second.lease_token.clone(),
        ..Default::default()
    };
    complete(&mut workers, &kept_claim, b"kept").await.unwrap();
    assert_eq!(get(&mut jobs, &lost.id).await.state(), JobState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_worker_ever_acknowledges_ends_after_its_free_deliveries() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit_with(&mut jobs, one_attempt_request("poison"))
        .await
        .job
        .unwrap();

    // Three claims never acknowledged (a job that kills its workers on arrival): each goes
    // back at no cost.
    for round in 1..=3u64 {
        let claimed = workers
            .claim_job(short_ack_claim_request("poison", Duration::from_secs(5)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(claimed.job.unwrap().attempt, 1);
        back_in_queue(&jobs, &job.id, 1 + 2 * round).await;
    }
    // The fourth counts as the job's one attempt: it fails.
    workers
        .claim_job(short_ack_claim_request("poison", Duration::from_secs(5)))
        .await
        .unwrap();
    let (events, end) =
        tokio::time::timeout(Duration::from_secs(10), watch_to_end(&mut jobs, &job.id, 0))
            .await
            .expect("the job ends");
    end.unwrap();
    use EventType::*;
    assert_eq!(
        types(&events),
        [
            Queued, Started, Released, Started, Released, Started, Released, Started, Failed
        ]
    );
    let failed = events.last().unwrap();
    assert_eq!(failed.error, "not acknowledged by its worker in time");
    assert_eq!(failed.attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gives_a_job_back_at_no_cost() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit_with(&mut jobs, one_attempt_request("back"))
        .await
        .job
        .unwrap();
    let claimed = claim(&mut workers, "back").await;
    let token = claimed.lease_token.clone();

    release(&mut workers, &job.id, &token, "shutting down")
        .await
        .unwrap();
    // Repeating it succeeds again, as a retry after a lost reply would.
    release(&mut workers, &job.id, &token, "shutting down")
        .await
        .unwrap();
    let back = get(&mut jobs, &job.id).await;
    assert_eq!((back.state(), back.attempt), (JobState::Queued, 0));
    let events = first_events(&mut jobs, &job.id, 3).await;
    assert_eq!(events[2].r#type(), EventType::Released);
    assert_eq!(
        (events[2].reason.as_str(), events[2].attempt),
        ("shutting down", 0)
    );
    let refused = complete(&mut workers, &claimed, b"late").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Claimed anew, the old token is refused, and a release without a reason says whose it was.
    let again = claim(&mut workers, "back").await;
    assert_eq!(
        again.job.as_ref().unwrap().attempt,
        1,
        "the release cost nothing"
    );
    let stale = release(&mut workers, &job.id, &token, "")
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    release(&mut workers, &job.id, &again.lease_token, "")
        .await
        .unwrap();
    let events = first_events(&mut jobs, &job.id, 5).await;
    assert_eq!(events[4].reason, "given back by its worker");

    // Bad requests name their field; a token jobd never issued is not the current one.
    let cases = [
        (&job.id[..], "", "x", Code::InvalidArgument, "lease_token"),
        (
            &job.id[..],
            "not-a-token",
            "x",
            Code::FailedPrecondition,
            "lease_token",
        ),
        ("nope", &token[..], "x", Code::InvalidArgument, "job_id"),
    ];
    for (id, token, reason, code, mentions) in cases {
        let status = release(&mut workers, id, token, reason).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(mentions), "{status:?}");
    }
    let long = "r".repeat(257);
    let claimed = claim(&mut workers, "back").await;
    let status = release(&mut workers, &job.id, &claimed.lease_token, &long)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("reason"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_cancelled_as_jobs_reach_them_never_strand_a_job_or_cost_an_attempt() {
    const ROUNDS: usize = 120;
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;

    // Each round: a claim waits on a queue of its own; a job is submitted, handed to it (or
    // queued, if the claim has not parked yet); the claim's caller cancels 0 to 3 ms later.
    let mut stranded_or_not = Vec::new();
    for round in 0..ROUNDS {
        let queue = format!("race-{round}");
        // The last round's claim is gone (it was cancelled) before this one starts.
        claims_waiting(&server, 0).await;
        let request = short_ack_claim_request(&queue, Duration::from_secs(10));
        let claiming = waiting_claim(&server, request).await;
        let job = submit_with(&mut jobs, one_attempt_request(&queue))
            .await
            .job
            .unwrap();
        // Finer than the runtime's timer: 0 to 1.2 ms in steps of 10 µs.
        let cancel_at = Instant::now() + Duration::from_micros(10 * (round as u64 % 121));
        while Instant::now() < cancel_at {
            tokio::task::yield_now().await;
        }
        claiming.abort();
        let received = match claiming.await {
            Ok(Ok(response)) => Some(response.into_inner()).filter(|claimed| claimed.job.is_some()),
            _ => None,
        };
        if let Some(response) = received {
            // The reply did arrive: the worker has the job and acknowledges it.
            complete(&mut workers, &response, b"").await.unwrap();
        }
        stranded_or_not.push(job.id);
    }

    // Every job is done (delivered), or back in its queue within a second of its
    // acknowledgement deadline, its claim uncounted: none failed, none is left RUNNING.
    let started = Instant::now();
    for id in &stranded_or_not {
        let job = job_becomes(
            &jobs,
            id,
            Duration::from_secs(5),
            "each job to be settled",
            |job| matches!(job.state(), JobState::Queued | JobState::Completed),
        )
        .await;
        if job.state() == JobState::Queued {
            assert_eq!(job.attempt, 0, "{id}: a claim nobody received cost nothing");
            if job.last_sequence > 1 {
                let events = first_events(&mut jobs, id, 3).await;
                assert_eq!(events[2].r#type(), EventType::Released, "{id}");
                let after = millis_of(&events[2].time) - millis_of(&events[1].time);
                assert!(after < 2000, "{id}: released {after} ms after its claim");
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
