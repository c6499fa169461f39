//! Per-method deadlines and retry policies, read from jobd's published gRPC service config
//! (`docs/service-config.json`, compiled in), so the library cannot drift from it.

use std::{collections::HashMap, time::Duration};

use rand::Rng;
use serde_json::Value;

/// The service config, as published.
const SERVICE_CONFIG: &str = include_str!("../../../docs/service-config.json");

/// How a call is repeated after UNAVAILABLE: `max_attempts` tries in all, the n-th retry after
/// `initial × multiplier^(n-1)`, at most `max`, each shortened by up to 20% of jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; 1 never retries.
    pub max_attempts: u32,
    /// The delay before the first retry.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The growth of the delay per retry.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// The service config's policy: 5 attempts, 0.1 s doubling to 2 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// No retry at all.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial: Duration::ZERO,
        max: Duration::ZERO,
        multiplier: 1.0,
    };

    /// How a broken `watch` or `submit_and_wait` stream is resumed by default: 0.1 s doubling
    /// to 2 s between attempts, for as long as [`ClientBuilder::watch_resume`] allows (60 s);
    /// `max_attempts` bounds only a `submit_and_wait` submission sent again before jobd
    /// answered it.
    ///
    /// [`ClientBuilder::watch_resume`]: crate::ClientBuilder::watch_resume
    pub const RESUME: RetryPolicy = RetryPolicy {
        max_attempts: 10,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        multiplier: 2.0,
    };

    /// The delay before retry number `retry` (0 for the first), jitter included.
    pub fn delay(&self, retry: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(retry.min(30) as i32);
        let capped = grown.min(self.max.as_secs_f64());
        Duration::from_secs_f64(capped * rand::rng().random_range(0.8..=1.0))
    }
}

/// What the service config says of one method.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MethodConfig {
    /// The call's deadline; `None`: none (streams).
    pub timeout: Option<Duration>,
    /// `Some` for methods safe to repeat on UNAVAILABLE.
    pub retry: Option<RetryPolicy>,
}

/// Method name (`GetJob`) → its config.
pub(crate) fn methods() -> HashMap<String, MethodConfig> {
    let config: Value = serde_json::from_str(SERVICE_CONFIG).expect("docs/service-config.json");
    let mut methods = HashMap::new();
    for entry in config["methodConfig"].as_array().into_iter().flatten() {
        let method = MethodConfig {
            timeout: entry["timeout"].as_str().map(seconds),
            retry: entry.get("retryPolicy").map(|p| RetryPolicy {
                max_attempts: p["maxAttempts"].as_u64().unwrap_or(1) as u32,
                initial: p["initialBackoff"].as_str().map_or(Duration::ZERO, seconds),
                max: p["maxBackoff"].as_str().map_or(Duration::ZERO, seconds),
                multiplier: p["backoffMultiplier"].as_f64().unwrap_or(1.0),
            }),
        };
        for name in entry["name"].as_array().into_iter().flatten() {
            if let Some(name) = name["method"].as_str() {
                methods.insert(name.to_owned(), method);
            }
        }
    }
    methods
}

/// A protobuf JSON duration: `"0.1s"`.
fn seconds(text: &str) -> Duration {
    let value: f64 = text.trim_end_matches('s').parse().expect("a duration");
    Duration::from_secs_f64(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_config_is_read() {
        let methods = methods();
        let get = methods["GetJob"];
        assert_eq!(get.timeout, Some(Duration::from_secs(10)));
        assert_eq!(get.retry, Some(RetryPolicy::default()));
        assert_eq!(methods["ClaimJobs"].timeout, Some(Duration::from_secs(75)));
        assert!(
            methods["SubmitJob"].retry.is_none(),
            "submissions are retried only with a key"
        );
        assert!(methods["WatchJob"].timeout.is_none());
    }

    #[test]
    fn delays_grow_to_the_max_with_jitter() {
        let policy = RetryPolicy::default();
        let first = policy.delay(0);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(100));
        let late = policy.delay(10);
        assert!(late >= Duration::from_millis(1600) && late <= Duration::from_secs(2));
    }
}
