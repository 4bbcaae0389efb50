"""``Deadlines``: one heap of timers served by one task.

Node-wide timers (the gateway's token expiry, chat's typing timeouts,
presence's grace periods, idle checks and throttled sends) keep their deadlines
in one ``Deadlines`` each, and one task loops on ``due()``: no task per timer,
and no wake-up for a deadline that is not the earliest.

Usage::

    deadlines: Deadlines[str] = Deadlines()
    deadlines.push(trio.current_time() + 5, "alice")
    ...
    while True:  # the timer task
        now, items = await deadlines.due()
        for item in items:
            ...  # may push again (a refreshed timer)

Items are never compared: deadlines that tie come out in the order pushed.
Cancelling a timer is the caller's business (a generation number in the item,
checked when it comes out, is the usual way). A cancelled timer stays in the
heap until it comes out; when timers are long (a token's lifetime) and many are
cancelled, the owner calls ``prune`` now and then so the heap holds only the
live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

__all__ = ["Deadlines"]

_T = TypeVar("_T")


class Deadlines(Generic[_T]):
    """A heap of (Trio time, item) for one task to serve (see the module docstring)."""

    __slots__ = ("_changed", "_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _T]] = []
        self._counter = itertools.count()
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, item: _T) -> None:
        """Schedule ``item`` for Trio time ``when`` (never blocks); wakes ``due`` only if it is now the earliest."""
        order = next(self._counter)
        heapq.heappush(self._heap, (when, order, item))
        if self._heap[0][1] == order:
            self._changed.set()

    def prune(self, keep: Callable[[_T], bool]) -> int:
        """Drop every item for which ``keep`` is false (timers the owner cancelled); returns how many.

        O(n); the order of the items kept, ties included, is unchanged.
        """
        before = len(self._heap)
        self._heap[:] = [entry for entry in self._heap if keep(entry[2])]
        heapq.heapify(self._heap)
        # The earliest deadline may be later now: ``due`` waits on the old one at
        # most once more, finds nothing due and waits again.
        return before - len(self._heap)

    async def due(self) -> tuple[float, list[_T]]:
        """Wait until the earliest deadline has passed; return that Trio time and every item due by it.

        The items come out earliest first. Only one task may wait here.
        """
        heap = self._heap
        while True:
            if heap and heap[0][0] <= trio.current_time():
                # Always a checkpoint (before anything is taken), so that a loop on
                # due() cannot starve other tasks and a cancellation loses nothing.
                await trio.lowlevel.checkpoint()
                now = trio.current_time()
                items = []
                while heap and heap[0][0] <= now:
                    items.append(heapq.heappop(heap)[2])
                return now, items
            self._changed = trio.Event()
            if heap:
                with trio.move_on_at(heap[0][0]):
                    await self._changed.wait()
            else:
                await self._changed.wait()
