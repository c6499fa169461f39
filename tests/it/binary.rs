//! The real binary: configuration errors, and no password in any log line.

use std::{
    process::Command,
    time::{Duration, Instant},
};

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
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    for format in ["text", "json"] {
        let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
        let jobd = Running::start(&url, &["--log-format", format]);
        jobd.wait_for("jobd started").await;
        let mut jobs = jobd::api::proto::job_service_client::JobServiceClient::connect(format!(
            "http://{}",
            jobd.address()
        ))
        .await
        .unwrap();
        submit(&mut jobs, "q", b"").await;
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
    let jobd = Running::start(&format!("redis://:{wrong}@127.0.0.1:{}", redis.port()), &[]);
    jobd.wait_for("jobd started").await;
    std::thread::sleep(Duration::from_millis(500));
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
    use jobd::api::proto::{
        job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
    };
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };

    let redis = RedisServer::start();
    let instance = "sigterm-test";
    let jobd = Running::start(
        &redis.url(),
        &[
            "--instance-id",
            instance,
            "--shutdown-drain-delay",
            "1s",
            "--shutdown-timeout",
            "5s",
        ],
    );
    jobd.wait_for("jobd started").await;
    let url = format!("http://{}", jobd.address());
    let channel = || async {
        tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let health = HealthClient::new(channel().await);
    let check = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status())
                .ok()
        }
    };
    eventually(Duration::from_secs(10), "readiness", || async {
        (check("jobd.v1.JobService").await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;

    let mut jobs = JobServiceClient::new(channel().await);
    let job = submit(&mut jobs, "q", b"").await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut client = JobServiceClient::new(channel().await);
        for _ in 0..10 {
            streams.push(open_watch(&mut client, &job.id).await);
        }
    }
    let mut claims = Vec::new();
    for _ in 0..10 {
        let mut workers = WorkerServiceClient::new(channel().await);
        claims.push(tokio::spawn(async move {
            workers
                .claim_job(claim_request("idle", Duration::from_secs(30)))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis.clients_named(&format!("jobd:{instance}:")).len(),
        5,
        "pool of 4 + subscriber"
    );

    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &jobd.child.id().to_string()])
        .status()
        .unwrap();
    // Readiness turns NOT_SERVING at once; liveness does not; calls are still served.
    eventually(
        Duration::from_millis(800),
        "readiness to turn off",
        || async {
            (check("jobd.v1.JobService").await == Some(ServingStatus::NotServing)).then_some(())
        },
    )
    .await;
    assert_eq!(check("").await, Some(ServingStatus::Serving));
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
    let (code, log) = jobd.terminate();
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
        redis.clients_named(&format!("jobd:{instance}:")).is_empty(),
        "every connection closed"
    );
}
