//! Following jobs' event logs: the one state machine behind WatchJob (one job) and
//! SubmitAndWatchJobs (the jobs of a call).
//!
//! A job is registered with the hub before its log is read (or, for a job being created,
//! before it is written), so that no later event can go unannounced. After that every wake-up
//! is a step: an announced event that is the very next one is taken as carried; one taken
//! already is skipped; a gap, a result too large to carry, or a resync (messages may have been
//! lost) leads to a re-read of the log after the last event taken. Each job's events come out
//! exactly once and in order, its terminal event last, whatever pub/sub did.
//!
//! A log is read a page at a time (`FIRST_EVENT_PAGE` events, then `EVENT_PAGE` while it goes
//! on), the next page when the events taken are given out, so that a follower holds one page
//! at most. A COMPLETED event's result is
//! read once for all the job's local followers (`EventHub::result`), not with the log.

use std::collections::VecDeque;

use futures::{
    StreamExt,
    stream::{BoxStream, SelectAll},
};
use tokio_util::sync::CancellationToken;

use super::{EventHub, JobWatch, Wake, results};
use crate::{
    domain::{EventKind, JobEvent, JobId},
    store::{EVENT_PAGE, EventPage, FIRST_EVENT_PAGE, JobStore, StoreError},
    telemetry::Metrics,
};

/// Followed jobs, and their events taken but not yet given out.
pub struct Follower {
    store: JobStore,
    hub: EventHub,
    metrics: Metrics,
    shutdown: CancellationToken,
    jobs: Vec<Followed>,
    wakes: Wakes,
    pending: VecDeque<JobEvent>,
    /// Jobs whose terminal event has not been taken yet.
    unfinished: usize,
}

/// Why following ended before every job's terminal event.
#[derive(Debug)]
pub enum Interrupted {
    /// jobd is shutting down: resume elsewhere.
    ShuttingDown,
    /// A re-read of a log failed.
    Failed(StoreError),
}

/// One job's place in its log.
struct Followed {
    id: JobId,
    /// The last sequence taken into `pending` (or given out).
    taken: u64,
    /// Its terminal event was taken: nothing more will come.
    finished: bool,
    /// Its log goes on past `taken`: read the next page before waiting for wake-ups.
    behind: bool,
}

/// The jobs' wake-ups: a single job's registration is polled as it is, several are merged.
enum Wakes {
    None,
    One(JobWatch),
    Many(SelectAll<BoxStream<'static, (usize, Wake)>>),
}

impl Follower {
    pub fn new(
        store: JobStore,
        hub: EventHub,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            metrics,
            shutdown,
            jobs: Vec::new(),
            wakes: Wakes::None,
            pending: VecDeque::new(),
            unfinished: 0,
        }
    }

    /// Whether `id` is followed already.
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

    /// Follows a job from its events after `after`: registers (`watch`), then reads the first
    /// page of its log. NOT_FOUND for an unknown job, PAST_LAST_EVENT for an `after` it has
    /// not reached.
    pub async fn existing(
        &mut self,
        mut watch: JobWatch,
        id: JobId,
        after: u64,
    ) -> Result<(), StoreError> {
        watch.mark_seen();
        let page = self
            .store
            .events_after(&id, after, FIRST_EVENT_PAGE)
            .await?;
        let index = self.add(watch, id);
        self.jobs[index].taken = after;
        self.take_page(index, page).await
    }

