"""Chat: conversations, messages, receipts, typing, unread counts and blocks.

The ops of docs/protocol.md section 5 (``conversation.*``, ``message.*``,
``typing.*``, ``user.block``, ``user.unblock``), the server API routes of section
8 for conversations, messages, contacts and blocks, and the client REST routes
that mirror the ops for apps that fetch over HTTP.

Events (section 6) go to the participants' user ids, with the top-level room
``conversation:<id>``:

- ``message.new`` (top-level ``seq``), ``message.updated``, ``message.deleted``
  and ``receipt.updated`` to every device of every participant, the sender's
  included;
- ``typing.updated`` to every device of the other participants;
- ``conversation.updated`` (shared fields) when a conversation is created, its
  title or members change, or a member leaves a group;
- ``conversation.state`` (one member's ``read_seq``, ``unread_count``, ``muted``
  and ``unread_total``) to that member's devices when their own state changes
  other than by a new message: a read (on any device), a mute, leaving, a
  deleted message they had not read. A ``message.new`` from someone else after
  the member's ``read_seq`` adds one to the unread count by itself, so it is not
  followed by a ``conversation.state``.

``message.send`` answers once the message is committed; in the same transaction,
when some recipients have no connected device and have not muted the
conversation, a ``chat.offline`` job is queued for them (its payload, ``ChatOffline``,
is defined with the kind in ``realtimed.notify.jobs``; the store adds
``message_id`` and ``seq``). The events follow the reply.

A user who left a direct conversation only hid it: they stay a participant
(they may read its history and send to it, which shows it again to both).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio
from prometheus_client import Counter
from quart import g

from realtimed import metrics, protocol
from realtimed.api.ops import Caller, OpHandler
from realtimed.api.routes import (
    Choice,
    Empty,
    Kind,
    OpCall,
    OpData,
    OpInput,
    OpReply,
    Raw,
    RequestParts,
    Route,
    Schema,
    Text,
    UserId,
    out,
    query_int,
    query_text,
    route,
    services,
    wire,
)
from realtimed.clock import WallClock, iso
from realtimed.config import ChatConfig, Config
from realtimed.deadlines import Deadlines
from realtimed.errors import (
    ApiError,
    Blocked,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from realtimed.live import Live
from realtimed.notify.jobs import CHAT_OFFLINE, CHAT_OFFLINE_QUEUE, ChatOffline, offline_job_spec
from realtimed.protocol import (
    ConversationCreate,
    ConversationLeave,
    ConversationList,
    ConversationMute,
    ConversationOpen,
    JsonSchema,
    MessageDelete,
    MessageEdit,
    MessageHistory,
    MessageRead,
    MessageSend,
    TypingStart,
    TypingStop,
    UserBlock,
    UserUnblock,
)
from realtimed.store.base import ConversationRecord, JobSpec, MemberRecord, MessageRecord
from realtimed.typing_state import MemoryTyping, TypingBackend

if TYPE_CHECKING:
    from realtimed.delivery.router import Router
    from realtimed.presence import PresenceService
    from realtimed.store.base import Store

#: ``(event, data)`` → the webhook deliveries to queue with the write (``WebhookService.specs``).
WebhookSpecs = Callable[[str, Mapping[str, Any]], list[JobSpec]]

__all__ = ["ROOM_PREFIX", "ChatService"]

log = logging.getLogger(__name__)

ROOM_PREFIX: Final = "conversation:"
SERVER_MESSAGE_TYPES: Final = ("text", "image", "file", "system")
MAX_CONTACTS: Final = 10_000
# The senders of this many of the newest messages are searched for the other
# member of a direct conversation who hid it (the store names current members only).
_DIRECT_SEARCH: Final = 100
_PAIRS_KEPT: Final = 100_000
_CACHE_KEPT: Final = 100_000
# How long a block check is remembered. Blocks made through this node apply at
# once; through another node of a cluster, within this long.
_BLOCK_CACHE_S: Final = 10.0

MESSAGES: Final = Counter(
    "realtimed_chat_messages", "messages stored, by door", ["door"], registry=metrics.REGISTRY
)
TYPING_EVENTS: Final = Counter("realtimed_chat_typing_events", "typing.updated fan-outs", registry=metrics.REGISTRY)


def room_of(conversation_id: str) -> str:
    return ROOM_PREFIX + conversation_id


class _Device(Protocol):
    """What chat needs of a closed session."""

    @property
    def user_id(self) -> str: ...


@attrs.define(eq=False)
class _Typing:
    deadline: float
    recipients: tuple[str, ...]


class ChatService:
    """Conversations and messages for every door (see the module docstring).

    Args:
        config: the configuration in force (``[chat]`` is read at each use).
        store: conversations, messages, receipts, blocks.
        router: delivers the events.
        clock: wall time.
        presence: touched by every chat op (a chat op brings an away user back).
        typing: typing states and budgets (in-process by default; shared in a cluster).

    Resource handling:
        ``run`` owns one task: the node-wide typing timer, a heap of deadlines
        that ends each typing state ``chat.typing_timeout_s`` after its last
        refresh (on any node: the typing backend is shared in a cluster).
        Everything else runs in the caller's task (a socket's reader, an HTTP
        request).

    Error handling:
        Refusals are ``ApiError``s raised before anything is stored (membership,
        blocks, the open policy, validation). Once a write is committed, a
        broker that cannot be reached only loses the other nodes' copy of the
        events (logged); the reply still says what was stored.
    """

    def __init__(
        self,
        config: Live[Config],
        *,
        store: Store,
        router: Router,
        clock: WallClock,
        presence: PresenceService | None = None,
        typing: TypingBackend | None = None,
        webhook_specs: WebhookSpecs | None = None,
    ) -> None:
        self._config = config
        # The webhook deliveries of an event, queued in its store write's transaction.
        self._webhook_specs = webhook_specs
        self._store = store
        self._router = router
        self._clock = clock
        self._presence = presence
        self._typing_state: TypingBackend = typing or MemoryTyping()
        # The typing states this node started or refreshed, each with its timer.
        self._typing: dict[tuple[str, str], _Typing] = {}
        self._typing_of_user: dict[str, set[str]] = {}
        # (user, conversation) timers; a state refreshed since its timer was set is pushed again.
        self._typing_timers: Deadlines[tuple[str, str]] = Deadlines()
        # Direct conversation id -> its two members, for when one of them hid it.
        self._pairs: dict[str, tuple[str, str]] = {}
        # (user, blocker) -> (trio time it expires, blocked?)
        self._blocks: dict[tuple[str, str], tuple[float, bool]] = {}
        #: messages stored through this node (what ``realtimed_chat_messages`` counts), a plain count for rates
        self.messages_stored = 0

    # -- service -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ChatService] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._typing_timer)
            task_status.started(self)

    def ops(self) -> dict[str, OpHandler]:
        """The chat ops, for the daemon to add to the op registry (the session hook
        is ``on_disconnect``, which ends typing with the last device, wired by the
        daemon; ``unread_total`` of ``session.ready`` is read at admission,
        ``Store.session_start``)."""
        handlers: dict[str, Callable[[Caller, Any], Awaitable[dict[str, Any]]]] = {
            "conversation.open": self.op_open,
            "conversation.create": self.op_create,
            "conversation.list": self.op_list,
            "conversation.mute": self.op_mute,
            "conversation.leave": self.op_leave,
            "message.send": self.op_send,
            "message.edit": self.op_edit,
            "message.delete": self.op_delete,
            "message.history": self.op_history,
            "message.read": self.op_read,
            "typing.start": self.op_typing_start,
            "typing.stop": self.op_typing_stop,
            "user.block": self.op_block,
            "user.unblock": self.op_unblock,
        }
        return {op: self._touching(handler) for op, handler in handlers.items()}

    def _touching(self, handler: Callable[[Caller, Any], Awaitable[dict[str, Any]]]) -> OpHandler:
        async def run(caller: Caller, value: Any) -> dict[str, Any]:
            presence = self._presence
            if presence is not None:
                presence.touch(caller.user_id)
            return await handler(caller, value)

        return run

    @property
    def _cfg(self) -> ChatConfig:
        return self._config.value.chat

    # -- hooks ---------------------------------------------------------------------------------

    async def on_disconnect(self, session: _Device) -> None:
        """The user's last device on this node closed: their typing ends."""
        uid = session.user_id
        if self._router.user_sessions(uid):
            return
        for cid in list(self._typing_of_user.get(uid, ())):
            # Only a state this node refreshed last: the user may go on typing elsewhere.
            await self._stop_typing(uid, cid, node_only=True)

    # -- helpers -------------------------------------------------------------------------------

    async def _emit(
        self,
        user_ids: Iterable[str],
        event: str,
        data: Any,
        *,
        conversation_id: str,
        seq: int | None = None,
        exclude_users: frozenset[str] = frozenset(),
    ) -> None:
        try:
            await self._router.to_users(
                user_ids, event, data, room=room_of(conversation_id), seq=seq, exclude_users=exclude_users
            )
        except Unavailable as exc:
            log.warning("conversation %s: %s reached this node only: %s", conversation_id, event, exc.message)

    async def _conversation(self, conversation_id: str) -> ConversationRecord:
        conv = await self._store.get_conversation(conversation_id)
        if conv is None:
            raise NotFound("no such conversation")
        return conv

    async def participant(self, conversation_id: str, user_id: str) -> tuple[ConversationRecord, MemberRecord]:
        """The conversation and the user's membership; FORBIDDEN for a non-participant.

        A member who hid a direct conversation (left it) is still a participant;
        their ``MemberRecord`` then has ``left_at`` set.
        """
        conv = await self._conversation(conversation_id)
        self._remember_pair(conv)
        me = conv.member(user_id)
        if me is None and conv.type == "direct":
            me = await self._store.get_member(conversation_id, user_id)
        if me is None:
            raise Forbidden("not a participant of this conversation")
        return conv, me

    def _remember_pair(self, conv: ConversationRecord) -> None:
        if conv.type == "direct" and len(conv.members) == 2 and conv.id not in self._pairs:
            first, second = conv.members
            self._keep_pair(conv.id, first.user_id, second.user_id)

    def _keep_pair(self, conversation_id: str, first: str, second: str) -> None:
        """Remember a direct conversation's members (they never change), the oldest forgotten first."""
        if len(self._pairs) >= _PAIRS_KEPT:
            del self._pairs[next(iter(self._pairs))]
        self._pairs[conversation_id] = (first, second)

    async def _direct_other(self, conv: ConversationRecord, user_id: str) -> MemberRecord | None:
        """The other member of a direct conversation, also when they hid it.

        The store names current members only, so a member who hid the
        conversation is found in the pairs this node has seen, or among the
        senders of its newest messages; None when neither knows them.
        """
        for member in conv.members:
            if member.user_id != user_id:
                return member
        candidates = [uid for uid in self._pairs.get(conv.id, ()) if uid != user_id]
        if not candidates:
            page = await self._store.message_history(conversation_id=conv.id, limit=_DIRECT_SEARCH)
            candidates = [uid for uid in dict.fromkeys(m.sender_id for m in reversed(page.messages)) if uid != user_id]
        for uid in candidates:
            found = await self._store.get_member(conv.id, uid)
            if found is not None:
                return found
        return None

    async def _send_state(self, user_id: str, conversation_id: str, *, read_seq: int, unread_count: int, muted: bool) -> None:
        total = await self._store.unread_total(user_id)
        data = {
            "conversation_id": conversation_id,
            "read_seq": read_seq,
            "unread_count": unread_count,
            "muted": muted,
            "unread_total": total,
        }
        await self._emit([user_id], "conversation.state", data, conversation_id=conversation_id)

    async def _updated(self, conv: ConversationRecord, user_ids: Iterable[str] | None = None) -> None:
        """``conversation.updated`` with the shared fields (to its members unless told)."""
        targets = conv.member_ids if user_ids is None else user_ids
        await self._emit(targets, "conversation.updated", {"conversation": conv.to_wire()}, conversation_id=conv.id)

    def _check_group_size(self, count: int, field: str) -> None:
        most = self._cfg.max_group_members
        if count > most:
            raise ValidationFailed(field, f"a group has at most {most} members")

    # -- conversations -------------------------------------------------------------------------

    async def open_direct(self, user_id: str, other_id: str) -> ConversationRecord:
        """Find or create the 1:1 conversation, following blocks and ``chat.open_policy``."""
        if other_id == user_id:
            raise ValidationFailed("user_id", "cannot open a conversation with yourself")
        store = self._store
        if await self._blocked(user_id, by=other_id):
            raise Blocked("this user does not accept messages from you")
        if self._cfg.open_policy == "contacts" and not await store.is_contact(user_id, other_id):
            raise Forbidden("you may open conversations with your contacts only")
        conv, created = await store.open_direct(user_id=user_id, other_id=other_id, now=self._clock.now())
        self._remember_pair(conv)
        if created:
            await self._updated(conv)
        return conv

    async def op_open(self, caller: Caller, value: ConversationOpen) -> dict[str, Any]:
        conv = await self.open_direct(caller.user_id, value.user_id)
        return {"conversation": conv.to_wire(for_user=caller.user_id)}

    async def op_create(self, caller: Caller, value: ConversationCreate) -> dict[str, Any]:
        uid = caller.user_id
        others = [m for m in value.member_ids if m != uid]
        if not others:
            raise ValidationFailed("member_ids", "must name at least one user other than you")
        self._check_group_size(len(others) + 1, "member_ids")
        store = self._store
        contacts_only = self._cfg.open_policy == "contacts"
        for other in others:
            if await self._blocked(uid, by=other):
                raise Blocked(f"{other} does not accept messages from you")
            if contacts_only and not await store.is_contact(uid, other):
                raise Forbidden(f"{other} is not one of your contacts")
        conv = await store.create_group(
            member_ids=others, now=self._clock.now(), title=value.title or None, owner_id=uid
        )
        await self._updated(conv)
        return {"conversation": conv.to_wire(for_user=uid)}

    async def op_list(self, caller: Caller, value: ConversationList) -> dict[str, Any]:
        uid = caller.user_id
        convs, next_cursor = await self._store.list_conversations(user_id=uid, cursor=value.cursor, limit=value.limit)
        total = await self._store.unread_total(uid)
        for conv in convs:
            self._remember_pair(conv)
        return {
            "conversations": [c.to_wire(for_user=uid) for c in convs],
            "next_cursor": next_cursor,
            "unread_total": total,
        }

    async def conversation_for(self, user_id: str, conversation_id: str) -> dict[str, Any]:
        """One conversation as its participant sees it (``GET /api/v1/conversations/{id}``)."""
        conv, me = await self.participant(conversation_id, user_id)
        wire = conv.to_wire(for_user=user_id)
        if me.left_at is not None:  # hidden: the member's own state is not in the record
            wire.update(unread_count=0, muted=me.muted, read_seq=me.read_seq)
        return {"conversation": wire}

    async def op_mute(self, caller: Caller, value: ConversationMute) -> dict[str, Any]:
        uid = caller.user_id
        _, me = await self.participant(value.conversation_id, uid)
        if me.left_at is not None:
            raise Forbidden("you left this conversation: open it again first")
        member = await self._store.set_muted(conversation_id=value.conversation_id, user_id=uid, muted=value.muted)
        cid = value.conversation_id

        async def state() -> None:
            await self._send_state(uid, cid, read_seq=member.read_seq, unread_count=member.unread_count, muted=member.muted)

        caller.after_reply.append(state)
        return {}

    async def op_leave(self, caller: Caller, value: ConversationLeave) -> dict[str, Any]:
        uid = caller.user_id
        cid = value.conversation_id
        before, me = await self.participant(cid, uid)
        if me.left_at is not None:
            return {}
        after = await self._store.leave_conversation(conversation_id=cid, user_id=uid, now=self._clock.now())
        caller.after_reply.append(lambda: self._after_leave(before, after, uid))
        return {}

    async def _after_leave(self, before: ConversationRecord, after: ConversationRecord, user_id: str) -> None:
        # Hiding a direct conversation is the leaver's own business: only their devices hear of it.
        await self._updated(after, before.member_ids if before.type == "group" else [user_id])
        member = await self._store.get_member(before.id, user_id)
        if member is not None:
            await self._send_state(user_id, before.id, read_seq=member.read_seq, unread_count=0, muted=member.muted)
        if (user_id, before.id) in self._typing or self._typing_state.shared:
            await self._stop_typing(user_id, before.id)

    # -- messages ------------------------------------------------------------------------------

    async def append(
        self,
        conversation_id: str,
        *,
        sender_id: str,
        client_id: str,
        body: str,
        type: str = "text",
        media_url: str | None = None,
        reply_to: str | None = None,
        check_blocks: bool = True,
        require_member: bool = True,
        conv: ConversationRecord | None = None,
    ) -> tuple[MessageRecord, bool, list[str]]:
        """Store a message (with its ``chat.offline`` job); returns it, whether it
        is new, and the participants to tell.

        A direct conversation whose two members this node knows needs no read
        before the append (its members never change); others are read, unless
        the caller already did (``conv``).

        Raises:
            Forbidden: the sender is not a participant (and ``require_member``).
            Blocked: ``check_blocks`` and the other member of a direct
                conversation has blocked the sender.
            ValidationFailed: ``reply_to`` is not a message of this conversation.
            NotFound, Conflict: from the store.
        """
        store = self._store
        cid = conversation_id
        pair = self._pairs.get(cid)
        if pair is None and conv is None:
            conv = await self._conversation(cid)
            self._remember_pair(conv)
            pair = self._pairs.get(cid)
        if reply_to is not None:
            target = await store.get_message(reply_to)
            if target is None or target.conversation_id != cid:
                raise ValidationFailed("reply_to", "is not a message of this conversation")
        router = self._router
        unknown_other = False
        candidates: list[str] = []  # recipients with no device here, if they have not muted
        if pair is not None:
            if sender_id not in pair and require_member:
                raise Forbidden("not a participant of this conversation")
            participants = list(pair)
            others = [uid for uid in pair if uid != sender_id]
            if check_blocks:
                for other_id in others:
                    if await self._blocked(sender_id, by=other_id):
                        raise Blocked("this user does not accept messages from you")
            for uid in others:
                if not router.user_sessions(uid):
                    member = conv.member(uid) if conv is not None else None
                    if member is None:
                        member = await store.get_member(cid, uid)
                    if member is not None and not member.muted:
                        candidates.append(uid)
        else:
            assert conv is not None
            members = {m.user_id: m for m in conv.members}
            if conv.type == "direct":  # one member hid it, and this node does not know them
                other = await self._direct_other(conv, sender_id)
                if other is None:
                    unknown_other = True
                else:
                    members.setdefault(other.user_id, other)
                    if check_blocks and await self._blocked(sender_id, by=other.user_id):
                        raise Blocked("this user does not accept messages from you")
            if sender_id not in members and require_member and conv.type != "direct":
                raise Forbidden("not a participant of this conversation")
            participants = [*members]
            if sender_id not in members and conv.type == "direct":
                participants.append(sender_id)
            candidates = [
                uid
                for uid, member in members.items()
                if uid != sender_id and not member.muted and not router.user_sessions(uid)
            ]
        jobs = (
            [
                offline_job_spec(
                    conversation_id=cid,
                    sender_id=sender_id,
                    recipients=candidates,
                    dedupe_key=f"{CHAT_OFFLINE.kind}:{cid}:{sender_id}:{client_id}",
                )
            ]
            if candidates
            else []
        )
        if self._webhook_specs is not None:
            jobs += self._webhook_specs(
                "message.new",
                {
                    "conversation_id": cid, "sender_id": sender_id, "client_id": client_id, "type": type,
                    "body": body, "media_url": media_url, "reply_to": reply_to,
                },
            )
            if candidates:
                jobs += self._webhook_specs(
                    "message.unread_offline",
                    {"conversation_id": cid, "sender_id": sender_id, "recipients": list(candidates)},
                )
        message, created = await store.append_message(
            conversation_id=cid,
            sender_id=sender_id,
            client_id=client_id,
            body=body,
            now=self._clock.now(),
            type=type,
            media_url=media_url,
            reply_to=reply_to,
            require_member=require_member,
            jobs=jobs,
        )
        if created and unknown_other:
            assert conv is not None
            participants = await self._after_unknown_other(message, conv)
        elif pair is None and conv is not None and conv.type == "direct" and require_member and len(participants) == 2:
            # The append proved the sender a member: remember the pair, hidden member included.
            self._keep_pair(cid, participants[0], participants[1])
        return message, created, participants

    async def _blocked(self, user_id: str, *, by: str) -> bool:
        """``store.is_blocked``, remembered for ``_BLOCK_CACHE_S``; blocks and
        unblocks through this node take effect here at once."""
        key = (user_id, by)
        now = trio.current_time()
        cached = self._blocks.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        blocked: bool = await self._store.is_blocked(user_id=user_id, by=by)
        if len(self._blocks) >= _CACHE_KEPT:
            self._blocks = {k: v for k, v in self._blocks.items() if v[0] > now}
            if len(self._blocks) >= _CACHE_KEPT:
                self._blocks.clear()
        self._blocks[key] = (now + _BLOCK_CACHE_S, blocked)
        return blocked

    def forget_block(self, user_id: str, *, by: str) -> None:
        self._blocks.pop((user_id, by), None)

    async def _after_unknown_other(self, message: MessageRecord, conv: ConversationRecord) -> list[str]:
        """The append showed a direct conversation again to a member that neither
        the store's current members nor this node knew: now they are current.
        Their ``chat.offline`` job is queued after the message (the one case where
        it is not in the same transaction; its dedupe key keeps it single)."""
        after = await self._store.get_conversation(conv.id)
        if after is None:
            return [m.user_id for m in conv.members]
        self._remember_pair(after)
        sender = message.sender_id
        offline = [
            m.user_id
            for m in after.members
            if m.user_id != sender and not m.muted and not self._router.user_sessions(m.user_id)
        ]
        if offline:
            payload = ChatOffline(
                message_id=message.id,
                recipients=tuple(offline),
                seq=message.seq,
                conversation_id=conv.id,
                sender_id=sender,
            )
            await self._store.enqueue_job(
                queue=CHAT_OFFLINE_QUEUE,
                kind=CHAT_OFFLINE.kind,
                payload=CHAT_OFFLINE.encode(payload),
                now=self._clock.now(),
                dedupe_key=f"{CHAT_OFFLINE.kind}:{conv.id}:{sender}:{message.client_id}",
            )
            # Decided after the append here (the member was unknown then), so queued after it too.
            specs = self._webhook_specs(
                "message.unread_offline",
                {"conversation_id": conv.id, "sender_id": sender, "recipients": offline,
                 "message_id": message.id, "seq": message.seq},
            ) if self._webhook_specs is not None else []
            for spec in specs:
                await self._store.enqueue_job(
                    queue=spec.queue, kind=spec.kind, payload=spec.payload, now=self._clock.now(),
                    max_attempts=spec.max_attempts,
                )
        log.info("conversation %s: message %s showed it again to a member this node did not know", conv.id, message.id)
        return after.member_ids

    async def announce(self, message: MessageRecord, participants: list[str]) -> None:
        """``message.new`` to every device of every participant; the sender's typing ends."""
        cid = message.conversation_id
        await self._emit(participants, "message.new", {"message": message.to_wire()}, conversation_id=cid, seq=message.seq)
        if (message.sender_id, cid) in self._typing or self._typing_state.shared:
            await self._stop_typing(message.sender_id, cid)

    async def op_send(self, caller: Caller, value: MessageSend) -> dict[str, Any]:
        uid = caller.user_id
        conv: ConversationRecord | None = None
        pair = self._pairs.get(value.conversation_id)
        if pair is None:
            conv, _ = await self.participant(value.conversation_id, uid)
        elif uid not in pair:
            raise Forbidden("not a participant of this conversation")
        message, created, participants = await self.append(
            value.conversation_id,
            conv=conv,
            sender_id=uid,
            client_id=value.client_id,
            body=value.body,
            type=value.type,
            media_url=value.media_url,
            reply_to=value.reply_to,
        )
        if created:
            MESSAGES.labels("client").inc()
            self.messages_stored += 1
            caller.after_reply.append(lambda: self.announce(message, participants))
        return {"message": message.to_wire()}

    async def _own_message(self, message_id: str, user_id: str) -> tuple[MessageRecord, ConversationRecord]:
        message = await self._store.get_message(message_id)
        if message is None:
            raise NotFound("no such message")
        conv, _ = await self.participant(message.conversation_id, user_id)
        if message.sender_id != user_id:
            raise Forbidden("only the sender may change a message")
        return message, conv

    def _participants(self, conv: ConversationRecord, user_id: str) -> list[str]:
        ids = conv.member_ids
        return ids if user_id in ids else [*ids, user_id]

    async def op_edit(self, caller: Caller, value: MessageEdit) -> dict[str, Any]:
        uid = caller.user_id
        message, conv = await self._own_message(value.message_id, uid)
        if message.deleted:
            raise Conflict("the message is deleted")
        if not value.body and not message.media_url:
            raise ValidationFailed("body", "must not be empty (the message has no media_url)")
        edited = await self._store.edit_message(
            message_id=message.id, body=value.body, now=self._clock.now(), sender_id=uid
        )
        wire = edited.to_wire()
        targets = self._participants(conv, uid)

        async def updated() -> None:
            await self._emit(targets, "message.updated", {"message": wire}, conversation_id=conv.id)

        caller.after_reply.append(updated)
        return {"message": wire}

    async def op_delete(self, caller: Caller, value: MessageDelete) -> dict[str, Any]:
        uid = caller.user_id
        message, conv = await self._own_message(value.message_id, uid)
        deleted, changed = await self._store.delete_message(
            message_id=message.id, now=self._clock.now(), sender_id=uid
        )
        if changed:
            caller.after_reply.append(lambda: self._after_delete(conv, deleted, uid))
        return {}

    async def _after_delete(self, before: ConversationRecord, message: MessageRecord, user_id: str) -> None:
        cid = before.id
        await self._emit(
            self._participants(before, user_id), "message.deleted", {"message": message.to_wire()}, conversation_id=cid
        )
        # Members who had not read it have one unread less.
        affected = [
            m.user_id
            for m in before.members
            if m.user_id != message.sender_id and m.read_seq < message.seq and m.unread_count > 0
        ]
        if not affected:
            return
        after = await self._store.get_conversation(cid)
        if after is None:
            return
        for uid in affected:
            member = after.member(uid)
            if member is not None:
                await self._send_state(
                    uid, cid, read_seq=member.read_seq, unread_count=member.unread_count, muted=member.muted
                )

    async def op_history(self, caller: Caller, value: MessageHistory) -> dict[str, Any]:
        await self.participant(value.conversation_id, caller.user_id)
        page = await self._store.message_history(
            conversation_id=value.conversation_id,
            before_seq=value.before_seq,
            after_seq=value.after_seq,
            changed_since=value.changed_since,
            limit=value.limit,
        )
        return {"messages": [m.to_wire() for m in page.messages], "has_more": page.has_more, "version": page.version}

    async def op_read(self, caller: Caller, value: MessageRead) -> dict[str, Any]:
        uid = caller.user_id
        cid = value.conversation_id
        conv, me = await self.participant(cid, uid)
        if me.left_at is not None:  # hidden: leaving read everything up to then
            return {"read_seq": me.read_seq}
        state = await self._store.mark_read(conversation_id=cid, user_id=uid, seq=value.seq, now=self._clock.now())
        if state.moved:
            receipt = {
                "conversation_id": cid,
                "user_id": uid,
                "read_seq": state.read_seq,
                "read_at": iso(state.read_at),
            }
            targets = self._participants(conv, uid)

            async def receipts() -> None:
                await self._emit(targets, "receipt.updated", receipt, conversation_id=cid)
                await self._send_state(
                    uid, cid, read_seq=state.read_seq, unread_count=state.unread_count, muted=me.muted
                )

            caller.after_reply.append(receipts)
        return {"read_seq": state.read_seq}

    # -- the server API ------------------------------------------------------------------------

    async def create_conversation(self, *, kind: str, member_ids: list[str], title: str | None) -> ConversationRecord:
        """Create a group, or find or create a direct conversation (the server API:
        no open policy, no blocks); ``conversation.updated`` to its members."""
        store = self._store
        now = self._clock.now()
        if kind == "direct":
            if len(member_ids) != 2:
                raise ValidationFailed("member_ids", "a direct conversation has exactly two members")
            if title is not None:
                raise ValidationFailed("title", "a direct conversation has no title")
            conv, created = await store.open_direct(user_id=member_ids[0], other_id=member_ids[1], now=now)
            self._remember_pair(conv)
            if created:
                await self._updated(conv)
            return conv
        self._check_group_size(len(member_ids), "member_ids")
        conv = await store.create_group(member_ids=member_ids, now=now, title=title)
        await self._updated(conv)
        return conv

    async def rename(self, conversation_id: str, title: str | None) -> ConversationRecord:
        conv = await self._store.set_title(conversation_id=conversation_id, title=title, now=self._clock.now())
        await self._updated(conv)
        return conv

    async def add_members(self, conversation_id: str, user_ids: list[str]) -> ConversationRecord:
        """Add users to a group (they start with everything read); ``conversation.updated``
        to every member, the new ones included."""
        before = await self._conversation(conversation_id)
        if before.type != "group":
            raise Conflict("the members of a direct conversation are fixed")
        self._check_group_size(len(set(before.member_ids) | set(user_ids)), "user_ids")
        conv = await self._store.add_members(
            conversation_id=conversation_id, user_ids=user_ids, now=self._clock.now()
        )
        await self._updated(conv)
        return conv

    async def remove_member(self, conversation_id: str, user_id: str) -> ConversationRecord:
        before = await self._conversation(conversation_id)
        if before.type != "group":
            raise Conflict("the members of a direct conversation are fixed")
        if before.member(user_id) is None:
            raise NotFound("not a member of this conversation")
        after = await self._store.leave_conversation(
            conversation_id=conversation_id, user_id=user_id, now=self._clock.now()
        )
        await self._after_leave(before, after, user_id)
        return after

    async def send_as(self, sender_id: str, value: MessageSend, *, type: str) -> MessageRecord:
        """A message from the app's backend: ``system`` messages need no member as
        sender; others are refused (FORBIDDEN) for a non-member, as on the socket.
        Blocks are the app's business here."""
        message, created, participants = await self.append(
            value.conversation_id,
            sender_id=sender_id,
            client_id=value.client_id,
            body=value.body,
            type=type,
            media_url=value.media_url,
            reply_to=value.reply_to,
            check_blocks=False,
            require_member=type != "system",
        )
        if created:
            MESSAGES.labels("server").inc()
            self.messages_stored += 1
            await self.announce(message, participants)
        return message

    async def set_contacts(self, user_id: str, contact_ids: list[str]) -> None:
        await self._store.set_contacts(user_id=user_id, contact_ids=[c for c in contact_ids if c != user_id])

    async def block(self, user_id: str, blocked_id: str) -> None:
        """``user_id`` blocks ``blocked_id`` (effective on this node at once)."""
        if blocked_id == user_id:
            raise ValidationFailed("user_id", "a user cannot block themselves")
        await self._store.block_user(user_id=user_id, blocked_id=blocked_id, now=self._clock.now())
        self.forget_block(blocked_id, by=user_id)

    async def unblock(self, user_id: str, blocked_id: str) -> None:
        if blocked_id == user_id:
            raise ValidationFailed("user_id", "a user cannot unblock themselves")
        await self._store.unblock_user(user_id=user_id, blocked_id=blocked_id)
        self.forget_block(blocked_id, by=user_id)

    # -- typing --------------------------------------------------------------------------------

    async def _typing_limited(self, key: tuple[str, str]) -> None:
        rate = self._cfg.typing_per_s
        wait = await self._typing_state.take_token(*key, rate=rate, burst=max(1.0, rate))
        if wait > 0:
            raise RateLimited("typing too often in this conversation", retry_after_ms=math.ceil(wait * 1000))

    async def op_typing_start(self, caller: Caller, value: TypingStart) -> dict[str, Any]:
        uid = caller.user_id
        cid = value.conversation_id
        key = (uid, cid)
        await self._typing_limited(key)
        timeout_s = self._cfg.typing_timeout_s
        current = self._typing.get(key)
        if current is None:
            conv, _ = await self.participant(cid, uid)
            if conv.type == "direct":
                other = await self._direct_other(conv, uid)
                if other is not None and await self._blocked(uid, by=other.user_id):
                    raise Blocked("this user does not accept messages from you")
            recipients = tuple(m for m in conv.member_ids if m != uid)
        else:
            recipients = current.recipients
        first = await self._typing_state.begin(uid, cid, timeout_s=timeout_s)
        deadline = trio.current_time() + timeout_s
        current = self._typing.get(key)  # another device may have started it meanwhile
        if current is not None:
            current.deadline = deadline
        else:
            self._typing[key] = _Typing(deadline, recipients)
            self._typing_of_user.setdefault(uid, set()).add(cid)
            self._typing_timers.push(deadline, key)
        if first:
            # Refreshes, here or on another node, only move the timeout.
            await self._typing_event(uid, cid, recipients, True)
        return {}

    async def op_typing_stop(self, caller: Caller, value: TypingStop) -> dict[str, Any]:
        uid = caller.user_id
        cid = value.conversation_id
        key = (uid, cid)
        await self._typing_limited(key)
        if key not in self._typing:
            await self.participant(cid, uid)
        await self._stop_typing(uid, cid)
        return {}

    def _forget_typing(self, user_id: str, conversation_id: str) -> _Typing | None:
        state = self._typing.pop((user_id, conversation_id), None)
        mine = self._typing_of_user.get(user_id)
        if mine is not None:
            mine.discard(conversation_id)
            if not mine:
                del self._typing_of_user[user_id]
        return state

    async def _stop_typing(self, user_id: str, conversation_id: str, *, node_only: bool = False) -> None:
        """End the user's typing in the conversation, announcing it if this call ended it."""
        state = self._forget_typing(user_id, conversation_id)
        try:
            ended = await self._typing_state.end(user_id, conversation_id, node_only=node_only)
        except ApiError as exc:
            # Typing is ephemeral: its shared state expires by itself.
            log.warning("conversation %s: typing of %s not ended: %s", conversation_id, user_id, exc.message)
            return
        if not ended:
            return  # not typing, ended elsewhere, or (node_only) refreshed through another node since
        if state is not None:
            recipients = state.recipients
        else:
            conv = await self._store.get_conversation(conversation_id)
            if conv is None:
                return
            recipients = tuple(m for m in conv.member_ids if m != user_id)
        await self._typing_event(user_id, conversation_id, recipients, False)

    async def typing_now(self, conversation: ConversationRecord, *, for_user: str) -> list[str]:
        """The members of ``conversation`` other than ``for_user`` typing there now (a resend of state)."""
        others = [uid for uid in conversation.member_ids if uid != for_user]
        if not others:
            return []
        typing: list[str] = await self._typing_state.typing(conversation.id, others)
        return typing

    async def _typing_event(self, user_id: str, conversation_id: str, recipients: tuple[str, ...], typing: bool) -> None:
        if not recipients:
            return
        TYPING_EVENTS.inc()
        data = {"conversation_id": conversation_id, "user_id": user_id, "typing": typing}
        await self._emit(
            recipients, "typing.updated", data, conversation_id=conversation_id, exclude_users=frozenset((user_id,))
        )

    async def _typing_timer(self) -> None:
        while True:
            now, due = await self._typing_timers.due()
            for uid, cid in due:
                state = self._typing.get((uid, cid))
                if state is None:
                    continue
                if state.deadline > now:  # refreshed here since: wait for the new deadline
                    self._typing_timers.push(state.deadline, (uid, cid))
                    continue
                try:
                    await self._typing_due(uid, cid, state, now)
                except Exception:
                    log.exception("conversation %s: ending %s's typing failed", cid, uid)

    async def _typing_due(self, uid: str, cid: str, state: _Typing, now: float) -> None:
        try:
            left = await self._typing_state.expire(uid, cid)
        except ApiError as exc:
            # The shared state is out of reach: end it as this node sees it.
            log.warning("conversation %s: typing of %s ended locally: %s", cid, uid, exc.message)
            left = 0.0
        if left is not None and left > 0:
            # Refreshed through another node: wait for that deadline.
            state.deadline = now + left
            self._typing_timers.push(state.deadline, (uid, cid))
            return
        self._forget_typing(uid, cid)
        if left == 0:
            await self._typing_event(uid, cid, state.recipients, False)

    # -- blocks --------------------------------------------------------------------------------

    async def op_block(self, caller: Caller, value: UserBlock) -> dict[str, Any]:
        await self.block(caller.user_id, value.user_id)
        return {}

    async def op_unblock(self, caller: Caller, value: UserUnblock) -> dict[str, Any]:
        await self.unblock(caller.user_id, value.user_id)
        return {}


