"""The Socket.IO door against hostile and malformed clients.

Raw HTTP long-polling requests (httpx) and raw WebSocket frames (the ``websockets`` library's
synchronous client, in worker threads), so that each packet is exactly what the test writes:
wrong Engine.IO versions and transports, unknown, expired and mismatched ``sid``\\ s, packets
that do not parse, payloads over ``max_payload_bytes``, unknown namespaces, binary attachments
in ops, reserved and unknown event names. Each is answered as the Engine.IO and Socket.IO
protocols say (the reference server's status codes and ``{"code", "message"}`` bodies), never
with a 5xx or a crash, and afterwards the daemon holds no session and no connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from realtimed.daemon import Daemon
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_http_edge import no_connections

PATH = "/socket.io/"
MAX_PAYLOAD = 4096
CONFIG: dict[str, Any] = {
    "socketio": {"enabled": True, "path": PATH, "max_payload_bytes": MAX_PAYLOAD},
    "jobs": {"enabled": False},
    "presence": {"away_after_s": 86400.0},
}

_T = TypeVar("_T")


async def _thread(fn: Callable[[], _T]) -> _T:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def _open_packet(body: str) -> dict[str, Any]:
    assert body.startswith("0{"), body
    handshake: dict[str, Any] = orjson.loads(body[1:])
    return handshake


async def _settled(daemon: Daemon) -> None:
    """No Socket.IO session is left in the daemon, and no connection on its client listener."""
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=daemon.url(), headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            while True:
                stats = (await http.get("/server/v1/stats")).json()
                if stats["sockets"] == 0:
                    break
                await trio.sleep(0.02)
        await no_connections(daemon)


@asynccontextmanager
async def polling(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=daemon.url() + PATH, timeout=10) as http:
        yield http


async def handshake(http: httpx.AsyncClient) -> str:
    answer = await http.get("", params={"EIO": "4", "transport": "polling"})
    assert answer.status_code == 200, answer.text
    sid: str = _open_packet(answer.text)["sid"]
    return sid


def _error(answer: httpx.Response, status: int, code: int, message: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.json() == {"code": code, "message": message}


class EioSocket:
    """An Engine.IO WebSocket (``transport=websocket``, no polling first) spoken packet by packet."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.close_code: int | None = None

    @classmethod
    async def open(
        cls, daemon: Daemon, query: str = "EIO=4&transport=websocket", headers: dict[str, str] | None = None
    ) -> EioSocket:
        url = daemon.url().replace("http", "ws", 1) + PATH + "?" + query
        conn = await _thread(
            lambda: connect(
                url, additional_headers=headers, open_timeout=10, close_timeout=5, compression=None, max_size=2**22
            ).__enter__()
        )
        return cls(conn)

    async def send(self, data: str | bytes) -> None:
        await _thread(lambda: self.conn.send(data))

    async def recv(self, timeout: float = 5) -> str | bytes:
        """The next packet; a ping is answered (with a pong) and skipped."""
        while True:
            try:
                data = await _thread(lambda: self.conn.recv(timeout=timeout))
            except ConnectionClosed as exc:
                self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
                raise
            if data == "2":
                await self.send("3")
                continue
            return data

    async def connected(self, tok: str | None = None) -> dict[str, Any]:
        """The OPEN packet, then a Socket.IO CONNECT to ``/``: the CONNECT reply's data."""
        opened = await self.recv()
        assert isinstance(opened, str)
        _open_packet(opened)
        await self.send("40" + orjson.dumps({"token": tok or token("edge")}).decode())
        reply = await self.recv()
        assert isinstance(reply, str) and reply.startswith("40{"), reply
        data: dict[str, Any] = orjson.loads(reply[2:])
        return data

    async def ack(self, packet_id: int) -> list[Any]:
        """The arguments of the ACK with this id (events received meanwhile are skipped)."""
        prefix = f"43{packet_id}["
        with trio.fail_after(5):
            while True:
                packet = await self.recv()
                if isinstance(packet, str) and packet.startswith(prefix):
                    args: list[Any] = orjson.loads(packet[len(prefix) - 1 :])
                    return args

    async def closed(self) -> int:
        with trio.fail_after(10):
            try:
                while True:
                    await self.recv()
            except ConnectionClosed:
                pass
        assert self.close_code is not None
        return self.close_code

    async def close(self) -> None:
        await _thread(self.conn.close)


