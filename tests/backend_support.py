"""What the backend conformance suites share: the backend parameter, the clock, Redis.

Each suite runs its cases against every implementation of one Protocol: the
in-memory one (the default and the test double) and the Redis one, on the real
Redis of ``tests.fixtures.services``. In-memory backends keep time on Trio's
clock, so their cases run on ``MockClock`` with autojump (a wait of minutes
takes no time). Redis backends keep time on Redis's clock (key expiry,
``TIME``), which a mock clock cannot move: their cases run on real time with
timeouts of a few hundred milliseconds.

A suite's test asks for ``clock`` (which pytest-trio then runs it on) and for
``backend`` (the name), and builds its implementations from those.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import coredis
import pytest
import trio
import trio.testing

BACKENDS = ["memory", "redis"]
# Every case bounds itself: in real seconds for Redis, in mock seconds in memory
# (where a hang jumps straight to the limit, and a wait of weeks is instant).
REDIS_LIMIT_S = 10.0
MEMORY_LIMIT_S = 60 * 86400.0
# Real time given to Redis to expire a key after its deadline, on top of it.
REDIS_SLACK_S = 0.15


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def clock(backend: str) -> trio.testing.MockClock | None:
    """The clock of the test: a MockClock for in-memory backends, real time for Redis."""
    return trio.testing.MockClock(autojump_threshold=0.0) if backend == "memory" else None


@pytest.fixture
def limit_s(backend: str) -> float:
    """The ``trio.fail_after`` of a case."""
    return MEMORY_LIMIT_S if backend == "memory" else REDIS_LIMIT_S


@pytest.fixture
async def redis_client(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[coredis.Redis[bytes] | None]:
    """A client of the test Redis for the Redis backends (None for the in-memory ones,
    which need no Redis server)."""
    if backend != "redis":
        yield None
        return
    url: str = request.getfixturevalue("redis_url")
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        yield client


def unique(name: str) -> str:
    """A key, user or room name of this test alone (the Redis server may be shared)."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


async def settle(backend: str, seconds: float) -> None:
    """Let ``seconds`` of the backend's time pass: mock time in memory, real time
    (plus a little for Redis to act on it) in Redis."""
    await trio.sleep(seconds + (REDIS_SLACK_S if backend == "redis" else 0.0))
