//! The one mapping from errors to gRPC status.
//!
//! Callers see a status that names the problem; INTERNAL says no more than that, and its cause,
//! like any Redis error text, goes to the log only.

use tonic::Status;

use crate::{
    budgets::Exhausted,
    domain::{ClaimDeadline, JobState, Refusal, RequestError},
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
            ApiError::Request(error @ RequestError::Invalid { .. }) => {
                Status::invalid_argument(error.to_string())
            }
            ApiError::Request(error @ RequestError::TooLarge { .. }) => {
                Status::resource_exhausted(error.to_string())
            }
            ApiError::Store(StoreError::NotFound) => Status::not_found("job not found"),
            ApiError::Store(StoreError::IdempotencyConflict { key }) => {
                Status::already_exists(format!(
                    "idempotency_key {key:?} was used for a different job (its kind, payload or \
                     options differ); send the same request to get that job, or use a new key"
                ))
            }
            ApiError::Refused(refusal) | ApiError::Store(StoreError::Refused(refusal)) => {
                Status::failed_precondition(explain(&refusal))
            }
            // Only WatchJob reads after a sequence the client chose, and names it so.
            ApiError::Store(StoreError::PastLastEvent { after, last }) => Status::out_of_range(
                format!("after_sequence {after} is past the job's last event (sequence {last})"),
            ),
            ApiError::Store(error @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %chain(&error), "Redis unavailable");
                Status::unavailable("storage is unavailable; retry later")
            }
            ApiError::Store(error @ StoreError::OutOfMemory(_)) => {
                tracing::warn!(error = %chain(&error), "Redis refuses writes: out of memory");
                Status::unavailable(
                    "storage is out of memory (Redis reached its maxmemory); retry later",
                )
            }
            ApiError::Store(
                error @ (StoreError::Redis { .. }
                | StoreError::Corrupt(_)
                | StoreError::Interrupted),
            ) => {
                tracing::error!(error = %chain(&error), "internal error");
                Status::internal("internal error")
            }
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
        Status::resource_exhausted(format!("{exhausted}; retry later"))
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        ApiError::from(refusal).into()
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
