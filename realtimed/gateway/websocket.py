"""The WebSocket door: the handshake, authentication, frame accounting, ops and heartbeats.

A thin transport adapter over the gateway's session lifecycle
(``gateway.gateway``): it answers the upgrade, authenticates the socket, then
hands the ``Session`` to ``Gateway.admit``, and to ``Gateway.end`` once closed.

Connecting (docs/protocol.md section 3): a disallowed ``Origin`` is refused with HTTP
403 at the handshake; every other refusal happens after the upgrade, as a close
code (4013 node full or draining, 4501 bad token, 4004 expired token, 4503
banned, 4511 too many sockets for the user, 4012 no ``auth`` frame in time). A
first-frame ``auth`` that is refused gets its error reply (a banned user's
``FORBIDDEN`` with ``banned_until``) before the close.

Heartbeats are node-wide, not per socket: one task pings every socket each
``heartbeat_s``, a tenth of them at a time, and closes those silent for two
periods with 4000.

Frame accounting: every text frame is charged to the socket's token bucket
before it is parsed, authenticated or not, malformed or not. Frames refused in a
row (over the bucket, or malformed) count toward ``gateway.abuse_limit``; at the
limit the socket is closed with 4009. A well-formed frame within the bucket
resets the count.

Resource handling:
    ``run`` owns the heartbeat task. Each socket runs in the listener's
    connection nursery inside ``Session.run``.

Error handling:
    An op handler that raises an ``ApiError`` answers that error; anything else
    answers ``INTERNAL`` with a correlation id that is logged with the traceback.
    Neither closes the socket.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from typing import Any, Final
from urllib.parse import parse_qs

import trio
from prometheus_client import Counter

from realtimed import logs, metrics, protocol
from realtimed.api.ops import Caller, OpRegistry
from realtimed.auth import Claims, TokenVerifier
from realtimed.clock import iso
from realtimed.config import Config
from realtimed.errors import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_RATE_ABUSE,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_DATA,
    ApiError,
    Forbidden,
    Internal,
    RateLimited,
    TokenExpired,
    Unauthorized,
)
from realtimed.frames import PING_FRAME
from realtimed.gateway.client import refused_in_a_row, take_frame_token
from realtimed.gateway.gateway import Gateway
from realtimed.gateway.session import Session
from realtimed.http.framing import RequestHead
from realtimed.live import Live

__all__ = ["CLOSE_HEARTBEAT", "WebSocketDoor", "accept_token", "origin_allowed", "websocket_upgrade"]

log = logging.getLogger(__name__)

_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_HEARTBEAT: Final = 4000
HEARTBEAT_SLICES: Final = 10

HANDSHAKES: Final = Counter("realtimed_handshakes", "WebSocket handshakes by outcome", ["outcome"], registry=metrics.REGISTRY)
AUTH_FAILURES: Final = Counter("realtimed_auth_failures", "refused tokens by reason", ["reason"], registry=metrics.REGISTRY)
FRAMES_IN: Final = Counter("realtimed_frames_in", "client frames by op", ["op"], registry=metrics.REGISTRY)
FRAMES_OUT: Final = Counter("realtimed_frames_out", "replies by op and outcome", ["op", "outcome"], registry=metrics.REGISTRY)
CLOSES: Final = Counter(
    "realtimed_closes", "socket closes by code (known codes; \"other\" for the rest) and side", ["code", "by"],
    registry=metrics.REGISTRY,
)


def accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def _http_response(status: int, reason: str, body: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    payload = body.encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """No Origin (not a browser) is allowed; else the allow-list, or the same host."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    if host:
        bare = origin.split("://", 1)[-1]
        return bare == host
    return False


