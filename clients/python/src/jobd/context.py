"""JobContext: what a handler gets, the job and its payload, and progress()."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from .errors import Unavailable
from .v1 import job_pb2
from .v1 import worker_service_pb2 as wpb

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("jobd.worker")


class JobContext:
    """What a handler gets: the job, its payload, and `progress()`."""

    def __init__(self, worker: Worker, claimed: wpb.ClaimedJob) -> None:
        self._worker = worker
        self.job: job_pb2.Job = claimed.job
        self.lease_token: str = claimed.lease_token
        #: Set once jobd said the job was cancelled (the handler's task is cancelled too).
        self.cancelled = False
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def payload(self) -> bytes:
        return bytes(self.job.payload)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.job.labels)

    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.payload.decode()

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)

    async def progress(self, value: float | None = None, message: str = "") -> None:
        """Reports progress (a PROGRESS event); it also extends the lease. Best effort: jobd
        being unavailable is logged, not raised. Raises asyncio.CancelledError when jobd answers
        that the job was cancelled or its lease is gone."""
        request = wpb.HeartbeatRequest(job_id=self.id, lease_token=self.lease_token)
        request.progress.message = message
        if value is not None:
            request.progress.value = value
        try:
            stopped = await self._worker._heartbeat_once(self, request)
        except Unavailable as e:
            log.warning("progress of job %s not recorded: %s", self.id, e)
            return
        if stopped:
            raise asyncio.CancelledError(f"job {self.id} was cancelled or its lease is gone")
