//! Configuration: plain data, one sub-struct per part, read from flags and the environment.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::domain::{LeaseLimits, MAX_RETENTION, MIN_RETENTION};

/// jobd: job orchestration over gRPC, with all state in Redis.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub jobs: JobsConfig,
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
    #[command(flatten)]
    pub security: SecurityConfig,
    #[command(flatten)]
    pub transport: TransportConfig,
    #[command(flatten)]
    pub queues: QueueLimitsConfig,
    #[command(flatten)]
    pub budgets: BudgetsConfig,
    /// Without a command, jobd serves.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Bearer tokens for the auth file.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Makes a random token for a principal. Prints the token on the first line (only now:
    /// jobd keeps only its SHA-256), then the principal's entry for the auth file.
    New {
        /// The principal's name, as logs and messages show it.
        #[arg(long)]
        name: String,
        /// A role: submitter, worker or operator; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A queue it may use: a name, a prefix such as `billing.*`, or `*` for all; repeat
        /// for several.
        #[arg(long = "queue", required = true)]
        queues: Vec<String>,
    },
    /// Reads a token on standard input and prints its `token_sha256` line for the auth file.
    Hash,
}

/// Who may call jobd, and over what: TLS, client certificates, bearer tokens.
#[derive(Debug, Clone, Args)]
pub struct SecurityConfig {
    /// PEM file of the server's certificate chain: with --tls-key-file, jobd serves gRPC over
    /// TLS only. Re-read when it changes (new connections get the new certificate).
    #[arg(
        long,
        env = "JOBD_TLS_CERT_FILE",
        hide_env_values = true,
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM file of the server certificate's private key.
    #[arg(
        long,
        env = "JOBD_TLS_KEY_FILE",
        hide_env_values = true,
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// PEM file of the certificate authorities whose client certificates jobd accepts (mTLS):
    /// every client must present one. Needs --tls-cert-file.
    #[arg(
        long,
        env = "JOBD_TLS_CLIENT_CA_FILE",
        hide_env_values = true,
        requires = "tls_cert_file"
    )]
    pub tls_client_ca_file: Option<PathBuf>,

    /// TOML file of the principals that may call jobd: their roles, queues, and credentials
    /// (SHA-256 of bearer tokens, client-certificate identities). Re-read when it changes.
    /// Make entries with `jobd token new`.
    #[arg(long, env = "JOBD_AUTH_FILE", hide_env_values = true)]
    pub auth_file: Option<PathBuf>,

    /// Serve without authentication on an address other than loopback, which is refused
    /// otherwise: anyone who reaches the port may then do anything to any job.
    #[arg(long, env = "JOBD_INSECURE", hide_env_values = true)]
    pub insecure: bool,
}

/// The Redis URL read from a file, and the file's path.
#[derive(Clone)]
pub struct UrlFile {
    pub path: PathBuf,
    url: String,
}

/// An invalid setting found after the flags were read (an auth file that does not parse, say):
/// jobd exits 64 with its one-line message, as for a bad flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "JOBD_LISTEN",
        hide_env_values = true,
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// Also serve gRPC health alone, in plaintext and without credentials, at this address: for
    /// Kubernetes' gRPC probes, which speak no TLS, when jobd serves TLS.
    #[arg(long, env = "JOBD_HEALTH_LISTEN", hide_env_values = true)]
    pub health_listen: Option<SocketAddr>,

    /// Name of this process in Redis' CLIENT LIST and in logs [default: <hostname>-<pid>].
    #[arg(long, env = "JOBD_INSTANCE_ID", hide_env_values = true, value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// Log format: `text` for people, `json` for log pipelines. The level comes from RUST_LOG.
    #[arg(
        long,
        env = "JOBD_LOG_FORMAT",
        hide_env_values = true,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Serve gRPC server reflection (v1 and v1alpha), so grpcurl works without proto files.
    #[arg(long, env = "JOBD_REFLECTION", hide_env_values = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long to keep serving while readiness says NOT_SERVING, so that load
    /// balancers stop sending calls first. Set it to at least the readiness probe's period x
    /// failure threshold plus endpoint propagation; with the shutdown timeout it must fit in
    /// the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "JOBD_SHUTDOWN_DRAIN_DELAY", hide_env_values = true, default_value = "0s", value_parser = parse_duration)]
    pub shutdown_drain_delay: Duration,

    /// After the drain delay, the most the rest of shutdown may take (ending streams, finishing
    /// calls in flight, closing Redis) before the process exits anyway.
    #[arg(long, env = "JOBD_SHUTDOWN_TIMEOUT", hide_env_values = true, default_value = "15s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Args)]