async def websocket_upgrade(
    stream: trio.abc.Stream, head: RequestHead, address: str, *, allowed_origins: list[str], timeout_s: float
) -> bool:
    """Answer an RFC 6455 upgrade request; True when the socket is now a WebSocket.

    A disallowed ``Origin`` gets HTTP 403 (the one refusal made at the handshake);
    a malformed request gets 400, a version other than 13 gets 426.
    """
    origin = head.header("origin")
    with trio.move_on_after(timeout_s) as timeout:
        if not origin_allowed(origin, head.header("host"), allowed_origins):
            HANDSHAKES.labels("origin_refused").inc()
            log.warning("refused WebSocket from %s: origin %r is not allowed (gateway.allowed_origins)", address, origin)
            await stream.send_all(_http_response(403, "Forbidden", '{"error":{"code":"FORBIDDEN","message":"origin not allowed"}}'))
            return False
        key = head.header("sec-websocket-key") or ""
        if head.header("sec-websocket-version") != "13":
            HANDSHAKES.labels("bad_request").inc()
            body = '{"error":{"code":"BAD_REQUEST","message":"WebSocket version 13 required"}}'
            await stream.send_all(_http_response(426, "Upgrade Required", body, [("Sec-WebSocket-Version", "13")]))
            return False
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            HANDSHAKES.labels("bad_request").inc()
            await stream.send_all(_http_response(400, "Bad Request", '{"error":{"code":"BAD_REQUEST","message":"bad Sec-WebSocket-Key"}}'))
            return False
        await stream.send_all(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_token(key)}\r\n\r\n"
            ).encode()
        )
        return True
    if timeout.cancelled_caught:
        HANDSHAKES.labels("timeout").inc()
    return False


