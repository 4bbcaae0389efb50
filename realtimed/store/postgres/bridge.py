"""An asyncio event loop in a thread of its own, called from Trio.

asyncpg runs on asyncio. ``AsyncioThread`` keeps one asyncio loop running in a
dedicated thread for the life of a PostgreSQL store; a Trio task runs an
asyncio coroutine there with ``await bridge.call(fn, *args)``:

- the coroutine is started with ``loop.call_soon_threadsafe`` (one wake-up of
  the loop's thread), and its result comes back through the Trio token
  (``TrioToken.run_sync_soon``), which reschedules the waiting Trio task: one
  crossing each way, no polling, and no asyncio policy or loop shared with
  Trio;
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
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass

    async def call(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run ``await fn(*args)`` on the asyncio loop and return (or raise) its outcome.

        A Trio cancellation cancels the asyncio task and waits for it to end
        (at most ``cancel_grace_s``) before raising ``trio.Cancelled``.
        """
        loop = self.loop
        token = self._token
        assert token is not None
        trio_task = trio.lowlevel.current_task()
        # Everything below that touches `state` runs in the loop's thread, one callback at a time.
        state: dict[str, Any] = {"task": None, "delivered": False, "cancelled": None}

        def deliver(result: Callable[[], outcome.Outcome[Any]]) -> None:
            # The outcome is made in Trio's thread: a cancellation is raised there.
            if state["delivered"]:
                return
            state["delivered"] = True
            try:
                token.run_sync_soon(lambda: trio.lowlevel.reschedule(trio_task, result()))
            except trio.RunFinishedError:
                pass

        def finished(task: asyncio.Task[Any]) -> None:
            raise_cancel = state["cancelled"]
            if raise_cancel is not None:
                deliver(lambda: outcome.capture(raise_cancel))
            elif task.cancelled():  # cancelled on the asyncio side (the loop is stopping)
                deliver(lambda: outcome.Error(RuntimeError("the asyncio thread stopped during the call")))
            else:
                exc = task.exception()
                got: outcome.Outcome[Any] = outcome.Value(task.result()) if exc is None else outcome.Error(exc)
                deliver(lambda: got)

        def begin() -> None:
            raise_cancel = state["cancelled"]
            if raise_cancel is not None:
                deliver(lambda: outcome.capture(raise_cancel))
                return
            try:
                task = asyncio.ensure_future(fn(*args), loop=loop)
            except BaseException as exc:  # fn itself failed before its first await
                failed: outcome.Outcome[Any] = outcome.Error(exc)
                deliver(lambda: failed)
                return
            state["task"] = task
            task.add_done_callback(finished)

        def cancel(raise_cancel: Callable[[], Any]) -> None:
            state["cancelled"] = raise_cancel
            task = state["task"]
            if task is None:
                return  # begin() has not run yet; it delivers the cancellation
            task.cancel()
            loop.call_later(self.cancel_grace_s, deliver, lambda: outcome.capture(raise_cancel))

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            try:
                loop.call_soon_threadsafe(cancel, raise_cancel)
            except RuntimeError:  # the loop is closed: nothing runs there any more
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        loop.call_soon_threadsafe(begin)
        result: _T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the loop's remaining tasks and let them finish (the loop is stopping)."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
