//! Reading jobs: one job, its event log after a sequence, a queue's counts; and the admission
//! of a principal's queues under its cap.

use bytes::Bytes;
use fred::{interfaces::HashesInterface, types::Value};

use super::{
    JobStore, Result, StoreError,
    event_codec::decode_event,
    layout::{Fields, JOB_FIELDS, SUMMARY_FIELDS, event_field, number},
};
use crate::domain::{Job, JobEvent, JobId, JobState, QueueName};

/// How long a queue admitted for a principal may wait for its first jobs before the sweeper
/// may forget it (it counts towards the principal's cap meanwhile).
const ADMITTED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Events read per round trip when replaying a log: a page of a capped log is one bounded
/// HMGET, however long the log (see `StoreSettings::max_events_per_job`).
pub const EVENT_PAGE: u64 = 256;

/// Events the first read of a log (and a re-read after a gap) asks for: the whole log of most
/// jobs (a job that runs once has three events). Each field an HMGET names costs Redis a search
/// of the job's hash and jobd its name, whether the event exists or not: a first page of
/// `EVENT_PAGE` cost more than the rest of a job's lifecycle.
pub const FIRST_EVENT_PAGE: u64 = 16;

/// A page of a job's event log: at most `EVENT_PAGE` events.
#[derive(Debug)]
pub struct EventPage {
    /// Oldest first. A COMPLETED event comes without its result (`JobStore::result` reads
    /// it), so that a page costs little whatever the result's size.
    pub events: Vec<JobEvent>,
    /// Whether the job had reached a terminal state when the page was read, and the page
    /// holds its last event.
    pub finished: bool,
    /// Whether the log goes on past this page: read again after its last sequence.
    pub more: bool,
    /// The sequence the page ends at: read again after it when `more`. Past the last event
    /// of `events` when the page ends with replaced events (see `logged` in lua/lib.lua).
    pub end: u64,
}

