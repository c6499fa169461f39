//! The sweeper's side: promote due jobs, recover expired leases, forget expired finished jobs.

use fred::types::Value;

use super::{JobStore, Result, StoreError};
use crate::domain::{AttemptEnd, FailOutcome, JobId, QueueName, UnixMillis};

/// The most jobs one sweep handles per queue and kind of work; the sweeper comes back at once
/// when a list was full.
pub const SWEEP_BATCH: usize = 100;

/// What one sweep of a queue found.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Scheduled jobs whose time has come.
    pub due: Vec<JobId>,
    /// Running jobs whose lease ran out.
    pub expired: Vec<JobId>,
    /// When the next scheduled job becomes due.
    pub next_due: Option<UnixMillis>,
    /// When the next lease runs out.
    pub next_expiry: Option<UnixMillis>,
    /// When the next retained job's retention ends, to be trimmed from its index.
    pub next_trim: Option<UnixMillis>,
}

/// The error recorded for an attempt whose worker went silent.
pub const LEASE_EXPIRED: &str = "lease expired";

impl JobStore {
    /// Trims the queue's retained-job sets and reports what is due, and when more will be.
    pub async fn sweep(&self, queue: &QueueName, now: UnixMillis) -> Result<SweepReport> {
        let [completed, failed, cancelled] = self.retained_keys(queue);
        let reply: Vec<Value> = self
            .call(
                &self.scripts.sweep,
                vec![
                    self.keys.scheduled(queue),
                    self.keys.running(queue),
                    completed,
                    failed,
                    cancelled,
                ],
                vec![now.0.to_string().into(), SWEEP_BATCH.to_string().into()],
            )
            .await?;
        let shape = || StoreError::corrupt("sweep reply shape");
        let [due, expired, next_due, next_expiry, next_trim]: [Value; 5] =
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
            due: ids(due)?,
            expired: ids(expired)?,
            next_due: time(next_due),
            next_expiry: time(next_expiry),
            next_trim: time(next_trim),
        })
    }

    /// Makes due scheduled jobs claimable; returns how many it promoted.
    pub async fn promote(&self, queue: &QueueName, due: &[JobId], now: UnixMillis) -> Result<u64> {
        if due.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![self.keys.scheduled(queue), self.keys.ready(queue)];
        keys.extend(due.iter().map(|id| self.keys.job(id)));
        let mut args: Vec<Value> = vec![
            now.0.to_string().into(),
            self.keys.job_channel().into(),
            self.keys.queue_channel().into(),
            queue.as_str().into(),
        ];
        args.extend(due.iter().map(|id| Value::from(id.to_string())));
        self.call(&self.scripts.promote, keys, args).await
    }

    /// Ends the attempt of a job whose lease expired, if it still has: retried or FAILED.
    /// `None` when another replica got there first or a heartbeat came in time.
    pub async fn expire(
        &self,
        id: &JobId,
        now: UnixMillis,
    ) -> Result<Option<(FailOutcome, Option<AttemptEnd>)>> {
        match self.end_attempt(id, "", LEASE_EXPIRED, true, now).await {
            Ok(outcome) => Ok(Some(outcome)),
            Err(StoreError::Conflict(_) | StoreError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }
}
