"""PostgreSQL: contacts, blocks, last-seen times (``UserStore``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from realtimed.store.bans import BanRecord
from realtimed.store.postgres.engine import Conn, PostgresEngine, count
from realtimed.store.users import SessionStart, UserRules
from realtimed.store.values import utc

__all__ = ["PostgresUsers"]


async def _replace_contacts(conn: Conn, user_id: str, contact_ids: list[str]) -> None:
    await conn.execute("DELETE FROM contacts WHERE user_id = $1", user_id)
    await conn.execute(
        "INSERT INTO contacts (user_id, contact_id) SELECT $1, c FROM unnest($2::text[]) AS c",
        user_id,
        contact_ids,
    )


_RELATED_IDS = (
    "SELECT contact_id AS u FROM contacts WHERE user_id = $1 "
    "UNION SELECT user_id FROM contacts WHERE contact_id = $1 "
    "UNION SELECT m2.user_id FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
    "AND m2.left_at IS NULL WHERE m1.user_id = $1 AND m1.left_at IS NULL"
)

# The ban in force and both unread counts of a connecting user: one row, always.
_SESSION_START = (
    "SELECT b.user_id IS NOT NULL, b.banned_until, b.created_at, "
    "(SELECT COALESCE(SUM(unread_count), 0) FROM members WHERE user_id = $1 AND left_at IS NULL AND NOT muted), "
    # The inbox's unread count, less its unread notifications expired by now.
    "(SELECT GREATEST(c.unread_count - (SELECT count(*) FROM notifications n WHERE n.user_id = $1 "
    "AND n.read_at IS NULL AND n.expires_at IS NOT NULL AND n.expires_at <= $2), 0) "
    "FROM notification_counters c WHERE c.user_id = $1) "
    "FROM (SELECT 1) AS one LEFT JOIN bans b ON b.user_id = $1 AND (b.banned_until IS NULL OR b.banned_until > $2)"
)

# Every related user, each row carrying the user's last-seen time (no row without one related).
_RELATED_AND_SEEN = (
    f"SELECT r.u, (SELECT last_seen_at FROM last_seen WHERE user_id = $1) FROM ({_RELATED_IDS}) AS r"
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
        rows = await self._call(lambda conn: conn.fetch(_RELATED_IDS, user_id), tx=False, read=True)
        return {r[0] for r in rows}

    async def _related_ids_and_last_seen(self, user_id: str) -> tuple[set[str], datetime | None]:
        rows = await self._call(lambda conn: conn.fetch(_RELATED_AND_SEEN, user_id), tx=False, read=True)
        return {r[0] for r in rows}, rows[0][1] if rows else None

    async def session_start(self, *, user_id: str, now: datetime) -> SessionStart:
        row = await self._call(lambda conn: conn.fetchrow(_SESSION_START, user_id, utc(now)), tx=False, read=True)
        banned, until, created_at, unread_total, notifications_unread = row
        ban = BanRecord(user_id=user_id, until=until, created_at=created_at) if banned else None
        return SessionStart(ban=ban, unread_total=int(unread_total), notifications_unread=int(notifications_unread or 0))

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
