"""PostgreSQL: activity feeds (``FeedStore``), searched with ``tsvector`` and a GIN index.

A batch is four statements in one transaction, whatever its size: the
activities are inserted from arrays, then the feeds' counters move (in feed
order, so that concurrent batches lock them in the same order and never
deadlock), then the feed items are inserted. The counters stay locked until
the commit, so the activities and their search index go in before them.
"""

from __future__ import annotations

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
from realtimed.store.postgres.engine import Conn, PostgresEngine
from realtimed.store.values import dumps, from_micros

__all__ = ["PostgresFeeds"]

_ITEM_COLS: Final = (
    "i.feed, i.seq, a.n, a.actor, a.verb, a.object, a.target, a.time, a.data, a.feeds, a.created_at"
)

_BUMP: Final = (
    "INSERT INTO feeds (feed, last_seq) SELECT f, c FROM unnest($1::text[], $2::bigint[]) AS t(f, c) "
    "ORDER BY f ON CONFLICT (feed) DO UPDATE SET last_seq = feeds.last_seq + excluded.last_seq "
    "RETURNING feed, last_seq, (SELECT epoch FROM feed_epoch)"
)
_INSERT_ACTIVITIES: Final = (
    "INSERT INTO activities (n, actor, verb, object, target, time, data, feeds, created_at, search) "
    "SELECT n, actor, verb, object, target, time, data::jsonb, feeds::jsonb, $9, to_tsvector('simple', body) "
    "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], "
    "$8::text[], $10::text[]) AS t(n, actor, verb, object, target, time, data, feeds, body)"
)
_INSERT_ITEMS: Final = (
    "INSERT INTO feed_items (feed, seq, activity, time, actor, verb, object) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], "
    "$7::text[])"
)


def _item(r: Any) -> FeedItem:
    return FeedItem(
        feed=r[0], seq=r[1],
        activity=ActivityRecord(
            id=activity_id(r[2]), actor=r[3], verb=r[4], object=r[5], target=r[6], time=r[7], data=r[8],
            feeds=tuple(r[9]), created_at=r[10],
        ),
    )


async def _append(conn: Conn, activities: list[NewActivity], now: datetime) -> AppendedActivities:
    ids = [r[0] for r in await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('activities', 'n')) FROM generate_series(1, $1)", len(activities)
    )]
    # The activities (and their search index) first: the feeds' counters are locked from
    # the bump to the commit, so concurrent batches to one feed wait only for the rest.
    await conn.execute(
        _INSERT_ACTIVITIES,
        ids, [a.actor for a in activities], [a.verb for a in activities], [a.object for a in activities],
        [a.target for a in activities], [a.time for a in activities], [a.data_json for a in activities],
        [dumps(list(a.feeds)) for a in activities], now,
        [search_text(a.actor, a.verb, a.object, a.target, a.data) for a in activities],
    )
    counts = Counter(feed for a in activities for feed in a.feeds)
    feeds = sorted(counts)
    rows = await conn.fetch(_BUMP, feeds, [counts[f] for f in feeds])
    next_seq = {r[0]: int(r[1]) - counts[r[0]] + 1 for r in rows}
    epochs = {r[0]: str(r[2]) for r in rows}
    items: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    records: list[ActivityRecord] = []
    seqs: list[dict[str, int]] = []
    for n, a in zip(ids, activities, strict=True):
        mine: dict[str, int] = {}
        for feed in a.feeds:
            seq = mine[feed] = next_seq[feed]
            next_seq[feed] = seq + 1
            for column, value in zip(items, (feed, seq, n, a.time, a.actor, a.verb, a.object), strict=True):
                column.append(value)
        seqs.append(mine)
        records.append(ActivityRecord(
            id=activity_id(n), actor=a.actor, verb=a.verb, object=a.object, target=a.target, time=a.time,
            data=a.data, feeds=a.feeds, created_at=now,
        ))
    await conn.execute(_INSERT_ITEMS, *items)
    return AppendedActivities(records, seqs, epochs)


