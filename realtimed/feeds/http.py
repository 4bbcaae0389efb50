"""Activity feeds in the server API and the client REST (docs/protocol.md, "Activity feeds").

Server API (the door checks the API key before these routes run):

- ``POST /activities`` ``{"activities": [...]}`` → ``{"activities": [{id, seqs}]}``: log a batch
- ``GET /feeds/<feed>/activities?actor=&verb=&object=&since=&until=&q=&cursor=&limit=`` → a page
- ``GET /feeds/<feed>/stats?days=N`` → counts by verb and by actor per day

Client REST: ``GET /api/v1/feeds/<feed>/activities`` is the op ``feed.activities``.

Every route answers 503 while ``feeds.enabled`` is off.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from quart import g

from realtimed import protocol
from realtimed.api.routes import (
    Kind,
    OpCall,
    OpInput,
    OpReply,
    QueryInt,
    QueryText,
    RequestParts,
    Route,
    WholeBody,
    out,
    query_int,
    query_text,
    route,
    services,
    wire,
)
from realtimed.auth import Claims
from realtimed.errors import Unavailable
from realtimed.feeds.service import FeedService
from realtimed.protocol import JsonSchema

__all__ = ["routes"]

_TAG: Final = "feeds"


def _service() -> FeedService:
    svc = services()
    if svc.feeds is None or not svc.feeds.enabled:
        raise Unavailable("activity feeds are off on this node (feeds.enabled)")
    return svc.feeds


def _guard() -> None:
    _service()


_ACTIVITY_INPUT: Final[JsonSchema] = {
    "type": "object",
    "required": ["actor", "verb", "object", "feeds"],
    "properties": {
        "actor": {"type": "string", "minLength": 1, "maxLength": protocol.MAX_ACTOR_CHARS},
        "verb": {"type": "string", "minLength": 1, "maxLength": protocol.MAX_VERB_CHARS},
        "object": {"type": "string", "minLength": 1, "maxLength": protocol.MAX_OBJECT_CHARS},
        "target": {"type": ["string", "null"], "minLength": 1, "maxLength": protocol.MAX_OBJECT_CHARS},
        "time": {
            "type": ["string", "null"], "format": "date-time",
            "description": "RFC 3339, from 1970 to feeds.max_future_s ahead; absent: now",
        },
        "data": {"type": ["object", "null"], "description": "at most feeds.max_data_bytes of JSON"},
        "feeds": {
            "type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Feed"},
            "description": "the feeds it belongs to (at most feeds.max_feeds_per_activity)",
        },
    },
}
_LOG_BODY: Final[JsonSchema] = {
    "type": "object",
    "required": ["activities"],
    "properties": {
        "activities": {
            "type": "array", "minItems": 1, "items": _ACTIVITY_INPUT,
            "description": "at most feeds.max_batch (more: 413)",
        },
    },
}


@attrs.frozen
class LogInput:
    body: dict[str, Any] = wire(WholeBody(_LOG_BODY))


@attrs.frozen
class Logged:
    """Each activity's id and its seq in each of its feeds, in the order given."""

    activities: list[dict[str, Any]] = out({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["id", "seqs"],
            "properties": {
                "id": {"type": "string"},
                "seqs": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1},
                         "description": "feed name to the activity's seq in it"},
            },
        },
    })


@route(
    "POST", "/activities", door="server", operation_id="logActivities",
    summary="Log activities (up to feeds.max_batch) to their feeds: stored, then sent to each feed's subscribers",
    tag=_TAG, accepts=LogInput, answers=Logged, guards=(_guard,), errors=(503,),
)
async def log_activities(inp: LogInput) -> Logged:
    feeds = _service()
    stored = await feeds.log_activities(feeds.parse_batch(inp.body))
    return Logged(activities=[
        {"id": record.id, "seqs": seqs} for record, seqs in zip(stored.activities, stored.seqs, strict=True)
    ])


@attrs.frozen
class _Feed(Kind):
    """A feed name in the path (``protocol.validate_feed``)."""

    def parse(self, source: Any, name: str, parts: RequestParts) -> Any:
        return protocol.validate_feed(source[name], name)

    def schema(self, cfg: Any) -> JsonSchema:
        return {"$ref": "#/components/schemas/Feed"}