pub struct RedisConfig {
    /// Redis to keep all state in: redis://[:password@]host:port[/db], or rediss://… for TLS;
    /// redis[s]-sentinel://…?sentinelServiceName=<name> behind Sentinel;
    /// redis[s]-cluster://host:port[?node=host:port…] for Redis Cluster. The password is never
    /// logged.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// A file holding the Redis URL (a mounted Secret, say), read at startup; when set it
    /// takes the place of --redis-url.
    #[arg(long, env = "JOBD_REDIS_URL_FILE", hide_env_values = true, value_parser = read_url_file)]
    pub redis_url_file: Option<UrlFile>,

    /// For a rediss:// URL, a PEM file of the certificate authorities to trust for Redis's
    /// certificate [default: the system's].
    #[arg(long, env = "JOBD_REDIS_TLS_CA_FILE", hide_env_values = true)]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// Connections in the command pool; the process holds this many plus one for pub/sub.
    #[arg(long, env = "JOBD_REDIS_POOL_SIZE", hide_env_values = true, default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub redis_pool_size: u16,

    /// How long a Redis command may take before the call fails with UNAVAILABLE.
    #[arg(long, env = "JOBD_REDIS_COMMAND_TIMEOUT", hide_env_values = true, default_value = "2s", value_parser = parse_duration)]
    pub redis_command_timeout: Duration,

    /// Longest pause between reconnection attempts (they back off exponentially up to it).
    #[arg(long, env = "JOBD_REDIS_RECONNECT_MAX_DELAY", hide_env_values = true, default_value = "1s", value_parser = parse_duration)]
    pub redis_reconnect_max_delay: Duration,

    /// Prefix of every key and channel jobd uses, so several deployments can share one Redis.
    #[arg(long, env = "JOBD_REDIS_KEY_PREFIX", hide_env_values = true, default_value = "jobd", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct JobsConfig {
    /// Largest accepted payload or result, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "JOBD_MAX_PAYLOAD_BYTES", hide_env_values = true, default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1..=64 * 1024 * 1024))]
    pub max_payload_bytes: u32,

    /// How long a finished job and its events stay readable, unless the submitter says otherwise.
    #[arg(long, env = "JOBD_RETENTION", hide_env_values = true, default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,

    /// Lease given to a worker that does not ask for one.
    #[arg(long, env = "JOBD_DEFAULT_LEASE", hide_env_values = true, default_value = "30s", value_parser = parse_duration)]
    pub default_lease: Duration,

    /// Longest lease a worker may ask for.
    #[arg(long, env = "JOBD_MAX_LEASE", hide_env_values = true, default_value = "1h", value_parser = parse_duration)]
    pub max_lease: Duration,

    /// Longest a ClaimJob call may wait for a job.
    #[arg(long, env = "JOBD_MAX_CLAIM_WAIT", hide_env_values = true, default_value = "60s", value_parser = parse_duration)]
    pub max_claim_wait: Duration,

    /// How long a worker has to acknowledge a job it claimed (a heartbeat, or its outcome)
    /// unless its claim says otherwise; an unacknowledged job goes back to its queue at no
    /// cost, its claim's reply having perhaps never reached the worker.
    #[arg(long, env = "JOBD_ACK_TIMEOUT", hide_env_values = true, default_value = "5s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
}

