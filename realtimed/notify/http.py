"""Notification routes of the HTTP doors.

Server API (``/server/v1``):

- ``POST /notifications`` ``{user_ids, type, vars, data, dedupe_key?, scheduled_for?, expires_at?}``
  → ``{"queued", "recipients": [{user_id, channels: {<channel>: <outcome code>}}]}``

Client REST (``/api/v1``), the same shapes as the ``notification.*`` ops:

- ``GET /notifications?cursor=&after_seq=&unread_only=&limit=`` → ``{"notifications", "next_cursor"}``
- ``GET /notifications/unread-count`` → ``{"unread_count"}``
- ``POST /notifications/<id>/read``, ``POST /notifications/read-all``,
  ``DELETE /notifications/<id>`` → ``{"unread_count"}``
- ``GET /notifications/preferences`` → ``{"types": [{type, in_app, push, ..., channels}], "quiet_hours", "time_zone"}``
  (one boolean per delivery channel of this node)
- ``PUT`` or ``PATCH /notifications/preferences`` with any of ``types``
  (``[{type, <channel>?: bool}]``), ``quiet_hours``, ``time_zone`` (a partial
  update either way: what is not named keeps its setting) → the same
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs
from quart import g

from realtimed import outcomes, protocol
from realtimed.api.routes import (
    Checked,
    Named,
    OpCall,
    OpInput,
    OpReply,
    Route,
    Text,
    TextList,
    WholeBody,
    list_of,
    out,
    query_bool,
    query_int,
    query_text,
    route,
    services,
    wire,
)
from realtimed.clock import parse_iso
from realtimed.errors import ValidationFailed
from realtimed.notify.service import PENDING, NotifyService
from realtimed.push.messages import check_message, string_data

__all__ = ["PREFERENCES", "routes"]

MAX_DEDUPE_KEY_CHARS: Final = 200


def _notify() -> NotifyService:
    return services().notify


def _user() -> str:
    user: str = g.claims.sub
    return user


# -- server API ----------------------------------------------------------------------------------


def _vars(body: Mapping[str, Any]) -> dict[str, Any]:
    values = body.get("vars", {})
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValidationFailed("vars", "must be an object")
    for name, value in values.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise ValidationFailed(f"vars.{name}", "must be a string, number, boolean or null")
    return values


def _data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data", {})
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationFailed("data", "must be an object")
    problem = check_message({"data": string_data(data)})
    if problem is not None and "reserved" in problem:
        raise ValidationFailed("data", problem)
    return data


def _email(body: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``email: {"to": {user_id: address}}``: addresses named for some recipients, as
    ``{user_id: {"email": address}}``. Each must be a recipient, the type must mail and
    email must be enabled."""
    value = body.get("email")
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"to"}:
        raise ValidationFailed("email", 'must be {"to": {"<user_id>": "<address>"}}')
    to = value.get("to", {})
    if not isinstance(to, dict):
        raise ValidationFailed("email.to", 'must be an object {"<user_id>": "<address>"}')
    svc = services()
    if to and not svc.email.enabled:
        raise ValidationFailed("email", "email is not enabled on this node (email.enabled)")
    recipients = body.get("user_ids")
    known = set(recipients) if isinstance(recipients, list) else set()
    ntype = svc.notify.types.get(str(body.get("type")))
    if to and ntype is not None and "email" not in ntype.channels:
        raise ValidationFailed("email", f"type {ntype.name!r} does not use the email channel (channels)")
    out: dict[str, dict[str, str]] = {}
    for user_id, address in to.items():
        field = f"email.to.{str(user_id)[:64]}"
        if user_id not in known:
            raise ValidationFailed(field, "is not one of user_ids")
        if not isinstance(address, str):
            raise ValidationFailed(field, "must be an email address")
        svc.email.check(address, field)
        out[user_id] = {"email": address}
    return out


def _scheduled_for(value: str, name: str) -> datetime:
    try:
        return parse_iso(value)
    except ValueError:
        raise ValidationFailed(name, "must be an RFC 3339 time") from None