# ---------------------------------------------------------------------------
# HTTP: client REST (/api/v1) and server API (/server/v1)
# ---------------------------------------------------------------------------

_TAG: Final = "chat"
_CONVERSATION: Final = {"$ref": "#/components/schemas/Conversation"}


def _chat() -> ChatService:
    return services().chat


def _user_caller() -> Caller:
    claims = g.claims
    return Caller(user_id=claims.sub, claims=claims, session=None)


async def _run_op(call: OpCall) -> dict[str, Any]:
    """Run a validated op's handler for the REST caller, as ``POST /api/v1/ops/{op}`` does.

    The door charged the op's budget before the route ran (realtimed/http/budgets.py).
    """
    svc = services()
    handler = svc.ops.get(call.op)
    if handler is None:
        raise Unavailable(f"{call.op} is not served by this node")
    caller = _user_caller()
    result: dict[str, Any] = await handler(caller, call.value)
    for after in caller.after_reply:
        await after()
    return result


def _open_or_create(data: Mapping[str, Any]) -> str:
    return "conversation.open" if data.get("user_id") is not None else "conversation.create"


@route(
    "GET", "/conversations", door="client", operation_id="listConversations",
    summary="The caller's conversations, newest activity first (conversation.list)", tag=_TAG,
    accepts=OpInput(("conversation.list",), query={"limit": query_int, "cursor": query_text}),
    answers=OpReply("conversation.list"),
)
async def list_conversations(call: OpCall) -> dict[str, Any]:
    return await _run_op(call)


