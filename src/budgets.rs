//! Budgets: how much of this process what callers hold may take, so that no client, buggy or
//! hostile, can make jobd run out of memory. Each budget counts one kind of holding (open watch
//! streams, waiting claims, payload bytes in flight) for the whole process and for each
//! principal; a holding past either is refused (`Exhausted`, RESOURCE_EXHAUSTED to the caller)
//! before anything is done. Results on their way out of streams have a budget of their own, for
//! the process alone, which they wait for rather than fail: however many watchers drain, they
//! never take the payload bytes that calls' requests and replies are refused without. A holding
//! is a `Permit`, released when dropped: when the stream or claim ends, however it ends, the
//! client's going away included. Watchers of one job are bounded by the event hub
//! (`EventHub::watch_job`), in all and per principal (`WatcherLimits`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

use crate::sync::lock;

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

/// A holding counted in a budget, given back when dropped.
#[must_use = "the holding is given back when the permit is dropped"]
pub struct Permit {
    budget: Budget,
    principal: Option<Arc<str>>,
    amount: u64,
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
        let principal = match principal {
            Some(name) => {
                let (key, held) = match used.by_principal.get_key_value(name) {
                    Some((key, held)) => (key.clone(), *held),
                    None => (Arc::from(name), 0),
                };
                if held.saturating_add(amount) > inner.per_principal.limit {
                    return Err(inner.per_principal.exhausted(Some(name)));
                }
                *used.by_principal.entry(key.clone()).or_default() += amount;
                Some(key)
            }
            None => None,
        };
        used.total += amount;
        Ok(Permit {
            budget: self.clone(),
            principal,
            amount,
        })
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
}

impl Drop for Permit {
    fn drop(&mut self) {
        let inner = &self.budget.0;
        {
            let mut used = lock(&inner.used);
            used.total -= self.amount;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(process: u64, per_principal: u64) -> Budget {
        Budget::new(
            Setting::new("max-things", "things", process),
            Setting::new("max-things-per-principal", "things", per_principal),
        )
    }

    #[test]
    fn a_principal_is_held_to_its_share_and_everyone_to_the_process_budget() {
        let budget = budget(3, 2);
        let a1 = budget.take(Some("a"), 1).unwrap();
        let _a2 = budget.take(Some("a"), 1).unwrap();
        let refused = budget.take(Some("a"), 1).err().unwrap();
        assert_eq!(refused.setting, "max-things-per-principal");
        assert_eq!(refused.principal.as_deref(), Some("a"));
        assert_eq!(
            refused.to_string(),
            "the budget max-things-per-principal (2 things) is used up for principal a"
        );
        let _b = budget.take(Some("b"), 1).unwrap();
        let refused = budget.take(None, 1).err().unwrap();
        assert_eq!(
            (refused.setting, refused.limit, refused.principal),
            ("max-things", 3, None)
        );
        drop(a1);
        assert_eq!(budget.used(), 2);
        let _anyone = budget.take(None, 1).unwrap();
    }

    #[test]
    fn permits_give_back_what_they_took() {
        let budget = budget(10, 10);
        let permits: Vec<_> = (0..5).map(|_| budget.take(Some("p"), 2).unwrap()).collect();
        assert!(budget.take(Some("q"), 1).is_err());
        drop(permits);
        assert_eq!(budget.used(), 0);
        assert!(lock(&budget.0.used).by_principal.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_take_gets_room_when_a_permit_is_dropped() {
        let budget = budget(4, 4);
        let held = budget.take(None, 3).unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait(100).await.amount }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), 4);
    }
}
