//! The sweeper: makes due scheduled jobs claimable, ends claims whose deadline passed (a job
//! its worker never acknowledged goes back to its queue, a lease that ran out ends its
//! attempt), trims the indexes of finished jobs whose retention has passed, and forgets
//! queues left without jobs.
//!
//! Every jobd replica runs one. It works from the due index (`store::JobStore::take_due`): a
//! round takes the queues whose time has come, at most `DUE_BATCH`, visits them, and sleeps
//! until the index's next time, `POLL` at most, or until this replica's handle wakes it. Its
//! cost is the queues that have something due, whatever the number of queues: a queue whose
//! jobs are all ready, or whose next job is due in a year, costs nothing until then. Times are
//! Redis's. A taken queue is left to its taker for `VISIT_LEASE`, so replicas share the due
//! queues rather than all visiting each; and several sweepers racing for one job are safe:
//! every script re-checks its condition atomically, so each promotion and each end of a claim
//! happens exactly once.

use std::time::Duration;

use futures::{StreamExt, stream};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{AttemptEnd, FailOutcome, JobId, JobState, QueueName, UnixMillis},
    store::{Expired, JobStore, NextVisit, StoreError, SweepReport},
    telemetry::Metrics,
};

/// The longest the sweeper goes without reading the due index: how late it can notice a due
/// time another replica set earlier than any it knew of (its own replica's wake it at once).
pub const POLL: Duration = Duration::from_secs(1);

/// The most due queues one round takes.
const DUE_BATCH: usize = 200;

/// How many queues of a round have their work (due jobs, expired claims) done at once; their
/// sweeps share one round trip, and so do their writes to the due index.
const VISITS_AT_ONCE: usize = 16;

/// How long a queue taken by one sweeper is left to it: how late a queue's due work can be
/// when the replica visiting it dies mid-visit, or its visit fails.
pub const VISIT_LEASE: Duration = Duration::from_secs(5);

/// How many queues of an older jobd's registry one round moves into the due index.
const MIGRATION_BATCH: usize = 1000;

/// How often the registry of older jobd versions is looked at once empty: replicas of an
/// older version, during a rolling upgrade, may still add to it.
const MIGRATION_CHECK: Duration = Duration::from_secs(60);

/// Wakes the sweeper of this replica: after scheduling a job, or on a call refused for a
/// passed deadline, so that it reads the due index at once. Cheap to clone.
#[derive(Clone, Default)]
pub struct SweeperHandle {
    wake: std::sync::Arc<Notify>,
}

