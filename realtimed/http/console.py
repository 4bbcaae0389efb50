"""The operator console: a web page at ``/console``, and the server API routes it reads live.

Where the page is served:
    Wherever the server API is, and nowhere else (``http/app.py`` decides, per
    request, for ``/console`` and everything under it): on the internal listener
    (``http.internal_listen``), and on the client listener when it listens on
    loopback or ``http.expose_server_api`` is on. Anywhere else, and whenever
    ``console.enabled`` is off, ``/console`` answers 404 ``NOT_FOUND`` like a
    path without a route.

What is served:
    Three files from the package (``realtimed/http/console_files``): the page,
    its script and its style sheet, for GET and HEAD, under a fixed list of
    names (no path is ever joined to a folder). Every answer carries a
    Content-Security-Policy that allows scripts, styles and requests from the
    page's own origin only (no inline script or style, no eval, no frame, no
    form, no other origin), ``X-Frame-Options: DENY``,
    ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
    ``Cache-Control: no-cache``.

Security model:
    The page holds no credential and needs none to load: it is the same for
    everyone. The operator types an API key (``api.keys``); the script keeps it
    in a variable (no cookie, no storage) and sends it as
    ``Authorization: Bearer`` on each server API call, so that the door checks
    it as for any backend, and every call that changes state is logged with the
    key's name (``from the console`` added for the page's calls). With no
    cookie there is nothing for another site's page to ride on (no CSRF), and
    the server API sends no CORS headers, so another origin can neither send
    the header nor read an answer. The script writes every value into the page
    as text (``textContent``), never as HTML.

The routes (server API, under the API key):
    ``GET /server/v1/stats/stream`` streams this node's counters as SSE, a
    ``stats`` record every ``console.stats_interval_s`` (fetch with a stream
    reader on the page: an ``EventSource`` cannot send the key);
    ``GET /server/v1/nodes`` surveys every node of the cluster for its counters.

Resource handling:
    At most ``console.max_streams`` streams at once on a node (one more is 503
    ``UNAVAILABLE``). A stream ends when its client goes; when the node starts
    to drain (at once, with a ``closed`` record if the node is still up to send
    it); and when its API key is no longer configured (a reload that removes
    it: a ``closed`` record first, within ``console.stats_interval_s``).
"""

from __future__ import annotations

import importlib.resources
import logging
import weakref
from collections.abc import AsyncIterator
from functools import cache
from typing import Any, Final

import attrs
import orjson
import trio
from quart import Blueprint, Response, current_app, request

from realtimed.api.routes import Route, Schema, bearer_token, out, route, services
from realtimed.clock import iso
from realtimed.errors import Unauthorized, Unavailable
from realtimed.services import Services
from realtimed.store.base import JOB_STATUSES

__all__ = ["CONSOLE_HEADER", "CONSOLE_PATH", "blueprint", "is_console_path", "routes"]

log = logging.getLogger(__name__)

CONSOLE_PATH: Final = "/console"
#: Sent by the page with each server API call, so that the audit line says the call came from the console.
CONSOLE_HEADER: Final = "X-Realtimed-Console"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
# A backend that does not answer within this long is left out of one record (null), not waited for.
_BACKEND_TIMEOUT_S: Final = 2.0
_STREAMS_KEY: Final = "realtimed.console_streams"
_TAG: Final = "node"

blueprint = Blueprint("console", __name__)


def is_console_path(path: str) -> bool:
    """Whether ``path`` is the console's (``/console`` or under it)."""
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


@cache
def _file(name: str) -> bytes:
    # Package data that never changes while the process runs: read once.
    return importlib.resources.files("realtimed.http").joinpath("console_files").joinpath(name).read_bytes()


def _page_file(name: str) -> Response:
    return Response(_file(name), content_type=_FILES[name], headers=_HEADERS)


@blueprint.route(CONSOLE_PATH, methods=["GET", "HEAD"])
@blueprint.route(CONSOLE_PATH + "/", methods=["GET", "HEAD"])
async def page() -> Response:
    return _page_file("index.html")


@blueprint.route(CONSOLE_PATH + "/console.js", methods=["GET", "HEAD"])
async def script() -> Response:
    return _page_file("console.js")


@blueprint.route(CONSOLE_PATH + "/console.css", methods=["GET", "HEAD"])
async def style() -> Response:
    return _page_file("console.css")


# -- the live counters -------------------------------------------------------------------------

