//! The queue registry: every queue jobd has written jobs to, kept in Redis so that every
//! replica's sweeper finds every queue, and the queues this process registered, known without
//! asking Redis.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use crate::{
    domain::QueueName,
    store::{JobStore, StoreError},
    sync::lock,
};

/// Cheap to clone.
#[derive(Clone)]
pub struct QueueRegistry {
    store: JobStore,
    /// Queues this process has put in the registry.
    registered: Arc<Mutex<HashSet<QueueName>>>,
}

impl QueueRegistry {
    pub fn new(store: JobStore) -> Self {
        Self {
            store,
            registered: Arc::default(),
        }
    }

    /// Puts `queue` in the registry, once per process.
    pub async fn register(&self, queue: &QueueName) -> Result<(), StoreError> {
        if lock(&self.registered).contains(queue) {
            return Ok(());
        }
        self.store.register_queues(&[queue]).await?;
        lock(&self.registered).insert(queue.clone());
        Ok(())
    }

    /// The queues this process registered.
    pub fn local(&self) -> Vec<QueueName> {
        lock(&self.registered).iter().cloned().collect()
    }

    /// Every queue in the registry or registered by this process. Those the registry lost (a
    /// flushed or replaced Redis) are put back.
    pub async fn all(&self) -> Result<Vec<QueueName>, StoreError> {
        let mut queues = self.store.registered_queues().await?;
        let local = self.local();
        let missing: Vec<&QueueName> = local.iter().filter(|q| !queues.contains(q)).collect();
        if !missing.is_empty() {
            self.store.register_queues(&missing).await?;
            queues.extend(missing.into_iter().cloned());
        }
        Ok(queues)
    }
}
