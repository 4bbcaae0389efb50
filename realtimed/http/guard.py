"""The guard between a client's HTTP connection and hypercorn.

hypercorn serves HTTP/1.1 and HTTP/2 through a stream; the listener hands it a
``ConnectionGuard`` instead of the socket. The guard reads the socket itself (one
reader task, bounded by a high-water mark so that backpressure still reaches the
client), follows what the client sends with ``framing.RequestSide``, and gives
hypercorn the checked bytes. So the listener sees every request head of a
keep-alive connection, not only the first, and answers for the connection's life:

- every request head (and every HTTP/2 header block) must be complete within
  ``gateway.handshake_timeout_s`` of its first byte, and counts toward
  ``gateway.max_handshakes_per_ip`` while it arrives (a trusted proxy's do not:
  ``Slot.exempt``); once its address's places are taken, a loopback or trusted
  peer may still bring a health check on the reserve (``HandshakeSlots``);
- between requests (no response in progress) the client may stay silent for
  ``http.keep_alive_s``; inside a request body, for ``http.read_timeout_s``;
- once the client has closed its side, or hypercorn has closed the stream, what
  is left must end within ``http.read_timeout_s`` (one second after hypercorn's
  close): no protocol task outlives its peer;
- each 64 KiB written must be taken by the client within ``http.read_timeout_s``.

A response in progress (an SSE stream, a long request, a WebSocket served by
hypercorn) has no idle deadline: the ASGI app tells the guard when it starts and
ends (``app_started`` / ``app_finished``, through the connection's ASGI state).

Resource handling:
    ``serve`` runs the reader and hypercorn inside one cancel scope whose deadline
    the guard moves as the connection changes; when it passes, everything inside
    is cancelled, including a send that hypercorn shields (the guard's sends run
    in their own scope). The listener then calls ``linger`` (read and discard
    what the client still sends, for at most ``http.drain_s``, so it reads the
    answer rather than a reset) and closes the socket.

Error handling:
    A refused request gets its answer (``Refused``: HTTP/1.1 status with
    ``Connection: close``, written after hypercorn has answered every earlier
    request on the connection; ``GoAway``: an HTTP/2 GOAWAY) and the connection
    ends. Failures of the socket end the connection quietly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from realtimed import metrics
from realtimed.config import Config
from realtimed.http.framing import GoAway, HeadReceived, Mode, Refused, RequestHead, RequestSide

log = logging.getLogger(__name__)

# The key under which the guard sits in hypercorn's per-connection ASGI state.
GUARD_STATE_KEY: Final = "realtimed.connection"

_RECEIVE_BYTES: Final = 65536
_HIGH_WATER_BYTES: Final = 65536  # bytes waiting for hypercorn before the guard stops reading
_SEND_PIECE_BYTES: Final = 65536  # each piece must be taken within read_timeout_s
_WIND_DOWN_S: Final = 1.0  # after hypercorn closed the stream
_CLOSE_S: Final = 1.0  # longest a FIN may wait


# The routes a health check asks for: a connection on the health reserve may ask for nothing else.
HEALTH_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


class HandshakeSlots:
    """Unfinished request heads per client address (``gateway.max_handshakes_per_ip``).

    Beside the per-address places, a small reserve (``http.health_reserve_connections``)
    serves the addresses a health check comes from (loopback, trusted proxies) once
    their own places are taken: a head on a reserved place must be a health route
    (``HEALTH_PATHS``), complete within ``http.health_reserve_timeout_s``.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self.reserved = 0  # reserve places in use

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    def slot(self, address: str, limit: int, *, reserve: int = 0, exempt: bool = False) -> Slot:
        """A connection's place.

        Args:
            address: the client address the place counts for.
            limit: the most unfinished heads of that address.
            reserve: the size of the health reserve this connection may use (0: none).
            exempt: the connection is not counted at all (a trusted proxy: it sends
                each head whole, and the client behind it is known only from the head).
        """
        return Slot(self, address, limit, reserve=reserve, exempt=exempt)

    def _take(self, address: str, limit: int) -> bool:
        count = self._counts.get(address, 0)
        if count >= limit:
            return False
        self._counts[address] = count + 1
        return True

    def _give(self, address: str) -> None:
        left = self._counts.get(address, 1) - 1
        if left <= 0:
            self._counts.pop(address, None)
        else:
            self._counts[address] = left


