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

use InstrumentKind::{Counter, Gauge, Histogram, UpDownCounter};

pub const RPC_DURATION: Instrument = Instrument {
    name: semmetric::RPC_SERVER_CALL_DURATION,
    kind: Histogram,
    unit: "s",
    attributes: &[
        semconv::RPC_SYSTEM_NAME,
        semconv::RPC_METHOD,
        semconv::RPC_RESPONSE_STATUS_CODE,
        semconv::ERROR_TYPE,
    ],
    description: "every gRPC call, streams until their last message (OpenTelemetry RPC conventions)",
};
pub const SUBMITTED: Instrument = Instrument {
    name: "jobd.jobs.submitted",
    kind: Counter,
    unit: "{job}",
    attributes: &[QUEUE, KIND],
    description: "jobs created",
};
pub const FINISHED: Instrument = Instrument {
    name: "jobd.jobs.finished",
    kind: Counter,
    unit: "{job}",
    attributes: &[QUEUE, KIND, OUTCOME],
    description: "jobs that reached `completed`, `failed` or `cancelled`",
};
pub const RETRIES: Instrument = Instrument {
    name: "jobd.jobs.retries",
    kind: Counter,
    unit: "{attempt}",
    attributes: &[QUEUE, KIND, REASON],
    description: "failed attempts scheduled for a retry; reason `failed` or `lease_expired`",
};
pub const LEASES_EXPIRED: Instrument = Instrument {
    name: "jobd.leases.expired",
    kind: Counter,
    unit: "{lease}",
    attributes: &[QUEUE],
    description: "claims that ended as a failed attempt: a lease that ran out without a \
                  heartbeat, or a job not acknowledged once its free deliveries were spent",
};
pub const HANDED_OFF: Instrument = Instrument {
    name: "jobd.jobs.handed_off",
    kind: Counter,
    unit: "{job}",
    attributes: &[QUEUE],
    description: "jobs a submission gave straight to a waiting claim",
};
pub const RELEASED: Instrument = Instrument {
    name: "jobd.jobs.released",
    kind: Counter,
    unit: "{job}",
    attributes: &[QUEUE],
    description: "jobs back in their queue at no cost: given back by their worker, claimed for \
                  a caller that went away or by a call whose reply was lost, or not \
                  acknowledged in time",
};
pub const QUEUE_WAIT: Instrument = Instrument {
    name: "jobd.job.queue_wait",
    kind: Histogram,
    unit: "s",
    attributes: &[QUEUE],
    description: "submit to first claim",
};
pub const RUN_TIME: Instrument = Instrument {
    name: "jobd.job.run_time",
    kind: Histogram,
    unit: "s",
    attributes: &[QUEUE, OUTCOME],
    description: "claim to the worker's outcome",
};
pub const WATCH_STREAMS: Instrument = Instrument {
    name: "jobd.watch.streams",
    kind: UpDownCounter,
    unit: "{stream}",
    attributes: &[],
    description: "open WatchJob and SubmitAndWatchJobs streams",
};
pub const CLAIMS_WAITING: Instrument = Instrument {
    name: "jobd.claims.waiting",
    kind: UpDownCounter,
    unit: "{call}",
    attributes: &[],
    description: "claims waiting for a job: they found their queues empty and wait",
};
pub const QUEUE_DEPTH: Instrument = Instrument {
    name: "jobd.queue.depth",
    kind: Gauge,
    unit: "{job}",
    attributes: &[QUEUE, STATE],
    description: "jobs per queue and state, read from Redis once per export interval per queue",
};
pub const REDIS_DURATION: Instrument = Instrument {
    name: "jobd.redis.duration",
    kind: Histogram,
    unit: "s",
    attributes: &[OPERATION],
    description: "Redis round trips: a script's name (`submit`, `claim`, …) or a read \
                  (`get_job`, `read_events`, …)",
};
pub const REDIS_RECONNECTS: Instrument = Instrument {
    name: "jobd.redis.reconnects",
    kind: Counter,
    unit: "{reconnect}",
    attributes: &[CONNECTION],
    description: "reconnections of the `pool` or the `subscriber`",
};
pub const REDIS_CONNECTED: Instrument = Instrument {
    name: "jobd.redis.connected",
    kind: Gauge,
    unit: "1",
    attributes: &[CONNECTION],
    description: "1 while every pool connection, or the subscriber, is up",
};
pub const RESYNCS: Instrument = Instrument {
    name: "jobd.watch.resyncs",
    kind: Counter,
    unit: "{read}",
    attributes: &[],
    description: "watcher re-reads of the durable log after a subscriber reconnect or \
                  dispatcher lag",
};

/// Every instrument, in the order the documentation lists them.
pub const INSTRUMENTS: [Instrument; 16] = [
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
];
