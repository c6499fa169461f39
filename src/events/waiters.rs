//! The handles local watchers and claims hold on the hub; dropping one unregisters it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::{Notify, futures::OwnedNotified, watch};

use super::{Announcement, Inner};
use crate::domain::QueueName;
use crate::sync::lock;

/// Why a watcher woke up.
#[derive(Debug, Clone)]
pub enum Wake {
    /// Its job announced a new event.
    Event(Announcement),
    /// Messages may have been lost (subscriber reconnect or dispatcher lag): re-read the log.
    Resync,
}

/// A watcher's registration for one job's wake-ups.
pub struct JobWatch {
    inner: Arc<Inner>,
    key: String,
    /// The principal it is counted for, if any.
    principal: Option<Arc<str>>,
    receiver: watch::Receiver<Announcement>,
    resync: watch::Receiver<u64>,
}

impl JobWatch {
    pub(super) fn new(
        inner: Arc<Inner>,
        key: String,
        principal: Option<Arc<str>>,
        receiver: watch::Receiver<Announcement>,
        resync: watch::Receiver<u64>,
    ) -> Self {
        Self {
            inner,
            key,
            principal,
            receiver,
            resync,
        }
    }

    /// Marks every wake-up so far as seen. Call right before reading the log.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
        self.resync.borrow_and_update();
    }

    /// Resolves at the first wake-up not yet marked seen, and says what it was.
    pub async fn changed(&mut self) -> Wake {
        tokio::select! {
            _ = self.receiver.changed() => Wake::Event(self.receiver.borrow_and_update().clone()),
            _ = self.resync.changed() => Wake::Resync,
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        if let Some(principal) = self.principal.take() {
            let mut by_principal = lock(&self.inner.by_principal);
            let entry = (std::mem::take(&mut self.key), principal);
            if let Some(held) = by_principal.get_mut(&entry) {
                *held -= 1;
                if *held == 0 {
                    by_principal.remove(&entry);
                }
            }
            self.key = entry.0;
        }
        let mut jobs = lock(&self.inner.jobs);
        // Our receiver is still alive here: one left means it is the last.
        if jobs
            .get(&self.key)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            jobs.remove(&self.key);
            drop(jobs);
            self.inner.results.forget(&self.key);
        }
    }
}

/// A waiting claim's registration on its queues.
pub struct QueueWaiter {
    inner: Arc<Inner>,
    notifies: Vec<(QueueName, Arc<Notify>)>,
    resync: watch::Receiver<u64>,
}

impl QueueWaiter {
    pub(super) fn new(
        inner: Arc<Inner>,
        notifies: Vec<(QueueName, Arc<Notify>)>,
        resync: watch::Receiver<u64>,
    ) -> Self {
        Self {
            inner,
            notifies,
            resync,
        }
    }

    /// Arms for the next wake-up. Arm before looking for a job and await the returned
    /// `Wakeup` after finding none: a job announced in between is not missed.
    pub fn arm(&mut self) -> Wakeup {
        let notified = self
            .notifies
            .iter()
            .map(|(_, notify)| {
                let mut notified = Box::pin(notify.clone().notified_owned());
                notified.as_mut().enable();
                notified
            })
            .collect();
        self.resync.borrow_and_update();
        Wakeup {
            notified,
            resync: Box::pin(changed(self.resync.clone())),
        }
    }
}

impl Drop for QueueWaiter {
    fn drop(&mut self) {
        let mut queues = lock(&self.inner.queues);
        for (queue, _) in &self.notifies {
            if let Some(slot) = queues.get_mut(queue) {
                slot.waiters -= 1;
                if slot.waiters == 0 {
                    queues.remove(queue);
                }
            }
        }
    }
}

/// Resolves when one of the armed queues is announced, or on a resync.
pub struct Wakeup {
    notified: Vec<Pin<Box<OwnedNotified>>>,
    resync: Pin<Box<dyn Future<Output = ()> + Send>>,
}

async fn changed(mut resync: watch::Receiver<u64>) {
    // An error means the hub is gone, which only happens at shutdown: resolve then too.
    let _ = resync.changed().await;
}

impl Future for Wakeup {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.resync.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        for notified in &mut self.notified {
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
