"""Delivery channels: a third channel plugs into the pipeline through the
``DeliveryChannel`` Protocol alone, preferences switch it per type over REST,
and jobs queued in the shapes of the previous version still run.

The daemon runs for real (httpx on its socket, the fake FCM for push); the
third channel is a fake that records what it is asked to deliver, swapped in by
building a ``NotifyService`` with it, as the daemon builds one with its own
channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio

from realtimed.config import NotificationTypeConfig
from realtimed.daemon import Daemon
from realtimed.notify.channel import Delivery, DeliveryChannel, Receipt
from realtimed.notify.checks import NotificationCheck
from realtimed.notify.inbox import InAppChannel
from realtimed.notify.service import NotifyService
from realtimed.push.channel import FcmChannel
from realtimed.store.base import NewNotification
from tests import notify_support
from tests.notify_support import Harness

HarnessFactory = Any
# The shared fixtures (assigned, so that tests may name them as parameters).
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir

OTP = NotificationTypeConfig(
    name="otp", title="Your code", body="{code}", vars=["code"], channels=["in_app", "push", "sms"], priority="high"
)


class FakeSms:
    """A planned channel that records its deliveries and withdrawals."""

    immediate = False

    def __init__(self, name: str = "sms") -> None:
        self.name = name
        self.deliveries: list[Delivery] = []
        self.withdrawn: list[tuple[str, list[str] | None]] = []
        self._changed = trio.Event()

    def available(self) -> bool:
        return True

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Receipt | None]:
        self.deliveries.extend(deliveries)
        self._changed.set()
        self._changed = trio.Event()
        return [Receipt(ref=d.ref, check=d.check) for d in deliveries]

    async def withdraw(self, *, user_id: str, refs: Sequence[str] | None) -> int:
        self.withdrawn.append((user_id, None if refs is None else list(refs)))
        return 0

    async def wait_for(self, count: int) -> None:
        while len(self.deliveries) < count:
            await self._changed.wait()


def with_sms(daemon: Daemon, sms: FakeSms) -> NotifyService:
    """The daemon's notifications, rebuilt with a third channel and a type that uses it."""
    svc = daemon.services
    svc.config = attrs.evolve(svc.config, notify=attrs.evolve(svc.config.notify, types=[OTP]))
    channels: list[DeliveryChannel] = [InAppChannel(svc.store, clock=svc.clock, router=svc.router), FcmChannel(svc.push), sms]
    notify = NotifyService(
        svc.live_config, store=svc.store, clock=svc.clock, router=svc.router, jobs=svc.jobs, channels=channels
    )
    notify.register_jobs(svc.jobs)
    svc.notify = notify
    return notify


def bare_notify(channels: list[Any]) -> NotifyService:
    """A NotifyService built with no other dependency (the channel checks need none)."""
    return NotifyService(object(), store=object(), clock=object(), router=object(), jobs=object(), channels=channels)  # type: ignore[arg-type]


def test_channel_names_are_unique() -> None:
    with pytest.raises(ValueError, match="sms"):
        bare_notify([FakeSms(), FakeSms()])
    with pytest.raises(ValueError, match="channels"):
        bare_notify([FakeSms("channels")])


