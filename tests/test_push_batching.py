"""The push pipeline's batched store work, on both stores: a batch of deliveries
costs two reads and one write, and the checks of push.send jobs that run side
by side are read together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from realtimed.clock import SystemClock
from realtimed.config import Config, JobsConfig, NotificationTypeConfig, ServerConfig, StoreConfig
from realtimed.jobs import JobRunner
from realtimed.notify.channel import Delivery
from realtimed.notify.checks import NotificationCheck
from realtimed.notify.policy import push_key
from realtimed.push.channel import FcmChannel
from realtimed.push.service import PushService
from realtimed.store import Store, open_store
from realtimed.store.base import NewNotification

LIMIT_S = 60
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Counting:
    """The store, counting the calls made to it by name."""

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


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    if request.param == "postgres":
        store = StoreConfig(backend="postgres", postgres_dsn=request.getfixturevalue("pg_dsn"))
    else:
        store = StoreConfig(backend="sqlite", sqlite_path="push.db")
    return Config(server=ServerConfig(state_dir=tmp_path), store=store)


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Store]:
    async with trio.open_nursery() as nursery:
        s = open_store(config, clock=SystemClock())
        await nursery.start(s.run)
        yield s
        nursery.cancel_scope.cancel()


async def test_a_batch_of_deliveries_costs_two_reads_and_one_write(config: Config, store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        users = [f"u{i}" for i in range(30)]
        for i, user in enumerate(users[:-1]):  # the last user has no device
            await store.register_device(user_id=user, token=f"{user}-a", platform="android", now=T0)
            await store.register_device(user_id=user, token=f"{user}-b", platform="ios", now=T0 + timedelta(seconds=1))
            await store.insert_notifications(
                items=[NewNotification(user_id=user, type="t", title="T", body="B", data={}) for _ in range(i % 3)],
                now=T0,
            )
        counting = Counting(store)
        runner = JobRunner(counting, config=JobsConfig(), clock=SystemClock(), node="test")  # type: ignore[arg-type]
        push = PushService(config, store=counting, clock=SystemClock(), jobs=runner)  # type: ignore[arg-type]
        channel = FcmChannel(push)
        ntype = NotificationTypeConfig(name="mention")
        later = T0 + timedelta(hours=8)
        deliveries = [
            Delivery(
                user_id=user,
                type=ntype,
                title=f"Hi {user}",
                body="look",
                data={"type": "mention", "skip": None},
                ref=f"nx{user}",
                check=NotificationCheck(user, f"x{user}", 1),
                run_at=later if user == "u1" else None,
            )
            for user in users
        ]
        receipts = await channel.deliver(deliveries)
        assert receipts[-1] is None
        assert all(r is not None and r.endpoints == 2 and r.ref == f"nx{u}" for r, u in zip(receipts[:-1], users, strict=False))
        # Two reads and one write for 30 users and 58 devices; nothing per user.
        assert counting.calls == {"list_devices_many": 1, "notification_unread_counts": 1, "enqueue_jobs": 1}
        jobs, _ = await store.list_jobs(kind="push.send", limit=200)
        assert len(jobs) == 58
        by_token = {job.payload["token"]: job for job in jobs}
        for i, user in enumerate(users[:-1]):
            for suffix in ("a", "b"):
                job = by_token[f"{user}-{suffix}"]
                assert job.dedupe_key == push_key(user, f"nx{user}", f"{user}-{suffix}")
                assert job.payload["user_id"] == user and job.payload["ref"] == f"nx{user}"
                assert job.payload["check"] == {"kind": "notification", "user_id": user, "id": f"x{user}", "seq": 1}
                message = job.payload["message"]
                assert message["notification"]["title"] == f"Hi {user}"
                assert message["apns"]["payload"]["aps"]["badge"] == i % 3
                assert "skip" not in message["data"]
                assert job.run_at == (later if user == "u1" else job.created_at)
        # The same deliveries again queue nothing new (the dedupe keys).
        await channel.deliver(deliveries)
        assert len((await store.list_jobs(kind="push.send", limit=200))[0]) == 58


async def test_the_checks_of_concurrent_push_jobs_are_read_together(config: Config, store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        counting = Counting(store)
        push = PushService(config, store=counting, clock=SystemClock())  # type: ignore[arg-type]
        checks: list[tuple[str, NotificationCheck]] = []
        for i in range(40):
            user = f"u{i}"
            await store.register_device(user_id=user, token=f"tok{i}", platform="android", now=T0)
            ((note, _),) = await store.insert_notifications(
                items=[NewNotification(user_id=user, type="t", title="T", body="B", data={})], now=T0
            )
            checks.append((f"tok{i}", NotificationCheck(user, note.id, note.seq)))
        # One of each reason not to send: read, deleted, token inactive, token moved, token unknown.
        await store.mark_notifications_read(user_id="u1", ids=[checks[1][1].id], now=T0)
        await store.delete_notifications(user_id="u2", ids=[checks[2][1].id])
        await store.deactivate_device(token="tok3")
        await store.register_device(user_id="someone", token="tok4", platform="android", now=T0)
        checks[5] = ("tok-unknown", checks[5][1])
        answers: dict[int, str | None] = {}

        async def one(i: int) -> None:
            token, check = checks[i]
            answers[i] = await push._still_wanted(token, check.user_id, check)

        async with trio.open_nursery() as nursery:
            await nursery.start(push.devices.run)
            await nursery.start(push.notifications.run)
            async with trio.open_nursery() as jobs:
                for i in range(40):
                    jobs.start_soon(one, i)
            nursery.cancel_scope.cancel()
        assert answers == {
            **dict.fromkeys(range(40)),
            1: "read", 2: "deleted", 3: "token_inactive", 4: "token_moved", 5: "token_unknown",
        }
        # 40 jobs' checks: a few batched reads, not 80 single ones.
        assert counting.calls.get("get_device", 0) == 0 and counting.calls.get("list_notifications", 0) == 0
        assert 1 <= counting.calls["get_devices"] <= 3 and 1 <= counting.calls["notification_states"] <= 3
