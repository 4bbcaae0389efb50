"""An asyncio event loop in a thread of its own, called from Trio.

asyncpg runs on asyncio. ``AsyncioThread`` keeps one asyncio loop running in a
dedicated thread for the life of a PostgreSQL store; a Trio task runs an
asyncio coroutine there with ``await bridge.call(fn, *args)``:

- the coroutine is started with ``loop.call_soon_threadsafe`` (a wake-up of
  the loop's thread), and its result comes back through the Trio token
  (``TrioToken.run_sync_soon``), which reschedules the waiting Trio task: one
  crossing each way, no polling, and no asyncio policy or loop shared with
  Trio. Calls (and results) that arrive while a wake-up is pending ride on
  it, so a burst costs one wake-up each way;
- a Trio cancellation (a cancel scope, a deadline) cancels the asyncio task
  and waits for it to finish, so that an asyncpg connection is back in its
  pool, its statement cancelled, before the Trio task goes on; the wait is
  bounded (``cancel_grace_s``), after which the Trio task goes on and the
  asyncio task finishes by itself;
- ``stop`` cancels what still runs on the loop, closes it and joins the
  thread (``run`` does that when it ends).

Callbacks that the asyncio side makes by itself (a LISTEN notification) reach
Trio with ``to_trio``.

Measured on this machine kind (``bench/pg_bridge.py``): a ``SELECT 1`` from
Trio costs about half the CPU through this bridge that it costs through
trio-asyncio, whose every call runs the asyncio machinery on Trio's own
scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import outcome
import trio

__all__ = ["AsyncioThread"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_STOP_TIMEOUT_S: Final = 5.0


class AsyncioThread:
    """One asyncio loop in one thread (see the module docstring).

    Args:
        name: the thread's name (shown by ``ps -T`` and in thread dumps).
        cancel_grace_s: how long a cancelled call waits for its asyncio task
            to finish before the Trio task goes on without it.
    """

    def __init__(self, *, name: str, cancel_grace_s: float) -> None:
        self.name = name
        self.cancel_grace_s = cancel_grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._to_aio: deque[Callable[[], object]] = deque()
        self._aio_scheduled = False
        self._to_trio: deque[Callable[[], object]] = deque()
        self._trio_scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; ``RuntimeError`` before ``start`` or after ``stop``."""
        if self._loop is None:
            raise RuntimeError("the asyncio thread is not running")
        return self._loop

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def start(self) -> None:
        """Start the thread and its loop; returns once the loop runs."""
        if self._thread is not None:
            raise RuntimeError("the asyncio thread is started already")
        self._token = trio.lowlevel.current_trio_token()
        ready = threading.Event()
        # Not asyncio.new_event_loop(): that asks the event loop policy, which trio-asyncio
        # (if something imported it) replaces, and which Python 3.14 deprecates.
        loop = asyncio.SelectorEventLoop()

        def main() -> None:
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                try:
                    _cancel_all(loop)
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()

        thread = threading.Thread(target=main, name=self.name, daemon=True)
        thread.start()
        self._thread = thread
        await trio.to_thread.run_sync(ready.wait)
        self._loop = loop

    async def stop(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        self._loop = None
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass  # closed already
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join, _STOP_TIMEOUT_S)
        if thread.is_alive():
            log.warning("the %s thread did not stop within %g s", self.name, _STOP_TIMEOUT_S)
        self._thread = None

    def to_trio(self, fn: Callable[[], object]) -> None:
        """From the asyncio thread: run ``fn()`` in Trio's thread soon (dropped once Trio has ended)."""
        self._to_trio.append(fn)
        if self._trio_scheduled:
            return
        token = self._token
        if token is None:
            return
        self._trio_scheduled = True
        try:
            token.run_sync_soon(self._run_in_trio)
        except trio.RunFinishedError:
            pass

    def _to_asyncio(self, fn: Callable[[], object]) -> None:
        """From Trio's thread: run ``fn()`` in the asyncio thread soon."""
        self._to_aio.append(fn)
        if not self._aio_scheduled:
            self._aio_scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._run_in_asyncio)
            except RuntimeError:  # the loop is closed
                self._aio_scheduled = False
                raise

    # Each direction has a queue and one pending wake-up at most: a burst of calls (or of
    # results) costs the other thread one wake-up, not one each. The flag is cleared
    # before the queue is emptied, and a sender appends before it reads the flag, so
    # nothing appended is left behind.

    def _run_in_asyncio(self) -> None:
        self._aio_scheduled = False
        _run_all(self._to_aio)

    def _run_in_trio(self) -> None:
        self._trio_scheduled = False
        _run_all(self._to_trio)

    async def call(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run ``await fn(*args)`` on the asyncio loop and return (or raise) its outcome.

        A Trio cancellation cancels the asyncio task and waits for it to end
        (at most ``cancel_grace_s``) before raising ``trio.Cancelled``.
        """
        loop = self.loop
        call = _Call(self, fn, args, trio.lowlevel.current_task())

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            try:
                loop.call_soon_threadsafe(call.cancel, raise_cancel)
            except RuntimeError:  # the loop is closed: nothing runs there any more
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        self._to_asyncio(call.begin)
        result: _T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


class _Call:
    """One ``AsyncioThread.call``. Its methods but ``__init__`` run in the asyncio
    thread, one at a time; the outcome is made in Trio's (a cancellation is raised
    there)."""

    __slots__ = ("args", "bridge", "delivered", "fn", "raise_cancel", "task", "trio_task")

    def __init__(
        self, bridge: AsyncioThread, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], trio_task: Any
    ) -> None:
        self.bridge = bridge
        self.fn = fn
        self.args = args
        self.trio_task = trio_task
        self.task: asyncio.Future[Any] | None = None
        self.delivered = False
        self.raise_cancel: Callable[[], Any] | None = None

    def begin(self) -> None:
        if self.raise_cancel is not None:
            self._deliver(None)
            return
        try:
            task = asyncio.ensure_future(self.fn(*self.args), loop=self.bridge.loop)
        except BaseException as exc:  # fn itself failed before its first await
            self._deliver(outcome.Error(exc))
            return
        self.task = task
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        if self.raise_cancel is not None:
            self._deliver(None)
        elif task.cancelled():  # cancelled on the asyncio side (the loop is stopping)
            self._deliver(outcome.Error(RuntimeError("the asyncio thread stopped during the call")))
        else:
            exc = task.exception()
            self._deliver(outcome.Value(task.result()) if exc is None else outcome.Error(exc))

    def cancel(self, raise_cancel: Callable[[], Any]) -> None:
        self.raise_cancel = raise_cancel
        task = self.task
        if task is None:
            return  # begin() has not run yet; it delivers the cancellation
        task.cancel()
        self.bridge.loop.call_later(self.bridge.cancel_grace_s, self._deliver, None)

    def _deliver(self, result: outcome.Outcome[Any] | None) -> None:
        """Wake the Trio task with ``result``, or with its cancellation if None (once)."""
        if self.delivered:
            return
        self.delivered = True
        self.bridge.to_trio(lambda: self._resume(result))

    def _resume(self, result: outcome.Outcome[Any] | None) -> None:
        if result is None:
            assert self.raise_cancel is not None
            result = outcome.capture(self.raise_cancel)
        trio.lowlevel.reschedule(self.trio_task, result)


def _run_all(queue: deque[Callable[[], object]]) -> None:
    while queue:
        fn = queue.popleft()
        try:
            fn()
        except Exception:
            log.exception("a callback across the asyncio bridge failed")


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the loop's remaining tasks and let them finish (the loop is stopping)."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
