//! The perimeter: every call's caller is recognised (bearer token, or client certificate) and
//! checked against the roles its method needs before the request's body is read; the queues a
//! request names are checked by its handler, through the `Access` this layer leaves on it,
//! before anything is written. Health stays open, for kubelet probes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::{Either, Ready, ready};
use http::{Request, Response, header::AUTHORIZATION};
use tonic::{Code, Status, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use super::{
    methods::rpc_method,
    reason::{Reason, status},
    tls::Peer,
    transport::Linked,
};
use crate::{
    auth::{Caller, Gate, Roles},
    domain::QueueName,
    sync::lock,
    telemetry::Metrics,
};

const SUBMITTER_OR_OPERATOR: Roles = Roles::SUBMITTER.or(Roles::OPERATOR);

/// Each of jobd's methods, and the roles that may call it. Any other method (reflection, an
/// unknown one) needs a recognised caller of any role; health needs none.
pub const METHODS: &[(&str, Roles)] = &[
    ("/jobd.v1.JobService/SubmitJob", Roles::SUBMITTER),
    ("/jobd.v1.JobService/SubmitJobs", Roles::SUBMITTER),
    ("/jobd.v1.JobService/SubmitAndWatchJobs", Roles::SUBMITTER),
    ("/jobd.v1.JobService/GetJob", SUBMITTER_OR_OPERATOR),
    ("/jobd.v1.JobService/WatchJob", SUBMITTER_OR_OPERATOR),
    ("/jobd.v1.JobService/CancelJob", SUBMITTER_OR_OPERATOR),
    ("/jobd.v1.JobService/ListJobs", Roles::OPERATOR),
    ("/jobd.v1.JobService/GetQueueStats", Roles::OPERATOR),
    ("/jobd.v1.WorkerService/ClaimJob", Roles::WORKER),
    ("/jobd.v1.WorkerService/ClaimJobs", Roles::WORKER),
    ("/jobd.v1.WorkerService/Heartbeat", Roles::WORKER),
    ("/jobd.v1.WorkerService/CompleteJob", Roles::WORKER),
    ("/jobd.v1.WorkerService/CompleteJobs", Roles::WORKER),
    ("/jobd.v1.WorkerService/FailJob", Roles::WORKER),
    ("/jobd.v1.WorkerService/ReleaseJob", Roles::WORKER),
];

const HEALTH: &str = "/grpc.health.v1.Health/";

/// Denials logged per second at most; the rest are counted, and the next line says how many.
const DENIAL_LINES_PER_SECOND: u32 = 10;

/// The tower layer that guards the server it wraps.
#[derive(Clone)]
pub struct AuthLayer {
    gate: Arc<Gate>,
    denials: Denials,
}

impl AuthLayer {
    pub fn new(gate: Arc<Gate>, metrics: Metrics) -> Self {
        Self {
            gate,
            denials: Denials::new(metrics),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ResBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with(HEALTH) {
            return Either::Right(self.inner.call(request));
        }
        match self.layer.admit(&request) {
            Ok(access) => {
                request.extensions_mut().insert(access);
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

impl AuthLayer {
    /// The caller of `request`, if it may call the method at all.
    fn admit<B>(&self, request: &Request<B>) -> Result<Access, Status> {
        let path = request.uri().path();
        let (method, roles) = METHODS
            .iter()
            .find(|(known, _)| *known == path)
            .map(|(method, roles)| (*method, *roles))
            .unwrap_or(("", Roles::ALL));
        // Named as metrics name it: a made-up path is `_OTHER`, in the log and the metric.
        let shown = rpc_method(path);
        let peer = request
            .extensions()
            .get::<Linked<Peer>>()
            .map(|linked| &linked.info);
        let identities = peer
            .map(|peer| peer.identities.as_ref())
            .unwrap_or_default();
        let remote = match peer {
            Some(peer) => Some(peer.remote),
            None => request
                .extensions()
                .get::<Linked<TcpConnectInfo>>()
                .and_then(|linked| linked.info.remote_addr()),
        };
        let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        let caller = match self.gate.recognise(authorization, identities) {
            Ok(caller) => caller,
            Err(why) => {
                let denial = Denial::new(shown, "unauthenticated", None, remote);
                self.denials.record(denial, || why.to_string());
                let message = why.to_string();
                return Err(status(
                    Code::Unauthenticated,
                    Reason::Unauthenticated,
                    message,
                    &[],
                ));
            }
        };
        if !caller.roles().intersects(roles) {
            let message = format!(
                "{} (roles: {}) may not call {}; it needs the role {roles}",
                caller.name(),
                caller.roles(),
                shown
            );
            let denial = Denial::new(shown, "permission_denied", Some(&caller), remote);
            self.denials.record(denial, || message.clone());
            let method = [("method", shown.to_owned())];
            return Err(status(
                Code::PermissionDenied,
                Reason::PermissionDenied,
                message,
                &method,
            ));
        }
        Ok(Access {
            caller,
            method: method.strip_prefix('/').unwrap_or_default(),
            remote,
            denials: self.denials.clone(),
        })
    }
}

/// Who made a call and which method it is, left on the request for its handler.
#[derive(Clone)]
pub struct Access {
    caller: Caller,
    /// As `rpc.method` has it: `jobd.v1.JobService/SubmitJob`.
    method: &'static str,
    remote: Option<SocketAddr>,
    denials: Denials,
}

impl Access {
    /// The access a request was admitted with. A request that did not pass the layer has none,
    /// and may do nothing.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Access>()
            .cloned()
            .ok_or_else(|| {
                let message = "the call was not authorized";
                status(
                    Code::PermissionDenied,
                    Reason::PermissionDenied,
                    message,
                    &[],
                )
            })
    }

    /// The caller's principal, whose budgets it spends; `None` without an auth file.
    pub fn principal(&self) -> Option<&str> {
        match &self.caller {
            Caller::Anyone => None,
            Caller::Principal(principal) => Some(&principal.name),
        }
    }

    /// Whether the caller may use `queue`: PERMISSION_DENIED naming the method and the queue
    /// if not. `field` names where the request named it (`jobs[2].queue`, `job_id`).
    pub fn check(&self, field: &str, queue: &QueueName) -> Result<(), Status> {
        if self.caller.may_use(queue) {
            return Ok(());
        }
        let message = format!(
            "{field}: {} may not call {} on queue {queue} (its queues: {})",
            self.caller.name(),
            self.method,
            self.caller.queue_list()
        );
        let denial = Denial::new(
            self.method,
            "permission_denied",
            Some(&self.caller),
            self.remote,
        );
        self.denials.record(denial, || message.clone());
        let metadata = [
            ("method", self.method.to_owned()),
            ("queue", queue.to_string()),
        ];
        Err(status(
            Code::PermissionDenied,
            Reason::PermissionDenied,
            message,
            &metadata,
        ))
    }

    /// Who made the call.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Checks every queue of `queues`, before anything is done with any.
    pub fn check_all<'a>(
        &self,
        queues: impl IntoIterator<Item = (String, &'a QueueName)>,
    ) -> Result<(), Status> {
        queues
            .into_iter()
            .try_for_each(|(field, queue)| self.check(&field, queue))
    }
}

/// Records each denial: the `jobd.auth.denials` metric, and a log line with the principal,
/// the method and the reason (never a credential), at most `DENIAL_LINES_PER_SECOND`, so that
/// a client retrying a bad token cannot flood the log.
#[derive(Clone)]
struct Denials {
    metrics: Metrics,
    budget: Arc<Mutex<LogBudget>>,
}

struct LogBudget {
    since: Instant,
    lines: u32,
    suppressed: u64,
}

impl Denials {
    fn new(metrics: Metrics) -> Self {
        let budget = LogBudget {
            since: Instant::now(),
            lines: 0,
            suppressed: 0,
        };
        Self {
            metrics,
            budget: Arc::new(Mutex::new(budget)),
        }
    }

    fn record(&self, denial: Denial<'_>, message: impl FnOnce() -> String) {
        self.metrics.auth_denied(denial.method, denial.reason);
        let suppressed = {
            let mut budget = lock(&self.budget);
            if budget.since.elapsed() >= Duration::from_secs(1) {
                budget.since = Instant::now();
                budget.lines = 0;
            }
            if budget.lines >= DENIAL_LINES_PER_SECOND {
                budget.suppressed += 1;
                return;
            }
            budget.lines += 1;
            std::mem::take(&mut budget.suppressed)
        };
        tracing::warn!(
            principal = denial.caller.map(Caller::name),
            method = denial.method,
            reason = denial.reason,
            remote = denial.remote.map(tracing::field::display),
            suppressed,
            "call denied: {}",
            message()
        );
    }
}

/// One refused call, as logged and counted.
struct Denial<'a> {
    method: &'a str,
    reason: &'static str,
    caller: Option<&'a Caller>,
    remote: Option<SocketAddr>,
}

impl<'a> Denial<'a> {
    fn new(
        method: &'a str,
        reason: &'static str,
        caller: Option<&'a Caller>,
        remote: Option<SocketAddr>,
    ) -> Self {
        Self {
            method,
            reason,
            caller,
            remote,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;
    use crate::api::proto::FILE_DESCRIPTOR_SET;

    /// A method added to a service must say who may call it.
    #[test]
    fn every_method_names_its_roles() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = BTreeSet::new();
        for file in set.file.iter().filter(|file| file.package() == "jobd.v1") {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!("/jobd.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        let listed: BTreeSet<String> = METHODS.iter().map(|(m, _)| (*m).to_owned()).collect();
        assert_eq!(methods, listed);
    }
}
