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

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Request, Response, header::CONTENT_TYPE};
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tower::{Layer, Service};

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
        let mut response = Response::new(DeadlineBody {
            stage: Stage::Answering { future },
            timer: Some(timer),
            trailing: None,
        });
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Poll::Ready(Ok(response))
    }
}

pin_project_lite::pin_project! {
    /// A response body that carries the service's answer when it comes after the headers,
    /// and ends with DEADLINE_EXCEEDED when the deadline passes while it waits.
    pub struct DeadlineBody<F, B> {
        #[pin]
        stage: Stage<F, B>,
        timer: Option<Timer>,
        // Headers of a late answer besides its content type (jobd sets none): they can only
        // go with the trailers. Boxed, as every stream holds the field.
        trailing: Option<Box<HeaderMap>>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, B> {
        // The headers went ahead; the service has not answered yet.
        Answering { future: Pin<Box<F>> },
        Streaming { #[pin] body: B },
        // Ended early, with the trailers of a late status-only answer or of the deadline.
        // What the call held (a waiting claim, a stream) was dropped then.
        Ended,
    }
}

impl<F, B> DeadlineBody<F, B> {
    fn answered(body: B, timer: Option<Timer>) -> Self {
        Self {
            stage: Stage::Streaming { body },
            timer,
            trailing: None,
        }
    }
}

impl<F, B, E> Body for DeadlineBody<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<tonic::codegen::StdError>,
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Answering { future } => match future.as_mut().poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        let (parts, body) = response.into_parts();
                        let mut headers = parts.headers;
                        headers.remove(CONTENT_TYPE);
                        if headers.contains_key("grpc-status") {
                            // A status-only answer: its headers are the trailers now.
                            this.stage.set(Stage::Ended);
                            return Poll::Ready(Some(Ok(Frame::trailers(headers))));
                        }
                        *this.trailing = (!headers.is_empty()).then(|| Box::new(headers));
                        this.stage.set(Stage::Streaming { body });
                    }
                    Poll::Ready(Err(error)) => {
                        this.stage.set(Stage::Ended);
                        let status = Status::from_error(error.into());
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers(status)))));
                    }
                    Poll::Pending => break,
                },
                StageProj::Streaming { body } => {
                    // A frame that is ready goes out, at the deadline too: a unary answer,
                    // whose message and status are ready together, is never cut between them.
                    let mut frame = body.poll_frame(cx);
                    if let Poll::Ready(Some(Ok(frame))) = &mut frame
                        && let Some(trailers) = frame.trailers_mut()
                        && let Some(trailing) = this.trailing.take()
                    {
                        trailers.extend(*trailing);
                    }
                    if frame.is_ready() {
                        return frame;
                    }
                    break;
                }
                StageProj::Ended => return Poll::Ready(None),
            }
        }
        // Waiting for the answer or for the stream's next message: the deadline ends that.
        let Some(timer) = this.timer else {
            return Poll::Pending;
        };
        if timer.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.stage.set(Stage::Ended);
        let status = deadline_exceeded(timer.timeout);
        Poll::Ready(Some(Ok(Frame::trailers(trailers(status)))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.stage {
            Stage::Answering { .. } => false,
            Stage::Streaming { body } => body.is_end_stream(),
            Stage::Ended => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.stage {
            Stage::Answering { .. } => http_body::SizeHint::default(),
            Stage::Streaming { body } => body.size_hint(),
            Stage::Ended => http_body::SizeHint::with_exact(0),
        }
    }
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the call's deadline (grpc-timeout {}) has passed",
        humantime::format_duration(timeout)
    ))
}

