"""Presence over real sockets: transitions, the grace period, away, invisible, throttling.

Timers run on Trio's MockClock with the in-process trio-websocket client; the
autojump threshold is far above loopback latency, so the clock only jumps when
every task is really waiting on a timer. The SSE test runs on real time.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, connect_websocket_url

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

PRESENCE = {"presence": {"offline_grace_s": 10.0, "away_after_s": 20.0, "throttle_s": 1.0, "idle_check_s": 1.0}}


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


class TrioClient:
    """A socket on the in-process trio-websocket client (for tests on the mock clock)."""

    def __init__(self, ws: WebSocketConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.events: deque[dict[str, Any]] = deque()
        self.replies: dict[Any, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, nursery: trio.Nursery, daemon: Daemon, user: str) -> TrioClient:
        url = daemon.url().replace("http", "ws", 1) + "/ws?token=" + token(user, ttl=86400)
        client = cls(await connect_websocket_url(nursery, url), user)
        ready = await client.event("session.ready")
        assert ready["data"]["user_id"] == user
        return client

    async def _recv(self) -> None:
        frame = orjson.loads(await self.ws.get_message())
        if "event" in frame:
            self.events.append(frame)
        else:
            self.replies[frame.get("id")] = frame

    async def send(self, op: str, data: dict[str, Any] | None = None) -> None:
        """Fire and forget: no id, no reply."""
        await self.ws.send_message(orjson.dumps({"op": op, "data": data or {}}).decode())

    async def request(self, op: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        await self.ws.send_message(orjson.dumps({"id": request_id, "op": op, "data": data or {}}).decode())
        while request_id not in self.replies:
            await self._recv()
        return self.replies.pop(request_id)

    async def ok(self, op: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.request(op, data)
        assert reply["ok"] is True, reply
        result: dict[str, Any] = reply["data"]
        return result

    async def event(self, name: str, *, timeout: float = 30) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                for i, frame in enumerate(self.events):
                    if frame["event"] == name:
                        del self.events[i]
                        return frame
                await self._recv()

    async def events_within(self, name: str, seconds: float) -> list[dict[str, Any]]:
        """Every event of this name that arrives within ``seconds`` (mock time)."""
        with trio.move_on_after(seconds):
            while True:
                await self._recv()
        found = [f for f in self.events if f["event"] == name]
        self.events = deque(f for f in self.events if f["event"] != name)
        return found

    async def close(self) -> None:
        await self.ws.aclose()


async def start_paused(start_daemon: DaemonFactory, clock: trio.testing.MockClock, override: dict[str, Any]) -> Daemon:
    """Start a daemon with the mock clock held still: a slow disk while the store
    opens must not jump the clock to the test's deadline."""
    threshold = clock.autojump_threshold
    clock.autojump_threshold = math.inf
    try:
        return await start_daemon(override)
    finally:
        clock.autojump_threshold = threshold


async def contacts(daemon: Daemon, *pairs: tuple[str, str]) -> None:
    store = daemon.services.store
    for a, b in pairs:
        await store.open_direct(user_id=a, other_id=b, now=daemon.services.clock.now())


