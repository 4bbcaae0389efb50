"""Shared pieces of the notification and push tests: a daemon wired to the fake FCM.

``start_harness`` starts the fake FCM and an in-process daemon whose ``[push]``
points at it; the returned ``Harness`` talks to both doors with httpx and reads
the store directly. With ``clock=following()`` and a MockClock the
daemon's wall time starts at ``START`` (a Monday, 10:00 in Berlin), so quiet
hours and caps are driven by Trio's clock.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio

from realtimed.clock import SystemClock, WallClock
from realtimed.daemon import Daemon
from realtimed.store.base import JobRecord
from tests.fake_fcm import FakeFcm
from tests.fixtures.daemon import API_KEY, SECRET, DaemonFactory, merge

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday 10:00 in Europe/Berlin
SERVER = {"Authorization": f"Bearer {API_KEY}"}


class FollowingClock:
    """Wall time that follows a Trio clock from ``start`` and, unlike
    ``TrioWallClock``, may also be read from worker threads (the SQLite store
    reads the clock on its threads)."""

    def __init__(self, start: datetime, clock: trio.abc.Clock) -> None:
        self._start = start
        self._clock = clock
        self._t0 = clock.current_time()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._clock.current_time() - self._t0)

    def advance(self, seconds: float) -> None:
        """Move wall time forward without moving Trio's clock: hours pass for
        quiet hours, caps and ``run_at`` without the mock clock jumping through
        every periodic timer on the way."""
        self._start += timedelta(seconds=seconds)


def following(start: datetime = START) -> FollowingClock:
    """A ``FollowingClock`` on the running Trio loop's clock (the test's MockClock)."""
    return FollowingClock(start, trio.lowlevel.current_clock())


def jwt_at(sub: str, now: datetime, *, ttl_s: float = 40 * 86400, **claims: Any) -> str:
    """A user token valid around ``now`` (the daemon's wall time, not the machine's)."""
    issued = int(now.timestamp())
    payload: dict[str, Any] = {"sub": sub, "iat": issued - 60, "exp": issued + int(ttl_s)}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A state folder in memory: SQLite's fsyncs must not let a MockClock jump mid-write."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    folder = Path(tempfile.mkdtemp(prefix="rtnotify-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Harness:
    def __init__(self, daemon: Daemon, fake: FakeFcm, clock: WallClock) -> None:
        self.daemon = daemon
        self.fake = fake
        self.clock = clock
        # No keep-alive: a mock clock jumps past the daemon's keep-alive timeout between requests.
        self.http = httpx.AsyncClient(base_url=daemon.url(), timeout=30, limits=httpx.Limits(max_keepalive_connections=0))

    @property
    def store(self) -> Any:
        return self.daemon.services.store

    @property
    def ws_url(self) -> str:
        return self.daemon.url().replace("http", "ws", 1) + "/ws"

    def user_headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {jwt_at(user, self.clock.now())}"}

    async def server(self, method: str, path: str, body: Any = None, *, status: int = 200) -> Any:
        answer = await self.http.request(method, f"/server/v1{path}", json=body, headers=SERVER)
        assert answer.status_code == status, answer.text
        return answer.json()

    async def client(self, user: str, method: str, path: str, body: Any = None, *, status: int = 200) -> Any:
        answer = await self.http.request(method, f"/api/v1{path}", json=body, headers=self.user_headers(user))
        assert answer.status_code == status, answer.text
        return answer.json()

    async def device(self, user: str, token: str, platform: str = "android") -> None:
        await self.client(user, "POST", "/devices", {"token": token, "platform": platform, "app_version": "1.0"})

    async def notify(self, user_ids: list[str], type: str, vars: dict[str, Any], **extra: Any) -> int:
        answer = await self.server("POST", "/notifications", {"user_ids": user_ids, "type": type, "vars": vars, **extra})
        queued: int = answer["queued"]
        return queued

    async def jobs(self, kind: str) -> list[JobRecord]:
        jobs, _ = await self.store.list_jobs(kind=kind, limit=500)
        return list(jobs)

    async def idle(self, kind: str | None = None) -> None:
        """Wait until no job (of ``kind``) is queued and due, or running."""
        while True:
            now = self.clock.now()
            busy = False
            for status in ("queued", "running"):
                jobs, _ = await self.store.list_jobs(status=status, kind=kind, limit=500)
                busy = busy or any(status == "running" or job.run_at <= now for job in jobs)
            if not busy:
                return
            await trio.sleep(0.05)

    async def aclose(self) -> None:
        await self.http.aclose()


async def start_harness(
    start_daemon: DaemonFactory,
    nursery: trio.Nursery,
    folder: Path,
    override: dict[str, Any] | None = None,
    *,
    clock: WallClock | None = None,
    token_ttl_s: float = 3600.0,
) -> Harness:
    wall = clock or SystemClock()
    fake = FakeFcm(clock=wall, token_ttl_s=token_ttl_s)
    await nursery.start(fake.serve, folder)
    base: dict[str, Any] = {
        "server": {"state_dir": str(folder / "state")},
        "push": fake.push_config(folder, backoff_base_s=2.0, max_attempts=4),
        "jobs": {"poll_s": 2.0, "queues": [{"name": "push", "concurrency": 16}]},
    }
    daemon = await start_daemon(merge(base, override or {}), clock=clock)
    return Harness(daemon, fake, wall)


@pytest.fixture
async def harness_factory(
    start_daemon: DaemonFactory, nursery: trio.Nursery, shm_dir: Path
) -> AsyncIterator[Any]:
    made: list[Harness] = []

    async def make(override: dict[str, Any] | None = None, **kwargs: Any) -> Harness:
        harness = await start_harness(start_daemon, nursery, shm_dir, override, **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.aclose()
