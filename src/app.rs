//! Builds every part of jobd from a `Config`, and runs it until shutdown.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        DeadlineLayer, JobApi, ObserveLayer, Readiness, WorkerApi,
        proto::{
            self, job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
        },
    },
    background::{self, Sweeper, SweeperHandle},
    config::Config,
    domain::SubmitLimits,
    events::{Channels, EventHub},
    store::{self, Eviction, JobStore, Keys, RedisClients, StoreSettings},
    telemetry::{self, Metrics, QueueDepths},
};

/// How often readiness is checked: it follows Redis within this plus the probe timeout.
const READINESS_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a readiness PING may take before Redis counts as unreachable.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// QUIT gets at least this long, even when the shutdown deadline has passed.
const MIN_QUIT_TIME: Duration = Duration::from_millis(500);

/// Room for the rest of a request beside a payload of the maximum size, so that an oversized
/// payload reaches validation and gets a status that names it.
const REQUEST_OVERHEAD: usize = 64 * 1024;

/// The largest SubmitJobs request, whatever the payload limit of each job.
const BATCH_REQUEST_LIMIT: usize = 16 * 1024 * 1024;

pub struct App {
    config: Config,
    listener: TcpListener,
    clients: RedisClients,
    hub: EventHub,
    store: JobStore,
    sweeper: SweeperHandle,
    metrics: Metrics,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl App {
    /// Connects to Redis (without waiting longer than the command timeout for it to answer)
    /// and binds the listener, so `local_addr` is known before `run`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let instance = config.instance_id();
        let clients =
            RedisClients::build(&config.redis, &instance).context("invalid Redis configuration")?;
        let keys = Keys::new(&config.redis.redis_key_prefix);
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();

        let metrics = Metrics::global();
        clients.connect_pool(&tracker, &shutdown, &metrics);
        let sweeper = SweeperHandle::default();
        let touched = sweeper.clone();
        let hub = EventHub::new(move |job_id| touched.touch(job_id));
        hub.start(
            clients.subscriber.clone(),
            clients.client_name("subscriber"),
            Channels {
                jobs: keys.job_channel(),
                queues: keys.queue_channel(),
            },
            metrics.clone(),
            &tracker,
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

        tracing::info!(?config, "effective configuration");
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let store = JobStore::new(
            clients.pool.clone(),
            keys,
            StoreSettings {
                default_lease: config.jobs.default_lease,
                max_lease: config.jobs.max_lease,
                command_timeout: config.redis.redis_command_timeout,
            },
            metrics.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        tracing::info!(
            instance = %instance,
            listen = %listener.local_addr()?,
            redis = %config.redis.redacted_url(),
            pool_size = config.redis.redis_pool_size,
            "jobd started"
        );
        Ok(Self {
            config,
            listener,
            clients,
            hub,
            store,
            sweeper,
            metrics,
            tracker,
            shutdown,
        })
    }

    /// The instruments this process records, e.g. to read how many claims wait now.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `signal` resolves, then shuts down in order:
    /// 1. readiness turns NOT_SERVING at once;
    /// 2. calls are still served for the drain delay, while load balancers take the pod out;
    /// 3. the server stops accepting calls; open WatchJob streams end with UNAVAILABLE naming
    ///    the sequence to resume after, waiting claims return no job, unary calls finish;
    /// 4. tracked tasks stop, Redis connections QUIT.
    ///
    /// Steps 3 and 4 share the shutdown timeout, so a misbehaving peer cannot hold the process.
    pub async fn run(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let max_payload = self.config.jobs.max_payload_bytes as usize;
        let decode_limit = max_payload + REQUEST_OVERHEAD;
        let sweeper = Sweeper::new(
            self.store.clone(),
            self.metrics.clone(),
            self.sweeper.clone(),
        );
        self.tracker
            .spawn(sweeper.run(self.hub.resyncs(), self.shutdown.clone()));
        if let Some(interval) = telemetry::metrics_export_interval() {
            let depths = QueueDepths::default();
            self.metrics.observe_queue_depths(depths.clone());
            self.tracker.spawn(background::refresh_queue_depths(
                self.store.clone(),
                depths,
                interval,
                self.shutdown.clone(),
            ));
        }
        let job_api = JobApi::new(
            self.store.clone(),
            self.hub.clone(),
            self.metrics.clone(),
            self.sweeper.clone(),
            SubmitLimits {
                max_payload,
                default_retention: self.config.jobs.retention,
                leases: self.config.lease_limits(),
            },
            self.shutdown.clone(),
        );
        let worker_api = WorkerApi::new(
            self.store.clone(),
            self.hub.clone(),
            self.metrics.clone(),
            self.sweeper.clone(),
            self.config.lease_limits(),
            max_payload,
            self.shutdown.clone(),
        );

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let draining = CancellationToken::new();
        // Registered before serving starts: NOT_SERVING until the first probe says otherwise.
        let mut readiness = Readiness::new(health_reporter);
        readiness.set(false).await;
        self.tracker.spawn(keep_readiness(
            readiness,
            self.clients.clone(),
            self.config
                .redis
                .redis_command_timeout
                .min(READINESS_PROBE_TIMEOUT),
            draining.clone(),
            self.shutdown.clone(),
        ));

        // Both reflection versions, so that every grpcurl release works.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Observe outside Deadline, so that a call ended at its deadline is recorded as such;
        // tonic's own timeout wraps both, and Deadline leaves it nothing to end (see
        // api/deadline.rs).
        let mut routes = Server::builder()
            .layer(ObserveLayer::new(self.metrics.clone()))
            .layer(DeadlineLayer)
            .add_service(health_service)
            .add_service(
                JobServiceServer::new(job_api)
                    .max_decoding_message_size(decode_limit.max(BATCH_REQUEST_LIMIT)),
            )
            .add_service(
                WorkerServiceServer::new(worker_api).max_decoding_message_size(decode_limit),
            );
        if self.config.server.reflection {
            routes = routes
                .add_service(reflection().build_v1()?)
                .add_service(reflection().build_v1alpha()?);
        }
        // Small gRPC frames must not wait for Nagle's algorithm (and the peer's delayed ACK).
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let server =
            routes.serve_with_incoming_shutdown(incoming, self.shutdown.clone().cancelled_owned());
        tokio::pin!(server);

        tokio::select! {
            result = &mut server => return result.context("gRPC server failed"),
            () = signal => {}
        }

        let drain = self.config.shutdown.shutdown_drain_delay;
        tracing::info!(drain = %humantime::format_duration(drain), "shutting down: readiness off, draining");
        draining.cancel();
        tokio::select! {
            result = &mut server => return result.context("gRPC server failed"),
            () = tokio::time::sleep(drain) => {}
        }

        tracing::info!("no longer accepting calls; ending streams");
        let deadline = Instant::now() + self.config.shutdown.shutdown_timeout;
        self.shutdown.cancel();
        match tokio::time::timeout_at(deadline, server).await {
            Ok(result) => result.context("gRPC server failed")?,
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

/// Keeps the readiness of jobd's services true to Redis' health until shutdown: checked every
/// `READINESS_INTERVAL`, and NOT_SERVING for good once draining starts. Redis is healthy when
/// it answers, is recent enough for the scripts (see `runs_scripts`) and cannot evict the jobs
/// it holds (see `keeps_jobs`).
async fn keep_readiness(
    mut readiness: Readiness,
    clients: RedisClients,
    probe_timeout: Duration,
    draining: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut eviction = None;
    let mut too_old = false;
    loop {
        let ready = !draining.is_cancelled()
            && clients.healthy(probe_timeout).await
            && runs_scripts(&clients, &mut too_old)
            && keeps_jobs(&clients, probe_timeout, &mut eviction).await;
        readiness.set(ready && !draining.is_cancelled()).await;
        tokio::select! {
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
            () = draining.cancelled(), if !draining.is_cancelled() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Whether Redis is recent enough for jobd's scripts (see `MIN_REDIS_VERSION`); an older one
/// is logged once (`logged`), and jobd does not serve on it.
fn runs_scripts(clients: &RedisClients, logged: &mut bool) -> bool {
    // An unknown version (INFO refused) is given the benefit of the doubt.
    let Some(version) = clients
        .server_version()
        .filter(|version| !store::supported(version))
    else {
        *logged = false;
        return true;
    };
    if !std::mem::replace(logged, true) {
        tracing::error!(
            %version,
            minimum = %store::MIN_REDIS_VERSION,
            "Redis is too old for jobd's scripts: not ready until it is upgraded"
        );
    }
    false
}

/// Whether Redis answers and will not evict queued or running jobs when it runs out of memory:
/// a job's hash is its only record, so an `allkeys-*` policy could lose jobs without a trace,
/// and jobd does not serve on it. What it finds is logged when it changes (`last`).
async fn keeps_jobs(
    clients: &RedisClients,
    timeout: Duration,
    last: &mut Option<Eviction>,
) -> bool {
    let Some(eviction) = clients.eviction(timeout).await else {
        return false;
    };
    if last.as_ref() != Some(&eviction) {
        match &eviction {
            Eviction::Never if last.is_some() => {
                tracing::info!("Redis's maxmemory-policy now keeps every key");
            }
            Eviction::Never => {}
            Eviction::KeysWithExpiry(policy) => tracing::warn!(
                policy,
                "Redis may evict keys with an expiry when it reaches maxmemory: finished jobs \
                 and idempotency keys could go before their time; set maxmemory-policy \
                 noeviction"
            ),
            Eviction::AnyKey(policy) => tracing::error!(
                policy,
                "Redis may evict any key when it reaches maxmemory, queued and running jobs \
                 included: not ready until maxmemory-policy is noeviction (or volatile-*)"
            ),
            Eviction::Unknown(reason) => tracing::warn!(
                reason,
                "cannot read Redis's maxmemory-policy; make sure it is noeviction, or jobs \
                 may be evicted"
            ),
        }
        *last = Some(eviction.clone());
    }
    !matches!(eviction, Eviction::AnyKey(_))
}
