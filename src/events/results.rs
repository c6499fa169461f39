//! Finished jobs' results, read once for all the local watchers of a job: a result too large
//! to ride on its wake-up message (over 4 KiB) is read by the first watcher that needs it, and
//! every other watcher shares that read and its bytes. The wake-up of a COMPLETED event holds
//! the shared read while it is the job's latest (`Announcement::result`), so that 1,000
//! watchers of a job completing with 1 MiB cost Redis one read of 1 MiB and jobd one copy,
//! however their wake-ups are scheduled; a watcher replaying the log shares it too.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::{
    domain::JobId,
    store::{JobStore, StoreError},
    sync::lock,
};

/// A job's result, read at most once while it is shared.
pub type SharedResult = Arc<OnceCell<Bytes>>;

/// The shared reads of results, by job id. A result never changes once recorded, so a read
/// shared is as good as one's own; an entry lives while someone holds its read.
#[derive(Default)]
pub(super) struct Results {
    reads: Mutex<HashMap<String, Weak<OnceCell<Bytes>>>>,
}

impl Results {
    /// The shared read of job `id`'s result, made now if nobody holds one.
    pub(super) fn shared(&self, id: &str) -> SharedResult {
        let mut reads = lock(&self.reads);
        if let Some(cell) = reads.get(id).and_then(Weak::upgrade) {
            return cell;
        }
        let cell = SharedResult::default();
        reads.insert(id.to_owned(), Arc::downgrade(&cell));
        cell
    }

    /// Job `id`'s result, through its shared read.
    pub(super) async fn read(&self, store: &JobStore, id: &JobId) -> Result<Bytes, StoreError> {
        let key = id.to_string();
        let cell = self.shared(&key);
        let result = read(&cell, store, id).await;
        let mut reads = lock(&self.reads);
        drop(cell);
        if reads.get(&key).is_some_and(|read| read.strong_count() == 0) {
            reads.remove(&key);
        }
        result
    }

    /// Forgets job `id`'s shared read: its last local watcher is gone. Whoever still holds
    /// the read keeps it; a later one makes its own.
    pub(super) fn forget(&self, id: &str) {
        lock(&self.reads).remove(id);
    }
}

/// Job `id`'s result through `cell`: read by the first caller, shared with the others. A read
/// that failed is not shared: the next caller tries again.
pub async fn read(cell: &SharedResult, store: &JobStore, id: &JobId) -> Result<Bytes, StoreError> {
    cell.get_or_try_init(|| async { Ok(store.result(id).await?.unwrap_or_default()) })
        .await
        .cloned()
}
