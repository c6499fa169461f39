//! The body of a response answered at once because its call has a deadline: it carries the
//! service's answer when it comes, or DEADLINE_EXCEEDED (see the module above).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Response, header::CONTENT_TYPE};
use http_body::{Body, Frame};
use tonic::Status;

use super::{Timer, deadline_exceeded, trailers};
use crate::api::body::{FrameMap, MapFrames};

pin_project_lite::pin_project! {
    /// A response body that carries the service's answer when it comes after the headers,
    /// and ends with DEADLINE_EXCEEDED when the deadline passes while it waits.
    pub struct DeadlineBody<F, B> {
        #[pin]
        stage: Stage<F, B>,
        timer: Option<Timer>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, B> {
        // The headers went ahead; the service has not answered yet.
        Answering { future: Pin<Box<F>> },
        Streaming { #[pin] body: MapFrames<B, Trailing> },
        // Ended early, with the trailers of a late status-only answer or of the deadline.
        // What the call held (a waiting claim, a stream) was dropped then.
        Ended,
    }
}

impl<F, B> DeadlineBody<F, B> {
    /// The body of a call not answered yet, which the deadline ends.
    pub(super) fn waiting(future: Pin<Box<F>>, timer: Timer) -> Self {
        Self {
            stage: Stage::Answering { future },
            timer: Some(timer),
        }
    }

    pub(super) fn answered(body: B, timer: Option<Timer>) -> Self {
        Self {
            stage: Stage::Streaming {
                body: MapFrames::new(body, Trailing(None)),
            },
            timer,
        }
    }
}

/// Headers of a late answer besides its content type (jobd sets none): they can only go with
/// the trailers. Boxed, as every stream holds the field.
struct Trailing(Option<Box<HeaderMap>>);

impl FrameMap for Trailing {
    fn frame<D>(&mut self, mut frame: Frame<D>) -> Frame<D> {
        if let Some(trailers) = frame.trailers_mut()
            && let Some(trailing) = self.0.take()
        {
            trailers.extend(*trailing);
        }
        frame
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
                        let trailing = (!headers.is_empty()).then(|| Box::new(headers));
                        let body = MapFrames::new(body, Trailing(trailing));
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
                    let frame = body.poll_frame(cx);
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