/// A queue's jobs by state; finished ones only while retained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl JobStore {
    pub async fn get(&self, id: &JobId) -> Result<Job> {
        self.read_fields(id, "get_job")
            .await?
            .into_job(id)?
            .ok_or(StoreError::NotFound)
    }

    /// The bytes of a job's payload and result together (none for a job that is gone), read
    /// before the job itself so that a reply carrying them can be counted first.
    pub async fn payload_sizes(&self, id: &JobId) -> Result<u64> {
        let key = self.keys().job(id);
        let round_trip = async {
            let pipeline = self.client().pipeline();
            let _: () = pipeline.hstrlen(&key, "payload").await?;
            let _: () = pipeline.hstrlen(&key, "result").await?;
            pipeline.all::<(u64, u64)>().await
        };
        let (payload, result) = self.timed("read_sizes", round_trip).await?;
        Ok(payload + result)
    }

    /// A job without its payload and result (`SUMMARY_FIELDS`).
    pub async fn summary(&self, id: &JobId) -> Result<Job> {
        let values: Vec<Option<Bytes>> = self
            .timed(
                "get_summary",
                self.client()
                    .hmget(self.keys().job(id), SUMMARY_FIELDS.to_vec()),
            )
            .await?;
        Fields::from_values(SUMMARY_FIELDS, values)
            .into_job(id)?
            .ok_or(StoreError::NotFound)
    }

    /// A job's `JOB_FIELDS`, read as `operation`.
    pub(super) async fn read_fields(&self, id: &JobId, operation: &'static str) -> Result<Fields> {
        let values: Vec<Option<Bytes>> = self
            .timed(
                operation,
                self.client()
                    .hmget(self.keys().job(id), JOB_FIELDS.to_vec()),
            )
            .await?;
        Ok(Fields::from_values(&JOB_FIELDS, values))
    }

    /// Reads a page of the events after `after`, oldest first: those up to `after` + `page`
    /// (`FIRST_EVENT_PAGE` or `EVENT_PAGE`), in one HMGET. `NotFound` when the job does not exist (or its retention
    /// passed); `PastLastEvent` when `after` is past the job's last sequence, since nothing
    /// after it will ever be recorded and a caller waiting for it would wait forever. A
    /// sequence without its event is an event that a later one replaced (see
    /// `logged` in lua/lib.lua): it is skipped.
    pub async fn events_after(&self, id: &JobId, after: u64, page: u64) -> Result<EventPage> {
        let key = self.keys().job(id);
        // Sequences are ranges from `after` with `after` itself skipped, and the page's end
        // saturates: `after` comes from the caller and may be any u64, up to u64::MAX.
        let page_end = after.saturating_add(page);
        let mut fields = vec![
            "state".to_owned(),
            "seq".to_owned(),
            "lr".to_owned(),
            "lp".to_owned(),
        ];
        fields.extend((after..=page_end).skip(1).map(event_field));
        let mut values: Vec<Option<Bytes>> = self
            .timed("read_events", self.client().hmget(&key, fields))
            .await?;
        let mut head = values.drain(..4);
        let (state, seq) = (head.next().flatten(), head.next().flatten());
        let (run_start, run_end) = (head.next().flatten(), head.next().flatten());
        drop(head);
        let Some(last_sequence) = number::<u64>(seq.as_deref())? else {
            return Err(StoreError::NotFound);
        };
        if after > last_sequence {
            return Err(StoreError::PastLastEvent {
                after,
                last: last_sequence,
            });
        }
        // Inside the run of replaced events (`logged` in lua/lib.lua), whose events up to
        // its kept one are gone: go on from there, in one more read.
        if let (Some(start), Some(kept)) = (
            number::<u64>(run_start.as_deref())?,
            number::<u64>(run_end.as_deref())?,
        ) && start <= after.saturating_add(1)
            && after.saturating_add(1) < kept
        {
            return Box::pin(self.events_after(id, kept - 1, page)).await;
        }
        let more = last_sequence > page_end;
        let finished = !more
            && state
                .as_deref()
                .and_then(|state| std::str::from_utf8(state).ok())
                .and_then(JobState::from_name)
                .is_some_and(JobState::is_terminal);
        let end = page_end.min(last_sequence);
        let mut events = Vec::new();
        for (sequence, raw) in (after..=end).skip(1).zip(values) {
            if let Some(raw) = raw {
                events.push(decode_event(id, sequence, &raw, &None)?);
            }
        }
        Ok(EventPage {
            events,
            finished,
            more,
            end,
        })
    }

    /// A job's result: `None` while it has none (or the job is gone).
    pub async fn result(&self, id: &JobId) -> Result<Option<Bytes>> {
        self.timed(
            "read_result",
            self.client().hget(self.keys().job(id), "result"),
        )
        .await
    }

    /// Counts a queue's jobs by state, in one round trip; finished ones while their retention
    /// lasts by Redis's clock.
    pub async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let counts: Value = self
            .call(&self.scripts().stats, self.stats_keys(queue), Vec::new())
            .await?;
        counted(counts)
    }

    /// `stats` of each queue, one round trip for them all (a pipeline of a `stats.lua` call
    /// per queue, each in its queue's slot); each queue's counts, in order.
    pub async fn stats_each(&self, queues: &[QueueName]) -> Vec<Result<QueueStats>> {
        let calls: Vec<(Vec<String>, Vec<Value>)> = queues
            .iter()
            .map(|queue| (self.stats_keys(queue), Vec::new()))
            .collect();
        let replies = self.call_each(&self.scripts().stats, &calls).await;
        replies.into_iter().map(|reply| counted(reply?)).collect()
    }

    /// The keys `stats.lua` counts, in its KEYS order.
    fn stats_keys(&self, queue: &QueueName) -> Vec<String> {
        let [completed, failed, cancelled] = self.retained_keys(queue);
        vec![
            self.keys().ready(queue),
            self.keys().scheduled(queue),
            self.keys().running(queue),
            completed,
            failed,
            cancelled,
        ]
    }

    /// Admits `principal`'s submissions to `queues` under its `cap` on queues with jobs
    /// (admit.lua); false when the cap refused them, and nothing was written.
    pub async fn admit_queues(
        &self,
        principal: &str,
        cap: u32,
        queues: &[&QueueName],
    ) -> Result<bool> {
        let mut args: Vec<Value> =
            vec![cap.to_string().into(), super::millis(ADMITTED_GRACE).into()];
        args.extend(queues.iter().map(|queue| Value::from(queue.as_str())));
        let admitted: i64 = self
            .call(
                &self.scripts().admit,
                vec![
                    self.keys().due_index(),
                    self.keys().principal_queues(principal),
                ],
                args,
            )
            .await?;
        Ok(admitted == 1)
    }
}

/// A `stats.lua` reply, read.
fn counted(counts: Value) -> Result<QueueStats> {
    let shape = || StoreError::corrupt("stats reply shape");
    let counts: Vec<u64> = counts.convert().map_err(|_| shape())?;
    let [queued, scheduled, running, completed, failed, cancelled]: [u64; 6] =
        counts.try_into().map_err(|_| shape())?;
    Ok(QueueStats {
        queued,
        scheduled,
        running,
        completed,
        failed,
        cancelled,
    })
}
