//! jobd's metric instruments, built once from a meter (as `instruments` describes them) and
//! passed down. Each has one method that records it, so attributes are given in one place.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, Meter, ObservableGauge, UpDownCounter},
};
use opentelemetry_semantic_conventions::attribute as semconv;

use super::{
    instruments::{
        self as described, CONNECTION, Instrument, KIND, OPERATION, OUTCOME, QUEUE, REASON, STATE,
    },
    series::{AttributeCaps, Capped, QueueDepths},
};
use crate::domain::{JobState, QueueName};

/// Bucket bounds for durations in seconds, from 100 µs to 60 s.
const SECONDS_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 60.0,
];

/// Every instrument jobd records. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Instruments>);

struct Instruments {
    meter: Meter,
    rpc_duration: Histogram<f64>,
    submitted: Counter<u64>,
    finished: Counter<u64>,
    retries: Counter<u64>,
    lease_expiries: Counter<u64>,
    handoffs: Counter<u64>,
    releases: Counter<u64>,
    queue_wait: Histogram<f64>,
    run_time: Histogram<f64>,
    watch_streams: UpDownCounter<i64>,
    waiting_claims: UpDownCounter<i64>,
    /// What `waiting_claims` counts now, for readers in this process.
    claims_waiting_now: Arc<AtomicI64>,
    redis_duration: Histogram<f64>,
    redis_reconnects: Counter<u64>,
    resyncs: Counter<u64>,
    auth_denials: Counter<u64>,
    gauges: Mutex<Vec<ObservableGauge<u64>>>,
    queues: Arc<Capped>,
    kinds: Arc<Capped>,
}

impl Metrics {
    /// Instruments on the global meter provider: no-ops until one is installed.
    pub fn global(caps: AttributeCaps) -> Self {
        Self::new(global::meter(super::SCOPE), caps)
    }

