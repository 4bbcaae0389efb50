"""The HTTP doors on quart-trio: health, metrics, the server API and the client REST,
plus the configured static folders (static.py) and, in development, /dev/token (dev.py).

Each capability describes its routes (``realtimed.api.routes``) and hands them
over from its ``routes()`` function; ``create_app`` serves the list it is given,
by default ``capability_routes()``, each under its door's prefix (``/server/v1``,
``/api/v1``). This module checks credentials for each door, charges each client
REST call to the user's op budget (``budgets``), turns every ``ApiError`` into the
error body of docs/protocol.md section 8.1, and adds CORS headers for allowed
browser origins.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import trio
from quart import Response, current_app, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from realtimed import logs, metrics
from realtimed.api.routes import (
    CLIENT_PREFIX,
    SERVER_PREFIX,
    Route,
    Schema,
    bearer_token,
    json_response,
    out,
    route,
    services,
)
from realtimed.config import is_loopback, parse_host_port
from realtimed.email import http as email_http
from realtimed.errors import ApiError, Internal, NotFound, PayloadTooLarge, RateLimited, Unauthorized
from realtimed.http import budgets, console, dev, static
from realtimed.services import Services

__all__ = [
    "READY_TIMEOUT_S",
    "capability_routes",
    "check_backends",
    "create_app",
    "error_response",
]

log = logging.getLogger(__name__)

READY_TIMEOUT_S: Final = 2.0
#: Each response carries the request's id; a request may bring its own (from a proxy) if it is a plain token.
REQUEST_ID_HEADER: Final = "X-Request-Id"
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Server API calls with other methods change state, and are logged with the API key's name.
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
#: The budget name an API key's server API requests are counted under (``api.rate_limits``).
SERVER_API_BUDGET: Final = "server.api"
# Fetched without a credential: the documents are the same for everyone.
_DOCUMENTS: Final = frozenset({f"{SERVER_PREFIX}/openapi.json", f"{CLIENT_PREFIX}/openapi.json"})


def capability_routes() -> list[Route]:
    """Every route the daemon serves: the operator's endpoints, then each capability's ``routes()``."""
    # Imported here: the capabilities import this package's helpers, and nothing
    # is registered by importing them.
    from realtimed import chat, presence
    from realtimed.feeds import http as feeds_http
    from realtimed.http import client_api, jobs_api, openapi, server_api
    from realtimed.notify import http as notify_http
    from realtimed.push import http as push_http
    from realtimed.webhooks import http as webhooks_http

    return [
        *routes(),
        *openapi.routes(),
        *server_api.routes(),
        *jobs_api.routes(),
        *console.routes(),
        *client_api.routes(),
        *chat.routes(),
        *presence.routes(),
        *notify_http.routes(),
        *push_http.routes(),
        *email_http.routes(),
        *webhooks_http.routes(),
        *feeds_http.routes(),
    ]


def error_response(exc: ApiError) -> Response:
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_ms", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, -(-retry_after // 1000)))
    return json_response({"error": exc.to_dict()}, exc.http_status, headers)


def _origin_allowed(origin: str, allowed: list[str]) -> bool:
    return "*" in allowed or origin in allowed


def _server_api_allowed_here(svc: Services) -> bool:
    """The server API and /metrics are served on the client listener only when safe."""
    if request.scope.get("realtimed.listener") == "internal":
        return True
    cfg = svc.config
    host, _ = parse_host_port(cfg.http.listen)
    return is_loopback(host) or cfg.http.expose_server_api


def create_app(svc: Services, served: Iterable[Route] | None = None) -> QuartTrio:
    """The app of the HTTP doors, serving ``served`` (default: ``capability_routes()``).

    Raises:
        ValueError: two routes share a method and a path, or an operationId.
    """
    served = tuple(capability_routes() if served is None else served)
    # No static folder: every path the app answers is a route of the documents.
    app = QuartTrio("realtimed", static_folder=None)
    app.extensions["realtimed"] = svc
    app.extensions["realtimed.routes"] = served
    app.config["MAX_CONTENT_LENGTH"] = svc.config.http.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    _add_request_hooks(app)
    _add_error_handlers(app)
    _add_routes(app, served)
    # /dev/token (development only), the operator console's page and the [[http.static]] folders.
    app.register_blueprint(dev.blueprint)
    app.register_blueprint(console.blueprint)
    app.register_blueprint(email_http.blueprint)
    static.add_static_routes(app, svc.config)
    app.extensions["realtimed.fixed_paths"] = _fixed_paths(app)
    return app


def _fixed_paths(app: QuartTrio) -> dict[str, frozenset[str]]:
    """Each path a rule without variables serves, and the methods served there.

    Such a path is its own resource: ``/api/v1/notifications/preferences`` is not
    the notification ``preferences`` of ``/api/v1/notifications/<notification_id>``.
    """
    paths: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.arguments:
            paths.setdefault(rule.rule, set()).update(rule.methods or ())
    return {path: frozenset(methods) for path, methods in paths.items()}


def _allowed_methods(valid: Iterable[str]) -> list[str]:
    """The methods served at the request's path: a fixed path's own, else the router's."""
    fixed: dict[str, frozenset[str]] = current_app.extensions.get("realtimed.fixed_paths", {})
    return sorted(fixed.get(request.path, valid))


