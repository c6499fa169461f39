//! Where Redis is and how jobd talks to it; its URL may hold a password, which nothing prints.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{parse_duration, parse_key_prefix};

/// The Redis URL read from a file, and the file's path.
#[derive(Clone)]
pub struct UrlFile {
    pub path: PathBuf,
    url: String,
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
