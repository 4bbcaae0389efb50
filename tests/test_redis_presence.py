"""Presence in Redis: counts across nodes, and a dead node's users reported once."""

from __future__ import annotations

import uuid
from typing import Any

import coredis
import trio

from realtimed.presence import PresenceRecord
from realtimed.redis_presence import RedisPresence, heartbeat_key


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
            while await client.exists([heartbeat_key(b.node)]):
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


async def test_room_presence_counted_across_nodes_and_reaped_once(redis_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    client = coredis.Redis.from_url(redis_url, decode_responses=False)
    async with client:
        a, b, c = (
            RedisPresence(client, node=f"{name}-{suffix}", node_ttl_s=1.0, timeout_s=2.0, record_type=PresenceRecord)
            for name in ("a", "b", "c")
        )
        for node in (a, b, c):
            await node.heartbeat()
        room, other = f"doc:{suffix}", f"doc:other-{suffix}"
        assert await a.join(room, "ann") is True  # first anywhere
        assert await b.join(room, "ann") is False  # second, on another node
        assert await b.join(room, "bob") is True
        assert await b.join(other, "bob") is True
        assert await c.members(room) == {"ann": 2, "bob": 1}
        assert await a.leave(room, "ann") is False  # still there through b
        assert await a.join(room, "ann") is False
        # Twenty concurrent joins and leaves of one user on two nodes: one first, one last.
        firsts: list[bool] = []
        async with trio.open_nursery() as nursery:
            for node in (a, c) * 10:
                nursery.start_soon(lambda n=node: _append(firsts, n.join(other, "cat")))
        assert firsts.count(True) == 1
        lasts: list[bool] = []
        async with trio.open_nursery() as nursery:
            for node in (a, c) * 10:
                nursery.start_soon(lambda n=node: _append(lasts, n.leave(other, "cat")))
        assert lasts.count(True) == 1
        assert "cat" not in await a.members(other)
        # b dies: ann keeps her subscription on a; bob leaves both rooms, reported once.
        with trio.fail_after(10):
            while await client.exists([heartbeat_key(b.node)]):
                await a.heartbeat()
                await c.heartbeat()
                await trio.sleep(0.2)
        left: list[tuple[str, str]] = []

        async def record_left(pairs: list[tuple[str, str]]) -> None:
            left.extend(pairs)

        a.on_rooms_left = c.on_rooms_left = record_left
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.reap)
            nursery.start_soon(c.reap)
        # (Other dead nodes of the shared server may be reaped too: only this test's rooms count.)
        assert sorted(p for p in left if p[0].endswith(suffix)) == [(room, "bob"), (other, "bob")]
        assert await a.members(room) == {"ann": 1}
        assert await a.members(other) == {}
        # A leave that b could not count (reaped meanwhile) does not go below zero.
        assert await b.leave(room, "ann") is False
        assert await a.members(room) == {"ann": 1}
        assert await a.leave(room, "ann") is True
        assert await a.members(room) == {}


async def _append(out: list[bool], call: Any) -> None:
    out.append(await call)


async def test_a_node_taken_for_dead_writes_its_state_back(redis_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    client = coredis.Redis.from_url(redis_url, decode_responses=False)
    async with client:
        a, b = (
            RedisPresence(client, node=f"{name}-{suffix}", node_ttl_s=1.0, timeout_s=2.0, record_type=PresenceRecord)
            for name in ("a", "b")
        )
        await a.heartbeat()
        await b.heartbeat()
        user, room = f"u-{suffix}", f"doc:{suffix}"
        assert await b.add_session(user, "s1") == 1
        assert await b.join(room, user) is True
        assert not b.resync_needed
        # b stalls past its ttl; a reaps it although it is alive.
        with trio.fail_after(10):
            while await client.exists([heartbeat_key(b.node)]):
                await a.heartbeat()
                await trio.sleep(0.2)
        assert [u for u in await a.reap() if u.endswith(suffix)] == [user]
        assert await a.device_count(user) == 0 and await a.members(room) == {}
        # b's next heartbeat sees it had expired and writes back what it holds:
        # one device, the room twice, and not a subscription that ended meanwhile.
        await b.heartbeat()
        assert b.resync_needed
        await client.hset(f"rt:{{p}}:rq:{b.node}", {f"{room}-gone\n{user}": 1})
        await client.hset(f"rt:{{p}}:rp:{room}-gone", {user: 1})
        stale = await b.sync([(user, "s1")], [(room, user, 2)])
        assert stale == [(f"{room}-gone", user)]
        assert not b.resync_needed
        assert await a.device_count(user) == 1
        assert await a.members(room) == {user: 2}
        assert await a.members(f"{room}-gone") == {}
        # Syncing again changes nothing; a node that holds nothing clears its entries.
        assert await b.sync([(user, "s1")], [(room, user, 2)]) == []
        assert await a.members(room) == {user: 2}
        assert await b.sync([], []) == [(room, user)]
        assert await a.device_count(user) == 0 and await a.members(room) == {}
        # A node whose heartbeat is back before the reaper runs is not reaped.
        await b.heartbeat()
        assert [u for u in await a.reap() if u.endswith(suffix)] == []