@attrs.frozen
class _Name(QueryText):
    """An actor, verb or object to filter on: as an activity's own (no control characters)."""

    def parse(self, source: Any, name: str, parts: RequestParts) -> Any:
        value = super().parse(source, name, parts)
        return None if value is None else protocol.validate_name(value, name, max_len=self.max_len)


@attrs.frozen
class ReadInput:
    feed: str = wire(_Feed(), "path")
    actor: str | None = wire(_Name(protocol.MAX_ACTOR_CHARS, "only this actor's"), "query")
    verb: str | None = wire(_Name(protocol.MAX_VERB_CHARS, "only this verb"), "query")
    object: str | None = wire(_Name(protocol.MAX_OBJECT_CHARS, "only about this object"), "query")
    since: str | None = wire(QueryText(64, "RFC 3339: only activities timed at or after this"), "query")
    until: str | None = wire(QueryText(64, "RFC 3339: only activities timed before this"), "query")
    q: str | None = wire(QueryText(protocol.MAX_SEARCH_CHARS, "full-text search: every word must appear"), "query")
    cursor: str | None = wire(QueryText(protocol.MAX_CURSOR_CHARS, "next_cursor of the previous page"), "query")
    limit: int = wire(QueryInt(50, 1, 1000), "query")


@attrs.frozen
class Page:
    """Activities of the feed, newest first (by time, then seq)."""

    activities: list[dict[str, Any]] = out({"type": "array", "items": {"$ref": "#/components/schemas/Activity"}})
    next_cursor: str | None = out({"type": ["string", "null"], "description": "null at the end"})


@route(
    "GET", "/feeds/<path:feed>/activities", door="server", operation_id="readFeed",
    summary="A page of a feed, newest first, filtered by actor, verb, object, time range, or searched",
    tag=_TAG, accepts=ReadInput, answers=Page, guards=(_guard,), errors=(503,),
)
async def read_feed(inp: ReadInput) -> Page:
    found = await _service().read(
        inp.feed, actor=inp.actor, verb=inp.verb, object=inp.object, since=inp.since, until=inp.until, q=inp.q,
        cursor=inp.cursor, limit=inp.limit,
    )
    return Page(activities=found["activities"], next_cursor=found["next_cursor"])


@attrs.frozen
class StatsInput:
    feed: str = wire(_Feed(), "path")
    days: int = wire(QueryInt(7, 1, 3660, "the days up to today (UTC), at most feeds.max_stats_days"), "query")


_DAY: Final[JsonSchema] = {
    "type": "object",
    "required": ["day", "total", "verbs", "actors", "actor_count"],
    "properties": {
        "day": {"type": "string", "format": "date"},
        "total": {"type": "integer", "minimum": 0},
        "verbs": {"type": "object", "additionalProperties": {"type": "integer"}},
        "actors": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "the most active (feeds.stats_top_actors)"},
        "actor_count": {"type": "integer", "minimum": 0, "description": "distinct actors that day"},
    },
}


@attrs.frozen
class Stats:
    """Counts per UTC day, oldest first, by activity time."""

    feed: str = out({"$ref": "#/components/schemas/Feed"})
    days: list[dict[str, Any]] = out({"type": "array", "items": _DAY})


@route(
    "GET", "/feeds/<path:feed>/stats", door="server", operation_id="feedStats",
    summary="Counts by verb and by actor per day (UTC) over the last days",
    tag=_TAG, accepts=StatsInput, answers=Stats, guards=(_guard,), errors=(503,),
)
async def feed_stats(inp: StatsInput) -> Stats:
    found = await _service().stats(inp.feed, days=inp.days)
    return Stats(feed=found["feed"], days=found["days"])


# -- client REST -----------------------------------------------------------------------------


@route(
    "GET", "/feeds/<path:feed>/activities", door="client", operation_id="readFeedAsUser",
    summary="A page of a feed the caller may subscribe to (feed.activities)", tag=_TAG,
    accepts=OpInput(
        ("feed.activities",),
        path=("feed",),
        query={name: query_text for name in ("actor", "verb", "object", "since", "until", "q", "cursor")}
        | {"limit": query_int},
    ),
    answers=OpReply("feed.activities"), guards=(_guard,), errors=(503,),
)
async def read_feed_as_user(call: OpCall) -> dict[str, Any]:
    claims: Claims = g.claims
    return await _service().read_for(claims, call.value)


def routes() -> tuple[Route, ...]:
    """The activity feed routes of both doors."""
    return (log_activities, read_feed, feed_stats, read_feed_as_user)

