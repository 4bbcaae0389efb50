"""The HTTP edge: what the listener's guard does to hostile and malformed clients.

Raw trio sockets for HTTP/1.1 (the clients that misbehave are not well-behaved
libraries), the ``h2`` package for HTTP/2 (cleartext and over TLS), httpx where a
normal client is the point. Timers run on MockClock where the daemon allows it;
the guard's own deadlines are also checked against a protocol that never ends,
which is what hypercorn was when a connection leaked.
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import orjson
import pytest
import trio
import trio.testing

from realtimed.daemon import Daemon
from realtimed.http.framing import H2_PREFACE, GoAway, HeadReceived, Mode, Refused, RequestSide
from realtimed.http.guard import ConnectionGuard, HandshakeSlots
from tests.fixtures.daemon import API_KEY, DaemonFactory, make_config
from tests.fixtures.tokens import token
from tests.test_tls import make_cert

# Nothing else ticks meanwhile on MockClock: no jobs or cron, nobody turns away.
QUIET: dict[str, Any] = {"jobs": {"enabled": False}, "presence": {"away_after_s": 86400.0}}

PING_BODY = b'{"x": 1}'
PING_HEAD = (
    b"POST /api/v1/ops/ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(PING_BODY)
)
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def edge_clock() -> trio.testing.MockClock:
    # Far above loopback latency and a busy machine's thread hand-offs (the SQLite writer): the
    # clock only jumps when every task waits on a timer.
    return trio.testing.MockClock(autojump_threshold=0.25)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


class Raw:
    """An HTTP/1.1 client on a bare socket, for clients that do what libraries do not."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, daemon: Daemon) -> Raw:
        host, port = daemon.address()
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError(bytes(self.buf))
        self.buf += data

    async def response(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            await self._more()
        end = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            await self._more()
        body = bytes(self.buf[:size])
        del self.buf[:size]
        return Response(status, headers, body)

    async def eof(self) -> bytes:
        """Everything until the server closes."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return bytes(self.buf)
            self.buf += data

    async def close(self) -> None:
        await self.stream.aclose()


async def no_connections(daemon: Daemon) -> None:
    """Wait until the daemon has closed every socket of its client listener."""
    listener = daemon.listeners[0]
    while listener.connections:
        await trio.sleep(0.01)


# -- an answer before the body (the connection that leaked) ------------------------------------


async def test_answer_before_the_body_waits_for_it_and_keeps_the_connection(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        raw = await Raw.open(daemon)
        # Head and body in two writes, and another request on the same connection:
        # the 401 is decided from the head alone.
        await raw.send(PING_HEAD)
        await trio.sleep(0.2)
        await raw.send(PING_BODY + PING_HEAD)
        await trio.sleep(0.2)
        await raw.send(PING_BODY)
        for _ in range(2):
            answer = await raw.response()
            assert answer.status == 401
            assert answer.json()["error"]["code"] == "UNAUTHORIZED"
            assert "connection" not in answer.headers
        await raw.send(HEALTH)
        assert (await raw.response()).status == 200
        await raw.close()
        await no_connections(daemon)


async def test_answer_before_the_body_closes_when_it_cannot_wait(start_daemon: DaemonFactory) -> None:
    # The original leak, without the wait: hypercorn closes the connection from a task
    # that is being cancelled. The close must still happen at once, body or not.
    with trio.fail_after(20):
        daemon = await start_daemon({"http": {"drain_s": 0.0}})
        raw = await Raw.open(daemon)
        await raw.send(PING_HEAD)
        answer = await raw.response()
        assert answer.status == 401
        assert answer.headers["connection"] == "close"
        with trio.fail_after(5):
            assert await raw.eof() == b""
        await raw.close()
        await no_connections(daemon)
        # Two POSTs on one connection: the second is never read, and nothing is left.
        raw = await Raw.open(daemon)
        await raw.send(PING_HEAD)
        assert (await raw.response()).status == 401
        try:
            await raw.send(PING_BODY + PING_HEAD + PING_BODY)
        except trio.BrokenResourceError:
            pass
        assert b"HTTP/1.1" not in await raw.eof()
        await raw.close()
        await no_connections(daemon)


async def test_body_that_does_not_come_gets_connection_close(start_daemon: DaemonFactory, edge_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(QUIET | {"http": {"drain_s": 5.0}})
        raw = await Raw.open(daemon)
        started = trio.current_time()
        await raw.send(PING_HEAD)
        answer = await raw.response()
        assert answer.status == 401
        assert answer.headers["connection"] == "close"
        assert 5.0 <= trio.current_time() - started <= 6.0
        assert await raw.eof() == b""
        # A body over max_body_bytes is not waited for.
        big = await Raw.open(daemon)
        started = trio.current_time()
        await big.send(PING_HEAD.replace(b"Content-Length: 8", b"Content-Length: 50000000"))
        answer = await big.response()
        assert answer.status == 401
        assert answer.headers["connection"] == "close"
        assert trio.current_time() - started < 1.0
        await raw.close()
        await big.close()
        await no_connections(daemon)


# -- deadlines on every head, and the per-address count ---------------------------------------------


async def test_second_head_gets_the_head_deadline_and_counts_per_address(
    start_daemon: DaemonFactory, edge_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(QUIET | {"gateway": {"handshake_timeout_s": 10.0, "max_handshakes_per_ip": 2}})
        slow = await Raw.open(daemon)
        await slow.send(HEALTH)
        assert (await slow.response()).status == 200
        started = trio.current_time()
        await slow.send(b"GET /healthz HTTP/1.1\r\n")
        idle = await Raw.open(daemon)  # holds the second place from its accept
        await trio.sleep(1)
        third = await Raw.open(daemon)
        with trio.fail_after(1):
            assert await third.eof() == b""  # refused at once: two heads from here are unfinished

        async def drip() -> None:
            try:
                for _ in range(100):
                    await trio.sleep(1)
                    await slow.send(b"x")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            assert await slow.eof() == b""
            nursery.cancel_scope.cancel()
        assert 9.5 <= trio.current_time() - started <= 11.0  # dripping does not extend it
        assert await idle.eof() == b""
        for raw in (slow, idle, third):
            await raw.close()
        await no_connections(daemon)
        # The places are free again.
        fresh = await Raw.open(daemon)
        await fresh.send(HEALTH)
        assert (await fresh.response()).status == 200
        await fresh.close()


async def test_idle_keep_alive_closed_after_keep_alive_s_and_sse_lives_on(
    start_daemon: DaemonFactory, edge_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(
            QUIET | {"http": {"keep_alive_s": 10.0, "read_timeout_s": 5.0}, "gateway": {"heartbeat_s": 30.0}}
        )
        idle = await Raw.open(daemon)
        await idle.send(HEALTH)
        assert (await idle.response()).status == 200
        started = trio.current_time()
        assert await idle.eof() == b""
        assert 9.5 <= trio.current_time() - started <= 11.0
        await idle.close()
        # An SSE stream has nothing to read from its client: neither deadline ends it.
        stream = await Raw.open(daemon)
        await stream.send(
            b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % token("alice", ttl=7200).encode()
        )
        received = bytearray()
        with trio.move_on_after(70):
            while True:
                data = await stream.stream.receive_some(65536)
                assert data, "the SSE stream was closed"
                received += data
        assert received.startswith(b"HTTP/1.1 200")
        assert received.count(b": heartbeat") == 2
        await stream.close()


# -- refused heads ------------------------------------------------------------------------------


async def test_content_length_with_transfer_encoding_is_refused_and_closed(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        raw = await Raw.open(daemon)
        await raw.send(HEALTH)
        assert (await raw.response()).status == 200
        body = b'{"user_ids": ["alice"], "event": "app.ping", "data": {}}'
        await raw.send(
            b"POST /server/v1/users/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (API_KEY.encode(), len(body), len(body), body)
        )
        answer = await raw.response()
        assert answer.status == 400
        assert answer.headers["connection"] == "close"
        assert answer.json()["error"] == {
            "code": "BAD_REQUEST",
            "message": "Content-Length together with Transfer-Encoding",
            "field": "Transfer-Encoding",
        }
        assert await raw.eof() == b""
        await raw.close()
        await no_connections(daemon)


async def test_two_origin_headers_are_refused(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        for request in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nOrigin: https://evil.example\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: https://app.example\r\nOrigin: https://evil.example\r\n\r\n",
        ):
            raw = await Raw.open(daemon)
            await raw.send(request)
            answer = await raw.response()
            assert answer.status == 400
            assert answer.json()["error"]["field"] == "Origin"
            assert await raw.eof() == b""
            await raw.close()


async def test_websocket_upgrade_elsewhere_gets_404(start_daemon: DaemonFactory, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        raw = await Raw.open(daemon)
        await raw.send(
            b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = await raw.response()
        assert answer.status == 404
        assert answer.json()["error"]["code"] == "NOT_FOUND"
        assert await raw.eof() == b""
        await raw.close()
        assert not [record for record in caplog.records if record.levelname == "ERROR"]


async def test_second_head_over_max_head_bytes_gets_431(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"gateway": {"max_head_bytes": 4096}})
        raw = await Raw.open(daemon)
        await raw.send(HEALTH)
        assert (await raw.response()).status == 200
        await raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        answer = await raw.response()
        assert answer.status == 431
        assert answer.headers["connection"] == "close"
        await raw.close()


async def test_405_says_allow_and_chunked_bodies_still_work(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            answer = await client.delete("/healthz")
            assert answer.status_code == 405
            assert "GET" in [method.strip() for method in answer.headers["allow"].split(",")]

            async def chunks() -> Any:
                yield b'{"user_ids": ["alice"], '
                yield b'"event": "app.ping", "data": {}}'

            sent = await client.post(
                "/server/v1/users/events", content=chunks(), headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert sent.status_code == 200, sent.text
            assert sent.json() == {"delivered": 0}


# -- HTTP/2 --------------------------------------------------------------------------------------

REQUEST = [(b":method", b"GET"), (b":path", b"/healthz"), (b":scheme", b"http"), (b":authority", b"localhost")]


async def h2_open(daemon: Daemon, context: ssl.SSLContext | None = None) -> tuple[trio.abc.Stream, h2.connection.H2Connection]:
    host, port = daemon.address()
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if context is not None:
        tls = trio.SSLStream(stream, context, server_hostname="localhost")
        await tls.do_handshake()
        assert tls.selected_alpn_protocol() == "h2"
        stream = tls
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    return stream, conn


async def h2_until(stream: trio.abc.Stream, conn: h2.connection.H2Connection, kinds: tuple[type, ...]) -> list[Any]:
    """Events until one of ``kinds`` (or the end of the connection)."""
    events: list[Any] = []
    while not any(isinstance(event, kinds) for event in events):
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            break
        events += conn.receive_data(data)
        pending = conn.data_to_send()
        if pending:
            try:
                await stream.send_all(pending)
            except trio.BrokenResourceError:
                pass
    return events


def terminated(events: list[Any]) -> h2.events.ConnectionTerminated | None:
    return next((event for event in events if isinstance(event, h2.events.ConnectionTerminated)), None)


async def test_h2c_prior_knowledge_refused_by_default(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        raw = await Raw.open(daemon)
        await raw.send(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        frames = await raw.eof()
        kinds = []
        while frames:
            length = int.from_bytes(frames[:3], "big")
            kinds.append((frames[3], frames[9 : 9 + length]))
            frames = frames[9 + length :]
        assert [kind for kind, _ in kinds] == [0x4, 0x7]  # SETTINGS, then GOAWAY
        _, error = struct.unpack(">II", kinds[1][1][:8])
        assert error == h2.errors.ErrorCodes.HTTP_1_1_REQUIRED
        await raw.close()
        await no_connections(daemon)


async def test_h2c_upgrade_answered_over_http1_by_default(start_daemon: DaemonFactory) -> None:
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
    with trio.fail_after(20):
        daemon = await start_daemon()
        raw = await Raw.open(daemon)
        await raw.send(upgrade)
        answer = await raw.response()
        assert answer.status == 200
        assert answer.json()["status"] == "ok"
        await raw.send(HEALTH)  # still HTTP/1.1
        assert (await raw.response()).status == 200
        await raw.close()

        served = await start_daemon({"http": {"h2c": True}})
        raw = await Raw.open(served)
        await raw.send(upgrade)
        answer = await raw.response()
        assert answer.status == 101
        assert answer.headers["upgrade"] == "h2c"
        await raw.close()
        stream, conn = await h2_open(served)
        conn.send_headers(1, REQUEST, end_stream=True)
        await stream.send_all(conn.data_to_send())
        events = await h2_until(stream, conn, (h2.events.StreamEnded,))
        response = next(event for event in events if isinstance(event, h2.events.ResponseReceived))
        assert dict(response.headers)[b":status"] == b"200"
        await stream.aclose()


@pytest.mark.parametrize("transport", ["tls", "h2c"])
async def test_h2_header_list_over_max_head_bytes_ends_the_connection(
    start_daemon: DaemonFactory, tmp_path: Path, transport: str
) -> None:
    context: ssl.SSLContext | None = None
    if transport == "tls":
        cert, key = make_cert(tmp_path)
        override: dict[str, Any] = {"http": {"tls_cert_file": str(cert), "tls_key_file": str(key)}}
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["h2"])
    else:
        override = {"http": {"h2c": True}}
    with trio.fail_after(30):
        daemon = await start_daemon(override)
        scheme = b"https" if context else b"http"
        request = [(name, scheme if name == b":scheme" else value) for name, value in REQUEST]
        big_headers = (
            # one 60 KB header: what HTTP/1.1 answers with 431
            [(b"x-big", b"a" * 60_000)],
            # a small block that HPACK inflates: one entry, then references to it
            [(b"x-again", b"qz" * 1500)] * 10,
        )
        for extra in big_headers:
            # Sent before the server's SETTINGS are acknowledged, when h2 alone would
            # still allow 64 KiB.
            stream, conn = await h2_open(daemon, context)
            conn.send_headers(1, request + extra, end_stream=True)
            await stream.send_all(conn.data_to_send())
            events = await h2_until(stream, conn, (h2.events.ConnectionTerminated, h2.events.ResponseReceived))
            assert not any(isinstance(event, h2.events.ResponseReceived) for event in events)
            ended = terminated(events)
            assert ended is not None
            assert ended.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            await stream.aclose()
        stream, conn = await h2_open(daemon, context)
        conn.send_headers(1, [*request, (b"x-small", b"a" * 1000)], end_stream=True)
        await stream.send_all(conn.data_to_send())
        events = await h2_until(stream, conn, (h2.events.StreamEnded,))
        response = next(event for event in events if isinstance(event, h2.events.ResponseReceived))
        assert dict(response.headers)[b":status"] == b"200"
        await stream.aclose()


async def test_h2_answer_before_the_body_keeps_the_connection(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"http": {"h2c": True}})
        stream, conn = await h2_open(daemon)
        post = [(b":method", b"POST"), (b":path", b"/api/v1/ops/ping"), (b":scheme", b"http"), (b":authority", b"x")]
        conn.send_headers(1, post)
        await stream.send_all(conn.data_to_send())
        await trio.sleep(0.2)  # the 401 is decided from the head alone
        for last in (False, False, True):
            conn.send_data(1, b"x" * 10_000, end_stream=last)
        await stream.send_all(conn.data_to_send())
        events = await h2_until(stream, conn, (h2.events.StreamEnded, h2.events.ConnectionTerminated))
        response = next(event for event in events if isinstance(event, h2.events.ResponseReceived))
        assert dict(response.headers)[b":status"] == b"401"
        # The connection still serves (hypercorn failed it on DATA for an answered stream).
        conn.send_headers(3, REQUEST, end_stream=True)
        await stream.send_all(conn.data_to_send())
        events = await h2_until(stream, conn, (h2.events.StreamEnded, h2.events.ConnectionTerminated))
        assert terminated(events) is None
        response = next(event for event in events if isinstance(event, h2.events.ResponseReceived))
        assert dict(response.headers)[b":status"] == b"200"
        await stream.aclose()


async def test_h2_rapid_reset_gets_goaway(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"http": {"h2c": True, "h2_max_resets": 20}})
        # Within the budget, the connection keeps serving.
        stream, conn = await h2_open(daemon)
        for _ in range(20):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, REQUEST, end_stream=True)
            conn.reset_stream(stream_id)
        last = conn.get_next_available_stream_id()
        conn.send_headers(last, REQUEST, end_stream=True)
        await stream.send_all(conn.data_to_send())
        events = await h2_until(stream, conn, (h2.events.StreamEnded, h2.events.ConnectionTerminated))
        assert terminated(events) is None
        assert any(isinstance(event, h2.events.StreamEnded) and event.stream_id == last for event in events)
        await stream.aclose()
        # Past it: GOAWAY, and the connection ends.
        stream, conn = await h2_open(daemon)
        for _ in range(200):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, REQUEST, end_stream=True)
            conn.reset_stream(stream_id)
        try:
            await stream.send_all(conn.data_to_send())
        except trio.BrokenResourceError:
            pass
        events = await h2_until(stream, conn, (h2.events.ConnectionTerminated,))
        ended = terminated(events)
        assert ended is not None
        assert ended.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        await stream.aclose()
        await no_connections(daemon)


# -- the guard alone, around a protocol that never ends ---------------------------------------------


async def guarded(
    tmp_path: Path, override: dict[str, Any] | None = None, *, lockstep: bool = False
) -> tuple[trio.abc.Stream, ConnectionGuard]:
    cfg = make_config(tmp_path, override)
    client, server = trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    slot = HandshakeSlots().slot("peer", 8)
    assert slot.take()
    return client, ConnectionGuard(server, cfg=cfg, address="peer", slot=slot, since=trio.current_time())


async def stuck(guard: ConnectionGuard) -> None:
    while await guard.receive_some(65536):
        pass
    await trio.sleep_forever()


async def test_guard_ends_a_stuck_protocol_when_the_client_is_idle(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        client, guard = await guarded(tmp_path, {"http": {"keep_alive_s": 30.0}})
        await client.send_all(HEALTH)
        head = await guard.first_head()
        assert head is not None and head.path == "/healthz"
        started = trio.current_time()
        await guard.serve(stuck)
        assert guard.cut_reason == "idle"
        assert trio.current_time() - started == pytest.approx(30.0)


async def test_guard_ends_a_stuck_protocol_once_the_client_has_gone(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10_000):
        client, guard = await guarded(tmp_path, {"http": {"read_timeout_s": 20.0}})
        await client.send_all(HEALTH)
        assert await guard.first_head() is not None

        async def answering(guard: ConnectionGuard) -> None:
            guard.app_started()  # a response in progress: no idle deadline
            await stuck(guard)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.serve, answering)
            await trio.sleep(5000)
            assert guard.cut_reason is None
            closed = trio.current_time()
            await client.aclose()
        assert guard.cut_reason == "eof"
        assert trio.current_time() - closed == pytest.approx(20.0)


async def test_guard_read_timeout_inside_a_body(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        client, guard = await guarded(tmp_path, {"http": {"read_timeout_s": 20.0, "keep_alive_s": 500.0}})
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert await guard.first_head() is not None
        started = trio.current_time()
        await guard.serve(stuck)
        assert guard.cut_reason == "read_timeout"
        assert trio.current_time() - started == pytest.approx(20.0)


async def test_guard_ends_a_shielded_send_to_a_client_that_does_not_read(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(1000):
        client, guard = await guarded(tmp_path, {"http": {"read_timeout_s": 20.0}}, lockstep=True)

        async def send_head() -> None:
            await client.send_all(HEALTH)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_head)
            assert await guard.first_head() is not None
        failures = []

        async def answering(guard: ConnectionGuard) -> None:
            guard.app_started()
            try:
                with trio.CancelScope(shield=True):  # as hypercorn sends
                    await guard.send_all(b"x" * 200_000)
            except trio.BrokenResourceError as exc:
                failures.append(exc)
            await trio.sleep_forever()

        started = trio.current_time()
        await guard.serve(answering)
        assert guard.cut_reason == "send_timeout"
        assert failures
        assert trio.current_time() - started == pytest.approx(20.0)


# -- the framing, sans IO ------------------------------------------------------------------------------


def side(**kwargs: Any) -> RequestSide:
    options: dict[str, Any] = {"max_head_bytes": 4096, "h2c": False, "max_resets": 5, "reset_window_s": 10.0}
    options.update(kwargs)
    return RequestSide(**options)


def test_framing_passes_requests_on_in_one_form() -> None:
    requests = side()
    events = requests.feed(
        b"POST /a HTTP/1.1\r\nhost:x\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n"
        b"GET /b HTTP/1.1\nHost: x\n\n",
        0.0,
    )
    assert [type(event) for event in events] == [HeadReceived, HeadReceived]
    assert bytes(requests.out) == (
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert not requests.in_head and not requests.in_body
    requests.feed(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", 0.0)
    assert requests.in_body
    requests.feed(b"cde", 0.0)
    assert not requests.in_body
    requests.feed(b"GET /d HT", 0.0)
    assert requests.in_head


@pytest.mark.parametrize(
    ("data", "status", "field"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Transfer-Encoding"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: a\r\norigin: b\r\n\r\n", 400, "Origin"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 5000, 431, None),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 5000 + b"\r\n\r\n", 431, None),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, None),
    ],
)
def test_framing_refusals(data: bytes, status: int, field: str | None) -> None:
    requests = side()
    events = requests.feed(data, 0.0)
    refused = [event for event in events if isinstance(event, Refused)]
    assert len(refused) == 1
    assert refused[0].status == status
    assert refused[0].field == field
    assert requests.mode is Mode.REFUSED
    answer = refused[0].response()
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close\r\n" in answer
    # Nothing after a refused head is passed on.
    before = bytes(requests.out)
    requests.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert bytes(requests.out) == before


def test_framing_h2c_off_and_on() -> None:
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nConnection: Upgrade\r\n\r\n"
    off = side()
    off.feed(upgrade, 0.0)
    assert b"h2c" not in bytes(off.out).lower() and b"http2-settings" not in bytes(off.out).lower()
    assert off.mode is Mode.HTTP1
    [goaway] = side().feed(H2_PREFACE, 0.0)
    assert isinstance(goaway, GoAway) and goaway.error_code == 0xD and goaway.preface
    on = side(h2c=True)
    on.feed(upgrade, 0.0)
    assert on.mode is Mode.HTTP2 and on.in_head  # the client's preface comes next
    on.feed(H2_PREFACE, 0.0)
    assert not on.in_head


def test_framing_counts_h2_resets_and_holds_header_blocks() -> None:
    requests = side(http2=True, max_resets=3)
    requests.feed(H2_PREFACE, 0.0)
    encoder = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    encoder.initiate_connection()
    encoder.clear_outbound_data_buffer()
    encoder.send_headers(1, REQUEST, end_stream=True)
    block = encoder.data_to_send()
    requests.feed(block[:12], 0.0)
    assert requests.in_head
    assert bytes(requests.out) == H2_PREFACE  # held until the block is complete and checked
    requests.feed(block[12:], 0.0)
    assert not requests.in_head
    assert bytes(requests.out) == H2_PREFACE + block
    reset = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08"
    assert requests.feed(reset * 3, 1.0) == []
    assert requests.feed(reset, 12.0) == []  # a new window
    [goaway] = requests.feed(reset * 3, 13.0)
    assert isinstance(goaway, GoAway) and goaway.error_code == 0xB and goaway.last_stream_id == 1
