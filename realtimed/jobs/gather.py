"""Lookups of single keys made by many jobs at once, answered by one batched read.

Jobs of one kind run side by side (a claimed batch of ``push.send`` jobs), and
each reads one row before it acts (its device, its notification). ``Gather``
turns those reads into one store call per round: every key asked for while a
round runs goes into the next one, so nothing waits for a timer, a lone lookup
costs one read as before, and a busy queue costs one read per batch of jobs::

    devices = Gather(store.get_devices, max_batch=500)
    await nursery.start(devices.run)
    device = await devices.get(token)      # None: no such row

Resource handling:
    ``run`` owns the one task that reads; when it ends, lookups still waiting
    raise ``Unavailable`` and later ones read on their own (as without it).

Error handling:
    An error of the batched read is raised to every lookup of its round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

import attrs
import trio

from realtimed.errors import Unavailable

__all__ = ["Gather"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.define(eq=False)
class _Lookup(Generic[K, V]):
    key: K
    done: trio.Event = attrs.field(factory=trio.Event)
    value: V | None = None
    error: BaseException | None = None


class Gather(Generic[K, V]):
    """Concurrent ``get(key)`` calls answered by one ``fetch(keys)`` per round.

    Args:
        fetch: reads many keys at once; a key missing from its answer is None.
        max_batch: the most keys one ``fetch`` is given.
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = 500) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}")
        self._fetch = fetch
        self._max_batch = max_batch
        self._waiting: list[_Lookup[K, V]] = []
        self._wanted = trio.Event()
        self._running = False
        self.rounds = 0  # fetches made (for tests and benchmarks)

    async def get(self, key: K) -> V | None:
        """The value of ``key``, read together with the keys other tasks ask for meanwhile."""
        if not self._running:
            self.rounds += 1
            return (await self._fetch([key])).get(key)
        lookup: _Lookup[K, V] = _Lookup(key)
        self._waiting.append(lookup)
        self._wanted.set()
        await lookup.done.wait()
        if lookup.error is not None:
            raise lookup.error
        return lookup.value

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            task_status.started()
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                while self._waiting:
                    await self._round()
        finally:
            self._running = False
            stopped = Unavailable("the batched reads stopped")
            for lookup in self._waiting:
                lookup.error = stopped
                lookup.done.set()
            self._waiting.clear()

    async def _round(self) -> None:
        keys: dict[K, None] = {}
        taken = 0
        for lookup in self._waiting:
            if lookup.key not in keys and len(keys) == self._max_batch:
                break
            keys[lookup.key] = None
            taken += 1
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        self.rounds += 1
        try:
            found = await self._fetch(list(keys))
        except Exception as exc:
            for lookup in batch:
                lookup.error = exc
                lookup.done.set()
            return
        except BaseException:
            # Cancelled mid-read: these lookups get an answer too, not a hang.
            for lookup in batch:
                lookup.error = Unavailable("the batched reads stopped")
                lookup.done.set()
            raise
        for lookup in batch:
            lookup.value = found.get(lookup.key)
            lookup.done.set()
