//! Submissions with idempotency keys that reach jobd together share script calls (group
//! commit), as those without do, and each still gets the answer it would get alone: its new
//! job, the job its key names, or the key's conflict.

use std::{collections::HashSet, time::Duration};

use jobd_client::proto;
use tokio::task::JoinSet;

use crate::harness::*;

/// A SubmitJob request to `queue` with idempotency key `key` and `payload`.
fn keyed(queue: &str, key: &str, payload: &[u8]) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        idempotency_key: key.to_owned(),
        payload: payload.to_vec().into(),
        ..submit_request(queue)
    }
}

/// Records every command Redis runs from here on (its slow log, with no threshold).
fn record_commands(redis: &RedisServer) {
    redis.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    redis.cli(&["CONFIG", "SET", "slowlog-max-len", "10000"]);
    redis.cli(&["SLOWLOG", "RESET"]);
}

/// How many script calls Redis ran since `record_commands` that wrote idempotency keys of
/// `queue`: the keyed submission calls, each naming its jobs' keys (the other scripts name
/// none, so the sweeper's calls are not counted).
fn keyed_calls(redis: &RedisServer, queue: &str) -> usize {
    let log: serde_json::Value =
        serde_json::from_str(&redis.cli(&["--json", "SLOWLOG", "GET", "10000"]))
            .expect("SLOWLOG GET as JSON");
    let prefix = format!("jobd:{{{queue}}}:idem:");
    log.as_array()
        .expect("a list of entries")
        .iter()
        .filter(|entry| {
            let args = entry[3].as_array().expect("the command's arguments");
            args[0].as_str() == Some("EVALSHA")
                && args
                    .iter()
                    .any(|arg| arg.as_str().is_some_and(|arg| arg.starts_with(&prefix)))
        })
        .count()
}

