//! What every abuse case asserts besides its callers' statuses: jobd's resident memory and
//! Redis's `used_memory` stay within bounds while the abuse runs (`Footprint`), and a
//! well-behaved client on a queue of its own keeps its latency (`Bystander`).

use std::{
    future::Future,
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use jobd_client::proto;
use tokio::task::JoinHandle;

use super::{
    auth::with_token,
    clients::{Jobs, Workers, claim_request, connect, pb_duration, submit_request},
    jobd::{Jobd, rss_of},
    redis::RedisServer,
    wait::until,
};

pub const MIB: u64 = 1024 * 1024;

/// jobd's memory model (docs/operations.md, "Memory"): its baseline, and what each admitted
/// watch stream, each waiting claim and each payload byte in flight is counted for.
pub const JOBD_BASELINE: u64 = 64 * MIB;
pub const PER_STREAM: u64 = 40 * 1024;
pub const PER_CLAIM: u64 = 40 * 1024;
pub const PAYLOAD_FACTOR: u64 = 8;

/// What jobd holds for each HTTP/2 connection a client opens, as the memory model counts it
/// (`--max-connections` of them): hyper's read buffer (8 KiB, growing with what arrives), the h2
/// codec's write buffer (a 16 KiB frame) and the state of the streams in flight on it (about
/// 200 bytes each, up to 256). 64 KiB is twice their sum rounded up.
pub const PER_CONNECTION: u64 = 64 * 1024;

/// What jobd's RSS may grow by in an abuse case beyond what the memory model counts for it:
/// what a burst leaves in the allocator (mimalloc keeps the pages a thread freed in that
/// thread's heap, for reuse) and the connections of the bystander and the test. A fourth of
/// the model's baseline.
pub const JOBD_SLACK: u64 = JOBD_BASELINE / 4;

/// What the memory model says jobd may hold with `streams` watch streams, `claims` waiting
/// claims and `payload` bytes in flight: the bound the base Deployment's limit comes from.
pub fn jobd_model(streams: u64, claims: u64, payload: u64) -> u64 {
    JOBD_BASELINE + streams * PER_STREAM + claims * PER_CLAIM + payload * PAYLOAD_FACTOR
}

/// What jobd's RSS may grow by, from its baseline at the start of a case, with `streams`,
/// `claims` and `payload` admitted: the model's count of them, and `JOBD_SLACK`.
pub fn jobd_growth(streams: u64, claims: u64, payload: u64) -> u64 {
    jobd_model(streams, claims, payload) - JOBD_BASELINE + JOBD_SLACK
}

/// What Redis's `used_memory` may grow by in an abuse case beyond the data the case itself
/// stores: jobd's connections' query and reply buffers (a pool of at most 4, a subscriber and
/// the bystander's few; Redis gives each a query buffer that grows to the largest command
/// pipelined to it, up to one SubmitJobs batch, under 1 MiB in these cases), the scripts
/// loaded (about 30, a few KiB each), the bystander's jobs (one every 100 ms at most, each
/// kept 1 s: about 20 at once), and the allocator's rounding of what is freed and reused. 8 MiB
/// is twice that sum rounded up.
pub const REDIS_SLACK: u64 = 8 * MIB;

/// What Redis holds for one job with a small payload, its keys and index entries included,
/// at most: the job's hash (about 25 fields of at most 64 bytes each, stored as a listpack,
/// under 2 KiB), its queue's sorted-set entries (about 100 bytes each, at most 3), its
/// idempotency and promise keys (about 100 bytes each). 4 KiB is that sum (about 2.5 KiB)
/// rounded up to the next power of two.
pub const REDIS_PER_JOB: u64 = 4 * 1024;

/// The shortest time between two of the bystander's round trips: it is a client at a steady
/// pace, not a load of its own.
const BYSTANDER_PACE: Duration = Duration::from_millis(100);

/// How long the bystander's jobs are kept once completed: short, so that they do not add up
/// in Redis during a long abuse.
const BYSTANDER_RETENTION: Duration = Duration::from_secs(1);

/// How often a `Footprint` samples both processes.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// jobd's RSS and Redis's `used_memory`, sampled from the start of an abuse case on, with
/// their peaks.
pub struct Footprint {
    baseline: Sample,
    peak: Arc<Mutex<Sample>>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
    pid: u32,
    redis_port: u16,
}

/// jobd's resident memory and Redis's `used_memory`, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss: u64,
    pub redis: u64,
}

