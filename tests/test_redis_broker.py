"""The Redis broker when Redis misbehaves: killed subscriptions, a link that dies."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import coredis
import pytest
import trio

from realtimed.broker.base import Delivery
from realtimed.broker.redis import RedisBroker
from realtimed.config import BrokerConfig
from realtimed.errors import Unavailable
from realtimed.frames import Frame
from tests.fault_proxy import FaultProxy


def frame(n: int) -> Frame:
    return Frame(b'{"event":"x","data":%d}' % n, "x")


class TcpProxy:
    """A TCP proxy to Redis that a test can cut (close every link and stop listening)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as server:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                async for chunk in src:
                    await dst.send_all(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)

    def cut(self) -> None:
        assert self._scope is not None
        self._scope.cancel()


@pytest.fixture
async def redis_port(redis_url: str) -> AsyncIterator[int]:
    yield int(redis_url.rsplit(":", 1)[1].split("/")[0])


async def wait_received(a: RedisBroker, room: str, got: list[Delivery], *, within: float) -> float:
    """Publish until the other node receives; returns how long it took."""
    start = trio.current_time()
    n = 0
    with trio.fail_after(within):
        while not got:
            n += 1
            try:
                await a.publish(Delivery(frame(n), room=room, origin=a.node))
            except Unavailable:
                pass
            await trio.sleep(0.2)
    return trio.current_time() - start


async def test_killed_pubsub_connections_resubscribe(nursery: trio.Nursery, redis_url: str) -> None:
    room = f"job:{uuid.uuid4().hex[:8]}"
    cfg = BrokerConfig(backend="redis", redis_url=redis_url, timeout_s=2.0)
    a, b = RedisBroker(f"a-{room}", cfg), RedisBroker(f"b-{room}", cfg)
    await nursery.start(a.run)
    await nursery.start(b.run)
    got: list[Delivery] = []
    b.attach(got.append)
    await b.watch_room(room)
    await wait_received(a, room, got, within=5)
    admin = coredis.Redis.from_url(redis_url)
    async with admin:
        killed = await admin.client_kill(type_=coredis.PureToken.PUBSUB)
    assert killed >= 2
    got.clear()
    took = await wait_received(a, room, got, within=10)
    assert took < 10


async def test_cut_link_fails_fast_then_recovers(nursery: trio.Nursery, redis_port: int) -> None:
    proxy = TcpProxy(redis_port)
    await nursery.start(proxy.run)
    port = proxy.port
    room = f"job:{uuid.uuid4().hex[:8]}"
    cfg = BrokerConfig(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0", timeout_s=2.0)
    direct = BrokerConfig(backend="redis", redis_url=f"redis://127.0.0.1:{redis_port}/0", timeout_s=2.0)
    a, b = RedisBroker(f"a-{room}", direct), RedisBroker(f"b-{room}", cfg)
    await nursery.start(a.run)
    await nursery.start(b.run)
    got: list[Delivery] = []
    b.attach(got.append)
    await b.watch_room(room)
    await wait_received(a, room, got, within=5)
    proxy.cut()
    with trio.fail_after(5):
        with pytest.raises(Unavailable):
            await b.ping()
    # Publishing through the cut node fails at once, it never hangs.
    with trio.fail_after(1), pytest.raises(Unavailable):
        await b.publish(Delivery(frame(0), room=room, origin=b.node))
    # The link comes back on the same port: the node subscribes again by itself.
    proxy.port = port
    await nursery.start(proxy.run)
    got.clear()
    await wait_received(a, room, got, within=15)
    with trio.fail_after(5):
        await b.ping()


async def test_a_watch_returns_once_redis_confirmed_the_subscription(nursery: trio.Nursery, redis_url: str) -> None:
    """What another node publishes right after a subscribe reply reaches this node."""
    cfg = BrokerConfig(backend="redis", redis_url=redis_url, timeout_s=2.0)
    tag = uuid.uuid4().hex[:8]
    a, b = RedisBroker(f"a-{tag}", cfg), RedisBroker(f"b-{tag}", cfg)
    await nursery.start(a.run)
    await nursery.start(b.run)
    got: list[Delivery] = []
    b.attach(got.append)
    for i in range(20):
        room, user = f"job:{tag}-{i}", f"u-{tag}-{i}"
        await b.watch_room(room)
        await b.watch_user(user)
        await a.publish(Delivery(frame(i), room=room, origin=a.node))
        await a.publish(Delivery(frame(i), users=(user,), origin=a.node))
    with trio.fail_after(5):
        while len(got) < 40:
            await trio.sleep(0.01)
    assert sorted(d.room or d.users[0] for d in got) == sorted([f"job:{tag}-{i}" for i in range(20)] + [f"u-{tag}-{i}" for i in range(20)])


async def test_a_subscription_acknowledged_after_a_second_keeps_the_link(nursery: trio.Nursery, redis_port: int) -> None:
    """Redis (or this node's loop) answering a subscribe in more than a second is not a broken
    link: the wait is ``broker.timeout_s``, like any Redis call (coredis's default was 1 s)."""
    proxy = FaultProxy(redis_port)
    await nursery.start(proxy.run)
    tag = uuid.uuid4().hex[:8]
    direct = BrokerConfig(backend="redis", redis_url=f"redis://127.0.0.1:{redis_port}/0", timeout_s=5.0)
    slow = BrokerConfig(backend="redis", redis_url=f"redis://127.0.0.1:{proxy.port}/0", timeout_s=5.0)
    a, b = RedisBroker(f"a-{tag}", direct), RedisBroker(f"b-{tag}", slow)
    await nursery.start(a.run)
    await nursery.start(b.run)
    assert b.connected
    links = proxy.accepted
    proxy.delay(0.7)  # 1.4 s for an answer to come back
    got: list[Delivery] = []
    b.attach(got.append)
    await b.watch_room(f"job:{tag}")
    await wait_received(a, f"job:{tag}", got, within=20)
    assert b.connected and proxy.accepted == links  # the link held: no reconnect
