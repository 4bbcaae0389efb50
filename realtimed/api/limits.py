"""The per-user op budget: one token bucket per (user, op), shared by every door.

A user's ops are counted the same whether they come over a WebSocket, over
``POST /api/v1/ops/{op}`` or over a resource route of the client REST door: the
op registry (``ops.OpRegistry.run``) charges each op here before validating and
running it, and the REST door charges every other route of ``/api/v1`` to the
budget of the op it serves, or to a budget of its own for a route with no op
(``realtimed.http.budgets``). Budgets come from ``gateway.op_limits`` (an entry
per op or REST budget, or ``"*"`` for every name without one);
each is a bucket of ``per`` ops that refills at ``per / window_s`` a second, so
a user may send ``per`` at once and then keep to the refill rate.

Counts live in this node's memory: in a cluster each node counts what it
serves, so a user spread over several nodes gets a budget on each.

Time is Trio's clock (``trio.current_time()``), so tests drive it with
``MockClock``. Memory stays bounded: a bucket that has refilled completely is
the same as no bucket, and a sweep drops those every ``SWEEP_S``, so only
users active within the longest window are held.
"""

from __future__ import annotations

import math
from typing import Final

from realtimed.config import ANY_OP, DEFAULT_OP_LIMITS, UNLIMITED_OPS, GatewayConfig, OpLimitConfig
from realtimed.errors import RateLimited

SWEEP_S: Final = 30.0


class _Bucket:
    __slots__ = ("at", "full_at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.full_at = at


def budget_for(cfg: GatewayConfig, op: str) -> OpLimitConfig | None:
    """The budget that counts ``op`` (its own entry, else ``"*"``); None: not counted."""
    if op in UNLIMITED_OPS:
        return None
    limits = cfg.op_limits
    return limits.get(op) or limits.get(ANY_OP) or DEFAULT_OP_LIMITS[ANY_OP]


class UserOpLimiter:
    """Token buckets keyed by (user, op); see the module docstring."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, user_id: str, op: str, budget: OpLimitConfig, *, now: float) -> float:
        """Spend one of the user's ``op`` budget at Trio time ``now``.

        Returns 0.0 when the op may run, else the seconds until it may (nothing
        is spent then, so a refused op does not push the next one further out).
        A budget changed by a reload applies at once; a bucket keeps what it had
        spent, up to the new size.
        """
        if now >= self._next_sweep:
            self._sweep(now)
        capacity = float(budget.per)
        rate = budget.per / budget.window_s
        key = (user_id, op)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity, now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / rate
        bucket.tokens -= 1.0
        bucket.full_at = now + (capacity - bucket.tokens) / rate
        return 0.0

    def check(self, user_id: str, op: str, cfg: GatewayConfig, *, now: float) -> None:
        """``take`` with the configured budget of ``op``.

        Raises:
            RateLimited: over the budget, with the milliseconds until the next op may run.
        """
        budget = budget_for(cfg, op)
        if budget is None:
            return
        wait_s = self.take(user_id, op, budget, now=now)
        if wait_s > 0.0:
            raise RateLimited(
                f"too many {op} ops: {budget.per} per {budget.window_s:g} s", retry_after_ms=math.ceil(wait_s * 1000)
            )

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_S
        stale = [key for key, bucket in self._buckets.items() if bucket.full_at <= now]
        for key in stale:
            del self._buckets[key]
