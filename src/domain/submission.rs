//! What a submitter asks for, and the checks that make it a `NewJob`.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;

use super::{
    Job, JobId, JobKind, JobState, LeaseLimits, QueueName, RequestError, UnixMillis, check_size,
    schedule::{self, Backoff, BackoffRequest, Idempotency, Start},
    shown,
    trace::bounded_trace_context,
};

/// A SubmitJob request as asked, before validation.
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    pub queue: String,
    pub kind: String,
    pub payload: Bytes,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: Option<u32>,
    pub backoff: BackoffRequest,
    pub start: Option<Start>,
    pub priority: i32,
    pub lease: Option<Duration>,
    pub idempotency_key: String,
    pub idempotency_ttl: Option<Duration>,
    pub retention: Option<Duration>,
    pub trace_context: BTreeMap<String, String>,
}

/// The server's bounds and defaults for submissions.
#[derive(Debug, Clone, Copy)]
pub struct SubmitLimits {
    pub max_payload: usize,
    pub default_retention: Duration,
    pub leases: LeaseLimits,
}

/// A validated SubmitJob request.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: QueueName,
    pub kind: JobKind,
    pub payload: Bytes,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// When the job becomes claimable; `None`: at once. A delay counts from the time Redis
    /// writes the job, by Redis's clock.
    pub start: Option<Start>,
    pub priority: i32,
    /// The lease for workers that ask for none; `None`: the server's default.
    pub lease: Option<Duration>,
    pub idempotency: Option<Idempotency>,
    pub retention: Duration,
    pub trace_context: BTreeMap<String, String>,
}

impl NewJob {
    /// When the job becomes claimable if Redis writes it at `created`; `None`: at once. The
    /// submit scripts decide as this does (`start_time` in lua/lib.lua).
    pub fn run_at(&self, created: UnixMillis) -> Option<UnixMillis> {
        let at = match self.start? {
            Start::At(at) => at,
            Start::After(delay) => created.saturating_add(delay),
        };
        (at > created).then_some(at)
    }

    /// The job as SubmitJob creates it, written by Redis at `created`: QUEUED, or SCHEDULED
    /// until its start.
    pub fn into_job(self, id: JobId, created: UnixMillis) -> Job {
        let run_at = self.run_at(created);
        Job {
            id,
            kind: self.kind,
            state: if run_at.is_some() {
                JobState::Scheduled
            } else {
                JobState::Queued
            },
            attempt: 0,
            payload: self.payload,
            labels: self.labels,
            result: None,
            error: None,
            cancel_reason: None,
            created_at: created,
            started_at: None,
            finished_at: None,
            last_sequence: 1,
            max_attempts: self.max_attempts,
            priority: self.priority,
            backoff: self.backoff,
            run_at,
            lease_expires_at: None,
            ack_deadline: None,
            worker_id: None,
            trace_context: self.trace_context,
        }
    }
}

impl NewJob {
    /// What an idempotency key is bound to: the SHA-256, in hex, of everything that makes the
    /// job (kind, payload, labels and options as resolved, its queue being in the key), but
    /// not the trace context, nor the key's own time to live. A key used again with another
    /// fingerprint is a different request, refused (Stripe's rule).
    pub fn fingerprint(&self) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            context.update(&(bytes.len() as u64).to_be_bytes());
            context.update(bytes);
        };
        field(self.kind.as_str().as_bytes());
        field(&self.payload);
        field(&(self.labels.len() as u64).to_be_bytes());
        for (key, value) in &self.labels {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        let millis = |duration: Duration| (duration.as_millis() as u64).to_be_bytes();
        let backoff = &self.backoff;
        field(&self.max_attempts.to_be_bytes());
        field(&millis(backoff.initial));
        field(&backoff.multiplier.to_be_bytes());
        field(&millis(backoff.max));
        field(&backoff.jitter.to_be_bytes());
        match self.start {
            None => field(b"now"),
            Some(Start::At(at)) => field(&[b"at".as_slice(), &at.0.to_be_bytes()].concat()),
            Some(Start::After(delay)) => field(&[b"after".as_slice(), &millis(delay)].concat()),
        }
        field(&self.priority.to_be_bytes());
        field(
            &self
                .lease
                .map_or(u64::MAX, |lease| lease.as_millis() as u64)
                .to_be_bytes(),
        );
        field(&millis(self.retention));
        const_hex::encode(context.finish())
    }
}

const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 64;
const MAX_LABEL_VALUE: usize = 256;

