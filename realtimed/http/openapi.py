"""The OpenAPI 3.1 documents of the HTTP doors, built from the routes the app serves.

Two documents, both fetched without a credential:

- the server document, ``GET /server/v1/openapi.json``: the server API (an API
  key, ``apiKey``) and the operator's endpoints ``/healthz``, ``/readyz`` and
  ``/metrics`` (no credential; ``/metrics`` is served where the server API is);
- the client document, ``GET /api/v1/openapi.json``: the client REST (a user's
  JWT, ``userToken``) and the SSE stream (the JWT in the header or as
  ``?token=``, ``userTokenQuery``, since ``EventSource`` cannot set headers).

Every operation is a ``Route`` of ``realtimed.api.routes``: its parameters and
request body are the schemas of the request type its handler is given (the
same objects that check the request), its 200 answer the schema of its response
type. ``POST /api/v1/ops/{op}`` is described once per op, from the op's
``OpSpec``. A configured limit (``notify.max_recipients``) is stated as
configured, so each document is built for the configuration in force.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from quart import current_app

from realtimed import __version__, protocol
from realtimed.api.routes import CLIENT_PREFIX, Named, Route, Schema, openapi_path, route, services
from realtimed.config import Config
from realtimed.protocol import OP_SPECS, JsonSchema

__all__ = ["DOCUMENT_DOORS", "build_documents", "op_operation_id", "routes"]

DOCUMENT_DOORS: Final[Mapping[str, tuple[str, ...]]] = {"server": ("server", "ops"), "client": ("client",)}
"""Each document and the doors whose routes it describes."""

_REF_PREFIX: Final = "#/components/schemas/"
_ERROR_BODY: Final = Named(
    "ErrorBody",
    {"type": "object", "required": ["error"], "properties": {"error": {"$ref": _REF_PREFIX + "Error"}}},
)
_ERROR_TEXT: Final[Mapping[int, str]] = {
    400: "invalid input: VALIDATION_ERROR names the field; BAD_REQUEST for a body that is not JSON",
    401: "no credential, or a bad one",
    403: "forbidden: a banned user (banned_until), or a permission the token lacks",
    404: "not found",
    409: "conflict with the record's state",
    413: "payload too large (http.max_body_bytes, or a field's own limit); the HTTP edge answers it to any request",
    429: "rate limited: retry after Retry-After (retry_after_ms)",
    431: "request head too large (gateway.max_head_bytes): answered by the HTTP edge to any request",
    503: "unavailable: a backend cannot be reached, or the capability is not running on this node",
}
# What the door's credential check can answer before the route runs (realtimed/http/app.py):
# a bad API key; a bad user token, a ban, a spent budget, a ban that cannot be checked.
_DOOR_ERRORS: Final[Mapping[str, tuple[int, ...]]] = {"server": (401, 429), "client": (401, 403, 429, 503), "ops": ()}
# What the HTTP edge answers to any request (realtimed/http/framing.py, app.py): a body
# over http.max_body_bytes, a request head over gateway.max_head_bytes.
_EDGE_ERRORS: Final = (413, 431)
_DOOR_SECURITY: Final[Mapping[str, tuple[str, ...]]] = {"server": ("apiKey",), "client": ("userToken",), "ops": ()}
_SCHEMES: Final[Mapping[str, JsonSchema]] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key of api.keys, for the server API (/server/v1)",
    },
    "userToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "a user's JWT, for the client REST (/api/v1)",
    },
    "userTokenQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "a user's JWT as ?token=, for the SSE stream only",
    },
}
_INFO: Final[Mapping[str, str]] = {
    "server": "The server API of realtimed (/server/v1, Authorization: Bearer <API key>), with which the "
    "application's backend publishes and steers, and the operator's endpoints (/healthz, /readyz, /metrics).",
    "client": "The client REST of realtimed (/api/v1, Authorization: Bearer <user JWT>), the HTTP mirror of the "
    "socket's ops, and the server-sent events stream.",
}
_COMMON: Final = (
    " The wire contract is docs/protocol.md of realtimed: errors (the body {error: {code, message, field?}}), "
    "limits and the SSE stream are described there. In a request, a field that is null counts as absent."
)


def op_operation_id(op: str) -> str:
    """``message.send`` → ``opMessageSend``."""
    words = op.replace(".", "_").split("_")
    return "op" + "".join(word[:1].upper() + word[1:] for word in words)


def _security(names: Sequence[str]) -> list[dict[str, list[str]]]:
    return [{name: []} for name in names]


def _errors(statuses: Iterable[int], schema: JsonSchema) -> dict[str, Any]:
    return {
        str(status): {"description": _ERROR_TEXT[status], "content": {"application/json": {"schema": schema}}}
        for status in sorted(set(statuses))
    }


def _operation(
    route: Route,
    cfg: Config,
    *,
    operation_id: str,
    summary: str,
    parameters: list[JsonSchema],
    body: tuple[JsonSchema, bool] | None,
    answer: JsonSchema,
    reads_input: bool,
) -> JsonSchema:
    security = route.security if route.security is not None else _DOOR_SECURITY[route.door]
    statuses = set(route.errors)
    if route.security is None:
        statuses.update(_DOOR_ERRORS[route.door])
    if reads_input:
        statuses.add(400)
    error_schema = route.error_schema if route.error_schema is not None else _ERROR_BODY.ref
    operation: JsonSchema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [route.tag],
        "security": _security(security),
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        schema, required = body
        operation["requestBody"] = {"required": required, "content": {"application/json": {"schema": schema}}}
    operation["responses"] = {
        "200": {"description": "done", "content": {route.answers.content_type: {"schema": answer}}},
        **_errors(statuses, error_schema),
        # The HTTP edge answers these to any request, before a route runs, with the error body.
        **_errors(_EDGE_ERRORS, _ERROR_BODY.ref),
    }
    operation["responses"] = dict(sorted(operation["responses"].items()))
    return operation


def _operations(route: Route, cfg: Config) -> Iterator[tuple[str, str, JsonSchema]]:
    """(path, method, operation) of a route; an op family gives one per op of the client REST."""
    method = route.method.lower()
    if route.op_family:
        for op in sorted(protocol.OPS - protocol.SOCKET_ONLY_OPS):
            spec = OP_SPECS[op]
            path = openapi_path(route.rule.replace("<op>", op))
            data_required = bool(spec.data.get("required")) or "anyOf" in spec.data
            yield path, method, _operation(
                route,
                cfg,
                operation_id=op_operation_id(op),
                summary=f"{spec.summary} (the op {op})",
                parameters=[],
                body=(spec.data, data_required),
                answer=spec.reply,
                reads_input=True,
            )
        return
    parameters = list(route.described)
    body = None
    if route.accepts is not None:
        parameters = route.accepts.parameters(cfg) + parameters
        body = route.accepts.body(cfg)
    elif route.variables:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in sorted(route.variables)
        ] + parameters
    yield openapi_path(route.rule), method, _operation(
        route,
        cfg,
        operation_id=route.operation_id,
        summary=route.summary,
        parameters=parameters,
        body=body,
        answer=route.answers.schema(cfg),
        reads_input=route.accepts is not None or bool(route.described),
    )


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith(_REF_PREFIX):
                yield item.removeprefix(_REF_PREFIX)
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _components(paths: JsonSchema, named: Iterable[Named]) -> dict[str, JsonSchema]:
    """Every schema the paths refer to, transitively: the routes' records and the wire's types."""
    known: dict[str, JsonSchema] = dict(protocol.TYPE_SCHEMAS)
    for record in [_ERROR_BODY, *named]:
        if known.get(record.name, record.json) != record.json:
            raise ValueError(f"two schemas are named {record.name}")
        known[record.name] = record.json
    schemas: dict[str, JsonSchema] = {}
    pending = list(_refs(paths))
    while pending:
        name = pending.pop()
        if name in schemas:
            continue
        if name not in known:
            raise ValueError(f"the document refers to an unknown schema {name!r}")
        schemas[name] = known[name]
        pending.extend(_refs(known[name]))
    return dict(sorted(schemas.items()))


def build_document(name: str, routes: Iterable[Route], cfg: Config) -> JsonSchema:
    """The document ``name`` (``server`` or ``client``) of the routes its doors serve."""
    doors = DOCUMENT_DOORS[name]
    served = [r for r in routes if r.door in doors]
    paths: dict[str, dict[str, JsonSchema]] = {}
    for served_route in served:
        for path, method, operation in _operations(served_route, cfg):
            item = paths.setdefault(path, {})
            if method in item:
                raise ValueError(f"{method.upper()} {path} is described twice")
            item[method] = operation
    named = [record for r in served for record in r.components()]
    schemes = {scheme for r in served for scheme in (r.security if r.security is not None else _DOOR_SECURITY[r.door])}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"realtimed {name} API", "version": __version__, "description": _INFO[name] + _COMMON},
        "paths": paths,
        "components": {
            "securitySchemes": {scheme: _SCHEMES[scheme] for scheme in _SCHEMES if scheme in schemes},
            "schemas": _components(paths, named),
        },
    }


def build_documents(routes: Sequence[Route], cfg: Config) -> dict[str, JsonSchema]:
    """Both documents: ``server`` and ``client``."""
    return {name: build_document(name, routes, cfg) for name in DOCUMENT_DOORS}


def _documents() -> dict[str, JsonSchema]:
    """The app's documents, built again only when the configuration changed (SIGHUP)."""
    cfg = services().config
    cache: dict[str, Any] = current_app.extensions.setdefault("realtimed.openapi", {})
    if cache.get("config") is not cfg:
        cache["documents"] = build_documents(current_app.extensions["realtimed.routes"], cfg)
        cache["config"] = cfg
    documents: dict[str, JsonSchema] = cache["documents"]
    return documents


_DOCUMENT: Final = Schema(
    {"type": "object", "required": ["openapi", "info", "paths"], "properties": {"openapi": {"type": "string"}}},
    "an OpenAPI 3.1 document",
)


@route(
    "GET",
    "/openapi.json",
    door="server",
    operation_id="getServerDocument",
    summary="This document: the server API and the operator's endpoints",
    tag="documents",
    answers=_DOCUMENT,
    security=(),
)
async def server_document() -> JsonSchema:
    return _documents()["server"]


@route(
    "GET",
    "/openapi.json",
    door="client",
    operation_id="getClientDocument",
    summary=f"The client document: the client REST ({CLIENT_PREFIX}) and the SSE stream",
    tag="documents",
    answers=_DOCUMENT,
    security=(),
)
async def client_document() -> JsonSchema:
    return _documents()["client"]


def routes() -> tuple[Route, ...]:
    """The two documents, each served on its own door."""
    return (server_document, client_document)
