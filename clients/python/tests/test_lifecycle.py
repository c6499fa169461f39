"""Submit -> a worker handles -> submit_and_wait gets the result; failures and batching."""

from __future__ import annotations

import asyncio

import pytest
from harness import eventually, running

import jobd


async def test_submit_and_wait_returns_the_handlers_result(client: jobd.Client, queue: str) -> None:
    worker = jobd.Worker(client, queue, concurrency=4, handle_signals=False, claim_wait=1)

    @worker.handler("greet")
    async def greet(job: jobd.JobContext) -> dict[str, str]:
        return {"hello": job.json()["name"], "job": job.id}

    async with running(worker):
        result = await client.submit_and_wait(queue, "greet", {"name": "ada"}, timeout=20)
    assert result.startswith(b'{"hello":"ada","job":"')

    job_id = result.decode().split('"job":"')[1].rstrip('"}')
    job = await client.get(job_id)
    assert job.state == jobd.JobState.JOB_STATE_COMPLETED
    assert job.attempt == 1
    assert job.result == result


async def test_results_are_encoded_by_type(client: jobd.Client, queue: str) -> None:
    worker = jobd.Worker(client, queue, concurrency=4, handle_signals=False, claim_wait=1)

    @worker.handler("echo")
    async def echo(job: jobd.JobContext) -> object:
        kind = job.labels["as"]
        return {"bytes": b"\x00\xff", "str": "h\u00e9", "none": None, "json": [1, 2]}[kind]

    async with running(worker):
        got = {
            kind: await client.submit_and_wait(queue, "echo", labels={"as": kind}, timeout=20)
            for kind in ["bytes", "str", "none", "json"]
        }
    assert got == {"bytes": b"\x00\xff", "str": "h\u00e9".encode(), "none": b"", "json": b"[1,2]"}


async def test_an_exception_fails_the_attempt_and_non_retryable_fails_the_job(
    client: jobd.Client, queue: str
) -> None:
    worker = jobd.Worker(client, queue, concurrency=2, handle_signals=False, claim_wait=1)

    @worker.handler("flaky")
    async def flaky(job: jobd.JobContext) -> str:
        if job.attempt < 2:
            raise RuntimeError("first attempt breaks")
        return "second attempt works"

    @worker.handler("doomed")
    async def doomed(job: jobd.JobContext) -> None:
        raise jobd.NonRetryableError("bad input")

    async with running(worker):
        flaky_result = await client.submit_and_wait(
            queue, "flaky", backoff=jobd.Backoff(initial=0.05), timeout=20
        )
        with pytest.raises(jobd.JobFailed) as failed:
            await client.submit_and_wait(queue, "doomed", max_attempts=5, timeout=20)
    assert flaky_result == b"second attempt works"
    assert failed.value.attempt == 1
    assert failed.value.error.startswith("NonRetryableError: bad input")


async def test_many_jobs_complete_in_batches(client: jobd.Client, queue: str) -> None:
    worker = jobd.Worker(client, queue, concurrency=8, handle_signals=False, claim_wait=1)

    @worker.handler("square")
    async def square(job: jobd.JobContext) -> str:
        return str(int(job.text()) ** 2)

    jobs = await client.submit_many(jobd.JobSpec(queue, "square", str(i)) for i in range(200))
    async with running(worker):
        done = await eventually(
            lambda: asyncio.gather(*(client.get(j.id) for j in jobs)),
            lambda got: all(j.state == jobd.JobState.JOB_STATE_COMPLETED for j in got),
            30,
            "every job to complete",
        )
    assert [j.result for j in done] == [str(i * i).encode() for i in range(200)]
    assert all(j.attempt == 1 for j in done)


async def test_watch_replays_and_follows_to_the_terminal_event(
    client: jobd.Client, queue: str
) -> None:
    job = await client.submit(queue, "w", b"x")
    worker = jobd.Worker(client, queue, concurrency=1, handle_signals=False, claim_wait=1)

    @worker.handler("w")
    async def w(ctx: jobd.JobContext) -> bytes:
        await ctx.progress(50, "half way")
        return b"done"

    async with running(worker):
        events = [e async for e in client.watch(job.id)]
    types = [e.type for e in events]
    assert types == [
        jobd.EventType.EVENT_TYPE_QUEUED,
        jobd.EventType.EVENT_TYPE_STARTED,
        jobd.EventType.EVENT_TYPE_PROGRESS,
        jobd.EventType.EVENT_TYPE_COMPLETED,
    ]
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert events[2].progress.value == 50
    assert events[2].progress.message == "half way"
    assert events[3].result == b"done"

    # From its last sequence, a finished job's watch ends at once with nothing, and no error.
    async def after_last() -> list[jobd.JobEvent]:
        return [e async for e in client.watch(job.id, after_sequence=4)]

    assert await asyncio.wait_for(after_last(), 2) == []


async def test_cancelled_job_raises_from_submit_and_wait(client: jobd.Client, queue: str) -> None:
    job = await client.submit(queue, "never", delay=60)
    waiter = asyncio.create_task(_wait_outcome(client, job.id))
    await client.cancel(job.id, "changed my mind")
    with pytest.raises(jobd.JobWasCancelled) as cancelled:
        await asyncio.wait_for(waiter, 10)
    assert cancelled.value.reason == "changed my mind"


async def _wait_outcome(client: jobd.Client, job_id: str) -> None:
    async for event in client.watch(job_id):
        if event.type == jobd.EventType.EVENT_TYPE_CANCELLED:
            raise jobd.JobWasCancelled(job_id, event.reason, event.attempt)
