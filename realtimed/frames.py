"""Server frames, encoded once for every recipient (sans-IO).

A server-to-client WebSocket frame is never masked, so the bytes of one event
are the same on every socket: ``Frame`` holds the JSON once and builds the
WebSocket frame (header and payload) once, on first use. SSE connections add
their own ``id:`` line around the same JSON.
"""

from __future__ import annotations

import struct
from typing import Final

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked WebSocket frame (RFC 6455 section 5.2)."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    raw_reason = reason.encode()[:120]
    return ws_frame(OP_CLOSE, struct.pack("!H", code) + raw_reason)


PING_FRAME: Final = ws_frame(OP_PING, b"")


class Frame:
    """One server event or reply, JSON-encoded once.

    Attributes:
        name: the event name (``None`` for replies).
        room, seq, epoch: the stream position the event carries, if any (SSE cursors).
        json: the JSON text of the frame.
        published_at: ``trio.current_time()`` when it was published, for the
            delivery latency histogram (0 when not measured).
        socketio: the same event as the Socket.IO door sends it, built once by
            the first Socket.IO recipient (``realtimed.socketio.door``).
    """

    __slots__ = ("_ws", "epoch", "json", "name", "published_at", "room", "seq", "socketio")

    def __init__(
        self,
        json: bytes,
        name: str | None = None,
        published_at: float = 0.0,
        *,
        room: str | None = None,
        seq: int | None = None,
        epoch: str | None = None,
    ) -> None:
        self.json = json
        self.name = name
        self.published_at = published_at
        self.room = room
        self.seq = seq
        self.epoch = epoch
        self._ws: bytes | None = None
        # The Socket.IO door's encoding (its WebSocket frame, its polling record), built on first use.
        self.socketio: tuple[bytes, str] | None = None

    @property
    def ws(self) -> bytes:
        """The complete WebSocket text frame."""
        data = self._ws
        if data is None:
            data = self._ws = ws_frame(OP_TEXT, self.json)
        return data

    def sse(self, event_id: str | None) -> bytes:
        """The SSE record for this frame, with the connection's own ``id:``."""
        head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
        return head + b"event: " + (self.name or "message").encode() + b"\ndata: " + self.json + b"\n\n"