class Slot:
    """The one place a connection may hold among its address's unfinished heads.

    ``reserved`` is true while the place held is one of the health reserve's.
    """

    def __init__(self, slots: HandshakeSlots, address: str, limit: int, *, reserve: int = 0, exempt: bool = False) -> None:
        self._slots = slots
        self.address = address
        self._limit = limit
        self._reserve = reserve
        self.exempt = exempt
        self.held = False
        self.reserved = False

    def take(self) -> bool:
        if self.held:
            return True
        if self.exempt or self._slots._take(self.address, self._limit):
            self.held = True
        elif self._slots.reserved < self._reserve:
            self._slots.reserved += 1
            self.held = self.reserved = True
        return self.held

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.reserved:
            self.reserved = False
            self._slots.reserved -= 1
        elif not self.exempt:
            self._slots._give(self.address)


class ConnectionGuard(trio.abc.HalfCloseableStream):
    """One client connection as hypercorn sees it (see the module docstring).

    Args:
        stream: the socket stream, or the TLS stream over it.
        cfg: the configuration (read once: a connection keeps the limits it started with).
        address: the connection's client address (the socket's peer, or the client a
            PROXY header named), for logs and the per-address count.
        port: the port of that address (0: unknown).
        slot: the connection's handshake slot, held since it was accepted.
        since: when the connection was accepted (its first head's deadline runs from it).
        http2: TLS negotiated ``h2``.

    Attributes hypercorn reads from trio streams (``socket``, ``transport_stream``,
    ``do_handshake``, ``selected_alpn_protocol``) pass through to ``stream``.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        cfg: Config,
        address: str,
        slot: Slot,
        since: float,
        http2: bool = False,
        port: int = 0,
    ) -> None:
        self._stream = stream
        self._cfg = cfg
        self.address = address
        self.port = port
        self._slot = slot
        self.side = RequestSide(
            max_head_bytes=cfg.gateway.max_head_bytes,
            h2c=cfg.http.h2c,
            max_resets=cfg.http.h2_max_resets,
            reset_window_s=cfg.http.h2_reset_window_s,
            http2=http2,
        )
        self._scope = trio.CancelScope()
        self._send_lock = trio.Lock()
        self._send_scope: trio.CancelScope | None = None
        self._send_deadline = math.inf
        self._readable = trio.lowlevel.ParkingLot()  # hypercorn waits here for bytes
        self._room = trio.lowlevel.ParkingLot()  # the reader waits here for hypercorn to take some
        self._settled = trio.lowlevel.ParkingLot()  # a refusal waits here for earlier answers
        self._head_since: float | None = since
        self._last_peer = since
        self._last_app = since
        self._eof_at: float | None = None
        self._closed_at: float | None = None
        self._refusing_since: float | None = None
        self._pending: Refused | GoAway | None = None
        self._backpressured = False
        self._apps = 0
        self._delivered = 0
        self._finished = 0
        self._deadline_reason = ""
        self._linger = False
        self._closed = False
        self.cut_reason: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    # -- the listener's side ----------------------------------------------------------------

    async def first_head(self) -> RequestHead | None:
        """Read the connection's first request head straight from the socket.

        The caller bounds the time. Returns None when the client closed, or when
        its head was refused here (the answer is written; call ``linger``).
        """
        while True:
            data = await self._stream.receive_some(_RECEIVE_BYTES)
            now = trio.current_time()
            if not data:
                self._eof_at = now
                return None
            head = self._absorb(data, now)
            if self.cut_reason is not None:
                return None
            if head is not None:
                return head
            if self._pending is not None:
                await self._answer(self._pending)
                return None

    async def serve(self, protocol: Callable[[ConnectionGuard], Awaitable[None]]) -> None:
        """Run ``protocol`` (hypercorn) over this stream until it ends or the connection is cut."""
        self._update_deadline()
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump)
                await protocol(self)
                nursery.cancel_scope.cancel()
        if self._scope.cancelled_caught and self.cut_reason is None:
            self._cut(self._deadline_reason)

    async def linger(self) -> None:
        """Before closing: when the client may still be sending, read and discard it for a while.

        Closing a socket with unread bytes sends a reset, which can destroy the
        answer before the client reads it (RFC 9112 section 9.6). The guard sends
        its FIN, then discards at most ``http.max_body_bytes`` for at most
        ``http.drain_s``, until the client closes too. Not over TLS (no half-close).
        """
        if self._eof_at is not None or not isinstance(self._stream, trio.abc.HalfCloseableStream):
            return
        if self.cut_reason is not None and not self._linger:
            return
        if not (self._linger or self.side.in_head or self.side.in_body or self.side.out):
            return
        budget = self._cfg.http.max_body_bytes
        with trio.move_on_after(self._cfg.http.drain_s):
            try:
                await self._stream.send_eof()
                while budget > 0:
                    data = await self._stream.receive_some(_RECEIVE_BYTES)
                    if not data:
                        return
                    budget -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    # -- the ASGI app's side ------------------------------------------------------------------

    def app_started(self) -> None:
        self._apps += 1
        self._last_app = trio.current_time()
        self._update_deadline()

    def app_finished(self) -> None:
        self._apps -= 1
        self._finished += 1
        self._last_app = trio.current_time()
        self._settled.unpark_all()
        self._update_deadline()

    # -- hypercorn's side: the stream ---------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        out = self.side.out
        if self._readable_now():
            await trio.lowlevel.checkpoint()
        while not self._readable_now():
            await self._readable.park()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if not out:
            return b""  # the client closed its side
        size = len(out) if max_bytes is None else min(max_bytes, len(out))
        data = bytes(out[:size])
        del out[:size]
        if len(out) < _HIGH_WATER_BYTES:
            self._room.unpark_all()
        return data

    def _readable_now(self) -> bool:
        return bool(self.side.out) or self._eof_at is not None or self._closed

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self.cut_reason is not None:
            raise trio.BrokenResourceError(f"connection cut: {self.cut_reason}")
        async with self._send_lock:
            await self._send(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not isinstance(self._stream, trio.abc.HalfCloseableStream):
            raise AttributeError("send_eof")  # what hypercorn expects of a TLS stream
        stream = self._stream
        # hypercorn may call this from a task that is being cancelled (an answer sent
        # before the request body arrived): the FIN must still go out.
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_S):
            async with self._send_lock:
                try:
                    await stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def aclose(self) -> None:
        """hypercorn is done with the connection; the listener closes the socket."""
        if not self._closed:
            self._closed = True
            self._closed_at = trio.current_time()
            self._readable.unpark_all()
            self._update_deadline()
        await trio.lowlevel.checkpoint()

    # -- inside ---------------------------------------------------------------------------------

    async def _pump(self) -> None:
        """The connection's reader: socket → RequestSide → bytes for hypercorn."""
        while self._pending is None:
            if len(self.side.out) >= _HIGH_WATER_BYTES:
                self._backpressured = True
                self._update_deadline()
                while len(self.side.out) >= _HIGH_WATER_BYTES:
                    await self._room.park()
                self._backpressured = False
                self._last_peer = trio.current_time()
            try:
                data = await self._stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            now = trio.current_time()
            if not data:
                self._eof_at = now
                self._readable.unpark_all()
                self._update_deadline()
                return
            self._absorb(data, now)
            self._readable.unpark_all()
            self._update_deadline()
        await self._answer(self._pending)

    def _absorb(self, data: bytes | bytearray, now: float) -> RequestHead | None:
        """Follow what the client sent; returns the first complete head among it."""
        self._last_peer = now
        first: RequestHead | None = None
        for event in self.side.feed(data, now):
            if isinstance(event, HeadReceived):
                if self._slot.reserved and event.head.path not in HEALTH_PATHS:
                    log.info(
                        "closing the connection from %s: %s on the health reserve (%d request heads from there "
                        "are unfinished)",
                        self.address,
                        event.head.path[:64],
                        self._cfg.gateway.max_handshakes_per_ip,
                    )
                    self._cut("too_many_heads")
                    return None
                self._delivered += 1
                if first is None:
                    first = event.head
            elif self._pending is None:
                self._pending = event
                self._refusing_since = now
        if self.side.in_head:
            if self._head_since is None:
                self._head_since = now
                # The health reserve is for HTTP/1.1 heads, whose path is checked when they end.
                if not self._slot.take() or (self._slot.reserved and self.side.mode is Mode.HTTP2):
                    log.info(
                        "closing the connection from %s: %d request heads from there are unfinished",
                        self.address,
                        self._cfg.gateway.max_handshakes_per_ip,
                    )
                    self._cut("too_many_heads")
        elif self._head_since is not None:
            self._head_since = None
            self._slot.release()
        return first

    async def _answer(self, refusal: Refused | GoAway) -> None:
        """Write a refusal once every earlier request has its answer, then end the connection."""
        if isinstance(refusal, Refused):
            log.debug("refused a request from %s: %d %s", self.address, refusal.status, refusal.message)
            while self._finished < self._delivered and not self._closed:
                await self._settled.park()
            payload = refusal.response()
        else:
            log.debug("ending the HTTP/2 connection from %s: GOAWAY %#x %s", self.address, refusal.error_code, refusal.message)
            payload = refusal.frames()
        if not self._closed:
            try:
                async with self._send_lock:
                    await self._send(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        self._cut("refused" if isinstance(refusal, Refused) else "goaway", linger=isinstance(refusal, Refused))

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view:
            await trio.lowlevel.checkpoint()
        for start in range(0, len(view), _SEND_PIECE_BYTES):
            with trio.CancelScope() as scope:
                self._send_scope = scope
                self._send_deadline = trio.current_time() + self._cfg.http.read_timeout_s
                scope.deadline = min(self._scope.deadline, self._send_deadline)
                try:
                    await self._stream.send_all(view[start : start + _SEND_PIECE_BYTES])
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise trio.BrokenResourceError("the client went away") from exc
                finally:
                    self._send_scope = None
            if scope.cancelled_caught:
                if self.cut_reason is None:
                    reason = "send_timeout" if trio.current_time() >= self._send_deadline else self._deadline_reason
                    self._cut(reason)
                raise trio.BrokenResourceError(f"connection cut: {self.cut_reason}")

    def _cut(self, reason: str, *, linger: bool = False) -> None:
        if self.cut_reason is None:
            self.cut_reason = reason
            self._linger = linger
            metrics.HTTP_CONNECTIONS_CUT.labels(reason).inc()
            log.debug("connection from %s cut: %s", self.address, reason)
        self._scope.cancel()
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._readable.unpark_all()
        self._room.unpark_all()
        self._settled.unpark_all()

    def _update_deadline(self) -> None:
        """Move the connection's deadline after a change (see the module docstring)."""
        http = self._cfg.http
        deadline, reason = math.inf, ""

        def sooner(when: float, why: str) -> None:
            nonlocal deadline, reason
            if when < deadline:
                deadline, reason = when, why

        if self._head_since is not None:
            sooner(self._head_since + self._cfg.gateway.handshake_timeout_s, "head_timeout")
            if self._slot.reserved:
                sooner(self._head_since + http.health_reserve_timeout_s, "head_timeout")
        if self._closed_at is not None:
            sooner(self._closed_at + _WIND_DOWN_S, "wind_down")
        if self._eof_at is not None:
            sooner(self._eof_at + http.read_timeout_s, "eof")
        elif self._refusing_since is not None:
            sooner(self._refusing_since + http.read_timeout_s, "refused")
        elif self._apps == 0:
            quiet_since = max(self._last_peer, self._last_app)
            if self.side.in_body:
                sooner(quiet_since + http.read_timeout_s, "read_timeout")
            else:
                sooner(quiet_since + http.keep_alive_s, "idle")
        elif self.side.in_body and not self._backpressured:
            sooner(self._last_peer + http.read_timeout_s, "read_timeout")
        self._deadline_reason = reason
        self._scope.deadline = deadline
        if self._send_scope is not None:
            self._send_scope.deadline = min(deadline, self._send_deadline)
