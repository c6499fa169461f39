//! Hand-off: a submission gives its new jobs straight to claims waiting on this process, in
//! its own script call, instead of queueing them for those claims to find.
//!
//! A waiting claim parks here once it has found its queues empty. A submission takes as many
//! parked claims of its queue as it has jobs ready to run, and its script claims the jobs for
//! them, provided the queue's ready set is empty, so that no job waiting longer, or of higher
//! priority, is passed over; otherwise the jobs are queued as usual and the claims look again.
//! A handed-off job skips the ready set, the queue wake-up, the claim's read of the queue and
//! the claim's own script call: two Redis round trips and a pub/sub message fewer between
//! submission and start, and less work for Redis. (Temporal's matching service calls this a
//! sync match.)

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use fred::types::Value;
use tokio::sync::oneshot;

use super::{
    CLAIM_REPLY_BUDGET, JobStore, Result, StoreError,
    codec::{EventStart, event_head},
    millis,
    release::ClaimedJobs,
    scripts::{LuaScript, Scripts},
};
use crate::{
    domain::{Claimed, Job, JobId, LeaseToken, NewJob, QueueName, UnixMillis, WorkerId},
    sync::lock,
};

/// The claims parked on this process, per queue, longest waiting first. Cheap to clone.
#[derive(Clone, Default)]
pub struct ParkedClaims {
    queues: Arc<Mutex<HashMap<QueueName, VecDeque<Arc<Slot>>>>>,
}

/// A parked claim, as submissions see it.
struct Slot {
    worker: WorkerId,
    lease: Option<Duration>,
    want: usize,
    ack_timeout: Duration,
    /// Taken by the one submission that serves the claim; gone once the claim stops waiting.
    answer: Mutex<Option<oneshot::Sender<ClaimedJobs>>>,
}

/// A claim's place among the parked claims; dropping it leaves.
pub struct Parked {
    claims: ParkedClaims,
    slot: Arc<Slot>,
    queues: Vec<QueueName>,
    handed: oneshot::Receiver<ClaimedJobs>,
}

/// A parked claim a submission took, to be answered after its script call.
pub struct Taken {
    pub worker: WorkerId,
    pub lease: Option<Duration>,
    pub want: usize,
    pub ack_timeout: Duration,
    answer: oneshot::Sender<ClaimedJobs>,
}

/// The parked claims a submission took, and which of its jobs each gets.
pub(super) struct Handing {
    queue: QueueName,
    taken: Vec<Taken>,
    handoffs: Vec<Handoff>,
}

/// A job of a submission given to a parked claim: indexes into the submission's jobs and the
/// claims taken.
struct Handoff {
    job: usize,
    claim: usize,
    token: LeaseToken,
    lease: Duration,
}

impl JobStore {
    /// Parks a claim that found `queues` empty, so that a submission on this process can hand
    /// it jobs directly. It stays parked until the `Parked` is dropped.
    pub fn park(
        &self,
        queues: &[QueueName],
        worker: &WorkerId,
        lease: Option<Duration>,
        want: usize,
        ack_timeout: Duration,
    ) -> Parked {
        self.parked.park(queues, worker, lease, want, ack_timeout)
    }

    /// Takes parked claims of `queue` for the submission's jobs that start at once (`sizes`:
    /// what each job weighs in a claim's reply) and deals the jobs to them, adding each
    /// hand-off to the script's arguments: 6 values, as the submission scripts read them.
    pub(super) fn hand_off(
        &self,
        queue: &QueueName,
        jobs: &[(JobId, NewJob)],
        sizes: &[usize],
        args: &mut Vec<Value>,
    ) -> Handing {
        let ready_now: Vec<usize> = (0..jobs.len())
            .filter(|&job| jobs[job].1.start.is_none())
            .collect();
        let taken = match ready_now.len() {
            0 => Vec::new(),
            most => self.parked.take(queue, most),
        };
        let offered: Vec<(i32, usize)> = ready_now
            .iter()
            .map(|&job| (jobs[job].1.priority, sizes[job]))
            .collect();
        let wants: Vec<usize> = taken.iter().map(|claim| claim.want).collect();
        let handoffs: Vec<Handoff> = deal(&offered, &wants, CLAIM_REPLY_BUDGET)
            .into_iter()
            .map(|(ready, claim)| {
                let job = ready_now[ready];
                let lease = taken[claim]
                    .lease
                    .or(jobs[job].1.lease)
                    .unwrap_or(self.settings.default_lease);
                Handoff {
                    job,
                    claim,
                    token: LeaseToken::generate(),
                    lease,
                }
            })
            .collect();
        for handoff in &handoffs {
            let claim = &taken[handoff.claim];
            let started = EventStart::Started {
                worker: claim.worker.as_str(),
            };
            args.extend([
                Value::from((handoff.job + 1).to_string()),
                claim.worker.as_str().into(),
                Bytes::from(event_head(started)).into(),
                handoff.token.as_str().into(),
                millis(handoff.lease).into(),
                millis(claim.ack_timeout).into(),
            ]);
        }
        Handing {
            queue: queue.clone(),
            taken,
            handoffs,
        }
    }

