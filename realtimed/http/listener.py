"""One TCP listener serving WebSocket upgrades and HTTP on the same port.

The listener owns its sockets. For each connection it reads the first request
head (bounded in size and time), then hands the connection either to the
gateway's WebSocket handler (``GET <gateway.path>`` with ``Upgrade: websocket``)
or to hypercorn's connection handler. So ``/ws``, the client REST, SSE and health
share one port and one origin, and the WebSocket path skips the ASGI machinery
entirely.

Behind a proxy: on a listener with ``http.proxy_protocol`` (or
``http.internal_proxy_protocol``) a connection must come from one of
``http.trusted_proxies`` and start with a PROXY header (``proxy_protocol.py``),
read before TLS; the client it names is the connection's address. A trusted
peer's ``X-Forwarded-For`` / ``Forwarded`` names the client of each request
(``forwarded.py``): the WebSocket session's address, and the ASGI scope's
``client``.

hypercorn never reads the socket itself: it reads through a ``ConnectionGuard``
(``guard.py``), which applies the head deadline and the per-address count to every
request head of a keep-alive connection, refuses what must not reach hypercorn
(``framing.py``), and closes a connection whose client is idle, stalled or gone,
whatever state hypercorn is in. The ASGI wrapper here tells the guard when a
response is in progress.

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
from typing import Any, Final, Protocol

import orjson
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from realtimed import metrics
from realtimed.addresses import canonical, parse_ip
from realtimed.config import Config
from realtimed.errors import NotFound, OperatorError
from realtimed.http import proxy_protocol
from realtimed.http.forwarded import TrustedProxies
from realtimed.http.framing import RequestHead
from realtimed.http.guard import GUARD_STATE_KEY, ConnectionGuard, HandshakeSlots, Slot

log = logging.getLogger(__name__)

_ACCEPT_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Closing a socket does not wait on the peer; the bound is only a safety net.
_CLOSE_TIMEOUT_S: Final = 1.0
_PROXY_RECEIVE_BYTES: Final = 4096

# A WebSocket handler takes the stream, the request head and the client address.
WsHandler = Callable[[trio.abc.Stream, "RequestHead", str], Awaitable[None]]


class SocketIOHandlers(Protocol):
    """The Socket.IO door's entry points (``realtimed.socketio.engine.EngineServer``)."""

    async def handle_ws(self, stream: trio.abc.Stream, head: RequestHead, address: str) -> None:
        """A WebSocket upgrade to ``socketio.path``, taken before hypercorn like ``gateway.path``."""

    async def handle_http(self, scope: dict[str, Any], receive: Any, send: Any, address: str) -> None:
        """Any other HTTP request to ``socketio.path`` (long-polling), as a raw ASGI call."""


class _Prefixed(trio.abc.HalfCloseableStream):
    """A socket stream whose first bytes were read already (those after a PROXY header).

    They are given back first; everything else passes through to the socket.
    """

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.transport_stream.socket

    @property
    def drained(self) -> bool:
        return not self._prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._prefix:
            return await self.transport_stream.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        size = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


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
    # No read timeout in hypercorn: it would also end a response in progress (an SSE
    # stream) whose client has nothing to send. The guard applies http.read_timeout_s
    # where it belongs, inside a request.
    hc.read_timeout = None
    hc.include_server_header = False
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    # The guard enforces max_head_bytes on what the client sent; the head it passes
    # on is written out again and may be a little longer.
    hc.h11_max_incomplete_size = 2 * cfg.gateway.max_head_bytes
    hc.h2_max_header_list_size = cfg.gateway.max_head_bytes
    hc.graceful_timeout = cfg.shutdown.grace_s
    return hc