impl Footprint {
    /// Takes the baseline of jobd (process `pid`) and `redis` now, then samples both every
    /// 50 ms until dropped.
    pub fn start(pid: u32, redis: &RedisServer) -> Self {
        let redis_port = redis.port();
        let baseline = sample(pid, redis_port);
        let peak = Arc::new(Mutex::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = sample(pid, redis_port);
                    let mut peak = peak.lock().unwrap();
                    peak.rss = peak.rss.max(now.rss);
                    peak.redis = peak.redis.max(now.redis);
                    drop(peak);
                    std::thread::sleep(SAMPLE_EVERY); // the sampling period
                }
            }
        });
        Self {
            baseline,
            peak,
            stop,
            sampler: Some(sampler),
            pid,
            redis_port,
        }
    }

    /// Asserts that since `start`, jobd's RSS grew by at most `rss` bytes and Redis's
    /// `used_memory` by at most `redis` bytes, at their peaks (and now); returns the peaks.
    pub fn assert_peak_within(&self, rss: u64, redis: u64) -> Sample {
        let now = sample(self.pid, self.redis_port);
        let mut peak = *self.peak.lock().unwrap();
        peak.rss = peak.rss.max(now.rss);
        peak.redis = peak.redis.max(now.redis);
        let base = self.baseline;
        eprintln!(
            "footprint: jobd RSS {} KiB at rest, peak {} KiB (bound +{} KiB); Redis used_memory \
             {} KiB at rest, peak {} KiB (bound +{} KiB)",
            base.rss / 1024,
            peak.rss / 1024,
            rss / 1024,
            base.redis / 1024,
            peak.redis / 1024,
            redis / 1024
        );
        assert!(
            peak.rss <= base.rss + rss,
            "jobd's RSS grew from {} to {} bytes, past its bound of {rss} bytes more",
            base.rss,
            peak.rss
        );
        assert!(
            peak.redis <= base.redis + redis,
            "Redis's used_memory grew from {} to {} bytes, past its bound of {redis} bytes more",
            base.redis,
            peak.redis
        );
        peak
    }

    /// Waits, up to `within`, until Redis's `used_memory` is back within `redis` bytes of the
    /// baseline: what an abuse stored has been forgotten.
    pub async fn redis_back_within(&self, redis: u64, within: Duration) {
        let (port, limit) = (self.redis_port, self.baseline.redis + redis);
        until(
            within,
            "Redis's used_memory to go back to its baseline",
            || used_memory(port) <= limit,
        )
        .await;
        eprintln!(
            "footprint: Redis used_memory back to {} KiB (baseline {} KiB, bound +{} KiB)",
            used_memory(port) / 1024,
            self.baseline.redis / 1024,
            redis / 1024
        );
    }
}

impl Drop for Footprint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

fn sample(pid: u32, redis_port: u16) -> Sample {
    Sample {
        rss: rss_of(pid),
        redis: used_memory(redis_port),
    }
}

/// Redis's `used_memory` (INFO memory), read on a connection of its own.
pub fn used_memory(port: u16) -> u64 {
    let mut connection = TcpStream::connect(("127.0.0.1", port)).expect("Redis accepts");
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    connection.write_all(b"INFO memory\r\n").unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        let read = connection.read(&mut buffer).expect("INFO memory answers");
        assert!(read > 0, "Redis closed the connection");
        reply.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(value) = text
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            && text.contains("\r\nused_memory_human:")
        {
            return value.trim().parse().expect("used_memory is a number");
        }
    }
}

/// A well-behaved client: on connections and a runtime of its own (as another process would
/// be, so that the abusive client's tasks in the test's runtime do not delay it), it submits a
/// job to a queue no abuse touches, claims it (without waiting: the job is ready) and
/// completes it, one round trip after another.
pub struct Bystander {
    runtime: OwnRuntime,
    client: Option<Polite>,
}

/// A runtime of the bystander's own: one worker thread; shut down in the background when
/// dropped (a runtime cannot be dropped inside another's tasks).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The bystander's clients, in its runtime.
struct Polite {
    jobs: Jobs,
    workers: Workers,
    /// Its bearer token, where jobd has an auth file.
    token: Option<String>,
    /// Its round trips so far, which name its jobs' idempotency keys.
    trips: u64,
}

/// The queue of the bystander's jobs.
pub const BYSTANDER_QUEUE: &str = "abuse.bystander";

