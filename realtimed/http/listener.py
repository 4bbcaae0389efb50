"""One TCP listener serving WebSocket upgrades and HTTP on the same port.

The listener owns its sockets. For each connection it reads the first request
head (bounded in size and time), then hands the connection either to the
gateway's WebSocket handler (``GET <gateway.path>`` with ``Upgrade: websocket``)
or to hypercorn's connection handler. So ``/ws``, the client REST, SSE and health
share one port and one origin, and the WebSocket path skips the ASGI machinery
entirely.

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
from typing import Any, Final

import orjson
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from realtimed import metrics
from realtimed.config import Config
from realtimed.errors import NotFound
from realtimed.http.framing import RequestHead as RequestHead
from realtimed.http.guard import GUARD_STATE_KEY, ConnectionGuard, HandshakeSlots

log = logging.getLogger(__name__)

_ACCEPT_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Closing a socket does not wait on the peer; the bound is only a safety net.
_CLOSE_TIMEOUT_S: Final = 1.0

# A WebSocket handler takes the stream, the request head and the client address.
WsHandler = Callable[[trio.abc.Stream, "RequestHead", str], Awaitable[None]]


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
        guard.app_started()
        try:
            await self._app(scope, receive, send)
        finally:
            guard.app_finished()


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
        self._app = ASGIWrapper(_ListenerAsgi(asgi_app, role, self))  # type: ignore[arg-type]
        self.ws_handler = ws_handler
        self._ssl_context = ssl_context
        self._reuse_port = reuse_port
        self._hc = hypercorn_config(cfg)
        self._context = WorkerContext(None)
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        self._slots = HandshakeSlots()
        self.connections = 0  # open sockets (WebSocket ones included)
        self.bound: list[tuple[str, int]] = []

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context else "http"

    @property
    def config(self) -> Config:
        return self._cfg

    def set_config(self, cfg: Config) -> None:
        """Take reloadable limits from a new configuration (connections keep those they started with)."""
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
        self.connections += 1
        metrics.HTTP_CONNECTIONS.labels(self.role).inc()
        try:
            await self._connection(stream)
        finally:
            self.connections -= 1
            metrics.HTTP_CONNECTIONS.labels(self.role).dec()

    async def _connection(self, stream: trio.SocketStream) -> None:
        accepted = trio.current_time()
        try:
            peer = stream.socket.getpeername()
            address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        except OSError:
            await stream.aclose()
            return
        cfg = self._cfg
        slot = self._slots.slot(address, cfg.gateway.max_handshakes_per_ip)
        if not slot.take():
            log.info("refusing %s: %d handshakes already in progress", address, self._slots.count(address))
            metrics.HTTP_CONNECTIONS_CUT.labels("too_many_heads").inc()
            await stream.aclose()
            return
        conn: trio.abc.Stream = stream
        guard: ConnectionGuard | None = None
        try:
            head: RequestHead | None = None
            http2 = False
            with trio.move_on_after(cfg.gateway.handshake_timeout_s) as timeout:
                if self._ssl_context is not None:
                    conn = trio.SSLStream(stream, self._ssl_context, server_side=True, https_compatible=True)
                    await conn.do_handshake()
                    http2 = conn.selected_alpn_protocol() == "h2"
                guard = ConnectionGuard(conn, cfg=cfg, address=address, slot=slot, since=accepted, http2=http2)
                if not http2:
                    head = await guard.first_head()
            if timeout.cancelled_caught:
                log.debug("handshake timeout from %s", address)
                metrics.HTTP_CONNECTIONS_CUT.labels("head_timeout").inc()
                return
            assert guard is not None
            if not http2 and head is None:
                await guard.linger()  # refused (the answer is written), or the client closed
                return
            if (
                head is not None
                and self.ws_handler is not None
                and head.path == cfg.gateway.path
                and head.is_websocket_upgrade()
            ):
                slot.release()
                await self.ws_handler(conn, head, address)
                return
            await guard.serve(self._serve_http)
            await guard.linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            log.debug("connection from %s ended: %r", address, exc)
        except Exception:
            # A failure of one connection never reaches the listener or the others.
            log.exception("connection from %s failed", address)
        finally:
            slot.release()
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await conn.aclose()

    async def _serve_http(self, guard: ConnectionGuard) -> None:
        # The guard reaches the ASGI wrapper through hypercorn's per-connection state.
        await _TcpServer(self._app, self._hc, self._context, {GUARD_STATE_KEY: guard}, guard)  # type: ignore[arg-type]
