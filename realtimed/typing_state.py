"""Typing state and the typing rate limit, per user and conversation.

Chat keeps a timer for every typing state its node started or refreshed; the
backend is where the state itself lives, so that a user typing on two devices
on two nodes is one state, announced once and ended once.

``MemoryTyping`` serves one node; ``realtimed.redis_typing.RedisTyping``
serves a cluster.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

# Most (user, conversation) rate buckets a node keeps before pruning full ones.
_PRUNE_AT: Final = 10_000


class TypingBackend(Protocol):
    """Typing states and rate buckets keyed by (user, conversation).

    Promises:
        - ``take_token`` is a token bucket refilled at ``rate`` per second up to
          ``burst``: 0 when a token was taken, else the seconds until one is there.
        - ``begin`` sets the state's deadline to now + ``timeout_s`` and answers
          True only when no state was there: of concurrent ``begin`` calls on any
          node, one answers True.
        - ``end`` removes the state; True only for the call that removed it. With
          ``node_only``, only a state last refreshed through this node is removed.
        - ``expire`` is called at a deadline this node set: None when the state is
          gone (ended elsewhere), 0 when it was due and this call ended it, else
          the seconds left (refreshed since, on any node).
        - ``typing`` answers which of ``user_ids`` have a state in the
          conversation whose deadline is still ahead, in the order given.
    """

    shared: bool

    async def take_token(self, user_id: str, conversation_id: str, *, rate: float, burst: float) -> float: ...

    async def begin(self, user_id: str, conversation_id: str, *, timeout_s: float) -> bool: ...

    async def end(self, user_id: str, conversation_id: str, *, node_only: bool = False) -> bool: ...

    async def expire(self, user_id: str, conversation_id: str) -> float | None: ...

    async def typing(self, conversation_id: str, user_ids: list[str]) -> list[str]: ...


class MemoryTyping:
    """Typing state of one node, on Trio's clock (see ``TypingBackend``)."""

    shared = False

    def __init__(self) -> None:
        self._deadlines: dict[tuple[str, str], float] = {}
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    async def take_token(self, user_id: str, conversation_id: str, *, rate: float, burst: float) -> float:
        await trio.lowlevel.checkpoint()
        key = (user_id, conversation_id)
        now = trio.current_time()
        if len(self._buckets) >= _PRUNE_AT:
            # Full buckets hold nothing a fresh one would not.
            self._buckets = {k: (t, a) for k, (t, a) in self._buckets.items() if t + (now - a) * rate < burst}
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    async def begin(self, user_id: str, conversation_id: str, *, timeout_s: float) -> bool:
        await trio.lowlevel.checkpoint()
        key = (user_id, conversation_id)
        first = key not in self._deadlines
        self._deadlines[key] = trio.current_time() + timeout_s
        return first

    async def end(self, user_id: str, conversation_id: str, *, node_only: bool = False) -> bool:
        await trio.lowlevel.checkpoint()
        return self._deadlines.pop((user_id, conversation_id), None) is not None

    async def expire(self, user_id: str, conversation_id: str) -> float | None:
        await trio.lowlevel.checkpoint()
        key = (user_id, conversation_id)
        deadline = self._deadlines.get(key)
        if deadline is None:
            return None
        left = deadline - trio.current_time()
        if left > 0:
            return left
        del self._deadlines[key]
        return 0.0

    async def typing(self, conversation_id: str, user_ids: list[str]) -> list[str]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        deadlines = self._deadlines
        return [uid for uid in user_ids if deadlines.get((uid, conversation_id), now) > now]
