"""The Socket.IO v5 layer over Engine.IO: namespaces, events, acknowledgements, binary attachments.

``SocketIOServer`` is the ``EngineListener`` of the Engine.IO server: it parses
each Engine.IO message as a Socket.IO packet, reassembles binary packets from
the binary messages that follow them, and hands what it gets to the
``NamespaceHandler``, which decides which namespaces exist and what connecting,
events and disconnecting mean. realtimed's own handler
(``realtimed.socketio.door``) serves ``/`` only; a test installs an echo
handler that serves what the protocol's conformance suite expects. No
configuration chooses the handler: the daemon always installs realtimed's.

As on the reference server: a CONNECT to a namespace the handler does not serve
gets ``CONNECT_ERROR {"message": "Invalid namespace"}``; a packet that cannot
be decoded (or text while attachments are awaited, or binary when none are)
closes the Engine.IO session; so do ``gateway.abuse_limit`` refused CONNECTs
(4009: a client may retry a refused CONNECT with a fresh token, not forever);
packets for a namespace that is not connected are
dropped; the Engine.IO session outlives a client's DISCONNECT of its last
namespace (the client closes it).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Protocol

from realtimed.errors import CLOSE_RATE_ABUSE
from realtimed.socketio.engine import EngineServer, EngineSocket
from realtimed.socketio.packets import (
    PacketError,
    SioPacket,
    SioType,
    deconstruct,
    encode_sio,
    parse_sio,
    reconstruct,
)

__all__ = ["NamespaceHandler", "SioSocket", "SocketIOServer"]

log = logging.getLogger(__name__)


class NamespaceHandler(Protocol):
    """What the namespaces of the Socket.IO door do (realtimed's, or a test's)."""

    def serves(self, namespace: str) -> bool:
        """The namespace exists (others get ``CONNECT_ERROR`` "Invalid namespace")."""

    async def connect(self, socket: SioSocket, auth: dict[str, Any] | None) -> None:
        """A CONNECT to a served namespace: answer with ``socket.accept`` or ``socket.refuse``."""

    async def event(self, socket: SioSocket, args: list[Any], ack_id: int | None, *, binary: bool) -> None:
        """An EVENT (or BINARY_EVENT, attachments in place as bytes) on a connected socket."""

    async def disconnect(self, socket: SioSocket, reason: str) -> None:
        """The socket is gone (its DISCONNECT, or the Engine.IO session ended); called once per accepted socket."""


class SioSocket:
    """One namespace of one Engine.IO session.

    Attributes:
        namespace: the namespace (``/``).
        engine: the Engine.IO session.
        sid: the Socket.IO socket id, given in the CONNECT reply.
        connected: accepted and not disconnected.
        state: what the handler keeps for the socket.
    """

    __slots__ = ("_connection", "connected", "engine", "namespace", "sid", "state")

    def __init__(self, connection: _Connection, namespace: str) -> None:
        self._connection = connection
        self.engine = connection.engine
        self.namespace = namespace
        self.sid = secrets.token_urlsafe(15)
        self.connected = False
        self.state: Any = None

    def _send(self, packet: SioPacket, buffers: list[bytes] | None = None) -> None:
        self.engine.send_message(encode_sio(packet))
        for buffer in buffers or ():
            self.engine.send_binary(buffer)

    def accept(self, data: dict[str, Any] | None = None) -> None:
        """Answer the CONNECT: ``{"sid": …}`` plus ``data``."""
        if self.connected or self.engine.closed:
            return
        self.connected = True
        self._connection.sockets[self.namespace] = self
        self._connection.ever_connected = True
        self._send(SioPacket(SioType.CONNECT, self.namespace, {"sid": self.sid, **(data or {})}))

    def refuse(self, data: dict[str, Any]) -> None:
        """Answer the CONNECT with CONNECT_ERROR carrying ``data`` (``{"message", "data"?}``)."""
        self._connection.refusals += 1
        self._send(SioPacket(SioType.CONNECT_ERROR, self.namespace, data))

    def emit(self, event: str, *args: Any) -> None:
        """Send an event; bytes anywhere in ``args`` go as binary attachments."""
        if not self.connected:
            return
        data, buffers = deconstruct([event, *args])
        if buffers:
            self._send(SioPacket(SioType.BINARY_EVENT, self.namespace, data, attachments=len(buffers)), buffers)
        else:
            self._send(SioPacket(SioType.EVENT, self.namespace, data))

    def ack(self, ack_id: int, *args: Any) -> None:
        """Answer an event's acknowledgement; bytes go as binary attachments."""
        if not self.connected:
            return
        data, buffers = deconstruct(list(args))
        if buffers:
            self._send(SioPacket(SioType.BINARY_ACK, self.namespace, data, ack_id, len(buffers)), buffers)
        else:
            self._send(SioPacket(SioType.ACK, self.namespace, data, ack_id))

    def send_encoded(self, ws_bytes: bytes, record: str) -> None:
        """Send an event message encoded once for many sockets (the WebSocket frame and the polling record)."""
        if self.connected:
            self.engine.send_cached(ws_bytes, record)

    def disconnect(self) -> None:
        """Send DISCONNECT for the namespace (socket.io-client does not reconnect after it)."""
        if not self.connected:
            return
        self._send(SioPacket(SioType.DISCONNECT, self.namespace))
        self.connected = False
        self._connection.sockets.pop(self.namespace, None)
        self._connection.leaving.append(self)


