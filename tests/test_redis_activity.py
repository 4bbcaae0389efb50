"""Push caps and activity marks in Redis: what every node of a cluster counts alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import coredis
import trio

from realtimed.notify.redis_activity import RedisActivity, RedisPushCaps
from tests.fixtures.daemon import DaemonFactory
from tests.test_cluster import connect
from tests.test_session_lifecycle import sse_records


async def test_push_caps_are_one_count_for_every_node(redis_url: str) -> None:
    client = coredis.Redis.from_url(redis_url, decode_responses=False)
    async with client:
        a, b = RedisPushCaps(client, timeout_s=2.0), RedisPushCaps(client, timeout_s=2.0)
        user = f"u-{uuid.uuid4().hex[:8]}"
        now = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin

        async def take(node: RedisPushCaps, type: str, when: datetime, tz: str = "Europe/Berlin") -> str | None:
            return await node.count(user_id=user, type=type, now=when, time_zone=tz, daily_cap=3, hourly_cap=2)

        # Two nodes, one hourly count per type and one daily count per user.
        assert [await take(a, "x", now), await take(b, "x", now), await take(a, "x", now)] == [None, None, "hourly_cap"]
        assert await take(b, "y", now) is None
        assert await take(a, "z", now) == "daily_cap"
        # What an app shows ("3 of 3 today"), the same from either node; the usage counts nothing.
        for node in (a, b):
            assert await node.usage(user_id=user, types=["x", "y", "z"], now=now, time_zone="Europe/Berlin") == (
                3, {"x": 2, "y": 1, "z": 0}
            )
        # 00:10 in Berlin: a new local day and a new hour.
        assert await take(b, "x", now + timedelta(minutes=40)) is None
        # A cap of 0 is no cap.
        assert await a.count(user_id=user, type="x", now=now, time_zone="UTC", daily_cap=0, hourly_cap=0) is None


async def test_activity_marked_on_one_node_is_seen_on_another(redis_url: str, nursery: trio.Nursery) -> None:
    client = coredis.Redis.from_url(redis_url, decode_responses=False)
    async with client:
        window = 2.0
        a = RedisActivity(client, window_s=lambda: window, timeout_s=2.0)
        b = RedisActivity(client, window_s=lambda: window, timeout_s=2.0)
        await nursery.start(a.run)
        users = [f"act-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
        a.mark(users[0])
        a.mark(users[1])
        with trio.fail_after(5):
            while await b.active(users) != {users[0], users[1]}:
                await trio.sleep(0.05)
        marked = trio.current_time()
        # Marks expire a window (and at most a quarter more) after they were written.
        with trio.fail_after(5):
            while await b.active(users):
                await trio.sleep(0.05)
        assert window <= trio.current_time() - marked + 0.3 <= window * 1.25 + 0.6


async def test_an_op_on_node_b_makes_the_user_active_for_node_a(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        shared = {"broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0}}
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        user = f"ann-{uuid.uuid4().hex[:6]}"
        notify_a = a.services.notify
        assert await notify_a._active_among([user]) == set()
        client = await connect(b, user)
        await client.ok("presence.query", {"user_ids": []})
        with trio.fail_after(5):
            while await notify_a._active_among([user]) != {user}:
                await trio.sleep(0.05)


async def test_a_stream_opened_on_node_b_makes_the_user_active_for_node_a(start_daemon: DaemonFactory, redis_url: str) -> None:
    # SSE sessions used to count as active on their own node only: no mark reached the others.
    with trio.fail_after(30):
        shared = {"broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0}}
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        user = f"sse-{uuid.uuid4().hex[:6]}"
        notify_a = a.services.notify
        assert await notify_a._active_among([user]) == set()
        assert (await sse_records(b, user, count=1))[0][0] == "session.ready"
        with trio.fail_after(5):
            while await notify_a._active_among([user]) != {user}:
                await trio.sleep(0.05)
