"""The op registry: who answers each op of docs/protocol.md section 5.

Handlers take a ``Caller`` (the user, the token's claims, and the socket when
the op came over one) and the op's validated data, and return the reply data.
The same handlers answer the socket and ``POST /api/v1/ops/{op}``. Each capability
lists its ops in its ``ops()``, and the daemon adds them (``OpRegistry.add``).

Both doors run an op through ``OpRegistry.run``, which charges the per-user op
budget (``limits.UserOpLimiter``); the resource routes of the client REST door,
which call handlers directly, are charged to the same budgets by the door
(``realtimed.http.budgets``), so a user's budget is the same whatever door they use.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from realtimed import metrics, protocol
from realtimed.api.limits import UserOpLimiter
from realtimed.errors import BadRequest

if TYPE_CHECKING:
    from realtimed.auth import Claims
    from realtimed.config import Config
    from realtimed.delivery.router import Recipient
    from realtimed.live import Live


@attrs.define(eq=False)
class Caller:
    """Who is asking.

    Attributes:
        user_id: the authenticated user.
        claims: the token's claims.
        session: the socket, when the op came over one (None over REST); typed as
            what the router needs of it, so the registry knows no transport.
        after_reply: coroutines run once the reply has been written, for events
            that must follow it (``room.joined`` after ``subscribe``).
    """

    user_id: str
    claims: Claims
    session: Recipient | None = None
    after_reply: list[Callable[[], Awaitable[None]]] = attrs.field(factory=list)


OpHandler = Callable[[Caller, Any], Awaitable[dict[str, Any]]]


class OpRegistry:
    """Who answers each op, and the one way to run an op for a caller of any door.

    Args:
        config: the configuration in force (the op budgets and the message size are read at each op).

    Attributes:
        limiter: the per-user op budget, charged by ``run``.
    """

    def __init__(self, config: Live[Config], *, limiter: UserOpLimiter | None = None) -> None:
        self._config = config
        self._handlers: dict[str, OpHandler] = {}
        self.limiter = limiter or UserOpLimiter()

    def add(self, handlers: Mapping[str, OpHandler]) -> None:
        """Answer each op of ``handlers`` (a capability's ``ops()``) with its handler.

        Raises:
            ValueError: an op has a handler already.
        """
        for op, handler in handlers.items():
            if op in self._handlers:
                raise ValueError(f"op {op!r} is registered already")
            self._handlers[op] = handler

    def get(self, op: str) -> OpHandler | None:
        return self._handlers.get(op)

    def __contains__(self, op: str) -> bool:
        return op in self._handlers

    async def run(self, caller: Caller, op: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``op`` for ``caller``: charge the user's budget, validate ``data``, call the handler.

        The budget is charged before validation, so that invalid requests cost
        as much as valid ones.

        Raises:
            BadRequest: no handler serves ``op`` on this node.
            RateLimited: the user's budget for ``op`` is spent (``retry_after_ms`` says for how long).
            ApiError: whatever validation or the handler raises.
        """
        handler = self._handlers.get(op)
        if handler is None:
            raise BadRequest(f"op {op!r} is not served by this node")
        config = self._config.value
        self.limiter.check(caller.user_id, op, config.gateway, now=trio.current_time())
        started = time.perf_counter()
        try:
            value = protocol.validate(op, data, max_message_bytes=config.chat.max_message_bytes)
            return await handler(caller, value)
        finally:
            metrics.OP_LATENCY.labels(op).observe(time.perf_counter() - started)
