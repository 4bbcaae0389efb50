"""PostgreSQL: Socket.IO recovery records (``RecoveryStore``)."""

from __future__ import annotations

from datetime import datetime

from realtimed.store.postgres.engine import Conn, PostgresEngine

__all__ = ["PostgresRecovery"]


async def _put(conn: Conn, pid: str, user_id: str, record: bytes, expires_at: datetime, now: datetime) -> None:
    await conn.execute("DELETE FROM socketio_recovery WHERE expires_at <= $1", now)
    await conn.execute(
        "INSERT INTO socketio_recovery (pid, user_id, record, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (pid) "
        "DO UPDATE SET user_id = excluded.user_id, record = excluded.record, expires_at = excluded.expires_at",
        pid,
        user_id,
        record,
        expires_at,
    )


class PostgresRecovery(PostgresEngine):
    """``RecoveryStore`` on PostgreSQL."""

    async def put_recovery(self, *, pid: str, user_id: str, record: bytes, expires_at: datetime, now: datetime) -> None:
        await self._call(_put, pid, user_id, record, expires_at, now)

    async def take_recovery(self, *, pid: str, now: datetime) -> tuple[str, bytes] | None:
        sql = "DELETE FROM socketio_recovery WHERE pid = $1 RETURNING user_id, record, expires_at"
        row = await self._call(lambda conn: conn.fetchrow(sql, pid), tx=False)
        if row is None or row[2] <= now:
            return None
        return str(row[0]), bytes(row[1])
