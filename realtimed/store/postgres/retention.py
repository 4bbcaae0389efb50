"""PostgreSQL: retention deletes (``RetentionStore``)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from realtimed.store.postgres.engine import Conn, PostgresEngine, count
from realtimed.store.retention import FINISHED_STATUSES_SQL, InboxSweep, RetentionRules, Sweep

__all__ = ["PostgresRetention"]

_SWEEPS: Final[dict[Sweep, str]] = {
    "read_notifications": "DELETE FROM notifications WHERE read_at IS NOT NULL AND read_at < $1",
    "finished_jobs": (
        f"DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 AND status IN {FINISHED_STATUSES_SQL}"
    ),
    "deleted_messages": (
        "UPDATE messages SET body = '', media_url = NULL, purged = true WHERE deleted AND NOT purged AND deleted_at < $1"
    ),
    "stale_devices": "UPDATE devices SET active = false WHERE active AND last_seen_at < $1",
}


# What each inbox sweep deletes, with $1 for its cutoff.
_INBOX_SWEEPS: Final[dict[InboxSweep, str]] = {
    "expired_notifications": "expires_at IS NOT NULL AND expires_at <= $1",
    "unread_notifications": "read_at IS NULL AND created_at < $1",
}


async def _sweep_inbox(conn: Conn, where: str, cutoff: datetime) -> int:
    # The counters first, in user order, as every change to an inbox locks them
    # (a read marking one of these at the same time waits, and cannot deadlock).
    users = await conn.fetch(
        "SELECT user_id FROM notification_counters WHERE user_id IN "
        f"(SELECT DISTINCT user_id FROM notifications WHERE {where}) ORDER BY user_id FOR UPDATE",
        cutoff,
    )
    if not users:
        return 0
    deleted = await conn.fetchval(
        f"WITH gone AS (DELETE FROM notifications WHERE {where} AND user_id = ANY($2::text[]) "
        "RETURNING user_id, read_at), "
        "unread AS (SELECT user_id, count(*) AS n FROM gone WHERE read_at IS NULL GROUP BY user_id), "
        "lowered AS (UPDATE notification_counters c SET unread_count = GREATEST(c.unread_count - unread.n, 0) "
        "FROM unread WHERE c.user_id = unread.user_id RETURNING 1) "
        "SELECT count(*) FROM gone",
        cutoff,
        [r["user_id"] for r in users],
    )
    return int(deleted)


class PostgresRetention(PostgresEngine, RetentionRules):
    """``RetentionStore`` on PostgreSQL."""

    async def _sweep(self, sweep: Sweep, before: datetime) -> int:
        sql = _SWEEPS[sweep]
        return count(await self._call(lambda conn: conn.execute(sql, before), tx=False))

    async def _sweep_inbox(self, sweep: InboxSweep, cutoff: datetime) -> int:
        return await self._call(_sweep_inbox, _INBOX_SWEEPS[sweep], cutoff)
