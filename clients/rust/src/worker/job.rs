//! One job in a worker: [`JobContext`], what its handler gets (the job, its cancellation token,
//! `progress`), and the task that runs the handler beside its heartbeats.

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use opentelemetry::{
    context::FutureExt as _,
    trace::{Status, TraceContextExt},
};
use rand::Rng;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

use super::Shared;
use crate::{
    Client, Error, Job, Result,
    error::{BoxError, is_non_retryable},
    proto::{self, ClaimedJob, Completion},
    spec::duration,
    trace,
};

/// What a handler gets: its job, a cancellation token, and `progress`.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    job: Job,
    lease_token: String,
    lease: Duration,
    heartbeat_timeout: Duration,
    cancellation: CancellationToken,
    /// LIVE, CANCELLED (jobd said so) or LOST (the lease is gone).
    state: AtomicU8,
}

const LIVE: u8 = 0;
const CANCELLED: u8 = 1;
const LOST: u8 = 2;

impl JobContext {
    /// The job as claimed: id, queue, kind, attempt, payload, labels, trace context.
    pub fn job(&self) -> &Job {
        &self.inner.job
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.inner.job.id
    }

    /// The job's payload.
    pub fn payload(&self) -> &Bytes {
        &self.inner.job.payload
    }

    /// The payload as text (UTF-8, invalid sequences replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.inner.job.payload)
    }

    /// Cancelled when the handler should stop: jobd said the job was cancelled (within one
    /// heartbeat interval of CancelJob), its lease was lost, or the worker's shutdown deadline
    /// passed. The handler's outcome is then not reported.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.cancellation
    }

    /// Whether jobd said the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) == CANCELLED
    }

    /// Reports progress (a PROGRESS event) and renews the lease. [`Error::JobCancelled`] once
    /// jobd says the job was cancelled (the token is cancelled too); a lease refusal
    /// (`LEASE_EXPIRED`, `LEASE_STALE`, …) as it came.
    pub async fn progress(&self, value: Option<f64>, message: &str) -> Result<()> {
        self.heartbeat(Some(proto::Progress {
            value,
            message: message.to_owned(),
        }))
        .await
    }

    fn is_live(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) == LIVE
    }

    /// One heartbeat; stops the handler (its token) when the job was cancelled or the lease
    /// is gone. UNAVAILABLE changes nothing: the next heartbeat tries again.
    async fn heartbeat(&self, progress: Option<proto::Progress>) -> Result<()> {
        let inner = &self.inner;
        let request = proto::HeartbeatRequest {
            job_id: inner.job.id.clone(),
            lease_token: inner.lease_token.clone(),
            lease: Some(duration(inner.lease)),
            progress,
        };
        match inner
            .client
            .heartbeat(request, inner.heartbeat_timeout)
            .await
        {
            Ok(response) if response.cancelled => {
                self.stop(CANCELLED);
                Err(Error::JobCancelled {
                    job_id: inner.job.id.clone(),
                    reason: String::new(),
                })
            }
            Ok(_) => Ok(()),
            Err(error) if error.is_unavailable() => Err(error),
            Err(error) => {
                tracing::warn!(job_id = %inner.job.id, %error, "lease lost; stopping the handler");
                self.stop(LOST);
                Err(error)
            }
        }
    }

    fn stop(&self, state: u8) {
        let _ = self
            .inner
            .state
            .compare_exchange(LIVE, state, Ordering::SeqCst, Ordering::SeqCst);
        self.inner.cancellation.cancel();
    }
}

/// Heartbeats until the job is no longer live: the first within half the acknowledgement
/// timeout, then every heartbeat interval, each shortened by up to 20% of jitter.
async fn heartbeats(job: JobContext, interval: Duration, first: Duration) {
    let mut delay = first;
    while job.is_live() {
        let jittered = delay.mul_f64(rand::rng().random_range(0.8..=1.0));
        tokio::time::sleep(jittered).await;
        delay = interval;
        if let Err(error) = job.heartbeat(None).await
            && error.is_unavailable()
        {
            tracing::warn!(job_id = %job.id(), %error, "heartbeat failed");
        }
    }
}

/// Runs one claimed job's handler to its outcome: `Some` completion to batch, or `None` when
/// the job was failed, given back (the shutdown deadline, `expire`) or is no longer ours.
pub(super) async fn run(
    shared: Arc<Shared>,
    claimed: ClaimedJob,
    expire: CancellationToken,
) -> Option<Completion> {
    let job = claimed.job.unwrap_or_default();
    let handler = shared.handlers.get(&job.kind).cloned()?;
    let context = trace::handler_context(&job);
    let options = &shared.options;
    let job = JobContext {
        inner: Arc::new(Inner {
            client: shared.client.clone(),
            job,
            lease_token: claimed.lease_token,
            lease: options.lease,
            heartbeat_timeout: options.heartbeat_interval().max(Duration::from_secs(1)),
            cancellation: CancellationToken::new(),
            state: AtomicU8::new(LIVE),
        }),
    };
    let first = options
        .heartbeat_interval()
        .min(options.ack_timeout.unwrap_or(SERVER_ACK_TIMEOUT) / 2);
    let _beating = AbortOnDropHandle::new(tokio::spawn(heartbeats(
        job.clone(),
        options.heartbeat_interval(),
        first,
    )));
    let outcome = tokio::select! {
        outcome = handler(job.clone()).with_context(context.clone()) => Some(outcome),
        () = expire.cancelled() => None,
    };
    if let Some(Err(error)) = &outcome {
        context.span().set_status(Status::error(error.to_string()));
    }
    context.span().end();
    settle(&shared, &job, outcome).await
}

/// The jobd acknowledgement timeout when the worker sets none.
const SERVER_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Reports what the handler's outcome calls for, but the completion, which is batched.
async fn settle(
    shared: &Shared,
    job: &JobContext,
    outcome: Option<std::result::Result<Bytes, BoxError>>,
) -> Option<Completion> {
    let (id, token) = (job.id(), &job.inner.lease_token);
    match outcome {
        None => {
            job.inner.cancellation.cancel();
            let reason = format!("worker {} stopped", shared.options.worker_id);
            shared.client.release(id, token, reason).await;
            None
        }
        // Cancelled or lost: the lease is void, there is nothing to report.
        Some(_) if !job.is_live() => None,
        Some(Ok(result)) => Some(Completion {
            job_id: id.to_owned(),
            lease_token: token.clone(),
            result,
        }),
        Some(Err(error)) => {
            let retryable = !is_non_retryable(&error);
            shared
                .client
                .fail(id, token, describe(&error), retryable)
                .await;
            None
        }
    }
}

/// An error and its sources, for FailJob.
pub(super) fn describe(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
