"""The ten-line worker. Run: JOBD_TARGET=127.0.0.1:50051 python examples/worker.py
It handles "welcome" jobs of the "emails" queue (JOBD_QUEUE) until SIGTERM or Ctrl-C."""

import asyncio
import os

import jobd


async def main() -> None:
    async with jobd.Client(os.environ.get("JOBD_TARGET", "127.0.0.1:50051")) as client:
        worker = jobd.Worker(client, queue=os.environ.get("JOBD_QUEUE", "emails"), concurrency=8)

        @worker.handler("welcome")
        async def welcome(job: jobd.JobContext) -> str:
            return f"welcome sent to {job.json()['to']}"

        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
