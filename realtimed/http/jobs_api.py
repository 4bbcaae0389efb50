"""Jobs in the server API: list, inspect, retry and cancel (docs/protocol.md section 8.2).

Mounted under ``/server/v1``; the door checks the API key before these routes run.

- ``POST /jobs`` → ``{"job"}``: enqueue an HTTP job (``kind: "http"``: a configured target, a
  path, a method, a JSON body, ``run_at`` or ``delay_s``, ``max_attempts``, backoff, a
  ``unique_key``, a queue; ``realtimed.jobs.http``); a ``unique_key`` held by a job already
  answers that job
- ``GET /jobs?status=&queue=&kind=&cursor=&limit=`` → ``{"jobs": [...], "next_cursor"}``
- ``GET /jobs/<id>`` → ``{"job"}``
- ``POST /jobs/<id>/retry`` → ``{"job"}``: a failed, dead or cancelled job is queued again now
  with its attempts reset (409 ``CONFLICT`` in other statuses, 404 for an unknown id)
- ``POST /jobs/<id>/cancel`` → ``{"job"}``: a queued job is cancelled (409 otherwise)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import attrs

from realtimed.api.routes import (
    Kind,
    Named,
    QueryChoice,
    QueryInt,
    QueryText,
    RequestParts,
    Route,
    WholeBody,
    list_of,
    out,
    route,
    services,
    wire,
)
from realtimed.config import HTTP_JOB_KIND, HTTP_JOB_METHODS
from realtimed.errors import NotFound
from realtimed.jobs.http import (
    HTTP,
    MAX_BACKOFF_S,
    MAX_JOB_ATTEMPTS,
    MAX_PATH_CHARS,
    MAX_PRIORITY,
    MAX_UNIQUE_KEY_CHARS,
    parse_http_job_request,
)
from realtimed.protocol import MAX_ID_CHARS, JsonSchema
from realtimed.store.base import JOB_STATUSES, Store

__all__ = ["JOB", "routes"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
_MAX_FILTER_CHARS: Final = 200
_TAG: Final = "jobs"
_WHEN: Final = {"type": ["string", "null"], "format": "date-time"}

JOB: Final = Named(
    "Job",
    {
        "type": "object",
        "required": [
            "id", "queue", "kind", "payload", "priority", "status", "attempts", "max_attempts", "run_at",
            "last_error", "created_at", "finished_at",
        ],
        "properties": {
            "id": {"type": "string"},
            "queue": {"type": "string"},
            "kind": {"type": "string"},
            "payload": {"type": "object"},
            "priority": {"type": "integer"},
            "status": {"type": "string", "enum": list(JOB_STATUSES)},
            "attempts": {"type": "integer", "minimum": 0, "description": "claims so far, the running one included"},
            "max_attempts": {"type": "integer", "minimum": 1},
            "run_at": {"$ref": "#/components/schemas/Time"},
            "last_error": {"type": ["string", "null"]},
            "created_at": {"$ref": "#/components/schemas/Time"},
            "finished_at": _WHEN,
        },
    },
)


def _store() -> Store:
    return services().store


@attrs.frozen
class JobId(Kind):
    """A job id in the path: one that cannot exist (empty, over ``protocol.MAX_ID_CHARS``) is not found."""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        job_id: str = source[name]
        if not job_id or len(job_id) > MAX_ID_CHARS:
            raise NotFound(f"no job {job_id!r}")
        return job_id

    def schema(self, cfg: Any) -> JsonSchema:
        return {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}


@attrs.frozen
class JobsQuery:
    status: str | None = wire(QueryChoice(JOB_STATUSES), "query")
    queue: str | None = wire(QueryText(_MAX_FILTER_CHARS), "query")
    kind: str | None = wire(QueryText(_MAX_FILTER_CHARS), "query")
    cursor: str | None = wire(QueryText(_MAX_FILTER_CHARS, description="next_cursor of the previous page"), "query")
    limit: int = wire(QueryInt(DEFAULT_LIMIT, 1, MAX_LIMIT), "query")


@attrs.frozen
class JobPage:
    """A page of jobs, newest first."""

    jobs: list[dict[str, Any]] = out(list_of(JOB))
    next_cursor: str | None = out({"type": ["string", "null"]}, description="null at the end")


@route(
    "GET", "/jobs", door="server", operation_id="listJobs", summary="Jobs, by status, queue and kind",
    tag=_TAG, accepts=JobsQuery, answers=JobPage,
)
async def list_jobs(inp: JobsQuery) -> JobPage:
    # The store raises ValidationFailed("cursor", ...) for a cursor it did not make.
    jobs, next_cursor = await _store().list_jobs(
        status=inp.status, queue=inp.queue, kind=inp.kind, cursor=inp.cursor, limit=inp.limit
    )
    return JobPage(jobs=[job.to_wire() for job in jobs], next_cursor=next_cursor)


@attrs.frozen
class JobPath:
    job_id: str = wire(JobId(), "path")


@attrs.frozen
class JobReply:
    """The job."""

    job: dict[str, Any] = out(JOB)


@route(
    "GET", "/jobs/<job_id>", door="server", operation_id="getJob", summary="One job",
    tag=_TAG, accepts=JobPath, answers=JobReply, errors=(404,),
)
async def get_job(inp: JobPath) -> JobReply:
    job = await _store().get_job(inp.job_id)
    if job is None:
        raise NotFound(f"no job {inp.job_id!r}")
    return JobReply(job=job.to_wire())


@route(
    "POST", "/jobs/<job_id>/retry", door="server", operation_id="retryJob",
    summary="Run a failed, dead or cancelled job again now, its attempts reset (409 in other statuses)",
    tag=_TAG, accepts=JobPath, answers=JobReply, errors=(404, 409),
)
async def retry_job(inp: JobPath) -> JobReply:
    svc = services()
    job = await svc.store.retry_job(job_id=inp.job_id, now=svc.clock.now())
    log.info("job %s (%s) retried through the server API", job.id, job.kind)
    return JobReply(job=job.to_wire())


@route(
    "POST", "/jobs/<job_id>/cancel", door="server", operation_id="cancelJob",
    summary="Cancel a queued job (409 in other statuses)",
    tag=_TAG, accepts=JobPath, answers=JobReply, errors=(404, 409),
)
async def cancel_job(inp: JobPath) -> JobReply:
    svc = services()
    job = await svc.store.cancel_job(job_id=inp.job_id, now=svc.clock.now())
    log.info("job %s (%s) cancelled through the server API", job.id, job.kind)
    return JobReply(job=job.to_wire())


_ENQUEUE: Final[JsonSchema] = {
    "type": "object",
    "required": ["kind", "target"],
    "properties": {
        "kind": {"type": "string", "enum": [HTTP_JOB_KIND]},
        "target": {"type": "string", "description": "the name of a [[jobs.http_targets]] target"},
        "path": {
            "type": ["string", "null"],
            "maxLength": MAX_PATH_CHARS,
            "description": "below the target's base_url: relative (no scheme, host, fragment, . or .. segment), "
            "printable ASCII; may have a query",
        },
        "method": {"type": ["string", "null"], "enum": [*HTTP_JOB_METHODS, None], "default": "POST"},
        "body": {"description": "the JSON body (absent or null: none; a GET takes none), at most "
                 "jobs.http.max_body_bytes as JSON"},
        "run_at": {"type": ["string", "null"], "format": "date-time",
                   "description": "when to run it (at most jobs.http.max_delay_s from now); not with delay_s"},
        "delay_s": {"type": ["number", "null"], "minimum": 0, "description": "run it this long from now"},
        "max_attempts": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_JOB_ATTEMPTS,
                         "description": "absent: jobs.http.max_attempts"},
        "backoff_base_s": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_BACKOFF_S,
                           "description": "first retry delay (absent: jobs.http.backoff_base_s)"},
        "backoff_max_s": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_BACKOFF_S,
                          "description": "longest retry delay (absent: jobs.http.backoff_max_s)"},
        "unique_key": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_UNIQUE_KEY_CHARS,
                       "description": "while a job holds this key, enqueueing it again answers that job"},
        "queue": {"type": ["string", "null"], "description": "default, jobs.http.queue (absent) or a [[jobs.queues]] name"},
        "priority": {"type": ["integer", "null"], "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY},
    },
    "additionalProperties": False,
}


@attrs.frozen
class EnqueueInput:
    body: dict[str, Any] = wire(WholeBody(_ENQUEUE))


@route(
    "POST", "/jobs", door="server", operation_id="enqueueJob",
    summary="Enqueue an HTTP job: a signed call to a configured target (a unique_key already held answers its job)",
    tag=_TAG, accepts=EnqueueInput, answers=JobReply,
)
async def enqueue_job(inp: EnqueueInput) -> JobReply:
    svc = services()
    req = parse_http_job_request(inp.body, svc.config, svc.clock.now())
    job = await svc.jobs.enqueue(
        HTTP, req.job, queue=req.queue, run_at=req.run_at, max_attempts=req.max_attempts,
        dedupe_key=req.dedupe_key, priority=req.priority,
    )
    log.info("job %s (http %s %s %s) enqueued through the server API", job.id, req.job.method, req.job.target,
             req.job.path)
    return JobReply(job=job.to_wire())


def routes() -> tuple[Route, ...]:
    """The jobs routes of the server API."""
    return (enqueue_job, list_jobs, get_job, retry_job, cancel_job)
