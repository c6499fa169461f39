//! The sweeper: makes due scheduled jobs claimable, recovers jobs whose lease expired, and
//! forgets finished jobs whose retention has passed.
//!
//! Every jobd replica runs one. It sleeps until the earliest due time or lease expiry it saw
//! (at most `MAX_SLEEP`), so delayed and retried jobs become claimable within milliseconds of
//! their time without polling Redis in a tight loop; a replica that schedules a job wakes its
//! own sweeper at once. Several sweepers may race for the same job: every script re-checks its
//! condition atomically, so each promotion and each lease recovery happens exactly once.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{FailOutcome, JobState, QueueName, UnixMillis},
    store::{JobStore, StoreError},
    telemetry::Metrics,
};

/// The longest the sweeper sleeps: how late it can notice work another replica scheduled, or
/// a lease claimed elsewhere.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How often the list of queues is re-read from the registry.
const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Wakes a sweeper, e.g. after scheduling a job that may be due before it next looks.
#[derive(Clone, Default)]
pub struct SweeperHandle {
    wake: Arc<Notify>,
}

impl SweeperHandle {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

pub struct Sweeper {
    store: JobStore,
    handle: SweeperHandle,
    metrics: Metrics,
}

/// What one pass over a queue left to do.
struct Pass {
    /// The earliest future due time or lease expiry.
    next: Option<UnixMillis>,
    /// A batch was full: more may be due now.
    more: bool,
}

impl Sweeper {
    pub fn new(store: JobStore, metrics: Metrics) -> Self {
        Self {
            store,
            handle: SweeperHandle::default(),
            metrics,
        }
    }

    pub fn handle(&self) -> SweeperHandle {
        self.handle.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut queues: Vec<QueueName> = Vec::new();
        let mut queues_read: Option<Instant> = None;
        let mut failing = false;
        while !shutdown.is_cancelled() {
            if queues_read.is_none_or(|at| at.elapsed() >= QUEUE_REFRESH) {
                match self.store.queues().await {
                    Ok(found) => {
                        queues = found;
                        queues_read = Some(Instant::now());
                    }
                    Err(error) => report(&mut failing, &error),
                }
            }
            for queue in self.store.local_queues() {
                if !queues.contains(&queue) {
                    queues.push(queue);
                }
            }
            let mut wake_at = Instant::now() + MAX_SLEEP;
            let mut more = false;
            for queue in &queues {
                match self.pass(queue).await {
                    Ok(pass) => {
                        failing = false;
                        more |= pass.more;
                        if let Some(next) = pass.next {
                            let wait = next.0.saturating_sub(UnixMillis::now().0);
                            wake_at = wake_at.min(Instant::now() + Duration::from_millis(wait));
                        }
                    }
                    Err(error) => report(&mut failing, &error),
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.handle.wake.notified() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn pass(&self, queue: &QueueName) -> Result<Pass, StoreError> {
        let now = UnixMillis::now();
        let report = self.store.sweep(queue, now).await?;
        tracing::trace!(queue = %queue, ?report, "swept");
        let promoted = self.store.promote(queue, &report.due, now).await?;
        if promoted > 0 {
            tracing::debug!(queue = %queue, promoted, "scheduled jobs became claimable");
        }
        for id in &report.expired {
            let Some((outcome, ended)) = self.store.expire(id, now).await? else {
                continue; // Another replica, or a heartbeat, got there first.
            };
            self.metrics.lease_expired(queue);
            let Some(ended) = ended else { continue };
            match outcome {
                FailOutcome::RetryAt(at) => {
                    tracing::info!(job = %id, retry_at = at.0, "lease expired; retry scheduled");
                    self.metrics
                        .retried(queue, ended.kind.as_str(), "lease_expired");
                }
                FailOutcome::Failed => {
                    tracing::info!(job = %id, "lease expired; no attempts left, job failed");
                    self.metrics
                        .finished(queue, ended.kind.as_str(), JobState::Failed);
                }
            }
        }
        let full = |n: usize| n >= crate::store::SWEEP_BATCH;
        // Retries scheduled just now may be due soon: look at the schedule again then.
        let next = [report.next_due, report.next_expiry]
            .into_iter()
            .flatten()
            .min();
        Ok(Pass {
            next: if report.expired.is_empty() {
                next
            } else {
                Some(now)
            },
            more: full(report.due.len()) || full(report.expired.len()),
        })
    }
}

/// Logs the first error of a streak as a warning, the rest at debug level.
fn report(failing: &mut bool, error: &StoreError) {
    if *failing {
        tracing::debug!(%error, "sweep failed again");
    } else {
        tracing::warn!(%error, "sweep failed; retrying");
        *failing = true;
    }
}
