//! gRPC health: liveness ("") stays SERVING while the process answers; readiness
//! (jobd.v1.JobService, jobd.v1.WorkerService) follows Redis within 2 s, and stays off while
//! Redis may evict any key.

use std::time::Duration;

use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_frozen_redis_and_liveness_does_not() {
    let redis = RedisServer::start();
    let server = TestServer::start(&redis).await;
    let mut health = HealthClient::new(server.channel().await);
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving);

    redis.signal("STOP");
    let took = readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(10)).await;
    assert!(took <= Duration::from_secs(2), "NOT_SERVING after {took:?}");
    assert_eq!(
        status(&mut health, "").await,
        ServingStatus::Serving,
        "liveness unaffected"
    );

    redis.signal("CONT");
    let took = readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(10)).await;
    assert!(
        took <= Duration::from_secs(2),
        "SERVING again after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_stopped_and_restarted_redis() {
    let mut redis = RedisServer::start();
    let server = TestServer::start(&redis).await;
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;

    redis.stop();
    let took = readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(10)).await;
    assert!(took <= Duration::from_secs(2), "NOT_SERVING after {took:?}");
    // Long enough for the reconnect backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(3)).await;

    redis.restart();
    let took = readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(10)).await;
    assert!(
        took <= Duration::from_secs(2),
        "SERVING again after {took:?}"
    );
    let mut jobs = server.jobs().await;
    submit(&mut jobs, "q", b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_through_a_queue_by_state() {
    use jobd::api::proto::{self, JobState};
    let redis = RedisServer::start();
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let mut workers = server.workers().await;
    let mut queued = Vec::new();
    for _ in 0..7 {
        queued.push(submit(&mut jobs, "l", b"payload").await.id);
    }
    let running = claim(&mut workers, "l").await;
    queued.retain(|id| *id != running.job.as_ref().unwrap().id);

    // Every job, three at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = jobs
            .list_jobs(proto::ListJobsRequest {
                queue: "l".into(),
                state: 0,
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 3);
        assert!(
            page.jobs.iter().all(|job| job.payload.is_empty()),
            "listed without payload"
        );
        seen.extend(
            page.jobs
                .into_iter()
                .map(|job| (job.state(), job.id))
                .map(|(s, id)| (id, s)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<(String, JobState)> = queued
        .iter()
        .map(|id| (id.clone(), JobState::Queued))
        .collect();
    expected.push((running.job.unwrap().id, JobState::Running));
    assert_eq!(seen, expected, "queued in claim order, then running");

    let only_running = jobs
        .list_jobs(proto::ListJobsRequest {
            queue: "l".into(),
            state: JobState::Running.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_running.jobs.len(), 1);
    for bad in [
        proto::ListJobsRequest {
            queue: "l".into(),
            page_size: 501,
            ..Default::default()
        },
        proto::ListJobsRequest {
            queue: "l".into(),
            page_token: "garbage".into(),
            ..Default::default()
        },
        proto::ListJobsRequest {
            queue: "l".into(),
            state: 99,
            ..Default::default()
        },
    ] {
        let status = jobs.list_jobs(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_resumes_after_the_last_job_listed_however_the_queue_moved() {
    use jobd::api::proto::{self, JobState};
    let redis = RedisServer::start();
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let mut workers = server.workers().await;
    // Eight jobs in one batch: one score in the ready set, ordered among themselves by id.
    let submitted = jobs
        .submit_jobs(proto::SubmitJobsRequest {
            jobs: (0..8)
                .map(|_| proto::SubmitJobRequest {
                    queue: "moving".into(),
                    kind: "k".into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = submitted
        .results
        .into_iter()
        .map(|result| result.job.unwrap().id)
        .collect();
    let lister = jobs.clone();
    let queued_page = |token: String| {
        let mut jobs = lister.clone();
        async move {
            let page = jobs
                .list_jobs(proto::ListJobsRequest {
                    queue: "moving".into(),
                    state: JobState::Queued.into(),
                    page_size: 2,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            let listed: Vec<String> = page.jobs.into_iter().map(|job| job.id).collect();
            (listed, page.next_page_token)
        }
    };

    let (first, token) = queued_page(String::new()).await;
    assert_eq!(first, ids[..2]);
    // The two listed jobs leave the queue: the next page starts after them all the same,
    // where an offset of 2 would skip the third and fourth jobs.
    for _ in 0..2 {
        claim(&mut workers, "moving").await;
    }
    let (second, token) = queued_page(token).await;
    assert_eq!(second, ids[2..4]);
    // A job joins the queue after the listed ones: it comes in its turn, and nothing repeats.
    let late = submit(&mut jobs, "moving", b"").await;
    let mut rest = Vec::new();
    let mut token = token;
    while !token.is_empty() {
        let (page, next) = queued_page(token).await;
        rest.extend(page);
        token = next;
    }
    let mut expected = ids[4..].to_vec();
    expected.push(late.id);
    assert_eq!(rest, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_stays_off_while_redis_may_evict_queued_jobs() {
    // A job's hash is its only record: a Redis that may evict any key at its memory limit
    // could lose queued and running jobs without a trace.
    let redis =
        RedisServer::start_with(&["--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru"]);
    let server = TestServer::start(&redis).await;
    let mut health = HealthClient::new(server.channel().await);
    // Past two readiness checks, still not serving; liveness unaffected.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for service in READINESS {
        assert_eq!(
            status(&mut health, service).await,
            ServingStatus::NotServing
        );
    }
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving);

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]);
    readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(5)).await;
    // Without a memory limit nothing is evicted, whatever the policy.
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_evicts_only_expiring_keys_or_hides_its_policy_is_served() {
    // volatile-*: only keys with an expiry (finished jobs, idempotency keys) may go.
    let volatile =
        RedisServer::start_with(&["--maxmemory", "1gb", "--maxmemory-policy", "volatile-lru"]);
    // CONFIG renamed away, as some managed Redis services do: the policy cannot be read.
    let hidden = RedisServer::start_with(&[
        "--maxmemory",
        "1gb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--rename-command",
        "CONFIG",
        "",
    ]);
    for redis in [&volatile, &hidden] {
        let server = TestServer::start(redis).await;
        readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
        let mut jobs = server.jobs().await;
        submit(&mut jobs, "q", b"").await;
    }
}
