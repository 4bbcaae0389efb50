"""SQLite: the delivery log (``DeliveryLogStore``)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from realtimed.store.deliveries import DeliveryEntry, DeliveryFilter, DeliveryLogRules
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, us

__all__ = ["SQLiteDeliveryLog", "insert_entries"]

_COLS: Final = "at, user_id, channel, type, outcome, notification_id, ref, cap, deferred_until, detail"
_INSERT: Final = f"INSERT INTO delivery_log ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_HOUR_US: Final = 3_600_000_000


def _entry(r: Any) -> DeliveryEntry:
    return DeliveryEntry(
        id=r[0], at=CODEC.time(r[1]), user_id=r[2], channel=r[3], type=r[4], outcome=r[5], notification_id=r[6],
        ref=r[7], cap=r[8], deferred_until=CODEC.opt_time(r[9]), detail=r[10],
    )


def insert_entries(conn: Conn, entries: Iterable[DeliveryEntry]) -> None:
    """Insert log entries inside the caller's transaction (the inbox's, for in-app deliveries)."""
    conn.executemany(
        _INSERT,
        [
            (us(e.at), e.user_id, e.channel, e.type, e.outcome, e.notification_id, e.ref, e.cap,
             us(e.deferred_until) if e.deferred_until is not None else None, e.detail)
            for e in entries
        ],
    )


def _deliveries(conn: Conn, where: DeliveryFilter, after: tuple[datetime, int] | None, limit: int) -> list[DeliveryEntry]:
    clauses: list[str] = []
    args: list[Any] = []
    exact, prefix = DeliveryLogRules.family(where.outcome)
    for column, value in (
        ("user_id", where.user_id), ("notification_id", where.notification_id), ("type", where.type),
        ("channel", where.channel), ("outcome", exact),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if prefix is not None:
        clauses.append("substr(outcome, 1, ?) = ?")
        args += [len(prefix), prefix]
    if where.since is not None:
        clauses.append("at >= ?")
        args.append(us(where.since))
    if where.until is not None:
        clauses.append("at < ?")
        args.append(us(where.until))
    if after is not None:
        clauses.append("(at < ? OR (at = ? AND n < ?))")
        args += [us(after[0]), us(after[0]), after[1]]
    sql = f"SELECT n, {_COLS} FROM delivery_log"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY at DESC, n DESC LIMIT ?"
    return [_entry(r) for r in conn.execute(sql, (*args, limit)).fetchall()]


def _stats(conn: Conn, since: int, until: int, channel: str | None) -> list[tuple[int, str, int]]:
    sql = (
        f"SELECT at / {_HOUR_US} AS hour, outcome, count(*) FROM delivery_log WHERE at >= ? AND at < ? "
        + ("AND channel = ? " if channel is not None else "")
        + "GROUP BY hour, outcome ORDER BY hour, outcome"
    )
    args: tuple[Any, ...] = (since, until, channel) if channel is not None else (since, until)
    return [(int(r[0]), str(r[1]), int(r[2])) for r in conn.execute(sql, args).fetchall()]


def _delete(conn: Conn, before: int) -> int:
    return conn.execute("DELETE FROM delivery_log WHERE at < ?", (before,)).rowcount


class SQLiteDeliveryLog(SQLiteEngine, DeliveryLogRules):
    """``DeliveryLogStore`` on SQLite."""

    async def _record_deliveries(self, entries: list[DeliveryEntry]) -> None:
        await self._write(functools.partial(insert_entries, entries=entries))

    async def _deliveries(
        self, where: DeliveryFilter, after: tuple[datetime, int] | None, limit: int
    ) -> list[DeliveryEntry]:
        return await self._read(_deliveries, where, after, limit)

    async def _stats(self, since: datetime, until: datetime, channel: str | None) -> list[tuple[int, str, int]]:
        return await self._read(_stats, us(since), us(until), channel)

    async def _delete_deliveries(self, before: datetime) -> int:
        return await self._write(functools.partial(_delete, before=us(before)))
