//! Graceful shutdown: streams end with UNAVAILABLE naming where to resume, waiting claims
//! return no job, and every Redis connection is closed.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_claims_and_closes_redis() {
    let redis = RedisServer::start();
    let server = TestServer::start(&redis).await;
    let prefix = server.client_name_prefix();
    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;

    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open_watch(&mut jobs, &job.id).await);
    }
    let mut claims = Vec::new();
    for _ in 0..2 {
        let mut workers = server.workers().await;
        claims.push(tokio::spawn(async move {
            workers
                .claim_job(claim_request("idle", Duration::from_secs(30)))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.clients_named(&prefix).len(), 3);

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    for mut stream in streams {
        let status = stream
            .message()
            .await
            .expect_err("the stream ends with a status");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("after_sequence=1"),
            "{}",
            status.message()
        );
    }
    for claim in claims {
        let response = claim
            .await
            .unwrap()
            .expect("the claim returns normally")
            .into_inner();
        assert!(response.job.is_none(), "a waiting claim returns no job");
    }
    stopping.await.unwrap().expect("shutdown succeeds");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(5), "connections to close", || async {
        redis.clients_named(&prefix).is_empty().then_some(())
    })
    .await;
}
