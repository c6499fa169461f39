//! Redis Cluster: one jobd runs the jobs of queues that live on different primaries, names
//! every connection it holds on every node, and follows a primary's failover.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use jobd::api::proto::{self, EventType};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::*;

/// A Redis Cluster of servers started here, joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `primaries` primaries sharing the 16,384 slots, each with `replicas` replicas that
    /// take over when it has been unreachable for `node_timeout` milliseconds.
    pub fn start(primaries: usize, replicas: usize, node_timeout: &str) -> Self {
        Self::start_with(primaries, replicas, node_timeout, Vec::new)
    }

    /// The same, each node also given the arguments `node_args` makes for it.
    pub fn start_with(
        primaries: usize,
        replicas: usize,
        node_timeout: &str,
        node_args: impl Fn() -> Vec<String>,
    ) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                let extra = node_args();
                // The bus port is the client port + 10,000 unless given, which a TLS node's
                // peers do not learn; so it is always given.
                let bus_port = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port,
                    // Relative to the server's own directory.
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    node_timeout,
                    "--enable-debug-command",
                    "local",
                ];
                args.extend(extra.iter().map(String::as_str));
                RedisServer::start_with(&args)
            })
            .collect();
        // redis-cli waits for the nodes to meet without end (nodes whose bus fails never
        // do), so it gets a deadline.
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = create.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                panic!("redis-cli --cluster create did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "redis-cli --cluster create: {status}");
        let cluster = Self { nodes };
        wait_for("every node to see the cluster ok", || {
            cluster
                .nodes
                .iter()
                .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        cluster
    }

    /// A redis-cluster:// URL naming every node as a seed.
    fn url(&self) -> String {
        let (first, others) = self.nodes.split_first().expect("a node");
        let seeds: Vec<String> = others
            .iter()
            .map(|node| format!("node=127.0.0.1:{}", node.port()))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            first.port(),
            seeds.join("&")
        )
    }

    /// The nodes that are primaries now.
    fn primaries(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|node| node.cli(&["ROLE"]).starts_with("master"))
    }

    /// Every node's clients, as CLIENT LIST lines, leaving out the asking connection.
    fn clients(&self, node: &RedisServer) -> Vec<String> {
        node.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| !line.contains("cmd=client|list"))
            .map(str::to_owned)
            .collect()
    }
}

/// The value of `field` in a CLIENT LIST line.
fn client_field<'a>(line: &'a str, field: &str) -> &'a str {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or_default()
}

fn request(queue: &str, what: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        payload: what.as_bytes().to_vec().into(),
        // A delayed job goes through the scheduled set and the promoter.
        start: (what == "delayed").then(|| {
            proto::submit_job_request::Start::Delay(pb_duration(Duration::from_millis(300)))
        }),
        idempotency_key: format!("{queue}-{what}"),
        ..job_request(queue)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_every_primary_of_a_cluster_run_their_jobs_through_one_jobd() {
    let cluster = RedisCluster::start(3, 0, "1000");
    let server = TestServer::start_with(&cluster.url(), Settings::default()).await;
    let prefix = server.client_name_prefix();
    let mut jobs = server.jobs().await;
    let mut workers = server.workers().await;

    // Six queues, whose keys hash to slots of all three primaries (checked below). Each gets
    // a job to complete, one to fail, one to cancel while queued and one delayed, each
    // watched from its submission.
    let queues: Vec<String> = (0..6).map(|i| format!("cluster-{i}")).collect();
    let outcomes = [
        ("complete", EventType::Completed),
        ("fail", EventType::Failed),
        ("cancel", EventType::Cancelled),
        ("delayed", EventType::Completed),
    ];
    let mut watchers = Vec::new();
    for queue in &queues {
        for (what, outcome) in outcomes {
            let submitted = jobs
                .submit_job(request(queue, what))
                .await
                .expect("submit succeeds")
                .into_inner();
            assert!(submitted.created);
            let id = submitted.job.unwrap().id;
            watchers.push((id.clone(), outcome, watch_in_background(&server, &id).await));
        }
        // The same submission again finds the job its idempotency key made.
        let again = jobs
            .submit_job(request(queue, "complete"))
            .await
            .unwrap()
            .into_inner();
        assert!(!again.created, "a resent submission makes no second job");
    }
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 0, "node {} holds jobs", node.port());
    }

    for (id, outcome, _) in &watchers {
        if *outcome == EventType::Cancelled {
            jobs.cancel_job(proto::CancelJobRequest {
                job_id: id.clone(),
                reason: "not needed".into(),
            })
            .await
            .expect("cancel succeeds");
        }
    }
    for queue in &queues {
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
    for queue in &queues {
        let counts = stats(&mut jobs, queue).await;
        assert_eq!((counts.queued, counts.running, counts.completed), (0, 0, 2));
        assert_eq!((counts.failed, counts.cancelled), (1, 1));
    }

    // Every client holds one connection to each primary, every one of them named: the pool's
    // two and the subscriber, which alone is subscribed, on one node. Beside them each client
    // keeps one connection fred reads the cluster's layout over (CLUSTER SLOTS).
    let mut subscribed = Vec::new();
    let mut layout = 0;
    for node in &cluster.nodes {
        let mut names = Vec::new();
        for line in cluster.clients(node) {
            let name = client_field(&line, "name");
            if client_field(&line, "sub") != "0" {
                subscribed.push(name.to_owned());
            }
            match name.strip_prefix(&prefix) {
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

    server.stop().await.unwrap();
    for node in &cluster.nodes {
        wait_for("jobd's connections to close", || {
            cluster.clients(node).is_empty()
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_when_any_primary_stops_answering_or_may_evict_jobs() {
    // Nodes slow to suspect each other, so that a stall leaves the cluster itself ok.
    let cluster = RedisCluster::start(3, 0, "10000");
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
    let cluster = RedisCluster::start(3, 1, "1000");
    let server = TestServer::start_with(&cluster.url(), Settings::default()).await;
    let mut jobs = server.jobs().await;
    let mut workers = server.workers().await;

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
    wait_for("the replica to catch up", || {
        replication(owner, "master_repl_offset") == replication(replica, "master_repl_offset")
    });
    let replica_port = replica.port();
    owner.signal("KILL");
    // With a slot's primary gone the cluster serves none (cluster-require-full-coverage), so
    // readiness turns off until the replica has taken over.
    readiness_becomes(&server, ServingStatus::NotServing, Duration::from_secs(5)).await;
    wait_for("the replica to be promoted", || {
        let replica = cluster
            .nodes
            .iter()
            .find(|node| node.port() == replica_port)
            .unwrap();
        replica.cli(&["ROLE"]).starts_with("master")
            && replica
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
    });

    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(15)).await;

    // The job claimed before completes on the new primary; callers may see UNAVAILABLE while
    // jobd finds it, and retry, as any caller of a service does.
    complete_across_failover(&mut workers, &claimed, b"after").await;
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
