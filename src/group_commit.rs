//! Group commit: operations of one kind on one queue that arrive while a script call for that
//! queue is in flight wait for it to end, then share the next call.
//!
//! Under light load an operation runs alone, as soon as it arrives; under load each call
//! carries everything that arrived during the one before, so the Redis work per operation falls
//! as the load grows, with no timer adding latency. Calls run on a task of their own, so an
//! operation whose caller went away (a cancelled RPC) still gets its answer written, and the
//! operations sharing its call are not disturbed.
//!
//! An operation waits at most the command timeout from the moment it arrives, whether its
//! call is under way or it waits for the call before it: with Redis away, every caller gets
//! UNAVAILABLE within that time, not after the calls queued ahead of it have timed out one
//! after the other. One that gave up by the time its call is made is left out of it.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::{domain::QueueName, store::StoreError, sync::lock};

type Result<T> = std::result::Result<T, StoreError>;

/// Operations per call at most; the rest go in the next call.
pub const MAX_BATCH: usize = 64;

/// An operation waiting for its call, and where its answer goes.
pub struct Pending<T, R> {
    pub op: T,
    pub reply: Reply<R>,
}

impl<T, R> Pending<T, R> {
    pub fn answer(self, result: Result<R>) {
        self.reply.answer(result);
    }

    /// Whether the caller went away (its RPC was cancelled, or it gave up waiting) before
    /// the call was made.
    fn abandoned(&self) -> bool {
        self.reply.0.is_closed()
    }
}

/// Where the answer of one operation goes.
pub struct Reply<R>(oneshot::Sender<Result<R>>);

impl<R> Reply<R> {
    pub fn answer(self, result: Result<R>) {
        // The caller may have gone away (its RPC was cancelled); the operation is done anyway.
        let _ = self.0.send(result);
    }
}

/// The operations waiting per queue; a queue has a lane while a runner serves it.
type Lanes<T, R> = Arc<Mutex<HashMap<QueueName, Vec<Pending<T, R>>>>>;

/// The operations of one kind waiting per queue. Cheap to clone.
pub struct Batcher<T, R> {
    lanes: Lanes<T, R>,
    /// Where runners are spawned, so that shutdown waits for the calls under way.
    tasks: TaskTracker,
    /// The longest an operation waits for its answer: Redis's command timeout.
    timeout: Duration,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            lanes: self.lanes.clone(),
            tasks: self.tasks.clone(),
            timeout: self.timeout,
        }
    }
}

impl<T, R> Batcher<T, R> {
    pub fn new(tasks: TaskTracker, timeout: Duration) -> Self {
        Self {
            lanes: Default::default(),
            tasks,
            timeout,
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Runs `op` in the next call for `queue`, made by `call` with every operation waiting by
    /// then (at most `MAX_BATCH`). `call` answers each operation of the batch it is given.
    /// Past the timeout the answer is UNAVAILABLE; the call, if made, may still take effect.
    pub async fn run<F, Fut>(&self, queue: &QueueName, op: T, call: F) -> Result<R>
    where
        F: Fn(Vec<Pending<T, R>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut lanes = lock(&self.lanes);
            match lanes.get_mut(queue) {
                // A runner is busy with this queue: it takes this operation in its next call.
                Some(waiting) => {
                    waiting.push(Pending {
                        op,
                        reply: Reply(reply),
                    });
                    false
                }
                None => {
                    lanes.insert(
                        queue.clone(),
                        vec![Pending {
                            op,
                            reply: Reply(reply),
                        }],
                    );
                    true
                }
            }
        };
        if start {
            let runner = Runner {
                lanes: self.lanes.clone(),
                queue: queue.clone(),
                closed: false,
            };
            self.tasks.spawn(runner.run(call));
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(answer) => answer.map_err(|_| StoreError::Interrupted)?,
            Err(_) => Err(StoreError::timed_out()),
        }
    }
}

/// Makes calls for one queue until none waits. The lane exists while its runner does.
struct Runner<T, R> {
    lanes: Lanes<T, R>,
    queue: QueueName,
    /// Whether this runner closed its lane; a later operation may have opened a new one.
    closed: bool,
}

impl<T, R> Runner<T, R> {
    async fn run<F, Fut>(mut self, call: F)
    where
        F: Fn(Vec<Pending<T, R>>) -> Fut,
        Fut: Future<Output = ()>,
    {
        while let Some(batch) = self.next_batch() {
            call(batch).await;
        }
    }

