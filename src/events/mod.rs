//! One subscriber connection, fanned out in-process to every local watcher and waiting claim.
//!
//! Pub/sub only wakes things up. A job watcher re-reads the job's durable event log after each
//! wake-up, so a lost message costs nothing but latency; and whenever messages may have been
//! lost (the subscriber reconnected, or the dispatcher lagged behind its channel) every watcher
//! and waiting claim is woken to re-read ("resync"). Redis holds exactly two subscriptions per
//! process, whatever the number of watchers: nothing is subscribed or left behind per watcher.

mod follow;
mod results;
mod waiters;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    types::Message,
};
use tokio::sync::{Notify, broadcast::error::RecvError, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use follow::{Follower, Interrupted};
use results::Results;
pub use results::SharedResult;
pub use waiters::{JobWatch, QueueWaiter, Wake, Wakeup};

use bytes::Bytes;

use crate::{
    budgets::{Exhausted, WatcherLimits},
    domain::{JobEvent, JobId, QueueName},
    redis::{Reconnections, name_connections},
    store::{AnnouncedEvent, JobStore, StoreError, parse_announced},
    sync::lock,
    telemetry::Metrics,
};

/// The latest event a watched job announced, decoded once for all its local watchers.
#[derive(Debug, Clone, Default)]
pub struct Announcement {
    pub sequence: u64,
    /// The event; `None` when it did not decode: read the log.
    pub event: Option<JobEvent>,
    /// For a COMPLETED event whose result was too large to carry (its result is empty here):
    /// the result's read, shared by all the job's local watchers.
    pub result: Option<SharedResult>,
}

/// Delay before subscribing again after a failed SUBSCRIBE on a live connection.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

/// The process's pub/sub fan-out. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

/// The two channels the hub listens on.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Jobs have new events, one line each (see `Keys::job_channel`).
    pub jobs: String,
    /// `<queue>` or `<queue> <n>`: a queue may have claimable jobs.
    pub queues: String,
}

struct Inner {
    /// Latest announcement per locally watched job.
    jobs: Mutex<HashMap<String, watch::Sender<Announcement>>>,
    /// Wake-ups per queue with local waiting claims, and how many claims wait on each.
    queues: Mutex<HashMap<QueueName, QueueSlot>>,
    /// Bumped whenever messages may have been lost; everyone re-reads.
    resync: watch::Sender<u64>,
    /// Results too large to be announced, read once for all local watchers of their job.
    results: Results,
    /// The most watchers one job may have on this process, in all and per principal.
    watchers: WatcherLimits,
    /// Watchers per job and principal, for the principals that have some.
    by_principal: Mutex<HashMap<(String, Arc<str>), u64>>,
}

struct QueueSlot {
    notify: Arc<Notify>,
    waiters: usize,
}

impl EventHub {
    /// A hub that lets each job have at most so many watchers here (`watchers`).
    pub fn new(watchers: WatcherLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs: Mutex::default(),
                queues: Mutex::default(),
                resync: watch::Sender::default(),
                results: Results::default(),
                watchers,
                by_principal: Mutex::default(),
            }),
        }
    }

    /// Registers interest in a job's events, for `principal` (`None`: a caller without one).
    /// Register before reading the log, so that an event written after the read cannot go
    /// unnoticed. Refused when the job has as many watchers here as its budget allows, in all
    /// or for the principal.
    pub fn watch_job(&self, id: &JobId, principal: Option<&str>) -> Result<JobWatch, Exhausted> {
        let key = id.to_string();
        let limits = self.inner.watchers;
        let (receiver, principal) = {
            let mut jobs = lock(&self.inner.jobs);
            let sender = jobs
                .entry(key.clone())
                .or_insert_with(|| watch::channel(Announcement::default()).0);
            if sender.receiver_count() as u64 >= limits.per_job {
                return Err(Exhausted {
                    setting: "max-watchers-per-job",
                    what: "watchers of one job",
                    limit: limits.per_job,
                    principal: None,
                });
            }
            let principal = match principal {
                Some(name) => {
                    let name: Arc<str> = Arc::from(name);
                    let mut by_principal = lock(&self.inner.by_principal);
                    let held = by_principal.entry((key.clone(), name.clone())).or_default();
                    if *held >= limits.per_job_per_principal {
                        return Err(Exhausted {
                            setting: "max-watchers-per-job-per-principal",
                            what: "watchers of one job",
                            limit: limits.per_job_per_principal,
                            principal: Some(name.to_string()),
                        });
                    }
                    *held += 1;
                    Some(name)
                }
                None => None,
            };
            (sender.subscribe(), principal)
        };
        Ok(JobWatch::new(
            self.inner.clone(),
            key,
            principal,
            receiver,
            self.inner.resync.subscribe(),
        ))
    }

    /// Job `id`'s result, read once for all who ask while a read of it is shared (see
    /// `results`).
    pub async fn result(&self, store: &JobStore, id: &JobId) -> Result<Bytes, StoreError> {
        self.inner.results.read(store, id).await
    }

    /// Registers a claim waiting on `queues`.
    pub fn wait_for_queues(&self, queues: &[QueueName]) -> QueueWaiter {
        let mut slots = lock(&self.inner.queues);
        let notifies = queues
            .iter()
            .map(|queue| {
                let slot = slots.entry(queue.clone()).or_insert_with(|| QueueSlot {
                    notify: Arc::new(Notify::new()),
                    waiters: 0,
                });
                slot.waiters += 1;
                (queue.clone(), slot.notify.clone())
            })
            .collect();
        QueueWaiter::new(self.inner.clone(), notifies, self.inner.resync.subscribe())
    }

    /// Connects the subscriber and runs the dispatcher until `shutdown`.
    ///
    /// On every (re)connection the dispatcher names the connection, subscribes, and only then
    /// resyncs everyone: an event published before the subscription was acknowledged is
    /// found by that re-read.
    pub fn start(
        &self,
        subscriber: SubscriberClient,
        client_name: String,
        channels: Channels,
        metrics: Metrics,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        // Both receivers exist before connecting, so the first connection's event is seen.
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        subscriber.connect();
        let dispatcher = Dispatcher {
            inner: self.inner.clone(),
            subscriber,
            client_name,
            channels,
            metrics,
        };
        tracker.spawn(dispatcher.run(messages, reconnects, shutdown));
    }
}

