//! Claims: a worker's request for jobs, from its first look at its queues to the jobs in its
//! reply. A claim tries its queues in its order of preference; one that finds nothing and may
//! wait parks on this process (`parked`), where a submission can hand it jobs directly
//! (`handoff`), and wakes when the event hub hears of jobs for its queues; claims of one queue
//! that arrive together share one script call (group commit). Each look first reserves the
//! room its jobs' payloads may take in the payload-bytes budget, and claims no job that does
//! not fit (`room`). The jobs travel to the reply as `ClaimedJobs`, with their payloads'
//! permit, and put themselves back if they never get there (`delivery`).

mod delivery;
mod handoff;
mod looks;
mod parked;
mod room;

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use delivery::{ClaimedJobs, Delivery};
pub use handoff::{Handing, deal};
pub use room::ClaimError;

use crate::{
    budgets::{Budget, Exhausted, Permit},
    domain::{ClaimRequest, JobId, NewJob, QueueName},
    events::{EventHub, QueueWaiter, Wakeup},
    group_commit::{Batcher, Pending},
    store::{ClaimOutcome, Claimant, JobStore},
    telemetry::Metrics,
};
use looks::{Drained, Looks};
use parked::ParkedClaims;
use room::{JobSizes, Looked};

/// What a look reserves per job it wants before any look claimed a job (see `room`): small,
/// so that a burst of claims of empty queues reserves little; a larger job is asked for again.
const FIRST_GUESS: usize = 64 * 1024;

/// The claims of this process. Cheap to clone.
#[derive(Clone)]
pub struct Claims(Arc<Inner>);

struct Inner {
    store: JobStore,
    hub: EventHub,
    parked: ParkedClaims,
    /// Claims that may wait: at most so many, in all and per principal.
    waiting: Budget,
    /// The payload bytes of replies, which a claim reserves before it reads its jobs.
    payload: Budget,
    /// The longest a claim waits for other claims' reservations to settle: the command timeout.
    patience: Duration,
    /// Each queue's job size to reserve room for, per job a look wants (see `room`).
    job_sizes: JobSizes,
    /// Claims of one queue waiting to share a script call.
    batcher: Batcher<Asking, Looked>,
    /// The looks at queues, numbered as they start (see `looks`).
    looks: Looks,
    delivery: Delivery,
    metrics: Metrics,
    /// Lease for a handed-off job when neither the claim nor the job names one.
    default_lease: Duration,
    /// Cancelled when jobd shuts down: waiting claims return with no job.
    shutdown: CancellationToken,
}

/// A claim registered with the hub to wait for jobs, armed for its first look, and counted in
/// the waiting-claims budget until it is dropped.
pub struct Registration {
    waiter: QueueWaiter,
    /// The wake-up armed at registration, with its stamp (see `looks`).
    armed: Option<(Wakeup, u64)>,
    _permit: Permit,
}

/// A claim waiting for a look at one queue: what it asks for, and, for a waiting claim, the
/// stamp of its armed wake-up.
pub struct Asking {
    claimant: Claimant,
    armed: Option<u64>,
}

impl Registration {
    /// The wake-up armed at registration, the first time; a newly armed one after that; each
    /// with its stamp, taken once it is armed.
    fn arm(&mut self, looks: &Looks) -> (Wakeup, u64) {
        self.armed.take().unwrap_or_else(|| {
            let wakeup = self.waiter.arm();
            (wakeup, looks.stamp())
        })
    }
}

impl Claims {
    pub fn new(
        store: JobStore,
        hub: EventHub,
        metrics: Metrics,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        settings: ClaimSettings,
    ) -> Self {
        let delivery = Delivery::new(
            store.clone(),
            tasks.clone(),
            shutdown.clone(),
            metrics.clone(),
        );
        Self(Arc::new(Inner {
            store,
            hub,
            parked: ParkedClaims::default(),
            waiting: settings.waiting,
            payload: settings.payload,
            patience: settings.command_timeout,
            job_sizes: JobSizes::default(),
            batcher: Batcher::new(tasks, settings.command_timeout),
            looks: Looks::default(),
            delivery,
            metrics,
            default_lease: settings.default_lease,
            shutdown,
        }))
    }

