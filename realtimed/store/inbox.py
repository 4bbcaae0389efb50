"""The notification inbox in the store, with preferences and quiet hours.

``InboxStore`` is the Protocol; the records are what it returns. Written once
here: record building (from rows, and from a ``NewNotification``), the list
cursor and its checks, the defaults of preferences and settings, and the
validation of quiet hours (``InboxRules``, before a backend's primitives).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from realtimed.clock import iso
from realtimed.errors import ValidationFailed
from realtimed.store.paging import clamp_limit, decode_cursor, encode_cursor, split_page
from realtimed.store.values import Row, RowCodec, new_id, utc

__all__ = [
    "NOTE_COLS",
    "InboxRules",
    "InboxStore",
    "NewNotification",
    "NotificationPage",
    "NotificationPreference",
    "NotificationRecord",
    "UserSettings",
]

NOTE_COLS: Final = (
    "id, user_id, seq, type, title, body, data, priority, group_key, dedupe_key, created_at, read_at, expires_at"
)
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


# ---------------------------------------------------------------------------
# Records
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
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        """Whether the notification has left the inbox at ``now`` (its ``expires_at`` passed)."""
        return self.expires_at is not None and self.expires_at <= now

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
            "expires_at": iso(self.expires_at),
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
    expires_at: datetime | None = None

    def record(self, seq: int, now: datetime) -> NotificationRecord:
        """The notification as stored with ``seq`` at ``now`` (a new id)."""
        return NotificationRecord(
            id=new_id("n"),
            user_id=self.user_id,
            seq=seq,
            type=self.type,
            title=self.title,
            body=self.body,
            data=dict(self.data),
            priority=self.priority,
            group_key=self.group_key,
            dedupe_key=self.dedupe_key,
            created_at=now,
            expires_at=None if self.expires_at is None else utc(self.expires_at),
        )


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


def notification_from(r: Row, codec: RowCodec) -> NotificationRecord:
    """A notification from a row of ``NOTE_COLS``."""
    return NotificationRecord(
        id=r["id"],
        user_id=r["user_id"],
        seq=r["seq"],
        type=r["type"],
        title=r["title"],
        body=r["body"],
        data=codec.json(r["data"]),
        priority=r["priority"],
        group_key=r["group_key"],
        dedupe_key=r["dedupe_key"],
        created_at=codec.time(r["created_at"]),
        read_at=codec.opt_time(r["read_at"]),
        expires_at=codec.opt_time(r["expires_at"]),
    )


def preferences_from(user_id: str, rows: Iterable[Row]) -> list[NotificationPreference]:
    """The user's preferences from rows of ``type, channel, enabled`` (ordered by type)."""
    by_type: dict[str, dict[str, bool]] = {}
    for r in rows:
        by_type.setdefault(r["type"], {})[r["channel"]] = bool(r["enabled"])
    return [NotificationPreference(user_id, ntype, channels) for ntype, channels in by_type.items()]


def channels_by_user(rows: Iterable[Row]) -> dict[str, dict[str, bool]]:
    """Rows of ``user_id, channel, enabled`` (of one type), as each user's channel settings."""
    out: dict[str, dict[str, bool]] = {}
    for r in rows:
        out.setdefault(r["user_id"], {})[r["channel"]] = bool(r["enabled"])
    return out


def settings_from(r: Row) -> UserSettings:
    return UserSettings(r["user_id"], r["quiet_hours_start"], r["quiet_hours_end"], r["time_zone"])


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


def check_settings(start: str | None, end: str | None, time_zone: str) -> None:
    if (start is None) != (end is None):
        raise ValidationFailed("quiet_hours", "give both start and end, or neither")
    for name, value in (("quiet_hours_start", start), ("quiet_hours_end", end)):
        if value is not None and not _HHMM.match(value):
            raise ValidationFailed(name, "must be HH:MM (00:00 to 23:59)")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed("time_zone", f"unknown time zone {time_zone!r}") from None


MAX_CHANNEL_CHARS: Final = 64


def preference_channels(
    channels: Mapping[str, bool] | None, in_app: bool | None, push: bool | None
) -> dict[str, bool]:
    """The channel settings of ``set_preference``, checked.

    Raises:
        ValidationFailed: (field ``channels``) an empty or too long channel
            name, or a setting that is not a boolean.
    """
    out = dict(channels or {})
    for name, value in (("in_app", in_app), ("push", push)):
        if value is not None:
            out[name] = value
    for name, value in out.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_CHANNEL_CHARS:
            raise ValidationFailed("channels", f"a channel name must be 1 to {MAX_CHANNEL_CHARS} characters")
        if not isinstance(value, bool):
            raise ValidationFailed("channels", f"the setting of {name!r} must be a boolean")
    return out


