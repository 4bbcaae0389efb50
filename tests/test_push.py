"""Push through FCM HTTP v1 against the fake FCM: every error path, access tokens,
devices and topics.

Timed paths run on Trio's MockClock with the daemon's wall clock following it
(``FollowingClock``); the fake FCM runs in the same Trio loop, so the times it
records are the times the daemon sent.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from realtimed.metrics import REGISTRY
from realtimed.push.fcm import FcmResult, classify, retry_after_seconds
from realtimed.push.messages import MAX_PAYLOAD_BYTES, build_message, check_message, payload_size
from realtimed.store.base import JobRecord
from tests import notify_support
from tests.fake_fcm import fcm_error
from tests.fixtures.daemon import merge
from tests.notify_support import Harness, following

HarnessFactory = Any
# The shared fixtures (assigned, so that tests may name them as parameters).
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def push_jobs(h: Harness) -> list[JobRecord]:
    return await h.jobs("push.send")


async def one_push_job(h: Harness) -> JobRecord:
    jobs = await push_jobs(h)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def wait_job_finished(h: Harness, job_id: str) -> JobRecord:
    while True:
        job: JobRecord = await h.store.get_job(job_id)
        if job.status in ("succeeded", "failed", "dead", "cancelled"):
            return job
        await trio.sleep(0.05)


# Long timers keep the mock clock's jumps few: every jump costs the autojump threshold in real time.
MOCK_JOBS = {"jobs": {"poll_s": 300.0, "lease_s": 900.0}}


async def mocked(factory: HarnessFactory, override: dict[str, Any] | None = None, **kwargs: Any) -> Harness:
    h: Harness = await factory(merge(MOCK_JOBS, override or {}), clock=following(), **kwargs)
    return h


# -- tokens that FCM refuses -----------------------------------------------------------------------


async def test_unregistered_and_invalid_tokens_are_deactivated_and_never_retried(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        h.fake.unregister("tok-gone")
        for token in ("tok-gone", "bad:not-a-token", "tok-ok"):
            await h.device("bob", token)
        before = metric("realtimed_push_tokens_deactivated_total", reason="unregistered")
        answer = await h.server("POST", "/push", {"user_ids": ["bob"], "title": "Hi", "body": "there"})
        assert answer == {"queued": 3}
        await h.fake.wait_for(lambda: len(h.fake.requests) == 3)
        await trio.sleep(120)  # far past the first retry (1 to 2 s)
        assert [r.status for r in h.fake.attempts_to("tok-gone")] == [404]
        assert [r.status for r in h.fake.attempts_to("bad:not-a-token")] == [400]
        assert len(h.fake.delivered_to("tok-ok")) == 1
        for token in ("tok-gone", "bad:not-a-token"):
            device = await h.store.get_device(token)
            assert device.active is False
        jobs = {job.payload["token"]: job for job in await push_jobs(h)}
        assert jobs["tok-gone"].status == "failed" and "UNREGISTERED" in (jobs["tok-gone"].last_error or "")
        assert jobs["bad:not-a-token"].status == "failed" and jobs["bad:not-a-token"].attempts == 1
        assert jobs["tok-ok"].status == "succeeded"
        assert metric("realtimed_push_tokens_deactivated_total", reason="unregistered") == before + 1
        # The deactivated tokens get nothing more.
        await h.server("POST", "/push", {"user_ids": ["bob"], "title": "Again", "body": ""})
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-ok")) == 2)
        await trio.sleep(60)
        assert len(h.fake.requests) == 4
        devices = await h.client("bob", "GET", "/devices")
        assert {d["token"]: d["active"] for d in devices["devices"]} == {
            "tok-gone": False, "bad:not-a-token": False, "tok-ok": True,
        }


async def test_bad_payload_fails_the_job_and_keeps_the_token(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        await h.device("bob", "tok-1")
        h.fake.fail_next("INVALID_ARGUMENT")
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "x"})
        job = await wait_job_finished(h, (await one_push_job(h)).id)
        await trio.sleep(120)
        assert job.status == "failed" and job.attempts == 1
        assert len(h.fake.attempts_to("tok-1")) == 1
        assert (await h.store.get_device("tok-1")).active is True


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["QUOTA_EXCEEDED", "UNAVAILABLE"])
async def test_retry_after_7_is_retried_no_sooner_than_7_s(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        await h.device("bob", "tok-1")
        h.fake.fail_next(fault, retry_after="7", token="tok-1")
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "x"})
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-1")) == 1)
        failed, delivered = h.fake.attempts_to("tok-1")
        assert failed.status in (429, 503) and delivered.status == 200
        assert 7.0 <= delivered.at - failed.at < 8.0
        job = await wait_job_finished(h, (await one_push_job(h)).id)
        assert job.status == "succeeded" and job.attempts == 2


async def test_a_429_slows_every_sender_and_a_503_does_not(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        for token in ("tok-a", "tok-b", "tok-c", "tok-d"):
            await h.device("bob", token)
        slowdowns = metric("realtimed_push_slowdowns_total")
        h.fake.fail_next("QUOTA_EXCEEDED", retry_after="7", token="tok-a")
        await h.server("POST", "/push", {"tokens": ["tok-a"], "title": "x"})
        await h.fake.wait_for(lambda: len(h.fake.requests) == 1)
        refused_at = h.fake.requests[0].at
        # Another job, for another device, queued after the 429: it waits too.
        await h.server("POST", "/push", {"tokens": ["tok-b"], "title": "y"})
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-b")) == 1)
        assert h.fake.delivered_to("tok-b")[0].at - refused_at >= 7.0
        assert metric("realtimed_push_slowdowns_total") == slowdowns + 1
        # A 503 only delays its own job.
        h.fake.fail_next("UNAVAILABLE", retry_after="7", token="tok-c")
        await h.server("POST", "/push", {"tokens": ["tok-c"], "title": "z"})
        await h.fake.wait_for(lambda: len(h.fake.attempts_to("tok-c")) == 1)
        unavailable_at = h.fake.attempts_to("tok-c")[0].at
        await h.server("POST", "/push", {"tokens": ["tok-d"], "title": "w"})
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-d")) == 1)
        assert h.fake.delivered_to("tok-d")[0].at - unavailable_at < 1.0
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-c")) == 1)


@pytest.mark.parametrize("fault", ["INTERNAL", "UNAVAILABLE"])
async def test_5xx_without_retry_after_backs_off_with_jitter_up_to_max_attempts(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory, {"push": {"max_attempts": 4, "backoff_base_s": 2.0}})
        await h.device("bob", "tok-1")
        h.fake.fail_next(fault, times=100, token="tok-1")
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "x"})
        await h.fake.wait_for(lambda: len(h.fake.attempts_to("tok-1")) == 4)
        job = await wait_job_finished(h, (await one_push_job(h)).id)
        await trio.sleep(120)
        attempts = h.fake.attempts_to("tok-1")
        assert len(attempts) == 4  # the configured attempts, then no more
        assert job.status == "dead" and job.attempts == 4 and fault in (job.last_error or "")
        gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
        # Equal jitter: attempt n waits between half and all of 2 s * 2^(n-1).
        for n, gap in enumerate(gaps, start=1):
            nominal = 2.0 * 2 ** (n - 1)
            assert nominal / 2 <= gap <= nominal + 0.5, gaps
        assert (await h.store.get_device("tok-1")).active is True


# -- payload size --------------------------------------------------------------------------------


async def test_payload_over_4096_bytes_is_refused_before_sending(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        await h.device("bob", "tok-1")
        answer = await h.server(
            "POST", "/push", {"tokens": ["tok-1"], "title": "big", "data": {"blob": "x" * 5000}}, status=413
        )
        error = answer["error"]
        assert error["code"] == "PAYLOAD_TOO_LARGE" and "4096" in error["message"]
        # A notification whose push would be too big: stored, its push job fails, FCM sees nothing.
        await h.notify(["bob"], "mention", {"mentioner_name": "Al", "excerpt": "hi"}, data={"blob": "y" * 5000})
        await h.idle()
        await trio.sleep(120)
        assert h.fake.requests == []
        job = await one_push_job(h)
        assert job.status == "failed" and job.attempts == 1
        assert "4096" in (job.last_error or "") and "bytes" in (job.last_error or "")
        assert (await h.client("bob", "GET", "/notifications/unread-count")) == {"unread_count": 1}


# -- refusals of our credentials -----------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("THIRD_PARTY_AUTH_ERROR", 401), ("SENDER_ID_MISMATCH", 403)])
async def test_credential_refusals_keep_the_token_and_raise_the_alarm(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock, fault: str, status: int
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        await h.device("bob", "tok-1")
        alarms = metric("realtimed_push_alarms_total", reason=fault)
        h.fake.fail_next(fault, token="tok-1")
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "x"})
        job = await wait_job_finished(h, (await one_push_job(h)).id)
        await trio.sleep(120)
        assert [r.status for r in h.fake.attempts_to("tok-1")] == [status]
        assert job.status == "failed" and fault in (job.last_error or "")
        assert (await h.store.get_device("tok-1")).active is True
        assert metric("realtimed_push_alarms_total", reason=fault) == alarms + 1
        assert metric("realtimed_push_sends_total", outcome="third_party_auth" if status == 401 else "sender_id_mismatch",
                      error_code=fault) >= 1
        # The token keeps working once the credentials are fixed.
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "y"})
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-1")) == 1)


# -- access tokens -------------------------------------------------------------------------------


async def test_token_endpoint_down_retries_and_keeps_the_device(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        await h.device("bob", "tok-1")
        h.fake.token_endpoint_down = True
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "x"})
        await h.fake.wait_for(lambda: h.fake.token_failures >= 2)
        assert h.fake.requests == []  # nothing is sent without a token
        job: JobRecord = await h.store.get_job((await one_push_job(h)).id)
        assert job.status in ("queued", "running") and "token_unavailable" in (job.last_error or "")
        h.fake.token_endpoint_down = False
        await h.fake.wait_for(lambda: len(h.fake.delivered_to("tok-1")) == 1)
        job = await wait_job_finished(h, job.id)
        assert job.status == "succeeded" and job.attempts >= 3
        assert (await h.store.get_device("tok-1")).active is True


async def test_access_token_is_refreshed_before_it_expires_mid_run(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        # Tokens live 120 s; realtimed fetches the next one 60 s early.
        h = await mocked(harness_factory, {"push": {"token_refresh_margin_s": 60.0}}, token_ttl_s=120.0)
        await h.device("bob", "tok-1")
        for i in range(8):  # a push every 30 s for 4 minutes: two expiries
            await h.server("POST", "/push", {"tokens": ["tok-1"], "title": f"n{i}"})
            await h.fake.wait_for(lambda i=i: len(h.fake.delivered_to("tok-1")) == i + 1)
            await trio.sleep(30)
        assert all(r.status == 200 for r in h.fake.requests)  # never sent with an expired token
        assert len({r.access_token for r in h.fake.requests}) >= 3
        assert 3 <= len(h.fake.token_requests) <= 5
        # The first refresh came once 60 s of its 120 had passed (at the next push after that), not at expiry.
        first_refresh = h.fake.token_requests[1] - h.fake.token_requests[0]
        assert 60 <= first_refresh <= 95


async def test_a_revoked_access_token_is_replaced_within_the_same_attempt(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        h = await mocked(harness_factory)
        await h.device("bob", "tok-1")
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "a"})
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        h.fake.revoke_tokens()
        await h.server("POST", "/push", {"tokens": ["tok-1"], "title": "b"})
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 2)
        assert [r.status for r in h.fake.requests] == [200, 401, 200]
        assert h.fake.requests[1].at == pytest.approx(h.fake.requests[2].at, abs=1.0)
        assert len(h.fake.token_requests) == 2
        jobs = sorted(await push_jobs(h), key=lambda j: j.created_at)
        assert jobs[1].attempts == 1 and jobs[1].status in ("running", "succeeded")


async def test_one_token_refresh_for_many_concurrent_sends(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        tokens = [f"tok-{i}" for i in range(40)]
        for token in tokens:
            await h.device("bob", token)
        await h.server("POST", "/push", {"tokens": tokens, "title": "all at once"})
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 40)
        assert len(h.fake.token_requests) == 1
        assert {r.target for r in h.fake.delivered} == set(tokens)


# -- devices and topics --------------------------------------------------------------------------


async def test_devices_register_move_list_and_delete(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        answer = await h.client("alice", "POST", "/devices", {"token": "tok-1", "platform": "ios", "app_version": "2.1"})
        assert answer["device"]["platform"] == "ios" and answer["device"]["active"] is True
        bad = await h.client("alice", "POST", "/devices", {"token": "tok-2", "platform": "symbian"}, status=400)
        assert bad["error"]["code"] == "VALIDATION_ERROR" and "platform" in bad["error"]["message"]
        # The token moves to bob: alice no longer has it.
        await h.client("bob", "POST", "/devices", {"token": "tok-1", "platform": "ios"})
        assert (await h.client("alice", "GET", "/devices")) == {"devices": []}
        assert [d["token"] for d in (await h.client("bob", "GET", "/devices"))["devices"]] == ["tok-1"]
        missing = await h.client("alice", "DELETE", "/devices/tok-1", status=404)
        assert missing["error"]["code"] == "NOT_FOUND"
        assert await h.client("bob", "DELETE", "/devices/tok-1") == {}
        assert (await h.client("bob", "GET", "/devices")) == {"devices": []}


async def test_topics_subscribe_push_and_unsubscribe(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        await h.device("alice", "tok-1")
        h.fake.unregister("tok-gone")
        answer = await h.server("POST", "/topics/news/subscribe", {"tokens": ["tok-1", "tok-gone", "bad:x"]})
        assert answer == {"results": [
            {"token": "tok-1", "ok": True},
            {"token": "tok-gone", "ok": False, "error": "NOT_FOUND"},
            {"token": "bad:x", "ok": False, "error": "INVALID_ARGUMENT"},
        ]}
        assert h.fake.topics["news"] == {"tok-1"}
        assert (await h.store.get_device("tok-1")).topics == ("news",)
        assert await h.server("POST", "/push", {"topic": "news", "title": "Breaking", "data": {"id": 7}}) == {"queued": 1}
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        sent = h.fake.delivered[0]
        assert sent.target == "/topics/news" and sent.message["data"] == {"id": "7"}
        await h.server("POST", "/topics/news/unsubscribe", {"tokens": ["tok-1"]})
        assert h.fake.topics["news"] == set()
        assert (await h.store.get_device("tok-1")).topics == ()
        bad = await h.server("POST", "/topics/no%20spaces/subscribe", {"tokens": ["tok-1"]}, status=400)
        assert bad["error"]["code"] == "VALIDATION_ERROR"


async def test_push_api_validation(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        both = await h.server("POST", "/push", {"tokens": ["a"], "topic": "t", "title": "x"}, status=400)
        assert "exactly one" in both["error"]["message"]
        reserved = await h.server("POST", "/push", {"tokens": ["a"], "data": {"google.x": "1"}}, status=400)
        assert "reserved" in reserved["error"]["message"]
        # Platform options are merged into the message FCM gets.
        await h.server("POST", "/push", {
            "tokens": ["tok-9"], "title": "t", "body": "b",
            "android": {"priority": "HIGH", "notification": {"channel_id": "promo"}},
            "apns": {"payload": {"aps": {"badge": 5}}},
            "webpush": {"fcm_options": {"link": "https://app.example/x"}},
        })
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 1)
        message = h.fake.delivered[0].message
        assert message["android"]["priority"] == "HIGH"
        assert message["android"]["notification"]["channel_id"] == "promo"
        assert message["apns"]["payload"]["aps"]["badge"] == 5
        assert message["webpush"]["fcm_options"] == {"link": "https://app.example/x"}


# -- pure pieces ---------------------------------------------------------------------------------


def test_classify_reads_the_fcm_error_code_not_only_the_status() -> None:
    def kind(name: str, retry_after: float | None = None) -> FcmResult:
        return classify(fcm_error(name)["error"]["code"], fcm_error(name), retry_after)

    assert kind("UNREGISTERED").kind == "unregistered" and kind("UNREGISTERED").deactivate
    assert kind("INVALID_TOKEN").kind == "invalid_token" and kind("INVALID_TOKEN").deactivate
    assert kind("INVALID_ARGUMENT").kind == "bad_payload" and not kind("INVALID_ARGUMENT").deactivate
    assert kind("SENDER_ID_MISMATCH").alarm and kind("THIRD_PARTY_AUTH_ERROR").alarm
    assert kind("QUOTA_EXCEEDED", 7.0).retry and kind("QUOTA_EXCEEDED", 7.0).retry_after == 7.0
    assert kind("UNAVAILABLE").retry and kind("INTERNAL").retry
    # 401 with THIRD_PARTY_AUTH_ERROR is not a refused access token; 401 without a code is.
    assert classify(401, {"error": {"status": "UNAUTHENTICATED"}}).kind == "unauthenticated"
    # The status alone, when FCM gives no code.
    assert classify(502, {}).kind == "internal" and classify(429, {}).kind == "quota"
    assert classify(200, {"name": "projects/p/messages/1"}).name == "projects/p/messages/1"


def test_retry_after_header_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Mon, 02 Mar 2026 09:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Mon, 02 Mar 2026 08:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
    assert now + timedelta(seconds=1) > now


def test_message_builder_and_checks() -> None:
    message = build_message(
        title="T", body="B", data={"n": 1, "s": "x", "o": {"a": [1]}}, priority="critical", collapse_key="g:1",
        channel_id="chat", ttl_s=90.5, badge=3, link="https://app.example/n/1",
    )
    assert message["data"] == {"n": "1", "s": "x", "o": '{"a":[1]}'}
    assert message["android"] == {
        "priority": "HIGH", "ttl": "90.5s", "collapse_key": "g:1",
        "notification": {"channel_id": "chat", "sound": "default", "tag": "g:1"},
    }
    assert message["apns"]["headers"] == {"apns-priority": "10", "apns-collapse-id": "g:1"}
    assert message["apns"]["payload"]["aps"] == {"badge": 3, "sound": "default", "interruption-level": "time-sensitive"}
    assert message["webpush"]["headers"] == {"Urgency": "high", "TTL": "90"}
    low = build_message(title="T", body="", priority="low")
    assert low["android"]["priority"] == "NORMAL" and low["apns"]["headers"]["apns-priority"] == "5"
    assert low["notification"] == {"title": "T"}
    assert check_message(message) is None
    big = build_message(title="T", body="x" * MAX_PAYLOAD_BYTES)
    assert payload_size(big) > MAX_PAYLOAD_BYTES
    problem = check_message(big)
    assert problem is not None and str(MAX_PAYLOAD_BYTES) in problem
    assert "2048" in (check_message(build_message(title="T", body="x" * 2100), to_topic=True) or "")
    assert "reserved" in (check_message({"data": {"from": "x"}}) or "")
    assert payload_size({"token": "t" * 5000, "data": {}}) == len(orjson.dumps({"data": {}}))
