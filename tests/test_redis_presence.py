"""Presence in Redis: counts across nodes, and a dead node's users reported once."""

from __future__ import annotations

import uuid

import coredis
import trio

from realtimed.broker.redis_presence import RedisPresence
from realtimed.presence import PresenceRecord


async def test_counts_records_and_dead_node_reaped_once(redis_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    client = coredis.Redis.from_url(redis_url, decode_responses=False)
    async with client:
        nodes = {
            name: RedisPresence(client, node=f"{name}-{suffix}", node_ttl_s=1.0, timeout_s=2.0, record_type=PresenceRecord)
            for name in ("a", "b", "c")
        }
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        for node in nodes.values():
            await node.heartbeat()
        both, only_b = f"both-{suffix}", f"onlyb-{suffix}"
        assert await a.add_session(both, "s1") == 1
        assert await b.add_session(both, "s2") == 2  # counted on every node
        assert await b.add_session(only_b, "s3") == 1
        assert await a.remove_session(both, "s1") == 1
        assert await a.add_session(both, "s1") == 2
        await a.put(only_b, PresenceRecord(status="busy", chosen="busy", message="in a meeting"))
        assert (await c.get([only_b, both])) == {only_b: PresenceRecord(status="busy", chosen="busy", message="in a meeting")}
        await a.put(only_b, PresenceRecord())  # the default record is forgotten
        assert await c.get([only_b]) == {}
        # b stops heartbeating; a and c both look for dead nodes, only one reaps.
        with trio.fail_after(10):
            while await client.exists([f"rt:pn:{b.node}"]):
                await a.heartbeat()
                await c.heartbeat()
                await trio.sleep(0.2)
        seen: list[list[str]] = []

        async def record(users: list[str]) -> None:
            seen.append(sorted(users))

        a.on_users_gone = c.on_users_gone = record
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.reap)
            nursery.start_soon(c.reap)
        gone = [u for batch in seen for u in batch if u.endswith(suffix)]
        assert gone == [only_b]  # once, and not the user still on a
        assert await a.remove_session(both, "s1") == 0