@attrs.frozen
class NotifyInput:
    user_ids: list[str] = wire(
        TextList(
            lambda cfg: cfg.notify.max_recipients,
            max_len=protocol.MAX_USER_ID_CHARS,
            each=protocol.validate_user_id,
            items={"$ref": "#/components/schemas/UserId"},
            description="the recipients (up to notify.max_recipients)",
        )
    )
    type: str = wire(Text(max_len=protocol.MAX_NOTIFICATION_TYPE_CHARS, description="a notification type of the configuration (notify.types)"))
    dedupe_key: str | None = wire(
        Text(max_len=MAX_DEDUPE_KEY_CHARS, required=False, description="a repeated key notifies nobody again")
    )
    scheduled_for: datetime | None = wire(
        Text(max_len=64, required=False, then=_scheduled_for, format="date-time", description="RFC 3339: notify then, not now")
    )
    expires_at: datetime | None = wire(
        Text(
            max_len=64,
            required=False,
            then=_scheduled_for,
            format="date-time",
            description="RFC 3339: after this the notification leaves the inbox and is not pushed; "
            "after now (and scheduled_for), at most notify.max_expiry_s ahead",
        )
    )
    vars: dict[str, Any] = wire(
        Checked(
            lambda body, name: _vars(body),
            {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
            description="the template's variables",
        )
    )
    data: dict[str, Any] = wire(
        Checked(lambda body, name: _data(body), {"type": "object"}, description="handed to the app with the notification")
    )
    email: dict[str, dict[str, str]] = wire(
        Checked(
            lambda body, name: _email(body),
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "to": {
                        "type": "object",
                        "additionalProperties": {"type": "string", "format": "email"},
                        "description": "an address per recipient (user id), mailed instead of the stored one",
                    }
                },
            },
            description="the email channel's options (a type with email in its channels)",
        )
    )


_OUTCOME_CODES: Final = [
    outcomes.DELIVERED,
    outcomes.SKIPPED_PREFERENCE,
    outcomes.SKIPPED_ACTIVE,
    outcomes.SKIPPED_DUPLICATE,
    outcomes.SKIPPED_EXPIRED,
    PENDING,
]
RECIPIENT: Final = Named(
    "NotifyRecipient",
    {
        "type": "object",
        "required": ["user_id", "channels"],
        "properties": {
            "user_id": {"type": "string"},
            "channels": {
                "type": "object",
                "description": "per channel of the type that this node delivers on: what was decided at once, "
                "or pending (a job decides; reported by the delivery.failed webhook if it does not go)",
                "additionalProperties": {"type": "string", "enum": _OUTCOME_CODES},
            },
        },
    },
)


@attrs.frozen
class Queued:
    """How many users were reached: stored, or considered for push (a repeated dedupe_key: 0;
    a scheduled one: the number of recipients); and, per recipient, what was decided at once."""

    queued: int = out({"type": "integer", "minimum": 0})
    recipients: list[dict[str, Any]] = out(list_of(RECIPIENT))


@route(
    "POST", "/notifications", door="server", operation_id="notify",
    summary="Notify users (up to notify.max_recipients): inbox, live delivery, push by policy",
    tag="notifications", accepts=NotifyInput, answers=Queued, guards=(_notify,), errors=(503,),
)
async def post_notifications(inp: NotifyInput) -> Queued:
    result = await _notify().notify(
        user_ids=inp.user_ids,
        type=inp.type,
        vars=inp.vars,
        data=inp.data,
        dedupe_key=inp.dedupe_key,
        scheduled_for=inp.scheduled_for,
        addresses=inp.email,
        expires_at=inp.expires_at,
    )
    return Queued(queued=result.reached, recipients=result.recipients())


# -- client REST ---------------------------------------------------------------------------------


_TAG: Final = "notifications"
_UNREAD: Final = OpReply("notification.read_all")
_CHANNELS: Final = {"type": "array", "items": {"type": "string", "description": "a delivery channel of the node (in_app, push, ...)"}}
PREFERENCES: Final = Named(
    "Preferences",
    {
        "type": "object",
        "required": ["types", "quiet_hours", "time_zone"],
        "properties": {
            "types": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "in_app", "push", "channels"],
                    "properties": {
                        "type": {"type": "string"},
                        "in_app": {"type": "boolean"},
                        "push": {"type": "boolean"},
                        "channels": {**_CHANNELS, "description": "the channels the type is sent on"},
                    },
                    "additionalProperties": {"type": "boolean", "description": "one per delivery channel of the node"},
                },
            },
            "quiet_hours": {
                "type": ["object", "null"],
                "required": ["start", "end"],
                "properties": {"start": {"type": "string"}, "end": {"type": "string"}},
            },
            "time_zone": {"type": "string", "description": "an IANA time zone name"},
        },
    },
)
_PREFERENCES_CHANGE: Final = {
    "type": "object",
    "description": "a partial change, checked by the notification service",
    "properties": {
        "types": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string"},
                    "in_app": {"type": ["boolean", "null"]},
                    "push": {"type": ["boolean", "null"]},
                    "channels": {**_CHANNELS, "description": "ignored, so that an entry of GET can be sent back"},
                },
                "additionalProperties": {
                    "type": ["boolean", "null"],
                    "description": "a delivery channel of the node; null or absent keeps its setting",
                },
            },
        },
        "quiet_hours": {
            "type": ["object", "null"],
            "required": ["start", "end"],
            "properties": {"start": {"type": "string", "description": "HH:MM"}, "end": {"type": "string", "description": "HH:MM"}},
            "description": "null: no quiet hours",
        },
        "time_zone": {"type": "string", "description": "an IANA time zone name"},
    },
}


