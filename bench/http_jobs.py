"""HTTP jobs per second to a local receiver, against no-op jobs on the same runner.

    .venv/bin/python bench/http_jobs.py [--backend postgres|sqlite] [--jobs N] [--concurrency C]

The set-up is ``bench/webhooks.py``'s (its receiver, enqueueing and measuring are
used as they are): one process holds the store, a ``JobRunner`` serving one queue
with C jobs at once, and the ``HttpJobService`` with one target, a receiver in its
own process (an HTTP/1.1 server on Trio and h11 that answers 200 at once). First N
``noop`` jobs on the same queue (the yardstick), then N ``http`` jobs (each a
signed POST of a small JSON body, then completed). Each set is enqueued before a
runner starts; the rate is N over the time from the runner's start to the last
``finished_at``, and the CPU per item is this process's CPU time over that span
divided by N (the receiver's CPU is shown apart). PostgreSQL runs in a throwaway
database created on ``--dsn``'s server and dropped afterwards. The machine may be
shared: compare the two rates of one run, not figures of different runs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import free_port
from webhooks import QUEUE, measure, with_store

from realtimed.clock import SystemClock
from realtimed.config import (
    Config,
    HttpJobsConfig,
    HttpTargetConfig,
    JobQueueConfig,
    JobsConfig,
)
from realtimed.jobs import JobRunner, register_builtin_kinds
from realtimed.jobs.http import HTTP, HttpJob, HttpJobService
from realtimed.live import Live
from realtimed.outbound.signing import new_secret
from realtimed.store import open_store

RECEIVER_SCRIPT = str(Path(__file__).resolve().parent / "webhooks.py")


async def bench(args: argparse.Namespace, cfg: Config) -> None:
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, RECEIVER_SCRIPT, "--receiver", str(port)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            assert (await process.stdout.receive_some(100)).startswith(b"ready")
        jobs = JobsConfig(
            queues=[JobQueueConfig(name=QUEUE, concurrency=args.concurrency)],
            http=HttpJobsConfig(queue=QUEUE, allow_private=True),
            http_targets=[HttpTargetConfig(
                name="bench", base_url=f"http://127.0.0.1:{port}/api", secret=new_secret(secrets.token_bytes(32)),
                headers={"X-App-Token": "bench"},
            )],
        )
        live = Live(Config(server=cfg.server, store=cfg.store, jobs=jobs))
        clock = SystemClock()
        async with trio.open_nursery() as nursery:
            store = open_store(cfg, clock=clock)
            await nursery.start(store.run)
            service = HttpJobService(live, clock=clock)
            await nursery.start(service.run)
            runners: list[JobRunner] = []

            def make_runner() -> JobRunner:
                runner = JobRunner(store, config=jobs, clock=clock, node=f"bench-{os.getpid()}-{len(runners)}")
                register_builtin_kinds(runner, retention=cfg.retention)
                service.register_jobs(runner)
                runners.append(runner)
                return runner

            n = args.jobs
            noop = await measure(store, make_runner, "noop", [{} for _ in range(n)], process.pid)
            calls = [
                HTTP.encode(HttpJob(target="bench", path=f"orders/{i}", body={"order": i, "note": "hello " * 8}))
                for i in range(n)
            ]
            http = await measure(store, make_runner, HTTP.kind, calls, process.pid)
            backend = cfg.store.backend
            print(f"  {backend:8} noop jobs (yardstick): {noop[0]:8,.0f}/s  {noop[1]:.3f} ms CPU each")
            print(
                f"  {backend:8} http jobs:             {http[0]:8,.0f}/s  {http[1]:.3f} ms CPU each "
                f"(receiver: {http[2]:.3f} ms each)",
                flush=True,
            )
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        await process.wait()


async def main(args: argparse.Namespace) -> None:
    print(f"{args.jobs:,} items per measurement, {args.concurrency} at once")
    await with_store(args.backend, args.dsn, args.pool_max, lambda cfg: bench(args, cfg))


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--jobs", type=int, default=5_000, help="items per measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="jobs at once")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    parser.add_argument("--pool-max", type=int, default=10, help="PostgreSQL pool size")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
