"""Logging to stderr, journald-friendly, in text or JSON, with context fields.

Text lines carry no timestamp when stderr is the journal (journald adds its own)
and a priority prefix ``<N>`` that journald reads as the level. Stderr is the
journal when ``JOURNAL_STREAM`` (set by systemd) names stderr's ``device:inode``.

JSON lines are one object each::

    {"ts": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "realtimed.gateway.session",
     "msg": "...", "node": "n1", "session": "s_...", "user": "alice", "request_id": "..."}

``ts`` is RFC 3339 in UTC with milliseconds. The fields (``FIELDS``) come from the
context of the task that logs (``bind``: the session, job or request sets them and
every line in that scope carries them; Trio copies the context into tasks started
from it) and from ``extra=`` of the call. ``log.include_user_ids = false`` leaves
the ``user`` field out.

Errors the operator must see before logging is set up, or when the daemon stops
(``fatal``), are one line on stderr with the priority prefix ``<3>`` when stderr
is the journal, so that ``journalctl -p err`` shows why the unit failed.

``Repeated`` logs a failure that repeats (a lost Redis, an unreachable database)
once, then at a doubling interval with how many times it happened since.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, TextIO

import orjson

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_SYSLOG_PRIORITY: Final = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
PRIORITY_ERR: Final = 3

# The fields a JSON line may carry, in the order they are written.
FIELDS: Final = ("node", "session", "user", "job", "request_id", "op", "api_key")
USER_FIELD: Final = "user"

_NO_FIELDS: Final[Mapping[str, str]] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("realtimed_log_fields", default=_NO_FIELDS)
# The node id: the same for every line of the process, so not worth a context lookup.
_node: str | None = None


def set_node(node: str | None) -> None:
    """The node id every JSON line carries from now on."""
    global _node
    _node = node


@contextlib.contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add ``fields`` (names from ``FIELDS``; None leaves one out) to every line logged in this scope.

    The context is the task's: tasks started inside the scope inherit it, the
    caller's siblings do not see it.
    """
    merged = dict(_context.get())
    merged.update({k: str(v) for k, v in fields.items() if v is not None})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_task(**fields: object) -> None:
    """Add ``fields`` for the rest of the current task (a task's context dies with it)."""
    merged = dict(_context.get())
    merged.update({k: str(v) for k, v in fields.items() if v is not None})
    _context.set(merged)


def annotate(**fields: object) -> None:
    """Add ``fields`` to the innermost ``bind``/``bind_task`` scope, for every task that shares it.

    A session binds its id when its socket opens, and annotates its user once
    admitted: its reader and its other tasks, started before, carry the user too.
    Outside any scope this does nothing.
    """
    current = _context.get()
    if isinstance(current, dict):
        current.update({k: str(v) for k, v in fields.items() if v is not None})


def current_fields() -> Mapping[str, str]:
    return _context.get()


def journal_is_stderr(stream: TextIO | None = None) -> bool:
    """Whether ``JOURNAL_STREAM`` names stderr's ``device:inode`` (systemd's promise that it is the journal)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError, AttributeError):
        return False


def fatal(message: str, *, prefix: str = "realtimed") -> None:
    """Print one line that stops a command: ``<3>`` first when stderr is the journal."""
    line = f"{prefix}: {message}"
    if journal_is_stderr():
        line = f"<{PRIORITY_ERR}>{line}"
    print(line, file=sys.stderr, flush=True)


class _TextFormatter(logging.Formatter):
    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        if self._journal:
            prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return f"<{prio}>{record.name}: {msg}"
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: {msg}"


def rfc3339(created: float) -> str:
    """``2026-01-02T03:04:05.678Z``: a log record's time in UTC, RFC 3339 with milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _JsonFormatter(logging.Formatter):
    def __init__(self, *, include_user_ids: bool) -> None:
        super().__init__()
        self._include_user_ids = include_user_ids

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = _context.get()
        extras = record.__dict__
        for name in FIELDS:
            value = extras.get(name)
            if value is None:
                value = _node if name == "node" else context.get(name)
            if value is None or (name == USER_FIELD and not self._include_user_ids):
                continue
            out[name] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str, fmt: str, *, include_user_ids: bool = True) -> None:
    """Configure the root logger; safe to call again on reload."""
    root = logging.getLogger()
    journal = fmt == "text" and journal_is_stderr()
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = _JsonFormatter(include_user_ids=include_user_ids)
    else:
        formatter = _TextFormatter(journal=journal)
    handler.setFormatter(formatter)
    for old in list(root.handlers):
        if getattr(old, "_realtimed", False):
            root.removeHandler(old)
    handler._realtimed = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    set_level(level)
    # Hypercorn's own access log duplicates ours; its error log goes through our handler.
    logging.getLogger("hypercorn.access").disabled = True
    # The Redis client logs each failed reconnect itself; the broker says it once, with a count.
    logging.getLogger("coredis").setLevel(logging.CRITICAL)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(_LEVELS[level])
    logging.getLogger("realtimed").setLevel(_LEVELS[level])


class Repeated:
    """Log a failure that repeats once, then at a doubling interval with a count.

    ``failed(now, ...)`` logs the first time and whenever ``interval`` has passed
    since the last line (the interval doubles, up to ``max_interval_s``), with how
    many failures that line stands for; ``recovered(now, ...)`` logs once that it
    is back, with the total, and starts over. ``now`` is ``trio.current_time()``,
    so tests run it on a MockClock.
    """

    def __init__(self, logger: logging.Logger, *, first_interval_s: float = 10.0, max_interval_s: float = 300.0) -> None:
        self._log = logger
        self._first = first_interval_s
        self._max = max_interval_s
        self._interval = first_interval_s
        self._next_at: float | None = None
        self._since_line = 0
        self.count = 0

    @property
    def failing(self) -> bool:
        return self.count > 0

    def failed(self, now: float, msg: str, *args: object, level: int = logging.WARNING) -> None:
        self.count += 1
        self._since_line += 1
        if self._next_at is None:
            self._log.log(level, msg, *args)
        elif now >= self._next_at:
            self._log.log(level, msg + " (%d failures in %.0f s, %d in all; next report in %.0f s at most)",
                          *args, self._since_line, self._interval, self.count, min(self._interval * 2, self._max))
            self._interval = min(self._interval * 2, self._max)
        else:
            return
        self._since_line = 0
        self._next_at = now + self._interval

    def recovered(self, now: float, msg: str, *args: object) -> None:
        if self.count:
            self._log.info(msg + " (after %d failures)", *args, self.count)
        self.count = 0
        self._since_line = 0
        self._next_at = None
        self._interval = self._first