    /// Claims up to `max` jobs for `principal`, waiting up to the claim's wait for the first
    /// (`registration`, from `register`); none once the wait is over or jobd shuts down.
    /// Refused when the payload-bytes budget has no room for the first job found (see `room`).
    pub async fn claim(
        &self,
        request: &ClaimRequest,
        max: usize,
        principal: Option<&str>,
        registration: Option<Registration>,
    ) -> Result<ClaimedJobs, ClaimError> {
        self.claim_with(request, max, principal, registration, false)
            .await
    }

    /// Registers a claim that waits on the hub, armed from now on: a job announced after this
    /// wakes it. None for a claim that does not wait. A waiting claim holds no Redis
    /// connection; the hub wakes one waiter per announced job. Refused, before anything is
    /// done, when the waiting-claims budget of the process or of `principal` is used up.
    pub fn register(
        &self,
        request: &ClaimRequest,
        principal: Option<&str>,
    ) -> Result<Option<Registration>, Exhausted> {
        if request.wait.is_zero() {
            return Ok(None);
        }
        let permit = self.0.waiting.take(principal, 1)?;
        let mut waiter = self.0.hub.wait_for_queues(&request.queues);
        let wakeup = waiter.arm();
        Ok(Some(Registration {
            armed: Some((wakeup, self.0.looks.stamp())),
            waiter,
            _permit: permit,
        }))
    }

    /// The jobs a completion's `next` claims for `principal`, registered before the completions
    /// were written: none when the claim fails (Redis full or away, no room in the payload-bytes
    /// budget), since the completions are recorded and their answer must say so; the worker's
    /// next claim meets the error itself. `completed`
    /// are the jobs whose completion was recorded, each with whether its queue then had ready
    /// jobs: a claim of a single queue that had none waits at once instead of reading it.
    pub async fn after_completion<'a>(
        &self,
        request: &ClaimRequest,
        max: usize,
        principal: Option<&str>,
        registration: Option<Registration>,
        completed: impl IntoIterator<Item = (&'a JobId, bool)>,
    ) -> ClaimedJobs {
        let seen_empty = match request.queues.as_slice() {
            // With several queues, the first look must take them in the worker's order.
            [queue] => completed
                .into_iter()
                .any(|(id, queue_has_ready)| id.queue() == queue && !queue_has_ready),
            _ => false,
        };
        match self
            .claim_with(request, max, principal, registration, seen_empty)
            .await
        {
            Ok(claimed) => claimed,
            Err(ClaimError::Exhausted(exhausted)) => {
                tracing::debug!(%exhausted, "completion recorded; the next claim found no room and claims nothing");
                ClaimedJobs::default()
            }
            Err(ClaimError::Store(error)) => {
                tracing::warn!(%error, "completion recorded; the next claim failed and claims nothing");
                ClaimedJobs::default()
            }
        }
    }

    /// Takes claims parked on `queue` for a submission's jobs and deals them the jobs that
    /// start at once (`sizes`: what each weighs in a reply); a claim whose jobs' payloads do
    /// not fit in the payload-bytes budget now is dealt none (see `Handing::within`).
    pub fn hand_off(
        &self,
        queue: &QueueName,
        jobs: &[(JobId, NewJob)],
        sizes: &[usize],
    ) -> Handing {
        let ready_now = jobs.iter().filter(|(_, job)| job.start.is_none()).count();
        let taken = match ready_now {
            0 => Vec::new(),
            most => self.0.parked.take(queue, most),
        };
        let handing = Handing::new(
            queue,
            jobs,
            sizes,
            taken,
            self.0.default_lease,
            self.0.delivery.clone(),
            self.0.metrics.clone(),
        );
        handing.within(&self.0.payload, jobs)
    }

