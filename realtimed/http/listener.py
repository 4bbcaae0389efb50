"""One TCP listener serving WebSocket upgrades and HTTP on the same port.

The listener owns its sockets. For each connection it reads the request head
(bounded in size and time), then hands the connection either to the gateway's
WebSocket handler (``GET <gateway.path>`` with ``Upgrade: websocket``) or to
hypercorn's connection handler, replaying the bytes it has read. So ``/ws``, the
client REST, SSE and health share one port and one origin, and the WebSocket
path skips the ASGI machinery entirely.

Resource handling:
    Every connection runs in the listener's connection nursery. ``stop_accepting``
    closes the listening sockets and tells hypercorn's keep-alive connections to
    finish; cancelling ``run`` closes everything that remains.

Error handling:
    A connection that fails (reset, bad TLS, garbage) is closed and logged at
    debug level; it never disturbs the listener or other connections.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from realtimed.config import Config

log = logging.getLogger(__name__)

_ACCEPT_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Closing a socket does not wait on the peer; the bound is only a safety net.
_CLOSE_TIMEOUT_S: Final = 1.0

# A WebSocket handler takes the stream, the request head and the client address.
WsHandler = Callable[[trio.abc.Stream, "RequestHead", str], Awaitable[None]]


class RequestHead:
    """The parsed head of an HTTP/1.1 request, plus any bytes read past it."""

    __slots__ = ("headers", "method", "raw", "rest", "target")

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], raw: bytes, rest: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.raw = raw
        self.rest = rest

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def is_websocket_upgrade(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        connection = (self.header("connection") or "").lower()
        return self.method == "GET" and upgrade == "websocket" and "upgrade" in connection


def parse_head(raw: bytes, rest: bytes) -> RequestHead | None:
    """Parse a request head; None when it is not HTTP/1.x (e.g. HTTP/2 prior knowledge)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers.append((name.strip().lower(), value.strip()))
    return RequestHead(parts[0], parts[1], headers, raw, rest)


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first returns bytes already read from the wrapped stream.

    Attributes hypercorn reads from trio streams (``socket``, ``transport_stream``,
    ``do_handshake``, ``selected_alpn_protocol``) pass through to the wrapped one.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = bytes(self._prefix), b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()
        else:
            raise AttributeError("send_eof")

    async def aclose(self) -> None:
        await self._stream.aclose()


class _TcpServer(TCPServer):
    """hypercorn's HTTP connection handler, except that closing cannot be interrupted.

    hypercorn closes a connection it will not reuse (``Connection: close``, or a
    request whose body was never read whole) from the task that sent the last of
    the response, and quart-trio cancels that task as soon as the response is out:
    the close stopped half way, and the connection stayed open, answering nothing,
    until ``http.read_timeout_s``.
    """

    async def _close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            await super()._close()


