"""End to end: the server API notifies, sockets hear it, the fake FCM gets the pushes;
and chat's ``chat.offline`` job pushes messages to offline participants.

Sockets are the third-party ``websockets`` client on real time, as a client
written against docs/protocol.md would connect.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

from realtimed.metrics import REGISTRY
from realtimed.store.base import JobSpec
from tests import notify_support
from tests.fixtures.clients import WsClient
from tests.notify_support import Harness, following, jwt_at

HarnessFactory = Any
# The shared fixtures (assigned, so that tests may name them as parameters).
harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def connect(h: Harness, user: str) -> WsClient:
    client = await WsClient.connect(h.ws_url, token=jwt_at(user, h.clock.now()))
    ready = await client.event("session.ready")
    assert ready["data"]["user_id"] == user
    return client


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The store section: the test runs on both stores (PostgreSQL: a fresh database)."""
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


async def test_server_api_notifies_three_users_end_to_end(harness_factory: HarnessFactory, backend: dict[str, Any]) -> None:
    """One online on two devices, one offline with two tokens (one gone at FCM),
    one with push off for the type."""
    with trio.fail_after(60):
        h: Harness = await harness_factory(backend)
        await h.device("ann", "tok-ann-phone")  # online: her push is skipped
        await h.device("bob", "tok-bob-phone", "ios")
        await h.device("bob", "tok-bob-old", "android")
        h.fake.unregister("tok-bob-old")
        await h.device("cy", "tok-cy-phone")
        await h.client("cy", "PUT", "/notifications/preferences", {"types": [{"type": "post_comment", "push": False}]})
        phone, laptop = await connect(h, "ann"), await connect(h, "ann")

        queued = await h.notify(
            ["ann", "bob", "cy"],
            "post_comment",
            {"commenter_name": "Dee", "comment": "Nice shot!", "post_id": "p9"},
            data={"link": "https://app.example/p/9"},
        )
        assert queued == 3
        for socket in (phone, laptop):
            event = await socket.event("notification.new")
            assert event["seq"] == 1
            note = event["data"]["notification"]
            assert (note["type"], note["title"], note["body"]) == ("post_comment", "New comment", "Dee: Nice shot!")
            assert note["data"] == {"link": "https://app.example/p/9"} and note["read_at"] is None
        await h.fake.wait_for(lambda: len(h.fake.requests) == 2)
        await trio.sleep(1.0)  # nothing more comes: no retry of the gone token, no push to ann or cy
        assert sorted((r.target, r.status) for r in h.fake.requests) == [("tok-bob-old", 404), ("tok-bob-phone", 200)]
        push = h.fake.delivered[0].message
        assert push["notification"] == {"title": "New comment", "body": "Dee: Nice shot!"}
        assert push["data"]["link"] == "https://app.example/p/9" and push["data"]["seq"] == "1"
        assert push["apns"]["payload"]["aps"]["badge"] == 1
        assert push["webpush"]["fcm_options"] == {"link": "https://app.example/p/9"}
        assert (await h.store.get_device("tok-bob-old")).active is False
        assert (await h.store.get_device("tok-bob-phone")).active is True
        # Everyone has it in the inbox, push or not.
        for user in ("ann", "bob", "cy"):
            assert (await h.client(user, "GET", "/notifications/unread-count")) == {"unread_count": 1}
        await phone.close()
        await laptop.close()


