"""Helpers shared by the store backends: ids, cursors, migrations, argument checks."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import orjson

from realtimed.errors import ValidationFailed
from realtimed.store.base import PLATFORMS, SchemaVersionError

MAX_PAGE: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_MIGRATION_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


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


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MIN_MICROS: Final = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_MICROS: Final = to_micros(datetime.max.replace(tzinfo=UTC))


def clamp_limit(limit: int, *, field: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationFailed(field, "must be a positive integer")
    return min(limit, MAX_PAGE)


def encode_cursor(*parts: Any) -> str:
    """An opaque page cursor holding ``parts`` (JSON scalars)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The parts of a cursor made by ``encode_cursor``, checked against ``types``.

    A client can send any text as a cursor, so the parts are also checked to be
    what every backend can store: integers in the signed 64-bit range, text
    without NUL characters.

    Raises:
        ValidationFailed: the cursor is malformed.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = orjson.loads(raw)
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise ValidationFailed("cursor", "not a valid cursor") from None
    if (
        not isinstance(parts, list)
        or len(parts) != len(types)
        or not all(isinstance(p, t) and not isinstance(p, bool) for p, t in zip(parts, types, strict=True))
        or not all(_storable(p) for p in parts)
    ):
        raise ValidationFailed("cursor", "not a valid cursor")
    return parts


def _storable(part: Any) -> bool:
    if isinstance(part, int):
        return _INT64_MIN <= part <= _INT64_MAX
    if isinstance(part, str):
        return "\x00" not in part
    return True


def decode_time_cursor(cursor: str) -> tuple[int, str]:
    """A conversation page cursor: (activity time in microseconds since the epoch, id).

    Raises:
        ValidationFailed: the cursor is malformed, or its time is not one a
            datetime can hold (years 1 to 9999).
    """
    micros, record_id = decode_cursor(cursor, (int, str))
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        raise ValidationFailed("cursor", "not a valid cursor")
    return micros, record_id


def check_text(field: str, value: str) -> None:
    """Text every backend can store: PostgreSQL refuses NUL characters, so both stores do."""
    if "\x00" in value:
        raise ValidationFailed(field, "must not contain NUL characters")


def check_platform(platform: str) -> None:
    if platform not in PLATFORMS:
        raise ValidationFailed("platform", f"must be one of {', '.join(PLATFORMS)}")


def check_settings(start: str | None, end: str | None, time_zone: str) -> None:
    if (start is None) != (end is None):
        raise ValidationFailed("quiet_hours", "give both start and end, or neither")
    for name, value in (("quiet_hours_start", start), ("quiet_hours_end", end)):
        if value is not None and not _HHMM.match(value):
            raise ValidationFailed(name, "must be HH:MM (00:00 to 23:59)")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed("time_zone", f"unknown time zone {time_zone!r}") from None


MAX_CHANNEL_CHARS: Final = 64


def preference_channels(
    channels: Mapping[str, bool] | None, in_app: bool | None, push: bool | None
) -> dict[str, bool]:
    """The channel settings of ``Store.set_preference``, checked."""
    out = dict(channels or {})
    for name, value in (("in_app", in_app), ("push", push)):
        if value is not None:
            out[name] = value
    for name, value in out.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_CHANNEL_CHARS:
            raise ValidationFailed("channels", f"a channel name must be 1 to {MAX_CHANNEL_CHARS} characters")
        if not isinstance(value, bool):
            raise ValidationFailed("channels", f"the setting of {name!r} must be a boolean")
    return out


def check_history_bounds(before_seq: int | None, after_seq: int | None, changed_since: int | None) -> None:
    if sum(x is not None for x in (before_seq, after_seq, changed_since)) > 1:
        raise ValidationFailed("before_seq", "give at most one of before_seq, after_seq and changed_since")


def check_final_status(final_status: str) -> None:
    if final_status not in ("dead", "failed"):
        raise ValueError(f"final_status must be 'dead' or 'failed', got {final_status!r}")


def direct_key(a: str, b: str) -> str:
    """The key of a 1:1 conversation: the two user ids in order, the first length-prefixed
    so that no two pairs share a key whatever characters the ids hold."""
    lo, hi = sorted((a, b))
    return f"{len(lo)}:{lo}:{hi}"


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


@attrs.frozen
class Migration:
    version: int
    name: str  # e.g. "0001_initial"
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """The versioned SQL files of ``backend`` in order (``migrations/<backend>/NNNN_name.sql``)."""
    folder = resources.files("realtimed.store").joinpath("migrations", backend)
    out: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        out.append(Migration(int(match.group(1)), entry.name[: -len(".sql")], entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise RuntimeError(f"{backend} migrations are not numbered 1, 2, 3, ...: {versions}")
    return out


def pending_migrations(migrations: list[Migration], current: int, *, apply: bool) -> list[Migration]:
    """The migrations after ``current``, after checking that the schema is not newer.

    Raises:
        SchemaVersionError: ``current`` is newer than the newest known migration,
            or migrations are pending and ``apply`` is False.
    """
    newest = migrations[-1].version if migrations else 0
    if current > newest:
        raise SchemaVersionError(
            f"database schema version {current} is newer than this realtimed ({newest}): "
            "upgrade realtimed or point it at another database"
        )
    pending = [m for m in migrations if m.version > current]
    if pending and not apply:
        raise SchemaVersionError(
            f"database schema version {current} is older than this realtimed ({newest}) and "
            "store.apply_migrations is off: run `realtimed migrate`"
        )
    return pending
