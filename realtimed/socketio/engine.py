"""The Engine.IO v4 server: sessions, WebSocket and HTTP long-polling transports, upgrade, heartbeats.

``EngineServer`` keeps the Engine.IO sessions of this node by ``sid``. A session
starts on a WebSocket (``GET <socketio.path>?EIO=4&transport=websocket``, taken by
the listener on the same wsproto fast path as ``/ws``) or on HTTP long-polling
(``GET`` to open and to wait for packets, ``POST`` to send them), and a polling
session may move to a WebSocket (``2probe`` / ``3probe``, then ``5``; a poll
pending meanwhile is answered with ``6``). What a session carries is the
business of its ``Listener`` (the Socket.IO layer, ``realtimed.socketio.server``).

Heartbeats: the server pings each session ``socketio.ping_interval_ms`` after
its handshake or its last pong, and closes it when no pong comes within
``socketio.ping_timeout_ms`` of a ping. All the timers of the node (pings, pong
deadlines, the Socket.IO connect deadline, the grace of a closing polling
session) are one heap served by one task (``realtimed.deadlines``).

Refusals follow the reference server: HTTP 400 with ``{"code": 0, "message":
"Transport unknown"}`` (1 ``Session ID unknown``, 2 ``Bad handshake method``,
3 ``Bad request``, 5 ``Unsupported protocol version``), 403 with code 4
``Forbidden`` for a disallowed ``Origin``, 413 for a body over
``socketio.max_payload_bytes``; two polls (or two posts) of one session at once
close it with 400. A WebSocket naming a session that is closed, upgrading or
upgraded already is accepted and closed at once. A node with
``gateway.max_sockets`` Engine.IO sessions refuses another (polling: 503;
WebSocket: upgraded, then closed with 4013), so that sessions that never
connect a namespace cannot pile up.

Resource handling:
    ``run`` owns the timer task and the tasks that end sessions (the Socket.IO
    layer's disconnect work). A WebSocket session runs in the listener's
    connection nursery inside ``Session.run``; a polling session lives between
    requests, and each request runs in hypercorn's task for it.

Error handling:
    A packet that cannot be parsed closes its session (the reference server does
    the same); nothing a client sends raises out of this module.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from realtimed.clock import WallClock
from realtimed.config import Config
from realtimed.deadlines import Deadlines
from realtimed.errors import CLOSE_NODE_FULL, CLOSE_NORMAL, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG
from realtimed.frames import OP_BINARY, OP_TEXT, ws_frame
from realtimed.gateway.session import Session
from realtimed.gateway.websocket import CLOSE_HEARTBEAT, origin_allowed, websocket_upgrade
from realtimed.socketio.packets import (
    EioPacket,
    EioType,
    PacketError,
    encode_eio,
    encode_payload,
    parse_eio,
    parse_payload,
)

if TYPE_CHECKING:
    from realtimed.http.framing import RequestHead

__all__ = ["EngineListener", "EngineServer", "EngineSocket"]

log = logging.getLogger(__name__)

# The reference server's error codes and messages (engine.io ``Server.errors``).
UNKNOWN_TRANSPORT: Final = (0, "Transport unknown")
UNKNOWN_SID: Final = (1, "Session ID unknown")
BAD_HANDSHAKE_METHOD: Final = (2, "Bad handshake method")
BAD_REQUEST: Final = (3, "Bad request")
FORBIDDEN: Final = (4, "Forbidden")
UNSUPPORTED_PROTOCOL_VERSION: Final = (5, "Unsupported protocol version")

# Packets one polling request may carry at most (each still bounded by the body size).
_MAX_PACKETS_PER_POST: Final = 1000
_TEXT_PLAIN: Final = b"text/plain; charset=UTF-8"

Transport = Literal["polling", "websocket"]
# A timer: (sid, generation, kind).
_Timer = tuple[str, int, Literal["ping", "pong", "connect", "linger"]]
# An ASGI send or receive.
AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]
AsgiReceive = Callable[[], Awaitable[dict[str, Any]]]


class EngineListener(Protocol):
    """What carries the messages of Engine.IO sessions (the Socket.IO layer)."""

    def opened(self, socket: EngineSocket) -> None:
        """A session was opened (its handshake is written)."""

    async def on_message(self, socket: EngineSocket, data: str | bytes) -> None:
        """One message (text or binary), in order."""

    async def closed(self, socket: EngineSocket, reason: str) -> None:
        """The session is over (called once, from the server's nursery)."""

    def connect_pending(self, socket: EngineSocket) -> bool:
        """The session has not connected a namespace yet (checked at ``socketio.connect_timeout_ms``)."""


@attrs.define(eq=False)
class _Poll:
    """A pending long-poll GET: set ``ready`` to answer it."""

    ready: trio.Event = attrs.field(factory=trio.Event)


class EngineSocket:
    """One Engine.IO session (see the module docstring).

    Attributes:
        sid: the Engine.IO session id.
        address: the client's address.
        transport: the transport in use.
        head_token: a bearer token from the ``Authorization`` header of the first request.
        state: what the Engine.IO listener keeps for the session.
        ws: the WebSocket session once on WebSocket.
        closed: True once closing began: nothing more is sent.
    """

    __slots__ = (
        "_cork",
        "_ended",
        "_generation",
        "_outbox",
        "_outbox_bytes",
        "_ping_due",
        "_pinged",
        "_poll",
        "_posting",
        "_probe",
        "_reason",
        "_server",
        "address",
        "close_code",
        "closed",
        "head_token",
        "sid",
        "state",
        "transport",
        "upgraded",
        "ws",
    )

    def __init__(self, server: EngineServer, *, transport: Transport, address: str, head_token: str | None) -> None:
        self._server = server
        self.sid = secrets.token_urlsafe(15)
        self.address = address
        self.transport: Transport = transport
        self.head_token = head_token
        self.state: Any = None
        self.ws: Session | None = None
        self.closed = False
        self.close_code: int | None = None
        self.upgraded = False
        self._ended = False
        self._reason = ""
        self._generation = 0
        self._pinged = False
        # When the next ping is due (Trio time): without a pong by then plus ping_timeout_ms, the session is over.
        self._ping_due = trio.current_time() + server.config.socketio.ping_interval_ms / 1000
        # Polling: encoded packets waiting for the next poll.
        self._outbox: list[str] = []
        self._outbox_bytes = 0
        self._poll: _Poll | None = None
        self._posting = False
        # The WebSocket probing an upgrade, between 2probe and 5.
        self._probe: Session | None = None
        # While corked (WebSocket): framed messages written together at ``uncork``.
        self._cork: list[bytes] | None = None

    @property
    def outbox_bytes(self) -> int:
        ws = self.ws
        return ws.outbox_bytes if ws is not None else self._outbox_bytes

    # -- sending -----------------------------------------------------------------------------

    def cork(self) -> None:
        """Hold what is sent on WebSocket until ``uncork``, to write it in one go (a CONNECT
        reply and ``session.ready``: one write and one read for the client instead of two).
        Only around steps that end on their own: nothing is written while corked."""
        if self.ws is not None and self._cork is None and not self.closed:
            self._cork = []

    def uncork(self) -> None:
        """Write what ``cork`` held, as one write."""
        held, self._cork = self._cork, None
        if held and self.ws is not None:
            self.ws.send_raw(held[0] if len(held) == 1 else b"".join(held))

    def _send_ws(self, ws: Session, data: bytes) -> None:
        cork = self._cork
        if cork is not None:
            cork.append(data)
        else:
            ws.send_raw(data)

    def send_text(self, packet: str) -> None:
        """Send an encoded Engine.IO text packet (``4…`` for a message)."""
        if self.closed:
            return
        ws = self.ws
        if ws is not None:
            self._send_ws(ws, ws_frame(OP_TEXT, packet.encode()))
        else:
            self._queue(packet)

    def send_message(self, text: str) -> None:
        """Send one Engine.IO message with text data (a Socket.IO packet)."""
        self.send_text("4" + text)

    def send_binary(self, data: bytes) -> None:
        """Send one Engine.IO message with binary data."""
        if self.closed:
            return
        ws = self.ws
        if ws is not None:
            self._send_ws(ws, ws_frame(OP_BINARY, data))
        else:
            record = encode_eio(EioPacket(EioType.MESSAGE, data), binary_as_base64=True)
            assert isinstance(record, str)
            self._queue(record)

    def send_cached(self, ws_bytes: bytes, record: str) -> None:
        """Send a message encoded once for every recipient: the WebSocket frame, or the polling record."""
        if self.closed:
            return
        ws = self.ws
        if ws is not None:
            self._send_ws(ws, ws_bytes)
        else:
            self._queue(record)

    def _queue(self, record: str) -> None:
        self._outbox.append(record)
        self._outbox_bytes += len(record)
        if self._outbox_bytes > self._server.config.gateway.outbox_max_bytes:
            self._server.on_overflow(self)
            return
        self._wake_poll()

    def _wake_poll(self) -> None:
        if self._poll is not None:
            self._poll.ready.set()

    # -- closing -----------------------------------------------------------------------------

    def close(self, reason: str, *, code: int = CLOSE_NORMAL, by_client: bool = False, flush: bool = False) -> None:
        """End the session (idempotent, never blocks).

        On WebSocket the socket closes with ``code`` once what is queued is
        written. On polling a pending poll gets what is queued and the close
        packet (a noop when the client asked); without one, ``flush`` keeps the
        session for the client's next poll (within ``socketio.ping_timeout_ms``),
        which gets them, and otherwise the session is forgotten at once (its
        next poll gets 400, as after a ping timeout on the reference server).
        """
        if self.closed:
            return
        self.uncork()
        self.closed = True
        self.close_code = code
        self._reason = reason
        server = self._server
        if self._probe is not None and not (flush and self.ws is None):
            self._probe.close(CLOSE_NORMAL)
            self._probe = None
        # A probe kept (a flushing close on polling) may still complete the upgrade: what is
        # queued then goes out on the WebSocket, which closes after it (the client has stopped
        # polling once it got 3probe, so this is its only way to hear the close).
        if self.ws is not None:
            self.ws.close(code, reason[:100])  # over once the socket is (session_ended)
        else:
            self._outbox.append("6" if by_client else "1")
            if self._poll is not None:
                self._poll.ready.set()  # over once that poll is answered
            elif flush:
                server.linger(self)  # over once the next poll is answered, or the grace ends
            else:
                server.finish(self)
        server.ended(self, reason)

    # -- heartbeats --------------------------------------------------------------------------

    def _on_pong(self) -> None:
        if self._pinged:
            self._pinged = False
            self._generation += 1
            interval_s = self._server.config.socketio.ping_interval_ms / 1000
            self._ping_due = trio.current_time() + interval_s
            self._server.schedule(self, "ping", interval_s)

    def overdue(self) -> bool:
        """The pong is late by the schedule, whether or not the timer task has run yet.

        A request that comes after the deadline meets a closed session, as on the
        reference server, even when the machine is too busy to run the timer on time.
        """
        timeout_s = self._server.config.socketio.ping_timeout_ms / 1000
        return trio.current_time() >= self._ping_due + timeout_s

    def _on_timer(self, generation: int, kind: str) -> None:
        if self.closed or generation != self._generation:
            return
        if kind == "ping":
            self._pinged = True
            self.send_text("2")
            self._server.schedule(self, "pong", self._server.config.socketio.ping_timeout_ms / 1000)
        elif kind == "pong" and self._pinged:
            self.close("ping timeout", code=CLOSE_HEARTBEAT)

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, packet: EioPacket) -> None:
        """One packet from the client, whatever the transport."""
        if self.closed:
            return
        kind = packet.type
        if kind is EioType.MESSAGE:
            await self._server.listener.on_message(self, packet.data)
        elif kind is EioType.PONG:
            self._on_pong()
        elif kind is EioType.CLOSE:
            self.close("transport close", by_client=True)
        # open, ping (outside a probe), upgrade (outside a probe) and noop mean nothing here.


