"""``ClientSession``: what a session of any transport is to the gateway and the router.

A transport (the WebSocket ``gateway.session.Session``, the SSE
``gateway.sse.SseSession``, and later the Socket.IO door's sessions) subclasses
it and writes its frames its own way; the gateway admits, registers, times,
drains and forgets every session through this class alone, and the router
delivers to it. Nothing here assumes a connection or a task: a session may
live between requests (long-polling), as long as its transport calls
``Gateway.end`` once it is over.

A subclass implements the writing (``send_frame``, ``send_event``), the closing
(``close``, ``shutdown``, ``aclose``), ``closing`` and ``outbox_bytes``; each of
them is synchronous and never blocks except ``aclose``.
"""

from __future__ import annotations

import secrets
from abc import abstractmethod
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import trio

from realtimed.broker.base import node_tag
from realtimed.clock import iso

if TYPE_CHECKING:
    from realtimed.auth import Claims
    from realtimed.config import GatewayConfig
    from realtimed.frames import Frame

__all__ = ["ClientSession", "FrameBudget", "new_session_id", "refused_in_a_row", "take_frame_token"]


def new_session_id(node: str = "") -> str:
    """``s_``, the node's tag (``broker.base.node_tag``), then 16 random characters."""
    return "s_" + node_tag(node) + secrets.token_urlsafe(12)


class FrameBudget(Protocol):
    """What a door keeps per connection for its frame accounting (``gateway.ops_*``, ``abuse_limit``)."""

    bucket: float
    bucket_at: float
    limited_streak: int


def take_frame_token(budget: FrameBudget, cfg: GatewayConfig) -> bool:
    """Charge one frame to the connection's token bucket; False when it is empty."""
    now = trio.current_time()
    budget.bucket = min(float(cfg.ops_burst), budget.bucket + (now - budget.bucket_at) * cfg.ops_per_s)
    budget.bucket_at = now
    if budget.bucket >= 1.0:
        budget.bucket -= 1.0
        return True
    return False


def refused_in_a_row(budget: FrameBudget, cfg: GatewayConfig) -> bool:
    """Count a refused frame; True once ``gateway.abuse_limit`` refusals came in a row (the door closes 4009)."""
    budget.limited_streak += 1
    return budget.limited_streak >= cfg.abuse_limit


class ClientSession(trio.abc.AsyncResource):
    """One device of a user on this node, whatever its transport.

    Attributes:
        transport: the transport's name (``websocket``, ``sse``), as ``GET
            /server/v1/connections`` and the metrics show it.
        sends_expiring: the transport can re-authenticate, so it gets
            ``session.expiring`` before its token runs out (SSE cannot).
        id: ``s_…``, unique.
        user_id: the authenticated user ('' until the gateway admits the session).
        claims: the token's claims (None until admitted).
        expires_at: when the token expires (None: never).
        node: this node's id.
        address: the peer's address.
        connected_at: wall time of the connection.
        rooms: the app rooms the session is subscribed to.
        last_active: ``trio.current_time()`` of the last op other than ``ping``;
            None for a transport that carries no ops (SSE), which then counts as
            active for as long as it is connected.
        auth_generation: grows with each re-authentication, so that the expiry
            timers of an older token are ignored.
        close_code: the close code once closing (1006: the peer went away).
    """

    __slots__ = (
        "address",
        "auth_generation",
        "claims",
        "close_code",
        "connected_at",
        "expires_at",
        "id",
        "last_active",
        "node",
        "rooms",
        "user_id",
    )

    transport: ClassVar[str]
    sends_expiring: ClassVar[bool] = False

    def __init__(self, *, node: str, address: str, connected_at: datetime, last_active: float | None) -> None:
        self.id = new_session_id(node)
        self.user_id = ""
        self.claims: Claims | None = None
        self.expires_at: datetime | None = None
        self.node = node
        self.address = address
        self.connected_at = connected_at
        self.rooms: set[str] = set()
        self.last_active = last_active
        self.auth_generation = 0
        self.close_code: int | None = None

    @property
    @abstractmethod
    def closing(self) -> bool:
        """True once the session is closing or closed: nothing more is sent."""

    @property
    @abstractmethod
    def outbox_bytes(self) -> int:
        """Bytes queued and not yet written."""

    @abstractmethod
    def send_frame(self, frame: Frame) -> None:
        """Queue an event frame (the router's fast path); never blocks."""

    @abstractmethod
    def send_event(self, name: str, data: Any) -> None:
        """Send one event to this session only (``session.ready``, ``session.expiring``)."""

    @abstractmethod
    def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (idempotent, never blocks)."""

    @abstractmethod
    def shutdown(self, event_payload: bytes) -> None:
        """Drain: send the encoded ``server.shutdown`` event, then close with 1001."""

    def info(self) -> dict[str, Any]:
        """The session as ``GET /server/v1/connections`` lists it."""
        return {
            "session_id": self.id,
            "user_id": self.user_id,
            "node": self.node,
            "connected_at": iso(self.connected_at),
            "rooms": sorted(self.rooms),
            "transport": self.transport,
            "address": self.address,
        }
