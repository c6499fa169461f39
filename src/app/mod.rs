//! The composition root: builds every part of jobd from a `Config`, runs them until a signal,
//! then shuts them down in order.

mod perimeter;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::perimeter::Perimeter;
use crate::{
    api::{self, Limits, ServerOptions, Services},
    background::{self, Sweeper, SweeperHandle},
    budgets::{BudgetLimits, Budgets, WatcherLimits},
    claims::{ClaimSettings, Claims},
    completions::Completions,
    config::{BudgetsConfig, Config},
    domain::SubmitLimits,
    events::{Channels, EventHub},
    queues::QueueAdmission,
    redis::RedisClients,
    store::{JobStore, Keys, StoreSettings},
    submissions::Submissions,
    telemetry::{self, AttributeCaps, Metrics, QueueDepths},
};

/// The longest a readiness PING may take before Redis counts as unreachable.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// QUIT gets at least this long, even when the shutdown deadline has passed.
const MIN_QUIT_TIME: Duration = Duration::from_millis(500);

pub struct App {
    config: Config,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    clients: RedisClients,
    services: Services,
    perimeter: Perimeter,
    tracker: TaskTracker,
}

impl App {
    /// Connects to Redis (without waiting longer than the command timeout for it to answer)
    /// and binds the listener, so `local_addr` is known before `run`.
    /// A bad auth file or TLS file fails with `InvalidSetting`, before anything starts.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let perimeter = Perimeter::load(&config)?;
        let instance = config.instance_id();
        let clients =
            RedisClients::build(&config.redis, &instance).context("invalid Redis configuration")?;
        let keys = Keys::new(&config.redis.redis_key_prefix);
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::global(AttributeCaps {
            queues: config.transport.metrics_max_queues as usize,
            kinds: config.transport.metrics_max_kinds as usize,
        });
        let sweeper = SweeperHandle::default();
        let hub = connect(&config, &clients, &keys, &metrics, &tracker, &shutdown).await;

        tracing::info!(?config, "effective configuration");
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let health_listener = match config.server.health_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (health)"))?,
            ),
            None => None,
        };
        let settings = StoreSettings {
            default_lease: config.jobs.default_lease,
            max_events_per_job: config.budgets.max_events_per_job,
        };
        let store = JobStore::new(clients.pool.clone(), keys, settings, metrics.clone());
        let services = services(&config, store, hub, sweeper, metrics, &tracker, shutdown);
        tracing::info!(
            instance = %instance,
            listen = %listener.local_addr()?,
            tls = perimeter.tls.is_some(),
            health_listen = health_listener
                .as_ref()
                .and_then(|listener| listener.local_addr().ok())
                .map(tracing::field::display),
            redis = %config.redis.redacted_url(),
            pool_size = config.redis.redis_pool_size,
            "jobd started"
        );
        Ok(Self {
            config,
            listener,
            health_listener,
            clients,
            services,
            perimeter,
            tracker,
        })
    }

    /// The instruments this process records, e.g. to read how many claims wait now.
    pub fn metrics(&self) -> Metrics {
        self.services.metrics.clone()
    }

    /// Where health alone is served, with --health-listen.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        let listener = self.health_listener.as_ref()?;
        listener.local_addr().ok()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `signal` resolves, then shuts down in order (see `shut_down`).
    pub async fn run(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let draining = CancellationToken::new();
        let ready = self.spawn_background(&draining);
        let shutdown = self.services.shutdown.clone();
        let tracker = self.tracker.clone();
        self.perimeter.follow(&tracker, &shutdown);
        let options = ServerOptions {
            reflection: self.config.server.reflection,
            gate: self.perimeter.gate.clone(),
            tls: self.perimeter.tls.clone(),
            health_listener: self.health_listener.take(),
            transport: transport(&self.config),
        };
        let server = api::serve(
            std::sync::Arc::new(self.services),
            self.listener,
            options,
            ready,
            &tracker,
            shutdown.clone().cancelled_owned(),
        );
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = signal => {}
        }
        let parts = Running {
            config: self.config,
            clients: self.clients,
            tracker: self.tracker,
            shutdown,
            draining,
        };
        parts.shut_down(server).await
    }

    /// Starts the sweeper, the queue-depth refresher (when metrics are exported) and the
    /// readiness probe; returns what readiness says.
    fn spawn_background(&self, draining: &CancellationToken) -> watch::Receiver<bool> {
        let services = &self.services;
        let shutdown = &services.shutdown;
        let sweeper = Sweeper::new(
            services.store.clone(),
            services.metrics.clone(),
            services.sweeper.clone(),
        );
        self.tracker.spawn(sweeper.run(shutdown.clone()));
        if let Some(interval) = telemetry::metrics_export_interval() {
            let depths = QueueDepths::default();
            services.metrics.observe_queue_depths(depths.clone());
            let refresh = background::refresh_queue_depths(
                services.store.clone(),
                depths,
                interval,
                shutdown.clone(),
            );
            self.tracker.spawn(refresh);
        }
        let (ready, readiness) = watch::channel(false);
        let probe_timeout = self
            .config
            .redis
            .redis_command_timeout
            .min(READINESS_PROBE_TIMEOUT);
        self.tracker.spawn(background::keep_ready(
            ready,
            self.clients.clone(),
            probe_timeout,
            draining.clone(),
            shutdown.clone(),
        ));
        readiness
    }
}

/// What shutdown needs once the server runs.
struct Running {
    config: Config,
    clients: RedisClients,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    draining: CancellationToken,
}

