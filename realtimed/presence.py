"""User presence: online, away, busy, invisible and offline (docs/protocol.md sections 5.4 and 6).

A user is *connected* while any of their devices (a WebSocket or an SSE stream)
is, and stays so for ``presence.offline_grace_s`` after the last one closed, so
that a quick reconnect does not flap. What others see is one of ``online``,
``away``, ``busy`` and ``offline``:

- not connected, or ``invisible`` chosen with ``presence.set``: ``offline``;
- ``busy`` or ``away`` chosen: that;
- ``online`` chosen (the default): ``away`` after ``presence.away_after_s``
  with no op other than ``ping`` on any device, ``online`` otherwise. A chat or
  presence op brings an away user back at once; other ops (``subscribe``,
  ``publish``) are noticed by a check of the away user's devices, first
  ``presence.idle_check_s`` after they turned away, then at doubling intervals
  up to four times that (a long idle user is checked less often).

``last_seen`` is the time the user last turned ``offline`` as others see it
(the close of the last device, or the moment they chose ``invisible``); it is
stored, so it survives restarts. The chosen status and message live in the
presence backend, also across reconnects; they are ephemeral and a restart of
the in-process backend forgets them.

``presence.updated`` goes to every device of the user's contacts (users who share
a conversation with them, or were added as contacts by the server API), at most
once per ``presence.throttle_s`` per user: a change sends at once when the
previous event is older than that, and otherwise one event with the state of
that moment goes out when the interval is over (the trailing edge), so the last
state is always sent and an unchanged state is never sent twice.

Timers are node-wide: one task keeps one heap of deadlines (offline grace, idle
checks, throttled sends) for every user of this node.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import attrs
import trio
from quart import g

from realtimed import protocol
from realtimed.api.ops import Caller, OpHandler
from realtimed.api.routes import OpCall, OpInput, OpReply, Route, query_csv, route, services
from realtimed.clock import WallClock, iso
from realtimed.config import Config, PresenceConfig
from realtimed.deadlines import Deadlines
from realtimed.delivery.router import Router
from realtimed.errors import ApiError, Unavailable
from realtimed.live import Live
from realtimed.protocol import PresenceQuery, PresenceSet
from realtimed.store.base import Store

__all__ = [
    "MemoryPresence",
    "PresenceBackend",
    "PresenceRecord",
    "PresenceService",
    "visible_status",
]

log = logging.getLogger(__name__)

Chosen = Literal["online", "away", "busy", "invisible"]
Visible = Literal["online", "away", "busy", "offline"]

_CONCURRENCY: Final = 16
# How soon the end of a grace period, or a presence.updated that could not be sent, is tried again
# while the presence backend or the broker is out of reach.
_GRACE_RETRY_S: Final = 1.0
_SHUTDOWN_S: Final = 3.0  # at most this long to store last seen times when the node stops
_IDLE_BACKOFF: Final = 4.0  # the checks of an idle user's devices slow down to this many idle_check_s


@attrs.frozen
class PresenceRecord:
    """A user's presence as every node sees it.

    Attributes:
        status: what others see (``online``, ``away``, ``busy``, ``offline``).
        chosen: what the user chose with ``presence.set`` (``online`` by default).
        message: the user's status message (shown only while not offline).
    """

    status: Visible = "offline"
    chosen: Chosen = "online"
    message: str | None = None

    @property
    def is_default(self) -> bool:
        """Nothing worth keeping: offline and nothing chosen."""
        return self.status == "offline" and self.chosen == "online" and self.message is None


def visible_status(chosen: Chosen, *, connected: bool, idle: bool) -> Visible:
    """What others see, from what the user chose, whether a device is connected
    (or the grace period runs), and whether every device has been idle."""
    if not connected or chosen == "invisible":
        return "offline"
    if chosen == "online":
        return "away" if idle else "online"
    return chosen


class PresenceBackend(Protocol):
    """Where presence is kept: device counts and each user's ``PresenceRecord``.

    The in-process ``MemoryPresence`` serves one node; a shared backend (Redis)
    makes the counts and records cluster-wide.

    Ordering: the calls one node makes about one user take effect in the order
    it makes them. Different nodes' calls about one user are not ordered.

    Atomicity: each call is atomic for the user it names; ``add_session`` and
    ``remove_session`` answer the count right after their own change.

    Expiry: the in-process backend keeps everything until told otherwise (its
    node's death takes it along). A shared backend must expire the sessions of
    a node that stopped heartbeating, so that its users do not stay online.
    """

    async def add_session(self, user_id: str, session_id: str) -> int:
        """Count a device of the user; returns the user's devices, on every node."""
        ...

    async def arrive(self, user_id: str, session_id: str, *, online: bool = False) -> tuple[int, PresenceRecord | None]:
        """``add_session`` and then ``get`` of the user's record, as one atomic call
        (one round trip on a connect): the devices on every node, and the record or None.

        ``online``: the user just came online on this node (connected and not idle): the
        record's ``status`` is set in the same call to what such a user shows
        (``visible_status(chosen, connected=True, idle=False)``), and the record answered
        is the one written.
        """
        ...

    async def remove_session(self, user_id: str, session_id: str) -> int:
        """Forget a device (unknown ids are ignored); returns the devices left."""
        ...

    async def get(self, user_ids: Sequence[str]) -> dict[str, PresenceRecord]:
        """The records of those users that have one (others are offline, nothing chosen)."""
        ...

    async def put(self, user_id: str, record: PresenceRecord) -> None:
        """Store a user's record; a default record (``is_default``) is forgotten."""
        ...

    async def online(self, *, prefix: str = "", after: str | None = None, limit: int = 100) -> tuple[list[tuple[str, int]], int]:
        """Connected users (a device on any node), in user id order.

        Returns up to ``limit`` (user, devices) pairs of users whose id starts
        with ``prefix`` and sorts after ``after``, and how many users with that
        prefix are connected (whatever ``after``). Ids sort by code point (the
        order of their UTF-8 bytes).
        """
        ...


class MemoryPresence:
    """The in-process presence backend (the default, and the test double)."""

    def __init__(self) -> None:
        self._sessions: dict[str, set[str]] = {}
        self._records: dict[str, PresenceRecord] = {}

    async def add_session(self, user_id: str, session_id: str) -> int:
        devices = self._sessions.setdefault(user_id, set())
        devices.add(session_id)
        return len(devices)

    async def arrive(self, user_id: str, session_id: str, *, online: bool = False) -> tuple[int, PresenceRecord | None]:
        count = await self.add_session(user_id, session_id)
        record = self._records.get(user_id)
        if online:
            before = record or PresenceRecord()
            status = visible_status(before.chosen, connected=True, idle=False)
            if status != before.status:
                record = attrs.evolve(before, status=status)
                await self.put(user_id, record)
        return count, record

    async def remove_session(self, user_id: str, session_id: str) -> int:
        devices = self._sessions.get(user_id)
        if devices is None:
            return 0
        devices.discard(session_id)
        if not devices:
            del self._sessions[user_id]
            return 0
        return len(devices)

    async def get(self, user_ids: Sequence[str]) -> dict[str, PresenceRecord]:
        records = self._records
        return {uid: records[uid] for uid in user_ids if uid in records}

    async def put(self, user_id: str, record: PresenceRecord) -> None:
        if record.is_default:
            self._records.pop(user_id, None)
        else:
            self._records[user_id] = record

    async def online(self, *, prefix: str = "", after: str | None = None, limit: int = 100) -> tuple[list[tuple[str, int]], int]:
        matching = sorted(uid for uid in self._sessions if uid.startswith(prefix))
        start = bisect.bisect_right(matching, after) if after is not None else 0
        await trio.lowlevel.checkpoint()
        return [(uid, len(self._sessions[uid])) for uid in matching[start : start + limit]], len(matching)


class _Device(Protocol):
    """What presence needs of a session (``gateway.client.ClientSession``)."""

    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def last_active(self) -> float | None:
        """Trio time of the last op other than ping; None for a transport without ops (SSE)."""


@attrs.define(eq=False)
class _Local:
    """This node's timing state for one user."""

    devices: dict[str, _Device] = attrs.field(factory=dict)
    connected: bool = False  # a device is connected, or the grace period runs
    grace_gen: int = 0
    grace_pending: bool = False  # the last device anywhere closed; offline when the grace period ends
    disconnected_at: datetime | None = None
    touched: float = float("-inf")  # trio time of the last op seen by chat or presence
    idle: bool = False
    idle_mark: float = 0.0  # the last activity when the user turned idle
    idle_poll: float = 0.0  # the current interval of the checks while idle
    idle_gen: int = 0
    sent: tuple[str, str | None] | None = None  # (status, message) last published
    delivered_here: tuple[str, str | None] | None = None  # last handed to this node's contacts
    sent_at: float = float("-inf")
    flush_gen: int = 0
    flush_pending: bool = False
    # Sessions closed here whose removal the presence backend did not take (it was
    # out of reach): removed again when the grace period ends, until it answers.
    unremoved: set[str] = attrs.field(factory=set)

    def last_activity(self) -> float:
        latest = self.touched
        for device in self.devices.values():
            # An SSE stream sends no ops (None): it counts as active when it connected.
            active = device.last_active
            if active is not None and active > latest:
                latest = active
        return latest


_Kind = Literal["grace", "idle", "recompute", "flush", "forget"]


class PresenceService:
    """The presence supervisor of one node (see the module docstring).

    Args:
        config: the configuration in force (``[presence]`` is read at each use).
        store: last seen times and contacts.
        router: delivers ``presence.updated``.
        clock: wall time (last seen).
        backend: device counts and records (in-process by default; shared in a cluster).

    Resource handling:
        ``run`` owns one timer task (grace periods, idle checks, throttled
        sends); due work runs in a nursery of that task, at most 16 at once.
        Hooks (``on_connect``, ``on_disconnect``) touch only memory and the
        presence backend; store reads and writes (contacts, last seen) and
        deliveries happen in the timer task.

    Error handling:
        A store or broker that is unavailable while a change is published, or a
        presence backend that is unavailable when a grace period ends, is logged
        and the user's state at that moment is tried again every
        ``_GRACE_RETRY_S`` until it goes through: what contacts see converges on
        the current state, and the states in between are dropped (presence is
        ephemeral). A device closed while the backend was unavailable is
        removed from it then. Hooks never raise into the gateway.
    """

    def __init__(
        self,
        config: Live[Config],
        *,
        store: Store,
        router: Router,
        clock: WallClock,
        backend: PresenceBackend | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._router = router
        self._clock = clock
        self.backend: PresenceBackend = backend or MemoryPresence()
        self._local: dict[str, _Local] = {}
        self._timers: Deadlines[tuple[str, _Kind, int]] = Deadlines()
        self._limiter = trio.CapacityLimiter(_CONCURRENCY)
        #: Called with (user id, "online" or "offline") when a user comes online from
        #: offline or goes offline (webhooks' presence.online and presence.offline).
        self.online_hooks: list[Callable[[str, str], Awaitable[None]]] = []

    # -- service -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[PresenceService] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_timers)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_SHUTDOWN_S):
                await self._all_gone()

    async def _all_gone(self) -> None:
        """The node stops while grace periods run: those users had no device left
        anywhere, so their last seen is stored now rather than never."""
        now = self._clock.now()
        for uid, local in list(self._local.items()):
            if not local.grace_pending or local.devices:
                continue
            try:
                record = await self._record(uid)
                if record.status == "offline":
                    continue
                await self._store.set_last_seen(user_id=uid, at=local.disconnected_at or now)
                await self.backend.put(uid, attrs.evolve(record, status="offline"))
            except Exception as exc:  # the store or a shared backend may be closing too
                log.info("last seen not stored at shutdown (user %s and later ones): %r", uid, exc)
                return

    def ops(self) -> dict[str, OpHandler]:
        """``presence.set`` and ``presence.query``, for the daemon to add to the op
        registry (the session hooks are ``on_connect`` and ``on_disconnect``, wired by
        the daemon)."""
        return {"presence.set": self._op_set, "presence.query": self._op_query}

    @property
    def _cfg(self) -> PresenceConfig:
        return self._config.value.presence

    def connected(self, user_id: str) -> bool:
        """Whether the user has a device on this node or is in the grace period."""
        local = self._local.get(user_id)
        return local is not None and local.connected

    # -- hooks ---------------------------------------------------------------------------------

    async def on_connect(self, session: _Device) -> None:
        """A device of the user was admitted (a socket, or an SSE stream)."""
        uid = session.user_id
        local = self._local.setdefault(uid, _Local())
        local.devices[session.id] = session
        local.grace_gen += 1  # ends a running grace period
        local.grace_pending = False
        now = trio.current_time()
        local.touched = now
        # The local state first: if the backend is out of reach, the resync that
        # follows its return (a shared backend's) announces the user as this says.
        changed = not local.connected or local.idle
        if changed:
            local.connected = True
            local.idle = False
            self._schedule_idle(uid, local, now + self._cfg.away_after_s)
        try:
            # A change is written with the arrival: one round trip (``_changed`` finds the status current).
            _, record = await self.backend.arrive(uid, session.id, online=changed)
            if changed:
                await self._changed(uid, local, record=record or PresenceRecord())
        except ApiError as exc:
            log.warning("session %s: presence backend: %s", session.id, exc.message)

    async def on_disconnect(self, session: _Device) -> None:
        """A device of the user closed; the last one starts the grace period."""
        uid = session.user_id
        local = self._local.get(uid)
        if local is None or local.devices.pop(session.id, None) is None:
            return
        # Marked before the backend is asked: if this hook is cancelled meanwhile (the
        # transport's cleanup budget ran out while Redis was slow), the grace period
        # still ends and removes the session from the backend then.
        local.unremoved.add(session.id)
        grace_gen = 0
        if not local.devices:
            local.disconnected_at = self._clock.now()
            local.grace_gen += 1
            local.grace_pending = True
            grace_gen = local.grace_gen
            self._push(trio.current_time() + self._cfg.offline_grace_s, uid, "grace", grace_gen)
        try:
            left = await self.backend.remove_session(uid, session.id)
        except ApiError as exc:
            log.warning("session %s: presence backend: %s", session.id, exc.message)
            return
        local.unremoved.discard(session.id)
        if left > 0 and grace_gen and grace_gen == local.grace_gen and not local.unremoved:
            # A device on another node keeps the user online: no grace period here.
            local.grace_gen += 1
            local.grace_pending = False

    async def users_gone(self, user_ids: list[str]) -> None:
        """Users whose every device was on a node that died (the shared backend's reaper).

        Only the node that reaped the dead node calls this, so each of those users'
        contacts get one ``presence.updated`` (offline, with last seen).
        """
        for uid in user_ids:
            local = self._local.get(uid)
            if local is not None and local.devices:
                continue  # came back on this node meanwhile
            try:
                before = await self._record(uid)
                if before.status == "offline":
                    continue  # others saw them offline already (invisible)
                local = self._local.setdefault(uid, _Local())
                local.connected = False
                local.disconnected_at = self._clock.now()
                # What the contacts saw, so that the change to offline is sent.
                local.sent = local.delivered_here = (before.status, before.message)
                await self._changed(uid, local)
            except ApiError as exc:
                log.warning("user %s: presence after a node died: %s", uid, exc.message)

    def local_devices(self) -> list[tuple[str, str]]:
        """(user, session) of every device connected to this node."""
        return [(uid, sid) for uid, local in self._local.items() for sid in local.devices]

    async def resynced(self) -> None:
        """This node's devices were written back to the shared backend after it was
        taken for dead: users that another node announced offline meanwhile are
        announced again as they are, and so are users whose arrival had no answer
        (the backend may have applied it late, status included, with nothing sent)."""
        for uid, local in list(self._local.items()):
            if not local.devices:
                continue
            try:
                record = await self._record(uid)
                if record.status == "offline":
                    local.sent = local.delivered_here = ("offline", None)  # what the contacts saw
                elif local.sent == (record.status, record.message):
                    continue
                await self._changed(uid, local)
            except ApiError as exc:
                log.warning("user %s: presence after a resync: %s", uid, exc.message)

    def touch(self, user_id: str) -> None:
        """The user did something (an op reached chat or presence): not idle any more."""
        local = self._local.get(user_id)
        if local is None:
            return
        now = trio.current_time()
        local.touched = now
        if local.idle and local.connected:
            local.idle = False
            self._schedule_idle(user_id, local, now + self._cfg.away_after_s)
            self._push(now, user_id, "recompute", 0)

    # -- ops -----------------------------------------------------------------------------------

    async def _op_set(self, caller: Caller, value: PresenceSet) -> dict[str, Any]:
        uid = caller.user_id
        self.touch(uid)
        record = (await self.backend.get([uid])).get(uid, PresenceRecord())
        await self.backend.put(uid, attrs.evolve(record, chosen=value.status, message=value.message or None))
        local = self._local.get(uid)
        if local is not None:
            await self._changed(uid, local)
        return {}

    async def _op_query(self, caller: Caller, value: PresenceQuery) -> dict[str, Any]:
        self.touch(caller.user_id)
        if not value.user_ids:
            return {"presences": {}}
        contacts: set[str] = await self._store.contact_ids(caller.user_id)
        allowed = [uid for uid in value.user_ids if uid in contacts]
        return {"presences": await self.describe(allowed)}

    async def describe(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{status, message, last_seen}`` of each user, as others see them."""
        if not user_ids:
            return {}
        records = await self.backend.get(user_ids)
        seen: dict[str, datetime] = await self._store.get_last_seen(user_ids)
        out: dict[str, dict[str, Any]] = {}
        for uid in user_ids:
            record = records.get(uid, PresenceRecord())
            out[uid] = _wire(uid, record.status, record.message, seen.get(uid))
        return out

    # -- state changes -------------------------------------------------------------------------

    async def _record(self, uid: str) -> PresenceRecord:
        return (await self.backend.get([uid])).get(uid, PresenceRecord())

    async def _changed(self, uid: str, local: _Local, *, record: PresenceRecord | None = None) -> None:
        """Recompute what others see, store it, and schedule ``presence.updated``.

        ``record`` is the user's record when the caller has just read it (a connect).
        """
        if record is None:
            record = await self._record(uid)
        status = visible_status(record.chosen, connected=local.connected, idle=local.idle)
        if status == "offline" and record.status != "offline":
            at = self._clock.now()
            if not local.connected and local.disconnected_at is not None:
                at = local.disconnected_at
            try:
                await self._store.set_last_seen(user_id=uid, at=at)
            except ApiError as exc:
                log.warning("user %s: last seen not stored: %s", uid, exc.message)
            # Read again: presence.set may have changed the record meanwhile.
            record = await self._record(uid)
            status = visible_status(record.chosen, connected=local.connected, idle=local.idle)
        if status != record.status:
            await self.backend.put(uid, attrs.evolve(record, status=status))
        self._schedule_send(uid, local)

    def _schedule_send(self, uid: str, local: _Local) -> None:
        if local.flush_pending:
            return
        local.flush_pending = True
        local.flush_gen += 1
        when = max(trio.current_time(), local.sent_at + self._cfg.throttle_s)
        self._push(when, uid, "flush", local.flush_gen)

    def _schedule_idle(self, uid: str, local: _Local, when: float) -> None:
        local.idle_gen += 1
        self._push(when, uid, "idle", local.idle_gen)

    def _push(self, when: float, uid: str, kind: _Kind, gen: int) -> None:
        self._timers.push(when, (uid, kind, gen))

    # -- the timer task ------------------------------------------------------------------------

    async def _run_timers(self) -> None:
        while True:
            now, due = await self._timers.due()
            async with trio.open_nursery() as nursery:
                for uid, kind, gen in due:
                    nursery.start_soon(self._fire, uid, kind, gen, now)

    async def _fire(self, uid: str, kind: _Kind, gen: int, now: float) -> None:
        local = self._local.get(uid)
        if local is None:
            return
        async with self._limiter:
            try:
                if kind == "grace":
                    if gen == local.grace_gen and not local.devices:
                        await self._grace_over(uid, local, gen)
                elif kind == "idle":
                    if gen == local.idle_gen and local.connected and local.devices:
                        await self._idle_check(uid, local, now)
                elif kind == "recompute":
                    await self._changed(uid, local)
                elif kind == "flush":
                    if gen == local.flush_gen and local.flush_pending:
                        local.flush_pending = False
                        try:
                            await self._send(uid, local)
                        except Unavailable as exc:
                            # The state is sent again once the broker (or the store) answers:
                            # the contacts' view converges, the states in between are dropped.
                            log.warning("user %s: presence not sent yet: %s; trying again", uid, exc.message)
                            local.flush_pending = True
                            local.flush_gen += 1
                            self._push(trio.current_time() + _GRACE_RETRY_S, uid, "flush", local.flush_gen)
                elif not local.connected and not local.devices and not local.flush_pending:
                    # "forget": offline, published, and the throttle interval is over.
                    self._local.pop(uid, None)
            except ApiError as exc:
                log.warning("user %s: presence %s: %s", uid, kind, exc.message)
            except Exception:
                # A bug must not take the node down: this user's presence may be off until its next change.
                log.exception("user %s: presence %s failed", uid, kind)

    async def _grace_over(self, uid: str, local: _Local, gen: int) -> None:
        """The grace period after the user's last device here closed is over: offline,
        unless a device elsewhere remains. While the presence backend is out of reach
        this is tried again every ``_GRACE_RETRY_S``, so that what others see converges
        once it answers (a close during a partition is not lost)."""
        try:
            if local.unremoved:
                left = 0
                for sid in sorted(local.unremoved):
                    left = await self.backend.remove_session(uid, sid)
                    local.unremoved.discard(sid)
                if left > 0:
                    # A device on another node: that node keeps the user online.
                    local.grace_pending = False
                    local.connected = False
                    return
                if (await self._record(uid)).status == "offline":
                    # Another node announced it meanwhile (it took this one for dead).
                    local.sent = local.delivered_here = ("offline", None)
            local.connected = False
            local.idle = False
            local.idle_gen += 1
            await self._changed(uid, local)
            local.grace_pending = False
        except ApiError as exc:
            log.warning("user %s: presence after the grace period: %s; trying again", uid, exc.message)
            if gen == local.grace_gen:
                self._push(trio.current_time() + _GRACE_RETRY_S, uid, "grace", gen)

    async def _idle_check(self, uid: str, local: _Local, now: float) -> None:
        away_after = self._cfg.away_after_s
        last = local.last_activity()
        if local.idle:
            if last > local.idle_mark:
                local.idle = False
                self._schedule_idle(uid, local, last + away_after)
                await self._changed(uid, local)
            else:
                local.idle_poll = min(2 * local.idle_poll, _IDLE_BACKOFF * self._cfg.idle_check_s)
                self._schedule_idle(uid, local, now + local.idle_poll)
        elif now >= last + away_after:  # the very sum it was scheduled at: never a hair short
            local.idle = True
            local.idle_mark = last
            local.idle_poll = self._cfg.idle_check_s
            self._schedule_idle(uid, local, now + local.idle_poll)
            await self._changed(uid, local)
        else:
            self._schedule_idle(uid, local, last + away_after)

    async def _send(self, uid: str, local: _Local) -> None:
        """Publish the user's current state to their contacts, unless it was the last sent."""
        record = await self._record(uid)
        message = record.message if record.status != "offline" else None
        state = (record.status, message)
        # Nothing was sent yet and the user looks offline: others saw them offline already.
        first_and_offline = local.sent is None and record.status == "offline"
        # ``delivered_here`` is what this node's contacts saw, ``sent`` what the other
        # nodes' saw: they differ after the broker refused a change (tried again later).
        here, there = state != local.delivered_here, state != local.sent
        if (here or there) and not first_and_offline:
            was_offline = local.delivered_here is None or local.delivered_here[0] == "offline"
            if here and was_offline != (record.status == "offline"):
                for hook in self.online_hooks:
                    await hook(uid, "offline" if record.status == "offline" else "online")
            # One round trip: the contacts, with the last seen only when there is anyone to tell.
            contacts, seen = await self._store.presence_audience(uid)
            if contacts:
                local.delivered_here = state  # handed to this node's sessions before the broker is asked
                await self._router.to_users(
                    contacts, "presence.updated", _wire(uid, record.status, message, seen), local=here, remote=there
                )
            local.sent = local.delivered_here = state
            local.sent_at = trio.current_time()
        elif first_and_offline:
            local.sent = local.delivered_here = state
        if not local.connected and not local.devices:
            self._push(max(trio.current_time(), local.sent_at + self._cfg.throttle_s), uid, "forget", 0)


def _wire(uid: str, status: str, message: str | None, last_seen: datetime | None) -> dict[str, Any]:
    return {
        "user_id": uid,
        "status": status,
        "message": message if status != "offline" else None,
        "last_seen": iso(last_seen),
    }


# -- client REST ------------------------------------------------------------------------------


def _presence() -> PresenceService:
    return services().presence


@route(
    "GET", "/presence", door="client", operation_id="getPresence",
    summary=f"Presence of up to {protocol.MAX_PRESENCE_QUERY} users, comma-separated (presence.query: contacts only, others are omitted)",
    tag="presence",
    accepts=OpInput(("presence.query",), query={"user_ids": query_csv}),
    answers=OpReply("presence.query"),
    guards=(_presence,),
)
async def query_presence(call: OpCall) -> dict[str, Any]:
    """``GET /api/v1/presence?user_ids=a,b``: ``presence.query`` over REST."""
    claims = g.claims
    caller = Caller(user_id=claims.sub, claims=claims, session=None)
    return await _presence()._op_query(caller, call.value)


def routes() -> tuple[Route, ...]:
    """Presence's route of the client REST."""
    return (query_presence,)
