"""The PostgreSQL store through an outage: calls fail fast with Unavailable while
the server is down and succeed again once it is back, with no restart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
import trio
import trio_asyncio

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
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
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
            async with trio_asyncio.open_loop():
                store = PostgresStore(config(f"postgresql://postgres@127.0.0.1:{port}/x"), clock=SystemClock())
                start = trio.current_time()
                with pytest.raises(Unavailable):
                    await store.run()
                assert trio.current_time() - start < CONNECT_TIMEOUT_S + 2
            nursery.cancel_scope.cancel()


async def test_without_a_trio_asyncio_loop_the_store_says_what_is_missing() -> None:
    with trio.fail_after(5):
        store = PostgresStore(config("postgresql://postgres@127.0.0.1:1/x"), clock=SystemClock())
        with pytest.raises(RuntimeError, match=r"trio_asyncio\.open_loop\(\)"):
            await store.run()
