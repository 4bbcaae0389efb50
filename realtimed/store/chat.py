"""Chat in the store: conversations, their members and messages, read cursors.

``ChatStore`` is the Protocol; the records are what its methods return. The
rules every backend follows are here, written once: ``ChatRules`` validates
and normalizes each call before handing it to the backend's primitives (its
abstract methods), and the helpers below (record building from rows, direct
keys, group roles, edit and append checks, the read cursor, history bounds)
are what the backends' transactions call.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import attrs

from realtimed.clock import iso
from realtimed.errors import Conflict, Forbidden, NotFound, ValidationFailed
from realtimed.store.jobs import JobSpec
from realtimed.store.paging import clamp_limit, decode_time_cursor, encode_cursor, split_page
from realtimed.store.values import Row, RowCodec, check_text, new_id, utc

__all__ = [
    "MEMBER_COLS",
    "MSG_COLS",
    "ROLE_MEMBER",
    "ROLE_OWNER",
    "ChatRules",
    "ChatStore",
    "ConversationRecord",
    "HistoryBound",
    "MemberRecord",
    "MessagePage",
    "MessageRecord",
    "NewMessage",
    "ReadState",
]

ConversationType = Literal["direct", "group"]

ROLE_OWNER: Final = "owner"
ROLE_MEMBER: Final = "member"

MSG_COLS: Final = (
    "id, conversation_id, seq, version, sender_id, client_id, type, body, media_url, reply_to, "
    "created_at, edited_at, deleted_at, deleted"
)
MEMBER_COLS: Final = "user_id, role, joined_at, left_at, muted, read_seq, read_at, unread_count"
# What the conversation loaders select: conversation columns as named here, the last message's with "m_".
CONVERSATION_COLS: Final = "id, type, title, last_seq, version, created_at, updated_at"


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@attrs.frozen
class MessageRecord:
    """One message. ``seq`` is gap-free per conversation; ``version`` is the
    conversation's version at the message's last change (append, edit, delete).

    A deleted message keeps its ``seq`` and, until the retention purge, its body
    in the database; ``to_wire`` never shows the body or media of a deleted one.
    """

    id: str
    conversation_id: str
    seq: int
    version: int
    sender_id: str
    client_id: str
    type: str
    body: str
    media_url: str | None
    reply_to: str | None
    created_at: datetime
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    deleted: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "version": self.version,
            "sender_id": self.sender_id,
            "client_id": self.client_id,
            "type": self.type,
            "body": "" if self.deleted else self.body,
            "media_url": None if self.deleted else self.media_url,
            "reply_to": self.reply_to,
            "created_at": iso(self.created_at),
            "edited_at": iso(self.edited_at),
            "deleted_at": iso(self.deleted_at),
            "deleted": self.deleted,
        }


@attrs.frozen
class MemberRecord:
    """A user's membership of a conversation, with their own read state.

    ``unread_count`` counts the conversation's messages with ``seq > read_seq``
    that are not deleted and were not sent by this user (see ``Store.mark_read``).
    """

    user_id: str
    role: str
    joined_at: datetime
    left_at: datetime | None = None
    muted: bool = False
    read_seq: int = 0
    read_at: datetime | None = None
    unread_count: int = 0

    @property
    def active(self) -> bool:
        return self.left_at is None

    def to_wire(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "role": self.role, "joined_at": iso(self.joined_at)}


@attrs.frozen
class ConversationRecord:
    """A conversation with its current members (those who have not left).

    ``version`` rises with every append, edit and delete of a message in it;
    ``updated_at`` is the time of its last change of any kind.
    """

    id: str
    type: str
    title: str | None
    members: tuple[MemberRecord, ...]
    last_message: MessageRecord | None
    last_seq: int
    version: int
    created_at: datetime
    updated_at: datetime

    def member(self, user_id: str) -> MemberRecord | None:
        for m in self.members:
            if m.user_id == user_id:
                return m
        return None

    @property
    def member_ids(self) -> list[str]:
        return [m.user_id for m in self.members]

    def to_wire(self, *, for_user: str | None = None) -> dict[str, Any]:
        """The wire form; with ``for_user``, also that member's ``unread_count``,
        ``muted`` and ``read_seq`` (zeros for a user who is not a member).
        Without it, the shared fields only (``conversation.updated``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "title": self.title,
            "members": [m.to_wire() for m in self.members],
            "last_message": self.last_message.to_wire() if self.last_message is not None else None,
            "last_seq": self.last_seq,
            "version": self.version,
            "updated_at": iso(self.updated_at),
        }
        if for_user is not None:
            me = self.member(for_user)
            out["unread_count"] = me.unread_count if me is not None else 0
            out["muted"] = me.muted if me is not None else False
            out["read_seq"] = me.read_seq if me is not None else 0
        return out


