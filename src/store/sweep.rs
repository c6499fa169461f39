//! One sweep of a queue (promote due jobs, recover expired leases, forget expired finished
//! jobs in bounded steps), many queues a round trip, and the sweeper's two other scripts:
//! promote and expire. The due index the sweeper works from is `due.rs`.

use fred::types::Value;

use super::{JobStore, Result, StoreError, due::time, outcome::attempt_ended, status};
use crate::domain::{
    AttemptEnd, FREE_DELIVERIES, FailOutcome, JobId, JobState, QueueName, UnixMillis,
};

/// The most jobs one sweep handles per queue and kind of work; the sweeper comes back at once
/// when a list was full.
pub const SWEEP_BATCH: usize = 100;

/// The most retained-job index entries one sweep trims: a backlog (10^6 entries whose
/// retention passed) is trimmed in steps of this many, one script call each (about a
/// millisecond), with every other client's commands in between.
pub const TRIM_BATCH: usize = 1000;

/// What one sweep of a queue found.
#[derive(Debug)]
pub struct SweepReport {
    /// Redis's time when it swept: everything below is relative to it.
    pub now: UnixMillis,
    /// Scheduled jobs whose time has come.
    pub due: Vec<JobId>,
    /// Running jobs whose claim's deadline (acknowledgement or lease) passed.
    pub expired: Vec<JobId>,
    /// When the queue is next due, as the sweep settled its promise.
    pub next: NextVisit,
}

/// When a queue must next be visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextVisit {
    /// At this time (Redis ms); at most the sweep's `now` when there is more to do at once.
    At(UnixMillis),
    /// Never by itself: its jobs are all ready. A script that makes something fall due
    /// there says so.
    Idle,
    /// The queue has no job left: it leaves the due index.
    Forget,
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
    /// Sweeps each queue: trims its retained-job sets (`TRIM_BATCH` entries at most),
    /// reports what is due, and settles its promise. One pipeline of a `sweep.lua` call per
    /// queue, each in its queue's slot; each queue's report, in order.
    pub async fn sweep_each(&self, queues: &[QueueName]) -> Vec<Result<SweepReport>> {
        let calls: Vec<(Vec<String>, Vec<Value>)> = queues
            .iter()
            .map(|queue| {
                let [completed, failed, cancelled] = self.retained_keys(queue);
                let keys = vec![
                    self.keys().scheduled(queue),
                    self.keys().running(queue),
                    completed,
                    failed,
                    cancelled,
                    self.keys().ready(queue),
                    self.keys().promise(queue),
                ];
                let args = vec![
                    SWEEP_BATCH.to_string().into(),
                    TRIM_BATCH.to_string().into(),
                ];
                (keys, args)
            })
            .collect();
        let replies = self.call_each(&self.scripts().sweep, &calls).await;
        queues
            .iter()
            .zip(replies)
            .map(|(queue, reply)| swept(queue, reply?))
            .collect()
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
            self.event_cap(),
        ];
        args.extend(due.iter().map(|id| Value::from(id.to_string())));
        self.call(&self.scripts().promote, keys, args).await
    }

    /// Ends the claim of a running job whose deadline passed, if it still has: a job its
    /// worker never acknowledged goes back to its queue; otherwise the attempt ends, retried
    /// or FAILED. `None` when another replica got there first or a heartbeat came in time.
    /// (What it schedules needs no `due:` mark: the sweep that found the claim expired left
    /// the queue due at once.)
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
                    self.event_cap(),
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

/// A `sweep.lua` reply, read.
fn swept(queue: &QueueName, reply: Value) -> Result<SweepReport> {
    let shape = || StoreError::corrupt("sweep reply shape");
    let reply: Vec<Value> = reply.convert().map_err(|_| shape())?;
    let [now, due, expired, next]: [Value; 4] = reply.try_into().map_err(|_| shape())?;
    let ids = |value: Value| -> Result<Vec<JobId>> {
        let ids: Vec<String> = value.convert().map_err(|_| shape())?;
        // Ids that do not parse were not written by jobd; they are left alone.
        Ok(ids
            .iter()
            .filter_map(|id| JobId::parse("id", id).ok())
            .filter(|id| id.queue() == queue)
            .collect())
    };
    let next = match next.as_str().as_deref() {
        Some("forget") => NextVisit::Forget,
        Some("inf") => NextVisit::Idle,
        _ => NextVisit::At(time(&next).ok_or_else(shape)?),
    };
    Ok(SweepReport {
        now: UnixMillis(now.as_u64().ok_or_else(shape)?),
        due: ids(due)?,
        expired: ids(expired)?,
        next,
    })
}
