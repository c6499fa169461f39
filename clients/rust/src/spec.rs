//! [`JobSpec`]: a job to submit, with the options of `SubmitJobRequest`; unset options take
//! jobd's defaults.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;

use crate::proto::{self, submit_job_request::Start};

/// A job to submit: queue, kind, payload and options. `JobSpec::new("emails", "welcome")
/// .payload(r#"{"to":"ada@example.com"}"#).max_attempts(5)`.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    request: proto::SubmitJobRequest,
}

impl JobSpec {
    /// A job of `kind` for `queue`, with an empty payload and jobd's defaults.
    pub fn new(queue: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            request: proto::SubmitJobRequest {
                queue: queue.into(),
                kind: kind.into(),
                ..Default::default()
            },
        }
    }

    /// The input for the worker: bytes as they are (a `String` as UTF-8).
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.request.payload = payload.into();
        self
    }

    /// Free-form labels.
    pub fn labels(mut self, labels: HashMap<String, String>) -> Self {
        self.request.labels = labels;
        self
    }

    /// Attempts in all: 1 to 100 (jobd's default: 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.request.max_attempts = attempts;
        self
    }

    /// Claim priority within the queue: higher first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.request.priority = priority;
        self
    }

    /// Claimable only after this delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.request.start = Some(Start::Delay(duration(delay)));
        self
    }

    /// The lease for workers that do not ask for their own.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.request.lease = Some(duration(lease));
        self
    }

    /// Makes the submission idempotent under this key (per queue). Without one, the client
    /// generates one when it may retry the submission.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.request.idempotency_key = key.into();
        self
    }

    /// How long the job stays readable after it finishes.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.request.retention = Some(duration(retention));
        self
    }

    /// Retry delays: see `BackoffPolicy` in job.proto.
    pub fn backoff(mut self, backoff: proto::BackoffPolicy) -> Self {
        self.request.backoff = Some(backoff);
        self
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.request.queue
    }

    /// The request, with a generated idempotency key when `generate_key` and none was given.
    pub(crate) fn into_request(self, generate_key: bool) -> proto::SubmitJobRequest {
        let mut request = self.request;
        if generate_key && request.idempotency_key.is_empty() {
            request.idempotency_key = format!("jobd-rs:{}", ulid::Ulid::new());
        }
        request
    }
}

/// A protobuf duration.
pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
