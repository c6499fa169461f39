//! A submission carries the caller's trace; the handler's span continues the job's.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use jobd_client::{BoxError, JobContext, JobSpec, Worker};
use opentelemetry::{
    Context,
    context::FutureExt,
    trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};

use crate::harness::{RunningWorker, Stack, queue};

/// Keeps every span it is given.
#[derive(Debug, Clone, Default)]
struct InMemory(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for InMemory {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_span_has_the_jobs_trace_context_as_parent() {
    let spans = InMemory::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("traced");
    let in_handler = Arc::new(Mutex::new(Vec::new()));
    let seen = in_handler.clone();
    let worker = Worker::new(client.clone(), [q.clone()])
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("traced", move |job: JobContext| {
            let seen = seen.clone();
            async move {
                let current = Context::current();
                seen.lock()
                    .unwrap()
                    .push(current.span().span_context().trace_id());
                Ok::<_, BoxError>(job.id().to_owned())
            }
        });
    let running = RunningWorker::start(worker);

    let tracer = provider.tracer("test");
    let caller = tracer.start("caller");
    let caller_context = Context::current_with_span(caller);
    let caller_span = caller_context.span().span_context().clone();
    // The caller's current context while the submission runs.
    let result = client
        .submit_and_wait(JobSpec::new(&q, "traced"))
        .with_context(caller_context.clone());
    let job_id = tokio::time::timeout(Duration::from_secs(20), result)
        .await
        .unwrap()
        .unwrap();
    let job_id = String::from_utf8(job_id.to_vec()).unwrap();
    running.stop().await;

    let job = client.get(&job_id).await.unwrap();
    let parts: Vec<String> = job.trace_context["traceparent"]
        .split('-')
        .map(str::to_owned)
        .collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], format!("{:032x}", caller_span.trace_id()));

    let finished = spans.0.lock().unwrap().clone();
    let handler: Vec<_> = finished
        .iter()
        .filter(|s| s.name == "jobd.handle traced")
        .collect();
    assert_eq!(handler.len(), 1);
    let handler = handler[0];
    assert_eq!(handler.span_context.trace_id(), caller_span.trace_id());
    // The stored context is jobd's server span: the handler's parent is exactly what the job
    // carries.
    assert_eq!(format!("{:016x}", handler.parent_span_id), parts[2]);
    assert_eq!(handler.span_kind, SpanKind::Consumer);
    assert!(
        handler
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "messaging.message.id" && kv.value.as_str() == job_id)
    );
    assert_eq!(*in_handler.lock().unwrap(), [caller_span.trace_id()]);

    let producer: Vec<_> = finished
        .iter()
        .filter(|s| s.name == "jobd.SubmitAndWatchJobs")
        .filter(|s| s.span_context.trace_id() == caller_span.trace_id())
        .collect();
    assert_eq!(producer.len(), 1);
    assert_eq!(producer[0].parent_span_id, caller_span.span_id());
    assert_eq!(producer[0].span_kind, SpanKind::Producer);
}
