//! The due index (which queues have something due, and when) and the writes that keep it true.
//!
//! The due index lives in a slot of its own, so no queue script can write it: a script that
//! makes something fall due in its queue records it in the queue's promise and ends its reply
//! with a `due:` mark, which the caller writes to the index right after (`publish_due`); the
//! sweeper, after its sweeps, writes the queues' next times and then reads their promises
//! again, so that a script run meanwhile is never overwritten (`index`).

use fred::{
    interfaces::{KeysInterface, SetsInterface, SortedSetsInterface},
    types::{
        Value,
        sorted_sets::{Ordering, ZRange},
    },
};

use super::{JobStore, NextVisit, Result, StoreError};
use crate::domain::{QueueName, UnixMillis};

/// The due queues one sweeper took (`take_due`).
#[derive(Debug)]
pub struct DueQueues {
    /// Redis's time when they were taken.
    pub now: UnixMillis,
    pub queues: Vec<QueueName>,
    /// When the next queue of the index falls due, if any does.
    pub next: Option<UnixMillis>,
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

    /// Writes each queue's next visit, as its sweep settled it, to the due index (one
    /// round trip for them all); then reads the queues' promises again (one more) and, where a
    /// script promised an earlier time since the sweep (its caller's write to the index may
    /// have come before this one), writes that instead.
    pub async fn index(&self, visited: &[(QueueName, NextVisit)]) -> Result<()> {
        if visited.is_empty() {
            return Ok(());
        }
        let written: Vec<Option<f64>> = visited
            .iter()
            .map(|(_, next)| match next {
                NextVisit::At(at) => Some(at.0 as f64),
                NextVisit::Idle => Some(f64::INFINITY),
                NextVisit::Forget => None,
            })
            .collect();
        let (mut scored, mut forgotten) = (Vec::new(), Vec::new());
        for ((queue, _), written) in visited.iter().zip(&written) {
            match written {
                Some(score) => scored.push((*score, queue.as_str())),
                None => forgotten.push(queue.as_str()),
            }
        }
        let index = self.keys().due_index();
        // Both commands go to the index's slot, one connection: one round trip.
        let pipeline = self.client().pipeline();
        if !scored.is_empty() {
            let _: () = pipeline
                .zadd(&index, None, None, false, false, scored)
                .await
                .map_err(StoreError::redis("index_queues"))?;
        }
        if !forgotten.is_empty() {
            let _: () = pipeline
                .zrem(&index, forgotten)
                .await
                .map_err(StoreError::redis("index_queues"))?;
        }
        let _: Value = self.timed("index_queues", pipeline.all()).await?;
        // Only now, after the index was written.
        let promised = self
            .promises(visited.iter().map(|(queue, _)| queue))
            .await?;
        let mut lower = Vec::new();
        for (((queue, _), written), promised) in visited.iter().zip(&written).zip(promised) {
            if let Some(promised) = promised.as_deref().and_then(parse_score)
                && written.is_none_or(|written| promised < written)
            {
                lower.push((promised, queue.as_str()));
            }
        }
        if lower.is_empty() {
            return Ok(());
        }
        self.lower_due(lower).await
    }

    /// The promises of `queues`, each read in its own queue's slot, one pipeline for all.
    async fn promises<'a>(
        &self,
        queues: impl ExactSizeIterator<Item = &'a QueueName>,
    ) -> Result<Vec<Option<String>>> {
        let count = queues.len();
        let pipeline = self.client().pipeline();
        for queue in queues {
            let _: () = pipeline
                .get(self.keys().promise(queue))
                .await
                .map_err(StoreError::redis("read_promises"))?;
        }
        let replies = async { Ok(pipeline.try_all::<Option<String>>().await) };
        each_reply(self.timed("read_promises", replies).await?, count)
            .map_err(StoreError::redis("read_promises"))
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
}

/// The replies of a pipeline of `calls` commands, each its command's, or the first error.
/// (A pipeline that could not be sent answers one error for all.)
fn each_reply<R>(
    replies: Vec<std::result::Result<R, fred::error::Error>>,
    calls: usize,
) -> std::result::Result<Vec<R>, fred::error::Error> {
    let replies = replies
        .into_iter()
        .collect::<std::result::Result<Vec<R>, _>>()?;
    if replies.len() != calls {
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "a pipeline's replies do not match its commands",
        ));
    }
    Ok(replies)
}

/// A score Redis replied, or a promise: Unix ms, or `inf`.
fn parse_score(text: &str) -> Option<f64> {
    match text {
        "inf" | "+inf" => Some(f64::INFINITY),
        _ => text.parse().ok(),
    }
}

/// A finite time a script replied, as text or a number.
pub(super) fn time(value: &Value) -> Option<UnixMillis> {
    let ms = match value {
        Value::Integer(n) => *n as f64,
        _ => parse_score(&value.as_string()?)?,
    };
    ms.is_finite().then_some(UnixMillis(ms.max(0.0) as u64))
}
