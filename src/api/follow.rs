//! A SubmitAndWatchJobs stream: the jobs of one call followed on one stream.
//!
//! Each job is registered with the hub before it is written, so its first event is known
//! without reading it back and no later event can go unannounced. After that every job is
//! followed as a WatchJob stream follows its one job (`watch::step`): an announced event is
//! sent as carried, and a gap or a resync leads to a re-read of that job's log. Each job's
//! events go out exactly once and in order; the stream ends after the last terminal event.

use std::collections::VecDeque;

use futures::{
    StreamExt,
    stream::{BoxStream, SelectAll},
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    proto::{self, submit_and_watch_jobs_response::Message},
    watch::{Step, step},
};
use crate::{
    domain::{JobEvent, JobId},
    events::{JobWatch, Wake},
    store::JobStore,
    telemetry::{Gauged, Metrics},
};

pub type FollowStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<proto::SubmitAndWatchJobsResponse, Status>> + Send>,
>;

/// The jobs of one stream, as they are gathered before it starts.
pub struct Followed {
    store: JobStore,
    metrics: Metrics,
    shutdown: CancellationToken,
    jobs: Vec<FollowedJob>,
    wakes: SelectAll<BoxStream<'static, (usize, Wake)>>,
    pending: VecDeque<JobEvent>,
}

/// One job's place in its log.
struct FollowedJob {
    id: JobId,
    /// The last sequence taken into `pending` (or sent).
    taken: u64,
    /// Its terminal event was taken: nothing more will come.
    finished: bool,
}

impl Followed {
    pub fn new(store: JobStore, metrics: Metrics, shutdown: CancellationToken) -> Self {
        Self {
            store,
            metrics,
            shutdown,
            jobs: Vec::new(),
            wakes: SelectAll::new(),
            pending: VecDeque::new(),
        }
    }

    /// Whether `id` is followed already (two submissions that named one idempotency key).
    pub fn contains(&self, id: &JobId) -> bool {
        self.jobs.iter().any(|job| &job.id == id)
    }

    /// Follows a job just created, whose first event is `first`; `watch` was registered
    /// before the job was written.
    pub fn created(&mut self, watch: JobWatch, first: JobEvent) {
        let index = self.add(watch, first.job_id.clone());
        self.jobs[index].taken = first.sequence;
        self.pending.push_back(first);
    }

    /// Follows a job that existed before the call, from its first event: registers, then
    /// reads its log.
    pub async fn existing(&mut self, mut watch: JobWatch, id: JobId) -> Result<(), Status> {
        watch.mark_seen();
        let page = self.store.events_after(&id, 0).await?;
        let index = self.add(watch, id);
        let job = &mut self.jobs[index];
        job.taken = page.events.last().map_or(0, |event| event.sequence);
        job.finished = page.finished;
        self.pending.extend(page.events);
        Ok(())
    }

    fn add(&mut self, watch: JobWatch, id: JobId) -> usize {
        let index = self.jobs.len();
        self.jobs.push(FollowedJob {
            id,
            taken: 0,
            finished: false,
        });
        self.wakes.push(wakes(index, watch));
        index
    }

    /// The stream: `first`, then every job's events until each has sent its terminal one.
    pub fn into_stream(self, first: proto::SubmitJobsResponse) -> FollowStream {
        let state = StreamState {
            unfinished: self.jobs.len(),
            _open: self.metrics.watch_stream(),
            followed: self,
            done: false,
        };
        let first = proto::SubmitAndWatchJobsResponse {
            message: Some(Message::Submitted(first)),
        };
        Box::pin(
            futures::stream::once(async { Ok(first) })
                .chain(futures::stream::unfold(state, next_message)),
        )
    }
}

/// A job's wake-ups, tagged with its place in `Followed::jobs`.
fn wakes(index: usize, watch: JobWatch) -> BoxStream<'static, (usize, Wake)> {
    futures::stream::unfold(watch, move |mut watch| async move {
        let wake = watch.changed().await;
        Some(((index, wake), watch))
    })
    .boxed()
}

struct StreamState {
    followed: Followed,
    /// Jobs whose terminal event has not been sent yet.
    unfinished: usize,
    /// The stream has sent its last message.
    done: bool,
    _open: Gauged,
}

async fn next_message(
    mut state: StreamState,
) -> Option<(
    Result<proto::SubmitAndWatchJobsResponse, Status>,
    StreamState,
)> {
    if state.done {
        return None;
    }
    let followed = &mut state.followed;
    loop {
        if let Some(event) = followed.pending.pop_front() {
            if event.kind.is_terminal() {
                state.unfinished -= 1;
            }
            let message = proto::SubmitAndWatchJobsResponse {
                message: Some(Message::Event(event.into())),
            };
            return Some((Ok(message), state));
        }
        if state.unfinished == 0 {
            return None;
        }
        let (index, wake) = tokio::select! {
            wake = followed.wakes.next() => wake?,
            () = followed.shutdown.cancelled() => {
                state.done = true;
                let status = interrupted(tonic::Code::Unavailable, "jobd is shutting down");
                return Some((Err(status), state));
            }
        };
        let job = &mut followed.jobs[index];
        if job.finished {
            continue;
        }
        let events = match step(&job.id, job.taken, wake, &followed.metrics) {
            Step::Skip => continue,
            Step::Deliver(event) => vec![event],
            // Boxed, as in WatchJob: the read's future is large and short-lived.
            Step::Read => match Box::pin(followed.store.events_after(&job.id, job.taken)).await {
                Ok(page) => {
                    job.finished = page.finished;
                    page.events
                }
                Err(error) => {
                    state.done = true;
                    let status = Status::from(error);
                    return Some((Err(interrupted(status.code(), status.message())), state));
                }
            },
        };
        for event in events {
            job.taken = event.sequence;
            job.finished |= event.kind.is_terminal();
            followed.pending.push_back(event);
        }
    }
}

/// The status that ends a stream early: what happened, and how to go on.
fn interrupted(code: tonic::Code, why: &str) -> Status {
    Status::new(
        code,
        format!(
            "{why}; resume each unfinished job with WatchJob after the last sequence received for it"
        ),
    )
}
