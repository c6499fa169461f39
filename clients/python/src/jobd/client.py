"""Client: one gRPC channel to jobd, the submitter API, and the typed calls the worker uses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from . import service_config, tracing
from .codec import duration
from .errors import (
    Cancelled,
    Internal,
    JobdError,
    JobFailed,
    JobWasCancelled,
    Unavailable,
    from_rpc_error,
)
from .retry import NO_RETRY, RESUME_POLICY, RetryPolicy
from .spec import Backoff, JobSpec
from .v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, worker_service_pb2_grpc
from .v1 import worker_service_pb2 as wpb

log = logging.getLogger("jobd.client")


Job = job_pb2.Job
JobEvent = job_pb2.JobEvent

#: Events after which a job's log ends.
TERMINAL_EVENTS = frozenset(
    {
        job_pb2.EVENT_TYPE_COMPLETED,
        job_pb2.EVENT_TYPE_FAILED,
        job_pb2.EVENT_TYPE_CANCELLED,
    }
)

#: States a job never leaves.
TERMINAL_STATES = frozenset(
    {
        job_pb2.JOB_STATE_COMPLETED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    }
)


class Client:
    """A connection to jobd. Use `async with Client(...)`, or call `close()`.

    target: "host:port". token: a bearer token, sent as `authorization: Bearer <token>` on every
    call. TLS: `ca_file` (or `tls=True` for the system's roots), and `cert_file`/`key_file` for
    a client certificate (mTLS). retry: the policy for UNAVAILABLE on calls that are safe to
    repeat; submissions are made safe by an idempotency key the client generates when the
    caller gave none (`retry_submissions=False` sends none and does not retry them). resume:
    the backoff of resumed streams (and the attempts of a `submit_and_wait` submission sent
    again); watch_resume: how long, in seconds, `watch` keeps resuming while every attempt
    fails (60).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
        retry: RetryPolicy | None = None,
        resume: RetryPolicy = RESUME_POLICY,
        watch_resume: float = 60.0,
        retry_submissions: bool = True,
        call_timeout: float = 30.0,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            *channel_options,
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or ca_file or cert_file:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(ca_file).read_bytes() if ca_file else None,
                private_key=Path(key_file).read_bytes() if key_file else None,
                certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
            )
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._auth: list[tuple[str, str]] = [("authorization", f"Bearer {token}")] if token else []
        self.retry = retry or RetryPolicy()
        self.resume = resume
        self.watch_resume = watch_resume
        self.retry_submissions = retry_submissions
        self.call_timeout = call_timeout
        self.jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
        self._unary: dict[str, Callable[..., Awaitable[Any]]] = {
            name: getattr(stub, name)
            for stub, names in (
                (self.jobs, ["SubmitJob", "SubmitJobs", "GetJob", "CancelJob"]),
                (self.jobs, ["GetQueueStats", "ListJobs"]),
                (self.workers, ["ClaimJob", "ClaimJobs", "Heartbeat", "CompleteJob"]),
                (self.workers, ["CompleteJobs", "FailJob", "ReleaseJob"]),
            )
            for name in names
        }

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- calls -------------------------------------------------------------------------------

    def metadata(self, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        return [*self._auth, *extra]

    async def call(
        self,
        method: str,
        request: Any,
        *,
        retry: bool | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """One unary call by method name ("GetJob"), with typed errors.

        Deadline: `timeout`, else the service config's for the method, else `call_timeout`.
        UNAVAILABLE is retried per `self.retry` when the service config says the method is
        safe to repeat (`retry=None`), or as `retry` says (a keyed submission, say)."""
        config = service_config.METHODS.get(method)
        if retry is None:
            retry = config is not None and config.retry is not None
        if timeout is None:
            timeout = config.timeout if config and config.timeout else self.call_timeout
        policy = self.retry if retry else NO_RETRY
        stub = self._unary[method]
        attempt = 0
        while True:
            try:
                return await stub(request, timeout=timeout, metadata=self.metadata(metadata))
            except grpc.aio.AioRpcError as e:
                error = from_rpc_error(e)
                attempt += 1
                if not isinstance(error, Unavailable) or attempt >= policy.max_attempts:
                    raise error from e
                delay = policy.delay(attempt - 1)
                log.info("retrying %s in %.2fs after %s", method, delay, error)
                await asyncio.sleep(delay)

    # -- submitter API -----------------------------------------------------------------------

    async def submit(self, queue: str, kind: str, payload: Any = b"", **options: Any) -> Job:
        """Submits one job (options as `JobSpec`'s) and returns it, with its id."""
        spec = JobSpec(queue, kind, payload, **options)
        request = spec.to_proto(generated_key=self.retry_submissions)
        with tracing.submit_span("jobd.SubmitJob", queue) as headers:
            response: job_service_pb2.SubmitJobResponse = await self.call(
                "SubmitJob",
                request,
                retry=bool(request.idempotency_key),
                metadata=headers,
            )
        return response.job

    async def submit_many(self, specs: Iterable[JobSpec]) -> list[Job]:
        """Submits up to 1000 jobs in one call; returns them in the same order."""
        requests = [s.to_proto(generated_key=self.retry_submissions) for s in specs]
        queue = requests[0].queue if requests else ""
        with tracing.submit_span("jobd.SubmitJobs", queue) as headers:
            response: job_service_pb2.SubmitJobsResponse = await self.call(
                "SubmitJobs",
                job_service_pb2.SubmitJobsRequest(jobs=requests),
                retry=all(r.idempotency_key for r in requests),
                metadata=headers,
            )
        return [r.job for r in response.results]

    async def get(self, job_id: str) -> Job:
        """The job, with its payload and result. JobNotFound when unknown or past retention."""
        response: job_service_pb2.GetJobResponse = await self.call(
            "GetJob", job_service_pb2.GetJobRequest(job_id=job_id)
        )
        return response.job

    async def cancel(self, job_id: str, reason: str = "") -> Job:
        """Cancels a queued or running job; its worker hears of it at its next heartbeat."""
        response: job_service_pb2.CancelJobResponse = await self.call(
            "CancelJob", job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        )
        return response.job

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncGenerator[JobEvent, None]:
        """The job's events after `after_sequence`, then live ones, ending after the terminal
        event. A broken stream (UNAVAILABLE, a jobd shutting down, a proxy's idle cut) is
        resumed from the last event received, with `resume`'s backoff: no event is missed or
        repeated. Ends with no event when the job had finished by `after_sequence` (jobd ends
        the stream with OK, and GetJob says the job is over).

        The resumes run out once failures in a row have lasted `watch_resume` seconds (60)
        or longer: the last attempt's error is raised (`Unavailable` when jobd kept ending
        the stream with OK on an unfinished job). An event, or the break of a stream that had
        stayed open for `resume.max` seconds, starts afresh, so a quiet watch survives any
        number of cuts over its life."""
        last = after_sequence
        budget = _Budget(self.resume, self.watch_resume)
        while True:
            call = self.jobs.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=last),
                metadata=self.metadata(),
            )
            error: JobdError
            opened: float | None = None
            try:
                await call.initial_metadata()
                opened = time.monotonic()
                async for event in call:
                    if event.sequence <= last:
                        continue
                    last = event.sequence
                    budget.restart()
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
                # Ended with OK and no terminal event: when the job had finished by `last`, its
                # terminal event came before; otherwise the replica stopped following it.
                if await self._finished_by(job_id, last):
                    return
                error = _ended_early(f"the watch of job {job_id}")
            except grpc.aio.AioRpcError as e:
                error = from_rpc_error(e)
                if not _resumable(error):
                    raise error from e
                if opened is not None and time.monotonic() - opened >= self.resume.max:
                    budget.restart()  # a healthy stream broke: a fresh start
            finally:
                call.cancel()
            log.info("resuming the watch of %s after sequence %d: %s", job_id, last, error)
            await budget.back_off(error)

    async def _finished_by(self, job_id: str, sequence: int) -> bool:
        """Whether the job is COMPLETED, FAILED or CANCELLED with no event after `sequence`."""
        try:
            job = await self.get(job_id)
        except JobdError:
            return False
        return job.state in TERMINAL_STATES and job.last_sequence <= sequence

    async def submit_and_wait(
        self,
        queue: str,
        kind: str,
        payload: Any = b"",
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> bytes:
        """Submits a job and waits for its outcome: returns its result, or raises JobFailed or
        JobWasCancelled. `timeout` (seconds) bounds the whole wait (asyncio.TimeoutError)."""
        work = self._submit_and_wait(JobSpec(queue, kind, payload, **options))
        if timeout is None:
            return await work
        return await asyncio.wait_for(work, timeout)

    async def _submit_and_wait(self, spec: JobSpec) -> bytes:
        request = spec.to_proto(generated_key=self.retry_submissions)
        retry = bool(request.idempotency_key)
        job_id = ""
        last = 0
        failures = 0
        with tracing.submit_span("jobd.SubmitAndWatchJobs", spec.queue) as headers:
            while not job_id:
                call = self.jobs.SubmitAndWatchJobs(
                    job_service_pb2.SubmitJobsRequest(jobs=[request]),
                    metadata=self.metadata(headers),
                )
                error: JobdError
                try:
                    async for message in call:
                        if message.HasField("submitted"):
                            job_id = message.submitted.results[0].job.id
                            continue
                        event = message.event
                        if event.sequence <= last:
                            continue
                        last = event.sequence
                        if event.type in TERMINAL_EVENTS:
                            return _outcome(event)
                    # Ended with OK before the outcome: follow the job, if it was submitted.
                    error = _ended_early("SubmitAndWatchJobs")
                except grpc.aio.AioRpcError as e:
                    error = from_rpc_error(e)
                finally:
                    call.cancel()
                if job_id:
                    break  # submitted: follow it with WatchJob from `last`
                # Not known to be submitted: sent again only with an idempotency key.
                failures += 1
                if not (retry and _resumable(error)) or failures >= self.resume.max_attempts:
                    raise error
                await asyncio.sleep(self.resume.delay(failures - 1))
        log.info("following job %s with WatchJob after sequence %d: its stream broke", job_id, last)
        async for event in self.watch(job_id, after_sequence=last):
            if event.type in TERMINAL_EVENTS:
                return _outcome(event)
        raise Internal(f"the watch of job {job_id} ended without its outcome")


class _Budget:
    """A watch's resumes: failed attempts in a row, and since when. `back_off` raises the
    error once they have lasted `seconds` or longer, else sleeps the policy's delay."""

    def __init__(self, policy: RetryPolicy, seconds: float) -> None:
        self.policy = policy
        self.seconds = seconds
        self.failures = 0
        self.since: float | None = None

    def restart(self) -> None:
        self.failures = 0
        self.since = None

    async def back_off(self, error: JobdError) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since >= self.seconds:
            raise error
        await asyncio.sleep(self.policy.delay(self.failures))
        self.failures += 1


def _resumable(error: JobdError) -> bool:
    """A stream broken by the transport or a replica going away, not by jobd refusing it:
    UNAVAILABLE (SHUTTING_DOWN included), CANCELLED, and INTERNAL or UNKNOWN that jobd did not
    give (grpc's own for a connection lost under the call, "Stream removed", say)."""
    if isinstance(error, Unavailable | Cancelled):
        return True
    transport = error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    return transport and not error.detailed


def _ended_early(stream: str) -> Unavailable:
    """A stream jobd ended with OK before the job's terminal event: resumable."""
    return Unavailable(
        f"{stream} ended before the job's terminal event",
        code=grpc.StatusCode.UNAVAILABLE,
        reason="UNAVAILABLE",
    )


def _outcome(event: JobEvent) -> bytes:
    if event.type == job_pb2.EVENT_TYPE_COMPLETED:
        return bytes(event.result)
    if event.type == job_pb2.EVENT_TYPE_FAILED:
        raise JobFailed(event.job_id, event.error, event.attempt)
    raise JobWasCancelled(event.job_id, event.reason, event.attempt)


def claim_request(
    queues: Sequence[str],
    worker_id: str,
    max_jobs: int,
    *,
    wait: float,
    lease: float | None,
    ack_timeout: float | None,
) -> wpb.ClaimJobsRequest:
    claim = wpb.ClaimJobRequest(queues=list(queues), worker_id=worker_id)
    claim.wait.CopyFrom(duration(wait))
    if lease is not None:
        claim.lease.CopyFrom(duration(lease))
    if ack_timeout is not None:
        claim.ack_timeout.CopyFrom(duration(ack_timeout))
    return wpb.ClaimJobsRequest(claim=claim, max_jobs=max_jobs)


__all__ = ["Backoff", "Client", "Job", "JobEvent", "JobSpec", "RetryPolicy", "claim_request"]
