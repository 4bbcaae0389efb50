"""One conformance suite for every PresenceBackend and RoomPresenceBackend:
in memory (``MemoryPresence``, ``MemoryRoomPresence``) and in Redis
(``RedisPresence``, which is both).

``Nodes`` gives the backends of the nodes that share one state: for the
in-memory backends that is one node (each node has its own), for Redis two
nodes on one server. The promises checked are those of the Protocols'
docstrings: counts answered atomically, the last call of one node winning, and
expiry (in memory, nothing expires; in Redis, a node that stops heartbeating
loses its devices and room subscriptions, reported once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from realtimed.delivery.rooms import MemoryRoomPresence, RoomPresenceBackend
from realtimed.presence import MemoryPresence, PresenceBackend, PresenceRecord
from realtimed.redis_presence import RedisPresence, heartbeat_key
from tests import backend_support
from tests.backend_support import unique

# The shared fixtures (assigned, so that tests may name them as parameters).
backend = backend_support.backend
clock = backend_support.clock
limit_s = backend_support.limit_s
redis_client = backend_support.redis_client

# Mock time the in-memory cases wait to see that nothing expires.
MEMORY_WAIT_S = 30 * 86400
# A Redis node whose heartbeat is this old is dead: short, so that expiry takes a moment of real time.
NODE_TTL_S = 0.3


@attrs.define
class Nodes:
    """The presence backends of two nodes sharing one state (one node, twice, in memory)."""

    a: Any
    b: Any
    shared: bool
    redis: Any = None

    @property
    def presence(self) -> tuple[PresenceBackend, PresenceBackend]:
        return self.a, self.b

    @property
    def rooms(self) -> tuple[RoomPresenceBackend, RoomPresenceBackend]:
        return self.a, self.b


NodesFactory = Callable[[], Awaitable[Nodes]]


@pytest.fixture
async def nodes(redis_client: Any) -> AsyncIterator[NodesFactory]:
    """``await nodes()``: the presence and room presence backends under test."""

    async def make() -> Nodes:
        client = redis_client
        if client is None:
            presence, rooms = MemoryPresence(), MemoryRoomPresence()
            both = _Both(presence, rooms)
            return Nodes(both, both, shared=False)
        made = [
            RedisPresence(client, node=unique(name), node_ttl_s=NODE_TTL_S, timeout_s=2.0, record_type=PresenceRecord)
            for name in ("a", "b")
        ]
        for node in made:
            await node.heartbeat()
        return Nodes(made[0], made[1], shared=True, redis=client)

    yield make


@attrs.define
class _Both:
    """One in-memory node: its presence backend and its room presence backend."""

    presence: MemoryPresence
    rooms: MemoryRoomPresence

    def __getattr__(self, name: str) -> Any:
        target = self.rooms if name in ("join", "leave", "leave_many", "members") else self.presence
        return getattr(target, name)


# -- PresenceBackend -----------------------------------------------------------------------------


async def test_add_and_remove_answer_the_devices_on_every_node(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).presence
        user = unique("ann")
        assert await a.add_session(user, "s1") == 1
        assert await b.add_session(user, "s2") == 2
        assert await a.remove_session(user, "unknown") == 2  # an unknown id is ignored
        assert await b.remove_session(user, "s2") == 1
        assert await a.remove_session(user, "s1") == 0
        assert await a.remove_session(user, "s1") == 0


async def test_arrive_counts_the_device_and_reads_the_record_in_one_call(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).presence
        ann = unique("ann")
        assert await a.arrive(ann, "s1") == (1, None)  # no record yet
        busy = PresenceRecord(status="busy", chosen="busy", message="in a meeting")
        await b.put(ann, busy)
        assert await b.arrive(ann, "s2") == (2, busy)
        assert await a.arrive(ann, "s1") == (2, busy)  # the same device again counts once
        assert await a.remove_session(ann, "s1") == 1
        assert await b.remove_session(ann, "s2") == 0


async def test_arrive_online_writes_the_status_a_connected_user_shows(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    # A connect that brings the user online writes the status with the arrival (one round trip).
    with trio.fail_after(limit_s):
        a, b = (await nodes()).presence
        ann, bob, cid = unique("ann"), unique("bob"), unique("cid")
        online = PresenceRecord(status="online", chosen="online")
        assert await a.arrive(ann, "s1", online=True) == (1, online)
        assert await b.get([ann]) == {ann: online}
        await b.put(bob, PresenceRecord(status="offline", chosen="busy", message="in a meeting"))
        busy = PresenceRecord(status="busy", chosen="busy", message="in a meeting")
        assert await a.arrive(bob, "s2", online=True) == (1, busy)
        assert await b.get([bob]) == {bob: busy}
        hidden = PresenceRecord(status="offline", chosen="invisible")
        await b.put(cid, hidden)
        assert await a.arrive(cid, "s3", online=True) == (1, hidden)  # invisible stays offline
        assert await b.get([cid]) == {cid: hidden}
        # Without ``online`` nothing is written.
        away = PresenceRecord(status="offline", chosen="away")
        await b.put(ann, away)
        assert await a.arrive(ann, "s4") == (2, away)
        assert await b.get([ann]) == {ann: away}


async def test_arrive_lists_the_user_online(nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float) -> None:
    # The connect path counts devices with arrive only: the online list must see them too.
    with trio.fail_after(limit_s):
        a, b = (await nodes()).presence
        ann = unique("ann")
        await a.arrive(ann, "s1")
        assert await b.online(prefix=ann) == ([(ann, 1)], 1)
        assert await a.remove_session(ann, "s1") == 0
        assert await b.online(prefix=ann) == ([], 0)


async def test_concurrent_adds_and_removes_each_answer_the_count_after_their_own_change(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).presence
        user = unique("ann")
        added: list[int] = []
        removed: list[int] = []

        async def add(node: PresenceBackend, session: str) -> None:
            added.append(await node.add_session(user, session))

        async def remove(node: PresenceBackend, session: str) -> None:
            removed.append(await node.remove_session(user, session))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(add, (a, b)[i % 2], f"s{i}")
        assert sorted(added) == list(range(1, 21))
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(remove, (b, a)[i % 2], f"s{i}")
        assert sorted(removed) == list(range(20))


async def test_records_read_back_and_a_default_record_is_forgotten(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).presence
        ann, bob = unique("ann"), unique("bob")
        busy = PresenceRecord(status="busy", chosen="busy", message="in a meeting")
        await a.put(ann, PresenceRecord(status="online"))
        await a.put(ann, busy)  # one node's calls take effect in its order: the last wins
        assert await b.get([ann, bob]) == {ann: busy}
        assert await b.get([]) == {}
        await b.put(ann, PresenceRecord())
        assert await a.get([ann]) == {}


async def test_devices_expire_only_with_a_node_that_stopped_heartbeating(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        pair = await nodes()
        a, b = pair.presence
        gone_user, staying = unique("ann"), unique("bob")
        await a.add_session(gone_user, "s1")
        await b.add_session(staying, "s2")
        if not pair.shared:
            # In memory nothing expires: the node's death takes it all along.
            await trio.sleep(MEMORY_WAIT_S)
            assert await a.add_session(gone_user, "s3") == 2
            return
        seen: list[str] = []

        async def gone(users: list[str]) -> None:
            seen.extend(users)

        survivor: RedisPresence = pair.b
        await _outlive(pair, survivor=survivor)
        survivor.on_users_gone = gone
        mine = {gone_user, staying}
        assert mine & set(await survivor.reap()) == {gone_user}
        assert mine & set(await survivor.reap()) == set()  # reported once
        assert mine & set(seen) == {gone_user}
        assert await b.add_session(gone_user, "s3") == 1
        assert await b.add_session(staying, "s4") == 2


async def test_online_lists_connected_users_in_id_order_and_forgets_a_dead_nodes(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        pair = await nodes()
        a, b = pair.presence
        tag = unique("on") + ":"
        ann, bob, cy = tag + "ann", tag + "bob", tag + "cy\u00e9"
        await a.add_session(ann, "s1")
        await b.add_session(ann, "s2")
        await b.add_session(bob, "s3")
        await a.add_session(cy, "s4")
        assert await a.online(prefix=tag) == ([(ann, 2), (bob, 1), (cy, 1)], 3)
        assert await b.online(prefix=tag, limit=1) == ([(ann, 2)], 3)
        assert await b.online(prefix=tag, after=ann, limit=1) == ([(bob, 1)], 3)
        assert await b.online(prefix=tag, after=cy) == ([], 3)
        assert await a.online(prefix=tag + "b") == ([(bob, 1)], 1)
        assert (await a.online(limit=0))[0] == []
        await b.remove_session(bob, "s3")
        await a.remove_session(ann, "s1")
        assert await a.online(prefix=tag) == ([(ann, 1), (cy, 1)], 2)
        if not pair.shared:
            return
        survivor: RedisPresence = pair.b
        await _outlive(pair, survivor=survivor)
        await survivor.reap()
        assert await b.online(prefix=tag) == ([(ann, 1)], 1)  # cy's one device was on the dead node
        dead: RedisPresence = pair.a
        await dead.sync([(cy, "s4")], [])  # the node was alive after all and writes its devices back
        assert await b.online(prefix=tag) == ([(ann, 1), (cy, 1)], 2)


# -- RoomPresenceBackend -------------------------------------------------------------------------


async def test_first_join_and_last_leave_answer_true_and_members_count_subscriptions(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).rooms
        room, ann, bob = unique("doc:"), unique("ann"), unique("bob")
        assert await a.join(room, ann) is True
        assert await b.join(room, ann) is False
        assert await b.join(room, bob) is True
        assert await a.members(room) == {ann: 2, bob: 1}
        assert await a.leave(room, ann) is False
        assert await b.leave(room, ann) is True
        assert await b.members(room) == {bob: 1}
        assert await b.leave(room, bob) is True  # a node leaves the subscriptions it holds
        assert await a.members(room) == {}


async def test_leave_many_leaves_each_room_and_answers_the_last_ones(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).rooms
        shared, mine, other = unique("doc:"), unique("doc:"), unique("doc:")
        ann, bob = unique("ann"), unique("bob")
        for room in (shared, mine):
            assert await a.join(room, ann) is True
        assert await b.join(shared, ann) is False  # a second subscription (another device)
        assert await a.join(other, bob) is True
        assert await a.leave_many([], ann) == []
        # One call: the last subscription to mine, not to shared.
        assert await a.leave_many([shared, mine], ann) == [mine]
        assert await b.members(shared) == {ann: 1}
        assert await b.members(mine) == {}
        assert await b.members(other) == {bob: 1}  # another user's rooms are untouched
        assert await b.leave_many([shared], ann) == [shared]
        assert await a.members(shared) == {}


async def test_concurrent_joins_and_leaves_have_one_first_and_one_last(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = (await nodes()).rooms
        room, ann = unique("doc:"), unique("ann")
        firsts: list[bool] = []
        lasts: list[bool] = []

        async def join(node: RoomPresenceBackend) -> None:
            firsts.append(await node.join(room, ann))

        async def leave(node: RoomPresenceBackend) -> None:
            lasts.append(await node.leave(room, ann))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(join, (a, b)[i % 2])
        assert firsts.count(True) == 1 and len(firsts) == 20
        assert await a.members(room) == {ann: 20}
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(leave, (b, a)[i % 2])
        assert lasts.count(True) == 1 and len(lasts) == 20
        assert await b.members(room) == {}


async def test_room_subscriptions_expire_only_with_a_node_that_stopped_heartbeating(
    nodes: NodesFactory, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        pair = await nodes()
        a, b = pair.rooms
        room, ann, bob = unique("doc:"), unique("ann"), unique("bob")
        await a.join(room, ann)
        await a.join(room, bob)
        await b.join(room, bob)
        if not pair.shared:
            await trio.sleep(MEMORY_WAIT_S)
            assert await a.members(room) == {ann: 1, bob: 2}
            return
        left: list[tuple[str, str]] = []

        async def rooms_left(pairs: list[tuple[str, str]]) -> None:
            left.extend(pairs)

        survivor: RedisPresence = pair.b
        await _outlive(pair, survivor=survivor)
        survivor.on_rooms_left = rooms_left
        await survivor.reap()
        await survivor.reap()
        assert [(r, u) for r, u in left if r == room] == [(room, ann)]  # once; bob is still there through b
        assert await b.members(room) == {bob: 1}


async def _outlive(pair: Nodes, *, survivor: RedisPresence) -> None:
    """Keep ``survivor`` heartbeating until the other node's heartbeat expired in Redis."""
    dead = pair.a if survivor is pair.b else pair.b
    while await pair.redis.exists([heartbeat_key(dead.node)]):
        await survivor.heartbeat()
        await trio.sleep(NODE_TTL_S / 4)
