"""Runner processes on one PostgreSQL, killed with SIGKILL while they work.

Each execution of a job's handler inserts a row ``(job_id, pid)`` into
``job_executions`` before the job completes, so the table shows every run. A
job may run more than once only when a process died while holding it: every
run of a job except its last must come from a process that was killed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
import trio
import trio_asyncio

from realtimed.clock import SystemClock
from realtimed.config import Config, StoreConfig
from realtimed.store import Store, open_store
from realtimed.store.base import JobSpec

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("job_worker.py")
QUEUE = "procs"
EXECUTIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS job_executions (n bigserial PRIMARY KEY, job_id text NOT NULL, pid int NOT NULL)"
)


class Worker:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid

    def kill(self) -> None:
        self.process.kill()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            with trio.move_on_after(10):
                await self.process.wait()
            if self.process.returncode is None:
                self.kill()
        await self.process.wait()


async def spawn_many(count: int, dsn: str, **options: Any) -> list[Worker]:
    """Start ``count`` workers at once (each takes a second or so to import and connect)."""
    workers: list[Worker] = []

    async def one() -> None:
        workers.append(await spawn(dsn, **options))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return workers


async def spawn(dsn: str, *, concurrency: int, work_ms: float, lease_s: float = 2.0) -> Worker:
    process = await trio.lowlevel.open_process(
        [
            sys.executable, str(WORKER), "--dsn", dsn, "--queue", QUEUE, "--lease-s", str(lease_s),
            "--poll-s", "1", "--concurrency", str(concurrency), "--work-ms", str(work_ms),
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    buffered = b""
    try:
        with trio.fail_after(20):
            while b"ready" not in buffered:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"worker exited with {await process.wait()} before it was ready")
                buffered += chunk
    except BaseException:
        process.kill()
        raise
    return Worker(process)


@attrs.define
class Cluster:
    dsn: str
    store: Store  # to enqueue and watch
    conn: Any  # to read the executions


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[Cluster]:
    cfg = Config(store=StoreConfig(backend="postgres", postgres_dsn=pg_dsn, pool_max=8))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        conn: Any = await trio_asyncio.aio_as_trio(asyncpg.connect)(pg_dsn)
        await trio_asyncio.aio_as_trio(conn.execute)(EXECUTIONS_TABLE)
        await trio_asyncio.aio_as_trio(conn.execute)("TRUNCATE job_executions")
        store = open_store(cfg, clock=SystemClock())
        await nursery.start(store.run)
        yield Cluster(pg_dsn, store, conn)
        await trio_asyncio.aio_as_trio(conn.close)()
        nursery.cancel_scope.cancel()


async def enqueue_many(store: Store, count: int, *, tasks: int = 32) -> None:
    """``count`` jobs, one ``enqueue_job`` each, from ``tasks`` concurrent tasks."""
    clock = SystemClock()

    async def some(start: int) -> None:
        for i in range(start, count, tasks):
            await store.enqueue_job(queue=QUEUE, kind="record", payload={"i": i}, now=clock.now())

    async with trio.open_nursery() as nursery:
        for start in range(tasks):
            nursery.start_soon(some, start)


async def enqueue_in_batches(store: Store, count: int, *, batch: int = 500) -> None:
    """``count`` jobs, ``batch`` per transaction: the store enqueues jobs in bulk only together
    with a message (the transactional outbox of chat), which is quick enough to set up
    ten thousand jobs in a second."""
    clock = SystemClock()
    group = await store.create_group(member_ids=["jobs-test"], now=clock.now())
    for start in range(0, count, batch):
        specs = [JobSpec(queue=QUEUE, kind="record", payload={"i": i}) for i in range(start, min(count, start + batch))]
        await store.append_message(
            conversation_id=group.id, sender_id="jobs-test", client_id=f"batch-{start}", body="jobs", now=clock.now(),
            jobs=specs,
        )


async def succeeded(store: Store) -> int:
    return sum(count for kind, status, count in await store.job_stats() if kind == "record" and status == "succeeded")


async def executions(conn: Any) -> list[tuple[str, int]]:
    rows = await trio_asyncio.aio_as_trio(conn.fetch)("SELECT job_id, pid FROM job_executions ORDER BY n")
    return [(row["job_id"], row["pid"]) for row in rows]


def check_runs(runs: list[tuple[str, int]], *, jobs: int, killed: set[int], in_flight_max: int) -> int:
    """Every job ran; every run but a job's last came from a killed process. Returns the reruns."""
    by_job: dict[str, list[int]] = {}
    for job_id, pid in runs:
        by_job.setdefault(job_id, []).append(pid)
    assert len(by_job) == jobs
    reruns = 0
    for job_id, pids in by_job.items():
        for pid in pids[:-1]:
            assert pid in killed, f"job {job_id} ran again after a run by {pid}, which was not killed"
        reruns += len(pids) - 1
    assert reruns <= in_flight_max
    return reruns


async def test_two_runner_processes_one_killed_lose_nothing(pg: Cluster) -> None:
    store, conn = pg.store, pg.conn
    # 20 ms of work per job: the two runners need over a second for the lot, so the kill
    # lands in the middle however fast the store claims (at 5 ms they could finish first).
    total, concurrency = 1000, 16
    with trio.fail_after(60):
        workers = await spawn_many(2, pg.dsn, concurrency=concurrency, work_ms=20)
        try:
            await enqueue_many(store, total)
            while len(await executions(conn)) < total // 3:
                await trio.sleep(0.05)
            victim = workers[0]
            victim.kill()
            await victim.process.wait()
            killed_at = len(await executions(conn))
            assert killed_at < total  # it died in the middle
            while await succeeded(store) < total:
                await trio.sleep(0.2)
        finally:
            for worker in workers:
                await worker.stop()
    runs = await executions(conn)
    victim_runs = sum(1 for _, pid in runs if pid == victim.pid)
    assert victim_runs > 0 and victim_runs < len(runs)
    check_runs(runs, jobs=total, killed={victim.pid}, in_flight_max=concurrency)


async def test_ten_thousand_jobs_while_a_runner_is_killed_every_few_seconds(pg: Cluster) -> None:
    store, conn = pg.store, pg.conn
    total, concurrency = 10_000, 64
    killed: set[int] = set()
    with trio.fail_after(60):
        await enqueue_in_batches(store, total)
        steady, first_victim = await spawn_many(2, pg.dsn, concurrency=concurrency, work_ms=0)
        victims = [first_victim]
        try:
            # A kill at each fifth of the work, so there are several whatever the machine's speed.
            marks = [total * f for f in (0.15, 0.35, 0.55, 0.75)]
            while (done := await succeeded(store)) < total:
                await trio.sleep(0.2)
                if marks and done >= marks[0]:
                    while marks and done >= marks[0]:
                        marks.pop(0)
                    victim = victims[-1]
                    victim.kill()
                    await victim.process.wait()
                    killed.add(victim.pid)
                    victims.append(await spawn(pg.dsn, concurrency=concurrency, work_ms=0))
        finally:
            await steady.stop()
            for victim in victims:
                await victim.stop()
    assert len(killed) >= 3
    runs = await executions(conn)
    check_runs(runs, jobs=total, killed=killed, in_flight_max=len(killed) * concurrency)
