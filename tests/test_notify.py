"""The notification pipeline, each rule on Trio's MockClock, against the fake FCM.

Wall time (quiet hours, caps, digest windows, ``run_at``) comes from a clock
that follows the MockClock and that a test may move forward by hours at once
(``FollowingClock.advance``); the fake FCM records both clocks for each push.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, connect_websocket_url

from realtimed.config import ConfigError, load_config
from realtimed.metrics import REGISTRY
from realtimed.notify.policy import PushCaps, cap_resets, digest_window, quiet_until
from realtimed.notify.types import BUILTIN_TYPES
from realtimed.templates import TemplateError, placeholders, render
from tests import notify_support
from tests.fixtures.daemon import merge
from tests.notify_support import FollowingClock, Harness, following, jwt_at

HarnessFactory = Any
# The shared fixtures (assigned, so that tests may name them as parameters).
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir
# The gateway's heartbeat wakes every tenth of its period; at the default 25 s each of those
# wake-ups is an autojump that waits out the threshold in real time, most of these tests' wall
# time. None of them is about heartbeats, so it runs once an hour (the maximum) here.
MOCK: dict[str, Any] = {"jobs": {"poll_s": 300.0, "lease_s": 900.0}, "gateway": {"heartbeat_s": 3600.0}}
NY = "America/New_York"  # 09:00 UTC on START is 04:00 there


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def mocked(factory: HarnessFactory, override: dict[str, Any] | None = None) -> tuple[Harness, FollowingClock]:
    clock = following()
    h: Harness = await factory(merge(MOCK, override or {}), clock=clock)
    return h, clock


async def settle(h: Harness) -> None:
    """Let due jobs (and the jobs they queue) run."""
    for _ in range(3):
        await h.idle()
        await trio.sleep(0.5)


async def socket(h: Harness, nursery: trio.Nursery, user: str) -> tuple[WebSocketConnection, dict[str, Any]]:
    ws = await connect_websocket_url(nursery, f"{h.ws_url}?token={jwt_at(user, h.clock.now())}")
    ready = orjson.loads(await ws.get_message())
    assert ready["event"] == "session.ready"
    return ws, ready


async def next_event(ws: WebSocketConnection, name: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = orjson.loads(await ws.get_message())
        if frame.get("event") == name:
            return frame


async def set_prefs(h: Harness, user: str, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await h.client(user, "PUT", "/notifications/preferences", body)
    return answer


MENTION = {"mentioner_name": "Ann", "excerpt": "look @bob"}


# -- 1. templates ----------------------------------------------------------------------------------


def test_templates_render_and_refuse_what_is_not_a_plain_placeholder() -> None:
    assert placeholders("{count} new messages from {sender_name}, {{literal}}") == ["count", "sender_name"]
    assert render("{a} and {{b}}", {"a": 1.5}) == "1.5 and {b}"
    assert render("{a}{b}{c}", {"a": None, "b": True, "c": "x" * 2000}).startswith("true" + "x")
    assert len(render("{c}", {"c": "x" * 2000})) == 1000
    for bad in ("{a", "a}", "{}", "{a.b}", "{a[0]}", "{a!r}", "{a:>5}"):
        with pytest.raises(TemplateError):
            placeholders(bad)


def test_config_refuses_undeclared_placeholders_and_malformed_templates() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, data={"notify": {"types": [
            {"name": "order_shipped", "title": "Order {order_id}", "body": "Ships {when}", "vars": ["order_id"]},
            {"name": "broken", "title": "{oops", "vars": []},
            {"name": "digesty", "title": "x", "digest_window_s": 60, "digest_title": "{count}"},
            {"name": "bad", "title": "x", "channels": ["sms"], "group_by": "nope"},
        ]}})
    problems = dict(info.value.problems)
    assert "placeholder {when} is not declared" in problems["notify.types[0].body"]
    assert "malformed" in problems["notify.types[1].title"]
    assert "digest body" in problems["notify.types[2].digest_body"]
    assert "sms" in problems["notify.types[3].channels[0]"]
    assert "nope" in problems["notify.types[3].group_by"]
    # {count} is allowed in digests, and the built-in types pass the same checks.
    types = [attrs.asdict(t) for t in BUILTIN_TYPES]
    cfg = load_config(env={}, data={"notify": {"types": types}})
    assert [t.name for t in cfg.notify.types] == [
        "new_message", "new_follower", "post_like", "post_comment", "mention", "job_completed", "job_failed",
        "announcement",
    ]


# -- 2. pure policy --------------------------------------------------------------------------------


def test_quiet_hours_in_the_users_time_zone() -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(UTC)

    # Overnight 22:00-07:00 in New York: 04:00 local is quiet until 07:00 local (12:00 UTC in winter).
    assert quiet_until(at("2026-03-02T09:00:00+00:00"), start="22:00", end="07:00", time_zone=NY) == at(
        "2026-03-02T12:00:00+00:00"
    )
    # 23:30 local: until 07:00 the next day.
    assert quiet_until(at("2026-03-03T04:30:00+00:00"), start="22:00", end="07:00", time_zone=NY) == at(
        "2026-03-03T12:00:00+00:00"
    )
    # Outside, at the end itself, and equal bounds: not quiet.
    assert quiet_until(at("2026-03-02T15:00:00+00:00"), start="22:00", end="07:00", time_zone=NY) is None
    assert quiet_until(at("2026-03-02T12:00:00+00:00"), start="22:00", end="07:00", time_zone=NY) is None
    assert quiet_until(at("2026-03-02T09:00:00+00:00"), start="07:00", end="07:00", time_zone=NY) is None
    # A daytime range in Berlin.
    assert quiet_until(at("2026-03-02T12:00:00+00:00"), start="12:00", end="14:30", time_zone="Europe/Berlin") == at(
        "2026-03-02T13:30:00+00:00"
    )
    # Across the spring-forward night (Berlin, 29 March 2026, 02:00 -> 03:00): 07:00 stays 07:00 local.
    assert quiet_until(at("2026-03-28T23:00:00+00:00"), start="22:00", end="07:00", time_zone="Europe/Berlin") == at(
        "2026-03-29T05:00:00+00:00"
    )
    # An end that falls in the skipped hour is over once the clocks jump.
    until = quiet_until(at("2026-03-29T00:30:00+00:00"), start="23:00", end="02:30", time_zone="Europe/Berlin")
    assert until is not None and until > at("2026-03-29T00:30:00+00:00")


def test_caps_count_per_local_day_and_per_type_hour() -> None:
    caps = PushCaps()
    now = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin, 17:30 in New York

    def take(user: str, type: str, when: datetime, tz: str = "Europe/Berlin") -> str | None:
        return caps.take(user_id=user, type=type, now=when, time_zone=tz, daily_cap=3, hourly_cap=2)

    assert [take("u", "a", now) for _ in range(3)] == [None, None, "hourly_cap"]
    assert take("u", "b", now) is None  # another type has its own hourly count
    assert take("u", "c", now) == "daily_cap"  # 3 today in Berlin
    usage = trio.run(lambda: caps.usage(user_id="u", types=["a", "b", "c"], now=now, time_zone="Europe/Berlin"))
    assert usage == (3, {"a": 2, "b": 1, "c": 0})
    assert cap_resets(now, "Europe/Berlin") == (datetime(2026, 3, 2, 23, 0, tzinfo=UTC), datetime(2026, 3, 2, 23, 0, tzinfo=UTC))
    assert cap_resets(now, NY)[0] == datetime(2026, 3, 3, 5, 0, tzinfo=UTC)  # midnight in New York
    # 00:10 in Berlin: a new local day, a new hour.
    assert take("u", "a", now + timedelta(minutes=40)) is None
    # The same instant is still the same day in New York.
    assert [take("v", "a", now, NY), take("v", "b", now, NY), take("v", "c", now, NY)] == [None, None, None]
    assert take("v", "d", now + timedelta(minutes=40), NY) == "daily_cap"


def test_digest_windows_are_fixed_and_aligned() -> None:
    start, end = digest_window(datetime(2026, 3, 2, 9, 4, 59, tzinfo=UTC), 600)
    assert (start, end) == (datetime(2026, 3, 2, 9, 0, tzinfo=UTC), datetime(2026, 3, 2, 9, 10, tzinfo=UTC))


# -- 3. preferences per type and channel -----------------------------------------------------------


async def test_preferences_per_type_and_channel(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h, _ = await mocked(harness_factory)
        await h.device("bob", "tok-bob")
        prefs = await h.client("bob", "GET", "/notifications/preferences")
        assert prefs["quiet_hours"] is None and prefs["time_zone"] == "UTC"
        assert {"type": "mention", "in_app": True, "push": True, "channels": ["in_app", "push"]} in prefs["types"]
        answer = await set_prefs(h, "bob", {
            "types": [
                {"type": "post_like", "push": False},
                {"type": "mention", "in_app": False},
                {"type": "new_follower", "in_app": False, "push": False},
            ],
            "quiet_hours": {"start": "23:00", "end": "06:30"},
            "time_zone": "Europe/Berlin",
        })
        by_type = {t["type"]: t for t in answer["types"]}
        assert (by_type["post_like"]["in_app"], by_type["post_like"]["push"]) == (True, False)
        assert (by_type["mention"]["in_app"], by_type["mention"]["push"]) == (False, True)
        assert answer["quiet_hours"] == {"start": "23:00", "end": "06:30"} and answer["time_zone"] == "Europe/Berlin"
        # Partial updates keep the rest.
        answer = await set_prefs(h, "bob", {"types": [{"type": "post_like", "in_app": False}], "quiet_hours": None})
        by_type = {t["type"]: t for t in answer["types"]}
        assert (by_type["post_like"]["in_app"], by_type["post_like"]["push"]) == (False, False)
        assert answer["quiet_hours"] is None and answer["time_zone"] == "Europe/Berlin"
        await set_prefs(h, "bob", {"types": [{"type": "post_like", "in_app": True}]})
        for bad, field in (
            ({"types": [{"type": "nope"}]}, "types[0].type"),
            ({"types": [{"type": "mention", "push": "yes"}]}, "types[0].push"),
            ({"time_zone": "Mars/Olympus"}, "time_zone"),
            ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet"),
        ):
            error = (await h.client("bob", "PUT", "/notifications/preferences", bad, status=400))["error"]
            assert error["code"] == "VALIDATION_ERROR" and field in error["message"], error

        # post_like: in the inbox, no push. mention: no inbox entry, a push. new_follower: nothing at all.
        assert await h.notify(["bob"], "post_like", {"liker_name": "Ann", "post_id": "p1"}) == 1
        assert await h.notify(["bob"], "mention", MENTION) == 1
        assert await h.notify(["bob"], "new_follower", {"follower_name": "Cy"}) == 0
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        await settle(h)
        inbox = await h.client("bob", "GET", "/notifications")
        assert [n["type"] for n in inbox["notifications"]] == ["post_like"]
        assert [r.message["notification"]["title"] for r in h.fake.requests] == ["Ann mentioned you"]
        assert "notification_id" not in h.fake.requests[0].message["data"]  # nothing in the inbox to point at


# -- 4. active on a device -------------------------------------------------------------------------


async def test_no_push_while_active_on_a_device(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(7200):
        h, _ = await mocked(harness_factory, {"notify": {"active_window_s": 120.0}, "gateway": {"heartbeat_s": 600.0}})
        await h.device("bob", "tok-bob")
        ws, _ = await socket(h, nursery, "bob")
        skipped = metric("realtimed_notify_push_decisions_total", type="mention", decision="active")
        await h.notify(["bob"], "mention", MENTION)
        assert (await next_event(ws, "notification.new"))["seq"] == 1
        await settle(h)
        assert h.fake.requests == []
        assert metric("realtimed_notify_push_decisions_total", type="mention", decision="active") == skipped + 1
        # A ping is not activity: two minutes later the user counts as away from the device.
        await trio.sleep(100)
        await ws.send_message(orjson.dumps({"id": 1, "op": "ping"}).decode())
        await trio.sleep(30)
        await h.notify(["bob"], "mention", MENTION)
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        # Any other op is.
        await ws.send_message(orjson.dumps({"id": 2, "op": "notification.list", "data": {}}).decode())
        await trio.sleep(1)
        await h.notify(["bob"], "mention", MENTION)
        await settle(h)
        assert len(h.fake.requests) == 1
        await ws.aclose()


async def test_active_rule_can_be_switched_off(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(7200):
        h, _ = await mocked(harness_factory, {"notify": {"push_skip_when_active": False}})
        await h.device("bob", "tok-bob")
        ws, _ = await socket(h, nursery, "bob")
        await h.notify(["bob"], "mention", MENTION)
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        await ws.aclose()


# -- 5. caps ---------------------------------------------------------------------------------------


async def test_daily_and_hourly_caps_and_critical_bypass(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    incident = {"name": "incident", "title": "Incident: {what}", "body": "", "vars": ["what"], "priority": "critical"}
    with trio.fail_after(7200):
        h, clock = await mocked(harness_factory, {"notify": {"daily_cap": 3, "hourly_cap_per_type": 2, "types": [incident]}})
        await h.device("bob", "tok-bob")
        await set_prefs(h, "bob", {"time_zone": "Europe/Berlin"})  # START is 10:00 there

        async def burst(n: int, type: str = "job_completed", vars: dict[str, Any] | None = None) -> None:
            for i in range(n):
                await h.notify(["bob"], type, vars or {"job_name": f"render {i}"})
            await settle(h)

        await burst(3)
        assert len(h.fake.delivered) == 2  # the per-type hourly cap
        clock.advance(3600)
        await burst(2)
        assert len(h.fake.delivered) == 3  # one more, then the daily cap of 3
        clock.advance(3600)
        await burst(1, "job_failed", {"job_name": "x", "error": "boom"})
        assert len(h.fake.delivered) == 3
        await burst(1, "incident", {"what": "db down"})  # critical bypasses both caps
        assert len(h.fake.delivered) == 4
        assert h.fake.delivered[-1].message["notification"]["title"] == "Incident: db down"
        # A new day in Berlin (00:30 local).
        clock.advance(12.5 * 3600)
        await burst(1)
        assert len(h.fake.delivered) == 5
        # Capped notifications are still in the inbox.
        assert (await h.client("bob", "GET", "/notifications/unread-count"))["unread_count"] == 8


# -- 6. quiet hours --------------------------------------------------------------------------------


async def test_quiet_hours_defer_push_to_their_end_in_the_users_time_zone(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        incident = {"name": "incident", "title": "down", "body": "", "vars": [], "priority": "critical"}
        h, clock = await mocked(harness_factory, {"notify": {"types": [incident]}})
        for user, zone in (("bob", NY), ("eva", "Europe/Berlin")):
            await h.device(user, f"tok-{user}")
            await set_prefs(h, user, {"quiet_hours": {"start": "22:00", "end": "07:00"}, "time_zone": zone})
        await h.notify(["bob", "eva"], "mention", MENTION)
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        assert h.fake.delivered[0].target == "tok-eva"  # 10:00 in Berlin: not quiet
        end = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 07:00 in New York
        jobs = [j for j in await h.jobs("push.send") if j.payload["token"] == "tok-bob"]
        assert len(jobs) == 1 and jobs[0].run_at == end and jobs[0].status == "queued"
        clock.advance((end - clock.now()).total_seconds() - 600)
        await trio.sleep(300)  # 11:55 in UTC: still quiet
        assert len(h.fake.delivered) == 1
        # Critical goes through quiet hours.
        await h.notify(["bob"], "incident", {})
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 2)
        # The deferred push goes out at 07:00 in New York, not before.
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 3)
        pushed = h.fake.delivered[2]
        assert pushed.target == "tok-bob" and pushed.message["notification"]["title"] == "Ann mentioned you"
        assert end <= pushed.wall <= end + timedelta(seconds=5)


# -- 7. reading first cancels the push -------------------------------------------------------------


async def test_reading_the_notification_before_its_push_runs_cancels_the_push(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(7200):
        h, clock = await mocked(harness_factory)
        await h.device("bob", "tok-bob")
        await set_prefs(h, "bob", {"quiet_hours": {"start": "22:00", "end": "07:00"}, "time_zone": NY})
        for i in range(4):
            await h.notify(["bob"], "mention", {"mentioner_name": f"u{i}", "excerpt": "hi"})
        await settle(h)
        inbox = (await h.client("bob", "GET", "/notifications"))["notifications"]
        first, second, third, fourth = sorted(inbox, key=lambda n: n["seq"])
        jobs = {j.payload["check"]["id"]: j for j in await h.jobs("push.send")}
        assert {j.status for j in jobs.values()} == {"queued"}
        ws, ready = await socket(h, nursery, "bob")
        assert ready["data"]["notifications_unread"] == 4
        # One read: its push is cancelled, and the other device hears of the read.
        assert await h.client("bob", "POST", f"/notifications/{first['id']}/read") == {"unread_count": 3}
        event = await next_event(ws, "notification.read")
        assert event["data"] == {"ids": [first["id"]], "unread_count": 3}
        assert (await h.store.get_job(jobs[first["id"]].id)).status == "cancelled"
        # A delete cancels too.
        assert await h.client("bob", "DELETE", f"/notifications/{second['id']}") == {"unread_count": 2}
        assert (await next_event(ws, "notification.deleted"))["data"] == {"ids": [second["id"]], "unread_count": 2}
        assert (await h.store.get_job(jobs[second["id"]].id)).status == "cancelled"
        # Read behind the pipeline's back: the job still runs at 07:00, sees it read, sends nothing.
        await h.store.mark_notifications_read(user_id="bob", ids=[third["id"]], now=clock.now())
        skipped = metric("realtimed_push_skipped_total", reason="read")
        clock.advance(3 * 3600)
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        await settle(h)
        assert [r.message["data"]["notification_id"] for r in h.fake.delivered] == [fourth["id"]]
        assert metric("realtimed_push_skipped_total", reason="read") == skipped + 1
        assert (await h.store.get_job(jobs[third["id"]].id)).status == "succeeded"
        await ws.aclose()


async def test_read_all_cancels_every_queued_push_of_the_inbox(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h, clock = await mocked(harness_factory)
        await h.device("bob", "tok-bob")
        await set_prefs(h, "bob", {"quiet_hours": {"start": "22:00", "end": "07:00"}, "time_zone": NY})
        for _ in range(3):
            await h.notify(["bob"], "mention", MENTION)
        await settle(h)
        assert await h.client("bob", "POST", "/notifications/read-all") == {"unread_count": 0}
        assert {j.status for j in await h.jobs("push.send")} == {"cancelled"}
        clock.advance(4 * 3600)
        await trio.sleep(301)
        assert h.fake.requests == []


# -- 8. digests ------------------------------------------------------------------------------------


async def test_digest_groups_pushes_within_the_window(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h, _ = await mocked(harness_factory)  # post_like: 600 s windows, grouped by post_id
        await h.device("bob", "tok-bob")

        async def like(who: str, post: str) -> None:
            await h.notify(["bob"], "post_like", {"liker_name": who, "post_id": post})
            await settle(h)
            await trio.sleep(10)

        for who, post in (("Ann", "p1"), ("Ben", "p1"), ("Cy", "p2"), ("Dee", "p1"), ("Eve", "p3"), ("Fay", "p3")):
            await like(who, post)
        # The first of each group goes at once; the rest wait for the digest.
        assert [r.message["notification"]["body"] for r in h.fake.delivered] == [
            "Ann liked your post", "Cy liked your post", "Eve liked your post",
        ]
        assert h.fake.delivered[0].message["android"]["collapse_key"] == "post_like:p1"
        # p3's likes are read before the window ends: no digest for them.
        inbox = (await h.client("bob", "GET", "/notifications"))["notifications"]
        p3 = [n["id"] for n in inbox if n["group_key"] == "post_like:p3"]
        assert await h.client("bob", "POST", "/ops/notification.read", {"ids": p3}) == {"unread_count": 4}
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 4)
        await trio.sleep(120)
        digest = h.fake.delivered[3]
        assert digest.message["notification"] == {"title": "New likes", "body": "3 people liked your post"}
        assert digest.message["android"]["collapse_key"] == "post_like:p1"  # replaces Ann's on the device
        assert digest.message["data"]["count"] == "3"
        assert digest.wall >= datetime(2026, 3, 2, 9, 10, tzinfo=UTC)  # the window's end
        assert len(h.fake.requests) == 4  # nothing for p2 (one like) or p3 (read)


# -- 9. scheduled, dedupe, validation --------------------------------------------------------------


async def test_scheduled_notification_takes_its_seq_at_its_time(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(7200):
        h, clock = await mocked(harness_factory)
        later = clock.now() + timedelta(hours=1)
        queued = await h.notify(["bob"], "announcement", {"title": "Maintenance", "body": "at noon"},
                                scheduled_for=later.isoformat())
        assert queued == 1
        assert (await h.client("bob", "GET", "/notifications"))["notifications"] == []
        await h.notify(["bob"], "mention", MENTION)
        ws, _ = await socket(h, nursery, "bob")
        clock.advance(3600)
        event = await next_event(ws, "notification.new")
        assert event["seq"] == 2 and event["data"]["notification"]["title"] == "Maintenance"
        created = datetime.fromisoformat(event["data"]["notification"]["created_at"].replace("Z", "+00:00"))
        assert created >= later
        await ws.aclose()


async def test_dedupe_key_makes_a_repeat_a_no_op(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h, _ = await mocked(harness_factory)
        await h.device("bob", "tok-bob")
        assert await h.notify(["bob", "cy"], "mention", MENTION, dedupe_key="mention:42") == 2
        assert await h.notify(["bob", "cy"], "mention", MENTION, dedupe_key="mention:42") == 0
        await settle(h)
        assert len((await h.client("bob", "GET", "/notifications"))["notifications"]) == 1
        assert len(h.fake.requests) == 1


async def test_server_api_validation(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory({"notify": {"max_recipients": 3}})
        cases = [
            ({"user_ids": ["a"], "type": "nope", "vars": {}}, "type"),
            ({"user_ids": ["a"], "type": "mention", "vars": {"mentioner_name": "x"}}, "excerpt"),
            ({"user_ids": ["a", "b", "c", "d"], "type": "mention", "vars": MENTION}, "user_ids"),
            ({"user_ids": ["a"], "type": "mention", "vars": {**MENTION, "x": [1]}}, "vars.x"),
            ({"user_ids": ["a"], "type": "mention", "vars": MENTION, "scheduled_for": "tomorrow"}, "scheduled_for"),
            ({"user_ids": ["a"], "type": "mention", "vars": MENTION, "data": {"from": "x"}}, "data"),
        ]
        for body, field in cases:
            error = (await h.server("POST", "/notifications", body, status=400))["error"]
            assert error["code"] == "VALIDATION_ERROR" and field in error["message"], (body, error)
