"""SQLite: Socket.IO recovery records (``RecoveryStore``)."""

from __future__ import annotations

import functools
from datetime import datetime

from realtimed.store.sqlite.engine import Conn, SQLiteEngine, us

__all__ = ["SQLiteRecovery"]


def _put(conn: Conn, pid: str, user_id: str, record: bytes, expires_at: int, now: int) -> None:
    conn.execute("DELETE FROM socketio_recovery WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT INTO socketio_recovery (pid, user_id, record, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (pid) "
        "DO UPDATE SET user_id = excluded.user_id, record = excluded.record, expires_at = excluded.expires_at",
        (pid, user_id, record, expires_at),
    )


def _take(conn: Conn, pid: str, now: int) -> tuple[str, bytes] | None:
    row = conn.execute(
        "DELETE FROM socketio_recovery WHERE pid = ? RETURNING user_id, record, expires_at", (pid,)
    ).fetchone()
    if row is None or row[2] <= now:
        return None
    return str(row[0]), bytes(row[1])


class SQLiteRecovery(SQLiteEngine):
    """``RecoveryStore`` on SQLite."""

    async def put_recovery(self, *, pid: str, user_id: str, record: bytes, expires_at: datetime, now: datetime) -> None:
        await self._write(
            functools.partial(_put, pid=pid, user_id=user_id, record=record, expires_at=us(expires_at), now=us(now))
        )

    async def take_recovery(self, *, pid: str, now: datetime) -> tuple[str, bytes] | None:
        return await self._write(functools.partial(_take, pid=pid, now=us(now)))
