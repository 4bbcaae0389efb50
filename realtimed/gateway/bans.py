"""Bans: a user refused on every door of every node until a time.

The store holds them (``Store.ban_user``), so a ban holds on every node and
across restarts. What is checked where:

- a socket (WebSocket or SSE) asks the store when it is admitted, so a new
  socket never gets past a ban set on another node (``admission``: the same
  statement reads the unread counts of its ``session.ready``);
- a client REST call asks this node's cache, which keeps each answer for
  ``gateway.ban_cache_s``: a ban or unban made on another node reaches this
  node's REST door within that time (this node's own update it at once);
- sockets already open are closed by the ban itself, on every node, through
  the router's ``close_user`` (the broker carries it to the other nodes, which
  also drop their cached answer for the user).

If the store cannot be reached when a socket is admitted, the socket is let in
(the realtime fabric keeps working through a store outage, as the ops that need
the store fail on their own) and a warning is logged; a REST call with no fresh
cached answer gets ``UNAVAILABLE`` (503), as its op most likely would.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Final

import trio

from realtimed.errors import Banned, Unavailable
from realtimed.store.base import BanRecord
from realtimed.store.users import SessionStart

if TYPE_CHECKING:
    from realtimed.clock import WallClock
    from realtimed.config import Config
    from realtimed.live import Live
    from realtimed.store.base import Store

log = logging.getLogger(__name__)

SWEEP_S: Final = 60.0


class Bans:
    """The ban checks and changes of one node; see the module docstring."""

    def __init__(self, store: Store, *, clock: WallClock, config: Live[Config]) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        # user id → (the store's answer, Trio time until which it is trusted)
        self._cache: dict[str, tuple[BanRecord | None, float]] = {}
        self._next_sweep = 0.0

    async def current(self, user_id: str, *, cached: bool) -> BanRecord | None:
        """The user's ban in force now, or None; from the cache when ``cached``.

        Raises:
            Unavailable: the store cannot be reached (and no cached answer is fresh).
        """
        now = trio.current_time()
        if cached:
            if now >= self._next_sweep:
                self._sweep(now)
            hit = self._cache.get(user_id)
            if hit is not None and hit[1] > now:
                return _in_force(hit[0], self._clock.now())
        ban: BanRecord | None = await self._store.active_ban(user_id=user_id, now=self._clock.now())
        self._remember(user_id, ban)
        return ban

    async def check(self, user_id: str, *, cached: bool) -> None:
        """Raise ``Banned`` if the user is banned (``current``)."""
        ban = await self.current(user_id, cached=cached)
        if ban is not None:
            raise Banned(ban.until)

    async def admission(self, user_id: str) -> SessionStart | None:
        """For a socket being admitted: the ban in force straight from the store, with
        the unread counts of its ``session.ready`` (one store call).

        None when the store cannot be reached: the socket is admitted (see the
        module docstring) and its counts are left at 0.
        """
        try:
            start: SessionStart = await self._store.session_start(user_id=user_id, now=self._clock.now())
        except Unavailable as exc:
            log.warning("user %s: ban not checked, the store is unavailable (%s); admitting", user_id, exc.message)
            return None
        self._remember(user_id, start.ban)
        return start

    async def ban(self, user_id: str, until: datetime | None) -> BanRecord:
        """Store a ban (replacing the user's earlier one); this node's cache knows at once."""
        ban: BanRecord = await self._store.ban_user(user_id=user_id, until=until, now=self._clock.now())
        self._remember(user_id, ban)
        return ban

    async def unban(self, user_id: str) -> bool:
        """Lift the user's ban; True if one was in force."""
        lifted: bool = await self._store.unban_user(user_id=user_id, now=self._clock.now())
        self._remember(user_id, None)
        return lifted

    def forget(self, user_id: str) -> None:
        """Drop the cached answer for a user (another node closed their sessions)."""
        self._cache.pop(user_id, None)

    def _remember(self, user_id: str, ban: BanRecord | None) -> None:
        ttl = self._config.value.gateway.ban_cache_s
        if ttl > 0:
            self._cache[user_id] = (ban, trio.current_time() + ttl)
        else:
            self._cache.pop(user_id, None)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_S
        for user_id in [u for u, (_, until) in self._cache.items() if until <= now]:
            del self._cache[user_id]


def _in_force(ban: BanRecord | None, now: datetime) -> BanRecord | None:
    return ban if ban is not None and ban.in_force(now) else None
