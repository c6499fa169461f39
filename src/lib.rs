//! jobd: job orchestration over gRPC, with all state in Redis.
//!
//! Modules in reading order (docs/architecture.md has the whole code map, each module's
//! architecture invariant, and how each call flows; tests/it/layers.rs checks what each
//! module may import):
//! - [`domain`]: jobs, events, leases and their rules; knows neither gRPC nor Redis.
//! - [`auth`]: principals, their roles and queues, and how callers are recognised.
//! - [`config`]: every setting, from flags and environment.
//! - [`telemetry`]: logs, OpenTelemetry traces and metrics, and every instrument.
//! - [`redis`]: the process's Redis connections, and what readiness probes of them.
//! - [`store`]: typed Redis calls for jobs: keys, Lua scripts, the job hash's layout.
//! - [`budgets`]: what callers may hold of the process, in all and per principal.
//! - [`group_commit`]: operations of one queue sharing one script call.
//! - [`events`]: one subscriber fanned out to local watchers and waiting claims, and the
//!   `Follower` of jobs' logs.
//! - [`claims`], [`submissions`], [`completions`], [`queues`]: the use cases on the store.
//! - [`background`]: the sweeper, the queue-depth refresher, readiness.
//! - [`api`]: the gRPC services and the one mapping from errors to status.
//! - [`app`]: builds the parts from a `Config` and runs them until shutdown.
//! - [`reload`]: files read again while jobd runs (the auth file, TLS certificates).
//! - [`shutdown`] and [`sync`]: the shutdown signal, and locking the in-process maps.

pub mod domain;

pub mod auth;
pub mod config;
pub mod telemetry;

pub mod redis;
pub mod store;

pub mod budgets;
pub mod events;
pub mod group_commit;

pub mod claims;
pub mod completions;
pub mod queues;
pub mod submissions;

pub mod background;

pub mod api;

pub mod app;
pub mod reload;
pub mod shutdown;
pub mod sync;

pub use app::App;
pub use config::Config;
