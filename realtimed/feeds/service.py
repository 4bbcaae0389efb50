"""Activity feeds: logging activities, live delivery to feed rooms, recovery and reads.

An activity (actor, verb, object, target, time, data) is logged by the
application through the server API to one or more feeds (``user:alice``,
``team:t1``, ``global``: names with the rules of room names). It is stored
first (``FeedStore.append_activities``: each feed gives it its next ``seq``),
then sent as ``feed.activity`` to the subscribers of each feed's room,
``feed:<name>``, on every node. A subscriber that comes back with ``since``
recovers what it missed from the store (``FeedService.recover``, called by the
router for feed rooms), never from the bounded room history.

Who may read a feed is who may subscribe to its room (docs/protocol.md 5.1: a
public namespace, or a pattern of the token's ``rooms`` claim), and every user
may read their own ``user:<id>`` feed.

Resource handling: the service holds nothing; the store and the router are
the daemon's.

Error handling: every field is checked at the edge (``parse_batch``), each
failure naming its field (``activities[3].feeds[0]``); an activity whose data
is over ``feeds.max_data_bytes``, or a batch over ``feeds.max_batch``, is
``PayloadTooLarge``. A store that cannot be reached raises ``Unavailable``
before anything is delivered; a broker that cannot be reached after the store
write is logged (the activities are stored: subscribers recover them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from realtimed import protocol
from realtimed.api.ops import Caller, OpHandler
from realtimed.auth import Claims
from realtimed.clock import WallClock, iso, parse_iso
from realtimed.config import Config, FeedsConfig
from realtimed.delivery.rooms import Publication, Recovery
from realtimed.delivery.router import Router
from realtimed.errors import PayloadTooLarge, Unavailable, ValidationFailed
from realtimed.live import Live
from realtimed.room_ops import check_subscribe
from realtimed.store.base import Store
from realtimed.store.feeds import ActivityQuery, AppendedActivities, FeedItem, NewActivity

__all__ = ["FeedService", "feed_of_room", "parse_activity_time", "parse_time"]

log = logging.getLogger(__name__)

_EPOCH_START: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?", re.ASCII)


def feed_of_room(room: str) -> str | None:
    """The feed whose room this is, or None."""
    return room[len(protocol.FEED_ROOM_PREFIX):] if room.startswith(protocol.FEED_ROOM_PREFIX) else None


def parse_time(value: object, field: str) -> datetime:
    """An RFC 3339 time (without a zone: UTC)."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValidationFailed(field, "must be an RFC 3339 time")
    try:
        return parse_iso(value)
    except (ValueError, OverflowError):
        raise ValidationFailed(field, "must be an RFC 3339 time") from None


def parse_activity_time(value: object, field: str, *, now: datetime, max_future_s: float) -> datetime:
    """An RFC 3339 time, from 1970 to ``max_future_s`` after ``now``."""
    dt = parse_time(value, field)
    if dt < _EPOCH_START:
        raise ValidationFailed(field, "must not be before 1970")
    if dt > now + timedelta(seconds=max_future_s):
        raise ValidationFailed(field, f"must not be more than {max_future_s:g} s ahead of the server's clock")
    return dt


def _text(item: Mapping[str, Any], name: str, path: str, *, max_len: int, required: bool = True) -> str | None:
    field = f"{path}.{name}"
    value = item.get(name)
    if value is None:
        if required:
            raise ValidationFailed(field, "is required")
        return None
    return protocol.validate_name(value, field, max_len=max_len)