    /// The next event of a followed job, each job's in order, each exactly once; `None` once
    /// every job's terminal event was given out.
    pub async fn next(&mut self) -> Option<Result<JobEvent, Interrupted>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.unfinished == 0 {
                return None;
            }
            if let Some(index) = self.jobs.iter().position(|job| job.behind && !job.finished) {
                if let Err(error) = self.read(index).await {
                    return Some(Err(Interrupted::Failed(error)));
                }
                continue;
            }
            let (index, wake) = tokio::select! {
                wake = self.wakes.next() => wake?,
                () = self.shutdown.cancelled() => return Some(Err(Interrupted::ShuttingDown)),
            };
            if let Err(error) = self.step(index, wake).await {
                return Some(Err(Interrupted::Failed(error)));
            }
        }
    }

    fn add(&mut self, watch: JobWatch, id: JobId) -> usize {
        let index = self.jobs.len();
        self.jobs.push(Followed {
            id,
            taken: 0,
            finished: false,
            behind: false,
        });
        self.unfinished += 1;
        self.wakes.push(index, watch);
        index
    }

    /// Takes what a wake-up of job `index` brings: the event it carried, or the log re-read.
    async fn step(&mut self, index: usize, wake: Wake) -> Result<(), StoreError> {
        let job = &self.jobs[index];
        if job.finished {
            return Ok(());
        }
        let event = match wake {
            Wake::Event(announced) if announced.sequence <= job.taken => return Ok(()),
            // Behind, the pages read next come to it.
            Wake::Event(_) if job.behind => return Ok(()),
            Wake::Event(announced) if job.taken.checked_add(1) == Some(announced.sequence) => {
                match (announced.event, announced.result) {
                    (Some(mut event), Some(shared)) => {
                        let result = results::read(&shared, &self.store, &self.jobs[index].id);
                        if let EventKind::Completed { result: slot } = &mut event.kind {
                            *slot = result.await?;
                        }
                        event
                    }
                    (Some(event), None) => event,
                    (None, _) => return self.read(index).await,
                }
            }
            // A gap: events were announced that this follower did not see.
            Wake::Event(_) => return self.read(index).await,
            Wake::Resync => {
                self.metrics.resync();
                return self.read(index).await;
            }
        };
        let job = &mut self.jobs[index];
        job.taken = event.sequence;
        self.take(index, event);
        Ok(())
    }

    /// Reads the next page of job `index`'s log, after its last event taken.
    async fn read(&mut self, index: usize) -> Result<(), StoreError> {
        self.wakes.mark_seen();
        let job = &self.jobs[index];
        // Behind: the log goes on past the page before; else a gap, most often of one event.
        let size = if job.behind {
            EVENT_PAGE
        } else {
            FIRST_EVENT_PAGE
        };
        // Boxed: the read's future is large and short-lived, and a stream spends its life
        // waiting, so the stream's own state stays small (see the fan-out benchmark).
        let page = Box::pin(self.store.events_after(&job.id, job.taken, size)).await?;
        self.take_page(index, page).await
    }

    /// Takes a page of job `index`'s log, with the result of a COMPLETED event in it.
    async fn take_page(&mut self, index: usize, page: EventPage) -> Result<(), StoreError> {
        let id = self.jobs[index].id.clone();
        for mut event in page.events {
            if let EventKind::Completed { result } = &mut event.kind {
                *result = Box::pin(self.hub.result(&self.store, &id)).await?;
            }
            self.take(index, event);
        }
        let job = &mut self.jobs[index];
        job.taken = job.taken.max(page.end);
        job.behind = page.more;
        if page.finished && !job.finished {
            job.finished = true;
            self.unfinished -= 1;
        }
        Ok(())
    }

    /// Takes one event of job `index` to give out.
    fn take(&mut self, index: usize, event: JobEvent) {
        let job = &mut self.jobs[index];
        if job.finished {
            return;
        }
        job.taken = event.sequence;
        if event.kind.is_terminal() {
            job.finished = true;
            self.unfinished -= 1;
        }
        self.pending.push_back(event);
    }
}

impl Wakes {
    fn push(&mut self, index: usize, watch: JobWatch) {
        *self = match std::mem::replace(self, Wakes::None) {
            Wakes::None if index == 0 => Wakes::One(watch),
            Wakes::None => Wakes::Many(SelectAll::from_iter([tagged(index, watch)])),
            Wakes::One(first) => Wakes::Many(SelectAll::from_iter([
                tagged(0, first),
                tagged(index, watch),
            ])),
            Wakes::Many(mut all) => {
                all.push(tagged(index, watch));
                Wakes::Many(all)
            }
        };
    }

    /// The next wake-up of any job, with its place; `None` when no job is followed.
    async fn next(&mut self) -> Option<(usize, Wake)> {
        match self {
            Wakes::None => None,
            Wakes::One(watch) => Some((0, watch.changed().await)),
            Wakes::Many(all) => all.next().await,
        }
    }

    /// Marks every wake-up so far as seen, right before a read, where it can: a single job's.
    /// (Merged registrations are not; a wake-up that a read took care of costs a step.)
    fn mark_seen(&mut self) {
        if let Wakes::One(watch) = self {
            watch.mark_seen();
        }
    }
}

/// A job's wake-ups, tagged with its place among the followed jobs.
fn tagged(index: usize, watch: JobWatch) -> BoxStream<'static, (usize, Wake)> {
    futures::stream::unfold(watch, move |mut watch| async move {
        let wake = watch.changed().await;
        Some(((index, wake), watch))
    })
    .boxed()
}
