//! Integration tests: a real redis-server per test, a real jobd on a socket, real gRPC clients.

mod binary;
mod cancel;
mod cluster;
mod connections;
mod errors;
mod grpcurl;
mod handoff;
mod health;
mod layout;
mod lifecycle;
mod outage;
mod proxy;
mod release;
mod scheduling;
mod sentinel;
mod shutdown;
mod submit_watch;
mod support;
mod telemetry;
mod tls;
mod watch;
