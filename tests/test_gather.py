"""``Gather``: lookups made by many jobs at once answered by one batched read."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import trio
import trio.testing

from realtimed.errors import Unavailable
from realtimed.jobs.gather import Gather

LIMIT_S = 10


class Table:
    """A fake batched read that records the keys of every call."""

    def __init__(self, rows: Mapping[str, int]) -> None:
        self.rows = dict(rows)
        self.calls: list[list[str]] = []
        self.fail_next = False
        self.gate: trio.Event | None = None

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.calls.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self.fail_next:
            self.fail_next = False
            raise Unavailable("the store is down")
        return {k: self.rows[k] for k in keys if k in self.rows}


async def test_concurrent_lookups_share_one_read_and_missing_keys_are_none() -> None:
    with trio.fail_after(LIMIT_S):
        table = Table({f"k{i}": i for i in range(40)})
        gather: Gather[str, int] = Gather(table.fetch, max_batch=100)
        answers: dict[str, int | None] = {}

        async def one(key: str) -> None:
            answers[key] = await gather.get(key)

        async with trio.open_nursery() as nursery:
            await nursery.start(gather.run)
            async with trio.open_nursery() as lookups:
                for i in range(50):
                    lookups.start_soon(one, f"k{i % 45}")
            nursery.cancel_scope.cancel()
        assert answers == {f"k{i}": (i if i < 40 else None) for i in range(45)}
        assert len(table.calls) == 1 and sorted(table.calls[0]) == sorted(f"k{i}" for i in range(45))


async def test_lookups_made_during_a_read_go_in_the_next_and_batches_are_capped() -> None:
    with trio.fail_after(LIMIT_S):
        table = Table({f"k{i}": i for i in range(30)})
        table.gate = trio.Event()
        gather: Gather[str, int] = Gather(table.fetch, max_batch=10)
        got: list[int | None] = []

        async def one(key: str) -> None:
            got.append(await gather.get(key))

        async with trio.open_nursery() as nursery:
            await nursery.start(gather.run)
            async with trio.open_nursery() as lookups:
                lookups.start_soon(one, "k0")
                await trio.testing.wait_all_tasks_blocked()
                assert table.calls == [["k0"]]  # a lone lookup is read at once
                for i in range(1, 30):
                    lookups.start_soon(one, f"k{i}")
                await trio.testing.wait_all_tasks_blocked()
                table.gate.set()
            nursery.cancel_scope.cancel()
        assert sorted(v for v in got if v is not None) == list(range(30))
        assert [len(c) for c in table.calls] == [1, 10, 10, 9]


async def test_a_failed_read_fails_its_round_only() -> None:
    with trio.fail_after(LIMIT_S):
        table = Table({"a": 1, "b": 2})
        table.fail_next = True
        gather: Gather[str, int] = Gather(table.fetch)
        async with trio.open_nursery() as nursery:
            await nursery.start(gather.run)
            with pytest.raises(Unavailable):
                await gather.get("a")
            assert await gather.get("b") == 2
            nursery.cancel_scope.cancel()


async def test_without_run_each_lookup_reads_alone_and_a_stop_answers_the_waiting() -> None:
    with trio.fail_after(LIMIT_S):
        table = Table({"a": 1})
        gather: Gather[str, int] = Gather(table.fetch)
        assert await gather.get("a") == 1 and await gather.get("x") is None
        assert table.calls == [["a"], ["x"]]
        table.gate = trio.Event()
        errors: list[BaseException] = []

        async def waiting() -> None:
            try:
                await gather.get("a")
            except Unavailable as exc:
                errors.append(exc)

        async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
            await nursery.start(gather.run)
            outer.start_soon(waiting)
            outer.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # the read is cut short
        assert len(errors) == 2
        table.gate = None
        assert await gather.get("a") == 1
