"""The Store: everything a user would miss if it were lost.

``Store`` is the Protocol every backend implements (``sqlite.py``, the embedded
default, and ``postgres.py``). The records here are what its methods return;
each has a ``to_wire()`` giving the JSON object of docs/protocol.md section 7.

Times are timezone-aware UTC ``datetime`` values, always handed in by the caller
(``now=`` arguments) or taken from the injected ``WallClock``: a store never asks
the database or the machine for the time, so tests can drive it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import attrs
import trio

from realtimed.clock import iso
from realtimed.errors import RealtimedError

__all__ = [
    "FINISHED_JOB_STATUSES",
    "JOB_STATUSES",
    "BanRecord",
    "ConversationRecord",
    "DeviceRecord",
    "JobRecord",
    "JobSpec",
    "MemberRecord",
    "MessagePage",
    "MessageRecord",
    "NewNotification",
    "NotificationPreference",
    "NotificationRecord",
    "ReadState",
    "SchemaVersionError",
    "Store",
    "UserSettings",
]

ConversationType = Literal["direct", "group"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled"]

JOB_STATUSES: Final[tuple[str, ...]] = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
FINISHED_JOB_STATUSES: Final[tuple[str, ...]] = ("succeeded", "failed", "dead", "cancelled")
PLATFORMS: Final[tuple[str, ...]] = ("ios", "android", "web")
ROLE_OWNER: Final = "owner"
ROLE_MEMBER: Final = "member"


class SchemaVersionError(RealtimedError):
    """The database schema does not match this realtimed: it is newer, or
    migrations are pending and ``store.apply_migrations`` is off."""


# ---------------------------------------------------------------------------
# Conversations and messages
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
# Notifications, preferences, devices
# ---------------------------------------------------------------------------


@attrs.frozen
class NotificationRecord:
    """One inbox entry; ``seq`` is gap-free per user."""

    id: str
    user_id: str
    seq: int
    type: str
    title: str
    body: str
    data: dict[str, Any]
    priority: str
    group_key: str | None
    dedupe_key: str | None
    created_at: datetime
    read_at: datetime | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "priority": self.priority,
            "group_key": self.group_key,
            "created_at": iso(self.created_at),
            "read_at": iso(self.read_at),
        }


@attrs.frozen
class NewNotification:
    """A notification to insert for one user (``Store.insert_notifications``)."""

    user_id: str
    type: str
    title: str
    body: str
    data: dict[str, Any] = attrs.field(factory=dict)
    priority: str = "normal"
    group_key: str | None = None
    dedupe_key: str | None = None


@attrs.frozen
class NotificationPreference:
    """Which delivery channels of a notification type reach a user.

    ``channels`` holds what the user set, by channel name (``in_app``,
    ``push``, ...); a channel not named is on."""

    user_id: str
    type: str
    channels: Mapping[str, bool] = attrs.field(factory=dict)

    def enabled(self, channel: str) -> bool:
        return self.channels.get(channel, True)

    @property
    def in_app(self) -> bool:
        return self.enabled("in_app")

    @property
    def push(self) -> bool:
        return self.enabled("push")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "in_app": self.in_app, "push": self.push, **self.channels}


@attrs.frozen
class UserSettings:
    """A user's quiet hours (``"HH:MM"`` local times; None: no quiet hours) and time zone."""

    user_id: str
    quiet_hours_start: str | None = None
    quiet_hours_end: str | None = None
    time_zone: str = "UTC"

    def to_wire(self) -> dict[str, Any]:
        return {
            "quiet_hours_start": self.quiet_hours_start,
            "quiet_hours_end": self.quiet_hours_end,
            "time_zone": self.time_zone,
        }


@attrs.frozen
class DeviceRecord:
    """A push token; ``token`` is unique across users."""

    token: str
    user_id: str
    platform: str
    app_version: str
    active: bool
    last_seen_at: datetime
    topics: tuple[str, ...]
    created_at: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "platform": self.platform,
            "app_version": self.app_version,
            "active": self.active,
            "last_seen_at": iso(self.last_seen_at),
            "topics": list(self.topics),
            "created_at": iso(self.created_at),
        }


