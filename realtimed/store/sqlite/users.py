"""SQLite: contacts, blocks, last-seen times (``UserStore``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime

from realtimed.store.sqlite.bans import _ban_in_force
from realtimed.store.sqlite.chat import _unread_total
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, json_list, us
from realtimed.store.sqlite.inbox import _unread_counts
from realtimed.store.users import SessionStart, UserRules

__all__ = ["SQLiteUsers"]


def _replace_contacts(conn: Conn, user_id: str, contact_ids: list[str]) -> None:
    conn.execute("DELETE FROM contacts WHERE user_id = ?", (user_id,))
    conn.executemany(
        "INSERT INTO contacts (user_id, contact_id) VALUES (?, ?)", [(user_id, c) for c in contact_ids]
    )


def _related(conn: Conn, a: str, b: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM contacts WHERE (user_id = ? AND contact_id = ?) "
        "OR (user_id = ? AND contact_id = ?)) "
        "OR EXISTS (SELECT 1 FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
        "AND m2.user_id = ? AND m2.left_at IS NULL WHERE m1.user_id = ? AND m1.left_at IS NULL)",
        (a, b, b, a, b, a),
    ).fetchone()
    return bool(row[0])


def _related_ids(conn: Conn, user_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT contact_id FROM contacts WHERE user_id = ? "
        "UNION SELECT user_id FROM contacts WHERE contact_id = ? "
        "UNION SELECT m2.user_id FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
        "AND m2.left_at IS NULL WHERE m1.user_id = ? AND m1.left_at IS NULL",
        (user_id, user_id, user_id),
    )
    return {r[0] for r in rows}


def _block(conn: Conn, user_id: str, blocked_id: str, now: int) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, ?)",
        (user_id, blocked_id, now),
    )
    return cur.rowcount == 1


def _unblock(conn: Conn, user_id: str, blocked_id: str) -> bool:
    return (
        conn.execute(
            "DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?", (user_id, blocked_id)
        ).rowcount
        == 1
    )


def _is_blocked(conn: Conn, user_id: str, by: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM blocks WHERE user_id = ? AND blocked_id = ?", (by, user_id)).fetchone()
        is not None
    )


def _blocked_ids(conn: Conn, user_id: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT blocked_id FROM blocks WHERE user_id = ?", (user_id,))}


def _set_last_seen(conn: Conn, user_id: str, at: int) -> None:
    conn.execute(
        "INSERT INTO last_seen (user_id, last_seen_at) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE "
        "SET last_seen_at = MAX(last_seen_at, excluded.last_seen_at)",
        (user_id, at),
    )


def _last_seen(conn: Conn, user_ids: list[str]) -> dict[str, datetime]:
    rows = conn.execute(
        "SELECT user_id, last_seen_at FROM last_seen WHERE user_id IN (SELECT value FROM json_each(?))",
        (json_list(user_ids),),
    )
    return {r[0]: CODEC.time(r[1]) for r in rows}


def _related_and_seen(conn: Conn, user_id: str) -> tuple[set[str], datetime | None]:
    related = _related_ids(conn, user_id)
    return related, _last_seen(conn, [user_id]).get(user_id) if related - {user_id} else None


def _session_start(conn: Conn, user_id: str, now: int) -> SessionStart:
    return SessionStart(
        ban=_ban_in_force(conn, user_id, now),
        unread_total=_unread_total(conn, user_id, False),
        notifications_unread=_unread_counts(conn, [user_id], now)[user_id],
    )


class SQLiteUsers(SQLiteEngine, UserRules):
    """``UserStore`` on SQLite."""

    async def _replace_contacts(self, user_id: str, contact_ids: list[str]) -> None:
        await self._write(functools.partial(_replace_contacts, user_id=user_id, contact_ids=contact_ids))

    async def _related(self, user_id: str, other_id: str) -> bool:
        return await self._read(_related, user_id, other_id)

    async def _related_ids(self, user_id: str) -> set[str]:
        return await self._read(_related_ids, user_id)

    async def _related_ids_and_last_seen(self, user_id: str) -> tuple[set[str], datetime | None]:
        return await self._read(_related_and_seen, user_id)

    async def session_start(self, *, user_id: str, now: datetime) -> SessionStart:
        return await self._read(_session_start, user_id, us(now))

    async def block_user(self, *, user_id: str, blocked_id: str, now: datetime) -> bool:
        return await self._write(
            functools.partial(_block, user_id=user_id, blocked_id=blocked_id, now=us(now))
        )

    async def unblock_user(self, *, user_id: str, blocked_id: str) -> bool:
        return await self._write(functools.partial(_unblock, user_id=user_id, blocked_id=blocked_id))

    async def is_blocked(self, *, user_id: str, by: str) -> bool:
        return await self._read(_is_blocked, user_id, by)

    async def blocked_ids(self, user_id: str) -> set[str]:
        return await self._read(_blocked_ids, user_id)

    async def set_last_seen(self, *, user_id: str, at: datetime) -> None:
        await self._write(functools.partial(_set_last_seen, user_id=user_id, at=us(at)))

    async def get_last_seen(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        return await self._read(_last_seen, list(user_ids))
