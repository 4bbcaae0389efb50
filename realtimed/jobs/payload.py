"""Typed job payloads: one attrs class per job kind, and the readers that decode them.

A job's payload is stored as a JSON object. A kind that has a payload type is
named by a ``JobType``, which holds the kind's name and its payload class; the
runner encodes a typed payload when it is enqueued and decodes it before the
handler runs, so a handler gets an attrs value instead of a dict::

    @attrs.frozen
    class Resize:
        image_id: str
        width: int = 640

        def to_json(self) -> dict[str, Any]:
            return {"image_id": self.image_id, "width": self.width}

        @classmethod
        def from_json(cls, data: Mapping[str, Any]) -> Resize:
            return cls(image_id=req_str(data, "image_id"), width=opt_int(data, "width") or 640)

    RESIZE: Final = JobType("images.resize", Resize)
    runner.register(RESIZE, resize)              # async def resize(ctx, payload: Resize)
    await runner.enqueue(RESIZE, Resize("img1"))

Promises of every payload class:

- ``from_json`` accepts every shape that any released version stored for the
  kind (jobs queued before an upgrade still run after it), and
  ``to_json`` writes the shape those versions read, so that nodes of a cluster
  in the middle of a rolling upgrade run each other's jobs;
- ``from_json(p.to_json()) == p``;
- a payload that cannot be decoded raises ``PayloadError`` naming the field
  (``items[2][0]``, ``check.seq``); the runner then fails the job at once
  (``DoNotRetry``) with that message, since no retry can fix a payload.

The readers below (``req_str``, ``opt_int``, ...) are the hand-written
converters the payload classes use; each raises ``PayloadError`` with the field
path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, Protocol, Self, TypeVar

import attrs

from realtimed.clock import parse_iso
from realtimed.errors import ValidationFailed

__all__ = [
    "JobPayload",
    "JobType",
    "PayloadError",
    "field_path",
    "obj",
    "opt_int",
    "opt_number",
    "opt_obj",
    "opt_str",
    "opt_time",
    "req_int",
    "req_str",
    "req_time",
    "str_list",
]


class PayloadError(ValidationFailed):
    """A stored job payload does not have the shape its kind needs; the message names the field."""


class JobPayload(Protocol):
    """What a payload class provides (see the module docstring for the promises)."""

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self: ...


P = TypeVar("P", bound=JobPayload)


@attrs.frozen
class JobType(Generic[P]):
    """A job kind together with its payload class.

    Attributes:
        kind: the kind's name as stored with each job (``notify.push``).
        payload: the attrs class of its payload, with ``to_json`` and the
            classmethod ``from_json``.
    """

    kind: str
    payload: type[P]

    def encode(self, value: P) -> dict[str, Any]:
        """The JSON object stored for ``value``."""
        if not isinstance(value, self.payload):
            raise TypeError(f"a {self.kind} job takes a {self.payload.__name__}, got {type(value).__name__}")
        return value.to_json()

    def decode(self, data: Mapping[str, Any] | None) -> P:
        """The typed payload of a stored job.

        Raises:
            PayloadError: the payload does not have the shape of this kind.
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise PayloadError("payload", "must be an object")
        return self.payload.from_json(data)


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------


def field_path(prefix: str, name: str | int) -> str:
    """``items`` + 2 → ``items[2]``; ``check`` + ``seq`` → ``check.seq``."""
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def req_str(data: Mapping[str, Any], name: str, *, prefix: str = "", allow_empty: bool = True) -> str:
    value = data.get(name)
    if not isinstance(value, str) or (not allow_empty and not value):
        raise PayloadError(field_path(prefix, name), "must be a string" if allow_empty else "must be a non-empty string")
    return value


def opt_str(data: Mapping[str, Any], name: str, *, prefix: str = "") -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(field_path(prefix, name), "must be a string or null")
    return value


def req_int(data: Mapping[str, Any], name: str, *, prefix: str = "") -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PayloadError(field_path(prefix, name), "must be an integer")
    return value


def opt_int(data: Mapping[str, Any], name: str, *, prefix: str = "") -> int | None:
    if data.get(name) is None:
        return None
    return req_int(data, name, prefix=prefix)


def opt_number(data: Mapping[str, Any], name: str, *, prefix: str = "", minimum: float | None = None) -> float | None:
    """A finite number (not a boolean), at least ``minimum`` when given; None when absent."""
    value = data.get(name)
    if value is None:
        return None
    problem = "must be a finite number" if minimum is None else "must be a non-negative number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(field_path(prefix, name), problem)
    if minimum is not None and value < minimum:
        raise PayloadError(field_path(prefix, name), problem)
    return float(value)


def obj(data: Mapping[str, Any], name: str, *, prefix: str = "") -> dict[str, Any]:
    """An object; absent or null reads as ``{}``."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(field_path(prefix, name), "must be an object")
    return dict(value)


def opt_obj(data: Mapping[str, Any], name: str, *, prefix: str = "") -> dict[str, Any] | None:
    if data.get(name) is None:
        return None
    return obj(data, name, prefix=prefix)


def str_list(value: Any, path: str, *, skip_others: bool = False) -> tuple[str, ...]:
    """A list of strings; with ``skip_others``, entries that are not strings are dropped."""
    if not isinstance(value, list):
        raise PayloadError(path, "must be a list of strings")
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif not skip_others:
            raise PayloadError(field_path(path, i), "must be a string")
    return tuple(out)


def req_time(data: Mapping[str, Any], name: str, *, prefix: str = "") -> datetime:
    text = req_str(data, name, prefix=prefix)
    try:
        return parse_iso(text)
    except ValueError:
        raise PayloadError(field_path(prefix, name), "must be an RFC 3339 time") from None


def opt_time(data: Mapping[str, Any], name: str, *, prefix: str = "") -> datetime | None:
    if data.get(name) is None:
        return None
    return req_time(data, name, prefix=prefix)
