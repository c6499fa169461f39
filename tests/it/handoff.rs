//! Hand-off: a job submitted through the jobd a claim waits on goes straight to that claim,
//! RUNNING from its submission's own script call, unless the queue holds ready jobs it would
//! pass over.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use jobd_client::proto::{self, EventType};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// What a claim started by `waiting_claim` got, within 10 s.
async fn answered(waiting: PendingClaim) -> proto::ClaimJobResponse {
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the claim is answered")
        .expect("the claim's task ends well")
        .expect("the claim succeeds")
        .into_inner()
}

/// Submits a job to `queue` that becomes claimable in an hour.
async fn submit_for_an_hour_later(jobs: &mut Jobs, queue: &str) -> proto::Job {
    let request = proto::SubmitJobRequest {
        start: Some(proto::submit_job_request::Start::Delay(pb_duration(
            Duration::from_secs(3600),
        ))),
        ..submit_request(queue)
    };
    submit_with(jobs, request).await.job.unwrap()
}

/// Every command Redis ran from here on, scripts' own included, by name and arguments.
fn record_commands(redis: &RedisServer) {
    redis.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    redis.cli(&["CONFIG", "SET", "slowlog-max-len", "10000"]);
    redis.cli(&["SLOWLOG", "RESET"]);
}

fn recorded_commands(redis: &RedisServer) -> Vec<Vec<String>> {
    let log: serde_json::Value =
        serde_json::from_str(&redis.cli(&["--json", "SLOWLOG", "GET", "10000"]))
            .expect("SLOWLOG GET as JSON");
    log.as_array()
        .expect("a list of entries")
        .iter()
        .map(|entry| {
            entry[3]
                .as_array()
                .expect("the command's arguments")
                .iter()
                .map(|arg| arg.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_while_a_claim_waits_goes_to_it_without_queueing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let waiting = waiting_claim(&server, claim_request("direct", Duration::from_secs(20))).await;
    record_commands(&redis);
    let submitted = submit(&mut jobs, "direct", b"input").await;
    let claimed = answered(waiting).await;
    let commands = recorded_commands(&redis);

    let job = claimed.job.clone().expect("the claim got a job");
    assert_eq!(job.id, submitted.id);
    assert_eq!(job.state, proto::JobState::Running as i32);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.worker_id, "test-worker");
    assert_eq!(&job.payload[..], b"input");
    // The claim's lease (30 s) from the submission's time.
    assert_eq!(
        millis_of(&claimed.lease_expires_at),
        millis_of(&job.started_at) + 30_000
    );
    assert_eq!(millis_of(&job.started_at), millis_of(&submitted.created_at));
    // What the worker was given is what is stored.
    assert_eq!(get(&mut jobs, &submitted.id).await, job);

    // The job never entered the ready set: no queue wake-up, no claim script (its ZMSCORE),
    // and the queue's ready set does not exist.
    let names: Vec<&str> = commands.iter().map(|command| command[0].as_str()).collect();
    assert!(
        names.contains(&"EVALSHA"),
        "the submission was recorded: {names:?}"
    );
    assert!(
        !names.contains(&"ZMSCORE"),
        "no claim script ran: {names:?}"
    );
    assert!(
        !commands
            .iter()
            .any(|command| command[0] == "PUBLISH" && command[1] == "jobd:wake:queues"),
        "no queue wake-up was published: {commands:?}"
    );
    assert_eq!(redis.cli(&["EXISTS", "jobd:{direct}:ready"]), "0");
    assert_eq!(redis.cli(&["ZCARD", "jobd:{direct}:running"]), "1");

    let mut workers = server.workers().await;
    complete(&mut workers, &claimed, b"out").await.unwrap();
    let (events, end) = watch_to_end(&mut jobs, &submitted.id, 0).await;
    end.unwrap();
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Completed]
    );
    assert_eq!(sequences(&events), [1, 2, 3]);
    assert_eq!(events[1].worker_id, "test-worker");
    assert_eq!(events[1].attempt, 1);
    assert_eq!(&events[2].result[..], b"out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_dealt_to_waiting_claims_in_turn_best_first() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    // One at a time, so that they wait in this order.
    let mut waiting = Vec::new();
    for worker in ["w1", "w2", "w3"] {
        let mut workers = server.workers().await;
        let claim = proto::ClaimJobRequest {
            worker_id: worker.to_owned(),
            ..claim_request("dealt", Duration::from_secs(20))
        };
        let claiming = async move { claim_jobs(&mut workers, claim, 8).await };
        waiting.push(spawn_parked(&server, claiming).await);
    }
    let requests = (0..6)
        .map(|n| proto::SubmitJobRequest {
            priority: if n == 4 { 9 } else { 0 },
            ..submit_request("dealt")
        })
        .collect();
    let submitted = submit_jobs(&mut jobs, requests).await;
    let mut got = Vec::new();
    for claim in waiting {
        let claimed = tokio::time::timeout(Duration::from_secs(10), claim)
            .await
            .expect("each claim is answered")
            .unwrap();
        got.push(
            claimed
                .into_iter()
                .map(|claimed| claimed.job.unwrap().id)
                .collect::<Vec<_>>(),
        );
    }
    let id = |n: usize| submitted[n].id.clone();
    // The priority-9 job first, then submission order, one per claim in turn.
    assert_eq!(
        got,
        [vec![id(4), id(2)], vec![id(0), id(3)], vec![id(1), id(5)]]
    );
    assert_eq!(stats(&mut jobs, "dealt").await.running, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_gets_no_more_than_it_asked_and_the_rest_are_queued() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let claim = claim_request("some", Duration::from_secs(20));
    let waiting = spawn_parked(
        &server,
        async move { claim_jobs(&mut workers, claim, 2).await },
    )
    .await;
    let submitted = submit_jobs(&mut jobs, (0..5).map(|_| submit_request("some")).collect()).await;
    let claimed: Vec<String> = waiting
        .await
        .unwrap()
        .into_iter()
        .map(|claimed| claimed.job.unwrap().id)
        .collect();
    assert_eq!(claimed, [submitted[0].id.clone(), submitted[1].id.clone()]);
    let counts = stats(&mut jobs, "some").await;
    assert_eq!((counts.running, counts.queued), (2, 3));
    // The queued ones are claimed in order, as ever.
    let mut workers = server.workers().await;
    let rest = claim_jobs(&mut workers, claim_request("some", Duration::ZERO), 10).await;
    let rest: Vec<String> = rest.into_iter().map(|c| c.job.unwrap().id).collect();
    assert_eq!(
        rest,
        submitted[2..]
            .iter()
            .map(|j| j.id.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_never_passes_over_a_ready_job() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    // A job made ready behind jobd's back, announced to nobody: SCHEDULED far ahead, then
    // moved by hand to the head of the ready set.
    let early = submit_for_an_hour_later(&mut jobs, "fair").await;
    let waiting = waiting_claim(&server, claim_request("fair", Duration::from_secs(20))).await;
    let key = format!("jobd:{{fair}}:job:{}", early.id.rsplit_once('.').unwrap().1);
    let moved = redis.cli(&[
        "EVAL",
        "redis.call('ZREM', KEYS[2], ARGV[1]); redis.call('ZADD', KEYS[3], 1, ARGV[1]);
         redis.call('HSET', KEYS[1], 'state', 'queued'); return 'OK'",
        "3",
        &key,
        "jobd:{fair}:scheduled",
        "jobd:{fair}:ready",
        &early.id,
    ]);
    assert_eq!(moved, "OK");

    // The waiting claim gets the job that was ready first, not the one submitted now.
    let later = submit(&mut jobs, "fair", b"").await;
    let claimed = answered(waiting).await;
    assert_eq!(claimed.job.unwrap().id, early.id);
    assert_eq!(
        get(&mut jobs, &later.id).await.state,
        proto::JobState::Queued as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_to_run_later_is_not_handed_to_a_waiting_claim() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let waiting = waiting_claim(&server, claim_request("later", Duration::from_secs(2))).await;
    let delayed = submit_for_an_hour_later(&mut jobs, "later").await;
    assert!(answered(waiting).await.job.is_none(), "the wait ran out");
    assert_eq!(
        get(&mut jobs, &delayed.id).await.state,
        proto::JobState::Scheduled as i32
    );
}

/// A job's 9 values as the submission scripts take them: id, payload, spec, kind,
/// retention, default lease, start, priority, size.
const JOB: [&str; 9] = [
    "q.1", "payload", "spec", "kind", "60000", "", "", "0", "9000",
];

/// A hand-off of that job, as the submission scripts take it: place, worker, lease token,
/// lease, acknowledgement timeout.
fn handoff(token: &str) -> [&str; 5] {
    ["1", "w", token, "30000", "5000"]
}

/// A script's reply as redis-cli prints it, but for its last lines: the time it ran, and the
/// due index's mark after it (`due:...`).
fn but_time(reply: String) -> String {
    let lines: Vec<&str> = reply
        .lines()
        .filter(|line| !line.starts_with("due:"))
        .collect();
    lines[..lines.len() - 1].join("\n")
}

#[tokio::test]
async fn the_submission_script_run_twice_reports_the_first_runs_handoff() {
    let redis = RedisServer::start().await;
    let script = lua_script!("submit_many");
    let run = |token: &str| {
        let mut args = vec![
            "EVAL",
            script,
            "5",
            "jobd:{q}:ready",
            "jobd:{q}:scheduled",
            "jobd:{q}:running",
            "jobd:{q}:job:1",
            "jobd:{q}:due",
            "jobd:wake:queues",
            "q",
            "jobd:wake:jobs",
        ];
        args.extend(JOB);
        args.extend(handoff(token));
        redis.cli(&args)
    };
    // None made ready, handed off; again, as fred would resend it after a lost reply: the
    // same answer, with the first run's time, and nothing written twice.
    let first = run("token-1");
    assert_eq!(but_time(first.clone()), "0\n1");
    assert_eq!(run("token-1"), first);
    assert_eq!(redis.cli(&["HGET", "jobd:{q}:job:1", "seq"]), "2");
    // Another call for the same job id did not make that hand-off.
    assert_eq!(but_time(run("token-2")), "0\n0");
    assert_eq!(redis.cli(&["HGET", "jobd:{q}:job:1", "token"]), "token-1");
    assert_eq!(redis.cli(&["ZRANGE", "jobd:{q}:running", "0", "-1"]), "q.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_going_away_mid_call_still_hands_its_jobs_over() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]).await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    // The queue is known to jobd and Redis before the measured submission.
    let first = submit(&mut jobs, "gone", b"").await;
    let claimed = claim(&mut workers, "gone").await;
    assert_eq!(claimed.job.as_ref().unwrap().id, first.id);

    let waiting = waiting_claim(&server, claim_request("gone", Duration::from_secs(5))).await;
    // Redis stalls, so the submission's call is in flight when its caller gives up.
    let stall = redis.stall("0.6").await;
    let mut request = tonic::Request::new(proto::SubmitJobsRequest {
        jobs: vec![submit_request("gone")],
    });
    request.set_timeout(Duration::from_millis(200));
    let status = jobs
        .submit_jobs(request)
        .await
        .expect_err("the caller gives up before Redis answers");
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    stall.join().unwrap();

    // The submission was written after all, and its job went to the waiting claim.
    let handed = answered(waiting).await;
    let job = handed.job.expect("the claim got the job");
    assert_eq!(job.state, proto::JobState::Running as i32);
    assert_eq!(get(&mut jobs, &job.id).await.worker_id, "test-worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_submitters_and_workers_on_two_jobds_every_job_runs_exactly_once() {
    const SUBMITTERS: usize = 3;
    const BATCHES: usize = 40;
    let redis = RedisServer::start().await;
    let servers = [
        TestServer::start(&redis).await,
        TestServer::start(&redis).await,
    ];
    let claimed = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = CancellationToken::new();
    // Every worker waits before the first submission, so that some jobs are handed off
    // whatever the machine's speed.
    let mut workers = JoinSet::new();
    for (n, server) in servers.iter().enumerate() {
        for parked in 1..=4 {
            let claim = proto::ClaimJobRequest {
                worker_id: format!("w{n}"),
                ..claim_request("once", Duration::from_secs(1))
            };
            let client = server.workers().await;
            workers.spawn(work_batches(client, claim, claimed.clone(), done.clone()));
            claims_waiting(server, parked).await;
        }
    }
    // Submitters on both jobds, batches of 1 to 4 jobs: some handed off, some queued.
    let mut submitters = JoinSet::new();
    for server in servers.iter().flat_map(|s| [s; SUBMITTERS]) {
        submitters.spawn(submit_batches(server.jobs().await, BATCHES));
    }
    let mut submitted = Vec::new();
    while let Some(ids) = submitters.join_next().await {
        submitted.extend(ids.unwrap());
    }
    let total = submitted.len();
    assert_eq!(total, 2 * SUBMITTERS * BATCHES / 4 * (1 + 2 + 3 + 4));
    eventually(
        Duration::from_secs(30),
        "every job to be claimed",
        || async { (claimed.lock().unwrap().len() >= total).then_some(()) },
    )
    .await;
    done.cancel();
    while workers.join_next().await.is_some() {}

    // Each job claimed once, by one worker, and completed at its first attempt.
    let mut claimed = claimed.lock().unwrap().clone();
    claimed.sort();
    submitted.sort();
    assert_eq!(claimed, submitted, "every job claimed exactly once");
    let mut jobs = servers[0].jobs().await;
    for id in &submitted {
        let job = get(&mut jobs, id).await;
        assert_eq!(
            (job.state, job.attempt, job.last_sequence),
            (proto::JobState::Completed as i32, 1, 3),
            "{id}"
        );
    }
    // Both paths were taken: each job is written by one HSET at submission and one at
    // completion, and a job claimed from the ready set by one more in the claim script. (The
    // count of commands is what is asserted here, so Redis's command statistics it is.)
    let from_ready = redis.command_calls("hset") - 2 * total as u64;
    assert!(
        0 < from_ready && from_ready < total as u64,
        "{from_ready} of {total} jobs claimed from the ready set, the rest handed off"
    );
    let counts = stats(&mut jobs, "once").await;
    assert_eq!(
        (counts.queued, counts.running, counts.completed),
        (0, 0, total as u64)
    );
}

/// A worker that claims up to three jobs at a time with `claim` and completes them in one
/// call, until `done`; it notes each job it claimed in `claimed`.
async fn work_batches(
    mut workers: Workers,
    claim: proto::ClaimJobRequest,
    claimed: Arc<Mutex<Vec<String>>>,
    done: CancellationToken,
) {
    while !done.is_cancelled() {
        let jobs = tokio::select! {
            jobs = claim_jobs(&mut workers, claim.clone(), 3) => jobs,
            () = done.cancelled() => return,
        };
        let mut completions = Vec::new();
        for job in jobs {
            let id = job.job.unwrap().id;
            claimed.lock().unwrap().push(id.clone());
            completions.push(proto::Completion {
                job_id: id,
                lease_token: job.lease_token,
                result: Default::default(),
            });
        }
        if !completions.is_empty() {
            let results = workers
                .complete_jobs(proto::CompleteJobsRequest {
                    completions,
                    next: None,
                })
                .await
                .expect("CompleteJobs succeeds")
                .into_inner()
                .results;
            assert!(results.iter().all(|r| r.code == 0), "{results:?}");
        }
    }
}

/// Submits `batches` batches of 1 to 4 jobs to queue "once"; the ids of the jobs submitted.
async fn submit_batches(mut jobs: Jobs, batches: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for batch in 0..batches {
        let requests = (0..=batch % 4).map(|_| submit_request("once")).collect();
        ids.extend(
            submit_jobs(&mut jobs, requests)
                .await
                .into_iter()
                .map(|j| j.id),
        );
        // Paced, so that workers often wait and jobs are handed to them (a mix, not a wait).
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_an_idempotency_key_is_handed_off_once() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let keyed = || proto::SubmitJobRequest {
        idempotency_key: "order-17".to_owned(),
        ..submit_request("keyed")
    };
    let waiting = waiting_claim(&server, claim_request("keyed", Duration::from_secs(20))).await;
    record_commands(&redis);
    let submitted = submit_with(&mut jobs, keyed()).await;
    assert!(submitted.created);
    let claimed = answered(waiting).await;
    let job = claimed.job.expect("the claim got the job");
    assert_eq!(job.id, submitted.job.unwrap().id);
    assert_eq!(get(&mut jobs, &job.id).await, job);
    let commands = recorded_commands(&redis);
    assert!(
        !commands.iter().any(|command| command[0] == "ZMSCORE"
            || (command[0] == "PUBLISH" && command[1] == "jobd:wake:queues")),
        "handed off, not queued: {commands:?}"
    );

    // The same key again names that job; a claim waiting now gets nothing.
    let waiting = waiting_claim(&server, claim_request("keyed", Duration::from_secs(1))).await;
    let again = submit_with(&mut jobs, keyed()).await;
    assert!(!again.created);
    assert_eq!(again.job.unwrap().id, job.id);
    assert!(answered(waiting).await.job.is_none(), "nothing to hand off");
    let events = first_events(&mut jobs, &job.id, 2).await;
    assert_eq!(types(&events), [EventType::Queued, EventType::Started]);
    assert_eq!(events[1].worker_id, "test-worker");
}

#[tokio::test]
async fn the_keyed_submission_script_run_twice_reports_the_first_runs_handoffs() {
    let redis = RedisServer::start().await;
    let script = lua_script!("submit_keyed");
    // Job q.1 with key k, handed off; job q.2 with key k too, another request's.
    let run = || {
        let mut args = vec![
            "EVAL",
            script,
            "8",
            "jobd:{q}:ready",
            "jobd:{q}:scheduled",
            "jobd:{q}:running",
            "jobd:{q}:due",
            "jobd:{q}:job:1",
            "jobd:{q}:idem:k",
            "jobd:{q}:job:2",
            "jobd:{q}:idem:k",
            "jobd:wake:queues",
            "q",
            "jobd:wake:jobs",
        ];
        args.extend(JOB);
        args.extend(["60000", "fingerprint", "1"]);
        args.extend(JOB.map(|value| if value == "q.1" { "q.2" } else { value }));
        args.extend(["60000", "fingerprint", "2"]);
        args.extend(handoff("token-1"));
        redis.cli(&args)
    };
    let first = run();
    let lines: Vec<&str> = first.lines().collect();
    // Per job: status, handed off or the job the key names, the time it was created; then
    // the due index's mark: the claim's acknowledgement deadline.
    assert_eq!(lines[..2], ["created", "1"], "{first}");
    assert_eq!(lines[3..6], ["exists", "q.1", "0"], "{first}");
    assert!(lines[6].starts_with("due:"), "{first}");
    // Again, as fred would resend it after a lost reply: the same answer, nothing written.
    let again = run();
    assert_eq!(again.replacen("again", "created", 1), first);
    assert_eq!(redis.cli(&["HGET", "jobd:{q}:job:1", "seq"]), "2");
    assert_eq!(redis.cli(&["EXISTS", "jobd:{q}:job:2"]), "0");
    assert_eq!(redis.cli(&["ZRANGE", "jobd:{q}:running", "0", "-1"]), "q.1");
    assert_eq!(redis.cli(&["EXISTS", "jobd:{q}:ready"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_empties_its_queue_parks_the_next_claim_without_reading_it() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let other = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    submit(&mut jobs, "next", b"").await;
    let claimed = claim(&mut workers, "next").await;
    // What is asserted is how often the queue is read, so Redis's command statistics count it:
    // claims read a queue with ZRANGE; the sweeper and the scripts never send it.
    assert_eq!(redis.command_calls("zrange"), 1);

    // Completes a job and waits for the next one in the same call, in the background;
    // returns once the completion is recorded.
    let complete_then_wait = |job: proto::ClaimJobResponse| {
        let mut workers = workers.clone();
        let mut next = claim_request("next", Duration::from_secs(10));
        next.worker_id = "next-worker".to_owned();
        tokio::spawn(async move {
            workers
                .complete_job(proto::CompleteJobRequest {
                    job_id: job.job.unwrap().id,
                    lease_token: job.lease_token,
                    result: Default::default(),
                    next: Some(proto::ClaimJobsRequest {
                        claim: Some(next),
                        max_jobs: 1,
                    }),
                })
                .await
                .expect("CompleteJob succeeds")
                .into_inner()
                .next
        })
    };
    // The completion saw the queue empty: the next claim waits without reading it (it counts
    // as waiting once the completion is recorded), and a job submitted through another jobd
    // wakes it to read once.
    let waiting = complete_then_wait(claimed);
    claims_waiting(&server, 1).await;
    let second = submit(&mut other.jobs().await, "next", b"").await;
    let next = waiting.await.unwrap();
    assert_eq!(next[0].job.as_ref().unwrap().id, second.id);
    assert_eq!(
        redis.command_calls("zrange"),
        2,
        "one read, after the wake-up"
    );

    // Again; a job submitted through the claim's own jobd is handed to it: no read at all.
    let job = next.into_iter().next().unwrap();
    let waiting = complete_then_wait(proto::ClaimJobResponse {
        job: job.job,
        lease_token: job.lease_token,
        lease_expires_at: job.lease_expires_at,
        ack_deadline: job.ack_deadline,
    });
    claims_waiting(&server, 1).await;
    let third = submit(&mut jobs, "next", b"").await;
    let next = waiting.await.unwrap();
    assert_eq!(next[0].job.as_ref().unwrap().id, third.id);
    assert_eq!(redis.command_calls("zrange"), 2, "handed off, never read");
}
