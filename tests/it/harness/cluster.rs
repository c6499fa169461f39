//! A Redis Cluster for one test: redis-servers of its own, joined with
//! `redis-cli --cluster create`.

use std::{process::Stdio, time::Duration};

use super::{
    os::free_port,
    redis::{RedisServer, client_field},
    wait::until,
};

/// A Redis Cluster of servers started here.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `primaries` primaries sharing the 16,384 slots, each with `replicas` replicas that
    /// take over when it has been unreachable for `node_timeout` milliseconds.
    pub async fn start(primaries: usize, replicas: usize, node_timeout: &str) -> Self {
        Self::start_with(primaries, replicas, node_timeout, Vec::new).await
    }

    /// The same, each node also given the arguments `node_args` makes for it.
    pub async fn start_with(
        primaries: usize,
        replicas: usize,
        node_timeout: &str,
        node_args: impl Fn() -> Vec<String>,
    ) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
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
            nodes.push(RedisServer::start_with(&args).await);
        }
        // redis-cli waits for the nodes to meet without end (nodes whose bus fails never
        // do), so it gets a deadline.
        let create = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(Duration::from_secs(30), create)
            .await
            .expect("redis-cli --cluster create finishes within 30 s")
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create: {status}");
        let cluster = Self { nodes };
        until(
            Duration::from_secs(20),
            "every node to see the cluster ok",
            || {
                cluster
                    .nodes
                    .iter()
                    .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            },
        )
        .await;
        cluster
    }

    /// A redis-cluster:// URL naming every node as a seed.
    pub fn url(&self) -> String {
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
    pub fn primaries(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|node| node.cli(&["ROLE"]).starts_with("master"))
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("a node of the cluster")
    }

    /// A node's clients, as CLIENT LIST lines, leaving out the asking connection.
    pub fn clients(&self, node: &RedisServer) -> Vec<String> {
        node.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| client_field(line, "cmd") != "client|list")
            .map(str::to_owned)
            .collect()
    }
}
