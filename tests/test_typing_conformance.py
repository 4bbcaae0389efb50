"""One conformance suite for every TypingBackend: in memory (``MemoryTyping``, on
Trio's clock, one node) and in Redis (``RedisTyping``, on Redis's clock, shared
by every node).

The promises are those of ``realtimed.typing_state.TypingBackend``: a token
bucket, one ``begin`` answering True for a new state and one ``end`` True for
removing it however many nodes call at once, ``node_only`` ends, and
``expire`` at a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from realtimed.redis_typing import RedisTyping
from realtimed.typing_state import MemoryTyping, TypingBackend
from tests import backend_support
from tests.backend_support import settle, unique

# The shared fixtures (assigned, so that tests may name them as parameters).
backend = backend_support.backend
clock = backend_support.clock
limit_s = backend_support.limit_s
redis_client = backend_support.redis_client

# Timers short enough for real time on Redis (the in-memory cases run on mock time).
TIMEOUT_S = 0.3
# Redis keeps time in milliseconds: answers in seconds may be a millisecond off.
MS = 0.0015

Make = Callable[[], Awaitable[tuple[TypingBackend, TypingBackend]]]


@pytest.fixture
async def nodes(redis_client: Any) -> AsyncIterator[Make]:
    """``await nodes()``: the typing backends of two nodes sharing one state (the same
    one, twice, in memory, where each node keeps its own)."""

    async def make() -> tuple[TypingBackend, TypingBackend]:
        if redis_client is None:
            memory = MemoryTyping()
            return memory, memory
        return (
            RedisTyping(redis_client, node=unique("a"), timeout_s=2.0),
            RedisTyping(redis_client, node=unique("b"), timeout_s=2.0),
        )

    yield make


async def test_take_token_is_a_bucket_refilled_at_rate_up_to_burst(
    nodes: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await nodes()
        user, conversation = unique("ann"), unique("c")
        rate, burst = 10.0, 3.0
        taken = [await (a, b)[i % 2].take_token(user, conversation, rate=rate, burst=burst) for i in range(3)]
        assert taken == [0.0, 0.0, 0.0]
        wait = await a.take_token(user, conversation, rate=rate, burst=burst)
        assert 0 < wait <= 1 / rate + MS
        await trio.sleep(wait + MS)
        assert await b.take_token(user, conversation, rate=rate, burst=burst) == 0.0
        assert await a.take_token(user, conversation, rate=rate, burst=burst) > 0
        # Other keys have buckets of their own.
        assert await a.take_token(unique("bob"), conversation, rate=rate, burst=burst) == 0.0
        assert await a.take_token(user, unique("c"), rate=rate, burst=burst) == 0.0
        # Refilled up to burst, never more.
        await trio.sleep(2 * burst / rate)  # room for twice the burst: still only burst
        taken = [await a.take_token(user, conversation, rate=rate, burst=burst) for _ in range(4)]
        assert taken[:3] == [0.0, 0.0, 0.0] and taken[3] > 0


async def test_one_begin_answers_true_for_a_new_state_and_one_end_for_removing_it(
    nodes: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await nodes()
        user, conversation = unique("ann"), unique("c")

        async def begin(node: TypingBackend, answers: list[bool]) -> None:
            answers.append(await node.begin(user, conversation, timeout_s=TIMEOUT_S))

        async def end(node: TypingBackend, answers: list[bool]) -> None:
            answers.append(await node.end(user, conversation))

        for _ in range(2):
            began: list[bool] = []
            ended: list[bool] = []
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(begin, (a, b)[i % 2], began)
            assert sorted(began) == [False] * 9 + [True]
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(end, (b, a)[i % 2], ended)
            assert sorted(ended) == [False] * 9 + [True]
            assert await a.expire(user, conversation) is None


async def test_a_node_only_end_removes_only_a_state_last_refreshed_through_that_node(
    nodes: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await nodes()
        user, conversation = unique("ann"), unique("c")
        assert await a.begin(user, conversation, timeout_s=TIMEOUT_S) is True
        assert await b.begin(user, conversation, timeout_s=TIMEOUT_S) is False  # refreshed through b
        if a.shared:
            assert await a.end(user, conversation, node_only=True) is False
            assert (await a.expire(user, conversation) or 0) > 0
        assert await b.end(user, conversation, node_only=True) is True
        assert await a.expire(user, conversation) is None


async def test_expire_ends_a_state_at_its_deadline_unless_it_was_refreshed(
    nodes: Make, backend: str, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await nodes()
        user, conversation = unique("ann"), unique("c")
        assert await a.expire(user, conversation) is None
        await a.begin(user, conversation, timeout_s=TIMEOUT_S)
        left = await a.expire(user, conversation)
        assert left is not None and TIMEOUT_S - 0.1 < left <= TIMEOUT_S + MS
        await trio.sleep(TIMEOUT_S / 2)
        await b.begin(user, conversation, timeout_s=TIMEOUT_S)  # refreshed, on another node
        await trio.sleep(TIMEOUT_S / 2 + 2 * MS)
        # a's deadline came: the state was refreshed since, so it stays, with the time left.
        left = await a.expire(user, conversation)
        assert left is not None and 0 < left <= TIMEOUT_S / 2 + MS
        await settle(backend, left + 2 * MS)
        assert await b.expire(user, conversation) == 0.0  # due: this call ended it
        assert await a.expire(user, conversation) is None  # gone
        # Ended elsewhere before its deadline: gone too.
        await a.begin(user, conversation, timeout_s=TIMEOUT_S)
        assert await b.end(user, conversation) is True
        assert await a.expire(user, conversation) is None


async def test_typing_answers_the_users_whose_state_is_ahead_of_its_deadline(
    nodes: Make, backend: str, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await nodes()
        ann, bob, cid = unique("ann"), unique("bob"), unique("c")
        assert await a.typing(cid, [ann, bob]) == []
        await a.begin(ann, cid, timeout_s=TIMEOUT_S)
        await b.begin(bob, cid, timeout_s=TIMEOUT_S)
        assert await b.typing(cid, [bob, ann]) == [bob, ann]  # on any node, in the order asked
        assert await a.typing(unique("c"), [ann, bob]) == []  # another conversation
        assert await a.end(bob, cid) is True
        assert await b.typing(cid, [ann, bob]) == [ann]
        # Past its deadline a state is not typing any more, even before a timer expired it.
        await settle(backend, TIMEOUT_S + 2 * MS)
        assert await a.typing(cid, [ann, bob]) == []
