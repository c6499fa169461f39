//! How jobs and events are laid out in Redis, and how they are read back.
//!
//! A job is one hash. Its event log lives in the same hash as fields `e:1`, `e:2`, … holding
//! MessagePack maps written by the scripts (`t` type, `at` time, `a` attempt, and `w`
//! worker, `e` error, `r` reason, `v`/`m` progress where they apply), so one key holds all of
//! a job and one PEXPIRE ends it. The result is stored once, in the `result` field, and joined
//! to the COMPLETED event when the event is read.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;

use super::StoreError;
use crate::domain::{EventKind, Job, JobEvent, JobId, JobKind, JobState, Progress, UnixMillis};

/// Fields read for a job, in this order.
pub const JOB_FIELDS: [&str; 12] = [
    "state", "kind", "payload", "labels", "attempt", "created", "started", "finished", "result",
    "error", "reason", "seq",
];

pub fn event_field(sequence: u64) -> String {
    format!("e:{sequence}")
}

pub fn encode_labels(labels: &BTreeMap<String, String>) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(labels).map_err(|e| StoreError::corrupt(format!("encoding labels: {e}")))
}

pub fn decode_labels(raw: &[u8]) -> Result<BTreeMap<String, String>, StoreError> {
    if raw.is_empty() {
        return Ok(BTreeMap::new());
    }
    rmp_serde::from_slice(raw).map_err(|e| StoreError::corrupt(format!("labels: {e}")))
}

/// Builds a job from the values of `JOB_FIELDS`; `None` when the job does not exist.
pub fn decode_job(id: &JobId, values: Vec<Option<Bytes>>) -> Result<Option<Job>, StoreError> {
    let [
        state,
        kind,
        payload,
        labels,
        attempt,
        created,
        started,
        finished,
        result,
        error,
        reason,
        seq,
    ]: [Option<Bytes>; 12] = values
        .try_into()
        .map_err(|_| StoreError::corrupt("job field count"))?;
    let Some(state) = state else {
        return Ok(None);
    };
    let state = std::str::from_utf8(&state)
        .ok()
        .and_then(JobState::from_name)
        .ok_or_else(|| StoreError::corrupt("job state"))?;
    let kind = kind.ok_or_else(|| StoreError::corrupt("job kind"))?;
    let kind =
        JobKind::parse("kind", &utf8(&kind)?).map_err(|_| StoreError::corrupt("job kind"))?;
    Ok(Some(Job {
        id: id.clone(),
        kind,
        state,
        attempt: number(attempt.as_deref())?.unwrap_or(0),
        payload: payload.unwrap_or_default(),
        labels: decode_labels(labels.as_deref().unwrap_or_default())?,
        result: result.filter(|_| state == JobState::Completed),
        error: error.map(|e| utf8(&e)).transpose()?,
        cancel_reason: reason.map(|r| utf8(&r)).transpose()?,
        created_at: UnixMillis(number(created.as_deref())?.unwrap_or(0)),
        started_at: number(started.as_deref())?.map(UnixMillis),
        finished_at: number(finished.as_deref())?.map(UnixMillis),
        last_sequence: number(seq.as_deref())?.unwrap_or(0),
    }))
}

/// An event as the scripts write it.
#[derive(Debug, Deserialize)]
struct EventRecord {
    t: String,
    at: u64,
    a: u32,
    #[serde(default)]
    w: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    r: Option<String>,
    #[serde(default)]
    v: Option<f64>,
    #[serde(default)]
    m: Option<String>,
}

/// Decodes one stored event; `result` is the job's result, joined to a COMPLETED event.
pub fn decode_event(
    job_id: &JobId,
    sequence: u64,
    raw: &[u8],
    result: &Option<Bytes>,
) -> Result<JobEvent, StoreError> {
    let record: EventRecord = rmp_serde::from_slice(raw)
        .map_err(|e| StoreError::corrupt(format!("event {sequence} of {job_id}: {e}")))?;
    let kind = match record.t.as_str() {
        "queued" => EventKind::Queued,
        "started" => EventKind::Started {
            worker_id: record.w.unwrap_or_default(),
        },
        "progress" => EventKind::Progress(Progress {
            value: record.v,
            message: record.m.unwrap_or_default(),
        }),
        "completed" => EventKind::Completed {
            result: result.clone().unwrap_or_default(),
        },
        "failed" => EventKind::Failed {
            error: record.e.unwrap_or_default(),
        },
        "cancelled" => EventKind::Cancelled {
            reason: record.r.unwrap_or_default(),
        },
        other => {
            return Err(StoreError::corrupt(format!(
                "event {sequence} of {job_id} has unknown type {other:?}"
            )));
        }
    };
    Ok(JobEvent {
        job_id: job_id.clone(),
        sequence,
        at: UnixMillis(record.at),
        attempt: record.a,
        kind,
    })
}

pub fn utf8(raw: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(raw.to_vec()).map_err(|_| StoreError::corrupt("text field is not UTF-8"))
}

pub fn number<T: std::str::FromStr>(raw: Option<&[u8]>) -> Result<Option<T>, StoreError> {
    raw.map(|raw| {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::corrupt("numeric field"))
    })
    .transpose()
}