    pub fn new(meter: Meter, caps: AttributeCaps) -> Self {
        let seconds = |described: Instrument| {
            meter
                .f64_histogram(described.name)
                .with_unit(described.unit)
                .with_description(described.description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let counter = |described: Instrument| {
            meter
                .u64_counter(described.name)
                .with_unit(described.unit)
                .with_description(described.description)
                .build()
        };
        let open = |described: Instrument| {
            let counter = meter
                .i64_up_down_counter(described.name)
                .with_unit(described.unit)
                .with_description(described.description)
                .build();
            // A count of what is open now is reported from the start, at zero.
            counter.add(0, &[]);
            counter
        };
        Self(Arc::new(Instruments {
            rpc_duration: seconds(described::RPC_DURATION),
            submitted: counter(described::SUBMITTED),
            finished: counter(described::FINISHED),
            retries: counter(described::RETRIES),
            lease_expiries: counter(described::LEASES_EXPIRED),
            handoffs: counter(described::HANDED_OFF),
            releases: counter(described::RELEASED),
            queue_wait: seconds(described::QUEUE_WAIT),
            run_time: seconds(described::RUN_TIME),
            watch_streams: open(described::WATCH_STREAMS),
            waiting_claims: open(described::CLAIMS_WAITING),
            claims_waiting_now: Arc::default(),
            redis_duration: seconds(described::REDIS_DURATION),
            redis_reconnects: counter(described::REDIS_RECONNECTS),
            resyncs: counter(described::RESYNCS),
            auth_denials: counter(described::AUTH_DENIALS),
            gauges: Mutex::new(Vec::new()),
            queues: Capped::new(caps.queues),
            kinds: Capped::new(caps.kinds),
            meter: meter.clone(),
        }))
    }

    /// Records one finished gRPC call, per the OpenTelemetry RPC conventions.
    pub fn rpc(&self, method: &str, status: &str, duration: Duration) {
        let mut attributes = vec![
            KeyValue::new(semconv::RPC_SYSTEM_NAME, "grpc"),
            KeyValue::new(semconv::RPC_METHOD, method.to_owned()),
            KeyValue::new(semconv::RPC_RESPONSE_STATUS_CODE, status.to_owned()),
        ];
        if status != "OK" {
            attributes.push(KeyValue::new(semconv::ERROR_TYPE, status.to_owned()));
        }
        self.0
            .rpc_duration
            .record(duration.as_secs_f64(), &attributes);
    }

    /// A call refused at the perimeter; `reason` is "unauthenticated" or "permission_denied".
    pub fn auth_denied(&self, method: &str, reason: &'static str) {
        self.0.auth_denials.add(
            1,
            &[
                KeyValue::new(semconv::RPC_METHOD, method.to_owned()),
                KeyValue::new(REASON, reason),
            ],
        );
    }

    pub fn submitted(&self, queue: &QueueName, kind: &str) {
        self.0.submitted.add(1, &self.job(queue, kind));
    }

    /// A job reached `outcome`, a terminal state.
    pub fn finished(&self, queue: &QueueName, kind: &str, outcome: JobState) {
        let mut attributes = self.job(queue, kind);
        attributes.push(KeyValue::new(OUTCOME, outcome.as_str()));
        self.0.finished.add(1, &attributes);
    }

    /// A failed attempt was scheduled for a retry; `reason` is "failed" or "lease_expired".
    pub fn retried(&self, queue: &QueueName, kind: &str, reason: &'static str) {
        let mut attributes = self.job(queue, kind);
        attributes.push(KeyValue::new(REASON, reason));
        self.0.retries.add(1, &attributes);
    }

    pub fn lease_expired(&self, queue: &QueueName) {
        self.0.lease_expiries.add(1, &[self.queue(queue)]);
    }

    /// A submission gave `jobs` jobs straight to waiting claims (see `claims::handoff`).
    pub fn handed_off(&self, queue: &QueueName, jobs: usize) {
        self.0.handoffs.add(jobs as u64, &[self.queue(queue)]);
    }

    /// `jobs` jobs went back to their queue at no cost (see `claims::delivery`, ReleaseJob,
    /// and the acknowledgement deadline).
    pub fn released(&self, queue: &QueueName, jobs: usize) {
        self.0.releases.add(jobs as u64, &[self.queue(queue)]);
    }

    pub fn queue_wait(&self, queue: &QueueName, wait: Duration) {
        self.0
            .queue_wait
            .record(wait.as_secs_f64(), &[self.queue(queue)]);
    }

    pub fn run_time(&self, queue: &QueueName, outcome: JobState, run: Duration) {
        self.0.run_time.record(
            run.as_secs_f64(),
            &[self.queue(queue), KeyValue::new(OUTCOME, outcome.as_str())],
        );
    }

    /// Counts an open WatchJob or SubmitAndWatchJobs stream until the guard drops.
    pub fn watch_stream(&self) -> Gauged {
        Gauged::new(self.0.watch_streams.clone())
    }

    /// Counts a waiting ClaimJob call until the guard drops.
    pub fn waiting_claim(&self) -> Gauged {
        Gauged::new(self.0.waiting_claims.clone()).mirrored(self.0.claims_waiting_now.clone())
    }

    /// How many claims wait for a job in this process now (`jobd.claims.waiting`).
    pub fn claims_waiting(&self) -> i64 {
        self.0.claims_waiting_now.load(Ordering::SeqCst)
    }

    /// Records one Redis round trip (a script or a command) by what it did.
    pub fn redis(&self, operation: &'static str, duration: Duration) {
        self.0.redis_duration.record(
            duration.as_secs_f64(),
            &[KeyValue::new(OPERATION, operation)],
        );
    }

    /// A connection ("pool" or "subscriber") came back after being lost.
    pub fn redis_reconnect(&self, connection: &'static str) {
        self.0
            .redis_reconnects
            .add(1, &[KeyValue::new(CONNECTION, connection)]);
    }

    /// A watcher re-read its job's log because messages may have been lost.
    pub fn resync(&self) {
        self.0.resyncs.add(1, &[]);
    }

    /// Reports whether the pool and the subscriber are connected (1) or not (0), asking
    /// `connected` at each export.
    pub fn observe_redis(&self, connected: impl Fn() -> (bool, bool) + Send + Sync + 'static) {
        let gauge = self
            .0
            .meter
            .u64_observable_gauge(described::REDIS_CONNECTED.name)
            .with_unit(described::REDIS_CONNECTED.unit)
            .with_description(described::REDIS_CONNECTED.description)
            .with_callback(move |observer| {
                let (pool, subscriber) = connected();
                observer.observe(u64::from(pool), &[KeyValue::new(CONNECTION, "pool")]);
                observer.observe(
                    u64::from(subscriber),
                    &[KeyValue::new(CONNECTION, "subscriber")],
                );
            })
            .build();
        self.keep(gauge);
    }

    /// Reports queue depths per queue and state from `depths`: the queues known now, those
    /// past the cap summed as `_OTHER`.
    pub fn observe_queue_depths(&self, depths: QueueDepths) {
        let queues = self.0.queues.clone();
        let gauge = self
            .0
            .meter
            .u64_observable_gauge(described::QUEUE_DEPTH.name)
            .with_unit(described::QUEUE_DEPTH.unit)
            .with_description(described::QUEUE_DEPTH.description)
            .with_callback(move |observer| {
                let mut series: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
                for (queue, states) in depths.snapshot() {
                    let queue = queues.value(queue.as_str());
                    for (state, count) in states {
                        *series.entry((queue.clone(), state.as_str())).or_default() += count;
                    }
                }
                for ((queue, state), count) in series {
                    observer.observe(
                        count,
                        &[KeyValue::new(QUEUE, queue), KeyValue::new(STATE, state)],
                    );
                }
            })
            .build();
        self.keep(gauge);
    }

    /// The `jobd.queue` attribute of `queue`, capped.
    fn queue(&self, queue: &QueueName) -> KeyValue {
        KeyValue::new(QUEUE, self.0.queues.value(queue.as_str()))
    }

    /// The `jobd.queue` and `jobd.job.kind` attributes of a job, capped.
    fn job(&self, queue: &QueueName, kind: &str) -> Vec<KeyValue> {
        vec![
            self.queue(queue),
            KeyValue::new(KIND, self.0.kinds.value(kind)),
        ]
    }

    fn keep(&self, gauge: ObservableGauge<u64>) {
        self.0
            .gauges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(gauge);
    }
}

/// Adds one to an up-down counter for as long as it lives.
pub struct Gauged {
    counter: UpDownCounter<i64>,
    /// A count this process can read, kept with the counter.
    mirror: Option<Arc<AtomicI64>>,
}

impl Gauged {
    fn new(counter: UpDownCounter<i64>) -> Self {
        counter.add(1, &[]);
        Self {
            counter,
            mirror: None,
        }
    }

    fn mirrored(mut self, mirror: Arc<AtomicI64>) -> Self {
        mirror.fetch_add(1, Ordering::SeqCst);
        self.mirror = Some(mirror);
        self
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.counter.add(-1, &[]);
        if let Some(mirror) = &self.mirror {
            mirror.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
