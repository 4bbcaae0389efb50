"""Trusted proxies, over real sockets: the PROXY protocol (v1, v2, before TLS),
X-Forwarded-For and Forwarded, and health checks that the per-address handshake
limit never starves.

The client address realtimed settles on is read back from the server API's
connections list (``address``), on the internal listener, which takes no PROXY
header, so that httpx can ask it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from realtimed.daemon import Daemon
from realtimed.http.proxy_protocol import encode_v1, encode_v2
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_http_edge import HEALTH, QUIET, Raw, no_connections
from tests.test_tls import make_cert

INTERNAL = {"internal_listen": "127.0.0.1:0"}
CLIENT = ("203.0.113.7", 51234)
SERVER = ("127.0.0.1", 8700)


@pytest.fixture
def slow_clock() -> trio.testing.MockClock:
    # Far above loopback latency and a busy machine's thread hand-offs (the SQLite writer): the
    # clock only jumps when every task waits on a timer.
    return trio.testing.MockClock(autojump_threshold=0.25)


def ws_head(user: str, *, extra: str = "") -> bytes:
    return (
        f"GET /ws?token={token(user)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def sse_head(user: str, *, extra: str = "") -> bytes:
    return f"GET /api/v1/events?token={token(user)} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def connections(daemon: Daemon, user: str, *, role: str = "internal") -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=daemon.url(role), headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        answer = await http.get("/server/v1/connections", params={"user_id": user})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()["connections"]
        return found


async def address_of(daemon: Daemon, user: str, *, role: str = "internal") -> dict[str, str]:
    """transport → address of the user's sessions, once it has one."""
    while True:
        found = await connections(daemon, user, role=role)
        if found:
            return {c["transport"]: c["address"] for c in found}
        await trio.sleep(0.02)


async def opened(stream: trio.abc.Stream, marker: bytes) -> bytes:
    """Read until ``marker`` (the session is ready); fails on EOF."""
    received = bytearray()
    while marker not in received:
        data = await stream.receive_some(65536)
        assert data, bytes(received)
        received += data
    return bytes(received)


async def closed_without_answer(stream: trio.abc.Stream, *, within: float = 5) -> None:
    with trio.fail_after(within):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return  # reset
            assert not data.startswith(b"HTTP/"), data
            if not data:
                return


async def raw_to(daemon: Daemon, data: bytes = b"") -> trio.SocketStream:
    host, port = daemon.address()
    stream = await trio.open_tcp_stream(host, port)
    if data:
        await stream.send_all(data)
    return stream


