"""Typing indicators on Trio's MockClock with the in-process trio-websocket client."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.fixtures.daemon import DaemonFactory
from tests.test_presence import TrioClient, start_paused

CHAT = {"chat": {"typing_timeout_s": 6.0, "typing_per_s": 2.0}, "presence": {"away_after_s": 3600.0}}


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_typing_reaches_the_others_and_ends_by_itself(
    start_daemon: DaemonFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_paused(start_daemon, autojump_clock, CHAT)
        a1 = await TrioClient.connect(nursery, daemon, "alice")
        a2 = await TrioClient.connect(nursery, daemon, "alice")
        b1 = await TrioClient.connect(nursery, daemon, "bob")
        cid = (await a1.ok("conversation.create", {"member_ids": ["bob", "carol"]}))["conversation"]["id"]

        await a1.send("typing.start", {"conversation_id": cid})
        started = trio.current_time()
        typing = await b1.event("typing.updated")
        assert typing["room"] == f"conversation:{cid}"
        assert typing["data"] == {"conversation_id": cid, "user_id": "alice", "typing": True}
        ended = await b1.event("typing.updated")
        assert ended["data"]["typing"] is False
        assert 5.9 <= trio.current_time() - started <= 6.5
        # Never to the typing user's own devices.
        assert await a2.events_within("typing.updated", 0.1) == []
        assert await a1.events_within("typing.updated", 0.1) == []

        # Refreshes keep it going, without new events; the timeout counts from the last one.
        await a1.send("typing.start", {"conversation_id": cid})
        assert (await b1.event("typing.updated"))["data"]["typing"] is True
        for _ in range(3):
            await trio.sleep(4)
            await a2.send("typing.start", {"conversation_id": cid})
        refreshed = trio.current_time()
        assert (await b1.event("typing.updated"))["data"]["typing"] is False
        assert 5.9 <= trio.current_time() - refreshed <= 6.5
        assert await b1.events_within("typing.updated", 10) == []

        # A stop, a message, or the last device going away ends it at once.
        await a1.send("typing.start", {"conversation_id": cid})
        assert (await b1.event("typing.updated"))["data"]["typing"] is True
        await trio.sleep(1)
        await a1.send("typing.stop", {"conversation_id": cid})
        assert (await b1.event("typing.updated"))["data"]["typing"] is False
        await trio.sleep(1)
        await b1.send("typing.start", {"conversation_id": cid})
        assert (await a1.event("typing.updated"))["data"]["user_id"] == "bob"
        assert (await a2.event("typing.updated"))["data"]["user_id"] == "bob"
        await b1.ok("message.send", {"conversation_id": cid, "client_id": "k", "body": "done"})
        assert (await a1.event("typing.updated"))["data"]["typing"] is False
        await trio.sleep(1)
        await b1.send("typing.start", {"conversation_id": cid})
        assert (await a1.event("typing.updated"))["data"]["typing"] is True
        await b1.close()
        closed = trio.current_time()
        assert (await a1.event("typing.updated"))["data"]["typing"] is False
        assert trio.current_time() - closed < 1
        await a1.close()
        await a2.close()


async def test_typing_is_rate_limited_per_user_and_conversation(
    start_daemon: DaemonFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_paused(start_daemon, autojump_clock, CHAT)
        alice = await TrioClient.connect(nursery, daemon, "alice")
        bob = await TrioClient.connect(nursery, daemon, "bob")
        one = (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]["id"]
        two = (await alice.ok("conversation.create", {"member_ids": ["bob"]}))["conversation"]["id"]
        await alice.ok("typing.start", {"conversation_id": one})
        await alice.ok("typing.stop", {"conversation_id": one})
        limited = await alice.request("typing.start", {"conversation_id": one})
        assert limited["error"]["code"] == "RATE_LIMITED"
        assert 0 < limited["error"]["retry_after_ms"] <= 500
        # Another conversation has its own budget.
        assert await alice.ok("typing.start", {"conversation_id": two}) == {}
        got = await bob.events_within("typing.updated", 1.0)
        assert [(e["data"]["conversation_id"], e["data"]["typing"]) for e in got] == [(one, True), (one, False), (two, True)]
        await trio.sleep(0.5)
        assert await alice.ok("typing.start", {"conversation_id": one}) == {}
        # Fire-and-forget typing over its budget is dropped silently; a bad one too.
        for _ in range(5):
            await alice.send("typing.stop", {"conversation_id": one})
        await alice.send("typing.start", {"conversation_id": 5})
        pong = await alice.ok("ping")
        assert "server_time" in pong
        await alice.close()
        await bob.close()
