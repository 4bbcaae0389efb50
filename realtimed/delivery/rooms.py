"""App-room namespaces, and room history with ``{seq, epoch}`` for recovery.

A namespace is the configured policy for the rooms whose names start with its
prefix (the longest matching prefix wins). Rooms that match no namespace are
private (the token's ``rooms`` claim decides), keep no history and no presence,
and take no client publications.

History is a ring buffer per room: at most ``history_size`` publications, none
older than ``history_ttl_s``. Each room's history has an epoch, a random string
chosen when the history starts; ``seq`` counts up from 1 within an epoch. When a
room's history is lost (it expired entirely, or the backend lost it), a new
epoch starts, so a client can never mistake a fresh ``seq`` for a continuation.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from realtimed.config import NamespaceConfig
from realtimed.protocol import json_fragment

DEFAULT_NAMESPACE: Final = NamespaceConfig(prefix="", public=False, client_publish=False, history_size=0)


class Namespaces:
    """Finds the namespace of a room (longest prefix first).

    Rooms under an address prefix (``device:``, those of ``auth.claim_rooms``)
    are in no namespace: private, without history or presence, and closed to
    client publications, whatever namespace would otherwise match.
    """

    def __init__(self, namespaces: Sequence[NamespaceConfig], *, addresses: Sequence[str] = ()) -> None:
        self._by_length = sorted(namespaces, key=lambda ns: len(ns.prefix), reverse=True)
        self.addresses = tuple(addresses)

    def is_address(self, room: str) -> bool:
        """Whether the room is an address (joined by the server at connect, never subscribed)."""
        return room.startswith(self.addresses)

    def of(self, room: str) -> NamespaceConfig:
        if room.startswith(self.addresses):
            return DEFAULT_NAMESPACE
        for ns in self._by_length:
            if room.startswith(ns.prefix):
                return ns
        return DEFAULT_NAMESPACE


@attrs.frozen
class Publication:
    """One kept publication; ``data`` is the encoded data as an ``orjson.Fragment``."""

    seq: int
    event: str
    data: Any
    published_at: str

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "event": self.event, "data": self.data, "published_at": self.published_at}


@attrs.frozen
class Recovery:
    """The answer to "what did I miss since ``{seq, epoch}``".

    ``recovered`` is True only with the complete list of missed publications
    (possibly empty); otherwise ``publications`` is empty: never a partial replay.
    """

    seq: int
    epoch: str
    recovered: bool
    publications: tuple[Publication, ...] = ()


class HistoryBackend(Protocol):
    """Room history.

    Promises:
        - ``append`` assigns the next ``seq`` of the room's current epoch atomically.
        - ``append`` encodes ``data`` before it takes a ``seq``: data that cannot be
          encoded raises ``ValidationFailed`` (field ``data``) and consumes no
          ``seq``. What is kept is the encoded data, and publications carry it as
          an ``orjson.Fragment``, so replaying them never fails to encode.
        - ``recover`` answers a complete, in-order replay, or ``recovered=False``
          when the position was trimmed, expired, is from another epoch, is ahead
          of the room, or more than ``cap`` publications were missed.
        - Publications expire after the namespace's ``history_ttl_s``; a room
          whose history expired entirely starts a new epoch on its next append.
    """

    async def append(self, room: str, ns: NamespaceConfig, event: str, data: Any, published_at: str) -> tuple[int, str]: ...

    async def recover(self, room: str, ns: NamespaceConfig, *, since_seq: int, since_epoch: str) -> Recovery: ...

    async def position(self, room: str, ns: NamespaceConfig) -> tuple[int, str]: ...

    async def read(self, room: str, ns: NamespaceConfig, *, since_seq: int, limit: int) -> tuple[int, str, list[Publication]]: ...


class _RoomHistory:
    __slots__ = ("entries", "epoch", "seq", "times")

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.entries: deque[Publication] = deque()
        self.times: deque[float] = deque()


class MemoryHistory:
    """History in process memory (see ``HistoryBackend`` for the promises).

    Time for expiry is ``trio.current_time()``, so tests drive it with MockClock.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _RoomHistory] = {}

    def _trim(self, room: str, ns: NamespaceConfig) -> _RoomHistory | None:
        history = self._rooms.get(room)
        if history is None:
            return None
        horizon = trio.current_time() - ns.history_ttl_s if ns.history_ttl_s > 0 else None
        while history.entries and (
            len(history.entries) > ns.history_size or (horizon is not None and history.times[0] < horizon)
        ):
            history.entries.popleft()
            history.times.popleft()
        # A room whose publications all expired keeps its position (so that a
        # subscriber's seq stays comparable) until gc() drops it; recover() treats
        # a trimmed position as unrecoverable.
        return history

    async def append(self, room: str, ns: NamespaceConfig, event: str, data: Any, published_at: str) -> tuple[int, str]:
        encoded = json_fragment(data)  # before the seq: an encode failure takes none
        history = self._trim(room, ns)
        if history is None:
            history = self._rooms[room] = _RoomHistory()
        history.seq += 1
        seq = history.seq  # this append's: others may append during the checkpoint below
        history.entries.append(Publication(seq, event, encoded, published_at))
        history.times.append(trio.current_time())
        self._trim(room, ns)
        await trio.lowlevel.checkpoint()
        return seq, history.epoch

    async def position(self, room: str, ns: NamespaceConfig) -> tuple[int, str]:
        history = self._trim(room, ns)
        if history is None:
            history = self._rooms[room] = _RoomHistory()
        await trio.lowlevel.checkpoint()
        return history.seq, history.epoch

    def _recover(self, room: str, ns: NamespaceConfig, *, since_seq: int, since_epoch: str) -> Recovery:
        history = self._trim(room, ns)
        if history is None:
            history = self._rooms[room] = _RoomHistory()
        seq, epoch = history.seq, history.epoch
        if since_epoch != epoch or since_seq > seq:
            return Recovery(seq, epoch, False)
        missed = seq - since_seq
        if missed == 0:
            return Recovery(seq, epoch, True)
        if missed > ns.recovery_cap:
            return Recovery(seq, epoch, False)
        if not history.entries or history.entries[0].seq > since_seq + 1:
            return Recovery(seq, epoch, False)
        start = since_seq + 1 - history.entries[0].seq
        pubs = tuple(history.entries[i] for i in range(start, len(history.entries)))
        return Recovery(seq, epoch, True, pubs)

    async def recover(self, room: str, ns: NamespaceConfig, *, since_seq: int, since_epoch: str) -> Recovery:
        await trio.lowlevel.checkpoint()
        return self._recover(room, ns, since_seq=since_seq, since_epoch=since_epoch)

    async def read(self, room: str, ns: NamespaceConfig, *, since_seq: int, limit: int) -> tuple[int, str, list[Publication]]:
        await trio.lowlevel.checkpoint()
        history = self._trim(room, ns)
        if history is None:
            return 0, "", []
        pubs = [p for p in history.entries if p.seq > since_seq][:limit]
        return history.seq, history.epoch, pubs

    def gc(self, namespaces: Namespaces) -> int:
        """Drop rooms whose publications have all expired; returns how many."""
        dropped = 0
        for room in list(self._rooms):
            history = self._trim(room, namespaces.of(room))
            if history is not None and not history.entries:
                del self._rooms[room]
                dropped += 1
        return dropped


