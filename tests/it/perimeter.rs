//! The perimeter with an auth file: every RPC of both services as every role (allowed calls
//! succeed; the others get PERMISSION_DENIED naming the method, and write nothing), queue
//! patterns, batches checked whole, callers without a known token refused, the file followed
//! while jobd runs, health open to anyone and reflection to principals only.

use std::time::{Duration, Instant};

use jobd_client::proto;
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::*;

const JOB_RPCS: [&str; 8] = [
    "SubmitJob",
    "SubmitJobs",
    "SubmitAndWatchJobs",
    "GetJob",
    "WatchJob",
    "CancelJob",
    "ListJobs",
    "GetQueueStats",
];

const WORKER_RPCS: [&str; 7] = [
    "ClaimJob",
    "ClaimJobs",
    "Heartbeat",
    "CompleteJob",
    "CompleteJobs",
    "FailJob",
    "ReleaseJob",
];

const ROLES: [&str; 3] = ["submitter", "worker", "operator"];

/// What each role may call, as the issue and docs/security.md give it.
fn allowed(role: &str, rpc: &str) -> bool {
    match role {
        "submitter" => matches!(
            rpc,
            "SubmitJob" | "SubmitJobs" | "SubmitAndWatchJobs" | "GetJob" | "WatchJob" | "CancelJob"
        ),
        "operator" => matches!(
            rpc,
            "GetJob" | "WatchJob" | "CancelJob" | "ListJobs" | "GetQueueStats"
        ),
        "worker" => WORKER_RPCS.contains(&rpc),
        _ => false,
    }
}

/// A jobd with an auth file: `admin` may do anything anywhere; one principal per role may use
/// the queues `billing.*`.
struct Guarded {
    redis: RedisServer,
    server: TestServer,
    // Kept for its directory: the file must outlive the server.
    _auth: AuthFile,
    admin: String,
    tokens: Vec<(&'static str, String)>,
    jobs: Jobs,
    workers: Workers,
}

impl Guarded {
    async fn start() -> Self {
        // DEBUG DIGEST tells whether a refused call wrote anything at all.
        let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await;
        let mut auth = AuthFile::new();
        let admin = auth.add("admin", &ROLES, &["*"]);
        let tokens = ROLES
            .iter()
            .map(|role| (*role, auth.add(role, &[role], &["billing.*"])))
            .collect();
        let settings = Settings {
            extra: vec![auth.flag()],
            ..Settings::default()
        };
        let server = TestServer::start_with(&redis.url(), settings).await;
        let (jobs, workers) = server.clients().await;
        Self {
            redis,
            server,
            _auth: auth,
            admin,
            tokens,
            jobs,
            workers,
        }
    }

    fn digest(&self) -> String {
        self.redis.cli(&["DEBUG", "DIGEST"])
    }

    /// A job of `queue`, queued by the admin.
    async fn job(&mut self, queue: &str) -> String {
        let request = with_token(submit_request(queue), &self.admin);
        let response = self.jobs.submit_job(request).await.expect("admin submits");
        response.into_inner().job.unwrap().id
    }

    /// A job of `queue` claimed by the admin: its id and lease token.
    async fn claimed(&mut self, queue: &str) -> (String, String) {
        self.job(queue).await;
        let request = with_token(claim(queue), &self.admin);
        let response = self.workers.claim_job(request).await.expect("admin claims");
        let claimed = response.into_inner();
        (claimed.job.expect("a job to claim").id, claimed.lease_token)
    }

    /// What `rpc` needs made first, by the admin, to succeed on `queue`: a job of it, or a
    /// job claimed.
    async fn prepare(&mut self, rpc: &str, queue: &str) -> Made {
        match rpc {
            "GetJob" | "WatchJob" | "CancelJob" => Made::Job(self.job(queue).await),
            "ClaimJob" | "ClaimJobs" => Made::Job(self.job(queue).await),
            rpc if WORKER_RPCS.contains(&rpc) => {
                let (id, lease) = self.claimed(queue).await;
                Made::Claimed(id, lease)
            }
            _ => Made::Nothing,
        }
    }