async def test_online_grace_period_offline_and_quick_reconnects(
    start_daemon: DaemonFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_paused(start_daemon, autojump_clock, PRESENCE)
        await contacts(daemon, ("alice", "bob"))
        bob = await TrioClient.connect(nursery, daemon, "bob")
        await trio.sleep(1)  # bob's online goes out to no one
        alice = await TrioClient.connect(nursery, daemon, "alice")
        online = (await bob.event("presence.updated"))["data"]
        assert online == {"user_id": "alice", "status": "online", "message": None, "last_seen": None}
        # Only contacts hear of alice: not her own devices.
        assert await alice.events_within("presence.updated", 0.5) == []

        await alice.close()
        closed_at = trio.current_time()
        wall_closed = daemon.services.clock.now()
        assert await bob.events_within("presence.updated", 9.0) == []
        offline = await bob.event("presence.updated")
        assert 9.5 <= trio.current_time() - closed_at <= 11.5
        assert offline["data"]["status"] == "offline" and offline["data"]["message"] is None
        assert offline["data"]["last_seen"] is not None
        seen = await daemon.services.store.get_last_seen(["alice"])
        assert abs((seen["alice"] - wall_closed).total_seconds()) < 1.0

        # A reconnect within the grace period shows nothing to others.
        alice = await TrioClient.connect(nursery, daemon, "alice")
        assert (await bob.event("presence.updated"))["data"]["status"] == "online"
        await trio.sleep(5)
        await alice.close()
        await trio.sleep(3)
        alice = await TrioClient.connect(nursery, daemon, "alice")
        second = await TrioClient.connect(nursery, daemon, "alice")
        await second.close()
        assert await bob.events_within("presence.updated", 12.0) == []

        query = await bob.ok("presence.query", {"user_ids": ["alice", "carol", "bob"]})
        assert set(query["presences"]) == {"alice"}  # carol is no contact; bob asked about himself
        assert query["presences"]["alice"]["status"] == "online"
        too_many = await bob.request("presence.query", {"user_ids": [f"u{i}" for i in range(201)]})
        assert too_many["error"]["code"] == "VALIDATION_ERROR"
        await alice.close()
        await bob.close()


async def test_away_after_idle_and_back_with_any_op(
    start_daemon: DaemonFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(900):
        daemon = await start_paused(start_daemon, autojump_clock, PRESENCE)
        await contacts(daemon, ("alice", "bob"))
        bob = await TrioClient.connect(nursery, daemon, "bob")
        alice = await TrioClient.connect(nursery, daemon, "alice")
        await bob.event("presence.updated")
        started = trio.current_time()
        for _ in range(3):  # pings do not count as activity
            await trio.sleep(5)
            await alice.ok("ping")
        away = await bob.event("presence.updated")
        assert away["data"]["status"] == "away"
        assert 19.5 <= trio.current_time() - started <= 21
        # A chat or presence op brings her back at once.
        await trio.sleep(10)
        asked = trio.current_time()
        await alice.ok("conversation.list")
        assert (await bob.event("presence.updated"))["data"]["status"] == "online"
        assert trio.current_time() - asked < 1.5
        # Away again; any other op (here unsubscribe) is noticed within idle_check_s or so.
        assert (await bob.event("presence.updated", timeout=25))["data"]["status"] == "away"
        asked = trio.current_time()
        await alice.ok("unsubscribe", {"room": "nothing:1"})
        assert (await bob.event("presence.updated"))["data"]["status"] == "online"
        assert trio.current_time() - asked < 2.5
        # A new device is activity too.
        assert (await bob.event("presence.updated", timeout=25))["data"]["status"] == "away"
        other = await TrioClient.connect(nursery, daemon, "alice")
        assert (await bob.event("presence.updated"))["data"]["status"] == "online"
        for client in (other, alice, bob):
            await client.close()


async def test_invisible_busy_and_status_message(
    start_daemon: DaemonFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_paused(start_daemon, autojump_clock, PRESENCE)
        await contacts(daemon, ("alice", "bob"))
        bob = await TrioClient.connect(nursery, daemon, "bob")
        alice = await TrioClient.connect(nursery, daemon, "alice")
        await bob.event("presence.updated")
        await trio.sleep(2)

        assert await alice.ok("presence.set", {"status": "busy", "message": "in a meeting"}) == {}
        busy = (await bob.event("presence.updated"))["data"]
        assert (busy["status"], busy["message"]) == ("busy", "in a meeting")
        await trio.sleep(2)
        await alice.ok("presence.set", {"status": "invisible", "message": "hidden"})
        hidden = (await bob.event("presence.updated"))["data"]
        assert (hidden["status"], hidden["message"]) == ("offline", None)
        assert hidden["last_seen"] is not None
        looked = (await bob.ok("presence.query", {"user_ids": ["alice"]}))["presences"]["alice"]
        assert looked == {"user_id": "alice", "status": "offline", "message": None, "last_seen": hidden["last_seen"]}
        # Invisible survives a reconnect, and going away for real shows nothing new.
        await alice.close()
        alice = await TrioClient.connect(nursery, daemon, "alice")
        await alice.close()
        assert await bob.events_within("presence.updated", 20.0) == []
        alice = await TrioClient.connect(nursery, daemon, "alice")
        await alice.ok("presence.set", {"status": "online"})
        back = (await bob.event("presence.updated"))["data"]
        assert (back["status"], back["message"]) == ("online", None)
        bad = await alice.request("presence.set", {"status": "offline"})
        assert bad["error"]["code"] == "VALIDATION_ERROR" and bad["error"]["message"].startswith("status")
        await alice.close()
        await bob.close()


async def test_updates_are_throttled_to_one_per_second_and_the_last_state_wins(
    start_daemon: DaemonFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_paused(start_daemon, autojump_clock, PRESENCE)
        await contacts(daemon, ("alice", "bob"), ("alice", "carol"))
        bob = await TrioClient.connect(nursery, daemon, "bob")
        carol = await TrioClient.connect(nursery, daemon, "carol")
        alice = await TrioClient.connect(nursery, daemon, "alice")
        assert (await bob.event("presence.updated"))["data"]["status"] == "online"
        assert (await carol.event("presence.updated"))["data"]["status"] == "online"
        for status in ("busy", "away", "online", "busy", "invisible", "busy"):
            await alice.ok("presence.set", {"status": status, "message": f"now {status}"})
        got = await bob.events_within("presence.updated", 5.0)
        assert len(got) == 1
        assert (got[0]["data"]["status"], got[0]["data"]["message"]) == ("busy", "now busy")
        assert [e["data"]["status"] for e in await carol.events_within("presence.updated", 0.1)] == ["busy"]

        # Changes one second apart each go out; a burst inside one second is one event.
        stamps = []
        for status in ("online", "away", "busy"):
            await alice.ok("presence.set", {"status": status})
            event = await bob.event("presence.updated")
            stamps.append(trio.current_time())
            assert event["data"]["status"] == status
        assert all(b - a >= 0.99 for a, b in itertools.pairwise(stamps))
        # Back to the state last sent within the interval: nothing to send.
        await alice.ok("presence.set", {"status": "online"})
        await alice.ok("presence.set", {"status": "busy"})
        assert await bob.events_within("presence.updated", 3.0) == []
        for client in (alice, bob, carol):
            await client.close()


async def test_sse_stream_counts_as_a_device(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"presence": {"offline_grace_s": 0.3, "throttle_s": 0.0}})
        await contacts(daemon, ("alice", "bob"))
        bob = await WsClient.connect(daemon.url().replace("http", "ws", 1) + "/ws", token=token("bob"))
        await bob.event("session.ready")
        async with (
            httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http,
            http.stream("GET", "/api/v1/events", params={"token": token("alice")}) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("event: session.ready"):
                    break
            assert (await bob.event("presence.updated"))["data"]["status"] == "online"
            assert daemon.services.presence.connected("alice")
        offline = await bob.event("presence.updated", timeout=10)
        assert offline["data"]["status"] == "offline"
        seen = await daemon.services.store.get_last_seen(["alice"])
        assert daemon.services.clock.now() - seen["alice"] < timedelta(seconds=5)
        await bob.close()


async def test_last_seen_is_stored_when_the_node_stops(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"presence": {"offline_grace_s": 60.0}})
        alice = await WsClient.connect(daemon.url().replace("http", "ws", 1) + "/ws", token=token("alice"))
        await alice.event("session.ready")
        assert daemon.services.presence.connected("alice")
        daemon.request_drain()
        assert await alice.closed() == 1001
        await daemon.wait_stopped()
        stopped = daemon.services.clock.now()
        again = await start_daemon()  # the same state directory
        seen = await again.services.store.get_last_seen(["alice"])
        assert timedelta(0) <= stopped - seen["alice"] < timedelta(seconds=10)


async def test_presence_over_rest(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        await contacts(daemon, ("alice", "bob"))
        async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http:
            answer = await http.put(
                "/server/v1/users/carol/contacts", json={"user_ids": ["bob"]}, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert answer.status_code == 200, answer.text
            alice = await WsClient.connect(daemon.url().replace("http", "ws", 1) + "/ws", token=token("alice"))
            await alice.event("session.ready")
            bob = {"Authorization": f"Bearer {token('bob')}"}
            answer = await http.get("/api/v1/presence", params={"user_ids": "alice,carol,dave"}, headers=bob)
            assert answer.status_code == 200, answer.text
            presences = answer.json()["presences"]
            assert set(presences) == {"alice", "carol"}  # dave is no contact of bob's
            assert presences["alice"]["status"] == "online"
            assert presences["carol"] == {"user_id": "carol", "status": "offline", "message": None, "last_seen": None}
            too_many = await http.get("/api/v1/presence", params={"user_ids": ",".join(f"u{i}" for i in range(201))}, headers=bob)
            assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "VALIDATION_ERROR"
            assert (await http.get("/api/v1/presence", params={"user_ids": "alice"})).status_code == 401
            await alice.close()