impl Running {
    /// Shuts down in order, with `server` still serving:
    /// 1. readiness turns NOT_SERVING at once;
    /// 2. calls are still served for the drain delay, while load balancers take the pod out;
    /// 3. the server stops accepting calls; open WatchJob streams end with UNAVAILABLE naming
    ///    the sequence to resume after, waiting claims return no job, unary calls finish;
    /// 4. tracked tasks stop, Redis connections QUIT.
    ///
    /// Steps 3 and 4 share the shutdown timeout, so a misbehaving peer cannot hold the process.
    async fn shut_down(
        self,
        mut server: std::pin::Pin<&mut impl Future<Output = anyhow::Result<()>>>,
    ) -> anyhow::Result<()> {
        let drain = self.config.shutdown.shutdown_drain_delay;
        tracing::info!(drain = %humantime::format_duration(drain), "shutting down: readiness off, draining");
        self.draining.cancel();
        tokio::select! {
            result = &mut server => return result,
            () = tokio::time::sleep(drain) => {}
        }

        tracing::info!("no longer accepting calls; ending streams");
        let deadline = Instant::now() + self.config.shutdown.shutdown_timeout;
        self.shutdown.cancel();
        match tokio::time::timeout_at(deadline, server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!("calls still open at the shutdown deadline were dropped"),
        }
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks still running at the shutdown deadline");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.clients.quit(left.max(MIN_QUIT_TIME)).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Connects the pool, starts the event hub on the subscriber, and waits for Redis at most the
/// command timeout.
async fn connect(
    config: &Config,
    clients: &RedisClients,
    keys: &Keys,
    metrics: &Metrics,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> EventHub {
    clients.connect_pool(tracker, shutdown, metrics);
    let hub = EventHub::new(WatcherLimits {
        per_job: config.budgets.max_watchers_per_job,
        per_job_per_principal: config.budgets.max_watchers_per_job_per_principal,
    });
    let channels = Channels {
        jobs: keys.job_channel(),
        queues: keys.queue_channel(),
    };
    let subscriber = clients.subscriber.clone();
    let name = clients.client_name("subscriber");
    hub.start(
        subscriber,
        name,
        channels,
        metrics.clone(),
        tracker,
        shutdown.clone(),
    );
    let connection_state = clients.clone();
    metrics.observe_redis(move || connection_state.connected());
    if !clients
        .wait_connected(config.redis.redis_command_timeout)
        .await
    {
        tracing::warn!(
            redis = %config.redis.redacted_url(),
            "Redis is not reachable yet; calls fail with UNAVAILABLE until it is"
        );
    }
    hub
}

/// The HTTP/2 and TCP settings of every connection.
fn transport(config: &Config) -> api::Transport {
    let transport = &config.transport;
    api::Transport {
        max_concurrent_streams: transport.max_concurrent_streams,
        max_connections: transport.max_connections as usize,
        http2_keepalive_interval: transport.http2_keepalive_interval,
        http2_keepalive_timeout: transport.http2_keepalive_timeout,
        tcp_keepalive: transport.tcp_keepalive,
        tcp_keepalive_interval: transport.tcp_keepalive_interval,
        tcp_keepalive_retries: transport.tcp_keepalive_retries,
        max_connection_age: transport.max_connection_age,
        max_connection_age_grace: transport.max_connection_age_grace,
        max_local_error_resets: transport.http2_max_local_error_resets as usize,
        send_timeout: transport.send_timeout,
    }
}

/// The use cases and what the API needs of them.
#[allow(clippy::too_many_arguments)]
fn services(
    config: &Config,
    store: JobStore,
    hub: EventHub,
    sweeper: SweeperHandle,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Services {
    let command_timeout = config.redis.redis_command_timeout;
    let store_for_admission = store.clone();
    let budgets = Budgets::new(budget_limits(&config.budgets));
    let claim_settings = ClaimSettings {
        waiting: budgets.waiting_claims.clone(),
        payload: budgets.payload_bytes.clone(),
        default_lease: config.jobs.default_lease,
        command_timeout,
    };
    let claims = Claims::new(
        store.clone(),
        hub.clone(),
        metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
        claim_settings,
    );
    let submissions = Submissions::new(
        store.clone(),
        claims.clone(),
        tracker.clone(),
        command_timeout,
    );
    let completions = Completions::new(store.clone(), tracker.clone(), command_timeout);
    let max_payload = config.jobs.max_payload_bytes as usize;
    let limits = Limits {
        submit: SubmitLimits {
            max_payload,
            default_retention: config.jobs.retention,
            leases: config.lease_limits(),
        },
        leases: config.lease_limits(),
        max_payload,
        max_queues_per_principal: config.queues.max_queues_per_principal,
    };
    Services {
        store,
        submissions,
        claims,
        completions,
        hub,
        sweeper,
        admission: QueueAdmission::new(store_for_admission),
        metrics,
        limits,
        budgets,
        shutdown,
    }
}

fn budget_limits(config: &BudgetsConfig) -> BudgetLimits {
    BudgetLimits {
        watch_streams: config.max_watch_streams,
        watch_streams_per_principal: config.max_watch_streams_per_principal,
        waiting_claims: config.max_waiting_claims,
        waiting_claims_per_principal: config.max_waiting_claims_per_principal,
        watchers_per_job: config.max_watchers_per_job,
        payload_bytes: config.max_payload_bytes_in_flight,
        payload_bytes_per_principal: config.max_payload_bytes_in_flight_per_principal,
        stream_result_bytes: config.max_stream_result_bytes_in_flight,
    }
}