@attrs.frozen
class BanRecord:
    """A user refused on every door until ``until`` (None: until lifted)."""

    user_id: str
    until: datetime | None
    created_at: datetime

    def in_force(self, now: datetime) -> bool:
        return self.until is None or self.until > now

    def to_wire(self) -> dict[str, Any]:
        return {"banned": True, "banned_until": iso(self.until), "banned_at": iso(self.created_at)}


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


@attrs.frozen
class JobRecord:
    """A persistent job. ``attempts`` counts claims (the running one included)."""

    id: str
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_at: datetime
    last_error: str | None
    dedupe_key: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    finished_at: datetime | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "kind": self.kind,
            "payload": self.payload,
            "priority": self.priority,
            "status": self.status,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_at": iso(self.run_at),
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
        }


@attrs.frozen
class JobSpec:
    """A job to enqueue together with a message (``Store.append_message(jobs=...)``).

    ``run_at`` None means the append's ``now``. The store adds ``message_id``
    and ``seq`` of the new message to the payload.
    """

    queue: str
    kind: str
    payload: dict[str, Any] = attrs.field(factory=dict)
    run_at: datetime | None = None
    priority: int = 0
    max_attempts: int = 5
    dedupe_key: str | None = None


# ---------------------------------------------------------------------------
# The Protocol
# ---------------------------------------------------------------------------


