"""Within a room, events reach every socket in ``seq`` order, however publishes overlap.

Concurrent publishers (the server API, one connection each) publish to one room
with history while sockets subscribed on every node collect the live events with
the in-process trio-websocket client. Each socket must see exactly 1..N in order:
on one node with the in-process history, and on two nodes sharing Redis (the
seq assigned by a Redis round trip, the other node reached through pub/sub).
The router's turns are per room: a room whose history is slow holds up no other.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
import trio.testing
from trio_websocket import WebSocketConnection, open_websocket_url

from realtimed.broker.memory import MemoryBroker
from realtimed.clock import SystemClock
from realtimed.config import NamespaceConfig
from realtimed.daemon import Daemon
from realtimed.delivery.rooms import MemoryHistory
from realtimed.delivery.router import Router
from realtimed.errors import Unavailable
from realtimed.frames import Frame
from tests.fixtures.daemon import API_KEY, DaemonFactory, make_config
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}
NAMESPACES: list[dict[str, Any]] = [{"prefix": "live:", "public": True, "history_size": 1000, "history_ttl_s": 600}]
PUBLISHERS = 4
EACH = 40
SOCKETS_PER_NODE = 3


def ws_url(daemon: Daemon, user: str) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws?token=" + token(user)


async def _subscriber(ws: WebSocketConnection, room: str, total: int, seen: list[int]) -> None:
    """Collect the seq of every live event of the room until ``total`` arrived."""
    while len(seen) < total:
        frame = orjson.loads(await ws.get_message())
        if frame.get("event") == "live.tick" and frame.get("room") == room:
            seen.append(frame["seq"])


async def _publisher(daemon: Daemon, room: str, worker: int) -> None:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        for i in range(EACH):
            answer = await http.post("/server/v1/publish", json={"room": room, "event": "live.tick", "data": {"w": worker, "i": i}})
            assert answer.status_code == 200, answer.text


async def _subscribe(ws: WebSocketConnection, room: str) -> None:
    assert orjson.loads(await ws.get_message())["event"] == "session.ready"
    await ws.send_message(orjson.dumps({"id": 1, "op": "subscribe", "data": {"room": room}}).decode())
    while True:
        frame = orjson.loads(await ws.get_message())
        if frame.get("id") == 1:
            assert frame["ok"] is True, frame
            assert frame["data"]["seq"] == 0
            return


async def _check_order(publish_on: Daemon, nodes: list[Daemon]) -> None:
    room = f"live:{uuid.uuid4().hex[:8]}"
    total = PUBLISHERS * EACH
    seen: list[list[int]] = []
    async with contextlib.AsyncExitStack() as stack:
        sockets = []
        for n, daemon in enumerate(nodes):
            for k in range(SOCKETS_PER_NODE):
                ws = await stack.enter_async_context(open_websocket_url(ws_url(daemon, f"viewer-{n}-{k}")))
                await _subscribe(ws, room)
                sockets.append(ws)
        async with trio.open_nursery() as nursery:
            for ws in sockets:
                seen.append([])
                nursery.start_soon(_subscriber, ws, room, total, seen[-1])
            for worker in range(PUBLISHERS):
                nursery.start_soon(_publisher, publish_on, room, worker)
    for got in seen:
        out_of_order = [(a, b) for a, b in itertools.pairwise(got) if b != a + 1]
        assert got == list(range(1, total + 1)), out_of_order[:5]


async def test_overlapping_publishes_reach_every_socket_in_seq_order(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"namespaces": NAMESPACES})
        await _check_order(daemon, [daemon])


async def test_overlapping_publishes_on_redis_reach_both_nodes_in_seq_order(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        broker = {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0}
        a = await start_daemon({"server": {"node": "oa"}, "broker": broker, "namespaces": NAMESPACES})
        b = await start_daemon({"server": {"node": "ob"}, "broker": broker, "namespaces": NAMESPACES})
        await _check_order(a, [a, b])


class _Viewer:
    """A Recipient that records the seq of every frame it is handed."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.user_id = "viewer"
        self.rooms: set[str] = set()
        self.seqs: list[int | None] = []

    @property
    def closing(self) -> bool:
        return False

    @property
    def last_active(self) -> float | None:
        return None

    def send_frame(self, frame: Frame) -> None:
        self.seqs.append(frame.seq)

    def close(self, code: int, reason: str = "") -> None:
        raise AssertionError("not closed in this test")

    def info(self) -> dict[str, Any]:
        return {"session_id": self.id, "user_id": self.user_id}


