"""Chat end to end over real sockets (the ``websockets`` client), REST and the server API.

Two users and three devices: alice on two sockets, bob on one, unless a test
says otherwise. Every assertion is about what a client written against
docs/protocol.md sees, or about what the store kept.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory, merge
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The store section of the daemon's configuration: each test runs on both stores."""
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


async def connect(daemon: Daemon, user: str) -> WsClient:
    client = await WsClient.connect(ws_url(daemon), token=token(user))
    ready = await client.event("session.ready")
    assert ready["data"]["user_id"] == user
    client.ready = ready["data"]  # type: ignore[attr-defined]
    return client


async def error(client: WsClient, op: str, data: dict[str, Any]) -> dict[str, Any]:
    reply = await client.request(op, data)
    assert reply["ok"] is False, reply
    result: dict[str, Any] = reply["error"]
    return result


def user_http(daemon: Daemon, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=daemon.url(), headers={"Authorization": f"Bearer {token(user)}"}, timeout=10)


def server_http(daemon: Daemon) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=daemon.url(), headers=SERVER, timeout=10)


async def three_devices(daemon: Daemon) -> tuple[WsClient, WsClient, WsClient, str]:
    """alice on a1 and a2, bob on b1, and their 1:1 conversation (opened by a1)."""
    a1 = await connect(daemon, "alice")
    a2 = await connect(daemon, "alice")
    b1 = await connect(daemon, "bob")
    opened = await a1.ok("conversation.open", {"user_id": "bob"})
    conv = opened["conversation"]
    assert conv["type"] == "direct"
    assert sorted(m["user_id"] for m in conv["members"]) == ["alice", "bob"]
    assert (conv["unread_count"], conv["muted"], conv["read_seq"]) == (0, False, 0)
    for device in (a1, a2, b1):
        updated = await device.event("conversation.updated")
        assert updated["room"] == f"conversation:{conv['id']}"
        assert updated["data"]["conversation"]["id"] == conv["id"]
        assert "unread_count" not in updated["data"]["conversation"]
    return a1, a2, b1, conv["id"]


async def send(client: WsClient, cid: str, client_id: str, body: str = "hi", **extra: Any) -> dict[str, Any]:
    reply = await client.ok("message.send", {"conversation_id": cid, "client_id": client_id, "body": body, **extra})
    message: dict[str, Any] = reply["message"]
    return message


async def stored_jobs(daemon: Daemon) -> list[Any]:
    jobs, _ = await daemon.services.store.list_jobs(kind="chat.offline", limit=100)
    return list(jobs)


# -- messages ------------------------------------------------------------------------------------


