"""Logging to stderr, journald-friendly, in text or JSON.

Text lines carry no timestamp when stderr is the journal (journald adds its own)
and a priority prefix ``<N>`` that journald reads as the level.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Final

import orjson

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_SYSLOG_PRIORITY: Final = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


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
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: {msg}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger; safe to call again on reload."""
    root = logging.getLogger()
    journal = bool(os.environ.get("JOURNAL_STREAM")) and fmt == "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter(journal=journal))
    for old in list(root.handlers):
        if getattr(old, "_realtimed", False):
            root.removeHandler(old)
    handler._realtimed = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    set_level(level)
    # Hypercorn's own access log duplicates ours; its error log goes through our handler.
    logging.getLogger("hypercorn.access").disabled = True


def set_level(level: str) -> None:
    logging.getLogger().setLevel(_LEVELS[level])
    logging.getLogger("realtimed").setLevel(_LEVELS[level])
