"""The pure rules of the push pipeline: activity, caps, quiet hours, digest windows.

Nothing here does I/O or reads a clock: callers hand in the wall time (from the
injected ``WallClock``) and Trio time, so every rule is tested on a mock clock.

Dedupe keys name the jobs of the pipeline so that they can be found again:

- ``push:<user>:<ref>:<device>``: one push of one notification (``ref`` is
  ``n<notification id>`` for the inbox, ``m<message id>`` for chat; digests
  and pushes of notifications kept out of the inbox take other refs starting
  with ``n`` or ``m``) to one device; reading or deleting a notification cancels
  every queued job under ``push:<user>:n<id>:``, a read-all every one under
  ``push:<user>:n``;
- ``digest:<user>:<group>:<window>``: the digest of one group in one window.

Each component is percent-encoded, so a user id holding ``:`` cannot reach into
another user's prefix.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

__all__ = [
    "PushCaps",
    "cap_resets",
    "device_ref",
    "digest_key",
    "digest_window",
    "inbox_push_prefix",
    "is_active",
    "push_key",
    "push_prefix",
    "quiet_until",
]

HOUR_S: Final = 3600


def _q(part: str) -> str:
    return quote(part, safe="")


def device_ref(token: str) -> str:
    """A short, stable name for a device token inside a dedupe key."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def push_key(user_id: str, ref: str, token: str) -> str:
    return f"push:{_q(user_id)}:{_q(ref)}:{device_ref(token)}"


def push_prefix(user_id: str, ref: str) -> str:
    """The prefix of every push job of one notification (or message) of a user."""
    return f"push:{_q(user_id)}:{_q(ref)}:"


def inbox_push_prefix(user_id: str) -> str:
    """The prefix of every push job about a user's inbox (refs starting with ``n``)."""
    return f"push:{_q(user_id)}:n"


def digest_key(user_id: str, group_key: str, window_start: datetime) -> str:
    return f"digest:{_q(user_id)}:{_q(group_key)}:{int(window_start.timestamp())}"


# -- activity ------------------------------------------------------------------------------------


class Device(Protocol):
    """What the activity rule reads of a connected session."""

    @property
    def last_active(self) -> float | None: ...


def is_active(sessions: Iterable[Device], *, now: float, window_s: float) -> bool:
    """True if one of a user's connected sessions was active within ``window_s``.

    ``now`` and ``last_active`` are Trio times. A session whose ``last_active``
    is None (an SSE stream, which sends no ops) counts as active while it is connected.
    """
    for session in sessions:
        last = session.last_active
        if last is None or now - last <= window_s:
            return True
    return False


# -- quiet hours ---------------------------------------------------------------------------------


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or UTC for an unknown name (the store refuses unknown zones)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_until(now: datetime, *, start: str | None, end: str | None, time_zone: str) -> datetime | None:
    """When the quiet hours around ``now`` end (UTC), or None outside quiet hours.

    ``start`` and ``end`` are local ``"HH:MM"`` times in ``time_zone``; a range
    that wraps midnight (22:00 to 07:00) is overnight. Equal times mean no quiet
    hours. Across a daylight-saving change the end is the local wall time on
    the day it falls, so 07:00 stays 07:00.
    """
    if not start or not end:
        return None
    begin, finish = _hhmm(start), _hhmm(end)
    if begin == finish:
        return None
    tz = zone(time_zone)
    local = now.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    today = local.date()
    if begin < finish:
        if not begin <= t < finish:
            return None
        end_day: date = today
    else:
        if begin <= t:
            end_day = today + timedelta(days=1)
        elif t < finish:
            end_day = today
        else:
            return None
    until = datetime.combine(end_day, finish, tzinfo=tz).astimezone(UTC)
    # A wall time skipped by a daylight-saving jump can map to an instant at or
    # before ``now``; then the quiet hours are over.
    return until if until > now else None


# -- digests -------------------------------------------------------------------------------------


def digest_window(now: datetime, window_s: float) -> tuple[datetime, datetime]:
    """The fixed window of ``window_s`` seconds (aligned to the epoch) holding ``now``."""
    epoch = now.timestamp()
    start = math.floor(epoch / window_s) * window_s
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + window_s, UTC)


