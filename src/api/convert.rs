//! Conversions between the generated proto types and the domain.

use std::time::Duration;

use prost_types::Timestamp;

use super::proto;
use crate::domain::{EventKind, Job, JobEvent, JobState, RequestError, UnixMillis};

pub fn timestamp(at: UnixMillis) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(at.0 / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((at.0 % 1000) * 1_000_000).unwrap_or(0),
    }
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
        JobState::Queued => proto::JobState::Queued,
        JobState::Running => proto::JobState::Running,
        JobState::Completed => proto::JobState::Completed,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
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
        };
        out.set_type(kind);
        out
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
