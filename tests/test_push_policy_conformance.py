"""One conformance suite for every SharedCaps and every Activity of the push pipeline
(``realtimed.notify.policy``).

SharedCaps: ``PushCaps`` (one node's memory) and ``RedisPushCaps`` (counted by
every node alike). Activity: this node's rule, ``is_active`` over the user's
connected sessions (what ``NotifyService`` asks of its router), and
``RedisActivity`` (marks every node writes and reads). Caps take the wall time
as an argument, so no case waits for them; activity runs on Trio's clock in
memory and on Redis's (key expiry) for Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import attrs
import pytest
import trio
import trio.testing

from realtimed.notify.policy import Activity, PushCaps, SharedCaps, is_active
from realtimed.notify.redis_activity import RedisActivity, RedisPushCaps
from tests import backend_support
from tests.backend_support import settle, unique

# The shared fixtures (assigned, so that tests may name them as parameters).
backend = backend_support.backend
clock = backend_support.clock
limit_s = backend_support.limit_s
redis_client = backend_support.redis_client

NOW = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)  # 23:15 in Auckland (UTC+13)


# -- SharedCaps ----------------------------------------------------------------------------------

MakeCaps = Callable[[], tuple[SharedCaps, SharedCaps]]


@pytest.fixture
def caps(redis_client: Any) -> MakeCaps:
    """``caps()``: the push caps of two nodes (one count, twice, in memory; Redis: shared)."""

    def make() -> tuple[SharedCaps, SharedCaps]:
        if redis_client is None:
            memory = PushCaps()
            return memory, memory
        return RedisPushCaps(redis_client, timeout_s=2.0), RedisPushCaps(redis_client, timeout_s=2.0)

    return make


async def count(caps: SharedCaps, user: str, *, type: str = "t", now: datetime = NOW, tz: str = "UTC",
                daily: int = 0, hourly: int = 0) -> str | None:
    return await caps.count(user_id=user, type=type, now=now, time_zone=tz, daily_cap=daily, hourly_cap=hourly)


async def test_the_daily_cap_counts_the_users_local_day(
    caps: MakeCaps, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = caps()
        user, tz = unique("ann"), "Pacific/Auckland"
        assert [await count((a, b)[i % 2], user, tz=tz, daily=3, type=f"t{i}") for i in range(4)] == [
            None, None, None, "daily_cap"
        ]
        # 23:55 local: the same local day, whatever the type or hour.
        assert await count(b, user, tz=tz, daily=3, type="other", now=NOW + timedelta(minutes=40)) == "daily_cap"
        # 00:05 local, still 1 March in UTC: a new local day.
        assert await count(a, user, tz=tz, daily=3, now=NOW + timedelta(minutes=50)) is None
        # Another user counts apart; a cap of 0 is no cap.
        assert await count(a, unique("bob"), tz=tz, daily=3) is None
        assert all([await count(a, user, tz=tz, daily=0) is None for _ in range(5)])


async def test_the_hourly_cap_counts_a_type_per_utc_hour_and_the_daily_cap_comes_first(
    caps: MakeCaps, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = caps()
        user = unique("ann")
        assert [await count((a, b)[i % 2], user, type="like", hourly=2) for i in range(3)] == [
            None, None, "hourly_cap"
        ]
        assert await count(a, user, type="comment", hourly=2) is None
        assert await count(b, user, type="like", hourly=2, now=NOW + timedelta(minutes=45)) is None  # 11:00 UTC
        # Both caps reached: the daily one is named.
        other = unique("bob")
        assert await count(a, other, daily=1, hourly=1) is None
        assert await count(b, other, daily=1, hourly=1) == "daily_cap"


async def test_concurrent_counts_on_every_node_never_pass_a_cap(
    caps: MakeCaps, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = caps()
        user = unique("ann")
        answers: list[str | None] = []

        async def one(node: SharedCaps) -> None:
            answers.append(await count(node, user, daily=5, hourly=50))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, (a, b)[i % 2])
        assert answers.count(None) == 5 and answers.count("daily_cap") == 15


# -- Activity ------------------------------------------------------------------------------------

WINDOW_S = 0.4  # real seconds on Redis; the in-memory cases scale it up on mock time
# A Redis mark is written up to this long after the op (``redis_activity._BATCH_S``).
BATCH_S = 0.25


class Marking(Activity, Protocol):
    def mark(self, user_id: str) -> None: ...


@attrs.define
class _Session:
    last_active: float


@attrs.define
class LocalActivity:
    """This node's activity rule behind ``Activity``: a user is active while one of
    their connected sessions had an op within the window (``is_active``, as
    ``NotifyService`` applies it to its router's sessions)."""

    window_s: float
    sessions: dict[str, list[_Session]] = attrs.Factory(dict)

    def mark(self, user_id: str) -> None:
        self.sessions[user_id] = [_Session(trio.current_time())]

    async def active(self, user_ids: Sequence[str]) -> set[str]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        return {u for u in user_ids if is_active(self.sessions.get(u, ()), now=now, window_s=self.window_s)}


MakeActivity = Callable[[], Awaitable[tuple[Marking, Activity, float]]]


@pytest.fixture
async def activity(redis_client: Any, nursery: trio.Nursery) -> AsyncIterator[MakeActivity]:
    """``await activity()``: (the node where users act, a node that asks, the window)."""

    async def make() -> tuple[Marking, Activity, float]:
        if redis_client is None:
            local = LocalActivity(window_s=60 * WINDOW_S)
            return local, local, local.window_s
        writer = RedisActivity(redis_client, window_s=lambda: WINDOW_S, timeout_s=2.0)
        await nursery.start(writer.run)
        return writer, RedisActivity(redis_client, window_s=lambda: WINDOW_S, timeout_s=2.0), WINDOW_S

    yield make


async def test_a_user_is_active_for_the_window_after_their_last_op_and_not_long_after(
    activity: MakeActivity, backend: str, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        node, asker, window = await activity()
        ann, bob, cat = unique("ann"), unique("bob"), unique("cat")
        assert await asker.active([ann, bob, cat]) == set()
        node.mark(ann)
        node.mark(bob)
        marked = trio.current_time()
        while await asker.active([ann, bob, cat]) != {ann, bob}:
            assert trio.current_time() - marked < BATCH_S + 0.5, "a mark never showed up"
            await trio.sleep(0.02)
        await trio.sleep(marked + 0.9 * window - trio.current_time())
        assert await asker.active([ann, bob, cat]) == {ann, bob}
        await settle(backend, marked + 1.25 * window + (BATCH_S if backend == "redis" else 0.0) - trio.current_time())
        assert await asker.active([ann, bob, cat]) == set()
