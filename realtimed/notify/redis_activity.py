"""What the push pipeline asks of every node of a cluster: who is active, and the push caps.

Keys:
    ``rt:{act:<user>}``                 exists while the user was active on some node
                                        within ``notify.active_window_s``
    ``rt:{cap:<user>}:d:<local day>``   pushes to the user that day in their time zone
    ``rt:{cap:<user>}:h:<type>:<hour>`` pushes of that type to the user that UTC hour

Activity marks are written in batches: a node writes a user's mark at most once
per quarter of the window, with a lifetime of the window and a quarter, so the
user counts as active for at least the window after their last op and at most a
quarter of it longer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import trio

from realtimed.broker.redis import LINK_ERRORS, redis_call, text
from realtimed.notify.policy import HOUR_S, zone

log = logging.getLogger(__name__)

_BATCH_S: Final = 0.25
_MGET_CHUNK: Final = 1000
_PRUNE_AT: Final = 50_000

# KEYS: daily, hourly ; ARGV: daily cap, hourly cap, daily ttl s, hourly ttl s.
_TAKE: Final = """
local daily_cap = tonumber(ARGV[1])
local hourly_cap = tonumber(ARGV[2])
if daily_cap > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= daily_cap then return 'daily_cap' end
if hourly_cap > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= hourly_cap then return 'hourly_cap' end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return ''
"""


def _activity_key(user_id: str) -> str:
    return f"rt:{{act:{user_id}}}"


class RedisPushCaps:
    """The push caps counted in Redis, so every node of a cluster counts the same pushes.

    Error handling:
        Raises ``Unavailable`` when Redis cannot be reached within ``timeout_s``.
    """

    def __init__(self, client: Any, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def count(
        self, *, user_id: str, type: str, now: datetime, time_zone: str, daily_cap: int, hourly_cap: int
    ) -> str | None:
        """Count one push if both caps allow it; else return which cap holds it back."""
        day = now.astimezone(zone(time_zone)).date().isoformat()
        hour = int(now.timestamp()) // HOUR_S
        tag = f"rt:{{cap:{user_id}}}:"
        keys = [f"{tag}d:{day}", f"{tag}h:{type}:{hour}"]
        call = self._client.eval(_TAKE, keys=keys, args=[daily_cap, hourly_cap, 3 * 86_400, 2 * HOUR_S])
        held = await redis_call("push caps", call, timeout_s=self._timeout_s)
        return text(held or "") or None

    async def usage(
        self, *, user_id: str, types: Sequence[str], now: datetime, time_zone: str
    ) -> tuple[int, dict[str, int]]:
        """The counts of today (local day) and of this UTC hour per type, in one MGET."""
        day = now.astimezone(zone(time_zone)).date().isoformat()
        hour = int(now.timestamp()) // HOUR_S
        tag = f"rt:{{cap:{user_id}}}:"
        keys = [f"{tag}d:{day}", *(f"{tag}h:{t}:{hour}" for t in types)]
        values = await redis_call("push caps", self._client.mget(keys), timeout_s=self._timeout_s)
        counts = [int(text(v)) if v else 0 for v in values]
        return counts[0], dict(zip(types, counts[1:], strict=True))


class RedisActivity:
    """Activity marks shared by every node (see the module docstring).

    Args:
        client: the broker's Redis client.
        window_s: reads ``notify.active_window_s`` at each use (a reload applies).
        timeout_s: the longest any Redis call may take.

    Resource handling:
        ``run`` owns the task that writes pending marks in one pipeline.

    Error handling:
        A batch that cannot be written is dropped (logged): the marks are a
        hint for skipping pushes, and a user who stays active is marked again.
        ``active`` raises ``Unavailable``.
    """

    def __init__(self, client: Any, *, window_s: Callable[[], float], timeout_s: float) -> None:
        self._client = client
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._marked: dict[str, float] = {}  # user → trio time of this node's last mark
        self._pending: set[str] = set()
        self._ready = trio.Event()

    def mark(self, user_id: str) -> None:
        """The user did something on this node (never blocks)."""
        now = trio.current_time()
        window = self._window_s()
        if window <= 0 or now - self._marked.get(user_id, float("-inf")) < window / 4:
            return
        if len(self._marked) >= _PRUNE_AT:
            self._marked = {u: t for u, t in self._marked.items() if now - t < window}
        self._marked[user_id] = now
        self._pending.add(user_id)
        self._ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            await trio.sleep(_BATCH_S)  # let a burst of ops share one round trip
            batch, self._pending = self._pending, set()
            if not batch:
                continue
            ttl_ms = max(1, round(self._window_s() * 1250))
            try:
                with trio.fail_after(self._timeout_s):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for user in batch:
                            pipe.set(_activity_key(user), b"1", px=ttl_ms)
            except LINK_ERRORS as exc:
                for user in batch:
                    self._marked.pop(user, None)  # mark again on the next op
                log.warning("activity marks of %d users not written: %s", len(batch), exc or type(exc).__name__)

    async def active(self, user_ids: Sequence[str]) -> set[str]:
        """Those of the users active on any node within the window."""
        found: set[str] = set()
        for start in range(0, len(user_ids), _MGET_CHUNK):
            chunk = list(user_ids[start : start + _MGET_CHUNK])
            call = self._client.mget([_activity_key(u) for u in chunk])
            values = await redis_call("activity marks", call, timeout_s=self._timeout_s)
            found.update(u for u, v in zip(chunk, values, strict=True) if v)
        return found
