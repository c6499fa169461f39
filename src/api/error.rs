//! The one mapping from errors to gRPC status.
//!
//! Callers see a status that names the problem; INTERNAL says no more than that, and its cause,
//! like any Redis error text, goes to the log only.

use tonic::{Code, Status};

use super::reason::{Reason, status};
use crate::{
    budgets::Exhausted,
    claims::ClaimError,
    domain::{ClaimDeadline, JobState, Refusal, RequestError, shown},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Request(error) => request_status(&error),
            ApiError::Refused(refusal) | ApiError::Store(StoreError::Refused(refusal)) => {
                let (reason, metadata) = refusal_reason(&refusal);
                status(
                    Code::FailedPrecondition,
                    reason,
                    explain(&refusal),
                    &metadata,
                )
            }
            ApiError::Store(error) => store_status(error),
        }
    }
}

/// A request refused as given: the field it names, and the limit it broke.
fn request_status(error: &RequestError) -> Status {
    let (code, reason, metadata) = match error {
        RequestError::Invalid { field, .. } => (
            Code::InvalidArgument,
            Reason::InvalidRequest,
            vec![("field", field.clone())],
        ),
        RequestError::TooLarge { field, limit, .. } => (
            Code::ResourceExhausted,
            Reason::PayloadTooLarge,
            vec![("field", field.clone()), ("limit", limit.to_string())],
        ),
    };
    status(code, reason, error.to_string(), &metadata)
}

/// What the store's errors tell the caller; Redis's own words go to the log only.
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound => status(Code::NotFound, Reason::JobNotFound, "job not found", &[]),
        StoreError::IdempotencyConflict { key } => status(
            Code::AlreadyExists,
            Reason::IdempotencyConflict,
            format!(
                "idempotency_key {} was used for a different job (its kind, payload or options \
                 differ); send the same request to get that job, or use a new key",
                shown(&key)
            ),
            &[("key", key)],
        ),
        StoreError::Refused(refusal) => ApiError::Refused(refusal).into(),
        // Only WatchJob reads after a sequence the client chose, and names it so.
        StoreError::PastLastEvent { after, last } => status(
            Code::OutOfRange,
            Reason::PastLastEvent,
            format!("after_sequence {after} is past the job's last event (sequence {last})"),
            &[("last_sequence", last.to_string())],
        ),
        error @ StoreError::Unavailable(_) => {
            tracing::warn!(error = %chain(&error), "Redis unavailable");
            let message = "storage is unavailable; retry later";
            status(Code::Unavailable, Reason::RedisUnavailable, message, &[])
        }
        error @ StoreError::OutOfMemory(_) => {
            tracing::warn!(error = %chain(&error), "Redis refuses writes: out of memory");
            let message = "storage is out of memory (Redis reached its maxmemory); retry later";
            status(Code::Unavailable, Reason::RedisOutOfMemory, message, &[])
        }
        error @ (StoreError::Redis { .. } | StoreError::Corrupt(_) | StoreError::Interrupted) => {
            tracing::error!(error = %chain(&error), "internal error");
            status(Code::Internal, Reason::Internal, "internal error", &[])
        }
    }
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<Exhausted> for Status {
    fn from(exhausted: Exhausted) -> Self {
        let metadata = [
            ("budget", exhausted.setting.to_owned()),
            ("limit", exhausted.limit.to_string()),
        ];
        status(
            Code::ResourceExhausted,
            Reason::BudgetExhausted,
            format!("{exhausted}; retry later"),
            &metadata,
        )
    }
}

impl From<ClaimError> for Status {
    fn from(error: ClaimError) -> Self {
        match error {
            ClaimError::Store(error) => error.into(),
            ClaimError::Exhausted(exhausted) => exhausted.into(),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        ApiError::from(refusal).into()
    }
}

/// What a refusal tells programs: its reason, and the job's state or the deadline that passed.
fn refusal_reason(refusal: &Refusal) -> (Reason, Vec<(&'static str, String)>) {
    let state = |state: &JobState| vec![("state", state.as_str().to_ascii_uppercase())];
    match refusal {
        Refusal::NotCurrentToken {
            state: JobState::Cancelled,
        } => (Reason::JobCancelled, vec![]),
        Refusal::NotCurrentToken {
            state: finished @ (JobState::Completed | JobState::Failed),
        }
        | Refusal::Finished(finished) => (Reason::JobFinished, state(finished)),
        Refusal::NotCurrentToken { state: now } => (Reason::LeaseStale, state(now)),
        Refusal::UnknownToken => (Reason::LeaseTokenUnknown, vec![]),
        Refusal::DeadlinePassed { deadline, .. } => {
            let deadline = match deadline {
                ClaimDeadline::Ack => "ack",
                ClaimDeadline::Lease => "lease",
            };
            (
                Reason::LeaseExpired,
                vec![("deadline", deadline.to_owned())],
            )
        }
    }
}

/// What a refusal tells the caller: what is wrong, and what became of the job.
fn explain(refusal: &Refusal) -> String {
    let not_current = "the lease token is not the job's current one";
    match refusal {
        Refusal::NotCurrentToken { state } => match state {
            JobState::Running => format!(
                "{not_current}: the job runs under another lease (it was claimed again, or the \
                 token is another job's)"
            ),
            JobState::Queued => format!(
                "{not_current}: the job is back in its queue (given back, or not acknowledged \
                 in time) and awaits a new claim"
            ),
            JobState::Scheduled => format!(
                "{not_current}: the attempt ended (failure reported, or lease expired) and the \
                 job awaits its next attempt"
            ),
            JobState::Cancelled => format!("{not_current}: the job was cancelled"),
            JobState::Completed | JobState::Failed => {
                format!("{not_current}: the job is already {}", state.as_str())
            }
        },
        Refusal::UnknownToken => {
            "lease_token is not a lease token jobd issued, so not the job's current one; use the \
             token the claim returned"
                .to_owned()
        }
        Refusal::DeadlinePassed {
            deadline: ClaimDeadline::Ack,
            at,
        } => format!(
            "the lease token is no longer valid: the job was not acknowledged by {} (a heartbeat \
             or its outcome) and goes back to its queue",
            at.rfc3339()
        ),
        Refusal::DeadlinePassed {
            deadline: ClaimDeadline::Lease,
            at,
        } => format!(
            "the lease token is no longer valid: the lease ran out at {} without a heartbeat",
            at.rfc3339()
        ),
        Refusal::Finished(state) => format!(
            "the job is already {} and can no longer be cancelled",
            state.as_str()
        ),
    }
}

/// An error with its sources, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
