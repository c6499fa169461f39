//! Integration tests: a real redis-server per test, a real jobd on a socket, real gRPC clients.

mod binary;
mod cancel;
mod clock;
mod cluster;
mod connections;
mod deadline;
mod errors;
mod grpcurl;
mod handoff;
mod health;
mod lifecycle;
mod list;
mod outage;
mod protocol;
mod proxy;
mod recovery;
mod release;
mod replies;
mod scheduling;
mod sentinel;
mod shutdown;
mod submit_watch;
mod support;
mod telemetry;
mod tls;
mod watch;
