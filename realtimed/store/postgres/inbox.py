"""PostgreSQL: notifications, preferences, quiet hours (``InboxStore``).

A user's ``notification_counters`` row holds their last ``seq`` and unread
count; every change to the inbox locks it first (inserts lock every counter
concerned, in user order), so concurrent calls wait rather than deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from realtimed.store import inbox
from realtimed.store.deliveries import delivered_entries
from realtimed.store.postgres.deliveries import insert_entries
from realtimed.store.postgres.engine import CODEC, Conn, PostgresEngine, count
from realtimed.store.values import dumps

__all__ = ["PostgresInbox"]


async def _insert_notifications(
    conn: Conn, items: list[inbox.NewNotification], now: datetime, log_channel: str | None = None
) -> list[tuple[inbox.NotificationRecord, bool]]:
    users = sorted({i.user_id for i in items})
    # Lock every counter in one order (creating missing ones), so concurrent inserts wait, not deadlock.
    counters = await conn.fetch(
        "INSERT INTO notification_counters (user_id) SELECT u FROM unnest($1::text[]) AS u "
        "ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id RETURNING user_id, last_seq",
        users,
    )
    last_seq = {r["user_id"]: r["last_seq"] for r in counters}
    keyed = [(i.user_id, i.dedupe_key) for i in items if i.dedupe_key is not None]
    existing: dict[tuple[str, str], inbox.NotificationRecord] = {}
    if keyed:
        rows = await conn.fetch(
            f"SELECT {inbox.NOTE_COLS} FROM notifications WHERE (user_id, dedupe_key) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keyed],
            [k[1] for k in keyed],
        )
        existing = {(r["user_id"], r["dedupe_key"]): inbox.notification_from(r, CODEC) for r in rows}
    out: list[tuple[inbox.NotificationRecord, bool]] = []
    new: list[inbox.NotificationRecord] = []
    added: dict[str, int] = {}
    for item in items:
        if item.dedupe_key is not None and (item.user_id, item.dedupe_key) in existing:
            out.append((existing[(item.user_id, item.dedupe_key)], False))
            continue
        last_seq[item.user_id] += 1
        added[item.user_id] = added.get(item.user_id, 0) + 1
        record = item.record(last_seq[item.user_id], now)
        if item.dedupe_key is not None:
            existing[(item.user_id, item.dedupe_key)] = record
        new.append(record)
        out.append((record, True))
    if new:
        await conn.execute(
            f"INSERT INTO notifications ({inbox.NOTE_COLS}) "
            "SELECT id, user_id, seq, type, title, body, data::jsonb, priority, group_key, dedupe_key, $11, NULL, "
            "expires_at "
            "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], "
            "$8::text[], $9::text[], $10::text[], $12::timestamptz[]) "
            "AS n(id, user_id, seq, type, title, body, data, priority, group_key, dedupe_key, expires_at)",
            [n.id for n in new],
            [n.user_id for n in new],
            [n.seq for n in new],
            [n.type for n in new],
            [n.title for n in new],
            [n.body for n in new],
            [dumps(n.data) for n in new],
            [n.priority for n in new],
            [n.group_key for n in new],
            [n.dedupe_key for n in new],
            now,
            [n.expires_at for n in new],
        )
        await conn.execute(
            "UPDATE notification_counters c SET last_seq = u.last_seq, unread_count = c.unread_count + u.added "
            "FROM unnest($1::text[], $2::bigint[], $3::int[]) AS u(user_id, last_seq, added) "
            "WHERE c.user_id = u.user_id",
            list(added),
            [last_seq[u] for u in added],
            list(added.values()),
        )
        if log_channel is not None:
            await insert_entries(conn, delivered_entries(new, channel=log_channel, now=now))
    return out


async def _notification_rows(conn: Conn, page: inbox.NotificationPage) -> list[inbox.NotificationRecord]:
    sql = f"SELECT {inbox.NOTE_COLS} FROM notifications WHERE user_id = $1"
    args: list[Any] = [page.user_id]
    if page.bound is not None:
        args.append(page.bound)
        sql += f" AND seq {'>' if page.ascending else '<'} ${len(args)}"
    if page.unread_only:
        sql += " AND read_at IS NULL"
    if page.now is not None:
        args.append(page.now)
        sql += f" AND (expires_at IS NULL OR expires_at > ${len(args)})"
    args.append(page.limit + 1)
    sql += f" ORDER BY seq{'' if page.ascending else ' DESC'} LIMIT ${len(args)}"
    return [inbox.notification_from(r, CODEC) for r in await conn.fetch(sql, *args)]


async def _lock_counter(conn: Conn, user_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT last_seq, unread_count FROM notification_counters WHERE user_id = $1 FOR UPDATE", user_id
    )


# The counter less the user's unread notifications expired at $2 (NULL: none subtracted).
_LESS_EXPIRED: Final = (
    "GREATEST(c.unread_count - CASE WHEN $2::timestamptz IS NULL THEN 0 ELSE ("
    "SELECT count(*) FROM notifications n WHERE n.user_id = c.user_id AND n.read_at IS NULL "
    "AND n.expires_at IS NOT NULL AND n.expires_at <= $2) END, 0)"
)


async def _counter_add(conn: Conn, user_id: str, delta: int, now: datetime | None = None) -> int:
    value = await conn.fetchval(
        "WITH c AS (UPDATE notification_counters SET unread_count = GREATEST(unread_count + $3, 0) "
        f"WHERE user_id = $1 RETURNING user_id, unread_count) SELECT {_LESS_EXPIRED} FROM c",
        user_id,
        now,
        delta,
    )
    return 0 if value is None else int(value)


async def _mark_read(conn: Conn, user_id: str, ids: list[str], now: datetime) -> int:
    if await _lock_counter(conn, user_id) is None:
        return 0
    status = await conn.execute(
        "UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND id = ANY($2::text[]) AND read_at IS NULL",
        user_id,
        ids,
        now,
    )
    return await _counter_add(conn, user_id, -count(status), now)


async def _mark_all_read(conn: Conn, user_id: str, now: datetime) -> tuple[int, int]:
    counter = await _lock_counter(conn, user_id)
    if counter is None:
        return 0, 0
    await conn.execute(
        "UPDATE notifications SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL AND seq <= $3",
        user_id,
        now,
        counter["last_seq"],
    )
    await conn.execute("UPDATE notification_counters SET unread_count = 0 WHERE user_id = $1", user_id)
    return int(counter["last_seq"]), 0


async def _delete_notifications(conn: Conn, user_id: str, ids: list[str], now: datetime | None) -> int:
    if await _lock_counter(conn, user_id) is None:
        return 0
    unread = await conn.fetchval(
        "WITH gone AS (DELETE FROM notifications WHERE user_id = $1 AND id = ANY($2::text[]) RETURNING read_at) "
        "SELECT count(*) FROM gone WHERE read_at IS NULL",
        user_id,
        ids,
    )
    return await _counter_add(conn, user_id, -int(unread), now)


async def _put_channels(conn: Conn, user_id: str, ntype: str, settings: dict[str, bool]) -> dict[str, bool]:
    if settings:
        await conn.execute(
            "INSERT INTO notification_channel_preferences (user_id, type, channel, enabled) "
            "SELECT $1, $2, c, e FROM unnest($3::text[], $4::boolean[]) AS s (c, e) "
            "ON CONFLICT (user_id, type, channel) DO UPDATE SET enabled = excluded.enabled",
            user_id,
            ntype,
            list(settings),
            list(settings.values()),
        )
    rows = await conn.fetch(
        "SELECT channel, enabled FROM notification_channel_preferences WHERE user_id = $1 AND type = $2",
        user_id,
        ntype,
    )
    return {r["channel"]: r["enabled"] for r in rows}


class PostgresInbox(PostgresEngine, inbox.InboxRules):
    """``InboxStore`` on PostgreSQL."""

    async def _insert_notifications(
        self, items: list[inbox.NewNotification], now: datetime, log_channel: str | None
    ) -> list[tuple[inbox.NotificationRecord, bool]]:
        return await self._call(_insert_notifications, items, now, log_channel)

    async def _notification_rows(self, page: inbox.NotificationPage) -> list[inbox.NotificationRecord]:
        return await self._call(_notification_rows, page, tx=False, read=True)

    async def _read_notifications(self, user_id: str, ids: list[str], now: datetime) -> int:
        return await self._call(_mark_read, user_id, ids, now)

    async def _read_all_notifications(self, user_id: str, now: datetime) -> tuple[int, int]:
        return await self._call(_mark_all_read, user_id, now)

    async def _delete_notifications(self, user_id: str, ids: list[str], now: datetime | None) -> int:
        return await self._call(_delete_notifications, user_id, ids, now)

    async def _unread_counts(self, user_ids: list[str], now: datetime | None) -> dict[str, int]:
        sql = f"SELECT c.user_id, {_LESS_EXPIRED} FROM notification_counters c WHERE c.user_id = ANY($1::text[])"
        rows = await self._call(lambda conn: conn.fetch(sql, user_ids, now), tx=False, read=True)
        counts = dict.fromkeys(user_ids, 0)
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def notification_states(self, ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
        if not ids:
            return {}
        sql = "SELECT id, user_id, read_at IS NOT NULL FROM notifications WHERE id = ANY($1::text[])"
        rows = await self._call(lambda conn: conn.fetch(sql, list(ids)), tx=False, read=True)
        return {r[0]: (r[1], bool(r[2])) for r in rows}

    async def get_preferences(self, user_id: str) -> list[inbox.NotificationPreference]:
        sql = (
            "SELECT type, channel, enabled FROM notification_channel_preferences WHERE user_id = $1 "
            "ORDER BY type, channel"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False, read=True)
        return inbox.preferences_from(user_id, rows)

    async def _stored_channels(self, user_ids: list[str], type: str) -> dict[str, dict[str, bool]]:
        sql = (
            "SELECT user_id, channel, enabled FROM notification_channel_preferences WHERE type = $1 "
            "AND user_id = ANY($2::text[])"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, type, user_ids), tx=False, read=True)
        return inbox.channels_by_user(rows)

    async def _put_channels(self, user_id: str, type: str, settings: dict[str, bool]) -> dict[str, bool]:
        return await self._call(_put_channels, user_id, type, settings)

    async def _stored_settings(self, user_ids: list[str]) -> dict[str, inbox.UserSettings]:
        sql = (
            "SELECT user_id, quiet_hours_start, quiet_hours_end, time_zone FROM user_settings "
            "WHERE user_id = ANY($1::text[])"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, user_ids), tx=False, read=True)
        return {r["user_id"]: inbox.settings_from(r) for r in rows}

    async def _put_settings(self, settings: inbox.UserSettings) -> None:
        sql = (
            "INSERT INTO user_settings (user_id, quiet_hours_start, quiet_hours_end, time_zone) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET "
            "quiet_hours_start = excluded.quiet_hours_start, quiet_hours_end = excluded.quiet_hours_end, "
            "time_zone = excluded.time_zone"
        )
        s = settings
        await self._call(
            lambda conn: conn.execute(sql, s.user_id, s.quiet_hours_start, s.quiet_hours_end, s.time_zone),
            tx=False,
        )
