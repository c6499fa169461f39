//! What keeps the number of metric series bounded: free-form attributes capped, and the queue
//! depths of the queues known now only.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use super::instruments::OTHER;
use crate::domain::{JobState, QueueName};

/// Queue depths per queue and state, refreshed from Redis once per metric export and read by
/// the `jobd.queue.depth` gauge.
#[derive(Clone, Default)]
pub struct QueueDepths(Arc<Mutex<BTreeMap<QueueName, Depths>>>);

/// Jobs per state, for one queue.
pub(super) type Depths = Vec<(JobState, u64)>;

impl QueueDepths {
    /// Puts the depths of every queue known now in force: a queue left out (forgotten by the
    /// registry) is no longer reported.
    pub fn replace(&self, depths: BTreeMap<QueueName, Depths>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = depths;
    }

    /// The depths of `queue` in force, if any.
    pub fn of(&self, queue: &QueueName) -> Option<Depths> {
        let depths = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        depths.get(queue).cloned()
    }

    pub(super) fn snapshot(&self) -> Vec<(QueueName, Depths)> {
        let depths = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        depths.iter().map(|(q, d)| (q.clone(), d.clone())).collect()
    }
}

/// How many distinct values metrics carry for each free-form attribute, per process.
#[derive(Debug, Clone, Copy)]
pub struct AttributeCaps {
    /// Of `jobd.queue`.
    pub queues: usize,
    /// Of `jobd.job.kind`.
    pub kinds: usize,
}

/// The values a free-form attribute takes in metrics: the first `max` distinct ones seen, and
/// `_OTHER` for any other, so that the number of series stays bounded whatever clients send.
pub(super) struct Capped {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl Capped {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            seen: Mutex::default(),
        })
    }

    pub(super) fn value(&self, value: &str) -> String {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_values_are_kept_and_the_rest_are_other() {
        let kinds = Capped::new(2);
        assert_eq!(kinds.value("a"), "a");
        assert_eq!(kinds.value("b"), "b");
        assert_eq!(kinds.value("c"), OTHER);
        assert_eq!(kinds.value("a"), "a");
        assert_eq!(kinds.seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn forgotten_queues_have_no_depths() {
        let depths = QueueDepths::default();
        let queue = |name: &str| QueueName::parse("queue", name).unwrap();
        let known = |names: &[&str]| {
            names
                .iter()
                .map(|name| (queue(name), vec![(JobState::Queued, 1)]))
                .collect::<BTreeMap<_, _>>()
        };
        depths.replace(known(&["a", "b"]));
        depths.replace(known(&["b"]));
        let reported: Vec<String> = depths
            .snapshot()
            .iter()
            .map(|(q, _)| q.to_string())
            .collect();
        assert_eq!(reported, ["b"]);
    }
}
