"""Two daemon processes on one PostgreSQL and one Redis, and the death of one of them."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import httpx
import pytest
import trio

from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonProcess, SpawnDaemon
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}


async def two_nodes(spawn_daemon: SpawnDaemon, pg_dsn: str, redis_url: str) -> tuple[DaemonProcess, DaemonProcess]:
    shared: dict[str, Any] = {
        "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
        "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0, "node_ttl_s": 2.0},
        "presence": {"offline_grace_s": 1.0},
        "namespaces": [{"prefix": "episode:", "presence": True}],
    }
    a = await spawn_daemon({"server": {"node": "pa"}, **shared}, name="a.toml")
    b = await spawn_daemon({"server": {"node": "pb"}, **shared}, name="b.toml")
    return a, b


async def connect(proc: DaemonProcess, user: str) -> WsClient:
    client = await WsClient.connect(proc.url.replace("http", "ws", 1) + "/ws", token=token(user, rooms=["episode:*"]))
    await client.event("session.ready")
    return client


@pytest.mark.slow
async def test_node_death_turns_its_users_offline_once_and_loses_no_message(
    spawn_daemon: SpawnDaemon, pg_dsn: str, redis_url: str
) -> None:
    with trio.fail_after(90):
        a, b = await two_nodes(spawn_daemon, pg_dsn, redis_url)
        alice = await connect(a, "alice-nd")
        bob = await connect(b, "bob-nd")
        carol = await connect(b, "carol-nd")
        conv_b = (await alice.ok("conversation.open", {"user_id": "bob-nd"}))["conversation"]
        conv_c = (await alice.ok("conversation.open", {"user_id": "carol-nd"}))["conversation"]
        # Alice sees both as online, on every node.
        presences = (await alice.ok("presence.query", {"user_ids": ["bob-nd", "carol-nd"]}))["presences"]
        assert presences["bob-nd"]["status"] == "online" and presences["carol-nd"]["status"] == "online"
        alice.events.clear()
        b.signal(signal.SIGKILL)
        killed_at = trio.current_time()
        # Messages sent while their node is dead are durable.
        for i in range(3):
            await alice.ok("message.send", {"conversation_id": conv_b["id"], "client_id": f"b{i}", "body": f"to bob {i}"})
            await alice.ok("message.send", {"conversation_id": conv_c["id"], "client_id": f"c{i}", "body": f"to carol {i}"})
        offline: dict[str, int] = {}
        with trio.fail_after(15):
            while len(offline) < 2:
                event = await alice.event("presence.updated", timeout=15)
                data = event["data"]
                if data["status"] == "offline":
                    offline[data["user_id"]] = offline.get(data["user_id"], 0) + 1
        took = trio.current_time() - killed_at
        assert set(offline) == {"bob-nd", "carol-nd"}
        assert took < 2.0 + 2.0 + 3.0  # node TTL, a reaping period, and some slack
        # Exactly one each: nothing more arrives.
        deadline = trio.current_time() + 3
        while (left := deadline - trio.current_time()) > 0:
            try:
                frame = await alice.recv(timeout=left)
            except TimeoutError:
                break
            if frame.get("event") == "presence.updated" and frame["data"]["status"] == "offline":
                offline[frame["data"]["user_id"]] += 1
        assert offline == {"bob-nd": 1, "carol-nd": 1}
        presences = (await alice.ok("presence.query", {"user_ids": ["bob-nd", "carol-nd"]}))["presences"]
        assert presences["bob-nd"]["status"] == "offline" and presences["bob-nd"]["last_seen"]
        # They come back on A and miss nothing.
        back = await connect(a, "bob-nd")
        history = await back.ok("message.history", {"conversation_id": conv_b["id"], "after_seq": 0})
        assert [m["body"] for m in history["messages"]] == [f"to bob {i}" for i in range(3)]
        del bob, carol


async def _room_events(client: WsClient, name: str, *, until: float) -> list[str]:
    """Users named by the ``name`` events the client receives until trio time ``until``."""
    return [data["user_id"] for data in await client.collect(name, until=until)]


@pytest.mark.slow
async def test_room_presence_agrees_on_both_nodes_and_a_dead_nodes_viewers_leave_once(
    spawn_daemon: SpawnDaemon, pg_dsn: str, redis_url: str
) -> None:
    with trio.fail_after(90):
        a, b = await two_nodes(spawn_daemon, pg_dsn, redis_url)
        room = f"episode:{uuid.uuid4().hex[:8]}"
        alice = await connect(a, "alice-rp")
        await alice.ok("subscribe", {"room": room})
        bob_b = await connect(b, "bob-rp")
        await bob_b.ok("subscribe", {"room": room})
        assert (await alice.event("room.joined"))["data"] == {"room": room, "user_id": "bob-rp"}
        # Bob's second device, on the other node: he is in the room already, nobody is told.
        bob_a = await connect(a, "bob-rp")
        await bob_a.ok("subscribe", {"room": room})
        carol = await connect(b, "carol-rp")
        await carol.ok("subscribe", {"room": room})
        joined = await _room_events(alice, "room.joined", until=trio.current_time() + 1.0)
        assert joined == ["carol-rp"]
        expected = [{"user_id": "alice-rp", "sessions": 1}, {"user_id": "bob-rp", "sessions": 2}, {"user_id": "carol-rp", "sessions": 1}]
        assert (await alice.ok("room.presence", {"room": room}))["users"] == expected
        assert (await carol.ok("room.presence", {"room": room}))["users"] == expected
        for proc in (a, b):
            async with httpx.AsyncClient(base_url=proc.url, headers=SERVER) as http:
                answer = await http.get(f"/server/v1/rooms/{room}/presence")
                assert answer.status_code == 200 and answer.json()["users"] == expected
        # Bob leaves on A but is still viewing through B: no room.left.
        await bob_a.ok("unsubscribe", {"room": room})
        assert await _room_events(alice, "room.left", until=trio.current_time() + 1.0) == []
        # B dies: bob and carol leave, each announced once, by A.
        b.signal(signal.SIGKILL)
        left = await _room_events(alice, "room.left", until=trio.current_time() + 2.0 + 2.0 + 3.0)
        assert sorted(left) == ["bob-rp", "carol-rp"]
        assert (await alice.ok("room.presence", {"room": room}))["users"] == [{"user_id": "alice-rp", "sessions": 1}]
