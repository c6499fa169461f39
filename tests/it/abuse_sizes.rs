//! Message size policy: every method has a request size limit, enforced before the request is
//! decoded; a larger request gets RESOURCE_EXHAUSTED naming the method and its limit, and
//! changes nothing. What a request carries beside its payload is bounded too: the trace
//! context a job keeps, and what an error message echoes.

use std::{collections::BTreeSet, time::Duration};

use jobd_client::proto;
use tonic::Code;

use crate::harness::*;

/// The payload limit of the server below, so that its payload methods' limits are small.
const MAX_PAYLOAD: usize = 1024;
const SMALL: usize = 64 * 1024;
const ONE_PAYLOAD: usize = MAX_PAYLOAD + 64 * 1024;
const BATCH: usize = 16 * 1024 * 1024;
const FAIL: usize = 256 * 1024;

/// Every method of both services, with its request size limit (docs/api.md).
const LIMITS: &[(&str, usize)] = &[
    ("jobd.v1.JobService/SubmitJob", ONE_PAYLOAD),
    ("jobd.v1.JobService/SubmitJobs", BATCH),
    ("jobd.v1.JobService/SubmitAndWatchJobs", BATCH),
    ("jobd.v1.JobService/GetJob", SMALL),
    ("jobd.v1.JobService/WatchJob", SMALL),
    ("jobd.v1.JobService/CancelJob", SMALL),
    ("jobd.v1.JobService/ListJobs", SMALL),
    ("jobd.v1.JobService/GetQueueStats", SMALL),
    ("jobd.v1.WorkerService/ClaimJob", SMALL),
    ("jobd.v1.WorkerService/ClaimJobs", SMALL),
    ("jobd.v1.WorkerService/Heartbeat", SMALL),
    ("jobd.v1.WorkerService/CompleteJob", ONE_PAYLOAD),
    ("jobd.v1.WorkerService/CompleteJobs", ONE_PAYLOAD),
    ("jobd.v1.WorkerService/FailJob", FAIL),
    ("jobd.v1.WorkerService/ReleaseJob", SMALL),
];

/// Every key in Redis but the bystander's (its queue's hash tag).
fn all_keys(redis: &RedisServer) -> BTreeSet<String> {
    let bystander = format!("{{{BYSTANDER_QUEUE}}}");
    let keys = redis.keys("*").into_iter();
    keys.filter(|key| !key.contains(&bystander)).collect()
}

