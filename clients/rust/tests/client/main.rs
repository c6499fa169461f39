//! The client library against a real jobd and Redis: each test starts its own redis-server
//! and jobd binary on free ports (harness.rs) and drives them through the library.

mod errors;
mod harness;
mod lifecycle;
mod resilience;
mod security;
mod tracing;
mod worker;