@attrs.frozen
class MessagePage:
    """A page of ``message_history``: ascending ``seq``; ``version`` is the
    conversation's current version."""

    messages: list[MessageRecord]
    has_more: bool
    version: int


@attrs.frozen
class ReadState:
    """A member's read cursor after ``mark_read``; ``moved`` is False when the
    given ``seq`` was not ahead of the cursor (nothing changed)."""

    conversation_id: str
    user_id: str
    read_seq: int
    read_at: datetime | None
    unread_count: int
    moved: bool


# ---------------------------------------------------------------------------
# Records from rows
# ---------------------------------------------------------------------------


def message_from(r: Row, codec: RowCodec, prefix: str = "") -> MessageRecord:
    """A message from a row of ``MSG_COLS`` (named ``prefix`` + column)."""
    return MessageRecord(
        id=r[prefix + "id"],
        conversation_id=r[prefix + "conversation_id"],
        seq=r[prefix + "seq"],
        version=r[prefix + "version"],
        sender_id=r[prefix + "sender_id"],
        client_id=r[prefix + "client_id"],
        type=r[prefix + "type"],
        body=r[prefix + "body"],
        media_url=r[prefix + "media_url"],
        reply_to=r[prefix + "reply_to"],
        created_at=codec.time(r[prefix + "created_at"]),
        edited_at=codec.opt_time(r[prefix + "edited_at"]),
        deleted_at=codec.opt_time(r[prefix + "deleted_at"]),
        deleted=bool(r[prefix + "deleted"]),
    )


def member_from(r: Row, codec: RowCodec) -> MemberRecord:
    """A membership from a row of ``MEMBER_COLS``."""
    return MemberRecord(
        user_id=r["user_id"],
        role=r["role"],
        joined_at=codec.time(r["joined_at"]),
        left_at=codec.opt_time(r["left_at"]),
        muted=bool(r["muted"]),
        read_seq=r["read_seq"],
        read_at=codec.opt_time(r["read_at"]),
        unread_count=r["unread_count"],
    )


def conversation_from(
    r: Row, codec: RowCodec, members: Sequence[MemberRecord], last_message: MessageRecord | None
) -> ConversationRecord:
    """A conversation from a row of ``CONVERSATION_COLS``, its current members and last message."""
    return ConversationRecord(
        id=r["id"],
        type=r["type"],
        title=r["title"],
        members=tuple(members),
        last_message=last_message,
        last_seq=r["last_seq"],
        version=r["version"],
        created_at=codec.time(r["created_at"]),
        updated_at=codec.time(r["updated_at"]),
    )


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


def no_conversation() -> NotFound:
    return NotFound("no such conversation")


def not_a_member() -> NotFound:
    return NotFound("not a member of this conversation")


def no_message() -> NotFound:
    return NotFound("no such message")


def direct_key(a: str, b: str) -> str:
    """The key of a 1:1 conversation: the two user ids in order, the first length-prefixed
    so that no two pairs share a key whatever characters the ids hold."""
    lo, hi = sorted((a, b))
    return f"{len(lo)}:{lo}:{hi}"


def group_members(member_ids: Sequence[str], owner_id: str | None) -> list[tuple[str, str]]:
    """``(user_id, role)`` of a new group: the owner first (role ``owner``), then the
    others once each.

    Raises:
        ValidationFailed: nobody at all.
    """
    ids = list(dict.fromkeys(([owner_id] if owner_id is not None else []) + list(member_ids)))
    if not ids:
        raise ValidationFailed("member_ids", "a group needs at least one member")
    return [(uid, ROLE_OWNER if uid == owner_id else ROLE_MEMBER) for uid in ids]


