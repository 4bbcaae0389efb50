"""A lean HTTP/2 client for FCM's ``messages:send``: h2 (sans-IO) over a Trio TLS stream.

FCM v1 has no batch send, so a push is one small POST; what matters is the CPU
per request. This sender keeps one multiplexed TLS connection per endpoint
(ALPN ``h2``) and runs as many streams on it as the server's
``MAX_CONCURRENT_STREAMS`` allows (the caller bounds them further with
``push.concurrency``).

Promises:
    - ``post`` returns ``(status, headers, body)`` or raises ``H2TransportError``
      (no answer: connect, TLS, timeout, reset, connection lost, body over the
      bound) or ``H2NotNegotiated`` (the server did not pick ``h2``: use HTTP/1.1
      elsewhere).
    - A request the server did not process (its stream id above a GOAWAY's
      last stream id, or refused with ``REFUSED_STREAM``) is sent again on a new
      connection, at most ``RETRY_UNPROCESSED`` times. A request that may have
      been processed is never sent twice here.
    - Flow control: request bodies wait for the peer's window; response data is
      acknowledged as it is read.

Resource handling:
    Each connection's reader task runs in the nursery given to ``H2Sender``
    (the FCM client's). A connection that got GOAWAY takes no new streams and
    closes when its last stream ends; a new one is opened for new requests. At
    most ``MAX_CONNECTIONS`` connections exist (one live, the rest draining).
    ``aclose`` closes them all (idempotent); their readers then end.

Error handling:
    h2 protocol errors and transport failures end the connection: every
    stream on it fails with ``H2TransportError``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import Final

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

__all__ = ["H2NotNegotiated", "H2Sender", "H2TransportError", "Response"]

log = logging.getLogger(__name__)

RETRY_UNPROCESSED: Final = 2
MAX_CONNECTIONS: Final = 4
_READ_SIZE: Final = 65536
#: Our receive window per stream and for the connection: answers are small, many at once.
_WINDOW: Final = 1 << 20
_CLOSE_TIMEOUT_S: Final = 1.0

Headers = list[tuple[bytes, bytes]]


@attrs.frozen
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class H2TransportError(Exception):
    """No answer came: the connection or the stream failed (the send may or may not have reached FCM)."""


class H2NotNegotiated(Exception):
    """The server did not choose ``h2`` in ALPN."""


class _Unprocessed(H2TransportError):
    """The server said it did not process this stream (GOAWAY above it, REFUSED_STREAM): safe to send again."""


class _Pending:
    __slots__ = ("body", "done", "error", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.error: H2TransportError | None = None
        self.done = trio.Event()


class _Connection:
    """One TLS connection and its h2 state machine."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], *, max_body: int, write_timeout_s: float) -> None:
        self.stream = stream
        self.max_body = max_body
        self.write_timeout_s = write_timeout_s
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW - 65535)
        self.pending: dict[int, _Pending] = {}
        self.send_lock = trio.Lock()
        self.window_waiters = trio.lowlevel.ParkingLot()
        self.slot_waiters = trio.lowlevel.ParkingLot()
        self.going_away = False
        self.closed = False
        self.last_received = trio.current_time()
        self.reader_scope = trio.CancelScope()
        #: Set on the server's first SETTINGS (or when the connection ends): until then
        #: its MAX_CONCURRENT_STREAMS is unknown, so no request is sent.
        self.settings_seen = trio.Event()

    @property
    def accepting(self) -> bool:
        return not self.going_away and not self.closed

    async def flush(self) -> None:
        """Send what h2 has queued (any stream's frames).

        The write itself is shielded: a cancelled ``send_all`` would leave the TLS
        stream broken for every stream on it. It is bounded by ``write_timeout_s``
        instead; a server that reads nothing for that long ends the connection.
        """
        async with self.send_lock:
            data = self.h2.data_to_send()
            if not data:
                return
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.write_timeout_s) as stalled:
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self.fail(H2TransportError(f"connection lost while sending: {type(exc).__name__}"))
                        raise H2TransportError("connection lost while sending") from exc
            if stalled.cancelled_caught:
                self.fail(H2TransportError(f"the server read nothing for {self.write_timeout_s:g} s"))
                raise H2TransportError("the server stopped reading")

    def fail(self, error: H2TransportError, *, above: int = 0) -> None:
        """End every pending stream (those above ``above`` when a GOAWAY names a last id)."""
        for stream_id, pending in list(self.pending.items()):
            if stream_id > above:
                pending.error = error
                pending.done.set()
                del self.pending[stream_id]
        if not above:
            self.closed = True
            self.reader_scope.cancel()  # the reader closes the stream
        self.window_waiters.unpark_all()
        self.slot_waiters.unpark_all()
        if self.closed:
            self.settings_seen.set()

    async def reader(self) -> None:
        """Read frames and hand them to their streams until the connection ends."""
        try:
            with self.reader_scope:
                await self._read()
        finally:
            self.closed = True
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                await self.stream.aclose()

    async def _read(self) -> None:
        while not self.closed:
            try:
                data = await self.stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.fail(H2TransportError(f"connection lost: {type(exc).__name__}"))
                return
            if not data:
                self.fail(H2TransportError("the server closed the connection"))
                return
            self.last_received = trio.current_time()
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self.fail(H2TransportError(f"HTTP/2 protocol error: {exc}"))
                return
            for event in events:
                self._handle(event)
            try:
                await self.flush()
            except H2TransportError:
                return
            if self.going_away and not self.pending:
                self.closed = True

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            pending = self.pending.get(event.stream_id)
            if pending is not None:
                headers = dict(event.headers or ())
                pending.headers = headers  # type: ignore[assignment]
                try:
                    pending.status = int(headers.get(b":status", b"0"))  # type: ignore[call-overload]
                except ValueError:
                    pending.status = 0
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            pending = self.pending.get(event.stream_id)
            if pending is not None and event.data:
                pending.body += event.data
                if len(pending.body) > self.max_body:
                    self._end(event.stream_id, H2TransportError(f"answer body over {self.max_body} bytes"))
                    self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.CANCEL)
        elif isinstance(event, h2.events.StreamEnded):
            self._end(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                error: H2TransportError = _Unprocessed("the server refused the stream")
            else:
                error = H2TransportError(f"stream reset by the server ({event.error_code!r})")
            self._end(event.stream_id, error)
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_waiters.unpark_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen.set()
            self.slot_waiters.unpark_all()
            self.window_waiters.unpark_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            log.info("FCM connection got GOAWAY (%r, last stream %d)", event.error_code, last)
            self.fail(_Unprocessed("GOAWAY before the server processed the stream"), above=last)
            if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                # An error GOAWAY: the streams at or below the last id will not finish either.
                self.fail(H2TransportError(f"connection ended by the server ({event.error_code!r})"))

    def _end(self, stream_id: int, error: H2TransportError | None) -> None:
        pending = self.pending.pop(stream_id, None)
        if pending is not None:
            pending.error = error
            pending.done.set()
            if self.window_waiters:
                self.window_waiters.unpark_all()  # a sender waiting for window on this stream stops
        self.slot_waiters.unpark_all()

    async def request(self, headers: Headers, body: bytes) -> Response:
        h2c = self.h2
        while len(self.pending) >= h2c.remote_settings.max_concurrent_streams:
            if not self.accepting:
                raise _Unprocessed("connection going away")
            await self.slot_waiters.park()
        if not self.accepting:
            raise _Unprocessed("connection going away")
        stream_id = h2c.get_next_available_stream_id()
        pending = _Pending()
        self.pending[stream_id] = pending
        try:
            h2c.send_headers(stream_id, headers, end_stream=not body)
            view = memoryview(body)
            while view:
                if pending.done.is_set():
                    if pending.error is None:
                        # Answered before the whole body went: end our side, or h2
                        # would count the stream as open for good.
                        with contextlib.suppress(h2.exceptions.ProtocolError):
                            h2c.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    break
                window = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
                if window <= 0:
                    await self.flush()
                    await self.window_waiters.park()
                    continue
                chunk, view = view[:window], view[window:]
                h2c.send_data(stream_id, bytes(chunk), end_stream=not view)
            await self.flush()
            await pending.done.wait()
        except h2.exceptions.ProtocolError as exc:
            self.pending.pop(stream_id, None)
            raise H2TransportError(f"HTTP/2 protocol error: {exc}") from exc
        finally:
            if not pending.done.is_set():
                # Cancelled or timed out: the server may drop the stream.
                self.pending.pop(stream_id, None)
                self.slot_waiters.unpark_all()
                if not self.closed:
                    try:
                        h2c.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    except h2.exceptions.ProtocolError:
                        pass
                    else:
                        # Tell the server now, so it stops working on the stream.
                        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                            try:
                                await self.flush()
                            except H2TransportError:
                                pass
        if pending.error is not None:
            raise pending.error
        return Response(pending.status, pending.headers, bytes(pending.body))

    async def aclose(self) -> None:
        """GOAWAY (best effort), fail what is pending, close the stream; idempotent."""
        if not self.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                try:
                    self.h2.close_connection()
                    await self.flush()
                except (H2TransportError, h2.exceptions.ProtocolError):
                    pass
        self.fail(H2TransportError("connection closed"))
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            await self.stream.aclose()


class H2Sender(trio.abc.AsyncResource):
    """POSTs to one ``https://host:port`` over HTTP/2 (see the module's docstring)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        nursery: trio.Nursery,
        connect_timeout_s: float,
        request_timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self.host = host
        self.port = port
        self.authority = (host if port == 443 else f"{host}:{port}").encode()
        self._ssl = ssl_context
        self._ssl.set_alpn_protocols(["h2"])
        self._nursery = nursery
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self._live: _Connection | None = None
        self._connections: list[_Connection] = []
        self._connect_lock = trio.Lock()
        self._closed = False
        self.connects = 0

    async def _connection(self) -> _Connection:
        live = self._live
        if live is not None and live.accepting:
            return live
        async with self._connect_lock:
            if self._closed:
                raise H2TransportError("the sender is closed")
            live = self._live
            if live is not None and live.accepting:
                return live
            self._connections = [c for c in self._connections if not c.closed]
            if len(self._connections) >= MAX_CONNECTIONS:
                # Too many draining: the oldest goes now.
                oldest = self._connections.pop(0)
                await oldest.aclose()
            live = await self._open()
            self._connections.append(live)
            self._live = live
            return live

    async def _open(self) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout_s):
                tcp = await trio.open_tcp_stream(self.host, self.port)
                stream = trio.SSLStream(tcp, self._ssl, server_hostname=self.host, https_compatible=True)
                try:
                    await stream.do_handshake()
                except BaseException:
                    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                        await tcp.aclose()
                    raise
        except trio.TooSlowError as exc:
            raise H2TransportError(f"connect to {self.host}:{self.port} timed out") from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise H2TransportError(f"connect to {self.host}:{self.port} failed: {exc}") from exc
        if stream.selected_alpn_protocol() != "h2":
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                await stream.aclose()
            raise H2NotNegotiated(f"{self.host}:{self.port} did not choose h2")
        connection = _Connection(stream, max_body=self.max_body_bytes, write_timeout_s=self.request_timeout_s)
        self.connects += 1
        self._nursery.start_soon(connection.reader)
        try:
            await connection.flush()
            with trio.fail_after(self.connect_timeout_s):
                await connection.settings_seen.wait()
        except trio.TooSlowError as exc:
            await connection.aclose()
            raise H2TransportError(f"{self.host}:{self.port} sent no HTTP/2 SETTINGS") from exc
        except H2TransportError:
            pass  # the request on it fails and says so
        return connection

    async def post(self, path: str, headers: Headers, body: bytes) -> Response:
        """POST ``body`` to ``path``; the whole request, connecting aside, within ``request_timeout_s``."""
        request_headers: Headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", self.authority),
            (b":path", path.encode()),
            *headers,
            (b"content-length", str(len(body)).encode()),
        ]
        for attempt in range(RETRY_UNPROCESSED + 1):
            connection = await self._connection()
            try:
                with trio.fail_after(self.request_timeout_s):
                    return await connection.request(request_headers, body)
            except trio.TooSlowError as exc:
                if trio.current_time() - connection.last_received >= self.request_timeout_s:
                    # Nothing at all came from the server for that long: the connection is dead.
                    await connection.aclose()
                raise H2TransportError(f"no answer within {self.request_timeout_s:g} s") from exc
            except _Unprocessed:
                if attempt == RETRY_UNPROCESSED:
                    raise
                log.debug("FCM did not process a send; sending it on a new connection")
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for connection in self._connections:
            await connection.aclose()
        self._connections.clear()
        self._live = None
