//! Lease recovery: every replica recovers every expired lease within about a second of its
//! end, whatever replica created the queue and however long the queue was idle; and a token
//! whose lease ended is dead at once, before any sweeper gets to the job.

use std::time::Duration;

use jobd_client::proto::{self, EventType, JobState};
use tonic::Code;

use crate::harness::*;

/// Submits a job of `queue` allowed one attempt, claims it with a 1 s lease and acknowledges
/// it, as a worker that then dies would; returns the job id and when its lease ends (Unix ms,
/// by Redis's clock).
async fn claimed_by_a_worker_that_dies(
    jobs: &mut Jobs,
    workers: &mut Workers,
    queue: &str,
) -> (String, i64) {
    let request = proto::SubmitJobRequest {
        max_attempts: 1,
        ..submit_request(queue)
    };
    let id = submit_with(jobs, request).await.job.unwrap().id;
    let mut claim = claim_request(queue, Duration::from_secs(5));
    claim.lease = Some(pb_duration(Duration::from_secs(1)));
    let claimed = workers.claim_job(claim).await.unwrap().into_inner();
    assert_eq!(claimed.job.as_ref().unwrap().id, id);
    acknowledge(workers, &id, &claimed.lease_token).await;
    let lease_end = millis_of(&get(jobs, &id).await.lease_expires_at);
    (id, lease_end)
}

/// Waits until the job `id` failed for its expired lease; returns how long after its lease
/// ended that was recorded, in ms, by Redis's clock.
async fn recovered_after(jobs: &Jobs, id: &str, lease_end: i64) -> i64 {
    job_becomes(
        jobs,
        id,
        Duration::from_secs(10),
        "the lease to be recovered",
        |job| job.state() == JobState::Failed,
    )
    .await;
    let (events, end) = watch_to_end(&mut jobs.clone(), id, 0).await;
    end.unwrap();
    let failed = events.last().unwrap();
    assert_eq!(failed.r#type(), EventType::Failed);
    assert_eq!(failed.error, "lease expired");
    millis_of(&failed.time) - lease_end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_recovers_the_leases_of_a_queue_only_a_killed_replica_knew() {
    let redis = RedisServer::start().await;
    // The survivor reads the queue registry as it starts, before the queue exists.
    let survivor = TestServer::start(&redis).await;
    let mut doomed = Running::start(&redis.url(), &[]).await;
    let (mut jobs, mut workers) = doomed.clients().await;

    let (id, lease_end) = claimed_by_a_worker_that_dies(&mut jobs, &mut workers, "orphan").await;
    doomed.kill();

    let late = recovered_after(&survivor.jobs().await, &id, lease_end).await;
    assert!(
        (0..1000).contains(&late),
        "recovered {late} ms after the lease ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_in_a_queue_that_was_idle_is_recovered_on_time() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    for round in 0..4 {
        // Idle: its last job failed, nothing scheduled or running; the sweeper saw it so.
        // (An idle period is what is under test, and only time passing makes one.)
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (id, lease_end) = claimed_by_a_worker_that_dies(&mut jobs, &mut workers, "idle").await;
        let late = recovered_after(&jobs, &id, lease_end).await;
        assert!(
            (0..1000).contains(&late),
            "round {round}: recovered {late} ms late"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_lease_ended_is_refused_before_the_sweeper_acts() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let (id, lease_end) = claimed_by_a_worker_that_dies(&mut jobs, &mut workers, "blind").await;
    let claimed = get(&mut jobs, &id).await;
    // The sweeper is kept from seeing the expiry: the running set says it is far off.
    let member = redis.cli(&["ZRANGE", "jobd:{blind}:running", "0", "-1"]);
    assert_eq!(member, id);
    redis.cli(&["ZADD", "jobd:{blind}:running", "XX", "9999999999999", &id]);
    eventually(
        Duration::from_secs(5),
        "Redis's clock to pass the lease",
        || async {
            let time = redis.cli(&["TIME"]);
            let seconds: i64 = time.lines().next().unwrap().parse().unwrap();
            (seconds * 1000 > lease_end + 100).then_some(())
        },
    )
    .await;
    assert_eq!(
        get(&mut jobs, &id).await.state(),
        JobState::Running,
        "not swept"
    );

    // Every call with the token is refused: the lease ran out, by Redis's clock.
    let token = redis.cli(&["HGET", &format!("jobd:{{blind}}:job:{}", &id[6..]), "token"]);
    let late_beat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: id.clone(),
            lease_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(late_beat.code(), Code::FailedPrecondition, "{late_beat:?}");
    assert!(
        late_beat.message().contains("lease ran out"),
        "{late_beat:?}"
    );
    let late = proto::ClaimJobResponse {
        job: Some(claimed),
        lease_token: token,
        ..Default::default()
    };
    let refused = complete(&mut workers, &late, b"too late")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(get(&mut jobs, &id).await.state(), JobState::Running);
}
