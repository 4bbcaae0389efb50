"""The delivery log end to end: the daemon with the fake FCM records each outcome per
user and channel, the server API pages, filters and counts it, reports the push caps,
and the retention job prunes it.

The daemon's wall time follows Trio's clock from a fixed Monday 09:00 UTC
(``notify_support.following``), so quiet hours, cap windows and digest windows are
the same on every run; ``advance`` moves it past them without waiting.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio

from realtimed.jobs.builtin import RETENTION_NOTIFICATIONS, RetentionPayload
from realtimed.store.base import DeliveryEntry
from tests import notify_support
from tests.fixtures.clients import WsClient
from tests.notify_support import Harness, following, jwt_at
from tests.webhook_receiver import new_secret

HarnessFactory = Any
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir

TYPES = {
    "notify": {
        "types": [
            {"name": "capped", "title": "Capped", "body": "one an hour", "hourly_cap": 1},
            {"name": "urgent", "title": "Urgent", "body": "now", "priority": "critical"},
            {"name": "digesty", "title": "Digesty", "body": "one", "digest_window_s": 600, "digest_body": "{count} new"},
        ]
    },
    "jobs": {"poll_s": 0.5, "queues": [{"name": "push", "concurrency": 16}]},
}
MENTION = {"mentioner_name": "Ann", "excerpt": "look"}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


async def log_of(h: Harness, **query: str) -> list[dict[str, Any]]:
    """Every entry matching ``query``, newest first, read page by page (once those handed
    to the log's writer are written)."""
    await h.daemon.services.notify.deliveries.flush()
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = "&".join(f"{k}={v}" for k, v in {**query, "limit": "4", **({"cursor": cursor} if cursor else {})}.items())
        page = await h.server("GET", f"/deliveries?{params}")
        found += page["deliveries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def outcomes(entries: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["outcome"] for e in entries)


async def test_every_outcome_is_logged_per_channel_and_counted(
    harness_factory: HarnessFactory, backend: dict[str, Any]
) -> None:
    # The delivery.failed webhook carries the log's code (read from its queued delivery:
    # a receiver would refuse the signature's timestamp, the daemon's wall time being 2026).
    webhooks = {
        "webhooks": {"allow_private": True, "endpoints": [
            {"id": "app", "url": "http://127.0.0.1:9/hooks", "secrets": [new_secret()], "events": ["delivery.failed"]},
        ]},
        "jobs": {**TYPES["jobs"], "queues": [*TYPES["jobs"]["queues"], {"name": "webhooks", "concurrency": 2}]},
    }
    with trio.fail_after(90):
        clock = following()
        h: Harness = await harness_factory({**TYPES, **backend, **webhooks}, clock=clock)
        for user, token in (("ann", "tok-ann"), ("bob", "tok-bob"), ("cy", "tok-cy"), ("dee", "tok-dee-gone"),
                            ("dee", "tok-dee"), ("eve", "tok-eve"), ("fay", "tok-fay"), ("gus", "tok-gus")):
            await h.device(user, token)
        h.fake.unregister("tok-dee-gone")
        await h.client("cy", "PUT", "/notifications/preferences", {"types": [{"type": "mention", "push": False, "in_app": False}]})
        await h.client("eve", "PUT", "/notifications/preferences",
                       {"quiet_hours": {"start": "08:00", "end": "10:00"}, "time_zone": "UTC"})
        ann = await WsClient.connect(h.ws_url, token=jwt_at("ann", clock.now()))
        await ann.event("session.ready")

        assert await h.notify(["ann", "bob", "cy", "dee", "eve", "hal"], "mention", MENTION) == 5
        for _ in range(2):
            await h.notify(["fay"], "capped", {})
            await h.notify(["gus"], "digesty", {})
        # bob, dee twice (one token gone), fay's first, gus's first (it opens the digest window).
        await h.fake.wait_for(lambda: len(h.fake.requests) == 5)
        await h.idle()

        users = ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal"]
        push = {u: outcomes(await log_of(h, user_id=u, channel="push")) for u in users}
        assert push == {
            "ann": {"skipped:active": 1},
            "bob": {"delivered": 1},
            "cy": {"skipped:preference": 1},
            "dee": {"delivered": 1, "failed:UNREGISTERED": 1, "device_removed": 1},
            "eve": {"skipped:quiet_hours": 1},
            "fay": {"delivered": 1, "skipped:cap": 1},
            "gus": {"delivered": 1, "batched:digest": 1},
            "hal": {"skipped:no_endpoint": 1},
        }
        in_app = await log_of(h, channel="in_app")
        assert outcomes(in_app) == {"delivered": 9, "skipped:preference": 1}
        assert {e["user_id"] for e in in_app if e["outcome"] == "skipped:preference"} == {"cy"}

        # One notification's whole story: stored and pushed, each with its time.
        (bob_in_app,) = await log_of(h, user_id="bob", channel="in_app")
        story = await log_of(h, notification_id=bob_in_app["notification_id"])
        assert [(e["channel"], e["outcome"]) for e in story] == [("push", "delivered"), ("in_app", "delivered")]
        assert story[1]["ref"] == f"n{bob_in_app['notification_id']}" and story[0]["type"] == "mention"
        assert story[0]["at"] >= story[1]["at"] and story[0]["at"].startswith("2026-03-02T09:00")
        (gone,) = await log_of(h, user_id="dee", outcome="failed")
        assert gone["outcome"] == "failed:UNREGISTERED" and gone["detail"].startswith("tok-de")
        # delivery.failed carries the log's codes: the push FCM refused, and what the policy held back.
        reports = [job.payload["data"] for job in await h.jobs("webhook.deliver")]
        assert {r["code"] for r in reports} == {"failed:UNREGISTERED", "skipped:cap", "batched:digest", "skipped:quiet_hours"}
        (failed,) = [r for r in reports if r["code"].startswith("failed:")]
        assert (failed["code"], failed["reason"], failed["token"]) == (gone["outcome"], "unregistered", "tok-dee-gone")
        (capped,) = await log_of(h, outcome="skipped:cap")
        assert (capped["user_id"], capped["cap"], capped["type"]) == ("fay", "hourly", "capped")
        (quiet,) = await log_of(h, outcome="skipped:quiet_hours")
        assert (quiet["user_id"], quiet["deferred_until"]) == ("eve", "2026-03-02T10:00:00.000Z")
        assert outcomes(await log_of(h, type="digesty")) == {"delivered": 3, "batched:digest": 1}

        # The caps in force: fay's hourly cap of 1 is used up until the hour ends.
        caps = await h.server("GET", "/users/fay/caps")
        (capped_type,) = [t for t in caps["types"] if t["type"] == "capped"]
        assert capped_type == {"type": "capped", "critical": False, "caps": [
            {"cap": "daily", "used": 1, "limit": 50, "resets_at": "2026-03-03T00:00:00.000Z"},
            {"cap": "hourly", "used": 1, "limit": 1, "resets_at": "2026-03-02T10:00:00.000Z"},
        ]}
        (critical,) = [t for t in caps["types"] if t["type"] == "urgent"]
        assert critical == {"type": "urgent", "critical": True, "caps": []}
        assert caps["in_quiet_hours"] is False and caps["quiet_hours"] is None
        eve = await h.server("GET", "/users/eve/caps")
        assert eve["in_quiet_hours"] is True and eve["quiet_until"] == "2026-03-02T10:00:00.000Z"
        assert eve["quiet_hours"] == {"start": "08:00", "end": "10:00"} and eve["time_zone"] == "UTC"

        # An hour later: eve's deferred push goes, and gus's digest of two.
        clock.advance(3660)
        await h.fake.wait_for(lambda: len(h.fake.requests) == 7)
        await h.idle()
        assert outcomes(await log_of(h, user_id="eve", channel="push")) == {"skipped:quiet_hours": 1, "delivered": 1}
        digest = (await log_of(h, user_id="gus", channel="push"))[0]
        assert digest["outcome"] == "delivered" and digest["ref"].startswith("ng") and digest["notification_id"] is None

        stats = await h.server("GET", "/deliveries/stats?channel=push&hours=2")
        assert stats["since"] == "2026-03-02T09:00:00.000Z" and stats["channel"] == "push"
        first, second = stats["buckets"]
        assert first["hour"] == "2026-03-02T09:00:00.000Z" and first["outcomes"] == {
            "delivered": 4, "skipped:active": 1, "skipped:preference": 1, "failed:UNREGISTERED": 1,
            "device_removed": 1, "skipped:quiet_hours": 1, "skipped:no_endpoint": 1, "skipped:cap": 1,
            "batched:digest": 1,
        }
        assert second == {"hour": "2026-03-02T10:00:00.000Z", "total": 2, "outcomes": {"delivered": 2}}
        await ann.close()


async def test_bad_queries_are_refused_with_the_field(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory(TYPES, clock=following())
        for query, field in (
            ("limit=0", "limit"), ("limit=x", "limit"), ("outcome=bogus", "outcome"), ("outcome=failed:", "outcome"),
            ("outcome=failed:a%20b", "outcome"), ("since=yesterday", "since"), ("until=2026-13-01T00:00:00Z", "until"),
            ("cursor=not-a-cursor", "cursor"), ("cursor=WyJhIiwyXQ", "cursor"), ("user_id=a%00b", "user_id"),
            (f"type={'t' * 65}", "type"),
        ):
            answer = await h.server("GET", f"/deliveries?{query}", status=400)
            assert answer["error"]["code"] == "VALIDATION_ERROR" and answer["error"]["field"] == field, query
        for query, field in (("hours=0", "hours"), ("hours=100000", "hours"), ("channel=" + "c" * 65, "channel")):
            answer = await h.server("GET", f"/deliveries/stats?{query}", status=400)
            assert answer["error"]["field"] == field, query
        answer = await h.server("GET", f"/users/{'u' * 200}/caps", status=400)
        assert answer["error"]["field"] == "user_id"
        refused = await h.http.get("/server/v1/deliveries")
        assert refused.status_code == 401

        # Filters and paging over entries written at known times.
        now = h.clock.now()
        await h.store.record_deliveries(entries=[
            DeliveryEntry(at=now - timedelta(minutes=i), user_id="u", channel="push", type="mention",
                          outcome="delivered" if i % 2 else "failed:UNREGISTERED", ref=f"n{i}")
            for i in range(7)
        ])
        everything = await log_of(h)
        assert [e["ref"] for e in everything] == [f"n{i}" for i in range(7)]
        since = (now - timedelta(minutes=4)).isoformat()
        until = (now - timedelta(minutes=1)).isoformat()
        answer = await h.http.get("/server/v1/deliveries", params={"since": since, "until": until},
                                  headers=notify_support.SERVER)
        assert [e["ref"] for e in answer.json()["deliveries"]] == ["n2", "n3", "n4"]
        assert [e["ref"] for e in await log_of(h, outcome="failed:UNREGISTERED")] == ["n0", "n2", "n4", "n6"]
        assert await log_of(h, channel="in_app") == []


async def test_retention_prunes_the_log_and_the_log_can_be_off(
    harness_factory: HarnessFactory, backend: dict[str, Any]
) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory(
            {**TYPES, **backend, "retention": {"delivery_log_days": 30}}, clock=following()
        )
        now = h.clock.now()
        await h.store.record_deliveries(entries=[
            DeliveryEntry(at=now - timedelta(days=days), user_id="u", channel="push", type="mention",
                          outcome="delivered", ref=f"d{days}")
            for days in (40, 31, 29, 1)
        ])
        job = await h.daemon.services.jobs.enqueue(RETENTION_NOTIFICATIONS, RetentionPayload())
        while (await h.store.get_job(job.id)).status != "succeeded":
            await trio.sleep(0.05)
        assert [e["ref"] for e in await log_of(h)] == ["d1", "d29"]

        # notify.delivery_log = false: nothing more is written.
        services = h.daemon.services
        services.config = attrs.evolve(services.config, notify=attrs.evolve(services.config.notify, delivery_log=False))
        await h.device("bob", "tok-bob")
        await h.notify(["bob"], "mention", MENTION)
        await h.fake.wait_for(lambda: len(h.fake.requests) == 1)
        await h.idle()
        assert [e["ref"] for e in await log_of(h)] == ["d1", "d29"]


class _Recording:
    """A store that records the delivery log writes it is given."""

    def __init__(self) -> None:
        self.writes: list[list[DeliveryEntry]] = []

    async def record_deliveries(self, *, entries: list[DeliveryEntry]) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(list(entries))


async def test_the_writer_joins_entries_not_waited_for_and_writes_them_on_stop(nursery: trio.Nursery) -> None:
    from realtimed.clock import SystemClock
    from realtimed.config import Config
    from realtimed.live import Live
    from realtimed.notify.delivery_log import DeliveryLog

    store = _Recording()
    log = DeliveryLog(Live(Config()), store=store, clock=SystemClock())  # type: ignore[arg-type]
    with trio.fail_after(10):
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await log.run()

        await nursery.start(lambda task_status: _started(run, task_status))
        entries = [log.entry(user_id=f"u{i}", channel="push", type="t", outcome="delivered") for i in range(300)]
        for e in entries:
            await log.record([e], wait=False)  # returns at once: no checkpoint on the way
        await log.flush()
        assert [len(w) for w in store.writes] == [300]
        # A caller that waits gets its entries written with those handed over before it.
        await log.record(entries[:2], wait=False)
        await log.record(entries[2:3])
        assert [len(w) for w in store.writes] == [300, 3]
        # Stopping writes what is pending.
        await log.record(entries[:5], wait=False)
        scope.cancel()
        while len(store.writes) < 3:
            await trio.sleep(0.01)
        assert [len(w) for w in store.writes] == [300, 3, 5]


async def _started(run: Any, task_status: Any) -> None:
    task_status.started()
    await run()