class _ListenerAsgi:
    """Marks each ASGI scope with the listener it came from (``client`` or ``internal``).

    It also tells the connection's guard when an app call (a response) starts and
    ends.
    """

    def __init__(self, app: Any, role: str, listener: Listener) -> None:
        self._app = app
        self._role = role
        self._listener = listener

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["realtimed.listener"] = self._role
        if scope.get("type") == "websocket":
            # The gateway serves WebSocket itself, for the first request of a connection
            # to gateway.path; the app has no WebSocket routes (and its error handlers
            # need an HTTP request).
            path = self._listener.config.gateway.path
            error = NotFound(f"no WebSocket here: open a new connection to {path} on the client listener")
            body = orjson.dumps({"error": error.to_dict()})
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
            await send({"type": "websocket.http.response.start", "status": 404, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        state = scope.get("state")
        guard = state.get(GUARD_STATE_KEY) if isinstance(state, dict) else None
        if guard is None:
            await self._app(scope, receive, send)
            return
        # The client's address, as the trusted proxies tell it (docs: "Behind a proxy").
        client = self._listener.trusted.client_address(guard.address, scope.get("headers") or [])
        scope["client"] = (client, guard.port if client == guard.address else 0)
        guard.app_started()
        try:
            socketio = self._listener.socketio
            if socketio is not None and _is_socketio_path(scope.get("path", ""), self._listener.config.socketio.path):
                # Long-polling: a raw ASGI call, beside the app (whose routes are those of the API documents).
                await socketio.handle_http(scope, receive, send, client)
            else:
                await self._app(scope, receive, send)
        finally:
            guard.app_finished()


def _is_socketio_path(path: str, socketio_path: str) -> bool:
    """The request is for the Socket.IO door (with or without the path's trailing slash)."""
    return path == socketio_path or path == socketio_path.rstrip("/")


class Listener:
    """Accepts connections on one address and dispatches them (see module docstring).

    Args:
        cfg: the configuration (timeouts, limits).
        host, port: where to listen (port 0 picks a free port).
        role: ``client`` (WebSocket, client REST, SSE, and the server API when allowed)
            or ``internal`` (server API and metrics).
        asgi_app: the Quart app.
        ws_handler: the gateway's WebSocket handler; None answers upgrades over HTTP.
        socketio: the Socket.IO door, served on ``socketio.path`` (None: not served here).
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
        socketio: SocketIOHandlers | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._cfg = cfg
        self.host = host
        self.port = port
        self.role = role
        self._app = ASGIWrapper(_ListenerAsgi(asgi_app, role, self))  # type: ignore[arg-type]
        self.ws_handler = ws_handler
        self.socketio = socketio
        self._ssl_context = ssl_context
        self._reuse_port = reuse_port
        self._hc = hypercorn_config(cfg)
        self._context = WorkerContext(None)
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        self._slots = HandshakeSlots()
        self._trusted = TrustedProxies(cfg.http.trusted_proxies, header=cfg.http.forwarded_header)
        self._proxy_protocol = cfg.http.proxy_protocol if role == "client" else cfg.http.internal_proxy_protocol
        self.connections = 0  # open sockets (WebSocket ones included)
        self.bound: list[tuple[str, int]] = []

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context else "http"

    @property
    def config(self) -> Config:
        return self._cfg

    @property
    def trusted(self) -> TrustedProxies:
        return self._trusted

    def set_config(self, cfg: Config) -> None:
        """Take reloadable limits from a new configuration (connections keep those they started with).

        The proxies trusted and the PROXY protocol are the listener's own (``http``
        needs a restart).
        """
        self._cfg = cfg

    async def run(self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            if self._reuse_port:
                self._listeners = await self._open_shared()
            else:
                self._listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=self._cfg.http.backlog)
        except OSError as exc:
            raise OperatorError(self._cannot_listen(exc)) from exc
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

    def _cannot_listen(self, exc: OSError) -> str:
        key = "http.listen" if self.role == "client" else "http.internal_listen"
        address = f"[{self.host}]:{self.port}" if self.host and ":" in self.host else f"{self.host}:{self.port}"
        if exc.errno == errno.EADDRINUSE:
            hint = "another program (or another realtimed) holds it: stop it, or change " + key
        elif exc.errno == errno.EACCES:
            hint = f"ports below 1024 need CAP_NET_BIND_SERVICE: grant it, or change {key}"
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = f"no interface of this machine has that address: change {key}"
        else:
            hint = f"check {key}"
        return f"cannot listen on {address} ({key}): {exc.strerror or exc}; {hint}"

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
        # One frame for the connection's whole life (a WebSocket session's too), not two.
        self.connections += 1
        metrics.HTTP_CONNECTIONS.labels(self.role).inc()
        try:
            accepted = trio.current_time()
            try:
                peer = stream.socket.getpeername()
            except OSError:
                await stream.aclose()
                return
            # The connection's address: the socket's peer, or the client a PROXY header names.
            address = canonical(str(peer[0])) if isinstance(peer, tuple) else str(peer)
            port = int(peer[1]) if isinstance(peer, tuple) else 0
            cfg = self._cfg
            deadline = accepted + cfg.gateway.handshake_timeout_s
            conn: trio.abc.Stream = stream
            slot: Slot | None = None
            try:
                if self._proxy_protocol != "off":
                    proxied = await self._proxy_header(stream, address, deadline)
                    if proxied is None:
                        return
                    source, rest = proxied
                    if source is not None:
                        address, port = canonical(source[0]), source[1]
                    if rest:
                        conn = _Prefixed(stream, rest)
                slot = self._place(address)
                if slot is None:
                    return
                if slot.reserved:
                    deadline = min(deadline, accepted + cfg.http.health_reserve_timeout_s)
                await self._dispatch(conn, slot, address, port, accepted, deadline)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
                log.debug("connection from %s ended: %r", address, exc)
            except Exception:
                # A failure of one connection never reaches the listener or the others.
                log.exception("connection from %s failed", address)
            finally:
                if slot is not None:
                    slot.release()
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await conn.aclose()
        finally:
            self.connections -= 1
            metrics.HTTP_CONNECTIONS.labels(self.role).dec()

    async def _proxy_header(
        self, stream: trio.SocketStream, peer: str, deadline: float
    ) -> tuple[tuple[str, int] | None, bytes] | None:
        """Read the PROXY header: (the client it names or None, the bytes after it); None: closed."""
        if not self._trusted.trusts(peer):
            log.info("refusing %s: not in http.trusted_proxies, and this listener takes the PROXY protocol", peer)
            metrics.HTTP_CONNECTIONS_CUT.labels("proxy_untrusted").inc()
            return None
        version: proxy_protocol.Version = "v1" if self._proxy_protocol == "v1" else "v2"
        received = bytearray()
        header: proxy_protocol.ProxyHeader | None = None
        with trio.move_on_at(deadline):
            try:
                while header is None:
                    data = await stream.receive_some(_PROXY_RECEIVE_BYTES)
                    if not data:
                        raise proxy_protocol.ProxyHeaderError("the connection ended inside the PROXY header")
                    received += data
                    header = proxy_protocol.parse(received, version=version, max_bytes=self._cfg.gateway.max_head_bytes)
            except proxy_protocol.ProxyHeaderError as exc:
                log.info("closing the connection from %s: %s", peer, exc)
                metrics.HTTP_CONNECTIONS_CUT.labels("proxy_header").inc()
                return None
        if header is None:
            log.debug("PROXY header timeout from %s", peer)
            metrics.HTTP_CONNECTIONS_CUT.labels("head_timeout").inc()
            return None
        return header.source, bytes(received[header.size :])

    def _place(self, address: str) -> Slot | None:
        """The connection's place among its address's unfinished heads; None: refused."""
        cfg = self._cfg
        trusted = self._trusted.trusts(address)
        ip = parse_ip(address)
        may_reserve = trusted or (ip is not None and ip.is_loopback)
        slot = self._slots.slot(
            address,
            cfg.gateway.max_handshakes_per_ip,
            reserve=cfg.http.health_reserve_connections if may_reserve else 0,
            exempt=trusted,
        )
        if not slot.take():
            log.info("refusing %s: %d handshakes already in progress", address, self._slots.count(address))
            metrics.HTTP_CONNECTIONS_CUT.labels("too_many_heads").inc()
            return None
        return slot

    async def _dispatch(
        self, conn: trio.abc.Stream, slot: Slot, address: str, port: int, accepted: float, deadline: float
    ) -> None:
        """TLS, the first request head, then the gateway or hypercorn."""
        cfg = self._cfg
        raw = conn
        guard: ConnectionGuard | None = None
        head: RequestHead | None = None
        http2 = False
        with trio.move_on_at(deadline) as timeout:
            if self._ssl_context is not None:
                conn = trio.SSLStream(conn, self._ssl_context, server_side=True, https_compatible=True)
                await conn.do_handshake()
                http2 = conn.selected_alpn_protocol() == "h2"
            guard = ConnectionGuard(conn, cfg=cfg, address=address, port=port, slot=slot, since=accepted, http2=http2)
            if not http2:
                head = await guard.first_head()
        try:
            if timeout.cancelled_caught:
                log.debug("handshake timeout from %s", address)
                metrics.HTTP_CONNECTIONS_CUT.labels("head_timeout").inc()
                return
            assert guard is not None
            if http2 and slot.reserved:
                # The health reserve takes HTTP/1.1 heads, whose path is known when they end.
                log.info("closing the HTTP/2 connection from %s: it came on the health reserve", address)
                metrics.HTTP_CONNECTIONS_CUT.labels("too_many_heads").inc()
                return
            if not http2 and head is None:
                await guard.linger()  # refused (the answer is written), or the client closed
                return
            ws_handler = self.ws_handler if head is not None and head.path == cfg.gateway.path else None
            if head is not None and self.socketio is not None and _is_socketio_path(head.path, cfg.socketio.path):
                ws_handler = self.socketio.handle_ws
            if head is not None and ws_handler is not None and head.is_websocket_upgrade():
                slot.release()
                client = self._trusted.client_address(address, head.headers)
                # The session writes straight into a plaintext socket: hand it the socket
                # itself once the bytes that came with the PROXY header are read.
                if isinstance(raw, _Prefixed) and raw.drained and conn is raw:
                    conn = raw.transport_stream
                # The guard (its parser and buffers) is done with a WebSocket connection: let it
                # go rather than keep it alive for the whole session.
                guard = None
                # Nor the request head: the handler takes it, and this frame lives as long as the session.
                handling = ws_handler(conn, head, client)
                head = None
                await handling
                return
            await guard.serve(self._serve_http)
            await guard.linger()
        finally:
            if conn is not raw:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await conn.aclose()

    async def _serve_http(self, guard: ConnectionGuard) -> None:
        # The guard reaches the ASGI wrapper through hypercorn's per-connection state.
        await _TcpServer(self._app, self._hc, self._context, {GUARD_STATE_KEY: guard}, guard)  # type: ignore[arg-type]
