//! A job, its states, and what a submitter asks for.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use super::{
    EventKind, JobEvent, JobId, JobKind, LeaseLimits, QueueName, RequestError, WorkerId,
    schedule::{self, Backoff, BackoffRequest, Idempotency, Start},
};

/// Milliseconds since the Unix epoch, the resolution jobd records times in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// The time as RFC 3339 with milliseconds, for messages.
    pub fn rfc3339(self) -> String {
        let at = UNIX_EPOCH + Duration::from_millis(self.0);
        humantime::format_rfc3339_millis(at).to_string()
    }
}

/// Where a job is in its lifecycle.
///
/// ```text
/// SCHEDULED --due--> QUEUED --claim--> RUNNING --complete------------------> COMPLETED
///     ^                                   |------fail, no attempts left----> FAILED
///     +-----fail or lease expiry, --------+
///           attempts left
/// any non-terminal state ----------------------cancel----------------------> CANCELLED
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Scheduled,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Whether the job is finished; no transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The lower-case name used in storage and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    pub attempt: u32,
    pub payload: Bytes,
    pub labels: BTreeMap<String, String>,
    pub result: Option<Bytes>,
    pub error: Option<String>,
    pub cancel_reason: Option<String>,
    pub created_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    pub last_sequence: u64,
    pub max_attempts: u32,
    pub priority: i32,
    pub backoff: Backoff,
    /// When SCHEDULED: when the job becomes claimable.
    pub run_at: Option<UnixMillis>,
    /// When RUNNING: when the lease runs out.
    pub lease_expires_at: Option<UnixMillis>,
    /// When RUNNING and not yet acknowledged by its worker: when it goes back to its queue
    /// unless the worker acknowledges it.
    pub ack_deadline: Option<UnixMillis>,
    pub worker_id: Option<String>,
    /// The submitter's W3C trace context, for the worker to continue its trace.
    pub trace_context: BTreeMap<String, String>,
}

impl Job {
    pub fn queue(&self) -> &QueueName {
        self.id.queue()
    }

    /// The first event of a job as `NewJob::into_job` made it, exactly as the submit scripts
    /// write it: QUEUED, or SCHEDULED with its start time, at creation, attempt 0.
    pub fn first_event(&self) -> JobEvent {
        JobEvent {
            job_id: self.id.clone(),
            sequence: 1,
            at: self.created_at,
            attempt: 0,
            kind: match self.run_at {
                Some(run_at) if self.state == JobState::Scheduled => {
                    EventKind::Scheduled { run_at }
                }
                _ => EventKind::Queued,
            },
        }
    }

    /// A QUEUED job as its first claim leaves it: RUNNING, attempt 1, leased to `worker`
    /// from `at` until `lease_expires_at`, to be acknowledged by `ack_deadline`, its STARTED
    /// event the second of its log.
    pub fn started_by(
        self,
        worker: &WorkerId,
        at: UnixMillis,
        lease_expires_at: UnixMillis,
        ack_deadline: UnixMillis,
    ) -> Job {
        Job {
            state: JobState::Running,
            attempt: 1,
            started_at: Some(at),
            last_sequence: 2,
            run_at: None,
            lease_expires_at: Some(lease_expires_at),
            ack_deadline: Some(ack_deadline),
            worker_id: Some(worker.as_str().to_owned()),
            ..self
        }
    }
}

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
            trace_context: request.trace_context,
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
                format!("labels[{key:?}]"),
                format!("keys must be 1 to {MAX_LABEL_KEY} bytes"),
            ));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(RequestError::invalid(
                format!("labels[{key:?}]"),
                format!("values must be at most {MAX_LABEL_VALUE} bytes"),
            ));
        }
    }
    Ok(())
}

/// Checks a payload-like field against the server's size limit.
pub fn check_size(field: &'static str, value: &[u8], limit: usize) -> Result<(), RequestError> {
    if value.len() > limit {
        return Err(RequestError::TooLarge {
            field: field.to_owned(),
            size: value.len(),
            limit,
        });
    }
    Ok(())
}

/// The longest error text a job keeps; a longer one (a stack trace, say) is cut there.
pub const MAX_STORED_ERROR: usize = 4096;

/// An attempt's error as the job keeps it: whole up to `MAX_STORED_ERROR` bytes, else cut at a
/// character boundary, saying so and how long it was, within the same bound.
pub fn stored_error(error: &str) -> std::borrow::Cow<'_, str> {
    if error.len() <= MAX_STORED_ERROR {
        return error.into();
    }
    let note = format!(" [truncated: {} bytes in all]", error.len());
    let mut end = MAX_STORED_ERROR - note.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &error[..end]).into()
}

/// Checks a short free-text field such as a cancel reason or an error message.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), RequestError> {
    if value.len() > max {
        return Err(RequestError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(JobState::from_name(state.as_str()), Some(state));
        }
        assert_eq!(JobState::from_name("QUEUED"), None);
    }

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
    fn long_errors_are_kept_cut_and_say_so() {
        assert_eq!(stored_error("short"), "short");
        let exact = "e".repeat(MAX_STORED_ERROR);
        assert_eq!(stored_error(&exact), exact);
        // Multi-byte characters across the cut: the text stays valid and within the bound.
        let long = "é".repeat(40_000);
        let stored = stored_error(&long);
        assert!(stored.len() <= MAX_STORED_ERROR, "{}", stored.len());
        assert!(stored.starts_with("éé"));
        assert!(
            stored.ends_with(" [truncated: 80000 bytes in all]"),
            "{stored}"
        );
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
