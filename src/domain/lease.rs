//! Leases: a worker's time-bounded claim on a job, proven by a token.

use std::{fmt, time::Duration};

use super::{Job, JobKind, JobState, QueueName, RequestError, UnixMillis, WorkerId};

/// The proof that a caller is a job's current worker. A new token is made for every claim, so
/// the token of an earlier attempt is refused (a fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

const TOKEN_LEN: usize = 32;

impl LeaseToken {
    /// A fresh token: 128 random bits, hex-encoded.
    pub fn generate() -> Self {
        Self(const_hex::encode(rand::random::<[u8; 16]>()))
    }

    /// A token a caller presents. Missing is a malformed request; anything jobd could not
    /// have issued is, like any token that is not the job's current one, refused
    /// (`Refusal::NotCurrentToken`).
    pub fn parse(field: &str, value: &str) -> Result<Result<Self, Refusal>, RequestError> {
        if value.is_empty() {
            return Err(RequestError::invalid(field, "must not be empty"));
        }
        if value.len() != TOKEN_LEN || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Err(Refusal::UnknownToken));
        }
        Ok(Ok(Self(value.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bounds on what workers may ask for.
#[derive(Debug, Clone, Copy)]
pub struct LeaseLimits {
    pub min_lease: Duration,
    pub max_lease: Duration,
    pub max_wait: Duration,
    /// How long a worker has to acknowledge a job it claimed, unless its claim says.
    pub default_ack: Duration,
}

impl LeaseLimits {
    /// A lease a caller asked for; refused outside the bounds.
    pub fn check_lease(&self, field: &str, lease: Duration) -> Result<Duration, RequestError> {
        if lease < self.min_lease || lease > self.max_lease {
            return Err(RequestError::invalid(
                field,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(self.min_lease),
                    humantime::format_duration(self.max_lease)
                ),
            ));
        }
        Ok(lease)
    }

    /// How long a claim's worker has to acknowledge each job; the server's default when
    /// unset. Refused outside the lease bounds; the acknowledgement deadline never falls
    /// after the lease's end.
    pub fn ack_timeout(
        &self,
        field: &str,
        asked: Option<Duration>,
    ) -> Result<Duration, RequestError> {
        asked.map_or(Ok(self.default_ack), |ack| self.check_lease(field, ack))
    }

    /// How long a claim may wait; zero when unset.
    pub fn wait(&self, field: &str, asked: Option<Duration>) -> Result<Duration, RequestError> {
        let wait = asked.unwrap_or_default();
        if wait > self.max_wait {
            return Err(RequestError::invalid(
                field,
                format!(
                    "must be at most {}",
                    humantime::format_duration(self.max_wait)
                ),
            ));
        }
        Ok(wait)
    }
}

/// A validated ClaimJob request.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub queues: Vec<QueueName>,
    pub worker: WorkerId,
    /// The lease the worker asked for; `None`: the job's own, else the server's default.
    pub lease: Option<Duration>,
    pub wait: Duration,
    /// How long the worker has to acknowledge each job it gets.
    pub ack_timeout: Duration,
}

pub const MAX_CLAIM_QUEUES: usize = 16;

impl ClaimRequest {
    pub fn new(
        queues: &[String],
        worker: &str,
        lease: Option<Duration>,
        wait: Duration,
        ack_timeout: Duration,
    ) -> Result<Self, RequestError> {
        if queues.is_empty() {
            return Err(RequestError::invalid("queues", "name at least one queue"));
        }
        if queues.len() > MAX_CLAIM_QUEUES {
            return Err(RequestError::invalid(
                "queues",
                format!("at most {MAX_CLAIM_QUEUES} queues, got {}", queues.len()),
            ));
        }
        let mut parsed: Vec<QueueName> = Vec::with_capacity(queues.len());
        for (i, queue) in queues.iter().enumerate() {
            let queue = QueueName::parse(&format!("queues[{i}]"), queue)?;
            if !parsed.contains(&queue) {
                parsed.push(queue);
            }
        }
        Ok(Self {
            queues: parsed,
            worker: WorkerId::parse("worker_id", worker)?,
            lease,
            wait,
            ack_timeout,
        })
    }
}

/// A job a worker now holds, with the lease that proves it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    pub token: LeaseToken,
    pub lease_expires_at: UnixMillis,
    /// Unless the worker acknowledges the job by then (a heartbeat, or its outcome), the job
    /// goes back to its queue: the claim's reply may never have reached it.
    pub ack_deadline: UnixMillis,
}

