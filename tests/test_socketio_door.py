"""The Socket.IO door against a real daemon: connect, auth, ops as acked events, server events, closes.

Clients speak Engine.IO v4 / Socket.IO v5 packet by packet (tests/fixtures/sio.py);
the third-party clients (socket.io-client, python-socketio) are tested apart.
"""

from __future__ import annotations

import gc
from typing import Any

import httpx
import orjson
import trio

from realtimed.daemon import Daemon
from realtimed.http.framing import RequestHead
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.sio import SioPolling, SioWs
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}
NAMESPACES: list[dict[str, Any]] = [{"prefix": "job:", "history_size": 10}]


async def start(start_daemon: DaemonFactory, **sections: Any) -> Daemon:
    return await start_daemon({"namespaces": NAMESPACES, **sections})


async def connected(daemon: Daemon, user: str = "alice", **claims: Any) -> SioWs:
    client = await SioWs.open(daemon.url())
    reply = await client.connect({"token": token(user, **claims)})
    assert reply.startswith("40{"), reply
    ready = await client.event("session.ready")
    assert ready[1]["user_id"] == user
    assert orjson.loads(reply[2:])["sid"] == ready[1]["session_id"]
    return client


async def test_websocket_connects_authenticates_and_acks_an_op(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await SioWs.open(daemon.url())
        assert client.handshake["upgrades"] == []
        assert client.handshake["pingInterval"] == 25000
        assert client.handshake["maxPayload"] == 1_000_000
        reply = await client.connect({"token": token("alice")})
        assert reply.startswith("40{")
        ready = await client.event("session.ready")
        assert ready[1]["user_id"] == "alice"
        assert daemon.services.gateway.count("socketio") == 1
        await client.emit(1, "ping", {})
        (answer,) = await client.ack(1)
        assert answer["ok"] is True and "server_time" in answer["data"]
        # An op the gateway knows, failing validation: the flat error shape.
        await client.emit(2, "subscribe", {"room": 5})
        (answer,) = await client.ack(2)
        assert answer == {"ok": False, "error": "VALIDATION_ERROR", "message": answer["message"], "field": "room"}
        await client.close()
        with trio.fail_after(5):
            while daemon.services.gateway.count("socketio"):
                await trio.sleep(0.02)


async def test_an_open_websocket_keeps_no_request_head(start_daemon: DaemonFactory) -> None:
    # The head (headers and raw bytes, about 2 KB) is not held for the socket's life.
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connected(daemon)
        await client.emit(1, "ping", {})
        assert (await client.ack(1))[0]["ok"] is True
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, RequestHead)] == []
        await client.close()


