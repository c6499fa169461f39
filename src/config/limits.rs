//! The bounds that keep one client from exhausting jobd: connections, queues and budgets.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// The HTTP/2 and TCP settings of every gRPC connection, chosen for Kubernetes behind a load
/// balancer, and the cardinality of the metrics' free-form attributes.
#[derive(Debug, Clone, Args)]
pub struct TransportConfig {
    /// Concurrent streams (calls) one HTTP/2 connection may have open: a client at the limit
    /// waits for one of its calls to end. 256, as Go's HTTP/2 server, so that one connection
    /// cannot hold more than a bounded share of the process's memory.
    #[arg(long, env = "JOBD_MAX_CONCURRENT_STREAMS", hide_env_values = true, default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_streams: u32,

    /// gRPC connections served at once (the health port's aside): past it, a new connection
    /// is closed as soon as it is accepted, and its client's calls fail UNAVAILABLE. 1000, so
    /// that connections opened in a loop cannot take the process's memory (each holds about
    /// 64 KiB of buffers and stream state, counted in the Deployment's memory limit).
    #[arg(long, env = "JOBD_MAX_CONNECTIONS", hide_env_values = true, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// How long a connection may be quiet before jobd sends an HTTP/2 PING. 20 s, well under
    /// the 60 s idle timeout of most load balancers, so a quiet WatchJob or a waiting claim is
    /// never cut as idle.
    #[arg(long, env = "JOBD_HTTP2_KEEPALIVE_INTERVAL", hide_env_values = true, default_value = "20s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may wait for its acknowledgement before jobd closes the connection as
    /// dead. 20 s, gRPC's default: a half-open connection is reaped within 40 s.
    #[arg(long, env = "JOBD_HTTP2_KEEPALIVE_TIMEOUT", hide_env_values = true, default_value = "20s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Idle time before the kernel sends TCP keepalive probes on a connection. 30 s: reaps dead
    /// peers that HTTP/2 pings cannot reach yet (a TLS handshake, a blocked write).
    #[arg(long, env = "JOBD_TCP_KEEPALIVE", hide_env_values = true, default_value = "30s", value_parser = parse_duration)]
    pub tcp_keepalive: Duration,

    /// Time between TCP keepalive probes. 10 s: with 3 probes a dead peer is found within a
    /// minute of going quiet.
    #[arg(long, env = "JOBD_TCP_KEEPALIVE_INTERVAL", hide_env_values = true, default_value = "10s", value_parser = parse_duration)]
    pub tcp_keepalive_interval: Duration,

    /// Unanswered TCP keepalive probes after which the connection is closed. 3.
    #[arg(long, env = "JOBD_TCP_KEEPALIVE_RETRIES", hide_env_values = true, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub tcp_keepalive_retries: u32,

    /// Age at which jobd sends a connection GOAWAY: its client opens a new one, perhaps to
    /// another replica, so load spreads again after a rollout. 10 min: a reconnect (and TLS
    /// handshake) per client every 10 min costs nothing measurable.
    #[arg(long, env = "JOBD_MAX_CONNECTION_AGE", hide_env_values = true, default_value = "10m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// After GOAWAY, how long the calls under way on that connection may still take before it
    /// is closed: 5 min, longer than the default JOBD_MAX_CLAIM_WAIT, so a waiting claim ends
    /// by itself; a WatchJob still open then ends with the connection, and resumes with
    /// `after_sequence` on a new one.
    #[arg(long, env = "JOBD_MAX_CONNECTION_AGE_GRACE", hide_env_values = true, default_value = "5m", value_parser = parse_duration)]
    pub max_connection_age_grace: Duration,

    /// Streams one connection may make jobd reset for protocol errors before jobd closes the
    /// connection (h2's local error reset limit). 1024, h2's own default, which tonic switches
    /// off: a client that provokes resets in a loop is disconnected.
    #[arg(long, env = "JOBD_HTTP2_MAX_LOCAL_ERROR_RESETS", hide_env_values = true, default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_local_error_resets: u32,

    /// How long each 64 KiB of a reply's payloads or results (GetJob's, claims', a stream's
    /// results) may take to be written to its client, from when it is handed to HTTP/2: past
    /// it, the call is reset (its client sees UNAVAILABLE; a watch resumes with
    /// `after_sequence`), or, if the client's flow-control window never let it start, the
    /// connection is closed, so that a client that does not read cannot keep the budget its
    /// reply counts in. 30 s: a client taking 64 KiB in 30 s (2.2 KB/s) is never cut.
    #[arg(long, env = "JOBD_SEND_TIMEOUT", hide_env_values = true, default_value = "30s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// Distinct queue names that metrics carry as `jobd.queue`, per process: the first this
    /// many seen; any other is recorded as `_OTHER`. 1000 keeps every metric's series count
    /// bounded however many queues clients make.
    #[arg(long, env = "JOBD_METRICS_MAX_QUEUES", hide_env_values = true, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub metrics_max_queues: u32,

    /// Distinct job kinds that metrics carry as `jobd.job.kind`, per process: the first this
    /// many seen; any other is recorded as `_OTHER`. 100: kinds name code paths, and are few.
    #[arg(long, env = "JOBD_METRICS_MAX_KINDS", hide_env_values = true, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub metrics_max_kinds: u32,
}

