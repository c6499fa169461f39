//! Deadlines: a call still running when the caller's `grpc-timeout` passes ends with
//! DEADLINE_EXCEEDED, never CANCELLED, and is recorded so; a stream ends at its deadline too.

use std::time::{Duration, Instant};

use jobd_client::proto::{self, job_service_client::JobServiceClient};
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waiting_past_its_deadline_ends_with_deadline_exceeded() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (_, mut workers) = bare_clients(&server.addr.to_string()).await;

    // Many times over: tonic's own timeout, set to the same deadline, must never win.
    for attempt in 0..20 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            workers.claim_job(with_deadline(
                claim_request("nothing", Duration::from_secs(10)),
                "300m",
            )),
        )
        .await
        .expect("the claim ends at its deadline, not after its wait");
        let took = started.elapsed();
        let status = answer.expect_err("no job, and the deadline passed");
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "attempt {attempt}: {status:?}"
        );
        assert!(took >= Duration::from_millis(300), "after {took:?}");
    }

    // A claim whose wait ends before its deadline answers as ever; so does a call with a
    // header that is not a timeout (ignored).
    for timeout in ["10S", "garbage"] {
        let answer = workers
            .claim_job(with_deadline(
                claim_request("nothing", Duration::from_millis(100)),
                timeout,
            ))
            .await
            .expect("the wait ended first");
        assert!(answer.into_inner().job.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_with_a_deadline_sees_deadline_exceeded() {
    // tonic's client times out only the wait for the response headers (as CANCELLED); jobd
    // sends them at once for a call with a deadline, so the server's status decides.
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut workers = server.workers().await;
    for attempt in 0..5 {
        let mut request = tonic::Request::new(claim_request("nothing", Duration::from_secs(10)));
        request.set_timeout(Duration::from_millis(300));
        let status = tokio::time::timeout(Duration::from_secs(5), workers.claim_job(request))
            .await
            .expect("the claim ends at its deadline")
            .expect_err("no job, and the deadline passed");
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "attempt {attempt}: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_open_past_its_deadline_ends_with_deadline_exceeded() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut bare_jobs, _) = bare_clients(&server.addr.to_string()).await;
    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;

    let started = Instant::now();
    let mut stream = bare_jobs
        .watch_job(with_deadline(
            proto::WatchJobRequest {
                job_id: job.id.clone(),
                after_sequence: 0,
            },
            "500m",
        ))
        .await
        .expect("the stream opens")
        .into_inner();
    let first = stream.message().await.expect("a healthy stream");
    assert_eq!(first.map(|event| event.sequence), Some(1));
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends at its deadline");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A refusal keeps its status and message, before any message of the stream.
    let refused = watch_refusal(
        &mut bare_jobs,
        with_deadline(
            proto::WatchJobRequest {
                job_id: job.id.clone(),
                after_sequence: 9,
            },
            "10S",
        ),
    )
    .await;
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert_eq!(
        refused.message(),
        "after_sequence 9 is past the job's last event (sequence 1)"
    );
    let missing = bare_jobs
        .get_job(with_deadline(
            proto::GetJobRequest {
                job_id: format!("q.{}", "0".repeat(26)),
            },
            "10S",
        ))
        .await
        .expect_err("no such job");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // A watch whose job finishes before the deadline ends with OK, as ever.
    let mut workers = server.workers().await;
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"").await.unwrap();
    let mut stream = bare_jobs
        .watch_job(with_deadline(
            proto::WatchJobRequest {
                job_id: job.id,
                after_sequence: 0,
            },
            "10S",
        ))
        .await
        .expect("the stream opens")
        .into_inner();
    let mut events = 0;
    while let Some(event) = stream.message().await.expect("ends with OK") {
        events += 1;
        assert!(event.sequence <= 3);
    }
    assert_eq!(events, 3);
}

/// The status of a WatchJob refused before any message: in the call's answer, or (the headers
/// having gone ahead, for a call with a deadline) at the stream's first read. (watch.rs's
/// `watch_refused` wants the refusal in the call's answer itself.)
async fn watch_refusal(
    jobs: &mut JobServiceClient<BareConnection>,
    request: tonic::Request<proto::WatchJobRequest>,
) -> tonic::Status {
    match jobs.watch_job(request).await {
        Err(status) => status,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("refused before any message"),
    }
}
