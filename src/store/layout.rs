//! How a job is laid out in its Redis hash, and how it is read back.
//!
//! A job is one hash. Its event log lives in the same hash as fields `e:1`, `e:2`, … holding
//! MessagePack maps written by the scripts (`t` type, `at` time, `a` attempt, and `w`
//! worker, `e` error, `r` reason, `v`/`m` progress, `due` run time where they apply), so one key
//! holds all of a job and one PEXPIRE ends it. The result is stored once, in the `result`
//! field, and joined to the COMPLETED event when the event is read. Fields that belong to one
//! state (`run_at` to SCHEDULED, `lease_until` to RUNNING) are left behind when the job moves
//! on, to save the scripts a command, and read only in their state.
//!
//! What never changes after submission and only jobd reads is one MessagePack field, `spec`
//! (`Spec`): one field to write and look up instead of ten, in a hash Redis scans field by
//! field. The fields the scripts read stay fields of their own: `kind`, `retention` and
//! `created` (Redis's time of the submission), `size` (what the job weighs in a claim's
//! reply), and `lease_default` when the job names one. A running job's `ack_until` lives
//! until its worker acknowledges it.

use std::{collections::BTreeMap, collections::HashMap, time::Duration};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{Backoff, Job, JobId, JobKind, JobState, UnixMillis};

/// The fields GetJob (and a claim, and ListJobs but for payload and result) reads: everything
/// but the event log and what only the scripts read. The payload and the result come last, so
/// that the fields before them are `SUMMARY_FIELDS`.
pub const JOB_FIELDS: [&str; 15] = [
    "state",
    "spec",
    "attempt",
    "seq",
    "created",
    "started",
    "finished",
    "error",
    "reason",
    "run_at",
    "lease_until",
    "ack_until",
    "worker",
    "payload",
    "result",
];

/// `JOB_FIELDS` but the payload and the result: what ListJobs lists, and what a submission's
/// reply says of an existing job.
pub const SUMMARY_FIELDS: &[&str] = JOB_FIELDS.split_at(JOB_FIELDS.len() - 2).0;

/// A job's `spec` field: what never changes after submission. Named fields (a MessagePack
/// map), so that fail.lua and promote.lua can read `m`, `b*` and `p` with cmsgpack.
#[derive(Debug, Serialize, Deserialize)]
pub struct Spec {
    #[serde(rename = "k")]
    pub kind: String,
    #[serde(rename = "l", default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "p")]
    pub priority: i32,
    #[serde(rename = "m")]
    pub max_attempts: u32,
    /// Backoff: initial delay ms, multiplier, longest delay ms, jitter.
    #[serde(rename = "bi")]
    pub backoff_initial: u64,
    #[serde(rename = "bm")]
    pub backoff_multiplier: f64,
    #[serde(rename = "bx")]
    pub backoff_max: u64,
    #[serde(rename = "bj")]
    pub backoff_jitter: f64,
    /// The submitter's W3C trace context.
    #[serde(rename = "t", default)]
    pub trace: BTreeMap<String, String>,
}

impl Spec {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        rmp_serde::to_vec_named(self)
            .map_err(|e| StoreError::corrupt(format!("encoding a spec: {e}")))
    }
}

pub fn event_field(sequence: u64) -> String {
    format!("e:{sequence}")
}

/// A job's stored fields, by name.
pub struct Fields(HashMap<String, Bytes>);

impl Fields {
    /// From the values of HMGET `names`, in order; absent fields are left out.
    pub fn from_values(names: &[&str], values: Vec<Option<Bytes>>) -> Self {
        Self(
            names
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                .collect(),
        )
    }

    fn bytes(&self, name: &str) -> Option<Bytes> {
        self.0.get(name).cloned()
    }

    fn text(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.0.get(name).map(|raw| utf8(raw)).transpose()
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, StoreError> {
        number(self.0.get(name).map(|raw| &raw[..]))
            .map_err(|_| StoreError::corrupt(format!("job field {name} is not a number")))
    }

    fn millis(&self, name: &str) -> Result<Option<UnixMillis>, StoreError> {
        Ok(self.number(name)?.map(UnixMillis))
    }

    fn spec(&self) -> Result<Spec, StoreError> {
        let raw = self
            .0
            .get("spec")
            .ok_or_else(|| StoreError::corrupt("job without spec"))?;
        rmp_serde::from_slice(raw).map_err(|e| StoreError::corrupt(format!("job field spec: {e}")))
    }

    /// Builds the job; `None` when it does not exist.
    pub fn into_job(self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let Some(state) = self.text("state")? else {
            return Ok(None);
        };
        let state = JobState::from_name(&state)
            .ok_or_else(|| StoreError::corrupt(format!("job state {state:?}")))?;
        let spec = self.spec()?;
        let kind =
            JobKind::parse("kind", &spec.kind).map_err(|_| StoreError::corrupt("job kind"))?;
        Ok(Some(Job {
            id: id.clone(),
            kind,
            state,
            attempt: self.number("attempt")?.unwrap_or(0),
            payload: self.bytes("payload").unwrap_or_default(),
            labels: spec.labels,
            result: self
                .bytes("result")
                .filter(|_| state == JobState::Completed),
            error: self.text("error")?.filter(|e| !e.is_empty()),
            cancel_reason: self.text("reason")?,
            created_at: self
                .millis("created")?
                .ok_or_else(|| StoreError::corrupt("job without created"))?,
            started_at: self.millis("started")?,
            finished_at: self.millis("finished")?,
            last_sequence: self.number("seq")?.unwrap_or(0),
            max_attempts: spec.max_attempts,
            priority: spec.priority,
            backoff: Backoff {
                initial: Duration::from_millis(spec.backoff_initial),
                multiplier: spec.backoff_multiplier,
                max: Duration::from_millis(spec.backoff_max),
                jitter: spec.backoff_jitter,
            },
            run_at: self
                .millis("run_at")?
                .filter(|_| state == JobState::Scheduled),
            lease_expires_at: self
                .millis("lease_until")?
                .filter(|_| state == JobState::Running),
            ack_deadline: self
                .millis("ack_until")?
                .filter(|_| state == JobState::Running),
            worker_id: self.text("worker")?,
            trace_context: spec.trace,
        }))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_every_job_field_but_payload_and_result() {
        let mut summary = SUMMARY_FIELDS.to_vec();
        summary.extend(["payload", "result"]);
        assert_eq!(summary, JOB_FIELDS);
    }
}
