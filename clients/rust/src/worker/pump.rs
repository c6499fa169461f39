//! The worker's loop: one claim at a time for the free slots, completions batched into
//! CompleteJobs with `next`, a task per job, and the shutdown that loses nothing.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};

use super::{Shared, calls::ClaimSpec, job};
use crate::proto::{ClaimedJob, Completion};

/// What the worker's tasks tell its loop.
enum Event {
    /// A claim came back (with no job when it failed or none came); `reserved` slots are free
    /// again, less the jobs.
    Claimed {
        jobs: Vec<ClaimedJob>,
        reserved: usize,
        failed: bool,
    },
    /// A CompleteJobs came back, with the jobs its `next` claimed.
    Completed {
        next: Vec<ClaimedJob>,
        reserved: usize,
    },
    /// A job's task ended, with its completion to batch if it succeeded.
    Finished {
        job_id: String,
        completion: Option<Completion>,
    },
    /// A give-back or a failure report ended.
    Reported,
}

/// The loop's state: it alone changes it, on the events of the tasks it spawns.
pub(super) struct Pump {
    shared: Arc<Shared>,
    claim: ClaimSpec,
    shutdown: CancellationToken,
    expire: CancellationToken,
    tasks: TaskTracker,
    events: mpsc::UnboundedSender<Event>,
    inbox: mpsc::UnboundedReceiver<Event>,
    /// Running jobs, each with the token that drops its handler at the shutdown deadline.
    running: HashMap<String, CancellationToken>,
    /// Slots promised to claims in flight.
    reserved: usize,
    claiming: bool,
    completing: bool,
    completions: Vec<Completion>,
    reports: usize,
    claim_failures: u32,
    /// Whether the running handlers were dropped (the shutdown deadline, a second signal).
    expired: bool,
}

impl Pump {
    pub fn new(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        expire: CancellationToken,
    ) -> Self {
        let (events, inbox) = mpsc::unbounded_channel();
        let options = &shared.options;
        let claim = ClaimSpec {
            queues: options.queues.clone(),
            worker_id: options.worker_id.clone(),
            lease: options.lease,
            ack_timeout: options.ack_timeout,
        };
        Self {
            shared,
            claim,
            shutdown,
            expire,
            tasks: TaskTracker::new(),
            events,
            inbox,
            running: HashMap::new(),
            reserved: 0,
            claiming: false,
            completing: false,
            completions: Vec::new(),
            reports: 0,
            claim_failures: 0,
            expired: false,
        }
    }

