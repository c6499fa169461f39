//! The job model: names, ids, jobs, events and leases, with the rules that keep them valid.
//! Nothing here knows gRPC or Redis.

mod error;
mod event;
mod id;
mod job;
mod lease;
mod names;
mod schedule;

pub use error::RequestError;
pub use event::{EventKind, JobEvent, Progress};
pub use id::{JobId, JobIdGenerator};
pub use job::{
    Job, JobState, NewJob, SubmitLimits, SubmitRequest, UnixMillis, check_size, check_text,
};
pub use lease::{
    AttemptEnd, ClaimRequest, Claimed, FailOutcome, HeartbeatOutcome, LeaseLimits, LeaseToken,
};
pub use names::{JobKind, QueueName, WorkerId};
pub use schedule::{
    Backoff, BackoffRequest, Idempotency, MAX_ATTEMPTS, MAX_RETENTION, MIN_RETENTION, Start,
};