@attrs.frozen
class NotificationPage:
    """One ``list_notifications`` page: ``seq`` after ``bound`` in ascending order,
    or before it (None: from the newest) in descending order; unread ones only
    if ``unread_only``; none that expired at ``now`` (None: expired ones too)."""

    user_id: str
    ascending: bool
    bound: int | None
    unread_only: bool
    limit: int
    now: datetime | None = None

    @classmethod
    def of(
        cls,
        user_id: str,
        cursor: str | None,
        after_seq: int | None,
        unread_only: bool,
        limit: int,
        now: datetime | None = None,
    ) -> NotificationPage:
        """Raises ValidationFailed: both ``cursor`` and ``after_seq``, or a bad cursor."""
        ascending = after_seq is not None
        bound = after_seq
        if cursor is not None:
            if after_seq is not None:
                raise ValidationFailed("cursor", "give either cursor or after_seq")
            direction, bound = decode_cursor(cursor, (str, int))
            if direction not in ("a", "d"):
                raise ValidationFailed("cursor", "not a valid cursor")
            ascending = direction == "a"
        return cls(user_id, ascending, bound, unread_only, limit, None if now is None else utc(now))

    def result(self, rows: Sequence[NotificationRecord]) -> tuple[list[NotificationRecord], str | None]:
        """The page of ``rows`` fetched with ``LIMIT limit + 1``, and the next cursor."""
        page, more = split_page(rows, self.limit)
        return list(page), encode_cursor("a" if self.ascending else "d", page[-1].seq) if more else None


# ---------------------------------------------------------------------------
# The Protocol
# ---------------------------------------------------------------------------