    /// Makes a submission's script call, `script` of the store's, and returns its reply with
    /// the jobs as created at the time `created` finds in the reply (none if it finds none).
    /// With parked claims taken, the call runs on a task of its own, so that a submitter going
    /// away during it (a cancelled SubmitJobs) cannot leave the claims without the jobs handed
    /// to them, and the claims are answered after it: with their jobs if `handed` finds in the
    /// reply that the script made the hand-offs, else with none, so that they look again.
    pub(super) async fn submit_call(
        &self,
        script: fn(&Scripts) -> &LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
        handing: Handing,
        jobs: Vec<(JobId, NewJob)>,
        reply: SubmitReply,
    ) -> Result<(Vec<Value>, Vec<Job>)> {
        let created =
            move |values: &[Value], jobs: Vec<(JobId, NewJob)>| match (reply.created)(values) {
                Some(at) => jobs
                    .into_iter()
                    .map(|(id, job)| job.into_job(id, at))
                    .collect(),
                None => Vec::new(),
            };
        if handing.taken.is_empty() {
            let values: Vec<Value> = self.call(script(&self.scripts), keys, args).await?;
            let jobs = created(&values, jobs);
            return Ok((values, jobs));
        }
        let store = self.clone();
        self.tasks
            .spawn(async move {
                let client = store.pool.next();
                let values: Result<Vec<Value>> = store
                    .call_on(client, script(&store.scripts), keys, args)
                    .await;
                match values {
                    Ok(values) => {
                        let handed = (reply.handed)(&values);
                        let jobs = created(&values, jobs);
                        store.answer_claims(handed, handing, &jobs);
                        Ok((values, jobs))
                    }
                    Err(error) => {
                        let leases = handing.leases(&jobs);
                        store.release_after_failed_call(&error, client, leases);
                        store.answer_claims(false, handing, &[]);
                        Err(error)
                    }
                }
            })
            .await
            .map_err(|_| StoreError::corrupt("the submission's call ended without an answer"))?
    }

    /// Answers the claims a submission took: with the jobs it handed them, as `created` (the
    /// submission's jobs as written), if `handed`, else with none.
    fn answer_claims(&self, handed: bool, handing: Handing, created: &[Job]) {
        let Handing {
            queue,
            taken,
            handoffs,
        } = handing;
        let mut given: Vec<ClaimedJobs> = taken.iter().map(|_| ClaimedJobs::new(self)).collect();
        if handed {
            self.metrics.handed_off(&queue, handoffs.len());
            for handoff in &handoffs {
                let claim = &taken[handoff.claim];
                let job = created[handoff.job].clone();
                // As the script computes them, from the time it wrote the job.
                let at = job.created_at;
                let lease_expires_at = at.saturating_add(handoff.lease);
                let ack_deadline = at.saturating_add(claim.ack_timeout.min(handoff.lease));
                given[handoff.claim].push(Claimed {
                    job: job.started_by(&claim.worker, at, lease_expires_at, ack_deadline),
                    token: handoff.token.clone(),
                    lease_expires_at,
                    ack_deadline,
                });
            }
        }
        // A claim whose caller went away meanwhile drops its jobs, which puts them back.
        for (claim, jobs) in taken.into_iter().zip(given) {
            claim.answer(jobs);
        }
    }
}

