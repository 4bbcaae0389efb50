"""Wall-clock time, injected.

Logic that depends on the date or the time of day (quiet hours, cron ticks,
retention, job ``run_at``) asks a ``WallClock`` instead of calling
``datetime.now()``, so tests can drive it. ``TrioWallClock`` follows Trio's clock:
under ``trio.testing.MockClock`` it jumps when the mock clock jumps, which keeps
durations (timers) and wall time (run_at, ticks) consistent in tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import trio


class WallClock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class TrioWallClock:
    """Wall time that advances with ``trio.current_time()`` from a fixed start.

    Must be called from inside ``trio.run``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime.now(UTC)
        self._t0: float | None = None

    def now(self) -> datetime:
        t = trio.current_time()
        if self._t0 is None:
            self._t0 = t
        return self._start + timedelta(seconds=t - self._t0)

    def step(self, delta: timedelta) -> None:
        """Move wall time without moving Trio's clock (a clock that steps back or forward)."""
        self._start += delta


def iso(dt: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T10:00:00.000Z``."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an RFC 3339 time; naive times are taken as UTC. Raises ValueError (also for
    a time that is out of range in UTC, such as year 1 at +14:00)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text[:64]!r} is out of range in UTC") from None