/// How many round trips make the bystander's baseline.
const BASELINE_TRIPS: usize = 20;

/// The fewest round trips the bystander makes during an abuse.
const TRIPS_DURING: usize = 5;

/// How much slower the bystander's median round trip may be during an abuse than before it:
/// the abuse, its client, jobd and Redis share the machine's 2 cores (with other tests), so a
/// fair share may leave the bystander a few times slower; 20 times is a starved queue, and
/// the speed of a shared machine moving 1.6-fold from one minute to the next is well inside.
const SLOWDOWN: u32 = 20;

/// The median round trip during an abuse is always allowed, however fast the baseline: a few
/// milliseconds times `SLOWDOWN` is within the scheduler's noise on a loaded machine. A starved
/// client waits for its claim's whole command timeout (1 s or more) or forever.
const FLOOR: Duration = Duration::from_secs(1);

/// How long the bystander waits before it retries a call jobd answered with "retry later".
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether jobd's answer says "retry later": Redis was unavailable, or a budget of the
/// process was used up (by the abuse). A well-behaved client retries those.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
    )
}

/// Waits before a retry after `status`, which must say "retry later"; fails the test if not.
async fn retry_later(status: &tonic::Status, call: &str) {
    assert!(
        retryable(status),
        "the bystander's {call} failed: {status:?}"
    );
    tokio::time::sleep(RETRY_PAUSE).await; // pacing the retries
}

/// Bytes Redis has sent its clients so far (INFO stats).
pub fn redis_output_bytes(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|line| line.strip_prefix("total_net_output_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("total_net_output_bytes in INFO stats")
}

/// Round trip durations, sorted.
#[derive(Debug, Clone)]
pub struct Latencies(Vec<Duration>);

/// The bystander at work in the background during an abuse.
pub struct Busy {
    task: JoinHandle<Latencies>,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
    _runtime: OwnRuntime,
}

impl Latencies {
    fn of(mut trips: Vec<Duration>) -> Self {
        trips.sort();
        Self(trips)
    }

    pub fn median(&self) -> Duration {
        self.0[self.0.len() / 2]
    }

    /// How many round trips.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn max(&self) -> Duration {
        *self.0.last().expect("round trips")
    }
}

impl Bystander {
    pub async fn new(jobd: &impl Jobd) -> Self {
        Self::start(jobd.url(), None).await
    }

    /// A bystander that calls with `token`, for a jobd with an auth file.
    pub async fn with_token(jobd: &impl Jobd, token: &str) -> Self {
        Self::start(jobd.url(), Some(token.to_owned())).await
    }

    async fn start(url: String, token: Option<String>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the bystander's runtime");
        // Connected from its runtime, its connections are served there.
        let connected = runtime.spawn(async move {
            Polite {
                jobs: connect(&url).await.jobs(),
                workers: connect(&url).await.workers(),
                token,
                trips: 0,
            }
        });
        let client = connected.await.expect("the bystander connects");
        Self {
            runtime: OwnRuntime(Some(runtime)),
            client: Some(client),
        }
    }

    fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.runtime.0.as_ref().expect("the runtime").spawn(work)
    }

    /// Round trips one after another before the abuse: the baseline, in the same test and
    /// minute as the abuse.
    pub async fn baseline(&mut self) -> Latencies {
        let mut client = self.client.take().expect("the bystander's client");
        let (client, baseline) = self
            .spawn(async move {
                let mut trips = Vec::with_capacity(BASELINE_TRIPS);
                for _ in 0..BASELINE_TRIPS {
                    trips.push(client.round_trip().await);
                }
                (client, Latencies::of(trips))
            })
            .await
            .expect("the bystander's calls succeed");
        self.client = Some(client);
        baseline
    }

    /// Goes on with round trips in the background, until `Busy::assert_kept`.
    pub fn keep_going(mut self) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let mut client = self.client.take().expect("the bystander's client");
        let task = self.spawn({
            let (stop, made) = (stop.clone(), made.clone());
            async move {
                let mut trips = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let trip = client.round_trip().await;
                    trips.push(trip);
                    made.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(BYSTANDER_PACE.saturating_sub(trip)).await; // pacing
                }
                Latencies::of(trips)
            }
        });
        Busy {
            task,
            stop,
            made,
            _runtime: self.runtime,
        }
    }
}

