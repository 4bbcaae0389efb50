"""The email channel against a real SMTP server (aiosmtpd, started by each test):
templates and escaping, List-Unsubscribe and the signed one-click route, addresses
(stored and verified, named per notification, bounced), preferences, an outage,
4xx and 5xx answers, STARTTLS and the bounded pool.

Timed paths (retries) run on Trio's MockClock with the daemon's wall clock following it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

from realtimed.clock import iso
from realtimed.email.service import outcome
from realtimed.email.smtp import SendResult
from realtimed.email.unsubscribe import Unsubscribe, sign, verify
from realtimed.store.base import JobRecord
from tests import notify_support
from tests.fixtures.daemon import merge
from tests.notify_support import START, Harness, following
from tests.smtp_server import SmtpServer

HarnessFactory = Any
# aiosmtpd warns about AUTH without STARTTLS, which is what implicit TLS looks like to it.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir

SECRET = "unsubscribe-secret-for-tests-0123456789"
COMMENT = {
    "name": "comment",
    "title": "{name} commented",
    "body": "{name}: {text}",
    "vars": ["name", "text"],
    "channels": ["in_app", "email"],
}
TEMPLATE = {
    "type": "comment",
    "subject": "New comment from {name}",
    "text": "{name} wrote: {text}",
    "html": "<p><b>{name}</b> wrote: {text}</p>",
}
MOCK_JOBS = {
    "jobs": {"poll_s": 300.0, "lease_s": 900.0, "queues": [{"name": "email", "concurrency": 8}]},
    # Few periodic timers: every jump of the mock clock costs its autojump threshold in real time.
    "metrics": {"loop_lag_interval_s": 60.0, "readiness_interval_s": 3600.0},
    "gateway": {"heartbeat_s": 3600.0},
}


# Polls in mock time: each wait of an idle loop is one autojump (0.25 s of real time).
POLL_S = 1.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.25)


@pytest.fixture
async def smtp(shm_dir: Path) -> AsyncIterator[SmtpServer]:
    server = SmtpServer(shm_dir / "smtp")
    await server.start()
    yield server
    await server.stop()


async def start(factory: HarnessFactory, smtp: SmtpServer, **email: Any) -> Harness:
    override = merge(
        MOCK_JOBS,
        {
            "notify": {"types": [COMMENT]},
            "email": smtp.config(**{"templates": [TEMPLATE], "backoff_base_s": 2.0, "max_attempts": 4, **email}),
        },
    )
    h: Harness = await factory(override, clock=following())
    return h


async def set_address(h: Harness, user: str, address: str, *, verified: bool = True) -> dict[str, Any]:
    answer: dict[str, Any] = await h.server("PUT", f"/users/{user}/email", {"address": address, "verified": verified})
    return answer


async def email_jobs(h: Harness) -> list[JobRecord]:
    return await h.jobs("email.send")


async def finished(h: Harness, count: int) -> list[JobRecord]:
    """The email.send jobs, once ``count`` of them are done for good."""
    while True:
        jobs = await email_jobs(h)
        if sum(1 for j in jobs if j.status in ("succeeded", "failed", "dead", "cancelled")) >= count:
            return jobs
        await trio.sleep(POLL_S)


async def email_log(h: Harness) -> set[tuple[str, str]]:
    """(user, outcome) of the delivery log's email entries."""
    deliveries = h.daemon.services.notify.deliveries
    assert deliveries is not None
    await deliveries.flush()
    page = await h.server("GET", "/deliveries?channel=email&limit=500")
    return {(e["user_id"], e["outcome"]) for e in page["deliveries"]}


def link_path(url: str) -> str:
    """The path of an unsubscribe link under the daemon (public_base_url ends in /rt)."""
    path = urlsplit(url).path
    assert path.startswith("/rt/email/unsubscribe/"), url
    return path.removeprefix("/rt")


