"""The gateway: one session lifecycle for every transport.

The WebSocket door (``gateway.websocket``) and the SSE door (``gateway.sse``)
are thin transport adapters: each authenticates its own way, then hands its
``ClientSession`` to ``Gateway.admit``, and calls ``Gateway.end`` when the
session is over. Everything in between exists once, here:

Admission (docs/protocol.md section 3), at most ``gateway.max_admissions`` at
once (the others wait their turn, first come first served), in this order: a draining node refuses
(4013 ``node draining``), so does a full one (4013 ``node full``: admitted
sessions plus those being admitted reach ``gateway.max_sockets``), then a
banned user (4503), then a user who already has ``gateway.max_sockets_per_user``
devices (4511; counted on every node of a cluster, whatever their transport).
A transport that answers its own auth request (the WebSocket first-frame
``auth``) gets the reply written just before the close, or just before
``session.ready``.

The checks read the store once (``Bans.admission``: the ban and the unread
counts of ``session.ready`` in one statement) while the cluster-wide device
count is asked of the presence backend at the same time.

Registration: an admitted session is indexed here and in the router, gets
``session.ready`` (the unread counts read at admission, and the hooks'
``ready_fields``, asked concurrently), its token timers, and then the hooks'
``on_connect``; the user counts as active (``hooks.mark_active``).
When it ends it leaves the router, then the hooks' ``on_disconnect`` run.

Token expiry: one task keeps a heap of token deadlines for every session.
``session.expiring`` goes out ``gateway.expiring_notice_s`` before ``exp`` (to
transports that can re-authenticate; at once when less is left), and the 4004
close comes at ``auth.token_deadline`` (``exp`` plus ``auth.leeway_s``), the
moment from which the verifier refuses the token on every door.

Drain: ``stop_admitting`` refuses new sessions; ``drain`` sends every session
``server.shutdown`` and closes it with 1001, and returns once all have ended.

Resource handling:
    ``run`` owns the expiry task. Sessions run wherever their transport runs
    them (a socket's nursery, an HTTP response, or between requests); the
    gateway only indexes them.

Error handling:
    A store that cannot be read at admission admits the session with its
    unread counts at 0; a hook that raises ``ApiError`` in ``ready_fields``
    leaves its fields at their defaults; an ``on_disconnect`` hook that raises is logged and the
    next one runs. A cluster-wide device count that fails counts this node's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import attrs
import trio
from prometheus_client import Counter, Gauge

from realtimed import logs, metrics
from realtimed.auth import Claims, token_deadline
from realtimed.clock import WallClock, iso
from realtimed.config import Config
from realtimed.deadlines import Deadlines
from realtimed.delivery.router import Router
from realtimed.errors import (
    CLOSE_BANNED,
    CLOSE_DISCONNECTED,
    CLOSE_NODE_FULL,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_MANY_SOCKETS,
    ApiError,
    Banned,
    Forbidden,
    Unavailable,
)
from realtimed.gateway.bans import Bans
from realtimed.gateway.client import ClientSession
from realtimed.live import Live
from realtimed.protocol import encode_event
from realtimed.store.users import SessionStart

__all__ = ["SOCKETS", "Admission", "Gateway", "Refusal", "SessionHooks", "ban_until"]

log = logging.getLogger(__name__)

SOCKETS: Final = Gauge("realtimed_sockets", "open client sockets (WebSocket, SSE and Socket.IO)", ["transport"], registry=metrics.REGISTRY)
OUTBOX_OVERFLOWS: Final = Counter("realtimed_outbox_overflows", "sockets closed with 4008", registry=metrics.REGISTRY)

SessionHook = Callable[[ClientSession], Awaitable[None]]
ReadyFields = Callable[[str], Awaitable[Mapping[str, Any]]]

# How an admission ended: the label of ``realtimed_handshakes`` for WebSockets.
Admission = Literal["accepted", "node_full", "banned", "too_many_sockets", "closed"]


@attrs.frozen
class SessionHooks:
    """What the capabilities do as sessions come and go (one object per node, built by the daemon).

    In the spirit of centrifuge's ``OnConnect`` and ``OnDisconnect`` handlers;
    every transport's sessions meet the same hooks.

    Attributes:
        on_connect: run in order once a session is admitted and ``session.ready``
            is written (presence counts the device).
        on_disconnect: run in order once an admitted session has ended and left
            the router; one that raises is logged and the next still runs.
        ready_fields: each answers more fields of the user's ``session.ready``
            (``unread_total`` and ``notifications_unread`` are read at
            admission); they run concurrently, and one that raises ``ApiError``
            leaves its fields at their defaults.
        mark_active: tells the other nodes of a cluster that the user did
            something here (the push-skip rule); None on a single node.
        user_socket_count: the user's devices on every node of a cluster, for
            ``gateway.max_sockets_per_user``; None counts this node's only.
    """

    on_connect: tuple[SessionHook, ...] = ()
    on_disconnect: tuple[SessionHook, ...] = ()
    ready_fields: tuple[ReadyFields, ...] = ()
    mark_active: Callable[[str], None] | None = None
    user_socket_count: Callable[[str], Awaitable[int]] | None = None


@attrs.frozen
class Refusal:
    """Why a session is not admitted: its close, and the error a transport's auth reply carries."""

    outcome: Admission
    code: int
    reason: str
    error: ApiError