def _fixed_path_refusal() -> MethodNotAllowed | None:
    """The 405 of a method a fixed path does not serve, even where a rule with a variable matches it."""
    rule = request.url_rule
    if rule is None or not rule.arguments:
        return None
    fixed: dict[str, frozenset[str]] = current_app.extensions.get("realtimed.fixed_paths", {})
    methods = fixed.get(request.path)
    if methods is not None and request.method not in methods:
        return MethodNotAllowed(valid_methods=sorted(methods))
    return None


async def _fixed_path_wins() -> None:
    """After the door's checks, as for the router's own 405."""
    refusal = _fixed_path_refusal()
    if refusal is not None:
        raise refusal


def _add_request_hooks(app: QuartTrio) -> None:
    """What runs around every request: timing, the door checks, CORS, accounting, the body's end."""
    # Registered first, so that timing starts before a door check can answer.
    app.before_request(_start_timing)
    app.before_request(_door_checks)
    app.before_request(_fixed_path_wins)
    app.after_request(_cors_and_count)
    app.after_request(_account_api_key)
    app.after_request(_finish_reading_the_body)


def _add_error_handlers(app: QuartTrio) -> None:
    """Every error becomes the error body of docs/protocol.md section 8.1."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _add_routes(app: QuartTrio, served: Iterable[Route]) -> None:
    """Add each route under its endpoint, its operationId.

    Raises:
        ValueError: two routes share a method and a path, or an operationId.
    """
    seen: set[tuple[str, str]] = set()
    operation_ids: set[str] = set()
    for served_route in served:
        key = (served_route.method, served_route.rule)
        if key in seen or served_route.operation_id in operation_ids:
            raise ValueError(f"{served_route.method} {served_route.rule} ({served_route.operation_id}) is served twice")
        seen.add(key)
        operation_ids.add(served_route.operation_id)
        app.add_url_rule(
            served_route.rule,
            endpoint=served_route.operation_id,
            view_func=served_route.view,
            methods=[served_route.method],
        )


# -- around every request ---------------------------------------------------------------------


async def _start_timing() -> None:
    g.started = time.perf_counter()


async def _door_checks() -> Response | None:
    """Answer a request its door refuses; else let it through, its caller known."""
    s = services()
    path = request.path
    # Every line this request logs carries its id: the proxy's X-Request-Id when it is a plain token, else our own.
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    logs.bind_task(request_id=g.request_id)
    refusal = _listener_refusal(s, path)
    if refusal is not None:
        return refusal
    if path.startswith(SERVER_PREFIX) and path not in _DOCUMENTS:
        refusal = _check_api_key(s)
        if refusal is not None:
            return refusal
    if path.startswith(CLIENT_PREFIX):
        return await _client_door(s, path)
    return None


def _listener_refusal(s: Services, path: str) -> Response | None:
    """The 404 of a path not served on the listener the request came to.

    The console's page (``/console``) goes where the server API goes, and only
    while ``console.enabled`` is on (``http/console.py``).
    """
    internal = request.scope.get("realtimed.listener") == "internal"
    is_console = console.is_console_path(path)
    if internal and not (
        path.startswith(SERVER_PREFIX) or path in ("/metrics", "/healthz", "/readyz") or is_console
    ):
        return error_response(NotFound("not served on the internal listener"))
    if (path.startswith(SERVER_PREFIX) or path == "/metrics" or is_console) and not _server_api_allowed_here(s):
        return error_response(NotFound("served on the internal listener only"))
    if is_console and not s.config.console.enabled:
        return error_response(NotFound(f"no route {path}"))
    return None


def _check_api_key(s: Services) -> Response | None:
    """The server API's credential: a known API key, whose name the request then carries;
    then the key's budget (``api.rate_limits``), charged before anything runs."""
    token = bearer_token()
    key_name = s.api_keys.identify(token) if token is not None and s.api_keys is not None else None
    if key_name is None:
        return error_response(Unauthorized("a valid API key is required"))
    g.api_key_name = key_name
    logs.annotate(api_key=key_name)
    budget = s.config.api.rate_limit(key_name)
    if budget is not None:
        # The token buckets of the per-user op budgets, under a name no op or REST budget has.
        wait_s = s.ops.limiter.take(key_name, SERVER_API_BUDGET, budget, now=trio.current_time())
        if wait_s > 0.0:
            metrics.SERVER_API_LIMITED.labels(key_name).inc()
            return error_response(
                RateLimited(
                    f"too many server API requests with API key {key_name}: {budget.per} per {budget.window_s:g} s",
                    retry_after_ms=math.ceil(wait_s * 1000),
                )
            )
    return None


