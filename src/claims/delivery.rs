//! Claimed jobs on their way to their worker, and the way back for those that never reach it.
//!
//! A claim's jobs travel as `ClaimedJobs` from the script that claimed them to the response
//! that carries them to the worker: through a group-commit answer, a hand-off, a waiting claim.
//! Whatever drops them on the way puts them back in their queue at no cost (release.lua): a
//! cancelled or timed-out RPC drops its future and, with it, the channel its jobs were sent
//! on; an error cuts a claim short. `deliver`, as the response is built, is the only way out.
//! Past that point a reply lost on the wire is the acknowledgement deadline's business
//! (expire.lua), and a worker that dies with its jobs the lease's.
//!
//! A script call that claims may have claimed even when it failed: Redis ran it and the reply
//! was lost, or Redis runs it after jobd stopped waiting. So its caller puts back every token
//! it carried (`Delivery::after_failed_call`); those the call did not use release nothing.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    budgets::Permit,
    domain::{Claimed, JobId, LeaseToken},
    store::{Connection, Holder, JobStore, Released, StoreError},
    telemetry::Metrics,
};

/// The first pause before a release tries Redis again; each next one doubles, up to
/// `RELEASE_RETRY_MAX`.
const RELEASE_RETRY_FIRST: Duration = Duration::from_millis(100);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a release keeps trying an unavailable Redis at most: through a failover's pause,
/// not through a long outage, where failed calls would pile up tasks that all retry at once
/// when Redis is back; the jobs then go back at their acknowledgement deadline.
const RELEASE_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// The reason a RELEASED event gives for a job that never reached its worker.
const UNDELIVERED: &str = "the claim's reply never reached a worker";

/// Puts back jobs that never reached a worker, on tasks of their own. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    store: JobStore,
    /// Where the releases run, so that shutdown waits for them before closing Redis.
    tasks: TaskTracker,
    /// Cancelled when jobd shuts down: a release waiting to try Redis again gives up.
    shutdown: CancellationToken,
    metrics: Metrics,
}

/// Jobs claimed for one caller and not yet given to it, with the payload bytes reserved for
/// them (see `room`). Dropped undelivered, they are put back in their queues by a task of
/// their own.
#[derive(Default)]
pub struct ClaimedJobs {
    jobs: Vec<Claimed>,
    /// Where to put them back; every non-empty set has one.
    delivery: Option<Delivery>,
    /// Their payloads, counted in the payload-bytes budget before they were read (a look's
    /// reservation, settled) or handed off (`Handing::within`): every set with jobs that
    /// leaves `Claims` has it.
    payload: Option<Permit>,
}

impl ClaimedJobs {
    pub(super) fn new(delivery: &Delivery, jobs: Vec<Claimed>) -> Self {
        Self {
            jobs,
            delivery: Some(delivery.clone()),
            payload: None,
        }
    }

    /// Holds `permit`, their payloads' room, until they are delivered.
    pub(super) fn hold(&mut self, permit: Permit) {
        self.payload = Some(permit);
    }

    /// Adds `other`'s jobs to these.
    pub fn append(&mut self, mut other: ClaimedJobs) {
        if self.delivery.is_none() {
            self.delivery = other.delivery.take();
        }
        self.jobs.append(&mut other.jobs);
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Claimed> {
        self.jobs.iter()
    }

    /// The permit that counts their payloads in the payload-bytes budget, for the response to
    /// hold until sent.
    pub fn reserved(&mut self) -> Option<Permit> {
        self.payload.take()
    }

    /// The jobs, for the response that gives them to their worker.
    pub fn deliver(mut self) -> Vec<Claimed> {
        std::mem::take(&mut self.jobs)
    }
}

impl Drop for ClaimedJobs {
    fn drop(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let leases = self
            .jobs
            .drain(..)
            .map(|claimed| (claimed.job.id, claimed.token))
            .collect();
        if let Some(delivery) = self.delivery.take() {
            let connection = delivery.store.connection();
            delivery.release_later(connection, leases);
        }
    }
}

impl Delivery {
    pub fn new(
        store: JobStore,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            tasks,
            shutdown,
            metrics,
        }
    }

    /// After a script call that claims (a claim, or a submission's hand-offs) failed with
    /// `error` on `connection`: the call may have claimed all the same, so whatever the tokens
    /// it carried lease goes back. Not after a refusal for lack of memory, which refuses a
    /// script whole before it runs.
    pub fn after_failed_call(
        &self,
        error: &StoreError,
        connection: Connection,
        leases: Vec<(JobId, LeaseToken)>,
    ) {
        if !matches!(error, StoreError::OutOfMemory(_)) {
            self.release_later(connection, leases);
        }
    }

    /// Puts back, on a task of its own, the jobs leased with these tokens to a caller that
    /// will never receive them. While Redis is unavailable it tries again, pausing longer each
    /// time, until `RELEASE_RETRY_WINDOW` has passed or jobd shuts down; a job it could not
    /// put back goes back anyway at its acknowledgement deadline (see expire.lua).
    ///
    /// `connection` is that of the call that leased the jobs: Redis runs a connection's
    /// commands in order, so a release cannot overtake a claim still waiting in Redis.
    pub fn release_later(&self, connection: Connection, leases: Vec<(JobId, LeaseToken)>) {
        if leases.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(
                jobs = leases.len(),
                "claimed jobs dropped outside the runtime; they go back at their acknowledgement deadline"
            );
            return;
        }
        let delivery = self.clone();
        self.tasks
            .spawn(async move { delivery.release(connection, leases).await });
    }

    async fn release(&self, connection: Connection, leases: Vec<(JobId, LeaseToken)>) {
        let until = Instant::now() + RELEASE_RETRY_WINDOW;
        let mut pause = RELEASE_RETRY_FIRST;
        loop {
            let error = match self
                .store
                .release(&connection, &leases, UNDELIVERED, Holder::Undelivered)
                .await
            {
                Ok(released) => return self.count(&leases, &released),
                Err(error) => error,
            };
            let retry =
                matches!(error, StoreError::Unavailable(_)) && Instant::now() + pause < until;
            let resumed = retry
                && tokio::select! {
                    () = tokio::time::sleep(pause) => true,
                    () = self.shutdown.cancelled() => false,
                };
            if !resumed {
                tracing::warn!(
                    error = %error,
                    jobs = leases.len(),
                    "could not put back claimed jobs that never reached a worker; they go back at their acknowledgement deadline"
                );
                return;
            }
            pause = (pause * 2).min(RELEASE_RETRY_MAX);
        }
    }

    /// Logs and counts the jobs put back now.
    fn count(&self, leases: &[(JobId, LeaseToken)], released: &[Released]) {
        let mut by_queue = std::collections::BTreeMap::new();
        for ((id, _), released) in leases.iter().zip(released) {
            if matches!(released, Released::Now) {
                *by_queue.entry(id.queue()).or_insert(0) += 1;
            }
        }
        for (queue, count) in by_queue {
            tracing::info!(queue = %queue, jobs = count, "put back claimed jobs that never reached a worker");
            self.metrics.released(queue, count);
        }
    }
}
