"""Webhooks in the server API (docs/protocol.md, "Webhooks").

Mounted under ``/server/v1``; the door checks the API key before these routes run.

- ``GET /webhooks`` → ``{"endpoints": [...]}``; ``POST /webhooks`` → ``{"endpoint"}`` (201 semantics, 409 if taken)
- ``GET|PUT|DELETE /webhooks/<id>``: one endpoint (a configured one can be read, not changed: 409)
- ``GET /webhooks/<id>/attempts?limit=``: its latest attempts
- ``GET /webhooks/deliveries/<delivery_id>/attempts``: the attempts of one delivery
- ``POST /webhooks/deliveries/<delivery_id>/replay`` → ``{"job"}``: the delivery again, same ``webhook-id``

Secrets are accepted, never shown (an endpoint answers how many it has).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import attrs

from realtimed.api.routes import (
    Empty,
    Kind,
    QueryInt,
    RequestParts,
    Route,
    WholeBody,
    out,
    route,
    services,
    wire,
)
from realtimed.config import WEBHOOK_ENDPOINT_ID, WEBHOOK_EVENTS, webhook_endpoint_problems
from realtimed.errors import Conflict, NotFound, ValidationFailed
from realtimed.protocol import MAX_ID_CHARS, JsonSchema
from realtimed.store.base import WebhookEndpoint
from realtimed.webhooks.service import WebhookService

__all__ = ["routes"]

log = logging.getLogger(__name__)

_TAG: Final = "webhooks"
_ENDPOINT: Final[JsonSchema] = {
    "type": "object",
    "required": ["id", "source", "url", "events", "secrets", "enabled", "consecutive_failures", "disabled_at"],
    "properties": {
        "id": {"type": "string"},
        "source": {"type": "string", "enum": ["config", "api"]},
        "url": {
            "type": "string",
            "format": "uri",
            "maxLength": 2000,
            "pattern": "^[hH][tT][tT][pP][sS]?://",
            "description": "http:// or https:// with a host, without credentials",
        },
        "events": {"type": "array", "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)}},
        "secrets": {"type": "integer", "description": "how many signing secrets it has (never shown)"},
        "enabled": {"type": "boolean"},
        "consecutive_failures": {"type": "integer"},
        "disabled_at": {"type": ["string", "null"], "description": "set when disabled after failures"},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
    },
}
_ATTEMPT: Final[JsonSchema] = {
    "type": "object",
    "required": ["delivery_id", "webhook_id", "endpoint_id", "event", "attempt", "status", "error", "latency_ms"],
    "properties": {
        "delivery_id": {"type": "string"},
        "webhook_id": {"type": "string"},
        "endpoint_id": {"type": "string"},
        "event": {"type": "string"},
        "attempt": {"type": "integer"},
        "status": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "latency_ms": {"type": "number"},
        "response": {"type": "string", "description": "the start of the response body"},
        "at": {"type": "string"},
    },
}
# config.WEBHOOK_ENDPOINT_ID, which webhook_endpoint_problems checks.
_ENDPOINT_ID_PATTERN: Final = f"^{WEBHOOK_ENDPOINT_ID.pattern}$"
_INPUT: Final[JsonSchema] = {
    "type": "object",
    "required": ["url", "secrets"],
    "properties": {
        "id": {"type": ["string", "null"], "description": "ignored: the path's"},
        "url": {
            "type": "string",
            "format": "uri",
            "maxLength": 2000,
            "pattern": "^[hH][tT][tT][pP][sS]?://",
            "description": "http:// or https:// with a host, without credentials",
        },
        "events": {"type": ["array", "null"], "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)}},
        "secrets": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "enabled": {"type": ["boolean", "null"], "description": "absent or null: true"},
    },
}
_CREATE: Final[JsonSchema] = {
    **_INPUT,
    "required": ["id", "url", "secrets"],
    "properties": {**_INPUT["properties"], "id": {"type": "string", "pattern": _ENDPOINT_ID_PATTERN}},
}


def _service() -> WebhookService:
    return services().webhooks


def _endpoint_from(body: Mapping[str, Any], endpoint_id: str) -> WebhookEndpoint:
    for key in body:
        if key not in _INPUT["properties"]:
            raise ValidationFailed(str(key)[:64], "unknown field")
    # A field that is null counts as absent (docs/protocol.md section 4.1).
    url, secrets = body.get("url"), body.get("secrets")
    events = [] if body.get("events") is None else body["events"]
    enabled = True if body.get("enabled") is None else body["enabled"]
    if not isinstance(url, str):
        raise ValidationFailed("url", "must be a string")
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events) or len(events) > len(WEBHOOK_EVENTS):
        raise ValidationFailed("events", "must be a list of event names")
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        raise ValidationFailed("secrets", "must be a list of one or two secrets")
    if not isinstance(enabled, bool):
        raise ValidationFailed("enabled", "must be a boolean")
    problems = webhook_endpoint_problems(id=endpoint_id, url=url, events=events, secrets=secrets)
    if problems:
        raise ValidationFailed(*problems[0])
    now = services().clock.now()
    return WebhookEndpoint(
        id=endpoint_id, source="api", url=url, events=tuple(dict.fromkeys(events)), secrets=tuple(secrets),
        enabled=enabled, created_at=now, updated_at=now,
    )


@attrs.frozen
class _Id(Kind):
    what: str = "webhook endpoint"
    pattern: str | None = _ENDPOINT_ID_PATTERN  # stated in the schema only: another id is not found

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value: str = source[name]
        if not value or len(value) > MAX_ID_CHARS:
            raise NotFound(f"no {self.what} {value!r}")
        return value

    def schema(self, cfg: Any) -> JsonSchema:
        out: JsonSchema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out


@attrs.frozen
class EndpointList:
    """Every endpoint, by id."""

    endpoints: list[dict[str, Any]] = out({"type": "array", "items": _ENDPOINT})


@attrs.frozen
class EndpointReply:
    """The endpoint."""

    endpoint: dict[str, Any] = out(_ENDPOINT)


@attrs.frozen
class CreateInput:
    body: dict[str, Any] = wire(WholeBody(_CREATE))


@route(
    "GET", "/webhooks", door="server", operation_id="listWebhooks", summary="Webhook endpoints",
    tag=_TAG, answers=EndpointList,
)
async def list_endpoints() -> EndpointList:
    return EndpointList(endpoints=[ep.to_wire() for ep in await services().store.list_webhook_endpoints()])


@route(
    "POST", "/webhooks", door="server", operation_id="createWebhook",
    summary="Create a webhook endpoint (409 if its id is taken)", tag=_TAG, accepts=CreateInput,
    answers=EndpointReply, errors=(409,),
)
async def create_endpoint(inp: CreateInput) -> EndpointReply:
    endpoint_id = inp.body.get("id")
    if not isinstance(endpoint_id, str):
        raise ValidationFailed("id", "must be a string")
    svc = _service()
    if len(svc.endpoints()) >= svc.cfg.webhooks.max_endpoints:
        raise Conflict(f"there are webhooks.max_endpoints ({svc.cfg.webhooks.max_endpoints}) endpoints already")
    stored = await svc.store.put_webhook_endpoint(endpoint=_endpoint_from(inp.body, endpoint_id), create=True)
    await svc.refresh()
    log.info("webhook endpoint %s created through the server API (%s)", stored.id, stored.url)
    return EndpointReply(endpoint=stored.to_wire())


@attrs.frozen
class EndpointPath:
    endpoint_id: str = wire(_Id(), "path")


@attrs.frozen
class ReplaceInput:
    body: dict[str, Any] = wire(WholeBody(_INPUT))
    endpoint_id: str = wire(_Id(), "path")


@route(
    "GET", "/webhooks/<endpoint_id>", door="server", operation_id="getWebhook", summary="One webhook endpoint",
    tag=_TAG, accepts=EndpointPath, answers=EndpointReply, errors=(404,),
)
async def get_endpoint(inp: EndpointPath) -> EndpointReply:
    ep = await services().store.get_webhook_endpoint(inp.endpoint_id)
    if ep is None:
        raise NotFound(f"no webhook endpoint {inp.endpoint_id!r}")
    return EndpointReply(endpoint=ep.to_wire())


@route(
    "PUT", "/webhooks/<endpoint_id>", door="server", operation_id="replaceWebhook",
    summary="Replace a webhook endpoint made through the API; enabled=true ends a disable after failures",
    tag=_TAG, accepts=ReplaceInput, answers=EndpointReply, errors=(404, 409),
)
async def replace_endpoint(inp: ReplaceInput) -> EndpointReply:
    svc = _service()
    body = {k: v for k, v in inp.body.items() if k != "id"}
    stored = await svc.store.put_webhook_endpoint(endpoint=_endpoint_from(body, inp.endpoint_id), create=False)
    await svc.refresh()
    log.info("webhook endpoint %s replaced through the server API (%s)", stored.id, stored.url)
    return EndpointReply(endpoint=stored.to_wire())


@route(
    "DELETE", "/webhooks/<endpoint_id>", door="server", operation_id="deleteWebhook",
    summary="Delete a webhook endpoint made through the API (409 for a configured one)", tag=_TAG,
    accepts=EndpointPath, answers=Empty, errors=(404, 409),
)
async def delete_endpoint(inp: EndpointPath) -> Empty:
    svc = _service()
    if not await svc.store.delete_webhook_endpoint(inp.endpoint_id):
        raise NotFound(f"no webhook endpoint {inp.endpoint_id!r}")
    await svc.refresh()
    log.info("webhook endpoint %s deleted through the server API", inp.endpoint_id)
    return Empty()


@attrs.frozen
class AttemptList:
    """Attempts, newest first."""

    attempts: list[dict[str, Any]] = out({"type": "array", "items": _ATTEMPT})


@attrs.frozen
class EndpointAttemptsInput:
    endpoint_id: str = wire(_Id(), "path")
    limit: int = wire(QueryInt(50, 1, 500), "query")


@route(
    "GET", "/webhooks/<endpoint_id>/attempts", door="server", operation_id="listWebhookAttempts",
    summary="The latest delivery attempts to an endpoint", tag=_TAG, accepts=EndpointAttemptsInput,
    answers=AttemptList, errors=(404,),
)
async def endpoint_attempts(inp: EndpointAttemptsInput) -> AttemptList:
    store = services().store
    if await store.get_webhook_endpoint(inp.endpoint_id) is None:
        raise NotFound(f"no webhook endpoint {inp.endpoint_id!r}")
    found = await store.list_webhook_attempts(endpoint_id=inp.endpoint_id, limit=inp.limit)
    return AttemptList(attempts=[a.to_wire() for a in found])


@attrs.frozen
class DeliveryPath:
    delivery_id: str = wire(_Id("webhook delivery", pattern=None), "path")


@route(
    "GET", "/webhooks/deliveries/<delivery_id>/attempts", door="server", operation_id="listDeliveryAttempts",
    summary="Every attempt of one delivery (its job id)", tag=_TAG, accepts=DeliveryPath, answers=AttemptList,
    errors=(404,),
)
async def delivery_attempts(inp: DeliveryPath) -> AttemptList:
    found = await services().store.list_webhook_attempts(delivery_id=inp.delivery_id, limit=500)
    return AttemptList(attempts=[a.to_wire() for a in found])


@attrs.frozen
class ReplayReply:
    """The new delivery's job (same webhook-id and body as the replayed one)."""

    job: dict[str, Any] = out({"type": "object"})


@route(
    "POST", "/webhooks/deliveries/<delivery_id>/replay", door="server", operation_id="replayDelivery",
    summary="Deliver a webhook again, with the same webhook-id", tag=_TAG, accepts=DeliveryPath,
    answers=ReplayReply, errors=(404,),
)
async def replay_delivery(inp: DeliveryPath) -> ReplayReply:
    job = await _service().replay(inp.delivery_id)
    log.info("webhook delivery %s replayed through the server API as job %s", inp.delivery_id, job.id)
    return ReplayReply(job=job.to_wire())


def routes() -> tuple[Route, ...]:
    """The webhook routes of the server API."""
    return (
        list_endpoints, create_endpoint, get_endpoint, replace_endpoint, delete_endpoint, endpoint_attempts,
        delivery_attempts, replay_delivery,
    )
