"""Notification routes of the HTTP doors.

Server API (``/server/v1``):

- ``POST /notifications`` ``{user_ids, type, vars, data, dedupe_key?, scheduled_for?}`` → ``{"queued"}``

Client REST (``/api/v1``), the same shapes as the ``notification.*`` ops:

- ``GET /notifications?cursor=&after_seq=&unread_only=&limit=`` → ``{"notifications", "next_cursor"}``
- ``GET /notifications/unread-count`` → ``{"unread_count"}``
- ``POST /notifications/<id>/read``, ``POST /notifications/read-all``,
  ``DELETE /notifications/<id>`` → ``{"unread_count"}``
- ``GET /notifications/preferences`` → ``{"types": [{type, in_app, push, ..., channels}], "quiet_hours", "time_zone"}``
  (one boolean per delivery channel of this node)
- ``PUT /notifications/preferences`` with any of ``types`` (``[{type, <channel>?: bool}]``),
  ``quiet_hours``, ``time_zone`` → the same
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from quart import Blueprint, Response, g, request

from realtimed import protocol
from realtimed.clock import parse_iso
from realtimed.errors import ValidationFailed
from realtimed.http import validate
from realtimed.http.app import json_body, json_response, register_blueprint, services
from realtimed.http.openapi import ANY, INT, STRS, S, _obj, _op, _q, add_paths
from realtimed.notify.service import NotifyService
from realtimed.push.messages import check_message, string_data

__all__ = ["client_blueprint", "server_blueprint"]

server_blueprint = Blueprint("notify_server", __name__)
client_blueprint = Blueprint("notify_client", __name__)

MAX_DEDUPE_KEY_CHARS: Final = 200
MAX_USER_ID_CHARS: Final = 128
MAX_ID_CHARS: Final = 100


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


@server_blueprint.post("/notifications")
async def post_notifications() -> Response:
    notify = _notify()
    body = await json_body()
    user_ids = validate.string_list(
        body, "user_ids", max_items=notify.cfg.max_recipients, max_len=MAX_USER_ID_CHARS
    )
    for i, user_id in enumerate(user_ids):
        protocol.validate_user_id(user_id, f"user_ids[{i}]")
    type_name = validate.string(body, "type", max_len=64)
    assert type_name is not None
    dedupe_key = validate.string(body, "dedupe_key", max_len=MAX_DEDUPE_KEY_CHARS, required=False)
    scheduled_text = validate.string(body, "scheduled_for", max_len=64, required=False)
    scheduled_for = None
    if scheduled_text is not None:
        try:
            scheduled_for = parse_iso(scheduled_text)
        except ValueError:
            raise ValidationFailed("scheduled_for", "must be an RFC 3339 time") from None
    queued = await notify.notify(
        user_ids=user_ids,
        type=type_name,
        vars=_vars(body),
        data=_data(body),
        dedupe_key=dedupe_key,
        scheduled_for=scheduled_for,
    )
    return json_response({"queued": queued})


# -- client REST ---------------------------------------------------------------------------------


def _query_bool(value: str | None, field: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValidationFailed(field, "must be true or false")


def _query_int(value: str | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationFailed(field, "must be an integer") from None


def _notification_id(value: str) -> str:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise ValidationFailed("id", f"must be 1 to {MAX_ID_CHARS} characters")
    return value


@client_blueprint.get("/notifications")
async def list_notifications() -> Response:
    args = request.args
    data = {
        "cursor": args.get("cursor") or None,
        "after_seq": _query_int(args.get("after_seq"), "after_seq"),
        "unread_only": _query_bool(args.get("unread_only"), "unread_only"),
        "limit": _query_int(args.get("limit"), "limit"),
    }
    value = protocol.validate("notification.list", {k: v for k, v in data.items() if v is not None})
    answer = await _notify().list(
        _user(), cursor=value.cursor, after_seq=value.after_seq, unread_only=value.unread_only, limit=value.limit
    )
    return json_response(answer)


@client_blueprint.get("/notifications/unread-count")
async def unread_count() -> Response:
    return json_response({"unread_count": await _notify().unread_count(_user())})


@client_blueprint.post("/notifications/read-all")
async def read_all() -> Response:
    return json_response(await _notify().read_all(_user()))


@client_blueprint.post("/notifications/<notification_id>/read")
async def read_one(notification_id: str) -> Response:
    return json_response(await _notify().read(_user(), [_notification_id(notification_id)]))


@client_blueprint.delete("/notifications/<notification_id>")
async def delete_one(notification_id: str) -> Response:
    return json_response(await _notify().delete(_user(), [_notification_id(notification_id)]))


@client_blueprint.get("/notifications/preferences")
async def get_preferences() -> Response:
    return json_response(await _notify().preferences(_user()))


@client_blueprint.put("/notifications/preferences")
async def put_preferences() -> Response:
    body = await json_body()
    return json_response(await _notify().set_preferences(_user(), body))


register_blueprint(server_blueprint, "server")
register_blueprint(client_blueprint, "client")

# One boolean per delivery channel of the node, named after it (in_app, push, ...).
_TYPE_PREF = {
    **_obj(["type"], type=S, in_app={"type": "boolean"}, push={"type": "boolean"}, channels=STRS),
    "additionalProperties": {"type": "boolean"},
}
_PREFS = _obj(
    types={"type": "array", "items": _TYPE_PREF},
    quiet_hours={"type": ["object", "null"], "properties": {"start": S, "end": S}},
    time_zone=S,
)
_NOTIFICATION = _obj(
    id=S, seq=INT, type=S, title=S, body=S, data=ANY, priority=S, group_key=S, created_at=S, read_at=S
)
_UNREAD = _obj(unread_count=INT)
_CLIENT = "client REST"
add_paths(
    {
        "/server/v1/notifications": {"post": _op(
            "Notify users (up to notify.max_recipients): inbox, live delivery, push by policy", tag="server API",
            body=_obj(["user_ids", "type"], user_ids=STRS, type=S, vars={"type": "object"}, data={"type": "object"},
                      dedupe_key=S, scheduled_for=S),
            answer=_obj(queued=INT))},
        "/api/v1/notifications": {"get": _op(
            "The inbox, newest first (ascending after after_seq)", tag=_CLIENT,
            params=[_q("cursor", S), _q("after_seq", INT), _q("unread_only", {"type": "boolean"}), _q("limit", INT)],
            answer=_obj(notifications={"type": "array", "items": _NOTIFICATION}, next_cursor=S))},
        "/api/v1/notifications/unread-count": {"get": _op("Unread notifications", tag=_CLIENT, answer=_UNREAD)},
        "/api/v1/notifications/read-all": {"post": _op("Mark every notification read", tag=_CLIENT, answer=_UNREAD)},
        "/api/v1/notifications/{id}/read": {"post": _op(
            "Mark one notification read", tag=_CLIENT, params=[_q("id", S, where="path")], answer=_UNREAD)},
        "/api/v1/notifications/{id}": {"delete": _op(
            "Delete one notification", tag=_CLIENT, params=[_q("id", S, where="path")], answer=_UNREAD)},
        "/api/v1/notifications/preferences": {
            "get": _op("Preferences per type, quiet hours, time zone", tag=_CLIENT, answer=_PREFS),
            "put": _op("Change preferences (partial)", tag=_CLIENT, body=_PREFS, answer=_PREFS),
        },
    }
)
