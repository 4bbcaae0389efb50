"""The running daemon's services, handed to the HTTP doors and the gateway.

One ``Services`` object exists per daemon. It is built by ``daemon.py`` and
filled in as each service becomes ready; a field that is None belongs to a
service this node does not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from realtimed.clock import SystemClock, WallClock
from realtimed.config import Config

if TYPE_CHECKING:
    from realtimed.auth import ApiKeys, TokenVerifier


@attrs.define(eq=False)
class Services:
    config: Config
    clock: WallClock = attrs.field(factory=SystemClock)
    node: str = ""
    store: Any = None
    broker: Any = None
    router: Any = None
    gateway: Any = None
    presence: Any = None
    jobs: Any = None
    chat: Any = None
    notify: Any = None
    push: Any = None
    verifier: TokenVerifier | None = None
    api_keys: ApiKeys | None = None
    draining: bool = False
    extras: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.node:
            self.node = self.config.server.node_id
