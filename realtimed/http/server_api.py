"""The server API (``/server/v1``): the application's backend publishes and steers.

The door checks the API key before any route here runs (``http/app.py``). Each
route's request and response types are declared with it (``realtimed.api.routes``).
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from realtimed import protocol
from realtimed.api.routes import (
    AnyJson,
    EventName,
    ExactlyOne,
    Named,
    Number,
    QueryInt,
    QueryText,
    Raw,
    Room,
    RoomList,
    Route,
    Text,
    TextList,
    list_of,
    out,
    route,
    services,
    wire,
)
from realtimed.clock import iso
from realtimed.delivery.router import Router
from realtimed.errors import NotFound, Unavailable
from realtimed.gateway.gateway import Gateway, ban_until

__all__ = ["CONNECTION", "routes"]

MAX_BROADCAST_ROOMS: Final = 1000
MAX_EVENT_USERS: Final = 10_000
MAX_BAN_S: Final = 10 * 365 * 86400.0
_TAG_ROOMS: Final = "rooms and events"
_TAG_USERS: Final = "users"
_TAG_NODE: Final = "node"
_TAG_PRESENCE: Final = "presence"
MAX_CONNECTIONS: Final = 1000
MAX_ONLINE_PAGE: Final = 1000

_INT: Final = {"type": "integer", "minimum": 0}
_SEQ: Final = {"$ref": "#/components/schemas/Seq"}
_EPOCH: Final = {"$ref": "#/components/schemas/Epoch"}
_WHEN: Final = {"type": ["string", "null"], "format": "date-time"}

CONNECTION: Final = Named(
    "Connection",
    {
        "type": "object",
        "required": ["session_id", "user_id", "node", "connected_at", "rooms", "transport", "address"],
        "properties": {
            "session_id": {"type": "string"},
            "user_id": {"$ref": "#/components/schemas/UserId"},
            "node": {"type": "string"},
            "connected_at": {"$ref": "#/components/schemas/Time"},
            "rooms": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}},
            "transport": {"type": "string", "enum": ["websocket", "sse"]},
            "address": {"type": "string", "description": "the client's address (behind a trusted proxy, the one it forwarded)"},
        },
    },
)


def _router() -> Router:
    return services().router


def _gateway() -> Gateway:
    return services().gateway


# -- publishing --------------------------------------------------------------------------------


@attrs.frozen
class PublishInput:
    room: str = wire(Room())
    event: str = wire(EventName())
    data: Any = wire(AnyJson())


@attrs.frozen
class Published:
    """The publication's place in the room's history (when the room keeps one)."""

    delivered: int = out(_INT, description="sockets of this node reached")
    seq: int | None = out(_SEQ, omit_none=True)
    epoch: str | None = out(_EPOCH, omit_none=True)


@route(
    "POST", "/publish", door="server", operation_id="publish", summary="Publish an app event to a room",
    tag=_TAG_ROOMS, accepts=PublishInput, answers=Published,
)
async def publish(inp: PublishInput) -> Published:
    seq, epoch, delivered = await _router().publish(inp.room, inp.event, inp.data)
    if seq is None:
        return Published(delivered=delivered, seq=None, epoch=None)
    return Published(delivered=delivered, seq=seq, epoch=epoch)


@attrs.frozen
class BroadcastInput:
    rooms: list[str] = wire(RoomList(MAX_BROADCAST_ROOMS))
    event: str = wire(EventName())
    data: Any = wire(AnyJson())


_ROOM_RESULT: Final = {
    "type": "object",
    "required": ["seq", "epoch", "delivered"],
    "properties": {
        "seq": {"type": ["integer", "null"], "minimum": 0, "description": "null: the room keeps no history"},
        "epoch": {"type": ["string", "null"]},
        "delivered": _INT,
    },
}


@attrs.frozen
class Broadcast:
    """Each room's publication."""

    results: dict[str, Any] = out({"type": "object", "additionalProperties": _ROOM_RESULT}, description="room → its result")


@route(
    "POST", "/broadcast", door="server", operation_id="broadcast",
    summary=f"Publish one event to many rooms (up to {MAX_BROADCAST_ROOMS:,})",
    tag=_TAG_ROOMS, accepts=BroadcastInput, answers=Broadcast,
)
async def broadcast(inp: BroadcastInput) -> Broadcast:
    data = protocol.json_fragment(inp.data)  # encoded once for every room
    router = _router()
    results: dict[str, Any] = {}
    for room in inp.rooms:
        seq, epoch, delivered = await router.publish(room, inp.event, data)
        results[room] = {"seq": seq, "epoch": epoch, "delivered": delivered}
    return Broadcast(results=results)


