//! Integration tests: a real redis-server per test, a real jobd on a socket, real gRPC clients.
//! What they share is in `harness`; each other module tests one part of jobd.

mod abuse_budgets;
mod acl;
mod binary;
mod cancel;
mod clock;
mod cluster;
mod connections;
mod deadline;
mod docs;
mod errors;
mod grpcurl;
mod handoff;
mod harness;
mod health;
mod layers;
mod lifecycle;
mod list;
mod outage;
mod perimeter;
mod protocol;
mod recovery;
mod release;
mod replies;
mod scheduling;
mod secrets;
mod sentinel;
mod server_tls;
mod shutdown;
mod submit_watch;
mod telemetry;
mod tls;
mod watch;
