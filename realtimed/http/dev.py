"""Development routes: ``GET /dev/token`` mints a user token for a demo page.

They exist only while both hold (``dev_routes_enabled``):

- the development HS256 secret (``DEV_HS256_SECRET``, shipped in the
  repository's ``realtimed.toml``) is the configured secret and HS256 is an
  accepted algorithm, so the route can mint only what anyone who has read the
  repository can mint already;
- the client listener is loopback, so only programs on this machine reach it.
  (The configuration check already refuses the development secret on any
  other listener; this is the second lock.)

Otherwise every path under ``/dev/`` answers 404 ``NOT_FOUND``, exactly like a
path that has no route, whatever the method. The decision is taken per request
from the running configuration, so a reload that replaces the secret closes
the route at once. The internal listener never serves ``/dev/`` (see app.py).

``GET /dev/token?sub=NAME[&name=DISPLAY][&rooms=PATTERN,PATTERN]`` answers
``{"token", "user_id", "expires_at"}`` with ``Cache-Control: no-store``; the
token lives ``auth.dev_token_ttl_s`` and carries ``aud`` and ``iss`` when they
are configured, like ``realtimed token``. A missing or bad ``sub``, ``name`` or
room pattern is ``VALIDATION_ERROR`` naming the field (``rooms[1]``...). No CORS
headers are sent: another origin's page cannot read a token.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from quart import Blueprint, Response, request

from realtimed.api.routes import json_response, services
from realtimed.auth import mint_dev_token
from realtimed.clock import iso
from realtimed.config import DEV_HS256_SECRET, Config, is_loopback, parse_host_port
from realtimed.errors import NotFound, ValidationFailed
from realtimed.protocol import validate_room_pattern, validate_user_id

DEV_PREFIX: Final = "/dev"
MAX_NAME_CHARS: Final = 128
MAX_DEV_ROOMS: Final = 32
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

blueprint = Blueprint("dev", __name__, url_prefix=DEV_PREFIX)


def dev_routes_enabled(cfg: Config) -> bool:
    """Whether ``/dev/`` routes exist under this configuration (see the module docstring)."""
    try:
        host, _ = parse_host_port(cfg.http.listen)
    except ValueError:
        return False
    return cfg.auth.hs256_secret == DEV_HS256_SECRET and "HS256" in cfg.auth.algorithms and is_loopback(host)


@blueprint.before_app_request
async def _only_in_development() -> Response | None:
    # An app-wide hook, so that it runs before routing answers 405 to another method.
    path = request.path
    if path != DEV_PREFIX and not path.startswith(DEV_PREFIX + "/"):
        return None
    if request.scope.get("realtimed.listener") == "internal" or not dev_routes_enabled(services().config):
        raise NotFound(f"no route {path}")
    return None


@blueprint.get("/token")
async def token() -> Response:
    svc = services()
    cfg = svc.config
    args = request.args
    sub = args.get("sub")
    if sub is None:
        raise ValidationFailed("sub", "is required")
    validate_user_id(sub, "sub")
    name = args.get("name") or None
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise ValidationFailed("name", f"must be at most {MAX_NAME_CHARS} characters")
    if name is not None and _CONTROL.search(name):
        raise ValidationFailed("name", "must not contain control characters")
    rooms = [room.strip() for room in args.get("rooms", "").split(",") if room.strip()]
    if len(rooms) > MAX_DEV_ROOMS:
        raise ValidationFailed("rooms", f"must have at most {MAX_DEV_ROOMS} patterns")
    for i, room in enumerate(rooms):
        validate_room_pattern(room, f"rooms[{i}]")
    now = svc.clock.now()
    ttl_s = cfg.auth.dev_token_ttl_s
    minted = mint_dev_token(
        cfg.auth.hs256_secret,
        sub=sub,
        ttl_s=ttl_s,
        rooms=rooms,
        name=name,
        now=now,
        audience=cfg.auth.audience or None,
        issuer=cfg.auth.issuer or None,
    )
    # The token's exp, computed as mint_dev_token does.
    expires = datetime.fromtimestamp(int((now + timedelta(seconds=ttl_s)).timestamp()), UTC)
    return json_response(
        {"token": minted, "user_id": sub, "expires_at": iso(expires)},
        headers={"Cache-Control": "no-store"},
    )
