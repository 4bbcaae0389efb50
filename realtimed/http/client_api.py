"""The client HTTP door (``/api/v1``): ops over REST, and the SSE fallback.

``POST /api/v1/ops/{op}`` runs any op of docs/protocol.md section 5 but ``auth`` and
``ping`` with the same handlers as the socket. ``subscribe`` over REST answers
the recovery (what the client missed since ``since``) without subscribing
anything, since a REST call has no connection to deliver to.

``GET /api/v1/events?rooms=a,b`` streams every event for the user and the listed
rooms as SSE: this door checks the token and the rooms, and the SSE transport
(``gateway.sse``) serves the stream through the gateway's session lifecycle.
"""

from __future__ import annotations

import logging
from typing import Final

from quart import Response, g, request

from realtimed import protocol
from realtimed.api.ops import Caller
from realtimed.api.routes import Route, Schema, bearer_token, json_body, json_response, route, services
from realtimed.auth import Claims
from realtimed.errors import CLOSE_TOKEN_EXPIRED, NotFound, TokenExpired, Unauthorized, ValidationFailed
from realtimed.gateway.sse import SseSession, decode_cursor
from realtimed.room_ops import check_subscribe

log = logging.getLogger(__name__)

MAX_SSE_ROOMS: Final = 64
# One record of the stream, as an SSE parser reads it (OpenAPI 3.1: the schema of
# text/event-stream is that of each record): the field `data` is text on the wire
# and holds the JSON of the event frame (docs/asyncapi.yaml); heartbeats are comments.
SSE_RECORD: Final = {
    "type": "object",
    "description": "an SSE record: each event of docs/asyncapi.yaml, and session.closed, with its JSON as data",
    "properties": {
        "event": {"type": "string", "description": "the event's name"},
        "id": {"type": "string", "description": "the cursor to resume from (Last-Event-ID)"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["event"],
                "properties": {
                    "event": {"type": "string"},
                    "room": {"type": "string"},
                    "seq": {"type": "integer"},
                    "epoch": {"type": "string"},
                    "data": {},
                },
            },
        },
    },
}


@route(
    "POST", "/ops/<op>", door="client", operation_id="runOp",
    summary="Run an op of the wire protocol (docs/protocol.md section 5) over HTTP: the body is its data",
    tag="ops", answers=Schema({"type": "object"}, "the reply's data"), op_family=True, errors=(404, 409),
)
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


@route(
    "GET", "/events", door="client", operation_id="streamEvents",
    summary="Server-sent events for the user and the listed rooms (resumed with Last-Event-ID)",
    tag="events",
    answers=Schema(SSE_RECORD, content_type="text/event-stream"),
    security=("userToken", "userTokenQuery"),
    errors=(400, 401, 403),
    # Read by the handler itself: the token is checked before the rooms.
    described=(
        {
            "name": "rooms",
            "in": "query",
            "required": False,
            "style": "form",
            "explode": False,
            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}, "maxItems": MAX_SSE_ROOMS},
        },
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
    ),
)
async def events() -> Response:
    """The SSE door: check the token and the rooms here, then the SSE transport serves the stream."""
    svc = services()
    token = bearer_token() or request.args.get("token")
    if not token:
        raise Unauthorized("a user token is required (Authorization header or ?token=)")
    claims: Claims | None
    try:
        claims = await svc.verifier.verify(token)
    except TokenExpired:
        claims = None  # a stream of one session.closed 4004, once the rooms are checked
    rooms_arg = request.args.get("rooms", "")
    rooms = [r for r in dict.fromkeys(rooms_arg.split(",")) if r]
    if len(rooms) > MAX_SSE_ROOMS:
        raise ValidationFailed("rooms", f"at most {MAX_SSE_ROOMS} rooms")
    for room in rooms:
        protocol.validate_room(room, "rooms")
        if claims is not None:
            check_subscribe(claims, svc.router, room)
    sse = SseSession(svc.gateway, request.remote_addr or "")
    if claims is None:
        sse.close(CLOSE_TOKEN_EXPIRED, "token expired")
    else:
        await sse.open(claims, rooms, decode_cursor(request.headers.get("Last-Event-ID")))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(sse.stream(), content_type="text/event-stream", headers=headers)
    response.timeout = None
    return response


def routes() -> tuple[Route, ...]:
    """The client REST's ops route and the SSE stream."""
    return (run_op, events)
