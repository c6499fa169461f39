"""The jobd Python library against arq on the same machine, in the shape of bench/bullmq.

N jobs; P submitters, each submitting one job and waiting for its result, in a loop (the
library's `submit_and_wait`; arq's `enqueue_job` + `Job.result`); W workers with a no-op
handler, each running up to C jobs at once; every library's defaults otherwise, so each runs
in its natural form (no hand-written batching). Runs alternate jobd, arq, jobd, arq, ... each
on a fresh redis-server (and jobd), after a warm-up. Everything, clients and workers alike, is
one Python process on one event loop, as bench/bullmq is one Node process. Reports jobs/s and
submit-to-result latency; prints one JSON line per system at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "tests"))

import jobd
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker as ArqWorker
from arq.worker import func
from harness import Jobd, Redis


async def drive(
    submit_and_wait: Callable[[], Awaitable[Any]], jobs: int, in_flight: int
) -> dict[str, float]:
    remaining = jobs
    latencies: list[float] = []

    async def submitter() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sent = time.perf_counter()
            await submit_and_wait()
            latencies.append((time.perf_counter() - sent) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(in_flight)))
    seconds = time.perf_counter() - started
    latencies.sort()
    at = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"jobs_per_sec": jobs / seconds, "p50_ms": at(0.5), "p99_ms": at(0.99)}


async def run_jobd(args: argparse.Namespace) -> dict[str, float]:
    redis = Redis()
    server = Jobd(redis)
    try:
        async with (
            jobd.Client(server.target) as workers_client,
            jobd.Client(server.target) as client,
        ):
            workers = []
            for _ in range(args.workers):
                worker = jobd.Worker(
                    workers_client, "bench", concurrency=args.concurrency, handle_signals=False
                )
                worker.register("noop", noop_jobd)
                workers.append(worker)
            running = [asyncio.create_task(w.run()) for w in workers]
            call = lambda: client.submit_and_wait("bench", "noop")  # noqa: E731
            await drive(call, max(200, args.jobs // 10), args.in_flight)
            result = await drive(call, args.jobs, args.in_flight)
            for w in workers:
                w.stop()
            await asyncio.gather(*running)
            return result
    finally:
        server.close()
        redis.stop()


async def noop_jobd(job: jobd.JobContext) -> str:
    return "done"


async def noop_arq(ctx: dict[str, Any]) -> str:
    return "done"


async def run_arq(args: argparse.Namespace) -> dict[str, float]:
    redis = Redis()
    settings = RedisSettings(host="127.0.0.1", port=redis.port)
    try:
        pool = await create_pool(settings)
        workers = [
            ArqWorker(
                functions=[func(noop_arq, name="noop")],
                redis_settings=settings,
                max_jobs=args.concurrency,
                handle_signals=False,
                poll_delay=args.arq_poll_delay,
            )
            for _ in range(args.workers)
        ]
        running = [asyncio.create_task(w.async_run()) for w in workers]

        async def call() -> None:
            job = await pool.enqueue_job("noop")
            assert job is not None
            await job.result(timeout=120, poll_delay=args.arq_poll_delay)

        await drive(call, max(200, args.jobs // 10), args.in_flight)
        result = await drive(call, args.jobs, args.in_flight)
        for w in workers:
            await w.close()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await pool.aclose()
        return result
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--arq-poll-delay",
        type=float,
        default=0.5,
        help="arq's poll delay, for its workers and Job.result (its default: 0.5 s)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternated")
    parser.add_argument("--small", action="store_true", help="300 jobs, one run each (CI)")
    args = parser.parse_args()
    if args.small:
        args.jobs, args.runs = 300, 1
    results: dict[str, list[dict[str, float]]] = {"jobd-python": [], "arq": []}
    for i in range(args.runs):
        for name, run in (("jobd-python", run_jobd), ("arq", run_arq)):
            figures = asyncio.run(run(args))
            results[name].append(figures)
            print(
                f"run {i + 1} {name:12} " + "  ".join(f"{k} {v:9.1f}" for k, v in figures.items()),
                flush=True,
            )
    for name, runs in results.items():
        report: dict[str, Any] = {
            "scenario": f"{name}-lifecycle", "jobs": args.jobs, "in_flight": args.in_flight,
            "workers": args.workers, "concurrency": args.concurrency, "runs": len(runs),
        }  # fmt: skip
        if name == "arq":
            report["poll_delay_s"] = args.arq_poll_delay
        for figure in runs[0]:
            values = [r[figure] for r in runs]
            report[figure] = round(statistics.median(values), 1)
            report.setdefault("spread", {})[figure] = [round(min(values), 1), round(max(values), 1)]
        print(json.dumps(report))


if __name__ == "__main__":
    main()
