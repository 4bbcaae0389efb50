"""The gateway over real sockets, driven by the third-party ``websockets`` client.

Each test runs a daemon in-process on a free port and talks to it exactly as a
client written against docs/protocol.md would.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import orjson
import pytest
import trio
from websockets.exceptions import ConnectionClosed

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient, refused_status
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

NAMESPACES: list[dict[str, Any]] = [
    {"prefix": "job:", "history_size": 100, "history_ttl_s": 600, "recovery_cap": 5},
    {"prefix": "lobby:", "public": True, "client_publish": True, "presence": True, "history_size": 10},
    {"prefix": "episode:", "presence": True},
]
SERVER = {"Authorization": f"Bearer {API_KEY}"}


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


async def start(start_daemon: DaemonFactory, **sections: Any) -> Daemon:
    override: dict[str, Any] = {"namespaces": NAMESPACES}
    override.update(sections)
    return await start_daemon(override)


async def connect(daemon: Daemon, user: str = "alice", *, rooms: list[str] | None = None, how: str = "header", **kw: Any) -> WsClient:
    client = await WsClient.connect(ws_url(daemon), token=token(user, rooms=rooms or ["job:*", "episode:*"], **kw), how=how)
    ready = await client.event("session.ready")
    assert ready["data"]["user_id"] == user
    return client


async def publish(daemon: Daemon, room: str, event: str = "job.progress", data: Any = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        answer = await http.post("/server/v1/publish", json={"room": room, "event": event, "data": data or {}})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


# -- connecting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query", "frame"])
async def test_each_auth_path_gets_session_ready(start_daemon: DaemonFactory, how: str) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await WsClient.connect(ws_url(daemon), token=token("alice"), how=how)
        if how == "frame":
            reply = await client.reply("auth")
            assert reply["ok"] is True
            assert reply["data"]["user_id"] == "alice"
        ready = await client.event("session.ready")
        data = ready["data"]
        assert data["user_id"] == "alice"
        assert data["node"] == "t1"
        assert data["session_id"].startswith("s_")
        assert data["heartbeat_s"] == 25
        assert data["expires_at"].endswith("Z")
        assert {"server_time", "unread_total", "notifications_unread"} <= set(data)
        pong = await client.ok("ping")
        assert pong["server_time"].endswith("Z")
        await client.close()


async def test_ops_before_first_frame_auth_are_unauthorized(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await WsClient.connect(ws_url(daemon))
        reply = await client.request("ping")
        assert reply["ok"] is False
        assert reply["error"]["code"] == "UNAUTHORIZED"
        await client.send({"id": "a", "op": "auth", "data": {"token": token("bob")}})
        assert (await client.reply("a"))["ok"] is True
        assert (await client.event("session.ready"))["data"]["user_id"] == "bob"


async def test_no_auth_in_time_closes_4012(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"auth_timeout_s": 0.5, "allowed_origins": []})
        client = await WsClient.connect(ws_url(daemon))
        assert await client.closed() == 4012


async def test_bad_first_frame_auth_replies_then_closes(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await WsClient.connect(ws_url(daemon))
        await client.send({"id": 1, "op": "auth", "data": {"token": "not-a-jwt"}})
        reply = await client.reply(1)
        assert reply["ok"] is False and reply["error"]["code"] == "UNAUTHORIZED"
        assert await client.closed() == 4501
        client = await WsClient.connect(ws_url(daemon))
        await client.send({"id": 2, "op": "auth", "data": {"token": token("bob", ttl=-120)}})
        reply = await client.reply(2)
        assert reply["ok"] is False
        assert await client.closed() == 4004


async def test_reauth_on_open_socket(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await connect(daemon, "alice", ttl=600)
        fresh = await client.ok("auth", {"token": token("alice", ttl=7200)})
        assert fresh["user_id"] == "alice"
        other = await client.request("auth", {"token": token("mallory")})
        assert other["ok"] is False and other["error"]["code"] == "FORBIDDEN"
        bad = await client.request("auth", {"token": "garbage"})
        assert bad["ok"] is False and bad["error"]["code"] == "UNAUTHORIZED"
        # The session is as it was: still alice, still open.
        assert (await client.ok("ping"))["server_time"]
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            conns = (await http.get("/server/v1/connections", params={"user_id": "alice"})).json()["connections"]
            assert len(conns) == 1
            assert conns[0]["transport"] == "websocket" and conns[0]["address"] == "127.0.0.1"
            assert (await http.get("/server/v1/connections", params={"user_id": "mallory"})).json()["connections"] == []


async def test_expiring_notice_then_4004(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        # No leeway: the close comes at exp itself (else exp plus auth.leeway_s).
        daemon = await start(start_daemon, gateway={"expiring_notice_s": 1.0, "allowed_origins": []}, auth={"leeway_s": 0})
        client = await WsClient.connect(ws_url(daemon), token=token("alice", ttl=2))
        await client.event("session.ready")
        expiring = await client.event("session.expiring", timeout=5)
        assert expiring["data"]["expires_at"].endswith("Z")
        assert await client.closed() == 4004


async def test_reauth_postpones_expiry(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"expiring_notice_s": 1.0, "allowed_origins": []}, auth={"leeway_s": 0})
        client = await WsClient.connect(ws_url(daemon), token=token("alice", ttl=2))
        await client.event("session.ready")
        await client.event("session.expiring", timeout=5)
        await client.ok("auth", {"token": token("alice", ttl=3600)})
        await trio.sleep(2)
        assert (await client.ok("ping"))["server_time"]


async def test_origin_allow_list(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        url = ws_url(daemon) + "?token=" + token("alice")
        assert await refused_status(url, origin="https://evil.example") == 403
        client = await WsClient.connect(url, origin="https://app.example")
        await client.event("session.ready")
        client = await WsClient.connect(url)  # no Origin: not a browser
        await client.event("session.ready")


# -- frames ----------------------------------------------------------------------------------


async def test_malformed_frames_get_their_errors_and_socket_stays(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await connect(daemon)
        cases: list[tuple[str, Any, str]] = [
            ("not json", None, "BAD_REQUEST"),
            ("[1, 2]", None, "BAD_REQUEST"),
            ('{"id": true, "op": "ping"}', None, "BAD_REQUEST"),
            ('{"id": 1.5, "op": "ping"}', None, "BAD_REQUEST"),
            (orjson.dumps({"id": "x" * 65, "op": "ping"}).decode(), None, "BAD_REQUEST"),
            ('{"id": 7}', 7, "BAD_REQUEST"),
            ('{"id": "u", "op": "no.such.op"}', "u", "BAD_REQUEST"),
            ('{"id": 8, "op": "subscribe", "data": [1]}', 8, "VALIDATION_ERROR"),
            ('{"id": 9, "op": "subscribe", "data": {}}', 9, "VALIDATION_ERROR"),
        ]
        for text, expected_id, code in cases:
            await client.send(text)
            frame = await client.recv()
            assert frame["id"] == expected_id, (text, frame)
            assert frame["ok"] is False
            assert frame["error"]["code"] == code, (text, frame)
        # Fire-and-forget gets nothing, not even an error; the next reply is the ping's.
        await client.send('{"op": "no.such.op"}')
        await client.send('{"op": "ping", "data": 5}')
        await client.send('{"id": "p", "op": "ping", "extra": "ignored"}')
        frame = await client.recv()
        assert frame["id"] == "p" and frame["ok"] is True
        # A repeated id gets a second reply.
        await client.send('{"id": "p", "op": "ping"}')
        assert (await client.recv())["id"] == "p"


async def test_binary_frame_closes_1003(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await connect(daemon)
        await client.send_bytes(b"\x00\x01")
        assert await client.closed() == 1003


async def test_oversized_frame_closes_1009_others_unaffected(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"max_frame_bytes": 4096, "allowed_origins": []})
        bystander = await connect(daemon, "bob")
        client = await connect(daemon)
        await client.send(orjson.dumps({"id": 1, "op": "ping", "data": {"pad": "é" * 3000}}).decode())
        assert await client.closed() == 1009
        assert (await bystander.ok("ping"))["server_time"]


async def test_client_close_is_echoed(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await connect(daemon)
        await client.close()
        assert client.conn.close_code == 1000
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            with trio.fail_after(5):
                while (await http.get("/server/v1/stats")).json()["sockets"]:
                    await trio.sleep(0.05)


# -- rooms, history, recovery ------------------------------------------------------------------


async def test_subscribe_needs_a_matching_room_pattern(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        client = await connect(daemon, rooms=["job:42", "team:7:*"])
        assert (await client.ok("subscribe", {"room": "job:42"}))["room"] == "job:42"
        for room in ("job:43", "team:70", "team:7", "secret:1"):
            reply = await client.request("subscribe", {"room": room})
            assert reply["ok"] is False and reply["error"]["code"] == "FORBIDDEN", room
        assert (await client.ok("subscribe", {"room": "team:7:x:y"}))["room"] == "team:7:x:y"
        # Public namespaces need no claim.
        assert (await client.ok("subscribe", {"room": "lobby:main"}))["room"] == "lobby:main"


async def test_publish_reaches_subscribers_with_seq_and_epoch(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        a = await connect(daemon, "alice")
        b = await connect(daemon, "bob")
        sub = await a.ok("subscribe", {"room": "job:1"})
        assert sub["seq"] == 0 and sub["epoch"] and sub["recovered"] is False
        await b.ok("subscribe", {"room": "job:1"})
        result = await publish(daemon, "job:1", data={"pct": 10})
        assert result == {"delivered": 2, "seq": 1, "epoch": sub["epoch"]}
        for client in (a, b):
            event = await client.event("job.progress")
            assert event == {"event": "job.progress", "room": "job:1", "seq": 1, "epoch": sub["epoch"], "data": {"pct": 10}}
        # Rooms without history carry no seq.
        await a.ok("subscribe", {"room": "episode:9"})
        assert (await publish(daemon, "episode:9", "cue", {"t": 1})) == {"delivered": 1}
        event = await a.event("cue")
        assert "seq" not in event and event["room"] == "episode:9"
        await a.ok("unsubscribe", {"room": "job:1"})
        assert (await publish(daemon, "job:1"))["delivered"] == 1


async def test_recovery_decision_table(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connect(daemon)
        sub = await client.ok("subscribe", {"room": "job:7"})
        epoch = sub["epoch"]
        for i in range(1, 4):
            await publish(daemon, "job:7", data={"i": i})
        await client.ok("unsubscribe", {"room": "job:7"})
        for i in range(4, 7):
            await publish(daemon, "job:7", data={"i": i})
        # A gap of three publications (4, 5, 6): recovered in order.
        got = await client.ok("subscribe", {"room": "job:7", "since": {"seq": 3, "epoch": epoch}})
        assert got["recovered"] is True and got["seq"] == 6
        assert [p["seq"] for p in got["publications"]] == [4, 5, 6]
        assert [p["data"]["i"] for p in got["publications"]] == [4, 5, 6]
        assert all(p["event"] == "job.progress" and p["published_at"].endswith("Z") for p in got["publications"])
        # No gap.
        got = await client.ok("subscribe", {"room": "job:7", "since": {"seq": 6, "epoch": epoch}})
        assert got["recovered"] is True and got["publications"] == []
        # More missed than the namespace's recovery cap (5): all or nothing.
        got = await client.ok("subscribe", {"room": "job:7", "since": {"seq": 0, "epoch": epoch}})
        assert got["recovered"] is False and got["publications"] == []
        # A changed epoch, and a position from the future.
        got = await client.ok("subscribe", {"room": "job:7", "since": {"seq": 5, "epoch": "other"}})
        assert got["recovered"] is False and got["epoch"] == epoch
        got = await client.ok("subscribe", {"room": "job:7", "since": {"seq": 99, "epoch": epoch}})
        assert got["recovered"] is False


async def test_recovery_fails_once_history_is_trimmed(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(
            start_daemon, namespaces=[{"prefix": "board:", "history_size": 3, "recovery_cap": 100}]
        )
        client = await connect(daemon, rooms=["board:*"])
        epoch = (await client.ok("subscribe", {"room": "board:1"}))["epoch"]
        await client.ok("unsubscribe", {"room": "board:1"})
        for i in range(5):
            await publish(daemon, "board:1", data={"i": i})
        got = await client.ok("subscribe", {"room": "board:1", "since": {"seq": 1, "epoch": epoch}})
        assert got["recovered"] is False and got["publications"] == []
        got = await client.ok("subscribe", {"room": "board:1", "since": {"seq": 2, "epoch": epoch}})
        assert got["recovered"] is True and [p["seq"] for p in got["publications"]] == [3, 4, 5]


async def test_subscribe_reply_comes_before_live_events(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connect(daemon)

        async def flood() -> None:
            # One client for the 200 publications: a client per call (its TLS context) took
            # most of the test's time.
            async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
                for i in range(200):
                    answer = await http.post("/server/v1/publish", json={"room": "job:9", "event": "job.progress", "data": {"i": i}})
                    assert answer.status_code == 200, answer.text

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await trio.sleep(0.05)
            await client.send({"id": "s", "op": "subscribe", "data": {"room": "job:9"}})
            first_for_room = None
            while first_for_room is None:
                frame = await client.recv()
                if frame.get("id") == "s" or frame.get("room") == "job:9":
                    first_for_room = frame
            assert first_for_room.get("id") == "s", first_for_room
            subscribed_at = first_for_room["data"]["seq"]
            last = subscribed_at
            while last < 200:
                frame = await client.recv()
                if frame.get("room") == "job:9":
                    assert frame["seq"] == last + 1
                    last = frame["seq"]


async def test_room_presence_and_join_leave_events(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        a = await connect(daemon, "alice")
        await a.ok("subscribe", {"room": "episode:9"})
        b1 = await connect(daemon, "bob")
        b2 = await connect(daemon, "bob")
        await b1.ok("subscribe", {"room": "episode:9"})
        joined = await a.event("room.joined")
        assert joined["data"] == {"room": "episode:9", "user_id": "bob"}
        await b2.ok("subscribe", {"room": "episode:9"})
        await a.no_event("room.joined")
        users = (await a.ok("room.presence", {"room": "episode:9"}))["users"]
        assert users == [{"user_id": "alice", "sessions": 1}, {"user_id": "bob", "sessions": 2}]
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = (await http.get("/server/v1/rooms/episode:9/presence")).json()
            assert answer["users"] == users
        await b1.close()
        await a.no_event("room.left")
        await b2.ok("unsubscribe", {"room": "episode:9"})
        left = await a.event("room.left")
        assert left["data"] == {"room": "episode:9", "user_id": "bob"}
        # Presence only where the namespace keeps it, and only for subscribed rooms.
        await a.ok("subscribe", {"room": "job:1"})
        reply = await a.request("room.presence", {"room": "job:1"})
        assert reply["error"]["code"] == "VALIDATION_ERROR"
        reply = await b2.request("room.presence", {"room": "episode:9"})
        assert reply["error"]["code"] == "FORBIDDEN"


async def test_client_publish_only_where_allowed(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        a = await connect(daemon, "alice")
        b = await connect(daemon, "bob")
        await b.ok("subscribe", {"room": "lobby:main"})
        result = await a.ok("publish", {"room": "lobby:main", "event": "chat.line", "data": {"text": "hi"}})
        assert result["seq"] == 1
        event = await b.event("chat.line")
        assert event["data"] == {"text": "hi"} and event["seq"] == 1
        reply = await a.request("publish", {"room": "job:1", "event": "x", "data": {}})
        assert reply["error"]["code"] == "FORBIDDEN"
        reply = await a.request("publish", {"room": "lobby:main", "event": "message.new", "data": {}})
        assert reply["error"]["code"] == "VALIDATION_ERROR"


# -- server API ------------------------------------------------------------------------------


async def test_server_api_users_events_broadcast_and_validation(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        a1 = await connect(daemon, "alice")
        a2 = await connect(daemon, "alice")
        b = await connect(daemon, "bob")
        await b.ok("subscribe", {"room": "job:1"})
        await b.ok("subscribe", {"room": "job:2"})
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.post("/server/v1/users/events", json={"user_ids": ["alice", "nobody"], "event": "app.ping", "data": {"n": 1}})
            assert answer.json() == {"delivered": 2}
            for client in (a1, a2):
                assert (await client.event("app.ping"))["data"] == {"n": 1}
            answer = await http.post("/server/v1/broadcast", json={"rooms": ["job:1", "job:2"], "event": "job.done", "data": {}})
            results = answer.json()["results"]
            assert results["job:1"]["seq"] == 1 and results["job:2"]["seq"] == 1
            assert {(await b.event("job.done"))["room"], (await b.event("job.done"))["room"]} == {"job:1", "job:2"}
            bad = [
                ("/server/v1/publish", {"room": "job:1", "event": "message.new"}, "event"),
                ("/server/v1/publish", {"room": "", "event": "x"}, "room"),
                ("/server/v1/publish", {"event": "x"}, "room"),
                ("/server/v1/broadcast", {"rooms": ["a"] * 1001, "event": "x"}, "rooms"),
                ("/server/v1/users/events", {"user_ids": "alice", "event": "x"}, "user_ids"),
            ]
            for path, body, field in bad:
                answer = await http.post(path, json=body)
                assert answer.status_code == 400, (path, body)
                error = answer.json()["error"]
                assert error["code"] == "VALIDATION_ERROR" and field in error["message"], error
            answer = await http.post("/server/v1/publish", content=b"{not json")
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "BAD_REQUEST"
            # User tokens are never accepted on the server API, API keys never on /api/v1.
            answer = await http.get("/server/v1/stats", headers={"Authorization": f"Bearer {token('alice')}"})
            assert answer.status_code == 401
            answer = await http.post("/api/v1/ops/subscribe", json={"room": "job:1"})
            assert answer.status_code == 401
            stats = (await http.get("/server/v1/stats")).json()
            assert stats["node"] == "t1" and stats["sockets"] == 3 and stats["users"] == 2
            doc = (await http.get("/server/v1/openapi.json")).json()
            assert doc["openapi"].startswith("3.1") and "/server/v1/publish" in doc["paths"]


async def test_disconnect_and_ban(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon)
        a1 = await connect(daemon, "alice")
        a2 = await connect(daemon, "alice")
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            conns = (await http.get("/server/v1/connections", params={"user_id": "alice"})).json()["connections"]
            one = conns[0]["session_id"]
            answer = await http.post("/server/v1/users/alice/disconnect", json={"session_id": one})
            assert answer.json()["disconnected"] == 1
            answer = await http.post("/server/v1/users/alice/disconnect", json={"ban_s": 60})
            assert answer.json()["disconnected"] == 1
        assert await a1.closed() == 4510
        assert await a2.closed() == 4510
        banned = await WsClient.connect(ws_url(daemon), token=token("alice"))
        assert await banned.closed() == 4503


# -- limits ----------------------------------------------------------------------------------


async def test_rate_limit_then_abuse_close(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"ops_per_s": 1, "ops_burst": 3, "abuse_limit": 5, "allowed_origins": []})
        client = await connect(daemon)
        for i in range(3):
            await client.send({"id": i, "op": "ping"})
        await client.send({"id": "over", "op": "ping"})
        replies = [await client.recv() for _ in range(4)]
        limited = replies[-1]
        assert limited["id"] == "over" and limited["error"]["code"] == "RATE_LIMITED"
        assert 0 < limited["error"]["retry_after_ms"] <= 1000
        for i in range(10):
            try:
                await client.send({"id": f"x{i}", "op": "ping"})
            except ConnectionClosed:
                break
        assert await client.closed() == 4009


async def test_subscription_limit(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"max_subscriptions": 2, "allowed_origins": []})
        client = await connect(daemon)
        await client.ok("subscribe", {"room": "job:1"})
        await client.ok("subscribe", {"room": "job:2"})
        await client.ok("subscribe", {"room": "job:2"})  # already subscribed: fine
        reply = await client.request("subscribe", {"room": "job:3"})
        assert reply["error"]["code"] == "FORBIDDEN" and "limit" in reply["error"]["message"]


async def test_sockets_per_user_4511_and_per_node_4013(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"max_sockets_per_user": 2, "max_sockets": 3, "allowed_origins": []})
        a1 = await connect(daemon, "alice")
        await connect(daemon, "alice")
        third = await WsClient.connect(ws_url(daemon), token=token("alice"))
        assert await third.closed() == 4511
        await connect(daemon, "bob")
        full = await WsClient.connect(ws_url(daemon), token=token("carol"))
        assert await full.closed() == 4013
        assert (await a1.ok("ping"))["server_time"]


async def test_unfinished_handshakes_are_dropped_and_limited(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"handshake_timeout_s": 1.0, "max_handshakes_per_ip": 2, "allowed_origins": []})
        host, port = daemon.address()
        stalled = [await trio.open_tcp_stream(host, port) for _ in range(2)]
        for stream in stalled:
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        await trio.sleep(0.2)
        third = await trio.open_tcp_stream(host, port)
        assert await third.receive_some(10) == b""  # over the per-address limit
        for stream in stalled:
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b""  # dropped at the timeout
        client = await connect(daemon)
        assert (await client.ok("ping"))["server_time"]


async def test_slow_consumer_closed_4008_others_keep_receiving(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(60):
        daemon = await start(start_daemon, gateway={"outbox_max_bytes": 65536, "allowed_origins": []})
        host, port = daemon.address()
        # A raw client that upgrades, subscribes and then never reads.
        raw = trio.socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so the window stays small
        await raw.connect((host, port))
        slow = trio.SocketStream(raw)
        request = (
            "GET /ws?token=" + token("slowpoke", rooms=["job:*"]) + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await slow.send_all(request.encode())
        payload = orjson.dumps({"id": 1, "op": "subscribe", "data": {"room": "job:1"}})
        mask = b"\x00\x00\x00\x00"
        await slow.send_all(bytes([0x81, 0x80 | len(payload)]) + mask + payload)
        await trio.sleep(0.3)
        fast = await connect(daemon, "fast")
        await fast.ok("subscribe", {"room": "job:1"})
        gateway = daemon.services.gateway
        received = bytearray()

        async def read_slow_after_overflow() -> None:
            # The slow client wakes up once it has been cut off, and reads the close.
            while gateway.overflows == 0:
                await trio.sleep(0.01)
            while chunk := await slow.receive_some(1 << 20):
                received.extend(chunk)

        async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            nursery.start_soon(read_slow_after_overflow)
            blob = "x" * 16000
            for i in range(400):
                await http.post("/server/v1/publish", json={"room": "job:1", "event": "big", "data": {"i": i, "blob": blob}})
                assert (await fast.event("big"))["data"]["i"] == i
                assert all(s.outbox_bytes <= 65536 + 20_000 for s in gateway.sessions.values())
            stats = (await http.get("/server/v1/stats")).json()
            assert stats["outbox_overflows"] == 1
            with trio.fail_after(10):
                while (await http.get("/server/v1/stats")).json()["sockets"] != 1:
                    await trio.sleep(0.1)
        assert b"\x88\x0f\x0f\xa8slow consumer" in received  # close 4008


async def test_drain_sends_shutdown_then_1001(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, shutdown={"grace_s": 5.0, "reconnect_min_ms": 100, "reconnect_max_ms": 900})
        client = await connect(daemon)
        daemon.request_drain()
        event = await client.event("server.shutdown")
        assert 100 <= event["data"]["reconnect_after_ms"] <= 900
        assert await client.closed() == 1001
        await daemon.wait_stopped()


async def test_heartbeat_pings_and_closes_silent_sockets(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start(start_daemon, gateway={"heartbeat_s": 1.0, "allowed_origins": []})
        host, port = daemon.address()
        raw = await trio.open_tcp_stream(host, port)
        request = (
            "GET /ws?token=" + token("mute") + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        # A client that answers pings (websockets does) stays, meanwhile and after.
        client = await connect(daemon)
        answering_since = trio.current_time()
        await raw.send_all(request.encode())
        received = b""
        with trio.move_on_after(6):
            # Read up to the close frame; the socket's end after it is not waited for.
            while b"\x0f\xa0no answer to heartbeats" not in received:
                chunk = await raw.receive_some(65536)
                if not chunk:
                    break
                received += chunk
        assert b"\x89\x00" in received  # a ping
        assert b"\x0f\xa0no answer to heartbeats" in received  # close 4000 with its reason
        await trio.sleep_until(answering_since + 3.5)
        assert (await client.ok("ping"))["server_time"]
