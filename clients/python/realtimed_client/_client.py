"""The realtimed client on Trio: one socket kept open, requests, rooms, chat outbox.

``Client.run`` owns everything the client does, in one nursery: the connection
loop (connect, serve, reconnect), the per-conversation outbox workers and the
stream backfills. Each connection has a nursery of its own (trio-websocket's
reader, the heartbeat, the resync after ``session.ready``, a token refresh),
cancelled when the socket ends, so nothing of an old socket outlives it.

Reconnect:
    After a close the code decides (``_protocol.close_action``): reconnect with
    exponential backoff and full jitter; after the delay named by the preceding
    ``server.shutdown`` (1001); after a longer backoff (4009, 4013); with a fresh
    token from the provider (4004); or stop for good (1000, 1003, 1009, 4500 to
    4999), failing what waits with ``CLOSED``.

After ``session.ready``:
    every room is subscribed again with its ``{seq, epoch}`` (the missed
    publications are replayed into the room's stream in order, or a
    ``room.reset`` event tells the application to refetch); each conversation
    and the inbox seen so far are backfilled with ``message.history`` /
    ``notification.list`` from the last ``seq`` seen, so every ``message.new``
    and ``notification.new`` reaches the application once, in order; the
    presence status set through the client is set again; requests that waited
    for the connection are sent.

Requests:
    A request waits for the connection, is sent, and waits for its reply, all
    within its timeout (``TIMEOUT``). When the socket is lost first, an
    idempotent op (``IDEMPOTENT_OPS``) is sent again on the next one, and any
    other fails with ``DISCONNECTED``. An idempotent op answered ``RATE_LIMITED``
    is sent again after ``retry_after_ms``.

Error handling:
    Every failure reaches the caller as ``RealtimeError``; failures of the
    client's own tasks (a backfill, a resubscribe) are logged and retried on the
    next connection, never raised into ``run``.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import secrets
import ssl
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from realtimed_client import _protocol as proto
from realtimed_client._errors import (
    CLOSED,
    DISCONNECTED,
    INTERNAL,
    OUTBOX_FULL,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    TIMEOUT,
    UNAVAILABLE,
    RealtimeError,
    validation_error,
)
from realtimed_client._feed import Feed
from realtimed_client._protocol import CloseAction, Event

__all__ = ["Client", "ClientOptions", "OutboxItem", "State", "StateChange", "Subscription", "TokenProvider", "open_client"]

log = logging.getLogger("realtimed_client")

TokenProvider = Callable[[], Awaitable[str]]

# A session that stayed up this long resets the backoff: a socket that is
# accepted and then closed at once (4008 again and again) keeps backing off.
_STABLE_AFTER_S: Final = 10.0
# typing.start is refreshed at most this often per conversation: the server ends
# typing 6 s after the last refresh and allows 2 typing ops per second.
_TYPING_REFRESH_S: Final = 3.0
_CLOSE_WAIT_S: Final = 2.0
# Requests the client makes on its own after a reconnect (resubscribes, backfills)
# in flight at once: a burst of hundreds would run into the server's per-socket
# rate limit, and a long run of RATE_LIMITED replies closes the socket (4009).
_RESYNC_CONCURRENCY: Final = 8
_RECEIVE_BYTES: Final = 65_536
_MESSAGE_QUEUE: Final = 64
#: The fields of a device's ``device_info`` (``register_device``).
DEVICE_INFO_FIELDS: Final = ("model", "os", "os_version", "app_version")


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # between two connections, waiting to reconnect
    CLOSED = "closed"  # closed by the application, or stopped for good


@dataclass(frozen=True, slots=True)
class StateChange:
    """A change of ``Client.state``.

    Attributes:
        state: the new state.
        code: with DISCONNECTED and CLOSED, the close code of the socket that
            ended (1006 when the connection failed or was lost without one).
        reason: the close reason, or what went wrong.
        retry_in_s: with DISCONNECTED, the delay before the next attempt.
        error: with CLOSED after a terminal close code, the error that stopped the client.
    """

    state: State
    code: int | None = None
    reason: str = ""
    retry_in_s: float | None = None
    error: RealtimeError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """How the client behaves; every time is in seconds.

    Attributes:
        request_timeout_s: default time a request may take, waiting for the
            connection included.
        connect_timeout_s: time to open the socket and receive ``session.ready``.
        backoff_min_s, backoff_max_s: reconnect delays: full jitter over
            ``min(backoff_max_s, backoff_min_s * 2**attempt)``.
        slow_backoff_min_s: added before a reconnect after 4009 (rate-limit
            abuse) or 4013 (node full).
        heartbeat_s: a socket silent this long gets an app-level ``ping``...
        heartbeat_timeout_s: ...and is taken for dead (closed, then reconnected)
            without an answer within this long.
        token_refresh_margin_s: a token from the provider is renewed before a
            connection when it expires within this long.
        max_frame_bytes: the server's ``gateway.max_frame_bytes``: bigger
            requests are refused before sending (``PAYLOAD_TOO_LARGE``).
        max_message_bytes: the server's ``chat.max_message_bytes``.
        max_incoming_bytes: the largest server frame accepted.
        event_buffer: events a listener or a room subscription may fall behind.
        outbox_max: messages waiting in the outbox, across conversations.
        max_tracked_conversations: conversations whose ``seq`` is followed for
            gap-free delivery (the least recently active are forgotten).
        ssl_context: for ``wss://`` (None: the system's default trust).
    """

    request_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 20.0
    slow_backoff_min_s: float = 10.0
    heartbeat_s: float = 25.0
    heartbeat_timeout_s: float = 10.0
    token_refresh_margin_s: float = 30.0
    max_frame_bytes: int = proto.DEFAULT_MAX_FRAME_BYTES
    max_message_bytes: int = proto.DEFAULT_MAX_MESSAGE_BYTES
    max_incoming_bytes: int = 64 * 1024 * 1024
    event_buffer: int = 1000
    outbox_max: int = 1000
    max_tracked_conversations: int = 50
    ssl_context: ssl.SSLContext | None = None


class _Lost(Exception):
    """The socket broke while sending."""


def _addresses(session: dict[str, Any]) -> list[str]:
    """The rooms ``session.ready`` says the device is in without subscribing."""
    found = session.get("addresses")
    return [room for room in found if isinstance(room, str)] if isinstance(found, list) else []


class _Connection:
    """One open, authenticated socket."""

    def __init__(self, ws: WebSocketConnection, session: dict[str, Any], client: Client) -> None:
        self.ws = ws
        self.session = session
        self.session_id = str(session.get("session_id", "?"))
        self.lost = trio.Event()
        self.last_heard = trio.current_time()
        self.ready_at = trio.current_time()
        self.read_scope = trio.CancelScope()
        self.shutdown_delay_ms: int | None = None
        self.abort_reason: str | None = None
        self.refreshing = False
        self._client = client

    async def send(self, text: str) -> None:
        try:
            await self.ws.send_message(text)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Lost from exc
        self._client.frames_sent += 1

    def abort(self, reason: str) -> None:
        """Take the socket for dead: stop reading; the session closes it without waiting."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self.read_scope.cancel()