# A transport's answer to its own auth request: None once admitted, else the refusal's error.
AuthReply = Callable[[ApiError | None], None]

# A token timer: (session id, auth generation, "expiring" or "expired").
_Expiry = tuple[str, int, Literal["expiring", "expired", "start"]]

#: The token timers of sessions that ended (or re-authenticated) stay in the heap until
#: their deadline, a token's lifetime away; past this many more timers than the live
#: sessions can hold (three each), those are dropped.
_EXPIRY_SLACK: Final = 1024


class Gateway:
    """The client sessions of this node, whatever their transport (see the module docstring).

    Args:
        config: the configuration in force (read at each use).
        clock: wall time (token expiry, ``server_time``).
        node: this node's id.
        router: where admitted sessions register.
        bans: the ban checks.
        hooks: what the capabilities do as sessions come and go.

    Attributes:
        sessions: the admitted sessions by id, every transport.
        overflows: sessions closed because their outbox overflowed (4008).
    """

    def __init__(
        self,
        config: Live[Config],
        *,
        clock: WallClock,
        node: str,
        router: Router,
        bans: Bans,
        hooks: SessionHooks,
    ) -> None:
        self._config = config
        self.clock = clock
        self.node = node
        self.router = router
        self.bans = bans
        self.hooks = hooks
        router.user_closed_hooks.append(bans.forget)
        self.sessions: dict[str, ClientSession] = {}
        self._by_transport: dict[str, int] = {}
        self._pending = 0
        self._draining = False
        #: set when the node starts draining (long-lived answers, such as the console's stats stream, end then)
        self.drain_started = trio.Event()
        self.overflows = 0
        self._all_closed = trio.Event()
        self._all_closed.set()
        self._expiry: Deadlines[_Expiry] = Deadlines()
        self._start_checks: dict[str, Callable[[], bool]] = {}
        self._nursery: trio.Nursery | None = None
        # Fair (first come, first served): gateway.max_admissions at once, read at each admission.
        self._admissions = trio.CapacityLimiter(config.value.gateway.max_admissions)

    @property
    def config(self) -> Config:
        return self._config.value

    @property
    def draining(self) -> bool:
        """The node is draining: no session is admitted any more."""
        return self._draining

    def count(self, transport: str) -> int:
        """Admitted sessions of one transport."""
        return self._by_transport.get(transport, 0)

    async def run(self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._expiry_timer)
            task_status.started(self)

    def watch_start(self, session: ClientSession, started: Callable[[], bool]) -> None:
        """End an admitted session whose transport has not begun serving it within
        ``gateway.handshake_timeout_s``.

        An SSE response whose client went away before its body began is never
        iterated, so nothing else would end its session: it would stay registered
        and count toward the user's and the node's limits for good.
        """
        self._start_checks[session.id] = started
        deadline = trio.current_time() + self.config.gateway.handshake_timeout_s
        self._push_expiry(deadline, (session.id, session.auth_generation, "start"))

    # -- admission ---------------------------------------------------------------------------

    @contextmanager
    def admitting(self) -> Iterator[None]:
        """Count a session being admitted toward ``gateway.max_sockets`` for as long as the block runs.

        A transport enters it before it authenticates (the WebSocket door, while
        it waits for an ``auth`` frame), and calls ``admit`` inside it.
        """
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    def capacity_refusal(self) -> Refusal | None:
        """Draining, or full (admitted sessions plus those being admitted); call inside ``admitting``."""
        if self._draining:
            return Refusal("node_full", CLOSE_NODE_FULL, "node draining", Unavailable("node draining"))
        if len(self.sessions) + self._pending > self.config.gateway.max_sockets:
            return Refusal("node_full", CLOSE_NODE_FULL, "node full", Unavailable("node full"))
        return None

    async def admit(self, session: ClientSession, claims: Claims, *, reply: AuthReply | None = None) -> Admission:
        """Admit an authenticated session, or refuse and close it (see the module docstring).

        Call inside ``admitting``. ``reply`` answers the transport's own auth
        request: with the error just before a refusal's close, with None just
        before ``session.ready``. Returns the outcome; ``closed`` when the
        session closed while it was being admitted.

        At most ``gateway.max_admissions`` run at once; the others wait in
        arrival order (a reconnect storm).
        """
        limiter = self._admissions
        limiter.total_tokens = self.config.gateway.max_admissions
        async with limiter:
            return await self._admit(session, claims, reply)

    async def _admit(self, session: ClientSession, claims: Claims, reply: AuthReply | None) -> Admission:
        refusal = self.capacity_refusal()
        start: SessionStart | None = None
        if refusal is None:
            start, refusal = await self._user_checks(claims.sub)
        if refusal is None and self._draining:  # the drain began while the store was asked
            refusal = self.capacity_refusal()
        if refusal is not None:
            if reply is not None:
                reply(refusal.error)
            session.close(refusal.code, refusal.reason)
            return refusal.outcome
        if session.closing:
            return "closed"
        session.user_id = claims.sub
        session.claims = claims
        logs.annotate(session=session.id, user=claims.sub)
        session.expires_at = claims.exp
        self.sessions[session.id] = session
        self._by_transport[session.transport] = self._by_transport.get(session.transport, 0) + 1
        if self._all_closed.is_set():
            self._all_closed = trio.Event()
        SOCKETS.labels(session.transport).inc()
        await self.router.add(session, addresses=claims.claim_rooms)
        if reply is not None:
            reply(None)
        session.send_event("session.ready", await self.ready_data(session, start))
        self.arm_expiry(session)
        self._mark_active(session.user_id)
        for hook in self.hooks.on_connect:
            await hook(session)
        log.debug("session %s: user %s connected from %s (%s)", session.id, claims.sub, session.address, session.transport)
        return "accepted"

    async def _user_checks(self, user_id: str) -> tuple[SessionStart | None, Refusal | None]:
        """The store's ban (with the unread counts) and the user's device count, asked at once."""
        start: SessionStart | None = None
        devices = 0

        async def read_store() -> None:
            nonlocal start
            start = await self.bans.admission(user_id)

        async def count_devices() -> None:
            nonlocal devices
            devices = await self._user_socket_count(user_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_store)
            nursery.start_soon(count_devices)
        if start is not None and start.ban is not None:
            return start, Refusal("banned", CLOSE_BANNED, "banned", Banned(start.ban.until))
        if devices >= self.config.gateway.max_sockets_per_user:
            reason = "too many sockets for this user"
            return start, Refusal("too_many_sockets", CLOSE_TOO_MANY_SOCKETS, reason, Forbidden(reason))
        return start, None

    async def _user_socket_count(self, user_id: str) -> int:
        """The user's sessions: on this node, or on every node when presence is shared."""
        count = len(self.router.user_sessions(user_id))
        shared = self.hooks.user_socket_count
        if shared is not None:
            try:
                count = max(count, await shared(user_id))
            except ApiError as exc:
                log.warning("user %s: cluster-wide socket count unavailable (%s); counting this node", user_id, exc.message)
        return count

    async def ready_data(self, session: ClientSession, start: SessionStart | None = None) -> dict[str, Any]:
        """The data of ``session.ready``; ``start`` is what admission read from the store."""
        data: dict[str, Any] = {
            "session_id": session.id,
            "user_id": session.user_id,
            "node": self.node,
            "server_time": iso(self.clock.now()),
            "heartbeat_s": self.config.gateway.heartbeat_s,
            "expires_at": iso(session.expires_at),
            "unread_total": start.unread_total if start is not None else 0,
            "notifications_unread": start.notifications_unread if start is not None else 0,
            "addresses": list(self.router.address_rooms(session.id)),
        }
        hooks = self.hooks.ready_fields
        if not hooks:
            return data
        answers: list[Mapping[str, Any]] = [{} for _ in hooks]

        async def ask(index: int, hook: ReadyFields) -> None:
            try:
                answers[index] = await hook(session.user_id)
            except ApiError as exc:
                log.warning("session %s: session.ready field unavailable: %s", session.id, exc.message)

        async with trio.open_nursery() as nursery:
            for index, hook in enumerate(hooks):
                nursery.start_soon(ask, index, hook)
        for answer in answers:
            data.update(answer)
        return data

    # -- activity ----------------------------------------------------------------------------

    def touch(self, session: ClientSession) -> None:
        """An op other than ``ping`` arrived on the session: the user is active (here and for the cluster)."""
        session.last_active = trio.current_time()
        self._mark_active(session.user_id)

    def _mark_active(self, user_id: str) -> None:
        mark_active = self.hooks.mark_active
        if mark_active is not None:
            mark_active(user_id)

    # -- expiry ------------------------------------------------------------------------------

    def arm_expiry(self, session: ClientSession) -> None:
        """Schedule ``session.expiring`` and the 4004 close for the session's current token.

        Called once ``session.ready`` (or a re-auth reply) is written, so that a
        token with less than ``expiring_notice_s`` left gets its ``session.expiring``
        right behind it.
        """
        exp = session.expires_at
        if exp is None or session.closing:
            return
        wall_now = self.clock.now()
        to_exp = (exp - wall_now).total_seconds()
        to_deadline = (token_deadline(exp, self.config.auth.leeway_s) - wall_now).total_seconds()
        now = trio.current_time()
        gen = session.auth_generation
        if session.sends_expiring:
            notice = self.config.gateway.expiring_notice_s
            if to_exp > notice:
                self._push_expiry(now + to_exp - notice, (session.id, gen, "expiring"))
            else:
                session.send_event("session.expiring", {"expires_at": iso(exp)})
        self._push_expiry(now + max(0.0, to_deadline), (session.id, gen, "expired"))

    def _push_expiry(self, when: float, timer: _Expiry) -> None:
        """Schedule a timer, first dropping those of ended sessions and older tokens when too many."""
        if len(self._expiry) >= _EXPIRY_SLACK + 3 * len(self.sessions):
            self._expiry.prune(self._timer_live)
        self._expiry.push(when, timer)

    def _timer_live(self, timer: _Expiry) -> bool:
        session_id, gen, kind = timer
        session = self.sessions.get(session_id)
        return session is not None and (kind == "start" or session.auth_generation == gen)

    async def _expiry_timer(self) -> None:
        while True:
            _, due = await self._expiry.due()
            for session_id, gen, kind in due:
                session = self.sessions.get(session_id)
                if kind == "start":
                    started = self._start_checks.pop(session_id, None)
                    if session is not None and started is not None and not started() and self._nursery is not None:
                        log.info("session %s: its transport never began serving it: ending it", session_id)
                        self._nursery.start_soon(session.aclose)
                    continue
                if session is None or session.auth_generation != gen or session.closing:
                    continue
                if kind == "expiring":
                    session.send_event("session.expiring", {"expires_at": iso(session.expires_at)})
                else:
                    session.close(CLOSE_TOKEN_EXPIRED, "token expired")

    # -- the end -----------------------------------------------------------------------------

    def note_overflow(self, session: ClientSession) -> None:
        """The session's outbox passed ``gateway.outbox_max_bytes`` (it closes itself with 4008)."""
        self.overflows += 1
        OUTBOX_OVERFLOWS.inc()
        log.info("session %s: outbox over %d bytes: closing with 4008", session.id, self.config.gateway.outbox_max_bytes)

    async def end(self, session: ClientSession) -> None:
        """The session is over (its transport calls this once, admitted or not)."""
        self._start_checks.pop(session.id, None)
        if self.sessions.pop(session.id, None) is not None:
            self._by_transport[session.transport] -= 1
            SOCKETS.labels(session.transport).dec()
            await self.router.remove(session)
            for hook in self.hooks.on_disconnect:
                try:
                    await hook(session)
                except Exception:
                    log.exception("session %s: disconnect hook failed", session.id)
            log.debug("session %s: closed (%s)", session.id, session.close_code)
        if not self.sessions:
            self._all_closed.set()

    async def disconnect(self, user_id: str, *, session_id: str | None = None, ban_until: datetime | None = None) -> int:
        """Close a user's sessions (or one) with 4510 on every node; a ban refuses new ones with 4503.

        The ban is stored before any session is closed, so a reconnect meets it.
        Returns how many this node closed (not those already closing); other
        nodes close theirs through the broker.

        Raises:
            Unavailable: the store (the ban) or the broker (other nodes) cannot be reached.
        """
        if ban_until is not None:
            await self.bans.ban(user_id, ban_until)
        return await self.router.close_user(
            user_id, CLOSE_DISCONNECTED, "disconnected by the server", session_id=session_id
        )

    def stop_admitting(self) -> None:
        """Refuse every new session from now on (the node is draining)."""
        self._draining = True
        self.drain_started.set()

    async def drain(self) -> None:
        """Tell every session to reconnect elsewhere or later, close them, wait until all have ended."""
        self.stop_admitting()
        cfg = self.config.shutdown
        for session in list(self.sessions.values()):
            delay = random.randint(cfg.reconnect_min_ms, cfg.reconnect_max_ms)
            session.shutdown(encode_event("server.shutdown", {"reconnect_after_ms": delay}))
        await self._all_closed.wait()


def ban_until(clock_now: datetime, ban_s: float | None) -> datetime | None:
    return None if not ban_s else clock_now + timedelta(seconds=ban_s)
