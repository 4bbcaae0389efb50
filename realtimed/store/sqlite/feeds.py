"""SQLite: activity feeds (``FeedStore``), searched with FTS5."""

from __future__ import annotations

import functools
from collections import Counter
from datetime import datetime
from typing import Any, Final

from realtimed.store.feeds import (
    ActivityQuery,
    ActivityRecord,
    AppendedActivities,
    FeedItem,
    FeedRules,
    NewActivity,
    activity_id,
    search_text,
)
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, us
from realtimed.store.values import dumps, prefix_upper

__all__ = ["SQLiteFeeds"]

_ITEM_COLS: Final = (
    "i.feed, i.seq, a.n, a.actor, a.verb, a.object, a.target, a.time, a.data, a.feeds, a.created_at"
)
_DAY_US: Final = 86_400_000_000


def _item(r: Any) -> FeedItem:
    return FeedItem(
        feed=r[0], seq=r[1],
        activity=ActivityRecord(
            id=activity_id(r[2]), actor=r[3], verb=r[4], object=r[5], target=r[6], time=CODEC.time(r[7]),
            data=CODEC.json(r[8]), feeds=tuple(CODEC.json(r[9])), created_at=CODEC.time(r[10]),
        ),
    )


def _append(conn: Conn, activities: list[NewActivity], now: datetime) -> AppendedActivities:
    created = us(now)
    counts = Counter(feed for a in activities for feed in a.feeds)
    epoch = _epoch(conn)
    epochs: dict[str, str] = {}
    next_seq: dict[str, int] = {}
    for feed in sorted(counts):
        row = conn.execute(
            "INSERT INTO feeds (feed, last_seq) VALUES (?, ?) "
            "ON CONFLICT (feed) DO UPDATE SET last_seq = last_seq + excluded.last_seq RETURNING last_seq",
            (feed, counts[feed]),
        ).fetchone()
        next_seq[feed] = int(row[0]) - counts[feed] + 1
        epochs[feed] = epoch
    records: list[ActivityRecord] = []
    seqs: list[dict[str, int]] = []
    items: list[tuple[Any, ...]] = []
    for a in activities:
        n = conn.execute(
            "INSERT INTO activities (actor, verb, object, target, time, data, feeds, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING n",
            (a.actor, a.verb, a.object, a.target, us(a.time), a.data_json, dumps(list(a.feeds)), created),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO activities_fts (rowid, body) VALUES (?, ?)",
            (n, search_text(a.actor, a.verb, a.object, a.target, a.data)),
        )
        mine: dict[str, int] = {}
        for feed in a.feeds:
            seq = mine[feed] = next_seq[feed]
            next_seq[feed] = seq + 1
            items.append((feed, seq, n, us(a.time), a.actor, a.verb, a.object))
        seqs.append(mine)
        records.append(ActivityRecord(
            id=activity_id(n), actor=a.actor, verb=a.verb, object=a.object, target=a.target, time=a.time,
            data=a.data, feeds=a.feeds, created_at=now,
        ))
    conn.executemany(
        "INSERT INTO feed_items (feed, seq, activity, time, actor, verb, object) VALUES (?, ?, ?, ?, ?, ?, ?)", items
    )
    return AppendedActivities(records, seqs, epochs)


def _epoch(conn: Conn) -> str:
    return str(conn.execute("SELECT epoch FROM feed_epoch").fetchone()[0])


def _position(conn: Conn, feed: str) -> tuple[int, str]:
    row = conn.execute("SELECT last_seq FROM feeds WHERE feed = ?", (feed,)).fetchone()
    return (0 if row is None else int(row[0])), _epoch(conn)


def _after(conn: Conn, feed: str, after_seq: int, limit: int) -> list[FeedItem]:
    rows = conn.execute(
        f"SELECT {_ITEM_COLS} FROM feed_items i JOIN activities a ON a.n = i.activity "
        "WHERE i.feed = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
        (feed, after_seq, limit),
    ).fetchall()
    return [_item(r) for r in rows]


