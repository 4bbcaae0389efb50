"""PostgreSQL: bans (``BanStore``)."""

from __future__ import annotations

from datetime import datetime

from realtimed.store.bans import BanRecord, BanRules
from realtimed.store.postgres.engine import Conn, PostgresEngine

__all__ = ["PostgresBans"]


async def _put_ban(conn: Conn, user_id: str, until: datetime | None, now: datetime) -> None:
    await conn.execute("DELETE FROM bans WHERE banned_until <= $1", now)
    await conn.execute(
        "INSERT INTO bans (user_id, banned_until, created_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) "
        "DO UPDATE SET banned_until = excluded.banned_until, created_at = excluded.created_at",
        user_id,
        until,
        now,
    )


class PostgresBans(PostgresEngine, BanRules):
    """``BanStore`` on PostgreSQL."""

    async def _put_ban(self, user_id: str, until: datetime | None, now: datetime) -> None:
        await self._call(_put_ban, user_id, until, now)

    async def _ban_in_force(self, user_id: str, now: datetime) -> BanRecord | None:
        sql = (
            "SELECT banned_until, created_at FROM bans WHERE user_id = $1 "
            "AND (banned_until IS NULL OR banned_until > $2)"
        )
        row = await self._call(lambda conn: conn.fetchrow(sql, user_id, now), tx=False, read=True)
        return None if row is None else BanRecord(user_id=user_id, until=row[0], created_at=row[1])

    async def _delete_ban(self, user_id: str) -> list[datetime | None]:
        sql = "DELETE FROM bans WHERE user_id = $1 RETURNING banned_until"
        return [r[0] for r in await self._call(lambda conn: conn.fetch(sql, user_id), tx=False)]