    /// The next batch, or `None` once nothing waits, the lane then being closed so that the
    /// next operation starts a runner of its own. Operations whose callers gave up are left
    /// out: a claim would lease jobs nobody works on, a submission create a job its caller
    /// was told failed.
    fn next_batch(&mut self) -> Option<Vec<Pending<T, R>>> {
        let mut lanes = lock(&self.lanes);
        let waiting = lanes.get_mut(&self.queue)?;
        waiting.retain(|pending| !pending.abandoned());
        if waiting.is_empty() {
            lanes.remove(&self.queue);
            self.closed = true;
            return None;
        }
        let rest = waiting.split_off(waiting.len().min(MAX_BATCH));
        Some(std::mem::replace(waiting, rest))
    }
}

impl<T, R> Drop for Runner<T, R> {
    /// A runner that ends early (its task panicked or was aborted) closes its lane and drops
    /// what waits in it: those callers get an error instead of waiting forever.
    fn drop(&mut self) {
        if !self.closed {
            lock(&self.lanes).remove(&self.queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, sync::atomic::Ordering, time::Duration};

    use super::*;

    fn queue() -> QueueName {
        QueueName::parse("queue", "q").unwrap()
    }

    #[tokio::test]
    async fn operations_arriving_during_a_call_share_the_next() {
        let batcher: Batcher<u32, u32> = Batcher::new(TaskTracker::new(), Duration::from_secs(10));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let call = {
            let sizes = sizes.clone();
            move |batch: Vec<Pending<u32, u32>>| {
                lock(&sizes).push(batch.len());
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    for pending in batch {
                        let doubled = pending.op * 2;
                        pending.answer(Ok(doubled));
                    }
                }
            }
        };
        let spawn = |n: u32| {
            let (batcher, call) = (batcher.clone(), call.clone());
            tokio::spawn(async move { batcher.run(&queue(), n, call).await })
        };
        let first = spawn(0);
        // The first call is under way when the other nine arrive.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rest: Vec<_> = (1..10).map(spawn).collect();
        let mut answers = vec![first.await.unwrap().unwrap()];
        for answer in rest {
            answers.push(answer.await.unwrap().unwrap());
        }
        assert_eq!(answers, (0..10).map(|n| n * 2).collect::<Vec<_>>());
        // The first ran alone; the nine that came during its call shared the second.
        assert_eq!(*lock(&sizes), vec![1, 9]);
        assert!(lock(&batcher.lanes).is_empty(), "the lane closes when idle");
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_batch() {
        let batcher: Batcher<usize, ()> = Batcher::new(TaskTracker::new(), Duration::from_secs(10));
        let largest = Arc::new(AtomicUsize::new(0));
        let call = {
            let largest = largest.clone();
            move |batch: Vec<Pending<usize, ()>>| {
                largest.fetch_max(batch.len(), Ordering::Relaxed);
                async move {
                    tokio::task::yield_now().await;
                    batch.into_iter().for_each(|pending| pending.answer(Ok(())));
                }
            }
        };
        let queue = queue();
        let all = (0..3 * MAX_BATCH).map(|n| batcher.run(&queue, n, call.clone()));
        for answer in futures::future::join_all(all).await {
            answer.unwrap();
        }
        assert_eq!(largest.load(Ordering::Relaxed), MAX_BATCH);
    }

    #[tokio::test]
    async fn a_call_that_panics_fails_its_operations_and_the_lane_recovers() {
        let batcher: Batcher<bool, ()> = Batcher::new(TaskTracker::new(), Duration::from_secs(10));
        let call = |batch: Vec<Pending<bool, ()>>| async move {
            assert!(!batch[0].op, "told to panic");
            batch.into_iter().for_each(|pending| pending.answer(Ok(())));
        };
        assert!(batcher.run(&queue(), true, call).await.is_err());
        batcher.run(&queue(), false, call).await.unwrap();
    }
}
