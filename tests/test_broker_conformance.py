"""One conformance suite for every Broker (the in-process one now).

Each case builds two nodes on one broker "network" and checks a promise of
``realtimed.broker.base.Broker``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from realtimed.broker.base import Broker, Close, Delivery, node_tag
from realtimed.broker.memory import MemoryBroker, MemoryHub
from realtimed.broker.redis import RedisBroker, decode_message, encode_message
from realtimed.config import BrokerConfig
from realtimed.frames import Frame

NodePair = Callable[[], Awaitable[tuple[Broker, Broker]]]


@pytest.fixture(params=["memory", "redis"])
async def node_pair(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[NodePair]:
    async def make() -> tuple[Broker, Broker]:
        a: Broker
        b: Broker
        if request.param == "memory":
            hub = MemoryHub()
            a, b = MemoryBroker("a", hub), MemoryBroker("b", hub)
        else:
            url = request.getfixturevalue("redis_url")
            suffix = uuid.uuid4().hex[:8]
            a = RedisBroker(f"a-{suffix}", BrokerConfig(backend="redis", redis_url=url, timeout_s=2.0))
            b = RedisBroker(f"b-{suffix}", BrokerConfig(backend="redis", redis_url=url, timeout_s=2.0))
        await nursery.start(a.run)
        await nursery.start(b.run)
        return a, b

    yield make


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def frame(n: int) -> Frame:
    return Frame(b'{"event":"x","data":%d}' % n, "x")


async def test_room_delivery_reaches_watching_nodes_in_order(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        room1, room2 = unique("job:1"), unique("job:2")
        got: list[bytes] = []
        b.attach(lambda d: got.append(d.frame.json))
        a.attach(lambda d: pytest.fail("no echo to the publishing node"))
        await b.watch_room(room1)
        await trio.sleep(0.2)  # a subscription takes a round trip to Redis
        for i in range(100):
            await a.publish(Delivery(frame(i), room=room1, origin=a.node))
        await a.publish(Delivery(frame(-1), room=room2, origin=a.node))
        with trio.move_on_after(1):
            while len(got) < 100:
                await trio.sleep(0.01)
        assert got == [frame(i).json for i in range(100)]


async def test_user_delivery_and_unwatch(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        alice = unique("alice")
        got: list[Delivery] = []
        b.attach(got.append)
        await b.watch_user(alice)
        await trio.sleep(0.2)
        await a.publish(Delivery(frame(1), users=(alice, "bob"), origin=a.node))
        await a.publish(Delivery(frame(2), users=("carol",), origin=a.node))
        with trio.move_on_after(1):
            while not got:
                await trio.sleep(0.01)
        await b.unwatch_user(alice)
        await trio.sleep(0.2)
        await a.publish(Delivery(frame(3), users=(alice,), origin=a.node))
        await trio.sleep(0.2)
        assert [d.frame.json for d in got] == [frame(1).json]
        assert got[0].users == (alice, "bob")


async def test_close_delivery_reaches_the_nodes_holding_the_user(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        alice = unique("alice")
        got: list[Delivery] = []
        b.attach(got.append)
        await b.watch_user(alice)
        await trio.sleep(0.2)
        await a.publish(Delivery(Frame(b"{}"), users=(alice,), origin=a.node, close=Close(4510, "bye")))
        await a.publish(Delivery(Frame(b"{}"), users=(alice,), origin=a.node, close=Close(4510, "", "s_1")))
        with trio.move_on_after(1):
            while len(got) < 2:
                await trio.sleep(0.01)
        assert [d.close for d in got] == [Close(4510, "bye"), Close(4510, "", "s_1")]
        assert got[0].users == (alice,)


def test_a_user_deliverys_frame_keeps_its_room_seq_and_epoch_without_being_routed_to_the_room() -> None:
    body = b'{"event":"message.new","room":"conversation:c1","seq":4,"data":{}}'
    sent = Frame(body, "message.new", room="conversation:c1", seq=4, epoch="e")
    got = decode_message(encode_message(Delivery(sent, users=("u",), origin="a")))
    assert got.room is None and got.users == ("u",), "still a delivery to users"
    assert (got.frame.room, got.frame.seq, got.frame.epoch, got.frame.name) == ("conversation:c1", 4, "e", "message.new")
    assert got.frame.json == body, "the frame itself goes as encoded once"
    routed = decode_message(encode_message(Delivery(Frame(b"{}", "x", room="job:1", seq=1), room="job:1", origin="a")))
    assert routed.room == routed.frame.room == "job:1"
    head, _, rest = encode_message(Delivery(sent, users=("u",), origin="a")).partition(b"\n")
    with pytest.raises(ValueError):
        decode_message(head.replace(b'"fr":"conversation:c1"', b'"fr":7') + b"\n" + rest)


@pytest.mark.parametrize(
    "close",
    [b"4510", b'[4510, "x"]', b'["4510", "x", null]', b'[4510, 7, null]', b'[4510, "x", 3]', b"{}"],
)
def test_a_malformed_close_in_a_broker_message_is_refused(close: bytes) -> None:
    good = encode_message(Delivery(Frame(b"{}"), users=("u",), origin="a", close=Close(4510, "x")))
    assert decode_message(good).close == Close(4510, "x")
    head, _, body = good.partition(b"\n")
    bad = head.replace(b'"c":[4510,"x",null]', b'"c":' + close) + b"\n" + body
    assert bad != good
    with pytest.raises(ValueError):
        decode_message(bad)


async def test_ping_answers(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, _ = await node_pair()
        await a.ping()


async def test_large_user_fanout_reaches_only_nodes_holding_them(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        users = tuple(unique(f"u{i}") for i in range(200))
        got: list[Delivery] = []
        b.attach(got.append)
        await b.watch_user(users[150])
        await trio.sleep(0.2)
        await a.publish(Delivery(frame(7), users=users, origin=a.node))
        with trio.move_on_after(1):
            while not got:
                await trio.sleep(0.01)
        assert len(got) == 1 and got[0].users == users


async def test_delivery_to_everyone_reaches_every_node_without_interest(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        got: list[Delivery] = []
        b.attach(got.append)
        a.attach(lambda d: pytest.fail("no echo to the publishing node"))
        await a.publish(Delivery(frame(9), everyone=True, origin=a.node))
        with trio.move_on_after(2):
            while not got:
                await trio.sleep(0.01)
        assert len(got) == 1 and got[0].everyone and got[0].frame.json == frame(9).json
        assert got[0].users == () and got[0].room is None


async def test_survey_gathers_every_other_nodes_answer(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        asked: list[tuple[str, dict[str, Any]]] = []

        async def answer_b(op: str, data: dict[str, Any]) -> Any:
            asked.append((op, data))
            if op == "fail":
                raise RuntimeError("this node cannot answer")
            if op == "slow":
                await trio.sleep(5)
            return {"node": b.node, "echo": data}

        async def answer_a(op: str, data: dict[str, Any]) -> Any:
            raise AssertionError("a node does not answer its own survey")

        a.attach_survey(answer_a)
        b.attach_survey(answer_b)
        result = await a.survey("count", {"n": 1}, timeout_s=2.0)
        assert result.complete and result.answers == [{"node": b.node, "echo": {"n": 1}}]
        assert asked == [("count", {"n": 1})]
        failed = await a.survey("fail", {}, timeout_s=2.0)
        assert failed.answers == [] and not failed.complete
        started = trio.current_time()
        slow = await a.survey("slow", {}, timeout_s=0.3)
        assert slow.answers == [] and not slow.complete
        assert trio.current_time() - started < 2  # the asker waits its own timeout, not the answer


async def test_device_delivery_reaches_the_node_its_session_id_names_without_a_watch(node_pair: NodePair) -> None:
    with trio.fail_after(10):
        a, b = await node_pair()
        got: list[Delivery] = []
        b.attach(got.append)
        elsewhere = f"device:s_{node_tag(unique('c'))}abcdefghijklmnop"
        await a.publish(Delivery(frame(1), room=elsewhere, origin=a.node))
        mine = f"device:s_{node_tag(b.node)}abcdefghijklmnop"
        await a.publish(Delivery(frame(2), room=mine, origin=a.node))
        with trio.move_on_after(2):
            while not got:
                await trio.sleep(0.01)
        # published first, so it would have come first (one node's deliveries keep their order)
        assert [(d.room, d.frame.json) for d in got] == [(mine, frame(2).json)]
