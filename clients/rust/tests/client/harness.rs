//! A real redis-server and a real jobd on free ports for one test, killed when dropped; a TCP
//! proxy a test can cut, or make refuse a call with a GOAWAY (`Proxy`); a worker running on its own task (`RunningWorker`); a claim
//! and a heartbeat made as a worker makes them; and the one way to wait on a condition
//! (`eventually`).
//!
//! jobd is `$JOBD_BIN`, else the workspace's `target/debug/jobd`, built with cargo when missing.

use std::{
    future::Future,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use jobd_client::{Client, Error, JobEvent, RetryPolicy, Worker, proto};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

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
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Redis key of a job's hash (docs/architecture.md, "Redis layout").
pub fn job_key(job_id: &str) -> String {
    let (queue, ulid) = job_id.rsplit_once('.').expect("<queue>.<ULID>");
    format!("jobd:{{{queue}}}:job:{ulid}")
}

/// A queue name no other test uses.
pub fn queue(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// A temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}

/// A redis-server of one test's own.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Redis {
    pub async fn start() -> Self {
        let dir = TempDir::new("jobd-rs-redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let redis = Self {
            child,
            port,
            _dir: dir,
        };
        eventually(
            Duration::from_secs(10),
            "redis-server to answer",
            || async { redis.try_command("PING").filter(|r| r.starts_with("+PONG")) },
        )
        .await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One inline command (`CONFIG SET maxmemory 1`); its raw reply.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command).expect("redis answers")
    }

    fn try_command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = [0u8; 512];
        let n = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }

    /// SIGSTOP: Redis stalls, connections stay open.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = signal_quietly(&self.child, "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal_quietly(child: &Child, name: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .stderr(Stdio::null())
        .status()
}

/// The jobd binary: `$JOBD_BIN`, else the workspace's, built once when missing.
pub fn jobd_binary() -> PathBuf {
    static BUILT: Mutex<()> = Mutex::new(());
    if let Some(path) = std::env::var_os("JOBD_BIN") {
        return PathBuf::from(path);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let binary = target.join("debug/jobd");
    let _once = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--locked", "--bin", "jobd"])
            .current_dir(&repo)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --bin jobd");
    }
    binary
}

/// A jobd process in front of one Redis; `restart` brings it back on the same port.
pub struct Jobd {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    log: TempDir,
}

impl Jobd {
    pub async fn start(redis: &Redis, extra: &[&str]) -> Self {
        let mut args = vec![
            format!("--redis-url={}", redis.url()),
            "--shutdown-timeout=5s".to_owned(),
            "--redis-command-timeout=300ms".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut jobd = Self {
            child: None,
            port: free_port(),
            args,
            log: TempDir::new("jobd-rs-log"),
        };
        jobd.spawn().await;
        jobd
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.log.0.join("jobd.log")).expect("a log file");
        let child = Command::new(jobd_binary())
            .arg(format!("--listen=127.0.0.1:{}", self.port))
            .args(&self.args)
            // As deployed (Dockerfile, deploy/): memory committed as used, not eagerly.
            .env(
                "MIMALLOC_ARENA_EAGER_COMMIT",
                std::env::var("MIMALLOC_ARENA_EAGER_COMMIT").unwrap_or_else(|_| "0".into()),
            )
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("jobd runs");
        let child = Mutex::new(child);
        let endpoint = self.endpoint();
        let this = &*self;
        eventually(Duration::from_secs(30), "jobd to answer", || async {
            let exited = child.lock().unwrap().try_wait().ok().flatten();
            if let Some(status) = exited {
                panic!("jobd exited with {status}: {}", this.log_text());
            }
            let client = Client::builder(&endpoint)
                .retry(RetryPolicy::NONE)
                .connect()
                .await
                .ok()?;
            // Any answer but UNAVAILABLE: it serves (an invalid id is INVALID_ARGUMENT).
            match client.get("not-a-job").await {
                Err(e) if e.is_unavailable() => None,
                _ => Some(()),
            }
        })
        .await;
        self.child = Some(child.into_inner().unwrap());
    }

