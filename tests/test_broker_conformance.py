"""One conformance suite for every Broker (the in-process one now).

Each case builds two nodes on one broker "network" and checks a promise of
``realtimed.broker.base.Broker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from realtimed.broker.base import Broker, Delivery
from realtimed.broker.memory import MemoryBroker, MemoryHub
from realtimed.gateway.frames import Frame

NodePair = Callable[[], Awaitable[tuple[Broker, Broker]]]


@pytest.fixture(params=["memory"])
async def node_pair(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[NodePair]:
    async def make() -> tuple[Broker, Broker]:
        hub = MemoryHub()
        a, b = MemoryBroker("a", hub), MemoryBroker("b", hub)
        await nursery.start(a.run)
        await nursery.start(b.run)
        return a, b

    yield make


def frame(n: int) -> Frame:
    return Frame(b'{"event":"x","data":%d}' % n, "x")


async def test_room_delivery_reaches_watching_nodes_in_order(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        got: list[bytes] = []
        b.attach(lambda d: got.append(d.frame.json))
        a.attach(lambda d: pytest.fail("no echo to the publishing node"))
        await b.watch_room("job:1")
        for i in range(100):
            await a.publish(Delivery(frame(i), room="job:1", origin="a"))
        await a.publish(Delivery(frame(-1), room="job:2", origin="a"))
        with trio.move_on_after(1):
            while len(got) < 100:
                await trio.sleep(0.01)
        assert got == [frame(i).json for i in range(100)]


async def test_user_delivery_and_unwatch(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        got: list[Delivery] = []
        b.attach(got.append)
        await b.watch_user("alice")
        await a.publish(Delivery(frame(1), users=("alice", "bob"), origin="a"))
        await a.publish(Delivery(frame(2), users=("carol",), origin="a"))
        with trio.move_on_after(1):
            while not got:
                await trio.sleep(0.01)
        await b.unwatch_user("alice")
        await a.publish(Delivery(frame(3), users=("alice",), origin="a"))
        await trio.sleep(0.2)
        assert [d.frame.json for d in got] == [frame(1).json]
        assert got[0].users == ("alice", "bob")


async def test_ping_answers(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, _ = await node_pair()
        await a.ping()
