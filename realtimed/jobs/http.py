"""The ``http`` job kind: a signed call to one of the application's HTTP endpoints.

The application names its endpoints in the configuration (``[[jobs.http_targets]]``:
a name, a base URL, headers and one signing secret, or two while rotating); a job names a target, a path
below its base URL, a method and a JSON body, so that no URL, header or secret
ever comes from a request. Jobs come from the server API (``POST /server/v1/jobs``
with ``kind: "http"``, ``parse_http_job_request``) and from ``[[cron]]`` entries
with ``kind = "http"`` (``cron_payload``), and are seen and steered like every
other job (``GET /server/v1/jobs``, ``realtimed jobs ...``).

An attempt is one request through ``realtimed.outbound`` with the settings of
``[jobs.http]`` (resolved once and connected to the pinned address, non-public
addresses refused unless ``jobs.http.allow_private``, no redirects followed, the
response read up to ``jobs.http.max_response_bytes``, the whole bounded by
``jobs.http.timeout_s``), signed per Standard Webhooks with the target's secrets (two signatures while rotating):
``webhook-id`` is the job's id (the same for every attempt, so the receiver can
drop repeats), ``webhook-timestamp`` the attempt's time.

Outcomes:

- a 2xx completes the job;
- a 408, a 429, a 5xx, or no answer (a timeout, a refused connection) is retried
  after the answer's ``Retry-After`` (seconds or an HTTP date, at most
  ``jobs.http.max_retry_after_s``) or the job's backoff (``backoff_base_s``
  doubling to ``backoff_max_s``, with jitter), until its ``max_attempts``, when it
  is ``dead``;
- any other answer (a 4xx, a 3xx: redirects are not followed), a refused address
  and a target that is no longer configured end the job ``dead`` at once.

Each failed attempt's status, latency and the start of the response body (at
most ``jobs.http.excerpt_chars``) are the job's ``last_error``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import attrs
import trio
from prometheus_client import Counter, Histogram

from realtimed.clock import WallClock, parse_iso
from realtimed.config import (
    HTTP_JOB_KIND,
    HTTP_JOB_METHODS,
    HTTP_TARGET_NAME,
    Config,
    CronConfig,
    HttpTargetConfig,
)
from realtimed.errors import ValidationFailed
from realtimed.jobs.payload import JobType, PayloadError, opt_number
from realtimed.jobs.runner import DEFAULT_QUEUE, DoNotRetry, JobContext, JobRunner, RetryAfter, backoff_delay
from realtimed.metrics import REGISTRY
from realtimed.outbound.client import AttemptFailed, Outbound, Refused, retry_after_s
from realtimed.outbound.signing import signature_headers
from realtimed.protocol import MAX_STORED_JSON_DEPTH, encode_json, json_depth_path

if TYPE_CHECKING:
    from realtimed.live import Live

__all__ = [
    "HTTP",
    "HttpJob",
    "HttpJobRequest",
    "HttpJobService",
    "cron_payload",
    "http_job_problems",
    "parse_http_job_request",
    "path_problem",
    "target_url",
]

log = logging.getLogger(__name__)

HTTP_JOB_ATTEMPTS: Final = Counter(
    "realtimed_http_job_attempts",
    "HTTP job attempts on this node by outcome (ok, retried, final, no_response, refused)",
    ["outcome"],
    registry=REGISTRY,
)
HTTP_JOB_LATENCY: Final = Histogram(
    "realtimed_http_job_attempt_seconds",
    "time from sending an HTTP job's request to its answer (or failure)",
    buckets=(0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30),
    registry=REGISTRY,
)

MAX_PATH_CHARS: Final = 2000
MAX_UNIQUE_KEY_CHARS: Final = 200
MAX_JOB_ATTEMPTS: Final = 100
MAX_BACKOFF_S: Final = 86400.0
MAX_PRIORITY: Final = 1000
#: The dedupe key of a server-API job is this plus the request's ``unique_key`` (apart from cron's and others').
UNIQUE_KEY_PREFIX: Final = "http:"
_RETRIED_STATUSES: Final = frozenset({408, 429})


def path_problem(path: str) -> str | None:
    """What keeps ``path`` from being a path below a target's base URL, or None.

    A path is relative: no scheme, host or fragment, no ``.`` or ``..`` segment
    (percent-encoded or not), no backslash; printable ASCII without spaces (the
    rest percent-encoded); a query is allowed.
    """
    if len(path) > MAX_PATH_CHARS:
        return f"must be at most {MAX_PATH_CHARS} characters"
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in path):
        return "must be printable ASCII without spaces (percent-encode the rest)"
    if "\\" in path or "#" in path:
        return "must not contain a backslash or a fragment (#)"
    if path.startswith("//"):
        return "must be relative to the target's base_url (no host)"
    route = path.split("?", 1)[0]
    if ":" in route.split("/", 1)[0]:
        return "must be relative to the target's base_url (no scheme)"
    for segment in route.split("/"):
        if unquote(segment) in (".", ".."):
            return "must not contain . or .. segments"
    return None


def target_url(base_url: str, path: str) -> str:
    """``path`` below ``base_url``: exactly one ``/`` between them."""
    if not path:
        return base_url
    return base_url.rstrip("/") + "/" + path.lstrip("/")


@attrs.frozen
class HttpJob:
    """One call: the target's name, the path below its base URL, the method, the
    JSON body (None: none) and, when given, the job's own backoff."""

    target: str
    path: str = ""
    method: str = "POST"
    body: Any = None
    backoff_base_s: float | None = None
    backoff_max_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "path": self.path, "method": self.method}
        if self.body is not None:
            out["body"] = self.body
        if self.backoff_base_s is not None:
            out["backoff_base_s"] = self.backoff_base_s
        if self.backoff_max_s is not None:
            out["backoff_max_s"] = self.backoff_max_s
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HttpJob:
        target = data.get("target")
        if not isinstance(target, str) or not HTTP_TARGET_NAME.fullmatch(target):
            raise PayloadError("target", "must be the name of a [[jobs.http_targets]] target")
        path = data.get("path", "")
        if not isinstance(path, str):
            raise PayloadError("path", "must be a string")
        problem = path_problem(path)
        if problem is not None:
            raise PayloadError("path", problem)
        method = data.get("method", "POST")
        if method not in HTTP_JOB_METHODS:
            raise PayloadError("method", f"must be one of {', '.join(HTTP_JOB_METHODS)}")
        body = data.get("body")
        if body is not None and method == "GET":
            raise PayloadError("body", "a GET takes no body")
        base = opt_number(data, "backoff_base_s", minimum=0)
        most = opt_number(data, "backoff_max_s", minimum=0)
        for name, value in (("backoff_base_s", base), ("backoff_max_s", most)):
            if value is not None and value > MAX_BACKOFF_S:
                raise PayloadError(name, f"must be at most {MAX_BACKOFF_S:g}")
        if base is not None and most is not None and base > most:
            raise PayloadError("backoff_base_s", "must not exceed backoff_max_s")
        return cls(target=target, path=path, method=method, body=body, backoff_base_s=base, backoff_max_s=most)