    /// What jobd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.0.join("jobd.log")).unwrap_or_default()
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Jobd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Redis and a jobd in front of it.
pub struct Stack {
    pub jobd: Jobd,
    pub redis: Redis,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(jobd_args: &[&str]) -> Self {
        let redis = Redis::start().await;
        let jobd = Jobd::start(&redis, jobd_args).await;
        Self { jobd, redis }
    }

    /// A client without credentials.
    pub async fn client(&self) -> Client {
        Client::connect(self.jobd.endpoint())
            .await
            .expect("the client connects")
    }
}

/// A worker running on its own task until `stop`.
pub struct RunningWorker {
    stop: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl RunningWorker {
    /// Runs `worker` (built with `handle_signals(false)`) until `stop`.
    pub fn start(worker: Worker) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run_until(stop.clone()));
        Self { stop, task }
    }

    /// Starts its graceful shutdown, without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Whether its `run_until` has returned.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it, and waits (at most 15 s) for its `run_until` to return `Ok`.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the worker stops in time")
            .expect("its task")
            .expect("it ran");
    }
}

/// Whole seconds as a protobuf duration.
fn seconds(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// Claims one job of `q` as worker `w` would, with these lease and acknowledgement timeouts
/// (seconds), waiting up to 5 s for it.
pub async fn claim(client: &Client, q: &str, lease: i64, ack: i64) -> proto::ClaimedJob {
    let request = proto::ClaimJobsRequest {
        claim: Some(proto::ClaimJobRequest {
            queues: vec![q.to_owned()],
            worker_id: "w".into(),
            lease: seconds(lease),
            wait: seconds(5),
            ack_timeout: seconds(ack),
        }),
        max_jobs: 1,
    };
    let response = client.workers().claim_jobs(request).await.expect("a claim");
    let claimed = response.into_inner().jobs.into_iter().next();
    claimed.expect("a job within the claim's wait")
}

/// One heartbeat of a claimed job, reporting `progress` when given.
pub async fn heartbeat(
    client: &Client,
    job_id: &str,
    token: &str,
    progress: Option<f64>,
) -> Result<proto::HeartbeatResponse, Error> {
    let request = proto::HeartbeatRequest {
        job_id: job_id.to_owned(),
        lease_token: token.to_owned(),
        progress: progress.map(|value| proto::Progress {
            value: Some(value),
            message: String::new(),
        }),
        ..Default::default()
    };
    let response = client.workers().heartbeat(request).await?;
    Ok(response.into_inner())
}

/// A TCP proxy in front of jobd: `cut` resets every connection through it, `close` stops
/// listening (connections are refused, as by a jobd that is down) until `open`, on the same
/// port; `hold_replies` drops what jobd sends; `refuse_next_call` answers a call with a
/// GOAWAY instead; `answered` counts the calls jobd answered through it.
pub struct Proxy {
    pub port: u16,
    upstream: u16,
    listener: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<JoinSet<()>>>,
    signals: Arc<Signals>,
}

/// What the connections through a proxy count and heed.
#[derive(Default)]
struct Signals {
    answered: AtomicUsize,
    holding: AtomicBool,
    refusing: AtomicBool,
}

/// An HTTP/2 GOAWAY frame (type 7, on stream 0): last stream id 0, NO_ERROR. A graceful
/// shutdown's last GOAWAY says the same of every stream the client opened after it.
const GO_AWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let proxy = Self {
            port: free_port(),
            upstream,
            listener: Mutex::new(None),
            connections: Arc::default(),
            signals: Arc::default(),
        };
        proxy.open().await;
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many calls jobd answered through it so far: response headers that are not a
    /// status alone (the headers of a stream, or of a unary reply with a message).
    pub fn answered(&self) -> usize {
        self.signals.answered.load(Ordering::SeqCst)
    }

    /// While `true`, what jobd sends is dropped: calls go out, their replies never come.
    pub fn hold_replies(&self, hold: bool) {
        self.signals.holding.store(hold, Ordering::SeqCst);
    }

    /// The next call jobd answers through it gets a GOAWAY that served no stream instead of
    /// its response headers, and its connection nothing more from jobd: what a client gets
    /// for a stream it opened just as jobd, shutting down, sent its last GOAWAY. The client's
    /// h2 fails the call with NO_ERROR, which tonic makes INTERNAL without a jobd reason.
    pub fn refuse_next_call(&self) {
        self.signals.refusing.store(true, Ordering::SeqCst);
    }

    /// Listens (again) on its port.
    pub async fn open(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port");
        let (upstream, connections) = (self.upstream, self.connections.clone());
        let signals = self.signals.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let signals = signals.clone();
                connections.lock().unwrap().spawn(async move {
                    // Closed with RST: a cut is a connection reset, not an orderly end.
                    let _ = inbound.set_zero_linger();
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_jobd, mut to_jobd) = outbound.into_split();
                    let up = tokio::io::copy(&mut from_client, &mut to_jobd);
                    let down = copy_counting_answers(&mut from_jobd, &mut to_client, &signals);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        *self.listener.lock().unwrap() = Some(task);
    }

    /// Resets every connection through it; new ones are accepted while it listens.
    pub fn cut(&self) {
        self.connections.lock().unwrap().abort_all();
    }

    /// Stops listening and cuts every connection: the port refuses connections until `open`.
    pub async fn close(&self) {
        let listener = self.listener.lock().unwrap().take();
        if let Some(task) = listener {
            task.abort();
            let _ = task.await;
        }
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().unwrap().take() {
            task.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }
}

/// Copies jobd's side of a connection to the client an HTTP/2 frame at a time (a 9-byte
/// header: length, type, flags, stream; then its payload). A call's response headers (see
/// `is_answer`) are counted once written, or, while `refusing`, replaced by a GOAWAY after
/// which nothing more is copied. While `holding`, what comes is dropped.
async fn copy_counting_answers(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    signals: &Signals,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut header = Vec::with_capacity(9);
    let mut payload_left = 0usize;
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if signals.holding.load(Ordering::SeqCst) {
            continue;
        }
        let mut rest = &buffer[..n];
        while !rest.is_empty() {
            if payload_left > 0 {
                let (payload, after) = rest.split_at(payload_left.min(rest.len()));
                to.write_all(payload).await?;
                payload_left -= payload.len();
                rest = after;
                continue;
            }
            let taken = (9 - header.len()).min(rest.len());
            header.extend_from_slice(&rest[..taken]);
            rest = &rest[taken..];
            if header.len() < 9 {
                continue;
            }
            let answer = is_answer(&header);
            if answer && signals.refusing.swap(false, Ordering::SeqCst) {
                return to.write_all(&GO_AWAY).await;
            }
            to.write_all(&header).await?;
            if answer {
                signals.answered.fetch_add(1, Ordering::SeqCst);
            }
            payload_left = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            header.clear();
        }
    }
}

/// Whether a frame header is a call's response headers: HEADERS (type 1) without END_STREAM
/// (flag 1) on a stream, so not a status alone.
fn is_answer(header: &[u8]) -> bool {
    let (kind, flags) = (header[3], header[4]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    kind == 1 && flags & 1 == 0 && stream & 0x7fff_ffff != 0
}

/// A watch read by a task of its own, so that a test can act while it runs: its items as the
/// watch gives them (`next`), and whether it has ended (`is_finished`).
pub struct BackgroundWatch {
    task: JoinHandle<()>,
    items: tokio::sync::mpsc::UnboundedReceiver<Result<JobEvent, Error>>,
}

impl BackgroundWatch {
    /// `client`'s watch of `job_id`, from its first event.
    pub fn start(client: &Client, job_id: &str) -> Self {
        let (sender, items) = tokio::sync::mpsc::unbounded_channel();
        let events = client.watch(job_id, 0);
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(item) = events.next().await {
                let _ = sender.send(item);
            }
        });
        Self { task, items }
    }

    /// The watch's next item, within 10 s.
    pub async fn next(&mut self) -> Result<JobEvent, Error> {
        let next = tokio::time::timeout(Duration::from_secs(10), self.items.recv()).await;
        next.expect("an item in time").expect("the watch goes on")
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits, up to `within`, for the watch to end; the items it gave that were not taken.
    pub async fn end(mut self, within: Duration) -> Vec<Result<JobEvent, Error>> {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the watch ends in time")
            .expect("the watch's task");
        let mut rest = Vec::new();
        while let Ok(item) = self.items.try_recv() {
            rest.push(item);
        }
        rest
    }
}
