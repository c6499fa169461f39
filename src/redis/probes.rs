//! What readiness asks of Redis: whether it answers, how recent it is, and what it may evict
//! when full. Each question works for jobd's least-privilege ACL user (docs/security.md),
//! which may send neither INFO nor CONFIG.

use std::{collections::HashMap, time::Duration};

use fred::{
    clients::{Client, WithOptions},
    error::ErrorKind,
    interfaces::{ClientLike, ConfigInterface},
    types::{ClusterHash, CustomCommand, Value, Version, config::Options},
};

use super::{RedisClients, clients::per_connection};

/// What Redis may evict when it reaches its `maxmemory` (its `maxmemory-policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// Nothing: the policy is `noeviction` (writes fail past the limit) or there is no limit.
    Never,
    /// Keys with an expiry (a `volatile-*` policy): finished jobs and idempotency keys may go
    /// before their retention or TTL ends; queued and running jobs, which have none, stay.
    KeysWithExpiry(String),
    /// Any key (an `allkeys-*` policy): queued and running jobs may vanish without a trace.
    AnyKey(String),
    /// Redis would not say: CONFIG renamed (as on some managed services), or not permitted to
    /// jobd's user (NOPERM, the least-privilege ACL); the reason is Redis's answer.
    Unknown(String),
}

impl Eviction {
    /// How much of what jobd keeps the policy puts at risk, for picking the worst of several.
    fn risk(&self) -> u8 {
        match self {
            Eviction::Never => 0,
            Eviction::KeysWithExpiry(_) => 1,
            Eviction::Unknown(_) => 2,
            Eviction::AnyKey(_) => 3,
        }
    }
}

/// The oldest Redis jobd runs on: its scripts declare their flags in a shebang (Redis 7.0).
/// Valkey reports the Redis version it is compatible with, so it passes as well.
pub const MIN_REDIS_VERSION: Version = Version::new(7, 0, 0);

/// Whether a Redis of `version` runs jobd's scripts.
pub fn supported(version: &Version) -> bool {
    *version >= MIN_REDIS_VERSION
}

impl RedisClients {
    /// Whether Redis answers: every pool connection (on Redis Cluster, the connection to
    /// every primary) answers PING within `timeout`, and the subscriber is connected. A
    /// frozen Redis keeps its sockets open, so a PING is the only way to tell.
    pub async fn healthy(&self, timeout: Duration) -> bool {
        if !self.subscriber.is_connected() {
            return false;
        }
        let options = probe_options(timeout);
        let pings = self.pool.clients().iter().map(|client| {
            let connections = per_connection(client, &options);
            async move {
                let pings = connections
                    .iter()
                    .map(|connection| connection.ping::<String>(None));
                client.is_connected()
                    && !connections.is_empty()
                    && futures::future::join_all(pings)
                        .await
                        .iter()
                        .all(Result::is_ok)
            }
        });
        futures::future::join_all(pings)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    /// What Redis may evict when it runs out of memory (CONFIG GET maxmemory*), asked once
    /// within `timeout`; `None` when Redis did not answer. On Redis Cluster every primary is
    /// asked, each having settings of its own, and the answer is the worst of theirs.
    pub async fn eviction(&self, timeout: Duration) -> Option<Eviction> {
        let connections = per_connection(self.pool.next(), &probe_options(timeout));
        let answers = futures::future::join_all(connections.iter().map(eviction_of)).await;
        answers
            .into_iter()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max_by_key(Eviction::risk)
    }

    /// The Redis server's version: as fred read it (INFO server) when the pool connected or,
    /// where INFO is refused (the least-privilege ACL), as HELLO tells it within `timeout`;
    /// `None` when neither says.
    pub async fn server_version(&self, timeout: Duration) -> Option<Version> {
        let client = self.pool.next();
        if let Some(version) = client.server_version() {
            return Some(version);
        }
        version_from_hello(&client.with_options(&probe_options(timeout))).await
    }
}

/// The version HELLO reports. Every user may send HELLO (like AUTH, it needs no permission),
/// and without arguments it changes nothing on the connection.
async fn version_from_hello(connection: &WithOptions<Client>) -> Option<Version> {
    let hello = CustomCommand::new_static("HELLO", ClusterHash::Random, false);
    let reply: Value = connection.custom(hello, Vec::<Value>::new()).await.ok()?;
    version_in_hello(reply)
}

/// The `version` field of a HELLO reply: a map, or in RESP2 a flat array of names and values.
fn version_in_hello(reply: Value) -> Option<Version> {
    let fields: HashMap<String, Value> = reply.convert().ok()?;
    Version::parse(&fields.get("version")?.as_string()?).ok()
}

/// What the Redis behind `connection` may evict (see `RedisClients::eviction`).
async fn eviction_of(connection: &WithOptions<Client>) -> Option<Eviction> {
    let settings: Vec<String> = match connection.config_get("maxmemory*").await {
        Ok(settings) => settings,
        Err(error) => {
            return match error.kind() {
                ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled => None,
                // An answer, but no settings: CONFIG renamed away ("unknown command"), or not
                // permitted to jobd's user ("NOPERM", the least-privilege ACL).
                _ => Some(Eviction::Unknown(error.details().to_owned())),
            };
        }
    };
    let setting = |name: &str| {
        settings
            .chunks_exact(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str())
    };
    let policy = setting("maxmemory-policy").unwrap_or("noeviction");
    Some(match setting("maxmemory") {
        // Without a memory limit Redis evicts nothing, whatever the policy.
        Some("0") | None => Eviction::Never,
        _ if policy == "noeviction" => Eviction::Never,
        _ if policy.starts_with("volatile-") => Eviction::KeysWithExpiry(policy.to_owned()),
        _ => Eviction::AnyKey(policy.to_owned()),
    })
}

/// A health probe's command: one attempt, answered within `timeout`.
fn probe_options(timeout: Duration) -> Options {
    Options {
        timeout: Some(timeout),
        max_attempts: Some(1),
        ..Options::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_7_and_later_are_supported() {
        let version = |text: &str| Version::parse(text).unwrap();
        assert!(supported(&version("7.0.15")));
        // Valkey 8 reports the Redis version it is compatible with.
        assert!(supported(&version("7.2.4")));
        assert!(!supported(&version("6.2.14")));
    }

    #[test]
    fn hello_tells_the_version() {
        // HELLO's reply over RESP2, as Redis 7.0 sends it.
        let field = |text: &str| Value::from(text);
        let reply = Value::Array(vec![
            field("server"),
            field("redis"),
            field("version"),
            field("7.0.15"),
            field("proto"),
            Value::Integer(2),
            field("modules"),
            Value::Array(Vec::new()),
        ]);
        assert_eq!(version_in_hello(reply), Some(Version::new(7, 0, 15)));
        assert_eq!(version_in_hello(Value::Array(vec![field("proto")])), None);
    }
}
