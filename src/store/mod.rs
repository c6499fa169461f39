//! Everything that speaks to Redis for jobs: key layout, scripts, and `JobStore`, the typed
//! operations the API and the sweeper are built on.

mod batch;
mod codec;
mod connection;
mod handoff;
mod jobs;
mod keys;
mod release;
mod scripts;
mod sweep;
mod work;

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use fred::{
    clients::{Client, Pool},
    error::{Error as RedisError, ErrorKind},
    types::{FromValue, Value},
};

pub use codec::{AnnouncedEvent, decode_announced, parse_announced};
pub use connection::{
    Eviction, MIN_REDIS_VERSION, Reconnections, RedisClients, name_connections, supported,
};
pub use handoff::Parked;
pub use jobs::{EventPage, ListCursor, QueueStats, Submitted};
pub use keys::Keys;
pub use release::ClaimedJobs;
pub use sweep::{Expired, SWEEP_BATCH, SweepReport};
pub use work::{CLAIM_REPLY_BUDGET, job_size};

use crate::{
    domain::{JobId, JobIdGenerator, JobState, NewJob, QueueName, Refusal, UnixMillis},
    telemetry::Metrics,
};
use batch::Batcher;
use handoff::ParkedClaims;
use scripts::{LuaScript, Scripts};
pub use work::Completed;
use work::{Claim, Completion};

/// Why a store operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("job not found")]
    NotFound,
    /// A read of a job's events after a sequence the job has not reached.
    #[error("sequence {after} is past the job's last event ({last})")]
    PastLastEvent { after: u64, last: u64 },
    /// The operation does not apply to the job as it is; nothing was changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Redis could not be reached within the command timeout.
    #[error("Redis is unavailable")]
    Unavailable(#[source] RedisError),
    /// Redis is full: past its maxmemory, under the noeviction policy, it refuses writes (a
    /// script is refused before its first write, so nothing is half-written).
    #[error("Redis is out of memory")]
    OutOfMemory(#[source] RedisError),
    /// Redis answered with an error.
    #[error("Redis error in {context}")]
    Redis {
        context: &'static str,
        #[source]
        source: RedisError,
    },
    /// Redis holds data jobd did not write.
    #[error("stored data is not as expected: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    fn redis(context: &'static str) -> impl FnOnce(RedisError) -> Self {
        move |source| match source.kind() {
            ErrorKind::Timeout
            | ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::NotFound => Self::Unavailable(source),
            // The reply is "OOM command not allowed ...", from a command or a script's first
            // write.
            _ if source.details().contains("OOM command not allowed") => Self::OutOfMemory(source),
            _ => Self::Redis { context, source },
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The server-wide settings the store applies.
#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    /// Lease for a claim when neither the worker nor the job names one.
    pub default_lease: Duration,
    /// The longest lease a worker or a job may ask for.
    pub max_lease: Duration,
    /// How long a call waits for Redis at most (an operation waiting to share a script call
    /// included).
    pub command_timeout: Duration,
}

/// Typed job operations on Redis. A handle: cheap to clone and one pointer wide (every
/// WatchJob stream holds one), all clones sharing the pool, the scripts and the batchers.
#[derive(Clone)]
pub struct JobStore(Arc<Shared>);

/// What every clone of a `JobStore` shares.
pub struct Shared {
    pool: Pool,
    keys: Keys,
    scripts: Scripts,
    settings: StoreSettings,
    ids: JobIdGenerator,
    /// Queues this process has put in the queue registry.
    registered: Mutex<HashSet<QueueName>>,
    /// Submissions without an idempotency key waiting to share a script call, per queue.
    submissions: Batcher<(JobId, NewJob), Submitted>,
    /// Claims waiting to share a script call, per queue.
    claims: Batcher<Claim, ClaimedJobs>,
    /// Completions waiting to share a script call, per queue.
    completions: Batcher<Completion, Completed>,
    /// Claims waiting on this process for a job that a submission here may hand them.
    parked: ParkedClaims,
    /// Where the store's own tasks are spawned (group-commit calls, submissions with claims to
    /// answer, releases), so that shutdown waits for them before closing Redis.
    tasks: TaskTracker,
    /// Cancelled when jobd shuts down: a task waiting to try Redis again gives up.
    shutdown: CancellationToken,
    metrics: Metrics,
}

impl std::ops::Deref for JobStore {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl JobStore {
    pub fn new(
        pool: Pool,
        keys: Keys,
        settings: StoreSettings,
        metrics: Metrics,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self(Arc::new(Shared {
            pool,
            keys,
            scripts: Scripts::new(),
            settings,
            ids: Default::default(),
            registered: Default::default(),
            submissions: Batcher::new(tasks.clone(), settings.command_timeout),
            claims: Batcher::new(tasks.clone(), settings.command_timeout),
            completions: Batcher::new(tasks.clone(), settings.command_timeout),
            parked: Default::default(),
            tasks,
            shutdown,
            metrics,
        }))
    }

    async fn call<R: FromValue>(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R> {
        self.call_on(self.pool.next(), script, keys, args).await
    }

    /// `call` on a given connection of the pool.
    async fn call_on<R: FromValue>(
        &self,
        client: &Client,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R> {
        self.timed(script.name(), script.call(client, keys, args))
            .await
    }

    /// Runs one Redis round trip named `operation`, timing it and mapping its error.
    fn timed<F: Future<Output = Result<R, RedisError>>, R>(
        &self,
        operation: &'static str,
        round_trip: F,
    ) -> Timed<'_, F> {
        Timed {
            round_trip,
            operation,
            metrics: &self.metrics,
            started: None,
        }
    }

    /// The keys of a queue's retained-job sets, completed, failed and cancelled, in that order.
    fn retained_keys(&self, queue: &QueueName) -> [String; 3] {
        [JobState::Completed, JobState::Failed, JobState::Cancelled]
            .map(|outcome| self.keys.retained(queue, outcome))
    }
}

pin_project_lite::pin_project! {
    /// A timed Redis round trip (`JobStore::timed`). A future of its own rather than an async
    /// fn: fred's command futures are about 5 KB, and an async fn taking one by value made
    /// every store read's future twice that (its caller kept a slot for the argument too).
    /// Every call in flight holds one: 10,000 WatchJob streams start with a read each.
    struct Timed<'a, F> {
        #[pin]
        round_trip: F,
        operation: &'static str,
        metrics: &'a Metrics,
        started: Option<Instant>,
    }
}

impl<F: Future<Output = Result<R, RedisError>>, R> Future for Timed<'_, F> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = *this.started.get_or_insert_with(Instant::now);
        let result = ready!(this.round_trip.poll(cx));
        this.metrics.redis(this.operation, started.elapsed());
        Poll::Ready(result.map_err(StoreError::redis(this.operation)))
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// The status word that opens every script reply.
fn status(reply: &[Value]) -> Result<String> {
    reply
        .first()
        .and_then(Value::as_string)
        .ok_or_else(|| StoreError::corrupt("script reply without a status"))
}

/// The state a script names in its reply after the status.
fn state_in(reply: &[Value]) -> Result<JobState> {
    reply
        .get(1)
        .and_then(Value::as_string)
        .as_deref()
        .and_then(JobState::from_name)
        .ok_or_else(|| StoreError::corrupt("script reply without a known job state"))
}

/// A time a script replied, Unix ms.
fn time_in(reply: &[Value], index: usize) -> Result<UnixMillis> {
    reply
        .get(index)
        .and_then(Value::as_u64)
        .map(UnixMillis)
        .ok_or_else(|| StoreError::corrupt("script reply without a time"))
}
