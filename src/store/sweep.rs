//! The sweeper's side: promote due jobs, recover expired leases, forget expired finished jobs.

use fred::types::Value;

use super::{JobStore, Result, StoreError, outcome::attempt_ended, status};
use crate::domain::{
    AttemptEnd, FREE_DELIVERIES, FailOutcome, JobId, JobState, QueueName, UnixMillis,
};

/// The most jobs one sweep handles per queue and kind of work; the sweeper comes back at once
/// when a list was full.
pub const SWEEP_BATCH: usize = 100;

/// What one sweep of a queue found.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Redis's time when it swept: everything below is relative to it.
    pub now: UnixMillis,
    /// Scheduled jobs whose time has come.
    pub due: Vec<JobId>,
    /// Running jobs whose claim's deadline (acknowledgement or lease) passed.
    pub expired: Vec<JobId>,
    /// When the next scheduled job becomes due.
    pub next_due: Option<UnixMillis>,
    /// When the next claim's deadline passes.
    pub next_expiry: Option<UnixMillis>,
    /// When the next retained job's retention ends, to be trimmed from its index.
    pub next_trim: Option<UnixMillis>,
}

/// What the end of an expired claim did.
#[derive(Debug)]
pub enum Expired {
    /// The worker never acknowledged the job: it went back to its queue at no cost.
    Released,
    /// The attempt ended: a lease ran out, or a job was not acknowledged once too often.
    AttemptEnded(FailOutcome, AttemptEnd),
}

impl JobStore {
    /// Trims the queue's retained-job sets and reports what is due, and when more will be.
    pub async fn sweep(&self, queue: &QueueName) -> Result<SweepReport> {
        let [completed, failed, cancelled] = self.retained_keys(queue);
        let reply: Vec<Value> = self
            .call(
                &self.scripts().sweep,
                vec![
                    self.keys().scheduled(queue),
                    self.keys().running(queue),
                    completed,
                    failed,
                    cancelled,
                ],
                vec![SWEEP_BATCH.to_string().into()],
            )
            .await?;
        let shape = || StoreError::corrupt("sweep reply shape");
        let [now, due, expired, next_due, next_expiry, next_trim]: [Value; 6] =
            reply.try_into().map_err(|_| shape())?;
        let ids = |value: Value| -> Result<Vec<JobId>> {
            let ids: Vec<String> = value.convert().map_err(|_| shape())?;
            // Ids that do not parse were not written by jobd; they are left alone.
            Ok(ids
                .iter()
                .filter_map(|id| JobId::parse("id", id).ok())
                .filter(|id| id.queue() == queue)
                .collect())
        };
        let time = |value: Value| {
            value
                .as_string()
                .and_then(|s| s.parse::<f64>().ok())
                .map(|ms| UnixMillis(ms as u64))
        };
        Ok(SweepReport {
            now: UnixMillis(now.as_u64().ok_or_else(shape)?),
            due: ids(due)?,
            expired: ids(expired)?,
            next_due: time(next_due),
            next_expiry: time(next_expiry),
            next_trim: time(next_trim),
        })
    }

    /// Makes due scheduled jobs claimable; returns how many it promoted.
    pub async fn promote(&self, queue: &QueueName, due: &[JobId]) -> Result<u64> {
        if due.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![self.keys().scheduled(queue), self.keys().ready(queue)];
        keys.extend(due.iter().map(|id| self.keys().job(id)));
        let mut args: Vec<Value> = vec![
            self.keys().job_channel().into(),
            self.keys().queue_channel().into(),
            queue.as_str().into(),
        ];
        args.extend(due.iter().map(|id| Value::from(id.to_string())));
        self.call(&self.scripts().promote, keys, args).await
    }

    /// Ends the claim of a running job whose deadline passed, if it still has: a job its
    /// worker never acknowledged goes back to its queue; otherwise the attempt ends, retried
    /// or FAILED. `None` when another replica got there first or a heartbeat came in time.
    pub async fn expire(&self, id: &JobId) -> Result<Option<Expired>> {
        let queue = id.queue();
        let reply: Vec<Value> = self
            .call(
                &self.scripts().expire,
                vec![
                    self.keys().job(id),
                    self.keys().running(queue),
                    self.keys().scheduled(queue),
                    self.keys().retained(queue, JobState::Failed),
                    self.keys().ready(queue),
                ],
                vec![
                    id.to_string().into(),
                    rand::random::<f64>().to_string().into(),
                    self.keys().job_channel().into(),
                    self.keys().queue_channel().into(),
                    queue.as_str().into(),
                    FREE_DELIVERIES.to_string().into(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            "released" => Ok(Some(Expired::Released)),
            "failed" | "scheduled" => {
                let (outcome, ended) = attempt_ended(&reply)?;
                Ok(Some(Expired::AttemptEnded(outcome, ended)))
            }
            "alive" | "stale" | "not_found" => Ok(None),
            other => Err(StoreError::corrupt(format!("expire replied {other:?}"))),
        }
    }
}
