"""PostgreSQL: retention deletes (``RetentionStore``)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from realtimed.store.postgres.engine import PostgresEngine, count
from realtimed.store.retention import FINISHED_STATUSES_SQL, RetentionRules, Sweep

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


class PostgresRetention(PostgresEngine, RetentionRules):
    """``RetentionStore`` on PostgreSQL."""

    async def _sweep(self, sweep: Sweep, before: datetime) -> int:
        sql = _SWEEPS[sweep]
        return count(await self._call(lambda conn: conn.execute(sql, before), tx=False))
