"""One conformance suite for every HistoryBackend: in memory (``MemoryHistory``,
on Trio's clock) and in Redis (``RedisHistory``, expiring on Redis's clock).

The promises are those of ``realtimed.delivery.rooms.HistoryBackend``: the next
``seq`` taken atomically, none taken by data that cannot be encoded, recovery
complete and in order or not at all, and publications expiring after the
namespace's ``history_ttl_s``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from realtimed.config import NamespaceConfig
from realtimed.delivery.redis_history import RedisHistory
from realtimed.delivery.rooms import HistoryBackend, MemoryHistory
from realtimed.errors import ValidationFailed
from tests import backend_support
from tests.backend_support import settle, unique

# The shared fixtures (assigned, so that tests may name them as parameters).
backend = backend_support.backend
clock = backend_support.clock
limit_s = backend_support.limit_s
redis_client = backend_support.redis_client

AT = "2026-03-01T10:00:00.000Z"
NS = NamespaceConfig(prefix="doc:", history_size=100, history_ttl_s=300.0, recovery_cap=100)

Make = Callable[[], Awaitable[list[HistoryBackend]]]


@pytest.fixture
async def histories(redis_client: Any) -> AsyncIterator[Make]:
    """``await histories()``: the history backend of two nodes sharing one history
    (the same one, twice, in memory, where each node keeps its own)."""

    async def make() -> list[HistoryBackend]:
        if redis_client is None:
            memory = MemoryHistory()
            return [memory, memory]
        return [RedisHistory(redis_client, timeout_s=2.0), RedisHistory(redis_client, timeout_s=2.0)]

    yield make


def data_of(pubs: Any) -> list[Any]:
    return [orjson.loads(orjson.dumps(p.data)) for p in pubs]


async def test_concurrent_appends_take_every_seq_once_in_one_epoch(
    histories: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await histories()
        room = unique("doc:")
        taken: list[tuple[int, str]] = []

        async def append(node: HistoryBackend, n: int) -> None:
            taken.append(await node.append(room, NS, "e", {"n": n}, AT))

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(append, (a, b)[n % 2], n)
        assert sorted(seq for seq, _ in taken) == list(range(1, 31))
        epochs = {epoch for _, epoch in taken}
        assert len(epochs) == 1
        assert await b.position(room, NS) == (30, epochs.pop())
        _, _, pubs = await a.read(room, NS, since_seq=0, limit=100)
        assert [p.seq for p in pubs] == list(range(1, 31))


async def test_data_that_cannot_be_encoded_takes_no_seq(
    histories: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, _ = await histories()
        room = unique("doc:")
        assert (await a.append(room, NS, "e", 1, AT))[0] == 1
        with pytest.raises(ValidationFailed) as raised:
            await a.append(room, NS, "e", {"n": {1, 2}}, AT)
        assert raised.value.field == "data"
        with pytest.raises(ValidationFailed):
            await a.append(room, NS, "e", 2**70, AT)
        seq, epoch = await a.append(room, NS, "e", 2, AT)
        assert seq == 2
        recovery = await a.recover(room, NS, since_seq=0, since_epoch=epoch)
        assert recovery.recovered and data_of(recovery.publications) == [1, 2]


async def test_recovery_is_complete_and_in_order_or_nothing(
    histories: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await histories()
        room = unique("doc:")
        ns = NamespaceConfig(prefix="doc:", history_size=4, history_ttl_s=300.0, recovery_cap=3)
        for n in range(1, 7):
            seq, epoch = await a.append(room, ns, f"e{n}", {"n": n}, AT)
        assert seq == 6
        # Kept: 3 to 6 (history_size 4).
        full = await b.recover(room, ns, since_seq=3, since_epoch=epoch)
        assert (full.seq, full.epoch, full.recovered) == (6, epoch, True)
        assert [p.seq for p in full.publications] == [4, 5, 6]
        assert [p.event for p in full.publications] == ["e4", "e5", "e6"]
        assert data_of(full.publications) == [{"n": 4}, {"n": 5}, {"n": 6}]
        assert [p.published_at for p in full.publications] == [AT] * 3
        up_to_date = await b.recover(room, ns, since_seq=6, since_epoch=epoch)
        assert up_to_date.recovered and up_to_date.publications == ()
        refused = [
            await b.recover(room, ns, since_seq=1, since_epoch=epoch),  # trimmed (and over the cap)
            await b.recover(room, ns, since_seq=2, since_epoch=epoch),  # over the cap
            await b.recover(room, ns, since_seq=7, since_epoch=epoch),  # ahead of the room
            await b.recover(room, ns, since_seq=5, since_epoch="another"),  # another epoch
        ]
        assert [(r.recovered, r.publications, r.seq, r.epoch) for r in refused] == [(False, (), 6, epoch)] * 4


async def test_read_pages_in_seq_order(
    histories: Make, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await histories()
        room = unique("doc:")
        for n in range(1, 6):
            await a.append(room, NS, "e", n, AT)
        seq, _, first = await b.read(room, NS, since_seq=0, limit=2)
        _, _, rest = await b.read(room, NS, since_seq=first[-1].seq, limit=10)
        assert seq == 5
        assert [p.seq for p in first + rest] == [1, 2, 3, 4, 5]
        assert data_of(first + rest) == [1, 2, 3, 4, 5]


async def test_publications_expire_after_the_namespace_ttl(
    histories: Make, backend: str, clock: trio.testing.MockClock | None, limit_s: float
) -> None:
    with trio.fail_after(limit_s):
        a, b = await histories()
        room = unique("doc:")
        ttl = 0.4 if backend == "redis" else 60.0
        ns = NamespaceConfig(prefix="doc:", history_size=100, history_ttl_s=ttl, recovery_cap=100)
        await a.append(room, ns, "e", 1, AT)
        await trio.sleep(ttl * 0.5)
        _, epoch = await a.append(room, ns, "e", 2, AT)
        assert [p.seq for p in (await b.recover(room, ns, since_seq=0, since_epoch=epoch)).publications] == [1, 2]
        await trio.sleep(ttl * 0.6)
        # The first publication is older than the ttl: a position before it is not recovered.
        assert not (await b.recover(room, ns, since_seq=0, since_epoch=epoch)).recovered
        assert (await b.recover(room, ns, since_seq=1, since_epoch=epoch)).recovered
        await settle(backend, ttl)
        # Everything expired: nothing is replayed, and no later publication passes for a continuation.
        assert not (await b.recover(room, ns, since_seq=1, since_epoch=epoch)).recovered
        _, _, kept = await b.read(room, ns, since_seq=0, limit=10)
        assert kept == []
        seq, next_epoch = await a.append(room, ns, "e", 3, AT)
        assert not (await b.recover(room, ns, since_seq=1, since_epoch=epoch)).recovered
        recovery = await b.recover(room, ns, since_seq=seq - 1, since_epoch=next_epoch)
        assert recovery.recovered and data_of(recovery.publications) == [3]
