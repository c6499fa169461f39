//! Release: jobs claimed for a caller that went away before receiving them go back to their
//! queue at once, instead of staying leased to nobody until the lease runs out and then
//! counting as a failed attempt (a job allowed one attempt would fail without having run).
//!
//! A claim's jobs travel as `ClaimedJobs` from the script that claimed them to the response
//! that carries them to the worker: through a group-commit answer, a hand-off, a waiting claim.
//! Whatever drops them on the way releases them: a cancelled or timed-out RPC drops its future
//! and, with it, the channel its jobs were sent on; an error cuts a claim short. `deliver`, as
//! the response is built, is the only way out. Past that point a response lost on the wire is
//! the acknowledgement deadline's business (expire.lua), and a worker that dies with its jobs
//! the lease's.
//!
//! A claim's script call that fails may still have claimed: Redis ran it and the reply was
//! lost, or Redis runs it after jobd stopped waiting. Its jobs would be leased under tokens
//! nobody holds, so the caller releases every token the call carried (see `claim_batch` and
//! `submit_call`); those the call did not use release nothing.

use std::{collections::BTreeMap, time::Duration};

use fred::{clients::Client, types::Value};
use tokio::time::Instant;

use super::{JobStore, Result, StoreError, status};
use crate::domain::{Claimed, JobId, LeaseToken, QueueName};

/// Who gives claimed jobs back (release.lua's two callers).
#[derive(Debug, Clone, Copy)]
pub(super) enum Holder {
    /// The jobs' worker (ReleaseJob): refused once a claim's deadline passed.
    Worker,
    /// jobd, for jobs that never reached a worker.
    Undelivered,
}

impl Holder {
    fn as_str(self) -> &'static str {
        match self {
            Holder::Worker => "worker",
            Holder::Undelivered => "undelivered",
        }
    }
}

/// The reason a RELEASED event gives for a job that never reached its worker.
const UNDELIVERED: &str = "the claim's reply never reached a worker";

/// The first pause before a release tries Redis again; each next one doubles, up to
/// `RELEASE_RETRY_MAX`.
const RELEASE_RETRY_FIRST: Duration = Duration::from_millis(100);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a release keeps trying an unavailable Redis at most: through a failover's pause,
/// not through a long outage, where failed calls would pile up tasks that all retry at once
/// when Redis is back; the jobs then go back at their acknowledgement deadline.
const RELEASE_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// Jobs claimed for one caller and not yet given to it. Dropped undelivered, they are put back
/// in their queues (release.lua) by a task of their own.
#[derive(Default)]
pub struct ClaimedJobs {
    jobs: Vec<Claimed>,
    /// Where to put them back; every non-empty set has one.
    store: Option<JobStore>,
}

impl ClaimedJobs {
    pub(super) fn new(store: &JobStore) -> Self {
        Self {
            jobs: Vec::new(),
            store: Some(store.clone()),
        }
    }

    pub(super) fn push(&mut self, claimed: Claimed) {
        self.jobs.push(claimed);
    }

    /// Adds `other`'s jobs to these.
    pub fn append(&mut self, mut other: ClaimedJobs) {
        if self.store.is_none() {
            self.store = other.store.take();
        }
        self.jobs.append(&mut other.jobs);
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Claimed> {
        self.jobs.iter()
    }

    /// The jobs, for the response that gives them to their worker.
    pub fn deliver(mut self) -> Vec<Claimed> {
        std::mem::take(&mut self.jobs)
    }
}

impl Drop for ClaimedJobs {
    fn drop(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let leases = self
            .jobs
            .drain(..)
            .map(|claimed| (claimed.job.id, claimed.token))
            .collect();
        if let Some(store) = self.store.take() {
            store.release_later(store.pool.next(), leases);
        }
    }
}

impl JobStore {
    /// After a script call that claims (a claim, or a submission's hand-offs) failed with
    /// `error` on `client`: the call may have claimed all the same (Redis ran it and the reply
    /// was lost, or runs it late), so whatever the tokens it carried lease goes back. Not after
    /// a refusal for lack of memory, which refuses a script whole before it runs.
    pub(super) fn release_after_failed_call(
        &self,
        error: &StoreError,
        client: &Client,
        leases: Vec<(JobId, LeaseToken)>,
    ) {
        if !matches!(error, StoreError::OutOfMemory(_)) {
            self.release_later(client, leases);
        }
    }

