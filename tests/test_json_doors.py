"""Hostile JSON at every door: nesting deeper than ``gateway.max_json_depth``, data
that cannot be encoded, and SSE cursors that are not ours.

A field nested deeper than the limit is refused with ``VALIDATION_ERROR`` naming
it, over the socket, the client REST door, the server API, notifications, push
and job payloads; a refused publication takes no ``seq``, and what a room's
history keeps can always be sent again (recovery, history, SSE resume).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import pytest
import trio

from realtimed.broker.redis import open_client
from realtimed.config import ConfigError, NamespaceConfig, load_config
from realtimed.daemon import Daemon
from realtimed.delivery.redis_history import RedisHistory
from realtimed.delivery.rooms import HistoryBackend, MemoryHistory
from realtimed.errors import ValidationFailed
from realtimed.gateway.sse import decode_cursor
from realtimed.protocol import DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH, MAX_STORED_JSON_DEPTH
from tests import notify_support
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.notify_support import Harness
from tests.test_gateway import NAMESPACES, connect
from tests.test_protocol import nested, nested_json
from tests.test_sse import sse

harness_factory = notify_support.harness_factory
shm_dir = notify_support.shm_dir

SERVER = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
LIMIT = DEFAULT_MAX_JSON_DEPTH
# Deeper than orjson can write (254), and than the limit by one.
TOO_DEEP = (300, LIMIT + 1)
# orjson writes at most this many levels: a publication this deep encodes on its
# own, but not inside a reply that wraps it again, unless it is kept encoded.
ORJSON_MAX_DEPTH = 254


class Raw(str):
    """JSON text, written out (orjson writes at most 254 levels)."""


def body(**fields: Any) -> str:
    """A JSON body whose values are given as ``Raw`` JSON text or as values."""
    return "{" + ",".join(f'"{k}":{v if isinstance(v, Raw) else orjson.dumps(v).decode()}' for k, v in fields.items()) + "}"


def obj(levels: int) -> Raw:
    """An object nested ``levels`` deep, as JSON text."""
    return Raw('{"k":' + nested_json(levels - 1) + "}")


def room(prefix: str) -> str:
    # Unique: the Redis server may be shared with other test runs.
    return f"{prefix}{secrets.token_hex(4)}"


def cursor(value: Any) -> str:
    """A ``Last-Event-ID`` in the cursor's own encoding, around any room map."""
    return base64.urlsafe_b64encode(orjson.dumps({"r": value})).decode().rstrip("=")


async def start(start_daemon: DaemonFactory, **sections: Any) -> Daemon:
    override: dict[str, Any] = {"namespaces": NAMESPACES}
    override.update(sections)
    return await start_daemon(override)