class _GatedHistory(MemoryHistory):
    """Appends to ``gated_room`` wait for ``gate``: a slow Redis round trip for one room."""

    def __init__(self, gated_room: str) -> None:
        super().__init__()
        self.gated_room = gated_room
        self.gate = trio.Event()
        self.appending = 0

    async def append(self, room: str, ns: NamespaceConfig, event: str, data: Any, published_at: str) -> tuple[int, str]:
        if room == self.gated_room:
            self.appending += 1
            await self.gate.wait()
        return await super().append(room, ns, event, data, published_at)


async def test_a_room_waiting_on_its_history_holds_up_no_other_room(tmp_path: Path) -> None:
    with trio.fail_after(5):
        history = _GatedHistory("live:slow")
        broker = MemoryBroker("n1")
        router = Router(make_config(tmp_path, {"namespaces": NAMESPACES}), node="n1", broker=broker, clock=SystemClock(), history=history)
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            await nursery.start(router.run)
            slow, fast = _Viewer("s_slow"), _Viewer("s_fast")
            for viewer, room in ((slow, "live:slow"), (fast, "live:fast")):
                await router.add(viewer)
                await router.subscribe(viewer, room, since=None)
                router.flush_held(viewer, room, 0)
            results: list[tuple[int | None, str | None, int]] = []

            async def publish(room: str, i: int) -> None:
                results.append(await router.publish(room, "live.tick", {"i": i}))

            nursery.start_soon(publish, "live:slow", 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(publish, "live:slow", 2)
            await trio.testing.wait_all_tasks_blocked()
            # The second publish of the slow room waits for the first one's turn,
            # not in the history; the other room publishes meanwhile.
            assert history.appending == 1
            assert (await router.publish("live:fast", "live.tick", {}))[0] == 1
            assert fast.seqs == [1]
            history.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert [r[0] for r in results] == [1, 2]
            assert slow.seqs == [1, 2]
            assert router._turns == {}
            nursery.cancel_scope.cancel()


async def test_publications_queued_behind_a_failed_append_fail_at_once(tmp_path: Path) -> None:
    with trio.fail_after(5):
        history = _GatedHistory("live:slow")
        broker = MemoryBroker("n1")
        router = Router(make_config(tmp_path, {"namespaces": NAMESPACES}), node="n1", broker=broker, clock=SystemClock(), history=history)

        async def failing_append(room: str, ns: NamespaceConfig, event: str, data: Any, published_at: str) -> tuple[int, str]:
            history.appending += 1
            await history.gate.wait()  # a Redis that does not answer, until its timeout
            raise Unavailable("room history unavailable: timed out")

        history.append = failing_append  # type: ignore[method-assign]
        outcomes: list[str] = []

        async def publish(i: int) -> None:
            try:
                await router.publish("live:slow", "live.tick", {"i": i})
                outcomes.append("ok")
            except Unavailable as exc:
                outcomes.append(str(exc))

        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            await nursery.start(router.run)
            for i in range(3):
                nursery.start_soon(publish, i)
                await trio.testing.wait_all_tasks_blocked()
            history.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            # Only the first waited for the history; the two behind it failed without asking.
            assert history.appending == 1
            assert len(outcomes) == 3 and outcomes[0] == "room history unavailable: timed out"
            assert all("ahead of this one" in outcome for outcome in outcomes[1:])
            assert router._turns == {}
            # The next publication tries the history again.
            history.gate = trio.Event()
            nursery.start_soon(publish, 4)
            await trio.testing.wait_all_tasks_blocked()
            assert history.appending == 2
            nursery.cancel_scope.cancel()
