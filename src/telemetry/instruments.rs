//! Every metric instrument jobd records, described once: `Metrics` builds them from these
//! descriptions, and the table in docs/operations.md is checked against them
//! (tests/it/docs.rs).

use opentelemetry_semantic_conventions::{attribute as semconv, metric as semmetric};

pub const QUEUE: &str = "jobd.queue";
pub const KIND: &str = "jobd.job.kind";
pub const OUTCOME: &str = "jobd.job.outcome";
pub const STATE: &str = "jobd.job.state";
pub const OPERATION: &str = "jobd.redis.operation";
pub const CONNECTION: &str = "jobd.redis.connection";
pub const REASON: &str = "jobd.reason";

/// The value of a capped attribute (`jobd.queue`, `jobd.job.kind`) past its cap, as
/// OpenTelemetry's conventions name a value folded away.
pub const OTHER: &str = "_OTHER";

/// What an instrument is, as OpenTelemetry names the kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrumentKind {
    Counter,
    UpDownCounter,
    Histogram,
    Gauge,
}

impl InstrumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstrumentKind::Counter => "counter",
            InstrumentKind::UpDownCounter => "up-down counter",
            InstrumentKind::Histogram => "histogram",
            InstrumentKind::Gauge => "gauge",
        }
    }
}

/// One instrument: its name, kind, unit, the attributes it is recorded with, and what it
/// counts or measures.
#[derive(Debug, Clone, Copy)]
pub struct Instrument {
    pub name: &'static str,
    pub kind: InstrumentKind,
    pub unit: &'static str,
    pub attributes: &'static [&'static str],
    pub description: &'static str,
}

impl Instrument {
    const fn new(
        name: &'static str,
        kind: InstrumentKind,
        unit: &'static str,
        attributes: &'static [&'static str],
        description: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            unit,
            attributes,
            description,
        }
    }
}

use InstrumentKind::{Counter, Gauge, Histogram, UpDownCounter};

pub const RPC_DURATION: Instrument = Instrument::new(
    semmetric::RPC_SERVER_CALL_DURATION,
    Histogram,
    "s",
    &[
        semconv::RPC_SYSTEM_NAME,
        semconv::RPC_METHOD,
        semconv::RPC_RESPONSE_STATUS_CODE,
        semconv::ERROR_TYPE,
    ],
    "every gRPC call, streams until their last message (OpenTelemetry RPC conventions)",
);
pub const SUBMITTED: Instrument = Instrument::new(
    "jobd.jobs.submitted",
    Counter,
    "{job}",
    &[QUEUE, KIND],
    "jobs created",
);
pub const FINISHED: Instrument = Instrument::new(
    "jobd.jobs.finished",
    Counter,
    "{job}",
    &[QUEUE, KIND, OUTCOME],
    "jobs that reached `completed`, `failed` or `cancelled`",
);
pub const RETRIES: Instrument = Instrument::new(
    "jobd.jobs.retries",
    Counter,
    "{attempt}",
    &[QUEUE, KIND, REASON],
    "failed attempts scheduled for a retry; reason `failed` or `lease_expired`",
);
pub const LEASES_EXPIRED: Instrument = Instrument::new(
    "jobd.leases.expired",
    Counter,
    "{lease}",
    &[QUEUE],
    "claims that ended as a failed attempt: a lease that ran out without a \
                  heartbeat, or a job not acknowledged once its free deliveries were spent",
);
pub const HANDED_OFF: Instrument = Instrument::new(
    "jobd.jobs.handed_off",
    Counter,
    "{job}",
    &[QUEUE],
    "jobs a submission gave straight to a waiting claim",
);
pub const RELEASED: Instrument = Instrument::new(
    "jobd.jobs.released",
    Counter,
    "{job}",
    &[QUEUE],
    "jobs back in their queue at no cost: given back by their worker, claimed for \
                  a caller that went away or by a call whose reply was lost, or not \
                  acknowledged in time",
);
pub const QUEUE_WAIT: Instrument = Instrument::new(
    "jobd.job.queue_wait",
    Histogram,
    "s",
    &[QUEUE],
    "submit to first claim",
);
pub const RUN_TIME: Instrument = Instrument::new(
    "jobd.job.run_time",
    Histogram,
    "s",
    &[QUEUE, OUTCOME],
    "claim to the worker's outcome",
);
pub const WATCH_STREAMS: Instrument = Instrument::new(
    "jobd.watch.streams",
    UpDownCounter,
    "{stream}",
    &[],
    "open WatchJob and SubmitAndWatchJobs streams",
);
pub const CLAIMS_WAITING: Instrument = Instrument::new(
    "jobd.claims.waiting",
    UpDownCounter,
    "{call}",
    &[],
    "claims waiting for a job: they found their queues empty and wait",
);
pub const QUEUE_DEPTH: Instrument = Instrument::new(
    "jobd.queue.depth",
    Gauge,
    "{job}",
    &[QUEUE, STATE],
    "jobs per queue and state, read from Redis once per export interval per queue",
);
pub const REDIS_DURATION: Instrument = Instrument::new(
    "jobd.redis.duration",
    Histogram,
    "s",
    &[OPERATION],
    "Redis round trips: a script's name (`submit_many`, `claim`, …) or a read \
                  (`get_job`, `read_events`, …)",
);
pub const REDIS_RECONNECTS: Instrument = Instrument::new(
    "jobd.redis.reconnects",
    Counter,
    "{reconnect}",
    &[CONNECTION],
    "reconnections of the `pool` or the `subscriber`",
);
pub const REDIS_CONNECTED: Instrument = Instrument::new(
    "jobd.redis.connected",
    Gauge,
    "1",
    &[CONNECTION],
    "1 while every pool connection, or the subscriber, is up",
);
pub const RESYNCS: Instrument = Instrument::new(
    "jobd.watch.resyncs",
    Counter,
    "{read}",
    &[],
    "watcher re-reads of the durable log after a subscriber reconnect or \
                  dispatcher lag",
);

pub const AUTH_DENIALS: Instrument = Instrument::new(
    "jobd.auth.denials",
    Counter,
    "{call}",
    &[semconv::RPC_METHOD, REASON],
    "calls refused at the perimeter: `unauthenticated` (no known credential) or \
                  `permission_denied` (a role or queue the caller lacks)",
);

/// Every instrument, in the order the documentation lists them.
pub const INSTRUMENTS: [Instrument; 17] = [
    RPC_DURATION,
    SUBMITTED,
    FINISHED,
    RETRIES,
    LEASES_EXPIRED,
    HANDED_OFF,
    RELEASED,
    QUEUE_WAIT,
    RUN_TIME,
    WATCH_STREAMS,
    CLAIMS_WAITING,
    QUEUE_DEPTH,
    REDIS_DURATION,
    REDIS_RECONNECTS,
    REDIS_CONNECTED,
    RESYNCS,
    AUTH_DENIALS,
];