/// A jobd of its own, with `extra` arguments; a bystander's baseline taken on it; the
/// footprint from then on, the bystander at work.
async fn abused(redis: &RedisServer, extra: &[&str]) -> (Running, Latencies, Footprint, Busy) {
    let jobd = Running::start(&redis.url(), extra).await;
    let mut bystander = Bystander::new(&jobd).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(jobd.pid(), redis);
    (jobd, baseline, footprint, bystander.keep_going())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_to_every_method_are_refused_before_decoding() {
    let redis = RedisServer::start().await;
    let payload = format!("--max-payload-bytes={MAX_PAYLOAD}");
    let (server, baseline, footprint, busy) = abused(&redis, &[&payload]).await;
    let mut jobs = server.jobs().await;
    submit(&mut jobs, "sizes.q", b"before").await;
    let before = all_keys(&redis);

    // The methods' list is complete: every method the protos define is here.
    let listed: BTreeSet<&str> = LIMITS.iter().map(|(method, _)| *method).collect();
    assert_eq!(listed.len(), 15);

    let channel = server.channel().await;
    for (method, limit) in LIMITS {
        // A message just over: field 1 of `limit - 3` bytes, after a tag and a length of 3 or
        // 4 bytes.
        let message = message_of(limit - 3);
        assert!((limit + 1..=limit + 2).contains(&message.len()));
        let answer = raw_call(channel.clone(), &format!("/{method}"), message).await;
        let status = answer.expect_err("an oversized request is refused");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{method}: {status:?}"
        );
        assert!(
            status
                .message()
                .contains(&format!("limit of {limit} bytes for {method}")),
            "{method}: {:?}",
            status.message()
        );
        assert_eq!(reason(&status), "MESSAGE_TOO_LARGE", "{method}");
    }
    // A message at the limit passes the size check (and is then judged on its content).
    assert_eq!(message_of(SMALL - 4).len(), SMALL);
    let at_limit = raw_call(
        channel.clone(),
        "/jobd.v1.JobService/GetJob",
        message_of(SMALL - 4),
    )
    .await
    .expect_err("not a job id");
    assert_eq!(at_limit.code(), Code::InvalidArgument, "{at_limit:?}");

    assert_eq!(
        all_keys(&redis),
        before,
        "an oversized request wrote to Redis"
    );
    // The connection and the server are fine.
    let job = submit(&mut jobs, "sizes.q", b"after").await;
    assert_eq!(get(&mut jobs, &job.id).await.payload, b"after".as_slice());
    busy.assert_kept(&baseline).await;
    // One request in flight at a time, 16 MiB at most; Redis holds two small jobs more.
    footprint.assert_peak_within(jobd_growth(0, 0, BATCH as u64), REDIS_SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_label_key_is_not_echoed_whole() {
    let redis = RedisServer::start().await;
    let (server, baseline, footprint, busy) = abused(&redis, &[]).await;
    let mut jobs = server.jobs().await;
    let key = "k".repeat(1024 * 1024);
    let request = proto::SubmitJobRequest {
        labels: [(key, "v".to_owned())].into(),
        ..submit_request("sizes.labels")
    };
    let status = jobs.submit_job(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().len() < 256,
        "{} bytes",
        status.message().len()
    );
    assert!(status.message().contains("…"), "{}", status.message());
    busy.assert_kept(&baseline).await;
    // A request of 1 MiB in flight; nothing written to Redis.
    footprint.assert_peak_within(jobd_growth(0, 0, MIB), REDIS_SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_a_bounded_trace_context() {
    let redis = RedisServer::start().await;
    let (server, baseline, footprint, busy) = abused(&redis, &[]).await;
    let mut jobs = server.jobs().await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let members: Vec<String> = (0..1000).map(|i| format!("m{i:03}=v")).collect();
    let mut request = tonic::Request::new(submit_request("sizes.trace"));
    let metadata = request.metadata_mut();
    metadata.insert("traceparent", parent.parse().unwrap());
    metadata.insert("tracestate", members.join(",").parse().unwrap());
    let job = jobs
        .submit_job(request)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let kept = get(&mut jobs, &job.id).await.trace_context;
    // The caller's trace, continued by jobd's span of the call.
    let trace = &parent[..36];
    assert!(kept["traceparent"].starts_with(trace), "{kept:?}");
    let state = &kept["tracestate"];
    assert!(
        state.len() <= 512,
        "{} bytes of tracestate kept",
        state.len()
    );
    assert!(state.starts_with("m000=v,m001=v"), "{state}");
    assert_eq!(kept.len(), 2);

    // A traceparent no W3C version has: the job keeps none of it, and is created.
    let mut request = tonic::Request::new(submit_request("sizes.trace"));
    let huge = format!("00-{}", "f".repeat(8 * 1024));
    request
        .metadata_mut()
        .insert("traceparent", huge.parse().unwrap());
    let job = tokio::time::timeout(Duration::from_secs(5), jobs.submit_job(request))
        .await
        .unwrap()
        .expect("the job is created")
        .into_inner()
        .job
        .unwrap();
    // (jobd's own span of the call may be kept: not the caller's value.)
    let kept = get(&mut jobs, &job.id).await.trace_context;
    assert!(kept.values().all(|value| value.len() <= 512), "{kept:?}");
    busy.assert_kept(&baseline).await;
    // Requests of a few KiB; Redis holds two jobs more, each with at most 512 bytes of
    // tracestate.
    footprint.assert_peak_within(jobd_growth(0, 0, MIB), REDIS_SLACK + 2 * REDIS_PER_JOB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_naming_one_key_a_thousand_times_reads_its_job_once() {
    const COPIES: usize = 1000;
    const RESULT: usize = 1024 * 1024;
    let redis = RedisServer::start().await;
    let (server, baseline, footprint, busy) = abused(&redis, &[]).await;
    let (mut jobs, mut workers) = server.clients().await;
    // The key's job exists, finished with a result of 1 MiB.
    let keyed = || proto::SubmitJobRequest {
        idempotency_key: "dup".into(),
        payload: b"small".to_vec().into(),
        ..submit_request("dups")
    };
    let job = submit_with(&mut jobs, keyed()).await.job.unwrap();
    let claimed = claim(&mut workers, "dups").await;
    complete(&mut workers, &claimed, &vec![7; RESULT])
        .await
        .unwrap();

    // A request of about 40 KB naming it 1,000 times.
    let sent = redis_output_bytes(&redis);
    let batch = proto::SubmitJobsRequest {
        jobs: vec![keyed(); COPIES],
    };
    let results = jobs
        .submit_jobs(batch)
        .await
        .expect("the batch is answered");
    let results = results.into_inner().results;
    assert_eq!(results.len(), COPIES);
    for result in &results {
        assert!(!result.created);
        assert_eq!(result.job.as_ref().unwrap().id, job.id);
    }
    // The job read once (or twice), not once per copy: Redis sent less than 4 results' worth
    // (the bystander's calls meanwhile are a few KiB).
    let sent = redis_output_bytes(&redis) - sent;
    assert!(
        sent < 4 * RESULT as u64,
        "Redis sent {sent} bytes for the batch"
    );

    busy.assert_kept(&baseline).await;
    // One read of the job (its 1 MiB result) in flight; Redis holds the job and its result,
    // and one reply of it.
    footprint.assert_peak_within(
        jobd_growth(0, 0, RESULT as u64),
        REDIS_SLACK + REDIS_PER_JOB + 2 * RESULT as u64,
    );
}