_JOB_COUNTS: Final = {
    "type": ["object", "null"],
    "description": "jobs in the store by status, every node's, read every console.jobs_interval_s "
    "(null: the store did not answer in time)",
    "properties": {status: {"type": "integer", "minimum": 0} for status in JOB_STATUSES},
}
STATS_RECORD: Final = {
    "type": "object",
    "description": "an SSE record: event stats (data: the counters below, as JSON), or closed (data: {reason}) "
    "before the server ends the stream; comments are heartbeats",
    "properties": {
        "event": {"type": "string", "enum": ["stats", "closed"]},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "properties": {
                    "node": {"type": "string"},
                    "at": {"$ref": "#/components/schemas/Time"},
                    "sockets": {"type": "integer", "minimum": 0, "description": "this node's sockets and SSE streams"},
                    "websocket_sockets": {"type": "integer", "minimum": 0},
                    "sse_streams": {"type": "integer", "minimum": 0},
                    "users": {"type": "integer", "minimum": 0, "description": "users with a session on this node"},
                    "users_online": {
                        "type": ["integer", "null"],
                        "description": "users with a session on any node (null: presence did not answer in time)",
                    },
                    "rooms": {"type": "integer", "minimum": 0, "description": "rooms with a subscriber on this node"},
                    "deliveries": {"type": "integer", "minimum": 0, "description": "frames handed to this node's sockets"},
                    "publications": {"type": "integer", "minimum": 0, "description": "fan-outs this node published"},
                    "messages": {"type": "integer", "minimum": 0, "description": "chat messages stored through this node"},
                    "deliveries_per_s": {"type": "number", "minimum": 0, "description": "since the previous record (0 in the first)"},
                    "publications_per_s": {"type": "number", "minimum": 0},
                    "messages_per_s": {"type": "number", "minimum": 0},
                    "jobs": _JOB_COUNTS,
                    "queues": {
                        "type": ["array", "null"],
                        "description": "every queue with a queued job, by name (null: the store did not answer in time)",
                        "items": {
                            "type": "object",
                            "properties": {
                                "queue": {"type": "string"},
                                "queued": {"type": "integer", "minimum": 0, "description": "due or scheduled"},
                                "oldest_due_age_s": {
                                    "type": ["number", "null"],
                                    "description": "how long its longest-waiting due job has waited (null: none is due)",
                                },
                            },
                        },
                    },
                    "draining": {"type": "boolean"},
                    "reason": {"type": "string", "description": "closed: why the stream ends"},
                },
            },
        },
    },
}


@attrs.define(eq=False)
class _Stream:
    """One open stream; held only by its generator, so that one never started is forgotten too."""


@attrs.define(eq=False)
class _Streams:
    """The node's open streams, and the job counts they share (read at most every ``console.jobs_interval_s``)."""

    open: weakref.WeakSet[_Stream] = attrs.field(factory=weakref.WeakSet)
    jobs_read: trio.Lock = attrs.field(factory=trio.Lock)
    jobs_at: float = -float("inf")
    jobs: tuple[dict[str, int] | None, list[dict[str, Any]] | None] = (None, None)


@attrs.define
class _Totals:
    at: float
    deliveries: int
    publications: int
    messages: int