    /// Prepares `rpc` on `queue`, then calls it with `token`, as a client that would succeed
    /// if it were allowed.
    async fn call(&mut self, rpc: &str, token: &str, queue: &str) -> Result<(), Status> {
        let made = self.prepare(rpc, queue).await;
        self.invoke(rpc, token, queue, made).await
    }

    async fn invoke(
        &mut self,
        rpc: &str,
        token: &str,
        queue: &str,
        made: Made,
    ) -> Result<(), Status> {
        match (rpc, made) {
            ("GetJob" | "WatchJob" | "CancelJob", Made::Job(id)) => {
                self.read_or_cancel(rpc, token, id).await
            }
            ("ClaimJob" | "ClaimJobs", _) => self.claim(rpc, token, queue).await,
            (_, Made::Claimed(id, lease)) => self.report(rpc, token, id, lease).await,
            ("ListJobs", _) => {
                let request = proto::ListJobsRequest {
                    queue: queue.into(),
                    ..Default::default()
                };
                self.jobs.list_jobs(with_token(request, token)).await?;
                Ok(())
            }
            ("GetQueueStats", _) => {
                let request = proto::GetQueueStatsRequest {
                    queue: queue.into(),
                };
                self.jobs
                    .get_queue_stats(with_token(request, token))
                    .await?;
                Ok(())
            }
            _ => self.submit(rpc, token, queue).await,
        }
    }

    async fn submit(&mut self, rpc: &str, token: &str, queue: &str) -> Result<(), Status> {
        let batch = proto::SubmitJobsRequest {
            jobs: vec![submit_request(queue), submit_request(queue)],
        };
        match rpc {
            "SubmitJob" => {
                let request = with_token(submit_request(queue), token);
                assert!(self.jobs.submit_job(request).await?.into_inner().created);
            }
            "SubmitJobs" => {
                let response = self.jobs.submit_jobs(with_token(batch, token)).await?;
                assert_eq!(response.into_inner().results.len(), 2);
            }
            _ => {
                let request = with_token(batch, token);
                let mut stream = self.jobs.submit_and_watch_jobs(request).await?.into_inner();
                assert!(stream.message().await?.is_some(), "the results come first");
            }
        }
        Ok(())
    }

    async fn read_or_cancel(&mut self, rpc: &str, token: &str, id: String) -> Result<(), Status> {
        match rpc {
            "GetJob" => {
                let request = proto::GetJobRequest { job_id: id };
                self.jobs.get_job(with_token(request, token)).await?;
            }
            "WatchJob" => {
                let request = proto::WatchJobRequest {
                    job_id: id,
                    after_sequence: 0,
                };
                let mut stream = self.jobs.watch_job(with_token(request, token)).await?;
                assert!(stream.get_mut().message().await?.is_some(), "QUEUED comes");
            }
            _ => {
                let request = proto::CancelJobRequest {
                    job_id: id,
                    reason: String::new(),
                };
                self.jobs.cancel_job(with_token(request, token)).await?;
            }
        }
        Ok(())
    }

    async fn claim(&mut self, rpc: &str, token: &str, queue: &str) -> Result<(), Status> {
        let claimed = if rpc == "ClaimJob" {
            let request = with_token(claim(queue), token);
            let response = self.workers.claim_job(request).await?.into_inner();
            usize::from(response.job.is_some())
        } else {
            let request = proto::ClaimJobsRequest {
                claim: Some(claim(queue)),
                max_jobs: 2,
            };
            let response = self.workers.claim_jobs(with_token(request, token)).await?;
            response.into_inner().jobs.len()
        };
        assert!(claimed > 0, "{rpc} claims the job waiting");
        Ok(())
    }

