"""SQLite: notifications, preferences, quiet hours (``InboxStore``).

A user's ``notification_counters`` row holds their last ``seq`` and unread
count; the single writer keeps it and the inbox in step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from realtimed.store import inbox
from realtimed.store.deliveries import delivered_entries
from realtimed.store.sqlite.deliveries import insert_entries
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, json_list, us
from realtimed.store.values import dumps

__all__ = ["SQLiteInbox"]


def _insert_notifications(
    conn: Conn, items: list[inbox.NewNotification], now: datetime, log_channel: str | None = None
) -> list[tuple[inbox.NotificationRecord, bool]]:
    out: list[tuple[inbox.NotificationRecord, bool]] = []
    for item in items:
        if item.dedupe_key is not None:
            row = conn.execute(
                f"SELECT {inbox.NOTE_COLS} FROM notifications WHERE user_id = ? AND dedupe_key = ?",
                (item.user_id, item.dedupe_key),
            ).fetchone()
            if row is not None:
                out.append((inbox.notification_from(row, CODEC), False))
                continue
        seq = conn.execute(
            "INSERT INTO notification_counters (user_id, last_seq, unread_count) VALUES (?, 1, 1) "
            "ON CONFLICT (user_id) DO UPDATE SET last_seq = last_seq + 1, unread_count = unread_count + 1 "
            "RETURNING last_seq",
            (item.user_id,),
        ).fetchone()[0]
        n = item.record(seq, now)
        conn.execute(
            f"INSERT INTO notifications ({inbox.NOTE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (
                n.id,
                n.user_id,
                n.seq,
                n.type,
                n.title,
                n.body,
                dumps(n.data),
                n.priority,
                n.group_key,
                n.dedupe_key,
                us(now),
                None if n.expires_at is None else us(n.expires_at),
            ),
        )
        out.append((n, True))
    if log_channel is not None:
        insert_entries(conn, delivered_entries([n for n, new in out if new], channel=log_channel, now=now))
    return out


def _notification_rows(conn: Conn, page: inbox.NotificationPage) -> list[inbox.NotificationRecord]:
    sql = f"SELECT {inbox.NOTE_COLS} FROM notifications WHERE user_id = ?"
    args: list[object] = [page.user_id]
    if page.bound is not None:
        sql += " AND seq > ?" if page.ascending else " AND seq < ?"
        args.append(page.bound)
    if page.unread_only:
        sql += " AND read_at IS NULL"
    if page.now is not None:
        sql += " AND (expires_at IS NULL OR expires_at > ?)"
        args.append(us(page.now))
    sql += " ORDER BY seq" + ("" if page.ascending else " DESC") + " LIMIT ?"
    args.append(page.limit + 1)
    return [inbox.notification_from(r, CODEC) for r in conn.execute(sql, args)]


# The unread notifications of one user that expired by a time: subtracted from the counter by readers.
_EXPIRED_UNREAD: Final = (
    "SELECT COUNT(*) FROM notifications WHERE user_id = ? AND read_at IS NULL "
    "AND expires_at IS NOT NULL AND expires_at <= ?"
)


def _less_expired(conn: Conn, user_id: str, unread: int, now: int | None) -> int:
    if now is None or unread == 0:
        return unread
    expired = int(conn.execute(_EXPIRED_UNREAD, (user_id, now)).fetchone()[0])
    return max(unread - expired, 0)


def _counter_add(conn: Conn, user_id: str, delta: int, now: int | None = None) -> int:
    row = conn.execute(
        "UPDATE notification_counters SET unread_count = MAX(unread_count + ?, 0) WHERE user_id = ? "
        "RETURNING unread_count",
        (delta, user_id),
    ).fetchone()
    return 0 if row is None else _less_expired(conn, user_id, int(row[0]), now)


def _mark_read(conn: Conn, user_id: str, ids: list[str], now: int) -> int:
    cur = conn.execute(
        "UPDATE notifications SET read_at = ? WHERE user_id = ? AND read_at IS NULL "
        "AND id IN (SELECT value FROM json_each(?))",
        (now, user_id, json_list(ids)),
    )
    return _counter_add(conn, user_id, -cur.rowcount, now)


def _mark_all_read(conn: Conn, user_id: str, now: int) -> tuple[int, int]:
    row = conn.execute("SELECT last_seq FROM notification_counters WHERE user_id = ?", (user_id,)).fetchone()
    if row is None:
        return 0, 0
    conn.execute(
        "UPDATE notifications SET read_at = ? WHERE user_id = ? AND read_at IS NULL AND seq <= ?",
        (now, user_id, row[0]),
    )
    conn.execute("UPDATE notification_counters SET unread_count = 0 WHERE user_id = ?", (user_id,))
    return int(row[0]), 0


def _delete_notifications(conn: Conn, user_id: str, ids: list[str], now: int | None) -> int:
    ids_json = json_list(ids)
    unread = conn.execute(
        "SELECT COUNT(*) FROM notifications WHERE user_id = ? AND read_at IS NULL "
        "AND id IN (SELECT value FROM json_each(?))",
        (user_id, ids_json),
    ).fetchone()[0]
    conn.execute(
        "DELETE FROM notifications WHERE user_id = ? AND id IN (SELECT value FROM json_each(?))",
        (user_id, ids_json),
    )
    return _counter_add(conn, user_id, -unread, now)


def _unread_counts(conn: Conn, user_ids: list[str], now: int | None) -> dict[str, int]:
    if now is None:
        rows = conn.execute(
            "SELECT user_id, unread_count FROM notification_counters WHERE user_id IN (SELECT value FROM json_each(?))",
            (json_list(user_ids),),
        ).fetchall()
    else:
        # One statement: each user's expired unread ones are counted through notifications_expiring.
        rows = conn.execute(
            "SELECT c.user_id, MAX(c.unread_count - (SELECT COUNT(*) FROM notifications n WHERE n.user_id = c.user_id "
            "AND n.read_at IS NULL AND n.expires_at IS NOT NULL AND n.expires_at <= ?), 0) "
            "FROM notification_counters c WHERE c.user_id IN (SELECT value FROM json_each(?))",
            (now, json_list(user_ids)),
        ).fetchall()
    counts = dict.fromkeys(user_ids, 0)
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def _notification_states(conn: Conn, ids: list[str]) -> dict[str, tuple[str, bool]]:
    rows = conn.execute(
        "SELECT id, user_id, read_at IS NOT NULL FROM notifications WHERE id IN (SELECT value FROM json_each(?))",
        (json_list(ids),),
    ).fetchall()
    return {r[0]: (r[1], bool(r[2])) for r in rows}


def _preferences(conn: Conn, user_id: str) -> list[inbox.NotificationPreference]:
    rows = conn.execute(
        "SELECT type, channel, enabled FROM notification_channel_preferences WHERE user_id = ? ORDER BY type, channel",
        (user_id,),
    )
    return inbox.preferences_from(user_id, rows)


def _stored_channels(conn: Conn, user_ids: list[str], ntype: str) -> dict[str, dict[str, bool]]:
    rows = conn.execute(
        "SELECT user_id, channel, enabled FROM notification_channel_preferences WHERE type = ? "
        "AND user_id IN (SELECT value FROM json_each(?))",
        (ntype, json_list(user_ids)),
    )
    return inbox.channels_by_user(rows)


def _put_channels(conn: Conn, user_id: str, ntype: str, settings: dict[str, bool]) -> dict[str, bool]:
    conn.executemany(
        "INSERT INTO notification_channel_preferences (user_id, type, channel, enabled) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, type, channel) DO UPDATE SET enabled = excluded.enabled",
        [(user_id, ntype, channel, int(enabled)) for channel, enabled in settings.items()],
    )
    rows = conn.execute(
        "SELECT channel, enabled FROM notification_channel_preferences WHERE user_id = ? AND type = ?",
        (user_id, ntype),
    )
    return {r["channel"]: bool(r["enabled"]) for r in rows}


def _stored_settings(conn: Conn, user_ids: list[str]) -> dict[str, inbox.UserSettings]:
    rows = conn.execute(
        "SELECT user_id, quiet_hours_start, quiet_hours_end, time_zone FROM user_settings "
        "WHERE user_id IN (SELECT value FROM json_each(?))",
        (json_list(user_ids),),
    )
    return {r["user_id"]: inbox.settings_from(r) for r in rows}


def _put_settings(conn: Conn, settings: inbox.UserSettings) -> None:
    conn.execute(
        "INSERT INTO user_settings (user_id, quiet_hours_start, quiet_hours_end, time_zone) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET quiet_hours_start = excluded.quiet_hours_start, "
        "quiet_hours_end = excluded.quiet_hours_end, time_zone = excluded.time_zone",
        (settings.user_id, settings.quiet_hours_start, settings.quiet_hours_end, settings.time_zone),
    )


class SQLiteInbox(SQLiteEngine, inbox.InboxRules):
    """``InboxStore`` on SQLite."""

    async def _insert_notifications(
        self, items: list[inbox.NewNotification], now: datetime, log_channel: str | None
    ) -> list[tuple[inbox.NotificationRecord, bool]]:
        return await self._write(
            functools.partial(_insert_notifications, items=items, now=now, log_channel=log_channel)
        )

    async def _notification_rows(self, page: inbox.NotificationPage) -> list[inbox.NotificationRecord]:
        return await self._read(_notification_rows, page)

    async def _read_notifications(self, user_id: str, ids: list[str], now: datetime) -> int:
        return await self._write(functools.partial(_mark_read, user_id=user_id, ids=ids, now=us(now)))

    async def _read_all_notifications(self, user_id: str, now: datetime) -> tuple[int, int]:
        return await self._write(functools.partial(_mark_all_read, user_id=user_id, now=us(now)))

    async def _delete_notifications(self, user_id: str, ids: list[str], now: datetime | None) -> int:
        when = None if now is None else us(now)
        return await self._write(functools.partial(_delete_notifications, user_id=user_id, ids=ids, now=when))

    async def _unread_counts(self, user_ids: list[str], now: datetime | None) -> dict[str, int]:
        return await self._read(_unread_counts, user_ids, None if now is None else us(now))

    async def notification_states(self, ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
        if not ids:
            return {}
        return await self._read(_notification_states, list(ids))

    async def get_preferences(self, user_id: str) -> list[inbox.NotificationPreference]:
        return await self._read(_preferences, user_id)

    async def _stored_channels(self, user_ids: list[str], type: str) -> dict[str, dict[str, bool]]:
        return await self._read(_stored_channels, user_ids, type)

    async def _put_channels(self, user_id: str, type: str, settings: dict[str, bool]) -> dict[str, bool]:
        return await self._write(
            functools.partial(_put_channels, user_id=user_id, ntype=type, settings=settings)
        )

    async def _stored_settings(self, user_ids: list[str]) -> dict[str, inbox.UserSettings]:
        return await self._read(_stored_settings, user_ids)

    async def _put_settings(self, settings: inbox.UserSettings) -> None:
        await self._write(functools.partial(_put_settings, settings=settings))
