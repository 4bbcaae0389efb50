"""Jobs in the server API: list, inspect, retry and cancel (docs/protocol.md section 8.2).

Mounted under ``/server/v1``; the door checks the API key before these routes run.

- ``GET /jobs?status=&queue=&kind=&cursor=&limit=`` → ``{"jobs": [...], "next_cursor"}``
- ``GET /jobs/<id>`` → ``{"job"}``
- ``POST /jobs/<id>/retry`` → ``{"job"}``: a failed, dead or cancelled job is queued again now
  with its attempts reset (409 ``CONFLICT`` in other statuses, 404 for an unknown id)
- ``POST /jobs/<id>/cancel`` → ``{"job"}``: a queued job is cancelled (409 otherwise)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from quart import Blueprint, Response, request

from realtimed.errors import NotFound, ValidationFailed
from realtimed.http.app import json_response, register_blueprint, services
from realtimed.store.base import JOB_STATUSES, Store

__all__ = ["blueprint"]

log = logging.getLogger(__name__)

blueprint = Blueprint("jobs_api", __name__)

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
_MAX_FILTER_CHARS: Final = 200
_MAX_ID_CHARS: Final = 100


def _store() -> Store:
    return services().store


def _status(args: Mapping[str, str]) -> str | None:
    value = args.get("status") or None
    if value is not None and value not in JOB_STATUSES:
        raise ValidationFailed("status", f"must be one of {', '.join(JOB_STATUSES)}")
    return value


def _filter(args: Mapping[str, str], field: str) -> str | None:
    value = args.get(field) or None
    if value is not None and len(value) > _MAX_FILTER_CHARS:
        raise ValidationFailed(field, f"must be at most {_MAX_FILTER_CHARS} characters")
    return value


def _limit(args: Mapping[str, str]) -> int:
    raw = args.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed("limit", "must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ValidationFailed("limit", f"must be between 1 and {MAX_LIMIT}")
    return value


def _job_id(job_id: str) -> str:
    if not job_id or len(job_id) > _MAX_ID_CHARS:
        raise NotFound(f"no job {job_id!r}")
    return job_id


@blueprint.get("/jobs")
async def list_jobs() -> Response:
    args = request.args
    status = _status(args)
    queue = _filter(args, "queue")
    kind = _filter(args, "kind")
    cursor = _filter(args, "cursor")
    limit = _limit(args)
    # The store raises ValidationFailed("cursor", ...) for a cursor it did not make.
    jobs, next_cursor = await _store().list_jobs(status=status, queue=queue, kind=kind, cursor=cursor, limit=limit)
    return json_response({"jobs": [job.to_wire() for job in jobs], "next_cursor": next_cursor})


@blueprint.get("/jobs/<job_id>")
async def get_job(job_id: str) -> Response:
    job = await _store().get_job(_job_id(job_id))
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return json_response({"job": job.to_wire()})


@blueprint.post("/jobs/<job_id>/retry")
async def retry_job(job_id: str) -> Response:
    """A dead, failed or cancelled job runs again now with its attempts reset (else 409)."""
    svc = services()
    job = await svc.store.retry_job(job_id=_job_id(job_id), now=svc.clock.now())
    log.info("job %s (%s) retried through the server API", job.id, job.kind)
    return json_response({"job": job.to_wire()})


@blueprint.post("/jobs/<job_id>/cancel")
async def cancel_job(job_id: str) -> Response:
    """A queued job is cancelled (else 409)."""
    svc = services()
    job = await svc.store.cancel_job(job_id=_job_id(job_id), now=svc.clock.now())
    log.info("job %s (%s) cancelled through the server API", job.id, job.kind)
    return json_response({"job": job.to_wire()})


register_blueprint(blueprint, "server")
