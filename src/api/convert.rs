//! Conversions between the generated proto types and the domain.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost_types::Timestamp;
use tonic::Status;

use super::proto;
use crate::{
    domain::{
        Backoff, BackoffRequest, Claimed, EventKind, Job, JobEvent, JobState, LeaseToken,
        QueueName, RequestError, Start, SubmitRequest, UnixMillis,
    },
    store::ListCursor,
};

pub fn timestamp(at: UnixMillis) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(at.0 / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((at.0 % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A proto timestamp as Unix milliseconds; times before 1970 are refused by field name.
pub fn unix_millis(field: &str, value: Timestamp) -> Result<UnixMillis, RequestError> {
    let invalid = || RequestError::invalid(field, "must be a valid time after 1970");
    let seconds = u64::try_from(value.seconds).map_err(|_| invalid())?;
    let nanos = u64::try_from(value.nanos).map_err(|_| invalid())?;
    if nanos >= 1_000_000_000 {
        return Err(invalid());
    }
    seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(nanos / 1_000_000))
        .map(UnixMillis)
        .ok_or_else(invalid)
}

/// An optional proto duration; negative or out-of-range values are refused by field name.
pub fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
) -> Result<Option<Duration>, RequestError> {
    value
        .map(|value| {
            Duration::try_from(value)
                .map_err(|_| RequestError::invalid(field, "must be a non-negative duration"))
        })
        .transpose()
}

pub fn state(state: JobState) -> proto::JobState {
    match state {
        JobState::Scheduled => proto::JobState::Scheduled,
        JobState::Queued => proto::JobState::Queued,
        JobState::Running => proto::JobState::Running,
        JobState::Completed => proto::JobState::Completed,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
    }
}

/// A state filter: `None` for JOB_STATE_UNSPECIFIED; unknown numbers are refused by field name.
pub fn job_state(field: &str, value: i32) -> Result<Option<JobState>, RequestError> {
    let state = proto::JobState::try_from(value)
        .map_err(|_| RequestError::invalid(field, format!("{value} is not a job state")))?;
    Ok(match state {
        proto::JobState::Unspecified => None,
        proto::JobState::Scheduled => Some(JobState::Scheduled),
        proto::JobState::Queued => Some(JobState::Queued),
        proto::JobState::Running => Some(JobState::Running),
        proto::JobState::Completed => Some(JobState::Completed),
        proto::JobState::Failed => Some(JobState::Failed),
        proto::JobState::Cancelled => Some(JobState::Cancelled),
    })
}

/// Jobs per ListJobs page when the request names no size.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// The most jobs a ListJobs page holds.
const MAX_PAGE_SIZE: u32 = 500;

/// A ListJobs page size: 50 when unset (0), refused by field name beyond 500.
pub fn page_size(field: &str, value: u32) -> Result<usize, RequestError> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        size @ 1..=MAX_PAGE_SIZE => Ok(size as usize),
        _ => Err(RequestError::invalid(
            field,
            format!("must be from 1 to {MAX_PAGE_SIZE}"),
        )),
    }
}

/// The most jobs one ClaimJobs takes, and the most completions one CompleteJobs carries.
pub const MAX_CLAIM_JOBS: u32 = 100;

/// How many jobs a ClaimJobs may take: 1 when unset (0), refused by field name beyond 100.
pub fn max_jobs(field: &str, value: u32) -> Result<usize, RequestError> {
    match value {
        0 => Ok(1),
        max @ 1..=MAX_CLAIM_JOBS => Ok(max as usize),
        _ => Err(RequestError::invalid(
            field,
            format!("must be from 1 to {MAX_CLAIM_JOBS}"),
        )),
    }
}

/// What a ListJobs page token is bound to: the listing it continues.
pub struct Listing<'a> {
    pub queue: &'a QueueName,
    pub state: Option<JobState>,
    pub page_size: usize,
}

impl Listing<'_> {
    /// The token of the page after `cursor`: opaque (base64url), and holding the listing, so
    /// that it continues this listing only.
    pub fn page_token(&self, cursor: ListCursor) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}\n{}", self.bound(), cursor.encode()))
    }

    /// Where a page starts: its token, from the page before; empty for the first page. A
    /// token of another listing (another queue, state or page size) is refused.
    pub fn cursor(&self, field: &str, token: &str) -> Result<ListCursor, RequestError> {
        if token.is_empty() {
            return Ok(ListCursor::default());
        }
        let foreign = || RequestError::invalid(field, "is not a token from ListJobs");
        let text = URL_SAFE_NO_PAD.decode(token).map_err(|_| foreign())?;
        let text = String::from_utf8(text).map_err(|_| foreign())?;
        let (bound, cursor) = text.rsplit_once('\n').ok_or_else(foreign)?;
        let cursor = ListCursor::decode(cursor).ok_or_else(foreign)?;
        if bound != self.bound() {
            return Err(RequestError::invalid(
                field,
                "continues another listing (its queue, state or page_size differ); list \
                 again from the first page",
            ));
        }
        Ok(cursor)
    }

    fn bound(&self) -> String {
        let state = self.state.map_or("", JobState::as_str);
        format!("{}\n{state}\n{}", self.queue, self.page_size)
    }
}

impl TryFrom<proto::SubmitJobRequest> for SubmitRequest {
    type Error = RequestError;