async def _page(
    conn: Conn, query: ActivityQuery, words: list[str] | None, cursor: tuple[int, int] | None, limit: int
) -> list[FeedItem]:
    if words is not None and not words:
        return []
    where, args = ["i.feed = $1"], [query.feed]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (("actor", query.actor), ("verb", query.verb), ("object", query.object)):
        if value is not None:
            where.append(f"i.{column} = {arg(value)}")
    if query.since is not None:
        where.append(f"i.time >= {arg(query.since)}")
    if query.until is not None:
        where.append(f"i.time < {arg(query.until)}")
    if cursor is not None:
        at, seq = arg(from_micros(cursor[0])), arg(cursor[1])
        where.append(f"(i.time < {at} OR (i.time = {at} AND i.seq < {seq}))")
    if words:
        # Every match first, from the GIN index, then the newest of them: planned as one
        # query with its LIMIT, a rare word would be looked for by walking the feed from
        # its newest activity (a LIMIT invites that plan), the whole feed when few match.
        sql = (
            "WITH m AS MATERIALIZED (SELECT i.feed, i.seq, i.activity, i.time FROM activities s "
            f"JOIN feed_items i ON i.activity = s.n WHERE s.search @@ plainto_tsquery('simple', "
            f"{arg(' '.join(words))}) AND {' AND '.join(where)}) "
            f"SELECT {_ITEM_COLS} FROM m i JOIN activities a ON a.n = i.activity "
            f"ORDER BY i.time DESC, i.seq DESC LIMIT {arg(limit)}"
        )
    else:
        sql = (
            f"SELECT {_ITEM_COLS} FROM feed_items i JOIN activities a ON a.n = i.activity "
            f"WHERE {' AND '.join(where)} ORDER BY i.time DESC, i.seq DESC LIMIT {arg(limit)}"
        )
    return [_item(r) for r in await conn.fetch(sql, *args)]


async def _stats(
    conn: Conn, feed: str, start: datetime, end: datetime
) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], int]]:
    out: list[dict[tuple[int, str], int]] = []
    for column in ("verb", "actor"):
        rows = await conn.fetch(
            f"SELECT floor(extract(epoch FROM time) / 86400)::bigint AS day, {column}, count(*) FROM feed_items "
            f"WHERE feed = $1 AND time >= $2 AND time < $3 GROUP BY day, {column}",
            feed, start, end,
        )
        out.append({(int(r[0]), str(r[1])): int(r[2]) for r in rows})
    return out[0], out[1]


async def _prune(conn: Conn, prefix: str, before: datetime, excluded: list[str]) -> int:
    removed = await conn.fetch(
        "DELETE FROM feed_items WHERE starts_with(feed, $1) AND time < $2 "
        "AND NOT EXISTS (SELECT 1 FROM unnest($3::text[]) AS x(p) WHERE starts_with(feed, p)) RETURNING activity",
        prefix, before, excluded,
    )
    orphans = sorted({int(r[0]) for r in removed})
    if orphans:
        await conn.execute(
            "DELETE FROM activities WHERE n = ANY($1::bigint[]) "
            "AND NOT EXISTS (SELECT 1 FROM feed_items WHERE activity = activities.n)",
            orphans,
        )
    return len(removed)


class PostgresFeeds(PostgresEngine, FeedRules):
    """``FeedStore`` on PostgreSQL."""

    async def _feed_append(self, activities: list[NewActivity], now: datetime) -> AppendedActivities:
        return await self._call(_append, activities, now)

    async def _feed_position(self, feed: str) -> tuple[int, str]:
        sql = "SELECT (SELECT last_seq FROM feeds WHERE feed = $1), (SELECT epoch FROM feed_epoch)"
        row = await self._call(lambda conn: conn.fetchrow(sql, feed), tx=False, read=True)
        return (0 if row[0] is None else int(row[0])), str(row[1])

    async def _feed_after(self, feed: str, after_seq: int, limit: int) -> list[FeedItem]:
        sql = (
            f"SELECT {_ITEM_COLS} FROM feed_items i JOIN activities a ON a.n = i.activity "
            "WHERE i.feed = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, feed, after_seq, limit), tx=False, read=True)
        return [_item(r) for r in rows]

    async def _feed_page(
        self, query: ActivityQuery, words: list[str] | None, cursor: tuple[int, int] | None, limit: int
    ) -> list[FeedItem]:
        return await self._call(_page, query, words, cursor, limit, tx=False, read=True)

    async def _feed_stats(
        self, feed: str, start: datetime, end: datetime
    ) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], int]]:
        return await self._call(_stats, feed, start, end, read=True)

    async def _feed_prune(self, prefix: str, before: datetime, excluded: list[str]) -> int:
        return await self._call(_prune, prefix, before, excluded)
