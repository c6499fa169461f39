//! Configuration: plain data, one sub-struct per part, read from flags and the environment.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use self::{
    limits::{BudgetsConfig, QueueLimitsConfig, TransportConfig},
    redis::{RedisConfig, UrlFile, redact_url},
};
use crate::domain::{LeaseLimits, MAX_RETENTION, MIN_RETENTION};

mod limits;
mod redis;

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

#[cfg(test)]
mod tests;
