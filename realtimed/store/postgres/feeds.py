"""PostgreSQL: activity feeds (``FeedStore``), searched with ``tsvector`` and a GIN index.

A batch is four statements in one transaction, whatever its size: the
activities are inserted from arrays, then the feeds' counters move (in feed
order, so that concurrent batches lock them in the same order and never
deadlock), then the feed items are inserted. The counters stay locked until
the commit, so the activities and their search index go in before them.

Appends are grouped: the calls of this node wait in one lane, and those that
came while a group was in flight go together in the next transaction (up to
2,000 activities), each keeping its own all-or-nothing: a group that fails is
sent again call by call. A feed's counter is then locked once per group rather
than once per call, which is what bounds the rate of a busy feed.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any, Final

import attrs
import outcome
import trio

from realtimed.errors import Unavailable
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

log = logging.getLogger(__name__)

# Most activities one grouped transaction carries (a batch larger than this goes alone).
_GROUP_MAX_ACTIVITIES: Final = 2000
# Calls waiting for the lane; more wait to be let in.
_LANE_DEPTH: Final = 64

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
    "SELECT n, actor, verb, object, target, time, data::jsonb, feeds::jsonb, created, to_tsvector('simple', body) "
    "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], "
    "$8::text[], $9::timestamptz[], $10::text[]) AS t(n, actor, verb, object, target, time, data, feeds, created, body)"
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


async def _append(conn: Conn, activities: list[NewActivity], created: list[datetime]) -> AppendedActivities:
    """asyncio side: store activities (``created``: each one's ``created_at``) in one transaction."""
    ids = [r[0] for r in await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('activities', 'n')) FROM generate_series(1, $1)", len(activities)
    )]
    # The activities (and their search index) first: the feeds' counters are locked from
    # the bump to the commit, so concurrent batches to one feed wait only for the rest.
    await conn.execute(
        _INSERT_ACTIVITIES,
        ids, [a.actor for a in activities], [a.verb for a in activities], [a.object for a in activities],
        [a.target for a in activities], [a.time for a in activities], [a.data_json for a in activities],
        [dumps(list(a.feeds)) for a in activities], created,
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
    for n, a, now in zip(ids, activities, created, strict=True):
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


@attrs.define(eq=False)
class _PendingBatch:
    """One ``append_activities`` call waiting for its group."""

    activities: list[NewActivity]
    now: datetime
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[AppendedActivities] | None = None


def _split(stored: AppendedActivities, sizes: list[int]) -> list[AppendedActivities]:
    """The share of each call of a group, in order."""
    out, start = [], 0
    for size in sizes:
        seqs = stored.seqs[start:start + size]
        feeds = {feed for mine in seqs for feed in mine}
        out.append(AppendedActivities(
            stored.activities[start:start + size], seqs, {f: e for f, e in stored.epochs.items() if f in feeds}
        ))
        start += size
    return out


class PostgresFeeds(PostgresEngine, FeedRules):
    """``FeedStore`` on PostgreSQL, with appends grouped (see the module docstring)."""

    _feed_lane: trio.MemorySendChannel[_PendingBatch] | None = None

    def _start_batching(self, nursery: trio.Nursery) -> None:
        super()._start_batching(nursery)
        send, recv = trio.open_memory_channel[_PendingBatch](_LANE_DEPTH)
        nursery.start_soon(self._feed_lane_task, recv)
        self._feed_lane = send

    def _stop_batching(self) -> None:
        self._feed_lane = None
        super()._stop_batching()

    async def _feed_append(self, activities: list[NewActivity], now: datetime) -> AppendedActivities:
        lane = self._feed_lane
        if lane is None:
            raise Unavailable("the store is not running")
        req = _PendingBatch(activities, now)
        try:
            await lane.send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the store is shutting down") from None
        await req.done.wait()
        assert req.result is not None
        return req.result.unwrap()

    async def _feed_lane_task(self, recv: trio.MemoryReceiveChannel[_PendingBatch]) -> None:
        """Send the waiting batches to PostgreSQL as groups, one group at a time: while
        one is in flight the next gathers, so under load one transaction, one lock of
        each feed's counter and one commit carry many batches; alone, a batch goes at once."""
        try:
            while True:
                group = [await recv.receive()]
                size = len(group[0].activities)
                while size < _GROUP_MAX_ACTIVITIES:
                    try:
                        req = recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    group.append(req)
                    size += len(req.activities)
                await self._send_feed_group(group)
        finally:
            recv.close()
            closing = Unavailable("the store is shutting down")
            while True:
                try:
                    left = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                left.result = outcome.Error(closing)
                left.done.set()

    async def _send_feed_group(self, group: list[_PendingBatch]) -> None:
        activities = [a for req in group for a in req.activities]
        created = [req.now for req in group for _ in req.activities]
        try:
            stored = await self._call(_append, activities, created)
        except Unavailable as exc:
            for req in group:
                err = Unavailable(exc.message)
                err.__cause__ = exc.__cause__
                req.result = outcome.Error(err)
        except Exception as exc:
            if len(group) > 1:
                # The transaction failed as a whole and changed nothing: each batch alone,
                # so that only the one at fault fails.
                log.warning("store: a group of %d activity batches failed (%s); sending them one by one",
                            len(group), exc)
                for req in group:
                    await self._send_feed_group([req])
                return
            log.exception("store: an activity batch failed")
            group[0].result = outcome.Error(exc)
        else:
            for req, share in zip(group, _split(stored, [len(r.activities) for r in group]), strict=True):
                req.result = outcome.Value(share)
        finally:
            for req in group:
                req.done.set()

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
