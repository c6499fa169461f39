//! Hand-off: a submission gives its new jobs straight to claims waiting on this process, in
//! its own script call, instead of queueing them for those claims to find.
//!
//! A submission takes as many parked claims of its queue as it has jobs ready to run, and its
//! script claims the jobs for them, provided the queue's ready set is empty, so that no job
//! waiting longer, or of higher priority, is passed over; otherwise the jobs are queued as
//! usual and the claims look again. A handed-off job skips the ready set, the queue wake-up,
//! the claim's read of the queue and the claim's own script call: two Redis round trips and a
//! pub/sub message fewer between submission and start, and less work for Redis. (Temporal's
//! matching service calls this a sync match.)

use std::time::Duration;

use super::{ClaimedJobs, Delivery, parked::Taken};
use crate::{
    budgets::Budget,
    domain::{Claimed, Job, JobId, LeaseToken, NewJob, QueueName},
    store::{CLAIM_REPLY_BUDGET, Connection, HandOff, StoreError},
    telemetry::Metrics,
};

/// The parked claims a submission took, and which of its jobs each gets. Every claim taken is
/// answered by `settle`, whatever the submission's call did; dropped unsettled, the claims get
/// no job and look again.
pub struct Handing {
    queue: QueueName,
    taken: Vec<Taken>,
    /// Which claim of `taken` each hand-off is for, in the order of `hand_offs`.
    claims: Vec<usize>,
    hand_offs: Vec<HandOff>,
    /// The job and lease token of each hand-off, to put back should the call fail.
    leases: Vec<(JobId, LeaseToken)>,
    delivery: Delivery,
    metrics: Metrics,
}

impl Handing {
    /// Deals the submission's jobs that start at once to the claims `taken`, as many as each
    /// wants and its reply holds (`sizes`: what each job weighs in a reply).
    pub(super) fn new(
        queue: &QueueName,
        jobs: &[(JobId, NewJob)],
        sizes: &[usize],
        taken: Vec<Taken>,
        default_lease: Duration,
        delivery: Delivery,
        metrics: Metrics,
    ) -> Self {
        let ready_now: Vec<usize> = (0..jobs.len())
            .filter(|&job| jobs[job].1.start.is_none())
            .collect();
        let offered: Vec<(i32, usize)> = ready_now
            .iter()
            .map(|&job| (jobs[job].1.priority, sizes[job]))
            .collect();
        let rooms: Vec<Room> = taken.iter().map(Room::reply).collect();
        let (claims, hand_offs): (Vec<usize>, Vec<HandOff>) = deal(&offered, &rooms)
            .into_iter()
            .map(|(ready, claim)| {
                let job = ready_now[ready];
                let asked = &taken[claim];
                let hand_off = HandOff {
                    job,
                    worker: asked.worker.clone(),
                    token: LeaseToken::generate(),
                    lease: asked.lease.or(jobs[job].1.lease).unwrap_or(default_lease),
                    ack_timeout: asked.ack_timeout,
                };
                (claim, hand_off)
            })
            .unzip();
        let leases = hand_offs
            .iter()
            .map(|hand_off| (jobs[hand_off.job].0.clone(), hand_off.token.clone()))
            .collect();
        Self {
            queue: queue.clone(),
            taken,
            claims,
            hand_offs,
            leases,
            delivery,
            metrics,
        }
    }

    /// Counts each claim's jobs' payloads in `budget` (`Budget::take_reply`) before the
    /// submission's call hands them over: a claim whose payloads do not fit is dealt none, its
    /// jobs queued as usual, and looks again.
    pub fn within(mut self, budget: &Budget, jobs: &[(JobId, NewJob)]) -> Self {
        // Per claim, the payload bytes of the jobs dealt to it; `None`: it was dealt none.
        let mut bytes: Vec<Option<u64>> = vec![None; self.taken.len()];
        for (hand_off, &claim) in self.hand_offs.iter().zip(&self.claims) {
            let payload = jobs[hand_off.job].1.payload.len() as u64;
            *bytes[claim].get_or_insert(0) += payload;
        }
        let mut dealt = vec![false; self.taken.len()];
        for (claim, taken) in self.taken.iter_mut().enumerate() {
            if let Some(bytes) = bytes[claim] {
                taken.payload = budget.take_reply(taken.principal.as_deref(), bytes).ok();
                dealt[claim] = taken.payload.is_some();
            }
        }
        let mut kept = self.claims.iter().map(|&claim| dealt[claim]);
        self.hand_offs.retain(|_| kept.next().unwrap_or(false));
        let mut kept = self.claims.iter().map(|&claim| dealt[claim]);
        self.leases.retain(|_| kept.next().unwrap_or(false));
        self.claims.retain(|&claim| dealt[claim]);
        self
    }

    /// Whether no claim was taken: the submission need not wait for its call to answer any.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// The hand-offs for the submission's script.
    pub fn hand_offs(&self) -> &[HandOff] {
        &self.hand_offs
    }

