"""Fixtures: one shared jobd + Redis for the suite, dedicated ones for tests that break them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from harness import Stack

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