class _Connection:
    """The Socket.IO state of one Engine.IO session."""

    __slots__ = ("buffers", "engine", "ever_connected", "leaving", "pending", "refusals", "sockets")

    def __init__(self, engine: EngineSocket) -> None:
        self.engine = engine
        self.sockets: dict[str, SioSocket] = {}
        # Sockets the server disconnected: their handler's disconnect is still owed.
        self.leaving: list[SioSocket] = []
        self.ever_connected = False
        # CONNECTs refused: at gateway.abuse_limit the session is closed (4009).
        self.refusals = 0
        self.pending: SioPacket | None = None
        self.buffers: list[bytes] = []


class SocketIOServer:
    """The Socket.IO layer (see the module docstring); the Engine.IO server's listener.

    Args:
        handler: what the namespaces do.

    Attributes:
        engine: the Engine.IO server (set by the daemon or the test harness).
    """

    def __init__(self, handler: NamespaceHandler) -> None:
        self.handler = handler
        self.engine: EngineServer | None = None

    def max_attachments(self) -> int:
        assert self.engine is not None
        return self.engine.config.socketio.max_attachments

    # EngineListener:

    def opened(self, socket: EngineSocket) -> None:
        socket.state = _Connection(socket)

    def connect_pending(self, socket: EngineSocket) -> bool:
        connection: _Connection = socket.state
        return not connection.ever_connected

    async def closed(self, socket: EngineSocket, reason: str) -> None:
        connection: _Connection = socket.state
        if connection is None:
            return
        gone = [*connection.leaving, *connection.sockets.values()]
        connection.leaving = []
        connection.sockets.clear()
        for sio in gone:
            sio.connected = False
            try:
                await self.handler.disconnect(sio, reason)
            except Exception:
                log.exception("Socket.IO session %s: disconnect handler failed", socket.sid)

    async def on_message(self, socket: EngineSocket, data: str | bytes) -> None:
        connection: _Connection = socket.state
        if isinstance(data, bytes):
            pending = connection.pending
            if pending is None:
                self._refuse(socket, "binary data when no attachment was announced")
                return
            connection.buffers.append(data)
            if len(connection.buffers) < pending.attachments:
                return
            connection.pending = None
            buffers, connection.buffers = connection.buffers, []
            whole = reconstruct(pending.data, buffers)
            if isinstance(whole, PacketError):
                self._refuse(socket, whole.reason)
                return
            await self._packet(connection, SioPacket(pending.type, pending.namespace, whole, pending.id), binary=True)
            if connection.leaving:
                await self._finish_leaving(connection)
            return
        if connection.pending is not None:
            self._refuse(socket, "text while attachments were awaited")
            return
        packet = parse_sio(data, max_attachments=self.max_attachments())
        if isinstance(packet, PacketError):
            self._refuse(socket, packet.reason)
            return
        if packet.type in (SioType.BINARY_EVENT, SioType.BINARY_ACK) and packet.attachments > 0:
            connection.pending = packet
            return
        await self._packet(connection, packet, binary=packet.type in (SioType.BINARY_EVENT, SioType.BINARY_ACK))
        if connection.leaving:
            await self._finish_leaving(connection)

    def _refuse(self, socket: EngineSocket, reason: str) -> None:
        log.info("Socket.IO session %s: %s: closing", socket.sid, reason)
        socket.close("parse error")

    async def _packet(self, connection: _Connection, packet: SioPacket, *, binary: bool) -> None:
        kind = packet.type
        namespace = packet.namespace
        if kind is SioType.CONNECT:
            if not self.handler.serves(namespace):
                SioSocket(connection, namespace).refuse({"message": "Invalid namespace"})
                return
            if namespace in connection.sockets:
                return  # connected already
            await self.handler.connect(SioSocket(connection, namespace), packet.data)
            assert self.engine is not None
            if connection.refusals >= self.engine.config.gateway.abuse_limit:
                log.info("Socket.IO session %s: %d CONNECTs refused: closing with 4009", connection.engine.sid, connection.refusals)
                connection.engine.close("rate limit abuse", code=CLOSE_RATE_ABUSE, flush=True)
            return
        sio = connection.sockets.get(namespace)
        if sio is None:
            return  # not connected: dropped, as the reference server does
        if kind is SioType.DISCONNECT:
            sio.connected = False
            del connection.sockets[namespace]
            await self.handler.disconnect(sio, "client namespace disconnect")
        elif kind in (SioType.EVENT, SioType.BINARY_EVENT):
            await self.handler.event(sio, list(packet.data), packet.id, binary=binary)
        # ACK and BINARY_ACK: the server never asks the client for one, so there is nothing to match.

    async def _finish_leaving(self, connection: _Connection) -> None:
        leaving, connection.leaving = connection.leaving, []
        for sio in leaving:
            await self.handler.disconnect(sio, "server namespace disconnect")
