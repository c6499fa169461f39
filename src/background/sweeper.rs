//! The sweeper: makes due scheduled jobs claimable, ends claims whose deadline passed (a job
//! its worker never acknowledged goes back to its queue, a lease that ran out ends its
//! attempt), and forgets finished jobs whose retention has passed.
//!
//! Every jobd replica runs one, over every queue. It visits a queue again at its earliest due
//! time or claim deadline, and at least every `MAX_SLEEP` while the queue has scheduled or
//! running jobs, so delayed and retried jobs become claimable and expired claims end within
//! milliseconds of their time without polling Redis in a tight loop. Times are Redis's: each
//! sweep says what Redis's clock read, and the next visit is that far from now whatever this
//! replica's clock says. A queue with neither is idle: nothing can fall due in it until a job
//! of it changes, which every replica hears of (each job event passes through its event hub,
//! and `SweeperHandle::touch` brings the queue back within `MAX_SLEEP`, or makes a queue this
//! replica did not know yet known at once), so an idle queue is visited only every
//! `IDLE_VISIT`, or at once after its events when the hub may have missed some (the registry
//! is then read again too). A replica that schedules a job, or sees a call refused for a
//! passed deadline, wakes its own sweeper for that queue at once. Several sweepers may race for
//! the same job: every script re-checks its condition atomically, so each promotion and each
//! end of a claim happens exactly once.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{FailOutcome, JobId, JobState, QueueName, UnixMillis},
    queues::QueueRegistry,
    store::{Expired, JobStore, StoreError},
    sync::lock,
    telemetry::Metrics,
};

/// The longest a queue with scheduled or running jobs goes unvisited: how late the sweeper
/// can notice an earlier due time or lease that another replica set there.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The longest an idle queue goes unvisited (its retained jobs are trimmed when their
/// retention ends): the bound should the news of a change in it never arrive.
const IDLE_VISIT: Duration = Duration::from_secs(30);

/// How often the list of queues is re-read from the registry.
const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Wakes a sweeper for a queue: after scheduling a job in it, or on any event of its jobs.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct SweeperHandle {
    shared: Arc<HandleShared>,
}

#[derive(Default)]
struct HandleShared {
    wake: Notify,
    marks: Mutex<Marks>,
}

/// Which queues the sweeper should see to, as its handle tells it.
#[derive(Default)]
struct Marks {
    /// Every queue the sweeper visits.
    known: HashSet<QueueName>,
    /// Queues whose last visit found nothing scheduled and nothing running.
    idle: HashSet<QueueName>,
    /// Queues to visit at once: something was scheduled there.
    woken: HashSet<QueueName>,
    /// Idle queues whose jobs had events: to visit within `MAX_SLEEP` of their last visit.
    touched: HashSet<QueueName>,
}

impl SweeperHandle {
    /// Something in `queue` may fall due before the sweeper's next visit (a job scheduled
    /// there): it visits the queue at once.
    pub fn wake(&self, queue: &QueueName) {
        let mut marks = self.marks();
        marks.idle.remove(queue);
        marks.woken.insert(queue.clone());
        drop(marks);
        self.shared.wake.notify_one();
    }

    /// A job with this id had an event (through any replica). Its queue, if idle, may no
    /// longer be: it is visited again within `MAX_SLEEP` of its last visit; a queue the
    /// sweeper did not know (created through another replica since the registry was read) is
    /// visited at once. Called for every event: for a known queue that is not idle it costs
    /// two lookups.
    pub fn touch(&self, job_id: &str) {
        let Some(name) = JobId::queue_part(job_id) else {
            return;
        };
        let mut marks = self.marks();
        let queue = match marks.idle.take(name) {
            Some(queue) => queue,
            None if marks.known.contains(name) => return,
            None => match QueueName::parse("queue", name) {
                Ok(queue) => queue,
                Err(_) => return,
            },
        };
        marks.touched.insert(queue);
        drop(marks);
        self.shared.wake.notify_one();
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        lock(&self.shared.marks)
    }

    /// Events may have been lost: every idle queue is visited again.
    fn touch_all_idle(&self) {
        let mut marks = self.marks();
        let idle = std::mem::take(&mut marks.idle);
        marks.touched.extend(idle);
    }

