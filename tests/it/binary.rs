//! The real binary: configuration errors, and no password in any log line.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use jobd_client::proto;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::harness::*;

#[test]
fn an_invalid_setting_exits_64_with_one_line_naming_it() {
    for (args, env, mentions) in [
        (vec!["--redis-pool-size", "0"], None, "redis-pool-size"),
        (vec!["--listen", "nowhere"], None, "listen"),
        (
            vec![],
            Some(("JOBD_REDIS_COMMAND_TIMEOUT", "soon")),
            "redis-command-timeout",
        ),
        (vec![], Some(("REDIS_URL", "http://example")), "REDIS_URL"),
    ] {
        let mut command = Command::new(JOBD);
        command.args(&args).env_remove("REDIS_URL");
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(mentions), "{stderr:?} names {mentions}");
    }
    let help = Command::new(JOBD).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for setting in [
        "REDIS_URL",
        "JOBD_LISTEN",
        "JOBD_REDIS_POOL_SIZE",
        "JOBD_REDIS_COMMAND_TIMEOUT",
        "JOBD_MAX_PAYLOAD_BYTES",
    ] {
        assert!(help.contains(setting), "--help documents {setting}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_never_reaches_the_logs() {
    const PASSWORD: &str = "pw-5ecr3t-do-not-log";
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]).await;
    for format in ["text", "json"] {
        let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
        let jobd = Running::start(&url, &["--log-format", format]).await;
        submit(&mut jobd.jobs().await, "q", b"").await;
        let (code, log) = jobd.terminate();
        assert_eq!(code, Some(0), "{log}");
        assert!(
            log.contains("REDACTED"),
            "the URL is logged, redacted: {log}"
        );
        assert!(
            !log.contains(PASSWORD),
            "password leaked in {format} logs:\n{log}"
        );
    }

    // A wrong password makes fred log authentication errors: they must not carry it either.
    let wrong = "wrong-pw-also-secret";
    let url = format!("redis://:{wrong}@127.0.0.1:{}", redis.port());
    let jobd = Running::start(&url, &[]).await;
    jobd.until_logged("WRONGPASS").await;
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(wrong), "password leaked:\n{log}");
    assert_eq!(
        redis.cli_auth(Some(PASSWORD), &["PING"]),
        "PONG",
        "the password was right for the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_ends_streams_and_exits_zero_without_connections() {
    // jobd exports its metrics here, so that the test sees its claims wait.
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start().await;
    let instance = "sigterm-test";
    let jobd = Running::start_with_env(
        &redis.url(),
        &[
            "--instance-id",
            instance,
            "--shutdown-drain-delay",
            "1s",
            "--shutdown-timeout",
            "5s",
        ],
        &receiver.exporter_env("100"),
    )
    .await;
    let prefix = format!("jobd:{instance}:");
    readiness_becomes(&jobd, ServingStatus::Serving, Duration::from_secs(10)).await;
    let mut jobs = jobd.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;
    let (streams, claims) = calls_to_end(&jobd, &receiver, &job.id).await;
    assert_eq!(
        redis.clients_named(&prefix).len(),
        5,
        "pool of 4 + subscriber"
    );

    let started = Instant::now();
    jobd.signal("TERM");
    // Readiness turns NOT_SERVING at once; liveness does not; calls are still served.
    readiness_becomes(&jobd, ServingStatus::NotServing, Duration::from_millis(800)).await;
    let mut health = HealthClient::new(jobd.channel().await);
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving);
    assert_eq!(
        get(&mut jobs, &job.id).await.id,
        job.id,
        "still serving while draining"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "checked within the drain delay"
    );

    assert_ended_by_shutdown(streams, claims, 1).await;
    let (code, log) = jobd.exited();
    assert_eq!(code, Some(0), "{log}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1 + 5 + 1),
        "exited after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "kept serving for the drain delay: {took:?}"
    );
    assert!(
        redis.clients_named(&prefix).is_empty(),
        "every connection closed"
    );
}

/// The calls a shutdown of `jobd` must end: fifty WatchJob streams of the job `id` over five
/// connections, each established, and ten claims of an empty queue, each waiting (as jobd's
/// `jobd.claims.waiting`, exported to `receiver`, shows).
async fn calls_to_end(
    jobd: &Running,
    receiver: &OtlpReceiver,
    id: &str,
) -> (Vec<tonic::Streaming<proto::JobEvent>>, Vec<PendingClaim>) {
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut jobs = jobd.jobs().await;
        for _ in 0..10 {
            streams.push(open_watch(&mut jobs, id).await);
        }
    }
    let mut claims = Vec::new();
    for _ in 0..10 {
        let request = claim_request("idle", Duration::from_secs(30));
        claims.push(claim_in_background(jobd.workers().await, request));
    }
    until(Duration::from_secs(10), "the claims to wait", || {
        receiver.value("jobd.claims.waiting", &[]) == Some(10.0)
    })
    .await;
    (streams, claims)
}