/// The shortest lease a worker may ask for: a heartbeat needs at least a round trip.
const MIN_LEASE: Duration = Duration::from_secs(1);

impl Config {
    /// Settings of the whole config that no single flag can check.
    pub fn validate(&self) -> Result<(), String> {
        self.check_perimeter()?;
        let url = url::Url::parse(self.redis.url())
            .ok()
            .filter(|url| {
                matches!(
                    url.scheme(),
                    "redis"
                        | "rediss"
                        | "redis-sentinel"
                        | "rediss-sentinel"
                        | "redis-cluster"
                        | "rediss-cluster"
                )
            })
            .ok_or(
                "invalid REDIS_URL: expected redis[s]://[:password@]host:port[/db], \
                 redis[s]-sentinel://[:password@]host:port[/db]?sentinelServiceName=<name>, or \
                 redis[s]-cluster://[:password@]host:port[?node=host:port…]",
            )?;
        if self.redis.redis_tls_ca_file.is_some() && !url.scheme().starts_with("rediss") {
            return Err("JOBD_REDIS_TLS_CA_FILE is set, but REDIS_URL is not rediss://".into());
        }
        if self.jobs.default_lease < MIN_LEASE || self.jobs.default_lease > self.jobs.max_lease {
            return Err("invalid JOBD_DEFAULT_LEASE: must be between 1s and JOBD_MAX_LEASE".into());
        }
        if self.jobs.ack_timeout < MIN_LEASE || self.jobs.ack_timeout > self.jobs.max_lease {
            return Err("invalid JOBD_ACK_TIMEOUT: must be between 1s and JOBD_MAX_LEASE".into());
        }
        if self.jobs.retention < MIN_RETENTION || self.jobs.retention > MAX_RETENTION {
            return Err("invalid JOBD_RETENTION: must be from 1s to 30 days".into());
        }
        if self.redis.redis_command_timeout.is_zero() {
            return Err("invalid JOBD_REDIS_COMMAND_TIMEOUT: must be above 0".into());
        }
        if self.shutdown.shutdown_timeout.is_zero() {
            return Err("invalid JOBD_SHUTDOWN_TIMEOUT: must be above 0".into());
        }
        self.transport.validate()?;
        Ok(())
    }

    /// Secure by default: jobd serves on a network address only behind an auth file or mTLS,
    /// unless told --insecure.
    fn check_perimeter(&self) -> Result<(), String> {
        let security = &self.security;
        let guarded = security.auth_file.is_some() || security.tls_client_ca_file.is_some();
        if self.server.listen.ip().is_loopback() || guarded || security.insecure {
            return Ok(());
        }
        Err(format!(
            "refusing to serve {} without authentication: set JOBD_AUTH_FILE (see `jobd token \
             new`) or JOBD_TLS_CLIENT_CA_FILE, or JOBD_INSECURE=true to let anyone who reaches \
             it do anything",
            self.server.listen
        ))
    }

    /// Whether anyone who reaches the listen address may call jobd: --insecure on a network
    /// address, without auth file or mTLS.
    pub fn is_insecure(&self) -> bool {
        let security = &self.security;
        !self.server.listen.ip().is_loopback()
            && security.auth_file.is_none()
            && security.tls_client_ca_file.is_none()
    }

    pub fn instance_id(&self) -> String {
        self.server
            .instance_id
            .clone()
            .unwrap_or_else(default_instance_id)
    }

    pub fn lease_limits(&self) -> LeaseLimits {
        LeaseLimits {
            min_lease: MIN_LEASE,
            max_lease: self.jobs.max_lease,
            max_wait: self.jobs.max_claim_wait,
            default_ack: self.jobs.ack_timeout,
        }
    }
}

impl TransportConfig {
    fn validate(&self) -> Result<(), String> {
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
        ];
        for (name, value) in at_least_a_second {
            if value < Duration::from_secs(1) {
                return Err(format!("invalid {name}: must be at least 1s"));
            }
        }
        Ok(())
    }
}

