//! Readiness: whether this replica should get calls. It follows Redis's health, checked every
//! `READINESS_INTERVAL`, and turns off for good once draining starts for shutdown; the API's
//! health service reports what it decides.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::redis::{self, Eviction, RedisClients};

/// How often readiness is checked: it follows Redis within this plus the probe timeout.
const READINESS_INTERVAL: Duration = Duration::from_millis(500);

/// Keeps `ready` true to Redis' health until shutdown: Redis is healthy when it answers
/// (within `probe_timeout`), is recent enough for the scripts (see `runs_scripts`) and cannot
/// evict the jobs it holds (see `keeps_jobs`); false for good once `draining` is cancelled.
pub async fn keep_ready(
    ready: watch::Sender<bool>,
    clients: RedisClients,
    probe_timeout: Duration,
    draining: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut eviction = None;
    let mut too_old = false;
    loop {
        let healthy = !draining.is_cancelled()
            && clients.healthy(probe_timeout).await
            && runs_scripts(&clients, probe_timeout, &mut too_old).await
            && keeps_jobs(&clients, probe_timeout, &mut eviction).await;
        ready.send_if_modified(|ready| {
            let now = healthy && !draining.is_cancelled();
            std::mem::replace(ready, now) != now
        });
        tokio::select! {
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
            () = draining.cancelled(), if !draining.is_cancelled() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Whether Redis is recent enough for jobd's scripts (see `MIN_REDIS_VERSION`); an older one
/// is logged once (`logged`), and jobd does not serve on it.
async fn runs_scripts(clients: &RedisClients, timeout: Duration, logged: &mut bool) -> bool {
    // A version Redis would not tell is given the benefit of the doubt.
    let Some(version) = clients
        .server_version(timeout)
        .await
        .filter(|version| !redis::supported(version))
    else {
        *logged = false;
        return true;
    };
    if !std::mem::replace(logged, true) {
        tracing::error!(
            %version,
            minimum = %redis::MIN_REDIS_VERSION,
            "Redis is too old for jobd's scripts: not ready until it is upgraded"
        );
    }
    false
}

/// Whether Redis answers and will not evict queued or running jobs when it runs out of memory:
/// a job's hash is its only record, so an `allkeys-*` policy could lose jobs without a trace,
/// and jobd does not serve on it. What it finds is logged when it changes (`last`).
async fn keeps_jobs(
    clients: &RedisClients,
    timeout: Duration,
    last: &mut Option<Eviction>,
) -> bool {
    let Some(eviction) = clients.eviction(timeout).await else {
        return false;
    };
    if last.as_ref() != Some(&eviction) {
        match &eviction {
            Eviction::Never if last.is_some() => {
                tracing::info!("Redis's maxmemory-policy now keeps every key");
            }
            Eviction::Never => {}
            Eviction::KeysWithExpiry(policy) => tracing::warn!(
                policy,
                "Redis may evict keys with an expiry when it reaches maxmemory: finished jobs \
                 and idempotency keys could go before their time; set maxmemory-policy \
                 noeviction"
            ),
            Eviction::AnyKey(policy) => tracing::error!(
                policy,
                "Redis may evict any key when it reaches maxmemory, queued and running jobs \
                 included: not ready until maxmemory-policy is noeviction (or volatile-*)"
            ),
            // CONFIG renamed, or refused to a least-privilege user: jobd serves, and says
            // once what it could not check.
            Eviction::Unknown(reason) => tracing::warn!(
                reason,
                "cannot check Redis's eviction policy (CONFIG GET maxmemory-policy was \
                 refused): make sure Redis has maxmemory-policy noeviction (or no maxmemory), \
                 or jobs may be evicted when it is full"
            ),
        }
        *last = Some(eviction.clone());
    }
    !matches!(eviction, Eviction::AnyKey(_))
}