class InboxStore(Protocol):
    """Notifications, preferences and quiet hours.

    Ordering: each user's notifications get a gap-free, strictly increasing
    ``seq`` in commit order; a repeated dedupe key takes none. The unread count
    is a counter kept with the inbox, in the same transaction as every change.

    Expiry: a notification with an ``expires_at`` at or before ``now`` has left
    the inbox. The calls that take ``now`` skip it (lists) or leave it out of
    the unread count they answer; the counter itself keeps it until retention
    deletes it (``RetentionStore.delete_expired_notifications``), so an unread
    count read without ``now`` may include expired notifications.
    """

    async def insert_notifications(
        self, *, items: Sequence[NewNotification], now: datetime, log_channel: str | None = None
    ) -> list[tuple[NotificationRecord, bool]]:
        """Insert notifications for many users in one transaction, each taking
        its user's next ``seq``. An item whose (user, ``dedupe_key``) is already
        stored is a no-op: the stored one comes back with ``created=False`` and
        takes no ``seq``. Results are in the order of ``items``. With
        ``log_channel``, each new notification is also logged ``delivered`` on
        that channel in the delivery log, in the same transaction
        (``realtimed.store.deliveries``)."""
        ...

    async def list_notifications(
        self,
        *,
        user_id: str,
        cursor: str | None = None,
        after_seq: int | None = None,
        unread_only: bool = False,
        limit: int = 20,
        now: datetime | None = None,
    ) -> tuple[list[NotificationRecord], str | None]:
        """Newest first by ``cursor``; or, with ``after_seq``, those after it in
        ascending ``seq``; with ``now``, none that expired by then. Returns the
        page and the next cursor (None at the end).

        Raises:
            ValidationFailed: a bad cursor, or both ``cursor`` and ``after_seq``.
        """
        ...

    async def mark_notifications_read(self, *, user_id: str, ids: Sequence[str], now: datetime) -> int:
        """Mark the user's notifications read (others' ids and unknown ids are
        ignored); returns the new unread count (of those not expired at ``now``)."""
        ...

    async def mark_all_notifications_read(self, *, user_id: str, now: datetime) -> tuple[int, int]:
        """Mark everything read; returns ``(up_to_seq, unread_count)``."""
        ...

    async def delete_notifications(self, *, user_id: str, ids: Sequence[str], now: datetime | None = None) -> int:
        """Delete the user's notifications; returns the new unread count (with
        ``now``: of those not expired then)."""
        ...

    async def notification_unread_count(self, user_id: str, *, now: datetime | None = None) -> int:
        """A counter kept with the inbox; with ``now``, less the unread ones
        expired by then (an index read of the user's expiring notifications)."""
        ...

    async def notification_unread_counts(
        self, user_ids: Sequence[str], *, now: datetime | None = None
    ) -> dict[str, int]:
        """``notification_unread_count`` of each of ``user_ids`` in one read."""
        ...

    async def notification_states(self, ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
        """``(user_id, read)`` of each stored notification of ``ids``, in one read;
        a deleted (or never stored) one is missing from the answer."""
        ...

    async def get_preferences(self, user_id: str) -> list[NotificationPreference]:
        """The user's stored preferences, one per type that has any, ordered by type."""
        ...

    async def get_preferences_for(
        self, *, user_ids: Sequence[str], type: str
    ) -> dict[str, NotificationPreference]:
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


# ---------------------------------------------------------------------------
# The rules, written once
# ---------------------------------------------------------------------------


class InboxRules(abc.ABC):
    """``InboxStore`` in terms of a backend's primitives (the abstract methods)."""

    async def insert_notifications(
        self, *, items: Sequence[NewNotification], now: datetime, log_channel: str | None = None
    ) -> list[tuple[NotificationRecord, bool]]:
        if not items:
            return []
        return await self._insert_notifications(list(items), utc(now), log_channel)

    async def list_notifications(
        self,
        *,
        user_id: str,
        cursor: str | None = None,
        after_seq: int | None = None,
        unread_only: bool = False,
        limit: int = 20,
        now: datetime | None = None,
    ) -> tuple[list[NotificationRecord], str | None]:
        limit = clamp_limit(limit)
        page = NotificationPage.of(user_id, cursor, after_seq, unread_only, limit, now)
        return page.result(await self._notification_rows(page))

    async def mark_notifications_read(self, *, user_id: str, ids: Sequence[str], now: datetime) -> int:
        return await self._read_notifications(user_id, list(ids), utc(now))

    async def mark_all_notifications_read(self, *, user_id: str, now: datetime) -> tuple[int, int]:
        return await self._read_all_notifications(user_id, utc(now))

    async def delete_notifications(self, *, user_id: str, ids: Sequence[str], now: datetime | None = None) -> int:
        return await self._delete_notifications(user_id, list(ids), None if now is None else utc(now))

    async def notification_unread_count(self, user_id: str, *, now: datetime | None = None) -> int:
        return (await self.notification_unread_counts([user_id], now=now))[user_id]

    async def notification_unread_counts(
        self, user_ids: Sequence[str], *, now: datetime | None = None
    ) -> dict[str, int]:
        if not user_ids:
            return {}
        return await self._unread_counts(list(dict.fromkeys(user_ids)), None if now is None else utc(now))

    async def get_preferences_for(
        self, *, user_ids: Sequence[str], type: str
    ) -> dict[str, NotificationPreference]:
        found = await self._stored_channels(list(user_ids), type)
        return {uid: NotificationPreference(uid, type, found.get(uid, {})) for uid in user_ids}

    async def set_preference(
        self,
        *,
        user_id: str,
        type: str,
        channels: Mapping[str, bool] | None = None,
        in_app: bool | None = None,
        push: bool | None = None,
    ) -> NotificationPreference:
        settings = preference_channels(channels, in_app, push)
        return NotificationPreference(user_id, type, await self._put_channels(user_id, type, settings))

    async def get_user_settings(self, user_id: str) -> UserSettings:
        return (await self.get_user_settings_many([user_id]))[user_id]

    async def get_user_settings_many(self, user_ids: Sequence[str]) -> dict[str, UserSettings]:
        stored = await self._stored_settings(list(user_ids))
        return {uid: stored.get(uid) or UserSettings(uid) for uid in user_ids}

    async def set_user_settings(
        self, *, user_id: str, quiet_hours_start: str | None, quiet_hours_end: str | None, time_zone: str
    ) -> UserSettings:
        check_settings(quiet_hours_start, quiet_hours_end, time_zone)
        settings = UserSettings(user_id, quiet_hours_start, quiet_hours_end, time_zone)
        await self._put_settings(settings)
        return settings

    # -- primitives ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _insert_notifications(
        self, items: list[NewNotification], now: datetime, log_channel: str | None
    ) -> list[tuple[NotificationRecord, bool]]: ...

    @abc.abstractmethod
    async def _notification_rows(self, page: NotificationPage) -> list[NotificationRecord]:
        """Up to ``page.limit + 1`` notifications of the page, in its order."""

    @abc.abstractmethod
    async def _read_notifications(self, user_id: str, ids: list[str], now: datetime) -> int: ...

    @abc.abstractmethod
    async def _read_all_notifications(self, user_id: str, now: datetime) -> tuple[int, int]: ...

    @abc.abstractmethod
    async def _delete_notifications(self, user_id: str, ids: list[str], now: datetime | None) -> int:
        """Delete; the unread count after it (with ``now``: less the unread ones expired then)."""

    @abc.abstractmethod
    async def _unread_counts(self, user_ids: list[str], now: datetime | None) -> dict[str, int]:
        """Each user's unread counter (0 without one); with ``now``, less their unread ones expired then."""

    @abc.abstractmethod
    async def _stored_channels(self, user_ids: list[str], type: str) -> dict[str, dict[str, bool]]:
        """The channel settings for ``type`` of those users that made some, by user id."""

    @abc.abstractmethod
    async def _put_channels(self, user_id: str, type: str, settings: dict[str, bool]) -> dict[str, bool]:
        """Store ``settings`` (channel → on); the user's settings for ``type`` after it."""

    @abc.abstractmethod
    async def _stored_settings(self, user_ids: list[str]) -> dict[str, UserSettings]:
        """The stored settings of those users that have some, by user id."""

    @abc.abstractmethod
    async def _put_settings(self, settings: UserSettings) -> None: ...