/// Bounds on the queues a caller may create.
#[derive(Debug, Clone, Args)]
pub struct QueueLimitsConfig {
    /// The most queues with jobs a principal of the auth file may have submitted to, unless
    /// its own `max_queues` says otherwise; a submission that would take it past them is
    /// refused with RESOURCE_EXHAUSTED. 10000: far above what one team's workers poll, and
    /// low enough that a runaway client cannot fill Redis with queues. Callers without an
    /// auth file have no cap.
    #[arg(long, env = "JOBD_MAX_QUEUES_PER_PRINCIPAL", hide_env_values = true, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queues_per_principal: u32,
}

/// What callers may hold of one jobd process, so that none can exhaust its memory (or Redis's),
/// however many calls it makes: past a budget, RESOURCE_EXHAUSTED naming it. The base
/// Deployment's memory limit is derived from these defaults (docs/operations.md).
#[derive(Debug, Clone, Args)]
pub struct BudgetsConfig {
    /// Most WatchJob and SubmitAndWatchJobs streams open at once. 5,000: what a 640 MiB pod
    /// holds with the other budgets full (docs/operations.md, "Memory").
    #[arg(long, env = "JOBD_MAX_WATCH_STREAMS", hide_env_values = true, default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watch_streams: u64,

    /// Most streams open at once for one principal (with an auth file). 1,250: a quarter of
    /// the process's, so that one principal cannot take every stream from the others.
    #[arg(long, env = "JOBD_MAX_WATCH_STREAMS_PER_PRINCIPAL", hide_env_values = true,
          default_value_t = 1_250, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watch_streams_per_principal: u64,

    /// Most claims waiting for a job at once (ClaimJob, ClaimJobs and completions' `next`
    /// with a wait). 5,000: as streams, what a 640 MiB pod holds with the other budgets full.
    #[arg(long, env = "JOBD_MAX_WAITING_CLAIMS", hide_env_values = true, default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_waiting_claims: u64,

    /// Most claims waiting at once for one principal (with an auth file). 1,250: a quarter of
    /// the process's.
    #[arg(long, env = "JOBD_MAX_WAITING_CLAIMS_PER_PRINCIPAL", hide_env_values = true,
          default_value_t = 1_250, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_waiting_claims_per_principal: u64,

    /// Most watchers one job may have on one process (streams following it). 1,000: a
    /// dashboard's fan-out, while one job's completion wakes a bounded number of streams.
    #[arg(long, env = "JOBD_MAX_WATCHERS_PER_JOB", hide_env_values = true, default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watchers_per_job: u64,

    /// Most watchers one job may have on one process for one principal (with an auth file).
    /// 250: a quarter of the process's, so that one principal cannot take every watcher of a
    /// job from the others.
    #[arg(long, env = "JOBD_MAX_WATCHERS_PER_JOB_PER_PRINCIPAL", hide_env_values = true,
          default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watchers_per_job_per_principal: u64,

    /// Most payload and result bytes held at once by calls in flight: submissions' payloads
    /// and completions' results while they are written, GetJob's and claims' replies until
    /// they are sent (past it, refused). 16 MiB: the largest request fits, and what they cost
    /// (up to 8 times their bytes) fits a 640 MiB pod with the other budgets.
    #[arg(long, env = "JOBD_MAX_PAYLOAD_BYTES_IN_FLIGHT", hide_env_values = true,
          default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes_in_flight: u64,

    /// Most payload and result bytes in flight for one principal (with an auth file). 16 MiB:
    /// the largest request (16 MiB) must fit.
    #[arg(long, env = "JOBD_MAX_PAYLOAD_BYTES_IN_FLIGHT_PER_PRINCIPAL", hide_env_values = true,
          default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes_in_flight_per_principal: u64,

    /// Most result bytes on their way out of WatchJob and SubmitAndWatchJobs streams at once,
    /// until sent; a result waits for room rather than fail, and never takes from the payload
    /// bytes in flight, so that watchers draining cannot refuse anyone's writes. 4 MiB: four
    /// results of the largest default size at a time, within the 640 MiB pod.
    #[arg(long, env = "JOBD_MAX_STREAM_RESULT_BYTES_IN_FLIGHT", hide_env_values = true,
          default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream_result_bytes_in_flight: u64,

    /// Most events a job's log holds before its terminal event: from this sequence on, an event
    /// of any type but the terminal one replaces the one before it in the log's last slot, so
    /// that no loop (heartbeats, claims and releases) grows a job without bound; the terminal
    /// event is always added, last. 256: one page of a replay (one bounded HMGET), under 128
    /// KiB of Redis memory.
    #[arg(long, env = "JOBD_MAX_EVENTS_PER_JOB", hide_env_values = true, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
    pub max_events_per_job: u64,
}

impl TransportConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let at_least_a_second = [
            (
                "JOBD_HTTP2_KEEPALIVE_INTERVAL",
                self.http2_keepalive_interval,
            ),
            ("JOBD_HTTP2_KEEPALIVE_TIMEOUT", self.http2_keepalive_timeout),
            ("JOBD_TCP_KEEPALIVE", self.tcp_keepalive),
            ("JOBD_TCP_KEEPALIVE_INTERVAL", self.tcp_keepalive_interval),
            ("JOBD_MAX_CONNECTION_AGE", self.max_connection_age),
            (
                "JOBD_MAX_CONNECTION_AGE_GRACE",
                self.max_connection_age_grace,
            ),
            ("JOBD_SEND_TIMEOUT", self.send_timeout),
        ];
        for (name, value) in at_least_a_second {
            if value < Duration::from_secs(1) {
                return Err(format!("invalid {name}: must be at least 1s"));
            }
        }
        Ok(())
    }
}
