"""Worker: claims jobs for its free slots, runs a handler per job kind, and reports outcomes.

How it speaks jobd's worker protocol (docs/api.md, "The worker protocol"):

- Claims: one ClaimJobs long poll at a time for the free slots; completions go out as
  CompleteJobs (every completion that finished while the previous call was in flight) whose
  `next` claims jobs for the slots free by then, without waiting. A plain handler gets batching.
- Heartbeats: the first within half the acknowledgement timeout, then every
  `lease * heartbeat_fraction` (10 s with the defaults), each shortened by up to 20% of jitter.
  The heartbeat reply is how jobd says a job was cancelled: the handler's task is then
  cancelled (asyncio cancellation), so a handler hears of a cancellation within one heartbeat
  interval of it.
- Shutdown (SIGTERM, SIGINT or `stop()`): no new claim; a claim already waiting is let run to
  its end (at most `claim_wait`), never cancelled, and the jobs it brings are given back
  (ReleaseJob: queued again, not an attempt); running handlers get `shutdown_timeout` to
  finish, after which they are cancelled and their jobs given back too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import socket
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import tracing
from .client import Client, claim_request
from .codec import Seconds, duration, encode, seconds
from .context import JobContext
from .errors import JobdError, NonRetryableError, Unavailable
from .v1 import worker_service_pb2 as wpb

log = logging.getLogger("jobd.worker")

Handler = Callable[["JobContext"], Awaitable[Any]]

#: The server's acknowledgement timeout when the worker does not set one.
SERVER_ACK_TIMEOUT = 5.0


@dataclass
class _Running:
    context: JobContext
    task: asyncio.Task[None]
    # Why the worker cancelled the handler: "cancelled" (by jobd), "lost" (lease gone),
    # "shutdown" (shutdown deadline); None while it was not.
    stop_reason: str | None = None
    heartbeat: asyncio.Task[None] | None = field(default=None)


class Worker:
    """Runs handlers for the jobs of `queue` (a name, or names in order of preference).

    concurrency: handlers running at once. lease: seconds each claim's lease lasts without a
    heartbeat (the worker's, whatever the job asked for). heartbeat_fraction: heartbeat
    interval as a fraction of the lease. ack_timeout: the claim's acknowledgement timeout
    (jobd's default, 5 s, when None). claim_wait: longest a claim waits for a job, and so the
    longest shutdown waits for a claim in flight. shutdown_timeout: how long running handlers
    get to finish after a stop.

    A handler's return value is the job's result: bytes as they are, str as UTF-8, None as
    empty, anything else as JSON. An exception fails the attempt (FailJob, retried per the
    job's backoff while attempts remain); NonRetryableError fails the job for good. A job of a
    kind with no handler fails for good.
    """

    def __init__(
        self,
        client: Client,
        queue: str | Sequence[str],
        *,
        concurrency: int = 8,
        worker_id: str | None = None,
        lease: Seconds = 30.0,
        heartbeat_fraction: float = 1 / 3,
        ack_timeout: Seconds | None = None,
        claim_wait: Seconds = 5.0,
        shutdown_timeout: Seconds = 30.0,
        handle_signals: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.queues = [queue] if isinstance(queue, str) else list(queue)
        self.concurrency = concurrency
        self.worker_id = worker_id or _default_worker_id()
        self.lease = seconds(lease)
        self.heartbeat_interval = self.lease * heartbeat_fraction
        self.ack_timeout = seconds(ack_timeout) if ack_timeout is not None else None
        self.claim_wait = seconds(claim_wait)
        self.shutdown_timeout = seconds(shutdown_timeout)
        self.handle_signals = handle_signals
        self._handlers: dict[str, Handler] = {}
        self._running: dict[str, _Running] = {}
        self._reserved = 0  # slots promised to claims in flight
        self._claiming: asyncio.Task[None] | None = None
        self._completing: asyncio.Task[None] | None = None
        self._completions: list[wpb.Completion] = []
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._expired = False
        self._claim_failures = 0

    # -- registration and control ------------------------------------------------------------

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator: `@worker.handler("resize")` over `async def resize(job): ...`."""

        def register(fn: Handler) -> Handler:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Handler) -> None:
        self._handlers[kind] = fn

    def stop(self) -> None:
        """Begins a graceful shutdown; `run()` returns once it is done. A second call cancels
        the running handlers at once (their jobs are given back)."""
        if self._stopping:
            self._expire()
        self._stopping = True
        self._wake.set()

    @property
    def running(self) -> int:
        """Handlers running now."""
        return len(self._running)

    async def run(self) -> None:
        """Runs until stopped (SIGTERM/SIGINT with handle_signals, or `stop()`)."""
        loop = asyncio.get_running_loop()
        signals = self._install_signals(loop)
        deadline: float | None = None
        try:
            while True:
                self._wake.clear()
                self._pump()
                if self._stopping and self._idle():
                    return
                if self._stopping and deadline is None:
                    deadline = loop.time() + self.shutdown_timeout
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    self._expire()
                    deadline = loop.time() + 3600.0  # expired once; now wait for the releases
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    # -- the pump: claims and completions ----------------------------------------------------

    def _free(self) -> int:
        return self.concurrency - len(self._running) - self._reserved

    def _idle(self) -> bool:
        return (
            self._claiming is None
            and self._completing is None
            and not self._running
            and not self._completions
            and not self._background
        )

    def _pump(self) -> None:
        if self._completions and self._completing is None:
            batch, self._completions = self._completions[:100], self._completions[100:]
            n_next = 0 if self._stopping else max(0, self._free())
            self._reserved += n_next
            self._completing = self._spawn_tracked(self._complete(batch, n_next))
        if not self._stopping and self._claiming is None and self._free() > 0:
            n = min(self._free(), 100)
            self._reserved += n
            self._claiming = self._spawn_tracked(self._claim(n))

    def _spawn_tracked(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        task.add_done_callback(lambda _: self._wake.set())
        return task

    def _spawn_background(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            self._wake.set()

        task.add_done_callback(done)

    def _claim_request(self, n: int, wait: float) -> wpb.ClaimJobsRequest:
        return claim_request(
            self.queues,
            self.worker_id,
            n,
            wait=wait,
            lease=self.lease,
            ack_timeout=self.ack_timeout,
        )

    async def _claim(self, n: int) -> None:
        jobs: Sequence[wpb.ClaimedJob] = ()
        try:
            # Never cancelled: a claim in flight is let run to its end (its `wait`), so no job
            # is claimed for a caller that went away (docs/api.md, "Shut down").
            response: wpb.ClaimJobsResponse = await self.client.call(
                "ClaimJobs",
                self._claim_request(n, self.claim_wait),
                retry=False,
                timeout=self.claim_wait + 30.0,
            )
            jobs = response.jobs
            self._claim_failures = 0
        except JobdError as e:
            self._claim_failures += 1
            log.warning("claim failed (%s); retrying", e)
            if not self._stopping:
                await asyncio.sleep(self.client.retry.delay(min(self._claim_failures, 6)))
        finally:
            self._reserved -= n
            self._claiming = None
        self._accept(jobs)

    async def _complete(self, batch: list[wpb.Completion], n_next: int) -> None:
        request = wpb.CompleteJobsRequest(completions=batch)
        if n_next:
            request.next.CopyFrom(self._claim_request(n_next, 0.0))
        jobs: Sequence[wpb.ClaimedJob] = ()
        try:
            response: wpb.CompleteJobsResponse = await self.client.call("CompleteJobs", request)
            for completion, result in zip(batch, response.results, strict=False):
                if result.code != 0:
                    log.warning(
                        "job %s refused its result: %s (%s)",
                        completion.job_id,
                        result.message,
                        result.reason,
                    )
            jobs = response.next
        except JobdError as e:
            if isinstance(e, Unavailable):
                log.error("could not complete %d jobs: %s", len(batch), e)
            else:  # one completion spoiled the batch (a result too large, say): one by one
                for completion in batch:
                    self._spawn_background(self._complete_alone(completion))
        finally:
            self._reserved -= n_next
            self._completing = None
        self._accept(jobs)

    async def _complete_alone(self, completion: wpb.Completion) -> None:
        try:
            await self.client.call(
                "CompleteJob",
                wpb.CompleteJobRequest(
                    job_id=completion.job_id,
                    lease_token=completion.lease_token,
                    result=completion.result,
                ),
            )
        except JobdError as e:
            if isinstance(e, Unavailable):
                log.error("could not complete job %s: %s", completion.job_id, e)
                return
            await self._fail(completion.job_id, completion.lease_token, str(e), retryable=False)

    def _accept(self, jobs: Sequence[wpb.ClaimedJob]) -> None:
        for claimed in jobs:
            if self._stopping:
                self._spawn_background(self._release(claimed.job.id, claimed.lease_token))
                continue
            handler = self._handlers.get(claimed.job.kind)
            if handler is None:
                error = f"no handler for kind {claimed.job.kind!r} in worker {self.worker_id}"
                self._spawn_background(
                    self._fail(claimed.job.id, claimed.lease_token, error, retryable=False)
                )
                continue
            context = JobContext(self, claimed)
            task = asyncio.ensure_future(self._run_job(context, handler))
            context._task = task
            running = _Running(context, task)
            running.heartbeat = asyncio.ensure_future(self._heartbeats(running))
            self._running[claimed.job.id] = running
        self._wake.set()

    # -- one job -----------------------------------------------------------------------------

    async def _run_job(self, context: JobContext, handler: Handler) -> None:
        job = context.job
        try:
            with tracing.handler_span(job.kind, job.queue, job.id, job.attempt, job.trace_context):
                value = await handler(context)
            self._completions.append(
                wpb.Completion(job_id=job.id, lease_token=context.lease_token, result=encode(value))
            )
        except asyncio.CancelledError:
            running = self._running.get(job.id)
            reason = running.stop_reason if running else None
            if reason is None:
                raise
            if reason == "shutdown":
                await self._release(job.id, context.lease_token)
            # "cancelled" or "lost": the lease is void, there is nothing to report.
        except NonRetryableError as e:
            await self._fail(job.id, context.lease_token, _describe(e), retryable=False)
        except Exception as e:
            await self._fail(job.id, context.lease_token, _describe(e), retryable=True)
        finally:
            running = self._running.pop(job.id, None)
            if running and running.heartbeat:
                running.heartbeat.cancel()
            self._wake.set()

    async def _heartbeats(self, running: _Running) -> None:
        context = running.context
        ack = self.ack_timeout or SERVER_ACK_TIMEOUT
        delay = min(self.heartbeat_interval, ack / 2)
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = self.heartbeat_interval
            request = wpb.HeartbeatRequest(job_id=context.id, lease_token=context.lease_token)
            request.lease.CopyFrom(duration(self.lease))
            try:
                if await self._heartbeat_once(context, request):
                    return
            except Unavailable as e:
                log.warning("heartbeat for job %s failed: %s", context.id, e)

    async def _heartbeat_once(self, context: JobContext, request: wpb.HeartbeatRequest) -> bool:
        """One heartbeat; True when it stopped the handler (cancelled job, lease gone).
        Raises Unavailable when jobd could not be reached."""
        try:
            response: wpb.HeartbeatResponse = await self.client.call(
                "Heartbeat", request, timeout=max(self.heartbeat_interval, 1.0)
            )
        except Unavailable:
            raise
        except JobdError as e:
            log.warning("job %s: lease lost (%s); stopping its handler", context.id, e)
            self._stop_handler(context.id, "lost")
            return True
        if response.cancelled:
            context.cancelled = True
            self._stop_handler(context.id, "cancelled")
            return True
        return False

    def _stop_handler(self, job_id: str, reason: str) -> None:
        running = self._running.get(job_id)
        if running is not None and running.stop_reason is None:
            running.stop_reason = reason
            if running.task is not asyncio.current_task():  # progress() raises by itself
                running.task.cancel()

    def _expire(self) -> None:
        """The shutdown deadline passed: cancel the handlers still running; their jobs go back."""
        if self._expired:
            return
        self._expired = True
        for job_id in list(self._running):
            self._stop_handler(job_id, "shutdown")

    async def _fail(self, job_id: str, token: str, error: str, *, retryable: bool) -> None:
        try:
            await self.client.call(
                "FailJob",
                wpb.FailJobRequest(
                    job_id=job_id, lease_token=token, error=error, retryable=retryable
                ),
            )
        except JobdError as e:
            log.error("could not fail job %s: %s", job_id, e)

    async def _release(self, job_id: str, token: str) -> None:
        try:
            await self.client.call(
                "ReleaseJob",
                wpb.ReleaseJobRequest(
                    job_id=job_id, lease_token=token, reason=f"worker {self.worker_id} stopped"
                ),
            )
        except JobdError as e:
            log.error("could not give job %s back: %s", job_id, e)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if not self.handle_signals:
            return []
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signals on this platform
        return installed


def _describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{type(error).__name__}: {error}\n{text}"


def _default_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._\-:@/]", "-", socket.gethostname())[:80] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
