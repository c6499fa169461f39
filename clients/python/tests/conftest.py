"""Fixtures: one shared jobd + Redis for the suite, dedicated ones for tests that break them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from harness import NewWorker, Stack

import jobd


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack("--ack-timeout", "5s")
    yield s
    s.close()


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    """A stack of the test's own, for tests that restart jobd or pause Redis."""
    s = Stack()
    yield s
    s.close()


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[jobd.Client]:
    async with jobd.Client(stack.target) as c:
        yield c


@pytest.fixture
def new_worker(client: jobd.Client, queue: str) -> NewWorker:
    """Makes workers of the test's queue on the shared client: no signal handlers (pytest owns
    them) and a 1 s claim wait, unless the options say otherwise (see `harness.running`)."""

    def make(**options: Any) -> jobd.Worker:
        return jobd.Worker(client, queue, **{"claim_wait": 1, "handle_signals": False, **options})

    return make
