//! The sweeper's side: the due index (which queues have something due), one sweep of a queue
//! (promote due jobs, recover expired leases, forget expired finished jobs in bounded steps),
//! and the writes that keep the index true.
//!
//! The due index lives in a slot of its own, so no queue script can write it: a script that
//! makes something fall due in its queue records it in the queue's promise and ends its reply
//! with a `due:` mark, which the caller writes to the index right after (`publish_due`); the
//! sweeper, after a sweep, writes the queue's next time and then reads the promise again, so
//! that a script run meanwhile is never overwritten (`index`).

use fred::{
    interfaces::{KeysInterface, SetsInterface, SortedSetsInterface},
    types::{
        Value,
        sorted_sets::{Ordering, ZRange},
    },
};

use super::{JobStore, Result, StoreError, outcome::attempt_ended, status};
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

/// The due queues one sweeper took (`take_due`).
#[derive(Debug)]
pub struct DueQueues {
    /// Redis's time when they were taken.
    pub now: UnixMillis,
    pub queues: Vec<QueueName>,
    /// When the next queue of the index falls due, if any does.
    pub next: Option<UnixMillis>,
}

/// What the end of an expired claim did.
#[derive(Debug)]
pub enum Expired {
    /// The worker never acknowledged the job: it went back to its queue at no cost.
    Released,
    /// The attempt ended: a lease ran out, or a job was not acknowledged once too often.
    AttemptEnded(FailOutcome, AttemptEnd),
}

/// A `due:` mark a queue script ended its reply with: the time to write to the due index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DueMark(f64);

impl DueMark {
    /// Takes the mark off the end of a script's reply, if it has one.
    pub fn take(reply: &mut Vec<Value>) -> Option<Self> {
        let mark = reply.last()?.as_str()?.strip_prefix("due:")?.parse().ok()?;
        reply.pop();
        Some(Self(mark))
    }
}

impl JobStore {
    /// Takes up to `most` queues of the due index whose time has come, leaving each to this
    /// sweeper for `lease` (other replicas skip it meanwhile).
    pub async fn take_due(&self, most: usize, lease: std::time::Duration) -> Result<DueQueues> {
        let reply: Vec<Value> = self
            .call(
                &self.scripts().due,
                vec![self.keys().due_index()],
                vec![most.to_string().into(), super::millis(lease).into()],
            )
            .await?;
        let shape = || StoreError::corrupt("due reply shape");
        let [now, queues, next]: [Value; 3] = reply.try_into().map_err(|_| shape())?;
        let names: Vec<String> = queues.convert().map_err(|_| shape())?;
        Ok(DueQueues {
            now: UnixMillis(now.as_u64().ok_or_else(shape)?),
            // Names that do not parse were not written by jobd; they are left alone.
            queues: names
                .iter()
                .filter_map(|name| QueueName::parse("queue", name).ok())
                .collect(),
            next: time(&next),
        })
    }

