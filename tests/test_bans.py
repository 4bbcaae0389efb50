"""Bans set through the server API hold on every door, on every node, and across restarts.

Real daemons, driven with httpx and the ``websockets`` client; the store is
SQLite or PostgreSQL, and the cluster test runs two nodes on Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import trio

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}


class SteppedClock:
    """The machine's wall clock, moved forward by the test (the SQLite store reads it from threads)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def step(self, delta: timedelta) -> None:
        self.offset += delta


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


async def ban(daemon: Daemon, user: str, ban_s: float = 3600) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        answer = await http.post(f"/server/v1/users/{user}/disconnect", json={"ban_s": ban_s})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


async def rest_op(daemon: Daemon, user: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=daemon.url()) as http:
        return await http.post("/api/v1/ops/conversation.list", json={}, headers=bearer(user))


async def sse_first_event(daemon: Daemon, user: str) -> tuple[str, dict[str, Any]]:
    """The name and frame of the first event of an SSE stream."""
    async with (
        httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http,
        http.stream("GET", "/api/v1/events", headers=bearer(user)) as response,
    ):
        assert response.status_code == 200
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                return name, orjson.loads(line[len("data: ") :])
    raise AssertionError("the stream ended without an event")


async def connect(daemon: Daemon, user: str) -> WsClient:
    client = await WsClient.connect(ws_url(daemon), token=token(user))
    await client.event("session.ready")
    return client


async def assert_banned(daemon: Daemon, user: str, until: str) -> None:
    """Refused on the socket (both auth paths), on REST and on SSE."""
    refused = await WsClient.connect(ws_url(daemon), token=token(user))
    assert await refused.closed() == 4503
    # First-frame auth: the error reply comes before the close.
    first_frame = await WsClient.connect(ws_url(daemon), token=token(user), how="frame")
    reply = await first_frame.reply("auth")
    assert reply["ok"] is False
    assert reply["error"]["code"] == "FORBIDDEN" and reply["error"]["banned_until"] == until
    assert await first_frame.closed() == 4503
    answer = await rest_op(daemon, user)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "FORBIDDEN"
    assert answer.json()["error"]["banned_until"] == until
    name, frame = await sse_first_event(daemon, user)
    assert name == "session.closed" and frame["data"]["code"] == 4503


async def assert_admitted(daemon: Daemon, user: str) -> None:
    client = await connect(daemon, user)
    await client.close()
    assert (await rest_op(daemon, user)).status_code == 200
    name, _ = await sse_first_event(daemon, user)
    assert name == "session.ready"


@asynccontextmanager
async def serving(start_daemon: DaemonFactory, override: dict[str, Any]) -> AsyncIterator[Daemon]:
    daemon = await start_daemon(override)
    try:
        yield daemon
    finally:
        daemon.request_drain()
        with trio.fail_after(15):
            await daemon.wait_stopped()


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


async def test_ban_holds_on_every_door_across_a_restart_until_lifted(
    start_daemon: DaemonFactory, store_section: dict[str, Any]
) -> None:
    with trio.fail_after(60):
        async with serving(start_daemon, store_section) as daemon:
            alice = await connect(daemon, "alice")
            answer = await ban(daemon, "alice")
            assert answer["disconnected"] == 1
            until = answer["banned_until"]
            assert await alice.closed() == 4510  # open sockets are closed as before
            await assert_banned(daemon, "alice", until)
            await assert_admitted(daemon, "bob")
        # A new daemon on the same store: the ban is still there.
        async with serving(start_daemon, store_section) as daemon:
            await assert_banned(daemon, "alice", until)
            async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
                shown = (await http.get("/server/v1/users/alice/ban")).json()
                assert shown == {"banned": True, "banned_until": until}
                assert (await http.delete("/server/v1/users/alice/ban")).json() == {"unbanned": True}
                assert (await http.delete("/server/v1/users/alice/ban")).json() == {"unbanned": False}
                shown = (await http.get("/server/v1/users/alice/ban")).json()
                assert shown == {"banned": False, "banned_until": None}
            await assert_admitted(daemon, "alice")


async def test_a_ban_ends_by_itself(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        wall = SteppedClock()
        daemon = await start_daemon({"gateway": {"ban_cache_s": 0.0}}, clock=wall)
        await ban(daemon, "alice", ban_s=60.0)
        assert (await rest_op(daemon, "alice")).status_code == 403
        wall.step(timedelta(seconds=59))
        assert (await rest_op(daemon, "alice")).status_code == 403
        wall.step(timedelta(seconds=2))
        await assert_admitted(daemon, "alice")


async def test_rest_ban_cache_is_updated_by_this_nodes_ban_and_unban(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"ban_cache_s": 3600.0}})
        assert (await rest_op(daemon, "alice")).status_code == 200  # "not banned" is cached now
        await ban(daemon, "alice")
        assert (await rest_op(daemon, "alice")).status_code == 403
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            assert (await http.delete("/server/v1/users/alice/ban")).json() == {"unbanned": True}
        assert (await rest_op(daemon, "alice")).status_code == 200


async def test_ban_on_one_node_closes_and_refuses_the_user_on_another(
    start_daemon: DaemonFactory, redis_url: str, pg_dsn: str
) -> None:
    with trio.fail_after(60):
        shared = {
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "gateway": {"ban_cache_s": 3600.0},
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        user = "mallory-" + pg_dsn.rsplit("/", 1)[-1]
        on_b = await connect(b, user)
        assert (await rest_op(b, user)).status_code == 200  # B caches "not banned"
        await trio.sleep(0.3)  # B's subscription to the user's channel takes a round trip
        answer = await ban(a, user)
        assert answer["disconnected"] == 0  # none on A; B closes its own
        assert await on_b.closed() == 4510
        # B dropped its cached answer when the close came: its REST door refuses at once.
        assert (await rest_op(b, user)).status_code == 403
        await assert_banned(b, user, answer["banned_until"])
        await assert_banned(a, user, answer["banned_until"])
