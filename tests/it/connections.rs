//! Connection discipline: pool size + 1 connections, named, whatever the number of watchers
//! and waiting claims; no per-watcher subscriptions; watchers survive a subscriber reconnect.

use std::time::Duration;

use jobd_client::proto::{self, EventType};

use crate::harness::*;

const POOL_SIZE: u16 = 3;

fn pubsub_state(redis: &RedisServer) -> (Vec<String>, String, String) {
    let mut channels: Vec<String> = redis
        .cli(&["PUBSUB", "CHANNELS"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    channels.sort();
    let numsub = redis.cli(&["PUBSUB", "NUMSUB", "jobd:wake:jobs", "jobd:wake:queues"]);
    let numpat = redis.cli(&["PUBSUB", "NUMPAT"]);
    (channels, numsub, numpat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_watchers_and_fifty_waiting_claims_use_pool_size_plus_one_connections() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(
        &redis.url(),
        Settings {
            pool_size: POOL_SIZE,
            ..Settings::default()
        },
    )
    .await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(submit(&mut jobs, "watched", b"").await.id);
    }
    let streams = five_hundred_streams(&server, &ids).await;
    assert_eq!(streams.len(), 500);
    let mut claims = Vec::new();
    for _ in 0..50 {
        let request = claim_request("idle", Duration::from_secs(30));
        claims.push(claim_in_background(server.workers().await, request));
    }
    claims_waiting(&server, 50).await;

    let ours = redis.clients_named(&server.client_name_prefix());
    assert_eq!(ours.len(), usize::from(POOL_SIZE) + 1, "{ours:#?}");
    let all = redis.cli(&["CLIENT", "LIST"]).lines().count();
    assert_eq!(
        all,
        ours.len() + 1,
        "only jobd's connections and redis-cli's own"
    );
    for role in ["pool-0", "pool-1", "pool-2", "subscriber"] {
        let name = format!("name={}{role} ", server.client_name_prefix());
        assert!(
            ours.iter().any(|line| line.contains(&name)),
            "{name} in {ours:#?}"
        );
    }
    let during = pubsub_state(&redis);
    assert_eq!(
        during.0,
        ["jobd:wake:jobs", "jobd:wake:queues"],
        "no per-watcher channel"
    );
    assert_eq!(during.1, "jobd:wake:jobs\n1\njobd:wake:queues\n1");
    assert_eq!(during.2, "0", "no pattern subscriptions");

    drop(streams);
    for claim in &claims {
        claim.abort();
    }
    for claim in claims {
        let _ = claim.await;
    }
    claims_waiting(&server, 0).await;
    // Nothing outside jobd marks a stream's release: time for a wrong unsubscribe to happen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pubsub_state(&redis),
        during,
        "nothing subscribed was left behind"
    );
    assert_eq!(
        redis.clients_named(&server.client_name_prefix()).len(),
        usize::from(POOL_SIZE) + 1
    );

    // The server is healthy afterwards: a new watcher and claim work.
    let mut workers = server.workers().await;
    let claimed = claim(&mut workers, "watched").await;
    complete(&mut workers, &claimed, b"").await.unwrap();
    let (events, end) = watch_to_end(&mut jobs, &claimed.job.unwrap().id, 0).await;
    end.unwrap();
    assert_eq!(events.len(), 3);
}

/// 500 WatchJob streams of the jobs `ids` over 10 client connections, each stream established
/// (its first event, QUEUED, read).
async fn five_hundred_streams(
    server: &TestServer,
    ids: &[String],
) -> Vec<tonic::Streaming<proto::JobEvent>> {
    let mut streams = Vec::new();
    for connection in 0..10 {
        let mut client = server.jobs().await;
        for i in 0..50 {
            let id = &ids[(connection * 50 + i) % ids.len()];
            let mut stream = client
                .watch_job(proto::WatchJobRequest {
                    job_id: id.clone(),
                    after_sequence: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            assert_eq!(first.r#type(), EventType::Queued);
            streams.push(stream);
        }
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_gets_the_terminal_event_across_a_subscriber_reconnect() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;

    let mut stream = open_watch(&mut jobs, &job.id).await;
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 2);

    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, "1", "the subscriber connection was killed");
    // Complete at once: the wake-up is likely published while nobody is subscribed.
    complete(&mut workers, &claimed, b"r").await.unwrap();

    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the completion arrives despite the lost wake-up")
        .unwrap()
        .unwrap();
    assert_eq!(event.r#type(), EventType::Completed);
    assert_eq!(event.sequence, 3);
    assert!(
        stream.message().await.unwrap().is_none(),
        "then the stream ends with OK"
    );

    // The subscriber came back, named and subscribed.
    let name = format!("name={}subscriber ", server.client_name_prefix());
    eventually(
        Duration::from_secs(10),
        "the subscriber to reconnect",
        || async {
            redis
                .clients_named(&server.client_name_prefix())
                .iter()
                .any(|line| line.contains(&name) && line.contains(" sub=2 "))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_is_woken_across_a_subscriber_reconnect() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    // The job is submitted through another jobd, so that only the wake-up message can reach
    // the claim (through its own, it would be handed to it directly).
    let other = TestServer::start(&redis).await;
    let waiting = waiting_claim(&server, claim_request("q", Duration::from_secs(30))).await;
    // Both jobds' subscriber connections.
    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "2");
    let mut jobs = other.jobs().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the claim is woken")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(claimed.job.unwrap().id, job.id);
}