class Store(Protocol):
    """Durable state: conversations, messages, read cursors, notifications,
    preferences, devices, contacts and blocks, bans, jobs.

    Atomicity: every method is one transaction. It either happens completely
    or not at all, and when it returns its effect is durable (committed to
    disk: an SQLite ``synchronous=FULL`` WAL commit, a PostgreSQL commit).
    A caller cancelled while waiting does not know whether a write happened;
    writes that may be retried are idempotent (``append_message`` on
    ``client_id``, ``insert_notifications`` and ``enqueue_job`` on their dedupe keys).

    Ordering: each conversation's messages and each user's notifications get a
    gap-free, strictly increasing ``seq`` (1, 2, 3, ...) in commit order, even
    under concurrent writers; a failed write takes no ``seq``. A conversation's
    ``version`` rises by one with each append, edit and delete. Read cursors
    only move forward.

    Expiry: nothing expires by itself except job leases: a ``running`` job
    whose ``lease_expires_at`` has passed is claimable again, and bans: one
    whose ``until`` has passed is no longer in force (``active_ban``). Retention deletes
    (``delete_read_notifications`` and the others) are explicit calls.

    Errors: a backend that cannot be reached raises ``Unavailable``, quickly
    (bounded by the store's connect and statement timeouts); the next call
    after it comes back succeeds with no restart. ``NotFound``, ``Forbidden``,
    ``Conflict`` and ``ValidationFailed`` carry the meanings given per method.

    Reads are not authorized here: callers check membership before reading.
    Writes that must agree with membership (``append_message``, ``mark_read``)
    check it inside their transaction.
    """

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open connections, apply pending migrations, report started; close on cancel.

        Raises:
            SchemaVersionError: the schema is newer than this realtimed, or
                migrations are pending and ``store.apply_migrations`` is off.
            Unavailable: the database cannot be reached at start.
        """
        ...

    async def ping(self) -> None:
        """Answer if the database answers; raises ``Unavailable`` otherwise."""
        ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations without starting the store; returns their names.

        Raises:
            SchemaVersionError: the schema is newer than this realtimed.
        """
        ...

    # -- conversations ---------------------------------------------------------------------------

    async def open_direct(self, *, user_id: str, other_id: str, now: datetime) -> tuple[ConversationRecord, bool]:
        """Find or create the 1:1 conversation of two users, keyed on the pair.

        Returns ``(conversation, created)``. A member who had left it is back,
        joining now (left direct conversations are only hidden).
        """
        ...

    async def create_group(
        self, *, member_ids: Sequence[str], now: datetime, title: str | None = None, owner_id: str | None = None
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

    async def leave_conversation(self, *, conversation_id: str, user_id: str, now: datetime) -> ConversationRecord:
        """The user leaves (also the server API's remove-member). Their cursor
        moves to ``last_seq`` and their unread count to 0. Leaving a direct
        conversation only hides it until its next message or ``open_direct``.

        Raises:
            NotFound: no such conversation, or the user is not a current member.
        """
        ...

    async def set_title(self, *, conversation_id: str, title: str | None, now: datetime) -> ConversationRecord:
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

    async def set_contacts(self, *, user_id: str, contact_ids: Sequence[str]) -> None:
        """Replace the contacts the app's backend added for ``user_id``."""
        ...

    async def is_contact(self, user_id: str, other_id: str) -> bool:
        """True if either added the other as a contact, or they share a
        conversation (both current members)."""
        ...

    async def contact_ids(self, user_id: str) -> set[str]:
        """Everyone ``is_contact(user_id, x)`` holds for (presence fan-out)."""
        ...

    async def block_user(self, *, user_id: str, blocked_id: str, now: datetime) -> bool:
        """``user_id`` blocks ``blocked_id``; False if already blocked."""
        ...

    async def unblock_user(self, *, user_id: str, blocked_id: str) -> bool:
        """Lift a block; False if there was none."""
        ...

    async def is_blocked(self, *, user_id: str, by: str) -> bool:
        """True if ``by`` has blocked ``user_id``."""
        ...

    async def blocked_ids(self, user_id: str) -> set[str]:
        """The users ``user_id`` has blocked."""
        ...

    # -- bans ------------------------------------------------------------------------------------

    async def ban_user(self, *, user_id: str, until: datetime | None, now: datetime) -> BanRecord:
        """Ban ``user_id`` until ``until`` (None: until ``unban_user``), replacing
        any earlier ban of theirs, longer or shorter. Bans that ended before
        ``now`` are deleted in the same transaction, so the table holds only
        bans in force and those that ended since the last ban."""
        ...

    async def active_ban(self, *, user_id: str, now: datetime) -> BanRecord | None:
        """The user's ban if it is in force at ``now`` (no ``until``, or ``until > now``)."""
        ...

    async def unban_user(self, *, user_id: str, now: datetime) -> bool:
        """Lift the user's ban; True if one was in force at ``now`` (an ended one
        is deleted too, and answers False)."""
        ...

    # -- messages --------------------------------------------------------------------------------

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

    # -- notifications ---------------------------------------------------------------------------

    async def insert_notifications(
        self, *, items: Sequence[NewNotification], now: datetime
    ) -> list[tuple[NotificationRecord, bool]]:
        """Insert notifications for many users in one transaction, each taking
        its user's next ``seq``. An item whose (user, ``dedupe_key``) is already
        stored is a no-op: the stored one comes back with ``created=False`` and
        takes no ``seq``. Results are in the order of ``items``."""
        ...

    async def list_notifications(
        self,
        *,
        user_id: str,
        cursor: str | None = None,
        after_seq: int | None = None,
        unread_only: bool = False,
        limit: int = 20,
    ) -> tuple[list[NotificationRecord], str | None]:
        """Newest first by ``cursor``; or, with ``after_seq``, those after it in
        ascending ``seq``. Returns the page and the next cursor (None at the end).

        Raises:
            ValidationFailed: a bad cursor, or both ``cursor`` and ``after_seq``.
        """
        ...

    async def mark_notifications_read(self, *, user_id: str, ids: Sequence[str], now: datetime) -> int:
        """Mark the user's notifications read (others' ids and unknown ids are
        ignored); returns the new unread count."""
        ...

    async def mark_all_notifications_read(self, *, user_id: str, now: datetime) -> tuple[int, int]:
        """Mark everything read; returns ``(up_to_seq, unread_count)``."""
        ...

    async def delete_notifications(self, *, user_id: str, ids: Sequence[str]) -> int:
        """Delete the user's notifications; returns the new unread count."""
        ...

    async def notification_unread_count(self, user_id: str) -> int:
        """O(1): a counter kept with the inbox."""
        ...

    # -- preferences, devices, last seen ---------------------------------------------------------

    async def get_preferences(self, user_id: str) -> list[NotificationPreference]:
        """The user's stored preferences, one per type that has any, ordered by type."""
        ...

    async def get_preferences_for(self, *, user_ids: Sequence[str], type: str) -> dict[str, NotificationPreference]:
        """Each user's preference for ``type`` (every channel on for users with none stored)."""
        ...

    async def set_preference(
        self,
        *,
        user_id: str,
        type: str,
        channels: Mapping[str, bool] | None = None,
        in_app: bool | None = None,
        push: bool | None = None,
    ) -> NotificationPreference:
        """Turn channels of ``type`` on or off for the user; channels not named keep
        their setting. ``in_app`` and ``push`` are short for those entries of
        ``channels``. Returns the preference for the type as stored now.

        Raises:
            ValidationFailed: (field ``channels``) a channel name that is empty or
                longer than 64 characters, or a setting that is not a boolean.
        """
        ...

    async def get_user_settings(self, user_id: str) -> UserSettings:
        """The user's settings (defaults if none stored)."""
        ...

    async def get_user_settings_many(self, user_ids: Sequence[str]) -> dict[str, UserSettings]: ...

    async def set_user_settings(
        self, *, user_id: str, quiet_hours_start: str | None, quiet_hours_end: str | None, time_zone: str
    ) -> UserSettings:
        """Store quiet hours (``"HH:MM"``, both or neither) and an IANA time zone.

        Raises:
            ValidationFailed: a malformed time, only one of the two, or an unknown zone.
        """
        ...

    async def register_device(
        self, *, user_id: str, token: str, platform: str, now: datetime, app_version: str = ""
    ) -> DeviceRecord:
        """Register (or refresh) a push token; it is active and seen ``now``.
        A token that belonged to another user moves to this one and loses its topics.

        Raises:
            ValidationFailed: ``platform`` is not ios, android or web.
        """
        ...

    async def unregister_device(self, *, token: str, user_id: str | None = None) -> bool:
        """Forget a token (only if it is ``user_id``'s, when given); False if nothing was removed."""
        ...

    async def get_device(self, token: str) -> DeviceRecord | None: ...

    async def list_devices(self, user_id: str, *, active_only: bool = True) -> list[DeviceRecord]: ...

    async def deactivate_device(self, *, token: str) -> bool:
        """Mark a token inactive (FCM said it is gone); False if unknown or already inactive."""
        ...

    async def touch_device(self, *, token: str, now: datetime) -> bool:
        """Record that the token was seen ``now``; False if unknown."""
        ...

    async def add_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        """Raises NotFound for an unknown token."""
        ...

    async def remove_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        """Raises NotFound for an unknown token."""
        ...

    async def topic_devices(self, topic: str) -> list[DeviceRecord]:
        """Active devices subscribed to ``topic``."""
        ...

    async def set_last_seen(self, *, user_id: str, at: datetime) -> None: ...

    async def get_last_seen(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        """Last-seen times of the users that have one."""
        ...

    # -- jobs ------------------------------------------------------------------------------------

    async def enqueue_job(
        self,
        *,
        queue: str,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        dedupe_key: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create a queued job (``run_at`` None: ``now``); returns ``(job, created)``.

        A ``dedupe_key`` is unique while its job exists in any status: a repeat
        returns the existing job and ``created=False``. Wakes ``wait_for_jobs``
        (on every node, for PostgreSQL) once committed.
        """
        ...

    async def claim_jobs(
        self, *, queue: str, limit: int, owner: str, lease_s: float, now: datetime
    ) -> list[JobRecord]:
        """Claim up to ``limit`` jobs of ``queue``: queued with ``run_at <= now``,
        or running with ``lease_expires_at <= now`` (a lost lease). Highest
        priority first, then ``run_at``, then creation order. Each becomes
        ``running`` for ``owner`` until ``now + lease_s``, ``attempts + 1``.
        No job is ever handed to two claimers at once."""
        ...

    async def renew_leases(
        self, *, job_ids: Sequence[str], owner: str, lease_s: float, now: datetime
    ) -> set[str]:
        """Extend ``owner``'s leases to ``now + lease_s``; returns the ids it still holds."""
        ...

    async def complete_job(self, *, job_id: str, owner: str, now: datetime) -> bool:
        """Mark ``succeeded``; False if ``owner`` no longer holds the job."""
        ...

    async def fail_job(
        self,
        *,
        job_id: str,
        owner: str,
        error: str,
        now: datetime,
        retry_at: datetime | None,
        final_status: str = "dead",
    ) -> JobRecord | None:
        """Record a failure: with ``retry_at``, back to ``queued`` at that time;
        without, ``final_status`` (``dead``: attempts exhausted; ``failed``: not
        worth retrying). None if ``owner`` no longer holds the job."""
        ...

    async def release_jobs(self, *, owner: str, job_ids: Sequence[str], now: datetime) -> None:
        """Give back unfinished claims (a drain): ``queued``, ``run_at = now``,
        the attempt not counted."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        """Jobs, newest first, filtered; returns the page and the next cursor."""
        ...

    async def retry_job(self, *, job_id: str, now: datetime) -> JobRecord:
        """An operator retry: a dead, failed or cancelled job is queued again
        now with ``attempts`` 0. Raises NotFound, or Conflict in other statuses."""
        ...

    async def cancel_job(self, *, job_id: str, now: datetime) -> JobRecord:
        """Cancel a queued job. Raises NotFound, or Conflict when it is not queued."""
        ...

    async def cancel_jobs_by_dedupe_prefix(self, *, prefix: str, now: datetime) -> int:
        """Cancel every queued job whose dedupe key starts with ``prefix``; returns how many."""
        ...

    async def next_job_time(self, *, queues: Sequence[str]) -> datetime | None:
        """The earliest ``run_at`` of a queued job or lease expiry of a running
        one in these queues; None if there is neither."""
        ...

    async def wait_for_jobs(self, timeout_s: float) -> None:
        """Return when a job is enqueued (or requeued), or after ``timeout_s``.
        A wake-up may be spurious; one may be missed while the store reconnects,
        which the caller's timeout covers."""
        ...

    async def job_stats(self) -> list[tuple[str, str, int]]:
        """``(kind, status, count)`` for every kind and status present."""
        ...

    async def oldest_queued_job_age_s(self, now: datetime) -> float | None:
        """How long the longest-waiting due job (queued, ``run_at <= now``) has
        waited since its ``run_at``; None if none is due."""
        ...

    async def cron_claim_tick(self, *, name: str, tick: datetime) -> bool:
        """Record ``tick`` as the last enqueued tick of cron entry ``name`` if it
        is later than the stored one; True if this call advanced it."""
        ...

    async def cron_last_tick(self, *, name: str) -> datetime | None:
        """The last tick of cron entry ``name`` that any node claimed, or None
        if none ever was (the entry has never run)."""
        ...

    # -- retention -------------------------------------------------------------------------------

    async def delete_read_notifications(self, *, before: datetime) -> int:
        """Delete notifications read before ``before``; returns how many."""
        ...

    async def delete_finished_jobs(self, *, before: datetime) -> int:
        """Delete succeeded, failed, dead and cancelled jobs finished before ``before``."""
        ...

    async def purge_deleted_messages(self, *, before: datetime) -> int:
        """Clear body and media of messages deleted before ``before`` (the row
        and its ``seq`` stay); returns how many were purged."""
        ...

    async def deactivate_stale_devices(self, *, before: datetime) -> int:
        """Deactivate active tokens last seen before ``before``; returns how many."""
        ...