@route(
    "POST", "/conversations", door="client", operation_id="openOrCreateConversation",
    summary="Open the 1:1 conversation with user_id (conversation.open), else create a group (conversation.create)",
    tag=_TAG,
    accepts=OpInput(("conversation.open", "conversation.create"), reads_body=True, choose=_open_or_create),
    answers=OpReply("conversation.open", "conversation.create"),
    errors=(404,),
)
async def open_or_create_conversation(call: OpCall) -> dict[str, Any]:
    return await _run_op(call)


@attrs.frozen
class _ConversationPath:
    conversation_id: str = wire(Raw({"$ref": "#/components/schemas/Id"}), "path")


@route(
    "GET", "/conversations/<conversation_id>", door="client", operation_id="getConversation",
    summary="One conversation, as the caller sees it", tag=_TAG, accepts=_ConversationPath,
    answers=Schema(
        {"type": "object", "required": ["conversation"], "properties": {"conversation": {"$ref": "#/components/schemas/MemberConversation"}}}
    ),
    errors=(404,),
)
async def get_conversation(inp: _ConversationPath) -> dict[str, Any]:
    return await _chat().conversation_for(g.claims.sub, inp.conversation_id)


@route(
    "GET", "/conversations/<conversation_id>/messages", door="client", operation_id="listMessages",
    summary="A conversation's messages (message.history)", tag=_TAG,
    accepts=OpInput(
        ("message.history",),
        path=("conversation_id",),
        query={"before_seq": query_int, "after_seq": query_int, "changed_since": query_int, "limit": query_int},
    ),
    answers=OpReply("message.history"),
    errors=(404,),
)
async def conversation_messages(call: OpCall) -> dict[str, Any]:
    return await _run_op(call)