class EngineServer:
    """The Engine.IO sessions of this node (see the module docstring); a ``SessionHandler`` for their WebSockets.

    Args:
        config: the configuration in force.
        node: this node's id.
        listener: the Socket.IO layer.
        clock: wall time (when each WebSocket connected).
        polling: offer HTTP long-polling (False under ``run --workers N``).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        node: str,
        listener: EngineListener,
        clock: WallClock,
        polling: bool = True,
    ) -> None:
        self._config = config
        self._clock = clock
        self.node = node
        self.listener = listener
        self.polling = polling
        self.sockets: dict[str, EngineSocket] = {}
        # Polling sessions that closed, kept until their client polls once more (or the grace ends).
        self._lingering: dict[str, EngineSocket] = {}
        # The engine session of each WebSocket session.
        self._by_ws: dict[str, EngineSocket] = {}
        self._timers: Deadlines[_Timer] = Deadlines()
        self._nursery: trio.Nursery | None = None
        self._ws_config: tuple[Config, Config] | None = None

    @property
    def config(self) -> Config:
        """The configuration, as the WebSocket sessions read it: their largest message is ``max_payload_bytes``."""
        cfg = self._config()
        cached = self._ws_config
        if cached is None or cached[0] is not cfg:
            gateway = attrs.evolve(cfg.gateway, max_frame_bytes=cfg.socketio.max_payload_bytes)
            cached = self._ws_config = (cfg, attrs.evolve(cfg, gateway=gateway))
        return cached[1]

    def transports(self) -> list[str]:
        offered: list[str] = list(self._config().socketio.transports)
        if not self.polling and "polling" in offered:
            offered.remove("polling")
        return offered

    async def run(self, *, task_status: trio.TaskStatus[EngineServer] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer_task)
            task_status.started(self)

    # -- timers ------------------------------------------------------------------------------

    def schedule(self, socket: EngineSocket, kind: Literal["ping", "pong", "connect", "linger"], delay_s: float) -> None:
        generation = -1 if kind in ("connect", "linger") else socket._generation
        self._timers.push(trio.current_time() + delay_s, (socket.sid, generation, kind))

    async def _timer_task(self) -> None:
        while True:
            _, due = await self._timers.due()
            for sid, generation, kind in due:
                if kind == "linger":
                    lingering = self._lingering.pop(sid, None)
                    if lingering is not None:
                        if lingering._probe is not None:
                            lingering._probe.close(CLOSE_NORMAL)
                            lingering._probe = None
                        self.finish(lingering)
                    continue
                socket = self.sockets.get(sid)
                if socket is None:
                    continue
                if kind == "connect":
                    if not socket.closed and self.listener.connect_pending(socket):
                        socket.close("no Socket.IO connect in time")
                    continue
                socket._on_timer(generation, kind)

    # -- session lifecycle ---------------------------------------------------------------------

    def _register(self, socket: EngineSocket) -> None:
        """Index a new session, write its handshake, arm its timers."""
        cfg = self._config().socketio
        self.sockets[socket.sid] = socket
        upgrades = ["websocket"] if socket.transport == "polling" and "websocket" in self.transports() else []
        handshake = {
            "sid": socket.sid,
            "upgrades": upgrades,
            "pingInterval": cfg.ping_interval_ms,
            "pingTimeout": cfg.ping_timeout_ms,
            "maxPayload": cfg.max_payload_bytes,
        }
        socket.send_text("0" + orjson.dumps(handshake).decode())
        self.schedule(socket, "ping", cfg.ping_interval_ms / 1000)
        self.schedule(socket, "connect", cfg.connect_timeout_ms / 1000)
        self.listener.opened(socket)

    def full(self) -> bool:
        """As many Engine.IO sessions as ``gateway.max_sockets``: a new one is refused (503, or close 4013)."""
        return len(self.sockets) >= self._config().gateway.max_sockets

    def linger(self, socket: EngineSocket) -> None:
        """Keep a closed polling session for its client's next poll (which gets the close packet)."""
        self._lingering[socket.sid] = socket
        self.schedule(socket, "linger", self._config().socketio.ping_timeout_ms / 1000)

    def ended(self, socket: EngineSocket, reason: str) -> None:
        """A session began closing (for ``reason``): no request or message reaches it any more."""
        self.sockets.pop(socket.sid, None)

    def finish(self, socket: EngineSocket) -> None:
        """A closed session's transport is done (its last poll answered, its WebSocket closed):
        the listener finishes with it (the gateway ends its sessions only now, so a drain
        waits until every client has been told)."""
        if socket._ended:
            return
        socket._ended = True
        self._lingering.pop(socket.sid, None)
        if self._nursery is not None:
            self._nursery.start_soon(self.listener.closed, socket, socket._reason)

    def on_overflow(self, socket: EngineSocket) -> None:
        log.info("Engine.IO session %s: outbox over %d bytes: closing", socket.sid, self._config().gateway.outbox_max_bytes)
        socket._outbox.clear()
        socket._outbox_bytes = 0
        socket.close("slow consumer", code=CLOSE_SLOW_CONSUMER)

    def _error(self, socket_or_sid: str | None, error: tuple[int, str]) -> tuple[int, bytes]:
        status = 403 if error is FORBIDDEN else 400
        return status, orjson.dumps({"code": error[0], "message": error[1]})

    def _check_query(self, query: dict[str, list[str]], transport_wanted: Transport | None) -> tuple[int, str] | None:
        transport = (query.get("transport") or [""])[0]
        if transport not in self.transports() or (transport_wanted is not None and transport != transport_wanted):
            return UNKNOWN_TRANSPORT
        if (query.get("EIO") or [""])[0] != "4":
            return UNSUPPORTED_PROTOCOL_VERSION
        return None

    # -- WebSocket ---------------------------------------------------------------------------

    async def handle_ws(self, stream: trio.abc.Stream, head: RequestHead, address: str) -> None:
        """The listener's handler for WebSocket upgrades on ``socketio.path``."""
        cfg = self._config()
        query = parse_qs(head.query)
        origin = head.header("origin")
        if not origin_allowed(origin, head.header("host"), cfg.gateway.allowed_origins):
            await _send_http_error(stream, *self._error(None, FORBIDDEN), cfg.gateway.handshake_timeout_s)
            return
        error = self._check_query(query, "websocket")
        if error is not None:
            # The reference server answers a bad upgrade request over HTTP.
            await _send_http_error(stream, *self._error(None, error), cfg.gateway.handshake_timeout_s)
            return
        sid = (query.get("sid") or [""])[0] or None
        target = self.sockets.get(sid) if sid is not None else None
        if sid is not None and target is None:
            await _send_http_error(stream, *self._error(sid, UNKNOWN_SID), cfg.gateway.handshake_timeout_s)
            return
        allowed = cfg.gateway.allowed_origins
        if not await websocket_upgrade(stream, head, address, allowed_origins=allowed, timeout_s=cfg.gateway.handshake_timeout_s):
            return
        session = Session(self, stream, address, connected_at=self._clock.now())
        if target is None:
            self._by_ws[session.id] = EngineSocket(self, transport="websocket", address=address, head_token=_bearer(head))
        elif not (target.closed or target.transport != "polling" or target._probe is not None or target.upgraded):
            target._probe = session
            self._by_ws[session.id] = target
        # Otherwise the session is closed, or upgrading or upgraded already: the reference
        # server accepts the newcomer and closes it (serve_session does).
        leftover = head.rest
        # The head (its headers and raw bytes, about 2 KB) and its parsed query are not kept
        # for the socket's life: this frame lasts as long as the session.
        del head, query
        await session.run(leftover=leftover)

    # SessionHandler, for the WebSocket sessions:

    async def serve_session(self, session: Session) -> None:
        engine = self._by_ws.get(session.id)
        if engine is None:
            session.close(CLOSE_NORMAL)
            return
        if engine.transport != "websocket" or engine.ws is not None:
            return  # an upgrade probe
        if self.full():
            session.close(CLOSE_NODE_FULL, "node full")
            return
        # A session opened on WebSocket: its handshake is written from inside the socket's nursery.
        engine.ws = session
        self._register(engine)

    async def on_message(self, session: Session, text: str) -> None:
        await self._ws_packet(session, text)

    async def on_binary(self, session: Session, data: bytes) -> None:
        await self._ws_packet(session, data)

    async def _ws_packet(self, session: Session, message: str | bytes) -> None:
        engine = self._by_ws.get(session.id)
        if engine is None:
            session.close(CLOSE_NORMAL)
            return
        if engine._probe is session:
            self._probe_packet(engine, session, message)
            return
        if engine.ws is not session:
            return
        parsed = parse_eio(message)
        if isinstance(parsed, PacketError):
            log.info("Engine.IO session %s: %s: closing", engine.sid, parsed.reason)
            engine.close("parse error")
            return
        await engine.receive(parsed)

    def _probe_packet(self, engine: EngineSocket, session: Session, message: str | bytes) -> None:
        if message == "2probe":
            session.send_json(b"3probe")
            # The pending poll ends with a noop, so that the client pauses polling.
            if engine._poll is not None:
                engine._outbox.append("6")
                engine._poll.ready.set()
            return
        if message == "5":
            engine._probe = None
            engine.ws = session
            engine.transport = "websocket"
            engine.upgraded = True
            queued, engine._outbox = engine._outbox, []
            engine._outbox_bytes = 0
            if engine._poll is not None:
                engine._outbox.append("6")
                engine._poll.ready.set()
            for record in queued:
                if record.startswith("b"):
                    parsed = parse_payload(record, max_packets=1)
                    if isinstance(parsed, list) and isinstance(parsed[0].data, bytes):
                        session.send_binary(parsed[0].data)
                elif record not in ("1", "6"):
                    session.send_raw(ws_frame(OP_TEXT, record.encode()))
            if engine.closed:
                # Closed while the upgrade was under way: the WebSocket carried the rest; now it closes.
                self._lingering.pop(engine.sid, None)
                session.close(engine.close_code or CLOSE_NORMAL, engine._reason[:100])
            return
        # Anything else during a probe ends the probe (the session stays on polling).
        engine._probe = None
        self._by_ws.pop(session.id, None)
        session.close(CLOSE_NORMAL)
        engine._wake_poll()

    def note_overflow(self, session: Session) -> None:
        engine = self._by_ws.get(session.id)
        if engine is not None:
            engine.close_code = CLOSE_SLOW_CONSUMER
        log.info("Engine.IO session %s: outbox over %d bytes: closing", engine.sid if engine else "?", self._config().gateway.outbox_max_bytes)

    def note_close(self, session: Session, code: int, *, by_peer: bool = False) -> None:
        engine = self._by_ws.get(session.id)
        if engine is not None and engine.ws is session:
            reason = "message too big" if code == CLOSE_TOO_BIG and not by_peer else "transport close"
            engine.close(reason, code=code)

    async def session_ended(self, session: Session) -> None:
        engine = self._by_ws.pop(session.id, None)
        if engine is None:
            return
        if engine._probe is session:
            engine._probe = None
            engine._wake_poll()
        elif engine.ws is session:
            engine.close("transport close")
            self.finish(engine)

    # -- HTTP long-polling -------------------------------------------------------------------

    async def handle_http(self, scope: dict[str, Any], receive: AsgiReceive, send: AsgiSend, address: str) -> None:
        """The ASGI handler of HTTP requests to ``socketio.path`` (long-polling)."""
        cfg = self._config()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None:
            if not origin_allowed(origin, headers.get("host"), cfg.gateway.allowed_origins):
                await _respond(send, *self._error(None, FORBIDDEN), [])
                return
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin"),
            ]
        method = scope.get("method", "GET")
        if method == "OPTIONS" and origin is not None:
            allow_headers = headers.get("access-control-request-headers", "Authorization, Content-Type")
            cors += [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", allow_headers.encode("latin-1")),
                (b"access-control-max-age", str(cfg.http.cors_max_age_s).encode()),
            ]
            await _respond(send, 204, b"", cors)
            return
        query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
        error = self._check_query(query, None)
        if error is None and (query.get("transport") or [""])[0] != "polling":
            error = BAD_REQUEST  # a WebSocket request without its upgrade
        if error is not None:
            await _respond(send, *self._error(None, error), cors)
            return
        sid = (query.get("sid") or [""])[0]
        if not sid:
            if method != "GET":
                await _respond(send, *self._error(None, BAD_HANDSHAKE_METHOD), cors)
                return
            if self.full():
                await _respond(send, 503, orjson.dumps({"code": BAD_REQUEST[0], "message": "node full"}), cors)
                return
            opened = EngineSocket(self, transport="polling", address=address, head_token=_bearer_value(headers.get("authorization")))
            self._register(opened)
            await _respond(send, 200, self._take(opened).encode(), cors, _TEXT_PLAIN)
            return
        socket = self.sockets.get(sid)
        if socket is not None and socket.overdue():
            socket.close("ping timeout", code=CLOSE_HEARTBEAT)
            socket = None
        socket = socket or self._lingering.get(sid)
        if socket is None:
            await _respond(send, *self._error(sid, UNKNOWN_SID), cors)
            return
        if socket.transport != "polling" or socket.upgraded:
            await _respond(send, *self._error(sid, BAD_REQUEST), cors)
            return
        if method == "GET":
            await self._poll(socket, receive, send, cors)
        elif method == "POST":
            await self._post(socket, headers, receive, send, cors)
        else:
            await _respond(send, *self._error(sid, BAD_REQUEST), cors)

    def _take(self, socket: EngineSocket) -> str:
        records, socket._outbox = socket._outbox, []
        socket._outbox_bytes = 0
        return encode_payload(records)

    async def _poll(self, socket: EngineSocket, receive: AsgiReceive, send: AsgiSend, cors: list[tuple[bytes, bytes]]) -> None:
        if socket._poll is not None:
            log.info("Engine.IO session %s: two polls at once: closing", socket.sid)
            socket.close("overlap from client")
            await _respond(send, *self._error(socket.sid, BAD_REQUEST), cors)
            return
        if socket._outbox:
            await self._answer_poll(socket, send, cors)
            return
        poll = socket._poll = _Poll()
        gone = False
        try:
            async with trio.open_nursery() as nursery:

                async def watch_disconnect() -> None:
                    nonlocal gone
                    while (await receive()).get("type") != "http.disconnect":
                        pass
                    gone = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_disconnect)
                await poll.ready.wait()
                nursery.cancel_scope.cancel()
        finally:
            socket._poll = None
        if gone:
            socket.close("poll connection closed prematurely")
            return
        await self._answer_poll(socket, send, cors)

    async def _answer_poll(self, socket: EngineSocket, send: AsgiSend, cors: list[tuple[bytes, bytes]]) -> None:
        try:
            await _respond(send, 200, self._take(socket).encode(), cors, _TEXT_PLAIN)
        finally:
            if socket.closed:
                self.finish(socket)

    async def _post(
        self, socket: EngineSocket, headers: dict[str, str], receive: AsgiReceive, send: AsgiSend, cors: list[tuple[bytes, bytes]]
    ) -> None:
        limit = self._config().socketio.max_payload_bytes
        if socket._posting:
            log.info("Engine.IO session %s: two posts at once: closing", socket.sid)
            socket.close("data request overlap from client")
            await _respond(send, *self._error(socket.sid, BAD_REQUEST), cors)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            socket.close("payload too large")
            await _respond(send, 413, b"", [*cors, (b"connection", b"close")])
            return
        socket._posting = True
        try:
            body = bytearray()
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    socket.close("transport close")
                    return
                body += message.get("body", b"")
                if len(body) > limit:
                    socket.close("payload too large")
                    await _respond(send, 413, b"", [*cors, (b"connection", b"close")])
                    return
                if not message.get("more_body", False):
                    break
            try:
                text = body.decode()
            except UnicodeDecodeError:
                text = "\x00"
            packets = parse_payload(text, max_packets=_MAX_PACKETS_PER_POST)
            if isinstance(packets, PacketError):
                log.info("Engine.IO session %s: %s: closing", socket.sid, packets.reason)
                socket.close("parse error")
                await _respond(send, *self._error(socket.sid, BAD_REQUEST), cors)
                return
            for packet in packets:
                await socket.receive(packet)
        finally:
            socket._posting = False
        await _respond(send, 200, b"ok", cors, b"text/html")


def _bearer_value(value: str | None) -> str | None:
    scheme, _, token = (value or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _bearer(head: RequestHead) -> str | None:
    return _bearer_value(head.header("authorization"))


async def _respond(
    send: AsgiSend, status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: bytes = b"application/json"
) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def _send_http_error(stream: trio.abc.Stream, status: int, body: bytes, timeout_s: float) -> None:
    reason = "Forbidden" if status == 403 else "Bad Request"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with trio.move_on_after(timeout_s):
        try:
            await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
