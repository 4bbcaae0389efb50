"""Socket.IO connection state recovery from realtimed's durable positions (sans-IO).

socket.io-client (JavaScript, 4.6 and later) remembers the ``pid`` of the
CONNECT reply and the last string argument of every event (the *offset*); on
reconnect it sends CONNECT with ``{pid, offset}``, and reports
``socket.recovered`` when the reply carries the same ``pid``.

Offsets are position keys, the same for every recipient of a frame, so that a
frame is still encoded once for all its Socket.IO recipients:

- ``r:<epoch>:<seq>:<room>``: a publication in a room with history;
- ``c:<version>:<conversation id>``: ``message.new``, ``message.updated`` and
  ``message.deleted`` (the conversation's ``version`` after the change);
- ``i:<seq>``: ``notification.new`` (the user's inbox ``seq``).

``Tracker`` follows one session: per stream, the last position it sent, and a
bounded ring of ``(offset, stream, position)`` for the last sends (with the
positions from before the ring's oldest entry). When
the session ends recoverably it becomes a ``RecoveryRecord``, kept under the
``pid`` for ``socketio.recovery_ttl_s`` in a ``RecoveryStore`` (the store, so
that a restart or another node recovers it). ``RecoveryRecord.as_of`` gives the
positions the client had at its offset, or None when the offset is not one the
record knows (then nothing is recovered).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any, Final

import attrs
import orjson

from realtimed.frames import Frame
from realtimed.store.recovery import RecoveryStore

__all__ = [
    "MemoryRecoveryStore",
    "Position",
    "RecoveryRecord",
    "RecoveryStore",
    "Tracker",
    "frame_position",
]

# A stream's position: a room's [seq, epoch], the inbox's [seq, ""], a conversation's
# [version, "", highest seq]. The first member rises along the stream; a room's epoch
# changes when its history restarts. Lists, so that a record is plain JSON.
Position = list[Any]
# (offset, stream, position): one per frame, shared by every recipient.
Entry = tuple[str, str, Position]

CONVERSATION_PREFIX: Final = "conversation:"
_MESSAGE_EVENTS: Final = frozenset({"message.new", "message.updated", "message.deleted"})


def frame_position(frame: Frame) -> Entry | None:
    """The (offset, stream, position) a router frame advances, or None (typing, presence, receipts...).

    Called once per frame (the result is cached with the frame's Socket.IO encoding).
    """
    name = frame.name
    room = frame.room
    if room is not None and frame.epoch is not None and frame.seq is not None:
        return f"r:{frame.epoch}:{frame.seq}:{room}", "r:" + room, [frame.seq, frame.epoch]
    if name == "notification.new" and room is None and frame.seq is not None:
        return f"i:{frame.seq}", "i", [frame.seq, ""]
    if name in _MESSAGE_EVENTS and (room is None or room.startswith(CONVERSATION_PREFIX)):
        # The conversation comes from the message itself, whatever room the frame names.
        try:
            message = orjson.loads(frame.json)["data"]["message"]
            version, seq, cid = int(message["version"]), int(message["seq"]), message["conversation_id"]
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(cid, str):
            return None
        return f"c:{version}:{cid}", "c:" + cid, [version, "", seq]
    return None


def is_newer(position: Position, than: Position | None) -> bool:
    """``position`` is past ``than`` on their stream (a room position of another epoch always is)."""
    if than is None:
        return True
    newer: bool = position[0] > than[0] or position[1] != than[1]
    return newer


class Tracker:
    """What one Socket.IO session sent, per stream (see the module docstring).

    The door's hot path reads ``positions`` itself and calls ``sent`` for a frame
    the socket takes: one dict update and one ring append, the entry being the
    frame's own (shared) tuple.

    Args:
        size: how many sends the ring keeps (``socketio.recovery_positions``).
        started_at: wall time of the session's admission (streams it never saw are
            replayed from then).

    Attributes:
        positions: per stream, the last position sent.
        base: per stream, the position before the ring's oldest entry.
        baselines: per room stream, the position of its last ``subscribe`` reply.
        ring: the last sends, oldest first.
        dropped: sends fell out of the ring.
    """

    __slots__ = ("base", "baselines", "dropped", "positions", "ring", "size", "started_at")

    def __init__(self, size: int, started_at: datetime) -> None:
        self.positions: dict[str, Position] = {}
        self.base: dict[str, Position] = {}
        self.baselines: dict[str, Position] = {}
        self.ring: deque[Entry] = deque()
        self.size = size
        self.dropped = False
        self.started_at = started_at

    def accepts(self, stream: str, position: Position) -> bool:
        """The frame is new to the client (False: it was replayed, or sent, already)."""
        return is_newer(position, self.positions.get(stream))

    def sent(self, entry: Entry) -> None:
        stream = entry[1]
        if stream[0] == "c":
            # A conversation keeps its highest seq: an edit of an older message does not lower it.
            last = self.positions.get(stream)
            if last is not None and last[2] > entry[2][2]:
                entry = (entry[0], stream, [entry[2][0], "", last[2]])
        ring = self.ring
        if len(ring) >= self.size:
            _, old_stream, old_position = ring.popleft()
            self.base[old_stream] = old_position
            self.dropped = True
        ring.append(entry)
        self.positions[stream] = entry[2]

    def baseline(self, stream: str, position: Position) -> None:
        """A position the client has without an event (a ``subscribe`` reply)."""
        self.baselines[stream] = position
        if is_newer(position, self.positions.get(stream)):
            self.positions[stream] = position

    def resume(self, positions: dict[str, Position], entry: Entry | None) -> None:
        """Start from a recovery: the client's ``positions``, and the offset it recovered from (``entry``) still known."""
        self.positions = dict(positions)
        self.base = dict(positions)
        if entry is not None:
            self.ring.append(entry)

    def record(self, user_id: str, rooms: list[str]) -> RecoveryRecord:
        return RecoveryRecord(
            user_id=user_id,
            rooms=sorted(rooms),
            base=dict(self.base),
            baselines=dict(self.baselines),
            ring=[list(entry) for entry in self.ring],
            complete=not self.dropped,
            started_at=self.started_at.timestamp(),
        )


