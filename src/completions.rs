//! Completions: a worker's reports of success, those of one queue that arrive together
//! sharing one script call (group commit): one removal from the running set, one addition to
//! the retained set and one wake-up message for them all.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use crate::{
    domain::{AttemptEnd, JobId, LeaseToken, QueueName},
    group_commit::{Batcher, Pending},
    store::{CompletionOutcome, JobStore, StoreError},
};

/// A completion recorded (or found recorded by an earlier try).
#[derive(Debug, Clone)]
pub struct Completed {
    /// The attempt that ended now; `None` when an earlier try recorded it.
    pub ended: Option<AttemptEnd>,
    /// Whether the job's queue had ready jobs right after the completion was written: a
    /// worker waiting on that queue, registered before completing, need not read it if not.
    pub queue_has_ready: bool,
}

/// The completions of this process. Cheap to clone.
#[derive(Clone)]
pub struct Completions(Arc<Inner>);

struct Inner {
    store: JobStore,
    batcher: Batcher<(JobId, LeaseToken, Bytes), Completed>,
}

impl Completions {
    pub fn new(store: JobStore, tasks: TaskTracker, command_timeout: Duration) -> Self {
        Self(Arc::new(Inner {
            store,
            batcher: Batcher::new(tasks, command_timeout),
        }))
    }

    /// Records the worker's success: the job becomes COMPLETED with `result`. Completions of
    /// one queue that arrive while one is being written share the next script call.
    pub async fn complete(
        &self,
        id: &JobId,
        token: &LeaseToken,
        result: Bytes,
    ) -> Result<Completed, StoreError> {
        let completions = self.clone();
        let queue = id.queue().clone();
        self.0
            .batcher
            .run(
                id.queue(),
                (id.clone(), token.clone(), result),
                move |batch| {
                    let (completions, queue) = (completions.clone(), queue.clone());
                    async move { completions.complete_batch(&queue, batch).await }
                },
            )
            .await
    }

    /// Writes a batch of completions of `queue` with one script call, and answers each.
    async fn complete_batch(
        &self,
        queue: &QueueName,
        batch: Vec<Pending<(JobId, LeaseToken, Bytes), Completed>>,
    ) {
        let (completions, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.op, pending.reply))
            .unzip();
        match self.0.store.complete(queue, &completions).await {
            Ok((outcomes, queue_has_ready)) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    reply.answer(match outcome {
                        CompletionOutcome::Recorded(ended) => Ok(Completed {
                            ended: Some(ended),
                            queue_has_ready,
                        }),
                        CompletionOutcome::Again => Ok(Completed {
                            ended: None,
                            queue_has_ready,
                        }),
                        CompletionOutcome::Refused(error) => Err(error),
                    });
                }
            }
            Err(error) => {
                for reply in replies {
                    reply.answer(Err(error.clone()));
                }
            }
        }
    }
}
