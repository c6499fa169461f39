//! Claims parked on this process: a waiting claim that found its queues empty parks here, so
//! that a submission through this process can hand it jobs directly (see `handoff`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;

use super::ClaimedJobs;
use crate::{
    budgets::Permit,
    domain::{QueueName, WorkerId},
    sync::lock,
};

/// The claims parked on this process, per queue, longest waiting first. Cheap to clone.
#[derive(Clone, Default)]
pub struct ParkedClaims {
    queues: Arc<Mutex<HashMap<QueueName, VecDeque<Arc<Slot>>>>>,
}

/// A parked claim, as submissions see it.
struct Slot {
    /// Whose claim it is, for the payload-bytes budget.
    principal: Option<Arc<str>>,
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
    pub principal: Option<Arc<str>>,
    /// Its jobs' payloads, counted in the payload-bytes budget before they are handed over.
    pub payload: Option<Permit>,
    pub worker: WorkerId,
    pub lease: Option<Duration>,
    pub want: usize,
    pub ack_timeout: Duration,
    answer: oneshot::Sender<ClaimedJobs>,
}

impl ParkedClaims {
    /// Parks `principal`'s claim on `queues` for up to `want` jobs.
    pub fn park(
        &self,
        queues: &[QueueName],
        principal: Option<&str>,
        worker: &WorkerId,
        lease: Option<Duration>,
        want: usize,
        ack_timeout: Duration,
    ) -> Parked {
        let (answer, handed) = oneshot::channel();
        let slot = Arc::new(Slot {
            principal: principal.map(Arc::from),
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
                    principal: slot.principal.clone(),
                    payload: None,
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
    /// meanwhile: the jobs then go back to their queue (see `delivery`).
    pub fn answer(self, jobs: ClaimedJobs) -> bool {
        self.answer.send(jobs).is_ok()
    }
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

    #[tokio::test]
    async fn a_claim_parked_on_two_queues_is_taken_once() {
        let claims = ParkedClaims::default();
        let mut parked = claims.park(
            &[queue("a"), queue("b")],
            None,
            &worker("w"),
            None,
            2,
            SECOND,
        );
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
        let first = claims.park(&[queue("a")], None, &worker("one"), None, 1, SECOND);
        let second = claims.park(&[queue("a")], None, &worker("two"), None, 1, SECOND);
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