async def test_inbox_over_the_socket_and_rest_syncs_every_device(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        phone, laptop = await connect(h, "bob"), await connect(h, "bob")
        for i in range(3):
            await h.notify(["bob"], "mention", {"mentioner_name": f"u{i}", "excerpt": "hi"})
        seqs = [(await laptop.event("notification.new"))["seq"] for _ in range(3)]
        assert seqs == [1, 2, 3]
        page = await phone.ok("notification.list", {"limit": 2})
        assert [n["seq"] for n in page["notifications"]] == [3, 2] and page["next_cursor"]
        rest = await phone.ok("notification.list", {"cursor": page["next_cursor"]})
        assert [n["seq"] for n in rest["notifications"]] == [1] and rest["next_cursor"] is None
        missed = await phone.ok("notification.list", {"after_seq": 1})
        assert [n["seq"] for n in missed["notifications"]] == [2, 3]
        ids = {n["seq"]: n["id"] for n in page["notifications"] + rest["notifications"]}

        # Read state syncs to every device, the one that read included.
        assert await phone.ok("notification.read", {"ids": [ids[1]]}) == {"unread_count": 2}
        for socket in (phone, laptop):
            assert (await socket.event("notification.read"))["data"] == {"ids": [ids[1]], "unread_count": 2}
        assert await phone.ok("notification.delete", {"ids": [ids[2]]}) == {"unread_count": 1}
        for socket in (phone, laptop):
            assert (await socket.event("notification.deleted"))["data"] == {"ids": [ids[2]], "unread_count": 1}
        unread = await h.client("bob", "GET", "/notifications?unread_only=true")
        assert [n["seq"] for n in unread["notifications"]] == [3]
        assert await h.client("bob", "POST", "/notifications/read-all") == {"unread_count": 0}
        for socket in (phone, laptop):
            assert (await socket.event("notification.read"))["data"] == {"up_to_seq": 3, "unread_count": 0}
        bad = await h.client("bob", "GET", "/notifications?after_seq=x", status=400)
        assert bad["error"]["code"] == "VALIDATION_ERROR"
        # A device that reconnects learns the unread count and fetches what it missed.
        await laptop.close()
        await h.notify(["bob"], "mention", {"mentioner_name": "z", "excerpt": "again"})
        assert (await phone.event("notification.new"))["seq"] == 4
        fresh = await WsClient.connect(h.ws_url, token=jwt_at("bob", h.clock.now()))
        assert (await fresh.event("session.ready"))["data"]["notifications_unread"] == 1
        missed = await fresh.ok("notification.list", {"after_seq": 3})
        assert [n["seq"] for n in missed["notifications"]] == [4]
        for socket in (phone, fresh):
            await socket.close()


# -- chat.offline --------------------------------------------------------------------------------


async def chat_setup(h: Harness) -> str:
    conversation = await h.client("alice", "POST", "/ops/conversation.open", {"user_id": "bob"})
    cid: str = conversation["conversation"]["id"]
    return cid


async def test_chat_message_to_an_offline_user_pushes_once_to_each_device(harness_factory: HarnessFactory) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        await h.device("bob", "tok-bob-phone", "ios")
        await h.device("bob", "tok-bob-tablet", "android")
        cid = await chat_setup(h)
        sent = await h.client("alice", "POST", "/ops/message.send", {"conversation_id": cid, "client_id": "k1", "body": "lunch?"})
        message = sent["message"]
        await h.fake.wait_for(lambda: len(h.fake.delivered) == 2)
        await trio.sleep(1.0)
        assert sorted(r.target for r in h.fake.requests) == ["tok-bob-phone", "tok-bob-tablet"]
        push = h.fake.delivered[0].message
        assert push["notification"] == {"title": "alice", "body": "lunch?"}
        assert push["data"] == {
            "type": "new_message", "conversation_id": cid, "message_id": message["id"], "seq": str(message["seq"]),
        }
        assert push["android"]["collapse_key"] == f"chat:{cid}"
        (job,) = await h.jobs("chat.offline")
        assert job.status == "succeeded" and job.payload["recipients"] == ["bob"]
        # A repeat of the same client_id is no new message and no new push.
        await h.client("alice", "POST", "/ops/message.send", {"conversation_id": cid, "client_id": "k1", "body": "lunch?"})
        await trio.sleep(0.5)
        assert len(h.fake.requests) == 2


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_chat_push_is_dropped_when_the_recipient_reads_first(
    harness_factory: HarnessFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        clock = following()
        h: Harness = await harness_factory({"jobs": {"poll_s": 300.0, "lease_s": 900.0}}, clock=clock)
        await h.device("bob", "tok-bob")
        cid = await chat_setup(h)

        # Read before the chat.offline job runs: it queues no push at all.
        member = await h.store.get_member(cid, "bob")
        assert member is not None
        message, _ = await h.store.append_message(
            conversation_id=cid, sender_id="alice", client_id="early", body="first", now=clock.now(),
            jobs=[JobSpec(queue="default", kind="chat.offline", payload={"conversation_id": cid, "recipients": ["bob"]},
                          run_at=clock.now() + timedelta(seconds=30))],
        )
        read = await h.client("bob", "POST", "/ops/message.read", {"conversation_id": cid, "seq": message.seq})
        assert read["read_seq"] == message.seq
        decided = metric("realtimed_notify_push_decisions_total", type="new_message", decision="read")
        await trio.sleep(31)
        await h.idle()
        (job,) = await h.jobs("chat.offline")
        assert job.status == "succeeded"
        assert await h.jobs("push.send") == []
        assert metric("realtimed_notify_push_decisions_total", type="new_message", decision="read") == decided + 1

        # Read after the push was queued (deferred by quiet hours) but before it is sent: nothing is sent.
        await h.client("bob", "PUT", "/notifications/preferences",
                       {"quiet_hours": {"start": "22:00", "end": "07:00"}, "time_zone": "America/New_York"})
        sent = await h.client("alice", "POST", "/ops/message.send", {"conversation_id": cid, "client_id": "k2", "body": "later"})
        while not await h.jobs("push.send"):
            await trio.sleep(0.1)
        (push,) = await h.jobs("push.send")
        assert push.status == "queued" and push.run_at > clock.now()
        await h.client("bob", "POST", "/ops/message.read", {"conversation_id": cid, "seq": sent["message"]["seq"]})
        skipped = metric("realtimed_push_skipped_total", reason="read")
        clock.advance(4 * 3600)
        await trio.sleep(301)
        await h.idle()
        assert h.fake.requests == []
        assert (await h.store.get_job(push.id)).status == "succeeded"
        assert metric("realtimed_push_skipped_total", reason="read") == skipped + 1
