"""The job runner on both stores, on Trio's MockClock.

Wall time is a ``TrioWallClock``, so ``run_at``, leases and backoff follow the
mock clock. The autojump threshold is well above a local PostgreSQL round
trip, so the clock only jumps while every task really waits on a timer; the
runners' safety-net poll is set far out (``poll_s``) wherever a test asserts
that something happens on time, so that only a real wake-up can explain it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from realtimed.clock import SystemClock, TrioWallClock
from realtimed.config import (
    Config,
    CronConfig,
    JobQueueConfig,
    JobsConfig,
    RetentionConfig,
    ServerConfig,
    StoreConfig,
    load_config,
)
from realtimed.jobs import (
    DoNotRetry,
    JobContext,
    JobRunner,
    RetryAfter,
    builtin_cron_entries,
    merge_entries,
    register_builtin_kinds,
)
from realtimed.jobs import runner as runner_module
from realtimed.metrics import REGISTRY
from realtimed.store import Store, open_store
from realtimed.store.base import NewNotification
from tests.fixtures.daemon import API_KEY, DaemonFactory

AUTOJUMP_S = 0.05
PG_AUTOJUMP_S = 0.25
LIMIT_S = 3600  # virtual seconds; a hang jumps straight to it
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EPS = 0.05


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_S)


@pytest.fixture
def wall() -> TrioWallClock:
    return TrioWallClock(T0)


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    if request.param == "postgres":
        store = StoreConfig(backend="postgres", postgres_dsn=request.getfixturevalue("pg_dsn"))
    else:
        store = StoreConfig(backend="sqlite", sqlite_path="jobs.db")
    return Config(server=ServerConfig(state_dir=tmp_path), store=store)


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Watched]:
    if store_config.store.backend == "postgres":
        # Each PostgreSQL call waits on the store's asyncio thread, where a loaded
        # machine can stall it for more than a short autojump: Trio would take the
        # wait for idleness and jump the clock past the call's timeout.
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock):
            clock.autojump_threshold = max(clock.autojump_threshold, PG_AUTOJUMP_S)
    async with trio.open_nursery() as nursery:
        # Every job method takes its time from the caller; the store's own clock only
        # stamps migrations, which SQLite applies on a worker thread.
        s = open_store(store_config, clock=SystemClock())
        await nursery.start(s.run)
        yield Watched(s)
        nursery.cancel_scope.cancel()


def jobs_config(**overrides: Any) -> JobsConfig:
    settings: dict[str, Any] = {"lease_s": 30.0, "poll_s": 600.0, "backoff_base_s": 2.0, "backoff_max_s": 5.0}
    settings.update(overrides)
    return JobsConfig(**settings)


def make_runner(store: Any, wall: TrioWallClock, **overrides: Any) -> JobRunner:
    return JobRunner(
        store, config=jobs_config(**overrides), clock=wall, node="test", rng=random.Random(7), stats_interval_s=3600
    )


class Recorder:
    """Records when each job's handler ran."""

    def __init__(self) -> None:
        self.runs: dict[str, list[float]] = {}
        self.order: list[str] = []
        self.changed = trio.Event()

    def note(self, ctx: JobContext) -> None:
        self.runs.setdefault(ctx.job_id, []).append(trio.current_time())
        self.order.append(ctx.job_id)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()


class Watched:
    """The store, with an event on every recorded outcome, so tests wait without polling."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _fire(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def complete_job(self, **kwargs: Any) -> bool:
        try:
            return bool(await self._store.complete_job(**kwargs))
        finally:
            self._fire()

    async def complete_jobs(self, **kwargs: Any) -> set[str]:
        try:
            return set(await self._store.complete_jobs(**kwargs))
        finally:
            self._fire()

    async def fail_job(self, **kwargs: Any) -> Any:
        try:
            return await self._store.fail_job(**kwargs)
        finally:
            self._fire()

    async def release_jobs(self, **kwargs: Any) -> None:
        try:
            await self._store.release_jobs(**kwargs)
        finally:
            self._fire()

    async def wait_status(self, job_id: str, status: str) -> Any:
        while True:
            changed = self._changed
            job = await self._store.get_job(job_id)
            assert job is not None
            if job.status == status:
                return job
            await changed.wait()


class NoRelease:
    """A store seen by a process that dies: it never gets to give its claims back."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def release_jobs(self, **kwargs: Any) -> None:
        return None


