//! WatchJob: replay, live events, exactly once and in order, terminal event last, then OK.

use std::time::Duration;

use jobd_client::proto::{self, EventType};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_watcher_gets_the_whole_history_then_ok() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"done").await.unwrap();

    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.expect("the stream ends with OK");
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Completed]
    );
    assert_eq!(sequences(&events), [1, 2, 3]);
    assert_eq!(&events[2].result[..], b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_resumes_exactly_after_the_given_event() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    for i in 0..30 {
        report_progress(&mut workers, &claimed, f64::from(i), "").await;
    }
    complete(&mut workers, &claimed, b"").await.unwrap();
    let (all, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(
        sequences(&all),
        (1..=33).collect::<Vec<_>>(),
        "more than one page of events"
    );

    for after in [1, 2, 17, 32] {
        let (rest, end) = watch_to_end(&mut jobs, &job.id, after).await;
        end.unwrap();
        assert_eq!(sequences(&rest), ((after + 1)..=33).collect::<Vec<_>>());
        assert_eq!(rest, all[after as usize..]);
    }
    // Resuming after the terminal event: nothing is left, and the stream still ends OK.
    let (none, end) = watch_to_end(&mut jobs, &job.id, 33).await;
    end.unwrap();
    assert!(none.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_watchers_see_identical_live_sequences() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;

    let mut watchers = Vec::new();
    for _ in 0..2 {
        watchers.push(watch_in_background(&server, &job.id).await);
    }
    let claimed = claim(&mut workers, "q").await;
    for i in 0..20 {
        report_progress(&mut workers, &claimed, f64::from(i), &format!("{i}")).await;
    }
    complete(&mut workers, &claimed, b"r").await.unwrap();

    let mut seen = Vec::new();
    for watcher in watchers {
        let (events, end) = tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("the stream ends")
            .unwrap();
        end.unwrap();
        assert_eq!(
            sequences(&events),
            (1..=23).collect::<Vec<_>>(),
            "each event once, in order"
        );
        assert_eq!(events.last().unwrap().r#type(), EventType::Completed);
        seen.push(events);
    }
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_watcher_gets_a_result_too_large_to_ride_on_the_wake_up() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let watcher = watch_in_background(&server, &job.id).await;
    let claimed = claim(&mut workers, "q").await;
    let result: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    complete(&mut workers, &claimed, &result).await.unwrap();
    let (events, end) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();
    end.unwrap();
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Completed]
    );
    assert_eq!(&events[2].result[..], &result[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_from_a_newer_jobd_is_passed_on_as_unspecified() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;
    let live = watch_in_background(&server, &job.id).await;

    // A newer jobd records an event of a type this one does not know ("paused"), as the
    // scripts record events: the next sequence, a MessagePack map with its type, time, attempt.
    let [key] = &redis.keys(JOB_KEYS)[..] else {
        panic!("one job's hash");
    };
    let record = "redis.call('HSET', KEYS[1], 'seq', '2', 'e:2', \
                  cmsgpack.pack({t = 'paused', at = 1700000000000, a = 0})) return 1";
    redis.cli(&["EVAL", record, "1", key]);
    cancel(&mut jobs, &job.id, "").await;

    let (live, end) = live.await.unwrap();
    end.expect("the live watch ends with OK");
    let (replayed, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.expect("the replay ends with OK");
    for events in [live, replayed] {
        assert_eq!(
            types(&events),
            [
                EventType::Queued,
                EventType::Unspecified,
                EventType::Cancelled
            ]
        );
        assert_eq!(sequences(&events), [1, 2, 3]);
        assert_eq!(millis_of(&events[1].time), 1_700_000_000_000);
    }
}

/// Opens a WatchJob stream after `after`; the call itself must fail, before any message, and
/// within a few seconds (a stream that opened instead would wait for events forever).
async fn watch_refused(jobs: &mut Jobs, id: &str, after: u64) -> tonic::Status {
    let opened = tokio::time::timeout(
        Duration::from_secs(5),
        jobs.watch_job(proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: after,
        }),
    )
    .await
    .expect("WatchJob answers at once");
    match opened {
        Err(status) => status,
        Ok(stream) => {
            let first = tokio::time::timeout(Duration::from_secs(5), stream.into_inner().message())
                .await
                .map(|message| format!("{message:?}"))
                .unwrap_or_else(|_| "nothing within 5 s".to_owned());
            panic!("WatchJob after {after} opened a stream; its first message: {first}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_past_the_last_event_is_out_of_range_at_once() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;

    // A running job, at sequence 2 (QUEUED, STARTED): a resume past it would wait forever for
    // events that it would then skip.
    let running = submit(&mut jobs, "q", b"").await;
    claim(&mut workers, "q").await;
    for after in [3, 9, u64::MAX - 1, u64::MAX] {
        let status = watch_refused(&mut jobs, &running.id, after).await;
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert_eq!(
            status.message(),
            format!("after_sequence {after} is past the job's last event (sequence 2)")
        );
    }

    // A finished job, at sequence 3: past it is refused too, rather than ending with OK.
    let finished = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"").await.unwrap();
    for after in [4, u64::MAX] {
        let status = watch_refused(&mut jobs, &finished.id, after).await;
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("(sequence 3)"),
            "{}",
            status.message()
        );
    }

    // An unknown job is NOT_FOUND whatever the sequence.
    let unknown = format!("q.{}", "0".repeat(26));
    let status = watch_refused(&mut jobs, &unknown, u64::MAX).await;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_at_the_last_event_follows_a_running_job_to_its_end() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;

    // The stream is open (and its watcher registered) once the call has answered.
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_sequence: 2,
        })
        .await
        .expect("WatchJob at the last sequence opens a stream")
        .into_inner();
    complete(&mut workers, &claimed, b"done").await.unwrap();
    let terminal = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the terminal event arrives")
        .expect("a healthy stream")
        .expect("an event");
    assert_eq!(terminal.sequence, 3);
    assert_eq!(terminal.r#type(), EventType::Completed);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "ends with OK: {end:?}");
}
