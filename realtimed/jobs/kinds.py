"""Every job kind a realtimed node handles, known without starting anything.

A ``[[cron]]`` entry names the kind of the job it enqueues. A job of a kind that
no node registered is claimed by nobody's handler and ends ``dead`` at every
tick, and one whose payload its kind cannot decode fails at once; so both are
configuration errors, found when the configuration is loaded (``run``,
``check-config``) and named by key: ``cron[i].kind``, ``cron[i].payload.<field>``.

``DAEMON_JOB_TYPES`` is that table: the built-in kinds (``realtimed.jobs.builtin``),
the ``push.send`` kind of push (``realtimed.push.jobs``), and the kinds of the
notification pipeline and of chat (``realtimed.notify.jobs``). The daemon
registers exactly these (a test starts one and compares); a capability that
adds a kind adds its ``JobType`` here too.

The configuration loader imports this module only inside its check, once the
configuration module is complete, so the imports below make no cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from realtimed.jobs.builtin import (
    DEVICES_STALE,
    NOOP,
    RETENTION_JOBS,
    RETENTION_MESSAGES,
    RETENTION_NOTIFICATIONS,
)
from realtimed.jobs.payload import JobType, PayloadError
from realtimed.notify.jobs import CHAT_OFFLINE, NOTIFY_DIGEST, NOTIFY_PUSH, NOTIFY_SEND
from realtimed.push.jobs import PUSH_SEND

__all__ = ["DAEMON_JOB_TYPES", "cron_job_problems"]

#: Every kind the daemon registers, by name, with its payload type.
DAEMON_JOB_TYPES: Final[Mapping[str, JobType[Any]]] = {
    job_type.kind: job_type
    for job_type in (
        RETENTION_NOTIFICATIONS,
        RETENTION_JOBS,
        RETENTION_MESSAGES,
        DEVICES_STALE,
        NOOP,
        PUSH_SEND,
        NOTIFY_SEND,
        NOTIFY_PUSH,
        NOTIFY_DIGEST,
        CHAT_OFFLINE,
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
