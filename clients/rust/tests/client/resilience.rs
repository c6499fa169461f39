//! Streams that resume across a jobd restart; calls retried while Redis is SIGSTOPped.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jobd_client::{
    BoxError, Client, Code, EventType, JobContext, JobSpec, RetryPolicy, Worker, proto,
};

use crate::harness::{
    BackgroundWatch, Proxy, RunningWorker, Stack, claim, eventually, heartbeat, job_key, queue,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_jobd_restart_without_gap_or_duplicate() {
    let mut stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("restart");
    let job = client.submit(JobSpec::new(&q, "k")).await.unwrap();
    let claimed = claim(&client, &q, 120, 60).await;
    let token = claimed.lease_token;

    let mut watcher = BackgroundWatch::start(&client, &job.id);
    let mut seen = Vec::new();
    for n in 0..3 {
        heartbeat(&client, &job.id, &token, Some(f64::from(n)))
            .await
            .expect("a heartbeat");
    }
    while seen.len() < 5 {
        seen.push(watcher.next().await.expect("an event, resumed if need be"));
    }
    stack.jobd.restart().await;
    assert!(!watcher.is_finished(), "the watch outlives the restart");
    for n in 3..6 {
        heartbeat(&client, &job.id, &token, Some(f64::from(n)))
            .await
            .expect("a heartbeat");
    }
    let complete = proto::CompleteJobRequest {
        job_id: job.id.clone(),
        lease_token: token.clone(),
        result: "ok".into(),
        next: None,
    };
    client
        .workers()
        .complete_job(complete)
        .await
        .expect("completed");
    for item in watcher.end(Duration::from_secs(30)).await {
        seen.push(item.expect("an event, resumed if need be"));
    }
    let sequences: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=9).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let values: Vec<f64> = seen[2..8]
        .iter()
        .map(|e| e.progress.as_ref().unwrap().value.unwrap())
        .collect();
    assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(seen[8].r#type(), EventType::Completed);
    assert_eq!(&seen[8].result[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_follows_its_job_across_a_jobd_restart() {
    let mut stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("restart-wait");
    let waiting = tokio::spawn({
        let client = client.clone();
        let spec = JobSpec::new(&q, "later").payload("x");
        async move { client.submit_and_wait(spec).await }
    });
    eventually(
        Duration::from_secs(10),
        "the job to be submitted",
        || async {
            let request = proto::GetQueueStatsRequest { queue: q.clone() };
            let stats = client
                .jobs()
                .get_queue_stats(request)
                .await
                .ok()?
                .into_inner();
            (stats.queued == 1).then_some(())
        },
    )
    .await;
    let restarting = Instant::now();
    stack.jobd.restart().await;
    if waiting.is_finished() {
        // The watch resumes for 60 s of failures in a row by default.
        panic!(
            "submit_and_wait ended during the restart, which took {:?}: {:?}",
            restarting.elapsed(),
            waiting.await
        );
    }
    let worker = Worker::new(client.clone(), [q.clone()])
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("later", |_job: JobContext| async {
            Ok::<_, BoxError>("after the restart")
        });
    let running = RunningWorker::start(worker);
    let result = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("in time");
    assert_eq!(
        &result.unwrap().expect("a result")[..],
        b"after the restart"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_retried_while_redis_is_paused() {
    let stack = Stack::start().await;
    // Retries for up to ~10 s: 50 attempts, 0.1 s growing to 0.2 s.
    let patient = jobd_client::RetryPolicy {
        max_attempts: 50,
        initial: Duration::from_millis(100),
        max: Duration::from_millis(200),
        multiplier: 2.0,
    };
    let client = Client::builder(stack.jobd.endpoint())
        .retry(patient)
        .connect()
        .await
        .unwrap();
    let q = queue("paused");
    let existing = client
        .submit(JobSpec::new(&q, "k").payload("before"))
        .await
        .unwrap();
    stack.redis.pause();
    let get = tokio::spawn({
        let client = client.clone();
        let id = existing.id.clone();
        async move { client.get(&id).await }
    });
    let submit = tokio::spawn({
        let client = client.clone();
        let spec = JobSpec::new(&q, "k").payload("during");
        async move { client.submit(spec).await }
    });
    // Without retries a call fails within jobd's Redis command timeout (0.3 s here); this
    // sleep proves that the retried ones do not, while Redis stays paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !get.is_finished() && !submit.is_finished(),
        "still retrying"
    );
    stack.redis.resume();
    let got = tokio::time::timeout(Duration::from_secs(20), get)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.expect("read after the pause").payload[..], b"before");
    let made = tokio::time::timeout(Duration::from_secs(20), submit)
        .await
        .unwrap()
        .unwrap();
    let made = made.expect("submitted after the pause");
    assert_eq!(&client.get(&made.id).await.unwrap().payload[..], b"during");
    // The retried submission carried a generated idempotency key: one job, not two.
    let request = proto::GetQueueStatsRequest { queue: q.clone() };
    let stats = client
        .jobs()
        .get_queue_stats(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.queued, 2);
}

/// A short resume policy: `max_attempts` in a row, delays of 50 ms growing to 100 ms.
fn brief_resume(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::from_millis(50),
        max: Duration::from_millis(100),
        multiplier: 2.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_survives_cuts_spread_over_its_life() {
    let stack = Stack::start().await;
    let direct = stack.client().await;
    let proxy = Proxy::start(stack.jobd.port).await;
    // A budget of 0.3 s: 4 cuts 0.5 s apart without an event between would spend it, were
    // each stream that lived its while not counted as healthy (a long job's watch, cut every
    // `--max-connection-age` + grace, or by a proxy's idle timeout).
    let policy = brief_resume(3);
    let through = Client::builder(proxy.endpoint())
        .resume(policy)
        .watch_resume(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let q = queue("cuts");
    let job = direct.submit(JobSpec::new(&q, "k")).await.unwrap();
    let claimed = claim(&direct, &q, 120, 60).await;
    let mut watcher = BackgroundWatch::start(&through, &job.id);
    assert_eq!(
        watcher
            .next()
            .await
            .expect("an event, resumed if need be")
            .r#type(),
        EventType::Queued
    );
    assert_eq!(
        watcher
            .next()
            .await
            .expect("an event, resumed if need be")
            .r#type(),
        EventType::Started
    );
    for _ in 0..4 {
        let answered = proxy.answered();
        proxy.cut();
        eventually(Duration::from_secs(10), "the watch to resume", || async {
            assert!(!watcher.is_finished(), "the watch ended after a cut");
            (proxy.answered() > answered).then_some(())
        })
        .await;
        // The resumed stream lives well past the policy's longest delay before the next cut.
        tokio::time::sleep(policy.max * 5).await;
    }
    assert!(!watcher.is_finished(), "the watch outlives the cuts");
    heartbeat(&direct, &job.id, &claimed.lease_token, Some(0.5))
        .await
        .expect("a heartbeat");
    let progress = watcher.next().await.expect("an event, resumed if need be");
    assert_eq!(
        (progress.sequence, progress.r#type()),
        (3, EventType::Progress)
    );
    let complete = proto::CompleteJobRequest {
        job_id: job.id.clone(),
        lease_token: claimed.lease_token.clone(),
        result: "ok".into(),
        next: None,
    };
    direct
        .workers()
        .complete_job(complete)
        .await
        .expect("completed");
    let last = watcher.next().await.expect("an event, resumed if need be");
    assert_eq!((last.sequence, last.r#type()), (4, EventType::Completed));
    let rest = watcher.end(Duration::from_secs(10)).await;
    assert!(
        rest.is_empty(),
        "nothing after the terminal event: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_a_call_that_a_goaway_left_unserved() {
    let stack = Stack::start().await;
    let direct = stack.client().await;
    let proxy = Proxy::start(stack.jobd.port).await;
    let through = Client::connect(proxy.endpoint()).await.unwrap();
    let job = direct
        .submit(JobSpec::new(queue("goaway"), "k"))
        .await
        .unwrap();
    // The watch's first call gets what a call opened just as jobd's graceful shutdown sent
    // its last GOAWAY gets (as `submit_and_wait`'s watch, opened as soon as its stream ends
    // with SHUTTING_DOWN, may): h2's NO_ERROR, INTERNAL in tonic, without a jobd reason.
    proxy.refuse_next_call();
    let mut events = Box::pin(through.watch(&job.id, 0));
    let mut next_event = async || {
        let next = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
        next.expect("an event in time")
            .expect("the watch goes on")
            .expect("an event, resumed if need be")
    };
    assert_eq!(next_event().await.r#type(), EventType::Queued);
    assert_eq!(proxy.answered(), 1, "answered once: the resumed call");
    direct.cancel(&job.id, "done").await.expect("cancelled");
    let last = next_event().await;
    assert_eq!((last.sequence, last.r#type()), (2, EventType::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_follows_its_job_across_a_cut_and_a_closed_port() {
    let stack = Stack::start().await;
    let direct = stack.client().await;
    let proxy = Proxy::start(stack.jobd.port).await;
    let through = Client::connect(proxy.endpoint()).await.unwrap();
    let q = queue("closed-port");
    let waiting = tokio::spawn({
        let spec = JobSpec::new(&q, "later").payload("x");
        async move { through.submit_and_wait(spec).await }
    });
    eventually(
        Duration::from_secs(10),
        "the job to be submitted",
        || async {
            let request = proto::GetQueueStatsRequest { queue: q.clone() };
            let stats = direct.jobs().get_queue_stats(request).await.ok()?;
            (stats.into_inner().queued == 1).then_some(())
        },
    )
    .await;
    // The stream is reset under the call, then every resume is refused for a second (the
    // first within 0.1 s): a transport error, then connection errors, all resumed.
    let answered = proxy.answered();
    proxy.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "still resuming: {:?}",
        waiting.await
    );
    proxy.open().await;
    eventually(Duration::from_secs(10), "the watch to resume", || async {
        (proxy.answered() > answered).then_some(())
    })
    .await;
    let worker = Worker::new(direct.clone(), [q.clone()])
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("later", |_job: JobContext| async {
            Ok::<_, BoxError>("after the outage")
        });
    let running = RunningWorker::start(worker);
    let result = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("in time");
    assert_eq!(&result.unwrap().expect("a result")[..], b"after the outage");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_keeps_ending_ok_on_an_unfinished_log_spends_its_budget() {
    let stack = Stack::start().await;
    let client = Client::builder(stack.jobd.endpoint())
        .resume(brief_resume(3))
        .watch_resume(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let job = client
        .submit(JobSpec::new(queue("ends-ok"), "k"))
        .await
        .unwrap();
    client.cancel(&job.id, "").await.expect("cancelled");
    // The log now claims an event 3 that is not there: jobd ends every watch after 2 with OK
    // (the job is finished), while GetJob says an event may follow 2.
    let reply = stack
        .redis
        .command(&format!("HSET {} seq 3", job_key(&job.id)));
    assert!(reply.starts_with(':'), "HSET: {reply}");
    let started = Instant::now();
    let items: Vec<_> =
        tokio::time::timeout(Duration::from_secs(10), client.watch(&job.id, 2).collect())
            .await
            .expect("the watch gives up in time");
    assert_eq!(items.len(), 1, "{items:?}");
    let error = items
        .into_iter()
        .next()
        .unwrap()
        .expect_err("resumes spent");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error:?}");
    assert_eq!(
        error.reason(),
        None,
        "the library's own, not jobd's: {error:?}"
    );
    // Ended with OK every time, each attempt fails at once: the budget runs out, however
    // many attempts it took (about 6, far more than `max_attempts`).
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_sends_its_keyed_submission_again_when_its_reply_is_lost() {
    let stack = Stack::start().await;
    let direct = stack.client().await;
    let proxy = Proxy::start(stack.jobd.port).await;
    let through = Client::connect(proxy.endpoint()).await.unwrap();
    let q = queue("unreplied");
    let stats = async || {
        let request = proto::GetQueueStatsRequest { queue: q.clone() };
        let stats = direct.jobs().get_queue_stats(request).await.ok()?;
        Some(stats.into_inner())
    };
    proxy.hold_replies(true);
    let waiting = tokio::spawn({
        let spec = JobSpec::new(&q, "k");
        async move { through.submit_and_wait(spec).await }
    });
    eventually(Duration::from_secs(10), "the job to be written", || async {
        (stats().await?.queued == 1).then_some(())
    })
    .await;
    // Written, its reply lost on the way: the connection breaks under the call (UNKNOWN,
    // "transport error"), before the client knows the job's id. Its generated idempotency key
    // makes sending it again safe.
    proxy.hold_replies(false);
    proxy.cut();
    let worker = Worker::new(direct.clone(), [q.clone()])
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("k", |_job: JobContext| async { Ok::<_, BoxError>("done") });
    let running = RunningWorker::start(worker);
    let result = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("in time");
    assert_eq!(&result.unwrap().expect("a result")[..], b"done");
    running.stop().await;
    let stats = stats().await.expect("the queue's stats");
    assert_eq!((stats.queued, stats.completed), (0, 1), "one job, not two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_for_its_budget_of_failures_then_gives_up() {
    let stack = Stack::start().await;
    let direct = stack.client().await;
    let proxy = Proxy::start(stack.jobd.port).await;
    // Attempts every 0.1 s at most, 3 "max_attempts" that a watch no longer counts: only
    // the 3 s budget bounds its resumes.
    let budget = Duration::from_secs(3);
    let through = Client::builder(proxy.endpoint())
        .resume(brief_resume(3))
        .watch_resume(budget)
        .connect()
        .await
        .unwrap();
    let q = queue("budget");
    let job = direct.submit(JobSpec::new(&q, "k")).await.unwrap();
    let mut watcher = BackgroundWatch::start(&through, &job.id);
    assert_eq!(watcher.next().await.unwrap().r#type(), EventType::Queued);
    // 1.5 s of refused connections: more than a dozen failed attempts in a row, within the
    // budget.
    let answered = proxy.answered();
    proxy.close().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !watcher.is_finished(),
        "the watch gave up within its budget"
    );
    proxy.open().await;
    eventually(Duration::from_secs(10), "the watch to resume", || async {
        (proxy.answered() > answered).then_some(())
    })
    .await;
    claim(&direct, &q, 120, 60).await;
    assert_eq!(watcher.next().await.unwrap().r#type(), EventType::Started);
    // An event started the budget afresh; refused for good, the watch gives up once its
    // failures have lasted 3 s, with the transport's error.
    let closed = Instant::now();
    proxy.close().await;
    let error = watcher.next().await.expect_err("the budget spent");
    let elapsed = closed.elapsed();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error:?}");
    assert_eq!(
        error.reason(),
        None,
        "the transport's, not jobd's: {error:?}"
    );
    assert!(
        elapsed >= budget && elapsed < budget * 2,
        "gave up after {elapsed:?}"
    );
}
