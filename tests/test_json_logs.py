"""JSON log lines: one object each, an RFC 3339 timestamp, and the fields of their scope.

The node, the session and its user, the job, the request id, the op and the API
key name are fields of their own, set by the scope that logs (a session, a job,
an HTTP request, a frame); ``log.include_user_ids = false`` leaves the user out.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import trio

from realtimed import logs
from realtimed.config import load_config
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.test_gateway import connect


class _Capture:
    def __init__(self, *, include_user_ids: bool = True) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logs._JsonFormatter(include_user_ids=include_user_ids))

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def capture() -> Iterator[_Capture]:
    kept = _Capture()
    root = logging.getLogger()
    root.addHandler(kept.handler)
    old = logging.getLogger("realtimed").level
    logging.getLogger("realtimed").setLevel(logging.DEBUG)
    try:
        yield kept
    finally:
        root.removeHandler(kept.handler)
        logging.getLogger("realtimed").setLevel(old)


def _ts(record: dict[str, Any]) -> datetime:
    text = record["ts"]
    assert isinstance(text, str) and text.endswith("Z") and "T" in text
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)
    return parsed


async def test_fields_follow_the_scope_into_its_tasks_and_no_further() -> None:
    kept = _Capture()
    hidden = _Capture(include_user_ids=False)
    log = logging.getLogger("realtimed.test_json_logs")
    log.addHandler(kept.handler)
    log.addHandler(hidden.handler)
    log.setLevel(logging.INFO)
    logs.set_node("node-7")
    try:
        with trio.fail_after(5):

            async def reader() -> None:
                await admitted.wait()
                log.info("frame read")

            async def admit() -> None:
                logs.annotate(user="alice")  # seen by the reader, started before
                admitted.set()

            admitted = trio.Event()
            with logs.bind(session="s_1"):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    nursery.start_soon(admit)
                with logs.bind(op="room.join", request_id=3):
                    log.warning("refused", extra={"job": "j_9"})
            log.info("outside")
    finally:
        log.removeHandler(kept.handler)
        log.removeHandler(hidden.handler)
        logs.set_node(None)
    read, refused, outside = kept.records()
    before = datetime.now(UTC)
    assert abs((before - _ts(read)).total_seconds()) < 60
    assert read == {**read, "level": "info", "msg": "frame read", "node": "node-7", "session": "s_1", "user": "alice"}
    assert refused["op"] == "room.join" and refused["request_id"] == "3" and refused["job"] == "j_9"
    assert refused["session"] == "s_1" and refused["user"] == "alice"
    assert "session" not in outside and "user" not in outside and outside["node"] == "node-7"
    assert all("user" not in record for record in hidden.records())
    assert hidden.records()[0]["session"] == "s_1"


async def test_requests_and_sessions_carry_their_fields(start_daemon: DaemonFactory, capture: _Capture) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"server": {"node": "node-json"}})
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            server = {"Authorization": f"Bearer {API_KEY}"}
            published = await client.post(
                "/server/v1/publish", json={"room": "job:1", "event": "job.progress", "data": {}},
                headers={**server, "X-Request-Id": "req-from-proxy.1"},
            )
            assert published.status_code == 200
            assert published.headers["X-Request-Id"] == "req-from-proxy.1"
            # Not a plain token (spaces, a newline escaped, too long): the daemon's own id instead.
            for hostile in ("a b", "x" * 65, "{\"user\":\"mallory\"}"):
                answer = await client.post(
                    "/server/v1/publish", json={"room": "job:1", "event": "job.progress", "data": {}},
                    headers={**server, "X-Request-Id": hostile},
                )
                assert answer.status_code == 200
                assert answer.headers["X-Request-Id"] != hostile
                assert len(answer.headers["X-Request-Id"]) == 16
        ws = await connect(daemon, "bob")
        await ws.close()
    records = capture.records()
    calls = [r for r in records if r["msg"].startswith("server API POST /server/v1/publish")]
    assert calls[0]["request_id"] == "req-from-proxy.1"
    assert len({r["request_id"] for r in calls}) == 4
    assert len({r["api_key"] for r in calls}) == 1 and calls[0]["api_key"]
    assert all(r["node"] == "node-json" for r in calls)
    connected = [r for r in records if "user bob connected" in r["msg"]]
    assert len(connected) == 1
    assert connected[0]["user"] == "bob" and connected[0]["session"] == connected[0]["msg"].split()[1].rstrip(":")
    for record in records:
        _ts(record)


def test_include_user_ids_is_a_config_key() -> None:
    assert load_config(None, env={}).log.include_user_ids is True
    assert load_config(None, env={}, data={"log": {"include_user_ids": False}}).log.include_user_ids is False
