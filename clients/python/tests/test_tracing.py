"""A submission carries the caller's trace; the handler's span continues it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import NewWorker, running
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import jobd


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


async def test_the_handler_span_has_the_jobs_trace_context_as_parent(
    spans: InMemorySpanExporter, client: jobd.Client, queue: str, new_worker: NewWorker
) -> None:
    worker = new_worker(concurrency=1)
    seen_in_handler: list[int] = []

    @worker.handler("traced")
    async def traced(job: jobd.JobContext) -> str:
        seen_in_handler.append(trace.get_current_span().get_span_context().trace_id)
        return job.id

    tracer = trace.get_tracer("test")
    async with running(worker):
        with tracer.start_as_current_span("caller") as caller:
            job_id = (await client.submit_and_wait(queue, "traced", timeout=20)).decode()

    trace_id = caller.get_span_context().trace_id
    job = await client.get(job_id)
    version, stored_trace, stored_parent, _flags = job.trace_context["traceparent"].split("-")
    assert version == "00"
    assert int(stored_trace, 16) == trace_id

    # The stored context is jobd's SubmitAndWatchJobs server span (a child of the producer
    # span below): the handler's parent is exactly what the job carries.
    handler_spans = [s for s in spans.get_finished_spans() if s.name == "jobd.handle traced"]
    assert len(handler_spans) == 1
    handler = handler_spans[0]
    assert handler.context.trace_id == trace_id
    assert handler.parent is not None
    assert handler.parent.span_id == int(stored_parent, 16)
    assert handler.kind == trace.SpanKind.CONSUMER
    assert handler.attributes is not None
    assert handler.attributes["messaging.message.id"] == job_id
    assert seen_in_handler == [trace_id]

    producer = [s for s in spans.get_finished_spans() if s.name == "jobd.SubmitAndWatchJobs"]
    assert len(producer) == 1
    assert producer[0].parent is not None
    assert producer[0].parent.span_id == caller.get_span_context().span_id