    /// The queues woken, then those touched, since the last call.
    fn take_marked(&self) -> (HashSet<QueueName>, HashSet<QueueName>) {
        let mut marks = self.marks();
        (
            std::mem::take(&mut marks.woken),
            std::mem::take(&mut marks.touched),
        )
    }

    /// Records that the sweeper visits `queues`.
    fn know(&self, queues: impl IntoIterator<Item = QueueName>) {
        self.marks().known.extend(queues);
    }

    /// Marks `queue` idle, or not: set before a visit, so that an event during it is not
    /// missed, and cleared when the visit finds work.
    fn set_idle(&self, queue: &QueueName, idle: bool) {
        let mut marks = self.marks();
        if idle {
            marks.idle.insert(queue.clone());
        } else {
            marks.idle.remove(queue);
        }
    }
}

pub struct Sweeper {
    store: JobStore,
    registry: QueueRegistry,
    handle: SweeperHandle,
    metrics: Metrics,
}

/// What one pass over a queue left to do.
struct Pass {
    /// Redis's time when the queue was swept.
    now: UnixMillis,
    /// The earliest future due time or lease expiry; none when the queue is idle.
    next: Option<UnixMillis>,
    /// When the next retained job is to be trimmed from its index.
    next_trim: Option<UnixMillis>,
    /// A batch was full: more may be due now.
    more: bool,
}

impl Pass {
    /// How long until the queue's next visit, and whether it is idle: by Redis's clock, which
    /// set every time the pass reports.
    fn next_visit(&self) -> (Duration, bool) {
        let until = |at: UnixMillis| at.since(self.now);
        match (self.more, self.next) {
            (true, _) => (Duration::ZERO, false),
            (false, None) => {
                // Retained jobs are trimmed on time, but at most once a MAX_SLEEP: that is
                // soon enough for an index of finished jobs.
                let trim = self.next_trim.map_or(IDLE_VISIT, until);
                (trim.clamp(MAX_SLEEP, IDLE_VISIT), true)
            }
            (false, Some(next)) => (until(next).min(MAX_SLEEP), false),
        }
    }
}

/// What the sweeper knows of the queues from one round to the next.
#[derive(Default)]
struct Rounds {
    visits: HashMap<QueueName, Visits>,
    /// When the registry was last read.
    queues_read: Option<Instant>,
    /// How many queues the handle was last told of.
    known: usize,
    /// Whether the last Redis call failed: a streak is logged once.
    failing: bool,
}

impl Rounds {
    fn next_visit(&self) -> Option<Instant> {
        self.visits.values().map(|visit| visit.next).min()
    }
}

/// When a queue was visited last, and when it is to be visited next.
struct Visits {
    last: Option<Instant>,
    next: Instant,
}

impl Sweeper {
    pub fn new(
        store: JobStore,
        registry: QueueRegistry,
        metrics: Metrics,
        handle: SweeperHandle,
    ) -> Self {
        Self {
            store,
            registry,
            handle,
            metrics,
        }
    }

