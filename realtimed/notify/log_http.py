"""The delivery log and the push caps in the server API (docs/protocol.md, "Delivery log").

Mounted under ``/server/v1``; the door checks the API key before these routes run.

- ``GET /deliveries?user_id=&notification_id=&type=&channel=&outcome=&since=&until=&cursor=&limit=``
  → ``{"deliveries": [...], "next_cursor"}``, newest first
- ``GET /deliveries/stats?channel=&hours=`` → ``{"channel", "hours", "since", "until", "buckets":
  [{"hour", "total", "outcomes": {code: count}}]}``, one bucket per UTC hour, oldest first
- ``GET /users/<user_id>/caps`` → per type, each cap in force with its use, limit and reset
  time, and whether the user is in quiet hours now
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from realtimed import protocol
from realtimed.api.routes import (
    Checked,
    Named,
    QueryInt,
    QueryText,
    Route,
    UserId,
    list_of,
    out,
    route,
    services,
    wire,
)
from realtimed.clock import iso, parse_iso
from realtimed.errors import ValidationFailed
from realtimed.notify.service import NotifyService
from realtimed.outcomes import CAPS, FAMILIES, OUTCOMES, is_outcome
from realtimed.protocol import JsonSchema
from realtimed.store.base import DeliveryFilter, Store

__all__ = ["routes"]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: The longest span ``/deliveries/stats`` counts (90 days of hours).
MAX_STATS_HOURS: Final = 24 * 90
_MAX_CHANNEL_CHARS: Final = 64
_MAX_CURSOR_CHARS: Final = 200
_MAX_OUTCOME_CHARS: Final = 80
_TAG: Final = "deliveries"
# What ``_outcome`` accepts (outcomes.is_outcome and the families), stated in the schema.
_OUTCOME_PATTERN: Final = (
    "^(" + "|".join(re.escape(o) for o in (*OUTCOMES, *FAMILIES)) + r"|failed:[A-Za-z0-9_.\-]{1,64})$"
)
_WHEN: Final[JsonSchema] = {"type": ["string", "null"], "format": "date-time"}

DELIVERY: Final = Named(
    "Delivery",
    {
        "type": "object",
        "required": [
            "id", "at", "user_id", "notification_id", "ref", "type", "channel", "outcome", "cap", "deferred_until",
            "detail",
        ],
        "properties": {
            "id": {"type": "string"},
            "at": {"$ref": "#/components/schemas/Time"},
            "user_id": {"type": "string"},
            "notification_id": {"type": ["string", "null"], "description": "null: not in the inbox (chat, a digest)"},
            "ref": {"type": "string", "description": "what was delivered: n<notification id>, m<message id>, ng<job>..."},
            "type": {"type": "string", "description": "the notification type"},
            "channel": {"type": "string", "description": "in_app, push, ..."},
            "outcome": {
                "type": "string",
                "description": "one of " + ", ".join(OUTCOMES) + ", or failed:<code> (docs/protocol.md, Delivery log)",
            },
            "cap": {"type": ["string", "null"], "enum": [*CAPS, None], "description": "the cap of skipped:cap"},
            "deferred_until": {**_WHEN, "description": "the end of the quiet hours of skipped:quiet_hours"},
            "detail": {"type": "string", "description": "the device, FCM's message, why a delivery was withdrawn"},
        },
    },
)


def _store() -> Store:
    return services().store


def _notify() -> NotifyService:
    return services().notify


def _text(max_len: int, description: str) -> Checked:
    """A query filter of 1 to ``max_len`` characters without NUL; absent or empty: None."""

    def check(source: Mapping[str, Any], name: str) -> str | None:
        value = source.get(name) or None
        if value is None:
            return None
        if len(value) > max_len:
            raise ValidationFailed(name, f"must be at most {max_len} characters")
        if "\x00" in value:
            raise ValidationFailed(name, "must not contain NUL characters")
        return str(value)

    return Checked(check, {"type": "string", "maxLength": max_len}, description=description)


def _time(source: Mapping[str, Any], name: str) -> datetime | None:
    value = source.get(name) or None
    if value is None:
        return None
    try:
        if len(value) > 64:
            raise ValueError(value)
        return parse_iso(value)
    except (ValueError, OverflowError):
        raise ValidationFailed(name, "must be an RFC 3339 time") from None


def _outcome(source: Mapping[str, Any], name: str) -> str | None:
    value = source.get(name) or None
    if value is None:
        return None
    if len(value) > _MAX_OUTCOME_CHARS or not (value in FAMILIES or is_outcome(value)):
        raise ValidationFailed(
            name, f"must be an outcome code ({', '.join(OUTCOMES)}, failed:<code>) or a family ({', '.join(FAMILIES)})"
        )
    return str(value)


@attrs.frozen
class DeliveriesQuery:
    user_id: str | None = wire(_text(protocol.MAX_USER_ID_CHARS, "the recipient"), "query")
    notification_id: str | None = wire(_text(protocol.MAX_ID_CHARS, "the inbox notification"), "query")
    type: str | None = wire(_text(protocol.MAX_NOTIFICATION_TYPE_CHARS, "the notification type"), "query")
    channel: str | None = wire(_text(_MAX_CHANNEL_CHARS, "in_app, push, ..."), "query")
    outcome: str | None = wire(
        Checked(
            _outcome, {"type": "string", "pattern": _OUTCOME_PATTERN},
            description="an outcome code, or a family: failed, skipped, batched (every <family>:...)",
        ),
        "query",
    )
    since: datetime | None = wire(
        Checked(_time, {"type": "string", "format": "date-time"}, description="RFC 3339, inclusive"), "query"
    )
    until: datetime | None = wire(
        Checked(_time, {"type": "string", "format": "date-time"}, description="RFC 3339, exclusive"), "query"
    )
    cursor: str | None = wire(QueryText(_MAX_CURSOR_CHARS, description="next_cursor of the previous page"), "query")
    limit: int = wire(QueryInt(DEFAULT_LIMIT, 1, MAX_LIMIT), "query")


@attrs.frozen
class DeliveryPage:
    """A page of the delivery log, newest first."""

    deliveries: list[dict[str, Any]] = out(list_of(DELIVERY))
    next_cursor: str | None = out({"type": ["string", "null"]}, description="null at the end")


@route(
    "GET", "/deliveries", door="server", operation_id="listDeliveries",
    summary="The delivery log: what became of each notification per user and channel, newest first",
    tag=_TAG, accepts=DeliveriesQuery, answers=DeliveryPage,
)
async def list_deliveries(inp: DeliveriesQuery) -> DeliveryPage:
    where = DeliveryFilter(
        user_id=inp.user_id, notification_id=inp.notification_id, type=inp.type, channel=inp.channel,
        outcome=inp.outcome, since=inp.since, until=inp.until,
    )
    # The store raises ValidationFailed("cursor", ...) for a cursor it did not make.
    entries, next_cursor = await _store().list_deliveries(where=where, cursor=inp.cursor, limit=inp.limit)
    return DeliveryPage(deliveries=[e.to_wire() for e in entries], next_cursor=next_cursor)


@attrs.frozen
class StatsQuery:
    channel: str | None = wire(_text(_MAX_CHANNEL_CHARS, "in_app, push, ...; absent: every channel"), "query")
    hours: int = wire(QueryInt(24, 1, MAX_STATS_HOURS, description="the hours counted, up to this one"), "query")


_BUCKET: Final[JsonSchema] = {
    "type": "object",
    "required": ["hour", "total", "outcomes"],
    "properties": {
        "hour": {"$ref": "#/components/schemas/Time"},
        "total": {"type": "integer", "minimum": 0},
        "outcomes": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 1},
            "description": "entries per outcome code in that hour (codes with none are left out)",
        },
    },
}


@attrs.frozen
class Stats:
    """Delivery log entries per UTC hour and outcome code, oldest hour first (every hour of the span)."""

    channel: str | None = out({"type": ["string", "null"]})
    hours: int = out({"type": "integer"})
    since: str | None = out({"$ref": "#/components/schemas/Time"}, description="the start of the first hour")
    until: str | None = out({"$ref": "#/components/schemas/Time"}, description="now")
    buckets: list[dict[str, Any]] = out({"type": "array", "items": _BUCKET})


@route(
    "GET", "/deliveries/stats", door="server", operation_id="deliveryStats",
    summary="Delivery log entries counted per hour and outcome code (push outcomes by FCM code)",
    tag=_TAG, accepts=StatsQuery, answers=Stats,
)
async def delivery_stats(inp: StatsQuery) -> Stats:
    now = services().clock.now()
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=inp.hours - 1)
    counts = await _store().delivery_stats(since=first, until=now, channel=inp.channel)
    buckets: dict[datetime, dict[str, int]] = {first + timedelta(hours=i): {} for i in range(inp.hours)}
    for c in counts:
        buckets.setdefault(c.hour.astimezone(UTC), {})[c.outcome] = c.count
    return Stats(
        channel=inp.channel,
        hours=inp.hours,
        since=iso(first),
        until=iso(now),
        buckets=[
            {"hour": iso(hour), "total": sum(outcomes.values()), "outcomes": outcomes}
            for hour, outcomes in sorted(buckets.items())
        ],
    )


@attrs.frozen
class UserPath:
    user_id: str = wire(UserId(), "path")


_CAP: Final[JsonSchema] = {
    "type": "object",
    "required": ["cap", "used", "limit", "resets_at"],
    "properties": {
        "cap": {"type": "string", "enum": list(CAPS), "description": "daily: per user per local day; hourly: per type per UTC hour"},
        "used": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer", "minimum": 1},
        "resets_at": {"$ref": "#/components/schemas/Time"},
    },
}


@attrs.frozen
class CapsState:
    """The push caps in force for the user, per type, and their quiet hours."""

    user_id: str = out({"type": "string"})
    time_zone: str = out({"type": "string"})
    quiet_hours: dict[str, str] | None = out(
        {"type": ["object", "null"], "properties": {"start": {"type": "string"}, "end": {"type": "string"}}}
    )
    in_quiet_hours: bool = out({"type": "boolean"})
    quiet_until: str | None = out(_WHEN, description="when the current quiet hours end (null: not in them)")
    types: list[dict[str, Any]] = out(
        {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "critical", "caps"],
                "properties": {
                    "type": {"type": "string"},
                    "critical": {"type": "boolean", "description": "critical types bypass the caps"},
                    "caps": {"type": "array", "items": _CAP, "description": "the caps in force (a cap of 0 is none)"},
                },
            },
        }
    )


@route(
    "GET", "/users/<user_id>/caps", door="server", operation_id="getUserCaps",
    summary="A user's push caps per type (used, limit, reset time) and quiet hours now",
    tag=_TAG, accepts=UserPath, answers=CapsState, guards=(_notify,), errors=(503,),
)
async def user_caps(inp: UserPath) -> CapsState:
    state = await _notify().cap_state(inp.user_id)
    return CapsState(**state)


def routes() -> tuple[Route, ...]:
    """The delivery log routes of the server API."""
    return (list_deliveries, delivery_stats, user_caps)