impl NewJob {
    /// Validates a submission against the documented bounds, filling in the defaults.
    pub fn new(
        request: SubmitRequest,
        limits: &SubmitLimits,
        now: UnixMillis,
    ) -> Result<Self, RequestError> {
        let queue = QueueName::parse("queue", &request.queue)?;
        let kind = JobKind::parse("kind", &request.kind)?;
        check_size("payload", &request.payload, limits.max_payload)?;
        check_labels(&request.labels)?;
        let retention = schedule::retention(request.retention, limits.default_retention)?;
        let lease = request
            .lease
            .map(|lease| limits.leases.check_lease("lease", lease))
            .transpose()?;
        Ok(Self {
            queue,
            kind,
            payload: request.payload,
            labels: request.labels,
            max_attempts: schedule::max_attempts(request.max_attempts)?,
            backoff: request.backoff.resolve()?,
            start: schedule::start(request.start, now)?,
            priority: schedule::priority(request.priority)?,
            lease,
            idempotency: Idempotency::new(
                request.idempotency_key,
                request.idempotency_ttl,
                retention,
            )?,
            retention,
            trace_context: bounded_trace_context(request.trace_context),
        })
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), RequestError> {
    if labels.len() > MAX_LABELS {
        return Err(RequestError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels, got {}", labels.len()),
        ));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY {
            return Err(RequestError::invalid(
                format!("labels[{}]", shown(key)),
                format!("keys must be 1 to {MAX_LABEL_KEY} bytes, got {}", key.len()),
            ));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(RequestError::invalid(
                format!("labels[{}]", shown(key)),
                format!(
                    "values must be at most {MAX_LABEL_VALUE} bytes, got {}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_payload: usize) -> SubmitLimits {
        SubmitLimits {
            max_payload,
            default_retention: Duration::from_secs(86400),
            leases: LeaseLimits {
                min_lease: Duration::from_secs(1),
                max_lease: Duration::from_secs(3600),
                max_wait: Duration::from_secs(60),
                default_ack: Duration::from_secs(5),
            },
        }
    }

    fn request(payload: usize, labels: BTreeMap<String, String>) -> SubmitRequest {
        SubmitRequest {
            queue: "q".into(),
            kind: "k".into(),
            payload: Bytes::from(vec![0; payload]),
            labels,
            ..SubmitRequest::default()
        }
    }

    #[test]
    fn fingerprints_differ_with_what_makes_the_job_only() {
        let now = UnixMillis(0);
        let job = |request: SubmitRequest| NewJob::new(request, &limits(100), now).unwrap();
        let base = request(3, BTreeMap::new());
        let fingerprint = job(base.clone()).fingerprint();
        assert_eq!(fingerprint.len(), 64);
        let traced = SubmitRequest {
            trace_context: [("traceparent".into(), "x".into())].into(),
            idempotency_key: "k".into(),
            idempotency_ttl: Some(Duration::from_secs(60)),
            ..base.clone()
        };
        assert_eq!(job(traced).fingerprint(), fingerprint);
        let changed = [
            SubmitRequest {
                kind: "other".into(),
                ..base.clone()
            },
            SubmitRequest {
                payload: Bytes::from_static(b"abc"),
                ..base.clone()
            },
            SubmitRequest {
                labels: [("a".into(), "b".into())].into(),
                ..base.clone()
            },
            SubmitRequest {
                priority: 1,
                ..base.clone()
            },
            SubmitRequest {
                max_attempts: Some(1),
                ..base.clone()
            },
            SubmitRequest {
                start: Some(Start::After(Duration::from_secs(1))),
                ..base.clone()
            },
            SubmitRequest {
                retention: Some(Duration::from_secs(60)),
                ..base.clone()
            },
            SubmitRequest {
                lease: Some(Duration::from_secs(60)),
                ..base.clone()
            },
        ];
        for request in changed {
            assert_ne!(
                job(request.clone()).fingerprint(),
                fingerprint,
                "{request:?}"
            );
        }
    }

    #[test]
    fn payload_over_the_limit_is_too_large() {
        let now = UnixMillis(0);
        let err = NewJob::new(request(11, BTreeMap::new()), &limits(10), now).unwrap_err();
        assert_eq!(
            err,
            RequestError::TooLarge {
                field: "payload".into(),
                size: 11,
                limit: 10
            }
        );
        assert!(NewJob::new(request(10, BTreeMap::new()), &limits(10), now).is_ok());
    }

    #[test]
    fn labels_are_bounded() {
        let now = UnixMillis(0);
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(NewJob::new(request(0, many), &limits(10), now).is_err());
        let long_value = BTreeMap::from([("k".to_owned(), "v".repeat(257))]);
        let err = NewJob::new(request(0, long_value), &limits(10), now).unwrap_err();
        assert!(matches!(err, RequestError::Invalid { field, .. } if field == "labels[\"k\"]"));
    }

    #[test]
    fn defaults_are_filled_in() {
        let job = NewJob::new(request(0, BTreeMap::new()), &limits(10), UnixMillis(0)).unwrap();
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.backoff, Backoff::default());
        assert_eq!(job.retention, Duration::from_secs(86400));
        assert_eq!(
            (job.start, job.lease, job.idempotency, job.priority),
            (None, None, None, 0)
        );
    }
}
