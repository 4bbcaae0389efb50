"""A Socket.IO namespace handler for tests only: the echo server the protocol's conformance suite expects.

It serves ``/`` and ``/custom`` without any auth; on connect it emits ``auth``
with the CONNECT payload (or ``{}``), echoes ``message`` as ``message-back``
and acknowledges ``message-with-ack`` with its arguments, binary attachments
included. The daemon never installs it: ``Daemon(cfg, socketio_handler=...)``
in a test does.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from realtimed.socketio.server import SioSocket

_APART_S: Final = 0.02


class EchoHandler:
    """The handler of socketio/socket.io-protocol's test server (see the module docstring)."""

    namespaces = frozenset({"/", "/custom"})

    def serves(self, namespace: str) -> bool:
        return namespace in self.namespaces

    async def connect(self, socket: SioSocket, auth: dict[str, Any] | None) -> None:
        socket.accept()
        # The suite waits for one WebSocket message at a time and registers its next
        # listener only after the previous one fired: two messages that reach Node in one
        # read would lose the second. The reference server never has two writes
        # outstanding on a socket, so they arrive apart; here the handler waits briefly.
        await trio.sleep(_APART_S)
        socket.emit("auth", auth if auth is not None else {})

    async def event(self, socket: SioSocket, args: list[Any], ack_id: int | None, *, binary: bool) -> None:
        name, *rest = args
        if name == "message":
            socket.emit("message-back", *rest)
        elif name == "message-with-ack" and ack_id is not None:
            socket.ack(ack_id, *rest)

    async def disconnect(self, socket: SioSocket, reason: str) -> None:
        return None
