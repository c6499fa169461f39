//! Queues under abuse: the sweeper's cost follows the queues with something due, queues left
//! without jobs are forgotten (never a job submitted meanwhile), a principal's queues are
//! capped, and a backlog of retained entries is trimmed in short steps.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use jobd_client::proto;

use crate::harness::*;

const INDEX: &str = "jobd:{:queues}:due";

/// What Redis holds for a queue beside its jobs, at most: its ready set's key (a listpack of a
/// few entries, about 200 bytes), its entry in the due index (about 100 bytes) and its promise
/// (a string key, about 80 bytes). 1 KiB is that sum rounded up to the next power of two.
const REDIS_PER_QUEUE: u64 = 1024;

/// What Redis holds for one entry of a sorted set of many (a skiplist), at most: the member's
/// string (a 35-byte id, 48 bytes as allocated), its skiplist node (a score, two pointers and
/// 1.33 levels of 16 bytes on average, 64 bytes as allocated) and its dict entry (24 bytes,
/// and 8 of the table's, which may be twice its size while it grows): about 150 bytes, 160
/// rounded up.
const ZSET_ENTRY: u64 = 160;

/// How many queues the abuse makes: 10,000 in CI, and the 100,000 with
/// `JOBD_TEST_QUEUES=100000`. A multiple of 1,000. What bounds it is jobd's CPU per queue,
/// about 6 ms in the debug build (10,000 queues, on 2 cores shared with other builds): 0.6 ms
/// creating it, 3.5 ms draining it (claims and completions, 16 queues a call but a script
/// call per queue each) and the resubmissions, 1.8 ms the rest drained and forgotten; so
/// 100,000 queues need about 600 s of jobd's CPU there (BENCHMARKS.md, "What a queue costs").
/// The sweeper's share, measured alone (`bench/forget-cost.sh`): 0.28 ms per queue forgotten
/// since a round's visits share their round trips, 0.58 ms when each took three of its own.
fn queues() -> usize {
    std::env::var("JOBD_TEST_QUEUES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

fn zcard(redis: &RedisServer, key: &str) -> u64 {
    redis.cli(&["ZCARD", key]).parse().unwrap_or(0)
}

/// A job of `queue` of `kind`, kept 1 s once finished.
fn short_lived(queue: &str, kind: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        kind: kind.to_owned(),
        retention: Some(pb_duration(Duration::from_secs(1))),
        ..submit_request(queue)
    }
}

fn queue_name(n: usize) -> String {
    format!("abuse.{}.{}", n / 1000, n % 1000)
}

/// A worker that claims a job from each of `queues`, 16 queues a call, and completes what it
/// claimed; returns the ids of the jobs of kind "again" it got.
async fn drain(mut workers: Workers, queues: Vec<String>) -> Vec<String> {
    let mut again = Vec::new();
    for chunk in queues.chunks(16) {
        let request = proto::ClaimJobsRequest {
            claim: Some(proto::ClaimJobRequest {
                queues: chunk.to_vec(),
                ..claim_request("unused", Duration::ZERO)
            }),
            // A queue may hold two jobs: all are taken.
            max_jobs: 100,
        };
        let claimed = workers.claim_jobs(request).await.unwrap().into_inner().jobs;
        if claimed.is_empty() {
            continue;
        }
        let mut completions = Vec::new();
        for claimed in claimed {
            let job = claimed.job.unwrap();
            if job.kind == "again" {
                again.push(job.id.clone());
            }
            completions.push(proto::Completion {
                job_id: job.id,
                lease_token: claimed.lease_token,
                result: Vec::new().into(),
            });
        }
        let request = proto::CompleteJobsRequest {
            completions,
            next: None,
        };
        workers.complete_jobs(request).await.unwrap();
    }
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_emptied_are_forgotten_and_the_sweeper_goes_back_to_idle() {
    let queues = queues();
    let redis = RedisServer::start().await;
    // Calls queue up behind the abuse on a busy machine: they may wait, not fail.
    let timeout = [("JOBD_REDIS_COMMAND_TIMEOUT", "10s")];
    let server = Running::start_with_env(&redis.url(), &["--redis-pool-size=4"], &timeout).await;
    let mut bystander = Bystander::new(&server).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(server.pid(), &redis);
    let busy = bystander.keep_going();
    let jobs = server.jobs().await;

    // `queues` queues with a job each: SubmitJobs of 1,000 queues each.
    let started = Instant::now();
    let batches = (0..queues / 1000).map(|batch| {
        let mut jobs = jobs.clone();
        async move {
            let requests = (0..1000)
                .map(|i| short_lived(&queue_name(batch * 1000 + i), "first"))
                .collect();
            submit_jobs(&mut jobs, requests).await;
        }
    });
    stream::iter(batches)
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let created_in = started.elapsed();
    eprintln!("created in {created_in:?}");
    // (And the bystander's queue: its jobs are due to be forgotten a second after they end.)
    assert_eq!(
        zcard(&redis, INDEX),
        queues as u64 + 1,
        "every queue is in the due index"
    );

    // Among them, a well-behaved queue's delayed job becomes claimable on time: the sweeper
    // does nothing for queues that have nothing due.
    let mut mine = jobs.clone();
    let request = proto::SubmitJobRequest {
        start: Some(proto::submit_job_request::Start::Delay(pb_duration(
            Duration::from_secs(1),
        ))),
        ..short_lived("well.behaved", "first")
    };
    let job = mine
        .submit_job(request)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let due_at = millis_of(&job.run_at);
    job_becomes(
        &mine,
        &job.id,
        Duration::from_secs(5),
        "the job to be due",
        |job| job.state() == proto::JobState::Queued,
    )
    .await;
    let late = now_millis() - due_at;
    assert!(
        late <= 1000 + 250,
        "due at {due_at}, QUEUED {late} ms later (bound: the sweeper's poll, 1 s)"
    );

    // Every queue drained by workers: each is then due when its job's 1 s retention ends, and
    // forgotten. Meanwhile jobs are submitted again to queues drained already, being
    // forgotten: every one accepted must be claimable.
    let started = Instant::now();
    let mut all: Vec<String> = (0..queues).map(queue_name).collect();
    all.push("well.behaved".to_owned());
    let mut drains = Vec::new();
    for part in all.chunks(all.len().div_ceil(8)) {
        drains.push(tokio::spawn(drain(server.workers().await, part.to_vec())));
    }
    let mut resubmitting = jobs.clone();
    let mut accepted = Vec::new();
    // 50 rounds of 100 queues, each round in queues drained at least a second before.
    for round in 0..50 {
        let requests = (0..100)
            .map(|i| short_lived(&queue_name(round * 10 + i * 1000), "again"))
            .collect();
        accepted.extend(submit_jobs(&mut resubmitting, requests).await);
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing the rounds
    }
    let mut claimed_again = std::collections::BTreeSet::new();
    for drain in drains {
        claimed_again.extend(drain.await.unwrap());
    }
    let drained_in = started.elapsed();
    eprintln!("drained in {drained_in:?}, index {}", zcard(&redis, INDEX));
    busy.assert_kept(&baseline).await;
    // The largest request in flight is a SubmitJobs of 1,000 small jobs (under 1 MiB), four at
    // once, over 11 connections; Redis holds every queue with a job or two.
    footprint.assert_peak_within(
        jobd_growth(0, 0, 4 * MIB) + 11 * PER_CONNECTION,
        REDIS_SLACK + queues as u64 * (2 * REDIS_PER_JOB + REDIS_PER_QUEUE),
    );

    // What the workers did not get of them is still in its queue: claimed and completed now.
    let mut workers = server.workers().await;
    let mut leftovers: Vec<String> = accepted.iter().map(|job| job.queue.clone()).collect();
    leftovers.sort();
    leftovers.dedup();
    claimed_again.extend(drain(workers.clone(), leftovers.clone()).await);
    claimed_again.extend(drain(workers.clone(), leftovers).await);
    let accepted: std::collections::BTreeSet<String> =
        accepted.into_iter().map(|job| job.id).collect();
    assert_eq!(
        claimed_again, accepted,
        "every job submitted during the forgetting is claimed"
    );

    // Every queue forgotten: the due index empty, each promise gone.
    until(
        Duration::from_secs(90),
        "every queue to be forgotten",
        || zcard(&redis, INDEX) == 0,
    )
    .await;
    let forgotten_in = started.elapsed();
    assert!(redis.keys("jobd:*:due").is_empty(), "every promise deleted");
    // What the queues took in Redis is freed with them (the jobs' hashes expired with their
    // retention, their index entries trimmed).
    footprint
        .redis_back_within(REDIS_SLACK, Duration::from_secs(30))
        .await;
    let request = claim_request("abuse.0.0", Duration::ZERO);
    assert!(
        workers
            .claim_job(request)
            .await
            .unwrap()
            .into_inner()
            .job
            .is_none()
    );

    // Back to idle: the sweeper reads the due index once a second, and nothing else.
    let before = redis.command_calls("evalsha");
    tokio::time::sleep(Duration::from_secs(2)).await; // an idle period, measured
    let idle_calls = redis.command_calls("evalsha") - before;
    assert!(
        idle_calls <= 8,
        "{idle_calls} script calls in 2 s of idleness"
    );
    eprintln!(
        "{queues} queues: created in {created_in:?}, drained in {drained_in:?}, all forgotten \
         within {forgotten_in:?}; {idle_calls} script calls in 2 s idle; a delayed job QUEUED \
         {late} ms after its time"
    );
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_principal_past_its_cap_on_queues_is_refused_and_nothing_is_written() {
    let redis = RedisServer::start().await;
    let auth = AuthFile::new();
    let (capped, other) = ("jobd_capped_token_0001", "jobd_other_token_00001");
    let polite = "jobd_polite_token_0001";
    let hash = |token: &str| jobd::auth::TokenHash::of(token.as_bytes()).to_string();
    auth.write(&format!(
        "[[principal]]\nname = \"capped\"\nroles = [\"submitter\"]\nqueues = [\"*\"]\n\
         token_sha256 = [\"{}\"]\nmax_queues = 3\n\n\
         [[principal]]\nname = \"other\"\nroles = [\"submitter\"]\nqueues = [\"*\"]\n\
         token_sha256 = [\"{}\"]\n\n\
         [[principal]]\nname = \"polite\"\nroles = [\"submitter\", \"worker\"]\n\
         queues = [\"*\"]\ntoken_sha256 = [\"{}\"]\n",
        hash(capped),
        hash(other),
        hash(polite)
    ));
    let server = Running::start(&redis.url(), &[&auth.flag()]).await;
    let mut bystander = Bystander::with_token(&server, polite).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(server.pid(), &redis);
    let busy = bystander.keep_going();
    let mut jobs = server.jobs().await;
    for queue in ["cap.a", "cap.b", "cap.c", "cap.a"] {
        let request = with_token(submit_request(queue), capped);
        jobs.submit_job(request).await.expect("within the cap");
    }
    let request = with_token(submit_request("cap.d"), capped);
    let reason = assert_status(
        jobs.submit_job(request).await,
        tonic::Code::ResourceExhausted,
        "3 queues",
    );
    assert_eq!(reason, "BUDGET_EXHAUSTED");
    let batch = proto::SubmitJobsRequest {
        jobs: vec![submit_request("cap.a"), submit_request("cap.e")],
    };
    assert_status(
        jobs.submit_jobs(with_token(batch, capped)).await,
        tonic::Code::ResourceExhausted,
        "max_queues",
    );
    assert!(redis.keys("jobd:{cap.d}:*").is_empty());
    assert!(redis.keys("jobd:{cap.e}:*").is_empty());
    assert_eq!(redis.cli(&["ZSCORE", INDEX, "cap.e"]), "");
    // Another principal is not held back by it.
    let request = with_token(submit_request("cap.d"), other);
    jobs.submit_job(request)
        .await
        .expect("another principal's own cap");
    busy.assert_kept(&baseline).await;
    // Small requests; Redis holds the five jobs accepted.
    footprint.assert_peak_within(jobd_growth(0, 0, 0), REDIS_SLACK + 5 * REDIS_PER_JOB);
}

#[tokio::test]
async fn a_million_expired_retained_entries_are_trimmed_without_a_slow_redis_call() {
    const ENTRIES: u64 = 1_000_000;
    let redis = RedisServer::start().await;
    let server = Running::start(&redis.url(), &[]).await;
    let mut bystander = Bystander::new(&server).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(server.pid(), &redis);
    // The layout jobd leaves behind: index entries of finished jobs whose hashes expired with
    // their retention, the queue due in the due index, and its promise. 10,000 per EVAL.
    let fill = "local base = tonumber(ARGV[1]) \
        for chunk = 0, 9 do \
          local args = {} \
          for i = 1, 1000 do \
            local n = base + chunk * 1000 + i \
            args[#args + 1] = 1000 + n \
            args[#args + 1] = 'bulk.01J0000000000000000' .. string.format('%08d', n) \
          end \
          redis.call('ZADD', KEYS[1], unpack(args)) \
        end \
        return 1";
    for batch in 0..ENTRIES / 10_000 {
        let base = (batch * 10_000).to_string();
        redis.cli(&["EVAL", fill, "1", "jobd:{bulk}:done:completed", &base]);
    }
    assert_eq!(zcard(&redis, "jobd:{bulk}:done:completed"), ENTRIES);
    redis.cli(&["ZADD", INDEX, "0", "bulk"]);
    redis.cli(&["SET", "jobd:{bulk}:due", "1001"]);
    redis.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "50000"]);
    redis.cli(&["SLOWLOG", "RESET"]);

    // The backlog is there: jobd hears of it at its next read of the due index.
    let started = Instant::now();
    let busy = bystander.keep_going();
    until(
        Duration::from_secs(60),
        "every expired entry to be trimmed",
        || zcard(&redis, "jobd:{bulk}:done:completed") == 0,
    )
    .await;
    let trimmed_in = started.elapsed();
    until(
        Duration::from_secs(5),
        "the empty queue to be forgotten",
        || redis.cli(&["ZSCORE", INDEX, "bulk"]).is_empty(),
    )
    .await;
    let slow = redis.cli(&["SLOWLOG", "GET", "5"]);
    assert_eq!(
        redis.cli(&["SLOWLOG", "LEN"]),
        "0",
        "Redis calls over 50 ms: {slow}"
    );
    eprintln!("{ENTRIES} expired entries trimmed in {trimmed_in:?}, none over 50 ms");
    busy.assert_kept(&baseline).await;
    // jobd reads nothing of the entries but their count; Redis held them, and frees them.
    footprint.assert_peak_within(jobd_growth(0, 0, 0), REDIS_SLACK + ENTRIES * ZSET_ENTRY);
    footprint
        .redis_back_within(REDIS_SLACK, Duration::from_secs(30))
        .await;
}
