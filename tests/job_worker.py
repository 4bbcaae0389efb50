"""A job runner process for the multi-process tests (``tests/test_jobs_processes.py``).

It starts the PostgreSQL store and a ``JobRunner`` serving one queue with the
kind ``record``, whose handler writes one row per execution into the table
``job_executions (job_id, pid)`` (which the test creates) and then works for
``--work-ms``. It prints
``ready <pid>`` once it claims jobs; SIGTERM drains it.

    python tests/job_worker.py --dsn postgresql://... --queue q1 --lease-s 2
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realtimed.clock import SystemClock
from realtimed.config import Config, JobQueueConfig, JobsConfig, StoreConfig
from realtimed.jobs import JobContext, JobRunner
from realtimed.store import open_store


async def main(args: argparse.Namespace) -> None:
    cfg = Config(
        store=StoreConfig(backend="postgres", postgres_dsn=args.dsn, pool_min=1, pool_max=args.pool),
        jobs=JobsConfig(
            lease_s=args.lease_s,
            poll_s=args.poll_s,
            backoff_base_s=0.1,
            queues=[JobQueueConfig(name=args.queue, concurrency=args.concurrency)],
        ),
    )
    clock = SystemClock()
    pid = os.getpid()
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        store = open_store(cfg, clock=clock)
        await nursery.start(store.run)
        # The record is committed before the job completes; PostgreSQL itself is never killed
        # here, so it need not wait for the disk.
        pool: Any = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
            args.dsn, min_size=1, max_size=2, server_settings={"synchronous_commit": "off"}
        )

        async def record(ctx: JobContext) -> None:
            await trio_asyncio.aio_as_trio(pool.execute)(
                "INSERT INTO job_executions (job_id, pid) VALUES ($1, $2)", ctx.job_id, pid
            )
            if args.work_ms:
                await trio.sleep(args.work_ms / 1000)

        runner = JobRunner(store, config=cfg.jobs, clock=clock, node=f"worker-{pid}")
        runner.register("record", record)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(runner.run)
            print(f"ready {pid}", flush=True)
            async for _ in signals:
                await runner.drain(5.0)
                break
        await trio_asyncio.aio_as_trio(pool.close)()
        nursery.cancel_scope.cancel()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--lease-s", type=float, default=2.0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--pool", type=int, default=6)
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    trio.run(main, parse_args())
