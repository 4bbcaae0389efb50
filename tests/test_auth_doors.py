"""One token rule on every door: the socket's header, ``?token=`` and ``auth``
frame, client REST and SSE.

- ``exp`` with ``auth.leeway_s``: a token expired within the leeway is accepted
  everywhere (and the socket is not closed at once); past it, refused everywhere.
- ``auth.max_token_bytes``: a longer token is refused everywhere.
- A first-frame ``auth`` that fails (empty, oversized, expired, banned, over the
  per-user limit) gets its error reply, then the close.
- ``session.expiring`` comes right after ``session.ready`` when the token has
  less than ``gateway.expiring_notice_s`` left.

Sockets are driven by the third-party ``websockets`` client (real time), HTTP by
httpx; the timer test runs on a MockClock with trio-websocket.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

SOCKET_WAYS = ("header", "query", "frame")
WITHIN_LEEWAY_S = -10  # exp 10 s ago; the default leeway is 30 s
PAST_LEEWAY_S = -45


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


async def rest_status(daemon: Daemon, jwt: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http:
        answer = await http.post("/api/v1/ops/notification.list", json={}, headers={"Authorization": f"Bearer {jwt}"})
        body: dict[str, Any] = answer.json()
        return answer.status_code, body


async def sse_until_heartbeat(daemon: Daemon, jwt: str) -> list[str]:
    """The events an SSE stream sends before its first heartbeat comment (or its end)."""
    names: list[str] = []
    async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http, http.stream(
        "GET", "/api/v1/events", headers={"Authorization": f"Bearer {jwt}"}
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith(": heartbeat"):
                break
            field, _, value = line.partition(": ")
            if field == "event":
                names.append(value)
            elif field == "data" and names[-1] == "session.closed":
                names.append(f"code {orjson.loads(value)['data']['code']}")
    return names


# -- leeway ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", SOCKET_WAYS)
async def test_token_expired_within_leeway_is_accepted_and_kept_on_the_socket(start_daemon: DaemonFactory, how: str) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        client = await WsClient.connect(ws_url(daemon), token=token("alice", ttl=WITHIN_LEEWAY_S), how=how)
        if how == "frame":
            reply = await client.recv()
            assert reply["id"] == "auth" and reply["ok"] is True, reply
        ready = await client.recv()
        assert ready["event"] == "session.ready"
        # Less than the notice left (none at all): session.expiring right behind session.ready.
        expiring = await client.recv()
        assert expiring["event"] == "session.expiring"
        assert expiring["data"]["expires_at"] == ready["data"]["expires_at"]
        # Not answered ok and then closed 4004: the socket stays until exp plus the leeway.
        assert (await client.ok("ping"))["server_time"]
        await client.close()


@pytest.mark.parametrize("how", SOCKET_WAYS)
async def test_token_past_leeway_is_refused_4004_on_the_socket(start_daemon: DaemonFactory, how: str) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        client = await WsClient.connect(ws_url(daemon), token=token("alice", ttl=PAST_LEEWAY_S), how=how)
        assert await client.closed() == 4004
        assert not client.events, client.events  # no session.ready
        if how == "frame":
            reply = client.replies["auth"]
            assert reply["ok"] is False and reply["error"]["code"] == "UNAUTHORIZED"


async def test_leeway_is_the_same_on_the_http_doors(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"gateway": {"heartbeat_s": 1.0}})
        status, _ = await rest_status(daemon, token("alice", ttl=WITHIN_LEEWAY_S))
        assert status == 200
        status, body = await rest_status(daemon, token("alice", ttl=PAST_LEEWAY_S))
        assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
        # SSE: within the leeway the stream lives on to its first heartbeat (it was closed 4004 at once).
        assert await sse_until_heartbeat(daemon, token("alice", ttl=WITHIN_LEEWAY_S)) == ["session.ready"]
        assert await sse_until_heartbeat(daemon, token("alice", ttl=PAST_LEEWAY_S)) == ["session.closed", "code 4004"]


# -- token size -----------------------------------------------------------------------------------


async def test_token_over_max_token_bytes_is_refused_on_every_door(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"auth": {"max_token_bytes": 4096}})
        small = token("alice", name="x" * 2000)
        big = token("alice", name="x" * 4000)
        assert len(small) < 4096 < len(big)
        for how in SOCKET_WAYS:
            accepted = await WsClient.connect(ws_url(daemon), token=small, how=how)
            assert (await accepted.event("session.ready"))["data"]["user_id"] == "alice"
            await accepted.close()
            refused = await WsClient.connect(ws_url(daemon), token=big, how=how)
            assert await refused.closed() == 4501, how
            if how == "frame":
                error = refused.replies["auth"]["error"]
                assert error["code"] == "UNAUTHORIZED" and "auth.max_token_bytes" in error["message"]
        assert (await rest_status(daemon, small))[0] == 200
        status, body = await rest_status(daemon, big)
        assert status == 401 and "auth.max_token_bytes" in body["error"]["message"]
        async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http:
            answer = await http.get("/api/v1/events", params={"token": big})
            assert answer.status_code == 401


# -- first-frame auth failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"token": ""}, "VALIDATION_ERROR"),
        ({}, "VALIDATION_ERROR"),
        ({"token": 5}, "VALIDATION_ERROR"),
        ({"token": "a" * 70_000}, "VALIDATION_ERROR"),  # over the protocol's ceiling
        # A valid signed token, but over auth.max_token_bytes (8192).
        ({"token": token("alice", ttl=86400, name="x" * 7000)}, "UNAUTHORIZED"),
    ],
    ids=["empty", "missing", "not-a-string", "huge", "oversized"],
)
async def test_bad_first_frame_token_gets_a_reply_then_4501(start_daemon: DaemonFactory, data: dict[str, Any], code: str) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        client = await WsClient.connect(ws_url(daemon))
        await client.send({"id": 1, "op": "auth", "data": data})
        reply = await client.reply(1)
        assert reply["ok"] is False and reply["error"]["code"] == code
        assert "token" in reply["error"]["message"]
        if code == "UNAUTHORIZED":
            assert "auth.max_token_bytes" in reply["error"]["message"]
        assert await client.closed() == 4501


async def test_banned_user_first_frame_gets_a_reply_then_4503(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url(), headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            answer = await http.post("/server/v1/users/alice/disconnect", json={"ban_s": 60})
            assert answer.status_code == 200
        client = await WsClient.connect(ws_url(daemon), token=token("alice"), how="frame")
        assert await client.closed() == 4503
        reply = client.replies["auth"]
        assert reply["ok"] is False and reply["error"]["code"] == "FORBIDDEN"
        assert "banned" in reply["error"]["message"]
        assert not client.events  # no session.ready


async def test_user_over_socket_limit_first_frame_gets_a_reply_then_4511(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"gateway": {"max_sockets_per_user": 1}})
        first = await WsClient.connect(ws_url(daemon), token=token("alice"))
        await first.event("session.ready")
        second = await WsClient.connect(ws_url(daemon), token=token("alice"), how="frame")
        assert await second.closed() == 4511
        reply = second.replies["auth"]
        assert reply["ok"] is False and reply["error"]["code"] == "FORBIDDEN"
        assert (await first.ok("ping"))["server_time"]


# -- session.expiring -----------------------------------------------------------------------------


async def test_short_token_gets_session_expiring_right_after_ready_and_after_reauth(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()  # expiring_notice_s: 60
        client = await WsClient.connect(ws_url(daemon), token=token("alice", ttl=30))
        ready = await client.recv()
        assert ready["event"] == "session.ready"
        expiring = await client.recv()
        assert expiring["event"] == "session.expiring"
        assert expiring["data"]["expires_at"] == ready["data"]["expires_at"]
        # A long token: no notice now.
        await client.send({"id": "long", "op": "auth", "data": {"token": token("alice", ttl=3600)}})
        assert (await client.recv())["id"] == "long"
        await client.send({"id": "p", "op": "ping"})
        assert (await client.recv())["id"] == "p"
        # A short one again: the notice follows its reply.
        await client.send({"id": "short", "op": "auth", "data": {"token": token("alice", ttl=20)}})
        reply = await client.recv()
        assert reply["id"] == "short" and reply["ok"] is True
        expiring = await client.recv()
        assert expiring["event"] == "session.expiring"
        assert expiring["data"]["expires_at"] == reply["data"]["expires_at"]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)


async def test_short_token_timeline_on_a_mock_clock(start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock) -> None:
    quiet: dict[str, Any] = {"jobs": {"enabled": False}, "presence": {"away_after_s": 86400.0}, "gateway": {"heartbeat_s": 900.0}}
    with trio.fail_after(600):
        daemon = await start_daemon(quiet)
        async with open_websocket_url(ws_url(daemon) + "?token=" + token("alice", ttl=30)) as ws:
            started = trio.current_time()
            assert orjson.loads(await ws.get_message())["event"] == "session.ready"
            assert orjson.loads(await ws.get_message())["event"] == "session.expiring"
            assert trio.current_time() - started < 1  # at once, not by a timer
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None and info.value.reason.code == 4004
            # At exp plus auth.leeway_s (30 + 30 s), not at exp.
            assert 55 <= trio.current_time() - started <= 62
