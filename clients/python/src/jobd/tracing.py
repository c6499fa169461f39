"""OpenTelemetry: submissions carry the caller's context; handlers continue the job's trace.

Only opentelemetry-api is used: it is a no-op until the application installs an SDK, so a
program that does not trace pays nothing and one that does gets jobd's spans in its traces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

TRACER_NAME = "jobd"


def _tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def submit_span(name: str, queue: str) -> Iterator[list[tuple[str, str]]]:
    """A client span around a submission; yields the metadata that carries its context."""
    with _tracer().start_as_current_span(
        name, kind=SpanKind.PRODUCER, attributes={"messaging.destination.name": queue}
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield [(k.lower(), v) for k, v in carrier.items()]


@contextmanager
def handler_span(
    kind: str, queue: str, job_id: str, attempt: int, trace_context: Mapping[str, str]
) -> Iterator[Span]:
    """The span a handler runs in: its parent is the job's stored trace context."""
    parent = propagate.extract(dict(trace_context))
    with _tracer().start_as_current_span(
        f"jobd.handle {kind}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "jobd.job.kind": kind,
            "jobd.job.attempt": attempt,
        },
    ) as span:
        yield span
