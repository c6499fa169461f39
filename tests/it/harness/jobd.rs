//! jobd under test: in this test's runtime (`TestServer`), or as the real binary CI builds
//! (`Running`); either is called through `Jobd`.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use jobd::{App, Config};
use jobd_client::Client;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use super::{
    clients::{Jobs, Workers, channel, connect, status},
    os::{Process, rand_u32},
    redis::RedisServer,
    wait::{eventually, until},
};

/// The real jobd binary, as CI builds it.
pub const JOBD: &str = env!("CARGO_BIN_EXE_jobd");

/// The binary `Running` starts: the one named by `JOBD_TEST_BIN` when set (a release build,
/// to run an abuse case at its full size), else `JOBD`.
fn binary() -> std::ffi::OsString {
    std::env::var_os("JOBD_TEST_BIN").unwrap_or_else(|| JOBD.into())
}

/// A jobd a test calls, wherever it runs. Each call of `client`, `channel`, `jobs` or
/// `workers` opens an HTTP/2 connection of its own.
pub trait Jobd {
    /// Where its gRPC server listens, as an http:// URL.
    fn url(&self) -> String;

    /// A library connection, without credentials.
    async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// A bare tonic channel, for the health service and calls of any path.
    async fn channel(&self) -> Channel {
        channel(&self.url()).await
    }

    async fn jobs(&self) -> Jobs {
        self.client().await.jobs()
    }

    async fn workers(&self) -> Workers {
        self.client().await.workers()
    }

    /// A client of each service, each on its own connection.
    async fn clients(&self) -> (Jobs, Workers) {
        (self.jobs().await, self.workers().await)
    }
}

/// A jobd server running in this test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    pub instance: String,
    metrics: jobd::telemetry::Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings a test may change; the rest are jobd's defaults.
pub struct Settings {
    pub pool_size: u16,
    pub max_payload: Option<u32>,
    pub command_timeout: &'static str,
    pub extra: Vec<String>,
}

/// The binary, run until SIGTERM, with everything it logs collected.
pub struct Running {
    process: Process,
    /// Its gRPC address, from its startup line.
    address: String,
    log: Arc<Mutex<String>>,
    /// The threads that read its stdout and stderr into `log`; they end with the process.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pool_size: 2,
            max_payload: None,
            command_timeout: "1s",
            extra: Vec::new(),
        }
    }
}

impl TestServer {
    pub async fn start(redis: &RedisServer) -> Self {
        Self::start_with(&redis.url(), Settings::default()).await
    }