/// Where a submission script's reply says what `submit_call` needs to know.
#[derive(Clone, Copy)]
pub(super) struct SubmitReply {
    /// Whether the script made the hand-offs.
    pub handed: fn(&[Value]) -> bool,
    /// When Redis created the jobs; `None` when it created none.
    pub created: fn(&[Value]) -> Option<UnixMillis>,
}

impl Handing {
    /// The job and lease token of each hand-off.
    fn leases(&self, jobs: &[(JobId, NewJob)]) -> Vec<(JobId, LeaseToken)> {
        self.handoffs
            .iter()
            .map(|handoff| (jobs[handoff.job].0.clone(), handoff.token.clone()))
            .collect()
    }
}

impl ParkedClaims {
    /// Parks a claim on `queues` for up to `want` jobs.
    pub fn park(
        &self,
        queues: &[QueueName],
        worker: &WorkerId,
        lease: Option<Duration>,
        want: usize,
        ack_timeout: Duration,
    ) -> Parked {
        let (answer, handed) = oneshot::channel();
        let slot = Arc::new(Slot {
            worker: worker.clone(),
            lease,
            want: want.max(1),
            ack_timeout,
            answer: Mutex::new(Some(answer)),
        });
        let mut parked = lock(&self.queues);
        for queue in queues {
            parked
                .entry(queue.clone())
                .or_default()
                .push_back(slot.clone());
        }
        Parked {
            claims: self.clone(),
            slot,
            queues: queues.to_vec(),
            handed,
        }
    }

    /// Takes up to `most` claims parked on `queue`, longest waiting first. Each must be
    /// answered; a claim parked on several queues is taken once.
    pub fn take(&self, queue: &QueueName, most: usize) -> Vec<Taken> {
        let mut parked = lock(&self.queues);
        let Some(waiting) = parked.get_mut(queue) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while taken.len() < most {
            let Some(slot) = waiting.pop_front() else {
                break;
            };
            // A claim already taken through another of its queues has no answer left.
            if let Some(answer) = lock(&slot.answer).take() {
                taken.push(Taken {
                    worker: slot.worker.clone(),
                    lease: slot.lease,
                    want: slot.want,
                    ack_timeout: slot.ack_timeout,
                    answer,
                });
            }
        }
        if waiting.is_empty() {
            parked.remove(queue);
        }
        taken
    }
}

impl Parked {
    /// Resolves when a submission took this claim: with the jobs it handed over, or with none
    /// when it could not hand any (its queue had ready jobs): then look again.
    pub async fn handed(&mut self) -> ClaimedJobs {
        (&mut self.handed).await.unwrap_or_default()
    }

    /// Stops waiting. If a submission took this claim already, its script call is under way
    /// and what it hands over is returned: a wait of one Redis round trip at most.
    pub async fn leave(mut self) -> ClaimedJobs {
        if lock(&self.slot.answer).take().is_some() {
            return ClaimedJobs::default();
        }
        (&mut self.handed).await.unwrap_or_default()
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        // Whoever takes the slot from here finds no answer to give.
        lock(&self.slot.answer).take();
        let mut parked = lock(&self.claims.queues);
        for queue in &self.queues {
            if let Some(waiting) = parked.get_mut(queue) {
                waiting.retain(|slot| !Arc::ptr_eq(slot, &self.slot));
                if waiting.is_empty() {
                    parked.remove(queue);
                }
            }
        }
    }
}

impl Taken {
    /// Gives the claim its jobs; none tells it to look again. False when its caller went away
    /// meanwhile: the jobs then go back to their queue (see `store::release`).
    pub fn answer(self, jobs: ClaimedJobs) -> bool {
        self.answer.send(jobs).is_ok()
    }
}

