//! Calling jobd: connections, the requests tests build (`*_request`), the calls they make
//! (verbs: `submit`, `claim`, `complete`, ...), and reading what comes back.
//!
//! Calls go through the Rust client library (`jobd_client`): its connections and its
//! generated messages and stubs. The stubs make each call once, with no deadline but the
//! request's own: the library's retries on UNAVAILABLE and the service config's deadlines are
//! in its `Client` methods, which tests call only where they play an application.

use std::time::Duration;

use jobd_client::{
    Client, ClientBuilder, Transport,
    proto::{
        self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
    },
};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::wait::eventually;

/// A JobService stub on a library connection.
pub type Jobs = JobServiceClient<Transport>;

/// A WorkerService stub on a library connection.
pub type Workers = WorkerServiceClient<Transport>;

/// A ClaimJob call running in the background, as a worker waiting for work makes it.
pub type PendingClaim = JoinHandle<Result<tonic::Response<proto::ClaimJobResponse>, tonic::Status>>;

/// The services whose status is readiness.
pub const READINESS: [&str; 2] = ["jobd.v1.JobService", "jobd.v1.WorkerService"];

/// A new library connection to jobd at `url`, without credentials; each has its own HTTP/2
/// connection.
pub async fn connect(url: &str) -> Client {
    client_builder(url)
        .connect()
        .await
        .expect("jobd accepts connections")
}

/// A library connection to make to jobd at `url`, as tests make them: without keepalive PINGs
/// of its own, as tonic's channel. A test that holds thousands of calls may not answer jobd's
/// PINGs in time and would lose connections to its own load (the library gives up on a PING
/// after 10 s); and the idle-proxy tests prove that jobd's PINGs alone keep a quiet connection.
pub fn client_builder(url: &str) -> ClientBuilder {
    Client::builder(url).keep_alive(None)
}

/// A new bare tonic channel to the gRPC server at `url`: for what the library does not speak
/// (the health service, calls of any path), on its own HTTP/2 connection.
pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect()
        .await
        .expect("jobd accepts connections")
}

// ---- requests ----

/// A submission to `queue` with every option at its default.
pub fn submit_request(queue: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        queue: queue.to_owned(),
        kind: "test.kind".to_owned(),
        ..Default::default()
    }
}

/// A claim of `queue` by "test-worker", with a lease of 30 s, waiting up to `wait`.
pub fn claim_request(queue: &str, wait: Duration) -> proto::ClaimJobRequest {
    proto::ClaimJobRequest {
        queues: vec![queue.to_owned()],
        worker_id: "test-worker".to_owned(),
        lease: Some(pb_duration(Duration::from_secs(30))),
        wait: Some(pb_duration(wait)),
        ack_timeout: None,
    }
}

pub fn pb_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).expect("small duration")
}

// ---- calls ----

/// Submits a job to `queue` with `payload`, every other option at its default.
pub async fn submit(jobs: &mut Jobs, queue: &str, payload: &[u8]) -> proto::Job {
    let request = proto::SubmitJobRequest {
        payload: payload.to_vec().into(),
        ..submit_request(queue)
    };
    submit_with(jobs, request)
        .await
        .job
        .expect("submit returns the job")
}

/// Submits the job `request` describes; the call must succeed.
pub async fn submit_with(
    jobs: &mut Jobs,
    request: proto::SubmitJobRequest,
) -> proto::SubmitJobResponse {
    jobs.submit_job(request)
        .await
        .expect("submit succeeds")
        .into_inner()
}

/// SubmitJobs: the jobs `requests` describe, in one batch; the call must succeed.
pub async fn submit_jobs(
    jobs: &mut Jobs,
    requests: Vec<proto::SubmitJobRequest>,
) -> Vec<proto::Job> {
    jobs.submit_jobs(proto::SubmitJobsRequest { jobs: requests })
        .await
        .expect("SubmitJobs succeeds")
        .into_inner()
        .results
        .into_iter()
        .map(|result| result.job.expect("each result has its job"))
        .collect()
}

pub async fn get(jobs: &mut Jobs, id: &str) -> proto::Job {
    jobs.get_job(proto::GetJobRequest {
        job_id: id.to_owned(),
    })
    .await
    .expect("get succeeds")
    .into_inner()
    .job
    .expect("get returns the job")
}

pub async fn stats(jobs: &mut Jobs, queue: &str) -> proto::QueueStats {
    jobs.get_queue_stats(proto::GetQueueStatsRequest {
        queue: queue.to_owned(),
    })
    .await
    .expect("stats succeed")
    .into_inner()
}

/// Claims a job from `queue`, waiting up to 5 s, and acknowledges it as a worker following the
/// protocol does (a heartbeat); returns the claim response.
pub async fn claim(workers: &mut Workers, queue: &str) -> proto::ClaimJobResponse {
    let claimed = workers
        .claim_job(claim_request(queue, Duration::from_secs(5)))
        .await
        .expect("claim succeeds")
        .into_inner();
    let job = claimed.job.as_ref().expect("a job was claimed");
    acknowledge(workers, &job.id, &claimed.lease_token).await;
    claimed
}