    pub async fn start_with(redis_url: &str, settings: Settings) -> Self {
        // Logs of the servers under test, shown for failing tests when RUST_LOG is set.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let instance = format!("test-{:08x}", rand_u32());
        let mut args = vec![
            "jobd".to_owned(),
            "--listen=127.0.0.1:0".to_owned(),
            format!("--redis-url={redis_url}"),
            format!("--instance-id={instance}"),
            format!("--redis-pool-size={}", settings.pool_size),
            format!("--redis-command-timeout={}", settings.command_timeout),
        ];
        if let Some(limit) = settings.max_payload {
            args.push(format!("--max-payload-bytes={limit}"));
        }
        args.extend(settings.extra);
        let config = <Config as clap::Parser>::try_parse_from(args).expect("valid test config");
        config.validate().expect("valid test config");
        let app = App::build(config).await.expect("jobd builds");
        let addr = app.local_addr();
        let health_addr = app.health_addr();
        let metrics = app.metrics();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            health_addr,
            instance,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// How many claims wait for a job on this server now (its `jobd.claims.waiting`): a
    /// waiting claim found its queues empty and parked.
    pub fn claims_waiting(&self) -> i64 {
        self.metrics.claims_waiting()
    }

    /// Where it serves health alone, with --health-listen.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The CLIENT SETNAME prefix of this server's connections.
    pub fn client_name_prefix(&self) -> String {
        format!("jobd:{}:", self.instance)
    }

    /// Shuts the server down as SIGTERM would, and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Jobd for TestServer {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Running {
    pub async fn start(redis_url: &str, extra: &[&str]) -> Self {
        Self::start_with_env(redis_url, extra, &[]).await
    }

    /// Starts jobd with `extra` arguments and environment, and returns once it serves. No
    /// OTEL_* variable is inherited; Redis commands time out after 500 ms unless `env` sets
    /// JOBD_REDIS_COMMAND_TIMEOUT. mimalloc commits memory as it is used, as in the image and
    /// the Deployment (MIMALLOC_ARENA_EAGER_COMMIT=0): committed eagerly, its arena is backed
    /// by transparent huge pages, and jobd's RSS at rest is half as large again.
    pub async fn start_with_env(redis_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary());
        for (key, _) in std::env::vars() {
            if key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        if !extra.iter().any(|arg| arg.starts_with("--listen")) {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(extra)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "debug")
            .env("JOBD_REDIS_COMMAND_TIMEOUT", "500ms")
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Process::spawn(&mut command);
        let log = Arc::new(Mutex::new(String::new()));
        let child = process.child();
        let pipes = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                })
            })
            .collect();
        let address = eventually(Duration::from_secs(20), "jobd to start", || {
            let log = log.lock().unwrap().clone();
            let address = startup_address(&log);
            assert!(
                address.is_some() || !process.has_exited(),
                "jobd exited before it started:\n{log}"
            );
            std::future::ready(address)
        })
        .await;
        let running = Self {
            process,
            address,
            log,
            readers,
        };
        // The startup line comes before jobd serves, and listens for signals; a liveness check
        // is answered only once it does both (in plaintext at --health-listen, if given).
        let health = startup_field(&running.log(), "health_listen");
        let url = health.map_or_else(|| running.url(), |address| format!("http://{address}"));
        let mut health = HealthClient::new(channel(&url).await);
        assert_eq!(status(&mut health, "").await, ServingStatus::Serving);
        running
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until it has logged `text`.
    pub async fn until_logged(&self, text: &str) {
        until(Duration::from_secs(20), text, || self.log().contains(text)).await;
    }

    /// Its gRPC address, host:port.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Sends it `signal`, e.g. "TERM".
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Kills it, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends it SIGTERM and waits for it to exit; its exit code, and everything it logged.
    pub fn terminate(self) -> (Option<i32>, String) {
        self.signal("TERM");
        self.exited()
    }

    /// Waits for it to exit (after a signal sent before); its exit code, and everything it
    /// logged.
    pub fn exited(mut self) -> (Option<i32>, String) {
        let status = self.process.wait();
        // Its pipes closed as it exited: once read to their end, the log is whole.
        for reader in self.readers.drain(..) {
            reader.join().expect("the log reader ends with the process");
        }
        (status.code(), self.log())
    }
}

impl Jobd for Running {
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// The address in jobd's startup line, once it is in `log`.
fn startup_address(log: &str) -> Option<String> {
    startup_field(log, "listen")
}

/// A field of jobd's startup line (`listen=127.0.0.1:50051` in text, colours aside, or
/// `"listen":"127.0.0.1:50051"` in JSON); an address on every interface as the loopback one to
/// connect to.
fn startup_field(log: &str, name: &str) -> Option<String> {
    let line = log.lines().find(|line| line.contains("jobd started"))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // An ANSI colour: ESC [ ... m.
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let json = format!("\"{name}\":\"");
    let value = match plain.find(&json) {
        Some(at) => plain[at + json.len()..].split('"').next()?,
        None => plain
            .split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))?,
    };
    Some(value.replace("0.0.0.0:", "127.0.0.1:"))
}

/// The resident memory of process `pid` now, bytes (VmRSS in /proc/<pid>/status).
pub fn rss_of(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}