@attrs.frozen
class RecoveryRecord:
    """A disconnected session's positions, kept under its ``pid``.

    Attributes:
        user_id: whose session it was (another user's token recovers nothing).
        rooms: the app rooms it was subscribed to.
        base: per stream, the position before the ring's oldest entry.
        baselines: per room stream, the position of its last ``subscribe`` reply.
        ring: ``[offset, stream, position]`` of the last sends, oldest first.
        complete: the ring holds every send of the session (none fell out).
        started_at: wall time (Unix seconds) of the session's admission.
    """

    user_id: str
    rooms: list[str]
    base: dict[str, Position]
    baselines: dict[str, Position]
    ring: list[list[Any]]
    complete: bool
    started_at: float

    def as_of(self, offset: str | None) -> dict[str, Position] | None:
        """The client's positions at ``offset`` (None: the last event it had carried no offset).

        Streams absent from the answer were never seen by the client; a room
        without a publication up to the offset is at its ``subscribe`` reply.
        Returns None when the offset is not in the ring (too old, or forged), or
        when no offset is given but sends fell out of the ring.
        """
        ring = self.ring
        if offset is None:
            if not self.complete:
                return None
            end = 0
        else:
            index = self._index(offset)
            if index is None:
                return None
            end = index + 1
        positions = dict(self.base)
        for _, stream, position in ring[:end]:
            positions[stream] = position
        for stream, position in self.baselines.items():
            positions.setdefault(stream, position)
        return positions

    def _index(self, offset: str) -> int | None:
        ring = self.ring
        return next((i for i in range(len(ring) - 1, -1, -1) if ring[i][0] == offset), None)

    def entry(self, offset: str | None) -> Entry | None:
        """The ring entry of ``offset`` (None: not in the ring)."""
        index = None if offset is None else self._index(offset)
        if index is None:
            return None
        found, stream, position = self.ring[index]
        return str(found), str(stream), list(position)

    def dumps(self) -> bytes:
        return orjson.dumps(attrs.asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> RecoveryRecord | None:
        """The record, or None if ``raw`` is not one (a record of another version is not recovered)."""
        try:
            value = orjson.loads(raw)
            return cls(
                user_id=str(value["user_id"]),
                rooms=[str(r) for r in value["rooms"]],
                base={str(k): list(v) for k, v in value["base"].items()},
                baselines={str(k): list(v) for k, v in value["baselines"].items()},
                ring=[[str(e[0]), str(e[1]), list(e[2])] for e in value["ring"]],
                complete=bool(value["complete"]),
                started_at=float(value["started_at"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, orjson.JSONDecodeError):
            return None


class MemoryRecoveryStore:
    """``RecoveryStore`` in this process (tests)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[str, bytes, datetime]] = {}

    async def put_recovery(self, *, pid: str, user_id: str, record: bytes, expires_at: datetime, now: datetime) -> None:
        self.records = {k: v for k, v in self.records.items() if v[2] > now}
        self.records[pid] = (user_id, record, expires_at)

    async def take_recovery(self, *, pid: str, now: datetime) -> tuple[str, bytes] | None:
        found = self.records.pop(pid, None)
        if found is None or found[2] <= now:
            return None
        return found[0], found[1]
