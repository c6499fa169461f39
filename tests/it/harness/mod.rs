//! The test harness: a real redis-server per test on a free port, and a real jobd serving
//! gRPC on a socket, driven through the generated tonic clients.

mod proxy;

pub use proxy::FaultyProxy;

use std::{
    future::Future,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jobd::{
    App, Config,
    api::proto::{
        self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A redis-server owned by one test; killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    extra: Vec<String>,
    /// Its working directory: whatever it writes (a replica's copy of its primary's data, say)
    /// lands here, not in the checkout.
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts redis-server on a free port with extra arguments, e.g. `--requirepass`.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = TempDir::new("jobd-redis");
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = spawn_redis(port, &dir, extra) {
                return Self {
                    child,
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = (0..50)
            .find_map(|_| {
                spawn_redis(self.port, &self.dir, &extra).or_else(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                })
            })
            .expect("redis-server restarts on its port");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a command through redis-cli and returns its raw output.
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

    /// Makes Redis stall for `seconds` (DEBUG SLEEP, which needs the server started with
    /// `--enable-debug-command local`) from a thread of its own; returns once the stall has
    /// begun, with the thread to join when it is over.
    pub async fn stall(&self, seconds: &str) -> std::thread::JoinHandle<()> {
        let port = self.port.to_string();
        let seconds = seconds.to_owned();
        let stall = std::thread::spawn(move || {
            Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", &seconds])
                .output()
                .expect("redis-cli runs");
        });
        // Time for the command to reach Redis before the caller goes on.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stall
    }

    /// CLIENT LIST lines whose connection name starts with `prefix`.
    pub fn clients_named(&self, prefix: &str) -> Vec<String> {
        self.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| {
                line.split(' ').any(|field| {
                    field
                        .strip_prefix("name=")
                        .is_some_and(|n| n.starts_with(prefix))
                })
            })
            .map(str::to_owned)
            .collect()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of the server's INFO replication, e.g. `master_repl_offset`.
pub fn replication(redis: &RedisServer, field: &str) -> String {
    let info = redis.cli(&["INFO", "replication"]);
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Waits, blocking the thread, until `done`; fails the test after 20 s.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// A directory of a test's own under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand_u32()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts redis-server on `port`; `None` when it exits first (the port was taken).
fn spawn_redis(port: u16, dir: &TempDir, extra: &[&str]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir.path())
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (see README)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A jobd server running in this test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
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
        let metrics = app.metrics();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            instance,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many claims wait for a job on this server now (its `jobd.claims.waiting`): a
    /// waiting claim found its queues empty and parked.
    pub fn claims_waiting(&self) -> i64 {
        self.metrics.claims_waiting()
    }

    /// A new client connection; each has its own HTTP/2 connection.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("valid url")
            .connect()
            .await
            .expect("jobd accepts connections")
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    pub async fn workers(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel().await)
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

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many times Redis ran `command` (lower case), inside scripts included.
pub fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Waits until exactly `count` claims wait for a job on `server` (they found their queues
/// empty and parked).
pub async fn claims_waiting(server: &TestServer, count: i64) {
    eventually(Duration::from_secs(10), "the claims to wait", || async {
        (server.claims_waiting() == count).then_some(())
    })
    .await;
}

/// Waits until claims have read their queues `reads` times in all: a claim that found its
/// queue empty parks right after that read. (Claims read a queue with ZRANGE; the sweeper and
/// the scripts never send it.)
pub async fn claims_have_looked(redis: &RedisServer, reads: u64) {
    eventually(Duration::from_secs(10), "the claims to look", || async {
        (command_calls(redis, "zrange") >= reads).then_some(())
    })
    .await;
}

/// A script's source as jobd loads it: the shared helpers of `lua/lib.lua`, then the script
/// `lua/<name>.lua`.
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

// ---- health ----

/// The services whose status is readiness.
pub const READINESS: [&str; 2] = ["jobd.v1.JobService", "jobd.v1.WorkerService"];

pub async fn status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("the health service answers")
        .into_inner()
        .status()
}

/// Waits until every readiness service reports `wanted`; returns how long that took.
pub async fn readiness_becomes(
    server: &TestServer,
    wanted: ServingStatus,
    within: Duration,
) -> Duration {
    let mut health = HealthClient::new(server.channel().await);
    let started = Instant::now();
    loop {
        let mut all = true;
        for service in READINESS {
            all &= status(&mut health, service).await == wanted;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "readiness not {wanted:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- request helpers ----

pub async fn submit(
    jobs: &mut JobServiceClient<Channel>,
    queue: &str,
    payload: &[u8],
) -> proto::Job {
    jobs.submit_job(proto::SubmitJobRequest {
        queue: queue.to_owned(),
        kind: "test.kind".to_owned(),
        payload: payload.to_vec().into(),
        labels: Default::default(),
        ..Default::default()
    })
    .await
    .expect("submit succeeds")
    .into_inner()
    .job
    .expect("submit returns the job")
}

pub async fn get(jobs: &mut JobServiceClient<Channel>, id: &str) -> proto::Job {
    jobs.get_job(proto::GetJobRequest {
        job_id: id.to_owned(),
    })
    .await
    .expect("get succeeds")
    .into_inner()
    .job
    .expect("get returns the job")
}

pub fn claim_request(queue: &str, wait: Duration) -> proto::ClaimJobRequest {
    proto::ClaimJobRequest {
        queues: vec![queue.to_owned()],
        worker_id: "test-worker".to_owned(),
        lease: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        wait: Some(prost_types::Duration::try_from(wait).expect("small duration")),
        ack_timeout: None,
    }
}

/// Claims a job from `queue`, waiting up to 5 s, and acknowledges it as a worker following the
/// protocol does (a heartbeat); returns the claim response.
pub async fn claim(
    workers: &mut WorkerServiceClient<Channel>,
    queue: &str,
) -> proto::ClaimJobResponse {
    let claimed = workers
        .claim_job(claim_request(queue, Duration::from_secs(5)))
        .await
        .expect("claim succeeds")
        .into_inner();
    let job = claimed.job.as_ref().expect("a job was claimed");
    acknowledge(workers, &job.id, &claimed.lease_token).await;
    claimed
}

/// Acknowledges a claimed job: a heartbeat without progress, which records no event.
pub async fn acknowledge(workers: &mut WorkerServiceClient<Channel>, job_id: &str, token: &str) {
    let beat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job_id.to_owned(),
            lease_token: token.to_owned(),
            ..Default::default()
        })
        .await
        .expect("the claimed job takes a heartbeat")
        .into_inner();
    assert!(!beat.cancelled, "the claimed job is not cancelled");
}

/// ClaimJobs: up to `max_jobs` jobs for `claim`; the call must succeed.
pub async fn claim_jobs(
    workers: &mut WorkerServiceClient<Channel>,
    claim: proto::ClaimJobRequest,
    max_jobs: u32,
) -> Vec<proto::ClaimedJob> {
    workers
        .claim_jobs(proto::ClaimJobsRequest {
            claim: Some(claim),
            max_jobs,
        })
        .await
        .expect("ClaimJobs succeeds")
        .into_inner()
        .jobs
}

pub async fn complete(
    workers: &mut WorkerServiceClient<Channel>,
    claimed: &proto::ClaimJobResponse,
    result: &[u8],
) -> Result<(), tonic::Status> {
    workers
        .complete_job(proto::CompleteJobRequest {
            job_id: claimed.job.as_ref().expect("claimed job").id.clone(),
            lease_token: claimed.lease_token.clone(),
            result: result.to_vec().into(),
            next: None,
        })
        .await
        .map(|_| ())
}

/// Completes `claimed` while Redis fails over: UNAVAILABLE, which callers may see until jobd
/// reaches the new primary, is retried for up to 20 s; any other refusal fails the test.
pub async fn complete_across_failover(
    workers: &mut WorkerServiceClient<Channel>,
    claimed: &proto::ClaimJobResponse,
    result: &[u8],
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match complete(workers, claimed, result).await {
            Ok(()) => return,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(Instant::now() < deadline, "still unavailable: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("completion refused: {status:?}"),
        }
    }
}

/// Reads a whole WatchJob stream: its events, and how it ended.
pub async fn watch_to_end(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
    after: u64,
) -> (Vec<proto::JobEvent>, Result<(), tonic::Status>) {
    let stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: after,
        })
        .await;
    match stream {
        Ok(stream) => read_to_end(stream.into_inner(), Vec::new()).await,
        Err(status) => (Vec::new(), Err(status)),
    }
}

/// Watches a job from the start in the background. Returns once the stream is established
/// (its first event read), with the task that reads the rest, as `watch_to_end` does.
pub async fn watch_in_background(
    server: &TestServer,
    id: &str,
) -> tokio::task::JoinHandle<(Vec<proto::JobEvent>, Result<(), tonic::Status>)> {
    let mut client = server.jobs().await;
    let stream = open_watch_stream(&mut client, id).await;
    let (first, stream) = stream;
    tokio::spawn(read_to_end(stream, vec![first]))
}

async fn read_to_end(
    mut stream: tonic::Streaming<proto::JobEvent>,
    mut events: Vec<proto::JobEvent>,
) -> (Vec<proto::JobEvent>, Result<(), tonic::Status>) {
    loop {
        match stream.message().await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, Ok(())),
            Err(status) => return (events, Err(status)),
        }
    }
}

/// Asserts what shutdown does to open calls: every stream ends with UNAVAILABLE naming the
/// sequence to resume after, and every waiting claim returns no job.
pub async fn assert_ended_by_shutdown(
    streams: Vec<tonic::Streaming<proto::JobEvent>>,
    claims: Vec<
        tokio::task::JoinHandle<Result<tonic::Response<proto::ClaimJobResponse>, tonic::Status>>,
    >,
    resume_after: u64,
) {
    let resume = format!("after_sequence={resume_after}");
    for mut stream in streams {
        let status = stream
            .message()
            .await
            .expect_err("the stream ends with a status");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&resume), "{}", status.message());
    }
    for claim in claims {
        let response = claim
            .await
            .unwrap()
            .expect("the claim returns normally")
            .into_inner();
        assert!(response.job.is_none(), "a waiting claim returns no job");
    }
}

