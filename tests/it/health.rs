//! gRPC health: liveness ("") stays SERVING while the process answers; readiness
//! (jobd.v1.JobService, jobd.v1.WorkerService) follows Redis within 2 s, and stays off while
//! Redis may evict any key.

use std::time::Duration;

use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_frozen_redis_and_liveness_does_not() {
    let redis = RedisServer::start().await;
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
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;

    redis.stop();
    let took = readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(10)).await;
    assert!(took <= Duration::from_secs(2), "NOT_SERVING after {took:?}");
    // Lets the reconnect backoff grow to its cap, which nothing outside jobd shows.
    tokio::time::sleep(Duration::from_secs(3)).await;

    redis.restart().await;
    let took = readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(10)).await;
    assert!(
        took <= Duration::from_secs(2),
        "SERVING again after {took:?}"
    );
    let mut jobs = server.jobs().await;
    submit(&mut jobs, "q", b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_stays_off_while_redis_may_evict_queued_jobs() {
    // A job's hash is its only record: a Redis that may evict any key at its memory limit
    // could lose queued and running jobs without a trace.
    let redis =
        RedisServer::start_with(&["--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru"]).await;
    let server = TestServer::start(&redis).await;
    let mut health = HealthClient::new(server.channel().await);
    // Past two readiness checks, still not serving; liveness unaffected.
    // (That readiness does not turn on, only time passing can show.)
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
        RedisServer::start_with(&["--maxmemory", "1gb", "--maxmemory-policy", "volatile-lru"])
            .await;
    // CONFIG renamed away, as some managed Redis services do: the policy cannot be read.
    let hidden = RedisServer::start_with(&[
        "--maxmemory",
        "1gb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--rename-command",
        "CONFIG",
        "",
    ])
    .await;
    for redis in [&volatile, &hidden] {
        let server = TestServer::start(redis).await;
        readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
        let mut jobs = server.jobs().await;
        submit(&mut jobs, "q", b"").await;
    }
}