    /// Claims as `claim` does, with `registration` made already. `seen_empty`: its queue was
    /// seen without ready jobs since then, so a waiting claim waits at once instead of reading
    /// the queue first.
    async fn claim_with(
        &self,
        request: &ClaimRequest,
        max: usize,
        principal: Option<&str>,
        mut registration: Option<Registration>,
        mut seen_empty: bool,
    ) -> Result<ClaimedJobs, ClaimError> {
        let deadline = Instant::now() + request.wait;
        // Counted as waiting from its first park, once it found nothing.
        let mut gauge = None;
        loop {
            let armed = registration.as_mut().map(|r| r.arm(&self.0.looks));
            let (wakeup, stamp) = armed.unzip();
            let claimed = match (std::mem::take(&mut seen_empty), &wakeup) {
                (true, Some(_)) => ClaimedJobs::default(),
                _ => self.look(request, max, principal, stamp).await?,
            };
            if !claimed.is_empty() {
                return Ok(self.started(claimed));
            }
            let Some(wakeup) = wakeup else {
                return Ok(ClaimedJobs::default());
            };
            // Parked, a job submitted through this process comes straight to this claim; one
            // submitted elsewhere wakes it to look again.
            let mut parked = self.0.parked.park(
                &request.queues,
                principal,
                &request.worker,
                request.lease,
                max,
                request.ack_timeout,
            );
            gauge.get_or_insert_with(|| self.0.metrics.waiting_claim());
            let (handed, stop) = tokio::select! {
                handed = parked.handed() => (Some(handed), false),
                () = wakeup => (None, false),
                () = tokio::time::sleep_until(deadline) => (None, true),
                () = self.0.shutdown.cancelled() => (None, true),
            };
            // A submission may have taken this claim meanwhile: leaving gets what it hands over.
            let handed = match handed {
                Some(handed) => handed,
                None => parked.leave().await,
            };
            if !handed.is_empty() {
                return Ok(self.started(handed));
            }
            if stop {
                return Ok(ClaimedJobs::default());
            }
        }
    }

    /// Claims from `queue`: claims of it that arrive while one is being made share the next
    /// script call.
    async fn claim_queue(
        &self,
        queue: &QueueName,
        asking: Asking,
    ) -> Result<Looked, crate::store::StoreError> {
        let claims = self.clone();
        let lane = queue.clone();
        // The lane's runner keeps the first caller's closure, and with it this lane's record.
        let drained = Drained::default();
        self.0
            .batcher
            .run(queue, asking, move |batch| {
                let (claims, queue, drained) = (claims.clone(), lane.clone(), drained.clone());
                async move { claims.claim_batch(&queue, batch, &drained).await }
            })
            .await
    }

    /// Makes the claims of a batch with one store call, and answers each. Waiting claims armed
    /// before an earlier look of the lane found the queue empty are answered with no job, at
    /// once (see `looks`).
    async fn claim_batch(
        &self,
        queue: &QueueName,
        batch: Vec<Pending<Asking, Looked>>,
        drained: &Drained,
    ) {
        let (covered, batch): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|pending| drained.covers(pending.op.armed));
        for pending in covered {
            let room = pending.op.claimant.room;
            pending.answer(Ok(Looked::nothing(room)));
        }
        if batch.is_empty() {
            return;
        }
        let (claimants, replies): (Vec<Claimant>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.op.claimant, pending.reply))
            .unzip();
        let connection = self.0.store.connection();
        let look = self.0.looks.start();
        match self.0.store.claim(&connection, queue, &claimants).await {
            Ok(ClaimOutcome {
                shares,
                drained: empty,
            }) => {
                if empty {
                    drained.record(look);
                }
                for (reply, share) in replies.into_iter().zip(shares) {
                    reply.answer(Ok(Looked::new(&self.0.delivery, share)));
                }
            }
            Err(failure) => {
                let mut leases = failure.uncertain;
                leases.extend(
                    failure
                        .claimed
                        .into_iter()
                        .map(|job| (job.job.id, job.token)),
                );
                self.0
                    .delivery
                    .after_failed_call(&failure.error, connection, leases);
                for reply in replies {
                    reply.answer(Err(failure.error.clone()));
                }
            }
        }
    }

    /// Records how long the jobs just claimed for the first time waited, by Redis's clock,
    /// which recorded both times.
    fn started(&self, claimed: ClaimedJobs) -> ClaimedJobs {
        for first in claimed.iter().filter(|claimed| claimed.job.attempt == 1) {
            if let Some(started) = first.job.started_at {
                self.0
                    .metrics
                    .queue_wait(first.job.queue(), started.since(first.job.created_at));
            }
        }
        claimed
    }
}

/// The settings claims follow.
#[derive(Clone)]
pub struct ClaimSettings {
    /// The waiting-claims budget.
    pub waiting: Budget,
    /// The payload-bytes budget, of which a claim reserves its reply's room.
    pub payload: Budget,
    /// Lease for a handed-off job when neither the claim nor the job names one.
    pub default_lease: Duration,
    /// The longest a claim waits for Redis, from its arrival, and for other claims'
    /// reservations of payload bytes to settle.
    pub command_timeout: Duration,
}
