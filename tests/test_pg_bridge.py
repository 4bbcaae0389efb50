"""The bridge from Trio to asyncpg: an asyncio loop in a thread of its own.

The bridge alone (results, errors, a cancellation that waits for the asyncio
side, a bounded wait, the thread joined), then the PostgreSQL store on it: a
cancelled statement leaves its pooled connection clean, and no thread is left
once the store has closed.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from realtimed.clock import SystemClock
from realtimed.config import StoreConfig
from realtimed.store.postgres import PostgresStore
from realtimed.store.postgres.bridge import AsyncioThread

T0 = datetime(2026, 1, 1, tzinfo=UTC)
THREAD = "realtimed-postgres"


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def test_calls_return_results_and_raise_errors_across_the_thread() -> None:
    with trio.fail_after(10):
        bridge = AsyncioThread(name="test-bridge", cancel_grace_s=5)
        await bridge.start()
        try:
            seen: list[int] = []

            async def where(x: int) -> tuple[int, int]:
                await asyncio.sleep(0)
                seen.append(threading.get_ident())
                return x * 2, threading.get_ident()

            async def fail() -> None:
                await asyncio.sleep(0)
                raise ValueError("from asyncio")

            got = [await bridge.call(where, i) for i in range(20)]
            assert [value for value, _ in got] == [2 * i for i in range(20)]
            assert {ident for _, ident in got} == {bridge_thread_ident(bridge)} != {threading.get_ident()}
            with pytest.raises(ValueError, match="from asyncio"):
                await bridge.call(fail)
            # Many at once from many Trio tasks.
            results: list[int] = []

            async def one(i: int) -> None:
                value, _ = await bridge.call(where, i)
                results.append(value)

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
            assert sorted(results) == [2 * i for i in range(200)]
        finally:
            await bridge.stop()
        assert threads_named("test-bridge") == []


def bridge_thread_ident(bridge: AsyncioThread) -> int | None:
    thread = bridge._thread
    assert thread is not None
    return thread.ident


async def test_a_trio_cancellation_cancels_the_asyncio_task_and_waits_for_its_cleanup() -> None:
    with trio.fail_after(10):
        bridge = AsyncioThread(name="test-bridge", cancel_grace_s=5)
        await bridge.start()
        try:
            events: list[str] = []

            async def slow() -> None:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    events.append("cancelled")
                    await asyncio.sleep(0.2)  # cleanup that takes a while (a connection going back)
                    events.append("cleaned up")
                    raise

            started = trio.current_time()
            with trio.move_on_after(0.1) as scope:
                await bridge.call(slow)
            assert scope.cancelled_caught
            # The Trio task went on only once the asyncio side had finished.
            assert events == ["cancelled", "cleaned up"]
            assert trio.current_time() - started < 5
            assert await bridge.call(asyncio.sleep, 0, "still serving") == "still serving"
        finally:
            await bridge.stop()


async def test_a_cancelled_call_waits_at_most_the_grace_period() -> None:
    with trio.fail_after(10):
        bridge = AsyncioThread(name="test-bridge", cancel_grace_s=0.3)
        await bridge.start()
        try:
            finished = threading.Event()

            async def stubborn() -> None:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    await asyncio.sleep(10)  # far longer than the grace
                    finished.set()

            started = trio.current_time()
            with trio.move_on_after(0.1):
                await bridge.call(stubborn)
            waited = trio.current_time() - started
            assert 0.3 <= waited < 5 and not finished.is_set()
        finally:
            await bridge.stop()  # cancels it again, and joins the thread
        assert threads_named("test-bridge") == []


def config(dsn: str, **kw: Any) -> StoreConfig:
    return StoreConfig(
        backend="postgres",
        postgres_dsn=dsn,
        **{"pool_min": 1, "pool_max": 1, "connect_timeout_s": 2.0, "statement_timeout_s": 5.0, **kw},
    )


async def test_a_cancelled_statement_leaves_a_clean_pooled_connection(pg_dsn: str) -> None:
    """A Trio deadline that ends a call mid-statement cancels the statement on the
    server; the pool keeps its one connection, idle and usable, and the next call
    on it works."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            store = PostgresStore(config(pg_dsn), clock=SystemClock())
            await nursery.start(store.run)
            pid_before = await store._call(lambda conn: conn.fetchval("SELECT pg_backend_pid()"), tx=False)

            async def sleeper(conn: Any) -> None:
                await conn.execute("SELECT pg_sleep(20)")

            for tx in (False, True):
                started = trio.current_time()
                with trio.move_on_after(0.3) as scope:
                    await store._call(sleeper, tx=tx)
                assert scope.cancelled_caught
                assert trio.current_time() - started < 6  # not the 20 s of the statement

                # The same one connection, not in a transaction, no statement left running.
                pid = await store._call(lambda conn: conn.fetchval("SELECT pg_backend_pid()"), tx=False)
                assert pid == pid_before
                assert store._pool is not None and store._pool.get_size() == 1
                running = await store._call(
                    lambda conn: conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' "
                        "AND state = 'active' AND datname = current_database()"
                    ),
                    tx=False,
                )
                assert running == 0
                conv = await store.create_group(member_ids=["a", "b"], now=T0)
                msg, created = await store.append_message(
                    conversation_id=conv.id, sender_id="a", client_id=f"after-{tx}", body="x", now=T0
                )
                assert created and msg.seq == 1
            nursery.cancel_scope.cancel()


async def test_the_store_joins_its_thread_when_it_closes_and_migrate_leaves_none(pg_dsn: str) -> None:
    with trio.fail_after(30):
        assert threads_named(THREAD) == []
        async with trio.open_nursery() as nursery:
            store = PostgresStore(config(pg_dsn, pool_max=2), clock=SystemClock())
            other_node = PostgresStore(config(pg_dsn, pool_max=2), clock=SystemClock())
            await nursery.start(store.run)
            await nursery.start(other_node.run)
            assert len(threads_named(THREAD)) == 2
            # The LISTEN connection works across the thread: a job enqueued on another node
            # (another store, its own thread) wakes a waiter here, through NOTIFY alone.
            async with trio.open_nursery() as inner:
                inner.start_soon(store.wait_for_jobs, 20.0)
                await trio.testing.wait_all_tasks_blocked()
                started = trio.current_time()
                await other_node.enqueue_job(queue="q", kind="k", payload={}, now=T0)
            assert trio.current_time() - started < 10
            nursery.cancel_scope.cancel()
        assert threads_named(THREAD) == []
        assert store._bridge is None

        # `realtimed migrate`: the store is not running; the call starts a thread and joins it.
        other = PostgresStore(config(pg_dsn), clock=SystemClock())
        assert await other.migrate() == []
        assert threads_named(THREAD) == []
