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

/// Events read per round trip when replaying a log; most jobs have fewer in all.
const EVENT_PAGE: u64 = 16;

/// A page of a job's event log.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<JobEvent>,
    /// Whether the job had reached a terminal state when the page was read.
    pub finished: bool,
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

    /// A job without its payload and result (`SUMMARY_FIELDS`).
    pub async fn summary(&self, id: &JobId) -> Result<Job> {
        let values: Vec<Option<Bytes>> = self
            .timed(
                "get_summary",
                self.client()
                    .hmget(self.keys().job(id), SUMMARY_FIELDS.to_vec()),
            )
            .await?;
        Fields::from_values(&SUMMARY_FIELDS, values)
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

    /// Reads the events after `after`, oldest first: all of them, in as many round trips as
    /// it takes. `NotFound` when the job does not exist (or its retention passed);
    /// `PastLastEvent` when `after` is past the job's last sequence, since nothing after it
    /// will ever be recorded and a caller waiting for it would wait forever.
    pub async fn events_after(&self, id: &JobId, after: u64) -> Result<EventPage> {
        let key = self.keys().job(id);
        // Sequences are ranges from `after` with `after` itself skipped, and the page's end
        // saturates: `after` comes from the caller and may be any u64, up to u64::MAX.
        let page_end = after.saturating_add(EVENT_PAGE);
        let mut fields = vec!["state".to_owned(), "seq".to_owned(), "result".to_owned()];
        fields.extend((after..=page_end).skip(1).map(event_field));
        let mut values: Vec<Option<Bytes>> = self
            .timed("read_events", self.client().hmget(&key, fields))
            .await?;
        let mut head = values.drain(..3);
        let (state, seq, result) = (
            head.next().flatten(),
            head.next().flatten(),
            head.next().flatten(),
        );
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
        let finished = state
            .as_deref()
            .and_then(|state| std::str::from_utf8(state).ok())
            .and_then(JobState::from_name)
            .is_some_and(JobState::is_terminal);
        if last_sequence > page_end {
            let rest: Vec<Option<Bytes>> = self
                .timed(
                    "read_events",
                    self.client().hmget(
                        &key,
                        (page_end..=last_sequence)
                            .skip(1)
                            .map(event_field)
                            .collect::<Vec<_>>(),
                    ),
                )
                .await?;
            values.extend(rest);
        }
        let mut events = Vec::new();
        for (sequence, raw) in (after..=last_sequence).skip(1).zip(values) {
            let raw = raw.ok_or_else(|| {
                StoreError::corrupt(format!("event {sequence} of {id} is missing"))
            })?;
            events.push(decode_event(id, sequence, &raw, &result)?);
        }
        Ok(EventPage { events, finished })
    }

    /// Counts a queue's jobs by state, in one round trip; finished ones while their retention
    /// lasts by Redis's clock.
    pub async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let [completed, failed, cancelled] = self.retained_keys(queue);
        let keys = vec![
            self.keys().ready(queue),
            self.keys().scheduled(queue),
            self.keys().running(queue),
            completed,
            failed,
            cancelled,
        ];
        let counts: Vec<u64> = self.call(&self.scripts().stats, keys, Vec::new()).await?;
        let [queued, scheduled, running, completed, failed, cancelled]: [u64; 6] = counts
            .try_into()
            .map_err(|_| StoreError::corrupt("stats reply shape"))?;
        Ok(QueueStats {
            queued,
            scheduled,
            running,
            completed,
            failed,
            cancelled,
        })
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
