//! One response body that passes another's frames through a `FrameMap`: the layers that look
//! at or change a call's frames (its trailers, mostly) say what they do with a frame, and this
//! body alone says how a body is passed through.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};

/// What a layer does with the frames of the bodies it wraps.
pub trait FrameMap {
    /// The frame that goes out for `frame`, which the inner body yielded.
    fn frame<D>(&mut self, frame: Frame<D>) -> Frame<D>;

    /// The inner body ended: after its last frame, or with an error.
    fn end(&mut self) {}

    /// The span the inner body is polled in, if its work is to be seen as the call's.
    fn span(&self) -> Option<&tracing::Span> {
        None
    }
}

pin_project_lite::pin_project! {
    /// `inner`'s frames, each as `map` makes it.
    pub struct MapFrames<B, F> {
        #[pin]
        inner: B,
        map: F,
    }
}

impl<B, F> MapFrames<B, F> {
    pub fn new(inner: B, map: F) -> Self {
        Self { inner, map }
    }
}

/// The empty body tonic's server answers with where it makes a response itself.
impl<B: Default, F: Default> Default for MapFrames<B, F> {
    fn default() -> Self {
        Self::new(B::default(), F::default())
    }
}

impl<B: Body, F: FrameMap> Body for MapFrames<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = match this.map.span() {
            Some(span) => span.in_scope(|| this.inner.poll_frame(cx)),
            None => this.inner.poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(this.map.frame(frame)))),
            Poll::Ready(ended) => {
                this.map.end();
                Poll::Ready(ended)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