/// `status` as the trailers that end a call.
fn trailers(status: Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that is not a valid header value fails; the code alone still goes.
        let _ = Status::new(status.code(), "").add_header(&mut trailers);
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
mod tests {
    use std::convert::Infallible;

    use futures::FutureExt;

    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", timeout.parse().unwrap());
        headers
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_ignores_what_is_not_one() {
        for (value, expected) in [
            ("3H", Duration::from_secs(3 * 3600)),
            ("2M", Duration::from_secs(120)),
            ("42S", Duration::from_secs(42)),
            ("300m", Duration::from_millis(300)),
            ("7u", Duration::from_micros(7)),
            ("82n", Duration::from_nanos(82)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ] {
            assert_eq!(grpc_timeout(&headers(value)), Some(expected), "{value}");
        }
        for value in [
            "",
            "m",
            "10",
            "10s",
            "123456789S",
            "-1S",
            "+1S",
            "1.5S",
            "ten S",
        ] {
            assert_eq!(grpc_timeout(&headers(value)), None, "{value:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    /// A service that answers after `wait` (never, when `None`).
    struct Scripted {
        wait: Option<Duration>,
        answer: Answer,
    }

    #[derive(Clone, Copy)]
    enum Answer {
        /// NOT_FOUND, in the headers.
        Refuse,
        /// A stream that never ends.
        Stream,
        /// OK, with a header of its own.
        Finish,
    }

    impl Service<Request<()>> for Scripted {
        type Response = Response<TestBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let (wait, answer) = (self.wait, self.answer);
            Box::pin(async move {
                match wait {
                    None => std::future::pending().await,
                    Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                    Some(_) => {}
                }
                Ok(match answer {
                    Answer::Refuse => Status::not_found("gone").into_http(),
                    Answer::Stream => Response::new(TestBody { ends: false }),
                    Answer::Finish => {
                        let mut response = Response::new(TestBody { ends: true });
                        response
                            .headers_mut()
                            .insert("x-note", HeaderValue::from_static("kept"));
                        response
                    }
                })
            })
        }
    }

    /// A body that never ends, or that `ends` at once with OK in its trailers.
    #[derive(Default)]
    struct TestBody {
        ends: bool,
    }

    impl Body for TestBody {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Infallible>>> {
            if !std::mem::take(&mut self.ends) {
                return Poll::Pending;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            Poll::Ready(Some(Ok(Frame::trailers(trailers))))
        }
    }

    fn service(wait: Option<Duration>, answer: Answer) -> Deadline<Scripted> {
        DeadlineLayer.layer(Scripted { wait, answer })
    }

    fn request(timeout: &str) -> Request<()> {
        let mut request = Request::new(());
        *request.headers_mut() = headers(timeout);
        request
    }

    async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    fn status_of(headers: &HeaderMap) -> &str {
        headers["grpc-status"].to_str().unwrap()
    }

    /// What makes tonic's timeout harmless: its future never finds this one pending.
    #[tokio::test(start_paused = true)]
    async fn a_call_with_a_deadline_is_answered_at_the_first_poll() {
        for timeout in ["1n", "300m", "1H"] {
            let response = service(None, Answer::Stream)
                .call(request(timeout))
                .now_or_never()
                .expect("answered at the first poll")
                .unwrap();
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert!(response.headers().get("grpc-status").is_none());
            assert!(!response.body().is_end_stream());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_ends_with_deadline_exceeded() {
        let started = Instant::now();
        let response = service(None, Answer::Stream)
            .call(request("300m"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let frame = next_frame(&mut body).await.unwrap().unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "after {took:?}");
        assert!(took < Duration::from_millis(310), "after {took:?}");
        assert_eq!(status_of(frame.trailers_ref().unwrap()), "4");
        assert!(body.is_end_stream());
        assert!(next_frame(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
        let started = Instant::now();
        let response = service(Some(Duration::ZERO), Answer::Stream)
            .call(request("2S"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let frame = next_frame(&mut body).await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(status_of(frame.trailers_ref().unwrap()), "4");
        assert!(body.is_end_stream());
        assert!(next_frame(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_before_the_deadline_keeps_its_status() {
        // At once: the status in the headers, as the service answered.
        let response = service(Some(Duration::ZERO), Answer::Refuse)
            .call(request("1S"))
            .await
            .unwrap();
        assert_eq!(status_of(response.headers()), "5");
        // Later: the same status, in the trailers after the headers that went ahead.
        let response = service(Some(Duration::from_millis(100)), Answer::Refuse)
            .call(request("1S"))
            .await
            .unwrap();
        assert!(response.headers().get("grpc-status").is_none());
        let mut body = response.into_body();
        let frame = next_frame(&mut body).await.unwrap().unwrap();
        let trailers = frame.trailers_ref().unwrap();
        assert_eq!(status_of(trailers), "5");
        assert_eq!(trailers["grpc-message"], "gone");
        assert!(trailers.get(CONTENT_TYPE).is_none());
        assert!(next_frame(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_headers_of_a_late_answer_go_with_its_trailers() {
        let response = service(Some(Duration::from_millis(100)), Answer::Finish)
            .call(request("1S"))
            .await
            .unwrap();
        assert!(response.headers().get("x-note").is_none());
        let mut body = response.into_body();
        let frame = next_frame(&mut body).await.unwrap().unwrap();
        let trailers = frame.trailers_ref().unwrap();
        assert_eq!(status_of(trailers), "0");
        assert_eq!(trailers["x-note"], "kept");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_a_call_runs_on() {
        for timeout in ["", "garbage"] {
            let answer = service(None, Answer::Stream).call(request(timeout));
            let answer = tokio::time::timeout(Duration::from_secs(3600), answer);
            assert!(
                answer.await.is_err(),
                "{timeout:?}: still waiting after an hour"
            );
        }
    }
}
