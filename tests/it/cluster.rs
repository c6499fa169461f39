//! Redis Cluster: one jobd runs the jobs of queues that live on different primaries, names
//! every connection it holds on every node, and follows a primary's failover.

use std::time::Duration;

use jobd_client::proto::{self, EventType};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::*;

/// Six queues whose keys hash to slots of all three primaries of a three-primary cluster.
fn queues() -> Vec<String> {
    (0..6).map(|i| format!("cluster-{i}")).collect()
}

/// What becomes of each job a queue gets: completed, failed, cancelled while queued, and
/// delayed (then completed).
const OUTCOMES: [(&str, EventType); 4] = [
    ("complete", EventType::Completed),
    ("fail", EventType::Failed),
    ("cancel", EventType::Cancelled),
    ("delayed", EventType::Completed),
];

/// A submission to `queue` of the job meant to end as `what` says, its payload.
fn outcome_request(queue: &str, what: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        payload: what.as_bytes().to_vec().into(),
        // A delayed job goes through the scheduled set and the promoter.
        start: (what == "delayed").then(|| {
            proto::submit_job_request::Start::Delay(pb_duration(Duration::from_millis(300)))
        }),
        idempotency_key: format!("{queue}-{what}"),
        ..submit_request(queue)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_every_primary_of_a_cluster_run_their_jobs_through_one_jobd() {
    let cluster = RedisCluster::start(3, 0, "1000").await;
    let server = TestServer::start_with(&cluster.url(), Settings::default()).await;
    let prefix = server.client_name_prefix();
    let (mut jobs, mut workers) = server.clients().await;

    // Each queue gets a job of each outcome, each watched from its submission.
    let watchers = submit_watched_outcomes(&server, &mut jobs).await;
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 0, "node {} holds jobs", node.port());
    }
    for (id, outcome, _) in &watchers {
        if *outcome == EventType::Cancelled {
            cancel(&mut jobs, id, "not needed").await;
        }
    }
    for queue in &queues() {
        for _ in 0..3 {
            let claimed = claim(&mut workers, queue).await;
            let job = claimed.job.as_ref().unwrap();
            match job.payload.as_ref() {
                b"complete" | b"delayed" => {
                    complete(&mut workers, &claimed, job.payload.as_ref())
                        .await
                        .expect("complete succeeds");
                }
                b"fail" => {
                    fail(&mut workers, &claimed, "broken", false).await;
                }
                other => panic!("claimed {other:?}"),
            }
        }
    }
    for (_, outcome, watcher) in watchers {
        let (events, end) = watcher.await.unwrap();
        end.expect("the watch ends with OK");
        assert_eq!(
            events.last().map(|e| e.r#type()),
            Some(outcome),
            "{events:?}"
        );
    }
    for queue in &queues() {
        let counts = stats(&mut jobs, queue).await;
        assert_eq!((counts.queued, counts.running, counts.completed), (0, 0, 2));
        assert_eq!((counts.failed, counts.cancelled), (1, 1));
    }

    assert_every_connection_is_named(&cluster, &prefix);
    server.stop().await.unwrap();
    for node in &cluster.nodes {
        until(
            Duration::from_secs(20),
            "jobd's connections to close",
            || cluster.clients(node).is_empty(),
        )
        .await;
    }
}

/// Submits a job of each of `OUTCOMES` to each of `queues`, each watched from its submission,
/// and each submitted again (with its idempotency key) to no effect; returns the jobs' ids,
/// what they are to end with, and their watchers.
async fn submit_watched_outcomes(
    server: &TestServer,
    jobs: &mut Jobs,
) -> Vec<(String, EventType, Watcher)> {
    let mut watchers = Vec::new();
    for queue in &queues() {
        for (what, outcome) in OUTCOMES {
            let submitted = submit_with(jobs, outcome_request(queue, what)).await;
            assert!(submitted.created);
            let id = submitted.job.unwrap().id;
            watchers.push((id.clone(), outcome, watch_in_background(server, &id).await));
        }
        // The same submission again finds the job its idempotency key made.
        let again = submit_with(jobs, outcome_request(queue, "complete")).await;
        assert!(!again.created, "a resent submission makes no second job");
    }
    watchers
}