    /// Runs until shut down and idle.
    pub async fn run(mut self) {
        let mut deadline: Option<Instant> = None;
        loop {
            self.pump();
            let stopping = self.shutdown.is_cancelled();
            if stopping && self.idle() {
                break;
            }
            if stopping && deadline.is_none() {
                deadline = Some(Instant::now() + self.shared.options.shutdown_timeout);
            }
            let expiring = deadline.filter(|_| !self.expire.is_cancelled());
            tokio::select! {
                Some(event) = self.inbox.recv() => self.on(event),
                () = self.shutdown.cancelled(), if !stopping => {}
                () = self.expire.cancelled(), if stopping && !self.expired => self.expire_all(),
                () = tokio::time::sleep_until(expiring.unwrap_or_else(Instant::now)), if expiring.is_some() => {
                    self.expire.cancel();
                }
            }
            // Every event already sent, before the next pump: completions that finished
            // together go out in one CompleteJobs, not the first alone and the rest after it.
            while let Ok(event) = self.inbox.try_recv() {
                self.on(event);
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn free(&self) -> usize {
        self.shared
            .options
            .concurrency
            .saturating_sub(self.running.len() + self.reserved)
    }

    fn idle(&self) -> bool {
        !self.claiming
            && !self.completing
            && self.running.is_empty()
            && self.completions.is_empty()
            && self.reports == 0
    }

    /// Starts a CompleteJobs when completions wait and none is in flight, and a claim when
    /// slots are free and none is in flight (never once shutting down).
    fn pump(&mut self) {
        let stopping = self.shutdown.is_cancelled();
        if !self.completions.is_empty() && !self.completing {
            let rest = self.completions.split_off(self.completions.len().min(100));
            let batch = std::mem::replace(&mut self.completions, rest);
            let next = if stopping { 0 } else { self.free().min(100) };
            self.reserved += next;
            self.completing = true;
            let request = (next > 0).then(|| self.claim.request(next, Duration::ZERO));
            let (client, events) = (self.shared.client.clone(), self.events.clone());
            self.tasks.spawn(async move {
                let next_jobs = complete(&client, batch, request).await;
                let _ = events.send(Event::Completed {
                    next: next_jobs,
                    reserved: next,
                });
            });
        }
        if !stopping && !self.claiming && self.free() > 0 {
            let n = self.free().min(100);
            self.reserved += n;
            self.claiming = true;
            let request = self.claim.request(n, self.shared.options.claim_wait);
            let (client, events) = (self.shared.client.clone(), self.events.clone());
            let (failures, shutdown) = (self.claim_failures, self.shutdown.clone());
            self.tasks.spawn(async move {
                let (jobs, failed) = match client.claim(request).await {
                    Ok(jobs) => (jobs, false),
                    Err(error) => {
                        tracing::warn!(%error, "claim failed; claiming again after a backoff");
                        let delay = crate::RetryPolicy::default().delay(failures.min(6));
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.cancelled() => {}
                        }
                        (Vec::new(), true)
                    }
                };
                let _ = events.send(Event::Claimed {
                    jobs,
                    reserved: n,
                    failed,
                });
            });
        }
    }

    fn on(&mut self, event: Event) {
        match event {
            Event::Claimed {
                jobs,
                reserved,
                failed,
            } => {
                self.claiming = false;
                self.reserved -= reserved;
                self.claim_failures = if failed { self.claim_failures + 1 } else { 0 };
                self.accept(jobs);
            }
            Event::Completed { next, reserved } => {
                self.completing = false;
                self.reserved -= reserved;
                self.accept(next);
            }
            Event::Finished { job_id, completion } => {
                self.running.remove(&job_id);
                self.completions.extend(completion);
            }
            Event::Reported => self.reports -= 1,
        }
    }

    /// Starts a task per claimed job; gives jobs back once shutting down, and fails for good
    /// the jobs of kinds without a handler.
    fn accept(&mut self, jobs: Vec<ClaimedJob>) {
        for claimed in jobs {
            let job_id = claimed
                .job
                .as_ref()
                .map(|j| j.id.clone())
                .unwrap_or_default();
            let kind = claimed
                .job
                .as_ref()
                .map(|j| j.kind.clone())
                .unwrap_or_default();
            let (client, events) = (self.shared.client.clone(), self.events.clone());
            let token = claimed.lease_token.clone();
            let worker_id = self.shared.options.worker_id.clone();
            if self.shutdown.is_cancelled() || !self.shared.handlers.contains_key(&kind) {
                let give_back = self.shutdown.is_cancelled();
                self.reports += 1;
                self.tasks.spawn(async move {
                    if give_back {
                        let reason = format!("worker {worker_id} stopped");
                        client.release(&job_id, &token, reason).await;
                    } else {
                        let error = format!("no handler for kind {kind:?} in worker {worker_id}");
                        client.fail(&job_id, &token, error, false).await;
                    }
                    let _ = events.send(Event::Reported);
                });
                continue;
            }
            let expire = CancellationToken::new();
            self.running.insert(job_id.clone(), expire.clone());
            let shared = self.shared.clone();
            self.tasks.spawn(async move {
                let completion = job::run(shared, claimed, expire).await;
                let _ = events.send(Event::Finished { job_id, completion });
            });
        }
    }

    /// The shutdown deadline passed: drop the running handlers; their jobs go back.
    fn expire_all(&mut self) {
        self.expired = true;
        for expire in self.running.values() {
            expire.cancel();
        }
    }
}

/// A CompleteJobs of `batch` with `next`; when the batch as a whole is refused (one result
/// too large, say), each job is completed alone, and one refused alone is failed for good.
async fn complete(
    client: &crate::Client,
    batch: Vec<Completion>,
    next: Option<crate::proto::ClaimJobsRequest>,
) -> Vec<ClaimedJob> {
    let error = match client.complete(batch.clone(), next).await {
        Ok(next) => return next,
        Err(error) => error,
    };
    if error.is_unavailable() {
        tracing::error!(jobs = batch.len(), %error, "could not complete the jobs");
        return Vec::new();
    }
    tracing::warn!(%error, "the batch was refused; completing its jobs one by one");
    for c in batch {
        let Err(error) = client
            .complete_one(&c.job_id, &c.lease_token, c.result)
            .await
        else {
            continue;
        };
        if !error.is_unavailable() {
            let text = error.to_string();
            client.fail(&c.job_id, &c.lease_token, text, false).await;
        }
    }
    Vec::new()
}

/// SIGTERM or SIGINT cancels `shutdown`; a second one cancels `expire` (no wait for running
/// handlers). The listener ends with the returned handle.
pub(super) fn on_signals(
    shutdown: CancellationToken,
    expire: CancellationToken,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for token in [shutdown, expire] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: shutting down");
            token.cancel();
        }
    }))
}
