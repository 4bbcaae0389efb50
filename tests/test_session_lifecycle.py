"""One session lifecycle for every transport: admission, limits, hooks, activity and the end.

WebSocket and SSE are adapters over ``Gateway``; these tests hold them to the
same admission (one node limit, one drain), and show that a transport with no
connection of its own (as long-polling will be) plugs into the lifecycle alone.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import orjson
import trio
import trio.testing

from realtimed.daemon import Daemon
from realtimed.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL
from realtimed.frames import Frame
from realtimed.gateway.client import ClientSession
from realtimed.gateway.gateway import Gateway
from realtimed.gateway.sse import SseSession
from realtimed.protocol import encode_event
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_gateway import connect, ws_url

SERVER = {"Authorization": f"Bearer {API_KEY}"}


async def sse_records(daemon: Daemon, user: str, *, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` (event, data) records of a new SSE stream of ``user``."""
    found: list[tuple[str, dict[str, Any]]] = []
    async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http, http.stream(
        "GET", "/api/v1/events", params={"token": token(user)}
    ) as response:
        assert response.status_code == 200
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                found.append((name, orjson.loads(line[len("data: ") :])["data"]))
                if len(found) == count:
                    break
    return found


async def test_streams_and_sockets_share_the_node_limit(start_daemon: DaemonFactory) -> None:
    # SSE used to count admitted sockets and streams but not sockets still
    # authenticating, and a socket never counted the streams: with one slot, both
    # got in.
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"max_sockets": 1}})
        waiting = await WsClient.connect(ws_url(daemon))  # upgraded, no auth frame yet
        await trio.sleep(0.2)
        assert await sse_records(daemon, "alice", count=1) == [("session.closed", {"code": 4013, "reason": "node full"})]
        await waiting.send({"op": "auth", "id": 1, "data": {"token": token("carol")}})
        assert (await waiting.event("session.ready"))["data"]["user_id"] == "carol"
        await waiting.close()
        with trio.fail_after(5):
            while daemon.services.gateway.sessions:
                await trio.sleep(0.05)

        async def late_socket() -> None:
            with trio.fail_after(10):
                while not daemon.services.gateway.count("sse"):
                    await trio.sleep(0.05)
                bob = await WsClient.connect(ws_url(daemon), token=token("bob"))
                assert await bob.closed() == 4013

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_socket)
            # The stream is admitted, and stays open while the socket is refused.
            async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http, http.stream(
                "GET", "/api/v1/events", params={"token": token("alice")}
            ) as response:
                lines = response.aiter_lines()
                async for line in lines:
                    if line == "event: session.ready":
                        break
                with trio.fail_after(10):
                    while nursery.child_tasks:
                        await trio.sleep(0.05)


async def test_a_draining_node_refuses_sockets_and_streams_alike(start_daemon: DaemonFactory) -> None:
    # A stream opened while the node drained used to get 1001, a socket 4013.
    with trio.fail_after(30):
        daemon = await start_daemon()
        daemon.services.gateway.stop_admitting()
        socket = await WsClient.connect(ws_url(daemon), token=token("alice"))
        assert await socket.closed() == 4013
        assert socket.close_reason == "node draining"
        assert await sse_records(daemon, "alice", count=1) == [("session.closed", {"code": 4013, "reason": "node draining"})]
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            assert (await http.get("/readyz")).json()["draining"] is True


class HeldSession(ClientSession):
    """A transport with no connection and no task: frames wait here between requests."""

    __slots__ = ("_closing", "_gateway", "frames")

    transport = "held"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(node=gateway.node, address="held", connected_at=gateway.clock.now(), last_active=None)
        self._gateway = gateway
        self._closing = False
        self.frames: list[dict[str, Any]] = []

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def outbox_bytes(self) -> int:
        return 0

    def send_frame(self, frame: Frame) -> None:
        if not self._closing:
            self.frames.append(orjson.loads(frame.json))

    def send_event(self, name: str, data: Any) -> None:
        self.send_frame(Frame(encode_event(name, data), name))

    def close(self, code: int, reason: str = "") -> None:
        if not self._closing:
            self._closing = True
            self.close_code = code

    def shutdown(self, event_payload: bytes) -> None:
        self.send_frame(Frame(event_payload))
        self.close(CLOSE_GOING_AWAY, "server draining")

    async def aclose(self) -> None:
        self.close(CLOSE_NORMAL)
        await self._gateway.end(self)


