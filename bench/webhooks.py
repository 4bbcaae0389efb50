"""Webhook deliveries per second to a local receiver, against no-op jobs on the same runner.

    .venv/bin/python bench/webhooks.py [--backend postgres|sqlite] [--deliveries N] [--concurrency C]

One process holds the store, a ``JobRunner`` serving one queue with C jobs at once,
and the ``WebhookService`` with one endpoint: a receiver in its own process (an
HTTP/1.1 server on Trio and h11 that answers 200 at once). The yardstick comes
first in the same run: N ``noop`` jobs on the same queue, then N ``webhook.deliver``
jobs (each signed, POSTed, its attempt recorded, then completed: one more store
write than a no-op). Each set is enqueued before a runner starts; the rate is N
over the time from the runner's start to the last ``finished_at``, and the CPU per
item is this process's CPU time over that span, divided by N (the receiver's CPU
is shown apart). PostgreSQL runs in a throwaway database created on
``--dsn``'s server and dropped afterwards. The machine may be shared: compare the
two rates of one run, not figures of different runs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import admin, cpu_seconds, free_port, with_database

from realtimed.clock import SystemClock
from realtimed.config import (
    Config,
    JobQueueConfig,
    JobsConfig,
    ServerConfig,
    StoreConfig,
    WebhookEndpointConfig,
    WebhooksConfig,
)
from realtimed.jobs import JobRunner, register_builtin_kinds
from realtimed.live import Live
from realtimed.outbound.signing import new_secret
from realtimed.store import Store, open_store
from realtimed.webhooks import WEBHOOK_DELIVER, WebhookDeliver, WebhookService

QUEUE = "bench"

# -- the receiver process ----------------------------------------------------------------------------


async def receiver(port: int) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.EndOfMessage):
                    reply = conn.send(h11.Response(status_code=200, headers=[("content-length", "2")]))
                    reply = (reply or b"") + (conn.send(h11.Data(data=b"ok")) or b"")
                    reply += conn.send(h11.EndOfMessage()) or b""
                    await stream.send_all(reply)
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print("ready", flush=True)
    await trio.serve_listeners(handle, listeners)


# -- the driver ------------------------------------------------------------------------------------------


async def enqueue(store: Store, kind: str, payloads: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)

    async def some(start: int, step: int) -> None:
        for i in range(start, len(payloads), step):
            await store.enqueue_job(queue=QUEUE, kind=kind, payload=payloads[i], now=now, max_attempts=3)

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(some, i, 32)


async def finished_span(store: Store, kind: str, count: int, due: datetime) -> float:
    with trio.fail_after(600):
        while True:
            stats = {status: n for k, status, n in await store.job_stats() if k == kind}
            done = stats.get("succeeded", 0)
            if done + stats.get("failed", 0) + stats.get("dead", 0) >= count:
                if done < count:
                    raise RuntimeError(f"{count - done} {kind} jobs did not succeed: {stats}")
                break
            await trio.sleep(0.05)
    latest: datetime | None = None
    cursor: str | None = None
    while True:
        jobs, cursor = await store.list_jobs(status="succeeded", kind=kind, cursor=cursor, limit=1000)
        for job in jobs:
            if job.finished_at is not None and (latest is None or job.finished_at > latest):
                latest = job.finished_at
        if cursor is None:
            break
    assert latest is not None
    return (latest - due).total_seconds()


async def measure(
    store: Store, make_runner: Callable[[], JobRunner], kind: str, payloads: list[dict[str, Any]], receiver_pid: int
) -> tuple[float, float, float]:
    """(items per second, this process's CPU ms per item, the receiver's CPU ms per item)."""
    await enqueue(store, kind, payloads)
    async with trio.open_nursery() as nursery:
        start = datetime.now(UTC)
        cpu0, rcpu0 = time.process_time(), cpu_seconds(receiver_pid)
        runner = make_runner()
        await nursery.start(runner.run)
        span = await finished_span(store, kind, len(payloads), start)
        cpu, rcpu = time.process_time() - cpu0, cpu_seconds(receiver_pid) - rcpu0
        await runner.drain(5)
        nursery.cancel_scope.cancel()
    await store.delete_finished_jobs(before=datetime.now(UTC) + timedelta(days=1))
    n = len(payloads)
    return n / span, cpu * 1000 / n, rcpu * 1000 / n


async def bench(args: argparse.Namespace, cfg: Config) -> None:
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--receiver", str(port)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            assert (await process.stdout.receive_some(100)).startswith(b"ready")
        hooks = WebhooksConfig(
            endpoints=[WebhookEndpointConfig(id="bench", url=f"http://127.0.0.1:{port}/hooks",
                                             secrets=[new_secret(secrets.token_bytes(32))])],
            allow_private=True, queue=QUEUE,
        )
        jobs = JobsConfig(queues=[JobQueueConfig(name=QUEUE, concurrency=args.concurrency)])
        live = Live(Config(server=cfg.server, store=cfg.store, jobs=jobs, webhooks=hooks))
        clock = SystemClock()
        async with trio.open_nursery() as nursery:
            store = open_store(cfg, clock=clock)
            await nursery.start(store.run)
            runners: list[JobRunner] = []

            def make_runner() -> JobRunner:
                runner = JobRunner(store, config=jobs, clock=clock, node=f"bench-{os.getpid()}-{len(runners)}")
                register_builtin_kinds(runner, retention=cfg.retention)
                service.register_jobs(runner)
                runners.append(runner)
                return runner

            service = WebhookService(live, store=store, clock=clock, jobs=JobRunner(store, config=jobs, clock=clock))
            await nursery.start(service.run)
            n = args.deliveries
            noop = await measure(store, make_runner, "noop", [{} for _ in range(n)], process.pid)
            now = datetime.now(UTC)
            deliveries = [
                WEBHOOK_DELIVER.encode(WebhookDeliver(
                    endpoint_id="bench", event="message.new", webhook_id=f"msg_{i}", created_at=now,
                    data={"conversation_id": "c1", "sender_id": "alice", "body": "hello " * 8, "seq": i},
                ))
                for i in range(n)
            ]
            hook = await measure(store, make_runner, WEBHOOK_DELIVER.kind, deliveries, process.pid)
            backend = cfg.store.backend
            print(f"  {backend:8} noop jobs (yardstick): {noop[0]:8,.0f}/s  {noop[1]:.3f} ms CPU each")
            print(
                f"  {backend:8} webhook deliveries:    {hook[0]:8,.0f}/s  {hook[1]:.3f} ms CPU each "
                f"(receiver: {hook[2]:.3f} ms each)",
                flush=True,
            )
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        await process.wait()


async def main(args: argparse.Namespace) -> None:
    if args.receiver:
        await receiver(args.receiver)
        return
    print(f"{args.deliveries:,} items per measurement, {args.concurrency} at once")
    await with_store(args.backend, args.dsn, args.pool_max, lambda cfg: bench(args, cfg))


async def with_store(backend: str, dsn: str, pool_max: int, run: Callable[[Config], Awaitable[None]]) -> None:
    """``run`` on a throwaway store: a PostgreSQL database created on ``dsn``'s server and
    dropped after, or SQLite in a temporary folder."""
    if backend == "postgres":
        name = f"realtimed_bench_{secrets.token_hex(4)}"
        await trio.to_thread.run_sync(admin, dsn, f'CREATE DATABASE "{name}"')
        try:
            await run(Config(store=StoreConfig(backend="postgres", postgres_dsn=with_database(dsn, name), pool_max=pool_max)))
        finally:
            await trio.to_thread.run_sync(admin, dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as folder:
            await run(Config(server=ServerConfig(state_dir=Path(folder)), store=StoreConfig(backend="sqlite")))


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--deliveries", type=int, default=5_000, help="items per measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="jobs at once")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    parser.add_argument("--pool-max", type=int, default=10, help="PostgreSQL pool size")
    parser.add_argument("--receiver", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
