//! The abuse suite's remaining limits (issue 20): every event counts towards a job's capped
//! log, so a loop of claims and releases keeps it at its cap; watchers of one job have a
//! budget per principal; replies that carry payloads (GetJob, claims) are counted in the
//! payload-bytes budget until they are sent.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use jobd_client::proto;
use tonic::Code;

use crate::harness::*;

/// The documented bound on the Redis memory one job's capped log takes without errors
/// (docs/operations.md, "Memory"): 256 events of at most 512 bytes.
const LOG_BOUND: u64 = 256 * 512;

/// Redis's `used_memory`, bytes.
fn used_memory(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// The hash of the only job of `queue`.
fn job_key(redis: &RedisServer, queue: &str) -> String {
    let keys = redis.keys(&format!("jobd:{{{queue}}}:job:*"));
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

/// A job's last sequence, as its hash holds it.
fn last_sequence(redis: &RedisServer, key: &str) -> u64 {
    redis.cli(&["HGET", key, "seq"]).trim().parse().unwrap()
}

/// A well-behaved client's round trip on `queue`: submit, claim, complete, each answered
/// within 5 s (a bound for a loaded machine; the calls take milliseconds).
async fn round_trip(server: &impl Jobd, queue: &str) {
    let (mut jobs, mut workers) = server.clients().await;
    let bounded = async {
        let job = submit(&mut jobs, queue, b"small").await;
        let claimed = claim(&mut workers, queue).await;
        assert_eq!(claimed.job.as_ref().unwrap().id, job.id);
        complete(&mut workers, &claimed, b"done")
            .await
            .expect("the job completes");
    };
    tokio::time::timeout(Duration::from_secs(5), bounded)
        .await
        .expect("a round trip on another queue within 5 s");
}

/// Claims the job of `queue` and releases it, `cycles` times.
async fn claim_and_release(mut workers: Workers, queue: &str, id: &str, cycles: usize) {
    for _ in 0..cycles {
        let claimed = workers
            .claim_job(claim_request(queue, Duration::from_secs(5)))
            .await
            .expect("the job is claimed")
            .into_inner();
        assert_eq!(claimed.job.expect("a job").id, id);
        workers
            .release_job(proto::ReleaseJobRequest {
                job_id: id.to_owned(),
                lease_token: claimed.lease_token,
                reason: String::new(),
            })
            .await
            .expect("the job is released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_release_loops_keep_a_log_at_its_cap() {
    const CYCLES: usize = 10_000;
    // The default --max-events-per-job.
    const CAP: u64 = 256;
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "loop", b"").await;
    let key = job_key(&redis, "loop");
    // Warmed up, so that what Redis holds once (the scripts, the queues' keys) is counted
    // before the loop: a cycle, and a round trip on the other queue.
    claim_and_release(workers.clone(), "loop", &job.id, 1).await;
    round_trip(&server, "other").await;
    let before = used_memory(&redis);

    let looping = tokio::spawn({
        let (workers, id) = (workers.clone(), job.id.clone());
        async move { claim_and_release(workers, "loop", &id, CYCLES).await }
    });
    // A client of another queue is served while the loop runs: a round trip at each fifth.
    let mut during = 0;
    for fifth in 1..=5 {
        let reached = fifth * 2 * CYCLES as u64 / 5 - 1000;
        until(Duration::from_secs(120), "the loop to go on", || {
            looping.is_finished() || last_sequence(&redis, &key) >= reached
        })
        .await;
        round_trip(&server, "other").await;
        during += usize::from(!looping.is_finished());
    }
    looping.await.unwrap();
    assert!(during > 0, "no round trip ran during the loop");

    // The log holds the events before the cap and one in its last slot.
    let last = last_sequence(&redis, &key);
    assert_eq!(last, 3 + 2 * CYCLES as u64);
    let fields = redis.cli(&["HKEYS", &key]);
    let events = fields.lines().filter(|field| field.starts_with("e:"));
    assert_eq!(events.count() as u64, CAP, "{fields}");
    let grown = used_memory(&redis).saturating_sub(before);
    let usage: u64 = redis
        .cli(&["MEMORY", "USAGE", &key])
        .trim()
        .parse()
        .unwrap();
    eprintln!("Redis memory: +{grown} B over the loop; the job's hash {usage} B");
    assert!(usage < LOG_BOUND, "the job's hash takes {usage} B");
    assert!(grown < LOG_BOUND, "Redis grew by {grown} B");

    // A watcher from the last event sees the job's end, its terminal event last.
    let live = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_sequence: last,
        })
        .await
        .expect("a watcher from the last event")
        .into_inner();
    let claimed = claim(&mut workers, "loop").await;
    complete(&mut workers, &claimed, b"done")
        .await
        .expect("the job completes");
    let (mut live, mut seen) = (live, Vec::new());
    while let Some(event) = live.message().await.expect("the stream ends OK") {
        seen.push(event);
    }
    assert_eq!(sequences(&seen), [last + 1, last + 2]);
    assert_eq!(
        types(&seen),
        [proto::EventType::Started, proto::EventType::Completed]
    );

    // A replay reads the log in pages: the events up to the cap, then past the replaced ones.
    let reads = redis.command_calls("hmget");
    let (replayed, ended) = watch_to_end(&mut jobs, &job.id, 0).await;
    ended.expect("the replay ends OK");
    let reads = redis.command_calls("hmget") - reads;
    assert!(reads <= 4, "{reads} HMGETs for the replay");
    let kinds = types(&replayed);
    assert_eq!(kinds.len() as u64, CAP + 1, "{:?}", sequences(&replayed));
    assert_eq!(kinds[0], proto::EventType::Queued);
    let alternating = kinds[1..CAP as usize - 1].chunks(2);
    assert!(
        alternating
            .into_iter()
            .all(|pair| pair == [proto::EventType::Started, proto::EventType::Released])
    );
    let replayed_sequences = sequences(&replayed);
    assert_eq!(
        replayed_sequences[..CAP as usize - 1],
        (1..CAP).collect::<Vec<_>>()[..]
    );
    assert_eq!(replayed_sequences[CAP as usize - 1..], [last + 1, last + 2]);
    assert_eq!(kinds[CAP as usize], proto::EventType::Completed);

    // A watcher resuming inside the replaced sequences gets the last slot's event, then the end.
    let (resumed, ended) = watch_to_end(&mut jobs, &job.id, CAP + 5).await;
    ended.expect("the resumed replay ends OK");
    assert_eq!(sequences(&resumed), [last + 1, last + 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_past_its_watchers_of_a_job_is_refused_while_another_watches() {
    let redis = RedisServer::start().await;
    let mut auth = AuthFile::new();
    let greedy = auth.add("greedy", &["submitter"], &["*"]);
    let modest = auth.add("modest", &["submitter"], &["*"]);
    let settings = Settings {
        extra: vec![auth.flag(), "--max-watchers-per-job-per-principal=2".into()],
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let jobs = server.jobs().await;
    let submitted = |token: &str| {
        let mut jobs = jobs.clone();
        let request = with_token(submit_request("q"), token);
        async move {
            jobs.submit_job(request)
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id
        }
    };
    let (popular, other) = (submitted(&modest).await, submitted(&modest).await);
    let watch = |token: &str, id: &str| {
        let mut jobs = jobs.clone();
        let request = proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: 0,
        };
        let request = with_token(request, token);
        async move { jobs.watch_job(request).await.map(|s| s.into_inner()) }
    };
    let mut greedy_streams = vec![
        watch(&greedy, &popular).await.unwrap(),
        watch(&greedy, &popular).await.unwrap(),
    ];
    let refused = watch(&greedy, &popular).await;
    let status = refused.as_ref().err().cloned();
    let metadata = assert_reason(refused, Code::ResourceExhausted, "BUDGET_EXHAUSTED");
    assert_eq!(metadata["budget"], "max-watchers-per-job-per-principal");
    assert_eq!(metadata["limit"], "2");
    let message = status.unwrap().message().to_owned();
    assert!(
        message.contains("(2 watchers of one job) is used up for principal greedy"),
        "{message}"
    );

    // Another principal still watches the job, and the greedy one other jobs.
    let _theirs = [
        watch(&modest, &popular).await.expect("modest watches"),
        watch(&modest, &popular).await.expect("modest watches"),
    ];
    let _elsewhere = watch(&greedy, &other).await.expect("another job");

    // A stream that ends gives its place back.
    greedy_streams.pop();
    eventually(Duration::from_secs(10), "greedy's place given back", || {
        let watched = watch(&greedy, &popular);
        async move { watched.await.ok() }
    })
    .await;
}

/// 200 GetJob calls of job `id` at once, 20 on each of 10 connections: how many were served,
/// how many refused for the payload budget, and jobd's peak RSS meanwhile (KiB).
async fn get_storm(jobd: &Running, id: &str) -> (usize, usize, u64) {
    let pid = jobd.pid();
    let peak = Arc::new(AtomicU64::new(0));
    // Sampled every 5 ms (a pace, not a wait) while the calls run.
    let sampling = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                peak.fetch_max(rss_of(pid) / 1024, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut calls = Vec::new();
    for _ in 0..10 {
        let jobs = jobd.jobs().await;
        for _ in 0..20 {
            let (mut jobs, id) = (jobs.clone(), id.to_owned());
            calls.push(async move {
                let request = proto::GetJobRequest { job_id: id };
                jobs.get_job(request).await.map(drop)
            });
        }
    }
    let (mut served, mut refused) = (0, 0);
    for outcome in join_all(calls).await {
        match outcome {
            Ok(()) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "BUDGET_EXHAUSTED");
                refused += 1;
            }
        }
    }
    sampling.abort();
    let peak = peak.load(Ordering::Relaxed).max(rss_of(pid) / 1024);
    (served, refused, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_that_carry_payloads_are_counted_until_they_are_sent() {
    const PAYLOAD: usize = 1_000_000;
    const BUDGET: u64 = 1_500_000;
    let redis = RedisServer::start().await;
    // 200 calls at once meet Redis at once: more time than the harness's 500 ms.
    let jobd = Running::start_with_env(
        &redis.url(),
        &[&format!("--max-payload-bytes-in-flight={BUDGET}")],
        &[("JOBD_REDIS_COMMAND_TIMEOUT", "10s")],
    )
    .await;
    let (mut jobs, mut workers) = jobd.clients().await;
    let payload = vec![b'p'; PAYLOAD];
    let read = submit(&mut jobs, "read", &payload).await;
    let work = submit(&mut jobs, "big", &payload).await;

    // Concurrent reads of the large job: each is served or refused, and jobd's memory grows
    // by no more than the model's 8 times the payload bytes in flight (docs/operations.md,
    // "Memory") beyond what as many reads of a small job cost (the calls themselves), in a
    // process that has served one large reply (the buffers that grow to carry one).
    get(&mut jobs, &read.id).await;
    let small = submit(&mut jobs, "read", b"small").await;
    let (_, _, calls_peak) = get_storm(&jobd, &small.id).await;
    let (served, refused, peak) = get_storm(&jobd, &read.id).await;
    // `JOBD_SLACK` as in every abuse case: the two storms' calls overlap differently on a
    // loaded machine, and what a burst leaves in the allocator is not the model's.
    let bound_kib = calls_peak + (BUDGET * PAYLOAD_FACTOR + JOBD_SLACK) / 1024;
    eprintln!(
        "{served} GetJobs served, {refused} refused; RSS peak {calls_peak} KiB for small \
         jobs, {peak} KiB for large ones (bound {bound_kib})"
    );
    assert!(
        served > 0 && refused > 0,
        "{served} served, {refused} refused"
    );
    assert!(peak <= bound_kib, "RSS {peak} KiB past {bound_kib} KiB");

    // A reply its client does not read holds its bytes: the others that do not fit beside it
    // are refused, naming the budget, and nothing is lost.
    let get_job = proto::GetJobRequest {
        job_id: read.id.clone(),
    };
    let stalled = stalled_call(jobd.address(), "/jobd.v1.JobService/GetJob", &get_job).await;
    assert_eq!(stalled.refused(), None, "the reply is on its way");
    let refused = jobs
        .get_job(proto::GetJobRequest {
            job_id: read.id.clone(),
        })
        .await;
    let metadata = assert_reason(refused, Code::ResourceExhausted, "BUDGET_EXHAUSTED");
    assert_eq!(metadata["budget"], "max-payload-bytes-in-flight");
    let refused = workers
        .claim_job(claim_request("big", Duration::from_secs(5)))
        .await;
    let metadata = assert_reason(refused, Code::ResourceExhausted, "BUDGET_EXHAUSTED");
    assert_eq!(metadata["limit"], BUDGET.to_string());
    // The refused claim found no room for the job before claiming it: the job was never
    // claimed, its log holds its submission alone.
    assert!(redis.never_claimed(&work.id));
    round_trip(&jobd, "small").await;

    // Once the reply is gone, its bytes are given back: the job is read, and claimed whole.
    drop(stalled);
    let got = eventually(Duration::from_secs(10), "room in the budget", || {
        let mut jobs = jobs.clone();
        let id = read.id.clone();
        async move { jobs.get_job(proto::GetJobRequest { job_id: id }).await.ok() }
    })
    .await;
    assert_eq!(got.into_inner().job.unwrap().payload.len(), PAYLOAD);
    let claimed = claim(&mut workers, "big").await;
    let job = claimed.job.as_ref().unwrap();
    assert_eq!(
        (job.id.as_str(), job.payload.len()),
        (work.id.as_str(), PAYLOAD)
    );
    assert_eq!(job.attempt, 1, "the refused claim cost no attempt");
}
