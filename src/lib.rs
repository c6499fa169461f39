//! jobd: job orchestration over gRPC, with all state in Redis.
//!
//! Modules in reading order:
//! - [`config`]: every setting, from flags and environment.
//! - [`domain`]: jobs, events, leases and their rules; knows neither gRPC nor Redis.
//! - [`store`]: everything that speaks to Redis for jobs (keys, Lua scripts, `JobStore`).
//! - [`events`]: one subscriber connection fanned out to local watchers and waiting claims
//!   (and every job event's id to the sweeper).
//! - [`background`]: the sweeper, which promotes due jobs, recovers expired leases and
//!   forgets finished jobs past their retention, visiting idle queues rarely.
//! - [`api`]: the gRPC services and the one mapping from errors to status.
//! - [`telemetry`]: logs, OpenTelemetry traces and metrics, and every instrument.
//! - [`app`]: builds the pieces from a `Config` and runs them until shutdown.
//! - [`shutdown`] and [`sync`]: the shutdown signal, and locking the in-process maps.
//!
//! Invariants (see the README's architecture section): only `api` knows tonic and the proto
//! types; only `store` and `events` know fred; every key is built in `store::keys`; every
//! multi-key write is one Lua script; no global state but the tracing and OpenTelemetry
//! globals; every spawned task is tracked and stops on the shutdown token.

pub mod api;
pub mod app;
pub mod background;
pub mod claims;
pub mod completions;
pub mod config;
pub mod domain;
pub mod events;
pub mod group_commit;
pub mod queues;
pub mod redis;
pub mod shutdown;
pub mod store;
pub mod submissions;
pub mod sync;
pub mod telemetry;

pub use app::App;
pub use config::Config;
