//! The process's Redis connections: one command pool and one subscriber, built at startup,
//! over TLS for a rediss:// URL, named in CLIENT LIST, bounded in time, and closed with QUIT
//! on shutdown.

use std::{path::Path, sync::Arc, time::Duration};

use fred::{
    clients::{Client, Pool, SubscriberClient, WithOptions},
    error::ErrorKind,
    interfaces::{ClientInterface, ClientLike, ClusterInterface, EventInterface},
    prelude::ReconnectPolicy,
    types::{
        Builder,
        config::{
            Config as FredConfig, Options, Server, TcpConfig, TlsConnector, UnresponsiveConfig,
        },
    },
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::RedisConfig, telemetry::Metrics};

/// Broadcast capacity of the subscriber's message channel. A burst beyond it makes the
/// dispatcher lag, which it answers with a resync of every watcher (see `events`).
const PUBSUB_CAPACITY: usize = 16 * 1024;

/// The Redis clients of one jobd process: `pool size + 1` clients, each holding one
/// connection, or one per primary on Redis Cluster.
#[derive(Clone)]
pub struct RedisClients {
    pub pool: Pool,
    pub subscriber: SubscriberClient,
    instance: String,
}

impl RedisClients {
    /// Builds the clients without connecting. Commands time out after the configured command
    /// timeout; commands written while Redis is away fail by then instead of queueing without
    /// bound, and are not replayed after they timed out.
    pub fn build(config: &RedisConfig, instance: &str) -> Result<Self, fred::error::Error> {
        let mut fred_config = FredConfig::from_url(config.url())?;
        // rediss:// gets fred's TLS with the system's roots; a CA file replaces them.
        if let Some(path) = &config.redis_tls_ca_file {
            fred_config.tls = Some(TlsConnector::from(trusting(path)?).into());
        }
        // Keep retrying the first connection too: jobd starts and reports NOT_SERVING until
        // Redis answers, rather than crash-looping.
        fred_config.fail_fast = false;
        let timeout = config.redis_command_timeout;
        let max_delay =
            u32::try_from(config.redis_reconnect_max_delay.as_millis()).unwrap_or(u32::MAX);
        let mut builder = Builder::from_config(fred_config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                50,
                max_delay.max(50),
                2,
            ))
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout;
                connection.internal_command_timeout = timeout;
                connection.max_command_attempts = 2;
                connection.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(timeout),
                    interval: Duration::from_millis(500).min(timeout),
                };
                connection.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = timeout;
            });
        let pool = builder.build_pool(usize::from(config.redis_pool_size))?;
        // Only the subscriber needs room for bursts: every fred client allocates its
        // broadcast channels whole, so the pool keeps fred's small default.
        builder.with_performance_config(|performance| {
            performance.broadcast_channel_capacity = PUBSUB_CAPACITY;
        });
        Ok(Self {
            pool,
            subscriber: builder.build_subscriber_client()?,
            instance: instance.to_owned(),
        })
    }

    /// The CLIENT SETNAME name of a connection: `jobd:<instance>:<role>`.
    pub fn client_name(&self, role: &str) -> String {
        format!("jobd:{}:{role}", self.instance)
    }

    /// Starts the pool's connections and keeps each one named across reconnects. The
    /// subscriber is connected by the event hub, which must name and subscribe it in order.
    pub fn connect_pool(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        metrics: &Metrics,
    ) {
        for (index, client) in self.pool.clients().iter().enumerate() {
            // Subscribe to connection events before connecting, so the first one is seen.
            let reconnects = client.reconnect_rx();
            tracker.spawn(keep_named(
                client.clone(),
                reconnects,
                self.client_name(&format!("pool-{index}")),
                metrics.clone(),
                shutdown.clone(),
            ));
            client.connect();
        }
    }

    /// Waits until every connection is up, or gives up after `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let all = async {
            let _ = self.pool.wait_for_connect().await;
            let _ = self.subscriber.wait_for_connect().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Whether every pool connection, and the subscriber, is connected, by fred's account.
    pub fn connected(&self) -> (bool, bool) {
        let pool = self
            .pool
            .clients()
            .iter()
            .all(|client| client.is_connected());
        (pool, self.subscriber.is_connected())
    }

    /// Closes every connection with QUIT, waiting at most `timeout`.
    pub async fn quit(&self, timeout: Duration) {
        let quit = async {
            let (pool, subscriber) = tokio::join!(self.pool.quit(), self.subscriber.quit());
            for result in [pool, subscriber] {
                if let Err(error) = result {
                    tracing::debug!(%error, "QUIT failed; the connection closes anyway");
                }
            }
        };
        if tokio::time::timeout(timeout, quit).await.is_err() {
            tracing::warn!("Redis QUIT did not finish in time; closing connections");
        }
    }
}