    fn try_from(request: proto::SubmitJobRequest) -> Result<Self, RequestError> {
        let backoff = match request.backoff {
            None => BackoffRequest::default(),
            Some(backoff) => BackoffRequest {
                initial: duration("backoff.initial", backoff.initial)?,
                multiplier: backoff.multiplier,
                max: duration("backoff.max", backoff.max)?,
                jitter: backoff.jitter,
            },
        };
        let start = match request.start {
            None => None,
            Some(proto::submit_job_request::Start::RunAt(at)) => {
                Some(Start::At(unix_millis("run_at", at)?))
            }
            Some(proto::submit_job_request::Start::Delay(delay)) => {
                duration("delay", Some(delay))?.map(Start::After)
            }
        };
        Ok(Self {
            queue: request.queue,
            kind: request.kind,
            payload: request.payload,
            labels: request.labels.into_iter().collect(),
            max_attempts: (request.max_attempts != 0).then_some(request.max_attempts),
            backoff,
            start,
            priority: request.priority,
            lease: duration("lease", request.lease)?,
            idempotency_key: request.idempotency_key,
            idempotency_ttl: duration("idempotency_ttl", request.idempotency_ttl)?,
            retention: duration("retention", request.retention)?,
            // Filled in by the handler from the call's trace context.
            trace_context: Default::default(),
        })
    }
}

impl From<Backoff> for proto::BackoffPolicy {
    fn from(backoff: Backoff) -> Self {
        Self {
            initial: prost_types::Duration::try_from(backoff.initial).ok(),
            multiplier: Some(backoff.multiplier),
            max: prost_types::Duration::try_from(backoff.max).ok(),
            jitter: Some(backoff.jitter),
        }
    }
}

impl From<Job> for proto::Job {
    fn from(job: Job) -> Self {
        Self {
            id: job.id.to_string(),
            queue: job.id.queue().to_string(),
            kind: job.kind.to_string(),
            state: state(job.state).into(),
            attempt: job.attempt,
            payload: job.payload,
            labels: job.labels.into_iter().collect(),
            result: job.result.unwrap_or_default(),
            error: job.error.unwrap_or_default(),
            cancel_reason: job.cancel_reason.unwrap_or_default(),
            created_at: Some(timestamp(job.created_at)),
            started_at: job.started_at.map(timestamp),
            finished_at: job.finished_at.map(timestamp),
            last_sequence: job.last_sequence,
            max_attempts: job.max_attempts,
            priority: job.priority,
            run_at: job.run_at.map(timestamp),
            lease_expires_at: job.lease_expires_at.map(timestamp),
            ack_deadline: job.ack_deadline.map(timestamp),
            worker_id: job.worker_id.unwrap_or_default(),
            backoff: Some(job.backoff.into()),
            trace_context: job.trace_context.into_iter().collect(),
        }
    }
}

impl From<JobEvent> for proto::JobEvent {
    fn from(event: JobEvent) -> Self {
        let mut out = Self {
            job_id: event.job_id.to_string(),
            sequence: event.sequence,
            time: Some(timestamp(event.at)),
            attempt: event.attempt,
            ..Self::default()
        };
        let kind = match event.kind {
            EventKind::Scheduled { run_at } => {
                out.run_at = Some(timestamp(run_at));
                proto::EventType::Scheduled
            }
            EventKind::Queued => proto::EventType::Queued,
            EventKind::Started { worker_id } => {
                out.worker_id = worker_id;
                proto::EventType::Started
            }
            EventKind::Progress(progress) => {
                out.progress = Some(proto::Progress {
                    value: progress.value,
                    message: progress.message,
                });
                proto::EventType::Progress
            }
            EventKind::Completed { result } => {
                out.result = result;
                proto::EventType::Completed
            }
            EventKind::Failed { error } => {
                out.error = error;
                proto::EventType::Failed
            }
            EventKind::Cancelled { reason } => {
                out.reason = reason;
                proto::EventType::Cancelled
            }
            EventKind::RetryScheduled { run_at, error } => {
                out.run_at = Some(timestamp(run_at));
                out.error = error;
                proto::EventType::RetryScheduled
            }
            EventKind::Released { reason } => {
                out.reason = reason;
                proto::EventType::Released
            }
            EventKind::Unrecognized { .. } => proto::EventType::Unspecified,
        };
        out.set_type(kind);
        out
    }
}

/// A lease token as a caller presents it: INVALID_ARGUMENT when missing; one jobd never issued
/// is refused as any token that is not the job's current one (FAILED_PRECONDITION).
pub fn lease_token(field: &str, value: &str) -> Result<LeaseToken, Status> {
    Ok(LeaseToken::parse(field, value)??)
}

/// A claimed job as ClaimJobs and completions' `next` answer it.
pub fn claimed_job(claimed: Claimed) -> proto::ClaimedJob {
    proto::ClaimedJob {
        job: Some(claimed.job.into()),
        lease_token: claimed.token.to_string(),
        lease_expires_at: Some(timestamp(claimed.lease_expires_at)),
        ack_deadline: Some(timestamp(claimed.ack_deadline)),
    }
}

/// A claimed job as ClaimJob answers it.
pub fn claimed_response(claimed: Claimed) -> proto::ClaimJobResponse {
    proto::ClaimJobResponse {
        job: Some(claimed.job.into()),
        lease_token: claimed.token.to_string(),
        lease_expires_at: Some(timestamp(claimed.lease_expires_at)),
        ack_deadline: Some(timestamp(claimed.ack_deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds() {
        let ts = timestamp(UnixMillis(1_700_000_000_123));
        assert_eq!(ts.seconds, 1_700_000_000);
        assert_eq!(ts.nanos, 123_000_000);
        assert_eq!(unix_millis("t", ts).unwrap(), UnixMillis(1_700_000_000_123));
        let before_1970 = Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert!(unix_millis("run_at", before_1970).is_err());
    }

    #[test]
    fn negative_durations_are_refused_by_name() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let err = duration("wait", Some(negative)).unwrap_err();
        assert!(matches!(err, RequestError::Invalid { field, .. } if field == "wait"));
        assert_eq!(duration("wait", None).unwrap(), None);
    }
}
