"""Pages and cursors, the same on every backend.

A cursor is opaque to clients: base64url of a JSON array of scalars. Whatever
a client sends as one is checked (``decode_cursor``) before a backend sees it:
the right number and types of parts, integers in the signed 64-bit range and
text without NUL characters, which every backend can compare against.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson

from realtimed.errors import ValidationFailed
from realtimed.store.values import to_micros

__all__ = [
    "MAX_PAGE",
    "clamp_limit",
    "decode_cursor",
    "decode_time_cursor",
    "encode_cursor",
    "split_page",
]

_T = TypeVar("_T")

MAX_PAGE: Final = 1000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MIN_MICROS: Final = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_MICROS: Final = to_micros(datetime.max.replace(tzinfo=UTC))


def clamp_limit(limit: int, *, field: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationFailed(field, "must be a positive integer")
    return min(limit, MAX_PAGE)


def split_page(rows: Sequence[_T], limit: int) -> tuple[Sequence[_T], bool]:
    """Rows fetched with ``LIMIT limit + 1``: the page, and whether more lie beyond it."""
    return rows[:limit], len(rows) > limit


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
