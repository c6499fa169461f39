//! The one mapping from errors to gRPC status.
//!
//! Callers see a status that names the problem; INTERNAL says no more than that, and its cause,
//! like any Redis error text, goes to the log only.

use tonic::Status;

use crate::{domain::RequestError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
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
            ApiError::Store(StoreError::Conflict(why)) => Status::failed_precondition(why),
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
            ApiError::Store(error @ (StoreError::Redis { .. } | StoreError::Corrupt(_))) => {
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
