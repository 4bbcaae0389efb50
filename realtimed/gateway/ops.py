"""The op registry: who answers each op of PROTOCOL.md section 5.

Handlers take a ``Caller`` (the user, the token's claims, and the socket when
the op came over one) and the op's validated data, and return the reply data.
The same handlers answer the socket and ``POST /api/v1/ops/{op}``. Capabilities
register their ops when the daemon starts them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from realtimed.auth import Claims
    from realtimed.gateway.session import Session
    from realtimed.services import Services


@attrs.define(eq=False)
class Caller:
    """Who is asking.

    Attributes:
        user_id: the authenticated user.
        claims: the token's claims.
        services: the daemon's services.
        session: the socket, when the op came over one (None over REST).
        after_reply: coroutines run once the reply has been written, for events
            that must follow it (``room.joined`` after ``subscribe``).
    """

    user_id: str
    claims: Claims
    services: Services
    session: Session | None = None
    after_reply: list[Callable[[], Awaitable[None]]] = attrs.field(factory=list)


OpHandler = Callable[[Caller, Any], Awaitable[dict[str, Any]]]


class OpRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, OpHandler] = {}

    def register(self, op: str, handler: OpHandler) -> None:
        if op in self._handlers:
            raise ValueError(f"op {op!r} is registered already")
        self._handlers[op] = handler

    def get(self, op: str) -> OpHandler | None:
        return self._handlers.get(op)

    def __contains__(self, op: str) -> bool:
        return op in self._handlers