async def test_delivered_email_has_rendered_parts_escaped_html_and_unsubscribe_headers(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        h = await start(harness_factory, smtp)
        record = await set_address(h, "bob", "Bob@Example.com")
        assert record["email"]["verified"] is True and record["email"]["bounced_at"] is None
        assert await h.notify(["bob"], "comment", {"name": "Ann & co", "text": "<script>alert(1)</script>"}) == 1
        [mail] = await smtp.wait_for(1)
        assert mail.recipients == ["Bob@Example.com"] and mail.sender == "notify@example.com"
        msg = mail.message
        assert msg["Subject"] == "New comment from Ann & co"
        assert msg["From"] == "Example <notify@example.com>" and msg["To"] == "Bob@Example.com"
        assert mail.text.strip() == "Ann & co wrote: <script>alert(1)</script>"
        # The template's markup stays; every value is escaped.
        assert "<p><b>Ann &amp; co</b> wrote: &lt;script&gt;alert(1)&lt;/script&gt;</p>" in mail.html
        assert "<script>" not in mail.html
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = str(msg["List-Unsubscribe"])
        assert unsubscribe.startswith("<https://links.example.com/rt/email/unsubscribe/") and unsubscribe.endswith(">")
        assert msg["Message-ID"].endswith("@example.com>")
        [job] = await finished(h, 1)
        assert job.status == "succeeded" and job.attempts == 1

        # The one-click route: GET shows a page, a tampered token is refused, POST unsubscribes the type.
        path = link_path(unsubscribe[1:-1])
        page = await h.http.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "comment" in page.text and 'name="List-Unsubscribe" value="One-Click"' in page.text
        token = path.rsplit("/", 1)[1]
        tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
        for bad in (tampered, path.replace(token, token.replace(".", "x.", 1))):
            refused = await h.http.post(bad, data={"List-Unsubscribe": "One-Click"})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["field"] == "token"
        missing = await h.http.post(path, data={})
        assert missing.status_code == 400 and missing.json()["error"]["field"] == "List-Unsubscribe"
        prefs = await h.client("bob", "GET", "/notifications/preferences")
        assert {t["type"]: t["email"] for t in prefs["types"]}["comment"] is True
        done = await h.http.post(path, data={"List-Unsubscribe": "One-Click"})
        assert done.status_code == 200 and "Unsubscribed" in done.text
        prefs = await h.client("bob", "GET", "/notifications/preferences")
        by_type = {t["type"]: t for t in prefs["types"]}
        assert by_type["comment"]["email"] is False and by_type["comment"]["in_app"] is True
        assert by_type["new_follower"]["email"] is True  # only the link's type

        # Preference off: in the inbox, not mailed.
        await h.notify(["bob"], "comment", {"name": "Ann", "text": "again"})
        await h.idle()
        assert len(smtp.messages) == 1 and len(await email_jobs(h)) == 1
        inbox = await h.client("bob", "GET", "/notifications")
        assert len(inbox["notifications"]) == 2

        # "All email" from the page turns every type off.
        everything = await h.http.post(path, data={"List-Unsubscribe": "One-Click", "scope": "all"})
        assert everything.status_code == 200
        prefs = await h.client("bob", "GET", "/notifications/preferences")
        assert all(t["email"] is False for t in prefs["types"])


async def test_addresses_verified_named_per_notification_and_bounced(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        h = await start(harness_factory, smtp)
        await set_address(h, "ann", "ann@example.com", verified=False)
        await set_address(h, "bob", "bob@example.com")
        # carl has no stored address; the notification names one for him (and one for ann).
        body = {"email": {"to": {"carl": "carl@example.org", "ann": "ann.work@example.org"}}}
        assert await h.notify(["ann", "bob", "carl", "dora"], "comment", {"name": "Z", "text": "hi"}, **body) == 4
        await finished(h, 3)
        await h.idle()
        got = sorted(r for m in smtp.messages for r in m.recipients)
        # ann's stored address is not verified: only the named one; dora has none: nothing.
        assert got == ["ann.work@example.org", "bob@example.com", "carl@example.org"]

        # A bounce for bob's address (any case): no more mail until it is set again.
        bounced = await h.server("POST", "/email/bounces", {"address": "BOB@example.com", "kind": "bounce", "reason": "550 5.1.1"})
        assert bounced == {"users": ["bob"]}
        stored = await h.server("GET", "/users/bob/email")
        assert stored["email"]["bounce_kind"] == "bounce" and stored["email"]["bounced_at"] is not None
        await h.notify(["bob"], "comment", {"name": "Z", "text": "two"})
        await h.idle()
        assert len(smtp.to("bob@example.com")) == 1
        await set_address(h, "bob", "bob@example.com")
        await h.notify(["bob"], "comment", {"name": "Z", "text": "three"})
        await smtp.wait_for(2, "bob@example.com")

        # A scheduled notification keeps the address it names until it runs.
        later = (START.replace(minute=30)).isoformat()
        await h.notify(["carl"], "comment", {"name": "Z", "text": "later"}, scheduled_for=later, email={"to": {"carl": "carl@example.net"}})
        await h.idle()
        assert not smtp.to("carl@example.net")
        h.clock.advance(1800)  # type: ignore[attr-defined]
        [later_mail] = await smtp.wait_for(1, "carl@example.net", poll_s=60)
        assert later_mail.text.strip() == "Z wrote: later"

        # Delete; then 404.
        assert await h.server("DELETE", "/users/bob/email") == {}
        await h.server("DELETE", "/users/bob/email", status=404)
        await h.server("GET", "/users/bob/email", status=404)

        # Hostile input: a clear error naming the field.
        for payload, field in (
            ({"address": "not an address", "verified": True}, "address"),
            ({"address": "a@b.co\r\nBcc: x@y.z", "verified": True}, "address"),
            ({"address": "a@example.com", "verified": "yes"}, "verified"),
            ({"address": "a" * 300 + "@example.com", "verified": True}, "address"),
        ):
            answer = await h.server("PUT", "/users/bob/email", payload, status=400)
            assert answer["error"]["field"] == field, answer
        answer = await h.server("POST", "/email/bounces", {"address": "x@example.com", "kind": "soft"}, status=400)
        assert answer["error"]["field"] == "kind"
        bad_to = {"user_ids": ["bob"], "type": "comment", "vars": {"name": "a", "text": "b"}}
        for extra, field in (
            ({"email": {"to": {"zed": "z@example.com"}}}, "email.to.zed"),
            ({"email": {"to": {"bob": "nope"}}}, "email.to.bob"),
            ({"email": {"cc": {}}}, "email"),
        ):
            answer = await h.server("POST", "/notifications", {**bad_to, **extra}, status=400)
            assert answer["error"]["field"] == field, answer
        answer = await h.server(
            "POST", "/notifications",
            {"user_ids": ["bob"], "type": "new_follower", "vars": {"follower_name": "x"}, "email": {"to": {"bob": "b@example.com"}}},
            status=400,
        )
        assert answer["error"]["field"] == "email"


async def test_outage_is_retried_and_nothing_is_lost(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600):
        h = await start(harness_factory, smtp, max_attempts=10)
        users = ["u1", "u2", "u3"]
        for user in users:
            await set_address(h, user, f"{user}@example.com")
        await smtp.stop()
        await h.notify(users, "comment", {"name": "Z", "text": "during the outage"})
        # Every email failed once (connection refused) and waits for its retry.
        while True:
            jobs = await email_jobs(h)
            if len(jobs) == 3 and all(j.attempts >= 1 and j.status == "queued" for j in jobs):
                break
            await trio.sleep(POLL_S)
        assert not smtp.messages
        assert all("connection failed" in (j.last_error or "") for j in jobs)
        await smtp.start()
        await smtp.wait_for(3)
        jobs = await finished(h, 3)
        assert all(j.status == "succeeded" and j.attempts >= 2 for j in jobs)
        await trio.sleep(30)  # past any further retry: each was mailed once
        assert sorted(r for m in smtp.messages for r in m.recipients) == [f"{u}@example.com" for u in users]


async def test_an_email_retried_past_the_notifications_expiry_is_never_mailed(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600):
        h = await start(harness_factory, smtp, max_attempts=10)
        events: list[tuple[str, dict[str, Any]]] = []

        async def capture(event: str, data: Any) -> None:
            events.append((event, dict(data)))

        h.daemon.services.email.event_sink = capture
        await set_address(h, "u1", "u1@example.com")
        await smtp.stop()
        expires = h.clock.now() + timedelta(seconds=20)
        await h.notify(["u1"], "comment", {"name": "Z", "text": "soon stale"}, expires_at=iso(expires))
        while not (jobs := await email_jobs(h)) or jobs[0].attempts < 1:
            await trio.sleep(POLL_S)
        assert jobs[0].payload["expires_at"] == iso(expires)
        while h.clock.now() < expires:
            await trio.sleep(POLL_S)
        await smtp.start()
        (job,) = await finished(h, 1)
        assert job.status == "succeeded"  # done with: nothing left to send
        await trio.sleep(30)
        assert not smtp.messages
        assert [(e, d["code"], d["user_id"]) for e, d in events] == [("delivery.failed", "skipped:expired", "u1")]
        assert await email_log(h) == {("u1", "skipped:expired")}


async def test_5xx_is_final_and_reported_4xx_is_retried(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600):
        h = await start(harness_factory, smtp)
        events: list[tuple[str, dict[str, Any]]] = []

        async def capture(event: str, data: Any) -> None:
            events.append((event, dict(data)))

        h.daemon.services.email.event_sink = capture
        await set_address(h, "gone", "gone@example.com")
        await set_address(h, "busy", "busy@example.com")
        smtp.refuse("gone@example.com", "550 5.1.1 no such user")
        smtp.refuse_data_once("busy@example.com", "451 4.3.0 try again later")
        await h.notify(["gone", "busy"], "comment", {"name": "Z", "text": "x"})
        await smtp.wait_for(1, "busy@example.com")
        jobs = {j.payload["to"]: j for j in await finished(h, 2)}
        gone, busy = jobs["gone@example.com"], jobs["busy@example.com"]
        assert gone.status == "failed" and gone.attempts == 1 and "550" in (gone.last_error or "")
        assert busy.status == "succeeded" and busy.attempts == 2
        assert [e for e, _ in events] == ["delivery.failed"]
        data = events[0][1]
        assert data["channel"] == "email" and data["code"] == "failed:smtp_550" and data["user_id"] == "gone"
        assert data["address"] == "gone@example.com" and data["job_id"] == gone.id
        await trio.sleep(30)  # past any retry (the backoff starts at 2 s)
        assert not smtp.to("gone@example.com") and len(smtp.to("busy@example.com")) == 1
        # The delivery log has each email's outcome, with the same code as the webhook.
        assert await email_log(h) == {("gone", "failed:smtp_550"), ("busy", "delivered")}


def test_outcome_codes() -> None:
    assert outcome(SendResult(250, "ok")).code == "delivered"
    assert (outcome(SendResult(550, "x")).code, outcome(SendResult(550, "x")).retry) == ("failed:smtp_550", False)
    assert (outcome(SendResult(421, "x")).code, outcome(SendResult(421, "x")).retry) == ("failed:smtp_421", True)
    assert outcome(SendResult(None, "refused")).code == "failed:smtp_unavailable"
    assert outcome(SendResult(None, "refused")).retry


def test_unsubscribe_tokens_are_signed_and_expire() -> None:
    now = START
    token = sign(SECRET, Unsubscribe("bob", "comment", int(now.timestamp()) + 60))
    assert verify(SECRET, token, now=now) == Unsubscribe("bob", "comment", int(now.timestamp()) + 60)
    assert verify("another-secret-another-secret-0000", token, now=now) == "invalid"
    _payload, sig = token.split(".")
    forged = sign(SECRET, Unsubscribe("eve", "comment", int(now.timestamp()) + 60)).split(".")[0]
    assert verify(SECRET, f"{forged}.{sig}", now=now) == "invalid"
    assert verify(SECRET, "garbage", now=now) == "invalid"
    assert verify(SECRET, "a.b.c", now=now) == "invalid"
    from datetime import timedelta

    assert verify(SECRET, token, now=now + timedelta(seconds=61)) == "expired"


async def test_starttls_and_a_bounded_reused_pool(
    harness_factory: HarnessFactory, shm_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        server = SmtpServer(shm_dir / "smtp-tls", tls=True)
        await server.start()
        try:
            h = await start(harness_factory, server, max_connections=2)
            users = [f"p{i}" for i in range(12)]
            for user in users:
                await set_address(h, user, f"{user}@example.com")
            pool = h.daemon.services.email.pool
            assert pool is not None
            await h.notify(users, "comment", {"name": "Z", "text": "tls"})
            await server.wait_for(12)
            assert sorted(r for m in server.messages for r in m.recipients) == sorted(f"{u}@example.com" for u in users)
            # At most two connections at once, and they were reused (12 emails, at most 2 connections opened).
            assert 1 <= pool.peak_open <= 2
            assert 1 <= len(server.sessions) <= 2 and pool.opened_total <= 2
        finally:
            await server.stop()


async def test_hourly_digest_mails_the_hours_unread_notifications_together(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600):
        h = await start(harness_factory, smtp)
        answer = await h.server(
            "PUT", "/users/dana/email", {"address": "dana@example.com", "verified": True, "digest": "hourly"}
        )
        assert answer["email"]["digest"] == "hourly"
        bad = await h.server("PUT", "/users/dana/email", {"address": "dana@example.com", "verified": True, "digest": "weekly"}, status=400)
        assert bad["error"]["field"] == "digest"
        # The wall clock starts at 09:00 UTC: this hour's window ends at 10:00.
        for text in ("one", "two <i>", "three"):
            await h.notify(["dana"], "comment", {"name": "Ann", "text": text})
        await h.notify(["dana"], "new_follower", {"follower_name": "Zed"})  # a type that does not mail
        await h.idle()
        assert not smtp.messages and not await email_jobs(h)
        assert len(await h.jobs("email.digest")) == 1  # one per user and window
        inbox = await h.client("dana", "GET", "/notifications")
        first = next(n for n in inbox["notifications"] if n["body"] == "Ann: one")
        await h.client("dana", "POST", f"/notifications/{first['id']}/read")
        h.clock.advance(3600)  # type: ignore[attr-defined]
        [mail] = await smtp.wait_for(1, poll_s=60)
        assert mail.message["Subject"] == "2 new notifications"
        lines = mail.text.strip().splitlines()
        assert sorted(lines) == ["- Ann commented: Ann: three", "- Ann commented: Ann: two <i>"]
        assert "Ann: two &lt;i&gt;" in mail.html and "<i>" not in mail.html
        assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # The link of a digest unsubscribes from all email.
        page = await h.http.get(link_path(str(mail.message["List-Unsubscribe"])[1:-1]))
        assert "all email" in page.text


async def test_implicit_tls_with_login_and_a_refused_login_is_final(
    harness_factory: HarnessFactory, shm_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        server = SmtpServer(shm_dir / "smtp-auth", implicit_tls=True, credentials=("realtimed", "s3cret"))
        await server.start()
        try:
            h = await start(harness_factory, server, idle_timeout_s=0.0)  # each email logs in anew
            events: list[tuple[str, dict[str, Any]]] = []

            async def capture(event: str, data: Any) -> None:
                events.append((event, dict(data)))

            h.daemon.services.email.event_sink = capture
            await set_address(h, "ann", "ann@example.com")
            await h.notify(["ann"], "comment", {"name": "Z", "text": "over TLS"})
            [mail] = await server.wait_for(1)
            assert mail.text.strip() == "Z wrote: over TLS"
            # The wrong password: the server's 535 is final.
            server.credentials = ("realtimed", "another")
            await h.notify(["ann"], "comment", {"name": "Z", "text": "refused"})
            jobs = await finished(h, 2)
            refused = next(j for j in jobs if j.status != "succeeded")
            assert refused.status == "failed" and refused.attempts == 1 and "535" in (refused.last_error or "")
            assert [(e, d["code"]) for e, d in events] == [("delivery.failed", "failed:smtp_535")]
            assert len(server.messages) == 1
        finally:
            await server.stop()


async def test_quiet_hours_hold_emails_and_reading_cancels_one(
    harness_factory: HarnessFactory, smtp: SmtpServer, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600):
        h = await start(harness_factory, smtp)
        await set_address(h, "eve", "eve@example.com")
        # 09:00 UTC is within eve's quiet hours: her emails wait for 12:00.
        await h.client(
            "eve", "PUT", "/notifications/preferences", {"quiet_hours": {"start": "08:00", "end": "12:00"}, "time_zone": "UTC"}
        )
        await h.notify(["eve"], "comment", {"name": "Z", "text": "first"})
        await h.notify(["eve"], "comment", {"name": "Z", "text": "second"})
        await h.idle()
        jobs = await email_jobs(h)
        assert len(jobs) == 2 and all(j.status == "queued" and j.run_at == START.replace(hour=12) for j in jobs)
        inbox = await h.client("eve", "GET", "/notifications")
        first = next(n for n in inbox["notifications"] if n["body"] == "Z: first")
        await h.client("eve", "POST", f"/notifications/{first['id']}/read")
        statuses = sorted(j.status for j in await email_jobs(h))
        assert statuses == ["cancelled", "queued"]
        h.clock.advance(3 * 3600)  # type: ignore[attr-defined]
        [mail] = await smtp.wait_for(1, poll_s=60)
        assert mail.text.strip() == "Z wrote: second"
        await trio.sleep(120)
        assert len(smtp.messages) == 1


def test_config_requires_what_email_needs(tmp_path: Path) -> None:
    from realtimed.config import ConfigError
    from tests.fixtures.daemon import make_config

    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, {
            "email": {
                "enabled": True, "from_address": "nobody", "unsubscribe_secret": "short", "username": "u",
                "public_base_url": "ftp://x", "digest_subject": "{count} new, {oops}",
                "templates": [
                    {"type": "no_such_type", "subject": "x"},
                    {"type": "post_like", "subject": "{liker_name} {nope}", "html": "<b>{"},
                ],
            },
        })
    keys = {key for key, _ in caught.value.problems}
    assert {
        "email.from_address", "email.unsubscribe_secret", "email.username", "email.public_base_url",
        "email.digest_subject", "email.templates[0].type", "email.templates[1].subject", "email.templates[1].html",
    } <= keys, keys


def test_message_headers_stay_one_line_and_encode_non_ascii() -> None:
    import email as email_package
    import email.policy

    from realtimed.config import EmailConfig
    from realtimed.email.message import Rendered, build_message, render_parts

    cfg = EmailConfig(enabled=True, from_address="Zoë Example <notify@example.com>")
    rendered = render_parts(
        title="t", body="b", values={"name": "x\r\nBcc: eve@example.com", "text": "ü"},
        template=None,
    )
    rendered = Rendered(subject="Grüße\r\nBcc: eve@example.com", text=rendered.text, html=rendered.html)
    raw = build_message(
        cfg, to="bob@example.com", rendered=rendered, unsubscribe_url="https://x.example/u/" + "a" * 300,
        message_id="<1@example.com>",
    ).as_bytes()
    assert b"\nBcc:" not in raw and raw.isascii()
    parsed = email_package.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße Bcc: eve@example.com"
    assert parsed["From"].addresses[0].display_name == "Zoë Example"
    assert str(parsed["List-Unsubscribe"]) == "<https://x.example/u/" + "a" * 300 + ">"


def test_plan_payloads_carry_named_addresses_and_refuse_bad_ones() -> None:
    from realtimed.jobs.payload import PayloadError
    from realtimed.notify.jobs import NOTIFY_PUSH, NOTIFY_SEND, NotifyPlan, NotifySend, PlanItem

    send = NotifySend(user_ids=("a", "b"), type="comment", addresses={"b": {"email": "b@example.com"}})
    assert NOTIFY_SEND.decode(NOTIFY_SEND.encode(send)) == send
    assert "addresses" not in NOTIFY_SEND.encode(NotifySend(user_ids=("a",), type="comment"))  # the earlier shape
    plan = NotifyPlan(type="comment", items=(PlanItem("b", None, None, ("email",)),), addresses={"b": {"email": "b@x.io"}})
    assert NOTIFY_PUSH.decode(NOTIFY_PUSH.encode(plan)) == plan
    for bad in ({"b": "b@x.io"}, ["b"], {"b": {"email": 1}}):
        with pytest.raises(PayloadError):
            NOTIFY_SEND.decode({**NOTIFY_SEND.encode(send), "addresses": bad})
