"""SQLite: bans (``BanStore``)."""

from __future__ import annotations

import functools
from datetime import datetime

from realtimed.store.bans import BanRecord, BanRules
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, us

__all__ = ["SQLiteBans"]


def _put_ban(conn: Conn, user_id: str, until: int | None, now: int) -> None:
    conn.execute("DELETE FROM bans WHERE banned_until <= ?", (now,))
    conn.execute(
        "INSERT INTO bans (user_id, banned_until, created_at) VALUES (?, ?, ?) ON CONFLICT (user_id) "
        "DO UPDATE SET banned_until = excluded.banned_until, created_at = excluded.created_at",
        (user_id, until, now),
    )


def _ban_in_force(conn: Conn, user_id: str, now: int) -> BanRecord | None:
    row = conn.execute(
        "SELECT banned_until, created_at FROM bans WHERE user_id = ? AND (banned_until IS NULL OR banned_until > ?)",
        (user_id, now),
    ).fetchone()
    return None if row is None else BanRecord(user_id, CODEC.opt_time(row[0]), CODEC.time(row[1]))


def _delete_ban(conn: Conn, user_id: str) -> list[datetime | None]:
    rows = conn.execute("DELETE FROM bans WHERE user_id = ? RETURNING banned_until", (user_id,)).fetchall()
    return [CODEC.opt_time(r[0]) for r in rows]


class SQLiteBans(SQLiteEngine, BanRules):
    """``BanStore`` on SQLite."""

    async def _put_ban(self, user_id: str, until: datetime | None, now: datetime) -> None:
        await self._write(
            functools.partial(
                _put_ban, user_id=user_id, until=None if until is None else us(until), now=us(now)
            )
        )

    async def _ban_in_force(self, user_id: str, now: datetime) -> BanRecord | None:
        return await self._read(_ban_in_force, user_id, us(now))

    async def _delete_ban(self, user_id: str) -> list[datetime | None]:
        return await self._write(functools.partial(_delete_ban, user_id=user_id))
