//! Each error status, with a message that names the problem, and nothing written.

use std::time::Duration;

use jobd_client::proto::{self, JobState};
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_by_field() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(
        &redis.url(),
        Settings {
            max_payload: Some(1024),
            ..Settings::default()
        },
    )
    .await;
    let mut jobs = server.jobs().await;

    for queue in ["", "has space", &"q".repeat(65)] {
        assert_status(
            jobs.submit_job(submit_request(queue)).await,
            Code::InvalidArgument,
            "queue",
        );
    }
    let tagged = proto::SubmitJobRequest {
        kind: "{tag}".into(),
        ..submit_request("q")
    };
    assert_status(jobs.submit_job(tagged).await, Code::InvalidArgument, "kind");
    let mut labels = submit_request("q");
    labels.labels.insert(String::new(), "v".into());
    assert_status(
        jobs.submit_job(labels).await,
        Code::InvalidArgument,
        "labels",
    );
    assert_status(
        jobs.submit_job(sized_request(1025)).await,
        Code::ResourceExhausted,
        "payload",
    );
    assert_eq!(
        redis.keys(JOB_KEYS).len(),
        0,
        "refused submissions wrote nothing"
    );

    // At the limit is fine.
    jobs.submit_job(sized_request(1024)).await.unwrap();
    assert_eq!(redis.keys(JOB_KEYS).len(), 1);
}

