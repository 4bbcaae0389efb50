"""Addresses an app expects: every user at once, one device, rooms from token claims.

On one node (in-process broker) and on two nodes sharing Redis: an event sent
through the server API reaches the sockets and streams it names on whichever
node holds them, and no other.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import trio

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}
CLAIM_ROOMS: dict[str, Any] = {"auth": {"claim_rooms": [{"claim": "roles", "prefix": "role:"}], "max_claim_rooms": 4}}


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def node(start_daemon: DaemonFactory, name: str, redis_url: str | None = None) -> Daemon:
    config: dict[str, Any] = {"server": {"node": name}, **CLAIM_ROOMS}
    if redis_url is not None:
        config["broker"] = {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0}
    return await start_daemon(config)


async def connect(daemon: Daemon, user: str, **claims: Any) -> tuple[WsClient, str]:
    """A socket of ``user``, once ready; returns it and its session id."""
    url = daemon.url().replace("http", "ws", 1) + "/ws"
    client = await WsClient.connect(url, token=token(user, **claims))
    ready = await client.event("session.ready")
    return client, ready["data"]["session_id"]


async def post(daemon: Daemon, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        return await http.post("/server/v1" + path, json=body)


@asynccontextmanager
async def sse_stream(daemon: Daemon, user: str) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]]:
    """An SSE stream of ``user`` that is admitted (``session.ready`` read) on entry; yields its (event, frame) records."""
    send, receive = trio.open_memory_channel[tuple[str, dict[str, Any]]](100)
    ready = trio.Event()

    async def read() -> None:
        async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as http, http.stream(
            "GET", "/api/v1/events", params={"token": token(user)}
        ) as response:
            assert response.status_code == 200
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    if name == "session.ready":
                        ready.set()
                    else:
                        await send.send((name, orjson.loads(line[len("data: ") :])))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await ready.wait()
        yield receive
        nursery.cancel_scope.cancel()


# -- every connected user ---------------------------------------------------------------------


async def test_event_to_everyone_reaches_every_socket_and_stream(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await node(start_daemon, "a")
        alice, _ = await connect(daemon, "alice")
        bob, _ = await connect(daemon, "bob")
        async with sse_stream(daemon, "carol") as carol:
            answer = await post(daemon, "/users/events/all", {"event": "app.maintenance", "data": {"in_s": 60}})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"delivered": 3}
            for client in (alice, bob):
                event = await client.event("app.maintenance")
                assert event["data"] == {"in_s": 60} and "room" not in event
            name, frame = await carol.receive()
            assert name == "app.maintenance" and frame["data"] == {"in_s": 60}


async def test_event_to_everyone_refuses_reserved_names_and_bad_bodies(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await node(start_daemon, "a")
        alice, _ = await connect(daemon, "alice")
        for body, field in (
            ({"event": "session.closed", "data": {}}, "event"),
            ({"event": "message.new"}, "event"),
            ({"data": {}}, "event"),
            ({"event": "x" * 300}, "event"),
        ):
            answer = await post(daemon, "/users/events/all", body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
            assert answer.json()["error"]["field"] == field, answer.text
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            assert (await http.post("/server/v1/users/events/all", json={"event": "app.x"})).status_code == 401
        await alice.no_event("session.closed", wait=0.2)


# -- one device -------------------------------------------------------------------------------


async def test_device_address_reaches_exactly_that_socket(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await node(start_daemon, "a")
        phone, phone_id = await connect(daemon, "alice")
        laptop, _ = await connect(daemon, "alice")
        assert phone_id.startswith("s_")
        answer = await post(daemon, "/publish", {"room": f"device:{phone_id}", "event": "app.ring", "data": {"n": 1}})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"delivered": 1}  # no history: an address keeps none
        event = await phone.event("app.ring")
        assert event["room"] == f"device:{phone_id}" and event["data"] == {"n": 1}
        await laptop.no_event("app.ring")
        await phone.close()
        with trio.fail_after(5):
            while daemon.services.router.address_rooms(phone_id):
                await trio.sleep(0.02)
        answer = await post(daemon, "/publish", {"room": f"device:{phone_id}", "event": "app.ring", "data": {"n": 2}})
        assert answer.json() == {"delivered": 0}
        await laptop.no_event("app.ring")


async def test_clients_cannot_subscribe_to_or_publish_on_addresses(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(
            {**CLAIM_ROOMS, "namespaces": [{"prefix": "chat:", "public": True, "client_publish": True}]}
        )
        _, victim_id = await connect(daemon, "victim")
        mallory, _ = await connect(daemon, "mallory", rooms=["*"])
        for op, data in (
            ("subscribe", {"room": f"device:{victim_id}"}),
            ("subscribe", {"room": "role:admin"}),
            ("publish", {"room": f"device:{victim_id}", "event": "app.x", "data": {}}),
            ("publish", {"room": "role:admin", "event": "app.x", "data": {}}),
            ("room.presence", {"room": "role:admin"}),
        ):
            reply = await mallory.request(op, data)
            assert reply["ok"] is False and reply["error"]["code"] == "FORBIDDEN", (op, data, reply)
            assert "is an address" in reply["error"]["message"]
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            answer = await http.get(
                "/api/v1/events", params={"token": token("mallory", rooms=["*"]), "rooms": f"device:{victim_id}"}
            )
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "FORBIDDEN"


# -- rooms from token claims ------------------------------------------------------------------


async def test_roles_claim_puts_the_session_in_role_rooms(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await node(start_daemon, "a")
        admin, admin_id = await connect(daemon, "ada", roles=["admin", "ops"])
        editor, _ = await connect(daemon, "ed", roles="editor")
        plain, _ = await connect(daemon, "pat")
        assert daemon.services.router.address_rooms(admin_id) == (f"device:{admin_id}", "role:admin", "role:ops")
        answer = await post(daemon, "/publish", {"room": "role:admin", "event": "app.alert", "data": {"level": 2}})
        assert answer.json() == {"delivered": 1}
        event = await admin.event("app.alert")
        assert event["room"] == "role:admin" and event["data"] == {"level": 2}
        answer = await post(daemon, "/broadcast", {"rooms": ["role:ops", "role:editor"], "event": "app.note", "data": {}})
        assert {room: r["delivered"] for room, r in answer.json()["results"].items()} == {"role:ops": 1, "role:editor": 1}
        assert (await admin.event("app.note"))["room"] == "role:ops"
        assert (await editor.event("app.note"))["room"] == "role:editor"
        await editor.no_event("app.alert", wait=0.1)
        await plain.no_event("app.note", wait=0.1)
        # an address room is neither a room nor a subscription of the node, but lists its connections
        stats = (await _get(daemon, "/stats")).json()
        assert stats["rooms"] == 0
        listed = (await _get(daemon, "/connections", room="role:ops")).json()["connections"]
        assert [(c["session_id"], c["rooms"]) for c in listed] == [(admin_id, [])]


async def test_claims_that_cannot_make_rooms_refuse_the_token(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await node(start_daemon, "a")
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        for roles, message in (
            ({"x": 1}, "token claim roles: must be a string or a list of strings"),
            (["ok", 7], "token claim roles: must be a string or a list of strings"),
            (["a b"], "token claim roles: 'a b' does not make a valid room name"),
            ([""], "does not make a valid room name"),
            (["r1", "r2", "r3", "r4", "r5"], "the token's claims give more than 4 rooms (auth.max_claim_rooms)"),
        ):
            client = await WsClient.connect(url, token=token("ada", roles=roles), how="frame")
            reply = await client.reply("auth")
            assert reply["ok"] is False and reply["error"]["code"] == "UNAUTHORIZED", reply
            assert message in reply["error"]["message"], reply
        # four distinct rooms (a repeated value counts once) are within the limit
        ok, _ = await connect(daemon, "ada", roles=["r1", "r2", "r3", "r4", "r4"])
        await ok.close()


async def test_claim_rooms_config_is_checked(tmp_path: Any) -> None:
    from realtimed.errors import ConfigError
    from tests.fixtures.daemon import make_config

    cases = [
        ({"auth": {"claim_rooms": [{"claim": "roles", "prefix": "role"}]}}, "auth.claim_rooms[0].prefix"),
        ({"auth": {"claim_rooms": [{"claim": "roles", "prefix": "device:"}]}}, "auth.claim_rooms[0].prefix"),
        ({"auth": {"claim_rooms": [{"claim": "", "prefix": "role:"}]}}, "auth.claim_rooms[0].claim"),
        ({"auth": {"claim_rooms": [{"claim": "rooms", "prefix": "role:"}]}}, "auth.claim_rooms[0].claim"),
        (
            {"auth": {"claim_rooms": [{"claim": "roles", "prefix": "g:"}, {"claim": "teams", "prefix": "g:"}]}},
            "auth.claim_rooms[1].prefix",
        ),
        ({**CLAIM_ROOMS, "namespaces": [{"prefix": "role:admin", "public": True}]}, "namespaces[0].prefix"),
        ({"namespaces": [{"prefix": "device:", "public": True}]}, "namespaces[0].prefix"),
        ({"auth": {"max_claim_rooms": 0}}, "auth.max_claim_rooms"),
    ]
    for override, key in cases:
        try:
            make_config(tmp_path, override)
        except ConfigError as exc:
            assert key in str(exc), (override, str(exc))
        else:
            raise AssertionError(f"accepted: {override}")


async def _get(daemon: Daemon, path: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
        return await http.get("/server/v1" + path, params=params)


# -- two nodes on Redis -----------------------------------------------------------------------


async def test_addresses_across_two_nodes(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(40):
        a = await node(start_daemon, "na", redis_url)
        b = await node(start_daemon, "nb", redis_url)
        tag = _tag()
        on_a, a_id = await connect(a, "u-" + tag, roles=["admin-" + tag])
        on_b, _ = await connect(b, "u-" + tag, roles=["admin-" + tag])
        other_b, _ = await connect(b, "v-" + tag)
        # one device, held by A, addressed through B
        answer = await post(b, "/publish", {"room": f"device:{a_id}", "event": "app.ring", "data": {"tag": tag}})
        assert answer.json() == {"delivered": 0}
        assert (await on_a.event("app.ring"))["data"] == {"tag": tag}
        await on_b.no_event("app.ring", wait=0.2)
        # a role room, sockets on both nodes
        answer = await post(a, "/publish", {"room": f"role:admin-{tag}", "event": "app.alert", "data": {}})
        assert answer.json() == {"delivered": 1}
        for client in (on_a, on_b):
            assert (await client.event("app.alert"))["room"] == f"role:admin-{tag}"
        await other_b.no_event("app.alert", wait=0.2)
        # everyone, from A: B hands it to its own sockets
        answer = await post(a, "/users/events/all", {"event": "app.all", "data": {"tag": tag}})
        assert answer.json() == {"delivered": 1}
        for client in (on_a, on_b, other_b):
            assert (await client.event("app.all"))["data"] == {"tag": tag}


# -- the Python SDK ---------------------------------------------------------------------------


async def test_python_sdk_gives_address_events_to_listeners(start_daemon: DaemonFactory) -> None:
    from realtimed_client import ClientOptions, open_client

    with trio.fail_after(30):
        daemon = await node(start_daemon, "a")
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        options = ClientOptions(backoff_min_s=0.05, backoff_max_s=0.5, request_timeout_s=5.0, connect_timeout_s=5.0)
        async with open_client(url, token=token("ada", roles=["admin"]), options=options) as client, client.listen(
            "app."
        ) as events:
            ready = await client.wait_connected()
            device = f"device:{ready['session_id']}"
            assert ready["addresses"] == [device, "role:admin"]
            await post(daemon, "/publish", {"room": "role:admin", "event": "app.alert", "data": {"n": 1}})
            await post(daemon, "/publish", {"room": device, "event": "app.ring", "data": {"n": 2}})
            await post(daemon, "/users/events/all", {"event": "app.all", "data": {"n": 3}})
            got = []
            async for event in events:
                got.append((event.name, event.room, event.data))
                if len(got) == 3:
                    break
            assert got == [("app.alert", "role:admin", {"n": 1}), ("app.ring", device, {"n": 2}), ("app.all", None, {"n": 3})]
