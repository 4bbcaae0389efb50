"""PostgreSQL: contacts, blocks, last-seen times (``UserStore``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from realtimed.store.postgres.engine import Conn, PostgresEngine, count
from realtimed.store.users import UserRules
from realtimed.store.values import utc

__all__ = ["PostgresUsers"]


async def _replace_contacts(conn: Conn, user_id: str, contact_ids: list[str]) -> None:
    await conn.execute("DELETE FROM contacts WHERE user_id = $1", user_id)
    await conn.execute(
        "INSERT INTO contacts (user_id, contact_id) SELECT $1, c FROM unnest($2::text[]) AS c",
        user_id,
        contact_ids,
    )


class PostgresUsers(PostgresEngine, UserRules):
    """``UserStore`` on PostgreSQL."""

    async def _replace_contacts(self, user_id: str, contact_ids: list[str]) -> None:
        await self._call(_replace_contacts, user_id, contact_ids)

    async def _related(self, user_id: str, other_id: str) -> bool:
        sql = (
            "SELECT EXISTS (SELECT 1 FROM contacts WHERE (user_id = $1 AND contact_id = $2) "
            "OR (user_id = $2 AND contact_id = $1)) "
            "OR EXISTS (SELECT 1 FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
            "AND m2.user_id = $2 AND m2.left_at IS NULL WHERE m1.user_id = $1 AND m1.left_at IS NULL)"
        )
        return bool(await self._call(lambda conn: conn.fetchval(sql, user_id, other_id), tx=False, read=True))

    async def _related_ids(self, user_id: str) -> set[str]:
        sql = (
            "SELECT contact_id AS u FROM contacts WHERE user_id = $1 "
            "UNION SELECT user_id FROM contacts WHERE contact_id = $1 "
            "UNION SELECT m2.user_id FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
            "AND m2.left_at IS NULL WHERE m1.user_id = $1 AND m1.left_at IS NULL"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False, read=True)
        return {r[0] for r in rows}

    async def block_user(self, *, user_id: str, blocked_id: str, now: datetime) -> bool:
        sql = (
            "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        )
        return (
            await self._call(lambda conn: conn.fetchval(sql, user_id, blocked_id, utc(now)), tx=False)
            is not None
        )

    async def unblock_user(self, *, user_id: str, blocked_id: str) -> bool:
        sql = "DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2"
        return count(await self._call(lambda conn: conn.execute(sql, user_id, blocked_id), tx=False)) == 1

    async def is_blocked(self, *, user_id: str, by: str) -> bool:
        sql = "SELECT 1 FROM blocks WHERE user_id = $1 AND blocked_id = $2"
        return await self._call(lambda conn: conn.fetchval(sql, by, user_id), tx=False, read=True) is not None

    async def blocked_ids(self, user_id: str) -> set[str]:
        sql = "SELECT blocked_id FROM blocks WHERE user_id = $1"
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False, read=True)
        return {r[0] for r in rows}

    async def set_last_seen(self, *, user_id: str, at: datetime) -> None:
        sql = (
            "INSERT INTO last_seen (user_id, last_seen_at) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE "
            "SET last_seen_at = GREATEST(last_seen.last_seen_at, excluded.last_seen_at)"
        )
        await self._call(lambda conn: conn.execute(sql, user_id, utc(at)), tx=False)

    async def get_last_seen(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        sql = "SELECT user_id, last_seen_at FROM last_seen WHERE user_id = ANY($1::text[])"
        rows = await self._call(lambda conn: conn.fetch(sql, list(user_ids)), tx=False, read=True)
        return {r["user_id"]: r["last_seen_at"] for r in rows}