@route(
    "POST", "/conversations/<conversation_id>/mute", door="client", operation_id="muteConversation",
    summary="Mute or unmute a conversation (conversation.mute)", tag=_TAG,
    accepts=OpInput(("conversation.mute",), path=("conversation_id",), reads_body=True),
    answers=OpReply("conversation.mute"),
    errors=(404,),
)
async def mute_conversation(call: OpCall) -> dict[str, Any]:
    return await _run_op(call)


@route(
    "DELETE", "/messages/<message_id>", door="client", operation_id="deleteMessage",
    summary="Delete one's own message (message.delete)", tag=_TAG,
    accepts=OpInput(("message.delete",), path=("message_id",)),
    answers=OpReply("message.delete"),
    errors=(404,),
)
async def delete_message(call: OpCall) -> dict[str, Any]:
    return await _run_op(call)


@attrs.frozen
class UserIdList(Kind):
    """A list of ``min_items`` to ``max_items`` user ids, without repeats (the server API's members)."""

    min_items: int
    max_items: int

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = source.get(name)
        if value is None:
            raise ValidationFailed(name, "is required")
        if not isinstance(value, list):
            raise ValidationFailed(name, "must be a list")
        if not self.min_items <= len(value) <= self.max_items:
            raise ValidationFailed(name, f"must have {self.min_items} to {self.max_items} items")
        for i, item in enumerate(value):
            protocol.validate_user_id(item, f"{name}[{i}]")
        return list(dict.fromkeys(value))

    def schema(self, cfg: Config) -> JsonSchema:
        return {
            "type": "array",
            "items": {"$ref": "#/components/schemas/UserId"},
            "minItems": self.min_items,
            "maxItems": self.max_items,
        }


