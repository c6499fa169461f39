//! Redis behind Sentinel: jobd finds the primary through a redis-sentinel:// URL and, when the
//! primary dies, follows Sentinel's failover to the replica, with its jobs, its watchers and
//! its connection count intact.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::harness::*;

/// The name the sentinel monitors the primary under.
const SERVICE: &str = "jobd";

/// A redis-server in sentinel mode, watching one primary; killed when dropped.
struct Sentinel {
    _process: Process,
    port: u16,
    /// Holds its configuration file, which Sentinel rewrites.
    _dir: TempDir,
}

impl Sentinel {
    async fn start(primary: &RedisServer) -> Self {
        // Sentinel rewrites its configuration file, so it gets one of its own.
        let dir = TempDir::new("jobd-sentinel");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n",
                primary.port()
            ),
        )
        .unwrap();
        let process = Process::spawn(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let sentinel = Self {
            _process: process,
            port,
            _dir: dir,
        };
        until(Duration::from_secs(20), "the sentinel to answer", || {
            sentinel.cli(&["PING"]) == "PONG"
        })
        .await;
        sentinel
    }

    fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The port of the primary the sentinel names now.
    fn primary_port(&self) -> String {
        let address = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]);
        address.lines().last().unwrap_or_default().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobd_follows_a_sentinel_failover_with_its_jobs_and_watchers() {
    let mut primary = RedisServer::start().await;
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]).await;
    until(Duration::from_secs(20), "the replica to sync", || {
        replica.replication("master_link_status") == "up"
    })
    .await;
    let sentinel = Sentinel::start(&primary).await;
    let replica_port = replica.port().to_string();
    until(
        Duration::from_secs(20),
        "the sentinel to know the replica",
        || {
            sentinel
                .cli(&["SENTINEL", "REPLICAS", SERVICE])
                .contains(&replica_port)
        },
    )
    .await;

    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}",
        sentinel.port
    );
    let server = TestServer::start_with(&url, Settings::default()).await;
    let prefix = server.client_name_prefix();
    let (mut jobs, mut workers) = server.clients().await;
    assert_eq!(primary.clients_named(&prefix).len(), 2 + 1);

    let job = submit(&mut jobs, "ha", b"before").await;
    let claimed = claim(&mut workers, "ha").await;
    let mut watching = jobs.clone();
    let id = job.id.clone();
    let watcher = tokio::spawn(async move { watch_to_end(&mut watching, &id, 0).await });

    // The primary dies once the replica has everything; Sentinel sees it down after a second
    // and promotes the replica.
    replica_caught_up(&primary, &replica).await;
    primary.stop();
    until(
        Duration::from_secs(20),
        "the sentinel to promote the replica",
        || sentinel.primary_port() == replica_port,
    )
    .await;

    // The job claimed before completes on the new primary; callers may see UNAVAILABLE
    // while jobd reconnects, and retry, as any caller of a service does.
    complete_across_failover(&workers, &claimed, b"after").await;
    let (events, end) = watcher.await.unwrap();
    end.expect("the watch from before the failover ends with OK");
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(get(&mut jobs, &job.id).await.result.as_ref(), b"after");

    // New jobs run on the new primary, where all of jobd's connections are now.
    let next = submit(&mut jobs, "ha", b"new").await;
    let claimed = claim(&mut workers, "ha").await;
    assert_eq!(claimed.job.as_ref().unwrap().id, next.id);
    complete(&mut workers, &claimed, b"").await.unwrap();
    until(
        Duration::from_secs(20),
        "jobd's connections to move",
        || replica.clients_named(&prefix).len() == 2 + 1,
    )
    .await;
}