impl SweeperHandle {
    /// Something in `queue` may be due before the sweeper's next read of the due index (the
    /// index has heard of it already): it reads the index at once.
    pub fn wake(&self, _queue: &QueueName) {
        self.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct Sweeper {
    store: JobStore,
    handle: SweeperHandle,
    metrics: Metrics,
}

impl Sweeper {
    pub fn new(store: JobStore, metrics: Metrics, handle: SweeperHandle) -> Self {
        Self {
            store,
            handle,
            metrics,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failing = false;
        let mut migration = Instant::now();
        while !shutdown.is_cancelled() {
            if migration <= Instant::now() {
                match self.store.migrate_legacy_registry(MIGRATION_BATCH).await {
                    Ok(0) => migration = Instant::now() + MIGRATION_CHECK,
                    Ok(_) => {}
                    Err(error) => report(&mut failing, &error),
                }
            }
            let sleep = match self.round().await {
                Ok(None) => continue,
                Ok(Some(sleep)) => {
                    failing = false;
                    sleep
                }
                Err(error) => {
                    report(&mut failing, &error);
                    POLL
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.handle.wake.notified() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Takes the due queues and visits them; how long to sleep then, or `None` when more
    /// queues are due at once.
    async fn round(&self) -> Result<Option<Duration>, StoreError> {
        let taken = self.store.take_due(DUE_BATCH, VISIT_LEASE).await?;
        let full = taken.queues.len() >= DUE_BATCH;
        let soonest = self.visit(taken.queues).await?;
        if full || soonest == Some(Duration::ZERO) {
            return Ok(None);
        }
        let until = |at: UnixMillis| at.since(taken.now);
        let next = taken.next.map_or(POLL, until);
        Ok(Some(
            soonest.map_or(next, |soonest| soonest.min(next)).min(POLL),
        ))
    }

    /// Visits the taken queues: their sweeps, one round trip for all; the work each found
    /// (the jobs due, the claims expired), `VISITS_AT_ONCE` queues at once; then their next
    /// times written to the due index (or the queues forgotten), two round trips for all.
    /// The soonest next visit among them (zero: more to do at once), if any has one.
    async fn visit(&self, queues: Vec<QueueName>) -> Result<Option<Duration>, StoreError> {
        if queues.is_empty() {
            return Ok(None);
        }
        let reports = self.store.sweep_each(&queues).await;
        let work = queues.into_iter().zip(reports).map(|(queue, report)| {
            let sweeper = self.clone();
            async move {
                let worked = async {
                    let report = report?;
                    sweeper.work(&queue, &report).await?;
                    Ok::<_, StoreError>(report)
                };
                match worked.await {
                    Ok(report) => Some((queue, report)),
                    Err(error) => {
                        tracing::warn!(%error, queue = %queue, "sweeping a queue failed");
                        None
                    }
                }
            }
        });
        let done: Vec<(QueueName, SweepReport)> = stream::iter(work)
            .buffer_unordered(VISITS_AT_ONCE)
            .filter_map(std::future::ready)
            .collect()
            .await;
        // Written after the work: a queue whose sweep or work failed stays taken until its
        // VISIT_LEASE passes, and is due again then. A sweep that found work due settled a
        // time no later than now, so the queue is visited again at once, and that sweep sees
        // what this one changed.
        let soonest = done
            .iter()
            .filter_map(|(_, report)| match report.next {
                NextVisit::At(at) => Some(at.since(report.now)),
                NextVisit::Idle | NextVisit::Forget => None,
            })
            .min();
        let next: Vec<(QueueName, NextVisit)> = done
            .into_iter()
            .map(|(queue, report)| (queue, report.next))
            .collect();
        self.store.index(&next).await?;
        Ok(soonest)
    }

    /// The work one sweep of `queue` found: the jobs due made claimable, the claims expired
    /// ended.
    async fn work(&self, queue: &QueueName, report: &SweepReport) -> Result<(), StoreError> {
        tracing::trace!(queue = %queue, ?report, "swept");
        let promoted = self.store.promote(queue, &report.due).await?;
        if promoted > 0 {
            tracing::debug!(queue = %queue, promoted, "scheduled jobs became claimable");
        }
        for id in &report.expired {
            match self.store.expire(id).await? {
                // Another replica, or a heartbeat, got there first.
                None => {}
                Some(Expired::Released) => {
                    tracing::info!(job = %id, "not acknowledged by its worker in time; back in its queue");
                    self.metrics.released(queue, 1);
                }
                Some(Expired::AttemptEnded(outcome, ended)) => {
                    self.ended(queue, id, outcome, &ended)
                }
            }
        }
        if report.next == NextVisit::Forget {
            tracing::debug!(queue = %queue, "queue has no jobs left; forgotten");
        }
        Ok(())
    }

    /// Reports an attempt that ended because its claim expired.
    fn ended(&self, queue: &QueueName, id: &JobId, outcome: FailOutcome, ended: &AttemptEnd) {
        self.metrics.lease_expired(queue);
        match outcome {
            FailOutcome::RetryAt(at) => {
                tracing::info!(job = %id, retry_at = at.0, "claim expired; retry scheduled");
                self.metrics
                    .retried(queue, ended.kind.as_str(), "lease_expired");
            }
            FailOutcome::Failed => {
                tracing::info!(job = %id, "claim expired; no attempts left, job failed");
                self.metrics
                    .finished(queue, ended.kind.as_str(), JobState::Failed);
            }
        }
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