/// A submission to queue "q" whose payload is `bytes` long.
fn sized_request(bytes: usize) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        payload: vec![7; bytes].into(),
        ..submit_request("q")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_payload_limit_is_one_mebibyte() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    jobs.submit_job(sized_request(1024 * 1024)).await.unwrap();
    assert_status(
        jobs.submit_job(sized_request(1024 * 1024 + 1)).await,
        Code::ResourceExhausted,
        "payload",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_ids() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let real = submit(&mut jobs, "q", b"").await;
    // Well-formed, but never submitted: same queue, another ULID.
    let unknown = format!("q.{}", "0".repeat(26));
    assert_ne!(unknown, real.id);

    for bad in [
        "",
        "nope",
        "q.not-a-ulid-at-all-000000000",
        "q 01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ] {
        let get = jobs
            .get_job(proto::GetJobRequest { job_id: bad.into() })
            .await;
        let reason = assert_status(get, Code::InvalidArgument, "job_id");
        assert_eq!(reason, "INVALID_REQUEST");
        let cancel = jobs
            .cancel_job(proto::CancelJobRequest {
                job_id: bad.into(),
                reason: String::new(),
            })
            .await;
        assert_status(cancel, Code::InvalidArgument, "job_id");
        let watch = jobs
            .watch_job(proto::WatchJobRequest {
                job_id: bad.into(),
                after_sequence: 0,
            })
            .await;
        assert_status(watch.map(|_| ()), Code::InvalidArgument, "job_id");
    }

    assert_status(
        jobs.get_job(proto::GetJobRequest {
            job_id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        jobs.cancel_job(proto::CancelJobRequest {
            job_id: unknown.clone(),
            reason: String::new(),
        })
        .await,
        Code::NotFound,
        "not found",
    );
    let (events, end) = watch_to_end(&mut jobs, &unknown, 0).await;
    assert!(events.is_empty());
    assert_eq!(
        assert_status(end, Code::NotFound, "not found"),
        "JOB_NOT_FOUND"
    );
    let token = "0".repeat(32);
    let heartbeat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: unknown.clone(),
            lease_token: token.clone(),
            ..Default::default()
        })
        .await;
    assert_status(heartbeat, Code::NotFound, "not found");
    let complete = workers
        .complete_job(proto::CompleteJobRequest {
            job_id: unknown,
            lease_token: token,
            result: Default::default(),
            next: None,
        })
        .await;
    assert_status(complete, Code::NotFound, "not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_are_refused_by_field() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut workers = server.workers().await;
    type Change = Box<dyn Fn(&mut proto::ClaimJobRequest)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|r| r.queues.clear()), "queues"),
        (Box::new(|r| r.queues.push("not ok".into())), "queues[1]"),
        (Box::new(|r| r.worker_id.clear()), "worker_id"),
        (
            Box::new(|r| r.lease = Some(pb_duration(Duration::from_millis(1)))),
            "lease",
        ),
        (
            Box::new(|r| r.wait = Some(pb_duration(Duration::from_secs(3600)))),
            "wait",
        ),
        (
            Box::new(|r| {
                r.wait = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            "wait",
        ),
        (
            Box::new(|r| r.ack_timeout = Some(pb_duration(Duration::from_millis(1)))),
            "ack_timeout",
        ),
    ];
    for (change, field) in cases {
        let mut request = claim_request("q", Duration::ZERO);
        change(&mut request);
        assert_status(
            workers.claim_job(request).await,
            Code::InvalidArgument,
            field,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_on_a_claimed_job_are_refused_by_field_and_record_nothing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(
        &redis.url(),
        Settings {
            max_payload: Some(16),
            ..Settings::default()
        },
    )
    .await;
    let (mut jobs, mut workers) = server.clients().await;

    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    let bad_token = workers
        .complete_job(proto::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_token: "not-a-token".into(),
            result: Default::default(),
            next: None,
        })
        .await;
    // A token jobd never issued is not the job's current one, as the README and proto say.
    let reason = assert_status(bad_token, Code::FailedPrecondition, "lease_token");
    assert_eq!(reason, "LEASE_TOKEN_UNKNOWN");
    let no_token = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await;
    assert_status(no_token, Code::InvalidArgument, "lease_token");
    let big_result = workers
        .complete_job(proto::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            result: vec![0; 17].into(),
            next: None,
        })
        .await;
    let limit = assert_reason(big_result, Code::ResourceExhausted, "PAYLOAD_TOO_LARGE");
    assert_eq!(
        (&limit["field"], &limit["limit"]),
        (&"result".into(), &"16".into())
    );
    let no_error = workers
        .fail_job(proto::FailJobRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            error: String::new(),
            retryable: Some(false),
        })
        .await;
    assert_status(no_error, Code::InvalidArgument, "error");
    let bad_progress = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            lease: None,
            progress: Some(proto::Progress {
                value: Some(f64::NAN),
                message: String::new(),
            }),
        })
        .await;
    assert_status(bad_progress, Code::InvalidArgument, "progress.value");

    let unchanged = get(&mut jobs, &job.id).await;
    assert_eq!(unchanged.state(), JobState::Running);
    assert_eq!(unchanged.last_sequence, 2, "refused calls recorded nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_token_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    let before = get(&mut jobs, &job.id).await;

    let mut stale = claimed.clone();
    stale.lease_token = "f".repeat(32);
    assert_status(
        complete(&mut workers, &stale, b"x").await,
        Code::FailedPrecondition,
        "lease token",
    );
    let heartbeat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_token: stale.lease_token.clone(),
            lease: None,
            progress: Some(proto::Progress {
                value: Some(1.0),
                message: String::new(),
            }),
        })
        .await;
    let moved_on = assert_reason(heartbeat, Code::FailedPrecondition, "LEASE_STALE");
    assert_eq!(moved_on["state"], "RUNNING");
    let fail = workers
        .fail_job(proto::FailJobRequest {
            job_id: job.id.clone(),
            lease_token: stale.lease_token.clone(),
            error: "nope".into(),
            retryable: Some(false),
        })
        .await;
    assert_status(fail, Code::FailedPrecondition, "lease token");
    assert_eq!(get(&mut jobs, &job.id).await, before, "nothing changed");

    // After the job completes, the old token cannot fail it either.
    complete(&mut workers, &claimed, b"ok").await.unwrap();
    let done = get(&mut jobs, &job.id).await;
    let fail = workers
        .fail_job(proto::FailJobRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            error: "late".into(),
            retryable: Some(false),
        })
        .await;
    let reason = assert_status(fail, Code::FailedPrecondition, "already completed");
    assert_eq!(reason, "JOB_FINISHED");
    assert_eq!(get(&mut jobs, &job.id).await, done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_job_is_a_failed_precondition() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let completed = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"").await.unwrap();
    let failed = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    workers
        .fail_job(proto::FailJobRequest {
            job_id: failed.id.clone(),
            lease_token: claimed.lease_token,
            error: "boom".into(),
            retryable: Some(false),
        })
        .await
        .unwrap();
    for (id, state) in [(&completed.id, "completed"), (&failed.id, "failed")] {
        let cancel = jobs
            .cancel_job(proto::CancelJobRequest {
                job_id: id.clone(),
                reason: "late".into(),
            })
            .await;
        let finished = assert_reason(cancel, Code::FailedPrecondition, "JOB_FINISHED");
        assert_eq!(finished["state"], state.to_uppercase());
    }
    assert_eq!(
        get(&mut jobs, &completed.id).await.state(),
        JobState::Completed
    );
    assert_eq!(get(&mut jobs, &failed.id).await.state(), JobState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_hide_their_cause() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;
    // Make the job's key hold the wrong type: Redis answers WRONGTYPE.
    let [key] = &redis.keys(JOB_KEYS)[..] else {
        panic!("one job's hash");
    };
    redis.cli(&["DEL", key]);
    redis.cli(&["SET", key, "garbage"]);
    let status = jobs
        .get_job(proto::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "internal error");
    // Data jobd did not write is also internal, not a crash.
    redis.cli(&["DEL", key]);
    redis.cli(&["HSET", key, "state", "bogus", "kind", "k", "seq", "1"]);
    let status = jobs
        .get_job(proto::GetJobRequest { job_id: job.id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "internal error");
}

/// A Redis with an 8 MB maxmemory under noeviction: once past it, Redis refuses writes
/// rather than drop keys.
async fn small_redis() -> RedisServer {
    RedisServer::start_with(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]).await
}

