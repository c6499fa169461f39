//! A job, its states, and what a submitter asks for.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use super::{JobId, JobKind, QueueName, RequestError};

/// Milliseconds since the Unix epoch, the resolution jobd records times in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }
}

/// Where a job is in its lifecycle.
///
/// ```text
/// QUEUED --claim--> RUNNING --complete--> COMPLETED
///    |                 |------fail------> FAILED
///    +-----cancel------+-----cancel-----> CANCELLED
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
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
}

impl Job {
    pub fn queue(&self) -> &QueueName {
        self.id.queue()
    }
}

/// A validated SubmitJob request.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: QueueName,
    pub kind: JobKind,
    pub payload: Bytes,
    pub labels: BTreeMap<String, String>,
}

const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 64;
const MAX_LABEL_VALUE: usize = 256;

impl NewJob {
    /// Validates a submission against the documented limits.
    pub fn new(
        queue: &str,
        kind: &str,
        payload: Bytes,
        labels: BTreeMap<String, String>,
        max_payload: usize,
    ) -> Result<Self, RequestError> {
        let queue = QueueName::parse("queue", queue)?;
        let kind = JobKind::parse("kind", kind)?;
        check_size("payload", &payload, max_payload)?;
        check_labels(&labels)?;
        Ok(Self {
            queue,
            kind,
            payload,
            labels,
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
            field,
            size: value.len(),
            limit,
        });
    }
    Ok(())
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

    #[test]
    fn payload_over_the_limit_is_too_large() {
        let err = NewJob::new("q", "k", Bytes::from(vec![0; 11]), BTreeMap::new(), 10).unwrap_err();
        assert_eq!(
            err,
            RequestError::TooLarge {
                field: "payload",
                size: 11,
                limit: 10
            }
        );
        assert!(NewJob::new("q", "k", Bytes::from(vec![0; 10]), BTreeMap::new(), 10).is_ok());
    }

    #[test]
    fn labels_are_bounded() {
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(NewJob::new("q", "k", Bytes::new(), many, 10).is_err());
        let long_value = BTreeMap::from([("k".to_owned(), "v".repeat(257))]);
        let err = NewJob::new("q", "k", Bytes::new(), long_value, 10).unwrap_err();
        assert!(matches!(err, RequestError::Invalid { field, .. } if field == "labels[\"k\"]"));
    }
}