    /// Answers the claims after the submission's call on `connection`: `Ok(handed)`, each
    /// claim gets the jobs whose hand-offs the script made (`handed[job]`: the job as written,
    /// `None` or absent when its hand-off was not made), and a claim given none looks again;
    /// `Err`, the call failed but may have made them all the same, so their jobs go back to
    /// the queue.
    pub fn settle(self, outcome: Result<&[Option<&Job>], &StoreError>, connection: Connection) {
        let mut given: Vec<Vec<Claimed>> = self.taken.iter().map(|_| Vec::new()).collect();
        match outcome {
            Ok(handed) => {
                let mut count = 0;
                for (hand_off, &claim) in self.hand_offs.iter().zip(&self.claims) {
                    if let Some(Some(job)) = handed.get(hand_off.job) {
                        given[claim].push(started(hand_off, job));
                        count += 1;
                    }
                }
                if count > 0 {
                    self.metrics.handed_off(&self.queue, count);
                }
            }
            Err(error) => {
                self.delivery
                    .after_failed_call(error, connection, self.leases.clone());
            }
        }
        // A claim whose caller went away meanwhile drops its jobs, which puts them back.
        for (mut claim, jobs) in self.taken.into_iter().zip(given) {
            let mut handed = ClaimedJobs::new(&self.delivery, jobs);
            if let Some(mut permit) = claim.payload.take().filter(|_| !handed.is_empty()) {
                permit.settle(handed.iter().map(|job| job.job.payload.len() as u64).sum());
                handed.hold(permit);
            }
            claim.answer(handed);
        }
    }
}

/// A job handed off, as the script started it: from the time it wrote the job.
fn started(hand_off: &HandOff, job: &Job) -> Claimed {
    let at = job.created_at;
    let lease_expires_at = at.saturating_add(hand_off.lease);
    let ack_deadline = at.saturating_add(hand_off.ack_timeout.min(hand_off.lease));
    Claimed {
        job: job
            .clone()
            .started_by(&hand_off.worker, at, lease_expires_at, ack_deadline),
        token: hand_off.token.clone(),
        lease_expires_at,
        ack_deadline,
    }
}

/// What a claim may be dealt: how many jobs, the bytes of jobs (their sizes) that fit in its
/// room, and whether its first job is dealt whatever its size, as claim.lua deals them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub want: usize,
    pub bytes: usize,
    pub alone: bool,
}

impl Room {
    /// A taken claim's: what one reply holds, its first job whatever its size.
    fn reply(claim: &Taken) -> Self {
        Self {
            want: claim.want,
            bytes: CLAIM_REPLY_BUDGET,
            alone: true,
        }
    }
}

/// Which claim gets which job: jobs in priority order (submission order among equals) dealt
/// one at a time to the claims in turn, each up to what it wants and to its room, so that idle
/// workers each start one before any starts a second. `offered` are the jobs' priorities and
/// sizes; returns pairs of (job, claim) indexes into `offered` and `rooms`.
pub fn deal(offered: &[(i32, usize)], rooms: &[Room]) -> Vec<(usize, usize)> {
    let mut jobs: Vec<usize> = (0..offered.len()).collect();
    jobs.sort_by_key(|&job| std::cmp::Reverse(offered[job].0));
    let mut jobs = jobs.into_iter().peekable();
    let mut rooms = rooms.to_vec();
    let mut dealt = Vec::new();
    'rounds: while rooms.iter().any(|room| room.want > 0) {
        for (claim, room) in rooms.iter_mut().enumerate() {
            if room.want == 0 {
                continue;
            }
            let Some(&job) = jobs.peek() else {
                break 'rounds;
            };
            let size = offered[job].1;
            if size > room.bytes && !room.alone {
                // This claim's reply is full; the job goes to the next claim with room.
                room.want = 0;
                continue;
            }
            jobs.next();
            dealt.push((job, claim));
            room.want -= 1;
            room.bytes = room.bytes.saturating_sub(size);
            room.alone = false;
        }
    }
    dealt
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims wanting `wants` jobs, each with `bytes` of room, the first job alone or not.
    fn rooms(wants: &[usize], bytes: usize, alone: bool) -> Vec<Room> {
        wants
            .iter()
            .map(|&want| Room { want, bytes, alone })
            .collect()
    }

    #[test]
    fn jobs_are_dealt_one_per_claim_in_turn_by_priority() {
        let small = |priorities: &[i32]| -> Vec<(i32, usize)> {
            priorities.iter().map(|&priority| (priority, 1)).collect()
        };
        // Three jobs, two claims wanting 8: the first claim gets the two best jobs' first and
        // third, the second the one between.
        assert_eq!(
            deal(&small(&[0, 5, 0]), &rooms(&[8, 8], 100, false)),
            vec![(1, 0), (0, 1), (2, 0)]
        );
        // More claims than jobs: one job each, the rest get none.
        assert_eq!(
            deal(&small(&[0, 0]), &rooms(&[8, 8, 8], 100, false)),
            vec![(0, 0), (1, 1)]
        );
        // Wants are respected; jobs beyond them are not dealt.
        assert_eq!(
            deal(&small(&[0, 0, 0, 0, 0]), &rooms(&[1, 2], 100, false)),
            vec![(0, 0), (1, 1), (2, 1)]
        );
        assert!(deal(&[], &rooms(&[3], 100, false)).is_empty());
    }

    #[test]
    fn a_claim_gets_no_more_jobs_than_fit_in_its_room_and_one_alone_only_with_all_of_it() {
        // Jobs of 60 bytes, rooms of 100: each claim takes one, however many it wants.
        let big = [(0, 60), (0, 60), (0, 60)];
        assert_eq!(
            deal(&big, &rooms(&[5, 5], 100, false)),
            vec![(0, 0), (1, 1)]
        );
        // A job larger than the room goes to a claim that holds the whole budget, alone; to
        // no other.
        assert_eq!(
            deal(&[(0, 500), (0, 1)], &rooms(&[5], 100, true)),
            vec![(0, 0)]
        );
        assert!(deal(&[(0, 500)], &rooms(&[5, 5], 100, false)).is_empty());
        // A claim that could reserve no room is dealt nothing.
        assert!(deal(&[(0, 1)], &rooms(&[5], 0, false)).is_empty());
        // Small jobs fill a room.
        let mixed = [(0, 40), (0, 40), (0, 40)];
        assert_eq!(deal(&mixed, &rooms(&[5], 100, false)), vec![(0, 0), (1, 0)]);
    }
}
