"""A bounded queue that the client fills without ever blocking.

The client's reader hands each event to every interested feed and moves on: a
slow application must not stall replies or other listeners. So a feed is a
bounded buffer whose ``put`` never waits. What happens when it is full is the
feed's owner's choice: a listener's feed ends with ``SLOW_CONSUMER``, a room
subscription's feed drops what it held and says ``room.reset`` (the application
refetches, which is all it could do about a hole anyway).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from realtimed_client._errors import SLOW_CONSUMER, RealtimeError

T = TypeVar("T")


class Feed(Generic[T]):
    """An async iterator over items put by the client.

    Iteration ends when the feed is closed without an error, and raises the
    error it was closed with otherwise (after the items already queued).
    """

    def __init__(self, capacity: int, *, on_overflow: Callable[[Feed[T]], None] | None = None) -> None:
        self._items: deque[T] = deque()
        self._capacity = max(1, capacity)
        self._wakeup = trio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._on_overflow = on_overflow

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Queue an item; never blocks. A full feed calls its overflow handler
        (by default: closed with ``SLOW_CONSUMER``), and the item is dropped unless
        the handler made room for it."""
        if self._closed:
            return
        if len(self._items) >= self._capacity:
            if self._on_overflow is None:
                self.close(
                    RealtimeError(SLOW_CONSUMER, f"the listener fell {self._capacity} events behind and was closed")
                )
                return
            self._on_overflow(self)
            if self._closed or len(self._items) >= self._capacity:
                return
        self._items.append(item)
        self._wakeup.set()

    def clear(self) -> None:
        self._items.clear()

    def force(self, item: T) -> None:
        """Queue an item even over capacity (a marker that must not be lost)."""
        if not self._closed:
            self._items.append(item)
            self._wakeup.set()

    def close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wakeup.set()

    async def get(self) -> T:
        """The next item; raises ``trio.EndOfChannel`` once closed and empty (or the closing error)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        item = self._items.popleft()
        # Never lose an item taken off the queue to a cancellation.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def get_nowait(self) -> T | None:
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
