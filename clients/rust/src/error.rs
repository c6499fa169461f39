//! Typed errors: every non-OK status becomes an [`Error::Rpc`] whose [`Rejection::reason`] is
//! the `google.rpc.ErrorInfo` reason jobd attached (domain `jobd`), one [`ErrorReason`] per
//! cause; the message is for people and is never parsed.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::StatusExt;

use crate::proto::ErrorReason;

/// The `ErrorInfo` domain of jobd's reasons.
pub const DOMAIN: &str = "jobd";

/// Any error a handler returns; [`NonRetryable`] among them fails the job for good.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a call of this library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// jobd, or the transport to it, ended the call with a non-OK status.
    #[error("{0}")]
    Rpc(Box<Rejection>),
    /// The job failed for good (`submit_and_wait`): `error` is its last attempt's error.
    #[error("job {job_id} failed on attempt {attempt}: {error}")]
    JobFailed {
        /// The job.
        job_id: String,
        /// The error its worker reported.
        error: String,
        /// The attempt that failed.
        attempt: u32,
    },
    /// The job was cancelled (`submit_and_wait`), or, in a handler's
    /// [`progress`](crate::JobContext::progress), jobd said its job was cancelled.
    #[error("job {job_id} was cancelled: {reason}")]
    JobCancelled {
        /// The job.
        job_id: String,
        /// The reason given to CancelJob, if any.
        reason: String,
    },
    /// A setting could not be used: an endpoint that is no URL, an unreadable CA or
    /// certificate file, a token that is no header value.
    #[error("bad client setting: {0}")]
    Config(String),
}

/// A non-OK status, decoded.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The gRPC status code.
    pub code: Code,
    /// jobd's reason; `None` when the status carries no `ErrorInfo` of domain `jobd` (the
    /// transport or the gRPC framework made it) or a reason this library does not know.
    pub reason: Option<ErrorReason>,
    /// The reason as sent (`LEASE_STALE`); the code's name (`UNAVAILABLE`) without `ErrorInfo`.
    pub reason_name: String,
    /// The `ErrorInfo` metadata (`field`, `limit`, `state`, …), as errors.proto lists them.
    pub metadata: HashMap<String, String>,
    /// The status message, for people.
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}): {}",
            self.reason_name, self.code, self.message
        )
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc(Box::new(Rejection::from_status(&status)))
    }
}

impl Rejection {
    /// Decodes a status: its `ErrorInfo` (domain `jobd`) names the reason.
    pub fn from_status(status: &tonic::Status) -> Self {
        let info = status
            .get_details_error_info()
            .filter(|info| info.domain == DOMAIN);
        // Only an ErrorInfo names a reason: a code's name can be a reason's too (INTERNAL,
        // DEADLINE_EXCEEDED), and tonic's INTERNAL for a stream that a GOAWAY left unserved
        // must stay the transport's, which is resumed, not jobd's, which is not.
        let (reason, reason_name, metadata) = match info {
            Some(info) => (
                ErrorReason::from_str_name(&info.reason).filter(|r| *r != ErrorReason::Unspecified),
                info.reason,
                info.metadata,
            ),
            None => (None, code_name(status.code()), HashMap::new()),
        };
        Self {
            code: status.code(),
            reason,
            reason_name,
            metadata,
            message: status.message().to_owned(),
        }
    }
}

impl Error {
    /// jobd's reason for a rejected call; `None` for other errors.
    pub fn reason(&self) -> Option<ErrorReason> {
        self.rejection().and_then(|r| r.reason)
    }

    /// The decoded status of a rejected call.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Error::Rpc(rejection) => Some(rejection),
            _ => None,
        }
    }

    /// One `ErrorInfo` metadata value of a rejected call (`field`, `limit`, `state`, …).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.rejection()?.metadata.get(key).map(String::as_str)
    }

    /// The status code of a rejected call.
    pub fn code(&self) -> Option<Code> {
        self.rejection().map(|r| r.code)
    }

    /// UNAVAILABLE: jobd could not be reached, or Redis could not (`REDIS_UNAVAILABLE`,
    /// `REDIS_OUT_OF_MEMORY`), or the jobd answering shuts down (`SHUTTING_DOWN`). Calls safe
    /// to repeat are retried on it.
    pub fn is_unavailable(&self) -> bool {
        self.code() == Some(Code::Unavailable)
    }

    /// A stream broken by the transport or a replica going away, not refused by jobd: worth
    /// resuming.
    pub(crate) fn is_resumable(&self) -> bool {
        match self.rejection() {
            Some(r) => {
                r.code == Code::Unavailable
                    || r.code == Code::Cancelled
                    || (r.code == Code::Internal && r.reason.is_none())
                    || (r.code == Code::Unknown && r.reason.is_none())
            }
            None => false,
        }
    }
}

