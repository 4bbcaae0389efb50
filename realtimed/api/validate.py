"""Validation of HTTP bodies and query strings: each failure names its field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from realtimed.errors import ValidationFailed

_MISSING = object()


def string(body: Mapping[str, Any], field: str, *, min_len: int = 1, max_len: int = 200, required: bool = True) -> str | None:
    value = body.get(field, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise ValidationFailed(field, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be a string")
    if not min_len <= len(value) <= max_len:
        raise ValidationFailed(field, f"must be {min_len} to {max_len} characters")
    return value


def string_list(body: Mapping[str, Any], field: str, *, min_items: int = 1, max_items: int, max_len: int = 200) -> list[str]:
    value = body.get(field, _MISSING)
    if value is _MISSING or value is None:
        raise ValidationFailed(field, "is required")
    if not isinstance(value, list):
        raise ValidationFailed(field, "must be a list of strings")
    if not min_items <= len(value) <= max_items:
        raise ValidationFailed(field, f"must have {min_items} to {max_items} items")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not 1 <= len(item) <= max_len:
            raise ValidationFailed(f"{field}[{i}]", f"must be a string of 1 to {max_len} characters")
    return list(dict.fromkeys(value))


def number(body: Mapping[str, Any], field: str, *, lo: float, hi: float, required: bool = False, integer: bool = False) -> float | None:
    value = body.get(field, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise ValidationFailed(field, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ValidationFailed(field, "must be an integer" if integer else "must be a number")
    if not lo <= value <= hi:
        raise ValidationFailed(field, f"must be between {lo:g} and {hi:g}")
    return value


def query_int(args: Mapping[str, str], field: str, *, default: int, lo: int, hi: int) -> int:
    raw = args.get(field)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(field, "must be an integer") from None
    if not lo <= value <= hi:
        raise ValidationFailed(field, f"must be between {lo} and {hi}")
    return value