    async fn report(
        &mut self,
        rpc: &str,
        token: &str,
        job_id: String,
        lease_token: String,
    ) -> Result<(), Status> {
        let workers = &mut self.workers;
        match rpc {
            "Heartbeat" => {
                let request = proto::HeartbeatRequest {
                    job_id,
                    lease_token,
                    ..Default::default()
                };
                workers.heartbeat(with_token(request, token)).await?;
            }
            "CompleteJob" => {
                let request = proto::CompleteJobRequest {
                    job_id,
                    lease_token,
                    ..Default::default()
                };
                workers.complete_job(with_token(request, token)).await?;
            }
            "CompleteJobs" => {
                let completion = proto::Completion {
                    job_id,
                    lease_token,
                    ..Default::default()
                };
                let request = proto::CompleteJobsRequest {
                    completions: vec![completion],
                    next: None,
                };
                workers.complete_jobs(with_token(request, token)).await?;
            }
            // Not retried, so that no retry is due later while the test compares digests.
            "FailJob" => {
                let request = proto::FailJobRequest {
                    job_id,
                    lease_token,
                    error: "failed".into(),
                    retryable: Some(false),
                };
                workers.fail_job(with_token(request, token)).await?;
            }
            _ => {
                let request = proto::ReleaseJobRequest {
                    job_id,
                    lease_token,
                    reason: String::new(),
                };
                workers.release_job(with_token(request, token)).await?;
            }
        }
        Ok(())
    }