struct Dispatcher {
    inner: Arc<Inner>,
    subscriber: SubscriberClient,
    client_name: String,
    channels: Channels,
    metrics: Metrics,
}

impl Dispatcher {
    async fn run(
        self,
        mut messages: tokio::sync::broadcast::Receiver<Message>,
        mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
        shutdown: CancellationToken,
    ) {
        let mut reconnections = Reconnections::default();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                event = reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if reconnections.counts(&self.subscriber) {
                            self.metrics.redis_reconnect("subscriber");
                        }
                        self.subscribe(&shutdown).await;
                    }
                    Err(RecvError::Closed) => return,
                },
                message = messages.recv() => match message {
                    Ok(message) => self.dispatch(&message),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "pub/sub dispatcher lagged; watchers re-read their logs");
                        self.inner.resync();
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// Names the fresh connection, subscribes, then resyncs. Retries while the connection is
    /// up; when it is down, the next reconnection brings us back here.
    async fn subscribe(&self, shutdown: &CancellationToken) {
        loop {
            // SETNAME is refused on a connection already in subscribed mode (a spurious
            // wake-up): that connection already has its name.
            if let Err(error) = name_connections(&self.subscriber, &self.client_name).await {
                tracing::debug!(%error, "could not name the subscriber connection");
            }
            let channels = vec![self.channels.jobs.clone(), self.channels.queues.clone()];
            match self.subscriber.subscribe(channels).await {
                Ok(()) => {
                    tracing::debug!("subscribed to wake-up channels");
                    self.inner.resync();
                    return;
                }
                Err(error) => tracing::warn!(%error, "could not subscribe to wake-up channels"),
            }
            if !self.subscriber.is_connected() {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            }
        }
    }

    fn dispatch(&self, message: &Message) {
        let Some(payload) = message.value.as_bytes() else {
            return;
        };
        if *message.channel == *self.channels.jobs {
            let announced = match parse_announced(payload) {
                Ok(announced) => announced,
                Err(error) => {
                    tracing::warn!(%error, "ignoring a wake-up message");
                    return;
                }
            };
            let jobs = lock(&self.inner.jobs);
            for announced in announced {
                let Some(sender) = jobs.get(announced.job_id) else {
                    continue;
                };
                sender.send_if_modified(|latest| {
                    let newer = announced.sequence > latest.sequence;
                    if newer {
                        *latest = decode(&announced, &self.inner.results);
                    }
                    newer
                });
            }
        } else if *message.channel == *self.channels.queues {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            let (queue, jobs) = match text.split_once(' ') {
                Some((queue, jobs)) => (queue, jobs.parse::<usize>().unwrap_or(1)),
                None => (text, 1),
            };
            let Ok(queue) = QueueName::parse("queue", queue) else {
                return;
            };
            if let Some(slot) = lock(&self.inner.queues).get(&queue) {
                // Wake one waiting claim per new job: one job, one claimer (at most as many as
                // wait). A woken claim that finds nothing goes back to waiting; one that is
                // gone passes the wake-up on.
                for _ in 0..jobs.min(slot.waiters) {
                    slot.notify.notify_one();
                }
            }
        }
    }
}

/// An announced event as its watchers get it; one that does not decode is left for them to
/// read from the log.
fn decode(announced: &AnnouncedEvent, results: &Results) -> Announcement {
    let event = JobId::parse("id", announced.job_id)
        .map_err(|_| "not a job id".to_owned())
        .and_then(|id| announced.decode(&id).map_err(|error| error.to_string()));
    match event {
        Ok((event, result_to_read)) => Announcement {
            sequence: announced.sequence,
            event: Some(event),
            result: result_to_read.then(|| results.shared(announced.job_id)),
        },
        Err(error) => {
            tracing::warn!(job = announced.job_id, %error, "an announced event does not decode; its watchers read the log");
            Announcement {
                sequence: announced.sequence,
                event: None,
                result: None,
            }
        }
    }
}

impl Inner {
    fn resync(&self) {
        self.resync.send_modify(|epoch| *epoch += 1);
        for slot in lock(&self.queues).values() {
            slot.notify.notify_waiters();
        }
    }
}
