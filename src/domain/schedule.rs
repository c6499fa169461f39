//! What a submitter may ask about when and how often a job runs: attempts, backoff, start
//! time, priority, lease, idempotency and retention. Each has a documented default and bounds.

use std::time::Duration;

use super::{RequestError, UnixMillis};

/// Delays between attempts: `initial` after the first failure, times `multiplier` after each
/// further one, at most `max`, spread by +/- `jitter` (a fraction of the delay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(5 * 60),
            jitter: 0.2,
        }
    }
}

/// A backoff policy as asked for: unset parts take the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackoffRequest {
    pub initial: Option<Duration>,
    pub multiplier: Option<f64>,
    pub max: Option<Duration>,
    pub jitter: Option<f64>,
}

impl BackoffRequest {
    pub fn resolve(self) -> Result<Backoff, RequestError> {
        let defaults = Backoff::default();
        let initial = self.initial.unwrap_or(defaults.initial);
        if initial > Duration::from_secs(3600) {
            return Err(RequestError::invalid(
                "backoff.initial",
                "must be at most 1h",
            ));
        }
        let multiplier = self.multiplier.unwrap_or(defaults.multiplier);
        if !(1.0..=10.0).contains(&multiplier) {
            return Err(RequestError::invalid(
                "backoff.multiplier",
                "must be from 1 to 10",
            ));
        }
        let max = self.max.unwrap_or(defaults.max.max(initial));
        if max < initial || max > Duration::from_secs(24 * 3600) {
            return Err(RequestError::invalid(
                "backoff.max",
                "must be from backoff.initial to 24h",
            ));
        }
        let jitter = self.jitter.unwrap_or(defaults.jitter);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(RequestError::invalid(
                "backoff.jitter",
                "must be from 0 to 1",
            ));
        }
        Ok(Backoff {
            initial,
            multiplier,
            max,
            jitter,
        })
    }
}

/// When a job may first be claimed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    At(UnixMillis),
    After(Duration),
}

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 100;
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
const MAX_START_AHEAD: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_IDEMPOTENCY_KEY: usize = 256;
const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MIN_RETENTION: Duration = Duration::from_secs(1);
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn max_attempts(asked: Option<u32>) -> Result<u32, RequestError> {
    let attempts = asked.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        return Err(RequestError::invalid(
            "max_attempts",
            format!("must be from 1 to {MAX_ATTEMPTS}"),
        ));
    }
    Ok(attempts)
}

pub fn priority(asked: i32) -> Result<i32, RequestError> {
    if !PRIORITY_RANGE.contains(&asked) {
        return Err(RequestError::invalid(
            "priority",
            format!(
                "must be from {} to {}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ));
    }
    Ok(asked)
}

/// When a job asked to start, checked against the bounds; `None`: at once. `now` is this
/// process's clock, used only for the bound: Redis's clock decides whether the time has come.
pub fn start(start: Option<Start>, now: UnixMillis) -> Result<Option<Start>, RequestError> {
    let latest = now.saturating_add(MAX_START_AHEAD);
    match start {
        None => Ok(None),
        Some(Start::After(delay)) if delay > MAX_START_AHEAD => {
            Err(RequestError::invalid("delay", "must be at most 365 days"))
        }
        Some(Start::After(delay)) => Ok((!delay.is_zero()).then_some(Start::After(delay))),
        Some(Start::At(at)) if at > latest => Err(RequestError::invalid(
            "run_at",
            "must be at most 365 days ahead",
        )),
        Some(Start::At(at)) => Ok(Some(Start::At(at))),
    }
}

pub fn retention(asked: Option<Duration>, default: Duration) -> Result<Duration, RequestError> {
    let retention = asked.unwrap_or(default);
    if retention < MIN_RETENTION || retention > MAX_RETENTION {
        return Err(RequestError::invalid(
            "retention",
            "must be from 1s to 30 days",
        ));
    }
    Ok(retention)
}

/// An idempotency key and how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub ttl: Duration,
}

impl Idempotency {
    /// `None` for an empty key. The TTL may not exceed the job's retention: so the key is
    /// always gone once the job is, and never names a job that no longer exists.
    pub fn new(
        key: String,
        ttl: Option<Duration>,
        retention: Duration,
    ) -> Result<Option<Self>, RequestError> {
        if key.is_empty() {
            return match ttl {
                Some(_) => Err(RequestError::invalid(
                    "idempotency_ttl",
                    "needs an idempotency_key",
                )),
                None => Ok(None),
            };
        }
        if key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
            return Err(RequestError::invalid(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY} bytes without control characters"),
            ));
        }
        let ttl = match ttl {
            None => DEFAULT_IDEMPOTENCY_TTL.min(retention),
            Some(ttl) if ttl < Duration::from_secs(1) || ttl > retention => {
                return Err(RequestError::invalid(
                    "idempotency_ttl",
                    format!(
                        "must be from 1s to the job's retention ({})",
                        humantime::format_duration(retention)
                    ),
                ));
            }
            Some(ttl) => ttl,
        };
        Ok(Some(Self { key, ttl }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_defaults_and_bounds() {
        assert_eq!(
            BackoffRequest::default().resolve().unwrap(),
            Backoff::default()
        );
        let long_initial = BackoffRequest {
            initial: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        // An initial delay above the default maximum lifts the maximum with it.
        assert_eq!(
            long_initial.resolve().unwrap().max,
            Duration::from_secs(600)
        );
        for bad in [
            BackoffRequest {
                multiplier: Some(0.5),
                ..Default::default()
            },
            BackoffRequest {
                jitter: Some(1.5),
                ..Default::default()
            },
            BackoffRequest {
                multiplier: Some(f64::NAN),
                ..Default::default()
            },
            BackoffRequest {
                initial: Some(Duration::from_secs(10)),
                max: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        ] {
            assert!(bad.resolve().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn start_times() {
        let now = UnixMillis(1_000_000);
        assert_eq!(start(None, now).unwrap(), None);
        assert_eq!(
            start(Some(Start::After(Duration::ZERO)), now).unwrap(),
            None
        );
        let two = Start::After(Duration::from_secs(2));
        assert_eq!(start(Some(two), now).unwrap(), Some(two));
        // A past time is kept: Redis's clock, not this one, says it has passed.
        let past = Start::At(UnixMillis(5));
        assert_eq!(start(Some(past), now).unwrap(), Some(past));
        assert!(start(Some(Start::After(Duration::from_secs(400 * 86400))), now).is_err());
        let far = Start::At(UnixMillis(now.0 + 400 * 86_400_000));
        assert!(start(Some(far), now).is_err());
    }

    #[test]
    fn idempotency_ttl_is_bounded_by_retention() {
        let day = Duration::from_secs(86400);
        let key = Idempotency::new("k".into(), None, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(key.ttl, Duration::from_secs(5));
        assert_eq!(
            Idempotency::new("k".into(), None, 2 * day)
                .unwrap()
                .unwrap()
                .ttl,
            day
        );
        assert!(Idempotency::new("k".into(), Some(2 * day), day).is_err());
        assert!(Idempotency::new("a\nb".into(), None, day).is_err());
        assert!(Idempotency::new(String::new(), Some(day), day).is_err());
        assert_eq!(Idempotency::new(String::new(), None, day).unwrap(), None);
    }

    #[test]
    fn priorities_and_attempts() {
        assert!(priority(1000).is_ok() && priority(-1000).is_ok());
        assert!(priority(1001).is_err());
        assert_eq!(max_attempts(None).unwrap(), 3);
        assert!(max_attempts(Some(0)).is_err() && max_attempts(Some(101)).is_err());
    }
}