async def _client_door(s: Services, path: str) -> Response | None:
    """The client REST door: CORS preflights, then a user token, bans and the user's op budget."""
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and origin:
        return _preflight(s, origin)
    if path == f"{CLIENT_PREFIX}/events":
        return None  # the SSE door authenticates itself (header or ?token=)
    if path in _DOCUMENTS:
        return None
    token = bearer_token()
    if token is None or s.verifier is None:
        return error_response(Unauthorized("a user token is required"))
    g.claims = await s.verifier.verify(token)
    logs.annotate(user=g.claims.sub)
    if s.gateway is not None:
        await s.gateway.bans.check(g.claims.sub, cached=True)
        # No route: a 404 or 405, and nothing runs.
        if request.url_rule is not None and _fixed_path_refusal() is None:
            await budgets.charge(
                s.ops.limiter,
                s.config.gateway,
                g.claims.sub,
                method=request.method,
                rule=request.url_rule.rule.removeprefix(CLIENT_PREFIX),
            )
    return None


async def _cors_and_count(response: Response) -> Response:
    s = services()
    origin = request.headers.get("Origin")
    if origin and request.path.startswith(CLIENT_PREFIX) and _origin_allowed(origin, s.config.gateway.allowed_origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    request_id = g.get("request_id")
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    door = "server" if request.path.startswith(SERVER_PREFIX) else "client" if request.path.startswith(CLIENT_PREFIX) else "ops"
    metrics.HTTP_REQUESTS.labels(door, f"{response.status_code // 100}xx").inc()
    started: float | None = g.get("started")
    if started is not None:
        # The route template, never the path: the label's values are the app's routes.
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "other"
        metrics.HTTP_LATENCY.labels(rule, method).observe(time.perf_counter() - started)
    return response


async def _account_api_key(response: Response) -> Response:
    # The name of the API key behind each server API call: a metric label, and
    # in the log for every call that changes state (a failed one too).
    key_name: str | None = g.get("api_key_name")
    if key_name is not None:
        method = request.method if request.method in _KNOWN_METHODS else "other"
        metrics.SERVER_API_REQUESTS.labels(key_name, method, f"{response.status_code // 100}xx").inc()
        if request.method not in _READ_METHODS:
            log.info(
                "server API %s %s -> %d with API key %s%s",
                request.method, request.path, response.status_code, key_name,
                " from the console" if request.headers.get(console.CONSOLE_HEADER) == "1" else "",
            )
    return response


async def _finish_reading_the_body(response: Response) -> Response:
    # hypercorn reuses a keep-alive connection only once the whole request has
    # arrived. An answer sent before the body did (the door's 401, a 404, a 405)
    # would leave the connection stuck, and the client's next request on it
    # unanswered; over HTTP/2, hypercorn fails the whole connection on DATA for
    # a stream it has answered. So the rest of the body is read first (it is
    # bounded by http.max_body_bytes, and waited for at most http.drain_s). A
    # body that cannot be read whole ends an HTTP/1.1 connection instead (the
    # listener then discards what still comes, for at most http.drain_s).
    complete = False
    with trio.move_on_after(services().config.http.drain_s):
        try:
            await request.body
            complete = True
        except RequestEntityTooLarge:
            pass
    if not complete and request.http_version in ("1.0", "1.1"):
        response.headers["Connection"] = "close"
    return response


# -- errors -----------------------------------------------------------------------------------


async def _api_error(exc: ApiError) -> Response:
    if isinstance(exc, Internal):
        log.error("internal error %s on %s %s", exc.correlation_id, request.method, request.path)
    return error_response(exc)


async def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    if code == 404:
        return error_response(NotFound(f"no route {request.path}"))
    if code == 405:
        allowed = _allowed_methods(getattr(exc, "valid_methods", None) or [])
        return json_response(
            {"error": {"code": "BAD_REQUEST", "message": f"method {request.method} not allowed"}},
            405,
            {"Allow": ", ".join(allowed)} if allowed else None,
        )
    if code == 413:
        return error_response(PayloadTooLarge(f"body over {services().config.http.max_body_bytes} bytes"))
    if code < 500:
        return json_response({"error": {"code": "BAD_REQUEST", "message": exc.description or "bad request"}}, code)
    err = Internal()
    log.error("internal error %s on %s %s: %s", err.correlation_id, request.method, request.path, exc)
    return error_response(err)


async def _unexpected(exc: Exception) -> Response:
    err = Internal()
    log.exception("internal error %s on %s %s", err.correlation_id, request.method, request.path)
    return error_response(err)


# -- the operator's endpoints (in the server document, without a credential) ---------------


@attrs.frozen
class Health:
    """The process answers."""

    status: str = out({"type": "string", "enum": ["ok"]})
    node: str = out({"type": "string"}, description="this node's id (server.node_id)")


_BACKENDS: Final = {"type": "object", "additionalProperties": {"type": "string"}, "description": "backend → ok, or its problem"}
_READY: Final = Schema(
    {
        "type": "object",
        "required": ["status", "node", "backends"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "node": {"type": "string"},
            "backends": _BACKENDS,
            "draining": {"type": "boolean", "description": "present (true) while the node drains"},
            "error": {"$ref": "#/components/schemas/Error"},
        },
    },
    "whether every backend answers and the node is not draining; 503 with the same body otherwise",
)


@route(
    "GET", "/healthz", door="ops", operation_id="getHealth", summary="Liveness: the process answers",
    tag="operations", answers=Health, security=(),
)
async def healthz() -> Health:
    return Health(status="ok", node=services().node)


@route(
    "GET", "/readyz", door="ops", operation_id="getReadiness",
    summary="Readiness: every backend answers within 2 s and the node is not draining",
    tag="operations", answers=_READY, security=(), errors=(503,), error_schema=_READY.json,
)
async def readyz() -> Response:
    s = services()
    results = await check_backends(s)
    failing = {name: problem for name, problem in results.items() if problem}
    body: dict[str, Any] = {
        "status": "ready" if not failing and not s.draining else "unavailable",
        "node": s.node,
        "backends": {name: problem or "ok" for name, problem in results.items()},
    }
    if s.draining:
        body["draining"] = True
    if failing or s.draining:
        names = ", ".join(sorted(failing)) or "draining"
        body["error"] = {"code": "UNAVAILABLE", "message": f"not ready: {names}"}
        return json_response(body, 503)
    return json_response(body)


@route(
    "GET", "/metrics", door="ops", operation_id="getMetrics",
    summary="Prometheus metrics (served where the server API is; 404 when metrics.enabled is off)",
    tag="operations", answers=Schema({"type": "string"}, "the Prometheus text format", content_type=metrics.CONTENT_TYPE),
    security=(), errors=(404,),
)
async def metrics_endpoint() -> Response:
    if not services().config.metrics.enabled:
        return error_response(NotFound("metrics are disabled"))
    return Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


def routes() -> tuple[Route, ...]:
    """The operator's endpoints: liveness, readiness, metrics."""
    return (healthz, readyz, metrics_endpoint)


def _preflight(s: Services, origin: str) -> Response:
    if not _origin_allowed(origin, s.config.gateway.allowed_origins):
        return Response(b"", status=403)
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "Authorization, Content-Type"),
        "Access-Control-Max-Age": str(s.config.http.cors_max_age_s),
        "Vary": "Origin",
    }
    return Response(b"", status=204, headers=headers)


async def check_backends(s: Services) -> dict[str, str]:
    """Ask each backend to answer; returns name → "" (ok) or the problem."""
    checks: dict[str, Callable[[], Any]] = {}
    if s.store is not None:
        checks["store"] = s.store.ping
    if s.broker is not None and hasattr(s.broker, "ping"):
        checks["broker"] = s.broker.ping
    results: dict[str, str] = {}

    async def one(name: str, fn: Callable[[], Any]) -> None:
        problem = ""
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                await fn()
        except trio.TooSlowError:
            problem = f"no answer within {READY_TIMEOUT_S:g} s"
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
        results[name] = problem
        metrics.READY.labels(name).set(0 if problem else 1)

    async with trio.open_nursery() as nursery:
        for name, fn in checks.items():
            nursery.start_soon(one, name, fn)
    log.debug("readiness: %s", {name: problem or "ok" for name, problem in results.items()} or "no backends")
    return results
