//! Why a call failed, for programs: every status jobd ends a call with, but OK, carries a
//! `google.rpc.ErrorInfo` (domain `jobd`) whose reason is one of a stable set, so that client
//! libraries raise a distinct error per cause without parsing messages. The message stays for
//! people; the reason and its metadata are the contract (`proto/jobd/v1/errors.proto`).
//!
//! Statuses jobd makes name their reason here; `ReasonLayer` gives the statuses that tonic and
//! the standard services make themselves (an unknown method, an undecodable message) the name
//! of their code.

use std::{
    collections::HashMap,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::body::{FrameMap, MapFrames};

/// The `domain` of every ErrorInfo jobd sends.
pub const DOMAIN: &str = "jobd";

/// The stable reasons, as the proto defines and documents them (`jobd.v1.ErrorReason`): the
/// name of a value is the reason string sent.
pub use super::proto::ErrorReason as Reason;

/// A status with `reason` and its `metadata` attached as an ErrorInfo.
pub fn status(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: &[(&str, String)],
) -> Status {
    with_reason(code, reason.as_str_name(), message.into(), metadata)
}

fn with_reason(code: Code, reason: &str, message: String, metadata: &[(&str, String)]) -> Status {
    let metadata = metadata
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect::<HashMap<_, _>>();
    let details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// The reason `status` carries, if it carries one.
pub fn of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// `status` with another message, its reason kept.
pub fn reworded(status: &Status, message: String) -> Status {
    Status::with_details(status.code(), message, status.details().to_vec().into())
}

/// A code's name, as in `google.rpc.Code` (`UNIMPLEMENTED`, `RESOURCE_EXHAUSTED`, …): the
/// reason a status made outside jobd's handlers gets, and the status code spans record.
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
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
    }
}

/// Gives a status that carries no details the ErrorInfo naming its code. Statuses with details
/// (every one jobd makes) pass as they are.
fn complete(headers: &mut HeaderMap) {
    if headers.contains_key("grpc-status-details-bin") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::Ok {
        return;
    }
    let reason = code_name(status.code());
    let completed = with_reason(status.code(), reason, status.message().to_owned(), &[]);
    // Only a message that is not a valid header value fails, and it came from one.
    let _ = completed.add_header(headers);
}

/// The tower layer that gives every status a reason (see the module comment).
#[derive(Clone, Copy, Default)]
pub struct ReasonLayer;

impl<S> Layer<S> for ReasonLayer {
    type Service = Reasons<S>;

    fn layer(&self, inner: S) -> Reasons<S> {
        Reasons { inner }
    }
}

#[derive(Clone)]
pub struct Reasons<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Reasons<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ReasonBody<ResBody>>;
    type Error = S::Error;
    type Future = ReasonFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ReasonFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response whose status, if it came in the headers, gets a reason if it has none.
    pub struct ReasonFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for ReasonFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ReasonBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|answer| {
            answer.map(|mut response| {
                // A status-only answer carries its status in the headers.
                complete(response.headers_mut());
                response.map(|body| MapFrames::new(body, Completion))
            })
        })
    }
}

/// A response body whose trailers' status gets a reason if it has none.
pub type ReasonBody<B> = MapFrames<B, Completion>;

/// Gives the status in a body's trailers a reason if it has none.
pub struct Completion;

impl FrameMap for Completion {
    fn frame<D>(&mut self, mut frame: Frame<D>) -> Frame<D> {
        if let Some(trailers) = frame.trailers_mut() {
            complete(trailers);
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: &Status) -> (String, String, Vec<(String, String)>) {
        let info = status.get_details_error_info().expect("an ErrorInfo");
        let mut metadata: Vec<_> = info.metadata.into_iter().collect();
        metadata.sort();
        (info.reason, info.domain, metadata)
    }

    #[test]
    fn a_status_carries_its_reason_and_metadata() {
        let made = status(
            Code::AlreadyExists,
            Reason::IdempotencyConflict,
            "used",
            &[("key", "k1".into())],
        );
        let (reason, domain, metadata) = info(&made);
        assert_eq!(
            (reason.as_str(), domain.as_str()),
            ("IDEMPOTENCY_CONFLICT", "jobd")
        );
        assert_eq!(metadata, [("key".to_owned(), "k1".to_owned())]);
        assert_eq!(
            info(&reworded(&made, "other".into())).0,
            "IDEMPOTENCY_CONFLICT"
        );
    }

    #[test]
    fn a_status_without_details_gets_its_codes_name_and_keeps_its_message() {
        let mut headers = HeaderMap::new();
        Status::unimplemented("no such method")
            .add_header(&mut headers)
            .unwrap();
        complete(&mut headers);
        let completed = Status::from_header_map(&headers).unwrap();
        assert_eq!(completed.code(), Code::Unimplemented);
        assert_eq!(completed.message(), "no such method");
        assert_eq!(info(&completed).0, "UNIMPLEMENTED");

        let mut ours = HeaderMap::new();
        status(Code::NotFound, Reason::JobNotFound, "gone", &[])
            .add_header(&mut ours)
            .unwrap();
        complete(&mut ours);
        assert_eq!(
            info(&Status::from_header_map(&ours).unwrap()).0,
            "JOB_NOT_FOUND"
        );
    }
}
