"""The server API (``/server/v1``): the application's backend publishes and steers.

The door checks the API key before any route here runs (``http/app.py``).
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from realtimed import protocol
from realtimed.clock import iso
from realtimed.errors import NotFound, ValidationFailed
from realtimed.gateway.gateway import Gateway, ban_until
from realtimed.http import validate
from realtimed.http.app import json_body, json_response, register_blueprint, services
from realtimed.http.openapi import openapi_document
from realtimed.router import Router

blueprint = Blueprint("server_api", __name__)

MAX_BROADCAST_ROOMS = 1000
MAX_EVENT_USERS = 10_000
MAX_BAN_S = 10 * 365 * 86400.0


def _router() -> Router:
    return services().router


def _gateway() -> Gateway:
    return services().gateway


def _room(value: str | None, field: str = "room") -> str:
    return protocol.validate_room(value, field)


def _event_name(body: dict[str, Any]) -> str:
    event = validate.string(body, "event", max_len=100)
    assert event is not None
    if protocol.is_reserved_event(event):
        raise ValidationFailed("event", f"{event!r} uses a reserved prefix")
    return event


@blueprint.post("/publish")
async def publish() -> Response:
    body = await json_body()
    room = _room(validate.string(body, "room"))
    event = _event_name(body)
    data = body.get("data", {})
    seq, epoch, delivered = await _router().publish(room, event, data)
    answer: dict[str, Any] = {"delivered": delivered}
    if seq is not None:
        answer.update(seq=seq, epoch=epoch)
    return json_response(answer)


@blueprint.post("/broadcast")
async def broadcast() -> Response:
    body = await json_body()
    rooms = validate.string_list(body, "rooms", max_items=MAX_BROADCAST_ROOMS)
    for i, room in enumerate(rooms):
        _room(room, f"rooms[{i}]")
    event = _event_name(body)
    data = protocol.json_fragment(body.get("data", {}))  # encoded once for every room
    router = _router()
    results: dict[str, Any] = {}
    for room in rooms:
        seq, epoch, delivered = await router.publish(room, event, data)
        results[room] = {"seq": seq, "epoch": epoch, "delivered": delivered}
    return json_response({"results": results})


@blueprint.post("/users/events")
async def user_events() -> Response:
    body = await json_body()
    user_ids = validate.string_list(body, "user_ids", max_items=MAX_EVENT_USERS, max_len=128)
    event = _event_name(body)
    data = body.get("data", {})
    delivered = await _router().to_users(user_ids, event, data)
    return json_response({"delivered": delivered})


@blueprint.post("/users/<user_id>/disconnect")
async def disconnect(user_id: str) -> Response:
    body = await json_body()
    session_id = validate.string(body, "session_id", required=False, max_len=64)
    ban_s = validate.number(body, "ban_s", lo=0, hi=MAX_BAN_S)
    until = ban_until(services().clock.now(), ban_s)
    count = await _gateway().disconnect(user_id, session_id=session_id, ban_until=until)
    return json_response({"disconnected": count, "banned_until": iso(until)})


@blueprint.get("/users/<user_id>/ban")
async def get_ban(user_id: str) -> Response:
    ban = await _gateway().bans.current(user_id, cached=False)
    if ban is None:
        return json_response({"banned": False, "banned_until": None})
    return json_response({"banned": True, "banned_until": iso(ban.until)})


@blueprint.delete("/users/<user_id>/ban")
async def unban(user_id: str) -> Response:
    return json_response({"unbanned": await _gateway().bans.unban(user_id)})


@blueprint.get("/connections")
async def connections() -> Response:
    user_id = request.args.get("user_id")
    room = request.args.get("room")
    if bool(user_id) == bool(room):
        raise ValidationFailed("user_id", "give exactly one of user_id and room")
    router = _router()
    sessions = router.user_sessions(user_id) if user_id else router.room_sessions(room or "")
    return json_response({"connections": [s.info() for s in sessions]})


@blueprint.get("/rooms/<path:room>/presence")
async def room_presence(room: str) -> Response:
    _room(room)
    return json_response({"room": room, "users": await _router().room_presence(room)})


@blueprint.get("/rooms/<path:room>/history")
async def room_history(room: str) -> Response:
    _room(room)
    router = _router()
    since = validate.query_int(request.args, "since_seq", default=0, lo=0, hi=2**62)
    limit = validate.query_int(request.args, "limit", default=100, lo=1, hi=1000)
    epoch = request.args.get("epoch")
    ns = router.namespace(room)
    if ns.history_size <= 0:
        raise NotFound(f"{room} keeps no history")
    if epoch:
        recovery = await router.recovery_reply(room, since=(since, epoch))
        if not recovery["recovered"]:
            return json_response({"seq": recovery["seq"], "epoch": recovery["epoch"], "recovered": False, "publications": []})
    seq, current_epoch, pubs = await router.history_read(room, since_seq=since, limit=limit)
    return json_response(
        {"seq": seq, "epoch": current_epoch, "recovered": True, "publications": [p.to_wire() for p in pubs]}
    )


@blueprint.get("/stats")
async def stats() -> Response:
    svc = services()
    router = _router()
    gateway = _gateway()
    return json_response(
        {
            "node": svc.node,
            "sockets": len(gateway.sessions),
            "websocket_sockets": gateway.count("websocket"),
            "sse_streams": gateway.count("sse"),
            "users": router.user_count,
            "rooms": router.room_count,
            "deliveries": router.deliveries,
            "deliveries_per_s": round(router.delivery_rate(), 1),
            "outbox_overflows": gateway.overflows,
            "draining": svc.draining,
        }
    )


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    return json_response(openapi_document())


register_blueprint(blueprint, "server")