HTTP: Final = JobType(HTTP_JOB_KIND, HttpJob)


def find_target(cfg: Config, name: str) -> HttpTargetConfig | None:
    for target in cfg.jobs.http_targets:
        if target.name == name:
            return target
    return None


def http_job_problems(job: HttpJob, cfg: Config) -> list[tuple[str, str]]:
    """What the configuration says against ``job`` (a target it does not have, a
    body over ``jobs.http.max_body_bytes``), as ``(field, problem)``."""
    out: list[tuple[str, str]] = []
    if find_target(cfg, job.target) is None:
        known = ", ".join(t.name for t in cfg.jobs.http_targets) or "none is configured"
        out.append(("target", f"no [[jobs.http_targets]] target {job.target[:64]!r} ({known})"))
    if job.body is not None:
        if json_depth_path(job.body, MAX_STORED_JSON_DEPTH - 1) is not None:
            out.append(("body", f"nests more than {MAX_STORED_JSON_DEPTH - 1} levels of arrays and objects"))
        else:
            encoded = encode_json(job.body, "body")
            if len(encoded) > cfg.jobs.http.max_body_bytes:
                limit = cfg.jobs.http.max_body_bytes
                out.append(("body", f"is {len(encoded)} bytes as JSON, over jobs.http.max_body_bytes ({limit})"))
            elif _has_nul(job.body):  # PostgreSQL cannot store it in a payload, so neither store does
                out.append(("body", "must not contain NUL characters"))
    return out