impl Polite {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        match &self.token {
            Some(token) => with_token(message, token),
            None => tonic::Request::new(message),
        }
    }

    /// Submits a job, claims it and completes it, retrying each call jobd answers with "retry
    /// later"; how long that took, the retries included.
    pub async fn round_trip(&mut self) -> Duration {
        let started = Instant::now();
        self.trips += 1;
        // A retried submission finds its first attempt's job by its key.
        let request = proto::SubmitJobRequest {
            retention: Some(pb_duration(BYSTANDER_RETENTION)),
            idempotency_key: format!("trip-{}", self.trips),
            payload: b"work".to_vec().into(),
            ..submit_request(BYSTANDER_QUEUE)
        };
        let job = loop {
            match self.jobs.submit_job(self.request(request.clone())).await {
                Ok(reply) => break reply.into_inner().job.expect("the bystander's job"),
                Err(status) => retry_later(&status, "submission").await,
            }
        };
        // A claim that failed may have taken the job; a claim whose completion came after its
        // acknowledgement time lost the job: it comes back to the queue, and is claimed again.
        while !self.claim_and_complete(&job.id).await {}
        started.elapsed()
    }

    /// Claims the job `id` and completes it; false if the claim was lost before the completion
    /// (its acknowledgement time passed).
    async fn claim_and_complete(&mut self, id: &str) -> bool {
        let claimed = loop {
            let request = claim_request(BYSTANDER_QUEUE, Duration::ZERO);
            match self.workers.claim_job(self.request(request)).await {
                Ok(reply) if reply.get_ref().job.is_some() => break reply.into_inner(),
                Ok(_) => tokio::time::sleep(RETRY_PAUSE).await, // pacing the retries
                Err(status) => retry_later(&status, "claim").await,
            }
        };
        let claimed_id = claimed.job.as_ref().map(|job| job.id.as_str());
        assert_eq!(claimed_id, Some(id), "the bystander's own job");
        let request = proto::CompleteJobRequest {
            job_id: id.to_owned(),
            lease_token: claimed.lease_token,
            result: b"done".to_vec().into(),
            next: None,
        };
        let mut retried = false;
        loop {
            match self
                .workers
                .complete_job(self.request(request.clone()))
                .await
            {
                Ok(_) => return true,
                Err(status) if status.code() == tonic::Code::FailedPrecondition && !retried => {
                    return false;
                }
                Err(status) if retried && !retryable(&status) => {
                    // Either the first attempt was recorded, its answer lost: the job says
                    // so, or is gone already, its retention (1 s) over, which only a
                    // finished job's is (nothing cancels or fails the bystander's jobs); or
                    // none was, and the claim was lost meanwhile: the job goes back.
                    let get = proto::GetJobRequest {
                        job_id: id.to_owned(),
                    };
                    match self.jobs.get_job(self.request(get)).await {
                        Ok(got) => {
                            let state = got.into_inner().job.expect("the job").state();
                            if state != proto::JobState::Completed {
                                let code = status.code();
                                assert_eq!(code, tonic::Code::FailedPrecondition, "{status:?}");
                                return false;
                            }
                        }
                        Err(gone) => {
                            assert_eq!(gone.code(), tonic::Code::NotFound, "GetJob: {gone:?}")
                        }
                    }
                    return true;
                }
                Err(status) => retry_later(&status, "completion").await,
            }
            retried = true;
        }
    }
}

impl Busy {
    /// The round trips made so far.
    pub fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    /// Stops the bystander once it has made at least 5 round trips during the abuse, and
    /// asserts that its median round trip is within max(20 × the baseline's median, 1 s).
    pub async fn assert_kept(self, baseline: &Latencies) -> Latencies {
        let made = self.made.clone();
        until(
            Duration::from_secs(120),
            "the bystander's round trips during the abuse",
            || made.load(Ordering::Relaxed) >= TRIPS_DURING || self.task.is_finished(),
        )
        .await;
        self.stop.store(true, Ordering::Relaxed);
        let during = self.task.await.expect("the bystander's calls succeed");
        let bound = (baseline.median() * SLOWDOWN).max(FLOOR);
        eprintln!(
            "bystander: median round trip {:?} before the abuse (max {:?}), {:?} during it \
             (max {:?}, {} trips; bound {bound:?})",
            baseline.median(),
            baseline.max(),
            during.median(),
            during.max(),
            during.0.len()
        );
        assert!(
            during.median() <= bound,
            "the bystander's median round trip went from {:?} to {:?}, past {bound:?}",
            baseline.median(),
            during.median()
        );
        during
    }
}
