"""Cron on both stores, on Trio's MockClock with wall clocks that follow it (and step)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from realtimed.clock import SystemClock, TrioWallClock, iso
from realtimed.config import (
    Config,
    ConfigError,
    CronConfig,
    JobsConfig,
    ServerConfig,
    StoreConfig,
    load_config,
)
from realtimed.jobs import CronEntry, CronScheduler, JobContext, JobRunner, cron_dedupe_key
from realtimed.jobs.builtin import BUILTIN_CRON_SCHEDULES
from realtimed.jobs.kinds import DAEMON_JOB_TYPES, cron_config_problems
from realtimed.protocol import MAX_STORED_JSON_DEPTH
from realtimed.store import Store, open_store
from tests.fixtures.daemon import DaemonFactory

AUTOJUMP_S = 0.05
PG_AUTOJUMP_S = 0.25
LIMIT_S = 3 * 3600  # virtual seconds
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_S)


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    if request.param == "postgres":
        store = StoreConfig(backend="postgres", postgres_dsn=request.getfixturevalue("pg_dsn"))
    else:
        store = StoreConfig(backend="sqlite", sqlite_path="cron.db")
    return Config(server=ServerConfig(state_dir=tmp_path), store=store)


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Store]:
    async with AsyncExitStack() as stack:
        if store_config.store.backend == "postgres":
            await stack.enter_async_context(trio_asyncio.open_loop())
            # Each PostgreSQL call waits on the store's asyncio thread, where a loaded
            # machine can stall it for more than a short autojump: Trio would take the
            # wait for idleness and jump the clock past the call's timeout.
            clock = trio.lowlevel.current_clock()
            if isinstance(clock, trio.testing.MockClock):
                clock.autojump_threshold = max(clock.autojump_threshold, PG_AUTOJUMP_S)
        async with trio.open_nursery() as nursery:
            s = open_store(store_config, clock=SystemClock())
            await nursery.start(s.run)
            yield s
            nursery.cancel_scope.cancel()


class CountingStore:
    """Counts enqueues, to show that ticks are decided by the tick claim, not only by dedupe."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.enqueued: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def enqueue_job(self, **kwargs: Any) -> Any:
        self.enqueued.append(kwargs["dedupe_key"])
        return await self._store.enqueue_job(**kwargs)


def every(seconds: int, name: str = "tick", **extra: Any) -> CronConfig:
    return CronConfig(name=name, schedule=f"*/{seconds} * * * * *", kind="noop", **extra)


async def cron_keys(store: Store, kind: str = "noop") -> list[str]:
    jobs, _ = await store.list_jobs(kind=kind, limit=1000)
    return sorted(job.dedupe_key or "" for job in jobs)


def keys(name: str, *ticks: datetime) -> list[str]:
    return sorted(cron_dedupe_key(name, tick) for tick in ticks)