async def test_handshake_errors_as_the_reference_server(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(CONFIG)
    with trio.fail_after(20):
        async with polling(daemon) as http:
            answer = await http.get("", params={"EIO": "4", "transport": "polling"})
            assert answer.status_code == 200
            opened = _open_packet(answer.text)
            assert opened["upgrades"] == ["websocket"]
            assert opened["maxPayload"] == MAX_PAYLOAD
            assert isinstance(opened["pingInterval"], int) and isinstance(opened["pingTimeout"], int)
            await http.post("", params={"EIO": "4", "transport": "polling", "sid": opened["sid"]}, content="1")

            # Browser origins follow gateway.allowed_origins (https://app.example in the fixtures).
            handshake_query = {"EIO": "4", "transport": "polling"}
            allowed = await http.get("", params=handshake_query, headers={"Origin": "https://app.example"})
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == "https://app.example"
            assert allowed.headers["access-control-allow-credentials"] == "true"
            await http.post("", params={**handshake_query, "sid": _open_packet(allowed.text)["sid"]}, content="1")
            refused = await http.get("", params=handshake_query, headers={"Origin": "https://evil.example"})
            _error(refused, 403, 4, "Forbidden")
            assert "access-control-allow-origin" not in refused.headers

            for eio in ("3", "2", "5", "four"):
                answer = await http.get("", params={"EIO": eio, "transport": "polling"})
                _error(answer, 400, 5, "Unsupported protocol version")
            _error(await http.get("", params={"transport": "polling"}), 400, 5, "Unsupported protocol version")
            _error(await http.get("", params={"EIO": "4", "transport": "carrier-pigeon"}), 400, 0, "Transport unknown")
            _error(await http.get("", params={"EIO": "4"}), 400, 0, "Transport unknown")
            _error(await http.post("", params={"EIO": "4", "transport": "polling"}, content="40"), 400, 2, "Bad handshake method")
            # A WebSocket handshake that is not an upgrade.
            _error(await http.get("", params={"EIO": "4", "transport": "websocket"}), 400, 3, "Bad request")
            for sid in ("nope", "A" * 20, "%00", "x" * 5000):
                answer = await http.get("", params={"EIO": "4", "transport": "polling", "sid": sid})
                _error(answer, 400, 1, "Session ID unknown")
                answer = await http.post("", params={"EIO": "4", "transport": "polling", "sid": sid}, content="40")
                _error(answer, 400, 1, "Session ID unknown")
        await _settled(daemon)


async def test_polling_sessions_that_are_closed_or_not_theirs(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon({**CONFIG, "socketio": {**CONFIG["socketio"], "ping_interval_ms": 200, "ping_timeout_ms": 200}})
    with trio.fail_after(30):
        async with polling(daemon) as http:
            # Expired: a session that never answers a ping is gone; its sid is unknown from then on.
            sid = await handshake(http)
            while True:
                answer = await http.get("", params={"EIO": "4", "transport": "polling", "sid": sid})
                if answer.status_code != 200:
                    break
                assert answer.text in ("2", "1", "6") or answer.text.startswith("2"), answer.text
            _error(answer, 400, 1, "Session ID unknown")

            # Closed by the client (an Engine.IO CLOSE): the sid is unknown at once.
            sid = await handshake(http)
            assert (await http.post("", params={"EIO": "4", "transport": "polling", "sid": sid}, content="1")).status_code == 200
            _error(await http.get("", params={"EIO": "4", "transport": "polling", "sid": sid}), 400, 1, "Session ID unknown")

            # Another session's sid: one that upgraded to WebSocket takes no polling request.
            ws = await EioSocket.open(daemon)
            try:
                ws_sid = _open_packet(str(await ws.recv()))["sid"]
                for method in ("GET", "POST"):
                    answer = await http.request(method, "", params={"EIO": "4", "transport": "polling", "sid": ws_sid}, content="3" if method == "POST" else None)
                    _error(answer, 400, 3, "Bad request")
            finally:
                await ws.close()

            # Two polls of one session at once: the second is a 400 and the session is closed.
            sid = await handshake(http)
            params = {"EIO": "4", "transport": "polling", "sid": sid}
            await http.post("", params=params, content="40" + orjson.dumps({"token": token("edge")}).decode())
            first = await http.get("", params=params)  # the CONNECT reply (and session.ready)
            assert first.status_code == 200 and first.text.startswith("40{"), first.text
            polls: list[httpx.Response] = []

            async def poll() -> None:
                polls.append(await http.get("", params=params))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                nursery.start_soon(poll)
            overlap = [p for p in polls if p.status_code == 400]
            assert overlap, [(p.status_code, p.text) for p in polls]
            _error(overlap[0], 400, 3, "Bad request")
            _error(await http.get("", params=params), 400, 1, "Session ID unknown")

            # A body over max_payload_bytes: 413, and the session is closed.
            sid = await handshake(http)
            answer = await http.post("", params={"EIO": "4", "transport": "polling", "sid": sid}, content="4" + "x" * MAX_PAYLOAD)
            assert answer.status_code == 413, answer.text
            _error(await http.get("", params={"EIO": "4", "transport": "polling", "sid": sid}), 400, 1, "Session ID unknown")

            # A body that is no Engine.IO payload: the session is closed, nothing breaks.
            for garbage in ("9nonsense", "b!!!not-base64", "", "\x1e\x1e", "4\x00\x01"):
                sid = await handshake(http)
                answer = await http.post("", params={"EIO": "4", "transport": "polling", "sid": sid}, content=garbage.encode())
                assert answer.status_code < 500, answer.text
                if garbage.startswith("4"):
                    continue  # a valid message packet with odd bytes: not a protocol error
                _error(await http.get("", params={"EIO": "4", "transport": "polling", "sid": sid}), 400, 1, "Session ID unknown")
        await _settled(daemon)


async def test_websocket_packets_that_break_the_rules(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon({**CONFIG, "namespaces": [{"prefix": "job:", "history_size": 10}]})
    with trio.fail_after(40):
        # An unknown namespace: CONNECT_ERROR "Invalid namespace"; the main one still connects.
        ws = await EioSocket.open(daemon)
        try:
            _open_packet(str(await ws.recv()))
            await ws.send("40/admin," + orjson.dumps({"token": token("edge")}).decode())
            assert orjson.loads(str(await ws.recv())[len("44/admin,") :]) == {"message": "Invalid namespace"}
            await ws.send("40" + orjson.dumps({"token": token("edge")}).decode())
            reply = str(await ws.recv())
            assert reply.startswith("40{"), reply

            # Unknown events: an ack with BAD_REQUEST when one is asked for, silence otherwise.
            await ws.send('42["no.such.op",{}]')
            await ws.send('421["chat message","hello"]')
            (ack,) = await ws.ack(1)
            assert ack["ok"] is False and ack["error"] == "BAD_REQUEST", ack
            # Ops with bad data get the native codes in the flat shape.
            await ws.send('4210["message.send","not an object"]')
            (ack,) = await ws.ack(10)
            assert (ack["ok"], ack["error"], ack.get("field")) == (False, "VALIDATION_ERROR", "data"), ack

            # A binary attachment in an op: VALIDATION_ERROR, and nothing is stored.
            await ws.send('451-11["subscribe",{"room":{"_placeholder":true,"num":0}}]')
            await ws.send(b"\x01\x02\x03")
            (ack,) = await ws.ack(11)
            assert (ack["ok"], ack["error"]) == (False, "VALIDATION_ERROR"), ack
            await ws.send('4212["ping"]')
            (ack,) = await ws.ack(12)
            assert ack["ok"] is True, "the session is still served"
        finally:
            await ws.close()

        # A message over max_payload_bytes: the WebSocket closes with 1009.
        ws = await EioSocket.open(daemon)
        await ws.connected()
        await ws.send('42["ping","' + "x" * MAX_PAYLOAD + '"]')
        assert await ws.closed() == 1009

        # Packets that do not parse close the connection, as the reference server does; so do
        # events named as socket.io-client's reserved ones (its parser refuses them too).
        reserved = [f"42{i}" + orjson.dumps([name, {}]).decode() for i, name in enumerate(
            ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"), 2)]
        for bad in ("9", "4", "42[", '42{"not":"a list"}', "4-1[]", "45-[]", "4299999999999999999999[]", "4\u0000", "x", *reserved):
            ws = await EioSocket.open(daemon)
            await ws.connected()
            await ws.send(bad)
            await ws.closed()

        # A CONNECT without a token: CONNECT_ERROR with the native refusal.
        ws = await EioSocket.open(daemon)
        opened = str(await ws.recv())
        _open_packet(opened)
        await ws.send("40")
        refused = str(await ws.recv())
        assert refused.startswith("44{"), refused
        error = orjson.loads(refused[2:])
        assert error["data"]["code"] == "UNAUTHORIZED" and error["data"]["close_code"] == 4501, error
        await ws.close()

        # The token in the Authorization header of the first request instead of the CONNECT.
        ws = await EioSocket.open(daemon, headers={"Authorization": f"Bearer {token('header-user')}"})
        _open_packet(str(await ws.recv()))
        await ws.send("40")
        reply = str(await ws.recv())
        assert reply.startswith("40{"), reply
        ready = str(await ws.recv())
        assert ready.startswith('42["session.ready",'), ready
        assert orjson.loads(ready[2:])[1]["user_id"] == "header-user"
        await ws.close()

        # Wrong EIO version over WebSocket: refused before the upgrade.
        with pytest.raises(Exception) as refused_upgrade:
            await EioSocket.open(daemon, "EIO=3&transport=websocket")
        assert "400" in str(refused_upgrade.value)
        await _settled(daemon)


# Strict: once the CONNECT reply has a pid this fails, and the mark goes (with the one on
# tests/test_socketio_clients.py::test_socket_io_client_recovers_its_connection_state).
@pytest.mark.xfail(reason="Socket.IO connection state recovery is not served yet (the CONNECT reply has no pid)", strict=True)
async def test_recovery_payloads_that_are_not_ours(start_daemon: DaemonFactory) -> None:
    """A CONNECT with a ``pid`` and ``offset`` the daemon never gave (or of the wrong type) is a
    fresh session: a new ``pid``, nothing replayed, never an error."""
    daemon = await start_daemon(CONFIG)
    with trio.fail_after(30):
        ws = await EioSocket.open(daemon)
        first = await ws.connected()
        assert isinstance(first.get("pid"), str) and first["pid"], first
        await ws.close()
        forged: list[dict[str, Any]] = [
            {"pid": "not-a-pid", "offset": "not-an-offset"},
            {"pid": first["pid"], "offset": "garbage"},
            {"pid": first["pid"], "offset": "x" * 100_000},
            {"pid": 12, "offset": ["a"]},
            {"pid": None, "offset": None},
            {"pid": "p" * 10_000},
        ]
        for extra in forged:
            ws = await EioSocket.open(daemon)
            opened = await ws.recv()
            _open_packet(str(opened))
            await ws.send("40" + orjson.dumps({"token": token("edge"), **extra}).decode())
            reply = str(await ws.recv())
            assert reply.startswith("40{"), (extra, reply)
            data = orjson.loads(reply[2:])
            assert isinstance(data.get("pid"), str) and data["pid"] != extra.get("pid"), (extra, data)
            ready = str(await ws.recv())
            assert ready.startswith('42["session.ready",'), (extra, ready)
            await ws.send('421["ping"]')
            (ack,) = await ws.ack(1)
            assert ack["ok"] is True
            await ws.close()
        await _settled(daemon)
