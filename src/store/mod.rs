//! Everything that speaks to Redis for jobs: key layout, scripts, and `JobStore`, the typed
//! operations the API is built on.

mod codec;
mod connection;
mod keys;
mod scripts;

use std::time::Duration;

use bytes::Bytes;
use fred::{
    clients::Pool,
    error::{Error as RedisError, ErrorKind},
    interfaces::{HashesInterface, SortedSetsInterface},
    types::Value,
};

pub use connection::RedisClients;
pub use keys::Keys;

use crate::domain::{
    Claimed, HeartbeatOutcome, Job, JobEvent, JobId, JobIdGenerator, JobKind, JobState, LeaseToken,
    NewJob, Progress, QueueName, UnixMillis, WorkerId,
};
use codec::{
    JOB_FIELDS, decode_event, decode_job, decode_labels, encode_labels, event_field, number, utf8,
};
use scripts::{LuaScript, Scripts};

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job not found")]
    NotFound,
    /// The operation does not apply to the job as it is; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// Redis could not be reached within the command timeout.
    #[error("Redis is unavailable")]
    Unavailable(#[source] RedisError),
    /// Redis answered with an error, or with data jobd did not write.
    #[error("Redis error in {context}")]
    Redis {
        context: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("stored data is not as expected: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    fn redis(context: &'static str) -> impl FnOnce(RedisError) -> Self {
        move |source| match source.kind() {
            ErrorKind::Timeout
            | ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::NotFound => Self::Unavailable(source),
            _ => Self::Redis { context, source },
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Events read per round trip when replaying a log; most jobs have fewer in all.
const EVENT_PAGE: u64 = 16;

/// How many ready jobs a claim looks at in one round, so that a few concurrent claimers racing
/// for the head of a queue each still find one.
const CLAIM_CANDIDATES: i64 = 4;

/// How many times a claim retries after losing all its candidates to other workers.
const CLAIM_ROUNDS: usize = 8;

/// Typed job operations on Redis. Cheap to clone; all clones share the pool.
#[derive(Clone)]
pub struct JobStore {
    pool: Pool,
    keys: Keys,
    scripts: Scripts,
    ids: std::sync::Arc<JobIdGenerator>,
    retention: Duration,
}

/// A page of a job's event log.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<JobEvent>,
    /// The sequence of the job's latest event when the page was read.
    pub last_sequence: u64,
    /// Whether the job had reached a terminal state when the page was read.
    pub finished: bool,
}

impl JobStore {
    pub fn new(pool: Pool, keys: Keys, retention: Duration) -> Self {
        Self {
            pool,
            keys,
            scripts: Scripts::new(),
            ids: Default::default(),
            retention,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Creates a job in state QUEUED and wakes a worker waiting on its queue.
    pub async fn submit(&self, new: NewJob, now: UnixMillis) -> Result<Job> {
        let id = self.ids.generate(&new.queue);
        let labels = encode_labels(&new.labels)?;
        let reply: Vec<String> = self
            .call(
                &self.scripts.submit,
                vec![self.keys.job(&id), self.keys.ready(&new.queue)],
                vec![
                    Value::from(id.to_string()),
                    new.kind.as_str().into(),
                    new.payload.clone().into(),
                    Bytes::from(labels).into(),
                    now.0.to_string().into(),
                    ready_score(now).into(),
                    self.keys.queue_channel().into(),
                    new.queue.as_str().into(),
                ],
            )
            .await?;
        // "exists" means an earlier try of this very call was written: same id, same job.
        debug_assert!(matches!(
            reply.first().map(String::as_str),
            Some("ok" | "exists")
        ));
        Ok(Job {
            id,
            kind: new.kind,
            state: JobState::Queued,
            attempt: 0,
            payload: new.payload,
            labels: new.labels,
            result: None,
            error: None,
            cancel_reason: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            last_sequence: 1,
        })
    }

    pub async fn get(&self, id: &JobId) -> Result<Job> {
        let values: Vec<Option<Bytes>> = self
            .pool
            .next()
            .hmget(self.keys.job(id), JOB_FIELDS.to_vec())
            .await
            .map_err(StoreError::redis("reading a job"))?;
        decode_job(id, values)?.ok_or(StoreError::NotFound)
    }

    /// Reads the events after `after`, oldest first: all of them, in as many round trips as
    /// it takes. `NotFound` when the job does not exist (or its retention passed).
    pub async fn events_after(&self, id: &JobId, after: u64) -> Result<EventPage> {
        let key = self.keys.job(id);
        let mut fields = vec!["state".to_owned(), "seq".to_owned(), "result".to_owned()];
        fields.extend((after + 1..=after + EVENT_PAGE).map(event_field));
        let mut values: Vec<Option<Bytes>> = self
            .pool
            .next()
            .hmget(&key, fields)
            .await
            .map_err(StoreError::redis("reading events"))?;
        let mut stored = values.drain(..3);
        let state = stored.next().flatten();
        let last_sequence: u64 = match number(stored.next().flatten().as_deref())? {
            Some(seq) => seq,
            None => return Err(StoreError::NotFound),
        };
        let result = stored.next().flatten();
        drop(stored);
        let finished = state
            .as_deref()
            .and_then(|state| std::str::from_utf8(state).ok())
            .and_then(JobState::from_name)
            .is_some_and(JobState::is_terminal);
        if last_sequence > after + EVENT_PAGE {
            let rest: Vec<Option<Bytes>> = self
                .pool
                .next()
                .hmget(
                    &key,
                    (after + EVENT_PAGE + 1..=last_sequence)
                        .map(event_field)
                        .collect::<Vec<_>>(),
                )
                .await
                .map_err(StoreError::redis("reading events"))?;
            values.extend(rest);
        }
        let mut events = Vec::new();
        for (sequence, raw) in (after + 1..=last_sequence).zip(values) {
            let raw = raw.ok_or_else(|| {
                StoreError::corrupt(format!("event {sequence} of {id} is missing"))
            })?;
            events.push(decode_event(id, sequence, &raw, &result)?);
        }
        Ok(EventPage {
            events,
            last_sequence,
            finished,
        })
    }

    /// Claims the job at the head of `queue`, if any. Losing a race for a candidate to another
    /// worker moves on to the next one; `None` means the queue had nothing ready.
    pub async fn claim(
        &self,
        queue: &QueueName,
        worker: &WorkerId,
        lease: Duration,
        now: UnixMillis,
    ) -> Result<Option<Claimed>> {
        let ready = self.keys.ready(queue);
        for _ in 0..CLAIM_ROUNDS {
            let candidates: Vec<String> = self
                .pool
                .next()
                .zrange(&ready, 0, CLAIM_CANDIDATES - 1, None, false, None, false)
                .await
                .map_err(StoreError::redis("reading a queue"))?;
            if candidates.is_empty() {
                return Ok(None);
            }
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            let mut keys = vec![ready.clone(), self.keys.running(queue)];
            let mut args: Vec<Value> = vec![
                now.0.to_string().into(),
                lease_ms.to_string().into(),
                worker.as_str().into(),
                "1".into(),
                self.keys.job_channel().into(),
            ];
            let mut foreign = Vec::new();
            for candidate in candidates {
                match JobId::parse("candidate", &candidate) {
                    Ok(id) if id.queue() == queue => {
                        keys.push(self.keys.job(&id));
                        args.push(candidate.into());
                        args.push(LeaseToken::generate().as_str().into());
                    }
                    _ => foreign.push(candidate),
                }
            }
            if !foreign.is_empty() {
                // jobd never writes such entries; left in place they would block the queue.
                tracing::warn!(queue = %queue, entries = ?foreign, "removing foreign ready-set entries");
                let _: i64 = self
                    .pool
                    .next()
                    .zrem(&ready, foreign)
                    .await
                    .map_err(StoreError::redis("cleaning a queue"))?;
            }
            let claimed: Vec<Vec<Value>> = self.call(&self.scripts.claim, keys, args).await?;
            if let Some(entry) = claimed.into_iter().next() {
                return decode_claimed(entry, now).map(Some);
            }
            // Every candidate was taken by another worker between the read and the script:
            // look again.
        }
        // Lost every round to other workers: report nothing; a waiting claim waits again.
        Ok(None)
    }

    pub async fn heartbeat(
        &self,
        id: &JobId,
        token: &LeaseToken,
        lease: Option<Duration>,
        progress: Option<Progress>,
        now: UnixMillis,
    ) -> Result<HeartbeatOutcome> {
        let lease = lease
            .map(|lease| {
                u64::try_from(lease.as_millis())
                    .unwrap_or(u64::MAX)
                    .to_string()
            })
            .unwrap_or_default();
        let (record, value, message) = match progress {
            Some(progress) => (
                "1",
                progress.value.map(|v| v.to_string()).unwrap_or_default(),
                progress.message,
            ),
            None => ("0", String::new(), String::new()),
        };
        let reply: Vec<Value> = self
            .call(
                &self.scripts.heartbeat,
                vec![self.keys.job(id), self.keys.running(id.queue())],
                vec![
                    id.to_string(),
                    token.as_str().to_owned(),
                    now.0.to_string(),
                    lease,
                    record.to_owned(),
                    value,
                    message,
                    self.keys.job_channel(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            "ok" => {
                let expires = reply
                    .get(1)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| StoreError::corrupt("heartbeat reply without a lease expiry"))?;
                Ok(HeartbeatOutcome::Extended(UnixMillis(expires)))
            }
            "cancelled" => Ok(HeartbeatOutcome::Cancelled),
            other => Err(lease_refusal(other, &reply)),
        }
    }

    /// Records the worker's outcome: COMPLETED with `result`, or FAILED with `error`.
    pub async fn finish(
        &self,
        id: &JobId,
        token: &LeaseToken,
        outcome: Outcome,
        now: UnixMillis,
    ) -> Result<JobState> {
        let (state, detail) = match outcome {
            Outcome::Completed(result) => (JobState::Completed, result),
            Outcome::Failed(error) => (JobState::Failed, Bytes::from(error)),
        };
        let reply: Vec<Value> = self
            .call(
                &self.scripts.finish,
                vec![self.keys.job(id), self.keys.running(id.queue())],
                vec![
                    Value::from(id.to_string()),
                    token.as_str().into(),
                    now.0.to_string().into(),
                    state.as_str().into(),
                    detail.into(),
                    self.retention_ms().into(),
                    self.keys.job_channel().into(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            "ok" => Ok(state),
            other => Err(lease_refusal(other, &reply)),
        }
    }

    /// Cancels a queued or running job and returns it. A cancelled job is returned unchanged.
    pub async fn cancel(&self, id: &JobId, reason: &str, now: UnixMillis) -> Result<Job> {
        let reply: Vec<Value> = self
            .call(
                &self.scripts.cancel,
                vec![
                    self.keys.job(id),
                    self.keys.ready(id.queue()),
                    self.keys.running(id.queue()),
                ],
                vec![
                    id.to_string(),
                    now.0.to_string(),
                    reason.to_owned(),
                    self.retention_ms(),
                    self.keys.job_channel(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            "ok" | "unchanged" => self.get(id).await,
            "not_found" => Err(StoreError::NotFound),
            "finished" => Err(StoreError::Conflict(format!(
                "the job is already {} and can no longer be cancelled",
                state_name(&reply)
            ))),
            other => Err(StoreError::corrupt(format!("cancel replied {other:?}"))),
        }
    }

    async fn call<R: fred::types::FromValue>(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<impl Into<Value>>,
    ) -> Result<R> {
        let args: Vec<Value> = args.into_iter().map(Into::into).collect();
        script
            .call(self.pool.next(), keys, args)
            .await
            .map_err(StoreError::redis(script.name()))
    }

    fn retention_ms(&self) -> String {
        self.retention.as_millis().max(1).to_string()
    }
}

/// How a worker's attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed(Bytes),
    Failed(String),
}

/// The ready-set score: earlier first. Job ids order equal scores, and they increase within a
/// process, so FIFO holds within one millisecond too.
fn ready_score(now: UnixMillis) -> String {
    now.0.to_string()
}

fn status(reply: &[Value]) -> Result<String> {
    reply
        .first()
        .and_then(Value::as_string)
        .ok_or_else(|| StoreError::corrupt("script reply without a status"))
}

fn state_name(reply: &[Value]) -> String {
    reply
        .get(1)
        .and_then(Value::as_string)
        .unwrap_or_else(|| "finished".to_owned())
}

/// Turns a script's refusal of a lease token into the error the worker sees.
fn lease_refusal(status: &str, reply: &[Value]) -> StoreError {
    match status {
        "not_found" => StoreError::NotFound,
        "stale" => {
            let why = match JobState::from_name(&state_name(reply)) {
                Some(JobState::Cancelled) => "the job was cancelled".to_owned(),
                Some(JobState::Running) => "the job was claimed again by another worker".to_owned(),
                Some(JobState::Queued) => "the job went back to its queue".to_owned(),
                Some(state) => format!("the job is already {}", state.as_str()),
                None => "the job changed".to_owned(),
            };
            StoreError::Conflict(format!(
                "the lease token is not the job's current one: {why}"
            ))
        }
        other => StoreError::corrupt(format!("unexpected script status {other:?}")),
    }
}

fn decode_claimed(entry: Vec<Value>, now: UnixMillis) -> Result<Claimed> {
    let bytes = |value: &Value| {
        value
            .as_bytes()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default()
    };
    let [
        id,
        token,
        kind,
        payload,
        labels,
        attempt,
        created,
        seq,
        expires,
    ]: [Value; 9] = entry
        .try_into()
        .map_err(|_| StoreError::corrupt("claim reply shape"))?;
    let id = JobId::parse("id", &utf8(&bytes(&id))?)
        .map_err(|_| StoreError::corrupt("claimed job id"))?;
    let expires = expires
        .as_u64()
        .ok_or_else(|| StoreError::corrupt("lease expiry"))?;
    let job = Job {
        kind: JobKind::parse("kind", &utf8(&bytes(&kind))?)
            .map_err(|_| StoreError::corrupt("job kind"))?,
        state: JobState::Running,
        attempt: attempt
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        payload: bytes(&payload),
        labels: decode_labels(&bytes(&labels))?,
        result: None,
        error: None,
        cancel_reason: None,
        created_at: UnixMillis(number(Some(&bytes(&created)))?.unwrap_or(0)),
        started_at: Some(now),
        finished_at: None,
        last_sequence: seq.as_u64().unwrap_or(0),
        id,
    };
    Ok(Claimed {
        token: LeaseToken::parse("token", &utf8(&bytes(&token))?)
            .map_err(|_| StoreError::corrupt("lease token"))?,
        lease_expires_at: UnixMillis(expires),
        job,
    })
}
