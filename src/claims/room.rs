//! A claim's room: the payload bytes its reply may carry, reserved before any job is read.
//!
//! Each look at a claim's queues first reserves room in the payload-bytes budget
//! (`Budget::reserve`): for as many jobs as it wants, each the size of the largest job of its
//! queue's last look that claimed any (`FIRST_GUESS` before the first; with several queues,
//! the largest of theirs), up to one reply's worth (`CLAIM_REPLY_BUDGET`), or what room there
//! is. The guess keeps reservations of small jobs small, so that many claims reserve at once
//! and still share script calls; it is kept per queue so that a queue of small jobs does not
//! make another queue's large ones miss their room (a look that misses reads its first
//! candidate for nothing and looks again). The claim script
//! takes no job whose size (`job_size`: its payload, its spec and 8 KiB, at least its
//! payload) does not fit in what is left of that room; a job left so stays ready, untouched:
//! no attempt, no event. Once the jobs are read, the reservation settles at their payload
//! bytes and travels with them to the reply (`ClaimedJobs`), which holds it until sent. So the
//! jobs a claim reads never take the budget past its limit, however many claims read at once.
//!
//! The first job is taken whatever its size only when the reservation is the whole budget
//! (nothing else is held), as a reply larger than the budget goes out alone
//! (`Budget::take_reply`). A first job that does not fit in a reservation that got all it
//! asked is looked for again with one reply's room, then with the whole budget. A first job
//! that does not fit in a reservation the budget held back refuses the claim (`Exhausted`).

use std::{collections::HashMap, sync::Mutex};

use super::{Asking, ClaimedJobs, Claims, Delivery, FIRST_GUESS};
use crate::{
    budgets::Exhausted,
    domain::{ClaimRequest, QueueName},
    store::{CLAIM_REPLY_BUDGET, Claimant, Share, StoreError},
    sync::lock,
};

/// A claim refused: Redis failed or refused it, or the payload-bytes budget had no room for
/// its first job.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// What a look at one queue, or at all of a claim's queues, got.
pub struct Looked {
    pub(super) jobs: ClaimedJobs,
    /// The room left: what the look was given, less its jobs' sizes.
    room: usize,
    /// Whether a job was left because it did not fit in the room.
    full: bool,
    /// The size of its largest job.
    largest: usize,
}

impl Looked {
    /// No job, the room as it was.
    pub(super) fn nothing(room: usize) -> Self {
        Self {
            jobs: ClaimedJobs::default(),
            room,
            full: false,
            largest: 0,
        }
    }

    /// A claimant's share of a claim call.
    pub(super) fn new(delivery: &Delivery, share: Share) -> Self {
        Self {
            jobs: ClaimedJobs::new(delivery, share.jobs),
            room: share.room,
            full: share.full,
            largest: share.largest,
        }
    }
}

impl Claims {
    /// One look at the claim's queues for `principal`, for up to `max` jobs within the room it
    /// reserves first (see the module's documentation); `armed`: the stamp of a waiting claim's
    /// wake-up. The jobs carry their reservation, settled at their payload bytes.
    pub(super) async fn look(
        &self,
        request: &ClaimRequest,
        max: usize,
        principal: Option<&str>,
        armed: Option<u64>,
    ) -> Result<ClaimedJobs, ClaimError> {
        let guess = self.0.job_sizes.guess(&request.queues).saturating_mul(max);
        let mut most = guess.min(CLAIM_REPLY_BUDGET) as u64;
        loop {
            let budget = &self.0.payload;
            let mut permit = budget.reserve(principal, most, self.0.patience).await?;
            // Beyond a first job taken alone, no reply carries more than one reply's room.
            let room = permit.amount().min(CLAIM_REPLY_BUDGET as u64) as usize;
            let looked = self
                .try_queues(request, max, armed, room, permit.is_whole())
                .await?;
            let mut claimed = looked.jobs;
            if !claimed.is_empty() {
                let bytes = claimed.iter().map(|job| job.job.payload.len() as u64);
                permit.settle(bytes.sum());
                claimed.hold(permit);
                return Ok(claimed);
            }
            if !looked.full {
                return Ok(claimed);
            }
            // Its first job did not fit: the budget held the room back, or the job is larger
            // than the room asked for, which is asked for again: one reply's, then the whole
            // budget, for the job to go alone.
            if let Some(short) = permit.shortfall() {
                return Err(short.clone().into());
            }
            if permit.is_whole() || most == u64::MAX {
                return Ok(claimed);
            }
            most = match most < CLAIM_REPLY_BUDGET as u64 {
                true => CLAIM_REPLY_BUDGET as u64,
                false => u64::MAX,
            };
        }
    }

    /// Claims up to `max` jobs within `room` (`alone`: the first whatever its size), trying
    /// each queue in the worker's order of preference. An error drops what earlier queues
    /// gave, which puts it back.
    async fn try_queues(
        &self,
        request: &ClaimRequest,
        max: usize,
        armed: Option<u64>,
        mut room: usize,
        mut alone: bool,
    ) -> Result<Looked, StoreError> {
        let mut claimed = ClaimedJobs::default();
        let (mut full, mut largest) = (false, 0);
        for queue in &request.queues {
            let claimant = Claimant {
                worker: request.worker.clone(),
                lease: request.lease,
                want: max - claimed.len(),
                ack_timeout: request.ack_timeout,
                room,
                alone,
            };
            let looked = self.claim_queue(queue, Asking { claimant, armed }).await?;
            if !looked.jobs.is_empty() {
                self.0.job_sizes.record(queue, looked.largest);
            }
            room = looked.room;
            full = looked.full;
            largest = largest.max(looked.largest);
            alone &= looked.jobs.is_empty();
            claimed.append(looked.jobs);
            if claimed.len() >= max || full {
                break;
            }
        }
        Ok(Looked {
            jobs: claimed,
            room,
            full,
            largest,
        })
    }
}

/// Queues whose job size is kept at most; past it, the sizes are forgotten and guessed afresh.
const SIZES_KEPT: usize = 4096;

/// The size of the largest job of each queue's last look that claimed any, for the queues
/// claimed from lately (at most `SIZES_KEPT`, about 400 KiB).
#[derive(Default)]
pub(super) struct JobSizes(Mutex<HashMap<QueueName, usize>>);

impl JobSizes {
    /// The size to reserve per job for a claim of `queues`: the largest of theirs.
    fn guess(&self, queues: &[QueueName]) -> usize {
        let sizes = lock(&self.0);
        let size = |queue| sizes.get(queue).copied().unwrap_or(FIRST_GUESS);
        queues.iter().map(size).max().unwrap_or(FIRST_GUESS)
    }

    fn record(&self, queue: &QueueName, largest: usize) {
        let mut sizes = lock(&self.0);
        // A queue already known is updated in place: no name copied on a claim's hot path.
        if let Some(size) = sizes.get_mut(queue) {
            *size = largest;
            return;
        }
        if sizes.len() >= SIZES_KEPT {
            sizes.clear();
        }
        sizes.insert(queue.clone(), largest);
    }
}
