"""The PostgreSQL store through an outage: calls fail fast with Unavailable while
the server is down and succeed again once it is back, with no restart."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import pytest
import trio
import trio.testing

from realtimed.clock import SystemClock
from realtimed.config import StoreConfig
from realtimed.errors import Unavailable
from realtimed.store.postgres import PostgresStore
from tests.fixtures.services import PostgresServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONNECT_TIMEOUT_S = 1.0
STATEMENT_TIMEOUT_S = 2.0
# A call while the server is down is refused at once; allow the whole call budget, no more.
FAIL_FAST_S = CONNECT_TIMEOUT_S + 2 * STATEMENT_TIMEOUT_S


def config(dsn: str) -> StoreConfig:
    return StoreConfig(
        backend="postgres",
        postgres_dsn=dsn,
        pool_min=2,
        pool_max=4,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        statement_timeout_s=STATEMENT_TIMEOUT_S,
    )


async def test_calls_fail_fast_while_down_and_succeed_again_after(pg_outage_server: PostgresServer) -> None:
    server = pg_outage_server
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            store = PostgresStore(config(server.dsn()), clock=SystemClock())
            other_node = PostgresStore(config(server.dsn()), clock=SystemClock())
            await nursery.start(store.run)
            await nursery.start(other_node.run)
            conv = await store.create_group(member_ids=["a", "b"], now=T0)
            first, _ = await store.append_message(
                conversation_id=conv.id, sender_id="a", client_id="k1", body="before", now=T0
            )

            await server.stop_async()
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "ping": store.ping,
                "append": lambda: store.append_message(
                    conversation_id=conv.id, sender_id="a", client_id="k2", body="during", now=T0
                ),
                "read": lambda: store.get_conversation(conv.id),
                "enqueue": lambda: store.enqueue_job(queue="q", kind="k", payload={}, now=T0),
                "claim": lambda: store.claim_jobs(queue="q", limit=1, owner="w", lease_s=10, now=T0),
            }
            for name, call in calls.items():
                start = trio.current_time()
                with pytest.raises(Unavailable):
                    await call()
                assert trio.current_time() - start < FAIL_FAST_S, name

            await server.start_async()
            # No restart of the store: the very next calls succeed.
            await store.ping()
            second, created = await store.append_message(
                conversation_id=conv.id, sender_id="a", client_id="k2", body="after", now=T0 + timedelta(seconds=1)
            )
            assert created and second.seq == first.seq + 1  # the failed append took no seq
            again = await store.get_conversation(conv.id)
            assert again is not None and again.last_seq == 2

            # A restart between two calls: the idle pooled connections are dead, and the next write
            # still succeeds (they are replaced, not handed out).
            await server.stop_async()
            await server.start_async()
            third, created = await store.append_message(
                conversation_id=conv.id, sender_id="b", client_id="k3", body="later", now=T0 + timedelta(seconds=2)
            )
            assert created and third.seq == 3

            # The LISTEN connection comes back by itself: a job enqueued on another node wakes this
            # one. (Twice in a row, so that the wake-up sent on reconnecting does not count.)
            quick = 0
            with trio.fail_after(30):
                while quick < 2:
                    start = trio.current_time()
                    async with trio.open_nursery() as inner:
                        inner.start_soon(store.wait_for_jobs, 3.0)
                        await trio.sleep(0.05)
                        await other_node.enqueue_job(queue="q", kind="k", payload={}, now=T0)
                    quick = quick + 1 if trio.current_time() - start < 2.5 else 0
            nursery.cancel_scope.cancel()


async def test_a_server_that_never_answers_is_unavailable_within_the_connect_timeout() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            store = PostgresStore(config(f"postgresql://postgres@127.0.0.1:{port}/x"), clock=SystemClock())
            start = trio.current_time()
            with pytest.raises(Unavailable):
                await store.run()
            assert trio.current_time() - start < CONNECT_TIMEOUT_S + 2
            assert store._bridge is None  # its asyncio thread joined
            nursery.cancel_scope.cancel()


async def test_backends_killed_under_load_fail_calls_with_unavailable_and_the_store_keeps_serving(
    postgres_server: PostgresServer, pg_empty_dsn: str
) -> None:
    """Connections dropped mid-call (``pg_terminate_backend``, as when PostgreSQL sheds
    load or an admin kills sessions) fail those calls with Unavailable; none ends the
    store, a retried append lands once, and the store serves on afterwards.

    The kills also abandon connection attempts halfway, whose sockets asyncpg then
    finds lost with nobody waiting on them ("unexpected connection_lost() call"):
    logged, never raised out of the loop.
    """
    database = pg_empty_dsn.rsplit("/", 1)[1]
    workers, rounds = 10, 20
    outcomes = {"ok": 0, "unavailable": 0, "killed": 0}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            store = PostgresStore(
                StoreConfig(backend="postgres", postgres_dsn=pg_empty_dsn, pool_min=2, pool_max=8,
                            connect_timeout_s=CONNECT_TIMEOUT_S, statement_timeout_s=STATEMENT_TIMEOUT_S),
                clock=SystemClock(),
            )
            await nursery.start(store.run)
            assert store._bridge is not None
            aio = store._bridge.call  # asyncpg on the store's asyncio thread
            conv = await store.create_group(member_ids=["a", "b"], now=T0)
            killing = True

            async def kill() -> None:
                nonlocal killing
                conn = await aio(asyncpg.connect, postgres_server.dsn())
                try:
                    for _ in range(rounds):
                        outcomes["killed"] += await aio(
                            conn.fetchval,
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                            database,
                        )
                        await trio.sleep(0.05)
                finally:
                    killing = False
                    await aio(conn.close)

            sent: list[str] = []

            async def work(worker: int) -> None:
                k = 0
                while killing:
                    client_id = f"{worker}-{k}"
                    k += 1
                    while True:  # an append is retried with its client_id until it lands
                        try:
                            await store.append_message(
                                conversation_id=conv.id, sender_id="a", client_id=client_id, body="x", now=T0
                            )
                            outcomes["ok"] += 1
                            break
                        except Unavailable:
                            outcomes["unavailable"] += 1
                            await trio.sleep(0.01)
                    sent.append(client_id)
                    # Some reads are given up halfway (their client went away): asyncpg
                    # then cancels the statement over a connection of its own.
                    with trio.move_on_after(0.001 * (k % 4) if k % 2 else 10):
                        try:
                            await store.get_conversation(conv.id)
                            outcomes["ok"] += 1
                        except Unavailable:
                            outcomes["unavailable"] += 1

            async with trio.open_nursery() as load:
                load.start_soon(kill)
                for worker in range(workers):
                    load.start_soon(work, worker)

            assert outcomes["killed"] > 0 and outcomes["unavailable"] > 0, outcomes
            await store.ping()
            after = await store.get_conversation(conv.id)
            assert after is not None and after.last_seq == len(sent)  # every append once, none lost
            nursery.cancel_scope.cancel()


async def test_a_connection_failure_nobody_awaited_is_logged_and_the_loop_runs_on(
    pg_empty_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio reports a future that failed with no one to raise it to through the
    loop's exception handler. A lost connection is one warning line; any other
    failure still reaches the handler that was there before (asyncio's default
    logs it with its traceback)."""
    others: list[dict[str, Any]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            store = PostgresStore(config(pg_empty_dsn), clock=SystemClock())
            await nursery.start(store.run)
            assert store._bridge is not None
            bridge = store._bridge
            loop = bridge.loop
            handler = loop.get_exception_handler()
            assert handler is not None
            handler._previous = lambda _loop, context: others.append(context)  # type: ignore[attr-defined]

            async def orphan(exc: BaseException) -> None:
                # What asyncpg leaves behind when a connect is abandoned and its socket then lost.
                async def make() -> None:
                    future = loop.create_future()
                    future.set_exception(exc)

                await bridge.call(make)
                gc.collect()
                await bridge.call(asyncio.sleep, 0)

            await orphan(ConnectionError("unexpected connection_lost() call"))
            await orphan(
                asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            )
            assert "unexpected connection_lost() call" in caplog.text
            assert "connection was closed in the middle of operation" in caplog.text
            assert others == []
            await store.ping()

            await orphan(ValueError("a bug"))
            assert [str(context["exception"]) for context in others] == ["a bug"]
            nursery.cancel_scope.cancel()


async def test_a_busy_pool_times_out_without_replacing_its_connections(pg_empty_dsn: str) -> None:
    """A call that waits longer than ``connect_timeout_s`` for a pooled connection
    is Unavailable, but the pool's connections are alive and stay: replacing them
    all (as after a lost connection) would only add connects to a loaded server."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            store = PostgresStore(
                StoreConfig(backend="postgres", postgres_dsn=pg_empty_dsn, pool_min=1, pool_max=1,
                            connect_timeout_s=0.3, statement_timeout_s=STATEMENT_TIMEOUT_S),
                clock=SystemClock(),
            )
            await nursery.start(store.run)

            async def backend_pid() -> int:
                pid: int = await store._call(lambda conn: conn.fetchval("SELECT pg_backend_pid()"), tx=False)
                return pid

            before = await backend_pid()
            async with trio.open_nursery() as busy:
                busy.start_soon(partial(store._call, lambda conn: conn.execute("SELECT pg_sleep(1)"), tx=False))
                await trio.sleep(0.1)
                with pytest.raises(Unavailable):
                    await backend_pid()
            assert await backend_pid() == before
            nursery.cancel_scope.cancel()
