"""The ephemeral state a recovered Socket.IO socket is sent again: presence, typing, receipts.

A recovery replays what has a position (``realtimed.socketio.replay``); typing,
presence and read receipts have none, so instead of replaying their events the
socket gets the current state, as the normal events (docs/protocol.md section 12):

- ``presence.updated`` for each of the user's contacts (``presence.query``'s
  shape), the first ``socketio.recovery_max_replay`` contacts by id;
- ``typing.updated`` (``typing: true``) for each member typing now in the
  user's most recently active conversations (the store's largest page, and no
  more than ``socketio.recovery_max_replay`` members asked about in all);
- ``receipt.updated`` for each member's read cursor in the conversations the
  socket knows (those it had events of, and those replayed).

Each is encoded as the router would (``room`` for the conversation's events), so
the Socket.IO door sends them with the same arguments as live ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from realtimed import protocol
from realtimed.chat import room_of
from realtimed.clock import iso
from realtimed.frames import Frame
from realtimed.store.base import ConversationRecord

if TYPE_CHECKING:
    from realtimed.chat import ChatService
    from realtimed.presence import PresenceService

__all__ = ["CurrentState"]

log = logging.getLogger(__name__)

# The store's largest page: conversations looked at for typing, users per presence read.
_PAGE: Final = 100


class CurrentState:
    """Reads the current presence, typing and receipts for a recovered socket.

    Args:
        presence: the presence service (contacts' states).
        chat: the chat service (typing states).
        store: conversations, members' read cursors, contacts.
        max_contacts: most contacts whose presence is sent, and most members whose typing
            state is read (``socketio.recovery_max_replay``).

    Error handling:
        ``frames`` raises what the store or a shared backend raises; the door logs
        it and sends the recovery without this state.
    """

    def __init__(self, *, presence: PresenceService, chat: ChatService, store: Any, max_contacts: int) -> None:
        self.presence = presence
        self.chat = chat
        self.store = store
        self.max_contacts = max_contacts

    async def frames(self, user_id: str, conversations: Iterable[str]) -> list[Frame]:
        """Presence, then typing, then receipts (``conversations``: those the socket knows)."""
        out: list[Frame] = []
        await self._presence(user_id, out)
        recent, _ = await self.store.list_conversations(user_id=user_id, limit=_PAGE)
        known: dict[str, ConversationRecord] = {conv.id: conv for conv in recent}
        checks = self.max_contacts  # members whose typing state is read, in all
        for conv in recent:
            checks -= len(conv.members) - 1
            if checks < 0:
                break  # the most recently active conversations only: each member is one read
            for uid in await self.chat.typing_now(conv, for_user=user_id):
                data = {"conversation_id": conv.id, "user_id": uid, "typing": True}
                out.append(_frame("typing.updated", data, conv.id))
        for cid in sorted(set(conversations)):
            conv = known.get(cid) or await self.store.get_conversation(cid)
            if conv is None or conv.member(user_id) is None:
                continue
            for member in conv.members:
                if member.read_at is None:
                    continue
                data = {"conversation_id": cid, "user_id": member.user_id, "read_seq": member.read_seq,
                        "read_at": iso(member.read_at)}
                out.append(_frame("receipt.updated", data, cid))
        return out

    async def _presence(self, user_id: str, out: list[Frame]) -> None:
        contacts = sorted(await self.store.contact_ids(user_id))[: self.max_contacts]
        for start in range(0, len(contacts), _PAGE):
            described = await self.presence.describe(contacts[start : start + _PAGE])
            for data in described.values():
                out.append(Frame(protocol.encode_event("presence.updated", data), "presence.updated"))


def _frame(event: str, data: dict[str, Any], conversation_id: str) -> Frame:
    room = room_of(conversation_id)
    return Frame(protocol.encode_event(event, data, room=room), event, room=room)