/// A handler's error that fails its job for good (FailJob with `retryable: false`), without
/// using the attempts left: `Err(NonRetryable::new("bad input").into())`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NonRetryable(pub String);

impl NonRetryable {
    /// A non-retryable error with this text.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Whether a handler's error, or one of its sources, is [`NonRetryable`].
pub(crate) fn is_non_retryable(error: &BoxError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = current {
        if e.is::<NonRetryable>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A status code's name, as jobd itself names the reason of a status without `ErrorInfo`.
fn code_name(code: Code) -> String {
    let name = match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    fn status(code: Code, reason: &str, domain: &str) -> tonic::Status {
        let metadata = HashMap::from([("k".to_owned(), "v".to_owned())]);
        tonic::Status::with_error_details(
            code,
            "msg",
            ErrorDetails::with_error_info(reason, domain, metadata),
        )
    }

    #[test]
    fn every_reason_of_the_proto_decodes_to_itself() {
        let mut seen = 0;
        for value in 1.. {
            let Ok(reason) = ErrorReason::try_from(value) else {
                break;
            };
            let error = Error::from(status(
                Code::FailedPrecondition,
                reason.as_str_name(),
                "jobd",
            ));
            assert_eq!(error.reason(), Some(reason));
            assert_eq!(error.metadata("k"), Some("v"));
            assert_eq!(error.code(), Some(Code::FailedPrecondition));
            let rejection = error.rejection().expect("a rejection");
            assert_eq!(rejection.reason_name, reason.as_str_name());
            assert_eq!(rejection.message, "msg");
            seen += 1;
        }
        assert_eq!(
            seen, 19,
            "errors.proto's reasons, ERROR_REASON_UNSPECIFIED aside"
        );
    }

    #[test]
    fn without_jobd_error_info_the_code_names_the_reason() {
        let plain = Error::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(plain.reason(), None);
        assert!(plain.is_unavailable() && plain.is_resumable());
        assert_eq!(plain.rejection().unwrap().reason_name, "UNAVAILABLE");
        let elsewhere = Error::from(status(Code::NotFound, "JOB_NOT_FOUND", "elsewhere"));
        assert_eq!(elsewhere.reason(), None);
        assert_eq!(elsewhere.rejection().unwrap().reason_name, "NOT_FOUND");
        let unknown = Error::from(status(Code::Aborted, "NEW_REASON", "jobd"));
        assert_eq!(unknown.reason(), None);
        assert_eq!(unknown.rejection().unwrap().reason_name, "NEW_REASON");
        assert_eq!(unknown.metadata("k"), Some("v"));
        let refused = Error::from(status(Code::Internal, "INTERNAL", "jobd"));
        assert!(
            !refused.is_resumable(),
            "jobd's own INTERNAL is not a broken stream"
        );
    }

    #[test]
    fn a_code_whose_name_is_a_reason_names_none_without_error_info() {
        // tonic's status for a stream above a GOAWAY's last stream id (h2's NO_ERROR), as a
        // client resuming at once during jobd's graceful shutdown gets it.
        let goaway = Error::from(tonic::Status::internal("h2 protocol error: http2 error"));
        assert_eq!(goaway.reason(), None);
        assert_eq!(goaway.rejection().unwrap().reason_name, "INTERNAL");
        assert!(goaway.is_resumable(), "a broken stream, resumed");
        for code in [
            Code::DeadlineExceeded,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            let plain = Error::from(tonic::Status::new(code, "from the transport"));
            assert_eq!(plain.reason(), None, "{code:?}");
        }
    }

    #[test]
    fn non_retryable_is_found_in_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] NonRetryable);
        assert!(is_non_retryable(&NonRetryable::new("x").into()));
        assert!(is_non_retryable(&Wrapper(NonRetryable::new("x")).into()));
        assert!(!is_non_retryable(&"plain".into()));
    }
}