@attrs.frozen
class UserEventInput:
    user_ids: list[str] = wire(TextList(MAX_EVENT_USERS, max_len=protocol.MAX_USER_ID_CHARS))
    event: str = wire(EventName())
    data: Any = wire(AnyJson())


@attrs.frozen
class Delivered:
    """How many sockets of this node the event reached."""

    delivered: int = out(_INT)


@route(
    "POST", "/users/events", door="server", operation_id="sendUserEvent",
    summary=f"Send an event to every device of users (up to {MAX_EVENT_USERS:,})",
    tag=_TAG_USERS, accepts=UserEventInput, answers=Delivered,
)
async def user_events(inp: UserEventInput) -> Delivered:
    return Delivered(delivered=await _router().to_users(inp.user_ids, inp.event, inp.data))


@attrs.frozen
class EveryoneEventInput:
    event: str = wire(EventName())
    data: Any = wire(AnyJson())


@route(
    "POST", "/users/events/all", door="server", operation_id="sendEventToAll",
    summary="Send an event to every connected user, on every node (every socket and stream)",
    tag=_TAG_USERS, accepts=EveryoneEventInput, answers=Delivered,
)
async def everyone_event(inp: EveryoneEventInput) -> Delivered:
    return Delivered(delivered=await _router().to_everyone(inp.event, inp.data))


# -- users: disconnect and bans ----------------------------------------------------------------


@attrs.frozen
class DisconnectInput:
    user_id: str = wire(Raw(), "path")
    session_id: str | None = wire(Text(max_len=64, required=False, description="only this socket or stream"))
    ban_s: float | None = wire(Number(0, MAX_BAN_S, description="also ban the user for this long, on every door"))


@attrs.frozen
class Disconnected:
    """The sockets and streams this node closed, and the ban, if one was given."""

    disconnected: int = out(_INT)
    banned_until: str | None = out(_WHEN, description="null without a ban")


@route(
    "POST", "/users/<user_id>/disconnect", door="server", operation_id="disconnectUser",
    summary="Close a user's sockets on every node (4510), optionally banning the user on every door (4503)",
    tag=_TAG_USERS, accepts=DisconnectInput, answers=Disconnected,
)
async def disconnect(inp: DisconnectInput) -> Disconnected:
    until = ban_until(services().clock.now(), inp.ban_s)
    count = await _gateway().disconnect(inp.user_id, session_id=inp.session_id, ban_until=until)
    return Disconnected(disconnected=count, banned_until=iso(until))


@attrs.frozen
class UserPath:
    user_id: str = wire(Raw(), "path")


@attrs.frozen
class BanState:
    """Whether the user is banned, and until when (null: no end, or no ban)."""

    banned: bool = out({"type": "boolean"})
    banned_until: str | None = out(_WHEN)


@route(
    "GET", "/users/<user_id>/ban", door="server", operation_id="getBan",
    summary="Whether a user is banned, and until when", tag=_TAG_USERS, accepts=UserPath, answers=BanState,
)
async def get_ban(inp: UserPath) -> BanState:
    ban = await _gateway().bans.current(inp.user_id, cached=False)
    if ban is None:
        return BanState(banned=False, banned_until=None)
    return BanState(banned=True, banned_until=iso(ban.until))


@attrs.frozen
class Unbanned:
    """Whether a ban was in force."""

    unbanned: bool = out({"type": "boolean"})


@route(
    "DELETE", "/users/<user_id>/ban", door="server", operation_id="liftBan", summary="Lift a user's ban",
    tag=_TAG_USERS, accepts=UserPath, answers=Unbanned,
)
async def unban(inp: UserPath) -> Unbanned:
    return Unbanned(unbanned=await _gateway().bans.unban(inp.user_id))


# -- the cluster: connections and presence ---------------------------------------------------


@attrs.frozen
class ConnectionsQuery:
    __wire_rules__ = (ExactlyOne(("user_id", "room"), "query", "give exactly one of user_id and room", "user_id", empty_counts=False),)

    user_id: str | None = wire(Raw(description="a user's connections (or room)"), "query")
    room: str | None = wire(Raw(description="a room's subscribers (or user_id)"), "query")
    limit: int = wire(QueryInt(100, 1, MAX_CONNECTIONS, description="the oldest connections first, at most this many"), "query")


_COMPLETE: Final = {
    "type": "boolean",
    "description": "every node answered within broker.survey_timeout_s, in full (false: the answer covers what came)",
}


@attrs.frozen
class Connections:
    """The connections of a user or a room, on every node."""

    connections: list[dict[str, Any]] = out(list_of(CONNECTION))
    nodes: int = out(_INT, description="nodes that answered, this one included")
    complete: bool = out(_COMPLETE)