async def test_a_session_between_requests_needs_only_the_lifecycle(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        svc = daemon.services
        gateway = svc.gateway
        friend = await connect(daemon, "erin")
        await svc.store.open_direct(user_id="dora", other_id="erin", now=svc.clock.now())
        claims = await svc.verifier.verify(token("dora"))
        session = HeldSession(gateway)
        async with session:
            with gateway.admitting():
                assert await gateway.admit(session, claims) == "accepted"
            assert [f["event"] for f in session.frames] == ["session.ready"]
            assert session.frames[0]["data"]["session_id"] == session.id
            # Registered like a socket: deliveries, the hooks (presence), the server API.
            assert svc.presence.connected("dora")
            assert (await friend.event("presence.updated"))["data"]["status"] == "online"
            await svc.router.to_users(["dora"], "app.hi", {"n": 1})
            assert session.frames[-1] == {"event": "app.hi", "data": {"n": 1}}
            async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
                answer = await http.get("/server/v1/connections", params={"user_id": "dora"})
                assert [c["transport"] for c in answer.json()["connections"]] == ["held"]
                stats = (await http.get("/server/v1/stats")).json()
                assert stats["sockets"] == 2 and stats["websocket_sockets"] == 1
            assert gateway.count("held") == 1
        assert session.close_code == CLOSE_NORMAL
        assert session.id not in gateway.sessions and not svc.router.user_sessions("dora")
        assert gateway.count("held") == 0


async def test_admissions_over_gateway_max_admissions_wait_their_turn(start_daemon: DaemonFactory) -> None:
    """A reconnect storm is admitted a bounded number at a time, first come first served."""
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"max_admissions": 1}})
        svc = daemon.services
        gateway = svc.gateway
        release = trio.Event()
        entered: list[str] = []

        async def hold_the_first(session: ClientSession) -> None:
            entered.append(session.user_id)
            if session.user_id == "first":
                await release.wait()

        gateway.hooks = attrs.evolve(gateway.hooks, on_connect=(hold_the_first, *gateway.hooks.on_connect))
        outcomes: dict[str, str] = {}

        async def admit(session: HeldSession, user: str) -> None:
            claims = await svc.verifier.verify(token(user))
            with gateway.admitting():
                outcomes[user] = await gateway.admit(session, claims)

        first, second = HeldSession(gateway), HeldSession(gateway)
        async with first, second:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(admit, first, "first")
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert entered == ["first"]
                nursery.start_soon(admit, second, "second")
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                # The one admission slot is taken: the second waits, not even asked of the store.
                assert entered == ["first"] and second.frames == [] and second.id not in gateway.sessions
                release.set()
            assert outcomes == {"first": "accepted", "second": "accepted"}
            assert entered == ["first", "second"]
            assert [f["event"] for f in second.frames] == ["session.ready"]


async def test_closing_a_websocket_session_from_the_server(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        client = await connect(daemon, "alice")
        gateway = daemon.services.gateway
        (session,) = gateway.sessions.values()
        codes: list[int] = []

        async def read_close() -> None:
            codes.append(await client.closed())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_close)
            await session.aclose()
            assert not gateway.sessions  # ended, and forgotten, when aclose returns
            await session.aclose()  # again: nothing more to do
        assert codes == [1000]


async def test_a_stream_whose_body_never_began_is_ended(start_daemon: DaemonFactory) -> None:
    # An SSE client that goes away after admission but before its response body is
    # first iterated used to leave its session registered for good (counted toward
    # the user's devices and the node's sockets).
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"handshake_timeout_s": 0.5}})
        svc = daemon.services
        gateway = svc.gateway
        claims = await svc.verifier.verify(token("fay"))
        sse = SseSession(gateway, "127.0.0.1")
        assert await sse.open(claims, [], {})
        assert sse.id in gateway.sessions and svc.router.user_sessions("fay")
        with trio.fail_after(5):
            while sse.id in gateway.sessions:
                await trio.sleep(0.05)
        assert not svc.router.user_sessions("fay")
        assert gateway.count("sse") == 0
        # A stream whose body is served is not touched by the watch.
        async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http, http.stream(
            "GET", "/api/v1/events", params={"token": token("gus")}
        ) as response:
            lines = response.aiter_lines()
            while not (await lines.__anext__()).startswith("event: session.ready"):
                pass
            await trio.sleep(1.0)  # twice the start deadline
            assert gateway.count("sse") == 1 and svc.router.user_sessions("gus")
