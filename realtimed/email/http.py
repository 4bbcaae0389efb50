"""Email routes.

Server API (``/server/v1``):

- ``PUT /users/<user_id>/email`` ``{address, verified, digest?}`` → ``{"email"}`` (a bounce
  reported earlier is cleared; ``digest``: off, hourly or daily)
- ``GET /users/<user_id>/email`` → ``{"email"}`` (404 without one)
- ``DELETE /users/<user_id>/email`` → ``{}`` (404 without one)
- ``POST /email/bounces`` ``{address, kind: bounce|complaint, reason?}`` →
  ``{"users"}``: the users whose address was marked undeliverable

Public, on the client listener (no credential: the link's signature is the
credential), under ``email.public_base_url``:

- ``GET /email/unsubscribe/<token>``: a confirmation page with two buttons
  (this type, all email);
- ``POST /email/unsubscribe/<token>`` with the form field
  ``List-Unsubscribe=One-Click`` (RFC 8058; what mail clients send) and,
  from the page, ``scope=all``: turns the type's email preference off (or every
  type's) and answers a short page. A tampered or expired link is 400
  ``VALIDATION_ERROR`` naming ``token``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, Final

import attrs
from quart import Blueprint, Response, request

from realtimed import protocol
from realtimed.api.routes import (
    Checked,
    Choice,
    Empty,
    Named,
    Route,
    Text,
    out,
    route,
    services,
    wire,
)
from realtimed.email.service import BOUNCE_KINDS, UNSUBSCRIBE_PATH, EmailService
from realtimed.email.unsubscribe import ALL_TYPES, MAX_TOKEN_CHARS, Unsubscribe, verify
from realtimed.errors import NotFound, ValidationFailed
from realtimed.store.emails import EMAIL_DIGESTS

__all__ = ["EMAIL_ADDRESS", "blueprint", "routes"]

_TAG: Final = "email"
MAX_REASON_CHARS: Final = 1000
ONE_CLICK: Final = "One-Click"

EMAIL_ADDRESS: Final = Named(
    "EmailAddress",
    {
        "type": "object",
        "required": ["user_id", "address", "verified", "digest", "bounced_at", "bounce_kind", "bounce_reason", "updated_at"],
        "properties": {
            "user_id": {"$ref": "#/components/schemas/UserId"},
            "address": {"type": "string"},
            "verified": {"type": "boolean", "description": "set by the application; only verified addresses are mailed"},
            "digest": {"type": "string", "enum": list(EMAIL_DIGESTS)},
            "bounced_at": {
                "type": ["string", "null"], "format": "date-time",
                "description": "when a bounce or complaint was reported (no mail until the address is set again)",
            },
            "bounce_kind": {"type": ["string", "null"], "enum": [*BOUNCE_KINDS, None]},
            "bounce_reason": {"type": ["string", "null"]},
            "updated_at": {"$ref": "#/components/schemas/Time"},
        },
    },
)


def _email() -> EmailService:
    svc: EmailService = services().email
    return svc


def _user_id(path: Mapping[str, Any], name: str) -> str:
    return protocol.validate_user_id(path[name], name)


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise ValidationFailed(name, "must be true or false")
    return value


def _digest(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if value not in EMAIL_DIGESTS:
        raise ValidationFailed(name, f"must be one of {', '.join(EMAIL_DIGESTS)}")
    return str(value)


def _address(value: str, name: str) -> str:
    return _email().check(value, name)


@attrs.frozen
class UserPath:
    user_id: str = wire(Checked(_user_id, {"$ref": "#/components/schemas/UserId"}), "path")


@attrs.frozen
class AddressInput:
    user_id: str = wire(Checked(_user_id, {"$ref": "#/components/schemas/UserId"}), "path")
    address: str = wire(
        Text(max_len=998, then=_address, format="email", description="ASCII local@domain, up to email.max_address_chars")
    )
    verified: bool = wire(
        Checked(_bool, {"type": "boolean"}, required=True, description="the application verified the address")
    )
    digest: str | None = wire(
        Checked(
            _digest,
            {"type": "string", "enum": list(EMAIL_DIGESTS)},
            description="off: one email per notification; hourly or daily: gathered per UTC hour or day "
            "(absent: unchanged, off for a new address)",
        )
    )


@attrs.frozen
class AddressReply:
    """The address as stored."""

    email: dict[str, Any] = out(EMAIL_ADDRESS)


@route(
    "PUT", "/users/<user_id>/email", door="server", operation_id="setEmailAddress",
    summary="Set a user's email address and whether it is verified (clears a reported bounce)",
    tag=_TAG, accepts=AddressInput, answers=AddressReply,
)
async def set_address(inp: AddressInput) -> AddressReply:
    record = await _email().set_address(
        user_id=inp.user_id, address=inp.address, verified=inp.verified, digest=inp.digest
    )
    return AddressReply(email=record.to_wire())


@route(
    "GET", "/users/<user_id>/email", door="server", operation_id="getEmailAddress",
    summary="A user's email address (404 without one)", tag=_TAG, accepts=UserPath, answers=AddressReply,
    errors=(404,),
)
async def get_address(inp: UserPath) -> AddressReply:
    record = await _email().get_address(inp.user_id)
    return AddressReply(email=record.to_wire())


@route(
    "DELETE", "/users/<user_id>/email", door="server", operation_id="deleteEmailAddress",
    summary="Forget a user's email address (404 without one)", tag=_TAG, accepts=UserPath, answers=Empty,
    errors=(404,),
)
async def delete_address(inp: UserPath) -> Empty:
    await _email().delete_address(inp.user_id)
    return Empty()


@attrs.frozen
class BounceInput:
    address: str = wire(Text(max_len=998, description="the address the provider reports (any case)"))
    kind: str = wire(Choice(BOUNCE_KINDS, "must be bounce or complaint", description="a hard bounce or a complaint"))
    reason: str | None = wire(
        Text(min_len=0, max_len=MAX_REASON_CHARS, required=False, description="the provider's diagnostic")
    )


@attrs.frozen
class Bounced:
    """The users whose address was marked undeliverable (already marked ones are not listed)."""

    users: list[str] = out({"type": "array", "items": {"$ref": "#/components/schemas/UserId"}})


@route(
    "POST", "/email/bounces", door="server", operation_id="reportEmailBounce",
    summary="Report a bounce or complaint for an address (the mail provider's webhook): no more mail to it "
    "until it is set again",
    tag=_TAG, accepts=BounceInput, answers=Bounced,
)
async def report_bounce(inp: BounceInput) -> Bounced:
    users = await _email().report_bounce(address=inp.address, kind=inp.kind, reason=inp.reason or "")
    return Bounced(users=users)


def routes() -> tuple[Route, ...]:
    """Email's server API routes: addresses and bounces."""
    return (set_address, get_address, delete_address, report_bounce)