def refused(answer: httpx.Response, field: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["field"] == field, error
    assert error["message"].startswith(f"{field}: nests more than ")


# -- the socket ----------------------------------------------------------------------------------


async def test_deep_publish_over_the_socket_is_refused_and_takes_no_seq(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        lobby = room("lobby:")
        alice = await connect(daemon, "alice")
        epoch = (await alice.ok("subscribe", {"room": lobby}))["epoch"]
        async with sse(daemon, rooms=lobby) as stream:
            await stream.until("session.ready")
            assert (await alice.ok("publish", {"room": lobby, "event": "app.n", "data": {"n": 1}}))["seq"] == 1
            assert (await stream.until("app.n"))["frame"]["seq"] == 1
            cursor = stream.last_id
        for levels in TOO_DEEP:
            frame = '{"id":"deep","op":"publish","data":{"room":"' + lobby + '","event":"app.deep","data":' + obj(levels) + "}}"
            await alice.send(frame)
            reply = await alice.reply("deep")
            assert reply["ok"] is False, reply
            assert reply["error"]["code"] == "VALIDATION_ERROR" and reply["error"]["field"] == "data"
        # Exactly at the limit: accepted, with the next seq (the refused ones took none).
        at_limit = {"k": nested(LIMIT - 1)}
        assert (await alice.ok("publish", {"room": lobby, "event": "app.deep", "data": at_limit}))["seq"] == 2
        assert "server_time" in await alice.ok("ping")
        # Recovery across them, by another socket.
        bob = await connect(daemon, "bob")
        got = await bob.ok("subscribe", {"room": lobby, "since": {"seq": 0, "epoch": epoch}})
        assert got["recovered"] is True and got["seq"] == 2
        assert [(p["seq"], p["data"]) for p in got["publications"]] == [(1, {"n": 1}), (2, at_limit)]
        await alice.ok("publish", {"room": lobby, "event": "app.n", "data": {"n": 3}})
        live = await bob.event("app.n")
        assert live["seq"] == 3 and live["epoch"] == epoch
        # The history over the server API.
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            history = await http.get(f"/server/v1/rooms/{lobby}/history")
            assert history.status_code == 200, history.text
            assert [p["seq"] for p in history.json()["publications"]] == [1, 2, 3]
        # SSE resume across them.
        async with sse(daemon, rooms=lobby, last_id=cursor) as stream:
            missed = [await stream.until("app.deep"), await stream.until("app.n")]
            assert [(m["frame"]["seq"], m["frame"]["data"]) for m in missed] == [(2, at_limit), (3, {"n": 3})]


# -- the HTTP doors ------------------------------------------------------------------------------


async def test_deep_fields_over_client_rest_and_server_api(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        limit = 8
        daemon = await start(start_daemon, gateway={"max_json_depth": limit})
        lobby, job = room("lobby:"), room("job:")
        user = {"Authorization": f"Bearer {token('alice', rooms=['job:*'])}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for levels in (limit + 1, 300):
                deep = obj(levels)
                cases = [
                    ("/api/v1/ops/publish", user, body(room=lobby, event="app.x", data=deep), "data"),
                    ("/api/v1/ops/presence.query", user, body(user_ids=Raw(nested_json(levels))), "user_ids"),
                    ("/api/v1/ops/subscribe", user, body(room=job, since=deep), "since"),
                    ("/server/v1/publish", SERVER, body(room=job, event="job.x", data=deep), "data"),
                    ("/server/v1/broadcast", SERVER, body(rooms=[job, lobby], event="job.x", data=deep), "data"),
                    ("/server/v1/users/events", SERVER, body(user_ids=["bob"], event="app.x", data=deep), "data"),
                    ("/server/v1/conversations", SERVER, body(type="group", member_ids=Raw(nested_json(levels))), "member_ids"),
                    # An unknown field is not let through at any depth either.
                    ("/server/v1/publish", SERVER, body(room=job, event="job.x", data={}, extra=deep), "extra"),
                ]
                for path, headers, content, field in cases:
                    refused(await http.post(path, content=content, headers=headers), field)
            # Exactly at the limit: accepted, and the refused publications took no seq.
            at_limit = {"k": nested(limit - 1)}
            answer = await http.post("/server/v1/publish", content=body(room=job, event="job.x", data=at_limit), headers=SERVER)
            assert answer.status_code == 200 and answer.json()["seq"] == 1, answer.text
            answer = await http.post("/server/v1/broadcast", content=body(rooms=[job, lobby], event="job.x", data=at_limit), headers=SERVER)
            assert answer.status_code == 200, answer.text
            assert answer.json()["results"][job]["seq"] == 2 and answer.json()["results"][lobby]["seq"] == 1
            answer = await http.post("/api/v1/ops/publish", content=body(room=lobby, event="app.x", data=at_limit), headers=user)
            assert answer.status_code == 200 and answer.json()["seq"] == 2, answer.text
            history = await http.get(f"/server/v1/rooms/{job}/history", headers=SERVER)
            assert history.status_code == 200, history.text
            assert [(p["seq"], p["data"]) for p in history.json()["publications"]] == [(1, at_limit), (2, at_limit)]


async def test_deep_notification_and_push_fields(harness_factory: Any) -> None:
    with trio.fail_after(60):
        h: Harness = await harness_factory()
        for levels in TOO_DEEP:
            deep = obj(levels)
            cases = [
                ("/server/v1/notifications", body(user_ids=["bob"], type="announcement", vars=deep), "vars"),
                ("/server/v1/notifications", body(user_ids=["bob"], type="announcement", vars={"title": "t"}, data=deep), "data"),
                ("/server/v1/push", body(tokens=["tok-1"], title="t", data=deep), "data"),
                ("/server/v1/push", body(tokens=["tok-1"], title="t", android=deep), "android"),
            ]
            for path, content, field in cases:
                refused(await h.http.post(path, content=content, headers=SERVER), field)
        assert await h.jobs("push.send") == []
        at_limit = {"k": nested(LIMIT - 1)}
        answer = await h.http.post(
            "/server/v1/notifications",
            content=body(user_ids=["bob"], type="announcement", vars={"title": "t", "body": "b"}, data=at_limit),
            headers=SERVER,
        )
        assert answer.status_code == 200 and answer.json()["queued"] == 1, answer.text
        inbox = await h.client("bob", "GET", "/notifications")
        assert inbox["notifications"][0]["data"] == at_limit
        answer = await h.http.post("/server/v1/push", content=body(tokens=["tok-1"], title="t", data=at_limit), headers=SERVER)
        assert answer.status_code == 200 and answer.json()["queued"] == 1, answer.text


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}
    return {"backend": "sqlite"}


async def test_job_payloads_too_deep_are_refused_and_stored_ones_list(
    start_daemon: DaemonFactory, store_section: dict[str, Any]
) -> None:
    with trio.fail_after(60):
        daemon = await start_daemon({"store": store_section})
        runner = daemon.services.jobs
        kind = "test." + secrets.token_hex(4)
        for payload in ({"k": nested(MAX_STORED_JSON_DEPTH)}, {"k": nested(300)}, {"k": {1, 2}}):
            with pytest.raises(ValidationFailed) as info:
                await runner.enqueue(kind, payload, delay_s=3600)
            assert info.value.field == "payload"
        # At the limit: stored, and listed through the server API (which wraps it three levels deeper).
        deepest = {"k": nested(MAX_STORED_JSON_DEPTH - 1)}
        job = await runner.enqueue(kind, deepest, delay_s=3600)
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            listed = await http.get("/server/v1/jobs", params={"kind": kind})
            assert listed.status_code == 200, listed.text
            assert [(j["id"], j["payload"]) for j in listed.json()["jobs"]] == [(job.id, deepest)]


# -- history: encoded before a seq is taken ------------------------------------------------------

NS = NamespaceConfig(prefix="h:", history_size=10, history_ttl_s=600, recovery_cap=10)


@pytest.fixture(params=["memory", "redis"])
def history_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        return redis_url
    return "memory"


@pytest.fixture
async def history(history_backend: str) -> AsyncIterator[HistoryBackend]:
    if history_backend == "memory":
        yield MemoryHistory()
        return
    client, resources = open_client(history_backend, timeout_s=2.0)
    async with AsyncExitStack() as stack:
        for resource in resources:
            await stack.enter_async_context(resource)
        yield RedisHistory(client, timeout_s=2.0)


async def test_an_encode_failure_in_history_takes_no_seq(history: HistoryBackend) -> None:
    with trio.fail_after(10):
        name = room("h:")
        seq, epoch = await history.append(name, NS, "e", {"n": 1}, "t1")
        assert seq == 1
        for data in ({1, 2}, nested(ORJSON_MAX_DEPTH + 1), object()):
            with pytest.raises(ValidationFailed) as info:
                await history.append(name, NS, "e", data, "t2")
            assert info.value.field == "data"
        assert await history.position(name, NS) == (1, epoch)
        assert await history.append(name, NS, "e", {"n": 2}, "t3") == (2, epoch)
        recovery = await history.recover(name, NS, since_seq=0, since_epoch=epoch)
        assert recovery.recovered
        wire = orjson.loads(orjson.dumps([p.to_wire() for p in recovery.publications]))
        assert [(p["seq"], p["data"]) for p in wire] == [(1, {"n": 1}), (2, {"n": 2})]


async def test_what_history_keeps_encodes_inside_any_reply(history: HistoryBackend) -> None:
    with trio.fail_after(10):
        name = room("h:")
        deepest = nested(ORJSON_MAX_DEPTH)
        assert (await history.append(name, NS, "e", deepest, "t1"))[0] == 1
        epoch = (await history.position(name, NS))[1]
        recovery = await history.recover(name, NS, since_seq=0, since_epoch=epoch)
        _, _, read = await history.read(name, NS, since_seq=0, limit=10)
        for pubs in (recovery.publications, tuple(read)):
            reply = orjson.dumps({"id": 1, "ok": True, "data": {"publications": [p.to_wire() for p in pubs]}})
            assert orjson.loads(reply)["data"]["publications"][0]["data"] == deepest


@pytest.fixture(params=["memory", "redis"])
def broker_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "redis":
        return {"backend": "redis", "redis_url": request.getfixturevalue("redis_url"), "timeout_s": 2.0}
    return {"backend": "memory"}


async def test_a_publication_as_deep_as_orjson_writes_is_delivered_and_recovered(
    start_daemon: DaemonFactory, broker_section: dict[str, Any]
) -> None:
    """Published in-process (no door's limit): encoded once, it reaches the socket,
    the recovery, the history and the SSE resume, each wrapping it again."""
    with trio.fail_after(30):
        daemon = await start(start_daemon, broker=broker_section)
        job = room("job:")
        deepest = nested(ORJSON_MAX_DEPTH)
        alice = await connect(daemon, "alice")
        epoch = (await alice.ok("subscribe", {"room": job}))["epoch"]
        router = daemon.services.router
        assert (await router.publish(job, "job.deep", deepest))[0] == 1
        assert (await alice.event("job.deep"))["data"] == deepest
        with pytest.raises(ValidationFailed):
            await router.publish(job, "job.deep", nested(ORJSON_MAX_DEPTH + 1))
        assert (await router.publish(job, "job.n", {"n": 2}))[0] == 2
        got = await alice.ok("subscribe", {"room": job, "since": {"seq": 0, "epoch": epoch}})
        assert [(p["seq"], p["data"]) for p in got["publications"]] == [(1, deepest), (2, {"n": 2})]
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            history = await http.get(f"/server/v1/rooms/{job}/history")
            assert history.status_code == 200, history.text
            assert history.json()["publications"][0]["data"] == deepest
        async with sse(daemon, rooms=job, last_id=cursor({job: [0, epoch]})) as stream:
            assert (await stream.until("job.deep"))["frame"]["data"] == deepest


# -- SSE Last-Event-ID ---------------------------------------------------------------------------


def raw_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def hostile_cursors(room_name: str, epoch: str) -> list[str]:
    return [
        cursor([]),
        cursor([room_name, 0, epoch]),
        cursor(room_name),
        cursor(7),
        cursor(None),
        cursor(True),
        cursor({room_name: "0"}),
        cursor({room_name: [0]}),
        cursor({room_name: [0, epoch, 1]}),
        cursor({room_name: [True, epoch]}),
        cursor({room_name: [-1, epoch]}),
        cursor({room_name: [0.0, epoch]}),
        cursor({room_name: [2**63, epoch]}),
        cursor({room_name: [0, 5]}),
        cursor({room_name: [0, "e" * 129]}),
        raw_cursor([{"r": {room_name: [0, epoch]}}]),
        raw_cursor("r"),
        base64.urlsafe_b64encode(b'{"r":' + obj(900).encode() + b"}").decode(),
        "!!not base64!!",
    ]


def test_decode_cursor_resumes_nothing_from_what_it_cannot_read() -> None:
    for text in [*hostile_cursors("job:1", "ep"), "\u00e9t\u00e9", cursor({"job:1": [0, "ep"]})[:-3]]:
        assert decode_cursor(text) == {}, text
    good = cursor({"job:1": [3, "ep"], "job:2": "bad", "job:3": [2**63 - 1, "ep"]})
    assert decode_cursor(good) == {"job:1": (3, "ep"), "job:3": (2**63 - 1, "ep")}


async def test_sse_with_a_room_map_that_is_not_an_object_resumes_nothing(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        job = room("job:")
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.post("/server/v1/publish", json={"room": job, "event": "job.n", "data": {"n": 1}})
        epoch = answer.json()["epoch"]
        router = daemon.services.router
        seq = 1
        for text in hostile_cursors(job, epoch):
            # 200 and a stream that resumes nothing: neither a replay nor a room.reset
            # comes before the next live publication.
            async with sse(daemon, rooms=job, last_id=text) as stream:
                await stream.until("session.ready")
                seq += 1
                await router.publish(job, "job.n", {"n": seq})
                record = await stream.next()
                assert (record["event"], record["frame"]["seq"]) == ("job.n", seq), (text, record)


# -- configuration -------------------------------------------------------------------------------


def test_max_json_depth_is_bounded() -> None:
    assert load_config(env={}, data={}).gateway.max_json_depth == DEFAULT_MAX_JSON_DEPTH == 32
    for value in (1, MAX_JSON_DEPTH):
        assert load_config(env={}, data={"gateway": {"max_json_depth": value}}).gateway.max_json_depth == value
    for value in (0, MAX_JSON_DEPTH + 1, "deep"):
        with pytest.raises(ConfigError) as info:
            load_config(env={}, data={"gateway": {"max_json_depth": value}})
        assert [key for key, _ in info.value.problems] == ["gateway.max_json_depth"]


def test_cron_payloads_nest_no_deeper_than_stored_job_payloads() -> None:
    entry = {"name": "c", "schedule": "* * * * *", "kind": "noop"}
    load_config(env={}, data={"cron": [{**entry, "payload": {"k": nested(MAX_STORED_JSON_DEPTH - 1)}}]})
    with pytest.raises(ConfigError) as info:
        load_config(env={}, data={"cron": [{**entry, "payload": {"k": nested(MAX_STORED_JSON_DEPTH)}}]})
    assert [key for key, _ in info.value.problems] == ["cron[0].payload"]


async def test_record_ids_in_rest_paths_take_the_protocols_one_limit(start_daemon: DaemonFactory) -> None:
    from realtimed.protocol import MAX_ID_CHARS

    with trio.fail_after(30):
        daemon = await start_daemon()
        user = {"Authorization": f"Bearer {token('alice')}"}
        server = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for method, path in (("POST", "/api/v1/notifications/{}/read"), ("DELETE", "/api/v1/notifications/{}")):
                refused = await http.request(method, path.format("n" * (MAX_ID_CHARS + 1)), headers=user)
                assert refused.status_code == 400, refused.text
                error = refused.json()["error"]
                assert (error["code"], error["field"]) == ("VALIDATION_ERROR", "id")
                accepted = await http.request(method, path.format("n" * MAX_ID_CHARS), headers=user)
                assert (accepted.status_code, accepted.json()) == (200, {"unread_count": 0})
            # A job id: one that cannot exist is not found; the document states the same limit.
            too_long = await http.get("/server/v1/jobs/" + "j" * (MAX_ID_CHARS + 1), headers=server)
            assert too_long.status_code == 404
            document = (await http.get("/server/v1/openapi.json")).json()
            (job_id,) = document["paths"]["/server/v1/jobs/{job_id}"]["get"]["parameters"]
            assert job_id["schema"]["maxLength"] == MAX_ID_CHARS
            client = (await http.get("/api/v1/openapi.json")).json()
            (note_id,) = client["paths"]["/api/v1/notifications/{notification_id}/read"]["post"]["parameters"]
            assert note_id["schema"] == {"$ref": "#/components/schemas/Id"}
            assert client["components"]["schemas"]["Id"]["maxLength"] == MAX_ID_CHARS
