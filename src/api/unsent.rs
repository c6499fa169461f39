//! The send timeout: how long the bytes that carry a reply's permits (`replies`) may wait for
//! their client to take them. A client that never opens its HTTP/2 flow-control window would
//! otherwise hold its permits until its connection is closed, and a stream's results wait for
//! room in a budget every watcher shares.
//!
//! A reply's permit-carrying bytes go to hyper a chunk (`CHUNK`) at a time, the next once the
//! one before is written, each with `--send-timeout` from when it is handed over. Who ends a
//! chunk's call past it depends on who holds the chunk. hyper asks the body for a frame only
//! once it has given h2 the one before; until then it polls nothing of that call but the
//! client's window and a reset from the client. So:
//!
//! - while the body is polled and waits (for the chunk, before the next one; or for its next
//!   message), the body times the chunk; past the deadline it fails, and hyper resets the
//!   stream with REFUSED_STREAM, which gRPC clients report as UNAVAILABLE; h2 drops the
//!   stream's queued data on the reset;
//! - from when it hands a chunk over, or yields a frame after it (the call's trailers), until
//!   it is polled again, the connection times it: past the deadline the connection is closed
//!   (`Aged` asks `Unsent::poll_overdue`), nothing short of it being able to end the call.
//!
//! Either way the bytes are dropped and their permits given back. A reply's last chunk does not
//! hold back its trailers: a reply the client reads goes out in one write, as before.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

use crate::sync::lock;

/// The most permit-carrying bytes handed to hyper at a time per reply: 64 KiB, the HTTP/2
/// default window's size, so that a reader that takes 64 KiB per send timeout is never cut.
pub const CHUNK: usize = 64 * 1024;

/// The chunks of one connection that hyper holds, not handed to h2 yet. Cheap to clone.
#[derive(Clone, Default)]
pub struct Unsent(Arc<Registry>);

#[derive(Default)]
struct Registry {
    chunks: Mutex<Vec<Arc<Chunk>>>,
    /// The connection's task, woken when a chunk is added so that it sets its timer.
    connection: AtomicWaker,
}

impl Unsent {
    fn add(&self, chunk: Arc<Chunk>) {
        let mut chunks = lock(&self.0.chunks);
        if !chunks.iter().any(|known| Arc::ptr_eq(known, &chunk)) {
            chunks.push(chunk);
        }
        drop(chunks);
        self.0.connection.wake();
    }

    /// Ready once a chunk hyper still holds is past its deadline; else wakes the caller at the
    /// earliest deadline with `timer`. Called by the connection's reads and writes.
    pub fn poll_overdue(
        &self,
        cx: &mut Context<'_>,
        timer: &mut Option<Pin<Box<Sleep>>>,
    ) -> Poll<()> {
        self.0.connection.register(cx.waker());
        let earliest = {
            let mut chunks = lock(&self.0.chunks);
            // A chunk its body times is the body's, and a written one is done.
            chunks.retain(|chunk| chunk.stage() == CONNECTION);
            chunks.iter().map(|chunk| chunk.deadline).min()
        };
        let Some(earliest) = earliest else {
            *timer = None;
            return Poll::Pending;
        };
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(earliest)));
        if timer.deadline() != earliest {
            timer.as_mut().reset(earliest);
        }
        timer.as_mut().poll(cx)
    }
}

/// Who times a chunk: the connection (hyper may hold it, and poll nothing else of its call),
/// its body (polled by hyper once hyper has given h2 all it was given), or no one (written, or
/// dropped unwritten).
const CONNECTION: u8 = 0;
const BODY: u8 = 1;
const WRITTEN: u8 = 2;

/// One chunk handed to hyper, and its deadline.
struct Chunk {
    deadline: Instant,
    stage: AtomicU8,
    /// The body waiting for the chunk to be written.
    body: AtomicWaker,
}

impl Chunk {
    fn stage(&self) -> u8 {
        self.stage.load(Ordering::Acquire)
    }

    /// Moves the chunk from stage `from` to `to`; false if it was not at `from`.
    fn move_stage(&self, from: u8, to: u8) -> bool {
        let moved = self
            .stage
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
        moved.is_ok()
    }
}

/// A chunk's bytes, which mark it written when h2 drops them.
struct Watched {
    bytes: Bytes,
    chunk: Arc<Chunk>,
}

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.chunk.stage.store(WRITTEN, Ordering::Release);
        self.chunk.body.wake();
    }
}

/// A chunk not written by its deadline.
#[derive(Debug)]
pub struct Overdue;

