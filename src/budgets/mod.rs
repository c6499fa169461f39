//! Budgets: how much of this process what callers hold may take, so that no client, buggy or
//! hostile, can make jobd run out of memory. Each budget counts one kind of holding (open watch
//! streams, waiting claims, payload bytes in flight) for the whole process and for each
//! principal; a holding past either is refused (`Exhausted`, RESOURCE_EXHAUSTED to the caller)
//! before anything is done. Results on their way out of streams have a budget of their own, for
//! the process alone, which they wait for rather than fail: however many watchers drain, they
//! never take the payload bytes that calls' requests and replies are refused without. A holding
//! is a `Permit`, released when dropped: when the stream or claim ends, however it ends, the
//! client's going away included. What cannot be sized before it is read (a claim's jobs)
//! reserves room first and settles at what it read (`Budget::reserve`). Watchers of one job are bounded by the event hub
//! (`EventHub::watch_job`), in all and per principal (`WatcherLimits`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::sync::lock;

mod permit;
pub use permit::Permit;

/// The limits of every budget, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct BudgetLimits {
    pub watch_streams: u64,
    pub watch_streams_per_principal: u64,
    pub waiting_claims: u64,
    pub waiting_claims_per_principal: u64,
    pub watchers_per_job: u64,
    pub payload_bytes: u64,
    pub payload_bytes_per_principal: u64,
    pub stream_result_bytes: u64,
}

/// The most watchers one job may have on one process: in all, and for one principal (a
/// caller of the auth file), so that one principal cannot take every watcher of a job.
#[derive(Debug, Clone, Copy)]
pub struct WatcherLimits {
    pub per_job: u64,
    pub per_job_per_principal: u64,
}

/// The process's budgets. Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    /// WatchJob and SubmitAndWatchJobs streams open.
    pub watch_streams: Budget,
    /// ClaimJob, ClaimJobs and completions' `next` claims that may wait for a job.
    pub waiting_claims: Budget,
    /// Payloads and results held by calls in flight: request bodies being acted on, and the
    /// replies of GetJob and claims until sent.
    pub payload_bytes: Budget,
    /// Results on their way out of WatchJob and SubmitAndWatchJobs streams, until sent; waited
    /// for, never refused, and apart from `payload_bytes`.
    pub stream_result_bytes: Budget,
    /// Watchers of one job on this process.
    pub watchers_per_job: u64,
}

impl Budgets {
    pub fn new(limits: BudgetLimits) -> Self {
        Self {
            watch_streams: Budget::new(
                Setting::new(
                    "max-watch-streams",
                    "open watch streams",
                    limits.watch_streams,
                ),
                Setting::new(
                    "max-watch-streams-per-principal",
                    "open watch streams",
                    limits.watch_streams_per_principal,
                ),
            ),
            waiting_claims: Budget::new(
                Setting::new(
                    "max-waiting-claims",
                    "waiting claims",
                    limits.waiting_claims,
                ),
                Setting::new(
                    "max-waiting-claims-per-principal",
                    "waiting claims",
                    limits.waiting_claims_per_principal,
                ),
            ),
            payload_bytes: Budget::new(
                Setting::new(
                    "max-payload-bytes-in-flight",
                    "payload bytes in flight",
                    limits.payload_bytes,
                ),
                Setting::new(
                    "max-payload-bytes-in-flight-per-principal",
                    "payload bytes in flight",
                    limits.payload_bytes_per_principal,
                ),
            ),
            stream_result_bytes: Budget::for_process(Setting::new(
                "max-stream-result-bytes-in-flight",
                "result bytes in flight on streams",
                limits.stream_result_bytes,
            )),
            watchers_per_job: limits.watchers_per_job,
        }
    }
}

/// A refused holding: which budget, its limit, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the budget {setting} ({limit} {what}) is used up{}", principal_part(.principal))]
pub struct Exhausted {
    /// The setting that sets the budget, as its flag is named.
    pub setting: &'static str,
    /// What it counts.
    pub what: &'static str,
    pub limit: u64,
    /// The principal whose budget it is; `None` for the process's.
    pub principal: Option<String>,
}

fn principal_part(principal: &Option<String>) -> String {
    principal
        .as_ref()
        .map(|name| format!(" for principal {name}"))
        .unwrap_or_default()
}

/// One budget: a limit for the process, and one for each principal. Cheap to clone.
#[derive(Clone)]
pub struct Budget(Arc<Inner>);

struct Inner {
    process: Setting,
    per_principal: Setting,
    used: Mutex<Used>,
    /// Wakes those waiting for room (`Budget::wait`) when a permit is released.
    released: Notify,
}

#[derive(Default)]
struct Used {
    total: u64,
    by_principal: HashMap<Arc<str>, u64>,
    /// Reservations not yet settled (`Budget::reserve`).
    reserving: usize,
}

#[derive(Debug, Clone, Copy)]
struct Setting {
    name: &'static str,
    what: &'static str,
    limit: u64,
}

impl Setting {
    fn new(name: &'static str, what: &'static str, limit: u64) -> Self {
        Self { name, what, limit }
    }

    fn exhausted(&self, principal: Option<&str>) -> Exhausted {
        Exhausted {
            setting: self.name,
            what: self.what,
            limit: self.limit,
            principal: principal.map(str::to_owned),
        }
    }
}

