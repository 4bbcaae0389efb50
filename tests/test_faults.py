"""Faults between nodes and their servers, through the fault proxy of ``tests/fault_proxy.py``.

Each scenario fits in seconds; its longer variant (a 10 s stall, a 30 s partition,
a node killed at 500 msg/s) is ``bench/faults.py``. The shared Redis and PostgreSQL
are never stopped: a fault is made in the proxy between one node and its server,
and a server that must go down is a throwaway one started by the test.

What every scenario checks: acknowledged messages are in the store, with a
gap-free ``seq``; what a client received live it received once; a client that
missed events gets them back (``message.history``, room history); presence and
room presence announce each real change once; ``/readyz`` is 503 on a node while
its server is out of reach and 200 again after.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from realtimed.daemon import Daemon
from tests import chat_kill
from tests.fault_proxy import FaultProxy
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory, SpawnDaemon
from tests.fixtures.services import PostgresServer
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}
BROKER_TIMEOUT_S = 1.0
NODE_TTL_S = 8.0


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
async def redis_proxy(nursery: trio.Nursery, redis_url: str) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(_port(redis_url))
    await nursery.start(proxy.run)
    yield proxy


def cluster_config(node: str, redis_port: int, pg_dsn: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"node": node},
        "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
        "broker": {
            "backend": "redis", "redis_url": f"redis://127.0.0.1:{redis_port}/0",
            "timeout_s": BROKER_TIMEOUT_S, "node_ttl_s": NODE_TTL_S,
        },
        "presence": {"offline_grace_s": 0.5},
        "chat": {"typing_timeout_s": 2.0, "typing_per_s": 10.0},
        "namespaces": [{"prefix": "watch:", "presence": True, "history_size": 100}],
        **extra,
    }


async def connect(daemon: Daemon, user: str) -> WsClient:
    client = await WsClient.connect(daemon.url().replace("http", "ws", 1) + "/ws", token=token(user, rooms=["watch:*"]))
    await client.event("session.ready")
    return client


async def ready_status(http: httpx.AsyncClient, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    answer = await http.get(f"{daemon.url()}/readyz")
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


async def wait_ready(http: httpx.AsyncClient, daemon: Daemon, status: int, *, within: float) -> dict[str, Any]:
    body: dict[str, Any] = {}
    with trio.move_on_after(within):
        while True:
            code, body = await ready_status(http, daemon)
            if code == status:
                return body
            await trio.sleep(0.1)
    raise AssertionError(f"{daemon.node} not {status} within {within} s: {body}")


async def drain(client: WsClient, *, seconds: float) -> None:
    """Read whatever arrives for ``seconds`` into ``client.events``."""
    deadline = trio.current_time() + seconds
    while (left := deadline - trio.current_time()) > 0:
        try:
            frame = await client.recv(timeout=left)
        except TimeoutError:
            return
        if "event" in frame:
            client.events.append(frame)
        else:
            client.replies[frame.get("id")] = frame


async def until_event(client: WsClient, name: str, match: Callable[[dict[str, Any]], bool], *, within: float) -> None:
    """Read into ``client.events`` until a ``name`` event whose data matches is there."""
    with trio.fail_after(within):
        while not any(match(data) for data in (e["data"] for e in events(client, name))):
            await drain(client, seconds=0.2)


def events(client: WsClient, name: str) -> list[dict[str, Any]]:
    """The ``name`` events held in ``client.events`` (left there)."""
    return [frame for frame in client.events if frame.get("event") == name]


def take(client: WsClient, name: str) -> list[dict[str, Any]]:
    """The data of the ``name`` events held in ``client.events``, which are removed."""
    found = [frame for frame in client.events if frame.get("event") == name]
    for frame in found:
        client.events.remove(frame)
    return [frame["data"] for frame in found]


async def history_seqs(client: WsClient, conversation_id: str) -> list[int]:
    seqs: list[int] = []
    after = 0
    while True:
        page = await client.ok("message.history", {"conversation_id": conversation_id, "after_seq": after, "limit": 100})
        seqs += [m["seq"] for m in page["messages"]]
        if not page["has_more"]:
            return seqs
        after = seqs[-1]


# ---------------------------------------------------------------------------
# The proxy itself
# ---------------------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            async for chunk in stream:
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass


async def test_the_fault_proxy_delays_stalls_blackholes_and_resets(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, _echo, listeners)
        proxy = FaultProxy(listeners[0].socket.getsockname()[1])
        await nursery.start(proxy.run)
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)

        async def round_trip(data: bytes) -> float:
            start = trio.current_time()
            await stream.send_all(data)
            got = b""
            while len(got) < len(data):
                got += await stream.receive_some()
            assert got == data
            return trio.current_time() - start

        assert await round_trip(b"a") < 1.0
        proxy.delay(0.2)
        assert await round_trip(b"b") >= 0.4  # both ways
        proxy.heal()
        # Stalled: nothing comes back, the connection stays open; healed, it all arrives.
        proxy.stall()
        await stream.send_all(b"held")
        with trio.move_on_after(0.3) as waited:
            await stream.receive_some()
        assert waited.cancelled_caught and proxy.open_links == 1
        proxy.heal()
        assert await stream.receive_some() == b"held"
        # A blackhole drops what is sent; healing it resets the connections that lived through it.
        proxy.blackhole()
        await stream.send_all(b"lost")
        with trio.move_on_after(0.3) as waited:
            await stream.receive_some()
        assert waited.cancelled_caught and proxy.dropped_bytes >= 4
        proxy.heal()
        with pytest.raises(trio.BrokenResourceError):
            while await stream.receive_some():
                pass
        # A reset is an RST on every open connection, and the proxy goes on accepting.
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await round_trip(b"c") < 1.0
        proxy.reset()
        with pytest.raises(trio.BrokenResourceError):
            while await stream.receive_some():
                pass
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await round_trip(b"d") < 1.0
        proxy.refuse()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await proxy.accept_again()
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await round_trip(b"e") < 1.0


# ---------------------------------------------------------------------------
# A partition between one node and Redis
# ---------------------------------------------------------------------------


async def test_a_partition_between_one_node_and_redis_heals_with_nothing_lost_or_doubled(
    start_daemon: DaemonFactory, redis_url: str, redis_proxy: FaultProxy, pg_dsn: str
) -> None:
    """Node B loses Redis for less than ``node_ttl_s``: A never takes B for dead, so
    no presence change is announced for users who stayed; the one real change made
    during the partition (carol leaves) is announced once, after it heals."""
    with trio.fail_after(60):
        tag = uuid.uuid4().hex[:6]
        alice, bob, carol = f"alice-{tag}", f"bob-{tag}", f"carol-{tag}"
        room = f"watch:{tag}"
        a = await start_daemon(cluster_config(f"pa-{tag}", _port(redis_url), pg_dsn))
        b = await start_daemon(cluster_config(f"pb-{tag}", redis_proxy.port, pg_dsn))
        alice_a = await connect(a, alice)
        bob_b = await connect(b, bob)
        carol_b = await connect(b, carol)
        to_bob = (await alice_a.ok("conversation.open", {"user_id": bob}))["conversation"]["id"]
        to_carol = (await alice_a.ok("conversation.open", {"user_id": carol}))["conversation"]["id"]
        await alice_a.ok("subscribe", {"room": room})
        await bob_b.ok("subscribe", {"room": room})
        assert (await alice_a.event("room.joined"))["data"]["user_id"] == bob
        presences = (await alice_a.ok("presence.query", {"user_ids": [bob, carol]}))["presences"]
        assert presences[bob]["status"] == "online" and presences[carol]["status"] == "online"
        await drain(bob_b, seconds=0.3)
        await drain(alice_a, seconds=0.1)
        alice_a.events.clear()
        bob_b.events.clear()
        sent = 0

        async def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                sent += 1
                await alice_a.ok("message.send", {"conversation_id": to_bob, "client_id": f"k{sent}", "body": f"m{sent}"})

        await send(3)
        async with httpx.AsyncClient() as http:
            redis_proxy.blackhole()
            body = await wait_ready(http, b, 503, within=BROKER_TIMEOUT_S * 3 + 2)
            assert body["backends"]["broker"] != "ok"
            assert (await ready_status(http, a))[0] == 200
            # Acknowledged while B cannot hear: durable all the same.
            await send(3)
            await carol_b.close()  # a real change on the cut-off node
            await trio.sleep(1.0)
            assert (await ready_status(http, b))[0] == 503
            assert (await ready_status(http, a))[0] == 200
            redis_proxy.heal()
            await wait_ready(http, b, 200, within=15)
            assert (await ready_status(http, a))[0] == 200
        # Live delivery across the healed link works again.
        with trio.fail_after(15):
            while not any(e["data"]["message"]["body"] == f"m{sent}" for e in events(bob_b, "message.new")):
                await send(1)
                await drain(bob_b, seconds=1.0)
        await drain(bob_b, seconds=0.5)
        # Bob caught up: live seqs are each received once, history fills the gap.
        live = [e["seq"] for e in events(bob_b, "message.new")]
        assert len(live) == len(set(live)), live
        assert await history_seqs(bob_b, to_bob) == list(range(1, sent + 1))
        # Presence converged: carol offline, announced once; bob never announced at all.
        await until_event(alice_a, "presence.updated", lambda d: d["user_id"] == carol, within=20)
        await drain(alice_a, seconds=1.0)
        updates = take(alice_a, "presence.updated")
        assert [(u["user_id"], u["status"]) for u in updates] == [(carol, "offline")], updates
        presences = (await alice_a.ok("presence.query", {"user_ids": [bob, carol]}))["presences"]
        assert presences[bob]["status"] == "online" and presences[carol]["status"] == "offline"
        assert take(alice_a, "room.left") == []
        del to_carol
        # Typing and room presence work across the nodes again.
        await bob_b.ok("typing.start", {"conversation_id": to_bob})
        typing = await alice_a.event("typing.updated")
        assert typing["data"]["user_id"] == bob and typing["data"]["typing"] is True
        dave_b = await connect(b, f"dave-{tag}")
        await dave_b.ok("subscribe", {"room": room})
        assert (await alice_a.event("room.joined"))["data"]["user_id"] == f"dave-{tag}"
        users = (await alice_a.ok("room.presence", {"room": room}))["users"]
        assert sorted(u["user_id"] for u in users) == sorted([alice, bob, f"dave-{tag}"])


# ---------------------------------------------------------------------------
# Redis stalled for every node
# ---------------------------------------------------------------------------

STALL_S = 2.5  # over the broker timeout; bench/faults.py stalls for 10 s


async def test_a_stalled_redis_turns_both_nodes_unready_and_presence_converges_after(
    start_daemon: DaemonFactory, redis_proxy: FaultProxy, pg_dsn: str
) -> None:
    """Redis stops answering (every connection held open, nothing forwarded) for
    longer than ``broker.timeout_s`` on both nodes: both say so on ``/readyz``,
    chat stays durable, and the two presence changes made meanwhile (dave arrives,
    carol leaves) are each announced once after Redis answers again."""
    with trio.fail_after(60):
        tag = uuid.uuid4().hex[:6]
        alice, bob, carol, dave = (f"{name}-{tag}" for name in ("alice", "bob", "carol", "dave"))
        room = f"watch:{tag}"
        a = await start_daemon(cluster_config(f"sa-{tag}", redis_proxy.port, pg_dsn))
        b = await start_daemon(cluster_config(f"sb-{tag}", redis_proxy.port, pg_dsn))
        alice_a = await connect(a, alice)
        bob_b = await connect(b, bob)
        carol_b = await connect(b, carol)
        to_bob = (await alice_a.ok("conversation.open", {"user_id": bob}))["conversation"]["id"]
        await alice_a.ok("conversation.open", {"user_id": carol})
        await alice_a.ok("conversation.open", {"user_id": dave})
        sub = await alice_a.ok("subscribe", {"room": room})
        await drain(alice_a, seconds=0.3)
        alice_a.events.clear()
        sent = 0

        async def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                sent += 1
                await bob_b.ok("message.send", {"conversation_id": to_bob, "client_id": f"k{sent}", "body": f"m{sent}"})

        await send(3)
        async with httpx.AsyncClient(headers=SERVER) as http:
            redis_proxy.stall()
            stalled_at = trio.current_time()
            for daemon in (a, b):
                body = await wait_ready(http, daemon, 503, within=BROKER_TIMEOUT_S * 3 + 2)
                assert body["backends"]["broker"] != "ok"
            await send(2)  # durable while Redis is stalled
            # A room publication needs Redis (its seq lives there): refused, never hung.
            with trio.fail_after(BROKER_TIMEOUT_S * 3 + 2):
                answer = await http.post(
                    f"{b.url()}/server/v1/publish", json={"room": room, "event": "job.progress", "data": {"i": 0}}
                )
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "UNAVAILABLE"
            dave_b = await WsClient.connect(b.url().replace("http", "ws", 1) + "/ws", token=token(dave))
            await dave_b.event("session.ready", timeout=10)
            await carol_b.close()
            await trio.sleep_until(stalled_at + STALL_S)
            redis_proxy.heal()
            for daemon in (a, b):
                await wait_ready(http, daemon, 200, within=15)
            # Room publications work again, with the room's seq going on from where it was.
            answer = await http.post(
                f"{b.url()}/server/v1/publish", json={"room": room, "event": "job.progress", "data": {"i": 1}}
            )
            assert answer.status_code == 200, answer.text
            published = answer.json()
        await send(1)
        await until_event(alice_a, "presence.updated", lambda d: d["user_id"] == dave, within=20)
        await until_event(alice_a, "presence.updated", lambda d: d["user_id"] == carol, within=20)
        await drain(alice_a, seconds=1.0)
        # Each message alice received live, once; history has every acknowledged one, gap-free.
        live = [e["seq"] for e in events(alice_a, "message.new")]
        assert len(live) == len(set(live)) and sent in live, live
        assert await history_seqs(alice_a, to_bob) == list(range(1, sent + 1))
        # The room: what alice got live is gap-free up to the latest publication.
        progress = [e["seq"] for e in events(alice_a, "job.progress")]
        assert len(progress) == len(set(progress)) and progress[-1] == published["seq"], progress
        if published["epoch"] == sub["epoch"]:
            assert progress == list(range(progress[0], published["seq"] + 1)), progress
        # Presence: dave online once, carol offline once; nothing for bob, who stayed.
        changes = [(u["user_id"], u["status"]) for u in take(alice_a, "presence.updated")]
        assert sorted(changes) == sorted([(dave, "online"), (carol, "offline")]), changes
        presences = (await alice_a.ok("presence.query", {"user_ids": [bob, carol, dave]}))["presences"]
        assert [presences[u]["status"] for u in (bob, carol, dave)] == ["online", "offline", "online"]


# ---------------------------------------------------------------------------
# PostgreSQL: restarted, and stalled between a node and it
# ---------------------------------------------------------------------------

STORE_TIMEOUTS = {"connect_timeout_s": 1.0, "statement_timeout_s": 1.5, "pool_min": 1, "pool_max": 4}


async def test_a_postgresql_restart_under_a_node_loses_no_acknowledged_message(
    start_daemon: DaemonFactory, pg_outage_server: PostgresServer
) -> None:
    """PostgreSQL (a throwaway server of this test) stops and starts again under a
    running node: sends are refused with ``UNAVAILABLE`` while it is down (never
    acknowledged), ``/readyz`` names the store, sockets stay open, and once it is
    back every acknowledged message is there with a gap-free ``seq``."""
    server = pg_outage_server
    with trio.fail_after(60):
        node = await start_daemon(
            {"store": {"backend": "postgres", "postgres_dsn": server.dsn(), **STORE_TIMEOUTS}}
        )
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        cid = (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]["id"]
        acked: list[str] = []
        refused: list[str] = []

        async def send(client_id: str) -> None:
            reply = await alice.request(
                "message.send", {"conversation_id": cid, "client_id": client_id, "body": client_id}, timeout=10
            )
            if reply.get("ok"):
                acked.append(client_id)
            else:
                assert reply["error"]["code"] == "UNAVAILABLE", reply
                refused.append(client_id)

        for i in range(3):
            await send(f"before-{i}")
        async with httpx.AsyncClient() as http:
            await server.stop_async()
            body = await wait_ready(http, node, 503, within=10)
            assert body["backends"]["store"] != "ok" and body["backends"].get("broker", "ok") == "ok"
            for i in range(3):
                start = trio.current_time()
                await send(f"down-{i}")
                assert trio.current_time() - start < 5.0  # refused within the store's budgets, not hung
            assert refused == [f"down-{i}" for i in range(3)]
            await server.start_async()
            await wait_ready(http, node, 200, within=20)
        # The sockets stayed open: the same clients go on.
        for client_id in refused:
            await send(client_id)  # the client retries what was refused
        for i in range(3):
            await send(f"after-{i}")
        history = await alice.ok("message.history", {"conversation_id": cid, "after_seq": 0, "limit": 100})
        assert [m["seq"] for m in history["messages"]] == list(range(1, len(history["messages"]) + 1))
        # Each acknowledged message once, in the order acknowledged; nothing that was refused slipped in.
        assert [m["client_id"] for m in history["messages"]] == acked
        await drain(bob, seconds=0.5)
        live = [e["seq"] for e in events(bob, "message.new")]
        assert live == list(range(1, len(history["messages"]) + 1)), live


async def test_a_stalled_postgresql_link_refuses_in_time_and_a_retry_makes_one_message(
    nursery: trio.Nursery, start_daemon: DaemonFactory, pg_dsn: str
) -> None:
    """The link between the node and PostgreSQL stalls mid-traffic (the shared
    server runs on; only the proxy holds the bytes): a send is answered
    ``UNAVAILABLE`` within the store's budget; the statement may still commit when
    the link comes back, and the client's retry with the same ``client_id`` then
    answers that message, never a second one."""
    with trio.fail_after(60):
        proxy = FaultProxy(_port(pg_dsn.rsplit("/", 1)[0]))
        await nursery.start(proxy.run)
        dsn = pg_dsn.replace(f":{_port(pg_dsn.rsplit('/', 1)[0])}/", f":{proxy.port}/")
        node = await start_daemon({"store": {"backend": "postgres", "postgres_dsn": dsn, **STORE_TIMEOUTS}})
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        cid = (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]["id"]
        await alice.ok("message.send", {"conversation_id": cid, "client_id": "k1", "body": "one"})
        async with httpx.AsyncClient() as http:
            proxy.stall()
            start = trio.current_time()
            reply = await alice.request("message.send", {"conversation_id": cid, "client_id": "k2", "body": "two"}, timeout=10)
            assert reply.get("ok") is not True and reply["error"]["code"] == "UNAVAILABLE", reply
            assert trio.current_time() - start < 5.0
            body = await wait_ready(http, node, 503, within=10)
            assert body["backends"]["store"] != "ok"
            proxy.heal()
            await wait_ready(http, node, 200, within=20)
        with trio.fail_after(20):
            while True:
                reply = await alice.request("message.send", {"conversation_id": cid, "client_id": "k2", "body": "two"}, timeout=10)
                if reply.get("ok"):
                    break
                assert reply["error"]["code"] == "UNAVAILABLE", reply
                await trio.sleep(0.2)
        assert reply["data"]["message"]["seq"] == 2
        await alice.ok("message.send", {"conversation_id": cid, "client_id": "k3", "body": "three"})
        history = await alice.ok("message.history", {"conversation_id": cid, "after_seq": 0, "limit": 100})
        assert [(m["seq"], m["client_id"]) for m in history["messages"]] == [(1, "k1"), (2, "k2"), (3, "k3")]
        await drain(bob, seconds=0.5)
        live = [e["seq"] for e in events(bob, "message.new")]
        assert len(live) == len(set(live)) and set(live) <= {1, 2, 3} and 3 in live, live


# ---------------------------------------------------------------------------
# A node killed during chat
# ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_node_killed_during_chat_at_200_messages_per_second_loses_no_acknowledged_message(
    spawn_daemon: SpawnDaemon, pg_dsn: str, redis_url: str
) -> None:
    """200 clients, half on each of two nodes, chat at 200 msg/s; B gets SIGKILL
    half-way. Every acknowledged message is stored once with a gap-free ``seq``,
    nothing live arrives twice, and every client catches up (B's users on A)."""
    with trio.fail_after(150):
        shared: dict[str, Any] = {
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0, "node_ttl_s": 2.0},
            "gateway": {"max_handshakes_per_ip": 1000},
        }
        a = await spawn_daemon({"server": {"node": f"ka-{uuid.uuid4().hex[:6]}"}, **shared}, name="a.toml")
        b = await spawn_daemon({"server": {"node": f"kb-{uuid.uuid4().hex[:6]}"}, **shared}, name="b.toml")

        async def kill() -> None:
            b.signal(signal.SIGKILL)
            await b.wait()

        outcome = await chat_kill.run(
            url_a=a.url, url_b=b.url, kill=kill, token=token, clients=200, rate=200.0, duration_s=5.0, kill_at_s=3.0
        )
        assert outcome.acked_before_kill > 0 and outcome.acked > 500, (outcome.acked_before_kill, outcome.acked)
        assert outcome.lost == [] and outcome.gaps == [], (outcome.lost[:5], outcome.gaps[:5])
        assert outcome.duplicates == [] and outcome.behind == [], (outcome.duplicates[:5], outcome.behind[:5])
        assert len(outcome.catch_up_s) == 100
        print(f"acknowledged {outcome.acked}; catch-up p50 {outcome.p(0.5):.3f} s, p99 {outcome.p(0.99):.3f} s")