/// Asserts that the jobd whose connections are named `prefix` holds one connection to each
/// primary for each of its clients, every one of them named: the pool's two and the
/// subscriber, which alone is subscribed, on one node. Beside them each client keeps one
/// connection fred reads the cluster's layout over (CLUSTER SLOTS).
fn assert_every_connection_is_named(cluster: &RedisCluster, prefix: &str) {
    let mut subscribed = Vec::new();
    let mut layout = 0;
    for node in &cluster.nodes {
        let mut names = Vec::new();
        for line in cluster.clients(node) {
            let name = client_field(&line, "name");
            if client_field(&line, "sub") != "0" {
                subscribed.push(name.to_owned());
            }
            match name.strip_prefix(prefix) {
                Some(role) => names.push(role.to_owned()),
                None if name.is_empty() && client_field(&line, "cmd") == "cluster|slots" => {
                    layout += 1
                }
                None => panic!("a connection that is not jobd's: {line}"),
            }
        }
        names.sort();
        assert_eq!(names, ["pool-0", "pool-1", "subscriber"], "{}", node.port());
    }
    assert_eq!(subscribed, [format!("{prefix}subscriber")]);
    assert_eq!(layout, 2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_when_any_primary_stops_answering_or_may_evict_jobs() {
    // Nodes slow to suspect each other, so that a stall leaves the cluster itself ok.
    let cluster = RedisCluster::start(3, 0, "10000").await;
    // One pool client: fred sends a command without a key, such as PING, to one node of its
    // choosing, so only a probe of every primary sees each of them stop.
    let settings = Settings {
        pool_size: 1,
        ..Settings::default()
    };
    let server = TestServer::start_with(&cluster.url(), settings).await;
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
    for node in &cluster.nodes {
        let stall = node.stall("3").await;
        readiness_becomes(
            &server,
            ServingStatus::NotServing,
            Duration::from_millis(2800),
        )
        .await;
        stall.join().unwrap();
        readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(5)).await;
    }
    // Each primary has settings of its own: one that may evict any key turns readiness off.
    for node in &cluster.nodes {
        node.cli(&[
            "CONFIG",
            "SET",
            "maxmemory",
            "1gb",
            "maxmemory-policy",
            "allkeys-lru",
        ]);
        readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(2)).await;
        node.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_failing_over_loses_no_job_or_watcher() {
    let cluster = RedisCluster::start(3, 1, "1000").await;
    let server = TestServer::start_with(&cluster.url(), Settings::default()).await;
    let (mut jobs, mut workers) = server.clients().await;

    let job = submit(&mut jobs, "ha", b"before").await;
    let claimed = claim(&mut workers, "ha").await;
    let watcher = watch_in_background(&server, &job.id).await;

    // The primary holding the queue dies once its replica has everything; the cluster sees
    // it down after a second and promotes the replica.
    let owner = cluster
        .primaries()
        .find(|node| node.cli(&["DBSIZE"]) != "0")
        .expect("a primary holds the queue");
    let owner_port = owner.port();
    let replica = cluster
        .nodes
        .iter()
        .find(|node| {
            node.cli(&["ROLE"]).starts_with("slave")
                && node
                    .cli(&["INFO", "replication"])
                    .contains(&format!("master_port:{owner_port}"))
        })
        .expect("the primary has a replica");
    replica_caught_up(owner, replica).await;
    let replica_port = replica.port();
    owner.signal("KILL");
    // With a slot's primary gone the cluster serves none (cluster-require-full-coverage), so
    // readiness turns off until the replica has taken over.
    readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(5)).await;
    until(
        Duration::from_secs(20),
        "the replica to be promoted",
        || {
            let replica = cluster.node(replica_port);
            replica.cli(&["ROLE"]).starts_with("master")
                && replica
                    .cli(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
        },
    )
    .await;

    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(15)).await;

    // The job claimed before completes on the new primary; callers may see UNAVAILABLE while
    // jobd finds it, and retry, as any caller of a service does.
    complete_across_failover(&workers, &claimed, b"after").await;
    let (events, end) = watcher.await.unwrap();
    end.expect("the watch from before the failover ends with OK");
    assert_eq!(
        types(&events),
        [EventType::Queued, EventType::Started, EventType::Completed]
    );
    assert_eq!(get(&mut jobs, &job.id).await.result.as_ref(), b"after");

    // New jobs of that queue run on the new primary.
    let next = submit(&mut jobs, "ha", b"new").await;
    let claimed = claim(&mut workers, "ha").await;
    assert_eq!(claimed.job.as_ref().unwrap().id, next.id);
    complete(&mut workers, &claimed, b"").await.unwrap();
    let (events, end) = watch_to_end(&mut jobs, &next.id, 0).await;
    end.unwrap();
    assert_eq!(events.last().unwrap().r#type(), EventType::Completed);
}
