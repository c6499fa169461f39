//! Streams that resume across a jobd restart; calls retried while Redis is SIGSTOPped.

use std::time::Duration;

use futures::StreamExt;
use jobd_client::{BoxError, Client, EventType, JobContext, JobSpec, Worker, proto};

use crate::harness::{RunningWorker, Stack, claim, eventually, heartbeat, queue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_jobd_restart_without_gap_or_duplicate() {
    let mut stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("restart");
    let job = client.submit(JobSpec::new(&q, "k")).await.unwrap();
    let claimed = claim(&client, &q, 120, 60).await;
    let token = claimed.lease_token;

    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn({
        let events = client.watch(&job.id, 0);
        async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let _ = events_tx.send(event.expect("an event, resumed if need be"));
            }
        }
    });
    let mut seen = Vec::new();
    for n in 0..3 {
        heartbeat(&client, &job.id, &token, Some(f64::from(n)))
            .await
            .expect("a heartbeat");
    }
    while seen.len() < 5 {
        let next = tokio::time::timeout(Duration::from_secs(10), events_rx.recv()).await;
        seen.push(next.expect("an event in time").expect("the stream"));
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
    tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("ends")
        .unwrap();
    while let Ok(event) = events_rx.try_recv() {
        seen.push(event);
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
    stack.jobd.restart().await;
    if waiting.is_finished() {
        panic!(
            "submit_and_wait ended during the restart: {:?}",
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
