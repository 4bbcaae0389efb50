"""Which per-user op budget each client REST route is charged to.

The socket and ``POST /api/v1/ops/{op}`` charge the op they run in
``OpRegistry.run``. Every other route of the client door is charged here, by the
door's before-request hook (``realtimed.http.app``), from one table keyed by the
route (method and rule under ``/api/v1``):

- a route that serves an op charges that op's budget, so the socket, the ops
  route and the resource route share one bucket (``POST /conversations`` charges
  ``conversation.open`` when its body names a ``user_id``, else
  ``conversation.create``, the op it then runs);
- a route with no op charges a budget of its own (``config.REST_BUDGETS``),
  configured in ``[gateway.op_limits]`` like an op's.

The charge comes after the token and ban checks and before the route reads or
validates anything else, so an invalid request costs as much as a valid one,
and a refused one runs nothing. Only the routes of ``UNCHARGED_ROUTES`` are left
to something else. A route missing from the table is charged to a budget named
after it (under ``"*"``), so a new route never bypasses the budget;
tests/test_op_limits.py checks that every route of the door is in the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Final, TypeAlias

import attrs
import orjson
import trio
from quart import request

from realtimed.api.limits import UserOpLimiter
from realtimed.config import GatewayConfig

#: A route: its method and its rule under ``/api/v1`` (``HEAD`` counts as ``GET``).
Route: TypeAlias = tuple[str, str]


@attrs.frozen
class Chooser:
    """The budget of a route that serves one of several ops, depending on the request.

    Attributes:
        names: the budgets it may choose.
        choose: picks one of ``names`` for the request being served.
    """

    names: frozenset[str]
    choose: Callable[[], Awaitable[str]]


async def _open_or_create() -> str:
    """``POST /conversations`` runs ``conversation.open`` for a body with a ``user_id``.

    The same test as the route's, on the same bytes (read once here, and kept
    for the route). A body that is not a JSON object is refused by the route
    whatever budget it was charged to; it is charged to ``conversation.create``.
    """
    raw = await request.get_data(cache=True)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return "conversation.create"
    if type(body) is dict and body.get("user_id") is not None:
        return "conversation.open"
    return "conversation.create"


ROUTE_BUDGETS: Final[Mapping[Route, str | Chooser]] = MappingProxyType(
    {
        # chat (realtimed/chat.py)
        ("GET", "/conversations"): "conversation.list",
        ("POST", "/conversations"): Chooser(frozenset({"conversation.open", "conversation.create"}), _open_or_create),
        ("GET", "/conversations/<conversation_id>"): "conversation.get",
        ("GET", "/conversations/<conversation_id>/messages"): "message.history",
        ("POST", "/conversations/<conversation_id>/mute"): "conversation.mute",
        ("DELETE", "/messages/<message_id>"): "message.delete",
        # presence (realtimed/presence.py)
        ("GET", "/presence"): "presence.query",
        # the inbox (realtimed/notify/http.py)
        ("GET", "/notifications"): "notification.list",
        ("GET", "/notifications/unread-count"): "notification.unread_count",
        ("POST", "/notifications/read-all"): "notification.read_all",
        ("POST", "/notifications/<notification_id>/read"): "notification.read",
        ("DELETE", "/notifications/<notification_id>"): "notification.delete",
        ("GET", "/notifications/preferences"): "preferences.get",
        ("PUT", "/notifications/preferences"): "preferences.put",
        ("PATCH", "/notifications/preferences"): "preferences.put",
        # push tokens (realtimed/push/http.py)
        ("POST", "/devices"): "device.register",
        ("GET", "/devices"): "device.list",
        ("DELETE", "/devices/<path:token>"): "device.unregister",
        # activity feeds (realtimed/feeds/http.py)
        ("GET", "/feeds/<path:feed>/activities"): "feed.activities",
    }
)
"""Route → the budget it charges (a name, or a ``Chooser`` for a route serving two ops)."""

UNCHARGED_ROUTES: Final[Mapping[Route, str]] = MappingProxyType(
    {
        ("POST", "/ops/<op>"): "OpRegistry.run charges the op it runs (a name that is no op is 404 and counts nothing)",
        ("GET", "/events"): "the SSE stream: its admission is bounded by the device limits per user and per node",
        ("GET", "/openapi.json"): "the client document: fetched without a credential, so there is no user to charge",
    }
)
"""Routes not charged by the door, each with what bounds it instead."""


def route_key(method: str, rule: str) -> Route:
    return ("GET" if method == "HEAD" else method, rule)


async def charge(limiter: UserOpLimiter, cfg: GatewayConfig, user_id: str, *, method: str, rule: str) -> None:
    """Spend one of ``user_id``'s budget for the route ``method rule`` (rule under ``/api/v1``).

    Raises:
        RateLimited: the budget is spent (``retry_after_ms`` says for how long).
    """
    key = route_key(method, rule)
    if key in UNCHARGED_ROUTES:
        return
    budget = ROUTE_BUDGETS.get(key)
    if budget is None:
        name = f"{key[0]} {rule}"
    elif isinstance(budget, str):
        name = budget
    else:
        name = await budget.choose()
    limiter.check(user_id, name, cfg, now=trio.current_time())