/// ClaimJobs: up to `max_jobs` jobs for `claim`; the call must succeed.
pub async fn claim_jobs(
    workers: &mut Workers,
    claim: proto::ClaimJobRequest,
    max_jobs: u32,
) -> Vec<proto::ClaimedJob> {
    workers
        .claim_jobs(proto::ClaimJobsRequest {
            claim: Some(claim),
            max_jobs,
        })
        .await
        .expect("ClaimJobs succeeds")
        .into_inner()
        .jobs
}

/// Makes the ClaimJob call `request` in the background, on a client of its own.
pub fn claim_in_background(mut workers: Workers, request: proto::ClaimJobRequest) -> PendingClaim {
    tokio::spawn(async move { workers.claim_job(request).await })
}

/// Acknowledges a claimed job: a heartbeat without progress, which records no event.
pub async fn acknowledge(workers: &mut Workers, job_id: &str, token: &str) {
    let beat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job_id.to_owned(),
            lease_token: token.to_owned(),
            ..Default::default()
        })
        .await
        .expect("the claimed job takes a heartbeat")
        .into_inner();
    assert!(!beat.cancelled, "the claimed job is not cancelled");
}

pub async fn complete(
    workers: &mut Workers,
    claimed: &proto::ClaimJobResponse,
    result: &[u8],
) -> Result<(), tonic::Status> {
    workers
        .complete_job(proto::CompleteJobRequest {
            job_id: claimed.job.as_ref().expect("claimed job").id.clone(),
            lease_token: claimed.lease_token.clone(),
            result: result.to_vec().into(),
            next: None,
        })
        .await
        .map(|_| ())
}

/// Reports progress on `claimed`: a heartbeat that carries it, recorded as a PROGRESS event.
pub async fn report_progress(
    workers: &mut Workers,
    claimed: &proto::ClaimJobResponse,
    value: f64,
    message: &str,
) -> proto::HeartbeatResponse {
    workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: claimed.job.as_ref().expect("claimed job").id.clone(),
            lease_token: claimed.lease_token.clone(),
            lease: None,
            progress: Some(proto::Progress {
                value: Some(value),
                message: message.to_owned(),
            }),
        })
        .await
        .expect("the heartbeat succeeds")
        .into_inner()
}

/// Completes `claimed` while Redis fails over: UNAVAILABLE, which callers may see until jobd
/// reaches the new primary, is retried for up to 20 s; any other refusal fails the test.
pub async fn complete_across_failover(
    workers: &Workers,
    claimed: &proto::ClaimJobResponse,
    result: &[u8],
) {
    eventually(
        Duration::from_secs(20),
        "the completion to go through",
        || {
            let mut workers = workers.clone();
            async move {
                match complete(&mut workers, claimed, result).await {
                    Ok(()) => Some(()),
                    Err(status) if status.code() == tonic::Code::Unavailable => None,
                    Err(status) => panic!("completion refused: {status:?}"),
                }
            }
        },
    )
    .await;
}

pub async fn fail(
    workers: &mut Workers,
    claimed: &proto::ClaimJobResponse,
    error: &str,
    retryable: bool,
) -> proto::FailJobResponse {
    workers
        .fail_job(proto::FailJobRequest {
            job_id: claimed.job.as_ref().expect("claimed job").id.clone(),
            lease_token: claimed.lease_token.clone(),
            error: error.to_owned(),
            retryable: Some(retryable),
        })
        .await
        .expect("fail succeeds")
        .into_inner()
}

/// Cancels the job `id` for `reason`; the call must succeed. Returns the job as cancelled.
pub async fn cancel(jobs: &mut Jobs, id: &str, reason: &str) -> proto::Job {
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: id.to_owned(),
        reason: reason.to_owned(),
    })
    .await
    .expect("cancel succeeds")
    .into_inner()
    .job
    .expect("cancel returns the job")
}

/// The health status of `service` ("" for liveness).
pub async fn status(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("the health service answers")
        .into_inner()
        .status()
}

// ---- answers ----

pub fn millis_of(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("a timestamp");
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// Asserts that `result` is a refusal with `code` whose message mentions `mentions`.
pub fn assert_status(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    mentions: &str,
) -> String {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
    reason(&status)
}

/// The reason of the `google.rpc.ErrorInfo` every status jobd sends carries (domain `jobd`).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{status:?} carries no ErrorInfo"));
    assert_eq!(info.domain, "jobd", "{info:?}");
    info.reason
}

/// Asserts a refusal's code and reason, and returns its ErrorInfo metadata.
pub fn assert_reason(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    expected: &str,
) -> std::collections::HashMap<String, String> {
    use tonic_types::StatusExt;
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected, "{status:?}");
    status.get_details_error_info().unwrap().metadata
}
