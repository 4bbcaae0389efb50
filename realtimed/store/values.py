"""Values every backend stores the same way: ids, times, JSON, text, and rows.

``RowCodec`` turns what a backend's driver hands back into Python values: the
SQLite store keeps times as integer microseconds since the epoch and JSON as
text, PostgreSQL as ``timestamptz`` and ``jsonb`` (decoded by the driver). The
record builders of each domain (``chat.message_from`` and the others) read a
row by column name through a codec, so that a record is built in one place
whatever the backend.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import attrs
import orjson

from realtimed.errors import ValidationFailed

__all__ = [
    "PG_CODEC",
    "SQLITE_CODEC",
    "Row",
    "RowCodec",
    "check_text",
    "dumps",
    "from_micros",
    "loads",
    "new_id",
    "prefix_upper",
    "to_micros",
    "utc",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def new_id(prefix: str) -> str:
    """An opaque, unguessable id such as ``m_5f0c...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def utc(dt: datetime) -> datetime:
    """``dt`` in UTC; a naive value is taken as UTC already."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def to_micros(dt: datetime) -> int:
    """Microseconds since the epoch (how SQLite stores times, and how cursors carry them)."""
    return (utc(dt) - _EPOCH) // _MICROSECOND


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def check_text(field: str, value: str) -> None:
    """Text every backend can store: PostgreSQL refuses NUL characters, so both stores do."""
    if "\x00" in value:
        raise ValidationFailed(field, "must not contain NUL characters")


def prefix_upper(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (code point
    order), so that ``prefix <= s < upper`` selects them on an index; None: no bound."""
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _same(value: Any) -> Any:
    return value


@attrs.frozen
class RowCodec:
    """How one backend's stored values read back: times and JSON."""

    read_time: Callable[[Any], datetime]
    read_json: Callable[[Any], Any]

    def time(self, value: Any) -> datetime:
        return self.read_time(value)

    def opt_time(self, value: Any) -> datetime | None:
        return None if value is None else self.read_time(value)

    def json(self, value: Any) -> Any:
        return self.read_json(value)


SQLITE_CODEC: Final = RowCodec(read_time=from_micros, read_json=loads)
PG_CODEC: Final = RowCodec(read_time=_same, read_json=_same)