/// Sends `requests` as SubmitJob calls at once, while Redis stalls for half a second, so
/// that they reach jobd while the first one's script call waits on Redis; answers in order.
async fn submit_together(
    redis: &RedisServer,
    jobs: &Jobs,
    requests: Vec<proto::SubmitJobRequest>,
) -> Vec<Result<proto::SubmitJobResponse, tonic::Status>> {
    let stall = redis.stall("0.5").await;
    let mut calls = JoinSet::new();
    for (index, request) in requests.into_iter().enumerate() {
        let mut jobs = jobs.clone();
        calls.spawn(async move { (index, jobs.submit_job(request).await) });
    }
    let mut answers: Vec<_> = calls.join_all().await;
    stall.join().unwrap();
    answers.sort_by_key(|(index, _)| *index);
    answers
        .into_iter()
        .map(|(_, answer)| answer.map(tonic::Response::into_inner))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_submissions_arriving_together_share_a_script_call_and_each_make_one_job() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]).await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    // Redis learns the script (its first call is refused NOSCRIPT, then made again).
    submit_with(&mut jobs, keyed("crowd", "warm-up", b"")).await;
    record_commands(&redis);
    let requests = (0..64u8)
        .map(|i| keyed("crowd", &format!("key-{i}"), &[i]))
        .collect();
    let answers = submit_together(&redis, &jobs, requests).await;
    let mut ids = HashSet::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.expect("each submission succeeds");
        assert!(answer.created, "key-{i} is new");
        let job = answer.job.unwrap();
        assert_eq!(get(&mut jobs, &job.id).await.payload, vec![i as u8]);
        ids.insert(job.id);
    }
    assert_eq!(ids.len(), 64, "a job each");
    assert_eq!(redis.keys(JOB_KEYS).len(), 65);
    assert_eq!(redis.keys("jobd:{crowd}:idem:*").len(), 65);
    assert_eq!(stats(&mut jobs, "crowd").await.queued, 65);
    // The first arrives alone and waits on Redis; the other 63 arrive meanwhile and share
    // the next call (at most 64 a call). The bound leaves room for a slow machine.
    let calls = keyed_calls(&redis, "crowd");
    assert!((1..=8).contains(&calls), "{calls} script calls for 64 jobs");

    // Again, every key now live: each names its job, and nothing more is written.
    let requests = (0..64u8)
        .map(|i| keyed("crowd", &format!("key-{i}"), &[i]))
        .collect();
    for answer in submit_together(&redis, &jobs, requests).await {
        let answer = answer.expect("each submission succeeds");
        assert!(!answer.created);
        assert!(ids.contains(&answer.job.unwrap().id));
    }
    assert_eq!(redis.keys(JOB_KEYS).len(), 65);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_keyed_call_gives_each_caller_its_own_answer() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]).await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let live = submit_with(&mut jobs, keyed("mix", "live", b"first"))
        .await
        .job
        .unwrap();
    record_commands(&redis);
    let answers = submit_together(
        &redis,
        &jobs,
        vec![
            keyed("mix", "new-1", b"a"),
            keyed("mix", "twice", b"b"),
            keyed("mix", "live", b"first"),
            keyed("mix", "live", b"another request"),
            keyed("mix", "twice", b"b"),
            keyed("mix", "new-2", b"c"),
        ],
    )
    .await;
    let [new_1, twice, again, conflict, twice_again, new_2]: [_; 6] = answers.try_into().unwrap();
    let (new_1, new_2) = (new_1.unwrap(), new_2.unwrap());
    assert!(new_1.created && new_2.created);
    assert_ne!(new_1.job.unwrap().id, new_2.job.unwrap().id);
    // One of the two with key "twice" made the job, the other got it.
    let (twice, twice_again) = (twice.unwrap(), twice_again.unwrap());
    assert_eq!(
        usize::from(twice.created) + usize::from(twice_again.created),
        1
    );
    assert_eq!(twice.job.unwrap().id, twice_again.job.unwrap().id);
    let again = again.unwrap();
    assert!(!again.created);
    assert_eq!(again.job.unwrap().id, live.id);
    let refused = assert_reason(conflict, tonic::Code::AlreadyExists, "IDEMPOTENCY_CONFLICT");
    assert_eq!(refused["key"], "live");

    // The live job is as it was; three jobs more, no fourth.
    assert_eq!(get(&mut jobs, &live.id).await.payload, b"first".as_slice());
    assert_eq!(redis.keys(JOB_KEYS).len(), 4);
    assert_eq!(stats(&mut jobs, "mix").await.queued, 4);
    let calls = keyed_calls(&redis, "mix");
    assert!((1..=3).contains(&calls), "{calls} script calls for 6 jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_jobs_written_together_go_to_waiting_claims_and_a_live_keys_job_does_not() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]).await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    // A job with a key, running: the queue has no ready job.
    let live = submit_with(&mut jobs, keyed("handed", "live", b""))
        .await
        .job
        .unwrap();
    assert_eq!(claim(&mut workers, "handed").await.job.unwrap().id, live.id);
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let request = claim_request("handed", Duration::from_secs(3));
        waiting.push(waiting_claim(&server, request).await);
    }
    let answers = submit_together(
        &redis,
        &jobs,
        vec![
            keyed("handed", "live", b""),
            keyed("handed", "new-1", b""),
            keyed("handed", "new-2", b""),
        ],
    )
    .await;
    let created: HashSet<String> = answers[1..]
        .iter()
        .map(|answer| answer.as_ref().unwrap().job.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(
        answers[0].as_ref().unwrap().job.as_ref().unwrap().id,
        live.id
    );
    // Two claims get the new jobs, one each; the third gets nothing by the end of its wait.
    let mut claimed = HashSet::new();
    for claim in waiting {
        let answer = claim.await.unwrap().unwrap().into_inner();
        if let Some(job) = answer.job {
            assert_eq!(job.state, proto::JobState::Running as i32);
            assert!(claimed.insert(job.id), "claimed twice");
        }
    }
    assert_eq!(claimed, created);
    let counts = stats(&mut jobs, "handed").await;
    assert_eq!((counts.queued, counts.running), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_jobs_batch_writes_its_keyed_jobs_of_a_queue_with_one_call() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    // Redis learns the script (its first call is refused NOSCRIPT, then made again).
    submit_with(&mut jobs, keyed("many", "warm-up", b"")).await;
    record_commands(&redis);
    let batch: Vec<_> = (0..100)
        .map(|i| keyed("many", &format!("key-{i}"), b""))
        .collect();
    let first = submit_jobs(&mut jobs, batch.clone()).await;
    assert_eq!(keyed_calls(&redis, "many"), 1);
    assert_eq!(redis.keys(JOB_KEYS).len(), 101);
    // Again: the same jobs, none created.
    let results = jobs
        .submit_jobs(proto::SubmitJobsRequest { jobs: batch })
        .await
        .unwrap()
        .into_inner()
        .results;
    for (result, job) in results.into_iter().zip(first) {
        assert!(!result.created);
        assert_eq!(result.job.unwrap().id, job.id);
    }
    assert_eq!(keyed_calls(&redis, "many"), 2);
    assert_eq!(redis.keys(JOB_KEYS).len(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_in_a_submit_jobs_batch_stops_its_queue_at_the_conflicting_job() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let taken = submit_with(&mut jobs, keyed("a", "taken", b"x"))
        .await
        .job
        .unwrap();
    let batch = |taken_payload: &[u8]| proto::SubmitJobsRequest {
        jobs: vec![
            keyed("a", "k1", b""),
            keyed("a", "taken", taken_payload),
            keyed("a", "k2", b""),
            keyed("b", "k3", b""),
            submit_request("a"),
        ],
    };
    let refused = jobs.submit_jobs(batch(b"y")).await;
    let conflict = assert_reason(refused, tonic::Code::AlreadyExists, "IDEMPOTENCY_CONFLICT");
    assert_eq!(conflict["key"], "taken");
    // Queue a: the job before the conflict, not the one after it, nor the one without a key;
    // queue b's keyed job.
    assert_eq!(redis.keys("jobd:{a}:idem:*").len(), 2);
    assert!(redis.keys("jobd:{a}:idem:k2").is_empty());
    assert_eq!(stats(&mut jobs, "a").await.queued, 2);
    assert_eq!(stats(&mut jobs, "b").await.queued, 1);

    // The batch with the key's own request: what was written is found, the rest written.
    let results = jobs
        .submit_jobs(batch(b"x"))
        .await
        .unwrap()
        .into_inner()
        .results;
    let created: Vec<bool> = results.iter().map(|result| result.created).collect();
    assert_eq!(created, [false, false, true, false, true]);
    assert_eq!(results[1].job.as_ref().unwrap().id, taken.id);
    assert_eq!(stats(&mut jobs, "a").await.queued, 4);
    assert_eq!(stats(&mut jobs, "b").await.queued, 1);
}
