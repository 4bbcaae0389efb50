"""The SSE fallback and the client REST door, driven by httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import trio

from realtimed.daemon import Daemon
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_gateway import NAMESPACES, publish

SERVER = {"Authorization": f"Bearer {API_KEY}"}


class SseStream:
    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines
        self.comments: list[str] = []
        self.last_id: str | None = None

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        """The next event: {"event", "id", "frame"}."""
        record: dict[str, Any] = {}
        with trio.fail_after(timeout):
            async for line in self._lines:
                if line == "":
                    if "frame" in record:
                        return record
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                field, _, value = line.partition(": ")
                if field == "id":
                    record["id"] = value
                    self.last_id = value
                elif field == "event":
                    record["event"] = value
                elif field == "data":
                    record["frame"] = orjson.loads(value)
        raise EOFError("stream ended")

    async def next_position(self, timeout: float = 5) -> str:
        """The id of the next record that has an id and no data (a position mark)."""
        mark: str | None = None
        with trio.fail_after(timeout):
            async for line in self._lines:
                if line == "":
                    if mark is not None:
                        return mark
                    continue
                field, _, value = line.partition(": ")
                if field == "id":
                    mark = self.last_id = value
                elif field == "data":
                    raise AssertionError(f"an event came before the position mark: {value}")
        raise EOFError("stream ended")

    async def until(self, name: str, timeout: float = 5) -> dict[str, Any]:
        while True:
            record = await self.next(timeout)
            if record["event"] == name:
                return record


@asynccontextmanager
async def sse(daemon: Daemon, *, rooms: str = "", user: str = "alice", last_id: str | None = None, via: str = "header", claims_rooms: list[str] | None = None) -> AsyncIterator[SseStream]:
    jwt = token(user, rooms=claims_rooms or ["job:*", "episode:*"])
    headers = {"Authorization": f"Bearer {jwt}"} if via == "header" else {}
    params = {"rooms": rooms}
    if via == "query":
        params["token"] = jwt
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    async with httpx.AsyncClient(base_url=daemon.url(), timeout=10) as client, client.stream("GET", "/api/v1/events", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseStream(response.aiter_lines())


async def start(start_daemon: DaemonFactory, **sections: Any) -> Daemon:
    override: dict[str, Any] = {"namespaces": NAMESPACES}
    override.update(sections)
    return await start_daemon(override)


async def test_sse_events_and_resume_with_last_event_id(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with sse(daemon, rooms="job:1,episode:2") as stream:
            ready = await stream.until("session.ready")
            assert ready["frame"]["data"]["user_id"] == "alice"
            await publish(daemon, "job:1", data={"i": 1})
            await publish(daemon, "episode:2", "cue", {"c": 1})
            first = await stream.until("job.progress")
            assert first["frame"]["seq"] == 1 and first["frame"]["room"] == "job:1"
            cue = await stream.until("cue")
            assert cue["frame"]["data"] == {"c": 1}
            await daemon.services.router.to_users(["alice"], "app.hello", {"x": 1})
            assert (await stream.until("app.hello"))["frame"]["data"] == {"x": 1}
            cursor = stream.last_id
        assert cursor
        for i in (2, 3):
            await publish(daemon, "job:1", data={"i": i})
        async with sse(daemon, rooms="job:1", last_id=cursor) as stream:
            await stream.until("session.ready")
            missed = [await stream.until("job.progress") for _ in range(2)]
            assert [m["frame"]["seq"] for m in missed] == [2, 3]
            assert [m["frame"]["data"]["i"] for m in missed] == [2, 3]
            await publish(daemon, "job:1", data={"i": 4})
            assert (await stream.until("job.progress"))["frame"]["seq"] == 4


async def test_sse_room_reset_when_unrecoverable(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with sse(daemon, rooms="job:5") as stream:
            await stream.until("session.ready")
            await publish(daemon, "job:5")
            await stream.until("job.progress")
            cursor = stream.last_id
        for _ in range(10):  # more than the namespace's recovery cap of 5
            await publish(daemon, "job:5")
        async with sse(daemon, rooms="job:5", last_id=cursor) as stream:
            reset = await stream.until("room.reset")
            assert reset["frame"]["data"]["room"] == "job:5"
            assert reset["frame"]["data"]["seq"] == 11
        # A cursor that cannot be read resumes nothing, and is no error.
        async with sse(daemon, rooms="job:5", last_id="!!garbage!!") as stream:
            await stream.until("session.ready")


async def test_sse_stream_dropped_before_any_room_event_still_resumes(start_daemon: DaemonFactory) -> None:
    # session.ready is written before the rooms are subscribed and replayed; its id
    # used to hold no room position, so a stream that dropped before any room event
    # resumed nothing, and publications made meanwhile were lost without room.reset.
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        await publish(daemon, "job:7", data={"i": 1})
        async with sse(daemon, rooms="job:7") as stream:
            ready = await stream.until("session.ready")
            cursor = await stream.next_position()
            assert cursor != ready["id"]
        await publish(daemon, "job:7", data={"i": 2})
        async with sse(daemon, rooms="job:7", last_id=cursor) as stream:
            # Dropped again right after session.ready: its id still holds the position.
            ready = await stream.until("session.ready")
        async with sse(daemon, rooms="job:7", last_id=ready["id"]) as stream:
            await stream.until("session.ready")
            missed = await stream.until("job.progress")
            assert missed["frame"]["seq"] == 2 and missed["frame"]["data"] == {"i": 2}


async def test_sse_token_by_query_heartbeat_and_disconnect(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon, gateway={"heartbeat_s": 1.0, "allowed_origins": []})
        async with sse(daemon, via="query") as stream:
            await stream.until("session.ready")
            await trio.sleep(2.2)
            async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
                conns = (await http.get("/server/v1/connections", params={"user_id": "alice"})).json()["connections"]
                assert conns[0]["transport"] == "sse" and conns[0]["address"] == "127.0.0.1"
                await http.post("/server/v1/users/alice/disconnect", json={})
            closed = await stream.until("session.closed")
            assert closed["frame"]["data"]["code"] == 4510
            assert any("heartbeat" in c for c in stream.comments)
            try:
                await stream.next(timeout=2)
                raise AssertionError("the stream should end after session.closed")
            except EOFError:
                pass


async def test_sse_refusals(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            answer = await http.get("/api/v1/events")
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHORIZED"
            answer = await http.get("/api/v1/events", params={"token": "bad"})
            assert answer.status_code == 401
            answer = await http.get("/api/v1/events", params={"token": token("alice"), "rooms": "secret:1"})
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "FORBIDDEN"
            answer = await http.get("/api/v1/events", params={"token": token("alice"), "rooms": "bad room"})
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "VALIDATION_ERROR"
            # An expired token ends the stream with session.closed 4004.
            async with http.stream("GET", "/api/v1/events", params={"token": token("alice", ttl=-300)}) as response:
                body = (await response.aread()).decode()
                assert "event: session.closed" in body and '"code":4004' in body


async def test_sse_drain(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        async with sse(daemon) as stream:
            await stream.until("session.ready")
            daemon.request_drain()
            shutdown = await stream.until("server.shutdown")
            assert shutdown["frame"]["data"]["reconnect_after_ms"] >= 0
            closed = await stream.until("session.closed")
            assert closed["frame"]["data"]["code"] == 1001


async def test_client_rest_ops(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start(start_daemon)
        user = {"Authorization": f"Bearer {token('alice', rooms=['job:*'])}"}
        first = await publish(daemon, "job:3", data={"i": 1})
        await publish(daemon, "job:3", data={"i": 2})
        async with httpx.AsyncClient(base_url=daemon.url(), headers=user) as http:
            answer = await http.post("/api/v1/ops/subscribe", json={"room": "job:3", "since": {"seq": 1, "epoch": first["epoch"]}})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["recovered"] is True and [p["seq"] for p in body["publications"]] == [2]
            answer = await http.post("/api/v1/ops/subscribe", json={"room": "secret:1"})
            assert answer.status_code == 403
            answer = await http.post("/api/v1/ops/subscribe", json={"room": 5})
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "VALIDATION_ERROR"
            for op in ("auth", "ping", "no.such"):
                assert (await http.post(f"/api/v1/ops/{op}", json={})).status_code == 404
            # CORS for allowed browser origins only.
            answer = await http.options("/api/v1/ops/subscribe", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == "https://app.example"
            answer = await http.options("/api/v1/ops/subscribe", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in answer.headers
            answer = await http.post("/api/v1/ops/unsubscribe", json={"room": "job:3"}, headers={"Origin": "https://app.example"})
            assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
