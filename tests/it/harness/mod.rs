//! The test harness: what every test shares, one name per concept. Tests `use
//! crate::harness::*`.
//!
//! - `abuse`: what every abuse case asserts besides its callers' statuses: jobd's and Redis's
//!   memory within bounds (`Footprint`), and a well-behaved client's latency (`Bystander`).
//! - `redis`, `cluster`: a redis-server (or a Redis Cluster) of the test's own, and what tests
//!   ask of it through redis-cli.
//! - `jobd`: jobd under test, in the test's runtime (`TestServer`) or as the real binary
//!   (`Running`), both called through `Jobd`.
//! - `clients`: connections through the Rust client library (`connect`, `Jobd::client`), its
//!   generated stubs (`Jobs`, `Workers`) and messages (`jobd_client::proto`), and bare tonic
//!   channels for the rest (`channel`); `*_request` functions build requests, verbs (`submit`,
//!   `claim`, `complete`, ...) make calls and expect them to succeed. `events`: WatchJob
//!   streams and the events they carry. `bare`: calls whose deadline only the server keeps.
//! - `proxy`: a TCP proxy between jobd and Redis that loses replies or holds commands back.
//!   `idle_proxy`: a TCP proxy before jobd that cuts idle connections, as load balancers do.
//! - `raw`: calls of any path with any bytes as their message, and calls whose reply the
//!   client never reads (`stalled_call`).
//! - `readme`: the README's shell examples as commands, for the tests that run them.
//! - `otlp`: an OTLP receiver jobd exports its metrics and spans to.
//! - `wait`: the one way to wait, `eventually`, on an observable condition with a deadline,
//!   and the conditions tests wait on by name (`claims_waiting`, `readiness_becomes`, ...).
//! - `auth`: an auth file with a token per principal, and requests that carry a token.
//! - `certs`: CAs and certificates for TLS tests, made with openssl, and library connections
//!   that trust them (`Pki::client`).
//! - `os`: child processes, temporary directories and ports a test owns.

mod abuse;
mod auth;
mod bare;
mod certs;
mod clients;
mod cluster;
mod events;
mod idle_proxy;
mod jobd;
mod os;
mod otlp;
mod proxy;
mod raw;
mod readme;
mod redis;
mod wait;

pub use self::{
    abuse::*, auth::*, bare::*, certs::*, clients::*, cluster::*, events::*, idle_proxy::*,
    jobd::*, os::*, otlp::*, proxy::*, raw::*, readme::*, redis::*, wait::*,
};