def _match(words: list[str]) -> str:
    """An FTS5 query: every word, each as a quoted string (so no word is read as syntax)."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _page(
    conn: Conn, query: ActivityQuery, words: list[str] | None, cursor: tuple[int, int] | None, limit: int
) -> list[FeedItem]:
    if words is not None and not words:
        return []
    where: list[str] = ["i.feed = ?"]
    args: list[Any] = [query.feed]
    for column, value in (("actor", query.actor), ("verb", query.verb), ("object", query.object)):
        if value is not None:
            where.append(f"i.{column} = ?")
            args.append(value)
    if query.since is not None:
        where.append("i.time >= ?")
        args.append(us(query.since))
    if query.until is not None:
        where.append("i.time < ?")
        args.append(us(query.until))
    if cursor is not None:
        where.append("(i.time < ? OR (i.time = ? AND i.seq < ?))")
        args.extend((cursor[0], cursor[0], cursor[1]))
    source = "feed_items i"
    if words:
        # Every match first, from the full-text index (CROSS JOIN keeps that order of the
        # loops), then the newest of them; not the feed walked from its newest activity.
        source = "(SELECT rowid AS n FROM activities_fts WHERE activities_fts MATCH ?) m CROSS JOIN feed_items i"
        where.append("i.activity = m.n")
        args.insert(0, _match(words))
    rows = conn.execute(
        f"SELECT {_ITEM_COLS} FROM {source} JOIN activities a ON a.n = i.activity "
        f"WHERE {' AND '.join(where)} ORDER BY i.time DESC, i.seq DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [_item(r) for r in rows]


def _stats(
    conn: Conn, feed: str, start: int, end: int
) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], int]]:
    out: list[dict[tuple[int, str], int]] = []
    for column in ("verb", "actor"):
        rows = conn.execute(
            f"SELECT time / {_DAY_US} AS day, {column}, count(*) FROM feed_items "
            f"WHERE feed = ? AND time >= ? AND time < ? GROUP BY day, {column}",
            (feed, start, end),
        ).fetchall()
        out.append({(int(r[0]), str(r[1])): int(r[2]) for r in rows})
    return out[0], out[1]


def _prefix_clause(prefix: str, args: list[Any], *, negate: bool = False) -> str:
    upper = prefix_upper(prefix)
    args.append(prefix)
    clause = "feed >= ?"
    if upper is not None:
        args.append(upper)
        clause += " AND feed < ?"
    return f"NOT ({clause})" if negate else f"({clause})"


def _prune(conn: Conn, prefix: str, before: int, excluded: list[str]) -> int:
    args: list[Any] = []
    where = [_prefix_clause(prefix, args)] if prefix else []
    for other in excluded:
        where.append(_prefix_clause(other, args, negate=True))
    where.append("time < ?")
    args.append(before)
    removed = conn.execute(
        f"DELETE FROM feed_items WHERE {' AND '.join(where)} RETURNING activity", args
    ).fetchall()
    orphans = sorted({int(r[0]) for r in removed})
    for start in range(0, len(orphans), 500):
        chunk = dumps(orphans[start:start + 500])
        gone = conn.execute(
            "DELETE FROM activities WHERE n IN (SELECT value FROM json_each(?)) "
            "AND NOT EXISTS (SELECT 1 FROM feed_items WHERE activity = activities.n) RETURNING n",
            (chunk,),
        ).fetchall()
        if gone:
            conn.execute(
                "DELETE FROM activities_fts WHERE rowid IN (SELECT value FROM json_each(?))",
                (dumps([int(r[0]) for r in gone]),),
            )
    return len(removed)


class SQLiteFeeds(SQLiteEngine, FeedRules):
    """``FeedStore`` on SQLite."""

    async def _feed_append(self, activities: list[NewActivity], now: datetime) -> AppendedActivities:
        return await self._write(functools.partial(_append, activities=activities, now=now))

    async def _feed_position(self, feed: str) -> tuple[int, str]:
        return await self._read(_position, feed)

    async def _feed_after(self, feed: str, after_seq: int, limit: int) -> list[FeedItem]:
        return await self._read(_after, feed, after_seq, limit)

    async def _feed_page(
        self, query: ActivityQuery, words: list[str] | None, cursor: tuple[int, int] | None, limit: int
    ) -> list[FeedItem]:
        return await self._read(_page, query, words, cursor, limit)

    async def _feed_stats(
        self, feed: str, start: datetime, end: datetime
    ) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], int]]:
        return await self._read(_stats, feed, us(start), us(end))

    async def _feed_prune(self, prefix: str, before: datetime, excluded: list[str]) -> int:
        return await self._write(functools.partial(_prune, prefix=prefix, before=us(before), excluded=excluded))
