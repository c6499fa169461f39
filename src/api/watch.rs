//! One WatchJob stream: replay the durable log after the client's sequence, then follow it.
//!
//! Every wake-up (an announced event, or a resync after possible message loss) leads to a
//! re-read of the log after the last sequence delivered, so each event is sent exactly once
//! and in order, whatever pub/sub did. The terminal event is the last message; the stream
//! then ends with OK.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::proto;
use crate::{
    domain::JobId,
    events::{EventHub, JobWatch, Wake},
    store::{EventPage, JobStore},
    telemetry::Metrics,
};

/// Messages buffered per stream before a slow client holds the watcher back.
pub const STREAM_BUFFER: usize = 32;

pub struct Watcher {
    store: JobStore,
    id: JobId,
    watch: JobWatch,
    first: EventPage,
    after: u64,
    shutdown: CancellationToken,
}

impl Watcher {
    /// Registers for wake-ups, then reads the log once: the job exists, or NOT_FOUND.
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

    pub async fn run(
        self,
        sender: mpsc::Sender<Result<proto::JobEvent, Status>>,
        metrics: Metrics,
    ) {
        let _open = metrics.watch_stream();
        let Self {
            store,
            id,
            mut watch,
            first,
            after,
            shutdown,
        } = self;
        let mut page = first;
        let mut delivered = after;
        loop {
            for event in page.events {
                let terminal = event.kind.is_terminal();
                let sequence = event.sequence;
                tokio::select! {
                    sent = sender.send(Ok(event.into())) => if sent.is_err() {
                        return; // The client went away.
                    },
                    // A client that stopped reading must not hold up shutdown.
                    () = shutdown.cancelled() => {
                        let _ = sender.try_send(Err(shutting_down(delivered)));
                        return;
                    }
                }
                delivered = sequence;
                if terminal {
                    return;
                }
            }
            // A client that resumed after the terminal event has nothing left to receive.
            if page.finished {
                return;
            }
            tokio::select! {
                wake = watch.changed() => if wake == Wake::Resync {
                    metrics.resync();
                },
                () = sender.closed() => return,
                () = shutdown.cancelled() => {
                    let _ = sender.try_send(Err(shutting_down(delivered)));
                    return;
                }
            }
            watch.mark_seen();
            page = match store.events_after(&id, delivered).await {
                Ok(page) => page,
                Err(error) => {
                    let status = Status::from(error);
                    let status = Status::new(
                        status.code(),
                        format!(
                            "{}; resume with after_sequence={delivered}",
                            status.message()
                        ),
                    );
                    let _ = sender.try_send(Err(status));
                    return;
                }
            };
        }
    }
}

fn shutting_down(delivered: u64) -> Status {
    Status::unavailable(format!(
        "jobd is shutting down; last sequence delivered: {delivered}; resume with after_sequence={delivered}"
    ))
}
