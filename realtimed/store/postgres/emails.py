"""PostgreSQL: email addresses (``EmailStore``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from realtimed.store.emails import EMAIL_COLS, EmailAddressRecord, email_from
from realtimed.store.postgres.engine import PostgresEngine
from realtimed.store.values import PG_CODEC

__all__ = ["PostgresEmails"]


class PostgresEmails(PostgresEngine):
    """``EmailStore`` on PostgreSQL."""

    async def set_email_address(
        self, *, user_id: str, address: str, verified: bool, now: datetime, digest: str | None = None
    ) -> EmailAddressRecord:
        sql = (
            "INSERT INTO email_addresses (user_id, address, address_key, verified, digest, updated_at) "
            "VALUES ($1, $2, $3, $4, COALESCE($6::text, 'off'), $5) ON CONFLICT (user_id) DO UPDATE SET "
            "address = excluded.address, address_key = excluded.address_key, verified = excluded.verified, "
            "digest = COALESCE($6::text, email_addresses.digest), bounced_at = NULL, bounce_kind = NULL, "
            f"bounce_reason = NULL, updated_at = excluded.updated_at RETURNING {EMAIL_COLS}"
        )
        row = await self._call(
            lambda conn: conn.fetchrow(sql, user_id, address, address.lower(), verified, now, digest), tx=False
        )
        return email_from(row, PG_CODEC)

    async def get_email_addresses(self, user_ids: Sequence[str]) -> dict[str, EmailAddressRecord]:
        if not user_ids:
            return {}
        sql = f"SELECT {EMAIL_COLS} FROM email_addresses WHERE user_id = ANY($1::text[])"
        rows = await self._call(lambda conn: conn.fetch(sql, list(dict.fromkeys(user_ids))), tx=False, read=True)
        return {r["user_id"]: email_from(r, PG_CODEC) for r in rows}

    async def delete_email_address(self, *, user_id: str) -> bool:
        sql = "DELETE FROM email_addresses WHERE user_id = $1 RETURNING user_id"
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False)
        return bool(rows)

    async def mark_email_bounced(self, *, address: str, kind: str, reason: str, now: datetime) -> list[str]:
        sql = (
            "UPDATE email_addresses SET bounced_at = $1, bounce_kind = $2, bounce_reason = $3 "
            "WHERE address_key = $4 AND bounced_at IS NULL RETURNING user_id"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, now, kind, reason, address.lower()), tx=False)
        return sorted(str(r[0]) for r in rows)
