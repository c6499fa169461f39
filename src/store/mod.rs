//! Everything that speaks to Redis about jobs, as typed calls over the connection pool: the
//! key layout, the Lua scripts and their wrappers, the job hash's layout and the event log's
//! encoding. Nothing here spawns a task, waits for other callers or keeps state between
//! calls: batching, parking and retrying belong to the use cases built on it.

mod claim;
mod due;
mod event_codec;
mod keys;
mod layout;
mod list;
mod outcome;
mod read;
mod scripts;
mod submit;
mod sweep;

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use fred::{
    clients::{Client, Pool},
    error::{Error as RedisError, ErrorKind},
    types::{FromValue, Value},
};

pub use claim::{CLAIM_REPLY_BUDGET, ClaimFailure, ClaimOutcome, Claimant, Share, job_size};
use due::DueMark;
pub use due::DueQueues;
pub use event_codec::{AnnouncedEvent, parse_announced};
pub use keys::Keys;
pub use list::ListCursor;
pub use outcome::{CompletionOutcome, Completions, Holder, Released};
pub use read::{EVENT_PAGE, EventPage, FIRST_EVENT_PAGE, QueueStats};
pub use submit::{HandOff, KeyedSubmission, PreparedJobs, SubmittedBatch};
pub use sweep::{Expired, NextVisit, SWEEP_BATCH, SweepReport, TRIM_BATCH};

use crate::{
    domain::{JobState, QueueName, Refusal, UnixMillis},
    telemetry::Metrics,
};
use scripts::{LuaScript, Scripts};

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
    /// An idempotency key made a job from another request (kind, payload or options
    /// differ); nothing was written.
    #[error("idempotency key {key:?} was used by a different request")]
    IdempotencyConflict { key: String },
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
    /// Redis holds, or answered, data that jobd did not write.
    #[error("stored data is not as expected: {0}")]
    Corrupt(String),
    /// The task that was to make the call for this operation ended without answering (it
    /// panicked): a bug of jobd's, not Redis's.
    #[error("the call was interrupted")]
    Interrupted,
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    /// UNAVAILABLE for an answer that did not come within the command timeout.
    pub fn timed_out() -> Self {
        Self::Unavailable(RedisError::new(
            ErrorKind::Timeout,
            "no answer from Redis within the command timeout",
        ))
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
    /// A job's log holds at most this many events before its terminal event: from this
    /// sequence on, a non-terminal event replaces the one in the log's last slot (see
    /// `logged` in lua/lib.lua).
    pub max_events_per_job: u64,
}

/// Typed job operations on Redis. A handle: cheap to clone and one pointer wide (every
/// WatchJob stream holds one).
#[derive(Clone)]
pub struct JobStore(std::sync::Arc<Shared>);

/// What every clone of a `JobStore` shares.
struct Shared {
    pool: Pool,
    keys: Keys,
    scripts: Scripts,
    settings: StoreSettings,
    metrics: Metrics,
}

/// One connection of the pool, for calls that must follow each other on it: Redis runs one
/// connection's commands in order, so a release sent after a claim on the same connection
/// cannot overtake it.
#[derive(Clone)]
pub struct Connection(Client);

impl JobStore {
    pub fn new(pool: Pool, keys: Keys, settings: StoreSettings, metrics: Metrics) -> Self {
        Self(std::sync::Arc::new(Shared {
            pool,
            keys,
            scripts: Scripts::new(),
            settings,
            metrics,
        }))
    }

    /// The next connection of the pool.
    pub fn connection(&self) -> Connection {
        Connection(self.0.pool.next().clone())
    }

    fn keys(&self) -> &Keys {
        &self.0.keys
    }

    fn scripts(&self) -> &Scripts {
        &self.0.scripts
    }

    /// The log's cap, as the scripts that record non-terminal events take it.
    fn event_cap(&self) -> Value {
        self.0.settings.max_events_per_job.to_string().into()
    }

    fn client(&self) -> &Client {
        self.0.pool.next()
    }

    async fn call<R: FromValue>(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R> {
        self.call_on(self.client(), script, keys, args).await
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

    /// `script` once per `(keys, args)`, all in one pipeline (`LuaScript::call_each`), timed as
    /// one round trip: each call's reply, in order, or the round trip's error for each.
    async fn call_each(
        &self,
        script: &LuaScript,
        calls: &[(Vec<String>, Vec<Value>)],
    ) -> Vec<Result<Value>> {
        let replies = self.timed(script.name(), async {
            Ok(script.call_each(self.client(), calls).await)
        });
        match replies.await {
            Ok(replies) => replies
                .into_iter()
                .map(|reply| reply.map_err(StoreError::redis(script.name())))
                .collect(),
            Err(error) => calls.iter().map(|_| Err(error.clone())).collect(),
        }
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
            metrics: &self.0.metrics,
            started: None,
        }
    }

    /// `publish_due`, for a script whose work is done whatever the index hears: a failure is
    /// logged, not returned.
    async fn publish_or_warn(&self, queue: &QueueName, mark: Option<DueMark>) {
        if let Err(error) = self.publish_due(queue, mark).await {
            unpublished(queue, &error);
        }
    }

    /// The keys of a queue's retained-job sets, completed, failed and cancelled, in that order.
    fn retained_keys(&self, queue: &QueueName) -> [String; 3] {
        [JobState::Completed, JobState::Failed, JobState::Cancelled]
            .map(|outcome| self.keys().retained(queue, outcome))
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

/// A script's `due:` mark that could not be written to the due index (Redis went away right
/// after the script): the script's work stands, and the queue's new time reaches the index
/// with the next write to the queue that promises an earlier one (docs/architecture.md).
fn unpublished(queue: &QueueName, error: &StoreError) {
    tracing::warn!(%error, queue = %queue, "the due index was not told of a queue's next time");
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
