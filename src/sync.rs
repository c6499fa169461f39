//! Locking the in-process maps: the event hub's, group commit's lanes, the parked claims and
//! the admissions of principals' queues.
//!
//! Each update to those maps is a single step, so a panic while one is locked cannot leave it
//! half-changed: a poisoned lock is safe to keep using, which beats failing every later call.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it back if a panic poisoned it (see the module documentation).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