/// Takes `small_redis` past its maxmemory with one 16 MB key, `filler`; deleting it makes
/// room again.
fn fill(redis: &RedisServer) {
    let fill = "redis.call('SET', KEYS[1], string.rep('x', 16 * 1024 * 1024)) return 1";
    redis.cli(&["EVAL", fill, "1", "filler"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_submissions_with_unavailable_and_writes_nothing() {
    let redis = small_redis().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let first = submit(&mut jobs, "full", b"").await;
    fill(&redis);
    let keys = redis.keys(JOB_KEYS);

    for kind in ["alone", "batch"] {
        let refused = match kind {
            "alone" => jobs.submit_job(submit_request("full")).await.map(|_| ()),
            _ => jobs
                .submit_jobs(proto::SubmitJobsRequest {
                    jobs: vec![submit_request("full"); 3],
                })
                .await
                .map(|_| ()),
        };
        let reason = assert_status(refused, Code::Unavailable, "out of memory");
        assert_eq!(reason, "REDIS_OUT_OF_MEMORY");
    }
    let mut idempotent = submit_request("other");
    idempotent.idempotency_key = "once".into();
    assert_status(
        jobs.submit_job(idempotent).await,
        Code::Unavailable,
        "out of memory",
    );
    assert_eq!(redis.keys(JOB_KEYS), keys, "nothing written");

    // Room again: the first job is claimed as it was, and submissions go through.
    redis.cli(&["DEL", "filler"]);
    let claimed = claim(&mut workers, "full").await;
    assert_eq!(claimed.job.as_ref().unwrap().id, first.id);
    submit(&mut jobs, "full", b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_takes_no_new_work_but_lets_running_jobs_finish() {
    let redis = small_redis().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let done = submit(&mut jobs, "full", b"").await;
    let failing = submit(&mut jobs, "full", b"").await;
    let waiting = submit(&mut jobs, "full", b"").await;
    let cancelled = submit(&mut jobs, "other", b"").await;
    let first = claim(&mut workers, "full").await;
    let second = claim(&mut workers, "full").await;
    assert_eq!(first.job.as_ref().unwrap().id, done.id);
    assert_eq!(second.job.as_ref().unwrap().id, failing.id);
    let watch = watch_in_background(&server, &done.id).await;
    fill(&redis);

    // No new work starts: a claim is refused and the queued job stays as it was.
    assert_status(
        workers
            .claim_job(claim_request("full", Duration::ZERO))
            .await,
        Code::Unavailable,
        "out of memory",
    );
    let queued = get(&mut jobs, &waiting.id).await;
    assert_eq!((queued.state(), queued.attempt), (JobState::Queued, 0));

    // Work already running keeps its lease and reaches its end.
    workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: done.id.clone(),
            lease_token: first.lease_token.clone(),
            lease: Some(pb_duration(Duration::from_secs(60))),
            progress: Some(proto::Progress {
                value: Some(50.0),
                message: "half".into(),
            }),
        })
        .await
        .expect("a lease is renewed past maxmemory (its progress is not recorded)");
    // The completion is recorded and says so; the claim it carries takes nothing.
    let answer = workers
        .complete_job(proto::CompleteJobRequest {
            job_id: done.id.clone(),
            lease_token: first.lease_token.clone(),
            result: b"the result".to_vec().into(),
            next: Some(proto::ClaimJobsRequest {
                claim: Some(claim_request("full", Duration::ZERO)),
                max_jobs: 1,
            }),
        })
        .await
        .expect("a completion is recorded past maxmemory")
        .into_inner();
    assert!(answer.next.is_empty(), "no next job while Redis is full");
    fail(&mut workers, &second, "no luck", false).await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: cancelled.id.clone(),
        reason: "full".into(),
    })
    .await
    .expect("a cancellation is recorded past maxmemory");

    let (events, ended) = watch.await.unwrap();
    ended.expect("the watch ends OK");
    assert_eq!(types(&events)[2..], [proto::EventType::Completed]);
    assert_eq!(&events.last().unwrap().result[..], b"the result");
    assert_eq!(get(&mut jobs, &failing.id).await.state(), JobState::Failed);
    assert_eq!(
        get(&mut jobs, &cancelled.id).await.state(),
        JobState::Cancelled
    );

    // Room again: the queued job is claimed.
    redis.cli(&["DEL", "filler"]);
    let claimed = claim(&mut workers, "full").await;
    assert_eq!(claimed.job.as_ref().unwrap().id, waiting.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_error_is_recorded_cut_rather_than_refused() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    // A stack trace of 64 KiB.
    let trace: String = (0..)
        .map(|line| format!("  at frame {line} (src/deep/module.rs:{line})\n"))
        .take_while({
            let mut total = 0;
            move |line: &String| {
                total += line.len();
                total <= 64 * 1024
            }
        })
        .collect();
    let failed = fail(&mut workers, &claimed, &trace, false).await;
    assert_eq!(failed.state(), JobState::Failed);

    let stored = get(&mut jobs, &job.id).await.error;
    assert!(stored.len() <= 4096, "{} bytes kept", stored.len());
    assert!(trace.starts_with(stored.split(" [truncated").next().unwrap()));
    assert!(
        stored.ends_with(&format!(" [truncated: {} bytes in all]", trace.len())),
        "{stored}"
    );
    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(events.last().unwrap().error, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_the_framework_makes_carry_their_codes_name_as_reason() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/jobd.v1.JobService/NoSuchMethod");
    let codec = tonic_prost::ProstCodec::<proto::GetJobRequest, proto::GetJobResponse>::default();
    let request = tonic::Request::new(proto::GetJobRequest {
        job_id: "q.x".into(),
    });
    let unknown = grpc.unary(request, path, codec).await;
    assert_reason(unknown, Code::Unimplemented, "UNIMPLEMENTED");
}
