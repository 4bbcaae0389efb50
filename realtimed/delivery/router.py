"""The router: which local sessions get a frame, and the bridge to other nodes.

The one primitive is delivery: a frame to a set of users (every device) or to an
app room's subscribers. The frame is encoded once whatever the number of
recipients, each recipient's ``send_frame`` is a synchronous, non-blocking call
(a session whose outbox overflows closes itself with 4008), so nothing here
waits on a slow socket and no task is woken per recipient.

A node hands each delivery to its own sessions, then publishes it through the
broker for the other nodes (which hand it to theirs).

Ordering: a room's publications leave a node in ``seq`` order. The history
assigns the ``seq`` (in Redis: a round trip), so overlapping publishes to one
room take turns on the room, from before the append until the frame is handed
to the local sessions and queued for the broker (whose queue keeps that order
per channel). Publishes to different rooms never wait for each other.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import orjson
import trio
from prometheus_client import Counter, Gauge, Histogram

from realtimed import metrics, protocol
from realtimed.broker.base import Broker, Close, Delivery, SurveyAnswers, SurveyHandler
from realtimed.clock import WallClock, iso
from realtimed.config import DEVICE_PREFIX, Config, NamespaceConfig, address_prefixes
from realtimed.delivery.rooms import (
    HistoryBackend,
    MemoryHistory,
    MemoryRoomPresence,
    Namespaces,
    Publication,
    Recovery,
    RoomPresenceBackend,
)
from realtimed.errors import Unavailable, ValidationFailed
from realtimed.frames import Frame

log = logging.getLogger(__name__)

DELIVERIES: Final = Counter(
    "realtimed_deliveries", "frames handed to local sockets (one per recipient socket)", registry=metrics.REGISTRY
)
PUBLICATIONS: Final = Counter(
    "realtimed_publications", "deliveries published (one per fan-out)", ["target"], registry=metrics.REGISTRY
)
DELIVERY_LATENCY: Final = Histogram(
    "realtimed_delivery_latency_seconds",
    "from publish to the last local socket write of a fan-out",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=metrics.REGISTRY,
)
ROOMS: Final = Gauge("realtimed_rooms", "app rooms with local subscribers", registry=metrics.REGISTRY)
USERS: Final = Gauge("realtimed_users", "users with a local session", registry=metrics.REGISTRY)


#: Room names one node sends in its answer to a ``counts`` survey, every namespace together.
MAX_SURVEY_ROOM_NAMES: Final = 20_000
#: Encoded bytes of the connections one node sends in its answer to a ``connections``
#: survey, well below what Redis lets a pub/sub subscriber fall behind (8 MiB by default).
MAX_SURVEY_ANSWER_BYTES: Final = 1_048_576

# The frame of a close delivery: never sent to a client.
CLOSE_FRAME: Final = Frame(b"{}")


class Recipient(Protocol):
    """What the router needs of a session (``gateway.client.ClientSession``, whatever its transport)."""

    id: str
    user_id: str
    rooms: set[str]

    @property
    def closing(self) -> bool: ...

    @property
    def last_active(self) -> float | None:
        """Trio time of the last op (None: active while connected); read by the push-skip rule."""

    def send_frame(self, frame: Frame) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...

    def info(self) -> dict[str, Any]: ...


class FeedSource(Protocol):
    """Where the rooms of activity feeds (``feed:<name>``) take their positions and
    recovery from: the store, not the room history (``realtimed.feeds``)."""

    def is_feed_room(self, room: str) -> bool: ...

    async def position(self, room: str) -> tuple[int, str]: ...

    async def recover(self, room: str, *, since_seq: int, since_epoch: str) -> Recovery: ...


class Router:
    """Local sessions by user and by room, and delivery to them and to other nodes.

    Resource handling:
        ``run`` attaches the router to the broker and holds nothing else; the
        sessions register and unregister themselves.

    Error handling:
        A broker that cannot be reached makes publishing raise ``Unavailable``
        after the local delivery is done: local sockets never miss a frame because
        the broker is down.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        node: str,
        broker: Broker,
        clock: WallClock,
        history: HistoryBackend | None = None,
        room_presence: RoomPresenceBackend | None = None,
    ) -> None:
        self.node = node
        self.broker = broker
        self.clock = clock
        self.history: HistoryBackend = history or MemoryHistory()
        self.room_presence_backend: RoomPresenceBackend = room_presence or MemoryRoomPresence()
        self.namespaces = Namespaces(cfg.namespaces, addresses=address_prefixes(cfg))
        self._namespace_prefixes = tuple(ns.prefix for ns in cfg.namespaces)
        self._survey_timeout_s = cfg.broker.survey_timeout_s
        self._history_sweep_s = cfg.broker.history_sweep_s
        # op → what this node answers to another node's survey (see ``survey``)
        self.survey_handlers: dict[str, SurveyHandler] = {
            "connections": self._survey_connections,
            "counts": self._survey_counts,
            "node": self._survey_node,
        }
        self.sessions: dict[str, Recipient] = {}
        # address room (device:<id>, claim rooms) → its sessions here; apart from app
        # rooms, so that they count neither as rooms nor as subscriptions
        self._address_rooms: dict[str, dict[str, Recipient]] = {}
        # session id → its address rooms
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._users: dict[str, dict[str, Recipient]] = {}
        self._rooms: dict[str, dict[str, Recipient]] = {}
        # room → user → this node's subscriptions of the user (the backend counts every node's)
        self._room_users: dict[str, dict[str, int]] = {}
        # room → session id → live frames held while that socket's subscribe is answered
        self._held: dict[str, dict[str, list[Frame]]] = {}
        # feed room → session id → the seq its subscribe reply covered: a live activity at
        # or below it (committed before the reply was read, delivered after) is not sent again
        self._floors: dict[str, dict[str, int]] = {}
        # room → its turn of publications that take a seq (only while one is under way)
        self._turns: dict[str, _RoomTurn] = {}
        self.deliveries = 0
        #: fan-outs published (what ``realtimed_publications`` counts), a plain count for rates
        self.publications = 0
        self._rate_mark = (0, 0.0)
        # Called with the user id of every ``close_user`` delivery, from any node.
        self.user_closed_hooks: list[Callable[[str], None]] = []

    def set_config(self, cfg: Config) -> None:
        self.namespaces = Namespaces(cfg.namespaces, addresses=address_prefixes(cfg))
        self._namespace_prefixes = tuple(ns.prefix for ns in cfg.namespaces)
        self._survey_timeout_s = cfg.broker.survey_timeout_s
        self._history_sweep_s = cfg.broker.history_sweep_s

    async def run(self, *, task_status: trio.TaskStatus[Router] = trio.TASK_STATUS_IGNORED) -> None:
        self.broker.attach(self.deliver_local)
        self.broker.attach_survey(self._answer_survey)
        self._rate_mark = (self.deliveries, trio.current_time())
        task_status.started(self)
        while True:
            await trio.sleep(self._history_sweep_s)
            # Redis expires its history keys by itself; in-process history is swept here.
            gc = getattr(self.history, "gc", None)
            if gc is not None:
                gc(self.namespaces)

    def delivery_rate(self) -> float:
        """Deliveries per second since the previous call (the first: since start)."""
        count, since = self._rate_mark
        now = trio.current_time()
        self._rate_mark = (self.deliveries, now)
        return (self.deliveries - count) / max(now - since, 1e-9)

    # -- sessions ----------------------------------------------------------------------------

    def user_sessions(self, user_id: str) -> list[Recipient]:
        return list(self._users.get(user_id, {}).values())

    def room_sessions(self, room: str) -> list[Recipient]:
        """The sessions of this node in an app room (subscribed) or an address room."""
        return list((self._rooms.get(room) or self._address_rooms.get(room) or {}).values())

    @property
    def user_count(self) -> int:
        return len(self._users)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    async def add(self, session: Recipient, *, addresses: Iterable[str] = ()) -> None:
        """Register a session: its user's deliveries, its ``device:<id>`` address and
        the address rooms its token gives (``addresses``) reach it from now on."""
        self.sessions[session.id] = session
        devices = self._users.setdefault(session.user_id, {})
        devices[session.id] = session
        USERS.set(len(self._users))
        if len(devices) == 1:
            try:
                await self.broker.watch_user(session.user_id)
            except Unavailable:
                log.warning("session %s: broker unavailable; user %s is reachable from this node only", session.id, session.user_id)
        device = device_room(session.id)
        rooms = (device, *addresses)
        self._addresses[session.id] = rooms
        for room in rooms:
            members = self._address_rooms.setdefault(room, {})
            members[session.id] = session
            # The broker brings this node its device: deliveries without a subscription.
            if len(members) == 1 and room != device:
                try:
                    await self.broker.watch_room(room)
                except Unavailable:
                    log.warning("session %s: broker unavailable; %s is reachable from this node only", session.id, room)

    async def remove(self, session: Recipient) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        if session.rooms:
            await self._unsubscribe_all(session, list(session.rooms))
        for room in self._addresses.pop(session.id, ()):
            members = self._address_rooms.get(room)
            if members is None or members.pop(session.id, None) is None or members:
                continue
            del self._address_rooms[room]
            if room == device_room(session.id):
                continue
            try:
                await self.broker.unwatch_room(room)
            except Unavailable:
                pass
        devices = self._users.get(session.user_id)
        if devices is not None:
            devices.pop(session.id, None)
            if not devices:
                del self._users[session.user_id]
                USERS.set(len(self._users))
                try:
                    await self.broker.unwatch_user(session.user_id)
                except Unavailable:
                    pass

    # -- the cluster's view -------------------------------------------------------------------

    async def survey(self, op: str, data: dict[str, Any]) -> tuple[list[Any], SurveyAnswers]:
        """This node's answer to ``op`` and the other nodes' (``broker.survey_timeout_s``).

        Raises:
            Unavailable: the broker cannot be reached (a single node never raises).
        """
        mine = await self._answer_survey(op, data)
        others = await self.broker.survey(op, data, timeout_s=self._survey_timeout_s)
        return [mine, *others.answers], others

    async def _answer_survey(self, op: str, data: dict[str, Any]) -> Any:
        handler = self.survey_handlers.get(op)
        if handler is None:
            raise LookupError(f"unknown survey {op!r}")
        return await handler(op, data)

    async def _survey_connections(self, op: str, data: dict[str, Any]) -> dict[str, Any]:
        """This node's connections of ``user_id`` or ``room``, at most ``limit``, oldest first.

        At most ``MAX_SURVEY_ANSWER_BYTES`` of them (encoded): past that the list
        ends early and ``truncated`` is true.
        """
        user_id, room, limit = data.get("user_id"), data.get("room"), data.get("limit")
        if isinstance(user_id, str):
            sessions = self.user_sessions(user_id)
        elif isinstance(room, str):
            sessions = self.room_sessions(room)
        else:
            sessions = []
        infos = sorted((s.info() for s in sessions), key=lambda i: (i["connected_at"] or "", i["session_id"]))
        infos = infos[: limit if isinstance(limit, int) and limit >= 0 else None]
        budget = MAX_SURVEY_ANSWER_BYTES
        for kept, info in enumerate(infos):
            budget -= len(orjson.dumps(info))
            if budget < 0:
                await trio.lowlevel.checkpoint()
                return {"connections": infos[:kept], "truncated": True}
        await trio.lowlevel.checkpoint()
        return {"connections": infos, "truncated": False}

    async def _survey_counts(self, op: str, data: dict[str, Any]) -> dict[str, Any]:
        """This node's sessions, and per namespace prefix ('' for rooms in none) its
        subscriptions, rooms, and the names of those rooms (so that rooms held by
        several nodes are counted once).

        At most ``MAX_SURVEY_ROOM_NAMES`` names in all, so that an answer stays
        well below what Redis lets a subscriber fall behind: past them a
        namespace's ``names`` is None and only its count is sent.
        """
        namespaces: dict[str, dict[str, Any]] = {}
        for prefix in ("", *self._namespace_prefixes):
            namespaces[prefix] = {"names": [], "rooms": 0, "subscriptions": 0}
        budget = MAX_SURVEY_ROOM_NAMES
        for room, subscribers in self._rooms.items():
            entry = namespaces.setdefault(self.namespaces.of(room).prefix, {"names": [], "rooms": 0, "subscriptions": 0})
            entry["rooms"] += 1
            entry["subscriptions"] += len(subscribers)
            if entry["names"] is not None:
                if budget > 0:
                    entry["names"].append(room)
                    budget -= 1
                else:
                    entry["names"] = None
        await trio.lowlevel.checkpoint()
        return {"node": self.node, "sessions": len(self.sessions), "namespaces": namespaces}

    async def _survey_node(self, op: str, data: dict[str, Any]) -> dict[str, Any]:
        """This node's counters: sessions, users, rooms, and deliveries and publications since it started."""
        await trio.lowlevel.checkpoint()
        return {
            "node": self.node,
            "sessions": len(self.sessions),
            "users": len(self._users),
            "rooms": len(self._rooms),
            "deliveries": self.deliveries,
            "publications": self.publications,
        }

    # -- rooms -------------------------------------------------------------------------------

    def namespace(self, room: str) -> NamespaceConfig:
        return self.namespaces.of(room)

    def is_address(self, room: str) -> bool:
        """Whether the room is an address (``device:``, ``auth.claim_rooms``): never subscribed by a client."""
        return self.namespaces.is_address(room)

    def address_rooms(self, session_id: str) -> tuple[str, ...]:
        """The address rooms of a session of this node (its ``device:`` room first)."""
        return self._addresses.get(session_id, ())

    async def subscribe(self, session: Recipient, room: str, *, since: tuple[int, str] | None) -> dict[str, Any]:
        """Subscribe and answer the ``subscribe`` reply data.

        The socket is registered before the history is read, and the room's live
        frames for it are held back until ``flush_held`` runs after the reply has
        been written: those the reply already covers (``seq`` not above the
        reply's) are dropped, the rest follow in order. So the reply comes before
        any live event of the room, and nothing falls between the two.
        """
        ns = self.namespaces.of(room)
        if room not in self._rooms:
            await self.broker.watch_room(room)
        subscribers = self._rooms.setdefault(room, {})
        already = session.id in subscribers
        subscribers[session.id] = session
        if not already:
            metrics.SUBSCRIPTIONS.inc()
        session.rooms.add(room)
        ROOMS.set(len(self._rooms))
        recovery = None
        feed = self.is_feed_room(room)
        if ns.history_size > 0 or feed:
            self._held.setdefault(room, {})[session.id] = []
            try:
                recovery = await self._recovery(room, ns, since)
            except BaseException:
                self._held.get(room, {}).pop(session.id, None)
                if not already:
                    await self.unsubscribe(session, room)
                raise
        if feed and recovery is not None:
            self._floors.setdefault(room, {})[session.id] = recovery.seq
        reply = _subscribe_reply(room, recovery)
        if ns.presence and not already:
            counts = self._room_users.setdefault(room, {})
            counts[session.user_id] = counts.get(session.user_id, 0) + 1
            try:
                first = await self.room_presence_backend.join(room, session.user_id)
            except Unavailable:
                # Counted again when the backend is back (a shared backend resyncs).
                first = counts[session.user_id] == 1
            if first:
                reply["_joined"] = True
        return reply

    def flush_held(self, session: Recipient, room: str, after_seq: int) -> None:
        """Send the live frames held during a subscribe, newer than the reply's ``seq``."""
        held = self._held.get(room)
        if held is None:
            return
        frames = held.pop(session.id, None)
        if not held:
            del self._held[room]
        for frame in frames or ():
            if frame.seq is None or frame.seq > after_seq:
                session.send_frame(frame)

    async def _recovery(self, room: str, ns: NamespaceConfig, since: tuple[int, str] | None) -> Recovery:
        feeds = self.feeds if self.is_feed_room(room) else None
        if since is not None:
            try:
                if feeds is not None:
                    recovery = await feeds.recover(room, since_seq=since[0], since_epoch=since[1])
                else:
                    recovery = await self.history.recover(room, ns, since_seq=since[0], since_epoch=since[1])
            except Exception:
                metrics.RECOVERIES.labels("refused").inc()
                raise
            metrics.RECOVERIES.labels("recovered" if recovery.recovered else "reset").inc()
            return recovery
        seq, epoch = await (feeds.position(room) if feeds is not None else self.history.position(room, ns))
        return Recovery(seq, epoch, False)

    async def recovery_reply(self, room: str, *, since: tuple[int, str] | None) -> dict[str, Any]:
        """The ``subscribe`` reply without subscribing (the client REST door)."""
        ns = self.namespaces.of(room)
        keeps = ns.history_size > 0 or self.is_feed_room(room)
        recovery = await self._recovery(room, ns, since) if keeps else None
        return _subscribe_reply(room, recovery)

    #: The rooms of activity feeds, set by the daemon when feeds are enabled (None: a
    #: ``feed:`` room is an app room like any other).
    feeds: FeedSource | None = None

    def is_feed_room(self, room: str) -> bool:
        return self.feeds is not None and self.feeds.is_feed_room(room)

    #: Reports ``room.joined`` and ``room.left`` to the application (webhooks:
    #: ``WebhookService.emit``), set by the daemon; None reports nothing.
    event_sink: Callable[[str, Mapping[str, Any]], Awaitable[object]] | None = None

    async def announce_join(self, room: str, user_id: str, *, joiner: str | None = None) -> None:
        """``room.joined`` to the room's other subscribers (the joining socket knows)."""
        await self.publish_event_to_room(room, "room.joined", {"room": room, "user_id": user_id}, exclude_session=joiner)
        if self.event_sink is not None:
            await self.event_sink("room.joined", {"room": room, "user_id": user_id})

    async def unsubscribe(self, session: Recipient, room: str) -> None:
        await self._unsubscribe_all(session, [room])

    async def _unsubscribe_all(self, session: Recipient, rooms: list[str]) -> None:
        """Unsubscribe the session from those rooms, with one room presence call for all of them."""
        leaving: dict[str, int] = {}  # room -> the user's subscriptions left on this node
        for room in rooms:
            remaining = self._unsubscribe_here(session, room)
            if remaining is not None:
                leaving[room] = remaining
        left: list[str] = []
        if leaving:
            try:
                left = await self.room_presence_backend.leave_many(list(leaving), session.user_id)
            except Unavailable:
                left = [room for room, remaining in leaving.items() if remaining <= 0]
        if left:
            await self.rooms_left([(room, session.user_id) for room in left])
        for room in rooms:
            if room not in self._rooms:
                try:
                    await self.broker.unwatch_room(room)
                except Unavailable:
                    pass

    def _unsubscribe_here(self, session: Recipient, room: str) -> int | None:
        """This node's part of an unsubscribe; the user's subscriptions left here when room presence counts this one."""
        held = self._held.get(room)
        if held is not None:
            held.pop(session.id, None)
            if not held:
                del self._held[room]
        floors = self._floors.get(room)
        if floors is not None:
            floors.pop(session.id, None)
            if not floors:
                del self._floors[room]
        subscribers = self._rooms.get(room)
        if subscribers is None or subscribers.pop(session.id, None) is None:
            session.rooms.discard(room)
            return None
        metrics.SUBSCRIPTIONS.dec()
        session.rooms.discard(room)
        if not subscribers:
            del self._rooms[room]
            ROOMS.set(len(self._rooms))
        counts = self._room_users.get(room)
        if counts is None or session.user_id not in counts:
            return None
        remaining = counts[session.user_id] - 1
        if remaining <= 0:
            del counts[session.user_id]
        else:
            counts[session.user_id] = remaining
        if not counts:
            del self._room_users[room]
        return remaining

    async def room_presence(self, room: str) -> list[dict[str, Any]]:
        """Who is subscribed to the room, on every node (raises ``Unavailable`` while a shared backend is away)."""
        counts = await self.room_presence_backend.members(room)
        return [{"user_id": user, "sessions": n} for user, n in sorted(counts.items())]

    def local_room_counts(self) -> list[tuple[str, str, int]]:
        """(room, user, subscriptions) of this node's sessions in rooms that keep presence."""
        return [(room, user, n) for room, counts in self._room_users.items() for user, n in counts.items()]

    async def rooms_left(self, pairs: Iterable[tuple[str, str]]) -> None:
        """``room.left`` for users whose last subscription ended (here, or on a dead node reaped here)."""
        for room, user in pairs:
            try:
                await self.publish_event_to_room(room, "room.left", {"room": room, "user_id": user})
            except Unavailable:
                log.warning("room.left for user %s in %s not published: broker unavailable", user, room)
            if self.event_sink is not None:
                await self.event_sink("room.left", {"room": room, "user_id": user})

    # -- delivery ----------------------------------------------------------------------------

    async def publish(self, room: str, event: str, data: Any, *, exclude_session: str | None = None) -> tuple[int | None, str | None, int]:
        """Publish an app event to a room; returns (seq, epoch, local sockets reached).

        Rooms whose namespace keeps history append first, and the event carries
        the assigned ``seq`` and ``epoch``. ``data`` is encoded once, before the
        append: data that cannot be encoded raises ``ValidationFailed`` naming
        ``data`` and takes no ``seq``, and what the history keeps (the encoded
        data) can be sent again inside any reply. Overlapping publishes to one
        room with history take turns (see the module docstring), so this node
        hands the room's events on in ``seq`` order.
        """
        if self.is_feed_room(room):
            raise ValidationFailed(
                "room", f"{room} is an activity feed: activities are logged with POST /server/v1/activities"
            )
        started = trio.current_time()
        ns = self.namespaces.of(room)
        data = protocol.json_fragment(data)
        if ns.history_size <= 0:
            frame = Frame(protocol.encode_event(event, data, room=room), event, started, room=room)
            delivered = await self._fan_out(Delivery(frame, room=room, exclude_session=exclude_session, origin=self.node))
            return None, None, delivered
        # The seq is taken and the frame handed on within one turn of the room:
        # an overlapping publish that took the next seq cannot deliver first.
        async with self._room_turn(room) as turn:
            try:
                seq, epoch = await self.history.append(room, ns, event, data, iso(self.clock.now()) or "")
            except Unavailable:
                turn.failures += 1
                raise
            frame = Frame(
                protocol.encode_event(event, data, room=room, seq=seq, epoch=epoch), event, started, room=room, seq=seq, epoch=epoch
            )
            delivered = await self._fan_out(Delivery(frame, room=room, exclude_session=exclude_session, origin=self.node))
        return seq, epoch, delivered

    @contextlib.asynccontextmanager
    async def _room_turn(self, room: str) -> AsyncIterator[_RoomTurn]:
        """Hold the room's turn: one seq-taking publication of the room at a time, in arrival order.

        Raises:
            Unavailable: the history failed for a publication ahead of this one
                while this one waited: it fails at once rather than wait out the
                history's timeout again behind every other one in the queue.
        """
        turn = self._turns.get(room)
        if turn is None:
            turn = self._turns[room] = _RoomTurn()
        turn.users += 1
        failures = turn.failures
        try:
            async with turn.lock:
                if turn.failures != failures:
                    raise Unavailable("room history unavailable (it failed for the publications ahead of this one)")
                yield turn
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[room]

    async def publish_feed(
        self, room: str, event: str, data: Any, *, seq: int, epoch: str, remote: bool = True
    ) -> int:
        """Send a stored activity to a feed room's subscribers, with its ``seq`` and ``epoch``
        (taken by the store, not by the room history); returns local sockets reached.
        ``remote=False`` leaves out the other nodes (their subscribers recover it)."""
        frame = Frame(
            protocol.encode_event(event, data, room=room, seq=seq, epoch=epoch), event, trio.current_time(),
            room=room, seq=seq, epoch=epoch,
        )
        delivery = Delivery(frame, room=room, origin=self.node)
        if not remote:
            return self.deliver_local(delivery)
        return await self._fan_out(delivery)

    async def publish_event_to_room(self, room: str, event: str, data: Any, *, exclude_session: str | None = None) -> int:
        """A room event that does not append to history (room.joined, room.left)."""
        frame = Frame(protocol.encode_event(event, data, room=room), event, trio.current_time())
        return await self._fan_out(Delivery(frame, room=room, exclude_session=exclude_session, origin=self.node))

    async def to_users(
        self,
        user_ids: Iterable[str],
        event: str,
        data: Any,
        *,
        room: str | None = None,
        seq: int | None = None,
        exclude_users: frozenset[str] = frozenset(),
        exclude_session: str | None = None,
        local: bool = True,
        remote: bool = True,
    ) -> int:
        """Send an event to every device of each user; returns local sockets reached.

        ``local=False`` leaves out this node's sessions and ``remote=False`` the
        other nodes: a caller sending again what the broker refused sends it only
        to the other nodes, whose share it was.
        """
        frame = Frame(protocol.encode_event(event, data, room=room, seq=seq), event, trio.current_time(), room=room, seq=seq)
        users = tuple(dict.fromkeys(user_ids))
        delivery = Delivery(frame, users=users, exclude_users=exclude_users, exclude_session=exclude_session, origin=self.node)
        if local and remote:
            return await self._fan_out(delivery)
        delivered = self.deliver_local(delivery) if local else 0
        if remote:
            PUBLICATIONS.labels("users").inc()
            self.publications += 1
            await self._publish(delivery)
        return delivered

    async def to_everyone(self, event: str, data: Any) -> int:
        """Send an event to every session of every node; returns local sockets reached."""
        frame = Frame(protocol.encode_event(event, data), event, trio.current_time())
        return await self._fan_out(Delivery(frame, everyone=True, origin=self.node))

    async def close_user(self, user_id: str, code: int, reason: str, *, session_id: str | None = None) -> int:
        """Close a user's sessions, or the one ``session_id``, on every node.

        Returns how many this node closed (not those already closing); the other
        nodes close theirs when the broker brings them the delivery, and run
        ``user_closed_hooks`` whether they held a session of the user or not.
        """
        delivery = Delivery(CLOSE_FRAME, users=(user_id,), origin=self.node, close=Close(code, reason, session_id))
        closed = self.deliver_local(delivery)
        if session_id is not None and session_id in self.sessions:
            return closed  # the one session was here: no other node holds it
        PUBLICATIONS.labels("users").inc()
        self.publications += 1
        await self._publish(delivery)
        return closed

    def _close_local(self, users: Iterable[str], close: Close) -> int:
        count = 0
        for user in users:
            for hook in self.user_closed_hooks:
                hook(user)
            for session in list(self._users.get(user, {}).values()):
                if close.session_id is not None and session.id != close.session_id:
                    continue
                if session.closing:
                    continue  # closed by an earlier call, not yet unregistered
                session.close(close.code, close.reason)
                count += 1
        return count

    async def _fan_out(self, delivery: Delivery) -> int:
        delivered = self.deliver_local(delivery)
        PUBLICATIONS.labels("room" if delivery.room is not None else "everyone" if delivery.everyone else "users").inc()
        self.publications += 1
        await self._publish(delivery)
        return delivered

    async def _publish(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        try:
            await self.broker.publish(delivery)
        finally:
            metrics.BROKER_PUBLISH_LATENCY.observe(time.perf_counter() - started)

    def deliver_local(self, delivery: Delivery) -> int:
        """Hand a delivery to this node's sessions; returns how many were reached."""
        if delivery.close is not None:
            return self._close_local(delivery.users, delivery.close)
        frame = delivery.frame
        skip = delivery.exclude_session
        count = 0
        if delivery.everyone:
            for session in list(self.sessions.values()):
                session.send_frame(frame)
                count += 1
        elif delivery.room is not None:
            targets: Iterable[Recipient] = (
                self._rooms.get(delivery.room) or self._address_rooms.get(delivery.room) or {}
            ).values()
            held = self._held.get(delivery.room)
            floors = self._floors.get(delivery.room) if frame.seq is not None else None
            for session in list(targets):
                if session.id == skip:
                    continue
                if floors is not None and frame.seq is not None and frame.seq <= floors.get(session.id, 0):
                    continue
                if held is not None and session.id in held:
                    held[session.id].append(frame)
                else:
                    session.send_frame(frame)
                count += 1
        else:
            excluded = delivery.exclude_users
            for user in delivery.users:
                if user in excluded:
                    continue
                devices = self._users.get(user)
                if not devices:
                    continue
                for session in list(devices.values()):
                    if session.id != skip:
                        session.send_frame(frame)
                        count += 1
        if count:
            DELIVERIES.inc(count)
            self.deliveries += count
            if frame.published_at:
                DELIVERY_LATENCY.observe(max(0.0, trio.current_time() - frame.published_at))
        return count

    async def history_read(self, room: str, *, since_seq: int, limit: int) -> tuple[int, str, list[Publication]]:
        ns = self.namespaces.of(room)
        if ns.history_size <= 0:
            return 0, "", []
        return await self.history.read(room, ns, since_seq=since_seq, limit=limit)


def device_room(session_id: str) -> str:
    """The address of one session: ``device:<session_id>``."""
    return DEVICE_PREFIX + session_id


class _RoomTurn:
    """A room's publications in turn (a FIFO lock), how many hold or wait for it,
    and how many of its appends failed with ``Unavailable``."""

    __slots__ = ("failures", "lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0
        self.failures = 0


def _subscribe_reply(room: str, recovery: Recovery | None) -> dict[str, Any]:
    """The ``subscribe`` reply data; a room without history answers ``seq`` 0 and no epoch.

    ``recovered`` is true only for a ``since`` that was recovered: ``_recovery``
    answers False when there was none.
    """
    if recovery is None:
        return {"room": room, "seq": 0, "epoch": "", "recovered": False, "publications": []}
    return {
        "room": room,
        "seq": recovery.seq,
        "epoch": recovery.epoch,
        "recovered": recovery.recovered,
        "publications": [p.to_wire() for p in recovery.publications],
    }