def _nul_free(value: Any) -> bool:
    """No NUL character in any string or key (PostgreSQL cannot store one in jsonb)."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all("\x00" not in k and _nul_free(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_nul_free(v) for v in value)
    return True


class FeedService:
    """Logs activities, delivers them live, answers feed rooms' recovery and reads."""

    def __init__(self, config: Live[Config], *, store: Store, router: Router, clock: WallClock) -> None:
        self._config = config
        self.store = store
        self.router = router
        self.clock = clock
        #: Read at start: the router takes feed rooms from the store only then.
        self.enabled = config.value.feeds.enabled

    @property
    def cfg(self) -> FeedsConfig:
        return self._config.value.feeds

    # -- the edge --------------------------------------------------------------------------------

    def parse_batch(self, body: Mapping[str, Any]) -> list[NewActivity]:
        """The ``activities`` of a ``POST /server/v1/activities`` body, checked.

        Raises:
            ValidationFailed: a field is missing, of the wrong type or out of range (named).
            PayloadTooLarge: more than ``feeds.max_batch`` activities (field ``activities``),
                or data over ``feeds.max_data_bytes`` (field ``activities[i].data``).
        """
        cfg = self.cfg
        raw = body.get("activities")
        if raw is None:
            raise ValidationFailed("activities", "is required")
        if not isinstance(raw, list):
            raise ValidationFailed("activities", "must be a list of activities")
        if not raw:
            raise ValidationFailed("activities", "must have at least one activity")
        if len(raw) > cfg.max_batch:
            raise PayloadTooLarge(
                f"activities: at most {cfg.max_batch} activities per call (feeds.max_batch)", field="activities"
            )
        now = self.clock.now()
        return [self._parse_one(item, f"activities[{i}]", now, cfg) for i, item in enumerate(raw)]

    def _parse_one(self, item: Any, path: str, now: datetime, cfg: FeedsConfig) -> NewActivity:
        if not isinstance(item, dict):
            raise ValidationFailed(path, "must be an object")
        actor = _text(item, "actor", path, max_len=protocol.MAX_ACTOR_CHARS)
        verb = _text(item, "verb", path, max_len=protocol.MAX_VERB_CHARS)
        obj = _text(item, "object", path, max_len=protocol.MAX_OBJECT_CHARS)
        target = _text(item, "target", path, max_len=protocol.MAX_OBJECT_CHARS, required=False)
        assert actor is not None and verb is not None and obj is not None
        raw_time = item.get("time")
        time = now if raw_time is None else parse_activity_time(
            raw_time, f"{path}.time", now=now, max_future_s=cfg.max_future_s
        )
        data = item.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValidationFailed(f"{path}.data", "must be an object")
        try:
            encoded = orjson.dumps(data)
        except orjson.JSONEncodeError:
            raise ValidationFailed(f"{path}.data", "cannot be encoded as JSON") from None
        if len(encoded) > cfg.max_data_bytes:
            raise PayloadTooLarge(
                f"{path}.data: at most {cfg.max_data_bytes} bytes of JSON (feeds.max_data_bytes)", field=f"{path}.data"
            )
        if not _nul_free(data):
            raise ValidationFailed(f"{path}.data", "must not contain NUL characters")
        feeds = item.get("feeds")
        if feeds is None:
            raise ValidationFailed(f"{path}.feeds", "is required")
        if not isinstance(feeds, list) or not feeds:
            raise ValidationFailed(f"{path}.feeds", "must be a list of one or more feed names")
        if len(feeds) > cfg.max_feeds_per_activity:
            raise ValidationFailed(
                f"{path}.feeds", f"must have at most {cfg.max_feeds_per_activity} feeds (feeds.max_feeds_per_activity)"
            )
        names = tuple(dict.fromkeys(protocol.validate_feed(f, f"{path}.feeds[{j}]") for j, f in enumerate(feeds)))
        return NewActivity(
            actor=actor, verb=verb, object=obj, target=target, time=time, data=data,
            data_json=encoded.decode("utf-8"), feeds=names,
        )

    def parse_time(self, value: str | None, field: str) -> datetime | None:
        """A time filter (``since``, ``until``): any RFC 3339 time."""
        return None if value is None else parse_time(value, field)

    # -- logging ---------------------------------------------------------------------------------

    async def log_activities(self, activities: Sequence[NewActivity]) -> AppendedActivities:
        """Store a checked batch, then deliver each activity to each of its feeds' rooms."""
        stored = await self.store.append_activities(activities=activities, now=self.clock.now())
        remote = True
        for record, seqs in zip(stored.activities, stored.seqs, strict=True):
            wire = record.to_wire()
            for feed, seq in seqs.items():
                data = {"activity": {**wire, "feed": feed, "seq": seq}}
                try:
                    await self.router.publish_feed(
                        protocol.FEED_ROOM_PREFIX + feed, protocol.FEED_ACTIVITY_EVENT, data,
                        seq=seq, epoch=stored.epochs[feed], remote=remote,
                    )
                except Unavailable:
                    # Stored and sent here: subscribers on other nodes recover the rest of
                    # the batch with since; it is not offered to the broker again.
                    remote = False
                    log.warning("activity %s and the rest of its batch not published to other nodes: "
                                "broker unavailable", record.id)
        return stored

    # -- feed rooms (the router's FeedSource) ----------------------------------------------------

    def is_feed_room(self, room: str) -> bool:
        return room.startswith(protocol.FEED_ROOM_PREFIX)

    async def position(self, room: str) -> tuple[int, str]:
        feed = feed_of_room(room)
        assert feed is not None
        return await self.store.feed_position(feed)

    async def recover(self, room: str, *, since_seq: int, since_epoch: str) -> Recovery:
        """Every activity of the feed after ``since_seq``, from the store, in order; or
        ``recovered`` false: another epoch (a ``since_seq`` of 0 matches any), a position
        ahead of the feed, more missed than ``feeds.recovery_cap``, or some pruned."""
        feed = feed_of_room(room)
        assert feed is not None
        seq, epoch = await self.store.feed_position(feed)
        if since_seq > seq or (since_seq > 0 and since_epoch != epoch):
            return Recovery(seq, epoch, False)
        missed = seq - since_seq
        if missed == 0:
            return Recovery(seq, epoch, True)
        if missed > self.cfg.recovery_cap:
            return Recovery(seq, epoch, False)
        items = await self.store.feed_after(feed, after_seq=since_seq, limit=missed)
        if [i.seq for i in items] != list(range(since_seq + 1, seq + 1)):
            return Recovery(seq, epoch, False)  # retention removed some of them
        return Recovery(seq, epoch, True, tuple(_publication(item) for item in items))

    def ops(self) -> dict[str, OpHandler]:
        """The client op ``feed.activities``, for the daemon to add to the op registry."""

        async def feed_activities(caller: Caller, value: Any) -> dict[str, Any]:
            return await self.read_for(caller.claims, value)

        return {"feed.activities": feed_activities}

    async def read_for(self, claims: Claims, value: protocol.FeedActivities) -> dict[str, Any]:
        """``feed.activities`` for a user: allowed as subscribing to the feed's room is."""
        if not self.enabled:
            raise Unavailable("activity feeds are off on this node (feeds.enabled)")
        check_subscribe(claims, self.router, protocol.FEED_ROOM_PREFIX + value.feed)
        return await self.read(
            value.feed, actor=value.actor, verb=value.verb, object=value.object, since=value.since,
            until=value.until, q=value.q, cursor=value.cursor, limit=value.limit,
        )

    # -- reads -----------------------------------------------------------------------------------

    async def read(
        self, feed: str, *, actor: str | None, verb: str | None, object: str | None, since: str | None,
        until: str | None, q: str | None, cursor: str | None, limit: int,
    ) -> dict[str, Any]:
        """A page of the feed as the wire shows it: ``{activities, next_cursor}``."""
        if q is not None and not q.strip():
            raise ValidationFailed("q", "must contain a word")
        page = await self.store.read_feed(ActivityQuery(
            feed=feed, actor=actor, verb=verb, object=object, since=self.parse_time(since, "since"),
            until=self.parse_time(until, "until"), q=q, cursor=cursor, limit=limit,
        ))
        return {"activities": [i.to_wire() for i in page.items], "next_cursor": page.next_cursor}

    async def stats(self, feed: str, *, days: int) -> dict[str, Any]:
        cfg = self.cfg
        if not 1 <= days <= cfg.max_stats_days:
            raise ValidationFailed("days", f"must be between 1 and {cfg.max_stats_days} (feeds.max_stats_days)")
        found = await self.store.feed_stats(feed, days=days, now=self.clock.now(), top_actors=cfg.stats_top_actors)
        return {"feed": feed, "days": found.days}


def _publication(item: FeedItem) -> Publication:
    data = protocol.json_fragment({"activity": item.to_wire()})
    return Publication(item.seq, protocol.FEED_ACTIVITY_EVENT, data, iso(item.activity.created_at) or "")

