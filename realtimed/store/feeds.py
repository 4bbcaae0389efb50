"""Activity feeds in the store: activities, the feeds they belong to, search and stats.

``FeedStore`` is the Protocol, ``NewActivity``, ``ActivityRecord`` and
``FeedItem`` its records; ``FeedRules`` holds the rules, written once. An
activity is stored once and listed in each of its feeds, where it takes the
feed's next ``seq``: each feed is a durable stream with a gap-free, strictly
increasing ``seq`` starting at 1, in commit order; the ``epoch`` of every feed is
the database's, chosen when its schema was made (docs/protocol.md, "Activity feeds").

Search is over the words of an activity (actor, verb, object, target and the
strings of its data): SQLite FTS5, PostgreSQL ``tsvector`` with a GIN index.
A query is its words (letters and digits), every one of which must appear.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import attrs

from realtimed.clock import iso
from realtimed.errors import ValidationFailed
from realtimed.store.paging import clamp_limit, decode_cursor, encode_cursor
from realtimed.store.values import from_micros, to_micros, utc

__all__ = [
    "ActivityQuery",
    "ActivityRecord",
    "AppendedActivities",
    "FeedItem",
    "FeedPage",
    "FeedRules",
    "FeedStats",
    "FeedStore",
    "NewActivity",
    "search_text",
    "search_words",
]

# Words of the searchable text and of a query: runs of letters and digits, the
# same on both backends' tokenizers for plain words.
_WORD: Final = re.compile(r"[^\W_]+")
# Bounds on what is indexed of one activity's data (its size is bounded at the edge).
_MAX_SEARCH_CHARS: Final = 8192
_DAY_US: Final = 86_400_000_000
# The times a cursor may hold: those a datetime can (years 1 to 9999).
_MIN_US: Final = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_US: Final = to_micros(datetime.max.replace(tzinfo=UTC))


def search_words(q: str) -> list[str]:
    """The words of a search query, lower-cased, in order, without repeats."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(q)))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def search_text(actor: str, verb: str, obj: str, target: str | None, data: Any) -> str:
    """What search indexes of an activity: its words, separated by spaces."""
    parts = [actor, verb, obj, target or "", *_strings(data)]
    return " ".join(_WORD.findall(" ".join(parts)))[:_MAX_SEARCH_CHARS]


@attrs.frozen
class NewActivity:
    """An activity to log (checked at the edge): ``data`` is a JSON object, ``data_json`` its encoding."""

    actor: str
    verb: str
    object: str
    target: str | None
    time: datetime
    data: dict[str, Any]
    data_json: str
    feeds: tuple[str, ...]


@attrs.frozen
class ActivityRecord:
    """A logged activity."""

    id: str
    actor: str
    verb: str
    object: str
    target: str | None
    time: datetime
    data: Any
    feeds: tuple[str, ...]
    created_at: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "actor": self.actor,
            "verb": self.verb,
            "object": self.object,
            "target": self.target,
            "time": iso(self.time),
            "data": self.data,
            "feeds": list(self.feeds),
            "created_at": iso(self.created_at),
        }


def activity_id(n: int) -> str:
    """The wire id of the activity stored as row ``n``."""
    return f"a_{n}"


def activity_number(activity_id: str) -> int | None:
    """The row of a wire id, or None for an id that is no activity's."""
    if not activity_id.startswith("a_") or not activity_id[2:].isdigit() or len(activity_id) > 21:
        return None
    return int(activity_id[2:])


@attrs.frozen
class FeedItem:
    """An activity at its place in one feed."""

    feed: str
    seq: int
    activity: ActivityRecord

    def to_wire(self) -> dict[str, Any]:
        return {**self.activity.to_wire(), "feed": self.feed, "seq": self.seq}


@attrs.frozen
class AppendedActivities:
    """What ``append_activities`` stored: the records in the order given, each
    one's ``seq`` in each of its feeds, and the epoch of every feed written."""

    activities: list[ActivityRecord]
    seqs: list[dict[str, int]]
    epochs: dict[str, str]


@attrs.frozen
class ActivityQuery:
    """A read of one feed: filters (all optional), a page. ``since`` is inclusive, ``until`` exclusive."""

    feed: str
    actor: str | None = None
    verb: str | None = None
    object: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None
    cursor: str | None = None
    limit: int = 50


@attrs.frozen
class FeedPage:
    """Activities of one feed, newest first (by ``time``, then ``seq``); ``next_cursor`` None at the end."""

    items: list[FeedItem]
    next_cursor: str | None


@attrs.frozen
class FeedStats:
    """Counts per UTC day: by verb and by actor (the most active ``top_actors``)."""

    days: list[dict[str, Any]]