@route(
    "GET", "/notifications", door="client", operation_id="listNotifications",
    summary="The inbox, newest first (ascending after after_seq) (notification.list)", tag=_TAG,
    accepts=OpInput(
        ("notification.list",),
        query={"cursor": query_text, "after_seq": query_int, "unread_only": query_bool, "limit": query_int},
    ),
    answers=OpReply("notification.list"),
)
async def list_notifications(call: OpCall) -> dict[str, Any]:
    value = call.value
    return await _notify().list(
        _user(), cursor=value.cursor, after_seq=value.after_seq, unread_only=value.unread_only, limit=value.limit
    )


@attrs.frozen
class UnreadCount:
    """The user's unread notifications."""

    unread_count: int = out({"type": "integer", "minimum": 0})


@route(
    "GET", "/notifications/unread-count", door="client", operation_id="getUnreadCount",
    summary="Unread notifications", tag=_TAG, answers=UnreadCount,
)
async def unread_count() -> UnreadCount:
    return UnreadCount(unread_count=await _notify().unread_count(_user()))


@route(
    "POST", "/notifications/read-all", door="client", operation_id="readAllNotifications",
    summary="Mark every notification read (notification.read_all)", tag=_TAG, answers=_UNREAD,
)
async def read_all() -> dict[str, Any]:
    return await _notify().read_all(_user())


@attrs.frozen
class NotificationPath:
    notification_id: str = wire(
        Checked(lambda path, name: protocol.validate_id(path[name], "id"), {"$ref": "#/components/schemas/Id"}),
        "path",
    )


@route(
    "POST", "/notifications/<notification_id>/read", door="client", operation_id="readNotification",
    summary="Mark one notification read (notification.read)", tag=_TAG, accepts=NotificationPath,
    answers=OpReply("notification.read"),
)
async def read_one(inp: NotificationPath) -> dict[str, Any]:
    return await _notify().read(_user(), [inp.notification_id])


@route(
    "DELETE", "/notifications/<notification_id>", door="client", operation_id="deleteNotification",
    summary="Delete one notification (notification.delete)", tag=_TAG, accepts=NotificationPath,
    answers=OpReply("notification.delete"),
)
async def delete_one(inp: NotificationPath) -> dict[str, Any]:
    return await _notify().delete(_user(), [inp.notification_id])


@route(
    "GET", "/notifications/preferences", door="client", operation_id="getPreferences",
    summary="Preferences per type, quiet hours, time zone", tag=_TAG, answers=PREFERENCES,
)
async def get_preferences() -> dict[str, Any]:
    return await _notify().preferences(_user())


@attrs.frozen
class PreferencesChange:
    # Checked by NotifyService.set_preferences, which names each field at fault.
    changes: dict[str, Any] = wire(WholeBody(_PREFERENCES_CHANGE))


@route(
    "PUT", "/notifications/preferences", door="client", operation_id="setPreferences",
    summary="Change preferences (partial); answers as GET", tag=_TAG, accepts=PreferencesChange, answers=PREFERENCES,
)
async def put_preferences(inp: PreferencesChange) -> dict[str, Any]:
    return await _notify().set_preferences(_user(), inp.changes)


@route(
    "PATCH", "/notifications/preferences", door="client", operation_id="patchPreferences",
    summary="Change preferences (partial, as PUT): what is not named keeps its setting; answers as GET",
    tag=_TAG, accepts=PreferencesChange, answers=PREFERENCES,
)
async def patch_preferences(inp: PreferencesChange) -> dict[str, Any]:
    return await _notify().set_preferences(_user(), inp.changes)


def routes() -> tuple[Route, ...]:
    """The notification routes: notify and the delivery log (server API), and the inbox and
    preferences (client REST)."""
    from realtimed.notify import log_http

    return (
        post_notifications,
        *log_http.routes(),
        list_notifications,
        unread_count,
        read_all,
        read_one,
        delete_one,
        get_preferences,
        put_preferences,
        patch_preferences,
    )
