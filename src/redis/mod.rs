//! The process's Redis connections and what readiness probes of them: infrastructure that the
//! store, the event hub and the composition root share. Only this module, `store` and
//! `events` know fred.

mod clients;
mod probes;

pub use clients::{Reconnections, RedisClients, name_connections};
pub use probes::{Eviction, MIN_REDIS_VERSION, supported};