class FeedStore(Protocol):
    """Activities and feeds.

    Atomicity: ``append_activities`` is one transaction: every activity of the
    batch is stored and listed in each of its feeds, or none is.

    Ordering: a feed's ``seq`` is gap-free and strictly increasing in commit
    order, also under concurrent appends to the same feed; within one batch,
    activities take their seqs in the order given.

    Expiry: nothing expires by itself; ``RetentionStore.delete_feed_activities``
    is the retention call (its rules are here, in ``FeedRules``).
    """

    async def append_activities(self, *, activities: Sequence[NewActivity], now: datetime) -> AppendedActivities:
        """Store activities and list them in their feeds (``now`` is their ``created_at``)."""
        ...

    async def feed_position(self, feed: str) -> tuple[int, str]:
        """The feed's latest ``seq`` (0 before its first activity) and its epoch."""
        ...

    async def feed_after(self, feed: str, *, after_seq: int, limit: int) -> list[FeedItem]:
        """At most ``limit`` activities of the feed with ``seq`` above ``after_seq``, ascending."""
        ...

    async def read_feed(self, query: ActivityQuery) -> FeedPage:
        """A page of the feed, newest first, filtered.

        Raises:
            ValidationFailed: the cursor (field ``cursor``) is malformed.
        """
        ...

    async def feed_stats(self, feed: str, *, days: int, now: datetime, top_actors: int) -> FeedStats:
        """Counts by verb and by actor per UTC day, for the ``days`` days up to ``now``'s, oldest first."""
        ...


class FeedRules(abc.ABC):
    """``FeedStore``'s rules over a backend's primitives."""

    async def append_activities(self, *, activities: Sequence[NewActivity], now: datetime) -> AppendedActivities:
        if not activities:
            return AppendedActivities([], [], {})
        batch = [attrs.evolve(a, time=utc(a.time)) for a in activities]
        return await self._feed_append(batch, utc(now))

    async def feed_position(self, feed: str) -> tuple[int, str]:
        return await self._feed_position(feed)

    async def feed_after(self, feed: str, *, after_seq: int, limit: int) -> list[FeedItem]:
        return await self._feed_after(feed, after_seq, max(1, limit))

    async def read_feed(self, query: ActivityQuery) -> FeedPage:
        limit = clamp_limit(query.limit)
        cursor = None
        if query.cursor is not None:
            time_us, seq = decode_cursor(query.cursor, (int, int))
            if not _MIN_US <= time_us <= _MAX_US:
                raise ValidationFailed("cursor", "not a valid cursor")
            cursor = (time_us, seq)
        words = search_words(query.q) if query.q is not None else None
        rows = await self._feed_page(query, words, cursor, limit + 1)
        items, more = rows[:limit], len(rows) > limit
        last = items[-1] if items else None
        next_cursor = encode_cursor(to_micros(last.activity.time), last.seq) if more and last is not None else None
        return FeedPage(items, next_cursor)

    async def feed_stats(self, feed: str, *, days: int, now: datetime, top_actors: int) -> FeedStats:
        last_day = to_micros(utc(now)) // _DAY_US
        first_day = last_day - days + 1
        by_verb, by_actor = await self._feed_stats(feed, from_micros(first_day * _DAY_US), from_micros((last_day + 1) * _DAY_US))
        out: list[dict[str, Any]] = []
        for day in range(first_day, last_day + 1):
            verbs = {v: n for (d, v), n in sorted(by_verb.items()) if d == day}
            actors = sorted(((a, n) for (d, a), n in by_actor.items() if d == day), key=lambda an: (-an[1], an[0]))
            out.append({
                "day": from_micros(day * _DAY_US).date().isoformat(),
                "total": sum(verbs.values()),
                "verbs": verbs,
                "actors": dict(actors[:top_actors]),
                "actor_count": len(actors),
            })
        return FeedStats(out)

    async def delete_feed_activities(self, *, prefix: str, before: datetime, except_prefixes: Sequence[str] = ()) -> int:
        excluded = [p for p in except_prefixes if p != prefix and p.startswith(prefix)]
        return await self._feed_prune(prefix, utc(before), excluded)

    @abc.abstractmethod
    async def _feed_append(self, activities: list[NewActivity], now: datetime) -> AppendedActivities: ...

    @abc.abstractmethod
    async def _feed_position(self, feed: str) -> tuple[int, str]: ...

    @abc.abstractmethod
    async def _feed_after(self, feed: str, after_seq: int, limit: int) -> list[FeedItem]: ...

    @abc.abstractmethod
    async def _feed_page(
        self, query: ActivityQuery, words: list[str] | None, cursor: tuple[int, int] | None, limit: int
    ) -> list[FeedItem]:
        """Rows newest first (time, then seq, descending) after ``cursor``; ``words``: all must match
        (an empty list matches nothing)."""

    @abc.abstractmethod
    async def _feed_stats(
        self, feed: str, start: datetime, end: datetime
    ) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], int]]:
        """Counts by (day number since the epoch, verb) and by (day, actor) of activities timed in [start, end)."""

    @abc.abstractmethod
    async def _feed_prune(self, prefix: str, before: datetime, excluded: list[str]) -> int: ...
