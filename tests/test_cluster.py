"""Several nodes on one Redis act as one: deliveries, room history and recovery."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import coredis
import httpx
import trio
from websockets.exceptions import ConnectionClosed

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_session_lifecycle import sse_records

SERVER = {"Authorization": f"Bearer {API_KEY}"}
NAMESPACES: list[dict[str, Any]] = [
    {"prefix": "job:", "history_size": 100, "history_ttl_s": 600, "recovery_cap": 5},
    {"prefix": "board:", "history_size": 3, "recovery_cap": 100},
]


async def node(start_daemon: DaemonFactory, name: str, redis_url: str) -> Daemon:
    return await start_daemon(
        {"server": {"node": name}, "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0}, "namespaces": NAMESPACES}
    )


async def connect(daemon: Daemon, user: str) -> WsClient:
    url = daemon.url().replace("http", "ws", 1) + "/ws"
    client = await WsClient.connect(url, token=token(user, rooms=["job:*", "board:*"]))
    await client.event("session.ready")
    return client


async def publish(daemon: Daemon, room: str, data: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        answer = await http.post("/server/v1/publish", json={"room": room, "event": "job.progress", "data": data})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


async def test_publication_on_b_reaches_subscriber_on_a_and_users_everywhere(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        a = await node(start_daemon, "na", redis_url)
        b = await node(start_daemon, "nb", redis_url)
        room = f"job:{uuid.uuid4().hex[:8]}"
        alice = await connect(a, "alice-" + room)
        sub = await alice.ok("subscribe", {"room": room})
        await trio.sleep(0.3)
        result = await publish(b, room, {"i": 1})
        assert result["seq"] == 1 and result["epoch"] == sub["epoch"]
        assert result["delivered"] == 0  # no local socket on B
        event = await alice.event("job.progress")
        assert event["seq"] == 1 and event["epoch"] == sub["epoch"] and event["data"] == {"i": 1}
        bob_a = await connect(a, "bob-" + room)
        bob_b = await connect(b, "bob-" + room)
        await trio.sleep(0.3)
        async with httpx.AsyncClient(base_url=b.url(), headers=SERVER) as http:
            answer = await http.post("/server/v1/users/events", json={"user_ids": ["bob-" + room], "event": "app.hi", "data": {}})
            assert answer.json()["delivered"] == 1
        for client in (bob_a, bob_b):
            assert (await client.event("app.hi"))["data"] == {}


async def test_client_moving_from_a_to_b_recovers_every_publication_once(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        a = await node(start_daemon, "na", redis_url)
        b = await node(start_daemon, "nb", redis_url)
        room = f"job:{uuid.uuid4().hex[:8]}"
        on_a = await connect(a, "carol")
        sub = await on_a.ok("subscribe", {"room": room})
        await trio.sleep(0.3)
        await publish(a, room, {"i": 1})
        assert (await on_a.event("job.progress"))["seq"] == 1
        await on_a.close()
        for i in (2, 3, 4):
            await publish(a, room, {"i": i})
        on_b = await connect(b, "carol")
        got = await on_b.ok("subscribe", {"room": room, "since": {"seq": 1, "epoch": sub["epoch"]}})
        assert got["recovered"] is True
        assert [p["data"]["i"] for p in got["publications"]] == [2, 3, 4]
        await trio.sleep(0.3)
        await publish(a, room, {"i": 5})
        live = await on_b.event("job.progress")
        assert live["seq"] == 5
        await on_b.no_event("job.progress")


async def test_recovery_decision_table_on_redis(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        a = await node(start_daemon, "na", redis_url)
        b = await node(start_daemon, "nb", redis_url)
        room = f"job:{uuid.uuid4().hex[:8]}"
        client = await connect(b, "dave")
        epoch = (await client.ok("subscribe", {"room": room}))["epoch"]
        await client.ok("unsubscribe", {"room": room})
        for i in range(1, 7):
            await publish(a, room, {"i": i})
        # Since a position still in history: a complete, in-order replay.
        got = await client.ok("subscribe", {"room": room, "since": {"seq": 3, "epoch": epoch}})
        assert got["recovered"] is True and [p["seq"] for p in got["publications"]] == [4, 5, 6]
        # More missed than the recovery cap (5): nothing.
        got = await client.ok("subscribe", {"room": room, "since": {"seq": 0, "epoch": epoch}})
        assert got["recovered"] is False and got["publications"] == []
        # A position from the future.
        got = await client.ok("subscribe", {"room": room, "since": {"seq": 60, "epoch": epoch}})
        assert got["recovered"] is False and got["publications"] == []
        # A position already trimmed (history of 3).
        feed = f"board:{uuid.uuid4().hex[:8]}"
        feed_epoch = (await client.ok("subscribe", {"room": feed}))["epoch"]
        for i in range(1, 6):
            await publish(a, feed, {"i": i})
        got = await client.ok("subscribe", {"room": feed, "since": {"seq": 1, "epoch": feed_epoch}})
        assert got["recovered"] is False and got["publications"] == []
        got = await client.ok("subscribe", {"room": feed, "since": {"seq": 2, "epoch": feed_epoch}})
        assert got["recovered"] is True and [p["seq"] for p in got["publications"]] == [3, 4, 5]
        # Redis lost the room's data: a new epoch, never a silent gap.
        admin = coredis.Redis.from_url(redis_url)
        async with admin:
            await admin.delete([f"rt:{{r:{room}}}:hm", f"rt:{{r:{room}}}:hs"])
        result = await publish(a, room, {"i": 7})
        assert result["epoch"] != epoch and result["seq"] == 1
        got = await client.ok("subscribe", {"room": room, "since": {"seq": 6, "epoch": epoch}})
        assert got["recovered"] is False and got["epoch"] == result["epoch"]


async def test_readyz_turns_503_naming_the_broker_when_redis_is_unreachable(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        with trio.socket.socket() as probe:
            await probe.bind(("127.0.0.1", 0))
            dead_port = probe.getsockname()[1]
        daemon = await start_daemon({"broker": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{dead_port}/0", "timeout_s": 1.0}})
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["backends"]["broker"] != "ok"
            assert "broker" in answer.json()["error"]["message"]
            # Local sockets still work, and publishing says the broker is down.
            client = await connect(daemon, "erin")
            assert (await client.ok("ping"))["server_time"]
            answer = await http.post("/server/v1/publish", json={"room": "job:1", "event": "x", "data": {}})
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "UNAVAILABLE"


async def test_disconnect_on_one_node_closes_the_users_sockets_on_every_node(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        a = await node(start_daemon, "na", redis_url)
        b = await node(start_daemon, "nb", redis_url)
        user = f"dave-{uuid.uuid4().hex[:8]}"
        on_a, on_b, other = await connect(a, user), await connect(b, user), await connect(b, user + "-x")
        await trio.sleep(0.3)  # B's subscription to the user's channel takes a round trip
        async with httpx.AsyncClient(headers=SERVER) as http:
            answer = await http.post(f"{a.url()}/server/v1/users/{user}/disconnect", json={})
            assert answer.json()["disconnected"] == 1  # A's own; B closes its own
            assert await on_a.closed() == 4510
            assert await on_b.closed() == 4510
            # One session of the user, held by the other node.
            again = await connect(b, user)
            sid = (await http.get(f"{b.url()}/server/v1/connections", params={"user_id": user})).json()["connections"][0]["session_id"]
            answer = await http.post(f"{a.url()}/server/v1/users/{user}/disconnect", json={"session_id": sid})
            assert answer.json()["disconnected"] == 0
            assert await again.closed() == 4510
        assert (await other.ok("ping"))["server_time"]


async def test_message_sent_on_a_reaches_participant_on_b(start_daemon: DaemonFactory, redis_url: str, pg_dsn: str) -> None:
    with trio.fail_after(60):
        shared = {
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            "namespaces": NAMESPACES,
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        suffix = uuid.uuid4().hex[:6]
        alice = await connect(a, "alice-" + suffix)
        bob = await connect(b, "bob-" + suffix)
        conversation = (await alice.ok("conversation.open", {"user_id": "bob-" + suffix}))["conversation"]
        await trio.sleep(0.3)
        sent = await alice.ok(
            "message.send", {"conversation_id": conversation["id"], "client_id": "k1", "body": "hello across nodes"}
        )
        new = await bob.event("message.new")
        assert new["seq"] == sent["message"]["seq"] == 1
        assert new["data"]["message"]["body"] == "hello across nodes"
        # Bob leaves B; two more messages are sent on A; he comes back on A and
        # fetches exactly what he missed.
        await bob.close()
        for i in (2, 3):
            await alice.ok("message.send", {"conversation_id": conversation["id"], "client_id": f"k{i}", "body": f"m{i}"})
        back = await connect(a, "bob-" + suffix)
        history = await back.ok("message.history", {"conversation_id": conversation["id"], "after_seq": 1})
        assert [m["seq"] for m in history["messages"]] == [2, 3]
        assert [m["body"] for m in history["messages"]] == ["m2", "m3"]


class PrivateRedis:
    """A Redis server of this test's own, on a free port, that it may stop and start."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: trio.Process | None = None

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                    await stream.aclose()
                    return
                except OSError:
                    await trio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def test_redis_restart_mid_traffic(start_daemon: DaemonFactory, pg_dsn: str) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = PrivateRedis(port)
    await redis.start()
    try:
        with trio.fail_after(90):
            shared = {
                "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
                "broker": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", "timeout_s": 1.0},
            }
            a = await start_daemon({"server": {"node": "na"}, **shared})
            b = await start_daemon({"server": {"node": "nb"}, **shared})
            alice = await connect(a, "alice-r")
            bob = await connect(b, "bob-r")
            conversation = (await alice.ok("conversation.open", {"user_id": "bob-r"}))["conversation"]
            await trio.sleep(0.3)
            sent = 0

            async def send_some(n: int) -> None:
                nonlocal sent
                for _ in range(n):
                    sent += 1
                    await alice.ok("message.send", {"conversation_id": conversation["id"], "client_id": f"k{sent}", "body": f"m{sent}"})

            await send_some(5)
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{a.url()}/readyz")).status_code == 200
                await redis.stop()
                # Both nodes say so within the broker timeout, and keep serving.
                for daemon in (a, b):
                    with trio.fail_after(10):
                        while (await http.get(f"{daemon.url()}/readyz")).status_code != 503:
                            await trio.sleep(0.2)
                    body = (await http.get(f"{daemon.url()}/readyz")).json()
                    assert body["backends"]["broker"] != "ok"
                await send_some(5)  # durable in PostgreSQL even while Redis is away
                await redis.start()
                for daemon in (a, b):
                    with trio.fail_after(20):
                        while (await http.get(f"{daemon.url()}/readyz")).status_code != 200:
                            await trio.sleep(0.2)
            await send_some(5)
            # Bob reconnects and fetches every message, each once, in order.
            await bob.close()
            back = await connect(b, "bob-r")
            history = await back.ok("message.history", {"conversation_id": conversation["id"], "after_seq": 0, "limit": 100})
            assert [m["seq"] for m in history["messages"]] == list(range(1, sent + 1))
            assert [m["body"] for m in history["messages"]] == [f"m{i}" for i in range(1, sent + 1)]
            # And live delivery across nodes works again.
            await trio.sleep(0.5)
            await send_some(1)
            assert (await back.event("message.new"))["seq"] == sent
    finally:
        await redis.stop()