@route(
    "GET", "/connections", door="server", operation_id="listConnections",
    summary=f"Connections of a user or a room on every node (oldest first, up to {MAX_CONNECTIONS:,})",
    tag=_TAG_NODE, accepts=ConnectionsQuery, answers=Connections,
)
async def connections(inp: ConnectionsQuery) -> Connections:
    question: dict[str, Any] = {"user_id": inp.user_id} if inp.user_id else {"room": inp.room or ""}
    question["limit"] = inp.limit
    answers, complete = await _survey("connections", question)
    complete = complete and not any(answer["truncated"] for answer in answers)
    found = [info for answer in answers for info in answer["connections"]]
    found.sort(key=lambda info: (info["connected_at"] or "", info["session_id"]))
    return Connections(connections=found[: inp.limit], nodes=len(answers), complete=complete)


async def _survey(op: str, question: dict[str, Any]) -> tuple[list[Any], bool]:
    """Every node's answer; while the broker is away, this node's alone (incomplete)."""
    router = _router()
    try:
        answers, others = await router.survey(op, question)
    except Unavailable:
        return [await router.survey_handlers[op](op, question)], False
    return answers, others.complete


@attrs.frozen
class OnlineQuery:
    prefix: str | None = wire(
        QueryText(protocol.MAX_USER_ID_CHARS, description="only users whose id starts with this"), "query"
    )
    cursor: str | None = wire(
        QueryText(protocol.MAX_USER_ID_CHARS, description="next_cursor of the previous page"), "query"
    )
    limit: int = wire(QueryInt(100, 1, MAX_ONLINE_PAGE), "query")


_ONLINE_USER: Final = {
    "type": "object",
    "required": ["user_id", "sessions"],
    "properties": {
        "user_id": {"$ref": "#/components/schemas/UserId"},
        "sessions": {"type": "integer", "minimum": 1, "description": "the user's sockets and streams on every node"},
    },
}


@attrs.frozen
class Online:
    """Connected users, on every node, in user id order."""

    users: list[dict[str, Any]] = out({"type": "array", "items": _ONLINE_USER})
    count: int = out(_INT, description="connected users (with the prefix), every page together")
    next_cursor: str | None = out({"type": ["string", "null"]}, description="null: the last page")


@route(
    "GET", "/presence/online", door="server", operation_id="listOnlineUsers",
    summary="Users with a socket or stream on any node (paged in user id order, with the count)",
    tag=_TAG_PRESENCE, accepts=OnlineQuery, answers=Online,
)
async def online(inp: OnlineQuery) -> Online:
    backend = services().presence.backend
    page, count = await backend.online(prefix=inp.prefix or "", after=inp.cursor, limit=inp.limit + 1)
    more = len(page) > inp.limit
    page = page[: inp.limit]
    return Online(
        users=[{"user_id": user, "sessions": n} for user, n in page],
        count=count,
        next_cursor=page[-1][0] if more and page else None,
    )


_NAMESPACE_COUNT: Final = {
    "type": "object",
    "required": ["prefix", "rooms", "subscriptions", "exact"],
    "properties": {
        "prefix": {"type": "string", "description": "the namespace's prefix; \"\": rooms in no namespace"},
        "rooms": {"type": "integer", "minimum": 0, "description": "rooms with a subscriber on any node"},
        "subscriptions": {"type": "integer", "minimum": 0, "description": "sockets and streams subscribed, every node"},
        "exact": {
            "type": "boolean",
            "description": "false when a node had too many rooms to name them all: rooms then counts a room once per node holding it",
        },
    },
}


@attrs.frozen
class PresenceCounts:
    """How many are connected, on every node, and in each namespace's rooms."""

    users: int = out(_INT, description="connected users, every node")
    sessions: int = out(_INT, description="sockets and streams of the nodes that answered")
    nodes: int = out(_INT, description="nodes that answered, this one included")
    complete: bool = out(_COMPLETE)
    namespaces: list[dict[str, Any]] = out(
        {"type": "array", "items": _NAMESPACE_COUNT}, description="every configured namespace, and \"\", by prefix"
    )