class _Pending:
    __slots__ = ("conn", "done", "id", "on_reply", "op", "reply")

    def __init__(self, request_id: int, op: str, on_reply: Callable[[dict[str, Any]], None] | None) -> None:
        self.id = request_id
        self.op = op
        self.on_reply = on_reply
        self.conn: _Connection | None = None
        self.done = trio.Event()
        self.reply: proto.Reply | None = None

    def arm(self, conn: _Connection) -> None:
        self.conn = conn
        self.done = trio.Event()
        self.reply = None


@dataclass(slots=True)
class _Ended:
    code: int = 1006
    reason: str = ""
    ready_for_s: float = 0.0
    shutdown_delay_ms: int | None = None


class OutboxItem:
    """A chat message in the outbox: sent, and sent again after reconnects with
    the same ``client_id``, until the server acknowledged it.

    Attributes:
        conversation_id, client_id: where it goes, and its idempotency key.
        message: the stored message, once acknowledged.
        error: why it was given up (a refusal, or the client closing).
    """

    def __init__(self, conversation_id: str, client_id: str, data: dict[str, Any]) -> None:
        self.conversation_id = conversation_id
        self.client_id = client_id
        self.data = data
        self.message: dict[str, Any] | None = None
        self.error: RealtimeError | None = None
        self._done = trio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> dict[str, Any]:
        """The stored message; raises the ``RealtimeError`` that made the outbox give it up.

        Cancelling the wait leaves the message in the outbox.
        """
        await self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.message is not None
        return self.message

    def _finish(self, message: dict[str, Any] | None, error: RealtimeError | None) -> None:
        if not self._done.is_set():
            self.message = message
            self.error = error
            self._done.set()


