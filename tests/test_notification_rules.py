"""The notification rules apps expect, end to end over HTTP against the daemon:
expiry, retention of unread notifications, per-recipient outcomes (and the
``delivery.failed`` webhook for what a job decides), device details and the
token check, PATCH on preferences, and per-API-key rate limits on the server API.

Pushes go to the fake FCM (tests/fake_fcm.py); webhooks to a real receiver
that verifies their signatures (tests/webhook_receiver.py). Expiry and
retention run on a MockClock, the daemon's wall time following it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from realtimed.clock import iso
from realtimed.config import load_config
from realtimed.errors import ConfigError
from realtimed.jobs.builtin import RETENTION_NOTIFICATIONS, RetentionPayload
from realtimed.metrics import REGISTRY
from tests import notify_support
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory, merge
from tests.notify_support import Harness, following, jwt_at
from tests.webhook_receiver import Receiver, new_secret

HarnessFactory = Any
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir

MENTION = {"mentioner_name": "Ann", "excerpt": "see this"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.25)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


async def inbox(h: Harness, user: str, query: str = "") -> list[str]:
    page = await h.client(user, "GET", f"/notifications{query}")
    return [n["type"] for n in page["notifications"]]


async def unread(h: Harness, user: str) -> int:
    count: int = (await h.client(user, "GET", "/notifications/unread-count"))["unread_count"]
    return count


# -- expiry and retention ----------------------------------------------------------------------


async def test_an_expired_notification_leaves_the_inbox_is_not_pushed_and_retention_deletes_it(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, backend: dict[str, Any]
) -> None:
    with trio.fail_after(7200):
        clock = following()
        h: Harness = await harness_factory(merge(backend, {"jobs": {"poll_s": 10.0, "lease_s": 900.0}}), clock=clock)
        await h.device("bob", "tok-bob")
        # Quiet until 11:00 in Berlin (10:00 UTC, an hour from now): both pushes wait for it.
        quiet = {"quiet_hours": {"start": "09:00", "end": "11:00"}, "time_zone": "Europe/Berlin"}
        await h.client("bob", "PUT", "/notifications/preferences", quiet)
        expires = clock.now() + timedelta(hours=2)
        answer = await h.server(
            "POST", "/notifications", {"user_ids": ["bob"], "type": "mention", "vars": MENTION, "expires_at": iso(expires)}
        )
        assert answer == {"queued": 1, "recipients": [{"user_id": "bob", "channels": {"in_app": "delivered", "push": "pending"}}]}
        await h.notify(["bob"], "job_completed", {"job_name": "export"})
        page = await h.client("bob", "GET", "/notifications")
        assert [(n["type"], n["expires_at"]) for n in page["notifications"]] == [
            ("job_completed", None), ("mention", iso(expires))
        ]
        assert await unread(h, "bob") == 2
        await h.idle()
        pushes = await h.jobs("push.send")
        assert len(pushes) == 2 and all(p.status == "queued" and p.run_at > clock.now() for p in pushes)

        # Three hours on: quiet hours are over, and the mention expired an hour ago.
        skipped = metric("realtimed_push_skipped_total", reason="expired")
        clock.advance(3 * 3600)
        await trio.sleep(11)
        await h.idle()
        assert [r.message["notification"]["title"] for r in h.fake.delivered] == ["Done: export"]
        assert metric("realtimed_push_skipped_total", reason="expired") == skipped + 1
        assert await inbox(h, "bob") == ["job_completed"]
        assert await inbox(h, "bob", "?unread_only=true") == ["job_completed"]
        assert await inbox(h, "bob", "?after_seq=0") == ["job_completed"]
        assert await unread(h, "bob") == 1
        # The socket's session.ready counts what is left in the inbox too.
        ws = await WsClient.connect(h.ws_url, token=jwt_at("bob", clock.now()))
        ready = await ws.event("session.ready")
        assert ready["data"]["notifications_unread"] == 1
        await ws.close()
        # Reading or deleting the expired one changes nothing the user sees.
        expired_id = page["notifications"][1]["id"]
        assert await h.client("bob", "POST", f"/notifications/{expired_id}/read") == {"unread_count": 1}

        # The counter kept it until retention deletes it; then counter and inbox agree.
        late = clock.now() + timedelta(hours=1)
        await h.server("POST", "/notifications", {"user_ids": ["bob"], "type": "mention", "vars": MENTION, "expires_at": iso(late)})
        clock.advance(2 * 3600)
        assert await h.store.notification_unread_count("bob") == 2
        assert await unread(h, "bob") == 1
        await h.daemon.services.jobs.enqueue(RETENTION_NOTIFICATIONS, RetentionPayload())
        await trio.sleep(11)
        await h.idle()
        assert await h.store.notification_unread_count("bob") == 1
        records, _ = await h.store.list_notifications(user_id="bob")
        assert [r.type for r in records] == ["job_completed"]


async def test_unread_notifications_are_deleted_after_the_configured_retention(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        clock = following()
        h: Harness = await harness_factory(
            {"jobs": {"poll_s": 10.0, "lease_s": 900.0}, "retention": {"unread_notifications_days": 1}}, clock=clock
        )
        await h.notify(["bob"], "job_completed", {"job_name": "old"})
        await h.notify(["bob"], "job_completed", {"job_name": "read"})
        read_id = (await h.client("bob", "GET", "/notifications"))["notifications"][0]["id"]
        await h.client("bob", "POST", f"/notifications/{read_id}/read")
        clock.advance(36 * 3600)
        await h.notify(["bob"], "job_completed", {"job_name": "new"})
        assert await unread(h, "bob") == 2
        await h.daemon.services.jobs.enqueue(RETENTION_NOTIFICATIONS, RetentionPayload())
        await trio.sleep(11)
        await h.idle()
        # The unread one older than a day is gone; the read one waits for its own retention (30 days).
        page = await h.client("bob", "GET", "/notifications")
        assert [(n["body"], n["read_at"] is not None) for n in page["notifications"]] == [
            ("new has finished", False), ("read has finished", True)
        ]
        assert await unread(h, "bob") == 1
        assert await h.store.notification_unread_count("bob") == 1


async def test_expires_at_is_checked_at_the_edge(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(30):
        h: Harness = await harness_factory({"notify": {"max_expiry_s": 3600}})
        now = h.clock.now()
        base = {"user_ids": ["bob"], "type": "mention", "vars": MENTION}
        for expires_at, scheduled_for, says in (
            ("tomorrow", None, "RFC 3339"),
            (iso(now - timedelta(seconds=1)), None, "after now"),
            (iso(now + timedelta(seconds=3700)), None, "notify.max_expiry_s"),
            (iso(now + timedelta(minutes=5)), iso(now + timedelta(minutes=10)), "after scheduled_for"),
            (iso(now + timedelta(minutes=80)), iso(now + timedelta(minutes=10)), "notify.max_expiry_s"),
        ):
            body = {**base, "expires_at": expires_at, **({"scheduled_for": scheduled_for} if scheduled_for else {})}
            error = (await h.server("POST", "/notifications", body, status=400))["error"]
            assert error["code"] == "VALIDATION_ERROR" and error["field"] == "expires_at", error
            assert says in error["message"], error
        assert await h.store.notification_unread_count("bob") == 0
        # A scheduled one may expire up to max_expiry_s after its time.
        body = {**base, "scheduled_for": iso(now + timedelta(minutes=10)), "expires_at": iso(now + timedelta(minutes=70))}
        answer = await h.server("POST", "/notifications", body)
        assert answer["recipients"] == [{"user_id": "bob", "channels": {"in_app": "pending", "push": "pending"}}]


# -- outcomes ------------------------------------------------------------------------------------


async def test_each_recipient_is_answered_and_later_decisions_come_as_delivery_failed(
    harness_factory: HarnessFactory, nursery: trio.Nursery
) -> None:
    secret = new_secret()
    receiver = Receiver([secret])
    await receiver.start(nursery)
    with trio.fail_after(60):
        h: Harness = await harness_factory(
            {
                "notify": {"hourly_cap_per_type": 1},
                "webhooks": {
                    "allow_private": True,
                    "endpoints": [{"id": "app", "url": receiver.url, "secrets": [secret], "events": ["delivery.failed"]}],
                },
                "jobs": {"poll_s": 0.2, "queues": [{"name": "push", "concurrency": 4}, {"name": "webhooks", "concurrency": 4}]},
            }
        )
        for user in ("ann", "bob", "cy", "dee"):
            await h.device(user, f"tok-{user}")
        await h.client("cy", "PATCH", "/notifications/preferences", {"types": [{"type": "mention", "push": False}]})
        await h.client("dee", "PATCH", "/notifications/preferences", {"types": [{"type": "mention", "in_app": False}]})
        ann = await WsClient.connect(h.ws_url, token=jwt_at("ann", h.clock.now()))
        await ann.event("session.ready")
        await ann.ok("notification.list", {})  # an op: ann is active on this device

        expires = h.clock.now().replace(microsecond=0) + timedelta(minutes=30)
        body = {
            "user_ids": ["ann", "bob", "cy", "dee"],
            "type": "mention",
            "vars": MENTION,
            "dedupe_key": "m1",
            "expires_at": iso(expires),
        }
        answer = await h.server("POST", "/notifications", body)
        assert answer["queued"] == 4
        assert answer["recipients"] == [
            {"user_id": "ann", "channels": {"in_app": "delivered", "push": "skipped:active"}},
            {"user_id": "bob", "channels": {"in_app": "delivered", "push": "pending"}},
            {"user_id": "cy", "channels": {"in_app": "delivered", "push": "skipped:preference"}},
            {"user_id": "dee", "channels": {"in_app": "skipped:preference", "push": "pending"}},
        ]
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 2)
        assert sorted(r.target for r in h.fake.delivered) == ["tok-bob", "tok-dee"]
        # FCM keeps it no longer than it lives: Android's TTL is what is left, APNs gets the time itself.
        message = h.fake.delivered[0].message
        assert 0 < float(message["android"]["ttl"].removesuffix("s")) <= 1800
        assert message["apns"]["headers"]["apns-expiration"] == str(int(expires.timestamp()))
        assert 0 < int(message["webpush"]["headers"]["TTL"]) <= 1800

        again = await h.server("POST", "/notifications", {**body, "user_ids": ["bob"]})
        assert again == {"queued": 0, "recipients": [
            {"user_id": "bob", "channels": {"in_app": "skipped:duplicate", "push": "skipped:duplicate"}}
        ]}
        # Bob's hourly cap of mentions is spent: the plan job holds it and says so.
        later = await h.server("POST", "/notifications", {**body, "user_ids": ["bob"], "dedupe_key": "m2"})
        assert later["recipients"] == [{"user_id": "bob", "channels": {"in_app": "delivered", "push": "pending"}}]
        # Eve is in her quiet hours: the push waits for their end, and the report says until when.
        now = h.clock.now()
        quiet = {"start": f"{(now.hour - 1) % 24:02d}:00", "end": f"{(now.hour + 2) % 24:02d}:00"}
        await h.device("eve", "tok-eve")
        await h.client("eve", "PATCH", "/notifications/preferences", {"quiet_hours": quiet, "time_zone": "UTC"})
        await h.server("POST", "/notifications", {**body, "user_ids": ["eve"], "dedupe_key": "m3", "expires_at": None})
        # One that expires before her quiet hours end is not queued at all.
        job = {"user_ids": ["eve"], "type": "job_completed", "vars": {"job_name": "x"}, "expires_at": iso(expires)}
        await h.server("POST", "/notifications", job)
        while len(receiver.received) < 3:
            await receiver.got.wait()
            receiver.got = trio.Event()
        reports = {(r.body["data"]["user_id"], r.body["data"]["type"]): r for r in receiver.received}
        assert all(r.verified_with == (0,) and r.body["type"] == "delivery.failed" for r in reports.values())
        capped, deferred = reports["bob", "mention"].body["data"], reports["eve", "mention"].body["data"]
        dropped = reports["eve", "job_completed"].body["data"]
        assert dropped["code"] == "skipped:quiet_hours" and "run_at" not in dropped and "expiry" in dropped["error"]
        assert (capped["channel"], capped["code"], capped["type"]) == ("push", "skipped:cap", "mention")
        assert capped["notification_id"] and "hourly cap" in capped["error"] and "run_at" not in capped
        assert (deferred["channel"], deferred["code"]) == ("push", "skipped:quiet_hours")
        assert deferred["run_at"].endswith(quiet["end"] + ":00.000Z")
        while not (waiting := [j for j in await h.jobs("push.send") if j.payload["token"] == "tok-eve"]):
            await trio.sleep(0.05)  # the plan job reports, then queues the push
        (eve_push,) = waiting
        assert eve_push.status == "queued" and iso(eve_push.run_at) == deferred["run_at"]
        assert len(h.fake.delivered) == 2
        await ann.close()


# -- devices -------------------------------------------------------------------------------------


async def test_device_info_is_kept_and_tokens_are_checked_leniently(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(30):
        h: Harness = await harness_factory({"push": {"max_token_chars": 200, "max_device_info_chars": 16}})
        info = {"model": "Pixel 8", "os": "Android", "os_version": "15", "app_version": "2.3.1"}
        # FCM tokens are opaque: any printable ASCII but space, up to push.max_token_chars.
        odd = "a:b/c_d-e.f~g%h+i=j" + "x" * 181
        device = (await h.client("bob", "POST", "/devices", {"token": odd, "platform": "android", "device_info": info}))["device"]
        assert device["device_info"] == info and device["app_version"] == "2.3.1"
        await h.client("bob", "POST", "/devices", {"token": "!", "platform": "web", "app_version": "9"})
        listed = {d["token"]: d for d in (await h.client("bob", "GET", "/devices"))["devices"]}
        assert listed[odd]["device_info"] == info and listed["!"]["device_info"] == {}
        # Registering again replaces the details.
        await h.client("bob", "POST", "/devices", {"token": odd, "platform": "android", "device_info": {"os": "Android"}})
        listed = {d["token"]: d for d in (await h.client("bob", "GET", "/devices"))["devices"]}
        assert listed[odd]["device_info"] == {"os": "Android"}

        for body, field in (
            ({"token": "x" * 201}, "token"),
            ({"token": ""}, "token"),
            ({"token": "has space"}, "token"),
            ({"token": "tab\there"}, "token"),
            ({"token": "caf\u00e9"}, "token"),
            ({"token": 5}, "token"),
            ({"device_info": {"model": "x" * 17}}, "device_info.model"),
            ({"device_info": {"os": 15}}, "device_info.os"),
            ({"device_info": {"os": "line\nbreak"}}, "device_info.os"),
            ({"device_info": {"imei": "123"}}, "device_info.imei"),
            ({"device_info": ["Pixel"]}, "device_info"),
        ):
            request = {"token": "tok-ok", "platform": "ios", **body}
            error = (await h.client("bob", "POST", "/devices", request, status=400))["error"]
            assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), (body, error)
        assert "tok-ok" not in {d["token"] for d in (await h.client("bob", "GET", "/devices"))["devices"]}
        # The longest token allowed is accepted, and forgotten by its path.
        await h.client("bob", "POST", "/devices", {"token": "y" * 200, "platform": "ios"})
        await h.client("bob", "DELETE", "/devices/" + "y" * 200)


# -- preferences ---------------------------------------------------------------------------------


async def test_patch_changes_only_what_it_names(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(30):
        h: Harness = await harness_factory()
        quiet = {"quiet_hours": {"start": "22:00", "end": "07:00"}, "time_zone": "Europe/Paris"}
        await h.client("bob", "PUT", "/notifications/preferences", {"types": [{"type": "mention", "in_app": False}], **quiet})
        got = await h.client("bob", "PATCH", "/notifications/preferences", {"types": [{"type": "mention", "push": False}]})
        mention = next(t for t in got["types"] if t["type"] == "mention")
        assert (mention["in_app"], mention["push"]) == (False, False)
        assert got["quiet_hours"] == quiet["quiet_hours"] and got["time_zone"] == "Europe/Paris"
        got = await h.client("bob", "PATCH", "/notifications/preferences", {"quiet_hours": None})
        assert got["quiet_hours"] is None and got["time_zone"] == "Europe/Paris"
        assert got == await h.client("bob", "GET", "/notifications/preferences")
        error = (await h.client("bob", "PATCH", "/notifications/preferences", {"types": [{"type": "mention", "fax": True}]}, status=400))["error"]
        assert error["field"] == "types[0].fax"


# -- API key budgets -----------------------------------------------------------------------------


async def test_each_api_key_has_its_own_budget(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app_key, batch_key = "k" * 40, "b" * 40
    with trio.fail_after(3600):
        daemon = await start_daemon(
            {
                "api": {
                    "keys": [{"name": "app", "key": app_key}, {"name": "batch", "key": batch_key}, API_KEY],
                    "rate_limits": {"app": {"per": 2, "window_s": 600}, "*": {"per": 3, "window_s": 3000}},
                },
            }
        )
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=daemon.url() + "/server/v1", limits=limits) as http:

            async def get(key: str) -> httpx.Response:
                return await http.get("/connections?user_id=bob", headers={"Authorization": f"Bearer {key}"})

            assert [(await get(app_key)).status_code for _ in range(2)] == [200, 200]
            refused = await get(app_key)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "300"
            error = refused.json()["error"]
            assert error["code"] == "RATE_LIMITED" and error["retry_after_ms"] == 300_000 and "app" in error["message"]
            # The other keys have budgets of their own ("*": one each).
            assert [(await get(batch_key)).status_code for _ in range(4)] == [200, 200, 200, 429]
            assert (await get(API_KEY)).status_code == 200
            # A bad key is refused as before, whatever the budgets.
            assert (await get("nope" * 10)).status_code == 401
            assert metric("realtimed_server_api_rate_limited_total", key="app") >= 1
            # Windows long beside any timer of the daemon, so that no autojump refills a bucket by chance.
            autojump_clock.jump(300)
            assert (await get(app_key)).status_code == 200
            assert (await get(app_key)).status_code == 429


def test_rate_limits_name_configured_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, data={"api": {"keys": [{"name": "app", "key": "k" * 40}], "rate_limits": {"ap": {"per": 1}}}})
    assert "api.rate_limits.ap" in str(caught.value)
    cfg = load_config(env={}, data={"api": {"keys": ["k" * 40], "rate_limits": {"keys[0]": {"per": 5, "window_s": 1}}}})
    assert cfg.api.rate_limit("keys[0]") is not None and cfg.api.rate_limit("other") is None