async def test_token_from_the_authorization_header(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await SioWs.open(daemon.url(), headers={"Authorization": f"Bearer {token('bob')}"})
        assert (await client.connect()).startswith("40{")
        assert (await client.event("session.ready"))[1]["user_id"] == "bob"
        await client.close()


async def test_refusals_are_connect_errors_with_native_codes(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await SioWs.open(daemon.url())
        reply = await client.connect({"token": "not-a-jwt"})
        assert reply.startswith("44{")
        data = orjson.loads(reply[2:])["data"]
        assert (data["code"], data["close_code"]) == ("UNAUTHORIZED", 4501)
        reply = await client.connect({"token": token("alice", ttl=-120)})
        data = orjson.loads(reply[2:])["data"]
        assert (data["code"], data["close_code"]) == ("UNAUTHORIZED", 4004)
        reply = await client.connect({})
        assert orjson.loads(reply[2:])["data"]["close_code"] == 4501
        # The Engine.IO session stays: the client may CONNECT again with a fresh token.
        assert (await client.connect({"token": token("alice")})).startswith("40{")
        assert (await client.event("session.ready"))[1]["user_id"] == "alice"
        assert await client.connect(namespace="/admin") == '44/admin,{"message":"Invalid namespace"}'
        await client.close()


async def test_events_that_are_not_ops(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connected(daemon)
        await client.emit(1, "chat message", {"text": "hi"})
        (answer,) = await client.ack(1)
        assert answer["ok"] is False and answer["error"] == "BAD_REQUEST"
        await client.emit(None, "no.such.op", {})  # no ack asked: nothing comes back
        await client.send('451-2["ping",{"_placeholder":true,"num":0}]')
        await client.send(b"\x01\x02")
        (answer,) = await client.ack(2)
        assert (answer["error"], answer["field"]) == ("VALIDATION_ERROR", "data")
        await client.emit(3, "ping", [1])
        (answer,) = await client.ack(3)
        assert answer["error"] == "VALIDATION_ERROR"
        await client.emit(4, "ping")
        assert (await client.ack(4))[0]["ok"] is True
        await client.close()


async def test_room_events_carry_their_position(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connected(daemon, rooms=["job:*"])
        await client.emit(1, "subscribe", {"room": "job:7"})
        assert (await client.ack(1))[0]["ok"] is True
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            # An app event named like one socket.io-client reserves is not sent to this door.
            answer = await http.post("/server/v1/publish", json={"room": "job:7", "event": "disconnect", "data": {}})
            assert answer.status_code == 200, answer.text
            answer = await http.post("/server/v1/publish", json={"room": "job:7", "event": "job.progress", "data": {"pct": 5}})
            assert answer.status_code == 200, answer.text
            seq, epoch = answer.json()["seq"], answer.json()["epoch"]
        args = await client.event()
        # The last argument is the recovery offset, the same string for every recipient.
        assert args == ["job.progress", {"pct": 5}, {"room": "job:7", "seq": seq, "epoch": epoch}, f"r:{epoch}:{seq}:job:7"]
        await client.close()


async def test_terminal_close_sends_session_closed_then_disconnect(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connected(daemon)
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.post("/server/v1/users/alice/disconnect", json={})
            assert answer.status_code == 200, answer.text
        assert (await client.event("session.closed"))[1]["code"] == 4510
        assert await client.recv() == "41"
        await client.closed()


async def test_recoverable_close_closes_the_engine_io_session(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        client = await connected(daemon)
        daemon.request_drain()
        assert (await client.event("server.shutdown"))[1]["reconnect_after_ms"] >= 0
        assert (await client.event("session.closed"))[1]["code"] == 1001
        assert await client.closed() == 1001


async def test_long_polling_then_upgrade(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with httpx.AsyncClient(timeout=10) as http:
            polling = SioPolling(http, daemon.url())
            await polling.open()
            assert polling.handshake["upgrades"] == ["websocket"]
            answer = await polling.post("40" + orjson.dumps({"token": token("carol")}).decode())
            assert answer.text == "ok"
            connect, ready = await polling.events(2)
            assert connect.startswith("40{")
            assert orjson.loads(ready[2:])[1]["user_id"] == "carol"
            await polling.post('421["ping",{}]')
            (ack,) = await polling.events(1)
            assert ack.startswith('431[{"ok":true')
            # Upgrade: the probe, then 5; a poll pending meanwhile ends with a noop.
            async with trio.open_nursery() as nursery:
                pending: list[list[str]] = []

                async def poll() -> None:
                    pending.append(await polling.poll())

                nursery.start_soon(poll)
                await trio.sleep(0.2)
                ws = await SioWs.open(daemon.url(), sid=polling.sid)
                await ws.send("2probe")
                assert await ws.recv() == "3probe"
            assert pending == [["6"]]
            await ws.send("5")
            await ws.emit(2, "ping", {})
            assert (await ws.ack(2))[0]["ok"] is True
            after = await http.get(polling.url)
            assert after.status_code == 400
            assert after.json() == {"code": 3, "message": "Bad request"}
            await ws.close()


async def test_polling_keeps_flowing_while_a_websocket_probes(start_daemon: DaemonFactory) -> None:
    # socket.io-client opens its probe WebSocket as soon as the handshake names the upgrade,
    # while it still polls: packets queued meanwhile (the CONNECT reply) were held back until
    # the probe ended, so the client's poll hung and the upgrade failed.
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with httpx.AsyncClient(timeout=10) as http:
            polling = SioPolling(http, daemon.url())
            await polling.open()
            ws = await SioWs.open(daemon.url(), sid=polling.sid)
            await polling.post("40" + orjson.dumps({"token": token("dana")}).decode())
            with trio.fail_after(3):
                connect, ready = await polling.events(2)
            assert connect.startswith("40{") and '"session.ready"' in ready
            # A poll pending at 2probe ends with a noop; what comes after waits for the upgrade.
            answers: list[list[str]] = []
            async with trio.open_nursery() as nursery:

                async def poll() -> None:
                    answers.append(await polling.poll())

                nursery.start_soon(poll)
                await trio.sleep(0.2)
                await ws.send("2probe")
                assert await ws.recv() == "3probe"
            assert answers == [["6"]]
            await polling.post('421["ping",{}]')
            await ws.send("5")
            assert (await ws.ack(1))[0]["ok"] is True
            await ws.close()


async def test_drain_reaches_a_polling_client(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with httpx.AsyncClient(timeout=10) as http:
            polling = SioPolling(http, daemon.url())
            await polling.open()
            await polling.post("40" + orjson.dumps({"token": token("erin")}).decode())
            await polling.events(2)
            # A polling client has a poll pending (it polls again at once): the drain answers it.
            answers: list[list[str]] = []
            async with trio.open_nursery() as nursery:

                async def poll() -> None:
                    answers.append(await polling.poll())

                nursery.start_soon(poll)
                await trio.sleep(0.2)
                daemon.request_drain()
            shutdown, closed, close = answers[0]
            assert orjson.loads(shutdown[2:])[0] == "server.shutdown"
            assert orjson.loads(closed[2:]) == ["session.closed", {"code": 1001, "reason": "server draining"}]
            assert close == "1"
            with trio.fail_after(10):
                await daemon.wait_stopped()


async def test_a_close_during_the_upgrade_reaches_the_client_over_the_websocket(start_daemon: DaemonFactory) -> None:
    # After 3probe socket.io-client stops polling and waits to send 5: a close that came then
    # (the server API's disconnect) was queued for a poll that never came, and the probe was
    # closed, so the client never heard session.closed nor the DISCONNECT.
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with httpx.AsyncClient(timeout=10) as http:
            polling = SioPolling(http, daemon.url())
            await polling.open()
            await polling.post("40" + orjson.dumps({"token": token("fred")}).decode())
            await polling.events(2)
            ws = await SioWs.open(daemon.url(), sid=polling.sid)
            await ws.send("2probe")
            assert await ws.recv() == "3probe"
            async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as api:
                answer = await api.post("/server/v1/users/fred/disconnect", json={})
                assert answer.json()["disconnected"] == 1
            await ws.send("5")
            assert (await ws.event("session.closed"))[1]["code"] == 4510
            assert await ws.recv() == "41"
            assert await ws.closed() == 4510
