"""The client HTTP door (``/api/v1``): ops over REST, and the SSE fallback.

``POST /api/v1/ops/{op}`` runs any op of docs/protocol.md section 5 but ``auth`` and
``ping`` with the same handlers as the socket. ``subscribe`` over REST answers
the recovery (what the client missed since ``since``) without subscribing
anything, since a REST call has no connection to deliver to.

``GET /api/v1/events?rooms=a,b`` streams every event for the user and the listed
rooms as SSE. Each record's ``id:`` is an opaque cursor holding the position of
every room stream on the connection; a reconnect with ``Last-Event-ID`` resumes
each room through the same recovery as ``subscribe``, or sends ``room.reset``.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, Final

import orjson
import trio
from quart import Blueprint, Response, g, request

from realtimed import protocol
from realtimed.auth import Claims, token_deadline
from realtimed.clock import iso
from realtimed.errors import (
    CLOSE_BANNED,
    CLOSE_GOING_AWAY,
    CLOSE_NODE_FULL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_MANY_SOCKETS,
    NotFound,
    TokenExpired,
    Unauthorized,
    ValidationFailed,
)
from realtimed.gateway.frames import Frame
from realtimed.gateway.gateway import SOCKETS, Gateway
from realtimed.gateway.ops import Caller
from realtimed.gateway.room_ops import check_subscribe
from realtimed.http.app import bearer_token, json_body, json_response, register_blueprint, services
from realtimed.router import Router
from realtimed.services import Services

log = logging.getLogger(__name__)

blueprint = Blueprint("client_api", __name__)

MAX_SSE_ROOMS: Final = 64


@blueprint.post("/ops/<op>")
async def run_op(op: str) -> Response:
    svc = services()
    if op in protocol.SOCKET_ONLY_OPS or op not in protocol.OPS:
        raise NotFound(f"no op {op!r} over REST")
    data = await json_body()
    claims: Claims = g.claims
    caller = Caller(user_id=claims.sub, claims=claims, session=None)
    result = await svc.ops.run(caller, op, data)
    for after in caller.after_reply:
        await after()
    return json_response(result)


def encode_cursor(positions: dict[str, list[Any]]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"r": positions})).decode().rstrip("=")


def decode_cursor(text: str | None) -> dict[str, tuple[int, str]]:
    """Room positions from a ``Last-Event-ID``; an unreadable cursor resumes nothing.

    The client may send anything here: only positions that ``subscribe``'s
    ``since`` would accept (a room name, a seq from 0 to 2^63-1, an epoch of at
    most 128 characters) are kept; whatever else the cursor holds is ignored.
    """
    if not text:
        return {}
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return {}
    rooms = raw.get("r") if type(raw) is dict else None
    if type(rooms) is not dict:
        return {}
    out: dict[str, tuple[int, str]] = {}
    for room, pos in rooms.items():
        if type(pos) is not list or len(pos) != 2:
            continue
        seq, epoch = pos
        if (
            protocol.is_valid_room(room)
            and type(seq) is int
            and 0 <= seq <= protocol.MAX_SEQ
            and type(epoch) is str
            and len(epoch) <= protocol.MAX_EPOCH_CHARS
        ):
            out[room] = (seq, epoch)
    return out


class SseSession:
    """One SSE connection, seen by the router like a socket.

    Frames are queued as SSE records (bounded by ``gateway.outbox_max_bytes``;
    over it the stream ends with ``session.closed`` 4008) and written by the
    response generator.
    """

    def __init__(self, svc: Services, claims: Claims, address: str) -> None:
        self.id = "s_" + secrets.token_urlsafe(12)
        self.user_id = claims.sub
        self.claims = claims
        self.expires_at: datetime | None = claims.exp
        self.address = address
        self.rooms: set[str] = set()
        self.connected_at = svc.clock.now()
        self.positions: dict[str, list[Any]] = {}
        self._svc = svc
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = trio.Event()
        self.closing = False
        self.close_code: int | None = None
        self._cursor_sent: str | None = None

    def cursor(self) -> str:
        cursor = encode_cursor(self.positions)
        self._cursor_sent = cursor
        return cursor

    def send_frame(self, frame: Frame) -> None:
        if self.closing:
            return
        if frame.room is not None and frame.seq is not None and frame.epoch is not None:
            self.positions[frame.room] = [frame.seq, frame.epoch]
        self._push(frame.sse(self.cursor()))

    def send_position(self) -> None:
        """An ``id:`` record without data when the room positions moved since the last record.

        EventSource keeps the id of such a record as its ``Last-Event-ID`` without
        firing an event, so a stream that drops before any room event still
        resumes its rooms from where they were subscribed.
        """
        if self.closing or encode_cursor(self.positions) == self._cursor_sent:
            return
        self._push(b"id: " + self.cursor().encode() + b"\n\n")

    def send_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.send_frame(Frame(protocol.encode_event(name, data, **kwargs), name, room=kwargs.get("room"), seq=kwargs.get("seq"), epoch=kwargs.get("epoch")))

    def _push(self, record: bytes) -> None:
        self._queue.append(record)
        self._queued += len(record)
        if self._queued > self._svc.config.gateway.outbox_max_bytes:
            self._queue.clear()
            self._queued = 0
            self._svc.gateway.note_overflow(self)  # type: ignore[arg-type]
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        self._wake.set()

    def close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        record = Frame(protocol.encode_event("session.closed", {"code": code, "reason": reason}), "session.closed").sse(self.cursor())
        self._queue.append(record)
        self._wake.set()

    def shutdown(self, payload: bytes) -> None:
        if not self.closing:
            self._push(Frame(payload, "server.shutdown").sse(self.cursor()))
        self.close(CLOSE_GOING_AWAY, "server draining")

    def info(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "user_id": self.user_id,
            "node": self._svc.node,
            "connected_at": iso(self.connected_at),
            "rooms": sorted(self.rooms),
            "transport": "sse",
        }

    async def records(self, heartbeat_s: float) -> AsyncGenerator[bytes, None]:
        expiry_at = None
        if self.expires_at is not None:
            # The same deadline as the verifier's and the socket's: exp plus the leeway.
            valid_until = token_deadline(self.expires_at, self._svc.config.auth.leeway_s)
            left = (valid_until - self._svc.clock.now()).total_seconds()
            expiry_at = trio.current_time() + max(0.0, left)
        while True:
            while self._queue:
                record = self._queue.popleft()
                self._queued -= len(record)
                yield record
            if self.closing:
                return
            self._wake = trio.Event()
            deadline = trio.current_time() + heartbeat_s
            if expiry_at is not None and expiry_at < deadline:
                deadline = expiry_at
            with trio.move_on_at(deadline) as timer:
                await self._wake.wait()
            if timer.cancelled_caught:
                if expiry_at is not None and trio.current_time() >= expiry_at:
                    self.close(CLOSE_TOKEN_EXPIRED, "token expired")
                else:
                    yield b": heartbeat\n\n"


@blueprint.get("/events")
async def events() -> Response:
    svc = services()
    gateway = svc.gateway
    router = svc.router
    token = bearer_token() or request.args.get("token")
    if not token:
        raise Unauthorized("a user token is required (Authorization header or ?token=)")
    expired = False
    try:
        claims = await svc.verifier.verify(token)
    except TokenExpired:
        expired = True
        claims = Claims(sub="", exp=None, rooms=(), name=None, raw={})
    rooms_arg = request.args.get("rooms", "")
    rooms = [r for r in dict.fromkeys(rooms_arg.split(",")) if r]
    if len(rooms) > MAX_SSE_ROOMS:
        raise ValidationFailed("rooms", f"at most {MAX_SSE_ROOMS} rooms")
    for room in rooms:
        protocol.validate_room(room, "rooms")
        if not expired:
            check_subscribe(claims, router, room)
    address = (request.remote_addr or "")
    sse = SseSession(svc, claims, address)
    banned = not expired and await gateway.bans.admits(claims.sub) is not None
    refusal = _refusal(svc, gateway, router, claims, expired, banned)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if refusal is not None:
        sse.close(*refusal)

        async def refused() -> AsyncGenerator[bytes, None]:
            async for record in sse.records(svc.config.gateway.heartbeat_s):
                yield record

        response = Response(refused(), content_type="text/event-stream", headers=headers)
        response.timeout = None
        return response
    resume = decode_cursor(request.headers.get("Last-Event-ID"))
    # Until a room is resumed, the records carry the client's own position of it,
    # so that a stream dropped before the replay resumes from there again.
    sse.positions.update({room: [seq, epoch] for room, (seq, epoch) in resume.items() if room in rooms})
    gateway.streams[sse.id] = sse
    SOCKETS.labels("sse").inc()
    await router.add(sse)
    joined: list[str] = []
    try:
        for hook in gateway.hooks.on_connect:
            await hook(sse)
        sse.send_event("session.ready", await gateway.ready_data(sse))  # type: ignore[arg-type]
        for room in rooms:
            since = resume.get(room)
            reply = await router.subscribe(sse, room, since=since)
            if reply.pop("_joined", False):
                joined.append(room)
            if reply["epoch"]:
                sse.positions[room] = [reply["seq"], reply["epoch"]]
            if since is not None and reply["recovered"]:
                for pub in reply["publications"]:
                    sse.send_event(pub["event"], pub["data"], room=room, seq=pub["seq"], epoch=reply["epoch"])
            elif since is not None:
                sse.send_event("room.reset", {"room": room, "seq": reply["seq"], "epoch": reply["epoch"]})
            router.flush_held(sse, room, reply["seq"])
        sse.send_position()
        for room in joined:
            await router.announce_join(room, sse.user_id, joiner=sse.id)
    except BaseException:
        await _end(svc, router, sse)
        raise

    async def stream() -> AsyncGenerator[bytes, None]:
        try:
            yield b"retry: 2000\n\n"
            async for record in sse.records(svc.config.gateway.heartbeat_s):
                yield record
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await _end(svc, router, sse)

    response = Response(stream(), content_type="text/event-stream", headers=headers)
    response.timeout = None
    return response


def _refusal(
    svc: Services, gateway: Gateway, router: Router, claims: Claims, expired: bool, banned: bool
) -> tuple[int, str] | None:
    if expired:
        return CLOSE_TOKEN_EXPIRED, "token expired"
    if svc.draining:
        return CLOSE_GOING_AWAY, "server draining"
    cfg = svc.config.gateway
    if banned:
        return CLOSE_BANNED, "banned"
    if len(gateway.sessions) + len(gateway.streams) >= cfg.max_sockets:
        return CLOSE_NODE_FULL, "node full"
    if len(router.user_sessions(claims.sub)) >= cfg.max_sockets_per_user:
        return CLOSE_TOO_MANY_SOCKETS, "too many sockets for this user"
    return None


async def _end(svc: Services, router: Router, sse: SseSession) -> None:
    registered = svc.gateway.streams.pop(sse.id, None) is not None
    if registered:
        SOCKETS.labels("sse").dec()
    sse.closing = True
    await router.remove(sse)
    if registered:
        for hook in svc.gateway.hooks.on_disconnect:
            try:
                await hook(sse)
            except Exception:
                log.exception("sse %s: disconnect hook failed", sse.id)


register_blueprint(blueprint, "client")