@attrs.frozen
class TitleOrNull(Kind):
    """A group's title, which must be given: null (or empty) removes it."""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        if name not in source:
            raise ValidationFailed(name, "is required (null removes it)")
        return _TITLE.parse(source, name, parts)

    def schema(self, cfg: Config) -> JsonSchema:
        return {"type": ["string", "null"], "maxLength": protocol.MAX_TITLE_CHARS, "description": "null removes it"}


_TITLE: Final = Text(min_len=0, max_len=protocol.MAX_TITLE_CHARS, required=False, description="groups only; empty: none")


@attrs.frozen
class ConversationReply:
    """The conversation (shared fields)."""

    conversation: dict[str, Any] = out(_CONVERSATION)


@attrs.frozen
class MessageReply:
    """The message, as stored."""

    message: dict[str, Any] = out({"$ref": "#/components/schemas/Message"})


@attrs.frozen
class _CreateInput:
    type: str = wire(Choice(("direct", "group"), "must be direct or group"))
    member_ids: list[str] = wire(UserIdList(1, protocol.MAX_MEMBER_IDS))
    title: str | None = wire(_TITLE)


@route(
    "POST", "/conversations", door="server", operation_id="createConversation",
    summary="Create a conversation (direct: the pair's one conversation, exactly two members, no title)",
    tag=_TAG, accepts=_CreateInput, answers=ConversationReply, guards=(_chat,),
)
async def server_create_conversation(inp: _CreateInput) -> ConversationReply:
    conv = await _chat().create_conversation(kind=inp.type, member_ids=inp.member_ids, title=inp.title or None)
    return ConversationReply(conversation=conv.to_wire())


