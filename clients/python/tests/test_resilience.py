"""Streams that resume across a jobd restart; calls retried while Redis is paused."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator

import pytest
from harness import Proxy, Stack, eventually, job_key, running
from jobd.v1 import job_service_pb2
from jobd.v1 import worker_service_pb2 as wpb

import jobd
from jobd.client import claim_request


async def test_watch_survives_a_jobd_restart_without_gap_or_duplicate(
    own_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobd.client")
    async with jobd.Client(own_stack.target) as client:
        job = await client.submit("restart", "k")
        claimed = await client.call(
            "ClaimJobs",
            claim_request(["restart"], "w-1", 1, wait=5, lease=120, ack_timeout=60),
        )
        token = claimed.jobs[0].lease_token

        async def progress(n: int) -> None:
            request = wpb.HeartbeatRequest(job_id=job.id, lease_token=token)
            request.progress.value = n
            await client.call("Heartbeat", request)

        seen: list[jobd.JobEvent] = []

        async def follow() -> None:
            async for event in client.watch(job.id):
                seen.append(event)

        watcher = asyncio.create_task(follow())
        for n in range(3):
            await progress(n)
        await eventually(lambda: asyncio.sleep(0, len(seen)), lambda n: n == 5, 10, "5 events")

        await asyncio.to_thread(own_stack.jobd.restart)
        assert not watcher.done()
        for n in range(3, 6):
            await progress(n)
        await client.call(
            "CompleteJob",
            wpb.CompleteJobRequest(job_id=job.id, lease_token=token, result=b"ok"),
        )
        await asyncio.wait_for(watcher, 20)

    assert any("resuming the watch" in r.getMessage() for r in caplog.records)
    assert [e.sequence for e in seen] == list(range(1, 10))
    assert [e.progress.value for e in seen[2:8]] == [0, 1, 2, 3, 4, 5]
    assert seen[-1].type == jobd.EventType.EVENT_TYPE_COMPLETED
    assert seen[-1].result == b"ok"


@pytest.fixture
def paused_stack() -> Iterator[Stack]:
    s = Stack("--redis-command-timeout", "300ms")
    yield s
    s.close()


async def test_calls_are_retried_while_redis_is_paused(
    paused_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobd.client")
    stack = paused_stack
    async with jobd.Client(stack.target) as client:
        existing = await client.submit("paused", "k", b"before")
        stack.redis.pause()
        try:
            get = asyncio.create_task(client.get(existing.id))
            submit = asyncio.create_task(client.submit("paused", "k", b"during"))
            await eventually(
                lambda: asyncio.sleep(0, caplog.records),
                lambda records: sum("UNAVAILABLE" in r.getMessage() for r in records) >= 2,
                10,
                "both calls to be refused with UNAVAILABLE and retried",
            )
            assert not get.done()
            assert not submit.done()
        finally:
            stack.redis.resume()
        got = await asyncio.wait_for(get, 20)
        made = await asyncio.wait_for(submit, 20)
        assert got.payload == b"before"
        assert (await client.get(made.id)).payload == b"during"
        # The retried submission carried a generated idempotency key: one job, not two.
        stats = await client.call(
            "GetQueueStats", job_service_pb2.GetQueueStatsRequest(queue="paused")
        )
        assert stats.queued == 2


async def test_without_retries_a_paused_redis_is_a_typed_unavailable(
    paused_stack: Stack,
) -> None:
    stack = paused_stack
    async with jobd.Client(stack.target, retry=jobd.RetryPolicy(max_attempts=1)) as client:
        job = await client.submit("paused", "k")
        stack.redis.pause()
        try:
            with pytest.raises(jobd.Unavailable) as refused:
                await client.get(job.id)
        finally:
            stack.redis.resume()
        assert refused.value.code.name == "UNAVAILABLE"
        assert isinstance(refused.value, jobd.RedisUnavailable)


async def test_submit_and_wait_follows_its_job_across_a_jobd_restart(
    own_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobd.client")
    async with jobd.Client(own_stack.target) as client:
        waiting = asyncio.create_task(client.submit_and_wait("restart", "later", b"x", timeout=60))
        await eventually(
            lambda: client.call(
                "GetQueueStats", job_service_pb2.GetQueueStatsRequest(queue="restart")
            ),
            lambda stats: stats.queued == 1,
            10,
            "the job to be submitted",
        )
        await asyncio.to_thread(own_stack.jobd.restart)
        assert not waiting.done()
        worker = jobd.Worker(client, "restart", concurrency=1, claim_wait=1, handle_signals=False)
        worker.register("later", lambda job: asyncio.sleep(0, b"after the restart"))
        run = asyncio.create_task(worker.run())
        assert await waiting == b"after the restart"
        worker.stop()
        await asyncio.wait_for(run, 10)
    assert any("following job" in r.getMessage() for r in caplog.records)


async def test_a_watch_that_keeps_ending_ok_on_an_unfinished_log_spends_its_budget(
    stack: Stack, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobd.client")
    resume = jobd.RetryPolicy(max_attempts=3, initial=0.05, max=0.1)
    async with jobd.Client(stack.target, resume=resume, watch_resume=0.5) as client:
        job = await client.submit(queue, "k")
        await client.cancel(job.id)
        # The log now claims an event 3 that is not there: jobd ends every watch after 2 with OK
        # (the job is finished), while GetJob says an event may follow 2.
        stack.redis.command("HSET", job_key(job.id), "seq", "3")
        started = time.monotonic()
        with pytest.raises(jobd.Unavailable) as spent:
            await asyncio.wait_for(_drain(client.watch(job.id, after_sequence=2)), 10)
    assert type(spent.value) is jobd.Unavailable, "the library's own, not jobd's"
    assert not spent.value.detailed
    # Ended with OK every time: the 0.5 s budget runs out, however many attempts it took
    # (about 6 with delays of 0.1 s at most; `max_attempts` does not bound a watch).
    resumed = [r for r in caplog.records if "resuming the watch" in r.getMessage()]
    assert len(resumed) > resume.max_attempts, resumed
    assert time.monotonic() - started >= 0.5


async def _drain(events: AsyncIterator[jobd.JobEvent]) -> None:
    async for _ in events:
        pass


async def test_a_quiet_watch_survives_cuts_spread_over_its_life(
    stack: Stack, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobd.client")
    # A budget of 0.3 s: 4 cuts 0.5 s apart without an event between would spend it, were each
    # resumed stream, open its while, not a fresh start (a long job's watch, cut every
    # --max-connection-age + grace, or by a proxy's idle timeout).
    resume = jobd.RetryPolicy(max_attempts=3, initial=0.05, max=0.1)
    proxy = await Proxy(stack.jobd.port).start()
    seen: list[jobd.JobEvent] = []
    try:
        async with (
            jobd.Client(stack.target) as direct,
            jobd.Client(proxy.target, resume=resume, watch_resume=0.3) as through,
        ):
            job = await direct.submit(queue, "k")

            async def follow() -> None:
                async for event in through.watch(job.id):
                    seen.append(event)

            watcher = asyncio.create_task(follow())
            await eventually(lambda: asyncio.sleep(0, len(seen)), lambda n: n == 1, 10, "QUEUED")
            for _ in range(4):
                answered = proxy.answered
                proxy.cut()

                async def resumed(before: int = answered) -> bool:
                    assert not watcher.done(), f"the watch ended after a cut: {watcher}"
                    return proxy.answered > before

                await eventually(resumed, bool, 10, "the watch to resume")
                # The resumed stream lives well past resume.max before the next cut.
                await asyncio.sleep(resume.max * 5)
            await direct.cancel(job.id, "done")
            await asyncio.wait_for(watcher, 10)
    finally:
        await proxy.close()
    assert [(e.sequence, e.type) for e in seen] == [
        (1, jobd.EventType.EVENT_TYPE_QUEUED),
        (2, jobd.EventType.EVENT_TYPE_CANCELLED),
    ]
    resumes = [r.getMessage() for r in caplog.records if "resuming the watch" in r.getMessage()]
    assert len(resumes) >= 4, resumes


async def test_submit_and_wait_sends_its_keyed_submission_again_when_its_reply_is_lost(
    stack: Stack, queue: str
) -> None:
    proxy = await Proxy(stack.jobd.port).start()
    try:
        async with jobd.Client(stack.target) as direct, jobd.Client(proxy.target) as through:

            async def queued(client: jobd.Client = direct) -> int:
                stats = await client.call(
                    "GetQueueStats", job_service_pb2.GetQueueStatsRequest(queue=queue)
                )
                return int(stats.queued)

            await queued(through)  # the connection through the proxy is up
            proxy.hold_replies = True
            waiting = asyncio.create_task(through.submit_and_wait(queue, "k", timeout=30))
            await eventually(queued, lambda n: n == 1, 10, "the job to be written")
            # Written, its reply lost on the way: the connection breaks under the call, before
            # the client knows the job's id. Its generated idempotency key makes sending it again
            # safe.
            proxy.hold_replies = False
            proxy.cut()
            worker = jobd.Worker(direct, queue, claim_wait=1, handle_signals=False)
            worker.register("k", lambda job: asyncio.sleep(0, b"done"))
            async with running(worker):
                assert await waiting == b"done"
            stats = await direct.call(
                "GetQueueStats", job_service_pb2.GetQueueStatsRequest(queue=queue)
            )
            assert (stats.queued, stats.completed) == (0, 1), "one job, not two"
    finally:
        await proxy.close()


async def test_a_watch_resumes_for_its_budget_of_failures_then_gives_up(
    stack: Stack, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobd.client")
    # Attempts every 0.1 s at most, 3 `max_attempts` that a watch does not count: only the
    # 3 s budget bounds its resumes.
    resume = jobd.RetryPolicy(max_attempts=3, initial=0.05, max=0.1)
    budget = 3.0
    proxy = await Proxy(stack.jobd.port).start()
    seen: list[jobd.JobEvent] = []
    try:
        async with (
            jobd.Client(stack.target) as direct,
            jobd.Client(proxy.target, resume=resume, watch_resume=budget) as through,
        ):
            job = await direct.submit(queue, "k")

            async def follow() -> None:
                async for event in through.watch(job.id):
                    seen.append(event)

            def events(n: int) -> Awaitable[int]:
                return eventually(
                    lambda: asyncio.sleep(0, len(seen)), lambda m: m == n, 10, f"{n} events"
                )

            watcher = asyncio.create_task(follow())
            await events(1)
            # 1.5 s of refused connections: failed attempts in a row, within the budget.
            answered = proxy.answered
            await proxy.close()
            await asyncio.sleep(1.5)
            assert not watcher.done(), f"the watch gave up within its budget: {watcher}"
            failed = [r for r in caplog.records if "resuming the watch" in r.getMessage()]
            assert len(failed) > resume.max_attempts, failed
            await proxy.start()

            async def resumed() -> int:
                return proxy.answered

            await eventually(resumed, lambda n: n > answered, 15, "the watch to resume")
            await direct.call(
                "ClaimJobs", claim_request([queue], "w", 1, wait=1, lease=120, ack_timeout=60)
            )
            await events(2)
            # An event started the budget afresh; refused for good, the watch gives up once its
            # failures have lasted 3 s, with the transport's error.
            closed = time.monotonic()
            await proxy.close()
            with pytest.raises(jobd.Unavailable) as spent:
                await asyncio.wait_for(watcher, 10)
            elapsed = time.monotonic() - closed
    finally:
        await proxy.close()
    assert [(e.sequence, e.type) for e in seen] == [
        (1, jobd.EventType.EVENT_TYPE_QUEUED),
        (2, jobd.EventType.EVENT_TYPE_STARTED),
    ]
    assert not spent.value.detailed, "the transport's error, not jobd's"
    assert budget <= elapsed < 2 * budget, elapsed