class _Room:
    """The client's subscription to one app room, shared by its ``Subscription``s."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.epoch = ""
        self.active = False
        self.feeds: list[Feed[Event]] = []

    def _put(self, event: Event) -> None:
        for feed in self.feeds:
            feed.put(event)

    def reset_event(self) -> Event:
        return Event("room.reset", {"room": self.name, "seq": self.seq, "epoch": self.epoch}, self.name)

    def overflowed(self, feed: Feed[Event]) -> None:
        # What the feed held is now a hole: drop it and say so.
        feed.clear()
        feed.force(self.reset_event())

    def apply_reply(self, data: dict[str, Any], *, since_given: bool, resync: bool) -> None:
        """A ``subscribe`` reply: replay its publications, or announce a reset."""
        seq = data.get("seq")
        epoch = data.get("epoch")
        new_seq = seq if type(seq) is int else 0
        new_epoch = epoch if isinstance(epoch, str) else ""
        recovered = data.get("recovered") is True
        if since_given and recovered:
            publications = data.get("publications")
            for pub in publications if isinstance(publications, list) else ():
                if not isinstance(pub, dict):
                    continue
                pub_seq = pub.get("seq")
                name = pub.get("event")
                if type(pub_seq) is not int or not isinstance(name, str) or pub_seq <= self.seq:
                    continue
                self._put(Event(name, pub.get("data"), self.name, pub_seq, new_epoch, replayed=True))
                self.seq = pub_seq
            self.seq, self.epoch = new_seq, new_epoch
        else:
            self.seq, self.epoch = new_seq, new_epoch
            if since_given or resync:
                # The history does not reach back (or the room keeps none): refetch.
                self._put(self.reset_event())
        self.active = True

    def live(self, event: Event) -> None:
        seq = event.seq
        if seq is None:
            self._put(event)
            return
        epoch = event.epoch or ""
        if epoch == self.epoch and seq <= self.seq:
            return  # already delivered (replayed by a recovery)
        if epoch != self.epoch or seq != self.seq + 1:
            # A new epoch (the history was lost) or a hole: what came between is gone.
            self.seq, self.epoch = seq - 1, epoch
            self._put(self.reset_event())
        # The position moves after the put: a feed that overflows on this event
        # announces the reset as of the event before it.
        self._put(event)
        self.seq, self.epoch = seq, epoch


class Subscription:
    """The events of one app room, in order: ``async for event in subscription``.

    Besides the room's own events (with ``seq`` and ``epoch`` when the room keeps
    history; ``replayed`` for those recovered after a reconnect) it yields
    ``room.reset`` (``data``: ``room``, ``seq``, ``epoch``) whenever events may
    have been missed: the history no longer reached back, the room keeps none,
    or the subscription fell ``event_buffer`` events behind. Then refetch the
    room's state from the application.
    """

    def __init__(self, room: _Room, feed: Feed[Event]) -> None:
        self._room = room
        self._feed = feed

    @property
    def room(self) -> str:
        return self._room.name

    @property
    def position(self) -> tuple[int, str]:
        """``(seq, epoch)`` of the last event delivered into this room; keep it to
        subscribe later with ``since``."""
        return self._room.seq, self._room.epoch

    async def get(self) -> Event:
        """The next event; raises ``trio.EndOfChannel`` when the subscription ended."""
        return await self._feed.get()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self._feed.__anext__()


class _Stream:
    """A durable stream followed by ``seq``: one conversation, or the inbox."""

    __slots__ = ("again", "backfilling", "conversation_id", "held", "key", "last")

    def __init__(self, key: str, conversation_id: str | None, last: int | None) -> None:
        self.key = key
        self.conversation_id = conversation_id
        self.last = last
        self.held: list[Event] = []
        self.backfilling = False
        self.again = False


_INBOX: Final = "inbox"
_TRANSIENT: Final = frozenset({TIMEOUT, DISCONNECTED, UNAVAILABLE, RATE_LIMITED})


class Client(trio.abc.AsyncResource):
    """A realtimed client (see the module docstring).

    Use ``open_client(url, token=...)``, or start ``run`` in a nursery of your own.

    Args:
        url: ``ws://host:port/ws`` (``wss://`` for TLS), or the daemon's
            ``http(s)://host:port`` base.
        token: a JWT, or an async callable returning a fresh one (called before
            connecting when the last token expires soon, after a 4004 close, and
            on ``session.expiring``).
        options: see ``ClientOptions``.

    Attributes:
        state: the connection state.
        session: the data of the last ``session.ready`` (``session_id``,
            ``user_id``, ``heartbeat_s``, ``unread_total``, ...).
        error: why the client stopped, once it has.
        frames_sent: frames written to sockets so far.
    """

    def __init__(self, url: str, *, token: str | TokenProvider, options: ClientOptions | None = None) -> None:
        self.url = proto.ws_url(url)
        if isinstance(token, str):
            if not token:
                raise validation_error("token", "must not be empty")
        elif not callable(token):
            raise validation_error("token", "must be a string or an async callable returning one")
        self.options = options or ClientOptions()
        self.state = State.DISCONNECTED
        self.session: dict[str, Any] | None = None
        self.error: RealtimeError | None = None
        self.frames_sent = 0
        self._token_source = token
        self._token: str | None = token if isinstance(token, str) else None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._conn: _Connection | None = None
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._run_scope: trio.CancelScope | None = None
        self._finished = trio.Event()
        self._started = False
        self._closing = False
        self._listeners: list[tuple[tuple[str, ...], Feed[Event]]] = []
        self._state_feeds: list[Feed[StateChange]] = []
        self._rooms: dict[str, _Room] = {}
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._outboxes: dict[str, deque[OutboxItem]] = {}
        self._outbox_count = 0
        self._outbox_empty = trio.Event()
        self._outbox_empty.set()
        self._typing: dict[str, float] = {}
        self._presence: dict[str, Any] | None = None
        self._http: httpx.AsyncClient | None = None
        self._resync_limiter = trio.CapacityLimiter(_RESYNC_CONCURRENCY)

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Client] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the client connected until ``aclose`` or a terminal close code.

        Ready (``task_status.started``) at once: requests made before the first
        connection wait for it.
        """
        if self._started:
            raise RuntimeError("Client.run may only be started once")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                with trio.CancelScope() as scope:
                    self._run_scope = scope
                    task_status.started(self)
                    if not self._closing:
                        await self._connect_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._stop(RealtimeError(CLOSED, "the client is closed"), terminal=False)
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_WAIT_S):
                if self._http is not None:
                    await self._http.aclose()
            self._finished.set()

    async def aclose(self) -> None:
        """Close the socket (code 1000) and stop; what still waits fails with ``CLOSED``. Idempotent."""
        self._closing = True
        conn = self._conn
        if conn is not None:
            # Stop reading but keep trio-websocket's reader: the close handshake needs it.
            conn.read_scope.cancel()
        elif self._run_scope is not None:
            self._run_scope.cancel()
        if self._started:
            await self._finished.wait()
        else:
            self._stop(RealtimeError(CLOSED, "the client is closed"), terminal=False)
            await trio.lowlevel.checkpoint()

    async def _connect_loop(self) -> None:
        attempt = 0
        delay = 0.0
        refresh = False
        while not self._closing:
            if delay > 0:
                await trio.sleep(delay)
            self._set_state(State.CONNECTING)
            try:
                token = await self._token_for_connect(force=refresh)
            except Exception as exc:
                log.warning("the token provider failed: %r", exc)
                ended = _Ended(reason=f"token provider failed: {exc!r}")
            else:
                refresh = False
                ended = await self._session(token)
                if self._closing:
                    return
            if ended.ready_for_s >= _STABLE_AFTER_S:
                attempt = 0
            opts = self.options
            action = proto.close_action(ended.code)
            if action is CloseAction.STOP:
                error = RealtimeError(
                    CLOSED,
                    f"the server closed the socket with {ended.code} ({ended.reason or proto.CLOSE_NAMES.get(ended.code, 'closed')})",
                    close_code=ended.code,
                )
                self._stop(error, terminal=True, code=ended.code, reason=ended.reason)
                return
            if action is CloseAction.REFRESH_TOKEN:
                if isinstance(self._token_source, str):
                    error = RealtimeError(
                        CLOSED, "the token expired and no token provider was given to renew it", close_code=ended.code
                    )
                    self._stop(error, terminal=True, code=ended.code, reason=ended.reason)
                    return
                refresh = True
                delay = proto.backoff_delay(0, min_s=opts.backoff_min_s, max_s=opts.backoff_max_s)
            elif ended.shutdown_delay_ms is not None and action in (CloseAction.AFTER_SHUTDOWN, CloseAction.RECONNECT):
                # The server said when to come back (a drain, whatever the close looked like).
                delay = ended.shutdown_delay_ms / 1000
            elif action is CloseAction.SLOW_RECONNECT:
                delay = opts.slow_backoff_min_s + proto.backoff_delay(
                    attempt, min_s=opts.backoff_min_s, max_s=opts.backoff_max_s
                )
            else:
                delay = proto.backoff_delay(attempt, min_s=opts.backoff_min_s, max_s=opts.backoff_max_s)
            attempt += 1
            log.info("disconnected (%d %s); reconnecting in %.2f s", ended.code, ended.reason, delay)
            self._set_state(State.DISCONNECTED, code=ended.code, reason=ended.reason, retry_in_s=delay)

    async def _session(self, token: str) -> _Ended:
        """One socket, from connecting to closed."""
        ended = _Ended()
        parts = urllib.parse.urlsplit(self.url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if port in (80, 443) else f"{host}:{port}"
        if ":" in host:
            host_header = f"[{host}]" if port in (80, 443) else f"[{host}]:{port}"
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        try:
            with trio.fail_after(self.options.connect_timeout_s):
                if secure:
                    context = self.options.ssl_context or ssl.create_default_context()
                    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context, https_compatible=True)
                else:
                    stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            ended.reason = f"cannot connect: {exc!r}" if str(exc) == "" else f"cannot connect: {exc}"
            return ended
        try:
            await self._serve_stream(stream, host_header, resource, token, ended)
        except* ConnectionRejected as group:
            status = getattr(group.exceptions[0], "status_code", "?")
            ended.reason = f"the upgrade was refused with HTTP {status}"
        except* (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            ended.reason = f"connection failed: {group.exceptions[0]!r}"
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return ended

    async def _serve_stream(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        host_header: str,
        resource: str,
        token: str,
        ended: _Ended,
    ) -> None:
        opts = self.options
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection | None = None
            conn: _Connection | None = None
            served = False
            try:
                with trio.fail_after(opts.connect_timeout_s):
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        host_header,
                        resource,
                        extra_headers=[(b"Authorization", b"Bearer " + token.encode())],
                        message_queue_size=_MESSAGE_QUEUE,
                        max_message_size=opts.max_incoming_bytes,
                        receive_buffer_size=_RECEIVE_BYTES,
                    )
                    ready = await self._await_ready(ws)
                conn = _Connection(ws, ready, self)
                if self._closing:
                    return
                await self._serve(conn, nursery, ended)
                served = True
            except trio.TooSlowError:
                ended.reason = "timed out connecting"
            except ConnectionClosed as exc:
                ended.code, ended.reason = _close_of(exc)
            finally:
                if conn is not None:
                    self._lose(conn)
                    ended.ready_for_s = trio.current_time() - conn.ready_at
                    ended.shutdown_delay_ms = conn.shutdown_delay_ms
                    if conn.abort_reason is not None:
                        ended.code, ended.reason = 1006, conn.abort_reason
                if ws is not None:
                    # A socket taken for dead, or a cancellation from outside (the
                    # reader is cancelled too): close without waiting for the peer.
                    graceful = served and conn is not None and conn.abort_reason is None
                    wait = _CLOSE_WAIT_S if graceful else 0.0
                    with trio.CancelScope(shield=True), trio.move_on_after(wait):
                        await ws.aclose()
                nursery.cancel_scope.cancel()

    async def _await_ready(self, ws: WebSocketConnection) -> dict[str, Any]:
        while True:
            frame = proto.parse_frame(await ws.get_message())
            if isinstance(frame, Event) and frame.name == "session.ready" and isinstance(frame.data, dict):
                return frame.data

    async def _serve(self, conn: _Connection, nursery: trio.Nursery, ended: _Ended) -> None:
        self.session = conn.session
        self._conn = conn
        log.info("session %s: connected as %s", conn.session_id, conn.session.get("user_id"))
        self._set_state(State.CONNECTED)
        self._emit(Event("session.ready", conn.session))
        nursery.start_soon(self._heartbeat, conn)
        nursery.start_soon(self._resync, conn)
        with conn.read_scope:
            try:
                while True:
                    text = await conn.ws.get_message()
                    conn.last_heard = trio.current_time()
                    frame = proto.parse_frame(text)
                    if frame is None:
                        log.debug("session %s: ignored a frame that is neither a reply nor an event", conn.session_id)
                        continue
                    self._dispatch(conn, frame, nursery)
            except ConnectionClosed as exc:
                ended.code, ended.reason = _close_of(exc)

    def _lose(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.lost.set()
        for pending in list(self._pending.values()):
            if pending.conn is conn:
                pending.done.set()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set_state(
        self,
        state: State,
        *,
        code: int | None = None,
        reason: str = "",
        retry_in_s: float | None = None,
        error: RealtimeError | None = None,
    ) -> None:
        if self.state is State.CLOSED:
            return
        self.state = state
        change = StateChange(state, code, reason, retry_in_s, error)
        for feed in self._state_feeds:
            feed.put(change)
        self._wake()

    def _stop(self, error: RealtimeError, *, terminal: bool, code: int | None = None, reason: str = "") -> None:
        """Stop for good: fail whatever waits, end every stream."""
        if self.error is None:
            self.error = error
        if terminal:
            log.warning("stopped: %s", error.message)
        self._set_state(State.CLOSED, code=code, reason=reason, error=error if terminal else None)
        for pending in list(self._pending.values()):
            pending.done.set()
        for queue in self._outboxes.values():
            for item in queue:
                item._finish(None, self.error)
        self._outboxes.clear()
        self._outbox_count = 0
        self._outbox_empty.set()
        end = self.error if terminal else None
        for _, feed in self._listeners:
            feed.close(end)
        for room in self._rooms.values():
            for feed in room.feeds:
                feed.close(end)
        for state_feed in self._state_feeds:
            state_feed.close()
        self._wake()

    # -- tokens --------------------------------------------------------------------------------

    async def _token_for_connect(self, *, force: bool) -> str:
        if isinstance(self._token_source, str):
            return self._token_source
        token = self._token
        if not force and token is not None:
            expiry = proto.token_expiry(token)
            if expiry is None or expiry - time.time() > self.options.token_refresh_margin_s:
                return token
        return await self._fetch_token()

    async def _fetch_token(self) -> str:
        source = self._token_source
        assert not isinstance(source, str)
        with trio.fail_after(self.options.request_timeout_s):
            token = await source()
        if not isinstance(token, str) or not token:
            raise RealtimeError(INTERNAL, "the token provider returned no token")
        self._token = token
        return token

    async def _refresh_on_open_socket(self, conn: _Connection) -> None:
        """``session.expiring``: a fresh token, sent with ``auth`` on the open socket."""
        if isinstance(self._token_source, str) or conn.refreshing:
            return
        conn.refreshing = True
        try:
            token = await self._fetch_token()
            reply = await self._call("auth", {"token": token}, idempotent=False)
            log.info("session %s: token renewed, now expires at %s", conn.session_id, reply.get("expires_at"))
        except RealtimeError as exc:
            log.warning("session %s: token renewal refused: %s", conn.session_id, exc)
        except Exception as exc:
            # The socket closes with 4004 at expiry, and the reconnect asks again.
            log.warning("session %s: the token provider failed: %r", conn.session_id, exc)
        finally:
            conn.refreshing = False

    # -- reading -------------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection, frame: proto.Reply | Event, nursery: trio.Nursery) -> None:
        if isinstance(frame, proto.Reply):
            pending = self._pending.get(frame.id) if type(frame.id) is int else None
            if pending is None or pending.conn is not conn or pending.done.is_set():
                if not frame.ok and frame.error is not None:
                    log.warning("session %s: error without a waiting request: %s", conn.session_id, frame.error)
                return
            pending.reply = frame
            if frame.ok and pending.on_reply is not None:
                try:
                    pending.on_reply(frame.data)
                except Exception:
                    log.exception("session %s: handling the reply to %s failed", conn.session_id, pending.op)
            pending.done.set()
            return
        event = frame
        name = event.name
        if name == "session.expiring":
            nursery.start_soon(self._refresh_on_open_socket, conn)
        elif name == "server.shutdown":
            delay = event.data.get("reconnect_after_ms") if isinstance(event.data, dict) else None
            if type(delay) is int and delay >= 0:
                conn.shutdown_delay_ms = delay
        room = event.room
        if room is not None and not room.startswith(proto.CONVERSATION_ROOM_PREFIX):
            state = self._rooms.get(room)
            if state is not None and state.active:
                state.live(event)
            elif state is None and room in _addresses(conn.session):
                # device:<session_id> or a claim room: this device is in it without
                # subscribing, so its events go to the listeners
                self._emit(event)
            return
        if event.seq is not None:
            if name == "message.new" and room is not None:
                self._sequence(self._stream(room, room[len(proto.CONVERSATION_ROOM_PREFIX) :]), event)
                return
            if name == "notification.new":
                self._sequence(self._stream(_INBOX, None), event)
                return
        self._emit(event)

    def _emit(self, event: Event) -> None:
        for patterns, feed in list(self._listeners):
            if proto.matches(patterns, event.name):
                feed.put(event)

    # -- durable streams: conversations and the inbox -------------------------------------------

    def _stream(self, key: str, conversation_id: str | None, *, last: int | None = None) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(key, conversation_id, last)
            tracked = len(self._streams) - (1 if _INBOX in self._streams else 0)
            if tracked > self.options.max_tracked_conversations:
                for old_key, old in self._streams.items():
                    if old_key != _INBOX and old is not stream and not old.backfilling:
                        del self._streams[old_key]
                        break
        else:
            self._streams.move_to_end(key)
        return stream

    def _sequence(self, stream: _Stream, event: Event) -> None:
        seq = event.seq
        assert seq is not None
        if stream.last is None and not stream.backfilling:
            stream.last = seq
            self._emit(event)
            return
        if stream.last is not None and seq <= stream.last:
            return  # delivered already (live, or by a backfill)
        if stream.last is not None and seq == stream.last + 1 and not stream.backfilling:
            stream.last = seq
            self._emit(event)
            return
        stream.held.append(event)
        if not stream.backfilling:
            # A skipped seq; while a backfill runs, what it holds follows it.
            self._backfill(stream)

    def _backfill(self, stream: _Stream) -> None:
        if stream.last is None or self._nursery is None:
            return
        if stream.backfilling:
            stream.again = True
            return
        stream.backfilling = True
        self._nursery.start_soon(self._run_backfill, stream)

    async def _run_backfill(self, stream: _Stream) -> None:
        attempt = 0
        release = True
        try:
            while True:
                stream.again = False
                try:
                    await self._fill(stream)
                except RealtimeError as exc:
                    if exc.code == CLOSED:
                        release = False
                        return
                    if exc.code not in _TRANSIENT:
                        log.warning("backfill of %s refused: %s", stream.key, exc)
                        return
                    if len(stream.held) >= self.options.event_buffer:
                        log.warning("backfill of %s given up with %d events held: %s", stream.key, len(stream.held), exc)
                        return
                    # The live events that came meanwhile wait for it.
                    log.info("backfill of %s interrupted (%s): trying again", stream.key, exc)
                    await trio.sleep(
                        proto.backoff_delay(attempt, min_s=self.options.backoff_min_s, max_s=self.options.backoff_max_s)
                    )
                    attempt += 1
                    continue
                if not stream.again:
                    return
        finally:
            stream.backfilling = False
            if release:
                self._release_held(stream)

    def _release_held(self, stream: _Stream) -> None:
        """Whatever arrived live during a backfill follows it, in order. A seq the
        server no longer has (a deleted notification) is a hole nothing can fill."""
        held, stream.held = sorted(stream.held, key=lambda e: e.seq or 0), []
        for event in held:
            assert event.seq is not None
            if stream.last is None or event.seq > stream.last:
                stream.last = event.seq
                self._emit(event)

    async def _fill(self, stream: _Stream) -> None:
        while True:
            assert stream.last is not None
            if stream.conversation_id is not None:
                async with self._resync_limiter:
                    reply = await self._call(
                        "message.history",
                        {
                            "conversation_id": stream.conversation_id,
                            "after_seq": stream.last,
                            "limit": proto.MESSAGE_HISTORY_MAX,
                        },
                    )
                records = reply.get("messages")
                name, field, more = "message.new", "message", reply.get("has_more") is True
            else:
                async with self._resync_limiter:
                    reply = await self._call(
                        "notification.list", {"after_seq": stream.last, "limit": proto.NOTIFICATION_LIST_MAX}
                    )
                records = reply.get("notifications")
                name, field, more = "notification.new", "notification", reply.get("next_cursor") is not None
            advanced = False
            for record in records if isinstance(records, list) else ():
                seq = record.get("seq") if isinstance(record, dict) else None
                if type(seq) is not int or seq <= stream.last:
                    continue
                room = None if stream.conversation_id is None else stream.key
                self._emit(Event(name, {field: record}, room, seq, replayed=True))
                stream.last = seq
                advanced = True
            if not more or not advanced:
                return

    def track_conversation(self, conversation_id: str, *, after_seq: int) -> None:
        """Follow a conversation from ``after_seq`` (the last message the application
        has): messages after it are fetched, and every later ``message.new`` is
        delivered once, in order, across reconnects.

        Without this, a conversation is followed from the first ``message.new`` seen.
        """
        cid = proto.check_id(conversation_id, "conversation_id")
        seq = proto.check_seq(after_seq, "after_seq")
        stream = self._stream(proto.CONVERSATION_ROOM_PREFIX + cid, cid, last=seq)
        if stream.last is None or stream.last < seq:
            stream.last = seq
        if self._conn is not None:
            self._backfill(stream)

    def track_inbox(self, *, after_seq: int) -> None:
        """Follow the notification inbox from ``after_seq`` (as ``track_conversation``)."""
        seq = proto.check_seq(after_seq, "after_seq")
        stream = self._stream(_INBOX, None, last=seq)
        if stream.last is None or stream.last < seq:
            stream.last = seq
        if self._conn is not None:
            self._backfill(stream)

    # -- after session.ready -------------------------------------------------------------------

    async def _resync(self, conn: _Connection) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for room in list(self._rooms.values()):
                    if room.active:
                        nursery.start_soon(self._resubscribe, room)
                if self._presence is not None:
                    nursery.start_soon(self._set_presence_again, dict(self._presence))
            for stream in list(self._streams.values()):
                self._backfill(stream)
        except Exception:
            log.exception("session %s: resync failed", conn.session_id)

    async def _resubscribe(self, room: _Room) -> None:
        since = (room.seq, room.epoch) if room.epoch else None
        try:
            async with self._resync_limiter:
                await self._call(
                    "subscribe",
                    proto.subscribe_data(room.name, since),
                    on_reply=functools.partial(room.apply_reply, since_given=since is not None, resync=True),
                )
        except RealtimeError as exc:
            if exc.code in (DISCONNECTED, TIMEOUT, CLOSED):
                return  # the next connection tries again
            log.warning("room %s: subscribing again was refused: %s", room.name, exc)
            if self._rooms.get(room.name) is room:
                del self._rooms[room.name]
            for feed in room.feeds:
                feed.close(exc)

    async def _set_presence_again(self, data: dict[str, Any]) -> None:
        try:
            await self._call("presence.set", data)
        except RealtimeError as exc:
            log.info("presence not set again: %s", exc)

    async def _heartbeat(self, conn: _Connection) -> None:
        """Take a silent socket for dead: after ``heartbeat_s`` without a frame, a
        ``ping`` must be answered within ``heartbeat_timeout_s``."""
        opts = self.options
        while not conn.lost.is_set():
            idle = trio.current_time() - conn.last_heard
            if idle < opts.heartbeat_s:
                await trio.sleep(opts.heartbeat_s - idle)
                continue
            request_id = next(self._ids)
            pending = _Pending(request_id, "ping", None)
            pending.arm(conn)
            self._pending[request_id] = pending
            try:
                with trio.move_on_after(opts.heartbeat_timeout_s) as timeout:
                    await conn.send(proto.encode_request(request_id, "ping", {}))
                    await pending.done.wait()
            except _Lost:
                return
            finally:
                self._pending.pop(request_id, None)
            if timeout.cancelled_caught and pending.reply is None:
                log.warning("session %s: no answer to a ping in %.1f s: reconnecting", conn.session_id, opts.heartbeat_timeout_s)
                conn.abort("no answer to the client's heartbeat")
                return

    # -- requests ------------------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        while True:
            if self.state is State.CLOSED:
                assert self.error is not None
                raise _copy(self.error)
            conn = self._conn
            if conn is not None and not conn.lost.is_set():
                return conn
            await self._changed.wait()

    def _encode(self, op: str, data: dict[str, Any], request_id: int | None) -> str:
        try:
            text = proto.encode_request(request_id, op, data)
        except (TypeError, ValueError) as exc:
            raise validation_error("data", f"must be JSON-serializable ({exc})") from None
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise validation_error("data", "must be valid Unicode text (a lone surrogate cannot be sent)") from None
        if size > self.options.max_frame_bytes:
            raise RealtimeError(
                PAYLOAD_TOO_LARGE, f"the request is over {self.options.max_frame_bytes} bytes", "data"
            )
        return text

    async def _call(
        self,
        op: str,
        data: dict[str, Any],
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        replay = op in proto.IDEMPOTENT_OPS if idempotent is None else idempotent
        request_id = next(self._ids)
        text = self._encode(op, data, request_id)
        timeout_s = self.options.request_timeout_s if timeout is None else timeout
        pending = _Pending(request_id, op, on_reply)
        self._pending[request_id] = pending
        try:
            with trio.move_on_after(timeout_s):
                while True:
                    conn = await self._connection()
                    pending.arm(conn)
                    try:
                        await conn.send(text)
                    except _Lost:
                        await conn.lost.wait()
                    else:
                        await pending.done.wait()
                    reply = pending.reply
                    if reply is None:
                        if self.state is State.CLOSED:
                            assert self.error is not None
                            raise _copy(self.error)
                        if replay:
                            continue
                        raise RealtimeError(DISCONNECTED, f"the connection was lost before {op} was answered")
                    if reply.ok:
                        return reply.data
                    error = reply.error
                    assert error is not None
                    if error.code == RATE_LIMITED and replay:
                        await trio.sleep(max(1, error.retry_after_ms or 1000) / 1000)
                        continue
                    raise error
            raise RealtimeError(TIMEOUT, f"no reply to {op} within {timeout_s:g} s")
        finally:
            self._pending.pop(request_id, None)

    async def _send_oneway(self, op: str, data: dict[str, Any]) -> bool:
        """A fire-and-forget frame (no ``id``, no reply); dropped while disconnected."""
        text = self._encode(op, data, None)
        conn = self._conn
        if conn is None:
            return False
        try:
            await conn.send(text)
        except _Lost:
            return False
        return True

    async def wait_connected(self) -> dict[str, Any]:
        """Wait for an open socket; returns its ``session.ready`` data (raises ``CLOSED`` once stopped)."""
        return (await self._connection()).session

    async def request(self, op: str, data: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """Any op by name (for ops this SDK has no method for); returns the reply's ``data``.

        ``subscribe``, ``unsubscribe`` and ``auth`` are the client's own: use ``subscribe()``.
        """
        name = proto.check_op(op)
        if name in ("subscribe", "unsubscribe", "auth"):
            raise validation_error("op", f"{name} is managed by the client: use Client.subscribe")
        return await self._call(name, proto.check_data(data), timeout=timeout)

    # -- listening -----------------------------------------------------------------------------

    @asynccontextmanager
    async def listen(self, *names: str) -> AsyncIterator[Feed[Event]]:
        """Events that are not app-room events: chat, receipts, typing, presence,
        notifications, user events from the server API, ``session.*``, and the
        events of this device's addresses (``session["addresses"]``:
        ``device:<session_id>`` and the rooms of the token's claims, such as
        ``role:admin``), which carry their address as ``room``.

        ``names`` are event names, or prefixes ending in ``.`` (``"message."``);
        none means every event. Iterate the yielded stream with ``async for``.
        A listener more than ``event_buffer`` events behind ends with
        ``SLOW_CONSUMER``.
        """
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise validation_error(f"names[{i}]", "must be a non-empty string")
        feed: Feed[Event] = Feed(self.options.event_buffer)
        if self.state is State.CLOSED:
            feed.close()
        entry = (tuple(names), feed)
        self._listeners.append(entry)
        try:
            yield feed
        finally:
            self._listeners.remove(entry)
            feed.close()

    @asynccontextmanager
    async def state_changes(self) -> AsyncIterator[Feed[StateChange]]:
        """Every change of ``state`` from now on (the oldest are dropped past 1,000)."""
        feed: Feed[StateChange] = Feed(1000, on_overflow=_drop_oldest)
        if self.state is State.CLOSED:
            feed.close()
        self._state_feeds.append(feed)
        try:
            yield feed
        finally:
            self._state_feeds.remove(feed)
            feed.close()

    @asynccontextmanager
    async def subscribe(self, room: str, *, since: tuple[int, str] | None = None) -> AsyncIterator[Subscription]:
        """Subscribe to an app room for the duration of the block.

        With ``since`` (a ``Subscription.position`` kept from before), the
        publications missed since then come first, or a ``room.reset``. The
        subscription survives reconnects (see ``Subscription``). Several
        subscriptions to one room share the server's.
        """
        data = proto.subscribe_data(room, since)
        state = self._rooms.get(room)
        if state is not None and since is not None:
            raise validation_error("since", "the room is subscribed already; since applies to the first subscription")
        if self.state is State.CLOSED:
            assert self.error is not None
            raise _copy(self.error)
        first = state is None
        if state is None:
            state = self._rooms[room] = _Room(room)
        feed: Feed[Event] = Feed(self.options.event_buffer, on_overflow=state.overflowed)
        state.feeds.append(feed)
        try:
            if first:
                await self._call(
                    "subscribe",
                    data,
                    on_reply=functools.partial(state.apply_reply, since_given=since is not None, resync=False),
                )
        except BaseException as exc:
            state.feeds.remove(feed)
            if self._rooms.get(room) is state:
                del self._rooms[room]
            for other in state.feeds:
                other.close(exc if isinstance(exc, RealtimeError) else None)
            raise
        try:
            yield Subscription(state, feed)
        finally:
            feed.close()
            if feed in state.feeds:
                state.feeds.remove(feed)
            if not state.feeds and self._rooms.get(room) is state:
                del self._rooms[room]
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_WAIT_S):
                    await self._send_oneway("unsubscribe", {"room": room})

    # -- activity feeds ------------------------------------------------------------------------

    def subscribe_feed(self, feed: str, *, since: tuple[int, str] | None = None) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to an activity feed (``user:alice``, ``team:t1``): its room ``feed:<name>``.

        Each activity logged to the feed comes as a ``feed.activity`` event whose
        ``data["activity"]`` is the activity and ``seq`` its place in the feed. After
        a reconnect (or with ``since``, a ``Subscription.position`` kept from before)
        the missed ones come first, from the server's store, or a ``room.reset`` when
        they cannot (then read the feed with ``feed_activities``).
        """
        return self.subscribe(proto.feed_room(feed), since=since)

    async def feed_activities(
        self,
        feed: str,
        *,
        actor: str | None = None,
        verb: str | None = None,
        object: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        q: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``{activities, next_cursor}``: a page of a feed the user may subscribe to, newest
        first, filtered (``since`` inclusive, ``until`` exclusive, ``q``: every word must appear)."""
        data = proto.feed_activities_data(
            feed, actor=actor, verb=verb, object=object, since=since, until=until, q=q, cursor=cursor, limit=limit
        )
        return await self._call("feed.activities", data)

    # -- rooms ---------------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        """``{"server_time"}``."""
        return await self._call("ping", {})

    async def room_presence(self, room: str) -> list[dict[str, Any]]:
        """Who is in a subscribed room whose namespace keeps presence: ``[{user_id, sessions}]``."""
        reply = await self._call("room.presence", {"room": proto.check_room(room)})
        users = reply.get("users")
        return users if isinstance(users, list) else []

    async def publish(self, room: str, event: str, data: Any = None) -> dict[str, Any]:
        """Publish to a room whose namespace lets clients publish; ``{seq, epoch}`` when it keeps history."""
        return await self._call("publish", proto.publish_data(room, event, data))

    # -- conversations ---------------------------------------------------------------------------

    async def open_conversation(self, user_id: str) -> dict[str, Any]:
        """The 1:1 conversation with a user (found or created)."""
        reply = await self._call("conversation.open", {"user_id": proto.check_user_id(user_id)})
        return _record(reply, "conversation")

    async def create_conversation(self, member_ids: Iterable[str], *, title: str | None = None) -> dict[str, Any]:
        """A group conversation."""
        reply = await self._call("conversation.create", proto.conversation_create_data(member_ids, title))
        return _record(reply, "conversation")

    async def list_conversations(self, *, cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """``{conversations, next_cursor, unread_total}``, newest activity first."""
        return await self._call("conversation.list", proto.conversation_list_data(cursor, limit))

    async def mute_conversation(self, conversation_id: str, muted: bool = True) -> None:
        data = {"conversation_id": proto.check_id(conversation_id, "conversation_id"), "muted": proto.check_bool(muted, "muted")}
        await self._call("conversation.mute", data)

    async def leave_conversation(self, conversation_id: str) -> None:
        await self._call("conversation.leave", {"conversation_id": proto.check_id(conversation_id, "conversation_id")})

    # -- messages ------------------------------------------------------------------------------

    def queue_message(
        self,
        conversation_id: str,
        body: str | None = None,
        *,
        type: str | None = None,
        media_url: str | None = None,
        reply_to: str | None = None,
        client_id: str | None = None,
    ) -> OutboxItem:
        """Put a message in the outbox and return at once.

        Messages of one conversation are sent one at a time, in the order queued,
        each with its ``client_id`` (generated unless given) until acknowledged,
        across reconnects; the server stores each once. ``await item.wait()``
        gives the stored message.
        """
        if self.state is State.CLOSED:
            assert self.error is not None
            raise _copy(self.error)
        data = proto.message_send_data(
            conversation_id,
            client_id if client_id is not None else "c_" + secrets.token_urlsafe(18),
            body,
            type=type,
            media_url=media_url,
            reply_to=reply_to,
            max_message_bytes=self.options.max_message_bytes,
        )
        self._encode("message.send", data, 0)
        if self._outbox_count >= self.options.outbox_max:
            raise RealtimeError(OUTBOX_FULL, f"{self._outbox_count} messages already wait in the outbox")
        nursery = self._nursery
        if nursery is None:
            raise RealtimeError(CLOSED, "the client is not running")
        cid = data["conversation_id"]
        item = OutboxItem(cid, data["client_id"], data)
        queue = self._outboxes.setdefault(cid, deque())
        queue.append(item)
        self._outbox_count += 1
        self._outbox_empty = trio.Event()
        self._typing.pop(cid, None)  # sending ends typing on the server
        if len(queue) == 1:
            nursery.start_soon(self._outbox_worker, cid, queue)
        return item

    async def send_message(
        self,
        conversation_id: str,
        body: str | None = None,
        *,
        type: str | None = None,
        media_url: str | None = None,
        reply_to: str | None = None,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """Send through the outbox and wait until stored; returns the message."""
        item = self.queue_message(
            conversation_id, body, type=type, media_url=media_url, reply_to=reply_to, client_id=client_id
        )
        return await item.wait()

    async def outbox_flushed(self) -> None:
        """Wait until every queued message was acknowledged or given up."""
        await self._outbox_empty.wait()

    async def _outbox_worker(self, conversation_id: str, queue: deque[OutboxItem]) -> None:
        opts = self.options
        attempt = 0
        while queue and self._outboxes.get(conversation_id) is queue:
            item = queue[0]
            try:
                reply = await self._call("message.send", item.data)
            except RealtimeError as exc:
                if exc.code == CLOSED:
                    return
                if exc.code in (TIMEOUT, DISCONNECTED, UNAVAILABLE, RATE_LIMITED):
                    # Sent again with the same client_id: stored once whatever happened.
                    delay = (exc.retry_after_ms or 0) / 1000 or proto.backoff_delay(
                        attempt, min_s=opts.backoff_min_s, max_s=opts.backoff_max_s
                    )
                    attempt += 1
                    await trio.sleep(delay)
                    continue
                item._finish(None, exc)
            else:
                item._finish(_record(reply, "message"), None)
            attempt = 0
            queue.popleft()
            self._outbox_count -= 1
        if self._outboxes.get(conversation_id) is queue and not queue:
            del self._outboxes[conversation_id]
        if self._outbox_count == 0:
            self._outbox_empty.set()

    async def edit_message(self, message_id: str, body: str) -> dict[str, Any]:
        reply = await self._call(
            "message.edit", proto.message_edit_data(message_id, body, max_message_bytes=self.options.max_message_bytes)
        )
        return _record(reply, "message")

    async def delete_message(self, message_id: str) -> None:
        await self._call("message.delete", {"message_id": proto.check_id(message_id, "message_id")})

    async def message_history(
        self,
        conversation_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        changed_since: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``{messages (ascending seq), has_more, version}``."""
        data = proto.message_history_data(
            conversation_id, before_seq=before_seq, after_seq=after_seq, changed_since=changed_since, limit=limit
        )
        return await self._call("message.history", data)

    async def mark_read(self, conversation_id: str, seq: int) -> int:
        """Move the read cursor (never backwards); returns the cursor."""
        data = {"conversation_id": proto.check_id(conversation_id, "conversation_id"), "seq": proto.check_seq(seq, "seq")}
        reply = await self._call("message.read", data)
        read_seq = reply.get("read_seq")
        return read_seq if type(read_seq) is int else 0

    async def start_typing(self, conversation_id: str) -> None:
        """Say the user is typing; call on every keystroke: sent at most every 3 s
        (the server ends typing 6 s after the last one)."""
        cid = proto.check_id(conversation_id, "conversation_id")
        now = trio.current_time()
        last = self._typing.get(cid)
        if last is not None and now - last < _TYPING_REFRESH_S:
            return
        if await self._send_oneway("typing.start", {"conversation_id": cid}):
            self._typing[cid] = now

    async def stop_typing(self, conversation_id: str) -> None:
        cid = proto.check_id(conversation_id, "conversation_id")
        if self._typing.pop(cid, None) is not None:
            await self._send_oneway("typing.stop", {"conversation_id": cid})

    async def block_user(self, user_id: str) -> None:
        await self._call("user.block", {"user_id": proto.check_user_id(user_id)})

    async def unblock_user(self, user_id: str) -> None:
        await self._call("user.unblock", {"user_id": proto.check_user_id(user_id)})

    # -- presence --------------------------------------------------------------------------------

    async def set_presence(self, status: str, *, message: str | None = None) -> None:
        """``online``, ``away``, ``busy`` or ``invisible`` (shown as offline); set again after reconnects."""
        data = proto.presence_set_data(status, message)
        self._presence = data
        await self._call("presence.set", data)

    async def query_presence(self, user_ids: Iterable[str]) -> dict[str, Any]:
        """``{user_id: {status, message, last_seen}}`` for contacts among ``user_ids``."""
        reply = await self._call("presence.query", proto.presence_query_data(user_ids))
        presences = reply.get("presences")
        return presences if isinstance(presences, dict) else {}

    # -- notifications ---------------------------------------------------------------------------

    async def list_notifications(
        self,
        *,
        cursor: str | None = None,
        after_seq: int | None = None,
        unread_only: bool | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``{notifications, next_cursor}``: newest first, or ascending after ``after_seq``."""
        data = proto.notification_list_data(cursor=cursor, after_seq=after_seq, unread_only=unread_only, limit=limit)
        return await self._call("notification.list", data)

    async def read_notifications(self, ids: Iterable[str]) -> int:
        """Mark notifications read; returns the unread count."""
        return _count(await self._call("notification.read", proto.notification_ids_data(ids)))

    async def read_all_notifications(self) -> int:
        return _count(await self._call("notification.read_all", {}))

    async def delete_notifications(self, ids: Iterable[str]) -> int:
        return _count(await self._call("notification.delete", proto.notification_ids_data(ids)))

    # -- client REST (preferences, devices) ------------------------------------------------------

    async def rest(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A call to the client REST door (``/api/v1`` + ``path``) with the user's token."""
        if not path.startswith("/"):
            raise validation_error("path", "must start with /")
        if self._http is None:
            verify: ssl.SSLContext | bool = self.options.ssl_context or True
            self._http = httpx.AsyncClient(
                base_url=proto.http_base(self.url), timeout=self.options.request_timeout_s, verify=verify
            )
        for attempt in range(2):
            token = self._token
            if token is None or attempt == 1:
                if isinstance(self._token_source, str):
                    token = self._token_source
                else:
                    try:
                        token = await self._fetch_token()
                    except RealtimeError:
                        raise
                    except Exception as exc:
                        raise RealtimeError(UNAVAILABLE, f"the token provider failed: {exc!r}") from exc
            try:
                response = await self._http.request(
                    method, "/api/v1" + path, json=json_body, params=params, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.TimeoutException as exc:
                raise RealtimeError(TIMEOUT, f"no answer to {method} {path}") from exc
            except httpx.HTTPError as exc:
                raise RealtimeError(DISCONNECTED, f"{method} {path} failed: {exc}") from exc
            if response.status_code == 401 and attempt == 0 and not isinstance(self._token_source, str):
                continue
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.is_success:
                return body if isinstance(body, dict) else {}
            error = body.get("error") if isinstance(body, dict) else None
            raise RealtimeError.from_wire(error or {"code": INTERNAL, "message": f"HTTP {response.status_code}"})
        raise AssertionError("unreachable")

    async def get_preferences(self) -> dict[str, Any]:
        """``{types, quiet_hours, time_zone}``: each entry of ``types`` has the
        ``type``, one boolean per delivery channel of the server named after it
        (``in_app``, ``push``, and any other, such as ``email``) and ``channels``,
        the channels the type uses."""
        return await self.rest("GET", "/notifications/preferences")

    async def set_preferences(self, preferences: dict[str, Any]) -> dict[str, Any]:
        """Change some preferences; returns them all.

        ``types`` entries name a type and the channels to switch, each True,
        False or None (unchanged): ``{"type": "mention", "push": False,
        "email": True}``; channels not named keep their setting. Also
        ``quiet_hours`` (``{start, end}`` as ``HH:MM``, or None) and
        ``time_zone``. A channel value that is not a boolean or None is refused
        before sending (``VALIDATION_ERROR`` on ``types[i].<channel>``).
        """
        return await self.rest("PUT", "/notifications/preferences", json_body=proto.preferences_data(preferences))

    async def register_device(
        self,
        token: str,
        platform: str,
        *,
        app_version: str | None = None,
        device_info: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register an FCM token (``platform``: ios, android or web); returns the device.

        ``device_info`` describes the device (``model``, ``os``, ``os_version``,
        ``app_version``, each a string); the device lists return it.
        """
        body: dict[str, Any] = {"token": proto._string(token, "token", max_len=4096, control_ok=True)}
        if platform not in ("ios", "android", "web"):
            raise validation_error("platform", "must be one of ios, android, web")
        body["platform"] = platform
        if app_version is not None:
            body["app_version"] = proto._string(app_version, "app_version", min_len=0, max_len=64)
        if device_info is not None:
            if not isinstance(device_info, Mapping):
                raise validation_error("device_info", "must be a mapping of model, os, os_version, app_version")
            info: dict[str, str] = {}
            for key, value in device_info.items():
                if key not in DEVICE_INFO_FIELDS:
                    raise validation_error(f"device_info.{str(key)[:64]}", f"not one of {', '.join(DEVICE_INFO_FIELDS)}")
                info[key] = proto._string(value, f"device_info.{key}", min_len=0, max_len=1024)
            body["device_info"] = info
        return _record(await self.rest("POST", "/devices", json_body=body), "device")

    async def list_devices(self) -> list[dict[str, Any]]:
        devices = (await self.rest("GET", "/devices")).get("devices")
        return devices if isinstance(devices, list) else []

    async def unregister_device(self, token: str) -> None:
        proto._string(token, "token", max_len=4096, control_ok=True)
        await self.rest("DELETE", "/devices/" + urllib.parse.quote(token, safe=""))


@asynccontextmanager
async def open_client(
    url: str, *, token: str | TokenProvider, options: ClientOptions | None = None
) -> AsyncIterator[Client]:
    """Run a ``Client`` for the duration of the block, then close it.

    The client starts connecting at once; ``await client.wait_connected()`` waits
    for the socket (requests wait for it by themselves).
    """
    client = Client(url, token=token, options=options)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            await client.aclose()


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    reason = exc.reason
    if reason is None:
        return 1006, "connection lost"
    return reason.code, reason.reason or proto.CLOSE_NAMES.get(reason.code, "")


def _copy(error: RealtimeError) -> RealtimeError:
    """A fresh exception object each time one error is raised to several callers."""
    return RealtimeError(
        error.code,
        error.message,
        error.field,
        retry_after_ms=error.retry_after_ms,
        correlation_id=error.correlation_id,
        close_code=error.close_code,
    )


def _record(reply: dict[str, Any], field: str) -> dict[str, Any]:
    value = reply.get(field)
    return value if isinstance(value, dict) else {}


def _count(reply: dict[str, Any]) -> int:
    value = reply.get("unread_count")
    return value if type(value) is int else 0


def _drop_oldest(feed: Feed[Any]) -> None:
    feed.get_nowait()

