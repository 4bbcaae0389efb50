"""What a Socket.IO recovery replays: every stream's events after the client's positions, or nothing.

``Replay.collect`` re-subscribes the recorded rooms with ``since`` (the native
``subscribe`` recovery, so the room rules and the namespace's ``recovery_cap``
apply), and reads from the store the conversations' changes after their
``version`` and the inbox after its ``seq``, as the native backfill does
(docs/protocol.md section 10). Streams the session never saw are read from its
admission time: messages and notifications created since. If any stream cannot
be replayed completely (a room's history trimmed or its epoch changed, a room
without history, a conversation the user no longer belongs to, more than
``socketio.recovery_max_replay`` events), ``collect`` returns None and
unsubscribes the rooms it subscribed: nothing is replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from realtimed import protocol
from realtimed.api.ops import Caller, OpRegistry
from realtimed.chat import room_of
from realtimed.delivery.router import Router
from realtimed.errors import ApiError
from realtimed.frames import Frame
from realtimed.gateway.client import ClientSession
from realtimed.socketio.recovery import CONVERSATION_PREFIX, Position, RecoveryRecord
from realtimed.store.base import ChatStore, InboxStore, MessageRecord

__all__ = ["Replay"]

log = logging.getLogger(__name__)

# The store's largest page.
_PAGE = 100


class _TooMuch(Exception):
    """A stream cannot be replayed completely."""


class Replay:
    """Collects a recovery's replay (see the module docstring).

    Args:
        ops: the op registry (``subscribe`` runs through it, with its rules).
        router: for unsubscribing when nothing is replayed.
        store: conversations and the inbox.
        max_events: ``socketio.recovery_max_replay``.
    """

    def __init__(self, *, ops: OpRegistry, router: Router, store: ChatStore | InboxStore, max_events: int) -> None:
        self.ops = ops
        self.router = router
        self.store: Any = store
        self.max_events = max_events
        self._count = 0

    def _take(self, n: int) -> None:
        self._count += n
        if self._count > self.max_events:
            raise _TooMuch(f"more than {self.max_events} events to replay")

    async def collect(
        self, session: ClientSession, caller: Caller, record: RecoveryRecord, positions: dict[str, Position]
    ) -> tuple[list[Frame], list[Callable[[], Awaitable[None]]]] | None:
        """The frames to replay and the subscribes' after-reply steps, or None (nothing recovered)."""
        frames: list[Frame] = []
        subscribed: list[str] = []
        try:
            for room in record.rooms:
                await self._room(caller, room, positions.get("r:" + room), frames, subscribed)
            since = datetime.fromtimestamp(record.started_at, UTC)
            seen = {stream[2:] for stream in positions if stream.startswith("c:")}
            for cid in sorted(seen):
                await self._conversation(session.user_id, cid, positions["c:" + cid], frames)
            await self._unseen_conversations(session.user_id, seen, since, frames)
            await self._inbox(session.user_id, positions.get("i"), since, frames)
        except Exception as exc:
            if isinstance(exc, (_TooMuch, ApiError)):
                log.info("session %s: not recovered: %s", session.id, exc)
            else:
                log.exception("session %s: not recovered: the replay failed", session.id)
            for room in subscribed:
                await self.router.unsubscribe(session, room)
            return None
        return frames, caller.after_reply

    async def _room(
        self, caller: Caller, room: str, position: Position | None, frames: list[Frame], subscribed: list[str]
    ) -> None:
        if position is None:
            raise _TooMuch(f"room {room} has no position (no history)")
        reply = await self.ops.run(caller, "subscribe", {"room": room, "since": {"seq": position[0], "epoch": position[1]}})
        subscribed.append(room)
        if not reply.get("recovered"):
            raise _TooMuch(f"room {room} cannot be recovered from seq {position[0]}")
        epoch = reply["epoch"]
        publications = reply["publications"]
        self._take(len(publications))
        for pub in publications:
            seq, event = pub["seq"], pub["event"]
            frames.append(
                Frame(protocol.encode_event(event, pub["data"], room=room, seq=seq, epoch=epoch), event,
                      room=room, seq=seq, epoch=epoch)
            )

    async def _member(self, user_id: str, cid: str) -> None:
        member = await self.store.get_member(cid, user_id)
        if member is None or member.left_at is not None:
            raise _TooMuch(f"user {user_id} is no longer in conversation {cid}")

    async def _conversation(self, user_id: str, cid: str, position: Position, frames: list[Frame]) -> None:
        await self._member(user_id, cid)
        version, last_seq = int(position[0]), int(position[2])
        while True:
            page = await self.store.message_history(conversation_id=cid, changed_since=version, limit=_PAGE)
            self._take(len(page.messages))
            for message in page.messages:
                frames.append(_message_frame(message, new=message.seq > last_seq))
                version = max(version, message.version)
            if not page.has_more or not page.messages:
                return

    async def _unseen_conversations(self, user_id: str, seen: set[str], since: datetime, frames: list[Frame]) -> None:
        cursor: str | None = None
        while True:
            convs, cursor = await self.store.list_conversations(user_id=user_id, cursor=cursor, limit=_PAGE)
            for conv in convs:
                last = conv.last_message
                member = conv.member(user_id)
                activity = max(
                    last.created_at if last is not None else conv.created_at,
                    member.joined_at if member is not None else conv.created_at,
                )
                if activity <= since:
                    return  # newest activity first: the rest is older
                if conv.id in seen or last is None or last.created_at <= since:
                    continue
                page = await self.store.message_history(conversation_id=conv.id, limit=_PAGE)
                missed = [m for m in page.messages if m.created_at > since]
                if page.has_more and len(missed) == len(page.messages):
                    raise _TooMuch(f"conversation {conv.id}: too many messages to replay")
                self._take(len(missed))
                frames.extend(_message_frame(m, new=True) for m in missed)
            if cursor is None:
                return

    async def _inbox(self, user_id: str, position: Position | None, since: datetime, frames: list[Frame]) -> None:
        if position is not None:
            after = int(position[0])
            while True:
                records, cursor = await self.store.list_notifications(user_id=user_id, after_seq=after, limit=_PAGE)
                self._take(len(records))
                frames.extend(_notification_frame(r) for r in records)
                if cursor is None or not records:
                    return
                after = records[-1].seq
        records, cursor = await self.store.list_notifications(user_id=user_id, limit=_PAGE)
        missed = [r for r in records if r.created_at > since]
        if cursor is not None and len(missed) == len(records):
            raise _TooMuch("too many notifications to replay")
        self._take(len(missed))
        frames.extend(_notification_frame(r) for r in sorted(missed, key=lambda r: r.seq))


def _message_frame(message: MessageRecord, *, new: bool) -> Frame:
    event = "message.new" if new else "message.deleted" if message.deleted else "message.updated"
    room = room_of(message.conversation_id)
    seq = message.seq if new else None
    return Frame(protocol.encode_event(event, {"message": message.to_wire()}, room=room, seq=seq), event, room=room, seq=seq)


def _notification_frame(record: Any) -> Frame:
    return Frame(
        protocol.encode_event("notification.new", {"notification": record.to_wire()}, seq=record.seq),
        "notification.new",
        seq=record.seq,
    )


assert room_of("") == CONVERSATION_PREFIX
