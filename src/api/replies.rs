//! Replies that carry payloads, counted in a budget from before they are read until h2 has
//! written their bytes to the connection, so that concurrent large reads cannot take the
//! process past it:
//!
//! - GetJob learns the bytes of the job's payload and result first, and is refused with
//!   RESOURCE_EXHAUSTED (BUDGET_EXHAUSTED) before reading them when they do not fit;
//! - a claim (ClaimJob, ClaimJobs, a completion's `next`) reserves room before its script
//!   claims anything, and claims only the jobs that fit in it (`claims::room`); the
//!   reservation, settled at the payload bytes read, comes with the jobs
//!   (`ClaimedJobs::reserved`). A claim without room for its first job is refused with
//!   RESOURCE_EXHAUSTED, or, for a completion's `next`, comes back empty, the completions
//!   being recorded; the jobs it found stay queued, untouched. Jobs a submission hands to a
//!   waiting claim are counted before the submission's call (`Handing::within`);
//! - a stream's results wait for room in their own budget (see `streams`).
//!
//! A reply larger than the whole budget counts as all of it (`Budget::take_reply`): it goes
//! out alone. The permits travel in a `Held`, which the response's extensions carry to
//! `HoldLayer`; each data frame of the body takes the permits put in before it and keeps them
//! in its bytes (`Bytes::from_owner`). hyper hands a frame to h2 and at once polls for the
//! next, while h2 may still hold all of it (it queues a stream's data whatever its size, and
//! sends it as the client's flow-control windows open); h2 drops the bytes once it has
//! written their last one to the socket, and only then is the permit given back.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::auth::Access;
use crate::{
    budgets::{Budget, Exhausted, Permit},
    claims::ClaimedJobs,
    domain::Claimed,
    sync::lock,
};

/// The permits of a reply's payloads, from when they are taken until the bytes that carry
/// them are sent: a handler puts in its reply's, a stream each message's before it yields it.
/// Cheap to clone; the default holds none.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<Vec<Permit>>>);

impl Held {
    /// Adds `permit`, to go with the next data frame of the reply.
    pub fn put(&self, permit: Permit) {
        lock(&self.0).push(permit);
    }

    /// Attaches the permits to `response`, for `HoldLayer` to bind to its body's frames.
    pub fn attach<T>(self, mut response: tonic::Response<T>) -> tonic::Response<T> {
        response.extensions_mut().insert(self);
        response
    }

    /// `data`, holding the permits put in so far until it is dropped. tonic encodes a message
    /// as soon as its stream yields it, into the data frame it yields next: a permit put in
    /// before its message is yielded goes with that frame or, if put in later, a later one.
    fn bind(&self, data: Bytes) -> Bytes {
        let permits = std::mem::take(&mut *lock(&self.0));
        if permits.is_empty() {
            return data;
        }
        Bytes::from_owner(Sending {
            data,
            _permits: permits,
        })
    }
}

/// A data frame's bytes with the permits they carry.
struct Sending {
    data: Bytes,
    _permits: Vec<Permit>,
}

impl AsRef<[u8]> for Sending {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Counts `bytes` of a reply for `access`'s caller.
pub fn take(budget: &Budget, access: &Access, bytes: u64) -> Result<Held, Exhausted> {
    let held = Held::default();
    held.put(budget.take_reply(access.principal(), bytes)?);
    Ok(held)
}

/// A claim's jobs, for its reply, with the permit that counted their payloads before they
/// were read (or handed off), to hold until sent.
pub fn claimed(mut claimed: ClaimedJobs) -> (Vec<Claimed>, Held) {
    let held = Held::default();
    if let Some(permit) = claimed.reserved() {
        held.put(permit);
    }
    (claimed.deliver(), held)
}

/// The tower layer that binds a reply's `Held` permits to its body's frames.
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
    /// The service's answer, its permits moved from its extensions to its body.
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
        Poll::Ready(Ok(response.map(|inner| HeldBody {
            inner,
            held: held.unwrap_or_default(),
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose data frames carry the permits of the bytes they hold. Permits
    /// left when it is dropped (their message never encoded) are given back then.
    #[derive(Default)]
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        held: Held,
    }
}

impl<B: Body<Data = Bytes>> Body for HeldBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        Poll::Ready(
            polled.map(|frame| frame.map(|frame| frame.map_data(|data| this.held.bind(data)))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::{BudgetLimits, Budgets};

    fn budget() -> Budget {
        let limits = BudgetLimits {
            watch_streams: 1,
            watch_streams_per_principal: 1,
            waiting_claims: 1,
            waiting_claims_per_principal: 1,
            watchers_per_job: 1,
            payload_bytes: 100,
            payload_bytes_per_principal: 100,
            stream_result_bytes: 100,
        };
        Budgets::new(limits).stream_result_bytes
    }

    #[test]
    fn a_data_frame_holds_the_permits_put_before_it_until_its_bytes_are_dropped() {
        let budget = budget();
        let held = Held::default();
        held.put(budget.take(None, 30).unwrap());
        held.put(budget.take(None, 20).unwrap());
        let sent = held.bind(Bytes::from_static(b"message"));
        assert_eq!(&sent[..], b"message");
        assert_eq!(budget.used(), 50, "h2 still holds the frame");
        let later = held.bind(Bytes::from_static(b"no payload"));
        let mut part = sent.clone();
        drop(sent);
        let _ = part.split_to(3);
        assert_eq!(budget.used(), 50, "a part of the frame is still held");
        drop(part);
        assert_eq!(budget.used(), 0);
        drop(later);
    }

    #[test]
    fn permits_left_with_the_body_are_given_back_with_it() {
        let budget = budget();
        let held = Held::default();
        held.put(budget.take(None, 30).unwrap());
        let body = HeldBody {
            inner: tonic::body::Body::empty(),
            held: held.clone(),
        };
        drop(held);
        assert_eq!(budget.used(), 30);
        drop(body);
        assert_eq!(budget.used(), 0);
    }
}