class RoomPresenceBackend(Protocol):
    """Who is subscribed to a room ("who is viewing"), counted per user.

    Promises:
        - ``join`` and ``leave`` are atomic: of any number of concurrent calls for
          one user and room, on any node, exactly one ``join`` answers True for a
          first subscription and exactly one ``leave`` True for a last one.
        - ``members`` answers every user with at least one subscription, with
          their subscription counts.
        - A shared backend forgets the subscriptions of a node that died.
    """

    async def join(self, room: str, user_id: str) -> bool: ...

    async def leave(self, room: str, user_id: str) -> bool: ...

    async def leave_many(self, rooms: Sequence[str], user_id: str) -> list[str]:
        """``leave`` of each room (distinct rooms), as one atomic call: the rooms of which
        that was the user's last subscription anywhere."""
        ...

    async def members(self, room: str) -> dict[str, int]: ...


class MemoryRoomPresence:
    """Room presence of one node in process memory (see ``RoomPresenceBackend``)."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, int]] = {}

    async def join(self, room: str, user_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        counts = self._rooms.setdefault(room, {})
        counts[user_id] = counts.get(user_id, 0) + 1
        return counts[user_id] == 1

    async def leave(self, room: str, user_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        counts = self._rooms.get(room)
        if counts is None or user_id not in counts:
            return True
        counts[user_id] -= 1
        if counts[user_id] > 0:
            return False
        del counts[user_id]
        if not counts:
            del self._rooms[room]
        return True

    async def leave_many(self, rooms: Sequence[str], user_id: str) -> list[str]:
        return [room for room in rooms if await self.leave(room, user_id)]

    async def members(self, room: str) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return dict(self._rooms.get(room, {}))