async def test_a_third_channel_is_planned_switched_per_type_and_withdrawn(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        sms = FakeSms()
        with_sms(h.daemon, sms)
        await h.device("bob", "tok-bob")
        prefs = await h.client("bob", "GET", "/notifications/preferences")
        entry = {"type": "otp", "in_app": True, "push": True, "sms": True, "channels": ["in_app", "push", "sms"]}
        assert entry in prefs["types"]

        assert await h.notify(["bob", "cy"], "otp", {"code": "123456"}) == 2
        await sms.wait_for(2)
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)  # cy has no device: sms only
        by_user = {d.user_id: d for d in sms.deliveries}
        assert set(by_user) == {"bob", "cy"}
        (bob_note,) = (await h.client("bob", "GET", "/notifications"))["notifications"]
        bob = by_user["bob"]
        assert (bob.title, bob.body, bob.type.name, bob.run_at) == ("Your code", "123456", "otp", None)
        assert bob.ref == f"n{bob_note['id']}" and bob.check == NotificationCheck("bob", bob_note["id"], 1)
        assert bob.data == {"notification_id": bob_note["id"], "seq": 1, "type": "otp"}
        assert h.fake.delivered[0].message["notification"] == {"title": "Your code", "body": "123456"}

        # Per type and channel: bob turns sms off, cy turns the inbox off.
        answer = await h.client("bob", "PUT", "/notifications/preferences", {"types": [{"type": "otp", "sms": False}]})
        assert {**entry, "sms": False} in answer["types"]
        await h.client("cy", "PUT", "/notifications/preferences", {"types": [{**entry, "in_app": False}]})
        assert {**entry, "in_app": False} in (await h.client("cy", "GET", "/notifications/preferences"))["types"]
        for bad, field in (
            ({"types": [{"type": "otp", "email": False}]}, "types[0].email"),
            ({"types": [{"type": "otp", "sms": "no"}]}, "types[0].sms"),
            ({"types": [{"type": "otp", "x" * 500: True}]}, "types[0]." + "x" * 64),
        ):
            error = (await h.client("bob", "PUT", "/notifications/preferences", bad, status=400))["error"]
            assert error["code"] == "VALIDATION_ERROR" and error["field"] == field, error

        assert await h.notify(["bob", "cy"], "otp", {"code": "654321"}) == 2
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 2)
        await sms.wait_for(3)
        await trio.sleep(0.5)  # nothing more comes: not to bob by sms
        assert [(d.user_id, d.body) for d in sms.deliveries[2:]] == [("cy", "654321")]
        cy = sms.deliveries[2]
        assert "notification_id" not in cy.data and cy.check is None  # nothing in cy's inbox to point at
        assert (await h.client("cy", "GET", "/notifications/unread-count"))["unread_count"] == 1

        # Reading withdraws the queued deliveries of every channel.
        await h.client("bob", "POST", f"/notifications/{bob_note['id']}/read")
        await h.client("bob", "POST", "/notifications/read-all")
        assert ("bob", [f"n{bob_note['id']}"]) in sms.withdrawn and ("bob", None) in sms.withdrawn


async def test_jobs_queued_by_the_previous_version_still_run(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        await h.device("bob", "tok-bob")
        now = h.clock.now()
        [(note, _)] = await h.store.insert_notifications(
            items=[NewNotification(user_id="bob", type="mention", title="Ann mentioned you", body="look")], now=now
        )
        mention = {"mentioner_name": "Ann", "excerpt": "look"}
        # Literal payloads as the previous version stored them, put in the store as it did.
        old_jobs = [
            ("default", "notify.push", {
                "type": "mention", "vars": mention, "data": {}, "dedupe_key": None, "request_id": "r1",
                "items": [["bob", note.id, note.seq]],
            }),
            ("push", "push.send", {
                "message": {"notification": {"title": "Direct", "body": "hello"}, "data": {"k": "v"}},
                "ref": "p0011223344556677", "token": "tok-bob", "user_id": "bob",
                "check": {"kind": "notification", "user_id": "bob", "id": note.id, "seq": note.seq},
            }),
            ("default", "notify.send", {
                "user_ids": ["cy"], "type": "announcement", "vars": {"title": "Maintenance", "body": "at noon"},
                "data": {}, "dedupe_key": None,
            }),
            ("default", "notify.push", {"type": "mention", "vars": mention, "items": [[7, None, None]]}),
        ]
        ids = [
            (await h.store.enqueue_job(queue=queue, kind=kind, payload=payload, now=now))[0].id
            for queue, kind, payload in old_jobs
        ]
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 2)
        titles = sorted(r.message["notification"]["title"] for r in h.fake.delivered)
        assert titles == ["Ann mentioned you", "Direct"]
        pushed = next(r for r in h.fake.delivered if r.message["notification"]["title"] == "Ann mentioned you")
        assert pushed.message["data"]["notification_id"] == note.id
        await h.idle()
        statuses = [(await h.store.get_job(job_id)) for job_id in ids]
        assert [job.status for job in statuses] == ["succeeded", "succeeded", "succeeded", "failed"]
        assert (await h.client("cy", "GET", "/notifications"))["notifications"][0]["title"] == "Maintenance"
        malformed = statuses[3]
        assert malformed.attempts == 1
        assert malformed.last_error == "DoNotRetry: invalid payload: items[0][0]: must be a string"
