"""The session lifecycle's hooks: what capabilities do when a device connects or goes.

In the spirit of centrifuge's ``OnConnect`` and ``OnDisconnect`` handlers, the
daemon builds one ``SessionHooks`` from the services it runs and hands it to the
gateway, which calls each hook at its moment for every transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs

__all__ = ["Connected", "SessionHooks"]


class Connected(Protocol):
    """What a hook sees of a session (a WebSocket or an SSE stream)."""

    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


SessionHook = Callable[[Connected], Awaitable[None]]
ReadyFields = Callable[[str], Awaitable[Mapping[str, Any]]]


@attrs.frozen
class SessionHooks:
    """The typed hooks of the session lifecycle (one object per node, built by the daemon).

    Attributes:
        on_connect: run in order once a session is admitted and ``session.ready``
            is written (presence counts the device).
        on_disconnect: run in order once an admitted session has closed and left
            the router; one that raises is logged and the next still runs.
        ready_fields: each answers fields of the user's ``session.ready``
            (``unread_total``, ``notifications_unread``); one that raises
            ``ApiError`` leaves its fields at their defaults.
        mark_active: tells the other nodes of a cluster that the user did
            something here (the push-skip rule); None on a single node.
        user_socket_count: the user's devices on every node of a cluster, for
            ``gateway.max_sockets_per_user``; None counts this node's only.
    """

    on_connect: tuple[SessionHook, ...] = ()
    on_disconnect: tuple[SessionHook, ...] = ()
    ready_fields: tuple[ReadyFields, ...] = ()
    mark_active: Callable[[str], None] | None = None
    user_socket_count: Callable[[str], Awaitable[int]] | None = None