impl Budget {
    fn new(process: Setting, per_principal: Setting) -> Self {
        Self(Arc::new(Inner {
            process,
            per_principal,
            used: Mutex::default(),
            released: Notify::new(),
        }))
    }

    /// A budget of the process alone, which holdings take with no principal (`wait`).
    fn for_process(process: Setting) -> Self {
        Self::new(process, process)
    }

    /// Takes `amount` for `principal` (`None`: a caller without one, counted in the process's
    /// budget only), or says which budget it would exceed.
    pub fn take(&self, principal: Option<&str>, amount: u64) -> Result<Permit, Exhausted> {
        let inner = &self.0;
        let mut used = lock(&inner.used);
        if used.total.saturating_add(amount) > inner.process.limit {
            return Err(inner.process.exhausted(None));
        }
        if let Some(name) = principal {
            let held = used.by_principal.get(name).copied().unwrap_or(0);
            if held.saturating_add(amount) > inner.per_principal.limit {
                return Err(inner.per_principal.exhausted(Some(name)));
            }
        }
        Ok(self.take_locked(&mut used, principal, amount))
    }
    /// Takes `amount` as `take` does, for a reply that carries payloads: an amount over the
    /// whole budget (the process's, or the principal's) counts as all of it, so that a reply
    /// larger than the budget still goes out, alone.
    pub fn take_reply(&self, principal: Option<&str>, amount: u64) -> Result<Permit, Exhausted> {
        let mut most = self.0.process.limit;
        if principal.is_some() {
            most = most.min(self.0.per_principal.limit);
        }
        self.take(principal, amount.min(most))
    }

    /// Reserves room for a reply whose bytes are known only once read, up to `most`: all of it
    /// if there is room (an amount over the whole budget asks for all of it), else what room
    /// there is, or a refusal when none is left. While other reservations are unsettled (each
    /// settles within its caller's round trip, see `Permit::settle`) it waits, up to
    /// `patience`, for them rather than take less than `most`.
    pub async fn reserve(
        &self,
        principal: Option<&str>,
        most: u64,
        patience: Duration,
    ) -> Result<Permit, Exhausted> {
        let deadline = Instant::now() + patience;
        loop {
            let released = self.0.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let patient = Instant::now() < deadline;
            if let Some(reserved) = self.reserve_now(principal, most, patient) {
                return reserved;
            }
            let _ = tokio::time::timeout_at(deadline, released).await;
        }
    }

    /// One try of `reserve`: `None` when it should wait for unsettled reservations.
    fn reserve_now(
        &self,
        principal: Option<&str>,
        most: u64,
        patient: bool,
    ) -> Option<Result<Permit, Exhausted>> {
        let most = most.min(self.whole(principal));
        let mut used = lock(&self.0.used);
        let (room, short) = self.room(&used, principal);
        let patient = patient && used.reserving > 0;
        if room >= most || (room > 0 && !patient) {
            let mut permit = self.take_locked(&mut used, principal, room.min(most));
            used.reserving += 1;
            permit.reserving = true;
            permit.short = (room < most).then_some(short);
            return Some(Ok(permit));
        }
        (!patient).then_some(Err(short))
    }

    /// Takes `amount` of the process's budget, waiting for room: for what cannot be refused
    /// any more, such as an event on its way out of a stream. An amount over the whole budget
    /// waits for all of it, then takes the whole budget.
    pub async fn wait(&self, amount: u64) -> Permit {
        let amount = amount.min(self.0.process.limit);
        loop {
            let released = self.0.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Ok(permit) = self.take(None, amount) {
                return permit;
            }
            released.await;
        }
    }

    /// What the process holds of this budget now.
    pub fn used(&self) -> u64 {
        lock(&self.0.used).total
    }

    /// The whole budget of `principal`: the most one holding may take.
    fn whole(&self, principal: Option<&str>) -> u64 {
        let process = self.0.process.limit;
        match principal {
            Some(_) => process.min(self.0.per_principal.limit),
            None => process,
        }
    }

    /// The room left for `principal`, and the refusal of the budget that leaves the least (the
    /// process's when they leave the same).
    fn room(&self, used: &Used, principal: Option<&str>) -> (u64, Exhausted) {
        let inner = &self.0;
        let process = inner.process.limit.saturating_sub(used.total);
        let Some(name) = principal else {
            return (process, inner.process.exhausted(None));
        };
        let held = used.by_principal.get(name).copied().unwrap_or(0);
        let own = inner.per_principal.limit.saturating_sub(held);
        if own < process {
            (own, inner.per_principal.exhausted(Some(name)))
        } else {
            (process, inner.process.exhausted(None))
        }
    }

    /// Takes `amount`, which fits, under the lock.
    fn take_locked(&self, used: &mut Used, principal: Option<&str>, amount: u64) -> Permit {
        let principal = principal.map(|name| match used.by_principal.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => Arc::from(name),
        });
        if let Some(key) = &principal {
            *used.by_principal.entry(key.clone()).or_default() += amount;
        }
        used.total += amount;
        Permit {
            budget: self.clone(),
            principal,
            amount,
            reserving: false,
            short: None,
        }
    }
}

#[cfg(test)]
mod tests;