impl RedisConfig {
    /// The Redis URL: the file's, if one was given.
    pub fn url(&self) -> &str {
        match &self.redis_url_file {
            Some(file) => &file.url,
            None => &self.redis_url,
        }
    }

    /// The Redis URL with any password replaced, safe for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url())
    }
}

// Written by hand so that the password in the URL can never reach a log through `{:?}`.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("redis_url", &self.redacted_url())
            .field(
                "redis_url_file",
                &self.redis_url_file.as_ref().map(|file| &file.path),
            )
            .field("redis_pool_size", &self.redis_pool_size)
            .field("redis_command_timeout", &self.redis_command_timeout)
            .field("redis_reconnect_max_delay", &self.redis_reconnect_max_delay)
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .finish()
    }
}

/// Replaces the user name and password of a URL. An unparsable URL is hidden whole, since
/// it may still hold a password.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("REDACTED"));
            }
            url.to_string()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// Reads the Redis URL from a file when the flags are read, so that a missing file is named as
/// a bad flag. Its content never appears in the error.
fn read_url_file(path: &str) -> Result<UrlFile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    let url = text.trim().to_owned();
    if url.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(UrlFile {
        path: path.into(),
        url,
    })
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 500ms, 2s, 24h)"))
}

fn parse_instance_id(value: &str) -> Result<String, String> {
    check_token(value, 64).map(|()| value.to_owned())
}

fn parse_key_prefix(value: &str) -> Result<String, String> {
    check_token(value, 64).map(|()| value.to_owned())
}

/// Instance ids and key prefixes appear in Redis client names and keys: no spaces, no braces.
fn check_token(value: &str, max: usize) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {max} characters of A-Z a-z 0-9 . _ -"
        ))
    }
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(48)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "jobd".to_owned());
    format!("{host}-{}", std::process::id())
}

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
    /// Most WatchJob and SubmitAndWatchJobs streams open at once. 5,000: what a 512 MiB pod
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
    /// with a wait). 5,000: as streams, what a 512 MiB pod holds with the other budgets full.
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

    /// Most payload and result bytes held at once by calls in flight: submissions' payloads
    /// and completions' results while they are written, large results while a stream sends
    /// them (those wait for room instead of failing). 16 MiB: the largest request fits, and
    /// what they cost (some 5.5 times their bytes) fits a 512 MiB pod with the other budgets.
    #[arg(long, env = "JOBD_MAX_PAYLOAD_BYTES_IN_FLIGHT", hide_env_values = true,
          default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes_in_flight: u64,

    /// Most payload and result bytes in flight for one principal (with an auth file). 16 MiB:
    /// the largest request (16 MiB) must fit.
    #[arg(long, env = "JOBD_MAX_PAYLOAD_BYTES_IN_FLIGHT_PER_PRINCIPAL", hide_env_values = true,
          default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes_in_flight_per_principal: u64,

    /// Most events a job's log holds, near enough: from this sequence on, a progress event
    /// replaces the progress event before it instead of adding one, so that a loop of
    /// heartbeats cannot grow a job without bound. Every other event is always kept. 256:
    /// one page of a replay (one bounded HMGET), under 100 KiB of progress messages.
    #[arg(long, env = "JOBD_MAX_EVENTS_PER_JOB", hide_env_values = true, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
    pub max_events_per_job: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let shown = redact_url("redis://:hunter2@db:6379/0");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:6379"));
        let shown = redact_url("redis://admin:hunter2@db:6379");
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = redact_url("rediss://:hunter2@db.example.com:6380");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.starts_with("rediss://"), "{shown}");
        assert_eq!(redact_url("not a url :hunter2@"), "<unparsable URL>");
    }

    #[test]
    fn debug_output_has_no_password() {
        let config =
            Config::try_parse_from(["jobd", "--redis-url", "redis://:s3cret@h:1"]).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::try_parse_from(["jobd"]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.redis.redis_pool_size, 4);
    }
}