def _record(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _rate(now: int, before: int, elapsed: float) -> float:
    return round(max(0, now - before) / elapsed, 1) if elapsed > 0 else 0.0


async def _users_online(svc: Services) -> int | None:
    with trio.move_on_after(_BACKEND_TIMEOUT_S):
        try:
            _, count = await svc.presence.backend.online(limit=0)
        except Exception as exc:  # a counter stream outlives a backend that is away
            log.debug("console stream: presence did not answer: %s", exc)
            return None
        return count
    return None


async def _shared_job_counts(svc: Services, streams: _Streams) -> tuple[dict[str, int] | None, list[dict[str, Any]] | None]:
    """``_job_counts``, read once for every stream of the node per ``console.jobs_interval_s``."""
    async with streams.jobs_read:
        if trio.current_time() - streams.jobs_at >= svc.config.console.jobs_interval_s:
            streams.jobs = await _job_counts(svc)
            # A store that did not answer is asked again at the next record.
            streams.jobs_at = trio.current_time() if streams.jobs[0] is not None else -float("inf")
        return streams.jobs


async def _job_counts(svc: Services) -> tuple[dict[str, int] | None, list[dict[str, Any]] | None]:
    """Jobs by status and queued jobs by queue, store-wide; (None, None) when the store does not answer."""
    with trio.move_on_after(_BACKEND_TIMEOUT_S):
        try:
            stats = await svc.store.job_stats()
            queues = await svc.store.queue_stats(svc.clock.now())
        except Exception as exc:  # as above: the record says null, the stream goes on
            log.debug("console stream: the store did not answer: %s", exc)
            return None, None
        counts = dict.fromkeys(JOB_STATUSES, 0)
        for _, status, count in stats:
            counts[status] = counts.get(status, 0) + count
        by_queue = [
            {"queue": queue, "queued": queued, "oldest_due_age_s": None if age is None else round(age, 1)}
            for queue, queued, age in sorted(queues)
        ]
        return counts, by_queue
    return None, None


async def _snapshot(svc: Services, streams: _Streams, previous: _Totals | None) -> tuple[dict[str, Any], _Totals]:
    """This node's counters now, with rates since ``previous``."""
    router, gateway = svc.router, svc.gateway
    totals = _Totals(trio.current_time(), router.deliveries, router.publications, svc.chat.messages_stored)
    elapsed = totals.at - previous.at if previous is not None else 0.0
    before = previous or totals
    jobs, queues = await _shared_job_counts(svc, streams)
    body: dict[str, Any] = {
        "node": svc.node,
        "at": iso(svc.clock.now()),
        "sockets": len(gateway.sessions),
        "websocket_sockets": gateway.count("websocket"),
        "sse_streams": gateway.count("sse"),
        "users": router.user_count,
        "users_online": await _users_online(svc),
        "rooms": router.room_count,
        "deliveries": totals.deliveries,
        "publications": totals.publications,
        "messages": totals.messages,
        "deliveries_per_s": _rate(totals.deliveries, before.deliveries, elapsed),
        "publications_per_s": _rate(totals.publications, before.publications, elapsed),
        "messages_per_s": _rate(totals.messages, before.messages, elapsed),
        "jobs": jobs,
        "queues": queues,
        "draining": svc.draining,
    }
    return body, totals


async def _stats_records(svc: Services, token: str, streams: _Streams) -> AsyncIterator[bytes]:
    stream = _Stream()
    streams.open.add(stream)
    try:
        yield b"retry: 5000\n\n"
        previous: _Totals | None = None
        while True:
            body, previous = await _snapshot(svc, streams, previous)
            yield _record("stats", body)
            if not svc.draining:
                with trio.move_on_after(svc.config.console.stats_interval_s):
                    await svc.gateway.drain_started.wait()
            if svc.draining:
                yield _record("closed", {"reason": "the node is draining"})
                return
            if svc.api_keys.identify(token) is None:
                yield _record("closed", {"reason": "the API key is no longer accepted"})
                return
    finally:
        streams.open.discard(stream)


@route(
    "GET", "/stats/stream", door="server", operation_id="streamStats",
    summary="This node's counters as server-sent events, one stats record every console.stats_interval_s "
    "(503 past console.max_streams streams)",
    tag=_TAG, answers=Schema(STATS_RECORD, content_type="text/event-stream"), errors=(503,),
)
async def stats_stream() -> Response:
    svc = services()
    token = bearer_token()
    if token is None:  # the door has checked it; kept for the type
        raise Unauthorized("a valid API key is required")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        # The head alone: the body would be the endless stream, which a HEAD never reads.
        return Response(b"", content_type="text/event-stream", headers=headers)
    streams: _Streams = current_app.extensions.setdefault(_STREAMS_KEY, _Streams())
    limit = svc.config.console.max_streams
    if len(streams.open) >= limit:
        raise Unavailable(f"{limit} stats streams are open on this node (console.max_streams)")
    response = Response(_stats_records(svc, token, streams), content_type="text/event-stream", headers=headers)
    response.timeout = None
    return response


# -- the cluster's nodes -----------------------------------------------------------------------

_NODE: Final = {
    "type": "object",
    "required": ["node", "sessions", "users", "rooms", "deliveries", "publications"],
    "properties": {
        "node": {"type": "string"},
        "sessions": {"type": "integer", "minimum": 0, "description": "sockets and SSE streams"},
        "users": {"type": "integer", "minimum": 0},
        "rooms": {"type": "integer", "minimum": 0},
        "deliveries": {"type": "integer", "minimum": 0, "description": "since the node started"},
        "publications": {"type": "integer", "minimum": 0, "description": "since the node started"},
    },
}


@attrs.frozen
class Nodes:
    """Every node that answered, by node id."""

    nodes: list[dict[str, Any]] = out({"type": "array", "items": _NODE})
    complete: bool = out(
        {"type": "boolean", "description": "every node answered within broker.survey_timeout_s (false: the list covers those that did)"}
    )


@route(
    "GET", "/nodes", door="server", operation_id="listNodes",
    summary="The nodes of the cluster and their counters (a survey over the broker)",
    tag=_TAG, answers=Nodes,
)
async def nodes() -> Nodes:
    router = services().router
    try:
        answers, others = await router.survey("node", {})
        complete = others.complete
    except Unavailable:
        answers, complete = [await router.survey_handlers["node"]("node", {})], False
    answers.sort(key=lambda answer: answer["node"])
    return Nodes(nodes=answers, complete=complete)


def routes() -> tuple[Route, ...]:
    """The console's server API routes: the counters stream and the nodes."""
    return (stats_stream, nodes)