/// Which deadline of a claim passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimDeadline {
    /// The worker did not acknowledge the job in time: it goes back to its queue.
    Ack,
    /// The lease ran out without a heartbeat: the attempt ends.
    Lease,
}

/// Why a job refused what a caller asked; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The lease token is not the job's current one; the job is now in `state`.
    #[error("the lease token is not the job's current one")]
    NotCurrentToken { state: JobState },
    /// The token is none jobd could have issued.
    #[error("the lease token is not one jobd issued")]
    UnknownToken,
    /// The claim's deadline passed (by Redis's clock) before this call: the token is dead.
    #[error("the claim's deadline passed")]
    DeadlinePassed {
        deadline: ClaimDeadline,
        at: UnixMillis,
    },
    /// The job is finished (completed or failed) and can no longer be cancelled.
    #[error("the job is already finished")]
    Finished(JobState),
}

/// Where a failed attempt left the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Retried: the next attempt becomes claimable at this time.
    RetryAt(UnixMillis),
    /// Failed for good.
    Failed,
}

/// The attempt a completion, failure or lease expiry ended, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnd {
    pub kind: JobKind,
    pub started_at: Option<UnixMillis>,
    pub ended_at: UnixMillis,
}

impl AttemptEnd {
    /// How long the attempt ran, by Redis's clock, which recorded both ends.
    pub fn run_time(&self) -> Option<Duration> {
        self.started_at.map(|started| self.ended_at.since(started))
    }
}

/// How many times a job may be claimed without its worker acknowledging it and go back to its
/// queue at no cost; after that, each such claim counts as a failed attempt, so that a job
/// that kills its workers before they can acknowledge it still ends.
pub const FREE_DELIVERIES: u32 = 3;

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// The lease was extended to this time.
    Extended(UnixMillis),
    /// The job was cancelled; the worker should stop.
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_parse_back() {
        let a = LeaseToken::generate();
        assert_ne!(a, LeaseToken::generate());
        assert_eq!(LeaseToken::parse("lease_token", a.as_str()), Ok(Ok(a)));
        assert_eq!(
            LeaseToken::parse("lease_token", "xyz"),
            Ok(Err(Refusal::UnknownToken))
        );
        assert!(LeaseToken::parse("lease_token", "").is_err());
    }

    #[test]
    fn leases_and_waits_are_bounded() {
        let limits = LeaseLimits {
            min_lease: Duration::from_secs(1),
            max_lease: Duration::from_secs(3600),
            max_wait: Duration::from_secs(60),
            default_ack: Duration::from_secs(5),
        };
        let thirty = Duration::from_secs(30);
        assert_eq!(limits.check_lease("lease", thirty).unwrap(), thirty);
        assert!(
            limits
                .check_lease("lease", Duration::from_millis(10))
                .is_err()
        );
        assert!(
            limits
                .check_lease("lease", Duration::from_secs(7200))
                .is_err()
        );
        assert!(limits.wait("wait", Some(Duration::from_secs(61))).is_err());
        assert_eq!(
            limits.ack_timeout("ack_timeout", None).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            limits.ack_timeout("ack_timeout", Some(thirty)).unwrap(),
            thirty
        );
        assert!(
            limits
                .ack_timeout("ack_timeout", Some(Duration::ZERO))
                .is_err()
        );
        assert_eq!(limits.wait("wait", None).unwrap(), Duration::ZERO);
    }

    #[test]
    fn claim_needs_queues_and_a_worker() {
        let d = Duration::from_secs(1);
        assert!(ClaimRequest::new(&[], "w", None, d, d).is_err());
        let err = ClaimRequest::new(&["ok".into(), "no way".into()], "w", None, d, d).unwrap_err();
        assert!(matches!(err, RequestError::Invalid { field, .. } if field == "queues[1]"));
        assert!(ClaimRequest::new(&["q".into()], "", None, d, d).is_err());
    }
}
