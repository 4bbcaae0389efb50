"""Push routes of the HTTP doors.

Client REST (``/api/v1``):

- ``POST /devices`` ``{token, platform, app_version?}`` → ``{"device"}`` (a token
  registered by another user moves to this one)
- ``DELETE /devices/<token>`` → ``{}``
- ``GET /devices`` → ``{"devices"}``

Server API (``/server/v1``):

- ``POST /push`` with one of ``tokens``, ``user_ids``, ``topic``; ``title``,
  ``body``, ``data``, optional ``android``, ``apns``, ``webpush`` → ``{"queued"}``
  (one push job per device token, or one for the topic)
- ``POST /topics/<topic>/subscribe`` and ``/unsubscribe`` ``{tokens}`` → ``{"results"}``
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Final

from quart import Blueprint, Response, g

from realtimed import protocol
from realtimed.errors import PayloadTooLarge, Unavailable, ValidationFailed
from realtimed.http import validate
from realtimed.http.app import json_body, json_response, register_blueprint, services
from realtimed.http.openapi import ANY, INT, STRS, S, _obj, _op, _q, add_paths
from realtimed.push.messages import build_message, check_message, merge_platform
from realtimed.push.service import TOPIC_PATTERN, PushService

__all__ = ["client_blueprint", "server_blueprint"]

client_blueprint = Blueprint("push_client", __name__)
server_blueprint = Blueprint("push_server", __name__)

MAX_TOKEN_CHARS: Final = 4096
MAX_PUSH_TOKENS: Final = 1000
MAX_PUSH_USERS: Final = 10_000
MAX_TOPIC_TOKENS: Final = 10_000
MAX_TEXT_CHARS: Final = 4096


def _push() -> PushService:
    return services().push


# -- devices -------------------------------------------------------------------------------------


@client_blueprint.post("/devices")
async def register_device() -> Response:
    body = await json_body()
    token = validate.string(body, "token", max_len=MAX_TOKEN_CHARS)
    platform = validate.string(body, "platform", max_len=16)
    app_version = validate.string(body, "app_version", min_len=0, max_len=64, required=False) or ""
    assert token is not None and platform is not None
    device = await _push().register_device(user_id=g.claims.sub, token=token, platform=platform, app_version=app_version)
    return json_response({"device": device.to_wire()})


@client_blueprint.delete("/devices/<path:token>")
async def unregister_device(token: str) -> Response:
    if not 1 <= len(token) <= MAX_TOKEN_CHARS:
        raise ValidationFailed("token", f"must be 1 to {MAX_TOKEN_CHARS} characters")
    await _push().unregister_device(user_id=g.claims.sub, token=token)
    return json_response({})


@client_blueprint.get("/devices")
async def list_devices() -> Response:
    devices = await _push().list_devices(g.claims.sub)
    return json_response({"devices": [d.to_wire() for d in devices]})


# -- server API ----------------------------------------------------------------------------------


def _object(body: Mapping[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(field, "must be an object")
    return value


@server_blueprint.post("/push")
async def push() -> Response:
    svc = _push()
    if not svc.enabled:
        raise Unavailable("push is not configured on this node (push.service_account_file)")
    body = await json_body()
    targets = [name for name in ("tokens", "user_ids", "topic") if body.get(name) is not None]
    if len(targets) != 1:
        raise ValidationFailed("tokens", "give exactly one of tokens, user_ids and topic")
    title = validate.string(body, "title", min_len=0, max_len=MAX_TEXT_CHARS, required=False) or ""
    text = validate.string(body, "body", min_len=0, max_len=MAX_TEXT_CHARS, required=False) or ""
    data = _object(body, "data")
    message = build_message(title=title, body=text, data=data)
    overrides = {name: _object(body, name) for name in ("android", "apns", "webpush") if body.get(name) is not None}
    message = merge_platform(message, overrides)
    topic = body.get("topic")
    problem = check_message(message, to_topic=topic is not None)
    if problem is not None:
        if "bytes" in problem:
            raise PayloadTooLarge(problem)
        raise ValidationFailed("data", problem)
    ref = "p" + secrets.token_hex(8)
    queued = 0
    if targets[0] == "tokens":
        tokens = validate.string_list(body, "tokens", max_items=MAX_PUSH_TOKENS, max_len=MAX_TOKEN_CHARS)
        for token in tokens:
            await svc.queue_push(message, token=token, ref=ref)
        queued = len(tokens)
    elif targets[0] == "user_ids":
        user_ids = validate.string_list(body, "user_ids", max_items=MAX_PUSH_USERS, max_len=128)
        for i, user_id in enumerate(user_ids):
            protocol.validate_user_id(user_id, f"user_ids[{i}]")
        for user_id in user_ids:
            for device in await svc.store.list_devices(user_id):
                await svc.queue_push(message, token=device.token, user_id=user_id, ref=ref)
                queued += 1
    else:
        name = validate.string(body, "topic", max_len=900)
        assert name is not None
        if not TOPIC_PATTERN.match(name):
            raise ValidationFailed("topic", "must be letters, digits and - _ . ~ %")
        await svc.queue_push(message, topic=name, ref=ref)
        queued = 1
    return json_response({"queued": queued})


async def _topic(topic: str, *, subscribe: bool) -> Response:
    body = await json_body()
    tokens = validate.string_list(body, "tokens", max_items=MAX_TOPIC_TOKENS, max_len=MAX_TOKEN_CHARS)
    results = await _push().manage_topic(topic, tokens, subscribe=subscribe)
    return json_response({"results": results})


@server_blueprint.post("/topics/<topic>/subscribe")
async def subscribe(topic: str) -> Response:
    return await _topic(topic, subscribe=True)


@server_blueprint.post("/topics/<topic>/unsubscribe")
async def unsubscribe(topic: str) -> Response:
    return await _topic(topic, subscribe=False)


register_blueprint(client_blueprint, "client")
register_blueprint(server_blueprint, "server")

_DEVICE = _obj(token=S, platform=S, app_version=S, active={"type": "boolean"}, last_seen_at=S, topics=STRS, created_at=S)
_RESULTS = _obj(results={"type": "array", "items": _obj(token=S, ok={"type": "boolean"}, error=S)})
add_paths(
    {
        "/api/v1/devices": {
            "post": _op("Register a push token (ios, android, web)", tag="client REST",
                        body=_obj(["token", "platform"], token=S, platform=S, app_version=S), answer=_obj(device=_DEVICE)),
            "get": _op("This user's push tokens", tag="client REST",
                       answer=_obj(devices={"type": "array", "items": _DEVICE})),
        },
        "/api/v1/devices/{token}": {"delete": _op(
            "Forget a push token", tag="client REST", params=[_q("token", S, where="path")], errors=(400, 401, 404))},
        "/server/v1/push": {"post": _op(
            "Push to tokens, users' devices or a topic (one job per device)", tag="server API",
            body=_obj(tokens=STRS, user_ids=STRS, topic=S, title=S, body=S, data=ANY,
                      android={"type": "object"}, apns={"type": "object"}, webpush={"type": "object"}),
            answer=_obj(queued=INT), errors=(400, 401, 413, 503))},
        "/server/v1/topics/{topic}/subscribe": {"post": _op(
            "Subscribe tokens to a topic (Instance ID batchAdd)", tag="server API",
            params=[_q("topic", S, where="path")], body=_obj(["tokens"], tokens=STRS), answer=_RESULTS)},
        "/server/v1/topics/{topic}/unsubscribe": {"post": _op(
            "Unsubscribe tokens from a topic (Instance ID batchRemove)", tag="server API",
            params=[_q("topic", S, where="path")], body=_obj(["tokens"], tokens=STRS), answer=_RESULTS)},
    }
)