def hypercorn_config(cfg: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.keep_alive_timeout = cfg.http.keep_alive_s
    hc.read_timeout = int(cfg.http.read_timeout_s)
    hc.include_server_header = False
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.h11_max_incomplete_size = cfg.gateway.max_head_bytes
    hc.graceful_timeout = cfg.shutdown.grace_s
    return hc


class _ListenerAsgi:
    """Marks each ASGI scope with the listener it came from (``client`` or ``internal``)."""

    def __init__(self, app: Any, role: str) -> None:
        self._app = app
        self._role = role

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["realtimed.listener"] = self._role
        await self._app(scope, receive, send)


class Listener:
    """Accepts connections on one address and dispatches them (see module docstring).

    Args:
        cfg: the configuration (timeouts, limits).
        host, port: where to listen (port 0 picks a free port).
        role: ``client`` (WebSocket, client REST, SSE, and the server API when allowed)
            or ``internal`` (server API and metrics).
        asgi_app: the Quart app.
        ws_handler: the gateway's WebSocket handler; None answers upgrades over HTTP.
        ssl_context: a server TLS context, or None for plaintext.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        host: str,
        port: int,
        role: str,
        asgi_app: Any,
        ws_handler: WsHandler | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._cfg = cfg
        self.host = host
        self.port = port
        self.role = role
        self._app = ASGIWrapper(_ListenerAsgi(asgi_app, role))  # type: ignore[arg-type]
        self.ws_handler = ws_handler
        self._ssl_context = ssl_context
        self._reuse_port = reuse_port
        self._hc = hypercorn_config(cfg)
        self._context = WorkerContext(None)
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        self._handshakes: dict[str, int] = {}
        self.bound: list[tuple[str, int]] = []

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context else "http"

    def set_config(self, cfg: Config) -> None:
        """Take reloadable limits from a new configuration."""
        self._cfg = cfg

    async def run(self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED) -> None:
        if self._reuse_port:
            self._listeners = await self._open_shared()
        else:
            self._listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=self._cfg.http.backlog)
        self.bound = []
        for listener in self._listeners:
            sockname = listener.socket.getsockname()
            self.bound.append((sockname[0], sockname[1]))
        try:
            async with trio.open_nursery() as connections:
                with self._accepting:
                    async with trio.open_nursery() as acceptors:
                        for listener in self._listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                        task_status.started(self.bound)
                # Not accepting any more; connections finish in their own time (the
                # daemon cancels this task at the end of the grace period).
                for listener in self._listeners:
                    await listener.aclose()
                await self._context.terminated.set()
        finally:
            for listener in self._listeners:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await listener.aclose()

    async def _open_shared(self) -> list[trio.SocketListener]:
        """Listening sockets with SO_REUSEPORT, so that several worker processes share the port."""
        infos = await trio.socket.getaddrinfo(self.host, self.port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE)
        listeners = []
        for family, kind, proto, _, address in infos[:1]:
            sock = trio.socket.socket(family, kind, proto)
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            await sock.bind(address)
            sock.listen(self._cfg.http.backlog)
            listeners.append(trio.SocketListener(sock))
        return listeners

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRNOS:
                    log.error("accept on %s:%s failed (%s); sleeping 100 ms", self.host, self.port, exc)
                    await trio.sleep(0.1)
                    continue
                raise
            connections.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        except OSError:
            await stream.aclose()
            return
        count = self._handshakes.get(address, 0)
        if count >= self._cfg.gateway.max_handshakes_per_ip:
            log.info("refusing %s: %d handshakes already in progress", address, count)
            await stream.aclose()
            return
        self._handshakes[address] = count + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._handshakes.get(address, 1) - 1
                if left <= 0:
                    self._handshakes.pop(address, None)
                else:
                    self._handshakes[address] = left

        conn: trio.abc.Stream = stream
        try:
            head: RequestHead | None = None
            raw = b""
            with trio.move_on_after(self._cfg.gateway.handshake_timeout_s) as timeout:
                if self._ssl_context is not None:
                    conn = trio.SSLStream(stream, self._ssl_context, server_side=True, https_compatible=True)
                    await conn.do_handshake()
                    if conn.selected_alpn_protocol() == "h2":
                        release()
                        await _TcpServer(self._app, self._hc, self._context, {}, conn)  # type: ignore[arg-type]
                        return
                raw, rest = await self._read_head(conn)
            if timeout.cancelled_caught:
                log.debug("handshake timeout from %s", address)
                return
            if not raw and not rest:
                return
            head = parse_head(raw, rest) if raw else None
            release()
            if (
                head is not None
                and self.ws_handler is not None
                and head.path == self._cfg.gateway.path
                and head.is_websocket_upgrade()
            ):
                await self.ws_handler(conn, head, address)
                return
            prefixed = PrefixedStream(conn, raw + rest)
            await _TcpServer(self._app, self._hc, self._context, {}, prefixed)  # type: ignore[arg-type]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            log.debug("connection from %s ended: %r", address, exc)
        except Exception:
            # A failure of one connection never reaches the listener or the others.
            log.exception("connection from %s failed", address)
        finally:
            release()
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await conn.aclose()

    async def _read_head(self, stream: trio.abc.Stream) -> tuple[bytes, bytes]:
        """Read until the end of the request head; returns (head, bytes after it).

        Returns what was read as ``rest`` with an empty head when the peer does
        not speak HTTP/1 (e.g. HTTP/2 prior knowledge) so that hypercorn sees it.
        """
        buf = bytearray()
        limit = self._cfg.gateway.max_head_bytes
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return b"", bytes(buf)
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return bytes(buf[: end + 4]), bytes(buf[end + 4 :])
            if buf.startswith(b"PRI * HTTP/2.0"):
                return b"", bytes(buf)
            if len(buf) > limit:
                return b"", bytes(buf)
