"""A real redis-server and a real jobd on free ports, a TCP proxy a test can cut, one way to wait
on a condition, and the pieces of a worker test: a worker run for a block, and a handler that
runs until cancelled."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import grpc

import jobd

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")

#: The `new_worker` fixture (conftest.py): makes a worker of the test's queue.
NewWorker = Callable[..., jobd.Worker]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jobd_binary() -> str:
    if os.environ.get("JOBD_BIN"):
        return os.environ["JOBD_BIN"]
    built = REPO / "target" / "debug" / "jobd"
    if not built.exists():
        subprocess.run(["cargo", "build", "--locked", "--bin", "jobd"], cwd=REPO, check=True)
    return str(built)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout: float,
    what: str,
) -> T:
    """Polls `probe` until `accept` holds for its value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value}")
        await asyncio.sleep(0.02)


class Proxy:
    """A TCP proxy in front of jobd, on the test's event loop: `cut()` resets every connection
    through it (new ones are accepted); `close()` also stops listening (connections are refused,
    as by a jobd that is down) until `start()` again, on the same port; `hold_replies` drops
    what jobd sends; `answered` counts the calls jobd answered through it, read from the HTTP/2
    frames jobd sends (9-byte headers: length, type, flags, stream): a HEADERS frame (type 1) of
    a stream without END_STREAM (flag 1) is a call's response headers."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.answered = 0
        #: While True, what jobd sends is dropped: calls go out, their replies never come.
        self.hold_replies = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        for writer in self._writers:
            # Linger 0: the close is a reset (RST), not an orderly end.
            linger = struct.pack("ii", 1, 0)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        """Stops accepting, cuts every connection and waits for their relays to end."""
        if self._server is not None:
            self._server.close()
        self.cut()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _relay(self, inbound: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        try:
            from_jobd, to_jobd = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            to_client.transport.abort()
            return
        self._writers |= {to_client, to_jobd}
        await asyncio.gather(
            self._pipe(inbound, to_jobd, count=False),
            self._pipe(from_jobd, to_client, count=True),
            return_exceptions=True,
        )
        self._writers -= {to_client, to_jobd}

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        header = bytearray()
        payload_left = 0
        try:
            while data := await reader.read(65536):
                if count and self.hold_replies:
                    continue
                writer.write(data)
                await writer.drain()
                if not count:
                    continue
                i = 0
                while i < len(data):
                    if payload_left:
                        skipped = min(payload_left, len(data) - i)
                        payload_left -= skipped
                        i += skipped
                        continue
                    taken = min(9 - len(header), len(data) - i)
                    header += data[i : i + taken]
                    i += taken
                    if len(header) == 9:
                        payload_left = int.from_bytes(header[0:3], "big")
                        kind, flags = header[3], header[4]
                        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                        if kind == 1 and not flags & 1 and stream:
                            self.answered += 1
                        header.clear()
        finally:
            writer.close()


class Redis:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="jobd-py-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, "redis-server to accept connections")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> str:
        """One command through redis-cli; its reply as text."""
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        done = subprocess.run(
            [cli, "-p", str(self.port), *args], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Jobd:
    """A jobd process; `restart()` brings it back on the same port."""

    def __init__(self, redis: Redis, *args: str) -> None:
        self.redis = redis
        self.port = free_port()
        self.health_port = free_port()  # plaintext health, whatever the main port serves
        self.args = list(args)
        self.log = tempfile.NamedTemporaryFile(prefix="jobd-py-log-", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                jobd_binary(),
                "--listen",
                self.target,
                "--redis-url",
                self.redis.url,
                "--health-listen",
                f"127.0.0.1:{self.health_port}",
                "--shutdown-timeout",
                "5s",
                *self.args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # As deployed (Dockerfile, deploy/): memory committed as used, not eagerly in huge
            # pages, which jobd would otherwise spend its CPU zeroing (BENCHMARKS.md).
            env={"MIMALLOC_ARENA_EAGER_COMMIT": "0", **os.environ},
        )
        wait_until(self._serving, 30, f"jobd on {self.target} to report SERVING")

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"jobd exited with {self.proc.returncode}; log: {self.log.name}")
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            try:
                # HealthCheckRequest{} -> HealthCheckResponse{status: SERVING (1)}
                return bool(check(b"", timeout=1) == b"\x08\x01")
            except grpc.RpcError:
                return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def close(self) -> None:
        self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()


class Stack:
    """Redis and a jobd in front of it."""

    def __init__(self, *jobd_args: str) -> None:
        self.redis = Redis()
        try:
            self.jobd = Jobd(self.redis, *jobd_args)
        except BaseException:
            self.redis.stop()
            raise

    @property
    def target(self) -> str:
        return self.jobd.target

    def close(self) -> None:
        try:
            self.jobd.close()
        finally:
            self.redis.stop()


# jobd's Redis keys as src/store/keys.rs builds them (default prefix), for the tests that reach
# past jobd into its Redis.
DUE_INDEX = "jobd:{:queues}:due"


def job_key(job_id: str) -> str:
    """The hash holding a job: `jobd:{<queue>}:job:<ulid>` for job id `<queue>.<ulid>`."""
    queue, ulid = job_id.rsplit(".", 1)
    return f"jobd:{{{queue}}}:job:{ulid}"


@asynccontextmanager
async def running(worker: jobd.Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Runs `worker` for the block; then stops it, unless it ended, and waits for its end."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        if not task.done():
            worker.stop()
        await asyncio.wait_for(task, 30)


class Endless:
    """A handler that runs until its task is cancelled: `started` is set when it begins,
    `cancelled_at` (time.monotonic()) when the cancellation reaches it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled_at: float | None = None

    async def __call__(self, job: jobd.JobContext) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            raise