pub fn types(events: &[proto::JobEvent]) -> Vec<proto::EventType> {
    events.iter().map(|e| e.r#type()).collect()
}

pub fn sequences(events: &[proto::JobEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// A submission to `queue` with every option at its default.
pub fn job_request(queue: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        queue: queue.to_owned(),
        kind: "test.kind".to_owned(),
        ..Default::default()
    }
}

pub fn pb_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).expect("small duration")
}

pub fn millis_of(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("a timestamp");
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

pub async fn submit_request(
    jobs: &mut JobServiceClient<Channel>,
    request: proto::SubmitJobRequest,
) -> proto::SubmitJobResponse {
    jobs.submit_job(request)
        .await
        .expect("submit succeeds")
        .into_inner()
}

/// Opens a WatchJob stream from the start and reads its first event (QUEUED, sequence 1), so
/// the stream is established when this returns.
pub async fn open_watch(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
) -> tonic::Streaming<proto::JobEvent> {
    open_watch_stream(jobs, id).await.1
}

async fn open_watch_stream(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
) -> (proto::JobEvent, tonic::Streaming<proto::JobEvent>) {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.to_owned(),
            after_sequence: 0,
        })
        .await
        .expect("watch succeeds")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("a healthy stream")
        .expect("a first event");
    assert_eq!(first.sequence, 1);
    (first, stream)
}