@route(
    "GET", "/presence/counts", door="server", operation_id="getPresenceCounts",
    summary="Connected users and sessions, and rooms and subscriptions per namespace, on every node",
    tag=_TAG_PRESENCE, answers=PresenceCounts,
)
async def presence_counts() -> PresenceCounts:
    _, users = await services().presence.backend.online(limit=0)
    answers, complete = await _survey("counts", {})
    names: dict[str, set[str] | None] = {}
    per_node: dict[str, int] = {}
    subscriptions: dict[str, int] = {}
    for answer in answers:
        for prefix, entry in answer["namespaces"].items():
            known = names.setdefault(prefix, set())
            if known is not None and entry["names"] is not None:
                known.update(entry["names"])
            else:
                names[prefix] = None
            per_node[prefix] = per_node.get(prefix, 0) + entry["rooms"]
            subscriptions[prefix] = subscriptions.get(prefix, 0) + entry["subscriptions"]
    namespaces = []
    for prefix in sorted(names):
        distinct = names[prefix]
        rooms = len(distinct) if distinct is not None else per_node[prefix]
        namespaces.append({"prefix": prefix, "rooms": rooms, "subscriptions": subscriptions[prefix], "exact": distinct is not None})
    return PresenceCounts(
        users=users,
        sessions=sum(answer["sessions"] for answer in answers),
        nodes=len(answers),
        complete=complete,
        namespaces=namespaces,
    )


# -- this node and its rooms -------------------------------------------------------------------


@attrs.frozen
class RoomPath:
    room: str = wire(Room(text_first=False), "path")


@attrs.frozen
class RoomPresence:
    """Who is subscribed to the room, on every node."""

    room: str = out({"$ref": "#/components/schemas/Room"})
    users: list[dict[str, Any]] = out({"type": "array", "items": {"$ref": "#/components/schemas/RoomUser"}})


@route(
    "GET", "/rooms/<path:room>/presence", door="server", operation_id="getRoomPresence", summary="Who is in a room",
    tag=_TAG_ROOMS, accepts=RoomPath, answers=RoomPresence,
)
async def room_presence(inp: RoomPath) -> RoomPresence:
    return RoomPresence(room=inp.room, users=await _router().room_presence(inp.room))


@attrs.frozen
class HistoryQuery:
    room: str = wire(Room(text_first=False), "path")
    since_seq: int = wire(QueryInt(0, 0, 2**62, description="publications after this seq"), "query")
    limit: int = wire(QueryInt(100, 1, 1000), "query")
    epoch: str | None = wire(Raw(description="the epoch since_seq belongs to: recovered: false when it is not the room's"), "query")


@attrs.frozen
class History:
    """A room's recent publications, oldest first."""

    seq: int = out(_SEQ)
    epoch: str = out(_EPOCH)
    recovered: bool = out({"type": "boolean"})
    publications: list[dict[str, Any]] = out({"type": "array", "items": {"$ref": "#/components/schemas/Publication"}})


@route(
    "GET", "/rooms/<path:room>/history", door="server", operation_id="getRoomHistory",
    summary="A room's recent publications (404 for a room that keeps no history)",
    tag=_TAG_ROOMS, accepts=HistoryQuery, answers=History, errors=(404,),
)
async def room_history(inp: HistoryQuery) -> History:
    router = _router()
    room = inp.room
    ns = router.namespace(room)
    if ns.history_size <= 0:
        raise NotFound(f"{room} keeps no history")
    if inp.epoch:
        recovery = await router.recovery_reply(room, since=(inp.since_seq, inp.epoch))
        if not recovery["recovered"]:
            return History(seq=recovery["seq"], epoch=recovery["epoch"], recovered=False, publications=[])
    seq, current_epoch, pubs = await router.history_read(room, since_seq=inp.since_seq, limit=inp.limit)
    return History(seq=seq, epoch=current_epoch, recovered=True, publications=[p.to_wire() for p in pubs])


@attrs.frozen
class Stats:
    """This node's counters."""

    node: str = out({"type": "string"})
    sockets: int = out(_INT, description="WebSocket sockets and SSE streams")
    websocket_sockets: int = out(_INT)
    sse_streams: int = out(_INT)
    users: int = out(_INT)
    rooms: int = out(_INT)
    deliveries: int = out(_INT)
    deliveries_per_s: float = out({"type": "number", "minimum": 0}, description="since the previous call")
    outbox_overflows: int = out(_INT, description="slow sockets closed (4008)")
    draining: bool = out({"type": "boolean"})


@route("GET", "/stats", door="server", operation_id="getStats", summary="Node statistics", tag=_TAG_NODE, answers=Stats)
async def stats() -> Stats:
    svc = services()
    router = _router()
    gateway = _gateway()
    return Stats(
        node=svc.node,
        sockets=len(gateway.sessions),
        websocket_sockets=gateway.count("websocket"),
        sse_streams=gateway.count("sse"),
        users=router.user_count,
        rooms=router.room_count,
        deliveries=router.deliveries,
        deliveries_per_s=round(router.delivery_rate(), 1),
        outbox_overflows=gateway.overflows,
        draining=svc.draining,
    )


def routes() -> tuple[Route, ...]:
    """The server API's own routes: rooms, users, bans, this node."""
    return (
        publish, broadcast, user_events, everyone_event, disconnect, get_ban, unban, connections, online, presence_counts,
        room_presence, room_history, stats,
    )
