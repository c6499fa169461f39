//! Deadlines: a call still running when the caller's `grpc-timeout` passes ends with
//! DEADLINE_EXCEEDED, whether it was preparing its answer (a claim waiting for a job) or
//! streaming (a WatchJob between events).
//!
//! tonic's server reads the header as well, before any layer of jobd's sees the request, and
//! no option turns that off. Its timeout (`GrpcTimeout`, in tonic's
//! `transport/service/grpc_timeout.rs`) wraps the services and their layers, ends a call
//! whose answer has not come by the deadline with CANCELLED ("Timeout expired"), which clients
//! take for a cancellation of their own, and never bounds a stream's body.
//!
//! A second timer in here would race tonic's: its future checks the call's answer, then its
//! own timer, so in any poll where its timer is ready and the answer is not, CANCELLED wins,
//! and the clock runs (the thread may even be preempted) between any check of ours and its.
//! So this layer leaves tonic's timer nothing to bound: tonic takes the call's answer whenever
//! it is ready, and a call with a deadline is answered at tonic's first poll, always. If the
//! service has answered by then (a refusal, say), that answer goes out as it is; otherwise the
//! response headers go out alone and the service's answer follows in the body: its message and
//! status, or, once the deadline passes, DEADLINE_EXCEEDED in the trailers. Both shapes are
//! plain gRPC; a status-only answer that comes late is sent as trailers. A client whose own
//! timer bounds only the wait for the response headers, as tonic's does (and answers CANCELLED
//! when it fires), gets the headers at once, and so the server's DEADLINE_EXCEEDED too.

mod body;

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Request, Response, header::CONTENT_TYPE};
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::reason::{Reason, reworded, status};

pub use body::DeadlineBody;

/// The tower layer that ends the calls of the server it wraps at their deadline.
#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<DeadlineBody<S::Future, ResBody>>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // A timeout too large for the clock is no deadline at all.
        let timer = grpc_timeout(request.headers()).and_then(|timeout| {
            let at = Instant::now().checked_add(timeout)?;
            Some(Timer {
                sleep: Box::pin(tokio::time::sleep_until(at)),
                timeout,
            })
        });
        let inner = self.inner.call(request);
        match timer {
            None => DeadlineFuture::Untimed { inner },
            // Boxed, so that a call still running can move into its response's body.
            Some(timer) => DeadlineFuture::Timed {
                inner: Some((Box::pin(inner), timer)),
            },
        }
    }
}

/// A call's deadline: the timer, and the timeout the caller gave, to name in the status.
pub struct Timer {
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

pin_project_lite::pin_project! {
    /// The response to a call: the service's own, or for a call with a deadline, at once.
    #[project = DeadlineFutureProj]
    pub enum DeadlineFuture<F> {
        Untimed { #[pin] inner: F },
        // Taken when the future completes.
        Timed { inner: Option<(Pin<Box<F>>, Timer)> },
    }
}

impl<F, ResBody, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<DeadlineBody<F, ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut future, timer) = match self.project() {
            DeadlineFutureProj::Untimed { inner } => {
                return inner.poll(cx).map(|answer| {
                    answer.map(|response| response.map(|body| DeadlineBody::answered(body, None)))
                });
            }
            DeadlineFutureProj::Timed { inner } => inner
                .take()
                .expect("a future is not polled after it completed"),
        };
        if let Poll::Ready(answer) = future.as_mut().poll(cx) {
            return Poll::Ready(
                answer
                    .map(|response| response.map(|body| DeadlineBody::answered(body, Some(timer)))),
            );
        }
        // The headers alone, now; the answer follows in the body (see the module comment).
        let mut response = Response::new(DeadlineBody::waiting(future, timer));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Poll::Ready(Ok(response))
    }
}

pub(super) fn deadline_exceeded(timeout: Duration) -> Status {
    let message = format!(
        "the call's deadline (grpc-timeout {}) has passed",
        humantime::format_duration(timeout)
    );
    status(
        Code::DeadlineExceeded,
        Reason::DeadlineExceeded,
        message,
        &[],
    )
}

/// `status` as the trailers that end a call.
pub(super) fn trailers(status: Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that is not a valid header value fails; the code and details still go.
        let _ = reworded(&status, String::new()).add_header(&mut trailers);
    }
    trailers
}

/// The `grpc-timeout` header, as the gRPC over HTTP/2 protocol has it: at most 8 digits and a
/// unit (H, M, S, m, u, n). A header that is not one is ignored, as tonic ignores it.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at_checked(unit_at)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most 99,999,999: no unit below makes it overflow.
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
