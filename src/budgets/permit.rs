//! A holding: what it took of its budget, given back when dropped; a reservation settles at
//! what its reply carries.

use std::sync::Arc;

use super::{Budget, Exhausted};
use crate::sync::lock;

/// A holding counted in a budget, given back when dropped.
#[must_use = "the holding is given back when the permit is dropped"]
pub struct Permit {
    pub(super) budget: Budget,
    pub(super) principal: Option<Arc<str>>,
    pub(super) amount: u64,
    /// A reservation not yet settled (`Budget::reserve`).
    pub(super) reserving: bool,
    /// For a reservation that holds less than it asked, the budget that held it back.
    pub(super) short: Option<Exhausted>,
}

impl Permit {
    /// What it holds.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Whether it holds the whole budget: a reply larger than that may go out with it, alone.
    pub fn is_whole(&self) -> bool {
        self.amount == self.budget.whole(self.principal.as_deref())
    }

    /// For a reservation that holds less than it asked, the refusal of the budget that held it
    /// back; `None` when it holds all it asked.
    pub fn shortfall(&self) -> Option<&Exhausted> {
        self.short.as_ref()
    }

    /// Settles a reservation at `bytes`, what its reply carries: it keeps no more than that,
    /// and never more than it holds (a reply larger than the whole budget counts as all of it).
    pub fn settle(&mut self, bytes: u64) {
        let inner = &self.budget.0;
        {
            let mut used = lock(&inner.used);
            let freed = self.amount.saturating_sub(bytes);
            self.amount -= freed;
            used.total -= freed;
            if let Some(held) = self
                .principal
                .as_ref()
                .and_then(|p| used.by_principal.get_mut(p))
            {
                *held -= freed;
            }
            if std::mem::take(&mut self.reserving) {
                used.reserving -= 1;
            }
        }
        inner.released.notify_waiters();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let inner = &self.budget.0;
        {
            let mut used = lock(&inner.used);
            used.total -= self.amount;
            if self.reserving {
                used.reserving -= 1;
            }
            if let Some(principal) = &self.principal
                && let Some(held) = used.by_principal.get_mut(principal)
            {
                *held -= self.amount;
                if *held == 0 {
                    used.by_principal.remove(principal);
                }
            }
        }
        inner.released.notify_waiters();
    }
}
