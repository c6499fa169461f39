//! Observes every gRPC call: a server span whose parent is the caller's W3C trace context
//! (`traceparent`), and the `rpc.server.call.duration` metric by method and final status.
//!
//! A call's status arrives in the response headers (an error answered at once) or in the
//! trailers (success, and every stream), so the response body is wrapped to see the trailers,
//! and a stream counts until its last frame.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::Frame;
use opentelemetry::{global, propagation::Extractor, trace::TraceContextExt};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    body::{FrameMap, MapFrames},
    methods::rpc_method,
    reason,
};
use crate::telemetry::Metrics;

/// The tower layer that observes every call of the server it wraps.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        // "/jobd.v1.JobService/SubmitJob" -> "jobd.v1.JobService/SubmitJob", as rpc.method
        // wants; a path jobd does not serve is `_OTHER`, in the span's name too.
        let method = rpc_method(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system.name = "grpc",
            rpc.method = %method,
            rpc.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Fails only when no OpenTelemetry layer is installed; the span is then local only.
        let _ = span.set_parent(parent);
        let span_context = span.context().span().span_context().clone();
        if span_context.is_valid() {
            span.record("trace_id", span_context.trace_id().to_string());
        }
        let metrics = self.metrics.clone();
        let response = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let response = response.await?;
            let status = grpc_status(response.headers());
            let mut observer = CallObserver {
                metrics,
                method,
                span,
                started,
                recorded: false,
            };
            if let Some(status) = status {
                // An answer without a body: its status is already known.
                observer.record(status);
            }
            Ok(response.map(|body| MapFrames::new(body, observer)))
        })
    }
}

/// A response body that records the call when its trailers (or its end) go by.
pub type ObservedBody<B> = MapFrames<B, CallObserver>;

/// Records a call once: its status from the headers, the trailers or how the body ended.
pub struct CallObserver {
    metrics: Metrics,
    method: &'static str,
    span: tracing::Span,
    started: Instant,
    recorded: bool,
}

impl CallObserver {
    /// Records the call once, with its gRPC status code.
    fn record(&mut self, status: i32) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let name = code_name(status);
        self.span.record("rpc.response.status_code", name);
        if status != 0 {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics.rpc(self.method, name, self.started.elapsed());
    }
}

impl FrameMap for CallObserver {
    fn frame<D>(&mut self, frame: Frame<D>) -> Frame<D> {
        if let Some(status) = frame.trailers_ref().and_then(grpc_status) {
            self.record(status);
        }
        frame
    }

    /// Ended without a status in trailers (an error, or a status in the headers, which was
    /// recorded before).
    fn end(&mut self) {
        self.record(UNKNOWN);
    }

    /// A stream's work happens while its body is polled, and so does a call's answer when it
    /// comes after its headers (see `api::deadline`).
    fn span(&self) -> Option<&tracing::Span> {
        Some(&self.span)
    }
}

impl Drop for CallObserver {
    /// A body dropped before its end: the client went away.
    fn drop(&mut self) {
        self.record(CANCELLED);
    }
}

const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// The canonical name of a gRPC status code, as `rpc.response.status_code` wants it (an
/// unknown number is UNKNOWN, as for any gRPC client).
fn code_name(code: i32) -> &'static str {
    reason::code_name(tonic::Code::from_i32(code))
}

/// Reads W3C trace context from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// The current span's trace context as W3C headers (`traceparent`, `tracestate`), to store
/// with a job; without an OpenTelemetry layer, the caller's own headers are passed on.
pub fn current_trace_context(incoming: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    let mut injected = std::collections::HashMap::new();
    let current = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&current, &mut injected)
    });
    let mut context: std::collections::BTreeMap<String, String> = injected.into_iter().collect();
    if context.is_empty() {
        for key in ["traceparent", "tracestate"] {
            if let Some(value) = incoming.get(key).and_then(|v| v.to_str().ok()) {
                context.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_have_their_canonical_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
