//! Replies that carry payloads, counted in the payload-bytes budget from when they are read
//! until tonic has sent them, so that concurrent large reads cannot take the process past it:
//!
//! - GetJob learns the bytes of the job's payload and result first, and is refused with
//!   RESOURCE_EXHAUSTED (BUDGET_EXHAUSTED) before reading them when they do not fit;
//! - a claim (ClaimJob, ClaimJobs, a completion's `next`) counts its jobs' payloads once
//!   they are claimed and read (at most one reply's worth per call); when they do not fit,
//!   its jobs go back to their queues at once, at no cost (a RELEASED event, no attempt
//!   counted), and the claim is refused with RESOURCE_EXHAUSTED, or, for a completion's
//!   `next`, comes back empty, the completions being recorded.
//!
//! A reply larger than the whole budget counts as all of it (`Budget::take_reply`): it goes
//! out alone. The permit travels in the response's extensions to `HoldLayer`, which keeps it
//! with the response body until the body is sent (or dropped).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Frame;
use tower::{Layer, Service};

use super::{
    auth::Access,
    body::{FrameMap, MapFrames},
};
use crate::{
    budgets::{Budget, Exhausted, Permit},
    claims::ClaimedJobs,
    domain::Claimed,
};

/// A reply's permit, held until the reply is sent; none for a reply that carries no payload.
#[derive(Clone, Default)]
pub struct Held {
    _permit: Option<Arc<Permit>>,
}

impl Held {
    /// Attaches the permit to `response`, for `HoldLayer` to keep with its body.
    pub fn attach<T>(self, mut response: tonic::Response<T>) -> tonic::Response<T> {
        response.extensions_mut().insert(self);
        response
    }
}

/// Counts `bytes` of a reply for `access`'s caller.
pub fn take(budget: &Budget, access: &Access, bytes: u64) -> Result<Held, Exhausted> {
    let permit = budget.take_reply(access.principal(), bytes)?;
    Ok(Held {
        _permit: Some(Arc::new(permit)),
    })
}

/// A claim's jobs, for its reply, with their payloads counted; refused past the budget, the
/// jobs dropped undelivered, which puts them back in their queues.
pub fn claimed(
    budget: &Budget,
    access: &Access,
    claimed: ClaimedJobs,
) -> Result<(Vec<Claimed>, Held), Exhausted> {
    let bytes = claimed.iter().map(|job| job.job.payload.len() as u64).sum();
    let held = take(budget, access, bytes)?;
    Ok((claimed.deliver(), held))
}

/// The tower layer that keeps a reply's `Held` permit with its body until it is sent.
#[derive(Clone, Copy, Default)]
pub struct HoldLayer;

impl<S> Layer<S> for HoldLayer {
    type Service = Hold<S>;

    fn layer(&self, inner: S) -> Hold<S> {
        Hold { inner }
    }
}

#[derive(Clone)]
pub struct Hold<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Hold<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<HeldBody<ResBody>>;
    type Error = S::Error;
    type Future = HoldFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        HoldFuture {
            answer: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer, its permit moved from its extensions to its body.
    pub struct HoldFuture<F> {
        #[pin]
        answer: F,
    }
}

impl<F, B, E> Future for HoldFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<HeldBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = std::task::ready!(self.project().answer.poll(cx))?;
        let held = response.extensions_mut().remove::<Held>();
        Poll::Ready(Ok(response.map(|body| MapFrames::new(body, Holding(held)))))
    }
}

/// A response body with the permit of the bytes it carries, given back at its end.
pub type HeldBody<B> = MapFrames<B, Holding>;

/// The permit of a reply's bytes, held by its body until the body ends (or is dropped).
#[derive(Default)]
pub struct Holding(Option<Held>);

impl FrameMap for Holding {
    fn frame<D>(&mut self, frame: Frame<D>) -> Frame<D> {
        frame
    }

    fn end(&mut self) {
        self.0 = None;
    }
}