    /// Trims the queue's retained-job sets (`TRIM_BATCH` entries at most), reports what is
    /// due, and settles the queue's promise.
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
                    self.keys().ready(queue),
                    self.keys().promise(queue),
                ],
                vec![
                    SWEEP_BATCH.to_string().into(),
                    TRIM_BATCH.to_string().into(),
                ],
            )
            .await?;
        let shape = || StoreError::corrupt("sweep reply shape");
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

    /// Writes the queue's next visit, as a sweep settled it, to the due index; then reads the
    /// queue's promise again and, if a script promised an earlier time since the sweep (its
    /// caller's write to the index may have come before this one), writes that instead.
    pub async fn index(&self, queue: &QueueName, next: NextVisit) -> Result<()> {
        let index = self.keys().due_index();
        let written = match next {
            NextVisit::At(at) => Some(at.0 as f64),
            NextVisit::Idle => Some(f64::INFINITY),
            NextVisit::Forget => None,
        };
        match written {
            Some(score) => {
                let _: Value = self
                    .timed(
                        "index_queue",
                        self.client().zadd(
                            &index,
                            None,
                            None,
                            false,
                            false,
                            (score, queue.as_str()),
                        ),
                    )
                    .await?;
            }
            None => {
                let _: Value = self
                    .timed("forget_queue", self.client().zrem(&index, queue.as_str()))
                    .await?;
            }
        }
        let promised: Option<String> = self
            .timed(
                "read_promise",
                self.client().get(self.keys().promise(queue)),
            )
            .await?;
        let promised = promised.and_then(|held| parse_score(&held));
        if let Some(promised) = promised
            && written.is_none_or(|written| promised < written)
        {
            self.publish_due(queue, Some(DueMark(promised))).await?;
        }
        Ok(())
    }

    /// Writes a script's `due:` mark to the due index, if it had one: the queue's entry is
    /// lowered to it, or made.
    pub async fn publish_due(&self, queue: &QueueName, mark: Option<DueMark>) -> Result<()> {
        let Some(DueMark(at)) = mark else {
            return Ok(());
        };
        self.lower_due(vec![(at, queue.as_str())]).await
    }

    /// Lowers each queue's entry in the due index to its time, or makes it: the one write of
    /// a queue's time that can only bring it forward (`ZADD … LT`).
    async fn lower_due(&self, entries: Vec<(f64, &str)>) -> Result<()> {
        let _: Value = self
            .timed(
                "publish_due",
                self.client().zadd(
                    self.keys().due_index(),
                    None,
                    Some(Ordering::LessThan),
                    false,
                    false,
                    entries,
                ),
            )
            .await?;
        Ok(())
    }

    /// How many queues the due index holds: every queue with jobs.
    pub async fn indexed_queues(&self) -> Result<u64> {
        self.timed("count_queues", self.client().zcard(self.keys().due_index()))
            .await
    }

    /// A page of the due index's queues, from `start` (0-based rank); for the depth gauge.
    pub async fn indexed_page(&self, start: i64, count: i64) -> Result<Vec<QueueName>> {
        let names: Vec<String> = self
            .timed(
                "read_queues",
                self.client().zrange(
                    self.keys().due_index(),
                    ZRange::from(start),
                    ZRange::from(start + count - 1),
                    None,
                    false,
                    None,
                    false,
                ),
            )
            .await?;
        Ok(names
            .iter()
            .filter_map(|name| QueueName::parse("queue", name).ok())
            .collect())
    }

    /// Moves up to `most` queues of the registry older jobd versions kept (a set of every
    /// queue ever used) into the due index, due at once, so that the sweeper visits each and
    /// forgets those without jobs; returns how many it moved (0 once the set is gone).
    pub async fn migrate_legacy_registry(&self, most: usize) -> Result<usize> {
        let legacy = self.keys().legacy_queues();
        let names: Vec<String> = self
            .timed(
                "read_legacy_queues",
                self.client().srandmember(&legacy, Some(most)),
            )
            .await?;
        if names.is_empty() {
            return Ok(0);
        }
        self.lower_due(names.iter().map(|name| (0.0, name.as_str())).collect())
            .await?;
        let _: Value = self
            .timed(
                "forget_legacy_queues",
                self.client().srem(&legacy, names.clone()),
            )
            .await?;
        Ok(names.len())
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

/// A score Redis replied, or a promise: Unix ms, or `inf`.
fn parse_score(text: &str) -> Option<f64> {
    match text {
        "inf" | "+inf" => Some(f64::INFINITY),
        _ => text.parse().ok(),
    }
}

/// A finite time a script replied, as text or a number.
fn time(value: &Value) -> Option<UnixMillis> {
    let ms = match value {
        Value::Integer(n) => *n as f64,
        _ => parse_score(&value.as_string()?)?,
    };
    ms.is_finite().then_some(UnixMillis(ms.max(0.0) as u64))
}
