//! Redis for one test: a redis-server of its own on a free port, killed when the test ends, and
//! what tests ask of it (redis-cli, keys, clients, replication, command statistics, a stall).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    os::{Process, TempDir, free_port},
    wait::{eventually, until},
};

/// A redis-server owned by one test; killed when dropped.
pub struct RedisServer {
    process: Process,
    port: u16,
    extra: Vec<String>,
    /// Its working directory: whatever it writes (a replica's copy of its primary's data, say)
    /// lands here, not in the checkout.
    dir: TempDir,
}

/// The keys of every job's hash, as a SCAN pattern.
pub const JOB_KEYS: &str = "jobd:*:job:*";

/// A script's source as jobd loads it but with every shared helper of `lua/lib.lua` (jobd
/// leaves out those the script does not call), then the script `lua/<name>.lua`.
macro_rules! lua_script {
    ($name:literal) => {
        concat!(
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/store/lua/lib.lua"
            )),
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/store/lua/",
                $name,
                ".lua"
            ))
        )
    };
}
pub(crate) use lua_script;

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts redis-server on a free port with extra arguments, e.g. `--requirepass`.
    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = TempDir::new("jobd-redis");
        for _ in 0..10 {
            let port = free_port();
            if let Some(process) = spawn_redis(port, &dir, extra).await {
                return Self {
                    process,
                    port,
                    extra: extra.iter().map(|s| s.to_string()).collect(),
                    dir,
                };
            }
        }
        panic!("could not start redis-server");
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts a fresh, empty server on the same port, as soon as the port is free again.
    pub async fn restart(&mut self) {
        self.stop();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (port, dir) = (self.port, &self.dir);
        let process = eventually(
            Duration::from_secs(10),
            "redis-server to restart on its port",
            || spawn_redis(port, dir, &extra),
        )
        .await;
        self.process = process;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends the server `signal`, e.g. "STOP" to freeze it and "CONT" to let it go on.
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Runs a command through redis-cli and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_auth(None, args)
    }

    pub fn cli_auth(&self, password: Option<&str>, args: &[&str]) -> String {
        match password {
            Some(password) => redis_cli(
                self.port,
                &[&["--no-auth-warning", "-a", password][..], args].concat(),
            ),
            None => redis_cli(self.port, args),
        }
    }

    /// The keys matching `pattern` (SCAN), e.g. `jobd:*:job:*` for every job's hash.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether the job `id` was never claimed: its hash says QUEUED, no attempt, and its log
    /// holds its submission alone. Read from Redis, not through GetJob, which a full
    /// payload-bytes budget refuses.
    pub fn never_claimed(&self, id: &str) -> bool {
        let (queue, suffix) = id.rsplit_once('.').expect("a job id");
        let key = format!("jobd:{{{queue}}}:job:{suffix}");
        let fields = self.cli(&["HMGET", &key, "state", "attempt", "seq"]);
        let fields: Vec<&str> = fields.lines().collect();
        matches!(fields[..], ["queued", "" | "0", "1"])
    }

    /// CLIENT LIST lines whose connection name starts with `prefix`.
    pub fn clients_named(&self, prefix: &str) -> Vec<String> {
        self.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| client_field(line, "name").starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// A field of the server's INFO replication, e.g. `master_repl_offset`.
    pub fn replication(&self, field: &str) -> String {
        let info = self.cli(&["INFO", "replication"]);
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// How many times Redis ran `command` (lower case), inside scripts included. Tests read it
    /// only where a count of commands is itself what they assert; to learn that a claim waits,
    /// they ask jobd (`claims_waiting`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// Makes Redis stall for `seconds` (DEBUG SLEEP, which needs the server started with
    /// `--enable-debug-command local`) from a thread of its own; returns once Redis has stopped
    /// answering, with the thread to join when the stall is over.
    pub async fn stall(&self, seconds: &str) -> std::thread::JoinHandle<()> {
        let (port, seconds) = (self.port, seconds.to_owned());
        let stall = std::thread::spawn(move || {
            redis_cli(port, &["DEBUG", "SLEEP", &seconds]);
        });
        eventually(Duration::from_secs(10), "Redis to stall", || async {
            (!self.answers_within(Duration::from_millis(100)).await).then_some(())
        })
        .await;
        stall
    }

    /// Whether Redis answers a PING within `time`, on a connection of its own: a Redis that
    /// runs no command (DEBUG SLEEP) accepts connections, but answers none.
    async fn answers_within(&self, time: Duration) -> bool {
        let ping = async {
            let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()?;
            connection.write_all(b"PING\r\n").await.ok()?;
            connection.read(&mut [0; 64]).await.ok()
        };
        matches!(tokio::time::timeout(time, ping).await, Ok(Some(1..)))
    }
}

/// Waits until `replica` has everything `primary` has: their replication offsets agree.
pub async fn replica_caught_up(primary: &RedisServer, replica: &RedisServer) {
    let offset = |server: &RedisServer| server.replication("master_repl_offset");
    until(Duration::from_secs(20), "the replica to catch up", || {
        offset(primary) == offset(replica)
    })
    .await;
}

/// Runs redis-cli against the server (or sentinel) on `port`; its output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The value of `field` in a CLIENT LIST line.
pub fn client_field<'a>(line: &'a str, field: &str) -> &'a str {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or_default()
}

/// Starts redis-server on `port`; `None` when it exits first (the port was taken).
async fn spawn_redis(port: u16, dir: &TempDir, extra: &[&str]) -> Option<Process> {
    let mut process = Process::spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let listening = eventually(
        Duration::from_secs(10),
        "redis-server to listen, or exit",
        || {
            let state = if process.has_exited() {
                Some(false)
            } else {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(true)
            };
            std::future::ready(state)
        },
    )
    .await;
    listening.then_some(process)
}
