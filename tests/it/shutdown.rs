//! Graceful shutdown: streams end with UNAVAILABLE naming where to resume, waiting claims
//! return no job, and every Redis connection is closed.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_claims_and_closes_redis() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let prefix = server.client_name_prefix();
    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;

    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open_watch(&mut jobs, &job.id).await);
    }
    // A SubmitAndWatchJobs stream, established: its results and its job's QUEUED event read.
    let mut followed = jobs
        .submit_and_watch_jobs(jobd_client::proto::SubmitJobsRequest {
            jobs: vec![submit_request("q")],
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        followed
            .message()
            .await
            .unwrap()
            .expect("results, then QUEUED");
    }
    let mut claims = Vec::new();
    for _ in 0..2 {
        let request = claim_request("idle", Duration::from_secs(30));
        claims.push(waiting_claim(&server, request).await);
    }
    assert_eq!(redis.clients_named(&prefix).len(), 3);

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    assert_ended_by_shutdown(streams, claims, 1).await;
    let status = followed.message().await.expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("resume each unfinished job with WatchJob"),
        "{}",
        status.message()
    );
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
