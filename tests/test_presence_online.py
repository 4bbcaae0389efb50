"""Who is connected, as the server API sees it: on one node and across two nodes on Redis.

``GET /server/v1/presence/online`` pages the connected users (with the count),
``GET /server/v1/presence/counts`` counts sessions, and rooms and subscriptions
per namespace, and ``GET /server/v1/connections`` lists a user's or a room's
connections: each of them on every node of a cluster.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
import trio

from realtimed.daemon import Daemon
from realtimed.delivery import router as router_module
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.test_addresses import connect, sse_stream

SERVER = {"Authorization": f"Bearer {API_KEY}"}


async def get(daemon: Daemon, path: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        return await http.get("/server/v1" + path, params=params)


async def online(daemon: Daemon, **params: Any) -> dict[str, Any]:
    answer = await get(daemon, "/presence/online", **params)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_online_users_are_paged_in_id_order_with_the_count(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        await connect(daemon, "alice")
        await connect(daemon, "alice")
        bob, _ = await connect(daemon, "bob")
        await connect(daemon, "zed")
        async with sse_stream(daemon, "carol"):
            first = await online(daemon, limit=2)
            assert first == {
                "users": [{"user_id": "alice", "sessions": 2}, {"user_id": "bob", "sessions": 1}],
                "count": 4,
                "next_cursor": "bob",
            }
            second = await online(daemon, limit=2, cursor=first["next_cursor"])
            assert second == {
                "users": [{"user_id": "carol", "sessions": 1}, {"user_id": "zed", "sessions": 1}],
                "count": 4,
                "next_cursor": None,
            }
            assert await online(daemon, prefix="b") == {"users": [{"user_id": "bob", "sessions": 1}], "count": 1, "next_cursor": None}
            # a cursor outside the prefix: the page starts where the cursor says
            assert (await online(daemon, prefix="a", cursor="b"))["users"] == []
        await bob.close()
        with trio.fail_after(5):
            while (listed := await online(daemon))["count"] != 2:  # carol's stream and bob's socket ended
                await trio.sleep(0.05)
        assert [u["user_id"] for u in listed["users"]] == ["alice", "zed"]


async def test_online_and_connections_refuse_bad_queries(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        for path, params, field in (
            ("/presence/online", {"limit": 0}, "limit"),
            ("/presence/online", {"limit": 1001}, "limit"),
            ("/presence/online", {"limit": "ten"}, "limit"),
            ("/presence/online", {"prefix": "p" * 129}, "prefix"),
            ("/presence/online", {"cursor": "c" * 129}, "cursor"),
            ("/connections", {"user_id": "a", "limit": 1001}, "limit"),
            ("/connections", {}, "user_id"),
        ):
            answer = await get(daemon, path, **params)
            assert answer.status_code == 400, (path, params, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "VALIDATION_ERROR" and error["field"] == field, (path, params, error)
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for path in ("/presence/online", "/presence/counts", "/connections?user_id=a"):
                assert (await http.get("/server/v1" + path)).status_code == 401


async def test_counts_per_namespace_and_connections_on_one_node(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"namespaces": [{"prefix": "job:", "public": True}, {"prefix": "board:", "public": True}]})
        alice, alice_id = await connect(daemon, "alice", rooms=["x:*"])
        bob, bob_id = await connect(daemon, "bob")
        await alice.ok("subscribe", {"room": "job:1"})
        await alice.ok("subscribe", {"room": "x:private"})
        await bob.ok("subscribe", {"room": "job:1"})
        await bob.ok("subscribe", {"room": "job:2"})
        answer = await get(daemon, "/presence/counts")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "users": 2,
            "sessions": 2,
            "nodes": 1,
            "complete": True,
            "namespaces": [
                {"prefix": "", "rooms": 1, "subscriptions": 1, "exact": True},
                {"prefix": "board:", "rooms": 0, "subscriptions": 0, "exact": True},
                {"prefix": "job:", "rooms": 2, "subscriptions": 3, "exact": True},
            ],
        }
        listed = (await get(daemon, "/connections", room="job:1")).json()
        assert listed["nodes"] == 1 and listed["complete"] is True
        assert sorted(c["session_id"] for c in listed["connections"]) == sorted([alice_id, bob_id])
        assert [c["session_id"] for c in (await get(daemon, "/connections", room="job:1", limit=1)).json()["connections"]] == [
            alice_id
        ]


async def test_online_counts_and_connections_span_two_nodes(
    start_daemon: DaemonFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    namespaces = [{"prefix": f"ns{tag}:", "public": True}]

    def config(name: str) -> dict[str, Any]:
        return {
            "server": {"node": f"{name}-{tag}"},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            "namespaces": namespaces,
        }

    with trio.fail_after(40):
        a = await start_daemon(config("na"))
        b = await start_daemon(config("nb"))
        room = f"ns{tag}:room"
        u_a, u_a_id = await connect(a, f"{tag}-u")
        u_b, u_b_id = await connect(b, f"{tag}-u")
        v_b, _ = await connect(b, f"{tag}-v")
        for client in (u_a, u_b, v_b):
            await client.ok("subscribe", {"room": room})
        await v_b.ok("subscribe", {"room": f"ns{tag}:other"})
        # the online list, from either node: one entry per user, devices of both nodes
        for daemon in (a, b):
            assert await online(daemon, prefix=tag) == {
                "users": [{"user_id": f"{tag}-u", "sessions": 2}, {"user_id": f"{tag}-v", "sessions": 1}],
                "count": 2,
                "next_cursor": None,
            }
        page = await online(a, prefix=tag, limit=1)
        assert page["next_cursor"] == f"{tag}-u" and page["count"] == 2
        assert (await online(a, prefix=tag, cursor=page["next_cursor"]))["users"] == [{"user_id": f"{tag}-v", "sessions": 1}]
        # counts: the room held by both nodes is one room with three subscriptions
        counts = (await get(b, "/presence/counts")).json()
        assert counts["complete"] is True and counts["nodes"] >= 2
        ours = [ns for ns in counts["namespaces"] if ns["prefix"] == f"ns{tag}:"]
        assert ours == [{"prefix": f"ns{tag}:", "rooms": 2, "subscriptions": 4, "exact": True}]
        assert counts["users"] >= 2 and counts["sessions"] >= 3
        # a node with more rooms than it may name sends their number: each node's rooms are added up
        monkeypatch.setattr(router_module, "MAX_SURVEY_ROOM_NAMES", 1)
        counts = (await get(a, "/presence/counts")).json()
        ours = [ns for ns in counts["namespaces"] if ns["prefix"] == f"ns{tag}:"]
        assert ours == [{"prefix": f"ns{tag}:", "rooms": 3, "subscriptions": 4, "exact": False}]
        # connections: the answering node lists the other node's too
        listed = (await get(a, "/connections", user_id=f"{tag}-u")).json()
        assert listed["complete"] is True and listed["nodes"] >= 2
        assert {(c["session_id"], c["node"]) for c in listed["connections"]} == {(u_a_id, f"na-{tag}"), (u_b_id, f"nb-{tag}")}
        in_room = (await get(a, "/connections", room=room)).json()["connections"]
        assert len(in_room) == 3 and {c["node"] for c in in_room} == {f"na-{tag}", f"nb-{tag}"}
        # a user who leaves node B is gone from the list everywhere
        await v_b.close()
        with trio.fail_after(10):
            while (await online(a, prefix=tag))["count"] != 1:
                await trio.sleep(0.05)


async def test_without_redis_connections_answer_this_node_and_counts_say_unavailable(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        with trio.socket.socket() as probe:
            await probe.bind(("127.0.0.1", 0))
            dead_port = probe.getsockname()[1]
        daemon = await start_daemon(
            {"broker": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{dead_port}/0", "timeout_s": 1.0}}
        )
        _, session_id = await connect(daemon, "erin")
        listed = (await get(daemon, "/connections", user_id="erin")).json()
        assert listed["complete"] is False and listed["nodes"] == 1
        assert [c["session_id"] for c in listed["connections"]] == [session_id]
        for path in ("/presence/online", "/presence/counts"):
            answer = await get(daemon, path)
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "UNAVAILABLE", answer.text


async def test_a_node_sends_at_most_its_byte_budget_of_connections(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        _, first_id = await connect(daemon, "alice")
        await connect(daemon, "alice")
        listed = (await get(daemon, "/connections", user_id="alice")).json()
        assert len(listed["connections"]) == 2 and listed["complete"] is True
        one = len(orjson.dumps(listed["connections"][0]))
        monkeypatch.setattr(router_module, "MAX_SURVEY_ANSWER_BYTES", one + 10)
        listed = (await get(daemon, "/connections", user_id="alice")).json()
        assert [c["session_id"] for c in listed["connections"]] == [first_id] and listed["complete"] is False