async def test_send_resend_edit_delete_reach_every_device(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(backend)
        a1, a2, b1, cid = await three_devices(daemon)

        reply = await a1.request("message.send", {"conversation_id": cid, "client_id": "k-1", "body": "hello"})
        assert reply["ok"] is True
        message = reply["data"]["message"]
        assert (message["seq"], message["sender_id"], message["body"], message["type"]) == (1, "alice", "hello", "text")
        assert message["deleted"] is False and message["created_at"].endswith("Z")
        # The reply comes before the sending socket's own message.new.
        assert not any(e["event"] == "message.new" for e in a1.events)
        stored = await daemon.services.store.get_message(message["id"])
        assert stored is not None and stored.body == "hello"
        for device in (a1, a2, b1):
            new = await device.event("message.new")
            assert new["room"] == f"conversation:{cid}"
            assert new["seq"] == 1
            assert new["data"]["message"] == message

        again = await send(a1, cid, "k-1", "hello")
        assert again == message
        for device in (a1, a2, b1):
            await device.no_event("message.new", wait=0.2)
        conflict = await error(a1, "message.send", {"conversation_id": cid, "client_id": "k-1", "body": "other"})
        assert conflict["code"] == "CONFLICT"

        edited = (await a2.ok("message.edit", {"message_id": message["id"], "body": "hello!"}))["message"]
        assert edited["body"] == "hello!" and edited["edited_at"] is not None and edited["seq"] == 1
        assert edited["version"] > message["version"]
        for device in (a1, a2, b1):
            assert (await device.event("message.updated"))["data"]["message"] == edited
        assert (await error(b1, "message.edit", {"message_id": message["id"], "body": "mine"}))["code"] == "FORBIDDEN"
        assert (await error(b1, "message.delete", {"message_id": message["id"]}))["code"] == "FORBIDDEN"
        empty = await error(a1, "message.edit", {"message_id": message["id"], "body": ""})
        assert empty["code"] == "VALIDATION_ERROR" and "body" in empty["message"]

        assert await a1.ok("message.delete", {"message_id": message["id"]}) == {}
        for device in (a1, a2, b1):
            gone = (await device.event("message.deleted"))["data"]["message"]
            assert gone["deleted"] is True and gone["body"] == "" and gone["seq"] == 1
            assert gone["version"] > edited["version"]
        assert (await error(a1, "message.edit", {"message_id": message["id"], "body": "back"}))["code"] == "CONFLICT"
        assert await a1.ok("message.delete", {"message_id": message["id"]}) == {}  # again: nothing new
        await b1.no_event("message.deleted", wait=0.2)

        # A message with media may be sent, and edited, with an empty body.
        media = await send(a1, cid, "k-2", "", media_url="https://cdn.example/p.jpg", type="image")
        assert media["seq"] == 2 and media["type"] == "image"
        assert (await a1.ok("message.edit", {"message_id": media["id"], "body": ""}))["message"]["body"] == ""
        for client in (a1, a2, b1):
            await client.close()


async def test_history_paging_changes_since_and_missed_messages(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(40):
        daemon = await start_daemon(backend)
        a1, a2, b1, cid = await three_devices(daemon)
        sent = [await send(a1, cid, f"k-{i}", f"m{i}") for i in range(1, 8)]
        assert [m["seq"] for m in sent] == list(range(1, 8))

        newest = await b1.ok("message.history", {"conversation_id": cid, "limit": 3})
        assert [m["seq"] for m in newest["messages"]] == [5, 6, 7] and newest["has_more"] is True
        older = await b1.ok("message.history", {"conversation_id": cid, "before_seq": 5, "limit": 3})
        assert [m["seq"] for m in older["messages"]] == [2, 3, 4] and older["has_more"] is True
        oldest = await b1.ok("message.history", {"conversation_id": cid, "before_seq": 2, "limit": 3})
        assert [m["seq"] for m in oldest["messages"]] == [1] and oldest["has_more"] is False
        after = await b1.ok("message.history", {"conversation_id": cid, "after_seq": 5})
        assert [m["seq"] for m in after["messages"]] == [6, 7] and after["has_more"] is False
        version = after["version"]

        await a1.ok("message.edit", {"message_id": sent[1]["id"], "body": "m2 edited"})
        await a1.ok("message.delete", {"message_id": sent[3]["id"]})
        changed = await b1.ok("message.history", {"conversation_id": cid, "changed_since": version})
        assert [(m["seq"], m["body"], m["deleted"]) for m in changed["messages"]] == [(2, "m2 edited", False), (4, "", True)]
        assert changed["version"] == version + 2
        too_many = await error(b1, "message.history", {"conversation_id": cid, "limit": 101})
        assert too_many["code"] == "VALIDATION_ERROR" and "limit" in too_many["message"]
        both = await error(b1, "message.history", {"conversation_id": cid, "after_seq": 1, "before_seq": 5})
        assert both["code"] == "VALIDATION_ERROR"

        # bob goes away; what alice sends meanwhile is exactly what after_seq returns.
        last_seen_seq = 7
        await b1.close()
        missed = [await send(a2, cid, f"late-{i}", f"late {i}") for i in range(3)]
        b2 = await connect(daemon, "bob")
        caught_up = await b2.ok("message.history", {"conversation_id": cid, "after_seq": last_seen_seq})
        assert caught_up["messages"] == missed and caught_up["has_more"] is False
        for client in (a1, a2, b2):
            await client.close()


async def test_receipts_unread_counts_and_conversation_state(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(40):
        daemon = await start_daemon(backend)
        a1, a2, b1, cid = await three_devices(daemon)
        b2 = await connect(daemon, "bob")
        for i in range(1, 4):
            await send(a1, cid, f"k-{i}", f"m{i}")
        listed = await b1.ok("conversation.list")
        assert listed["unread_total"] == 3 and listed["next_cursor"] is None
        (conv,) = listed["conversations"]
        assert (conv["id"], conv["unread_count"], conv["read_seq"], conv["last_seq"]) == (cid, 3, 0, 3)
        assert conv["last_message"]["body"] == "m3"
        # The sender's own messages are not unread for her.
        assert (await a1.ok("conversation.list"))["conversations"][0]["unread_count"] == 0

        assert await b1.ok("message.read", {"conversation_id": cid, "seq": 2}) == {"read_seq": 2}
        for device in (a1, a2, b1, b2):
            receipt = await device.event("receipt.updated")
            assert receipt["room"] == f"conversation:{cid}"
            assert {k: receipt["data"][k] for k in ("conversation_id", "user_id", "read_seq")} == {
                "conversation_id": cid, "user_id": "bob", "read_seq": 2,
            }
            assert receipt["data"]["read_at"].endswith("Z")
        state = (await b2.event("conversation.state"))["data"]
        assert state == {"conversation_id": cid, "read_seq": 2, "unread_count": 1, "muted": False, "unread_total": 1}
        assert (await b1.event("conversation.state"))["data"] == state
        await a1.no_event("conversation.state", wait=0.2)

        # Cursors only move forward.
        assert await b1.ok("message.read", {"conversation_id": cid, "seq": 1}) == {"read_seq": 2}
        await b2.no_event("receipt.updated", wait=0.2)

        # Deleting the one unread message takes it off bob's count.
        third = (await b1.ok("message.history", {"conversation_id": cid, "after_seq": 2}))["messages"][0]
        await a1.ok("message.delete", {"message_id": third["id"]})
        state = (await b2.event("conversation.state"))["data"]
        assert (state["unread_count"], state["unread_total"]) == (0, 0)

        # Mute: the count stays per conversation, the total leaves it out.
        await send(a1, cid, "k-4", "m4")
        assert await b1.ok("conversation.mute", {"conversation_id": cid, "muted": True}) == {}
        state = (await b2.event("conversation.state"))["data"]
        assert (state["muted"], state["unread_count"], state["unread_total"]) == (True, 1, 0)
        listed = await b2.ok("conversation.list")
        assert listed["unread_total"] == 0 and listed["conversations"][0]["muted"] is True
        await b1.ok("conversation.mute", {"conversation_id": cid, "muted": False})
        b3 = await connect(daemon, "bob")
        assert b3.ready["unread_total"] == 1  # type: ignore[attr-defined]
        # Reading past the end lands on the last message.
        assert await b3.ok("message.read", {"conversation_id": cid, "seq": 99}) == {"read_seq": 4}
        for client in (a1, a2, b1, b2, b3):
            await client.close()


async def test_leave_group_and_rejoin_by_server_api(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(backend)
        alice = await connect(daemon, "alice")
        bob = await connect(daemon, "bob")
        carol = await connect(daemon, "carol")
        created = (await alice.ok("conversation.create", {"member_ids": ["bob", "carol", "bob"], "title": "trip"}))["conversation"]
        cid = created["id"]
        assert created["type"] == "group" and created["title"] == "trip"
        roles = {m["user_id"]: m["role"] for m in created["members"]}
        assert roles == {"alice": "owner", "bob": "member", "carol": "member"}
        for client in (alice, bob, carol):
            assert (await client.event("conversation.updated"))["data"]["conversation"]["id"] == cid
        await send(alice, cid, "k-1")
        assert (await carol.ok("conversation.list"))["unread_total"] == 1

        assert await carol.ok("conversation.leave", {"conversation_id": cid}) == {}
        for client in (alice, bob, carol):
            members = (await client.event("conversation.updated"))["data"]["conversation"]["members"]
            assert sorted(m["user_id"] for m in members) == ["alice", "bob"]
        state = (await carol.event("conversation.state"))["data"]
        assert (state["unread_count"], state["unread_total"]) == (0, 0)
        listed = await carol.ok("conversation.list")
        assert listed["conversations"] == [] and listed["unread_total"] == 0
        for op, data in (
            ("message.send", {"conversation_id": cid, "client_id": "c", "body": "x"}),
            ("message.history", {"conversation_id": cid}),
            ("message.read", {"conversation_id": cid, "seq": 1}),
        ):
            assert (await error(carol, op, data))["code"] == "FORBIDDEN", op
        await send(alice, cid, "k-2")
        await carol.no_event("message.new", wait=0.2)

        async with server_http(daemon) as http:
            answer = await http.post(f"/server/v1/conversations/{cid}/members", json={"user_ids": ["carol", "dave"]})
            assert answer.status_code == 200, answer.text
            members = sorted(m["user_id"] for m in answer.json()["conversation"]["members"])
            assert members == ["alice", "bob", "carol", "dave"]
        assert (await carol.event("conversation.updated"))["data"]["conversation"]["id"] == cid
        # A returning member starts with everything read.
        assert (await carol.ok("conversation.list"))["unread_total"] == 0
        for client in (alice, bob, carol):
            await client.close()


async def test_hidden_direct_conversation_comes_back_with_a_message(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(backend)
        a1, a2, b1, cid = await three_devices(daemon)
        await send(a1, cid, "k-1")
        assert await b1.ok("conversation.leave", {"conversation_id": cid}) == {}
        assert (await b1.event("conversation.updated"))["data"]["conversation"]["id"] == cid
        await a1.no_event("conversation.updated", wait=0.2)  # hiding is bob's own business
        assert (await b1.ok("conversation.list"))["conversations"] == []
        # bob still may read it; a new message shows it again for him.
        assert len((await b1.ok("message.history", {"conversation_id": cid}))["messages"]) == 1
        await send(a2, cid, "k-2")
        assert (await b1.event("message.new"))["seq"] == 2
        (conv,) = (await b1.ok("conversation.list"))["conversations"]
        assert conv["id"] == cid and conv["unread_count"] == 1
        for client in (a1, a2, b1):
            await client.close()


# -- blocks and the open policy ------------------------------------------------------------------


async def test_blocked_user_cannot_open_or_send(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(backend)
        a1, a2, b1, cid = await three_devices(daemon)
        await send(a1, cid, "k-1")
        assert await b1.ok("user.block", {"user_id": "alice"}) == {}
        assert (await error(a1, "conversation.open", {"user_id": "bob"}))["code"] == "BLOCKED"
        refused = await error(a1, "message.send", {"conversation_id": cid, "client_id": "k-2", "body": "hey"})
        assert refused["code"] == "BLOCKED"
        assert (await error(a1, "conversation.create", {"member_ids": ["bob"]}))["code"] == "BLOCKED"
        history = await b1.ok("message.history", {"conversation_id": cid})
        assert [m["seq"] for m in history["messages"]] == [1] and history["version"] == 1
        await b1.no_event("message.new", wait=0.2)
        # Blocked even when bob hid the conversation.
        await b1.ok("conversation.leave", {"conversation_id": cid})
        refused = await error(a1, "message.send", {"conversation_id": cid, "client_id": "k-3", "body": "hey"})
        assert refused["code"] == "BLOCKED"
        assert (await error(b1, "user.block", {"user_id": "bob"}))["code"] == "VALIDATION_ERROR"

        assert await b1.ok("user.unblock", {"user_id": "alice"}) == {}
        await send(a1, cid, "k-4")
        # The server API blocks too.
        async with server_http(daemon) as http:
            assert (await http.post("/server/v1/users/bob/blocks", json={"user_id": "alice"})).status_code == 200
            refused = await error(a1, "message.send", {"conversation_id": cid, "client_id": "k-5", "body": "x"})
            assert refused["code"] == "BLOCKED"
            assert (await http.delete("/server/v1/users/bob/blocks/alice")).status_code == 200
            await send(a1, cid, "k-6")
            bad = await http.post("/server/v1/users/bob/blocks", json={"user_id": 7})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
        for client in (a1, a2, b1):
            await client.close()


async def test_contacts_open_policy(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(merge(backend, {"chat": {"open_policy": "contacts"}}))
        alice = await connect(daemon, "alice")
        assert (await error(alice, "conversation.open", {"user_id": "bob"}))["code"] == "FORBIDDEN"
        assert (await error(alice, "conversation.create", {"member_ids": ["bob"]}))["code"] == "FORBIDDEN"
        assert (await alice.ok("conversation.list"))["conversations"] == []
        async with server_http(daemon) as http:
            answer = await http.put("/server/v1/users/bob/contacts", json={"user_ids": ["alice"]})
            assert answer.status_code == 200, answer.text
        conv = (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]
        assert conv["type"] == "direct"
        # Opening again finds the same conversation.
        assert (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]["id"] == conv["id"]
        assert (await error(alice, "conversation.open", {"user_id": "alice"}))["code"] == "VALIDATION_ERROR"
        await alice.close()


# -- refusals change nothing ---------------------------------------------------------------------


async def test_refusals_name_the_problem_and_change_nothing(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(40):
        daemon = await start_daemon(merge(backend, {"chat": {"max_message_bytes": 1024, "max_group_members": 3}}))
        store = daemon.services.store
        a1, a2, b1, cid = await three_devices(daemon)
        first = await send(a1, cid, "k-1")
        for device in (a1, a2, b1):
            await device.event("message.new")
        await b1.ok("message.read", {"conversation_id": cid, "seq": 1})
        eve = await connect(daemon, "eve")

        async def snapshot() -> Any:
            conv = await store.get_conversation(cid)
            page = await store.message_history(conversation_id=cid, limit=100)
            return (
                conv,
                page.messages,
                await store.unread_total("bob"),
                (await store.list_conversations(user_id="eve"))[0],
                await stored_jobs(daemon),
            )

        before = await snapshot()
        forbidden: list[tuple[str, dict[str, Any]]] = [
            ("message.send", {"conversation_id": cid, "client_id": "e-1", "body": "hi"}),
            ("message.edit", {"message_id": first["id"], "body": "mine"}),
            ("message.delete", {"message_id": first["id"]}),
            ("message.history", {"conversation_id": cid}),
            ("message.read", {"conversation_id": cid, "seq": 1}),
            ("conversation.mute", {"conversation_id": cid, "muted": True}),
            ("conversation.leave", {"conversation_id": cid}),
            ("typing.start", {"conversation_id": cid}),
            ("typing.stop", {"conversation_id": cid}),
        ]
        for op, data in forbidden:
            assert (await error(eve, op, data))["code"] == "FORBIDDEN", op
        await a1.no_event("typing.updated", wait=0.1)

        invalid: list[tuple[str, dict[str, Any], str]] = [
            ("message.send", {"conversation_id": cid, "body": "hi"}, "client_id"),
            ("message.send", {"conversation_id": cid, "client_id": "x" * 65, "body": "hi"}, "client_id"),
            ("message.send", {"conversation_id": cid, "client_id": "v", "body": ""}, "body"),
            ("message.send", {"conversation_id": cid, "client_id": "v", "body": 5}, "body"),
            ("message.send", {"conversation_id": cid, "client_id": "v", "body": "x", "type": "video"}, "type"),
            ("message.send", {"conversation_id": cid, "client_id": "v", "body": "x", "media_url": "javascript:x"}, "media_url"),
            ("message.send", {"conversation_id": cid, "client_id": "v", "body": "x", "reply_to": "m_nope"}, "reply_to"),
            ("message.send", {"client_id": "v", "body": "x"}, "conversation_id"),
            ("message.read", {"conversation_id": cid, "seq": -1}, "seq"),
            ("message.read", {"conversation_id": cid, "seq": "1"}, "seq"),
            ("message.history", {"conversation_id": cid, "after_seq": 1.5}, "after_seq"),
            ("conversation.mute", {"conversation_id": cid}, "muted"),
            ("conversation.open", {"user_id": ""}, "user_id"),
            ("conversation.create", {"member_ids": []}, "member_ids"),
            ("conversation.create", {"member_ids": ["bob", "carol", "dave"]}, "member_ids"),
            ("conversation.list", {"limit": 0}, "limit"),
            ("conversation.list", {"cursor": "garbage!"}, "cursor"),
            ("message.edit", {"message_id": first["id"]}, "body"),
            ("user.block", {}, "user_id"),
        ]
        for op, data, field in invalid:
            problem = await error(a1, op, data)
            assert problem["code"] == "VALIDATION_ERROR", (op, data, problem)
            assert problem["message"].startswith(field), (op, data, problem)
        too_big = await error(a1, "message.send", {"conversation_id": cid, "client_id": "big", "body": "é" * 513})
        assert too_big["code"] == "PAYLOAD_TOO_LARGE"
        too_big = await error(a1, "message.edit", {"message_id": first["id"], "body": "x" * 1025})
        assert too_big["code"] == "PAYLOAD_TOO_LARGE"
        missing = await error(a1, "message.send", {"conversation_id": "c_nope", "client_id": "v", "body": "x"})
        assert missing["code"] == "NOT_FOUND"
        assert await snapshot() == before
        for client in (a1, a2, b1):
            await client.no_event("message.new", wait=0.1)
        for client in (a1, a2, b1, eve):
            await client.close()


# -- offline participants ------------------------------------------------------------------------


async def test_chat_offline_job_for_recipients_without_a_device(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(backend)
        alice = await connect(daemon, "alice")
        bob = await connect(daemon, "bob")
        group = (await alice.ok("conversation.create", {"member_ids": ["bob", "carol", "dave"]}))["conversation"]
        cid = group["id"]
        async with server_http(daemon) as http:
            # dave mutes by REST (he has no socket).
            async with user_http(daemon, "dave") as dave:
                answer = await dave.post(f"/api/v1/conversations/{cid}/mute", json={"muted": True})
                assert answer.status_code == 200, answer.text
            message = await send(alice, cid, "k-1")
            jobs = await stored_jobs(daemon)
            assert len(jobs) == 1
            job = jobs[0]
            assert job.queue == "default"
            assert job.payload["recipients"] == ["carol"]
            assert job.payload["message_id"] == message["id"] and job.payload["seq"] == 1
            assert job.payload["conversation_id"] == cid and job.payload["sender_id"] == "alice"
            # The idempotent repeat enqueues nothing new; a message with everyone connected neither.
            await send(alice, cid, "k-1")
            carol = await connect(daemon, "carol")
            await send(alice, cid, "k-2")
            assert len(await stored_jobs(daemon)) == 1
            # The server API's system messages go the same way.
            await carol.close()
            with trio.fail_after(5):
                while daemon.services.router.user_sessions("carol"):
                    await trio.sleep(0.01)
            answer = await http.post(
                f"/server/v1/conversations/{cid}/messages",
                json={"sender_id": "system", "client_id": "s-1", "body": "dave joined", "type": "system"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["message"]["type"] == "system"
            assert (await bob.event("message.new"))["data"]["message"]["seq"] == 1
            jobs = await stored_jobs(daemon)
            assert len(jobs) == 2 and {tuple(j.payload["recipients"]) for j in jobs} == {("carol",)}
        await alice.close()
        await bob.close()


# -- server API and client REST ------------------------------------------------------------------


async def test_server_api_conversations_and_messages(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(merge(backend, {"chat": {"max_group_members": 4}}))
        alice = await connect(daemon, "alice")
        bob = await connect(daemon, "bob")
        async with server_http(daemon) as http:
            answer = await http.post("/server/v1/conversations", json={"type": "group", "member_ids": ["alice", "bob"], "title": "ops"})
            assert answer.status_code == 200, answer.text
            conv = answer.json()["conversation"]
            cid = conv["id"]
            assert conv["title"] == "ops" and "unread_count" not in conv
            for client in (alice, bob):
                assert (await client.event("conversation.updated"))["data"]["conversation"]["title"] == "ops"

            answer = await http.patch(f"/server/v1/conversations/{cid}", json={"title": "ops team"})
            assert answer.status_code == 200 and answer.json()["conversation"]["title"] == "ops team"
            for client in (alice, bob):
                assert (await client.event("conversation.updated"))["data"]["conversation"]["title"] == "ops team"

            too_many = await http.post(f"/server/v1/conversations/{cid}/members", json={"user_ids": ["c", "d", "e"]})
            assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "VALIDATION_ERROR"
            answer = await http.delete(f"/server/v1/conversations/{cid}/members/bob")
            assert answer.status_code == 200
            assert [m["user_id"] for m in answer.json()["conversation"]["members"]] == ["alice"]
            assert (await bob.event("conversation.updated"))["data"]["conversation"]["members"] == answer.json()["conversation"]["members"]
            assert (await http.delete(f"/server/v1/conversations/{cid}/members/bob")).status_code == 404

            answer = await http.post(
                f"/server/v1/conversations/{cid}/messages", json={"sender_id": "alice", "client_id": "s-1", "body": "from the backend"}
            )
            assert answer.status_code == 200, answer.text
            assert (await alice.event("message.new"))["data"]["message"]["body"] == "from the backend"
            stranger = await http.post(
                f"/server/v1/conversations/{cid}/messages", json={"sender_id": "bob", "client_id": "s-2", "body": "x"}
            )
            assert stranger.status_code == 403
            big = await http.post(
                f"/server/v1/conversations/{cid}/messages", json={"sender_id": "alice", "client_id": "s-3", "body": "x" * 70_000}
            )
            assert big.status_code == 413 and big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

            direct = await http.post("/server/v1/conversations", json={"type": "direct", "member_ids": ["alice", "bob"]})
            assert direct.status_code == 200 and direct.json()["conversation"]["type"] == "direct"
            again = await http.post("/server/v1/conversations", json={"type": "direct", "member_ids": ["bob", "alice"]})
            assert again.json()["conversation"]["id"] == direct.json()["conversation"]["id"]
            for bad in (
                {"type": "direct", "member_ids": ["alice"]},
                {"type": "channel", "member_ids": ["alice"]},
                {"type": "group", "member_ids": "alice"},
            ):
                answer = await http.post("/server/v1/conversations", json=bad)
                assert answer.status_code == 400 and answer.json()["error"]["code"] == "VALIDATION_ERROR", bad
            direct_id = direct.json()["conversation"]["id"]
            renamed = await http.patch(f"/server/v1/conversations/{direct_id}", json={"title": "x"})
            assert renamed.status_code == 409
            assert (await http.delete(f"/server/v1/conversations/{direct_id}/members/bob")).status_code == 409
            assert (await http.post(f"/server/v1/conversations/{direct_id}/members", json={"user_ids": ["c"]})).status_code == 409
            assert (await http.patch("/server/v1/conversations/c_nope", json={"title": "x"})).status_code == 404
            doc = (await http.get("/server/v1/openapi.json")).json()
            assert "/server/v1/conversations/{conversation_id}/messages" in doc["paths"]
            client_doc = (await http.get("/api/v1/openapi.json")).json()
            assert "/api/v1/presence" in client_doc["paths"]
        await alice.close()
        await bob.close()


async def test_client_rest_mirrors_the_ops(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(backend)
        bob_socket = await connect(daemon, "bob")
        async with user_http(daemon, "alice") as alice, user_http(daemon, "bob") as bob:
            answer = await alice.post("/api/v1/conversations", json={"user_id": "bob"})
            assert answer.status_code == 200, answer.text
            cid = answer.json()["conversation"]["id"]
            group = await alice.post("/api/v1/conversations", json={"member_ids": ["bob"], "title": "g"})
            assert group.status_code == 200 and group.json()["conversation"]["type"] == "group"
            sent = await alice.post("/api/v1/ops/message.send", json={"conversation_id": cid, "client_id": "r-1", "body": "over REST"})
            assert sent.status_code == 200, sent.text
            message = sent.json()["message"]
            assert (await bob_socket.event("message.new"))["data"]["message"] == message

            listed = (await bob.get("/api/v1/conversations", params={"limit": 1})).json()
            assert len(listed["conversations"]) == 1 and listed["next_cursor"] is not None and listed["unread_total"] == 1
            rest = (await bob.get("/api/v1/conversations", params={"cursor": listed["next_cursor"]})).json()
            assert len(rest["conversations"]) == 1 and rest["next_cursor"] is None
            one = (await bob.get(f"/api/v1/conversations/{cid}")).json()["conversation"]
            assert one["id"] == cid and one["unread_count"] == 1
            history = (await bob.get(f"/api/v1/conversations/{cid}/messages", params={"after_seq": 0})).json()
            assert history["messages"] == [message] and history["has_more"] is False
            bad = await bob.get(f"/api/v1/conversations/{cid}/messages", params={"after_seq": "x"})
            assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("after_seq")
            muted = await bob.post(f"/api/v1/conversations/{cid}/mute", json={"muted": True})
            assert muted.status_code == 200
            assert (await bob_socket.event("conversation.state"))["data"]["muted"] is True
            async with user_http(daemon, "eve") as eve:
                assert (await eve.get(f"/api/v1/conversations/{cid}")).status_code == 403
                assert (await eve.get(f"/api/v1/conversations/{cid}/messages")).status_code == 403
                assert (await eve.delete(f"/api/v1/messages/{message['id']}")).status_code == 403
            assert (await bob.get("/api/v1/conversations/c_nope")).status_code == 404
            assert (await bob.delete(f"/api/v1/messages/{message['id']}")).status_code == 403
            deleted = await alice.delete(f"/api/v1/messages/{message['id']}")
            assert deleted.status_code == 200 and deleted.json() == {}
            assert (await bob_socket.event("message.deleted"))["data"]["message"]["deleted"] is True
        await bob_socket.close()


async def test_session_ready_carries_unread_total(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(backend)
        alice = await connect(daemon, "alice")
        cid = (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]["id"]
        for i in range(2):
            await send(alice, cid, f"k-{i}")
        bob = await connect(daemon, "bob")
        assert bob.ready["unread_total"] == 2  # type: ignore[attr-defined]
        await alice.close()
        await bob.close()