async def test_sockets_per_user_counted_across_nodes(start_daemon: DaemonFactory, redis_url: str, pg_dsn: str) -> None:
    with trio.fail_after(30):
        shared = {
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            "gateway": {"max_sockets_per_user": 2, "allowed_origins": []},
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        user = f"frank-{uuid.uuid4().hex[:6]}"
        first = await connect(a, user)
        await connect(b, user)
        url = a.url().replace("http", "ws", 1) + "/ws"
        third = await WsClient.connect(url, token=token(user))
        assert await third.closed() == 4511
        await first.close()
        with trio.fail_after(10):
            while True:  # the closed socket leaves the shared count a moment later
                again = await WsClient.connect(url, token=token(user))
                try:
                    if (await again.recv()).get("event") == "session.ready":
                        break
                except ConnectionClosed:
                    pass
                await trio.sleep(0.2)


async def test_a_stream_counts_the_users_sockets_on_every_node(start_daemon: DaemonFactory, redis_url: str) -> None:
    # SSE used to count this node's devices only: the user's sockets on B let a third device in on A.
    with trio.fail_after(30):
        shared = {
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            "gateway": {"max_sockets_per_user": 2, "allowed_origins": []},
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        user = f"gina-{uuid.uuid4().hex[:6]}"
        first = await connect(b, user)
        await connect(b, user)
        refused = [("session.closed", {"code": 4511, "reason": "too many sockets for this user"})]
        assert await sse_records(a, user, count=1) == refused
        await first.close()
        with trio.fail_after(10):
            while (await sse_records(a, user, count=1))[0][0] != "session.ready":
                await trio.sleep(0.2)  # the closed socket leaves the shared count a moment later


async def _typing_events(client: WsClient, *, until: float) -> list[tuple[str, bool]]:
    """typing.updated (user, typing) received until trio time ``until`` (and what is queued already)."""
    found = await client.collect("typing.updated", until=max(until, trio.current_time() + 0.3))
    return [(data["user_id"], data["typing"]) for data in found]


async def test_typing_is_one_state_and_one_budget_across_nodes(start_daemon: DaemonFactory, redis_url: str, pg_dsn: str) -> None:
    with trio.fail_after(60):
        shared = {
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            "chat": {"typing_timeout_s": 1.0, "typing_per_s": 2.0},
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        suffix = uuid.uuid4().hex[:6]
        alice, bob, carol = (f"{name}-{suffix}" for name in ("alice", "bob", "carol"))
        alice_a = await connect(a, alice)
        alice_b = await connect(b, alice)
        bob_a = await connect(a, bob)
        carol_b = await connect(b, carol)
        cid = (await alice_a.ok("conversation.create", {"member_ids": [bob, carol]}))["conversation"]["id"]
        for client in (bob_a, carol_b):
            await client.event("conversation.updated")
        # Alice types on A, then refreshes on B: one typing true each, then one false
        # a timeout after the refresh on B, sent once.
        assert await alice_a.ok("typing.start", {"conversation_id": cid}) == {}
        await trio.sleep(0.6)
        assert await alice_b.ok("typing.start", {"conversation_id": cid}) == {}
        refreshed = trio.current_time()
        for client in (bob_a, carol_b):
            got = await _typing_events(client, until=refreshed + 2.0)
            assert got == [(alice, True), (alice, False)], got
        # The budget (2 per second, burst 2) is counted across nodes.
        await trio.sleep(1.0)
        assert await alice_a.ok("typing.start", {"conversation_id": cid}) == {}
        assert await alice_b.ok("typing.start", {"conversation_id": cid}) == {}
        limited = await alice_a.request("typing.start", {"conversation_id": cid})
        assert limited["error"]["code"] == "RATE_LIMITED" and limited["error"]["retry_after_ms"] > 0
        # A stop on B ends the state started on A, at once and once.
        await trio.sleep(0.6)
        assert await alice_b.ok("typing.stop", {"conversation_id": cid}) == {}
        stopped = trio.current_time()
        for client in (bob_a, carol_b):
            got = await _typing_events(client, until=stopped + 1.5)
            assert got == [(alice, True), (alice, False)], got
        # A message sent on B ends typing started on A.
        await trio.sleep(1.0)
        assert await alice_a.ok("typing.start", {"conversation_id": cid}) == {}
        await alice_b.ok("message.send", {"conversation_id": cid, "client_id": "m1", "body": "done"})
        got = await _typing_events(bob_a, until=trio.current_time() + 0.8)
        assert got == [(alice, True), (alice, False)], got