    /// Asserts that `rpc` with `token` on `queue` is refused with `code`, naming each of
    /// `mentions`, and that it wrote nothing at all.
    async fn assert_refused(
        &mut self,
        rpc: &str,
        token: &str,
        queue: &str,
        code: Code,
        mentions: &[&str],
    ) {
        let made = self.prepare(rpc, queue).await;
        let before = self.digest();
        let status = self.invoke(rpc, token, queue, made).await;
        let status = status.expect_err(&format!("{rpc} on {queue} is refused"));
        assert_eq!(status.code(), code, "{rpc}: {status:?}");
        for mention in mentions {
            assert!(status.message().contains(mention), "{rpc}: {status:?}");
        }
        assert_eq!(self.digest(), before, "{rpc} refused wrote nothing");
    }
}

/// What a call needs made before it.
enum Made {
    Nothing,
    Job(String),
    Claimed(String, String),
}

/// `message` with the `authorization` header `header`, if any.
fn with_header<T>(message: T, header: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(header) = header {
        let value = header.parse().expect("a valid header");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A claim that waits for nothing, with a lease and acknowledgement time longer than the test,
/// so that no expiry writes while it compares digests.
fn claim(queue: &str) -> proto::ClaimJobRequest {
    proto::ClaimJobRequest {
        lease: Some(pb_duration(Duration::from_secs(600))),
        ack_timeout: Some(pb_duration(Duration::from_secs(600))),
        ..claim_request(queue, Duration::ZERO)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_calls_its_methods_and_is_refused_the_others() {
    let mut guarded = Guarded::start().await;
    let tokens = guarded.tokens.clone();
    for rpc in JOB_RPCS.iter().chain(&WORKER_RPCS) {
        for (role, token) in &tokens {
            if allowed(role, rpc) {
                let called = guarded.call(rpc, token, "billing.eu").await;
                called.unwrap_or_else(|status| panic!("{role} calls {rpc}: {status:?}"));
            } else {
                let mentions = [*role, *rpc, "may not call"];
                let code = Code::PermissionDenied;
                guarded
                    .assert_refused(rpc, token, "billing.eu", code, &mentions)
                    .await;
            }
        }
    }
    // The admin, whose queues are `*`, may call everything everywhere.
    let admin = guarded.admin.clone();
    for rpc in JOB_RPCS.iter().chain(&WORKER_RPCS) {
        let called = guarded.call(rpc, &admin, "emails").await;
        called.unwrap_or_else(|status| panic!("admin calls {rpc}: {status:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_use_their_own_queues_only() {
    let mut guarded = Guarded::start().await;
    let tokens = guarded.tokens.clone();
    for rpc in JOB_RPCS.iter().chain(&WORKER_RPCS) {
        for (role, token) in tokens.iter().filter(|(role, _)| allowed(role, rpc)) {
            // `billing.*` is every queue under `billing.`, and not `billing` itself.
            for queue in ["emails", "billing"] {
                let on_queue = format!("on queue {queue} ");
                let mentions = [*role, *rpc, on_queue.as_str(), "billing.*"];
                let code = Code::PermissionDenied;
                guarded
                    .assert_refused(rpc, token, queue, code, &mentions)
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_forbidden_queue_writes_nothing() {
    let mut guarded = Guarded::start().await;
    let submitter = guarded.tokens[0].1.clone();
    let worker = guarded.tokens[1].1.clone();
    let batch = || proto::SubmitJobsRequest {
        jobs: vec![submit_request("billing.eu"), submit_request("emails")],
    };
    let before = guarded.digest();
    let refused = guarded
        .jobs
        .submit_jobs(with_token(batch(), &submitter))
        .await;
    assert_status(refused, Code::PermissionDenied, "jobs[1].queue");
    let request = with_token(batch(), &submitter);
    let refused = guarded.jobs.submit_and_watch_jobs(request).await;
    assert_status(refused, Code::PermissionDenied, "on queue emails");
    assert_eq!(guarded.digest(), before);

    // A claim over two queues, one of them forbidden, takes nothing from either.
    guarded.job("billing.eu").await;
    let before = guarded.digest();
    let mut both = claim("billing.eu");
    both.queues.push("emails".into());
    let refused = guarded.workers.claim_job(with_token(both, &worker)).await;
    let denied = assert_reason(refused, Code::PermissionDenied, "PERMISSION_DENIED");
    assert_eq!(denied["method"], "jobd.v1.WorkerService/ClaimJob");
    assert_eq!(denied["queue"], "emails");
    assert_eq!(guarded.digest(), before);

    // Completions, one of a forbidden queue, or a next claim on one: none is recorded.
    let (id, lease_token) = guarded.claimed("billing.eu").await;
    let (other, other_token) = guarded.claimed("emails").await;
    let before = guarded.digest();
    let completions = vec![
        proto::Completion {
            job_id: id.clone(),
            lease_token: lease_token.clone(),
            ..Default::default()
        },
        proto::Completion {
            job_id: other,
            lease_token: other_token,
            ..Default::default()
        },
    ];
    let request = proto::CompleteJobsRequest {
        completions,
        next: None,
    };
    let refused = guarded
        .workers
        .complete_jobs(with_token(request, &worker))
        .await;
    assert_status(refused, Code::PermissionDenied, "completions[1].job_id");
    let complete = proto::CompleteJobRequest {
        job_id: id,
        lease_token,
        result: Default::default(),
        next: Some(proto::ClaimJobsRequest {
            claim: Some(claim("emails")),
            max_jobs: 1,
        }),
    };
    let request = with_token(complete.clone(), &worker);
    let refused = guarded.workers.complete_job(request).await;
    assert_status(refused, Code::PermissionDenied, "next.claim.queues");
    assert_eq!(guarded.digest(), before);
    let allowed = proto::CompleteJobRequest {
        next: None,
        ..complete
    };
    let done = guarded
        .workers
        .complete_job(with_token(allowed, &worker))
        .await;
    done.expect("the same completion alone is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_known_token_are_unauthenticated_and_health_is_open() {
    let mut guarded = Guarded::start().await;
    let before = guarded.digest();
    let headers = [
        (None, "no credentials"),
        (
            Some("Bearer jobd_not_a_known_token"),
            "not in the auth file",
        ),
        (Some("Basic YWRtaW46YWRtaW4="), "not `Bearer <token>`"),
        (Some("Bearer "), "not `Bearer <token>`"),
    ];
    for (header, why) in headers {
        let refused = guarded
            .jobs
            .submit_job(with_header(submit_request("billing.eu"), header))
            .await;
        assert_status(refused, Code::Unauthenticated, why);
        let claim = with_header(claim("billing.eu"), header);
        let refused = guarded.workers.claim_job(claim).await;
        let reason = assert_status(refused, Code::Unauthenticated, why);
        assert_eq!(reason, "UNAUTHENTICATED");
    }
    assert_eq!(guarded.digest(), before, "nothing was written");

    // Health needs no credentials: kubelet probes carry none.
    let mut health = HealthClient::new(guarded.server.channel().await);
    let request = HealthCheckRequest {
        service: "jobd.v1.JobService".into(),
    };
    eventually(
        Duration::from_secs(10),
        "readiness without credentials",
        || {
            let (mut health, request) = (health.clone(), request.clone());
            async move {
                let status = health.check(request).await.ok()?.into_inner().status;
                (status == 1).then_some(())
            }
        },
    )
    .await;
    health.check(HealthCheckRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_needs_a_token_through_grpcurl() {
    let guarded = Guarded::start().await;
    let address = guarded.server.addr.to_string();
    let grpcurl = |header: Option<String>| {
        let mut command = tokio::process::Command::new("grpcurl");
        command.arg("-plaintext");
        if let Some(header) = header {
            command.args(["-H", &header]);
        }
        command.args([&address, "list"]);
        command
    };
    let header = format!("authorization: Bearer {}", guarded.tokens[2].1);
    let output = grpcurl(Some(header)).output().await.expect("grpcurl runs");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(listed.contains("jobd.v1.JobService") && listed.contains("jobd.v1.WorkerService"));
    let output = grpcurl(None).output().await.expect("grpcurl runs");
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("Unauthenticated"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_file_is_followed_while_jobd_runs() {
    let redis = RedisServer::start().await;
    let mut auth = AuthFile::new();
    let old = auth.add("api", &["submitter"], &["*"]);
    let settings = Settings {
        extra: vec![auth.flag()],
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let jobs = server.jobs().await;
    let submits = |token: &str| {
        let (mut jobs, request) = (jobs.clone(), with_token(submit_request("q"), token));
        async move { jobs.submit_job(request).await.map(drop) }
    };
    submits(&old).await.expect("the token in the file works");

    // Rotation without a failed call: a second token, then the first one removed.
    let new = auth.add_token("api");
    let started = Instant::now();
    eventually(Duration::from_secs(5), "the new token to work", || {
        let call = submits(&new);
        async move { call.await.ok() }
    })
    .await;
    let added = started.elapsed();
    submits(&old).await.expect("the old token still works");
    auth.remove_token("api", &old);
    let started = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the removed token to be refused",
        || {
            let call = submits(&old);
            async move { (call.await.err()?.code() == Code::Unauthenticated).then_some(()) }
        },
    )
    .await;
    let removed = started.elapsed();
    eprintln!("in force after: added {added:?}, removed {removed:?}");
    submits(&new).await.expect("the new token works on");

    // A version that does not parse is not put in force: wait out two reads of it (nothing to
    // observe but that nothing changes).
    auth.write("[[principal]\nname = ");
    tokio::time::sleep(2 * jobd::reload::RELOAD_INTERVAL + Duration::from_millis(500)).await;
    submits(&new).await.expect("the version in force stays");

    // Removing the principal removes its tokens.
    auth.remove("api");
    eventually(Duration::from_secs(5), "the principal to be gone", || {
        let call = submits(&new);
        async move { (call.await.err()?.code() == Code::Unauthenticated).then_some(()) }
    })
    .await;
}
