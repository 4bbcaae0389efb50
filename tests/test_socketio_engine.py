"""The Engine.IO side of the Socket.IO door at its edge: refusals, limits, timers, CORS.

Each answer is the reference server's (engine.io ``Server.errors``), and none
leaves the daemon in a bad state: after every refusal a fresh session works.
Real time, with short intervals (a daemon over real sockets).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtimed.config import Config
from realtimed.daemon import WORKER_ENV, Daemon
from realtimed.frames import OP_TEXT, ws_frame
from realtimed.socketio.engine import EngineSocket
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.sio import SioPolling, SioWs, sio_url
from tests.fixtures.tokens import token

FAST: dict[str, Any] = {
    "socketio": {"ping_interval_ms": 300, "ping_timeout_ms": 200, "connect_timeout_ms": 600, "max_payload_bytes": 2048},
}


async def still_serves(daemon: Daemon) -> None:
    client = await SioWs.open(daemon.url())
    assert (await client.connect({"token": token("zed")})).startswith("40{")
    assert (await client.event("session.ready"))[1]["user_id"] == "zed"
    await client.close()


async def test_bad_requests_get_the_reference_answers(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(FAST)
        base = daemon.url()
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            cases = [
                ("GET", "/socket.io/?transport=polling", 400, {"code": 5, "message": "Unsupported protocol version"}),
                ("GET", "/socket.io/?EIO=3&transport=polling", 400, {"code": 5, "message": "Unsupported protocol version"}),
                ("GET", "/socket.io/?EIO=4", 400, {"code": 0, "message": "Transport unknown"}),
                ("GET", "/socket.io/?EIO=4&transport=flash", 400, {"code": 0, "message": "Transport unknown"}),
                # A WebSocket request without its upgrade.
                ("GET", "/socket.io/?EIO=4&transport=websocket", 400, {"code": 3, "message": "Bad request"}),
                ("POST", "/socket.io/?EIO=4&transport=polling", 400, {"code": 2, "message": "Bad handshake method"}),
                ("GET", "/socket.io/?EIO=4&transport=polling&sid=nope", 400, {"code": 1, "message": "Session ID unknown"}),
                ("POST", "/socket.io/?EIO=4&transport=polling&sid=nope", 400, {"code": 1, "message": "Session ID unknown"}),
            ]
            for method, url, status, body in cases:
                answer = await http.request(method, url)
                assert (answer.status_code, answer.json()) == (status, body), (method, url)
            # A WebSocket with a bad query is refused over HTTP, as the reference does.
            for query in ("EIO=3&transport=websocket", "EIO=4&transport=flash", "EIO=4&transport=websocket&sid=nope"):
                url = base.replace("http", "ws", 1) + "/socket.io/?" + query
                try:
                    await trio.to_thread.run_sync(lambda u=url: connect(u, open_timeout=5).close())  # type: ignore[misc]
                except InvalidStatus as exc:
                    assert exc.response.status_code == 400
                else:
                    raise AssertionError(f"{query} was accepted")
        await still_serves(daemon)


async def test_malformed_packets_close_the_session(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(FAST)
        for packet in ("9", "", "4abc", "42{}", '42abc["x"]', '42["connect"]', "4511-[\"x\"]"):
            client = await SioWs.open(daemon.url())
            if packet != "4abc":
                await client.send("40")  # no token: CONNECT_ERROR, the session stays open
                assert (await client.recv()).startswith("44")  # type: ignore[union-attr]
            await client.send(packet)
            await client.closed()
        # Binary when no attachment was announced, and text while attachments are awaited.
        client = await SioWs.open(daemon.url())
        await client.send(b"\x01")
        await client.closed()
        client = await SioWs.open(daemon.url())
        await client.send('451-["x",{"_placeholder":true,"num":0}]')
        await client.send("42[\"x\"]")
        await client.closed()
        await still_serves(daemon)


async def test_timers_close_silent_sessions(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(FAST)
        # No Socket.IO CONNECT within connect_timeout_ms (pings are answered meanwhile).
        client = await SioWs.open(daemon.url())
        assert await client.recv(pings=True) == "2"  # alive at the first ping (300 ms)...
        await client.send("3")
        await client.closed()  # ...and closed at connect_timeout_ms (600 ms)
        # Pings unanswered: closed ping_timeout_ms after the ping.
        client = await SioWs.open(daemon.url())
        assert await client.recv(pings=True) == "2"
        with trio.fail_after(2):
            while True:
                try:
                    await client.recv(pings=True)
                except Exception:
                    break
        # On polling: after a ping timeout the sid is unknown.
        async with httpx.AsyncClient(timeout=10) as http:
            polling = SioPolling(http, daemon.url())
            await polling.open()
            await trio.sleep(0.8)
            answer = await http.get(polling.url)
            assert (answer.status_code, answer.json()["code"]) == (400, 1)
        await still_serves(daemon)


async def test_polling_limits_and_overlaps(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(FAST)
        async with httpx.AsyncClient(timeout=10) as http:
            # A body over max_payload_bytes: 413, and the session is gone.
            polling = SioPolling(http, daemon.url())
            await polling.open()
            assert polling.handshake["maxPayload"] == 2048
            answer = await http.post(polling.url, content=b"4" + b"x" * 4096)
            assert answer.status_code == 413
            assert (await http.get(polling.url)).status_code == 400
            # Two polls at once: 400, and the session is closed (the first poll gets the close packet).
            polling = SioPolling(http, daemon.url())
            await polling.open()
            first: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:

                async def poll() -> None:
                    first.append(await http.get(polling.url))

                nursery.start_soon(poll)
                await trio.sleep(0.1)
                second = await http.get(polling.url)
                assert (second.status_code, second.json()["code"]) == (400, 3)
            assert first[0].status_code == 200 and first[0].text.endswith("1")
            # A malformed payload closes the session.
            polling = SioPolling(http, daemon.url())
            await polling.open()
            assert (await polling.post("bnot base64!")).status_code == 400
            assert (await http.get(polling.url)).status_code == 400
            # The client's close: a pending poll gets a noop.
            polling = SioPolling(http, daemon.url())
            await polling.open()
            assert (await polling.post("1")).text == "ok"
            assert (await http.get(polling.url)).status_code == 400
        # Over WebSocket, a message over max_payload_bytes closes with 1009.
        client = await SioWs.open(daemon.url())
        await client.send("4" + "x" * 4096)
        assert await client.closed() == 1009
        await still_serves(daemon)


async def test_origins_and_cors(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(FAST)
        async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http:
            url = "/socket.io/?EIO=4&transport=polling"
            answer = await http.get(url, headers={"Origin": "https://app.example"})
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == "https://app.example"
            assert answer.headers["access-control-allow-credentials"] == "true"
            answer = await http.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
            assert answer.status_code == 204 and "POST" in answer.headers["access-control-allow-methods"]
            answer = await http.get(url, headers={"Origin": "https://evil.example"})
            assert (answer.status_code, answer.json()) == (403, {"code": 4, "message": "Forbidden"})
            # Without Origin (not a browser) it is allowed, and gets no CORS headers.
            answer = await http.get(url)
            assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
            assert orjson.loads(answer.text[1:])["upgrades"] == ["websocket"]


async def test_websocket_only(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"socketio": {"transports": ["websocket"]}})
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(sio_url(daemon.url(), transport="polling"))
            assert (answer.status_code, answer.json()["code"]) == (400, 0)
        await still_serves(daemon)


async def test_disabled(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"socketio": {"enabled": False}})
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(sio_url(daemon.url(), transport="polling"))
            assert answer.status_code == 404


async def test_refused_connects_are_bounded(start_daemon: DaemonFactory) -> None:
    # A refused CONNECT leaves the session open for a retry with a fresh token; without a
    # bound, one session could ask for token checks forever.
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"abuse_limit": 3}})
        client = await SioWs.open(daemon.url())
        for _ in range(3):
            await client.send('40{"token":"bad"}')
            assert (await client.recv()).startswith("44{")  # type: ignore[union-attr]
        assert await client.closed() == 4009
        await still_serves(daemon)


async def test_a_worker_of_run_workers_offers_websocket_only(start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long-polling needs every request of a session on one process; the workers share the port.
    monkeypatch.setenv(WORKER_ENV, "0")
    with trio.fail_after(30):
        daemon = await start_daemon({})
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(sio_url(daemon.url(), transport="polling"))
            assert (answer.status_code, answer.json()) == (400, {"code": 0, "message": "Transport unknown"})
        await still_serves(daemon)


class RecordingWs:
    """The WebSocket session an EngineSocket writes to: each write recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send_raw(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self, code: int, reason: str) -> None:
        self.writes.append(b"close")


async def test_a_corked_websocket_writes_what_it_held_in_one_write() -> None:
    with trio.fail_after(5):
        await trio.lowlevel.checkpoint()  # EngineSocket reads Trio's clock
        server: Any = SimpleNamespace(config=Config(), ended=lambda *_: None)
        engine = EngineSocket(server, transport="websocket", address="127.0.0.1", head_token=None)
        ws = RecordingWs()
        engine.ws = ws  # type: ignore[assignment]
        engine.send_message("0")
        assert ws.writes == [ws_frame(OP_TEXT, b"40")]
        engine.cork()
        engine.send_message('0{"sid":"s"}')  # a CONNECT reply
        engine.send_message('2["session.ready",{}]')
        assert len(ws.writes) == 1, "held while corked"
        engine.uncork()
        assert ws.writes[1:] == [ws_frame(OP_TEXT, b'40{"sid":"s"}') + ws_frame(OP_TEXT, b'42["session.ready",{}]')]
        engine.uncork()  # nothing held: nothing written
        engine.cork()
        engine.send_message("2[\"x\"]")
        engine.close("bye")  # a close writes what was held first
        assert ws.writes[2:] == [ws_frame(OP_TEXT, b'42["x"]'), b"close"]
