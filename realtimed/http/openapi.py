"""The OpenAPI 3.1 document of both HTTP doors (served at ``/server/v1/openapi.json``).

Each operation names the credential its door checks (``http/app.py``): the
server API takes an API key, the client REST a user's JWT, both as
``Authorization: Bearer``; the SSE stream also takes the JWT as ``?token=``
(``EventSource`` cannot set headers); the document itself needs none.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from realtimed import __version__, protocol

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    names = {400: "invalid input", 401: "no or bad credentials", 403: "forbidden", 404: "not found",
             409: "conflict", 413: "payload too large", 429: "rate limited", 503: "a backend is down"}
    return {str(s): {"description": names[s], "content": {"application/json": {"schema": _ERROR}}} for s in statuses}


def _op(summary: str, *, body: dict[str, Any] | None = None, answer: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, errors: tuple[int, ...] = (400, 401, 503), tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {
            "200": {"description": "done", "content": {"application/json": {"schema": answer or {"type": "object"}}}},
            **_errors(*errors),
        },
    }
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        out["parameters"] = params
    return out


def _obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _q(name: str, schema: dict[str, Any], required: bool = False, where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


S = {"type": "string"}
INT = {"type": "integer"}
ANY: dict[str, Any] = {}
STRS = {"type": "array", "items": S}


@cache
def openapi_document() -> dict[str, Any]:
    server = "server API"
    client = "client REST"
    paths: dict[str, Any] = {
        "/server/v1/publish": {"post": _op(
            "Publish an app event to a room", tag=server,
            body=_obj(["room", "event"], room=S, event=S, data=ANY),
            answer=_obj(delivered=INT, seq=INT, epoch=S))},
        "/server/v1/broadcast": {"post": _op(
            "Publish one event to many rooms (up to 1,000)", tag=server,
            body=_obj(["rooms", "event"], rooms=STRS, event=S, data=ANY),
            answer=_obj(results={"type": "object", "additionalProperties": _obj(seq=INT, epoch=S, delivered=INT)}))},
        "/server/v1/users/events": {"post": _op(
            "Send an event to every device of users (up to 10,000)", tag=server,
            body=_obj(["user_ids", "event"], user_ids=STRS, event=S, data=ANY), answer=_obj(delivered=INT))},
        "/server/v1/users/{user_id}/disconnect": {"post": _op(
            "Close a user's sockets on every node (4510), optionally banning the user on every door (4503)",
            tag=server,
            params=[_q("user_id", S, where="path")],
            body=_obj(session_id=S, ban_s={"type": "number"}), answer=_obj(disconnected=INT, banned_until=S))},
        "/server/v1/users/{user_id}/ban": {
            "get": _op("Whether a user is banned, and until when", tag=server,
                       params=[_q("user_id", S, where="path")],
                       answer=_obj(banned={"type": "boolean"}, banned_until=S)),
            "delete": _op("Lift a user's ban", tag=server, params=[_q("user_id", S, where="path")],
                          answer=_obj(unbanned={"type": "boolean"}))},
        "/server/v1/connections": {"get": _op(
            "Connections of a user or a room on this node", tag=server,
            params=[_q("user_id", S), _q("room", S)],
            answer=_obj(connections={"type": "array", "items": {"$ref": "#/components/schemas/Connection"}}))},
        "/server/v1/rooms/{room}/presence": {"get": _op(
            "Who is in a room", tag=server, params=[_q("room", S, where="path")],
            answer=_obj(room=S, users={"type": "array", "items": _obj(user_id=S, sessions=INT)}))},
        "/server/v1/rooms/{room}/history": {"get": _op(
            "A room's recent publications", tag=server, errors=(400, 401, 404),
            params=[_q("room", S, where="path"), _q("since_seq", INT), _q("epoch", S), _q("limit", INT)],
            answer=_obj(seq=INT, epoch=S, recovered={"type": "boolean"},
                        publications={"type": "array", "items": {"$ref": "#/components/schemas/Publication"}}))},
        "/server/v1/stats": {"get": _op("Node statistics", tag=server,
                                        answer=_obj(node=S, sockets=INT, users=INT, rooms=INT, deliveries=INT))},
        "/server/v1/openapi.json": {"get": {"summary": "This document", "tags": [server], "security": [],
                                            "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/api/v1/ops/{op}": {"post": _op(
            "Run an op of the wire protocol (docs/protocol.md section 5) over HTTP; the body is its data", tag=client,
            params=[_q("op", {"type": "string", "enum": sorted(protocol.OPS - protocol.SOCKET_ONLY_OPS)}, where="path")],
            body={"type": "object"},
            errors=(400, 401, 403, 404, 409, 413, 429, 503))},
        "/api/v1/events": {"get": {
            "summary": "Server-sent events for the user and the listed rooms", "tags": [client],
            "security": [{"userToken": []}, {"userTokenQuery": []}],
            "parameters": [_q("rooms", S), {"name": "Last-Event-ID", "in": "header", "schema": S}],
            "responses": {"200": {"description": "text/event-stream"}, **_errors(400, 401, 403)}}},
    }
    _add_security(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "realtimed", "version": __version__,
                 "description": "The server API (/server/v1, API key) and the client REST (/api/v1, user JWT). "
                 "The wire contract is docs/protocol.md of realtimed; errors, limits and the SSE door are described there."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "an API key of api.keys, for the server API (/server/v1)"},
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "a user's JWT, for the client REST (/api/v1)"},
                "userTokenQuery": {"type": "apiKey", "in": "query", "name": "token",
                                   "description": "a user's JWT as ?token=, for the SSE stream only"},
            },
            "schemas": {
                "Error": _obj(["error"], error=_obj(["code", "message"], code=S, message=S, field=S,
                                                    retry_after_ms=INT, correlation_id=S, banned_until=S)),
                "Publication": _obj(["seq", "event", "data", "published_at"], seq=INT, event=S, data=ANY, published_at=S),
                "Connection": _obj(session_id=S, user_id=S, node=S, connected_at=S, rooms=STRS, transport=S, address=S),
            },
        },
    }


_SECURITY_BY_DOOR: tuple[tuple[str, list[dict[str, list[str]]]], ...] = (
    ("/server/v1/", [{"apiKey": []}]),
    ("/api/v1/", [{"userToken": []}]),
)


def _add_security(paths: dict[str, Any]) -> None:
    """Give each operation that names no credential the one its door checks."""
    for path, item in paths.items():
        security = next((s for prefix, s in _SECURITY_BY_DOOR if path.startswith(prefix)), None)
        if security is None:
            continue
        for operation in item.values():
            operation.setdefault("security", security)


def add_paths(paths: dict[str, Any]) -> None:
    """Capabilities add their routes to the document."""
    _add_security(paths)
    doc = openapi_document()
    doc["paths"].update(paths)
