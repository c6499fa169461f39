//! OpenTelemetry: a submission runs in a PRODUCER span, child of the caller's current context
//! (`opentelemetry::Context::current()`), whose W3C `traceparent` (and `tracestate`) go out as
//! metadata, as jobd reads them into the job's `trace_context`; a handler runs in a CONSUMER
//! span whose parent is that `trace_context`. Only the OpenTelemetry API is used: without an
//! SDK installed the spans are no-ops and nothing else changes.

use std::{collections::HashMap, str::FromStr};

use opentelemetry::{
    Context, KeyValue, global,
    trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _,
    },
};

/// The instrumentation scope of the library's spans.
const TRACER: &str = "jobd-client";

/// A submission's span, and the headers that carry it.
pub(crate) struct SubmitSpan {
    context: Context,
}

impl SubmitSpan {
    /// Starts `name` (`jobd.SubmitJob`) as a child of the current context.
    pub fn start(name: &'static str, queue: &str) -> Self {
        let parent = Context::current();
        let span = global::tracer(TRACER)
            .span_builder(name)
            .with_kind(SpanKind::Producer)
            .with_attributes([KeyValue::new(
                "messaging.destination.name",
                queue.to_owned(),
            )])
            .start_with_context(&global::tracer(TRACER), &parent);
        Self {
            context: parent.with_span(span),
        }
    }

    /// `traceparent` and `tracestate` of the span, when it is valid (an SDK is installed, or
    /// the caller's context has a span).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        inject(self.context.span().span_context())
    }

    /// Ends the span, with the call's error if any.
    pub fn end(self, error: Option<&crate::Error>) {
        let span = self.context.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// W3C trace-context headers for a span context; none for an invalid one.
pub(crate) fn inject(span: &SpanContext) -> Vec<(&'static str, String)> {
    if !span.is_valid() {
        return Vec::new();
    }
    let mut headers = vec![(
        "traceparent",
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        ),
    )];
    let state = span.trace_state().header();
    if !state.is_empty() {
        headers.push(("tracestate", state));
    }
    headers
}

/// The remote span context of a job's `trace_context`; `None` when absent or malformed.
pub(crate) fn extract(trace_context: &HashMap<String, String>) -> Option<SpanContext> {
    let parent = trace_context.get("traceparent")?;
    let parts: Vec<&str> = parent.trim().split('-').collect();
    let [version, trace_id, span_id, flags] = parts.as_slice() else {
        return None;
    };
    if version.len() != 2 || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = trace_context
        .get("tracestate")
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    );
    context.is_valid().then_some(context)
}

/// The context a handler runs in: a CONSUMER span `jobd.handle <kind>` whose parent is the
/// job's trace context (a new trace without one).
pub(crate) fn handler_context(job: &crate::Job) -> Context {
    let parent = match extract(&job.trace_context) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    };
    let tracer = global::tracer(TRACER);
    let span = tracer
        .span_builder(format!("jobd.handle {}", job.kind))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.destination.name", job.queue.clone()),
            KeyValue::new("messaging.message.id", job.id.clone()),
            KeyValue::new("jobd.job.kind", job.kind.clone()),
            KeyValue::new("jobd.job.attempt", i64::from(job.attempt)),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let headers = HashMap::from([
            (
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
            ("tracestate".to_owned(), "a=1,b=2".to_owned()),
        ]);
        let context = extract(&headers).expect("a valid context");
        assert!(context.is_remote() && context.is_sampled());
        let out: HashMap<String, String> = inject(&context)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(out, headers);
        let bad = HashMap::from([("traceparent".to_owned(), "00-zz-yy-01".to_owned())]);
        assert!(extract(&bad).is_none());
        assert!(extract(&HashMap::new()).is_none());
    }
}
