"""The worker runtime: cancellation, graceful shutdown, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from harness import Endless, NewWorker, Stack, eventually, running
from jobd.v1 import job_service_pb2

import jobd

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worker.py"


async def events_of(client: jobd.Client, job_id: str) -> list[jobd.EventType]:
    """The job's event types so far (a finished or running job: the stream is cut at once)."""
    job = await client.get(job_id)
    types: list[jobd.EventType] = []
    async for event in client.watch(job_id):
        types.append(event.type)
        if event.sequence >= job.last_sequence:
            break
    return types


async def test_a_cancelled_jobs_handler_is_cancelled_within_one_heartbeat_interval(
    client: jobd.Client, queue: str, new_worker: NewWorker
) -> None:
    worker = new_worker(concurrency=2, lease=3)
    assert worker.heartbeat_interval == 1.0
    long = Endless()
    worker.register("long", long)
    async with running(worker):
        job = await client.submit(queue, "long")
        await asyncio.wait_for(long.started.wait(), 10)
        cancel_sent = time.monotonic()
        await client.cancel(job.id, "stop it")
        cancelled_at = await eventually(
            lambda: asyncio.sleep(0, long.cancelled_at), bool, 5, "the handler to see cancellation"
        )
        assert cancelled_at is not None
        # One heartbeat interval, plus the heartbeat's own round trip.
        assert cancelled_at - cancel_sent <= worker.heartbeat_interval + 0.75
        await eventually(
            lambda: asyncio.sleep(0, worker.running), lambda n: n == 0, 5, "no handler"
        )
    done = await client.get(job.id)
    assert done.state == jobd.JobState.JOB_STATE_CANCELLED
    assert done.cancel_reason == "stop it"


async def test_shutdown_finishes_running_jobs_and_gives_back_claimed_ones_at_no_cost(
    client: jobd.Client, queue: str, new_worker: NewWorker
) -> None:
    worker = new_worker(concurrency=4, claim_wait=5, shutdown_timeout=20)
    finish = asyncio.Event()
    handled: list[str] = []

    @worker.handler("slow")
    async def slow(job: jobd.JobContext) -> str:
        handled.append(job.id)
        await finish.wait()
        return "finished"

    @worker.handler("quick")
    async def quick(job: jobd.JobContext) -> str:
        handled.append(job.id)
        return "must not run"

    async with running(worker) as run:
        slow_jobs = [await client.submit(queue, "slow") for _ in range(2)]
        await eventually(lambda: asyncio.sleep(0, len(handled)), lambda n: n == 2, 10, "2 running")
        # The other two slots have a claim waiting in jobd (long poll): stop, then feed it.
        await eventually(lambda: asyncio.sleep(0, worker._claiming), bool, 5, "a claim in flight")
        worker.stop()
        quick_jobs = await client.submit_many(jobd.JobSpec(queue, "quick") for _ in range(2))
        # The claim in flight is let run to its end, and what it brings is given back.
        await eventually(
            lambda: asyncio.sleep(0, worker._claiming), lambda c: c is None, 10, "claim"
        )
        await eventually(
            lambda: asyncio.gather(*(client.get(j.id) for j in quick_jobs)),
            lambda jobs: all(j.state == jobd.JobState.JOB_STATE_QUEUED for j in jobs),
            10,
            "the claimed jobs to be back in their queue",
        )
        assert not run.done(), "the worker waits for its running handlers"
        finish.set()
        await asyncio.wait_for(run, 15)

    for job in slow_jobs:
        done = await client.get(job.id)
        assert done.state == jobd.JobState.JOB_STATE_COMPLETED
        assert done.attempt == 1
        assert done.result == b"finished"
    given_back = 0
    for job in quick_jobs:
        back = await client.get(job.id)
        assert back.state == jobd.JobState.JOB_STATE_QUEUED
        assert back.attempt == 0, "a job given back costs no attempt"
        events = await events_of(client, job.id)
        if events != [jobd.EventType.EVENT_TYPE_QUEUED]:  # claimed, then given back
            assert events == [
                jobd.EventType.EVENT_TYPE_QUEUED,
                jobd.EventType.EVENT_TYPE_STARTED,
                jobd.EventType.EVENT_TYPE_RELEASED,
            ]
            given_back += 1
    assert given_back >= 1, "the claim in flight during shutdown got a job"
    assert set(handled) == {j.id for j in slow_jobs}

    # Nothing is lost: another worker does them, on their first attempt.
    again = new_worker(concurrency=2)
    again.register("quick", lambda job: asyncio.sleep(0, "done later"))
    async with running(again):
        for job in quick_jobs:
            history = [e async for e in client.watch(job.id)]
            result = history[-1]
            assert result.type == jobd.EventType.EVENT_TYPE_COMPLETED
            assert result.attempt == 1


async def test_handlers_past_the_shutdown_deadline_are_cancelled_and_their_jobs_given_back(
    client: jobd.Client, queue: str, new_worker: NewWorker
) -> None:
    worker = new_worker(concurrency=1, shutdown_timeout=0.5)
    stuck = Endless()
    worker.register("stuck", stuck)
    async with running(worker) as run:
        job = await client.submit(queue, "stuck")
        await asyncio.wait_for(stuck.started.wait(), 10)
        worker.stop()
        await asyncio.wait_for(run, 10)
    assert stuck.cancelled_at is not None
    back = await client.get(job.id)
    assert back.state == jobd.JobState.JOB_STATE_QUEUED
    assert back.attempt == 0


async def test_the_example_worker_serves_jobs_and_exits_cleanly_on_sigterm(
    stack: Stack, client: jobd.Client, queue: str
) -> None:
    env = {**os.environ, "JOBD_TARGET": stack.target, "JOBD_QUEUE": queue}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLE), env=env)
    try:
        results = await asyncio.gather(
            *(
                client.submit_and_wait(queue, "welcome", {"to": f"u{i}@example.com"}, timeout=30)
                for i in range(5)
            )
        )
        assert sorted(results) == [f"welcome sent to u{i}@example.com".encode() for i in range(5)]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stats = await client.call("GetQueueStats", job_service_pb2.GetQueueStatsRequest(queue=queue))
    assert (stats.queued, stats.running, stats.completed) == (0, 0, 5)


async def test_progress_raises_cancellation_once_the_job_is_cancelled(
    client: jobd.Client, queue: str, new_worker: NewWorker
) -> None:
    worker = new_worker(concurrency=1)
    reported = asyncio.Event()
    outcome: list[str] = []

    @worker.handler("reporting")
    async def reporting(job: jobd.JobContext) -> None:
        try:
            for step in range(10_000):
                await job.progress(step, "working")
                reported.set()
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            outcome.append(f"cancelled: {job.cancelled}")
            raise

    async with running(worker):
        job = await client.submit(queue, "reporting")
        await asyncio.wait_for(reported.wait(), 10)
        await client.cancel(job.id)
        await eventually(lambda: asyncio.sleep(0, outcome), bool, 5, "progress to raise")
    assert outcome == ["cancelled: True"]
    assert (await client.get(job.id)).state == jobd.JobState.JOB_STATE_CANCELLED
