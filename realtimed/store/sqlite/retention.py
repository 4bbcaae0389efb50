"""SQLite: retention deletes (``RetentionStore``)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Final

from realtimed.store.retention import FINISHED_STATUSES_SQL, RetentionRules, Sweep
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


def _sweep(conn: Conn, sql: str, before: int) -> int:
    return conn.execute(sql, (before,)).rowcount


class SQLiteRetention(SQLiteEngine, RetentionRules):
    """``RetentionStore`` on SQLite."""

    async def _sweep(self, sweep: Sweep, before: datetime) -> int:
        return await self._write(functools.partial(_sweep, sql=_SWEEPS[sweep], before=us(before)))
