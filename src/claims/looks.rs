//! Looks at a queue shared by waiting claims. A waiting claim is armed (registered with the
//! hub) before it looks at its queues, so that a job announced after its look wakes it. A look
//! that started after a claim was armed and found the queue's ready set empty therefore answers
//! that claim as well as its own would: the claim parks without a look of its own. A burst of
//! claims on an empty queue then costs Redis a read per look's duration, not one per batch of
//! claims, and none waits behind a chain of reads that would each find nothing.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// Numbers this process's looks in the order they start. Cheap to clone.
#[derive(Clone, Default)]
pub struct Looks(Arc<AtomicU64>);

/// The latest look of one lane of claims (see `group_commit`) that found its queue empty:
/// held by the lane's runner, so that it lasts as long as the claims waiting in the lane.
#[derive(Clone, Default)]
pub struct Drained(Arc<AtomicU64>);

impl Looks {
    /// The stamp of a claim armed just before: every look numbered above it started after.
    pub fn stamp(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Starts a look, before its first read: its number.
    pub fn start(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

impl Drained {
    /// Whether a claim armed at `stamp` (none: a claim that does not wait) is answered by a
    /// look that found the queue empty.
    pub fn covers(&self, stamp: Option<u64>) -> bool {
        stamp.is_some_and(|stamp| stamp < self.0.load(Ordering::SeqCst))
    }

    /// Records that look `look` found the queue empty.
    pub fn record(&self, look: u64) {
        self.0.fetch_max(look, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_look_covers_the_claims_armed_before_it_started_only() {
        let (looks, drained) = (Looks::default(), Drained::default());
        let early = looks.stamp();
        let look = looks.start();
        let late = looks.stamp();
        assert!(
            !drained.covers(Some(early)),
            "no look found the queue empty yet"
        );
        drained.record(look);
        assert!(drained.covers(Some(early)));
        assert!(!drained.covers(Some(late)), "armed after the look started");
        assert!(
            !drained.covers(None),
            "a claim that does not wait always looks"
        );
        drained.record(look - 1);
        assert!(
            drained.covers(Some(early)),
            "an older look does not undo a newer one"
        );
    }
}
