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
//! in its bytes (`Bytes::from_owner`). h2 queues a stream's data whatever its size, and sends
//! it as the client's flow-control windows open; it drops the bytes once it has written their
//! last one to the socket, and only once all of a frame's bytes are dropped is the permit given
//! back. A frame with permits goes to hyper a chunk at a time, each written within the send
//! timeout or the call ended (`unsent`): a client that does not read cannot keep them.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::{auth::Access, transport, unsent::Outgoing};
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

    /// `data`, holding the permits put in so far until it is dropped; `None` if there are
    /// none. tonic encodes a message as soon as its stream yields it, into the data frame it
    /// yields next: a permit put in before its message is yielded goes with that frame or, if
    /// put in later, a later one.
    fn bind(&self, data: &Bytes) -> Option<Bytes> {
        let permits = std::mem::take(&mut *lock(&self.0));
        if permits.is_empty() {
            return None;
        }
        Some(Bytes::from_owner(Sending {
            data: data.clone(),
            _permits: permits,
        }))
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

/// The tower layer that binds a reply's `Held` permits to its body's frames, each to be
/// written within the send timeout (`unsent`).
#[derive(Clone, Copy)]
pub struct HoldLayer {
    send_timeout: Duration,
}

impl HoldLayer {
    pub fn new(send_timeout: Duration) -> Self {
        Self { send_timeout }
    }
}

impl<S> Layer<S> for HoldLayer {
    type Service = Hold<S>;

    fn layer(&self, inner: S) -> Hold<S> {
        Hold {
            inner,
            send_timeout: self.send_timeout,
        }
    }
}

#[derive(Clone)]
pub struct Hold<S> {
    inner: S,
    send_timeout: Duration,
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
        let unsent = transport::unsent(request.extensions()).cloned();
        HoldFuture {
            answer: self.inner.call(request),
            outgoing: Some(Outgoing::new(self.send_timeout, unsent)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer, its permits moved from its extensions to its body.
    pub struct HoldFuture<F> {
        #[pin]
        answer: F,
        outgoing: Option<Outgoing>,
    }
}

impl<F, B, E> Future for HoldFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<HeldBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.answer.poll(cx))?;
        let held = response.extensions_mut().remove::<Held>();
        let outgoing = this.outgoing.take().expect("polled after it was ready");
        Poll::Ready(Ok(response.map(|inner| HeldBody {
            inner,
            held: held.unwrap_or_default(),
            outgoing: Some(outgoing),
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose data frames carry the permits of the bytes they hold, handed to
    /// hyper a chunk at a time, each written within the send timeout or the call reset
    /// (`unsent`). Permits left when it is dropped (their message never encoded, or not all
    /// handed over) are given back then.
    #[derive(Default)]
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        held: Held,
        // None only in the empty body tonic answers with where it makes a response itself.
        outgoing: Option<Outgoing>,
    }
}

impl<B> Body for HeldBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: From<h2::Error>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let Some(outgoing) = this.outgoing.as_mut() else {
            return this.inner.poll_frame(cx);
        };
        loop {
            let Ok(unwritten) = outgoing.poll_unwritten(cx) else {
                tracing::debug!("call reset: its reply was not written within send-timeout");
                let reset = h2::Error::from(h2::Reason::REFUSED_STREAM);
                return Poll::Ready(Some(Err(reset.into())));
            };
            if outgoing.has_rest() {
                if unwritten {
                    return Poll::Pending;
                }
                let chunk = outgoing.next_chunk().expect("bytes to hand over");
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            let polled = std::task::ready!(this.inner.as_mut().poll_frame(cx));
            if let Some(Ok(frame)) = &polled
                && let Some(bound) = frame.data_ref().and_then(|data| this.held.bind(data))
            {
                outgoing.push(bound);
                continue;
            }
            outgoing.release();
            return Poll::Ready(polled);
        }
    }

    fn is_end_stream(&self) -> bool {
        let idle = self.outgoing.as_ref().is_none_or(Outgoing::is_idle);
        idle && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::unsent::CHUNK,
        budgets::{BudgetLimits, Budgets},
    };

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
        let sent = held.bind(&Bytes::from_static(b"message")).unwrap();
        assert_eq!(&sent[..], b"message");
        assert_eq!(budget.used(), 50, "h2 still holds the frame");
        assert!(held.bind(&Bytes::from_static(b"no payload")).is_none());
        let mut part = sent.clone();
        drop(sent);
        let _ = part.split_to(3);
        assert_eq!(budget.used(), 50, "a part of the frame is still held");
        drop(part);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn permits_left_with_the_body_are_given_back_with_it() {
        let budget = budget();
        let held = Held::default();
        held.put(budget.take(None, 30).unwrap());
        let body = HeldBody {
            inner: tonic::body::Body::empty(),
            held: held.clone(),
            outgoing: None,
        };
        drop(held);
        assert_eq!(budget.used(), 30);
        drop(body);
        assert_eq!(budget.used(), 0);
    }

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A body of `frames`, its first data frame holding a permit of 30 of `budget`, each chunk
    /// to be written within 5 s.
    fn reply(budget: &Budget, frames: Vec<Frame<Bytes>>) -> HeldBody<Frames> {
        let held = Held::default();
        held.put(budget.take(None, 30).unwrap());
        HeldBody {
            inner: Frames(frames.into()),
            held,
            outgoing: Some(Outgoing::new(Duration::from_secs(5), None)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_goes_a_chunk_at_a_time_and_is_reset_when_one_is_not_written_in_time() {
        let budget = budget();
        let message = Frame::data(Bytes::from(vec![1; 2 * CHUNK + 100]));
        let mut body = Box::pin(reply(
            &budget,
            vec![message, Frame::trailers(Default::default())],
        ));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut next = || body.as_mut().poll_frame(&mut cx);
        let Poll::Ready(Some(Ok(first))) = next() else {
            panic!("the first chunk");
        };
        assert_eq!(first.data_ref().map(Bytes::len), Some(CHUNK));
        assert!(
            next().is_pending(),
            "the next waits for the first to be written"
        );
        drop(first);
        let Poll::Ready(Some(Ok(second))) = next() else {
            panic!("the second chunk");
        };
        assert!(next().is_pending());
        assert_eq!(budget.used(), 30, "the chunks hold the permit");
        tokio::time::advance(Duration::from_secs(5)).await;
        let Poll::Ready(Some(Err(status))) = next() else {
            panic!("the call ends past the send timeout");
        };
        let reset = std::error::Error::source(&status)
            .and_then(|source| source.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason);
        assert_eq!(reset, Some(h2::Reason::REFUSED_STREAM));
        drop(second);
        assert_eq!(budget.used(), 30, "the rest not handed over holds it too");
        drop(body);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replys_end_does_not_wait_for_its_last_chunk_to_be_written() {
        let budget = budget();
        let message = Frame::data(Bytes::from_static(b"job"));
        let body = reply(&budget, vec![message, Frame::trailers(Default::default())]);
        let mut body = std::pin::pin!(body);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(data))) = body.as_mut().poll_frame(&mut cx) else {
            panic!("the reply's message");
        };
        let Poll::Ready(Some(Ok(trailers))) = body.as_mut().poll_frame(&mut cx) else {
            panic!("its trailers at once");
        };
        assert!(trailers.is_trailers());
        assert_eq!(budget.used(), 30);
        drop(data);
        assert_eq!(budget.used(), 0);
    }
}
