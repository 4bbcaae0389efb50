"""Durable message appends per second through the Store.

    .venv/bin/python bench/store.py [--backend sqlite|postgres|both] [--seconds N]

For each backend, 1, 10 and 100 concurrent writers append messages for N
seconds: first each writer on its own conversation, then all of them on one
conversation. Every append is durable when it returns (SQLite: a
``synchronous=FULL`` WAL commit, grouped by the single writer; PostgreSQL: a
commit). PostgreSQL runs in a throwaway database created on ``--dsn``'s server
and dropped afterwards; SQLite in a temporary folder.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import admin, with_database

from realtimed.clock import SystemClock
from realtimed.config import Config, ServerConfig, StoreConfig
from realtimed.store import Store, open_store

WRITERS = (1, 10, 100)


async def measure(store: Store, *, writers: int, shared: bool, seconds: float) -> tuple[float, float]:
    """Appends per second with ``writers`` concurrent writers, and this process's CPU
    microseconds per append (the database server's own CPU is not counted)."""
    now = datetime.now(UTC)
    if shared:
        conv = await store.create_group(member_ids=[f"w{i}" for i in range(writers)], now=now)
        conversations = [conv.id] * writers
    else:
        conversations = [
            (await store.create_group(member_ids=[f"w{i}", "reader"], now=now)).id for i in range(writers)
        ]
    counts = [0] * writers
    run_id = secrets.token_hex(4)

    async def writer(i: int, until: float) -> None:
        n = 0
        while trio.current_time() < until:
            await store.append_message(
                conversation_id=conversations[i],
                sender_id=f"w{i}",
                client_id=f"{run_id}-{i}-{n}",
                body="hello, this is a benchmark message",
                now=now,
            )
            n += 1
        counts[i] = n

    # A short warm-up (connections, statement caches), not counted.
    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(writer, i, trio.current_time() + 0.3)
    run_id = secrets.token_hex(4)
    start = trio.current_time()
    cpu_start = time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(writer, i, start + seconds)
    elapsed = trio.current_time() - start
    cpu = time.process_time() - cpu_start
    total = max(1, sum(counts))
    return total / elapsed, cpu / total * 1e6


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Store]:
    async with trio.open_nursery() as nursery:
        store = open_store(cfg, clock=SystemClock())
        await nursery.start(store.run)
        yield store
        nursery.cancel_scope.cancel()


async def bench_backend(cfg: Config, seconds: float) -> list[tuple[int, str, float]]:
    results = []
    async with running(cfg) as store:
        for shared in (False, True):
            for writers in WRITERS:
                rate, cpu_us = await measure(store, writers=writers, shared=shared, seconds=seconds)
                mode = "one conversation" if shared else "own conversations"
                print(
                    f"  {cfg.store.backend:8} {writers:4} writers, {mode:17}: {rate:9,.0f} appends/s"
                    f"  ({cpu_us:5.0f} us CPU per append in this process)",
                    flush=True,
                )
                results.append((writers, mode, rate))
    return results


async def run_postgres(args: argparse.Namespace) -> None:
    name = f"realtimed_bench_{secrets.token_hex(4)}"
    await trio.to_thread.run_sync(admin, args.dsn, f'CREATE DATABASE "{name}"')
    try:
        cfg = Config(
            store=StoreConfig(
                backend="postgres", postgres_dsn=with_database(args.dsn, name), pool_max=args.pool_max
            )
        )
        await bench_backend(cfg, args.seconds)
    finally:
        await trio.to_thread.run_sync(admin, args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as folder:
        cfg = Config(server=ServerConfig(state_dir=Path(folder)), store=StoreConfig(backend="sqlite"))
        await bench_backend(cfg, args.seconds)


async def main(args: argparse.Namespace) -> None:
    print(f"durable appends per second, {args.seconds:g} s per measurement")
    if args.backend in ("sqlite", "both"):
        await run_sqlite(args)
    if args.backend in ("postgres", "both"):
        await run_postgres(args)


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    parser.add_argument("--pool-max", type=int, default=StoreConfig().pool_max, help="PostgreSQL pool size")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