async def test_two_schedulers_run_each_tick_once(store: Store, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        counting = CountingStore(store)
        ran: list[str] = []
        start = T0 + timedelta(seconds=5)
        walls = [TrioWallClock(start), TrioWallClock(start)]
        runner = JobRunner(counting, config=JobsConfig(poll_s=600), clock=walls[0], node="n1", stats_interval_s=3600)

        async def noop(ctx: JobContext) -> None:
            ran.append(ctx.job.dedupe_key or "")

        runner.register("noop", noop)
        schedulers = [
            CronScheduler(counting, [every(10)], clock=walls[0], runner=runner, catch_up="last"),
            CronScheduler(counting, [every(10)], clock=walls[1], catch_up="last"),
        ]
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            for scheduler in schedulers:
                await nursery.start(scheduler.run)
            await trio.sleep(60)  # wall 12:00:05 to 12:01:05
            await trio.sleep(1)  # the last job runs
            nursery.cancel_scope.cancel()
        expected = keys("tick", *(T0 + timedelta(seconds=10 * i) for i in range(7)))
        assert await cron_keys(store) == expected
        assert sorted(counting.enqueued) == expected  # one enqueue per tick, across both nodes
        assert sorted(ran) == expected


async def test_three_nodes_with_jittery_stepping_clocks_enqueue_ten_jobs_for_ten_ticks(
    store: Store, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        counting = CountingStore(store)
        offsets = [-0.4, 0.0, 0.3]
        walls = [TrioWallClock(T0 + timedelta(seconds=5 + off)) for off in offsets]
        rng = random.Random(11)
        schedulers = [CronScheduler(counting, [every(10)], clock=wall, catch_up="last") for wall in walls]

        async def jitter() -> None:
            behind = [False] * len(walls)
            while True:
                await trio.sleep(rng.uniform(2, 5))
                i = rng.randrange(len(walls))
                if behind[i]:
                    walls[i].step(timedelta(seconds=15))  # NTP puts it right again
                    behind[i] = False
                elif rng.random() < 0.3:
                    walls[i].step(timedelta(seconds=-15))  # steps back past a tick or more
                    behind[i] = True
                else:
                    # Small jitter, keeping every clock within half a second ahead of the truth.
                    new = min(0.5, max(-0.5, offsets[i] + rng.uniform(-0.3, 0.3)))
                    walls[i].step(timedelta(seconds=new - offsets[i]))
                    offsets[i] = new

        async with trio.open_nursery() as nursery:
            nursery.start_soon(jitter)
            for scheduler in schedulers:
                await nursery.start(scheduler.run)
            await trio.sleep(90)  # true wall 12:00:05 to 12:01:35: ticks 12:00:00 ... 12:01:30
            nursery.cancel_scope.cancel()
        expected = keys("tick", *(T0 + timedelta(seconds=10 * i) for i in range(10)))
        assert await cron_keys(store) == expected
        assert sorted(counting.enqueued) == expected


async def test_a_node_that_was_down_runs_only_the_latest_missed_tick(
    store: Store, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        wall = TrioWallClock(T0 + timedelta(seconds=5))
        entry = CronConfig(name="minutely", schedule="* * * * *", kind="noop")
        async with trio.open_nursery() as nursery:
            await nursery.start(CronScheduler(store, [entry], clock=wall, catch_up="last").run)
            await trio.sleep(85)  # 12:00 (caught up at start) and 12:01
            nursery.cancel_scope.cancel()
        assert await cron_keys(store) == keys("minutely", T0, T0 + timedelta(minutes=1))
        wall.step(timedelta(hours=1))  # the cluster was down for an hour: now 13:01:30
        async with trio.open_nursery() as nursery:
            await nursery.start(CronScheduler(store, [entry], clock=wall).run)
            await trio.sleep(1)
            assert await cron_keys(store) == keys(
                "minutely", T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=61)
            )
            await trio.sleep(30)  # 13:02
            nursery.cancel_scope.cancel()
        assert await cron_keys(store) == keys(
            "minutely", T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=61), T0 + timedelta(minutes=62)
        )


async def test_catch_up_none_makes_a_new_entry_wait_for_its_next_tick(
    store: Store, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        wall = TrioWallClock(T0 + timedelta(seconds=30))
        entry = CronConfig(name="minutely", schedule="* * * * *", kind="noop")
        async with trio.open_nursery() as nursery:
            for _ in range(2):  # two nodes, both seeing the entry for the first time
                await nursery.start(CronScheduler(store, [entry], clock=wall, catch_up="none").run)
            await trio.sleep(5)  # 12:00:35: the 12:00 tick passed before the entry existed
            assert await cron_keys(store) == []
            await trio.sleep(30)  # 12:01:05
            nursery.cancel_scope.cancel()
        assert await cron_keys(store) == keys("minutely", T0 + timedelta(minutes=1))
        # Once it has run, downtime is caught up whatever the setting: the latest missed tick, once.
        wall.step(timedelta(hours=1))  # 13:01:05
        async with trio.open_nursery() as nursery:
            await nursery.start(CronScheduler(store, [entry], clock=wall, catch_up="none").run)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert await cron_keys(store) == keys("minutely", T0 + timedelta(minutes=1), T0 + timedelta(minutes=61))


async def test_catch_up_last_runs_the_latest_past_tick_of_a_new_entry_once_at_start(
    store: Store, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        counting = CountingStore(store)
        wall = TrioWallClock(T0 + timedelta(minutes=5, seconds=30))  # 12:05:30, ticks 12:00 ... 12:05 passed
        entry = CronConfig(name="minutely", schedule="* * * * *", kind="noop")
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                await nursery.start(CronScheduler(counting, [entry], clock=wall, catch_up="last").run)
            await trio.sleep(1)
            assert await cron_keys(store) == keys("minutely", T0 + timedelta(minutes=5))
            await trio.sleep(29.5)  # 12:06:00.5, the 12:06 tick is due
            # Stop the clock, so that no later tick comes due while the 12:06 one is
            # written (in SQLite's thread, on a busy machine this can outlast an autojump).
            clock.autojump_threshold = math.inf
            for _ in range(200):
                if len(await cron_keys(store)) == 2:
                    break
                await trio.to_thread.run_sync(time.sleep, 0.05)
            nursery.cancel_scope.cancel()
        expected = keys("minutely", T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
        assert await cron_keys(store) == expected
        assert sorted(counting.enqueued) == expected  # once across both nodes


@pytest.mark.parametrize("catch_up", ["none", "last"])
async def test_builtin_entries_follow_jobs_cron_catch_up(
    store: Store, store_config: Config, clock: trio.testing.MockClock, catch_up: str
) -> None:
    with trio.fail_after(LIMIT_S):
        cfg = load_config(None, env={}, data={"jobs": {"cron_catch_up": catch_up}})
        wall = TrioWallClock(T0)  # 12:00 UTC: the built-in entries ran at 03:10 ... 03:40 today
        scheduler = CronScheduler.from_config(store, cfg, clock=wall)
        assert {e.name for e in scheduler.entries} == set(BUILTIN_CRON_SCHEDULES)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        jobs, _ = await store.list_jobs(limit=100)
        if catch_up == "none":
            assert jobs == []
        else:
            today = T0.replace(hour=3)
            assert sorted(job.dedupe_key or "" for job in jobs) == sorted(
                cron_dedupe_key(kind, today.replace(minute=int(schedule.split()[0])))
                for kind, schedule in BUILTIN_CRON_SCHEDULES.items()
            )


def test_cron_catch_up_defaults_to_none_and_is_checked() -> None:
    assert load_config(None, env={}).jobs.cron_catch_up == "none"
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, data={"jobs": {"cron_catch_up": "all"}})
    assert [key for key, _ in info.value.problems] == ["jobs.cron_catch_up"]
    with pytest.raises(ValueError, match="catch_up"):
        CronScheduler(None, [], clock=SystemClock(), catch_up="all")  # type: ignore[arg-type]


async def test_time_zone_is_honoured(store: Store, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        # 2026-03-01 13:59 UTC is 08:59 in New York (EST, UTC-5).
        wall = TrioWallClock(datetime(2026, 3, 1, 13, 59, tzinfo=UTC))
        entry = CronConfig(name="ny", schedule="0 9 * * *", kind="report", timezone="America/New_York")
        scheduler = CronScheduler(store, [entry], clock=wall, max_sleep_s=3600, catch_up="last")
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await trio.sleep(61)
            nursery.cancel_scope.cancel()
        jobs, _ = await store.list_jobs(kind="report")
        by_key = {job.dedupe_key: job for job in jobs}
        today = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)  # 09:00 EST
        yesterday = today - timedelta(days=1)  # caught up at start
        assert sorted(by_key) == keys("ny", yesterday, today)
        assert by_key[cron_dedupe_key("ny", today)].created_at == today  # enqueued on the tick, not later


def test_ticks_follow_daylight_saving_time() -> None:
    entry = CronEntry.parse(CronConfig(name="ny", schedule="0 9 * * *", kind="k", timezone="America/New_York"))
    # US daylight saving time starts on 2026-03-08: 09:00 is 14:00 UTC before, 13:00 UTC after.
    assert entry.next_tick(datetime(2026, 3, 7, 0, 0, tzinfo=UTC)) == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)
    assert entry.next_tick(datetime(2026, 3, 7, 14, 0, tzinfo=UTC)) == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    paris = CronEntry.parse(CronConfig(name="p", schedule="0 8 * * 1", kind="k", timezone="Europe/Paris"))
    assert paris.next_tick(T0) == datetime(2026, 3, 2, 7, 0, tzinfo=UTC)  # Monday 08:00 CET


def test_tick_arithmetic_with_seconds() -> None:
    entry = CronEntry.parse(every(15))
    on_tick = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert entry.latest_tick(on_tick) == on_tick
    assert entry.latest_tick(on_tick + timedelta(milliseconds=999)) == on_tick
    assert entry.latest_tick(on_tick - timedelta(microseconds=1)) == on_tick - timedelta(seconds=15)
    assert entry.next_tick(on_tick) == on_tick + timedelta(seconds=15)
    assert entry.next_tick(on_tick - timedelta(milliseconds=1)) == on_tick
    assert cron_dedupe_key("tick", on_tick) == f"cron:tick:{iso(on_tick)}" == "cron:tick:2026-01-01T00:00:30.000Z"


def test_invalid_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        CronEntry.parse(CronConfig(name="x", schedule="61 * * * *", kind="k"))
    with pytest.raises(ValueError, match="time zone"):
        CronEntry.parse(CronConfig(name="x", schedule="* * * * *", kind="k", timezone="Mars/Olympus"))
    with pytest.raises(ValueError, match="duplicate"):
        CronScheduler(None, [every(5, "a"), every(10, "a")], clock=SystemClock())
    runner = JobRunner(None, config=JobsConfig(), clock=SystemClock(), node="n1")
    with pytest.raises(ValueError, match="nothing handles: noop"):
        CronScheduler(None, [every(5)], clock=SystemClock(), runner=runner)


def cron_problems(*entries: dict[str, Any]) -> dict[str, str]:
    base = {"schedule": "0 4 * * *"}
    data = {"cron": [{"name": f"e{i}", **base, **entry} for i, entry in enumerate(entries)]}
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, data=data, checks=(cron_config_problems,))
    return dict(info.value.problems)


def test_a_kind_no_node_handles_is_a_config_error_naming_the_key() -> None:
    problems = cron_problems({"kind": "noop"}, {"kind": "report.nightly"}, {"kind": ""})
    assert set(problems) == {"cron[1].kind", "cron[2].kind"}
    assert problems["cron[1].kind"].startswith("unknown job kind 'report.nightly': no node handles it")
    assert "retention.jobs" in problems["cron[1].kind"] and "notify.send" in problems["cron[1].kind"]
    assert problems["cron[2].kind"] == "must not be empty"


def test_a_payload_nested_too_deep_is_named_once() -> None:
    deep: dict[str, Any] = {}
    for _ in range(MAX_STORED_JSON_DEPTH + 1):
        deep = {"a": deep}
    problems = cron_problems({"kind": "report.deep", "payload": deep})
    assert problems == {"cron[0].payload": f"nests more than {MAX_STORED_JSON_DEPTH} levels of arrays and tables"}


def test_a_payload_its_kind_refuses_is_a_config_error_naming_the_field() -> None:
    problems = cron_problems(
        {"kind": "retention.jobs", "payload": {"days": 3}},  # fine
        {"kind": "retention.jobs", "payload": {"days": -1}},
        {"kind": "devices.stale", "payload": {"days": "ten"}},
        {"kind": "notify.send", "payload": {"user_ids": ["u1", 2], "type": "digest"}},
        {"kind": "notify.send", "payload": {"user_ids": ["u1"]}},
        {"kind": "push.send", "payload": {"message": {}}},
        {"kind": "notify.send", "payload": {"user_ids": ["u1"], "type": "weekly"}},  # fine
    )
    assert problems == {
        "cron[1].payload.days": "not a retention.jobs payload: must be a non-negative number",
        "cron[2].payload.days": "not a devices.stale payload: must be a non-negative number",
        "cron[3].payload.user_ids[1]": "not a notify.send payload: must be a string",
        "cron[4].payload.type": "not a notify.send payload: must be a string",
        "cron[5].payload.token": "not a push.send payload: give exactly one of token and topic",
    }


def test_every_command_that_loads_a_daemon_configuration_checks_the_job_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from realtimed.cli import main
    from realtimed.jobs import cli as jobs_cli

    config = tmp_path / "realtimed.toml"
    config.write_text('[[cron]]\nname = "nightly"\nschedule = "0 4 * * *"\nkind = "report.nightly"\n')
    with pytest.raises(SystemExit) as exited:
        main(["check-config", str(config)])
    assert exited.value.code == 2
    assert "cron[0].kind: unknown job kind 'report.nightly': no node handles it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        jobs_cli._load(str(config))
    assert exited.value.code == 2
    assert "cron[0].kind: unknown job kind 'report.nightly'" in capsys.readouterr().err
    # The configuration module alone knows no job kinds; the checks are handed to it.
    assert load_config(config, env={}).cron[0].kind == "report.nightly"


async def test_a_reload_with_a_kind_no_node_handles_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    from realtimed.daemon import Daemon
    from tests.fixtures.daemon import BASE_CONFIG, merge, toml_dumps

    path = tmp_path / "realtimed.toml"
    data = merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}, "jobs": {"poll_s": 600.0}})
    path.write_text(toml_dumps(data))
    daemon = Daemon(load_config(path, env={}), config_path=path, handle_signals=False)
    with trio.fail_after(30):
        await nursery.start(daemon.run)
        path.write_text(toml_dumps({**data, "cron": [{"name": "n", "schedule": "0 4 * * *", "kind": "report.nightly"}]}))
        assert await daemon.reload() is False
        path.write_text(toml_dumps({**data, "cron": [{"name": "n", "schedule": "0 4 * * *", "kind": "noop"}]}))
        assert await daemon.reload() is True
        daemon.request_drain()


async def test_the_daemon_registers_exactly_the_kinds_the_config_check_knows(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"jobs": {"poll_s": 600.0}})
        assert set(daemon.services.jobs.kinds) == set(DAEMON_JOB_TYPES)
        # Each is registered with the same payload type as the table's.
        for kind, job in daemon.services.jobs.kinds.items():
            assert job.job_type == DAEMON_JOB_TYPES[kind], kind
