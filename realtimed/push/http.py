"""Push routes of the HTTP doors.

Client REST (``/api/v1``):

- ``POST /devices`` ``{token, platform, app_version?, device_info?}`` → ``{"device"}``
  (a token registered by another user moves to this one; ``device_info`` is
  ``{model?, os?, os_version?, app_version?}``, each a string of at most
  ``push.max_device_info_chars``; the token is opaque: 1 to
  ``push.max_token_chars`` printable ASCII characters but space)
- ``DELETE /devices/<token>`` → ``{}``
- ``GET /devices`` → ``{"devices"}``

Server API (``/server/v1``):

- ``POST /push`` with one of ``tokens``, ``user_ids``, ``topic``; ``title``,
  ``body``, ``data``, optional ``android``, ``apns``, ``webpush`` → ``{"queued"}``
  (one push job per device token, or one for the topic)
- ``POST /topics/<topic>/subscribe`` and ``/unsubscribe`` ``{tokens}`` → ``{"results"}``
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any, Final

import attrs
from quart import g

from realtimed import protocol
from realtimed.api import validate
from realtimed.api.routes import (
    Checked,
    Empty,
    ExactlyOne,
    Kind,
    Named,
    OptionalTextList,
    RequestParts,
    Route,
    Text,
    TextList,
    list_of,
    out,
    route,
    services,
    wire,
)
from realtimed.config import Config
from realtimed.errors import PayloadTooLarge, Unavailable, ValidationFailed
from realtimed.protocol import JsonSchema
from realtimed.push.jobs import PushSend
from realtimed.push.messages import build_message, check_message, merge_platform
from realtimed.push.service import TOPIC_PATTERN, PushService

__all__ = ["DEVICE", "routes"]

MAX_TOKEN_CHARS: Final = 4096
MAX_PUSH_TOKENS: Final = 1000
MAX_PUSH_USERS: Final = 10_000
MAX_TOPIC_TOKENS: Final = 10_000
MAX_TEXT_CHARS: Final = 4096
_TAG: Final = "push"
_OBJECT: Final = {"type": "object"}

DEVICE: Final = Named(
    "Device",
    {
        "type": "object",
        "required": ["token", "platform", "app_version", "active", "last_seen_at", "topics", "created_at", "device_info"],
        "properties": {
            "token": {"type": "string"},
            "platform": {"type": "string"},
            "app_version": {"type": "string"},
            "active": {"type": "boolean", "description": "false once FCM said the token is gone"},
            "last_seen_at": {"type": ["string", "null"], "format": "date-time"},
            "topics": {"type": "array", "items": {"type": "string"}},
            "created_at": {"$ref": "#/components/schemas/Time"},
            "device_info": {
                "type": "object",
                "description": "the device as the app registered it ({} when it gave none)",
                "properties": {name: {"type": "string"} for name in ("model", "os", "os_version", "app_version")},
                "additionalProperties": False,
            },
        },
    },
)
TOPIC_RESULT: Final = Named(
    "TopicResult",
    {
        "type": "object",
        "required": ["token", "ok"],
        "properties": {"token": {"type": "string"}, "ok": {"type": "boolean"}, "error": {"type": "string"}},
    },
)


def _push() -> PushService:
    return services().push


# -- devices -------------------------------------------------------------------------------------


#: The fields of a device's ``device_info``.
DEVICE_INFO_FIELDS: Final = ("model", "os", "os_version", "app_version")
# A push token: printable ASCII but space. FCM tokens are opaque (their alphabet and
# length are FCM's to change), so nothing more is asked of them.
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")


def check_token(token: str, name: str, max_chars: int) -> str:
    """A push token as registered: 1 to ``max_chars`` printable ASCII characters but space.

    Raises:
        ValidationFailed: naming ``name``.
    """
    if not 1 <= len(token) <= max_chars:
        raise ValidationFailed(name, f"must be 1 to {max_chars} characters")
    if not _TOKEN_CHARS.fullmatch(token):
        raise ValidationFailed(name, "must be printable ASCII characters, without spaces")
    return token


@attrs.frozen
class PushToken(Kind):
    """A push token in a body (``check_token`` with ``push.max_token_chars``)."""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = validate.string(source, name, min_len=0, max_len=1 << 30)
        assert value is not None
        return check_token(value, name, parts.cfg.push.max_token_chars)

    def schema(self, cfg: Config) -> JsonSchema:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": cfg.push.max_token_chars,
            "pattern": "^[\\x21-\\x7e]+$",
            "description": "the FCM registration token (opaque: printable ASCII but space, up to push.max_token_chars)",
        }


@attrs.frozen
class DeviceInfo(Kind):
    """``device_info``: ``{model?, os?, os_version?, app_version?}``, each a string of
    at most ``push.max_device_info_chars``; any other key is refused, naming it."""

    required: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = source.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValidationFailed(name, f"must be an object with any of {', '.join(DEVICE_INFO_FIELDS)}")
        limit = parts.cfg.push.max_device_info_chars
        info: dict[str, str] = {}
        for key, item in value.items():
            field = f"{name}.{str(key)[:64]}"
            if key not in DEVICE_INFO_FIELDS:
                raise ValidationFailed(field, f"not a device_info field ({', '.join(DEVICE_INFO_FIELDS)})")
            if item is None:
                continue
            if not isinstance(item, str) or not item.isprintable() or len(item) > limit:
                raise ValidationFailed(field, f"must be a string of at most {limit} printable characters")
            info[key] = item
        return info

    def schema(self, cfg: Config) -> JsonSchema:
        text = {"type": ["string", "null"], "maxLength": cfg.push.max_device_info_chars}
        return {
            "type": ["object", "null"],
            "properties": {field: text for field in DEVICE_INFO_FIELDS},
            "additionalProperties": False,
            "description": "the device's model, OS and app version, returned in device lists",
        }


@attrs.frozen
class DeviceInput:
    token: str = wire(PushToken())
    platform: str = wire(Text(max_len=16, description="ios, android or web"))
    app_version: str | None = wire(Text(min_len=0, max_len=64, required=False))
    device_info: dict[str, str] | None = wire(DeviceInfo())


@attrs.frozen
class DeviceReply:
    """The device as stored."""

    device: dict[str, Any] = out(DEVICE)


@route(
    "POST", "/devices", door="client", operation_id="registerDevice",
    summary="Register a push token (ios, android, web); a token registered by another user moves to this one",
    tag=_TAG, accepts=DeviceInput, answers=DeviceReply,
)
async def register_device(inp: DeviceInput) -> DeviceReply:
    info = inp.device_info or {}
    device = await _push().register_device(
        user_id=g.claims.sub,
        token=inp.token,
        platform=inp.platform,
        # The app's version once, wherever the app gave it.
        app_version=inp.app_version or info.get("app_version", ""),
        device_info=info,
    )
    return DeviceReply(device=device.to_wire())


def _path_token(path: Mapping[str, Any], name: str) -> str:
    token: str = path[name]
    if not 1 <= len(token) <= MAX_TOKEN_CHARS:
        raise ValidationFailed(name, f"must be 1 to {MAX_TOKEN_CHARS} characters")
    # Not check_token: a token registered before that check must still be forgettable.
    return token


@attrs.frozen
class TokenPath:
    token: str = wire(Checked(_path_token, {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_CHARS}), "path")


@route(
    "DELETE", "/devices/<path:token>", door="client", operation_id="unregisterDevice",
    summary="Forget a push token (404 if it is not the caller's)", tag=_TAG, accepts=TokenPath, answers=Empty,
    errors=(404,),
)
async def unregister_device(inp: TokenPath) -> Empty:
    await _push().unregister_device(user_id=g.claims.sub, token=inp.token)
    return Empty()


@attrs.frozen
class Devices:
    """The user's push tokens."""

    devices: list[dict[str, Any]] = out(list_of(DEVICE))


