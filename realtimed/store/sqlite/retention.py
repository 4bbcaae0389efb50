"""SQLite: retention deletes (``RetentionStore``)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Final

from realtimed.store.retention import FINISHED_STATUSES_SQL, InboxSweep, RetentionRules, Sweep
from realtimed.store.sqlite.engine import Conn, SQLiteEngine, us

__all__ = ["SQLiteRetention"]

_SWEEPS: Final[dict[Sweep, str]] = {
    "read_notifications": "DELETE FROM notifications WHERE read_at IS NOT NULL AND read_at < ?",
    "finished_jobs": (
        f"DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? AND status IN {FINISHED_STATUSES_SQL}"
    ),
    "deleted_messages": (
        "UPDATE messages SET body = '', media_url = NULL, purged = 1 WHERE deleted = 1 AND purged = 0 AND deleted_at < ?"
    ),
    "stale_devices": "UPDATE devices SET active = 0 WHERE active = 1 AND last_seen_at < ?",
}


# What each inbox sweep deletes, with one ? for its cutoff.
_INBOX_SWEEPS: Final[dict[InboxSweep, str]] = {
    "expired_notifications": "expires_at IS NOT NULL AND expires_at <= ?",
    "unread_notifications": "read_at IS NULL AND created_at < ?",
}


def _sweep(conn: Conn, sql: str, before: int) -> int:
    return conn.execute(sql, (before,)).rowcount


def _sweep_inbox(conn: Conn, where: str, cutoff: int) -> int:
    # One write transaction (the single writer): the counters drop by the unread ones deleted.
    conn.execute(
        "UPDATE notification_counters SET unread_count = MAX(unread_count - ("
        f"SELECT COUNT(*) FROM notifications n WHERE n.user_id = notification_counters.user_id "
        f"AND n.read_at IS NULL AND {where}), 0) "
        f"WHERE user_id IN (SELECT user_id FROM notifications WHERE read_at IS NULL AND {where})",
        (cutoff, cutoff),
    )
    return conn.execute(f"DELETE FROM notifications WHERE {where}", (cutoff,)).rowcount


class SQLiteRetention(SQLiteEngine, RetentionRules):
    """``RetentionStore`` on SQLite."""

    async def _sweep(self, sweep: Sweep, before: datetime) -> int:
        return await self._write(functools.partial(_sweep, sql=_SWEEPS[sweep], before=us(before)))

    async def _sweep_inbox(self, sweep: InboxSweep, cutoff: datetime) -> int:
        return await self._write(functools.partial(_sweep_inbox, where=_INBOX_SWEEPS[sweep], cutoff=us(cutoff)))