# -- the PROXY protocol --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_header_names_the_client_of_websocket_and_sse(start_daemon: DaemonFactory, version: str) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(
            {"http": INTERNAL | {"proxy_protocol": version, "trusted_proxies": ["127.0.0.1/32"]}}
        )
        header = encode_v1(CLIENT, SERVER) if version == "v1" else encode_v2(CLIENT, SERVER)
        # The header and the request in one write, as a proxy sends them.
        ws = await raw_to(daemon, header + ws_head("alice"))
        assert (await opened(ws, b"session.ready")).startswith(b"HTTP/1.1 101 ")
        sse = await raw_to(daemon, header + sse_head("alice"))
        assert (await opened(sse, b"session.ready")).startswith(b"HTTP/1.1 200 ")
        while len(found := await address_of(daemon, "alice")) < 2:
            await trio.sleep(0.02)
        assert found == {"websocket": "203.0.113.7", "sse": "203.0.113.7"}
        # The header in a write of its own, then the request: the same.
        late = await raw_to(daemon, header)
        await trio.sleep(0.05)
        await late.send_all(ws_head("bob"))
        await opened(late, b"session.ready")
        assert await address_of(daemon, "bob") == {"websocket": "203.0.113.7"}
        # The proxy's own connection (v1 UNKNOWN, v2 LOCAL): the peer's address stands.
        own = b"PROXY UNKNOWN\r\n" if version == "v1" else encode_v2(None)
        local = await raw_to(daemon, own + sse_head("carol"))
        await opened(local, b"session.ready")
        assert await address_of(daemon, "carol") == {"sse": "127.0.0.1"}
        # Health checks through the proxy take the header too.
        health = await raw_to(daemon, header + HEALTH)
        assert (await opened(health, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        for stream in (ws, sse, late, local, health):
            await stream.aclose()


async def test_proxy_header_before_tls(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    with trio.fail_after(20):
        daemon = await start_daemon(
            {
                "http": INTERNAL
                | {
                    "tls_cert_file": str(cert),
                    "tls_key_file": str(key),
                    "proxy_protocol": "v2",
                    "trusted_proxies": ["127.0.0.1/32"],
                }
            }
        )
        tcp = await raw_to(daemon, encode_v2(("2001:db8::7", 4711), ("2001:db8::1", 443)))
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["http/1.1"])
        tls = trio.SSLStream(tcp, context, server_hostname="localhost")
        await tls.send_all(sse_head("alice"))
        await opened(tls, b"session.ready")
        assert await address_of(daemon, "alice") == {"sse": "2001:db8::7"}
        await tls.aclose()


@pytest.mark.parametrize(
    ("version", "data"),
    [
        ("v1", HEALTH),  # no header: a plain request
        ("v1", encode_v2(CLIENT)),  # the other version
        ("v2", encode_v1(CLIENT, SERVER)),
        ("v2", HEALTH),
        ("v1", b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\n" + HEALTH),  # bare LF
        ("v1", b"PROXY TCP4 " + b"1" * 200),  # oversized: no CRLF within 107 bytes
        ("v2", encode_v2(CLIENT)[:14] + b"\xff\xff" + b"\x00" * 1000),  # oversized: over gateway.max_head_bytes
        ("v2", b"\r\n\r\n\x00\r\nQUIX\n" + HEALTH),  # wrong signature
        ("v1", b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n" + HEALTH),
    ],
)
async def test_a_bad_proxy_header_closes_the_connection(start_daemon: DaemonFactory, version: str, data: bytes) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(
            {
                "http": INTERNAL | {"proxy_protocol": version, "trusted_proxies": ["127.0.0.1/32"]},
                "gateway": {"max_head_bytes": 1024},
            }
        )
        bad = await raw_to(daemon, data)
        await closed_without_answer(bad)
        await bad.aclose()
        # The listener goes on.
        header = encode_v1(CLIENT, SERVER) if version == "v1" else encode_v2(CLIENT)
        good = await raw_to(daemon, header + HEALTH)
        assert (await opened(good, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        await good.aclose()
        await no_connections(daemon)


async def test_a_truncated_proxy_header_is_closed_at_the_handshake_timeout(
    start_daemon: DaemonFactory, slow_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(
            QUIET
            | {
                "http": INTERNAL | {"proxy_protocol": "v2", "trusted_proxies": ["127.0.0.1/32"]},
                "gateway": {"handshake_timeout_s": 10.0},
            }
        )
        stalled = await raw_to(daemon, encode_v2(CLIENT)[:20])
        started = trio.current_time()
        await closed_without_answer(stalled, within=20)
        assert 9.5 <= trio.current_time() - started <= 11.0
        ended = await raw_to(daemon, encode_v2(CLIENT)[:10])
        await ended.send_eof()  # the client ends inside the header
        await closed_without_answer(ended)
        for stream in (stalled, ended):
            await stream.aclose()
        await no_connections(daemon)


async def test_proxy_header_from_an_untrusted_peer_is_refused(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(
            {"http": INTERNAL | {"proxy_protocol": "v1", "internal_proxy_protocol": "off", "trusted_proxies": ["10.0.0.0/8"]}}
        )
        # 127.0.0.1 is not a trusted proxy: even a valid header is not believed.
        stream = await raw_to(daemon, encode_v1(CLIENT, SERVER) + sse_head("alice"))
        await closed_without_answer(stream)
        await stream.aclose()
        assert await connections(daemon, "alice") == []
        # The internal listener takes no header.
        async with httpx.AsyncClient(base_url=daemon.url("internal")) as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_internal_listener_has_its_own_proxy_protocol(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(
            {"http": INTERNAL | {"internal_proxy_protocol": "v2", "trusted_proxies": ["127.0.0.1"]}}
        )
        host, port = daemon.address("internal")
        plain = await trio.open_tcp_stream(host, port)
        await plain.send_all(HEALTH)
        await closed_without_answer(plain)
        proxied = await trio.open_tcp_stream(host, port)
        await proxied.send_all(encode_v2(CLIENT) + HEALTH)
        assert (await opened(proxied, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        # The client listener takes none.
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            assert (await http.get("/healthz")).status_code == 200
        for stream in (plain, proxied):
            await stream.aclose()


# -- X-Forwarded-For and Forwarded ------------------------------------------------------------------


async def test_x_forwarded_for_from_a_trusted_proxy(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"http": INTERNAL | {"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]}})
        chain = "X-Forwarded-For: 192.0.2.66, 203.0.113.7\r\nX-Forwarded-For: 10.1.2.3\r\n"
        ws = await raw_to(daemon, ws_head("alice", extra=chain))
        await opened(ws, b"session.ready")
        sse = await raw_to(daemon, sse_head("alice", extra=chain))
        await opened(sse, b"session.ready")
        while len(found := await address_of(daemon, "alice")) < 2:
            await trio.sleep(0.02)
        assert found == {"websocket": "203.0.113.7", "sse": "203.0.113.7"}
        # Unreadable, or Forwarded (not the configured header): the peer.
        odd = await raw_to(daemon, sse_head("bob", extra="X-Forwarded-For: 203.0.113.7,,\r\nForwarded: for=192.0.2.1\r\n"))
        await opened(odd, b"session.ready")
        assert await address_of(daemon, "bob") == {"sse": "127.0.0.1"}
        for stream in (ws, sse, odd):
            await stream.aclose()


async def test_forwarded_when_configured(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(
            {"http": INTERNAL | {"trusted_proxies": ["127.0.0.1/32"], "forwarded_header": "forwarded"}}
        )
        extra = 'X-Forwarded-For: 192.0.2.1\r\nForwarded: for=192.0.2.66, for="[2001:db8::7]:4711";proto=https\r\n'
        sse = await raw_to(daemon, sse_head("alice", extra=extra))
        await opened(sse, b"session.ready")
        assert await address_of(daemon, "alice") == {"sse": "2001:db8::7"}
        await sse.aclose()


async def test_forwarding_headers_from_an_untrusted_peer_are_ignored(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"http": INTERNAL | {"trusted_proxies": ["10.0.0.0/8"]}})
        extra = "X-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.8\r\n"
        ws = await raw_to(daemon, ws_head("alice", extra=extra))
        await opened(ws, b"session.ready")
        sse = await raw_to(daemon, sse_head("alice", extra=extra))
        await opened(sse, b"session.ready")
        while len(found := await address_of(daemon, "alice")) < 2:
            await trio.sleep(0.02)
        assert found == {"websocket": "127.0.0.1", "sse": "127.0.0.1"}
        for stream in (ws, sse):
            await stream.aclose()


async def test_each_request_of_a_proxy_connection_has_its_own_client(start_daemon: DaemonFactory) -> None:
    # A proxy reuses its connections for many clients (nginx's upstream keepalive).
    with trio.fail_after(20):
        daemon = await start_daemon({"http": {"trusted_proxies": ["127.0.0.1/32"]}})
        raw = await Raw.open(daemon)
        for client in ("203.0.113.7", "203.0.113.8"):
            await raw.send(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n\r\n".encode())
            assert (await raw.response()).status == 200
        # The SSE stream after them on the same connection is its own client's.
        await raw.send(sse_head("dave", extra="X-Forwarded-For: 198.51.100.9\r\n"))
        assert await address_of(daemon, "dave", role="client") == {"sse": "198.51.100.9"}
        await raw.close()


# -- health checks are never starved -------------------------------------------------------------


async def test_healthz_answers_with_64_idle_connections_from_the_same_address(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"handshake_timeout_s": 30.0}})  # the defaults: 64 per address, 8 reserved
        idle = [await raw_to(daemon) for _ in range(64)]
        # A few with half a head, as a slow client holds them.
        for stream in idle[:8]:
            await stream.send_all(b"GET /api/v1/ops/ping HTTP/1.1\r\n")
        await trio.sleep(0.2)
        for path in ("/healthz", "/readyz", "/metrics"):
            check = await raw_to(daemon, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert (await opened(check, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 "), path
            await check.aclose()
        # The reserve is for health checks only: anything else is closed unanswered.
        other = await raw_to(daemon, b"GET /api/v1/ops/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        await closed_without_answer(other)
        # A reserved connection that sends nothing is closed within the reserve's timeout (0.5 s).
        started = trio.current_time()
        silent = await raw_to(daemon)
        await closed_without_answer(silent)
        assert trio.current_time() - started < 2.0
        # Once the reserve is in use too, the address is refused at once.
        reserve = [await raw_to(daemon) for _ in range(8)]
        await trio.sleep(0.1)
        refused = await raw_to(daemon)
        with trio.fail_after(0.3):
            await closed_without_answer(refused)
        for stream in [*idle, *reserve, other, silent, refused]:
            await stream.aclose()
        await no_connections(daemon)


async def test_a_later_head_on_a_keep_alive_connection_uses_the_reserve_for_health_only(
    start_daemon: DaemonFactory,
) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"max_handshakes_per_ip": 2, "handshake_timeout_s": 30.0}})
        monitor = await Raw.open(daemon)
        await monitor.send(HEALTH)
        assert (await monitor.response()).status == 200
        other = await Raw.open(daemon)
        await other.send(HEALTH)
        assert (await other.response()).status == 200
        idle = [await raw_to(daemon) for _ in range(2)]  # the address's two places
        await trio.sleep(0.1)
        # A head in two pieces takes a place while it arrives: the reserve's.
        await monitor.send(b"GET /healthz HTTP/1.1\r\n")
        await trio.sleep(0.05)
        await monitor.send(b"Host: x\r\n\r\n")
        assert (await monitor.response()).status == 200
        await other.send(b"GET /api/v1/ops/ping HTTP/1.1\r\n")
        await trio.sleep(0.05)
        await other.send(b"Host: x\r\n\r\n")
        assert await other.eof() == b""
        # A head on the reserve has http.health_reserve_timeout_s, not the handshake timeout.
        await monitor.send(b"GET /healthz HTTP/1.1\r\n")
        started = trio.current_time()
        with trio.fail_after(3):
            assert await monitor.eof() == b""
        assert trio.current_time() - started >= 0.4
        for stream in idle:
            await stream.aclose()
        await monitor.close()
        await other.close()


async def test_a_trusted_proxy_is_not_counted_per_address(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(
            {"http": {"trusted_proxies": ["127.0.0.1/32"]}, "gateway": {"max_handshakes_per_ip": 2, "handshake_timeout_s": 30.0}}
        )
        # The clients behind the proxy share its address: they are not one client.
        idle = [await raw_to(daemon) for _ in range(12)]
        await trio.sleep(0.1)
        for i in range(3):
            stream = await raw_to(daemon, sse_head(f"user{i}", extra=f"X-Forwarded-For: 203.0.113.{i}\r\n"))
            assert (await opened(stream, b"session.ready")).startswith(b"HTTP/1.1 200 ")
            idle.append(stream)
        for stream in idle:
            await stream.aclose()
