"""PostgreSQL: the delivery log (``DeliveryLogStore``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from realtimed.store.deliveries import DeliveryEntry, DeliveryFilter, DeliveryLogRules
from realtimed.store.postgres.engine import Conn, PostgresEngine, count

__all__ = ["PostgresDeliveryLog", "insert_entries"]

_COLS: Final = "at, user_id, channel, type, outcome, notification_id, ref, cap, deferred_until, detail"
_INSERT: Final = (
    f"INSERT INTO delivery_log ({_COLS}) "
    "SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
    "$7::text[], $8::text[], $9::timestamptz[], $10::text[])"
)


def _entry(r: Any) -> DeliveryEntry:
    return DeliveryEntry(
        id=r[0], at=r[1], user_id=r[2], channel=r[3], type=r[4], outcome=r[5], notification_id=r[6],
        ref=r[7], cap=r[8], deferred_until=r[9], detail=r[10],
    )


async def insert_entries(conn: Conn, entries: Sequence[DeliveryEntry]) -> None:
    """Insert log entries in one statement, inside the caller's transaction if it has one."""
    await conn.execute(
        _INSERT,
        [e.at for e in entries],
        [e.user_id for e in entries],
        [e.channel for e in entries],
        [e.type for e in entries],
        [e.outcome for e in entries],
        [e.notification_id for e in entries],
        [e.ref for e in entries],
        [e.cap for e in entries],
        [e.deferred_until for e in entries],
        [e.detail for e in entries],
    )


def _query(where: DeliveryFilter, after: tuple[datetime, int] | None, limit: int) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    exact, prefix = DeliveryLogRules.family(where.outcome)
    for column, value in (
        ("user_id", where.user_id), ("notification_id", where.notification_id), ("type", where.type),
        ("channel", where.channel), ("outcome", exact),
    ):
        if value is not None:
            clauses.append(f"{column} = {arg(value)}")
    if prefix is not None:
        clauses.append(f"left(outcome, {arg(len(prefix))}) = {arg(prefix)}")
    if where.since is not None:
        clauses.append(f"at >= {arg(where.since)}")
    if where.until is not None:
        clauses.append(f"at < {arg(where.until)}")
    if after is not None:
        clauses.append(f"(at, n) < ({arg(after[0])}, {arg(after[1])})")
    sql = f"SELECT n, {_COLS} FROM delivery_log"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += f" ORDER BY at DESC, n DESC LIMIT {arg(limit)}"
    return sql, args


class PostgresDeliveryLog(PostgresEngine, DeliveryLogRules):
    """``DeliveryLogStore`` on PostgreSQL."""

    async def _record_deliveries(self, entries: list[DeliveryEntry]) -> None:
        await self._call(insert_entries, entries, tx=False)  # one statement

    async def _deliveries(
        self, where: DeliveryFilter, after: tuple[datetime, int] | None, limit: int
    ) -> list[DeliveryEntry]:
        sql, args = _query(where, after, limit)
        rows = await self._call(lambda conn: conn.fetch(sql, *args), tx=False, read=True)
        return [_entry(r) for r in rows]

    async def _stats(self, since: datetime, until: datetime, channel: str | None) -> list[tuple[int, str, int]]:
        sql = (
            "SELECT floor(extract(epoch FROM at) / 3600)::bigint AS hour, outcome, count(*) FROM delivery_log "
            "WHERE at >= $1 AND at < $2 AND ($3::text IS NULL OR channel = $3) "
            "GROUP BY hour, outcome ORDER BY hour, outcome COLLATE \"C\""
        )
        rows = await self._call(lambda conn: conn.fetch(sql, since, until, channel), tx=False, read=True)
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def _delete_deliveries(self, before: datetime) -> int:
        sql = "DELETE FROM delivery_log WHERE at < $1"
        return count(await self._call(lambda conn: conn.execute(sql, before), tx=False))
