"""The SSE transport: a stream of events over one HTTP response (docs/protocol.md section 8.4).

A thin transport adapter over the gateway's session lifecycle: the client REST
door (``http.client_api``) checks the token and the ``rooms`` list, then
``SseSession.open`` has the gateway admit the stream (or refuse it: the stream
is then one ``session.closed``), subscribes and resumes the rooms, and
``SseSession.stream`` is the response body. The gateway times the token (the
4004 close) and drains the stream like a socket.

Each record's ``id:`` is an opaque cursor holding the position of every room
stream on the connection; a reconnect with ``Last-Event-ID`` resumes each room
through the same recovery as ``subscribe``, or sends ``room.reset``.

Resource handling:
    Records are queued (bounded by ``gateway.outbox_max_bytes``; over it the
    stream ends with ``session.closed`` 4008) and written by the response body,
    which also sends a ``: heartbeat`` comment after ``heartbeat_s`` of
    silence. The body's end (the client gone, or the stream closed) ends the
    session in the gateway.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import orjson
import trio

from realtimed import protocol
from realtimed.auth import Claims
from realtimed.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_SLOW_CONSUMER
from realtimed.frames import Frame
from realtimed.gateway.client import ClientSession
from realtimed.gateway.gateway import Gateway

__all__ = ["SseSession", "decode_cursor", "encode_cursor"]

_RETRY: bytes = b"retry: 2000\n\n"


def encode_cursor(positions: dict[str, list[Any]]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"r": positions})).decode().rstrip("=")


def decode_cursor(text: str | None) -> dict[str, tuple[int, str]]:
    """Room positions from a ``Last-Event-ID``; an unreadable cursor resumes nothing.

    The client may send anything here: only positions that ``subscribe``'s
    ``since`` would accept (a room name, a seq from 0 to 2^63-1, an epoch of at
    most 128 characters) are kept; whatever else the cursor holds is ignored.
    """
    if not text:
        return {}
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return {}
    rooms = raw.get("r") if type(raw) is dict else None
    if type(rooms) is not dict:
        return {}
    out: dict[str, tuple[int, str]] = {}
    for room, pos in rooms.items():
        if type(pos) is not list or len(pos) != 2:
            continue
        seq, epoch = pos
        if (
            protocol.is_valid_room(room)
            and type(seq) is int
            and 0 <= seq <= protocol.MAX_SEQ
            and type(epoch) is str
            and len(epoch) <= protocol.MAX_EPOCH_CHARS
        ):
            out[room] = (seq, epoch)
    return out


class SseSession(ClientSession):
    """One SSE stream, a ``ClientSession`` like a socket (see the module docstring)."""

    __slots__ = (
        "_admitted",
        "_closing",
        "_cursor_sent",
        "_ended",
        "_gateway",
        "_queue",
        "_queued",
        "_streaming",
        "_wake",
        "positions",
    )

    transport = "sse"

    def __init__(self, gateway: Gateway, address: str) -> None:
        # No ops come over a stream: it counts as active while connected (last_active None).
        super().__init__(node=gateway.node, address=address, connected_at=gateway.clock.now(), last_active=None)
        self._gateway = gateway
        self.positions: dict[str, list[Any]] = {}
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = trio.Event()
        self._closing = False
        self._admitted = False
        self._streaming = False
        self._ended = trio.Event()
        self._cursor_sent: str | None = None

    # -- admission and rooms ------------------------------------------------------------------

    async def open(self, claims: Claims, rooms: Sequence[str], resume: Mapping[str, tuple[int, str]]) -> bool:
        """Have the gateway admit the stream, then subscribe and resume ``rooms``; False if refused.

        A refused stream is closed (its body is one ``session.closed``). The
        rooms were checked against the token by the caller.
        """
        gateway = self._gateway
        router = gateway.router
        # Until a room is resumed, the records carry the client's own position of it,
        # so that a stream dropped before the replay resumes from there again.
        self.positions.update({room: [seq, epoch] for room, (seq, epoch) in resume.items() if room in rooms})
        with gateway.admitting():
            if await gateway.admit(self, claims) != "accepted":
                return False
        self._admitted = True
        gateway.watch_start(self, lambda: self._streaming)
        joined: list[str] = []
        try:
            for room in rooms:
                since = resume.get(room)
                reply = await router.subscribe(self, room, since=since)
                if reply.pop("_joined", False):
                    joined.append(room)
                if reply["epoch"]:
                    self.positions[room] = [reply["seq"], reply["epoch"]]
                if since is not None and reply["recovered"]:
                    for pub in reply["publications"]:
                        self.send_event(pub["event"], pub["data"], room=room, seq=pub["seq"], epoch=reply["epoch"])
                elif since is not None:
                    self.send_event("room.reset", {"room": room, "seq": reply["seq"], "epoch": reply["epoch"]})
                router.flush_held(self, room, reply["seq"])
            self.send_position()
            for room in joined:
                await router.announce_join(room, self.user_id, joiner=self.id)
        except BaseException:
            await self._end()
            raise
        return True

    # -- writing ------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def outbox_bytes(self) -> int:
        return self._queued

    def cursor(self) -> str:
        cursor = encode_cursor(self.positions)
        self._cursor_sent = cursor
        return cursor

    def send_frame(self, frame: Frame) -> None:
        if self._closing:
            return
        if frame.room is not None and frame.seq is not None and frame.epoch is not None:
            self.positions[frame.room] = [frame.seq, frame.epoch]
        self._push(frame.sse(self.cursor()))

    def send_position(self) -> None:
        """An ``id:`` record without data when the room positions moved since the last record.

        EventSource keeps the id of such a record as its ``Last-Event-ID`` without
        firing an event, so a stream that drops before any room event still
        resumes its rooms from where they were subscribed.
        """
        if self._closing or encode_cursor(self.positions) == self._cursor_sent:
            return
        self._push(b"id: " + self.cursor().encode() + b"\n\n")

    def send_event(
        self, name: str, data: Any, *, room: str | None = None, seq: int | None = None, epoch: str | None = None
    ) -> None:
        frame = Frame(protocol.encode_event(name, data, room=room, seq=seq, epoch=epoch), name, room=room, seq=seq, epoch=epoch)
        self.send_frame(frame)

    def _push(self, record: bytes) -> None:
        self._queue.append(record)
        self._queued += len(record)
        if self._queued > self._gateway.config.gateway.outbox_max_bytes:
            self._queue.clear()
            self._queued = 0
            self._gateway.note_overflow(self)
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        self._wake.set()

    # -- closing ------------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """End the stream with ``session.closed`` (idempotent, never blocks)."""
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        record = Frame(protocol.encode_event("session.closed", {"code": code, "reason": reason}), "session.closed").sse(self.cursor())
        self._queue.append(record)
        self._wake.set()

    def shutdown(self, event_payload: bytes) -> None:
        if not self._closing:
            self._push(Frame(event_payload, "server.shutdown").sse(self.cursor()))
        self.close(CLOSE_GOING_AWAY, "server draining")

    async def aclose(self) -> None:
        """Close with 1000 and wait until the response body has ended (idempotent).

        A stream whose body is not being served is ended at once.
        """
        self.close(CLOSE_NORMAL)
        if self._streaming:
            await self._ended.wait()
        else:
            await self._end()

    async def _end(self) -> None:
        self._closing = True
        try:
            await self._gateway.end(self)
        finally:
            self._ended.set()

    # -- the response body --------------------------------------------------------------------

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The response body: the queued records as they come, and heartbeats; ends the session when done."""
        heartbeat_s = self._gateway.config.gateway.heartbeat_s
        self._streaming = True
        try:
            if self._admitted:
                yield _RETRY
            while True:
                while self._queue:
                    record = self._queue.popleft()
                    self._queued -= len(record)
                    yield record
                if self._closing:
                    return
                self._wake = trio.Event()
                with trio.move_on_after(heartbeat_s) as timer:
                    await self._wake.wait()
                if timer.cancelled_caught:
                    yield b": heartbeat\n\n"
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._end()
