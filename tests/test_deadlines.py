"""The deadline heap behind the gateway's, chat's and presence's timers, on a MockClock."""

from __future__ import annotations

import trio
import trio.testing

from realtimed.deadlines import Deadlines


async def test_items_come_out_at_their_deadline_earliest_first(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        timers: Deadlines[str] = Deadlines()
        start = trio.current_time()
        for when, item in ((30, "c"), (10, "a"), (20, "b1"), (20, "b2")):
            timers.push(start + when, item)
        assert len(timers) == 4
        seen: list[tuple[float, list[str]]] = []
        for _ in range(3):
            now, items = await timers.due()
            seen.append((now - start, items))
        # Ties come out together, in the order pushed; items are never compared.
        assert seen == [(10, ["a"]), (20, ["b1", "b2"]), (30, ["c"])]
        assert len(timers) == 0


async def test_an_earlier_push_wakes_the_waiting_task_and_a_later_one_does_not_delay_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        timers: Deadlines[str] = Deadlines()
        start = trio.current_time()
        seen: list[tuple[float, list[str]]] = []

        async def serve() -> None:
            while True:
                now, items = await timers.due()
                seen.append((now - start, items))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await trio.sleep(1)  # waiting on an empty heap
            timers.push(start + 50, "late")
            await trio.sleep(1)
            timers.push(start + 5, "early")  # while the task sleeps until 50
            timers.push(start + 60, "later")
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
        assert seen == [(5, ["early"]), (50, ["late"]), (60, ["later"])]


async def test_due_items_are_a_checkpoint_and_cancelling_loses_none(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        timers: Deadlines[int] = Deadlines()
        timers.push(trio.current_time(), 1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await timers.due()
        assert scope.cancelled_caught
        assert len(timers) == 1
        assert (await timers.due())[1] == [1]


async def test_prune_drops_cancelled_items_and_keeps_the_order_of_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        timers: Deadlines[str] = Deadlines()
        start = trio.current_time()
        for when, item in ((10, "gone-a"), (20, "b1"), (20, "gone-b"), (20, "b2"), (5, "gone-c"), (30, "c")):
            timers.push(start + when, item)
        assert timers.prune(lambda item: not item.startswith("gone")) == 3
        assert len(timers) == 3
        seen: list[tuple[float, list[str]]] = []
        for _ in range(2):
            now, items = await timers.due()
            seen.append((now - start, items))
        assert seen == [(20, ["b1", "b2"]), (30, ["c"])]
