//! The job model: names, ids, jobs, events and leases, with the rules that keep them valid.
//! Nothing here knows gRPC or Redis.

mod error;
mod event;
mod id;
mod job;
mod lease;
mod names;
mod schedule;
mod submission;
mod text;
mod trace;

pub use error::RequestError;
pub use event::{EventKind, JobEvent, Progress};
pub use id::{JobId, JobIdGenerator};
pub use job::{Job, JobState, UnixMillis};
pub use lease::{
    AttemptEnd, ClaimDeadline, ClaimRequest, Claimed, FREE_DELIVERIES, FailOutcome,
    HeartbeatOutcome, LeaseLimits, LeaseToken, Refusal,
};
pub use names::{JobKind, QueueName, WorkerId};
pub use schedule::{
    Backoff, BackoffRequest, Idempotency, MAX_ATTEMPTS, MAX_RETENTION, MIN_RETENTION, Start,
};
pub use submission::{NewJob, SubmitLimits, SubmitRequest};
pub use text::{MAX_STORED_ERROR, check_size, check_text, shown, stored_error};