@attrs.frozen
class _TitleInput:
    conversation_id: str = wire(Raw({"$ref": "#/components/schemas/Id"}), "path")
    title: str | None = wire(TitleOrNull())


@route(
    "PATCH", "/conversations/<conversation_id>", door="server", operation_id="setConversationTitle",
    summary="Set or remove a group's title", tag=_TAG, accepts=_TitleInput, answers=ConversationReply, errors=(404, 409),
)
async def server_set_title(inp: _TitleInput) -> ConversationReply:
    conv = await _chat().rename(inp.conversation_id, inp.title or None)
    return ConversationReply(conversation=conv.to_wire())


@attrs.frozen
class _MembersInput:
    conversation_id: str = wire(Raw({"$ref": "#/components/schemas/Id"}), "path")
    user_ids: list[str] = wire(UserIdList(1, protocol.MAX_MEMBER_IDS))


@route(
    "POST", "/conversations/<conversation_id>/members", door="server", operation_id="addMembers",
    summary="Add members to a group (409 for a direct conversation)", tag=_TAG, accepts=_MembersInput,
    answers=ConversationReply, errors=(404, 409),
)
async def server_add_members(inp: _MembersInput) -> ConversationReply:
    conv = await _chat().add_members(inp.conversation_id, inp.user_ids)
    return ConversationReply(conversation=conv.to_wire())


