"""Every job kind a realtimed node handles, known without starting anything.

A ``[[cron]]`` entry names the kind of the job it enqueues. A job of a kind that
no node registered is claimed by nobody's handler and ends ``dead`` at every
tick, and one whose payload its kind cannot decode fails at once; so both are
configuration errors, found when the configuration is loaded (``run``,
``check-config``, ``jobs``, a reload) and named by key: ``cron[i].kind``,
``cron[i].payload.<field>``. The configuration module sits below every job kind,
so it cannot know them: each command that loads a daemon's configuration hands
``cron_config_problems`` to ``load_config(checks=...)``.

``DAEMON_JOB_TYPES`` is that table: the built-in kinds (``realtimed.jobs.builtin``),
the ``push.send`` kind of push (``realtimed.push.jobs``), ``email.send`` and
``email.digest`` of email (``realtimed.email.jobs``), and the kinds of the
notification pipeline and of chat (``realtimed.notify.jobs``), ``webhook.deliver``
(``realtimed.webhooks.jobs``) and ``http`` (``realtimed.jobs.http``), whose cron
entries give ``target``, ``path``, ``method`` and ``body`` instead of a payload
(the target must be configured, the body within ``jobs.http.max_body_bytes``). The daemon
registers exactly these (a test starts one and compares); a capability that
adds a kind adds its ``JobType`` here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from realtimed.config import Config
from realtimed.email.jobs import EMAIL_DIGEST, EMAIL_SEND
from realtimed.jobs.builtin import (
    DEVICES_STALE,
    NOOP,
    RETENTION_ACTIVITIES,
    RETENTION_JOBS,
    RETENTION_MESSAGES,
    RETENTION_NOTIFICATIONS,
)
from realtimed.jobs.http import HTTP, HttpJob, cron_payload, http_job_problems
from realtimed.jobs.payload import JobType, PayloadError
from realtimed.notify.jobs import CHAT_OFFLINE, NOTIFY_DIGEST, NOTIFY_PUSH, NOTIFY_SEND
from realtimed.protocol import MAX_STORED_JSON_DEPTH, json_depth_path
from realtimed.push.jobs import PUSH_SEND
from realtimed.webhooks.jobs import WEBHOOK_DELIVER

__all__ = ["DAEMON_JOB_TYPES", "cron_config_problems", "cron_job_problems"]

#: Every kind the daemon registers, by name, with its payload type.
DAEMON_JOB_TYPES: Final[Mapping[str, JobType[Any]]] = {
    job_type.kind: job_type
    for job_type in (
        RETENTION_NOTIFICATIONS,
        RETENTION_JOBS,
        RETENTION_MESSAGES,
        DEVICES_STALE,
        RETENTION_ACTIVITIES,
        NOOP,
        PUSH_SEND,
        EMAIL_SEND,
        EMAIL_DIGEST,
        NOTIFY_SEND,
        NOTIFY_PUSH,
        NOTIFY_DIGEST,
        CHAT_OFFLINE,
        WEBHOOK_DELIVER,
        HTTP,
    )
}


def _payload_key(field: str) -> str:
    """A payload field path (``days``, ``items[2][0]``) as a key below ``payload``."""
    if field in ("", "payload"):
        return "payload"
    return f"payload{field}" if field.startswith("[") else f"payload.{field}"


def cron_job_problems(kind: str, payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a cron entry's job, as ``(key below the entry, problem)``.

    The key is ``kind``, or ``payload`` / ``payload.<field>`` for a payload that
    ``kind``'s payload type refuses (decoded exactly as the runner will decode it).
    """
    if not kind:
        return [("kind", "must not be empty")]
    job_type = DAEMON_JOB_TYPES.get(kind)
    if job_type is None:
        known = ", ".join(sorted(DAEMON_JOB_TYPES))
        return [("kind", f"unknown job kind {kind[:64]!r}: no node handles it (one of {known})")]
    try:
        job_type.decode(payload)
    except PayloadError as exc:
        field = exc.field or ""
        problem = exc.message.removeprefix(f"{field}: ")
        return [(_payload_key(field), f"not a {kind} payload: {problem}")]
    except Exception as exc:  # a decoder's own bug must not stop the configuration from loading
        return [("payload", f"not a {kind} payload: {type(exc).__name__}: {exc}")]
    return []


def cron_config_problems(cfg: Config) -> list[tuple[str, str]]:
    """The ``[[cron]]`` entries whose job no node could run, as ``(key, problem)``.

    A check for ``load_config(checks=...)``: ``cron[i].kind`` or
    ``cron[i].payload...``. An entry whose payload nests too deep is left to the
    loader, which names that already.
    """
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(cfg.cron):
        if json_depth_path(entry.payload, MAX_STORED_JSON_DEPTH) is not None:
            continue
        if entry.kind == HTTP.kind:
            # An http entry's keys are its payload's fields: name them as the entry's own.
            if entry.payload or json_depth_path(entry.body, MAX_STORED_JSON_DEPTH - 1) is not None:
                continue  # the loader names these already
            try:
                job = HttpJob.from_json(cron_payload(entry))
            except PayloadError as exc:
                field = exc.field or "target"
                problems.append((f"cron[{i}].{field}", exc.message.removeprefix(f"{field}: ")))
                continue
            problems.extend((f"cron[{i}].{field}", problem) for field, problem in http_job_problems(job, cfg))
            continue
        for sub_key, problem in cron_job_problems(entry.kind, entry.payload):
            problems.append((f"cron[{i}].{sub_key}", problem))
    return problems