@route("GET", "/devices", door="client", operation_id="listDevices", summary="This user's push tokens", tag=_TAG, answers=Devices)
async def list_devices() -> Devices:
    devices = await _push().list_devices(g.claims.sub)
    return Devices(devices=[d.to_wire() for d in devices])


# -- server API ----------------------------------------------------------------------------------


def _object(body: Mapping[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(field, "must be an object")
    return value


@attrs.frozen
class PushMessage(Kind):
    """The message of ``POST /push``: its text, data and platform options, built as FCM
    takes it and checked against FCM's limits (over them: 413; a reserved data key: 400)."""

    spread: bool = True

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        title = validate.string(source, "title", min_len=0, max_len=MAX_TEXT_CHARS, required=False) or ""
        text = validate.string(source, "body", min_len=0, max_len=MAX_TEXT_CHARS, required=False) or ""
        data = _object(source, "data")
        message = build_message(title=title, body=text, data=data)
        overrides = {n: _object(source, n) for n in ("android", "apns", "webpush") if source.get(n) is not None}
        message = merge_platform(message, overrides)
        problem = check_message(message, to_topic=source.get("topic") is not None)
        if problem is not None:
            if "bytes" in problem:
                raise PayloadTooLarge(problem)
            raise ValidationFailed("data", problem)
        return message

    def schema(self, cfg: Config) -> JsonSchema:
        text = {"type": "string", "maxLength": MAX_TEXT_CHARS}
        return {
            "type": "object",
            "properties": {
                "title": text,
                "body": text,
                "data": {**_OBJECT, "description": "non-string values are sent JSON-encoded, as FCM wants strings"},
                "android": {**_OBJECT, "description": "FCM AndroidConfig, merged into the message"},
                "apns": {**_OBJECT, "description": "FCM ApnsConfig, merged into the message"},
                "webpush": {**_OBJECT, "description": "FCM WebpushConfig, merged into the message"},
            },
        }


def _topic(value: str, name: str) -> str:
    if not TOPIC_PATTERN.match(value):
        raise ValidationFailed(name, "must be letters, digits and - _ . ~ %")
    return value


_TOPIC_SCHEMA: Final = "^[a-zA-Z0-9\\-_.~%]{1,900}$"


@attrs.frozen
class PushInput:
    __wire_rules__ = (ExactlyOne(("tokens", "user_ids", "topic"), "body", "give exactly one of tokens, user_ids and topic", "tokens"),)

    message: dict[str, Any] = wire(PushMessage())
    tokens: list[str] | None = wire(OptionalTextList(MAX_PUSH_TOKENS, max_len=MAX_TOKEN_CHARS))
    user_ids: list[str] | None = wire(
        OptionalTextList(
            MAX_PUSH_USERS, max_len=protocol.MAX_USER_ID_CHARS, each=protocol.validate_user_id,
            items={"$ref": "#/components/schemas/UserId"}, description="every device of these users",
        )
    )
    topic: str | None = wire(Text(max_len=900, required=False, pattern=_TOPIC_SCHEMA, then=_topic))


@attrs.frozen
class Queued:
    """Push jobs queued: one per device token, or one for the topic."""

    queued: int = out({"type": "integer", "minimum": 0})


def _push_configured() -> PushService:
    svc = _push()
    if not svc.enabled:
        raise Unavailable("push is not configured on this node (push.service_account_file)")
    return svc


@route(
    "POST", "/push", door="server", operation_id="push",
    summary="Push to tokens, users' devices or a topic (one job per device); 503 when push is not configured",
    tag=_TAG, accepts=PushInput, answers=Queued, guards=(_push_configured,), errors=(503,),
)
async def push(inp: PushInput) -> Queued:
    svc = _push()
    ref = "p" + secrets.token_hex(8)
    queued = 0
    if inp.tokens is not None:
        # One read and one write for the whole call, however many devices.
        pushes = [(PushSend(message=inp.message, ref=ref, token=token), None) for token in inp.tokens]
        await svc.queue_pushes(pushes)
        queued = len(inp.tokens)
    elif inp.user_ids is not None:
        by_user = await svc.store.list_devices_many(inp.user_ids)
        pushes = [
            (PushSend(message=inp.message, ref=ref, token=device.token, user_id=user_id), None)
            for user_id in inp.user_ids
            for device in by_user.get(user_id, [])
        ]
        await svc.queue_pushes(pushes)
        queued = len(pushes)
    else:
        assert inp.topic is not None
        await svc.queue_push(inp.message, topic=inp.topic, ref=ref)
        queued = 1
    return Queued(queued=queued)


def _topic_path(path: Mapping[str, Any], name: str) -> str:
    topic: str = path[name]
    if not TOPIC_PATTERN.match(topic):
        raise ValidationFailed("topic", "must be 1 to 900 of letters, digits and - _ . ~ %")
    return topic


@attrs.frozen
class TopicInput:
    tokens: list[str] = wire(TextList(MAX_TOPIC_TOKENS, max_len=MAX_TOKEN_CHARS))
    # After the body, as PushService.manage_topic checks it.
    topic: str = wire(Checked(_topic_path, {"type": "string", "pattern": _TOPIC_SCHEMA}), "path")


@attrs.frozen
class TopicResults:
    """Per token: whether FCM took it."""

    results: list[dict[str, Any]] = out(list_of(TOPIC_RESULT))


@route(
    "POST", "/topics/<topic>/subscribe", door="server", operation_id="subscribeTopic",
    summary="Subscribe tokens to a topic (Instance ID batchAdd)", tag=_TAG, accepts=TopicInput, answers=TopicResults,
    errors=(503,),
)
async def subscribe(inp: TopicInput) -> TopicResults:
    return TopicResults(results=await _push().manage_topic(inp.topic, inp.tokens, subscribe=True))


@route(
    "POST", "/topics/<topic>/unsubscribe", door="server", operation_id="unsubscribeTopic",
    summary="Unsubscribe tokens from a topic (Instance ID batchRemove)", tag=_TAG, accepts=TopicInput,
    answers=TopicResults, errors=(503,),
)
async def unsubscribe(inp: TopicInput) -> TopicResults:
    return TopicResults(results=await _push().manage_topic(inp.topic, inp.tokens, subscribe=False))


def routes() -> tuple[Route, ...]:
    """Push's routes: devices (client REST), push and topics (server API)."""
    return (register_device, unregister_device, list_devices, push, subscribe, unsubscribe)