def require_group(ctype: str, *, change: Literal["members", "title"]) -> None:
    """A change that only a group allows.

    Raises:
        Conflict: the conversation is a direct one.
    """
    if ctype != "group":
        if change == "members":
            raise Conflict("the members of a direct conversation are fixed")
        raise Conflict("a direct conversation has no title")


def may_change(msg: MessageRecord | None, sender_id: str | None) -> MessageRecord:
    """The message an edit or delete applies to.

    Raises:
        NotFound: no such message.
        Forbidden: ``sender_id`` is given and is not the sender.
    """
    if msg is None:
        raise no_message()
    if sender_id is not None and msg.sender_id != sender_id:
        raise Forbidden("only the sender may change a message")
    return msg


def deleted_message() -> Conflict:
    return Conflict("the message is deleted")


def read_target(seq: int, *, read_seq: int, last_seq: int) -> int | None:
    """Where ``mark_read(seq)`` moves a cursor at ``read_seq``: capped at
    ``last_seq``; None when that is not ahead of the cursor (nothing changes)."""
    target = min(seq, last_seq)
    return None if target <= read_seq else target


@attrs.frozen
class NewMessage:
    """An ``append_message`` call, checked, with the id its message will have."""

    conversation_id: str
    sender_id: str
    client_id: str
    body: str
    now: datetime
    type: str
    media_url: str | None
    reply_to: str | None
    require_member: bool
    jobs: tuple[JobSpec, ...]
    message_id: str = attrs.Factory(lambda: new_id("m"))

    def record(self, seq: int, version: int) -> MessageRecord:
        """The message, appended with ``seq`` and ``version``."""
        return MessageRecord(
            id=self.message_id,
            conversation_id=self.conversation_id,
            seq=seq,
            version=version,
            sender_id=self.sender_id,
            client_id=self.client_id,
            type=self.type,
            body=self.body,
            media_url=self.media_url,
            reply_to=self.reply_to,
            created_at=self.now,
        )

    def repeat_of(self, first: MessageRecord) -> MessageRecord:
        """The answer to a repeated client id: the first message, if this is the same one.

        Raises:
            Conflict: the client id was used for a different message.
        """
        if (first.body, first.type, first.media_url, first.reply_to) != (
            self.body,
            self.type,
            self.media_url,
            self.reply_to,
        ):
            raise Conflict("client_id was already used for a different message")
        return first

    def job_payload(self, spec: JobSpec, seq: int) -> dict[str, Any]:
        """A job's payload as stored with the message: its own, plus ``message_id`` and ``seq``."""
        return {**spec.payload, "message_id": self.message_id, "seq": seq}

    def refusal(self, status: str) -> Exception:
        """The error of an append that was refused: ``not_found`` or ``forbidden``."""
        if status == "not_found":
            return no_conversation()
        return Forbidden("not a member of this conversation")


@attrs.frozen
class HistoryBound:
    """The bound of one ``message_history`` page: rows where ``column op value``,
    ordered by ``column`` (descending for the newest first)."""

    column: Literal["seq", "version"]
    op: Literal["<", ">"] | None
    value: int | None
    descending: bool

    @classmethod
    def of(cls, before_seq: int | None, after_seq: int | None, changed_since: int | None) -> HistoryBound:
        """Raises ValidationFailed when more than one bound is given."""
        if sum(x is not None for x in (before_seq, after_seq, changed_since)) > 1:
            raise ValidationFailed(
                "before_seq", "give at most one of before_seq, after_seq and changed_since"
            )
        if after_seq is not None:
            return cls("seq", ">", after_seq, False)
        if changed_since is not None:
            return cls("version", ">", changed_since, False)
        if before_seq is not None:
            return cls("seq", "<", before_seq, True)
        return cls("seq", None, None, True)

    def page(self, rows: Sequence[MessageRecord], limit: int, version: int) -> MessagePage:
        """The page of ``rows`` fetched with ``LIMIT limit + 1``, in ascending ``seq``."""
        page, has_more = split_page(rows, limit)
        return MessagePage(messages=sorted(page, key=lambda m: m.seq), has_more=has_more, version=version)


