//! Job events: the durable, ordered record of every state change of a job.

use bytes::Bytes;

use super::{JobId, RequestError, UnixMillis, check_text};

/// One entry of a job's event log. Sequence numbers start at 1 and have no gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub job_id: JobId,
    pub sequence: u64,
    pub at: UnixMillis,
    pub attempt: u32,
    pub kind: EventKind,
}

/// What happened, with the details that belong to it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Submitted to run later, at `run_at`.
    Scheduled {
        run_at: UnixMillis,
    },
    Queued,
    Started {
        worker_id: String,
    },
    Progress(Progress),
    Completed {
        result: Bytes,
    },
    Failed {
        error: String,
    },
    Cancelled {
        reason: String,
    },
    /// An attempt failed; the next one becomes claimable at `run_at`.
    RetryScheduled {
        run_at: UnixMillis,
        error: String,
    },
    /// Back in its queue from a claim that does not count as an attempt: given back by its
    /// worker, claimed for a caller that went away, or not acknowledged in time.
    Released {
        reason: String,
    },
    /// An event of a type this jobd does not know, recorded by a newer one (replicas of two
    /// versions serve the same jobs during a rolling upgrade): passed on with its sequence,
    /// time and attempt, so a watch neither fails nor skips a sequence number.
    Unrecognized {
        name: String,
    },
}

impl EventKind {
    /// Whether this event ends the job; it is then the last event of its log.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. } | Self::Failed { .. } | Self::Cancelled { .. }
        )
    }
}

/// Progress reported by a worker in a heartbeat.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    pub value: Option<f64>,
    pub message: String,
}

const MAX_PROGRESS_MESSAGE: usize = 256;

impl Progress {
    pub fn new(value: Option<f64>, message: String) -> Result<Self, RequestError> {
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(RequestError::invalid(
                "progress.value",
                "must be a finite number",
            ));
        }
        check_text("progress.message", &message, MAX_PROGRESS_MESSAGE)?;
        Ok(Self { value, message })
    }
}
