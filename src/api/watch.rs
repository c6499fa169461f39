//! One WatchJob stream: replay the durable log after the client's sequence, then follow it.
//!
//! Every wake-up (an announced event, or a resync after possible message loss) leads to a
//! re-read of the log after the last sequence delivered, so each event is sent exactly once
//! and in order, whatever pub/sub did. The terminal event is the last message; the stream
//! then ends with OK.

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::proto;
use crate::{
    domain::{JobEvent, JobId},
    events::{EventHub, JobWatch, Wake},
    store::{EventPage, JobStore, decode_announced},
    telemetry::{Gauged, Metrics},
};

pub struct Watcher {
    store: JobStore,
    id: JobId,
    watch: JobWatch,
    first: EventPage,
    after: u64,
    shutdown: CancellationToken,
}

impl Watcher {
    /// Registers for wake-ups, then reads the log once: the job exists, or NOT_FOUND; `after`
    /// is at most its last sequence, or OUT_OF_RANGE (no event after it will ever come).
    pub async fn start(
        store: JobStore,
        hub: &EventHub,
        id: JobId,
        after: u64,
        shutdown: CancellationToken,
    ) -> Result<Self, Status> {
        let mut watch = hub.watch_job(&id);
        watch.mark_seen();
        let first = store.events_after(&id, after).await?;
        Ok(Self {
            store,
            id,
            watch,
            first,
            after,
            shutdown,
        })
    }

    /// The stream of events, polled by tonic itself: no task and no channel per watcher,
    /// and a client that goes away drops it (and its registration) at once.
    pub fn into_stream(self, metrics: Metrics) -> EventStream {
        let state = StreamState {
            delivered: self.after,
            finished: self.first.finished,
            pending: self.first.events.into(),
            done: false,
            store: self.store,
            id: self.id,
            watch: self.watch,
            shutdown: self.shutdown,
            _open: metrics.watch_stream(),
            metrics,
        };
        Box::pin(futures::stream::unfold(state, next_message))
    }
}

pub type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

struct StreamState {
    store: JobStore,
    id: JobId,
    watch: JobWatch,
    shutdown: CancellationToken,
    metrics: Metrics,
    _open: Gauged,
    /// Events read but not yet sent.
    pending: VecDeque<JobEvent>,
    /// The last sequence sent.
    delivered: u64,
    /// The job was finished at the last read.
    finished: bool,
    /// The stream has sent its last message.
    done: bool,
}

/// The stream's next message: a pending event, or the next after waiting and re-reading.
async fn next_message(
    mut state: StreamState,
) -> Option<(Result<proto::JobEvent, Status>, StreamState)> {
    if state.done {
        return None;
    }
    loop {
        if let Some(event) = state.pending.pop_front() {
            state.delivered = event.sequence;
            state.done = event.kind.is_terminal();
            return Some((Ok(event.into()), state));
        }
        // A client that resumed after the terminal event has nothing left to receive.
        if state.finished {
            return None;
        }
        let wake = tokio::select! {
            wake = state.watch.changed() => wake,
            () = state.shutdown.cancelled() => {
                state.done = true;
                return Some((Err(shutting_down(state.delivered)), state));
            }
        };
        match step(&state.id, state.delivered, wake, &state.metrics) {
            Step::Skip => continue,
            Step::Deliver(event) => {
                state.pending.push_back(event);
                continue;
            }
            Step::Read => {}
        }
        state.watch.mark_seen();
        // Boxed: the read's future is large and short-lived, and a stream spends its life
        // waiting, so the stream's own state stays small (see the fan-out benchmark).
        match Box::pin(state.store.events_after(&state.id, state.delivered)).await {
            Ok(page) => {
                state.pending.extend(page.events);
                state.finished = page.finished;
            }
            Err(error) => {
                let status = Status::from(error);
                let status = Status::new(
                    status.code(),
                    format!(
                        "{}; resume with after_sequence={}",
                        status.message(),
                        state.delivered
                    ),
                );
                state.done = true;
                return Some((Err(status), state));
            }
        }
    }
}

/// What a wake-up asks of a stream that has taken a job's events up to `taken`.
pub(super) enum Step {
    /// Nothing new: the announced event was taken already.
    Skip,
    /// The very next event, carried whole by the wake-up: no need to read the log.
    Deliver(JobEvent),
    /// Events may be missing (a gap, or a resync): read the log after `taken`.
    Read,
}

pub(super) fn step(id: &JobId, taken: u64, wake: Wake, metrics: &Metrics) -> Step {
    match wake {
        Wake::Event(announced) if announced.sequence <= taken => Step::Skip,
        Wake::Event(announced) if taken.checked_add(1) == Some(announced.sequence) => {
            match decode_announced(
                id,
                announced.sequence,
                &announced.event,
                announced.result.as_ref(),
            ) {
                Ok(Some(event)) => Step::Deliver(event),
                // A result too large to carry, or a message that does not decode.
                _ => Step::Read,
            }
        }
        // A gap: events were announced that this stream did not see.
        Wake::Event(_) => Step::Read,
        Wake::Resync => {
            metrics.resync();
            Step::Read
        }
    }
}

fn shutting_down(delivered: u64) -> Status {
    Status::unavailable(format!(
        "jobd is shutting down; last sequence delivered: {delivered}; resume with after_sequence={delivered}"
    ))
}