def conversation_cursor(
    rows: Sequence[tuple[str, int]], limit: int
) -> tuple[Sequence[tuple[str, int]], str | None]:
    """``(conversation id, activity time in microseconds)`` rows fetched with ``LIMIT
    limit + 1``, newest first: the page, and the cursor of the next one."""
    page, more = split_page(rows, limit)
    return page, encode_cursor(page[-1][1], page[-1][0]) if more else None


# ---------------------------------------------------------------------------
# The Protocol
# ---------------------------------------------------------------------------


class ChatStore(Protocol):
    """Conversations, members, messages and read cursors.

    Ordering: each conversation's messages get a gap-free, strictly increasing
    ``seq`` (1, 2, 3, ...) in commit order, even under concurrent writers; a
    failed append takes no ``seq``. A conversation's ``version`` rises by one
    with each append, edit and delete. Read cursors only move forward.

    Atomicity: each call is one transaction (see ``Store``); ``append_message``
    is idempotent on its ``client_id``. Reads are not authorized here: callers
    check membership before reading. Writes that must agree with membership
    (``append_message``, ``mark_read``) check it inside their transaction.
    """

    async def open_direct(
        self, *, user_id: str, other_id: str, now: datetime
    ) -> tuple[ConversationRecord, bool]:
        """Find or create the 1:1 conversation of two users, keyed on the pair.

        Returns ``(conversation, created)``. A member who had left it is back,
        joining now (left direct conversations are only hidden).
        """
        ...

    async def create_group(
        self,
        *,
        member_ids: Sequence[str],
        now: datetime,
        title: str | None = None,
        owner_id: str | None = None,
    ) -> ConversationRecord:
        """Create a group; ``owner_id`` (if given, added as a member) has role
        ``owner``, the others ``member``."""
        ...

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        """The conversation with its current members and last message, or None."""
        ...

    async def get_member(self, conversation_id: str, user_id: str) -> MemberRecord | None:
        """The user's membership row (also after they left: ``left_at`` is set), or None."""
        ...

    async def add_members(
        self, *, conversation_id: str, user_ids: Sequence[str], now: datetime, role: str = ROLE_MEMBER
    ) -> ConversationRecord:
        """Add users to a group (members already there stay as they are). A new
        or returning member starts with everything read (``read_seq = last_seq``).

        Raises:
            NotFound: no such conversation.
            Conflict: a direct conversation (its members are fixed).
        """
        ...

    async def leave_conversation(
        self, *, conversation_id: str, user_id: str, now: datetime
    ) -> ConversationRecord:
        """The user leaves (also the server API's remove-member). Their cursor
        moves to ``last_seq`` and their unread count to 0. Leaving a direct
        conversation only hides it until its next message or ``open_direct``.

        Raises:
            NotFound: no such conversation, or the user is not a current member.
        """
        ...

    async def set_title(
        self, *, conversation_id: str, title: str | None, now: datetime
    ) -> ConversationRecord:
        """Rename a group. Raises NotFound, or Conflict for a direct conversation."""
        ...

    async def set_muted(self, *, conversation_id: str, user_id: str, muted: bool) -> MemberRecord:
        """Mute or unmute for one member. Raises NotFound if not a current member."""
        ...

    async def list_conversations(
        self, *, user_id: str, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[ConversationRecord], str | None]:
        """The user's current conversations, newest activity first (the last
        message, or the user's joining if later), with last message and members
        (whose read state includes the user's). Returns the page and the cursor
        of the next one (None at the end). Each page orders the user's
        conversations: O(conversations of the user), not of messages.

        Raises:
            ValidationFailed: ``cursor`` is not one this store handed out.
        """
        ...

    async def unread_total(self, user_id: str, *, include_muted: bool = False) -> int:
        """Sum of the user's unread counts over current conversations, muted
        ones left out unless ``include_muted``. O(conversations of the user)."""
        ...

    async def append_message(
        self,
        *,
        conversation_id: str,
        sender_id: str,
        client_id: str,
        body: str,
        now: datetime,
        type: str = "text",
        media_url: str | None = None,
        reply_to: str | None = None,
        require_member: bool = True,
        jobs: Sequence[JobSpec] = (),
    ) -> tuple[MessageRecord, bool]:
        """Append a message with the conversation's next ``seq`` (gap-free).

        Idempotent on (sender, conversation, ``client_id``): a repeat returns
        the first message and ``created=False`` and changes nothing; the same
        key with a different body, type, media or reply raises Conflict.

        In the same transaction: the conversation's ``version`` rises and the
        message carries it; every other current member's unread count rises by
        one; the conversation's activity time moves to ``now``; members who had
        left a direct conversation are back; and ``jobs`` are enqueued (their payloads
        get ``message_id`` and ``seq``; dedupe keys as in ``enqueue_job``).

        Raises:
            NotFound: no such conversation.
            Forbidden: ``require_member`` and the sender is not a current member.
            Conflict: the client id was used for a different message.
        """
        ...

    async def get_message(self, message_id: str) -> MessageRecord | None: ...

    async def edit_message(
        self, *, message_id: str, body: str, now: datetime, sender_id: str | None = None
    ) -> MessageRecord:
        """Replace the body; raises the conversation's ``version`` and stores it
        on the message with ``edited_at``.

        Raises:
            NotFound: no such message.
            Forbidden: ``sender_id`` given and it is not the sender.
            Conflict: the message is deleted.
        """
        ...

    async def delete_message(
        self, *, message_id: str, now: datetime, sender_id: str | None = None
    ) -> tuple[MessageRecord, bool]:
        """Soft delete: the message keeps its ``seq``, its body is hidden from
        the wire at once and purged from the database by retention. Raises the
        conversation's ``version``; members who had not read it lose one unread.
        Returns ``(message, changed)``; deleting a deleted message changes nothing.

        Raises:
            NotFound: no such message.
            Forbidden: ``sender_id`` given and it is not the sender.
        """
        ...

    async def message_history(
        self,
        *,
        conversation_id: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
        changed_since: int | None = None,
        limit: int = 50,
    ) -> MessagePage:
        """A page of messages, always in ascending ``seq``.

        - ``before_seq``: the newest ``limit`` with ``seq < before_seq``;
          ``has_more``: older ones exist.
        - ``after_seq``: the oldest ``limit`` with ``seq > after_seq``;
          ``has_more``: newer ones exist.
        - ``changed_since``: the ``limit`` messages with the lowest ``version >
          changed_since`` (new, edited or deleted since); ``has_more``: more
          changed ones exist; the next page is ``changed_since`` = the highest
          ``version`` returned.
        - no bound: the newest ``limit``; ``has_more``: older ones exist.

        Raises:
            NotFound: no such conversation.
            ValidationFailed: more than one bound given.
        """
        ...

    async def mark_read(self, *, conversation_id: str, user_id: str, seq: int, now: datetime) -> ReadState:
        """Move the member's read cursor forward to ``seq`` (capped at
        ``last_seq``); an older ``seq`` leaves it where it is.

        The unread count of a member is the number of messages with ``seq >
        read_seq`` that are not deleted and not sent by the member. Appends and
        deletes keep it as a counter; reading to the newest message sets it to
        0 in O(1), a partial read recounts only the messages still after the
        cursor (an index range, never the whole conversation).

        Raises:
            NotFound: no such conversation, or the user is not a current member.
        """
        ...


