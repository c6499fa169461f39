//! [`Worker`]: runs a handler per job kind for the jobs of its queues, `concurrency` at a time.
//!
//! How it speaks jobd's worker protocol (docs/api.md, "The worker protocol"):
//! - Claims: one ClaimJobs long poll at a time for the free slots; completions go out as
//!   CompleteJobs (every completion that finished while the previous call was in flight) whose
//!   `next` claims jobs for the slots free by then. A plain handler gets batching.
//! - Heartbeats: the first within half the acknowledgement timeout, then every heartbeat
//!   interval (`lease × heartbeat_fraction`), each shortened by up to 20% of jitter. A heartbeat
//!   reply is how jobd says a job was cancelled: the handler's token is then cancelled.
//! - Shutdown (SIGTERM, SIGINT or the caller's token): no new claim; a claim already waiting is
//!   let run to its end, never cancelled, and the jobs it brings are given back (ReleaseJob:
//!   queued again, no attempt counted); running handlers get `shutdown_timeout` to finish,
//!   after which they are dropped and their jobs given back too.

mod calls;
mod job;
mod pump;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use job::JobContext;

use crate::{Client, Result, error::BoxError};

/// A registered handler, type-erased.
type Handler = Arc<
    dyn Fn(JobContext) -> BoxFuture<'static, std::result::Result<Bytes, BoxError>> + Send + Sync,
>;

/// A worker: handlers by kind, and how it claims. Build it, register handlers with
/// [`handle`](Worker::handle), then [`run`](Worker::run).
pub struct Worker {
    client: Client,
    handlers: HashMap<String, Handler>,
    options: Options,
}

/// The worker's settings.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub worker_id: String,
    pub lease: Duration,
    pub heartbeat_fraction: f64,
    pub ack_timeout: Option<Duration>,
    pub claim_wait: Duration,
    pub shutdown_timeout: Duration,
    pub handle_signals: bool,
}

impl Options {
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease.mul_f64(self.heartbeat_fraction)
    }
}

/// What the worker's tasks share.
pub(crate) struct Shared {
    pub client: Client,
    pub handlers: HashMap<String, Handler>,
    pub options: Options,
}

impl Worker {
    /// A worker for `queues` (names, in order of preference), with the defaults:
    /// concurrency 8, lease 30 s, heartbeat fraction 1/3 (every 10 s), jobd's acknowledgement
    /// timeout (5 s), claims waiting up to 5 s, 30 s for handlers to finish at shutdown,
    /// SIGTERM/SIGINT handled.
    pub fn new<Q: Into<String>>(client: Client, queues: impl IntoIterator<Item = Q>) -> Self {
        Self {
            client,
            handlers: HashMap::new(),
            options: Options {
                queues: queues.into_iter().map(Into::into).collect(),
                concurrency: 8,
                worker_id: default_worker_id(),
                lease: Duration::from_secs(30),
                heartbeat_fraction: 1.0 / 3.0,
                ack_timeout: None,
                claim_wait: Duration::from_secs(5),
                shutdown_timeout: Duration::from_secs(30),
                handle_signals: true,
            },
        }
    }

    /// Runs `handler` for the jobs of `kind`. Its `Ok` value (bytes, a `String`, a
    /// `Vec<u8>`, …) completes the job; an `Err` fails the attempt (FailJob, retried per the
    /// job's backoff while attempts remain), a [`NonRetryable`](crate::NonRetryable) one
    /// fails the job for good. A job of a kind without a handler fails for good.
    pub fn handle<F, Fut, R>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, BoxError>> + Send + 'static,
        R: Into<Bytes>,
    {
        let handler: Handler = Arc::new(move |job| {
            let work = handler(job);
            Box::pin(async move { work.await.map(Into::into) })
        });
        self.handlers.insert(kind.into(), handler);
        self
    }

    /// Handlers running at once (8 by default).
    pub fn concurrency(mut self, slots: usize) -> Self {
        self.options.concurrency = slots.max(1);
        self
    }

    /// The worker's id in claims and events (default: host, pid and a random suffix).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.options.worker_id = id.into();
        self
    }

    /// The lease of every job it claims (30 s by default).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = lease;
        self
    }

    /// The heartbeat interval as a fraction of the lease (1/3 by default).
    pub fn heartbeat_fraction(mut self, fraction: f64) -> Self {
        self.options.heartbeat_fraction = fraction.clamp(0.01, 0.9);
        self
    }

    /// The claims' acknowledgement timeout (jobd's default, 5 s, when unset).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.options.ack_timeout = Some(timeout);
        self
    }

    /// How long a claim waits for a job (5 s by default), and so the longest a shutdown
    /// waits for a claim in flight.
    pub fn claim_wait(mut self, wait: Duration) -> Self {
        self.options.claim_wait = wait;
        self
    }

    /// How long running handlers get to finish after a shutdown begins (30 s by default).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }

    /// `false`: SIGTERM and SIGINT are left alone; only the token of
    /// [`run_until`](Worker::run_until) stops the worker.
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.options.handle_signals = handle;
        self
    }

    /// The heartbeat interval: lease × heartbeat fraction. A handler hears of its job's
    /// cancellation within one interval of it.
    pub fn heartbeat_interval(&self) -> Duration {
        self.options.heartbeat_interval()
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully; a second signal skips the
    /// wait for running handlers.
    pub async fn run(self) -> Result<()> {
        self.run_until(CancellationToken::new()).await
    }

    /// Runs until `shutdown` is cancelled (or a signal comes, unless `handle_signals(false)`),
    /// then shuts down gracefully. Returns once every claim, handler and report is done.
    pub async fn run_until(self, shutdown: CancellationToken) -> Result<()> {
        let expire = CancellationToken::new();
        let _signals = self
            .options
            .handle_signals
            .then(|| pump::on_signals(shutdown.clone(), expire.clone()));
        let shared = Arc::new(Shared {
            client: self.client,
            handlers: self.handlers,
            options: self.options,
        });
        pump::Pump::new(shared, shutdown, expire).run().await;
        Ok(())
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect::<String>();
    let host = if host.is_empty() {
        "host".to_owned()
    } else {
        host
    };
    let suffix = ulid::Ulid::new().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &suffix[suffix.len() - 8..]
    )
}
