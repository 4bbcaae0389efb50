"""Stored data survives an upgrade, on both backends.

Each test starts from a database written by an earlier realtimed
(``tests/fixtures/upgrade``, made by ``tests/fixtures/make_upgrade_fixture.py``
with that release's code: see its docstring for what it holds), loaded into a
fresh database: the SQLite state file as it was left, or the ``pg_dump`` of the
PostgreSQL one. The code under test then migrates it and must read back every
record as that release read it, and run every job it left queued (or running
under a dead node's lease) with the payload that release gave it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import orjson
import pytest
import trio

from realtimed.clock import parse_iso
from realtimed.config import Config, ServerConfig, StoreConfig
from realtimed.store import Store, open_store, run_migrations
from tests.fake_fcm import FakeFcm
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.make_upgrade_fixture import DEAD_OWNER, DEFAULT_OUT, PHASE_B, ScriptClock, read_back

LIMIT_S = 60
# The daemon of the job test wakes after every job the fixture left waiting:
# the scheduled notification (2026-03-03 10:00) is the last of them.
AFTER_ALL = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)


@attrs.define
class Upgraded:
    """A database loaded from the fixture of one backend, not yet migrated."""

    backend: str
    state_dir: Path
    dsn: str = ""

    @property
    def expected(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads((DEFAULT_OUT / f"{self.backend}.expected.json").read_bytes())
        return data

    def config(self) -> Config:
        store = StoreConfig(backend=self.backend, postgres_dsn=self.dsn, sqlite_path="realtimed.db")  # type: ignore[arg-type]
        return Config(server=ServerConfig(state_dir=self.state_dir), store=store)

    def daemon_override(self) -> dict[str, Any]:
        return {
            "server": {"state_dir": str(self.state_dir)},
            "store": {"backend": self.backend, "postgres_dsn": self.dsn, "sqlite_path": "realtimed.db"},
        }

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        async with trio.open_nursery() as nursery:
            store = open_store(self.config(), clock=ScriptClock(PHASE_B))
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()


def _load_dump(dsn: str, sql: str) -> None:
    import asyncio

    async def main() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgres"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Upgraded]:
    state = tmp_path / "state"
    state.mkdir()
    if request.param == "sqlite":
        shutil.copyfile(DEFAULT_OUT / "sqlite.db", state / "realtimed.db")
        yield Upgraded("sqlite", state)
        return
    dsn = request.getfixturevalue("pg_empty_dsn")
    _load_dump(dsn, (DEFAULT_OUT / "postgres.sql").read_text(encoding="utf-8"))
    yield Upgraded("postgres", state, dsn)


def _normal(data: Any) -> Any:
    """``data`` as JSON gives it back (tuples become lists, keys sorted)."""
    return orjson.loads(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def test_the_fixture_holds_every_record_kind() -> None:
    """A fixture made again must keep covering what the upgrade tests check."""
    for backend in ("sqlite", "postgres"):
        data: dict[str, Any] = orjson.loads((DEFAULT_OUT / f"{backend}.expected.json").read_bytes())
        users = data["users"]
        conversations = list(data["conversations"].values())
        first_wire = [c for u in users.values() for c in u["conversations"]]
        assert {c["type"] for c in first_wire} == {"direct", "group"}
        messages = [m for c in conversations for m in c["messages"]]
        assert any(m["deleted"] for m in messages) and any(m["edited_at"] for m in messages)
        assert any(m["reply_to"] for m in messages) and any(m["media_url"] for m in messages)
        assert {m["type"] for m in messages} >= {"text", "image", "system"}
        members = [m for c in conversations for m in c["members"].values()]
        assert any(m["left_at"] for m in members) and any(m["muted"] for m in members)
        assert any(m["read_seq"] > 0 for m in members) and any(m["unread_count"] > 0 for m in members)
        notifications = [n for u in users.values() for n in u["notifications"]]
        assert any(n["read_at"] for n in notifications) and any(n["read_at"] is None for n in notifications)
        assert any(n["dedupe_key"] for n in notifications)
        assert any(u["preferences"] for u in users.values())
        assert any(u["settings"]["quiet_hours_start"] for u in users.values())
        devices = [d for u in users.values() for d in u["devices"]]
        assert any(d["topics"] for d in devices) and any(not d["active"] for d in devices)
        assert any(u["contacts"] for u in users.values()) and any(u["blocked"] for u in users.values())
        bans = [u["ban"] for u in users.values() if u["ban"] is not None]
        assert {b["banned_until"] is None for b in bans} == {True, False}
        assert data["last_seen"] and len(data["cron_ticks"]) == 4
        kinds = Counter((j["kind"], j["status"]) for j in data["jobs"])
        for kind in (
            "push.send",
            "notify.push",
            "notify.digest",
            "notify.send",
            "chat.offline",
            "retention.jobs",
            "retention.notifications",
            "retention.messages",
            "devices.stale",
        ):
            assert kinds[(kind, "queued")] >= 1, kind
        for status in ("succeeded", "failed", "dead", "cancelled", "running"):
            assert any(s == status for _, s in kinds), status


async def test_every_record_reads_back_after_the_upgrade(upgraded: Upgraded) -> None:
    with trio.fail_after(LIMIT_S):
        await run_migrations(upgraded.config())
        async with upgraded.store() as store:
            expected = upgraded.expected
            got = _normal(await read_back(store, PHASE_B))
            # Fields newer than the fixture read back with their defaults: it expires never, no device details.
            for user in got["users"].values():
                assert [n.pop("expires_at") for n in user["notifications"]] == [None] * len(user["notifications"])
                assert [d.pop("device_info") for d in user["devices"]] == [{}] * len(user["devices"])
            ticks = expected.pop("cron_ticks")
            for key in expected:
                assert got[key] == expected[key], key
            assert got == expected
            # Cron state: each entry's stored tick is kept; only a later one advances it.
            for name, tick in ticks.items():
                at = parse_iso(tick)
                assert await store.cron_claim_tick(name=name, tick=at) is False, name
                assert await store.cron_claim_tick(name=name, tick=at + timedelta(minutes=1)) is True, name


async def test_jobs_left_behind_run_after_the_upgrade(
    upgraded: Upgraded, start_daemon: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Every job queued (or running under a dead node's lease) in the fixture runs
    to success with the payload it was stored with; the pushes among them reach FCM."""
    with trio.fail_after(LIMIT_S):
        waiting = {j["id"]: j for j in upgraded.expected["jobs"] if j["status"] in ("queued", "running")}
        clock = ScriptClock(AFTER_ALL)
        fake = FakeFcm(clock=clock)
        await nursery.start(fake.serve, tmp_path)
        override = upgraded.daemon_override() | {
            "push": fake.push_config(tmp_path),
            "jobs": {"poll_s": 0.2, "queues": [{"name": "push", "concurrency": 8}]},
        }
        daemon = await start_daemon(override, clock=clock)
        store = daemon.services.store
        while True:
            jobs = {job_id: await store.get_job(job_id) for job_id in waiting}
            if all(j is not None and j.status not in ("queued", "running") for j in jobs.values()):
                break
            await trio.sleep(0.1)
        outcomes = {
            job_id: (waiting[job_id]["kind"], j.status, j.last_error) for job_id, j in jobs.items() if j
        }
        assert {o[1] for o in outcomes.values()} == {"succeeded"}, outcomes
        crashed = next(j for j in jobs.values() if j is not None and j.dedupe_key == "crashed-node")
        assert crashed.attempts == 2 and crashed.lease_owner != DEAD_OWNER
        delivered = Counter(r.target for r in fake.delivered)
        # dave's push held by quiet hours, bob's push, the mention for carol and erin,
        # and erin's scheduled notification.
        assert delivered["tok-dave"] == 1 and delivered["tok-bob"] >= 1 and delivered["tok-carol"] >= 1
        assert delivered["tok-erin"] >= 2
        assert "tok-gone" not in delivered and "tok-flaky" not in delivered