/// Reads the first `count` events of a job's stream (the job need not be finished).
pub async fn first_events(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
    count: usize,
) -> Vec<proto::JobEvent> {
    let (first, mut stream) = open_watch_stream(jobs, id).await;
    let mut events = vec![first];
    while events.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the event arrives")
            .expect("the stream is healthy")
            .expect("the stream goes on");
        events.push(event);
    }
    events
}

pub async fn fail(
    workers: &mut WorkerServiceClient<Channel>,
    claimed: &proto::ClaimJobResponse,
    error: &str,
    retryable: bool,
) -> proto::FailJobResponse {
    workers
        .fail_job(proto::FailJobRequest {
            job_id: claimed.job.as_ref().expect("claimed job").id.clone(),
            lease_token: claimed.lease_token.clone(),
            error: error.to_owned(),
            retryable: Some(retryable),
        })
        .await
        .expect("fail succeeds")
        .into_inner()
}

pub async fn stats(jobs: &mut JobServiceClient<Channel>, queue: &str) -> proto::QueueStats {
    jobs.get_queue_stats(proto::GetQueueStatsRequest {
        queue: queue.to_owned(),
    })
    .await
    .expect("stats succeed")
    .into_inner()
}

/// The real jobd binary, as CI builds it.
pub const JOBD: &str = env!("CARGO_BIN_EXE_jobd");

/// Runs the binary until SIGTERM, collecting everything it logs.
pub struct Running {
    pub child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    pub fn start(redis_url: &str, extra: &[&str]) -> Self {
        Self::start_with_env(redis_url, extra, &[])
    }

    /// Starts jobd with `extra` arguments and environment; no OTEL_* variable is inherited.
    pub fn start_with_env(redis_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(JOBD);
        for (key, _) in std::env::vars() {
            if key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--redis-command-timeout",
                "500ms",
            ])
            .args(extra)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Self { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, text: &str) {
        eventually(Duration::from_secs(20), text, || async {
            self.log().contains(text).then_some(())
        })
        .await;
    }

    /// The address from the startup line.
    pub fn address(&self) -> String {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("jobd started"))
            .expect("startup line");
        let at = line.find("127.0.0.1:").expect("listen address");
        let port: String = line[at + 10..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        format!("127.0.0.1:{port}")
    }

    pub fn terminate(mut self) -> (Option<i32>, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        (status.code(), self.log())
    }
}