@attrs.frozen
class _MemberPath:
    conversation_id: str = wire(Raw({"$ref": "#/components/schemas/Id"}), "path")
    user_id: str = wire(UserId(), "path")


@route(
    "DELETE", "/conversations/<conversation_id>/members/<user_id>", door="server", operation_id="removeMember",
    summary="Remove a member from a group (409 for a direct conversation)", tag=_TAG, accepts=_MemberPath,
    answers=ConversationReply, errors=(404, 409), guards=(_chat,),
)
async def server_remove_member(inp: _MemberPath) -> ConversationReply:
    conv = await _chat().remove_member(inp.conversation_id, inp.user_id)
    return ConversationReply(conversation=conv.to_wire())


@attrs.frozen
class _MessageInput:
    conversation_id: str = wire(Raw({"$ref": "#/components/schemas/Id"}), "path")
    sender_id: str = wire(UserId("the sender (a system message's need not be a member)"))
    type: str = wire(Choice(SERVER_MESSAGE_TYPES, "must be one of text, image, file, system", default="text"))
    # The socket's rules for everything but the type (which may be system here).
    message: MessageSend = wire(OpData("message.send", path=("conversation_id",), exclude=("type",)))


@route(
    "POST", "/conversations/<conversation_id>/messages", door="server", operation_id="sendMessage",
    summary="Send a message as a user (type system allowed; no block or open-policy checks)", tag=_TAG,
    accepts=_MessageInput, answers=MessageReply, errors=(403, 404, 409), guards=(_chat,),
)
async def server_send_message(inp: _MessageInput) -> MessageReply:
    message = await _chat().send_as(inp.sender_id, inp.message, type=inp.type)
    return MessageReply(message=message.to_wire())


