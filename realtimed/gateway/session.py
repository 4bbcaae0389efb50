"""One WebSocket session: a socket owned outright, spoken through wsproto.

``Session`` is the WebSocket transport's ``ClientSession``: the gateway admits,
times and drains it like a session of any other transport.

Writing:
    ``send_frame`` and ``send_raw`` are synchronous and never block. When the
    socket has nothing queued, the bytes go straight into the kernel with a
    non-blocking ``send``; only what the kernel does not take is queued in the
    outbox, and a flush task (started then, ended when the outbox is empty)
    owns the socket until it is drained. So bytes never interleave, no task is
    woken per delivery, and a socket whose outbox passes
    ``gateway.outbox_max_bytes`` is closed with 4008. TLS sockets always take the
    flush path.

Reading:
    The reader task feeds bytes to wsproto's frame parser, reassembles text
    messages up to ``gateway.max_frame_bytes`` (over it: close 1009), closes on a
    binary frame (1003), and hands each text message to the gateway's dispatcher
    inline, in order.

Resource handling:
    Each session runs in its own nursery (the reader, plus a flush or close task
    while needed); ``run`` returns when the socket is closed, and the socket is
    always closed when it returns. ``aclose`` closes with 1000 and waits for that.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from realtimed import logs, metrics, protocol
from realtimed.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG
from realtimed.frames import Frame, close_frame, ws_frame
from realtimed.gateway.client import ClientSession

if TYPE_CHECKING:
    from realtimed.config import Config

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S: Final = 3.0
LINGER_S: Final = 0.5
RECEIVE_BYTES: Final = 65536
_SEND_ERRNOS: Final = {errno.EAGAIN, errno.EWOULDBLOCK}


class _ServerConnection(Connection):
    """wsproto's server connection without its queue of pending events.

    That queue only ever holds the 1006 close of ``receive_data(None)``, which a
    session never calls (it sees the end of the stream itself), and an empty
    deque costs an idle socket 760 bytes. Should it be called after all, the
    tuple's missing ``append`` fails loudly rather than sharing state.
    """

    def __init__(self) -> None:
        super().__init__(ConnectionType.SERVER)
        self._events = ()  # type: ignore[assignment]


class SessionHandler(Protocol):
    """What a Session asks of its owner (the gateway, or a test's echo handler)."""

    node: str

    @property
    def config(self) -> Config: ...

    async def serve_session(self, session: Session) -> None:
        """Runs beside the reader for the session's life (authentication, admission)."""

    async def on_message(self, session: Session, text: str) -> None: ...

    async def on_binary(self, session: Session, data: bytes) -> None: ...

    def note_overflow(self, session: Session) -> None: ...

    def note_close(self, session: Session, code: int, *, by_peer: bool = False) -> None: ...

    async def session_ended(self, session: Session) -> None: ...


class Session(ClientSession):
    """A client socket (see the module docstring and ``ClientSession``).

    Attributes:
        last_heard: ``trio.current_time()`` when anything last arrived.
        bucket, bucket_at, limited_streak: the socket's frame budget (the gateway's).
        pending_token: a header or query token not yet checked.
        admission: set once that token has been checked; frames wait for it.
        auth_event: set when a first-frame ``auth`` has been handled.
    """

    __slots__ = (
        "_bytes",
        "_closed",
        "_closing",
        "_ended",
        "_flushing",
        "_fragments",
        "_fragments_size",
        "_gateway",
        "_nursery",
        "_outbox",
        "_outbox_bytes",
        "_peer_closed",
        "_peer_closed_event",
        "_sock",
        "_stream",
        "_ws",
        "admission",
        "auth_event",
        "bucket",
        "bucket_at",
        "last_heard",
        "limited_streak",
        "pending_token",
    )

    transport = "websocket"
    sends_expiring = True

    def __init__(self, gateway: SessionHandler, stream: trio.abc.Stream, address: str, *, connected_at: datetime) -> None:
        now = trio.current_time()
        super().__init__(node=gateway.node, address=address, connected_at=connected_at, last_active=now)
        self._gateway = gateway
        self._stream = stream
        sock = getattr(stream, "socket", None)
        # The raw socket for direct non-blocking writes; None under TLS.
        self._sock: socket.socket | None = getattr(sock, "_sock", None) if isinstance(stream, trio.SocketStream) else None
        self._ws = _ServerConnection()
        # The node's byte counts (realtimed_socket_*_bytes), added to at each read and write.
        self._bytes = metrics.WEBSOCKET_BYTES
        # Made when bytes are first queued, dropped once flushed: an idle socket keeps none.
        self._outbox: deque[bytes] | None = None
        self._outbox_bytes = 0
        self._flushing = False
        self._closing = False
        self._closed = False
        # The peer's close frame or EOF came; the event is made only if ``_finish_close`` waits for it.
        self._peer_closed = False
        self._peer_closed_event: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._fragments: list[Any] = []
        self._fragments_size = 0
        # Set when ``run`` has returned; made only when ``aclose`` waits for it.
        self._ended: trio.Event | None = None
        self.last_heard = now
        self.bucket = float(gateway.config.gateway.ops_burst)
        self.bucket_at = now
        self.limited_streak = 0
        self.pending_token: str | None = None
        self.auth_event: trio.Event | None = None
        # Set once a header or query token has been checked; frames wait for it.
        self.admission: trio.Event | None = None

    # -- writing ------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def outbox_bytes(self) -> int:
        return self._outbox_bytes

    def send_frame(self, frame: Frame) -> None:
        """Queue an event frame for this socket; never blocks (router fast path)."""
        if not self._closing:
            self._write(frame.ws)

    def send_json(self, payload: bytes) -> None:
        """Send one JSON text frame (replies, per-socket events)."""
        if not self._closing:
            self._write(ws_frame(0x1, payload))

    def send_event(self, name: str, data: Any) -> None:
        self.send_json(protocol.encode_event(name, data))

    def send_binary(self, payload: bytes) -> None:
        if not self._closing:
            self._write(ws_frame(0x2, payload))

    def send_raw(self, data: bytes) -> None:
        """Send already framed bytes (pings)."""
        if not self._closing:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._outbox and self._sock is not None:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                if exc.errno not in _SEND_ERRNOS:
                    self._abort()
                    return
                sent = 0
            self._bytes.sent += sent
            if sent == len(data):
                return
            data = data[sent:]
        self._queue(data)
        if self._outbox_bytes > self._gateway.config.gateway.outbox_max_bytes:
            self._gateway.note_overflow(self)
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        self._start_flush()

    def _queue(self, data: bytes) -> None:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        outbox.append(data)
        self._outbox_bytes += len(data)

    def _drop_outbox(self) -> None:
        self._outbox = None
        self._outbox_bytes = 0

    def _start_flush(self) -> None:
        if not self._flushing and self._nursery is not None and not self._closed:
            self._flushing = True
            self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        try:
            await self._flush_outbox()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self._abort()
        finally:
            self._flushing = False

    async def _flush_outbox(self) -> None:
        sock = self._sock
        while self._outbox and not self._closed:
            if sock is None:
                chunk = b"".join(self._outbox)
                self._drop_outbox()
                await self._stream.send_all(chunk)
                self._bytes.sent += len(chunk)
                continue
            await trio.lowlevel.wait_writable(sock)
            # ``_abort`` may have run (and emptied the outbox) while this waited:
            # a wait whose socket turned writable first returns despite the cancel.
            outbox = self._outbox
            if self._closed or not outbox:
                return
            data = outbox[0]
            try:
                sent = sock.send(data)
            except BlockingIOError:
                continue
            self._outbox_bytes -= sent
            self._bytes.sent += sent
            if sent < len(data):
                outbox[0] = data[sent:]
            elif len(outbox) > 1:
                outbox.popleft()
            else:
                self._drop_outbox()

    # -- closing ------------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame and end the session (idempotent, never blocks)."""
        if self._closing or self._closed:
            return
        self._closing = True
        self.close_code = code
        if code == CLOSE_SLOW_CONSUMER and self._outbox:
            # Keep only the frame already partly on the wire, so the close frame
            # still starts on a frame boundary.
            head = self._outbox[0]
            self._drop_outbox()
            self._queue(head)
        frame = close_frame(code, reason)
        if not self._outbox and self._sock is not None:
            try:
                sent = self._sock.send(frame)
            except OSError:
                sent = 0
            self._bytes.sent += sent
            frame = frame[sent:]
        if frame:
            self._queue(frame)
        self._gateway.note_close(self, code)
        if self._nursery is not None:
            self._nursery.start_soon(self._finish_close)

    async def _finish_close(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                # A running flush task sends the close frame too; otherwise send it here.
                while self._flushing and self._outbox:
                    await trio.sleep(0.01)
                if self._outbox:
                    self._flushing = True
                    try:
                        await self._flush_outbox()
                    finally:
                        self._flushing = False
                await self._wait_peer_closed()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._abort()

    def _abort(self) -> None:
        """Drop the connection now (peer gone, or the close handshake is over)."""
        if self._closed:
            return
        self._closed = True
        self._drop_outbox()
        if self.close_code is None:
            self.close_code = 1006
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, leftover: bytes) -> None:
        """Serve the socket until it closes; the upgrade response has been sent."""
        # Every line logged by the session's tasks carries its id (and its user once admitted).
        logs.bind_task(session=self.id)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._gateway.serve_session, self)
                try:
                    await self._read_loop(leftover)
                finally:
                    # The peer closed or went away (or the reader failed): nothing
                    # more can be written, and no task may start in this nursery.
                    self._abort()
        finally:
            self._closed = True
            self._drop_outbox()
            try:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await self._gateway.session_ended(self)
                    await self._lingering_close()
            finally:
                if self._ended is None:
                    self._ended = trio.Event()
                self._ended.set()

    async def aclose(self) -> None:
        """Close with 1000 and wait until the socket is closed (idempotent).

        A session that was never run only closes its stream.
        """
        if self._nursery is None:
            self._closing = self._closed = True
            await trio.aclose_forcefully(self._stream)
            return
        self.close(CLOSE_NORMAL)
        if self._ended is None:
            self._ended = trio.Event()
        await self._ended.wait()

    async def _read_loop(self, leftover: bytes) -> None:
        ws = self._ws
        data = leftover
        max_bytes = self._gateway.config.gateway.max_frame_bytes
        while True:
            if data and self._peer_closed:
                # After the peer's close frame nothing more is read as WebSocket
                # (RFC 6455 5.5.1); wsproto would refuse it once our reply is out.
                pass
            elif data:
                self.last_heard = trio.current_time()
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        if self._closing:
                            continue
                        message = self._assemble(event, max_bytes)
                        if message is None:
                            continue
                        if isinstance(message, str):
                            await self._gateway.on_message(self, message)
                        else:
                            await self._gateway.on_binary(self, message)
                    elif isinstance(event, Ping):
                        if not self._closing:
                            self._write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self._on_close_event(event)
            sock = self._sock
            try:
                if sock is None:
                    data = bytes(await self._stream.receive_some(RECEIVE_BYTES))
                else:
                    # Straight from the socket: an idle session then waits in wait_readable,
                    # holding three coroutine frames fewer than through SocketStream (~1 KB).
                    waited = False
                    while True:
                        try:
                            data = sock.recv(RECEIVE_BYTES)
                        except BlockingIOError:
                            await trio.lowlevel.wait_readable(sock)
                            waited = True
                            continue
                        break
                    if not waited:  # a read that never waited is still a checkpoint, as trio's are
                        await trio.lowlevel.checkpoint()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            self._bytes.received += len(data)
            if not data:
                self._set_peer_closed()
                return

    def _assemble(self, event: TextMessage | BytesMessage, max_bytes: int) -> str | bytes | None:
        """Reassemble a fragmented message; None until it is complete (or too big: 1009)."""
        data = event.data
        if isinstance(data, str):
            # A character is 1 to 4 bytes: measure exactly only near the limit.
            size = len(data) if (self._fragments_size + len(data)) * 4 <= max_bytes else len(data.encode())
        else:
            size = len(data)
        self._fragments_size += size
        if self._fragments_size > max_bytes:
            self._fragments = []
            self._fragments_size = 0
            self.close(CLOSE_TOO_BIG, "frame too big")
            return None
        if not event.message_finished:
            self._fragments.append(data)
            return None
        if self._fragments:
            self._fragments.append(data)
            parts = self._fragments
            data = "".join(parts) if isinstance(data, str) else b"".join(parts)  # type: ignore[arg-type]
            self._fragments = []
        self._fragments_size = 0
        return data if isinstance(data, str) else bytes(data)

    async def _lingering_close(self) -> None:
        """Close the TCP connection with a FIN, not a reset.

        Closing a socket that still has unread bytes (a client's second close
        frame, say) makes the kernel send RST. So shut the sending side, read
        and drop what the peer still sends until it closes (briefly), then close.
        """
        try:
            if self._peer_closed and isinstance(self._stream, trio.SocketStream):
                await self._stream.send_eof()
                with trio.move_on_after(LINGER_S):
                    while await self._stream.receive_some(RECEIVE_BYTES):
                        pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            try:
                await self._stream.aclose()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _set_peer_closed(self) -> None:
        self._peer_closed = True
        if self._peer_closed_event is not None:
            self._peer_closed_event.set()

    async def _wait_peer_closed(self) -> None:
        if self._peer_closed:
            await trio.lowlevel.checkpoint()
            return
        if self._peer_closed_event is None:
            self._peer_closed_event = trio.Event()
        await self._peer_closed_event.wait()

    def _on_close_event(self, event: CloseConnection) -> None:
        if self._ws.state not in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
            # The parser found a protocol error (1002) or invalid UTF-8 (1007):
            # close with that code and do not wait for the peer.
            self._set_peer_closed()
            self.close(event.code, "protocol error")
            return
        self._set_peer_closed()
        if self._closing:
            return  # the answer to our own close frame
        self._closing = True
        self.close_code = event.code
        try:
            reply = self._ws.send(event.response())
        except Exception:
            reply = close_frame(1000)
        self._queue(reply)
        self._gateway.note_close(self, event.code, by_peer=True)
        if self._nursery is not None:
            self._nursery.start_soon(self._finish_close)

    def shutdown(self, event_payload: bytes) -> None:
        """Drain: send ``server.shutdown`` then close with 1001."""
        self.send_json(event_payload)
        self.close(CLOSE_GOING_AWAY, "server draining")