    /// Runs until `shutdown`. `resyncs` changes whenever the event hub may have missed events.
    pub async fn run(self, mut resyncs: watch::Receiver<u64>, shutdown: CancellationToken) {
        let mut rounds = Rounds::default();
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            if resyncs.has_changed().unwrap_or(false) {
                resyncs.mark_unchanged();
                self.handle.touch_all_idle();
                // Events of queues it does not know may have been lost too.
                rounds.queues_read = None;
            }
            self.learn_queues(&mut rounds, now).await;
            if self.visit_due(&mut rounds, now).await {
                // A batch was full: more is due now.
                continue;
            }
            let wake_at = rounds.next_visit().unwrap_or(now + MAX_SLEEP);
            let wake_at = wake_at.min(Instant::now() + QUEUE_REFRESH);
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.handle.shared.wake.notified() => {}
                Ok(()) = resyncs.changed() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Adds the queues of the registry (re-read every `QUEUE_REFRESH`), this process's, and
    /// those the handle marked since the last round, and when to visit each.
    async fn learn_queues(&self, rounds: &mut Rounds, now: Instant) {
        let mut listed = self.registry.local();
        if rounds
            .queues_read
            .is_none_or(|at| at.elapsed() >= QUEUE_REFRESH)
        {
            match self.registry.all().await {
                Ok(found) => {
                    listed.extend(found);
                    rounds.queues_read = Some(now);
                }
                Err(error) => report(&mut rounds.failing, &error),
            }
        }
        let unvisited = || Visits {
            last: None,
            next: now,
        };
        for queue in listed {
            rounds.visits.entry(queue).or_insert_with(unvisited);
        }
        let (woken, touched) = self.handle.take_marked();
        for queue in woken {
            rounds.visits.entry(queue).or_insert_with(unvisited).next = now;
        }
        for queue in touched {
            let visit = rounds.visits.entry(queue).or_insert_with(unvisited);
            // Not more often than a queue with work is visited anyway.
            let soonest = visit.last.map_or(now, |last| last + MAX_SLEEP);
            visit.next = visit.next.min(soonest);
        }
        if rounds.visits.len() != rounds.known {
            // New queues: their events no longer need to make them known.
            rounds.known = rounds.visits.len();
            self.handle.know(rounds.visits.keys().cloned());
        }
    }

    /// Visits every queue due by `now`; whether one had more work than a pass takes.
    async fn visit_due(&self, rounds: &mut Rounds, now: Instant) -> bool {
        let mut more = false;
        for (queue, visit) in rounds.visits.iter_mut().filter(|(_, v)| v.next <= now) {
            // Idle until this visit finds otherwise: an event meanwhile wakes it again.
            self.handle.set_idle(queue, true);
            visit.last = Some(Instant::now());
            let (after, idle) = match self.pass(queue).await {
                Ok(pass) => {
                    rounds.failing = false;
                    more |= pass.more;
                    pass.next_visit()
                }
                Err(error) => {
                    report(&mut rounds.failing, &error);
                    (MAX_SLEEP, false)
                }
            };
            visit.next = Instant::now() + after;
            if !idle {
                self.handle.set_idle(queue, false);
            }
        }
        more
    }

    async fn pass(&self, queue: &QueueName) -> Result<Pass, StoreError> {
        let report = self.store.sweep(queue).await?;
        tracing::trace!(queue = %queue, ?report, "swept");
        let promoted = self.store.promote(queue, &report.due).await?;
        if promoted > 0 {
            tracing::debug!(queue = %queue, promoted, "scheduled jobs became claimable");
        }
        for id in &report.expired {
            match self.store.expire(id).await? {
                // Another replica, or a heartbeat, got there first.
                None => {}
                Some(Expired::Released) => {
                    tracing::info!(job = %id, "not acknowledged by its worker in time; back in its queue");
                    self.metrics.released(queue, 1);
                }
                Some(Expired::AttemptEnded(outcome, ended)) => {
                    self.metrics.lease_expired(queue);
                    match outcome {
                        FailOutcome::RetryAt(at) => {
                            tracing::info!(job = %id, retry_at = at.0, "claim expired; retry scheduled");
                            self.metrics
                                .retried(queue, ended.kind.as_str(), "lease_expired");
                        }
                        FailOutcome::Failed => {
                            tracing::info!(job = %id, "claim expired; no attempts left, job failed");
                            self.metrics
                                .finished(queue, ended.kind.as_str(), JobState::Failed);
                        }
                    }
                }
            }
        }
        let full = |n: usize| n >= crate::store::SWEEP_BATCH;
        // Retries scheduled just now may be due soon: look at the schedule again then.
        let next = [report.next_due, report.next_expiry]
            .into_iter()
            .flatten()
            .min();
        Ok(Pass {
            now: report.now,
            next: if report.expired.is_empty() {
                next
            } else {
                Some(report.now)
            },
            next_trim: report.next_trim,
            more: full(report.due.len()) || full(report.expired.len()),
        })
    }
}

/// Logs the first error of a streak as a warning, the rest at debug level.
fn report(failing: &mut bool, error: &StoreError) {
    if *failing {
        tracing::debug!(%error, "sweep failed again");
    } else {
        tracing::warn!(%error, "sweep failed; retrying");
        *failing = true;
    }
}