/// A reply body's permit-carrying bytes, handed to hyper a chunk at a time.
pub struct Outgoing {
    timeout: Duration,
    /// The connection's registry; none where the connection is not `Aged` (unit tests).
    unsent: Option<Unsent>,
    /// What is left of the bytes, not handed over yet.
    rest: Bytes,
    /// The chunk handed over last, until written, and its deadline's timer.
    out: Option<(Arc<Chunk>, Pin<Box<Sleep>>)>,
}

impl Outgoing {
    pub fn new(timeout: Duration, unsent: Option<Unsent>) -> Self {
        Self {
            timeout,
            unsent,
            rest: Bytes::new(),
            out: None,
        }
    }

    /// Whether every byte handed over is written.
    pub fn is_idle(&self) -> bool {
        self.rest.is_empty() && self.out.is_none()
    }

    /// Whether bytes wait to be handed over.
    pub fn has_rest(&self) -> bool {
        !self.rest.is_empty()
    }

    /// Whether the chunk handed over last is still unwritten, waking the body when it is
    /// written; an error past its deadline. Called each time hyper polls the body: hyper has
    /// given h2 all it was given then, so the body times the chunk from now on.
    pub fn poll_unwritten(&mut self, cx: &mut Context<'_>) -> Result<bool, Overdue> {
        let Some((chunk, timer)) = &mut self.out else {
            return Ok(false);
        };
        chunk.move_stage(CONNECTION, BODY);
        chunk.body.register(cx.waker());
        if chunk.stage() == WRITTEN {
            self.out = None;
            return Ok(false);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(Overdue),
            Poll::Pending => Ok(true),
        }
    }

    /// Leaves the unwritten chunk to the connection to time: the body yields a frame now,
    /// which hyper may hold without polling the body again.
    pub fn release(&mut self) {
        if let Some((chunk, _)) = &self.out
            && chunk.move_stage(BODY, CONNECTION)
            && let Some(unsent) = &self.unsent
        {
            unsent.add(chunk.clone());
        }
    }

    /// Takes `bytes` to hand over a chunk at a time, once the bytes before are all out.
    pub fn push(&mut self, bytes: Bytes) {
        debug_assert!(self.rest.is_empty(), "one frame's bytes at a time");
        self.rest = bytes;
    }

    /// The next chunk to hand to hyper, timed from now by the connection until the body is
    /// polled again; `None` when all are out.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.rest.is_empty() {
            return None;
        }
        debug_assert!(self.out.is_none(), "a chunk at a time");
        let bytes = self.rest.split_to(CHUNK.min(self.rest.len()));
        let deadline = Instant::now() + self.timeout;
        let chunk = Arc::new(Chunk {
            deadline,
            stage: AtomicU8::new(CONNECTION),
            body: AtomicWaker::new(),
        });
        if let Some(unsent) = &self.unsent {
            unsent.add(chunk.clone());
        }
        let timer = Box::pin(tokio::time::sleep_until(deadline));
        self.out = Some((chunk.clone(), timer));
        Some(Bytes::from_owner(Watched { bytes, chunk }))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// Whether `unsent` finds a chunk overdue now.
    fn overdue(unsent: &Unsent, timer: &mut Option<Pin<Box<Sleep>>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        unsent.poll_overdue(&mut cx, timer).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_go_one_at_a_time_and_a_waiting_body_times_the_last_one() {
        let unsent = Unsent::default();
        let mut outgoing = Outgoing::new(Duration::from_secs(30), Some(unsent.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        outgoing.push(Bytes::from(vec![7; CHUNK + 10]));
        let first = outgoing.next_chunk().unwrap();
        assert_eq!(first.len(), CHUNK);
        // Polled again, the body times it; written, the next goes.
        assert!(outgoing.poll_unwritten(&mut cx).unwrap());
        drop(first);
        assert!(!outgoing.poll_unwritten(&mut cx).unwrap());
        let second = outgoing.next_chunk().unwrap();
        assert_eq!((second.len(), outgoing.has_rest()), (10, false));
        assert!(outgoing.poll_unwritten(&mut cx).unwrap());
        // Never written: the body's error at the deadline, the connection leaving it alone.
        let mut timer = None;
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(outgoing.poll_unwritten(&mut cx).is_err());
        assert!(!overdue(&unsent, &mut timer) && timer.is_none());
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_the_body_does_not_wait_on_is_the_connections_to_end() {
        let unsent = Unsent::default();
        let mut outgoing = Outgoing::new(Duration::from_secs(30), Some(unsent.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        outgoing.push(Bytes::from_static(b"result"));
        let _held_by_hyper = outgoing.next_chunk().unwrap();
        // The body times it while polled, then yields the call's trailers.
        assert!(outgoing.poll_unwritten(&mut cx).unwrap());
        outgoing.release();
        let started = Instant::now();
        let mut timer = None;
        poll_fn(|cx| unsent.poll_overdue(cx, &mut timer)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