@attrs.frozen
class _ContactsInput:
    user_id: str = wire(UserId(), "path")
    user_ids: list[str] = wire(UserIdList(0, MAX_CONTACTS))


@route(
    "PUT", "/users/<user_id>/contacts", door="server", operation_id="setContacts",
    summary=f"Replace a user's contacts (up to {MAX_CONTACTS:,}): who sees the user's presence", tag=_TAG,
    accepts=_ContactsInput, answers=Empty,
)
async def server_set_contacts(inp: _ContactsInput) -> Empty:
    await _chat().set_contacts(inp.user_id, inp.user_ids)
    return Empty()


@attrs.frozen
class _BlockInput:
    blocker: str = wire(UserId(), "path", name="user_id")
    blocked: str = wire(UserId("the user that the path's user blocks"), name="user_id")


@route(
    "POST", "/users/<user_id>/blocks", door="server", operation_id="blockUser",
    summary="The path's user blocks body.user_id", tag=_TAG, accepts=_BlockInput, answers=Empty,
)
async def server_block(inp: _BlockInput) -> Empty:
    await _chat().block(inp.blocker, inp.blocked)
    return Empty()


@attrs.frozen
class _UnblockPath:
    user_id: str = wire(UserId(), "path")
    other: str = wire(UserId(), "path")


@route(
    "DELETE", "/users/<user_id>/blocks/<other>", door="server", operation_id="unblockUser",
    summary="Lift a block", tag=_TAG, accepts=_UnblockPath, answers=Empty, guards=(_chat,),
)
async def server_unblock(inp: _UnblockPath) -> Empty:
    await _chat().unblock(inp.user_id, inp.other)
    return Empty()


def routes() -> tuple[Route, ...]:
    """Chat's routes: the client REST mirror of the ops, and the server API."""
    return (
        list_conversations,
        open_or_create_conversation,
        get_conversation,
        conversation_messages,
        mute_conversation,
        delete_message,
        server_create_conversation,
        server_set_title,
        server_add_members,
        server_remove_member,
        server_send_message,
        server_set_contacts,
        server_block,
        server_unblock,
    )
