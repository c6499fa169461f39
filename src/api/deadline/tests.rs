//! The deadline layer against scripted services and bodies.

use std::convert::Infallible;

use futures::FutureExt;
use http_body::{Body, Frame};

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
