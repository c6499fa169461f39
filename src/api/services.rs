//! What both gRPC services act on: the use cases and the store, and the limits they apply.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    background::SweeperHandle,
    budgets::Budgets,
    claims::Claims,
    completions::Completions,
    domain::{LeaseLimits, SubmitLimits},
    events::EventHub,
    queues::QueueAdmission,
    store::JobStore,
    submissions::Submissions,
    telemetry::Metrics,
};

/// Shared by `JobApi` and `WorkerApi`; built once by the app.
pub struct Services {
    pub store: JobStore,
    pub submissions: Submissions,
    pub claims: Claims,
    pub completions: Completions,
    pub hub: EventHub,
    /// Woken for a queue where something may be due before its next visit.
    pub sweeper: SweeperHandle,
    /// Each principal's cap on queues with jobs.
    pub admission: QueueAdmission,
    pub metrics: Metrics,
    pub limits: Limits,
    /// What callers' streams, waiting claims and payloads may hold of this process.
    pub budgets: Budgets,
    /// Cancelled when jobd shuts down: streams end, waiting claims return.
    pub shutdown: CancellationToken,
}

/// The bounds and defaults requests are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub submit: SubmitLimits,
    pub leases: LeaseLimits,
    /// The largest payload or result, bytes.
    pub max_payload: usize,
    /// A principal's cap on queues with jobs, unless it names its own.
    pub max_queues_per_principal: u32,
}

pub type Shared = Arc<Services>;
