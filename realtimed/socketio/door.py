"""The Socket.IO door: realtimed's semantics over Socket.IO (docs/protocol.md, "Socket.IO").

``RealtimeHandler`` is the namespace handler the daemon installs. It serves the
main namespace ``/`` and maps it onto the one session lifecycle
(``gateway.gateway``): a connected socket is an ``SioClient``, a
``ClientSession`` that the gateway admits, limits, times, drains and ends like
a native socket, and that the router delivers to.

- Connecting: the token comes from the CONNECT packet's auth payload
  (``auth: {token}``), else from the ``Authorization`` header of the session's
  first request. A refusal is ``CONNECT_ERROR`` with ``{"message", "data":
  {"code", "close_code", "message"}}``: the native error code and close code.
  Once admitted, the CONNECT reply goes out, then ``session.ready``.
- Ops are events: ``emit(op, data, ack)``. They run through the op registry
  (``OpRegistry.run``), charged to the same per-socket frame budget and per-user
  op budgets as the native door. The ack's argument is ``{"ok": true, "data"}``
  or ``{"ok": false, "error": CODE, "message", "field"?, "correlationId"?,
  "retryAfterMs"?, "bannedUntil"?}``. Binary attachments are refused with
  ``VALIDATION_ERROR``; an event that names no op gets ``BAD_REQUEST`` when it
  asks for an ack, and nothing otherwise.
- Server events: ``[name, data]``, plus ``{room, seq, epoch}`` (the members the
  native frame has) as a second argument, plus the recovery offset on events
  with a position. Each event frame of the router is encoded for Socket.IO
  once, whatever the number of recipients.
- Recovery (``recovery``, ``replay``, ``state``): the CONNECT reply carries a ``pid``; a
  socket that ends without a DISCONNECT keeps its positions in the store under
  it; a CONNECT with ``{pid, offset}`` of the same user holds what the router
  delivers, collects the replay, answers with the same ``pid`` (or a new one and
  no replay), then sends ``session.ready``, the replay, the current presence,
  typing and receipts, and what was held (less what the replay already sent).
- Closing: ``session.closed`` (``{code, reason}``) first; then a terminal code
  (4500 to 4999, and 1000) sends DISCONNECT (socket.io-client does not
  reconnect), and any other closes the Engine.IO session, so socket.io-client
  reconnects by itself.

Error handling:
    An op handler that raises ``ApiError`` acks that error; anything else acks
    ``INTERNAL`` with a correlation id logged with the traceback. Neither
    closes the socket.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final

import orjson
import trio

from realtimed import logs, protocol
from realtimed.api.ops import Caller, OpRegistry
from realtimed.auth import Claims, TokenVerifier
from realtimed.clock import iso
from realtimed.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_RATE_ABUSE,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNAUTHORIZED,
    ApiError,
    BadRequest,
    Forbidden,
    Internal,
    RateLimited,
    TokenExpired,
    Unauthorized,
    ValidationFailed,
)
from realtimed.frames import OP_TEXT, Frame, ws_frame
from realtimed.gateway.client import ClientSession, refused_in_a_row, take_frame_token
from realtimed.gateway.gateway import Gateway
from realtimed.live import Live
from realtimed.socketio.packets import RESERVED_EVENTS
from realtimed.socketio.recovery import CONVERSATION_PREFIX, Position, RecoveryRecord, Tracker, frame_position
from realtimed.socketio.replay import Replay
from realtimed.socketio.server import SioSocket
from realtimed.socketio.state import CurrentState
from realtimed.store.base import RecoveryStore, Store

__all__ = ["RealtimeHandler", "SioClient", "ack_error", "encode_frame"]

log = logging.getLogger(__name__)

MAIN_NAMESPACE: Final = "/"

# The native error keys that the flat Socket.IO ack spells in camelCase.
_CAMEL: Final = {"correlation_id": "correlationId", "retry_after_ms": "retryAfterMs", "banned_until": "bannedUntil"}


def ack_error(exc: ApiError) -> dict[str, Any]:
    """The flat ack of a failed op: ``{"ok": false, "error": CODE, "message", …}``."""
    out: dict[str, Any] = {"ok": False}
    for key, value in exc.to_dict().items():
        out["error" if key == "code" else _CAMEL.get(key, key)] = value
    return out


def _event_data_json(frame: Frame) -> bytes:
    """The JSON of a native event frame's ``data`` (the frame's last member), without decoding it when possible."""
    head: dict[str, Any] = {"event": frame.name}
    if frame.room is not None:
        head["room"] = frame.room
    if frame.seq is not None:
        head["seq"] = frame.seq
    if frame.epoch is not None:
        head["epoch"] = frame.epoch
    prefix = orjson.dumps(head)[:-1] + b',"data":'
    body = frame.json
    if body.startswith(prefix) and body.endswith(b"}"):
        return body[len(prefix) : -1]
    return orjson.dumps(orjson.loads(body).get("data"))


def encode_frame(frame: Frame) -> tuple[bytes, str]:
    """A router frame as the Socket.IO door sends it: (the WebSocket frame, the polling record); built once per frame.

    An event with a position (``recovery.frame_position``) ends with its offset, a
    string the same for every recipient; ``frame.socketio_position`` keeps it.
    """
    cached = frame.socketio
    if cached is not None:
        return cached
    parts = [b"42[", orjson.dumps(frame.name or "message"), b",", _event_data_json(frame)]
    position: dict[str, Any] = {}
    if frame.room is not None:
        position["room"] = frame.room
    if frame.seq is not None:
        position["seq"] = frame.seq
    if frame.epoch is not None:
        position["epoch"] = frame.epoch
    if position:
        parts += [b",", orjson.dumps(position)]
    offset = frame.socketio_position = frame_position(frame)
    if offset is not None:
        parts += [b",", orjson.dumps(offset[0])]
    parts.append(b"]")
    record = b"".join(parts)
    cached = frame.socketio = (ws_frame(OP_TEXT, record), record.decode())
    return cached


def _is_terminal(code: int) -> bool:
    return code == CLOSE_NORMAL or 4500 <= code <= 4999


class SioClient(ClientSession):
    """A Socket.IO socket on ``/`` as the gateway and the router see it (see the module docstring).

    Attributes:
        socket: the Socket.IO socket.
        bucket, bucket_at, limited_streak: the socket's frame budget, as on the native door.
        refusal: the error of an admission refused, sent with its close code.
        pid: the recovery id of the CONNECT reply (None: recovery is off).
        tracker: what the socket sent, per stream, for recovery (None: recovery is off).
        held: while a recovery is prepared, what is to be sent after it (frames, and
            ``(name, data)`` events), in order; None otherwise.
        held_max: most frames held (``socketio.recovery_max_replay``); one more closes
            the socket with 4008, as a slow consumer.
    """

    __slots__ = (
        "_closing", "bucket", "bucket_at", "held", "held_max", "limited_streak", "pid", "refusal", "socket", "tracker"
    )

    transport: ClassVar[str] = "socketio"
    sends_expiring: ClassVar[bool] = True

    def __init__(self, socket: SioSocket, *, node: str, connected_at: datetime, ops_burst: int) -> None:
        now = trio.current_time()
        super().__init__(node=node, address=socket.engine.address, connected_at=connected_at, last_active=now)
        self.socket = socket
        self._closing = False
        self.bucket = float(ops_burst)
        self.bucket_at = now
        self.limited_streak = 0
        self.refusal: ApiError | None = None
        self.pid: str | None = None
        self.tracker: Tracker | None = None
        self.held: list[Frame | tuple[str, Any]] | None = None
        self.held_max = 0

    @property
    def closing(self) -> bool:
        return self._closing or self.socket.engine.closed

    @property
    def outbox_bytes(self) -> int:
        return self.socket.engine.outbox_bytes

    def send_frame(self, frame: Frame) -> None:
        # An app event named like one socket.io-client keeps for itself would fire the app's
        # own handler of that name (its "disconnect" handler, say): such events skip this door.
        if self.closing or frame.name in RESERVED_EVENTS:
            return
        held = self.held
        if held is not None:
            held.append(frame)
            if len(held) > self.held_max:
                # The client would not take these in time either: as the native slow consumer is.
                self.close(CLOSE_SLOW_CONSUMER, "too many events while recovering")
            return
        self._send(frame)

    def _send(self, frame: Frame) -> None:
        encoded = encode_frame(frame)
        entry = frame.socketio_position
        tracker = self.tracker
        if entry is not None and tracker is not None:
            last = tracker.positions.get(entry[1])
            at = entry[2]
            if last is not None and at[0] <= last[0] and at[1] == last[1]:
                return  # replayed by a recovery already
            tracker.sent(entry)
        self.socket.send_encoded(*encoded)

    def send_event(self, name: str, data: Any) -> None:
        if self.closing:
            return
        if self.held is not None:
            self.held.append((name, data))
            return
        self.socket.emit(name, data)
        if name == "session.ready":
            self.socket.engine.uncork()

    def release(self, replay: list[Frame], *, drop_rooms: frozenset[str] = frozenset()) -> None:
        """End a recovery: ``session.ready``, then ``replay``, then what was held (frames of ``drop_rooms`` left out)."""
        held, self.held = self.held or [], None
        events = [item for item in held if isinstance(item, tuple) and item[0] == "session.ready"]
        for name, data in events:
            self.send_event(name, data)
        for frame in replay:
            self.send_frame(frame)
        for item in held:
            if isinstance(item, tuple):
                if item[0] != "session.ready":
                    self.send_event(*item)
            elif item.room is None or item.room not in drop_rooms:
                self.send_frame(item)

    def close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self._closing = True
        self.close_code = code
        socket = self.socket
        if not socket.connected and self.held is not None and not _is_terminal(code):
            # Closed while its recovery was read (a drain, too many live events): the transport
            # closes, so that socket.io-client reconnects by itself (without recovery: the record is used).
            self.held = None
            socket.engine.close(reason or "transport close", code=code, flush=True)
            return
        if not socket.connected:
            # Refused while being admitted: the CONNECT is answered with the refusal.
            error = self.refusal or Unauthorized(reason or "refused")
            socket.refuse(_connect_error(error, code))
            return
        socket.emit("session.closed", {"code": code, "reason": reason})
        if _is_terminal(code):
            socket.disconnect()
            socket.engine.close(reason or "server namespace disconnect", code=code, flush=True)
        else:
            socket.engine.close(reason or "transport close", code=code, flush=True)

    def shutdown(self, event_payload: bytes) -> None:
        event = orjson.loads(event_payload)
        self.send_event(event.get("event", "server.shutdown"), event.get("data"))
        self.close(CLOSE_GOING_AWAY, "server draining")

    async def aclose(self) -> None:
        self.close(CLOSE_NORMAL)
        await trio.lowlevel.checkpoint()


# A DISCONNECT ended the socket (the client's, or the server's terminal close): socket.io-client
# does not recover after it, so nothing is kept.
# A recovery asked for: the pid, the client's offset, its record, and the positions at the offset.
_Found = tuple[str, str | None, RecoveryRecord, dict[str, Position]]

_NOT_RECOVERABLE: Final = frozenset({"client namespace disconnect", "server namespace disconnect"})

# Longest pid and offset read from a CONNECT (longer: nothing is recovered).
MAX_PID_CHARS: Final = 64
MAX_OFFSET_CHARS: Final = 1024


def _recovery_request(auth: dict[str, Any] | None) -> tuple[str, str | None] | None:
    """The ``(pid, offset)`` of a CONNECT that asks for recovery, or None."""
    if not isinstance(auth, dict):
        return None
    pid, offset = auth.get("pid"), auth.get("offset")
    if not isinstance(pid, str) or not 0 < len(pid) <= MAX_PID_CHARS:
        return None
    if offset is not None and (not isinstance(offset, str) or len(offset) > MAX_OFFSET_CHARS):
        return None
    return pid, offset


def _connect_error(error: ApiError, close_code: int) -> dict[str, Any]:
    return {"message": error.message, "data": {"code": error.code, "close_code": close_code, "message": error.message}}


class RealtimeHandler:
    """realtimed's namespace handler (see the module docstring).

    Args:
        gateway: the session lifecycle.
        ops: who answers each op.
        verifier: the token verifier in force (a reload replaces it).
        store: what a recovery replays from, and where recovery records are kept
            (None: no connection state recovery, the CONNECT reply has no ``pid``).
        recovery: where recovery records are kept instead (tests).
        state: the presence, typing and receipts a recovered socket is sent again
            (None: not sent).
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        ops: OpRegistry,
        verifier: Live[TokenVerifier],
        store: Store | None = None,
        recovery: RecoveryStore | None = None,
        state: CurrentState | None = None,
    ) -> None:
        self.gateway = gateway
        self.ops = ops
        self.verifier = verifier
        self.replay_store = store
        self.recovery = recovery if recovery is not None else store
        self.state = state

    def serves(self, namespace: str) -> bool:
        return namespace == MAIN_NAMESPACE

    # -- connecting --------------------------------------------------------------------------

    async def connect(self, socket: SioSocket, auth: dict[str, Any] | None) -> None:
        gateway = self.gateway
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is None:
            token = socket.engine.head_token
        asked = _recovery_request(auth)
        with gateway.admitting():
            refusal = gateway.capacity_refusal()
            if refusal is not None:
                socket.refuse(_connect_error(refusal.error, refusal.code))
                return
            if not isinstance(token, str) or not token:
                error: ApiError = Unauthorized("a token is required: connect with auth: {token}")
                socket.refuse(_connect_error(error, CLOSE_UNAUTHORIZED))
                return
            try:
                claims = await self.verifier.value.verify(token)
            except TokenExpired as exc:
                socket.refuse(_connect_error(exc, CLOSE_TOKEN_EXPIRED))
                return
            except Unauthorized as exc:
                log.info("Socket.IO session %s from %s: token refused: %s", socket.engine.sid, socket.engine.address, exc.message)
                socket.refuse(_connect_error(exc, CLOSE_UNAUTHORIZED))
                return
            if socket.engine.closed:
                return
            client = SioClient(
                socket, node=gateway.node, connected_at=gateway.clock.now(), ops_burst=gateway.config.gateway.ops_burst
            )
            # One id for the socket, as the CONNECT reply and session.ready give it.
            socket.sid = client.id
            socket.state = client
            record: _Found | None = None
            if self.recovery is not None and self.replay_store is not None and gateway.config.socketio.recovery_ttl_s > 0:
                client.pid = secrets.token_urlsafe(16)
                client.tracker = Tracker(gateway.config.socketio.recovery_positions, gateway.clock.now())
                if asked is not None:
                    record = await self._record(asked, claims.sub)
                    if record is not None:
                        client.held = []  # until the replay is known
                        client.held_max = gateway.config.socketio.recovery_max_replay
            await self._admit(socket, client, claims, record)

    async def _record(self, asked: tuple[str, str | None], user_id: str) -> _Found | None:
        """The record under the pid the client sent and its positions at its offset; None: nothing to recover."""
        assert self.recovery is not None
        pid, offset = asked
        try:
            taken = await self.recovery.take_recovery(pid=pid, now=self.gateway.clock.now())
        except ApiError as exc:
            log.warning("recovery record %s unavailable: %s", pid, exc.message)
            return None
        if taken is None or taken[0] != user_id:
            return None  # unknown, expired, used already, or another user's
        record = RecoveryRecord.loads(taken[1])
        if record is None or record.user_id != user_id:
            return None
        positions = record.as_of(offset)
        if positions is None:
            return None
        return pid, offset, record, positions

    async def _admit(
        self,
        socket: SioSocket,
        client: SioClient,
        claims: Claims,
        record: _Found | None,
    ) -> None:
        def reply(error: ApiError | None) -> None:
            if error is not None:
                client.refusal = error
            elif client.held is None:
                # The CONNECT reply and session.ready go out in one write (uncorked by send_event).
                socket.engine.cork()
                socket.accept(None if client.pid is None else {"pid": client.pid})

        try:
            outcome = await self.gateway.admit(client, claims, reply=reply)
        finally:
            socket.engine.uncork()
        if outcome == "accepted" and record is not None and not client.closing:
            await self._recover(socket, client, *record)
        if outcome != "accepted" or not socket.connected:
            # Refused, or the Engine.IO session closed before the CONNECT reply could go out
            # (then no disconnect will come for this socket): the gateway forgets it here.
            socket.state = None
            client._closing = True
            await self.gateway.end(client)

    async def _recover(
        self,
        socket: SioSocket,
        client: SioClient,
        pid: str,
        offset: str | None,
        record: RecoveryRecord,
        positions: dict[str, Position],
    ) -> None:
        """Replay what the client missed and answer the CONNECT with its old pid; or answer a new pid and replay nothing."""
        assert client.claims is not None and client.tracker is not None and self.replay_store is not None
        caller = Caller(user_id=client.user_id, claims=client.claims, session=client)
        replay = Replay(
            ops=self.ops, router=self.gateway.router, store=self.replay_store,
            max_events=self.gateway.config.socketio.recovery_max_replay,
        )
        try:
            found = await replay.collect(client, caller, record, positions)
        except Exception:
            log.exception("session %s: recovery failed", client.id)
            found = None
        if client.closing:
            client.held = None
            return
        if found is None:
            socket.accept({"pid": client.pid})
            client.release([], drop_rooms=frozenset(record.rooms))
            return
        frames, after = found
        for step in after:
            await step()  # the subscribes' live frames held meanwhile: held here too
        # Typing, presence and receipts have no positions: their current state follows the replay,
        # read while live events are held, so that a live change read meanwhile comes after it.
        frames += await self._current_state(client, positions, frames)
        if client.closing:
            client.held = None
            return
        # The client's offset stays one this socket knows, should it be lost again before the next event.
        client.tracker.resume(positions, record.entry(offset))
        client.pid = pid
        socket.accept({"pid": pid})
        client.release(frames)

    async def _current_state(self, client: SioClient, positions: dict[str, Position], replay: list[Frame]) -> list[Frame]:
        """Presence, typing and receipts as they are now (none when they cannot be read)."""
        if self.state is None:
            return []
        known = {stream[2:] for stream in positions if stream.startswith("c:")}
        known.update(frame.room[len(CONVERSATION_PREFIX):] for frame in replay
                     if frame.room is not None and frame.room.startswith(CONVERSATION_PREFIX))
        try:
            return await self.state.frames(client.user_id, known)
        except Exception:
            log.exception("session %s: presence, typing and receipts not sent after its recovery", client.id)
            return []

    async def disconnect(self, socket: SioSocket, reason: str) -> None:
        client = socket.state
        if not isinstance(client, SioClient):
            return
        socket.state = None
        # A terminal close of the server's sent a DISCONNECT: socket.io-client does not recover after it.
        terminal = client.close_code is not None and _is_terminal(client.close_code)
        if client.close_code is None:
            # The Engine.IO session's: the client's close, a ping timeout (4000), an overflow (4008)...
            client.close_code = socket.engine.close_code or CLOSE_NORMAL
        client._closing = True
        if not terminal and reason not in _NOT_RECOVERABLE:
            await self._keep(client)
        await self.gateway.end(client)

    async def _keep(self, client: SioClient) -> None:
        """Keep the positions of a session that ended without a DISCONNECT, for its reconnect."""
        tracker, pid, store = client.tracker, client.pid, self.recovery
        if tracker is None or pid is None or store is None or client.claims is None:
            return
        now = self.gateway.clock.now()
        ttl = timedelta(seconds=self.gateway.config.socketio.recovery_ttl_s)
        record = tracker.record(client.user_id, sorted(client.rooms))
        try:
            await store.put_recovery(pid=pid, user_id=client.user_id, record=record.dumps(), expires_at=now + ttl, now=now)
        except ApiError as exc:
            log.warning("session %s: recovery record not kept: %s", client.id, exc.message)

    # -- events ------------------------------------------------------------------------------

    async def event(self, socket: SioSocket, args: list[Any], ack_id: int | None, *, binary: bool) -> None:
        client = socket.state
        if not isinstance(client, SioClient) or client.closing:
            return
        within_rate = self._take_token(client)
        if not within_rate:
            if self._refused(client):
                return
            if ack_id is not None:
                cfg = self.gateway.config.gateway
                retry_ms = max(1, math.ceil((1.0 - client.bucket) / cfg.ops_per_s * 1000))
                socket.ack(ack_id, ack_error(RateLimited("too many ops", retry_after_ms=retry_ms)))
            return
        name = args[0]
        op = name if isinstance(name, str) else ""
        error = self._check(op, args, binary)
        if error is not None:
            self._refused(client)
            if ack_id is not None:
                socket.ack(ack_id, ack_error(error))
            return
        client.limited_streak = 0
        data: dict[str, Any] = args[1] if len(args) > 1 and args[1] is not None else {}
        if op != "ping":
            self.gateway.touch(client)
        with logs.bind(op=op, request_id=ack_id):
            if op == "auth":
                await self._reauth(client, data, ack_id)
            else:
                await self._run(client, op, data, ack_id)

    def _check(self, op: str, args: list[Any], binary: bool) -> ApiError | None:
        """Why an event cannot run as an op (None: it can)."""
        if op not in protocol.OP_SPECS or op in RESERVED_EVENTS:
            return BadRequest(f"unknown op {op!r}" if op else "the event name must be an op")
        if binary:
            return ValidationFailed("data", "binary attachments are not accepted")
        if len(args) > 2:
            return ValidationFailed("data", "an op takes one argument (its data) and an optional ack")
        data = args[1] if len(args) > 1 else None
        if data is not None and not isinstance(data, dict):
            return ValidationFailed("data", "must be an object")
        if data is not None:
            path = protocol.json_depth_path(data, self.gateway.config.gateway.max_json_depth)
            if path is not None:
                where = "data" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in path)
                return ValidationFailed(where, "nested too deep")
        return None

    def _take_token(self, client: SioClient) -> bool:
        return take_frame_token(client, self.gateway.config.gateway)

    def _refused(self, client: SioClient) -> bool:
        if refused_in_a_row(client, self.gateway.config.gateway):
            log.info("session %s: %d refused events in a row: closing with 4009", client.id, client.limited_streak)
            client.close(CLOSE_RATE_ABUSE, "rate limit abuse")
            return True
        return False

    async def _run(self, client: SioClient, op: str, data: dict[str, Any], ack_id: int | None) -> None:
        assert client.claims is not None
        caller = Caller(user_id=client.user_id, claims=client.claims, session=client)
        try:
            result = await self.ops.run(caller, op, data)
        except ApiError as exc:
            if isinstance(exc, Internal):
                log.error("session %s: %s failed: %s (%s)", client.id, op, exc.message, exc.correlation_id)
            if ack_id is not None:
                client.socket.ack(ack_id, ack_error(exc))
            return
        except Exception:
            err = Internal()
            log.exception("session %s: op %s failed (%s)", client.id, op, err.correlation_id)
            if ack_id is not None:
                client.socket.ack(ack_id, ack_error(err))
            return
        if ack_id is not None:
            client.socket.ack(ack_id, {"ok": True, "data": result})
        if op == "subscribe" and client.tracker is not None and isinstance(result, dict) and result.get("epoch"):
            # What the client has of a room with history before any publication reaches it.
            client.tracker.baseline("r:" + str(result["room"]), [result["seq"], result["epoch"]])
        for after in caller.after_reply:
            try:
                await after()
            except ApiError as exc:
                log.warning("session %s: after %s: %s", client.id, op, exc.message)

    async def _reauth(self, client: SioClient, data: dict[str, Any], ack_id: int | None) -> None:
        try:
            value = protocol.validate("auth", data)
            try:
                claims = await self.verifier.value.verify(value.token)
            except TokenExpired as exc:
                raise Unauthorized(exc.message) from exc
            if claims.sub != client.user_id:
                raise Forbidden("the token is for another user")
        except ApiError as exc:
            if ack_id is not None:
                client.socket.ack(ack_id, ack_error(exc))
            return
        client.claims = claims
        client.expires_at = claims.exp
        client.auth_generation += 1
        if ack_id is not None:
            client.socket.ack(ack_id, {"ok": True, "data": {"user_id": claims.sub, "expires_at": iso(claims.exp)}})
        self.gateway.arm_expiry(client)
