//! The queues each principal may create: `--max-queues-per-principal` (or the principal's
//! own `max_queues`). A principal's queues are those it submitted to that still have jobs
//! (are in the due index); a submission to a queue it has not used yet is admitted only
//! while it holds fewer than its cap. Each replica remembers what it admitted for
//! `REMEMBERED` so that a busy queue costs no extra round trip per submission.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    domain::QueueName,
    store::{JobStore, StoreError},
    sync::lock,
};

/// How long a replica trusts an admission it made: a queue forgotten meanwhile and used again
/// within it is not counted again until then.
pub const REMEMBERED: Duration = Duration::from_secs(10);

/// The most admissions a replica remembers; past it, it forgets them all.
const REMEMBERED_MAX: usize = 100_000;

/// How long a replica refuses a principal's new queues after the cap refused one, without
/// asking Redis: a principal at its cap that keeps trying costs Redis one count (which looks
/// at each of its queues) per replica per `REFUSED_FOR`, not one per call.
pub const REFUSED_FOR: Duration = Duration::from_secs(1);

/// Cheap to clone.
#[derive(Clone)]
pub struct QueueAdmission {
    store: JobStore,
    /// (principal, queue) admitted, and when.
    admitted: Arc<Mutex<HashMap<(String, QueueName), Instant>>>,
    /// Principals refused, and until when they are refused without asking Redis.
    refused: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Why a principal may not use one more queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    #[error("the principal already has {cap} queues with jobs (max_queues)")]
    OverCap { cap: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueAdmission {
    pub fn new(store: JobStore) -> Self {
        Self {
            store,
            admitted: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Admits `principal`'s submissions to `queues`, each counted among its queues; refused
    /// whole when the queues it has not used yet would take it past `cap`.
    pub async fn admit(
        &self,
        principal: &str,
        cap: u32,
        queues: &[&QueueName],
    ) -> Result<(), AdmissionError> {
        let now = Instant::now();
        let fresh: Vec<&QueueName> = {
            let admitted = lock(&self.admitted);
            queues
                .iter()
                .copied()
                .filter(|queue| {
                    admitted
                        .get(&(principal.to_owned(), (*queue).clone()))
                        .is_none_or(|at| now.duration_since(*at) >= REMEMBERED)
                })
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        {
            let mut refused = lock(&self.refused);
            refused.retain(|_, until| *until > now);
            if refused.contains_key(principal) {
                return Err(AdmissionError::OverCap { cap });
            }
        }
        if !self.store.admit_queues(principal, cap, &fresh).await? {
            lock(&self.refused).insert(principal.to_owned(), now + REFUSED_FOR);
            return Err(AdmissionError::OverCap { cap });
        }
        let mut admitted = lock(&self.admitted);
        if admitted.len() + fresh.len() > REMEMBERED_MAX {
            admitted.clear();
        }
        for queue in fresh {
            admitted.insert((principal.to_owned(), queue.clone()), now);
        }
        Ok(())
    }
}