/// A TLS client configuration that trusts the certificate authorities in the PEM file at
/// `path`, and only them.
fn trusting(path: &Path) -> Result<rustls::ClientConfig, fred::error::Error> {
    let tls_error = |what: String| fred::error::Error::new(ErrorKind::Tls, what);
    let shown = path.display();
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| tls_error(format!("cannot read the CA file {shown}: {error}")))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|error| tls_error(format!("CA file {shown}: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| tls_error(format!("CA file {shown}: {error}")))?;
    }
    if roots.is_empty() {
        return Err(tls_error(format!("CA file {shown} holds no certificate")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `client` once per connection it holds, each copy sending its commands with `options`
/// over that connection only: on Redis Cluster one per primary (fred sends a command without
/// a key to whichever node it likes), elsewhere the client's one connection. Empty while a
/// cluster client knows no primary yet.
pub(super) fn per_connection<C>(client: &C, options: &Options) -> Vec<WithOptions<C>>
where
    C: ClientLike + ClusterInterface,
{
    if !client.is_clustered() {
        return vec![client.with_options(options)];
    }
    let primaries: Vec<Server> = client
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default();
    primaries
        .into_iter()
        .map(|server| {
            client.with_options(&Options {
                cluster_node: Some(server),
                ..options.clone()
            })
        })
        .collect()
}

/// Tells a client's reconnections from its first connections. fred reports both alike, once
/// per connection made, and on Redis Cluster its first connect makes one per primary.
#[derive(Debug, Default)]
pub struct Reconnections {
    /// First connections not yet reported; unknown until the first report.
    first_left: Option<usize>,
}

impl Reconnections {
    /// Whether the connection `client` just reported is a reconnection.
    pub fn counts<C: ClientLike + ClusterInterface>(&mut self, client: &C) -> bool {
        // At the first report fred has read the cluster's layout already.
        self.is_reconnection(|| per_connection(client, &Options::default()).len())
    }

    /// The same, with `connections` how many the client holds when connected.
    fn is_reconnection(&mut self, connections: impl FnOnce() -> usize) -> bool {
        let left = self.first_left.get_or_insert_with(|| connections().max(1));
        if *left == 0 {
            return true;
        }
        *left -= 1;
        false
    }
}

/// Names every connection of `client` `name` (CLIENT SETNAME), so that each shows in CLIENT
/// LIST as jobd's; the first error, if any, once all were tried.
pub async fn name_connections<C>(client: &C, name: &str) -> Result<(), fred::error::Error>
where
    C: ClientInterface + ClusterInterface,
{
    let connections = per_connection(client, &Options::default());
    let names = connections
        .iter()
        .map(|connection| connection.client_setname(name.to_owned()));
    futures::future::join_all(names).await.into_iter().collect()
}

/// Names the client's connections on every (re)connect. fred reports the first connections
/// as reconnections too, so this also names them the first time.
async fn keep_named(
    client: Client,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    name: String,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut reconnections = Reconnections::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            event = reconnects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if reconnections.counts(&client) {
                        metrics.redis_reconnect("pool");
                    }
                    if let Err(error) = name_connections(&client, &name).await {
                        tracing::warn!(%error, %name, "could not name a Redis connection");
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reports_beyond_the_first_connections_are_reconnections() {
        let mut single = Reconnections::default();
        let reports: Vec<bool> = (0..3).map(|_| single.is_reconnection(|| 1)).collect();
        assert_eq!(reports, [false, true, true]);
        // Three primaries: three first connections, read once.
        let mut cluster = Reconnections::default();
        let mut primaries = vec![3];
        let reports: Vec<bool> = (0..5)
            .map(|_| cluster.is_reconnection(|| primaries.pop().unwrap()))
            .collect();
        assert_eq!(reports, [false, false, false, true, true]);
        // A cluster whose layout is not known yet still has a first connection.
        let mut unknown = Reconnections::default();
        assert!(!unknown.is_reconnection(|| 0));
        assert!(unknown.is_reconnection(|| 0));
    }
}
