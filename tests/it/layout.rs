//! Jobs written by earlier versions of jobd, which stored each setting of a job as a hash field
//! of its own (before the `spec` field), are read, claimed, retried and completed as before.

use jobd::api::proto::{self, EventType};

use crate::support::*;

const ID: &str = "old.01JD6F3B8ZQ4YV9M2K7N5R1T0X";
const KEY: &str = "jobd:{old}:job:01JD6F3B8ZQ4YV9M2K7N5R1T0X";
const CREATED: i64 = 1_730_000_000_000;

/// Writes a QUEUED job as jobd wrote them before `spec`: one field per setting, and the job in
/// its queue's ready set and the queue registry.
fn write_legacy_job(redis: &RedisServer) {
    let script = "
        redis.call('HSET', KEYS[1],
          'state', 'queued', 'kind', 'legacy.kind', 'payload', 'old payload',
          'labels', cmsgpack.pack({team = 'a'}), 'created', ARGV[2], 'priority', '7',
          'attempt', 0, 'max_attempts', '2', 'b_initial', '50', 'b_mult', '1', 'b_max', '50',
          'b_jitter', '0', 'lease_default', '', 'retention', '60000',
          'trace', cmsgpack.pack({traceparent = ARGV[3]}),
          'seq', 1, 'e:1', cmsgpack.pack({t = 'queued', at = tonumber(ARGV[2]), a = 0}))
        redis.call('ZADD', KEYS[2], 1, ARGV[1])
        redis.call('SADD', KEYS[3], 'old')
        return 'OK'";
    let written = redis.cli(&[
        "EVAL",
        script,
        "3",
        KEY,
        "jobd:{old}:ready",
        "jobd:queues",
        ID,
        &CREATED.to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ]);
    assert_eq!(written, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_written_before_spec_is_read_claimed_retried_and_completed() {
    let redis = RedisServer::start();
    // Written before jobd starts, as by the version before it: its sweeper finds the queue in
    // the registry at once.
    write_legacy_job(&redis);
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let mut workers = server.workers().await;

    let job = get(&mut jobs, ID).await;
    assert_eq!(job.kind, "legacy.kind");
    assert_eq!(&job.payload[..], b"old payload");
    assert_eq!(job.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(job.priority, 7);
    assert_eq!(job.max_attempts, 2);
    assert_eq!(millis_of(&job.created_at), CREATED);

    let claimed = claim(&mut workers, "old").await;
    let claimed_job = claimed.job.as_ref().unwrap();
    assert_eq!(claimed_job.id, ID);
    assert_eq!(claimed_job.kind, "legacy.kind");
    assert!(claimed_job.trace_context.contains_key("traceparent"));

    // The backoff comes from the old fields: 50 ms, no jitter; then the sweeper requeues it.
    let failed = fail(&mut workers, &claimed, "try again", true).await;
    let retry_at = millis_of(&failed.retry_at);
    let again = claim(&mut workers, "old").await;
    assert_eq!(again.job.as_ref().unwrap().attempt, 2);
    complete(&mut workers, &again, b"done").await.unwrap();

    let (events, end) = watch_to_end(&mut jobs, ID, 0).await;
    end.unwrap();
    assert_eq!(
        types(&events),
        [
            EventType::Queued,
            EventType::Started,
            EventType::RetryScheduled,
            EventType::Queued,
            EventType::Started,
            EventType::Completed,
        ]
    );
    let scheduled = millis_of(&events[2].time);
    assert_eq!(retry_at - scheduled, 50, "the old backoff: 50 ms");
    let finished = get(&mut jobs, ID).await;
    assert_eq!(finished.state(), proto::JobState::Completed);
    assert_eq!(&finished.result[..], b"done");
}