# -- caps ----------------------------------------------------------------------------------------


@attrs.define
class PushCaps:
    """Pushes counted per user per local day and per user and type per UTC hour.

    The counts live in this node's memory: they reset when the node restarts,
    and in a cluster each node counts the pushes it planned. Old buckets are
    dropped as time moves on, so memory stays bounded by the users pushed to in
    the current day.
    """

    _daily: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _hourly: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _hour: int = -1

    def take(
        self, *, user_id: str, type: str, now: datetime, time_zone: str, daily_cap: int, hourly_cap: int
    ) -> str | None:
        """Count one push if both caps allow it; else return which cap
        (``daily_cap`` or ``hourly_cap``) holds it back. A cap of 0 is no cap."""
        hour = int(now.timestamp()) // HOUR_S
        if hour != self._hour:
            self._hourly.clear()
            if hour // 24 != self._hour // 24:
                self._prune_days(now)
            self._hour = hour
        day = now.astimezone(zone(time_zone)).date().isoformat()
        daily_key = (user_id, day)
        hourly_key = (user_id, type)
        if daily_cap and self._daily.get(daily_key, 0) >= daily_cap:
            return "daily_cap"
        if hourly_cap and self._hourly.get(hourly_key, 0) >= hourly_cap:
            return "hourly_cap"
        self._daily[daily_key] = self._daily.get(daily_key, 0) + 1
        self._hourly[hourly_key] = self._hourly.get(hourly_key, 0) + 1
        return None

    async def count(
        self, *, user_id: str, type: str, now: datetime, time_zone: str, daily_cap: int, hourly_cap: int
    ) -> str | None:
        """``take`` behind the ``SharedCaps`` interface."""
        return self.take(user_id=user_id, type=type, now=now, time_zone=time_zone, daily_cap=daily_cap, hourly_cap=hourly_cap)

    async def usage(
        self, *, user_id: str, types: Sequence[str], now: datetime, time_zone: str
    ) -> tuple[int, dict[str, int]]:
        """The pushes counted for the user today (local day) and, per type, this UTC hour."""
        day = now.astimezone(zone(time_zone)).date().isoformat()
        this_hour = int(now.timestamp()) // HOUR_S == self._hour
        hourly = {t: self._hourly.get((user_id, t), 0) if this_hour else 0 for t in types}
        return self._daily.get((user_id, day), 0), hourly

    def _prune_days(self, now: datetime) -> None:
        # Local days run from UTC-12 to UTC+14: anything older than two UTC days is over everywhere.
        oldest = (now - timedelta(days=2)).date().isoformat()
        for key in [k for k in self._daily if k[1] < oldest]:
            del self._daily[key]


class SharedCaps(Protocol):
    """Push caps counted by every node of a cluster alike.

    Promises: ``count`` checks both caps and counts the push atomically, answering
    None, ``daily_cap`` or ``hourly_cap`` as ``PushCaps.take`` does.
    """

    async def count(
        self, *, user_id: str, type: str, now: datetime, time_zone: str, daily_cap: int, hourly_cap: int
    ) -> str | None: ...

    async def usage(
        self, *, user_id: str, types: Sequence[str], now: datetime, time_zone: str
    ) -> tuple[int, dict[str, int]]:
        """What ``count`` has counted for the user: today (their local day), and per
        type this UTC hour; counts nothing."""
        ...


def cap_resets(now: datetime, time_zone: str) -> tuple[datetime, datetime]:
    """When the daily cap's window (the user's local day) and the hourly one (the UTC hour) end, in UTC."""
    tz = zone(time_zone)
    local = now.astimezone(tz)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0, 0), tzinfo=tz).astimezone(UTC)
    hour = datetime.fromtimestamp((int(now.timestamp()) // HOUR_S + 1) * HOUR_S, UTC)
    return midnight, hour


class Activity(Protocol):
    """Which users are active on a device connected to any node of a cluster."""

    async def active(self, user_ids: Sequence[str]) -> set[str]: ...
