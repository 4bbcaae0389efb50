"""SQLite: email addresses (``EmailStore``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime

from realtimed.store.emails import EMAIL_COLS, EmailAddressRecord, email_from
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, us

__all__ = ["SQLiteEmails"]


def _set(conn: Conn, user_id: str, address: str, verified: bool, now: int, digest: str | None) -> EmailAddressRecord:
    row = conn.execute(
        "INSERT INTO email_addresses (user_id, address, address_key, verified, digest, updated_at) "
        "VALUES (?, ?, ?, ?, COALESCE(?, 'off'), ?) "
        "ON CONFLICT (user_id) DO UPDATE SET address = excluded.address, address_key = excluded.address_key, "
        "verified = excluded.verified, digest = COALESCE(?, email_addresses.digest), bounced_at = NULL, "
        f"bounce_kind = NULL, bounce_reason = NULL, updated_at = excluded.updated_at RETURNING {EMAIL_COLS}",
        (user_id, address, address.lower(), int(verified), digest, now, digest),
    ).fetchone()
    return email_from(row, CODEC)


def _get_many(conn: Conn, user_ids: list[str]) -> dict[str, EmailAddressRecord]:
    out: dict[str, EmailAddressRecord] = {}
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in conn.execute(f"SELECT {EMAIL_COLS} FROM email_addresses WHERE user_id IN ({marks})", chunk):
            record = email_from(row, CODEC)
            out[record.user_id] = record
    return out


def _delete(conn: Conn, user_id: str) -> bool:
    return conn.execute("DELETE FROM email_addresses WHERE user_id = ?", (user_id,)).rowcount > 0


def _bounced(conn: Conn, key: str, kind: str, reason: str, now: int) -> list[str]:
    rows = conn.execute(
        "UPDATE email_addresses SET bounced_at = ?, bounce_kind = ?, bounce_reason = ? "
        "WHERE address_key = ? AND bounced_at IS NULL RETURNING user_id",
        (now, kind, reason, key),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


class SQLiteEmails(SQLiteEngine):
    """``EmailStore`` on SQLite."""

    async def set_email_address(
        self, *, user_id: str, address: str, verified: bool, now: datetime, digest: str | None = None
    ) -> EmailAddressRecord:
        return await self._write(
            functools.partial(_set, user_id=user_id, address=address, verified=verified, now=us(now), digest=digest)
        )

    async def get_email_addresses(self, user_ids: Sequence[str]) -> dict[str, EmailAddressRecord]:
        if not user_ids:
            return {}
        return await self._read(_get_many, list(dict.fromkeys(user_ids)))

    async def delete_email_address(self, *, user_id: str) -> bool:
        return await self._write(functools.partial(_delete, user_id=user_id))

    async def mark_email_bounced(self, *, address: str, kind: str, reason: str, now: datetime) -> list[str]:
        return await self._write(
            functools.partial(_bounced, key=address.lower(), kind=kind, reason=reason, now=us(now))
        )
