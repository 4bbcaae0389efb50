"""CPU per PostgreSQL query from Trio: trio-asyncio against an asyncio loop in a thread.

    .venv/bin/python bench/pg_bridge.py [--queries N] [--concurrency C] [--dsn DSN]

Runs ``SELECT 1`` through an asyncpg pool N times (C at a time), three ways, in
one process pinned to one CPU (when ``taskset`` exists):

- ``asyncio``: plain asyncio, no Trio (the yardstick: asyncpg's own cost);
- ``trio-asyncio``: from Trio through ``trio_asyncio.aio_as_trio`` (skipped if
  trio-asyncio is not installed);
- ``thread``: from Trio through ``realtimed.store.postgres.bridge.AsyncioThread``,
  the bridge the PostgreSQL store uses.

For each it prints queries per second and this process's CPU per query (its
threads included; the server's CPU is not counted), median of ``--repeat``
runs. The modes take turns in the same run, so a loaded machine shifts all of
them alike; compare them with each other, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtimed.store.postgres.bridge import AsyncioThread


async def _queries(run_one: Callable[[], Awaitable[object]], n: int, concurrency: int) -> None:
    """Trio side: n queries, ``concurrency`` at a time."""
    per = n // concurrency

    async def worker() -> None:
        for _ in range(per):
            await run_one()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


def measure_asyncio(dsn: str, n: int, concurrency: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
        try:
            await pool.fetchval("SELECT 1")
            per = n // concurrency

            async def worker() -> None:
                for _ in range(per):
                    await pool.fetchval("SELECT 1")

            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await pool.close()

    return asyncio.run(main())


def measure_trio_asyncio(dsn: str, n: int, concurrency: int) -> tuple[float, float] | None:
    try:
        import trio_asyncio
    except ImportError:
        return None

    async def main() -> tuple[float, float]:
        async with trio_asyncio.open_loop():
            pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(dsn, min_size=concurrency, max_size=concurrency)
            try:
                one = trio_asyncio.aio_as_trio(pool.fetchval)

                async def run_one() -> object:
                    return await one("SELECT 1")

                await run_one()
                wall, cpu = time.perf_counter(), time.process_time()
                await _queries(run_one, n, concurrency)
                return time.perf_counter() - wall, time.process_time() - cpu
            finally:
                await trio_asyncio.aio_as_trio(pool.close)()

    result: tuple[float, float] = trio.run(main)
    return result


def measure_thread(dsn: str, n: int, concurrency: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        bridge = AsyncioThread(name="bench-asyncio", cancel_grace_s=5.0)
        await bridge.start()
        try:
            pool: Any = await bridge.call(
                functools.partial(asyncpg.create_pool, dsn, min_size=concurrency, max_size=concurrency)
            )
            try:

                async def run_one() -> object:
                    return await bridge.call(pool.fetchval, "SELECT 1")

                await run_one()
                wall, cpu = time.perf_counter(), time.process_time()
                await _queries(run_one, n, concurrency)
                return time.perf_counter() - wall, time.process_time() - cpu
            finally:
                await bridge.call(pool.close)
        finally:
            await bridge.stop()

    result: tuple[float, float] = trio.run(main)
    return result


MODES: dict[str, Callable[[str, int, int], tuple[float, float] | None]] = {
    "asyncio": measure_asyncio,
    "trio-asyncio": measure_trio_asyncio,
    "thread": measure_thread,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is printed")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin this process to")
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.pinned and shutil.which("taskset") and (os.cpu_count() or 1) > args.cpu:
        os.execvp("taskset", ["taskset", "-c", str(args.cpu), sys.executable, *sys.argv, "--pinned"])
    print(
        f"SELECT 1 x {args.queries}, {args.concurrency} at a time, median of {args.repeat}; "
        "CPU of this process (all its threads) per query"
    )
    # The modes take turns (one run of each, then again), so that a change in the
    # machine's load meets them all alike.
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in MODES}
    for _ in range(args.repeat):
        for name, measure in MODES.items():
            got = measure(args.dsn, args.queries, args.concurrency)
            if got is not None:
                runs[name].append(got)
    base: float | None = None
    for name, got_runs in runs.items():
        if not got_runs:
            print(f"  {name:13} not installed")
            continue
        wall = statistics.median(r[0] for r in got_runs)
        cpu_us = statistics.median(r[1] for r in got_runs) / args.queries * 1e6
        base = base or cpu_us
        print(
            f"  {name:13} {args.queries / wall:8,.0f} queries/s  {cpu_us:6.0f} us CPU per query"
            f"  ({cpu_us / base:4.2f} x asyncio)",
            flush=True,
        )

if __name__ == "__main__":
    main()