class CountingStore:
    """Counts the calls the runner makes, to show that it does not poll."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await attr(*args, **kwargs)

        return counted


# ---------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------


async def test_backoff_schedule_with_equal_jitter_then_dead(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        runner = make_runner(store, wall, backoff_base_s=2.0, backoff_max_s=5.0)

        async def flaky(ctx: JobContext) -> None:
            rec.note(ctx)
            raise RuntimeError(f"boom {ctx.attempt}")

        runner.register("flaky", flaky)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            job = await runner.enqueue("flaky", {"n": 1}, max_attempts=4)
            await rec.wait_for(lambda: len(rec.runs.get(job.id, [])) == 4)
            final = await store.wait_status(job.id, "dead")
            await trio.sleep(60)  # nothing runs after dead
            nursery.cancel_scope.cancel()
        times = rec.runs[job.id]
        assert len(times) == 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Nominal delays 2, 4, then 8 capped at 5; equal jitter draws from [d/2, d].
        for gap, nominal in zip(gaps, [2.0, 4.0, 5.0], strict=True):
            assert nominal / 2 - EPS <= gap <= nominal + EPS, gaps
        assert final.attempts == 4
        assert final.last_error == "RuntimeError: boom 4"
        assert final.finished_at is not None


async def test_retry_after_replaces_the_backoff(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        runner = make_runner(store, wall)

        async def rate_limited(ctx: JobContext) -> None:
            rec.note(ctx)
            if ctx.attempt == 1:
                raise RetryAfter(42, "QUOTA_EXCEEDED")

        runner.register("push", rate_limited)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            job = await runner.enqueue("push", {})
            done = await store.wait_status(job.id, "succeeded")
            nursery.cancel_scope.cancel()
        first, second = rec.runs[job.id]
        assert 42 - EPS <= second - first <= 42 + EPS
        assert done.attempts == 2
        assert done.last_error == "RetryAfter(42): QUOTA_EXCEEDED"


async def test_do_not_retry_fails_at_once(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        runner = make_runner(store, wall)

        async def hopeless(ctx: JobContext) -> None:
            rec.note(ctx)
            raise DoNotRetry("INVALID_ARGUMENT: bad token")

        runner.register("hopeless", hopeless)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            job = await runner.enqueue("hopeless", {})
            failed = await store.wait_status(job.id, "failed")
            await trio.sleep(120)
            nursery.cancel_scope.cancel()
        assert len(rec.runs[job.id]) == 1
        assert failed.attempts == 1
        assert failed.last_error == "DoNotRetry: INVALID_ARGUMENT: bad token"


async def test_unknown_kind_fails_clearly(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        runner = make_runner(store, wall)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            job = await runner.enqueue("nobody.handles.this", {})
            failed = await store.wait_status(job.id, "failed")
            nursery.cancel_scope.cancel()
        assert failed.attempts == 1
        assert failed.last_error is not None
        assert "unknown job kind 'nobody.handles.this'" in failed.last_error


async def test_handler_time_limit_counts_as_a_failure(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        runner = make_runner(store, wall)

        async def stuck(ctx: JobContext) -> None:
            await trio.sleep_forever()

        runner.register("stuck", stuck, timeout_s=10)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            job = await runner.enqueue("stuck", {}, max_attempts=2)
            dead = await store.wait_status(job.id, "dead")
            nursery.cancel_scope.cancel()
        assert dead.attempts == 2
        assert dead.last_error == "timed out"


async def test_successes_are_recorded_in_batches_and_a_failure_does_not_hold_them_back(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        counting = CountingStore(store)
        runner = make_runner(counting, wall, queues=[JobQueueConfig(name="default", concurrency=20)])
        release, all_started = trio.Event(), trio.Event()
        started: list[str] = []

        async def together(ctx: JobContext) -> None:
            started.append(ctx.job_id)
            if len(started) == 20:
                all_started.set()
            await release.wait()
            if ctx.payload["i"] == 7:
                raise DoNotRetry("bad one")

        runner.register("together", together)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            jobs = [await runner.enqueue("together", {"i": i}) for i in range(20)]
            await all_started.wait()
            release.set()
            for job in jobs:
                await store.wait_status(job.id, "failed" if job.payload["i"] == 7 else "succeeded")
            nursery.cancel_scope.cancel()
        # 19 successes, recorded by a few statements rather than one each.
        assert counting.calls.get("complete_job", 0) == 0
        assert 1 <= counting.calls["complete_jobs"] <= 3, counting.calls
        assert counting.calls["fail_job"] == 1


# ---------------------------------------------------------------------------
# Scheduling and waking
# ---------------------------------------------------------------------------


async def test_run_at_is_honoured_without_polling(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        counting = CountingStore(store)
        runner = make_runner(counting, wall, poll_s=600.0)

        async def later(ctx: JobContext) -> None:
            rec.note(ctx)

        runner.register("later", later)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            start = trio.current_time()
            job = await runner.enqueue("later", {}, delay_s=90)
            await store.wait_status(job.id, "succeeded")
            nursery.cancel_scope.cancel()
        assert 90 - EPS <= rec.runs[job.id][0] - start <= 90 + EPS
        # Woken by the enqueue, then by run_at: a handful of claims, not one per tick.
        assert counting.calls["claim_jobs"] <= 5, counting.calls


async def test_new_work_wakes_an_idle_runner(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        runner = make_runner(store, wall, poll_s=600.0)

        async def quick(ctx: JobContext) -> None:
            rec.note(ctx)

        runner.register("quick", quick)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await trio.sleep(30)
            # Straight into the store, as another node (or the chat service) would.
            job, _ = await store.enqueue_job(queue="default", kind="quick", payload={}, now=wall.now())
            enqueued = trio.current_time()
            await rec.wait_for(lambda: job.id in rec.runs)
            nursery.cancel_scope.cancel()
        assert rec.runs[job.id][0] - enqueued <= EPS


async def test_priority_then_run_at_order(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        runner = make_runner(store, wall, queues=[JobQueueConfig(name="serial", concurrency=1)])

        async def step(ctx: JobContext) -> None:
            rec.note(ctx)
            await trio.sleep(1)

        runner.register("step", step)
        names: dict[str, str] = {}
        for name, priority in [("low", 0), ("high-a", 5), ("mid", 1), ("top", 9), ("high-b", 5)]:
            job = await runner.enqueue("step", {"name": name}, queue="serial", priority=priority)
            names[job.id] = name
            await trio.sleep(0.01)  # distinct run_at, in this order
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await rec.wait_for(lambda: len(rec.order) == 5)
            nursery.cancel_scope.cancel()
        assert [names[j] for j in rec.order] == ["top", "high-a", "high-b", "mid", "low"]


async def test_per_queue_concurrency(store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        queues = [
            JobQueueConfig(name="default", concurrency=1),
            JobQueueConfig(name="a", concurrency=2),
            JobQueueConfig(name="b", concurrency=3),
        ]
        runner = make_runner(store, wall, queues=queues)
        running: dict[str, int] = {}
        peak: dict[str, int] = {}
        rec = Recorder()

        async def work(ctx: JobContext) -> None:
            queue = ctx.job.queue
            running[queue] = running.get(queue, 0) + 1
            peak[queue] = max(peak.get(queue, 0), running[queue])
            await trio.sleep(5)
            running[queue] -= 1
            rec.note(ctx)

        runner.register("work", work)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            for queue in ("a", "b", "c"):  # "c" is not configured: the default queue's concurrency
                for _ in range(4):
                    await runner.enqueue("work", {}, queue=queue)
            await rec.wait_for(lambda: len(rec.order) == 12)
            nursery.cancel_scope.cancel()
        assert peak == {"a": 2, "b": 3, "c": 1}
        assert runner.concurrency("c") == 1


async def test_fifty_concurrent_enqueues_with_one_dedupe_key(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        runner = make_runner(store, wall)
        ids: list[str] = []

        async def enqueue() -> None:
            job = await runner.enqueue("push", {"token": "t"}, queue="push", dedupe_key="push:n1:t")
            ids.append(job.id)

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(enqueue)
        assert len(ids) == 50 and len(set(ids)) == 1
        jobs, _ = await store.list_jobs(queue="push", limit=100)
        assert [j.id for j in jobs] == [ids[0]]


# ---------------------------------------------------------------------------
# Leases, crashes and drains
# ---------------------------------------------------------------------------


async def test_lease_expiry_after_a_crash_hands_the_job_to_another_runner(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()
        claimed = trio.Event()

        async def blocks(ctx: JobContext) -> None:
            rec.note(ctx)
            claimed.set()
            await trio.sleep_forever()

        async def finishes(ctx: JobContext) -> None:
            rec.note(ctx)

        doomed = make_runner(NoRelease(store), wall, lease_s=6.0)
        doomed.register("job", blocks)
        survivor = make_runner(store, wall, lease_s=6.0)
        survivor.register("job", finishes)
        job = await doomed.enqueue("job", {})
        async with trio.open_nursery() as crashing:
            await crashing.start(doomed.run)
            await claimed.wait()
            claimed_at = trio.current_time()
            await trio.sleep(1)
            crashing.cancel_scope.cancel()  # the process dies: no release, no more renewals
        async with trio.open_nursery() as nursery:
            await nursery.start(survivor.run)
            done = await store.wait_status(job.id, "succeeded")
            nursery.cancel_scope.cancel()
        _first, second = rec.runs[job.id]
        # Picked up when the lease (claimed_at + 6) ran out: not before, and not a poll later.
        assert 6 - EPS <= second - claimed_at <= 6 + 0.5
        assert done.attempts == 2


class DiesWhileRecording(NoRelease):
    """A process that dies while it records a batch of successes: the batch never commits."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.recording = trio.Event()

    async def complete_jobs(self, **kwargs: Any) -> set[str]:
        self.recording.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_runner_that_dies_recording_a_batch_leaves_it_to_be_claimed_after_the_lease(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()

        async def quick(ctx: JobContext) -> None:
            rec.note(ctx)

        dying = DiesWhileRecording(store)
        doomed = make_runner(dying, wall, lease_s=6.0, queues=[JobQueueConfig(name="default", concurrency=8)])
        doomed.register("job", quick)
        survivor = make_runner(store, wall, lease_s=6.0)
        survivor.register("job", quick)
        jobs = [await doomed.enqueue("job", {"i": i}) for i in range(8)]
        async with trio.open_nursery() as crashing:
            await crashing.start(doomed.run)
            await dying.recording.wait()
            await trio.sleep(1)
            crashing.cancel_scope.cancel()  # the process dies with the batch unrecorded
        for job in jobs:
            stored = await store.get_job(job.id)
            assert stored is not None and stored.status == "running"
        async with trio.open_nursery() as nursery:
            await nursery.start(survivor.run)
            done = [await store.wait_status(job.id, "succeeded") for job in jobs]
            nursery.cancel_scope.cancel()
        # Each ran once more, as the second attempt: the dead runner's batch was not lost.
        assert all(job.attempts == 2 for job in done)
        assert all(len(rec.runs[job.id]) == 2 for job in jobs)


async def test_leases_are_renewed_while_a_long_handler_runs(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        rec = Recorder()

        async def long(ctx: JobContext) -> None:
            rec.note(ctx)
            await trio.sleep(15)  # five leases

        first = make_runner(store, wall, lease_s=3.0)
        second = make_runner(store, wall, lease_s=3.0)
        first.register("long", long)
        second.register("long", long)
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await nursery.start(second.run)
            job = await first.enqueue("long", {})
            done = await store.wait_status(job.id, "succeeded")
            nursery.cancel_scope.cancel()
        assert len(rec.runs[job.id]) == 1
        assert done.attempts == 1


async def test_drain_lets_short_jobs_finish_and_releases_the_rest(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        started = Recorder()

        async def short(ctx: JobContext) -> None:
            started.note(ctx)
            await trio.sleep(2)

        async def endless(ctx: JobContext) -> None:
            started.note(ctx)
            await trio.sleep(1000)

        draining = make_runner(store, wall, lease_s=30.0)
        draining.register("short", short)
        draining.register("endless", endless)
        quick = await draining.enqueue("short", {})
        slow = await draining.enqueue("endless", {})
        async with trio.open_nursery() as nursery:
            await nursery.start(draining.run)
            await started.wait_for(lambda: len(started.order) == 2)
            drain_started = trio.current_time()
            await draining.drain(grace_s=5)
            drain_took = trio.current_time() - drain_started
            late = await draining.enqueue("short", {})
            await trio.sleep(10)
            late_job = await store.get_job(late.id)
            assert late_job is not None and late_job.status == "queued"  # a drained runner claims nothing
        assert 5 - EPS <= drain_took <= 5 + 1
        assert (await store.wait_status(quick.id, "succeeded")).attempts == 1
        released = await store.get_job(slow.id)
        assert released is not None
        assert released.status == "queued" and released.lease_owner is None
        assert released.attempts == 0  # a release does not use up an attempt
        # Another node picks it up at once, not after the 30 s lease.
        taker = make_runner(store, wall)
        taker.register("endless", short)
        taker.register("short", short)
        async with trio.open_nursery() as nursery:
            await nursery.start(taker.run)
            handed_over = trio.current_time()
            await store.wait_status(slow.id, "succeeded")
            assert trio.current_time() - handed_over <= 2 + 0.5
            nursery.cancel_scope.cancel()


async def test_cancelled_runner_releases_its_claims(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        started = trio.Event()

        async def endless(ctx: JobContext) -> None:
            started.set()
            await trio.sleep_forever()

        runner = make_runner(store, wall, lease_s=30.0)
        runner.register("endless", endless)
        job = await runner.enqueue("endless", {})
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await started.wait()
            nursery.cancel_scope.cancel()
        released = await store.get_job(job.id)
        assert released is not None and released.status == "queued" and released.lease_owner is None


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_outcomes_and_refresh_store_gauges(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        runner = make_runner(store, wall)

        async def ok(ctx: JobContext) -> None:
            await trio.sleep(0.5)

        async def bad(ctx: JobContext) -> None:
            raise RuntimeError("no")

        runner.register("metrics.ok", ok)
        runner.register("metrics.bad", bad)
        before_ok = sample("realtimed_job_runs_total", kind="metrics.ok", outcome="succeeded")
        before_dead = sample("realtimed_job_runs_total", kind="metrics.bad", outcome="dead")
        before_retried = sample("realtimed_job_runs_total", kind="metrics.bad", outcome="retried")
        before_hist = sample("realtimed_job_duration_seconds_count", kind="metrics.ok")
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            good = await runner.enqueue("metrics.ok", {})
            failing = await runner.enqueue("metrics.bad", {}, max_attempts=2)
            await runner.enqueue("metrics.ok", {}, queue="later", delay_s=3600)
            await store.wait_status(good.id, "succeeded")
            await store.wait_status(failing.id, "dead")
            await runner.refresh_gauges()
            nursery.cancel_scope.cancel()
        assert sample("realtimed_job_runs_total", kind="metrics.ok", outcome="succeeded") == before_ok + 1
        assert sample("realtimed_job_runs_total", kind="metrics.bad", outcome="retried") == before_retried + 1
        assert sample("realtimed_job_runs_total", kind="metrics.bad", outcome="dead") == before_dead + 1
        assert sample("realtimed_job_duration_seconds_count", kind="metrics.ok") == before_hist + 1
        assert sample("realtimed_jobs", kind="metrics.ok", status="succeeded") == 1
        assert sample("realtimed_jobs", kind="metrics.ok", status="queued") == 1
        assert sample("realtimed_jobs", kind="metrics.bad", status="dead") == 1
        assert sample("realtimed_job_queue_depth", queue="later", scope="cluster") == 1
        assert sample("realtimed_job_queue_depth", queue="default", scope="cluster") == 0


def test_backoff_delay_bounds() -> None:
    rng = random.Random(1)
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (10, 60.0), (200, 60.0)]:
        delays = [runner_module.backoff_delay(attempt, base_s=2.0, max_s=60.0, rng=rng) for _ in range(200)]
        assert min(delays) >= nominal / 2 and max(delays) <= nominal
        assert max(delays) - min(delays) > nominal / 4  # jittered, not constant
    with pytest.raises(ValueError):
        RetryAfter(-1)


# ---------------------------------------------------------------------------
# Built-in kinds
# ---------------------------------------------------------------------------


async def test_builtin_retention_kinds_delete_only_what_is_old(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        old = wall.now()
        await store.register_device(user_id="u1", token="tok-old", platform="android", now=old)
        [(old_note, _)] = await store.insert_notifications(
            items=[NewNotification(user_id="u1", type="t", title="a", body="b")], now=old
        )
        await store.mark_notifications_read(user_id="u1", ids=[old_note.id], now=old)
        group = await store.create_group(member_ids=["u1", "u2"], now=old)
        old_msg, _ = await store.append_message(
            conversation_id=group.id, sender_id="u1", client_id="c1", body="secret", now=old
        )
        await store.delete_message(message_id=old_msg.id, now=old)
        finished, _ = await store.enqueue_job(queue="other", kind="x", payload={}, now=old)
        [claimed] = await store.claim_jobs(queue="other", limit=1, owner="o", lease_s=10, now=old)
        await store.complete_job(job_id=claimed.id, owner="o", now=old)

        wall.step(timedelta(days=10))
        now = wall.now()
        await store.register_device(user_id="u1", token="tok-new", platform="ios", now=now)
        [(new_note, _)] = await store.insert_notifications(
            items=[NewNotification(user_id="u1", type="t", title="c", body="d")], now=now
        )
        await store.mark_notifications_read(user_id="u1", ids=[new_note.id], now=now)
        new_msg, _ = await store.append_message(
            conversation_id=group.id, sender_id="u1", client_id="c2", body="fresh", now=now
        )
        await store.delete_message(message_id=new_msg.id, now=now)

        runner = make_runner(store, wall)
        retention = RetentionConfig(
            read_notifications_days=5, finished_jobs_days=5, deleted_messages_days=5, stale_device_days=5
        )
        register_builtin_kinds(runner, retention=retention)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            ids = [
                (await runner.enqueue(kind, {})).id
                for kind in ("retention.notifications", "retention.jobs", "retention.messages", "devices.stale", "noop")
            ]
            for job_id in ids:
                await store.wait_status(job_id, "succeeded")
            nursery.cancel_scope.cancel()

        notes, _ = await store.list_notifications(user_id="u1")
        assert [n.id for n in notes] == [new_note.id]
        assert await store.get_job(finished.id) is None
        purged, kept = await store.get_message(old_msg.id), await store.get_message(new_msg.id)
        assert purged is not None and purged.body == "" and purged.seq == old_msg.seq
        assert kept is not None and kept.body == "fresh"
        old_device, new_device = await store.get_device("tok-old"), await store.get_device("tok-new")
        assert old_device is not None and not old_device.active
        assert new_device is not None and new_device.active


def test_builtin_cron_entries_yield_to_the_operator() -> None:
    mine = CronConfig(name="retention.jobs", schedule="0 5 * * 0", kind="retention.jobs")
    merged = {e.name: e for e in merge_entries([mine], builtin_cron_entries())}
    assert set(merged) == {
        "retention.notifications", "retention.jobs", "retention.messages", "devices.stale", "retention.activities"
    }
    assert merged["retention.jobs"].schedule == "0 5 * * 0"
    assert merged["devices.stale"].schedule == "40 3 * * *"


# ---------------------------------------------------------------------------
# The server API and the CLI
# ---------------------------------------------------------------------------


async def dead_job(store: Any, kind: str, *, queue: str = "ops") -> str:
    """A job that ran out of attempts."""
    now = SystemClock().now()
    job, _ = await store.enqueue_job(queue=queue, kind=kind, payload={"x": 1}, now=now, max_attempts=1)
    [claimed] = await store.claim_jobs(queue=queue, limit=1, owner="gone", lease_s=10, now=now)
    await store.fail_job(job_id=claimed.id, owner="gone", error="Boom: out of luck", now=now, retry_at=None)
    return str(job.id)


async def test_server_api_lists_pages_retries_and_cancels_jobs(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        # Nothing serves the "ops" queue, so the jobs stay where the test puts them.
        daemon = await start_daemon({"jobs": {"poll_s": 600.0}})
        store = daemon.services.store
        dead = await dead_job(store, "ops.fragile")
        queued = [(await store.enqueue_job(queue="ops", kind="ops.wait", payload={}, now=SystemClock().now()))[0].id for _ in range(3)]
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=daemon.url() + "/server/v1", headers=headers, timeout=10) as http:
            first = (await http.get("/jobs", params={"queue": "ops", "limit": 3})).json()
            assert len(first["jobs"]) == 3 and first["next_cursor"]
            rest = (await http.get("/jobs", params={"queue": "ops", "limit": 3, "cursor": first["next_cursor"]})).json()
            assert rest["next_cursor"] is None
            assert {j["id"] for j in first["jobs"] + rest["jobs"]} == {dead, *queued}

            only_dead = (await http.get("/jobs", params={"status": "dead"})).json()["jobs"]
            assert [j["id"] for j in only_dead] == [dead]
            record = only_dead[0]
            assert set(record) == {
                "id", "queue", "kind", "payload", "priority", "status", "attempts", "max_attempts",
                "run_at", "last_error", "created_at", "finished_at",
            }
            assert record["last_error"] == "Boom: out of luck" and record["run_at"].endswith("Z")
            assert [j["id"] for j in (await http.get("/jobs", params={"kind": "ops.wait"})).json()["jobs"]] == queued[::-1]

            for params, field in [({"status": "bogus"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"cursor": "!!"}, "cursor")]:
                answer = await http.get("/jobs", params=params)
                assert answer.status_code == 400, params
                assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
                assert answer.json()["error"]["field"] == field

            assert (await http.get(f"/jobs/{dead}")).json()["job"]["status"] == "dead"
            assert (await http.get("/jobs/j_nope")).status_code == 404

            retried = await http.post(f"/jobs/{dead}/retry")
            assert retried.status_code == 200
            assert retried.json()["job"]["status"] == "queued" and retried.json()["job"]["attempts"] == 0
            assert (await http.post(f"/jobs/{dead}/retry")).json()["error"]["code"] == "CONFLICT"

            cancelled = await http.post(f"/jobs/{queued[0]}/cancel")
            assert cancelled.json()["job"]["status"] == "cancelled"
            again = await http.post(f"/jobs/{queued[0]}/cancel")
            assert again.status_code == 409
            assert (await http.post("/jobs/j_nope/cancel")).status_code == 404
            assert (await http.get("/jobs")).status_code == 200
            assert (await http.get("/jobs", headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_cli_lists_retries_and_cancels(tmp_path: Path) -> None:
    with trio.fail_after(60):
        config = tmp_path / "realtimed.toml"
        config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
        cfg = load_config(config, env={})
        async with trio.open_nursery() as nursery:
            store = open_store(cfg, clock=SystemClock())
            await nursery.start(store.run)
            dead = await dead_job(store, "cli.fragile")
            nursery.cancel_scope.cancel()

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
            command = [sys.executable, "-m", "realtimed", "jobs", *args, "-c", str(config)]
            return await trio.to_thread.run_sync(
                lambda: subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
            )

        listed = await cli("list", "--status", "dead", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [dead]
        lines = (await cli("list")).stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{dead}  dead") and "Boom: out of luck" in lines[0]
        retried = await cli("retry", dead)
        assert retried.returncode == 0 and f"{dead}  queued" in retried.stdout
        cancelled = await cli("cancel", dead, "--json")
        assert json.loads(cancelled.stdout)["job"]["status"] == "cancelled"
        refused = await cli("cancel", dead)
        assert refused.returncode == 1 and "only a queued job can be cancelled" in refused.stderr
