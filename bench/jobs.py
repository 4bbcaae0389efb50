"""No-op jobs completed per second, with 1 and 2 runner processes, on each store.

    .venv/bin/python bench/jobs.py [--backend sqlite|postgres|both] [--jobs N] [--concurrency C]

For each backend and process count, N ``noop`` jobs are enqueued first, all due
at one instant a few seconds ahead; then the runner processes start (each a
``JobRunner`` serving the queue with C jobs at once) and sleep until that
instant. The rate is N divided by the time from that instant (or from the
last runner being ready, if later) to the last ``finished_at``. Every claim,
completion and lease renewal is a durable store write. PostgreSQL runs in a
throwaway database created on ``--dsn``'s server and dropped afterwards;
SQLite in a temporary folder (two processes then share one file).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import admin, with_database

from realtimed.clock import SystemClock
from realtimed.config import Config, JobQueueConfig, JobsConfig, ServerConfig, StoreConfig
from realtimed.jobs import JobRunner, register_builtin_kinds
from realtimed.store import Store, open_store

QUEUE = "bench"
PROCESSES = (1, 2)
START_DELAY_S = 4.0


def store_config(args: argparse.Namespace) -> Config:
    if args.backend == "postgres":
        return Config(store=StoreConfig(backend="postgres", postgres_dsn=args.dsn, pool_max=args.pool_max))
    return Config(server=ServerConfig(state_dir=Path(args.state_dir)), store=StoreConfig(backend="sqlite"))


# -- the runner process ----------------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    cfg = store_config(args)
    jobs = JobsConfig(queues=[JobQueueConfig(name=QUEUE, concurrency=args.concurrency)])
    clock = SystemClock()
    async with trio.open_nursery() as nursery:
        store = open_store(cfg, clock=clock)
        await nursery.start(store.run)
        runner = JobRunner(store, config=jobs, clock=clock, node=f"bench-{os.getpid()}")
        register_builtin_kinds(runner, retention=cfg.retention)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            await nursery.start(runner.run)
            print(f"ready {datetime.now(UTC).isoformat()}", flush=True)
            async for _ in signals:
                await runner.drain(5)
                break
        nursery.cancel_scope.cancel()


# -- the driver ------------------------------------------------------------------------------------


async def enqueue_due_at(store: Store, count: int, due: datetime) -> None:
    now = datetime.now(UTC)

    async def some(start: int, step: int) -> None:
        for _ in range(start, count, step):
            await store.enqueue_job(queue=QUEUE, kind="noop", payload={}, now=now, run_at=due)

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(some, i, 32)


async def spawn(args: argparse.Namespace, backend_args: list[str]) -> tuple[trio.Process, datetime]:
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--worker", "--concurrency", str(args.concurrency), *backend_args],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    buffered = b""
    with trio.fail_after(30):
        while b"\n" not in buffered:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError("a runner process exited before it was ready")
            buffered += chunk
    return process, datetime.fromisoformat(buffered.split()[1].decode())


async def one_run(args: argparse.Namespace, store: Store, backend_args: list[str], processes: int) -> float:
    due = datetime.now(UTC) + timedelta(seconds=START_DELAY_S + args.jobs / 10_000)
    await enqueue_due_at(store, args.jobs, due)
    started = [await spawn(args, backend_args) for _ in range(processes)]
    begin = max([due, *(ready for _, ready in started)])
    try:
        with trio.fail_after(600):
            while True:
                stats = {status: count for kind, status, count in await store.job_stats() if kind == "noop"}
                if stats.get("succeeded", 0) >= args.jobs:
                    break
                await trio.sleep(0.1)
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            await process.wait()
    finished = await last_finished(store)
    await store.delete_finished_jobs(before=datetime.now(UTC) + timedelta(days=1))
    return args.jobs / (finished - begin).total_seconds()


async def last_finished(store: Store) -> datetime:
    latest: datetime | None = None
    cursor: str | None = None
    while True:
        jobs, cursor = await store.list_jobs(status="succeeded", kind="noop", cursor=cursor, limit=1000)
        for job in jobs:
            if job.finished_at is not None and (latest is None or job.finished_at > latest):
                latest = job.finished_at
        if cursor is None:
            break
    assert latest is not None
    return latest


async def bench_backend(args: argparse.Namespace, cfg: Config, backend_args: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        store = open_store(cfg, clock=SystemClock())
        await nursery.start(store.run)
        for processes in PROCESSES:
            rate = await one_run(args, store, backend_args, processes)
            print(
                f"  {cfg.store.backend:8} {processes} runner process(es), {args.concurrency} at once each: "
                f"{rate:8,.0f} jobs/s",
                flush=True,
            )
        nursery.cancel_scope.cancel()


async def run_postgres(args: argparse.Namespace) -> None:
    name = f"realtimed_bench_{secrets.token_hex(4)}"
    await trio.to_thread.run_sync(admin, args.dsn, f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(args.dsn, name)
        cfg = Config(store=StoreConfig(backend="postgres", postgres_dsn=dsn, pool_max=args.pool_max))
        await bench_backend(args, cfg, ["--backend", "postgres", "--dsn", dsn, "--pool-max", str(args.pool_max)])
    finally:
        await trio.to_thread.run_sync(admin, args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as folder:
        cfg = Config(server=ServerConfig(state_dir=Path(folder)), store=StoreConfig(backend="sqlite"))
        await bench_backend(args, cfg, ["--backend", "sqlite", "--state-dir", folder])


async def main(args: argparse.Namespace) -> None:
    if args.worker:
        await worker(args)
        return
    print(f"no-op jobs completed per second, {args.jobs:,} jobs per measurement")
    if args.backend in ("sqlite", "both"):
        await run_sqlite(args)
    if args.backend in ("postgres", "both"):
        await run_postgres(args)


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="jobs at once per runner process")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    parser.add_argument("--pool-max", type=int, default=10, help="PostgreSQL pool size per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