/// Which claim gets which job: jobs in priority order (submission order among equals) dealt
/// one at a time to the claims in turn, each up to what it wants and to what its reply holds
/// (`budget` bytes of jobs beyond its first), so that idle workers each start one before any
/// starts a second. `offered` are the jobs' priorities and sizes; returns pairs of (job,
/// claim) indexes into `offered` and `wants`.
pub fn deal(offered: &[(i32, usize)], wants: &[usize], budget: usize) -> Vec<(usize, usize)> {
    let mut jobs: Vec<usize> = (0..offered.len()).collect();
    jobs.sort_by_key(|&job| std::cmp::Reverse(offered[job].0));
    let mut jobs = jobs.into_iter().peekable();
    let mut room = wants.to_vec();
    let mut bytes = vec![0; wants.len()];
    let mut dealt = Vec::new();
    'rounds: while room.iter().any(|&left| left > 0) {
        for claim in 0..room.len() {
            if room[claim] == 0 {
                continue;
            }
            let Some(&job) = jobs.peek() else {
                break 'rounds;
            };
            let size = offered[job].1;
            if bytes[claim] > 0 && bytes[claim] + size > budget {
                // This claim's reply is full; the job goes to the next claim with room.
                room[claim] = 0;
                continue;
            }
            jobs.next();
            dealt.push((job, claim));
            room[claim] -= 1;
            bytes[claim] += size;
        }
    }
    dealt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> QueueName {
        QueueName::parse("queue", name).unwrap()
    }

    fn worker(name: &str) -> WorkerId {
        WorkerId::parse("worker_id", name).unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn jobs_are_dealt_one_per_claim_in_turn_by_priority() {
        let small = |priorities: &[i32]| -> Vec<(i32, usize)> {
            priorities.iter().map(|&priority| (priority, 1)).collect()
        };
        // Three jobs, two claims wanting 8: the first claim gets the two best jobs' first and
        // third, the second the one between.
        assert_eq!(
            deal(&small(&[0, 5, 0]), &[8, 8], 100),
            vec![(1, 0), (0, 1), (2, 0)]
        );
        // More claims than jobs: one job each, the rest get none.
        assert_eq!(deal(&small(&[0, 0]), &[8, 8, 8], 100), vec![(0, 0), (1, 1)]);
        // Wants are respected; jobs beyond them are not dealt.
        assert_eq!(
            deal(&small(&[0, 0, 0, 0, 0]), &[1, 2], 100),
            vec![(0, 0), (1, 1), (2, 1)]
        );
        assert!(deal(&[], &[3], 100).is_empty());
    }

    #[test]
    fn a_claim_gets_no_more_jobs_than_its_reply_holds_but_always_one() {
        // Jobs of 60 bytes, a budget of 100: each claim takes one, however many it wants.
        let big = [(0, 60), (0, 60), (0, 60)];
        assert_eq!(deal(&big, &[5, 5], 100), vec![(0, 0), (1, 1)]);
        // A job larger than the budget still goes to a claim that has none.
        assert_eq!(deal(&[(0, 500)], &[5], 100), vec![(0, 0)]);
        // Small jobs fill a reply up to the budget.
        let mixed = [(0, 40), (0, 40), (0, 40)];
        assert_eq!(deal(&mixed, &[5], 100), vec![(0, 0), (1, 0)]);
    }

    #[tokio::test]
    async fn a_claim_parked_on_two_queues_is_taken_once() {
        let claims = ParkedClaims::default();
        let mut parked = claims.park(&[queue("a"), queue("b")], &worker("w"), None, 2, SECOND);
        let taken = claims.take(&queue("b"), 5);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].want, 2);
        assert!(
            claims.take(&queue("a"), 5).is_empty(),
            "taken through b already"
        );
        assert!(
            taken
                .into_iter()
                .next()
                .unwrap()
                .answer(ClaimedJobs::default())
        );
        assert!(parked.handed().await.is_empty());
        drop(parked);
        assert!(lock(&claims.queues).is_empty());
    }

    #[tokio::test]
    async fn a_claim_that_left_is_not_taken_and_one_taken_waits_for_its_answer() {
        let claims = ParkedClaims::default();
        let first = claims.park(&[queue("a")], &worker("one"), None, 1, SECOND);
        let second = claims.park(&[queue("a")], &worker("two"), None, 1, SECOND);
        assert!(first.leave().await.is_empty());
        let taken = claims.take(&queue("a"), 5);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].worker.as_str(), "two");
        // The taken claim stops waiting before its answer comes: leaving waits for it.
        let answering = tokio::spawn(async move {
            tokio::task::yield_now().await;
            taken
                .into_iter()
                .next()
                .unwrap()
                .answer(ClaimedJobs::default())
        });
        assert!(second.leave().await.is_empty());
        assert!(answering.await.unwrap(), "the answer reached the claim");
        assert!(lock(&claims.queues).is_empty());
    }
}
