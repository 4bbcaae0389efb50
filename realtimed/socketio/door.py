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
  native frame has) as a second argument. Each event frame of the router is
  encoded for Socket.IO once, whatever the number of recipients.
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
from datetime import datetime
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
from realtimed.gateway.client import ClientSession
from realtimed.gateway.gateway import Gateway
from realtimed.live import Live
from realtimed.socketio.packets import RESERVED_EVENTS
from realtimed.socketio.server import SioSocket

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
    """A router frame as the Socket.IO door sends it: (the WebSocket frame, the polling record); built once per frame."""
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
    """

    __slots__ = ("_closing", "bucket", "bucket_at", "limited_streak", "refusal", "socket")

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

    @property
    def closing(self) -> bool:
        return self._closing or self.socket.engine.closed

    @property
    def outbox_bytes(self) -> int:
        return self.socket.engine.outbox_bytes

    def send_frame(self, frame: Frame) -> None:
        # An app event named like one socket.io-client keeps for itself would fire the app's
        # own handler of that name (its "disconnect" handler, say): such events skip this door.
        if not self.closing and frame.name not in RESERVED_EVENTS:
            self.socket.send_encoded(*encode_frame(frame))

    def send_event(self, name: str, data: Any) -> None:
        if not self.closing:
            self.socket.emit(name, data)

    def close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self._closing = True
        self.close_code = code
        socket = self.socket
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


def _connect_error(error: ApiError, close_code: int) -> dict[str, Any]:
    return {"message": error.message, "data": {"code": error.code, "close_code": close_code, "message": error.message}}


class RealtimeHandler:
    """realtimed's namespace handler (see the module docstring).

    Args:
        gateway: the session lifecycle.
        ops: who answers each op.
        verifier: the token verifier in force (a reload replaces it).
    """

    def __init__(self, gateway: Gateway, *, ops: OpRegistry, verifier: Live[TokenVerifier]) -> None:
        self.gateway = gateway
        self.ops = ops
        self.verifier = verifier

    def serves(self, namespace: str) -> bool:
        return namespace == MAIN_NAMESPACE

    # -- connecting --------------------------------------------------------------------------

    async def connect(self, socket: SioSocket, auth: dict[str, Any] | None) -> None:
        gateway = self.gateway
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is None:
            token = socket.engine.head_token
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
            await self._admit(socket, client, claims)

    async def _admit(self, socket: SioSocket, client: SioClient, claims: Claims) -> None:
        def reply(error: ApiError | None) -> None:
            if error is not None:
                client.refusal = error
            else:
                socket.accept()

        outcome = await self.gateway.admit(client, claims, reply=reply)
        if outcome != "accepted" or not socket.connected:
            # Refused, or the Engine.IO session closed before the CONNECT reply could go out
            # (then no disconnect will come for this socket): the gateway forgets it here.
            socket.state = None
            client._closing = True
            await self.gateway.end(client)

    async def disconnect(self, socket: SioSocket, reason: str) -> None:
        client = socket.state
        if not isinstance(client, SioClient):
            return
        socket.state = None
        if client.close_code is None:
            # The Engine.IO session's: the client's close, a ping timeout (4000), an overflow (4008)...
            client.close_code = socket.engine.close_code or CLOSE_NORMAL
        client._closing = True
        await self.gateway.end(client)

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
        cfg = self.gateway.config.gateway
        now = trio.current_time()
        client.bucket = min(float(cfg.ops_burst), client.bucket + (now - client.bucket_at) * cfg.ops_per_s)
        client.bucket_at = now
        if client.bucket >= 1.0:
            client.bucket -= 1.0
            return True
        return False

    def _refused(self, client: SioClient) -> bool:
        client.limited_streak += 1
        if client.limited_streak >= self.gateway.config.gateway.abuse_limit:
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
