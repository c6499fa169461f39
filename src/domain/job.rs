//! A job as stored, its states, and the times it records.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use super::{EventKind, JobEvent, JobId, JobKind, QueueName, WorkerId, schedule::Backoff};

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
}