def _has_nul(value: Any) -> bool:
    """A NUL character in any string or key of a JSON value."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def cron_payload(entry: CronConfig) -> dict[str, Any]:
    """The payload of the job a ``[[cron]]`` entry enqueues: an ``http`` entry's
    target, path, method and body (a GET's body is left out), else its ``payload``."""
    if entry.kind != HTTP_JOB_KIND:
        return dict(entry.payload)
    method = entry.method or "POST"
    out: dict[str, Any] = {"target": entry.target, "path": entry.path, "method": method}
    if method != "GET" or entry.body:
        out["body"] = dict(entry.body)
    return out


# ---------------------------------------------------------------------------
# The server API's request
# ---------------------------------------------------------------------------

#: The fields of ``POST /server/v1/jobs`` (docs/protocol.md).
REQUEST_FIELDS: Final = (
    "kind", "target", "path", "method", "body", "run_at", "delay_s", "max_attempts", "backoff_base_s",
    "backoff_max_s", "unique_key", "queue", "priority",
)


@attrs.frozen
class HttpJobRequest:
    """A checked request to enqueue an HTTP job."""

    job: HttpJob
    queue: str
    run_at: datetime | None
    max_attempts: int
    dedupe_key: str | None
    priority: int


def served_queues(cfg: Config) -> list[str]:
    """The queues every node serves: ``default``, ``jobs.http.queue`` and those of ``[[jobs.queues]]``."""
    return list(dict.fromkeys([DEFAULT_QUEUE, cfg.jobs.http.queue, *(q.name for q in cfg.jobs.queues)]))


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float, *, integer: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ValidationFailed(name, "must be an integer" if integer else "must be a number")
    if not lo <= value <= hi:
        raise ValidationFailed(name, f"must be from {lo:g} to {hi:g}")
    return float(value)


def _text(body: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(name, "must be a string")
    if not 1 <= len(value) <= max_len:
        raise ValidationFailed(name, f"must be 1 to {max_len} characters")
    return value


def parse_http_job_request(body: Mapping[str, Any], cfg: Config, now: datetime) -> HttpJobRequest:
    """Check a ``POST /server/v1/jobs`` body (a null field counts as absent).

    Raises:
        ValidationFailed: naming the first field that is wrong.
    """
    for key in body:
        if key not in REQUEST_FIELDS:
            raise ValidationFailed(str(key)[:64], "unknown field")
    if body.get("kind") != HTTP_JOB_KIND:
        raise ValidationFailed("kind", f'must be "{HTTP_JOB_KIND}" (the only kind the server API enqueues)')
    if not isinstance(body.get("target"), str):
        raise ValidationFailed("target", "must be a string")
    if body.get("path") is not None and not isinstance(body.get("path"), str):
        raise ValidationFailed("path", "must be a string")
    payload = {k: body[k] for k in ("target", "path", "method", "body", "backoff_base_s", "backoff_max_s")
               if body.get(k) is not None}
    try:
        job = HttpJob.from_json(payload)
    except PayloadError as exc:
        raise ValidationFailed(exc.field or "payload", exc.message.removeprefix(f"{exc.field}: ")) from None
    problems = http_job_problems(job, cfg)
    if problems:
        raise ValidationFailed(*problems[0])
    http = cfg.jobs.http
    if body.get("run_at") is not None and body.get("delay_s") is not None:
        raise ValidationFailed("run_at", "give run_at or delay_s, not both")
    run_at: datetime | None = None
    raw_run_at = _text(body, "run_at", 64)
    if raw_run_at is not None:
        try:
            run_at = parse_iso(raw_run_at)
        except ValueError:
            raise ValidationFailed("run_at", "must be an RFC 3339 time (without an offset: UTC)") from None
        if run_at > now + timedelta(seconds=http.max_delay_s):
            raise ValidationFailed("run_at", f"must be within jobs.http.max_delay_s ({http.max_delay_s:g} s) from now")
        run_at = max(run_at, now)  # a time past is now
    delay_s = _number(body, "delay_s", 0, http.max_delay_s)
    if delay_s is not None:
        run_at = now + timedelta(seconds=delay_s)
    max_attempts = _number(body, "max_attempts", 1, MAX_JOB_ATTEMPTS, integer=True)
    priority = _number(body, "priority", -MAX_PRIORITY, MAX_PRIORITY, integer=True)
    unique_key = _text(body, "unique_key", MAX_UNIQUE_KEY_CHARS)
    if unique_key is not None and any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in unique_key):
        raise ValidationFailed("unique_key", "must not contain control characters")
    queue = _text(body, "queue", 200) or http.queue
    served = served_queues(cfg)
    if queue not in served:
        raise ValidationFailed("queue", f"must be a queue every node serves ({', '.join(served)})")
    return HttpJobRequest(
        job=job,
        queue=queue,
        run_at=run_at,
        max_attempts=int(max_attempts) if max_attempts is not None else http.max_attempts,
        dedupe_key=None if unique_key is None else UNIQUE_KEY_PREFIX + unique_key,
        priority=int(priority or 0),
    )


# ---------------------------------------------------------------------------
# The handler
# ---------------------------------------------------------------------------


class HttpJobService:
    """Runs ``http`` jobs (see the module docstring).

    Args:
        config: the configuration in force (``jobs.http`` and ``jobs.http_targets``;
            a reload replaces it, and the next attempt uses the new targets).
        clock: wall time (signature timestamps, HTTP-date ``Retry-After``).

    Resource handling: ``run`` owns the outbound connections (``Outbound``) and
    closes them when it ends.

    Error handling: every failure of an attempt becomes the job's outcome
    (``RetryAfter`` or ``DoNotRetry``); nothing else escapes the handler.
    """

    def __init__(self, config: Live[Config], *, clock: WallClock) -> None:
        self._config = config
        self.clock = clock
        self.outbound = Outbound(config.value.jobs.http, section="jobs.http", user_agent="realtimed-jobs")
        self._rng = random.Random()

    @property
    def cfg(self) -> Config:
        return self._config.value

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the outbound connections (closing idle ones after ``jobs.http.keepalive_s``) until cancelled."""
        try:
            task_status.started()
            await self.outbound.run()
        finally:
            with trio.CancelScope(shield=True):
                await self.outbound.aclose()

    def reload(self, new: Config) -> None:
        self.outbound.configure(new.jobs.http)

    def register_jobs(self, runner: JobRunner) -> None:
        """Register ``http`` and serve ``jobs.http.queue`` on this node."""
        # A handler's own bound: the request's, plus the time to sign and classify.
        runner.register(HTTP, self._job_http, timeout_s=self.cfg.jobs.http.timeout_s + 30)
        runner.serve_queue(self.cfg.jobs.http.queue)

    async def _job_http(self, ctx: JobContext, p: HttpJob) -> None:
        cfg = self.cfg.jobs.http
        target = find_target(self.cfg, p.target)
        if target is None:
            raise DoNotRetry(f"no [[jobs.http_targets]] target {p.target!r} (removed from the configuration?)", dead=True)
        body = None if p.body is None else encode_json(p.body)
        timestamp = int(ctx.clock.now().timestamp())
        headers = {
            **target.headers,
            **signature_headers(target.signing_secrets, webhook_id=ctx.job_id, timestamp=timestamp, body=body or b""),
        }
        url = target_url(target.base_url, p.path)
        where = f"{p.method} {p.target}:{p.path or '/'}"
        started = time.perf_counter()
        try:
            response = await self.outbound.request(p.method, url, headers=headers, body=body)
        except Refused as exc:
            HTTP_JOB_ATTEMPTS.labels("refused").inc()
            raise DoNotRetry(f"refused: {exc}", dead=True) from None
        except AttemptFailed as exc:
            latency_ms = (time.perf_counter() - started) * 1000
            HTTP_JOB_LATENCY.observe(latency_ms / 1000)
            HTTP_JOB_ATTEMPTS.labels("no_response").inc()
            error = f"{where}: no answer after {latency_ms:.0f} ms: {exc}"
            raise RetryAfter(self._backoff(ctx, p), error) from None
        latency_ms = (time.perf_counter() - started) * 1000
        HTTP_JOB_LATENCY.observe(latency_ms / 1000)
        status = response.status
        if 200 <= status < 300:
            HTTP_JOB_ATTEMPTS.labels("ok").inc()
            log.debug("job %s: %s answered %d in %.1f ms", ctx.job_id, where, status, latency_ms)
            return
        excerpt = response.body.decode("utf-8", "replace")[: cfg.excerpt_chars]
        error = f"{where}: HTTP {status} after {latency_ms:.0f} ms: {excerpt}".rstrip(": ")
        if status in _RETRIED_STATUSES or 500 <= status < 600:
            HTTP_JOB_ATTEMPTS.labels("retried").inc()
            wait = retry_after_s(response.headers, ctx.clock.now())
            delay = min(wait, cfg.max_retry_after_s) if wait is not None else self._backoff(ctx, p)
            raise RetryAfter(delay, error)
        HTTP_JOB_ATTEMPTS.labels("final").inc()
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        raise DoNotRetry(error, dead=True)

    def _backoff(self, ctx: JobContext, p: HttpJob) -> float:
        cfg = self.cfg.jobs.http
        base = cfg.backoff_base_s if p.backoff_base_s is None else p.backoff_base_s
        most = cfg.backoff_max_s if p.backoff_max_s is None else p.backoff_max_s
        return backoff_delay(ctx.attempt, base_s=min(base, most), max_s=most, rng=self._rng)