class WebSocketDoor:
    """The WebSocket transport (see the module docstring); the ``SessionHandler`` of its sockets.

    Args:
        gateway: the session lifecycle.
        ops: who answers each op.
        verifier: the token verifier in force (a reload replaces it).
    """

    def __init__(self, gateway: Gateway, *, ops: OpRegistry, verifier: Live[TokenVerifier]) -> None:
        self.gateway = gateway
        self.ops = ops
        self.verifier = verifier
        self.node = gateway.node

    @property
    def config(self) -> Config:
        return self.gateway.config

    async def run(self, *, task_status: trio.TaskStatus[WebSocketDoor] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats)
            task_status.started(self)

    async def _heartbeats(self) -> None:
        """Ping every socket once a period, a tenth of them at a time.

        Spreading the pings keeps a node with many sockets from writing them all
        in one burst (which would show in delivery latency). A socket silent for
        two periods is closed when its slice comes round.
        """
        while True:
            period = self.config.gateway.heartbeat_s
            # The gateway holds every transport's sessions: SSE streams keep themselves alive.
            sessions = [s for s in self.gateway.sessions.values() if type(s) is Session]
            for index in range(HEARTBEAT_SLICES):
                await trio.sleep(period / HEARTBEAT_SLICES)
                silent_after = trio.current_time() - 2 * period
                for session in sessions[index::HEARTBEAT_SLICES]:
                    if session.closing:
                        continue
                    if session.last_heard < silent_after:
                        session.close(CLOSE_HEARTBEAT, "no answer to heartbeats")
                    else:
                        session.send_raw(PING_FRAME)

    # -- handshake ---------------------------------------------------------------------------

    async def handle_ws(self, stream: trio.abc.Stream, head: RequestHead, address: str) -> None:
        """The listener's WebSocket handler: answers the upgrade, then runs the session."""
        cfg = self.config.gateway
        if not await websocket_upgrade(stream, head, address, allowed_origins=cfg.allowed_origins, timeout_s=cfg.handshake_timeout_s):
            return
        session = Session(self, stream, address, connected_at=self.gateway.clock.now())
        session.pending_token = _token_from_head(head)
        if session.pending_token is not None:
            session.admission = trio.Event()
        leftover = head.rest
        # The head (its headers and raw bytes, about 2 KB) is not kept for the session's life.
        del head
        await session.run(leftover=leftover)

    async def serve_session(self, session: Session) -> None:
        """Runs in the session's nursery once the upgrade is answered: admission and auth."""
        with self.gateway.admitting():
            await self._serve(session)

    async def _serve(self, session: Session) -> None:
        cfg = self.config.gateway
        try:
            # Full or draining is known before the token: refuse before waiting for it.
            refusal = self.gateway.capacity_refusal()
            if refusal is not None:
                session.close(refusal.code, refusal.reason)
                HANDSHAKES.labels(refusal.outcome).inc()
                return
            token = session.pending_token
            session.pending_token = None
            if token is not None:
                await self._authenticate(session, token, request_id=None)
                return
            with trio.move_on_after(cfg.auth_timeout_s):
                while not session.user_id and not session.closing:
                    await self._auth_wait(session)
            if not session.user_id and not session.closing:
                AUTH_FAILURES.labels("timeout").inc()
                HANDSHAKES.labels("auth_timeout").inc()
                session.close(CLOSE_AUTH_TIMEOUT, "no auth frame in time")
        finally:
            if session.admission is not None:
                session.admission.set()
                session.admission = None  # an idle socket keeps no event

    async def _auth_wait(self, session: Session) -> None:
        event = session.auth_event = trio.Event()
        await event.wait()

    async def _authenticate(self, session: Session, token: str, *, request_id: Any) -> None:
        try:
            claims = await self.verifier.value.verify(token)
        except TokenExpired as exc:
            AUTH_FAILURES.labels("expired").inc()
            HANDSHAKES.labels("token_expired").inc()
            if request_id is not None:
                self._reply_error(session, request_id, "auth", exc)
            session.close(CLOSE_TOKEN_EXPIRED, "token expired")
            return
        except Unauthorized as exc:
            AUTH_FAILURES.labels("invalid").inc()
            HANDSHAKES.labels("unauthorized").inc()
            log.info("session %s from %s: token refused: %s", session.id, session.address, exc.message)
            if request_id is not None:
                self._reply_error(session, request_id, "auth", exc)
            session.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        await self._admit(session, claims, request_id=request_id)

    async def _admit(self, session: Session, claims: Claims, *, request_id: Any) -> None:
        def reply(error: ApiError | None) -> None:
            # A first-frame auth is answered before the close or before session.ready.
            if request_id is None:
                return
            if error is not None:
                self._reply_error(session, request_id, "auth", error)
            else:
                self._reply_ok(session, request_id, "auth", {"user_id": claims.sub, "expires_at": iso(claims.exp)})

        outcome = await self.gateway.admit(session, claims, reply=reply)
        if outcome != "closed":
            HANDSHAKES.labels(outcome).inc()

    # -- messages ----------------------------------------------------------------------------

    async def on_binary(self, session: Session, data: bytes) -> None:
        session.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")

    async def on_message(self, session: Session, text: str) -> None:
        if session.admission is not None and not session.admission.is_set():
            # Frames sent right behind the upgrade wait for the token check.
            await session.admission.wait()
        if session.closing:
            return
        # Charged before parsing: a malformed frame costs the same as an op.
        within_rate = self._take_token(session)
        if not within_rate and self._refused(session):
            return  # closed 4009 without parsing any more
        parsed = protocol.parse_frame(text, max_json_depth=self.config.gateway.max_json_depth)
        if isinstance(parsed, protocol.FrameError):
            FRAMES_IN.labels("invalid").inc()
            if not within_rate:
                self._reply_rate_limited(session, parsed.id if parsed.reply else None, "invalid", reply=parsed.reply)
                return
            if parsed.reply:
                session.send_json(protocol.encode_reply_error(parsed.id, parsed.error))
            self._refused(session)
            return
        request = parsed
        op = request.op
        FRAMES_IN.labels(op).inc()
        if not within_rate:
            self._reply_rate_limited(session, request.id, op, reply=request.id is not None)
            return
        session.limited_streak = 0
        if not session.user_id:
            if op == "auth":
                await self._first_frame_auth(session, request)
            elif request.id is not None:
                self._reply_error(session, request.id, op, Unauthorized("authenticate first: send the auth op"))
            return
        if op != "ping":
            self.gateway.touch(session)
        if op == "auth":
            await self._reauth(session, request)
            return
        await self.dispatch(session, request)

    async def _first_frame_auth(self, session: Session, request: protocol.Request) -> None:
        """The ``auth`` op on a socket not yet authenticated: any failure answers, then closes."""
        try:
            try:
                value = protocol.validate(request.op, request.data)
            except ApiError as exc:
                # An empty, missing or non-string token: as bad as a bad token.
                AUTH_FAILURES.labels("invalid").inc()
                HANDSHAKES.labels("unauthorized").inc()
                log.info("session %s from %s: auth frame refused: %s", session.id, session.address, exc.message)
                if request.id is not None:
                    self._reply_error(session, request.id, "auth", exc)
                session.close(CLOSE_UNAUTHORIZED, "unauthorized")
                return
            await self._authenticate(session, value.token, request_id=request.id)
        finally:
            if session.auth_event is not None:
                session.auth_event.set()

    async def _reauth(self, session: Session, request: protocol.Request) -> None:
        try:
            value = protocol.validate(request.op, request.data)
            try:
                claims = await self.verifier.value.verify(value.token)
            except TokenExpired as exc:
                raise Unauthorized(exc.message) from exc
            if claims.sub != session.user_id:
                raise Forbidden("the token is for another user")
        except ApiError as exc:
            if request.id is not None:
                self._reply_error(session, request.id, "auth", exc)
            return
        session.claims = claims
        session.expires_at = claims.exp
        session.auth_generation += 1
        if request.id is not None:
            self._reply_ok(session, request.id, "auth", {"user_id": claims.sub, "expires_at": iso(claims.exp)})
        self.gateway.arm_expiry(session)

    def _take_token(self, session: Session) -> bool:
        """Charge one frame to the per-socket token bucket; False when it is empty."""
        return take_frame_token(session, self.config.gateway)

    def _refused(self, session: Session) -> bool:
        """Count a refused frame toward ``gateway.abuse_limit``; True when the socket was closed for it."""
        if refused_in_a_row(session, self.config.gateway):
            log.info("session %s from %s: %d refused frames in a row: closing with 4009", session.id, session.address, session.limited_streak)
            session.close(CLOSE_RATE_ABUSE, "rate limit abuse")
            return True
        return False

    def _reply_rate_limited(self, session: Session, request_id: Any, op: str, *, reply: bool) -> None:
        if not reply:
            return
        cfg = self.config.gateway
        retry_ms = max(1, math.ceil((1.0 - session.bucket) / cfg.ops_per_s * 1000))
        self._reply_error(session, request_id, op, RateLimited("too many ops", retry_after_ms=retry_ms))

    async def dispatch(self, session: Session, request: protocol.Request) -> None:
        with logs.bind(op=request.op, request_id=request.id):
            await self._dispatch(session, request)

    async def _dispatch(self, session: Session, request: protocol.Request) -> None:
        op = request.op
        assert session.claims is not None
        caller = Caller(user_id=session.user_id, claims=session.claims, session=session)
        try:
            result = await self.ops.run(caller, op, request.data)
        except ApiError as exc:
            if isinstance(exc, Internal):
                log.error("session %s: %s failed: %s (%s)", session.id, op, exc.message, exc.correlation_id)
            if request.id is not None:
                self._reply_error(session, request.id, op, exc)
            return
        except Exception:
            err = Internal()
            log.exception("session %s: op %s failed (%s)", session.id, op, err.correlation_id)
            if request.id is not None:
                self._reply_error(session, request.id, op, err)
            return
        if request.id is not None:
            self._reply_ok(session, request.id, op, result)
        for after in caller.after_reply:
            try:
                await after()
            except ApiError as exc:
                log.warning("session %s: after %s: %s", session.id, op, exc.message)

    def _reply_ok(self, session: Session, request_id: Any, op: str, data: dict[str, Any]) -> None:
        FRAMES_OUT.labels(op, "ok").inc()
        session.send_json(protocol.encode_reply_ok(request_id, data))

    def _reply_error(self, session: Session, request_id: Any, op: str, exc: ApiError) -> None:
        FRAMES_OUT.labels(op, exc.code).inc()
        session.send_json(protocol.encode_reply_error(request_id, exc))

    # -- bookkeeping -------------------------------------------------------------------------

    def note_overflow(self, session: Session) -> None:
        self.gateway.note_overflow(session)

    def note_close(self, session: Session, code: int, *, by_peer: bool = False) -> None:
        CLOSES.labels(metrics.close_code_label(code), "client" if by_peer else "server").inc()

    async def session_ended(self, session: Session) -> None:
        await self.gateway.end(session)


def _token_from_head(head: RequestHead) -> str | None:
    auth = head.header("authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    query = parse_qs(head.query)
    tokens = query.get("token")
    if tokens and tokens[0]:
        return tokens[0]
    return None
