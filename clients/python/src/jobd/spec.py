"""What a submission says: JobSpec and its Backoff, and their protobuf form."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .codec import Seconds, duration, encode, timestamp
from .v1 import job_pb2, job_service_pb2


@dataclass(frozen=True)
class Backoff:
    """The job's retry delays (jobd's BackoffPolicy); unset fields take jobd's defaults."""

    initial: Seconds | None = None
    multiplier: float | None = None
    max: Seconds | None = None
    jitter: float | None = None

    def to_proto(self) -> job_pb2.BackoffPolicy:
        policy = job_pb2.BackoffPolicy()
        if self.initial is not None:
            policy.initial.CopyFrom(duration(self.initial))
        if self.multiplier is not None:
            policy.multiplier = self.multiplier
        if self.max is not None:
            policy.max.CopyFrom(duration(self.max))
        if self.jitter is not None:
            policy.jitter = self.jitter
        return policy


@dataclass
class JobSpec:
    """A job to submit. `payload` is encoded as `codec.encode` says (bytes as they are, str as
    UTF-8, anything else as JSON); every option left None takes jobd's default."""

    queue: str
    kind: str
    payload: Any = b""
    labels: Mapping[str, str] = field(default_factory=dict)
    max_attempts: int | None = None
    priority: int | None = None
    delay: Seconds | None = None
    run_at: datetime | None = None
    lease: Seconds | None = None
    idempotency_key: str | None = None
    idempotency_ttl: Seconds | None = None
    retention: Seconds | None = None
    backoff: Backoff | None = None

    def to_proto(self, generated_key: bool) -> job_service_pb2.SubmitJobRequest:
        request = job_service_pb2.SubmitJobRequest(
            queue=self.queue, kind=self.kind, payload=encode(self.payload), labels=self.labels
        )
        if self.max_attempts is not None:
            request.max_attempts = self.max_attempts
        if self.priority is not None:
            request.priority = self.priority
        if self.delay is not None:
            request.delay.CopyFrom(duration(self.delay))
        if self.run_at is not None:
            request.run_at.CopyFrom(timestamp(self.run_at))
        if self.lease is not None:
            request.lease.CopyFrom(duration(self.lease))
        if self.idempotency_key is not None:
            request.idempotency_key = self.idempotency_key
        elif generated_key:
            request.idempotency_key = f"jobd-py:{uuid.uuid4()}"
        if self.idempotency_ttl is not None:
            request.idempotency_ttl.CopyFrom(duration(self.idempotency_ttl))
        if self.retention is not None:
            request.retention.CopyFrom(duration(self.retention))
        if self.backoff is not None:
            request.backoff.CopyFrom(self.backoff.to_proto())
        return request