# -- the unsubscribe page ------------------------------------------------------------------------

blueprint = Blueprint("email", __name__, url_prefix=UNSUBSCRIBE_PATH.rstrip("/"))

_PAGE: Final = (
    '<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
    "<title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:2em auto\">{body}</body></html>"
)


def _page(title: str, body: str, status: int = 200) -> Response:
    text = _PAGE.format(title=html.escape(title), body=body)
    return Response(
        text, status=status, content_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"},
    )


def _checked(token: str) -> Unsubscribe:
    svc = _email()
    if not svc.cfg.enabled or not svc.cfg.unsubscribe_secret:
        raise NotFound("email is not enabled on this node")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValidationFailed("token", "this unsubscribe link is not valid")
    what = verify(svc.cfg.unsubscribe_secret, token, now=svc.clock.now())
    if what == "expired":
        raise ValidationFailed("token", "this unsubscribe link has expired")
    if isinstance(what, str):
        raise ValidationFailed("token", "this unsubscribe link is not valid")
    return what


def _what(what: Unsubscribe) -> str:
    return "all email" if what.type == ALL_TYPES else f"email about {what.type.replace('_', ' ')}"


@blueprint.get("/<token>")
async def confirm(token: str) -> Response:
    what = _checked(token)
    form = (
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">{extra}'
        '<button type="submit">{label}</button></form>'
    )
    body = f"<h1>Unsubscribe</h1><p>Stop receiving {html.escape(_what(what))}?</p>"
    body += form.format(extra="", label="Unsubscribe")
    if what.type != ALL_TYPES:
        body += form.format(extra='<input type="hidden" name="scope" value="all">', label="Unsubscribe from all email")
    return _page("Unsubscribe", body)


@blueprint.post("/<token>")
async def one_click(token: str) -> Response:
    what = _checked(token)
    form = await request.form
    if form.get("List-Unsubscribe") != ONE_CLICK:
        raise ValidationFailed("List-Unsubscribe", "must be One-Click (RFC 8058)")
    scope = form.get("scope")
    if scope not in (None, "", "type", "all"):
        raise ValidationFailed("scope", "must be type or all")
    if scope == "all":
        what = attrs.evolve(what, type=ALL_TYPES)
    await _email().unsubscribe(what)
    return _page("Unsubscribed", f"<h1>Unsubscribed</h1><p>You will no longer receive {html.escape(_what(what))}.</p>")