# ---------------------------------------------------------------------------
# The rules, written once
# ---------------------------------------------------------------------------


class ChatRules(abc.ABC):
    """``ChatStore`` in terms of a backend's primitives (the abstract methods).

    Each method checks and normalizes its arguments (times in UTC, ids once,
    text a backend can store, limits and cursors) before one primitive call,
    which is one transaction of the backend. ``get_conversation``,
    ``get_member``, ``set_muted``, ``unread_total`` and ``get_message`` have no
    rules of their own: each backend implements them directly.
    """

    async def open_direct(
        self, *, user_id: str, other_id: str, now: datetime
    ) -> tuple[ConversationRecord, bool]:
        return await self._open_direct(
            direct_key(user_id, other_id), list(dict.fromkeys((user_id, other_id))), utc(now)
        )

    async def create_group(
        self,
        *,
        member_ids: Sequence[str],
        now: datetime,
        title: str | None = None,
        owner_id: str | None = None,
    ) -> ConversationRecord:
        return await self._create_group(group_members(member_ids, owner_id), title, utc(now))

    async def add_members(
        self, *, conversation_id: str, user_ids: Sequence[str], now: datetime, role: str = ROLE_MEMBER
    ) -> ConversationRecord:
        return await self._add_members(conversation_id, list(dict.fromkeys(user_ids)), role, utc(now))

    async def leave_conversation(
        self, *, conversation_id: str, user_id: str, now: datetime
    ) -> ConversationRecord:
        return await self._leave(conversation_id, user_id, utc(now))

    async def set_title(
        self, *, conversation_id: str, title: str | None, now: datetime
    ) -> ConversationRecord:
        return await self._set_title(conversation_id, title, utc(now))

    async def list_conversations(
        self, *, user_id: str, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[ConversationRecord], str | None]:
        limit = clamp_limit(limit)
        after = decode_time_cursor(cursor) if cursor is not None else None
        return await self._list_conversations(user_id, after, limit)

    async def append_message(
        self,
        *,
        conversation_id: str,
        sender_id: str,
        client_id: str,
        body: str,
        now: datetime,
        type: str = "text",
        media_url: str | None = None,
        reply_to: str | None = None,
        require_member: bool = True,
        jobs: Sequence[JobSpec] = (),
    ) -> tuple[MessageRecord, bool]:
        check_text("body", body)
        check_text("client_id", client_id)
        new = NewMessage(
            conversation_id=conversation_id,
            sender_id=sender_id,
            client_id=client_id,
            body=body,
            now=utc(now),
            type=type,
            media_url=media_url,
            reply_to=reply_to,
            require_member=require_member,
            jobs=tuple(jobs),
        )
        return await self._append(new)

    async def edit_message(
        self, *, message_id: str, body: str, now: datetime, sender_id: str | None = None
    ) -> MessageRecord:
        check_text("body", body)
        return await self._edit(message_id, body, utc(now), sender_id)

    async def delete_message(
        self, *, message_id: str, now: datetime, sender_id: str | None = None
    ) -> tuple[MessageRecord, bool]:
        return await self._delete(message_id, utc(now), sender_id)

    async def message_history(
        self,
        *,
        conversation_id: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
        changed_since: int | None = None,
        limit: int = 50,
    ) -> MessagePage:
        bound = HistoryBound.of(before_seq, after_seq, changed_since)
        return await self._history(conversation_id, bound, clamp_limit(limit))

    async def mark_read(self, *, conversation_id: str, user_id: str, seq: int, now: datetime) -> ReadState:
        return await self._mark_read(conversation_id, user_id, seq, utc(now))

    # -- primitives ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open_direct(
        self, key: str, member_ids: list[str], now: datetime
    ) -> tuple[ConversationRecord, bool]:
        """Find the conversation of ``key`` (members who left are back, joining
        ``now``), or create it with ``member_ids``."""

    @abc.abstractmethod
    async def _create_group(
        self, members: list[tuple[str, str]], title: str | None, now: datetime
    ) -> ConversationRecord:
        """Create a group of ``(user_id, role)``."""

    @abc.abstractmethod
    async def _add_members(
        self, cid: str, user_ids: list[str], role: str, now: datetime
    ) -> ConversationRecord: ...

    @abc.abstractmethod
    async def _leave(self, cid: str, user_id: str, now: datetime) -> ConversationRecord: ...

    @abc.abstractmethod
    async def _set_title(self, cid: str, title: str | None, now: datetime) -> ConversationRecord: ...

    @abc.abstractmethod
    async def _list_conversations(
        self, user_id: str, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[ConversationRecord], str | None]:
        """A page after ``after`` (activity time in microseconds, conversation id)."""

    @abc.abstractmethod
    async def _append(self, new: NewMessage) -> tuple[MessageRecord, bool]: ...

    @abc.abstractmethod
    async def _edit(
        self, message_id: str, body: str, now: datetime, sender_id: str | None
    ) -> MessageRecord: ...

    @abc.abstractmethod
    async def _delete(
        self, message_id: str, now: datetime, sender_id: str | None
    ) -> tuple[MessageRecord, bool]: ...

    @abc.abstractmethod
    async def _history(self, cid: str, bound: HistoryBound, limit: int) -> MessagePage: ...

    @abc.abstractmethod
    async def _mark_read(self, cid: str, user_id: str, seq: int, now: datetime) -> ReadState: ...