    /// Puts back, on a task of their own, the jobs leased with these tokens to a caller that
    /// will never receive them. While Redis is unavailable it tries again, pausing longer each
    /// time, until `RELEASE_RETRY_WINDOW` has passed or jobd shuts down; a job it could not
    /// put back goes back anyway at its acknowledgement deadline (see expire.lua).
    ///
    /// `client` is the connection of the call that leased the jobs: Redis runs a connection's
    /// commands in order, so a release cannot overtake a claim still waiting in Redis.
    pub(super) fn release_later(&self, client: &Client, leases: Vec<(JobId, LeaseToken)>) {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(
                jobs = leases.len(),
                "claimed jobs dropped outside the runtime; they go back at their acknowledgement deadline"
            );
            return;
        }
        let (store, client) = (self.clone(), client.clone());
        let until = Instant::now() + RELEASE_RETRY_WINDOW;
        self.tasks.spawn(async move {
            let mut pause = RELEASE_RETRY_FIRST;
            loop {
                let released = store
                    .release(&client, &leases, UNDELIVERED, Holder::Undelivered)
                    .await;
                let error = match released {
                    Ok(replies) => {
                        store.count_released(&leases, &replies);
                        return;
                    }
                    Err(error) => error,
                };
                let retry =
                    matches!(error, StoreError::Unavailable(_)) && Instant::now() + pause < until;
                let resumed = retry
                    && tokio::select! {
                        () = tokio::time::sleep(pause) => true,
                        () = store.shutdown.cancelled() => false,
                    };
                if !resumed {
                    tracing::warn!(
                        error = %error,
                        jobs = leases.len(),
                        "could not put back claimed jobs that never reached a worker; they go back at their acknowledgement deadline"
                    );
                    return;
                }
                pause = (pause * 2).min(RELEASE_RETRY_MAX);
            }
        });
    }

    /// Puts back in their queues the jobs still running under these tokens, for `holder`:
    /// QUEUED again, their claim not counted as an attempt, with `reason` in their RELEASED
    /// events. Returns release.lua's reply for each job, in order.
    pub(super) async fn release(
        &self,
        client: &Client,
        leases: &[(JobId, LeaseToken)],
        reason: &str,
        holder: Holder,
    ) -> Result<Vec<Value>> {
        let mut by_queue: BTreeMap<&QueueName, Vec<usize>> = BTreeMap::new();
        for (index, (id, _)) in leases.iter().enumerate() {
            by_queue.entry(id.queue()).or_default().push(index);
        }
        let mut replies = vec![Value::Null; leases.len()];
        for (queue, indexes) in by_queue {
            let mut keys = vec![self.keys.ready(queue), self.keys.running(queue)];
            let mut args: Vec<Value> = vec![
                self.keys.job_channel().into(),
                self.keys.queue_channel().into(),
                queue.as_str().into(),
                reason.into(),
                holder.as_str().into(),
            ];
            for &index in &indexes {
                let (id, token) = &leases[index];
                keys.push(self.keys.job(id));
                args.push(id.to_string().into());
                args.push(token.as_str().into());
            }
            let queue_replies: Vec<Value> = self
                .call_on(client, &self.scripts.release, keys, args)
                .await?;
            if queue_replies.len() != indexes.len() {
                return Err(StoreError::corrupt("release reply shape"));
            }
            for (index, reply) in indexes.into_iter().zip(queue_replies) {
                replies[index] = reply;
            }
        }
        Ok(replies)
    }

    /// Logs and counts the jobs jobd put back (release.lua said "ok" for them).
    fn count_released(&self, leases: &[(JobId, LeaseToken)], replies: &[Value]) {
        let mut by_queue: BTreeMap<&QueueName, usize> = BTreeMap::new();
        for ((id, _), reply) in leases.iter().zip(replies) {
            let put_back = reply
                .clone()
                .convert::<Vec<Value>>()
                .ok()
                .and_then(|reply| status(&reply).ok())
                .is_some_and(|status| status == "ok");
            if put_back {
                *by_queue.entry(id.queue()).or_default() += 1;
            }
        }
        for (queue, count) in by_queue {
            tracing::info!(queue = %queue, jobs = count, "put back claimed jobs that never reached a worker");
            self.metrics.released(queue, count);
        }
    }
}
