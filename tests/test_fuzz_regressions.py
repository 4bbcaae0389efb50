"""HTTP bugs that fuzzing found, each pinned down over a real socket:

- a page cursor no store wrote (an integer past 64 bits, a time no datetime
  holds, a NUL) answered 500; it is a VALIDATION_ERROR on ``cursor``, on both stores;
- an SSE ``Last-Event-ID`` whose rooms were not an object answered 500, and one
  with positions ``subscribe`` would refuse attempted a recovery; it resumes nothing.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import httpx
import orjson
import pytest
import trio

from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_sse import sse


def _cursor(*parts: Any) -> str:
    """A page cursor as the store writes them (base64url of a JSON list), by hand."""
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


# Page cursors no store ever wrote: integers past what the stores keep (signed
# 64-bit), times no datetime holds (year 146,000; the day before year 1), a NUL
# (PostgreSQL refuses it in text). Each used to answer 500 on one store or both.
FORGED_CURSORS: Final = [
    ("/api/v1/conversations", _cursor(2**63, "c_1")),
    ("/api/v1/notifications", _cursor("d", 2**64 - 1)),
    ("/api/v1/notifications", _cursor("a", 2**63)),
    ("/api/v1/conversations", _cursor(2**62, "c_1")),
    ("/api/v1/conversations", _cursor(-62_135_683_200_000_000, "c_1")),
    ("/api/v1/conversations", _cursor(-(2**63), "c_1")),
    ("/api/v1/conversations", _cursor(1, "c\x00")),
]


async def test_a_forged_page_cursor_is_a_validation_error(start_daemon: DaemonFactory, store: dict[str, Any]) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(store)
        headers = {"Authorization": f"Bearer {token('alice')}"}
        async with httpx.AsyncClient(base_url=daemon.url(), headers=headers) as client:
            for path, cursor in FORGED_CURSORS:
                response = await client.get(path, params={"cursor": cursor})
                assert response.status_code == 400, (path, cursor, response.text)
                error = response.json()["error"]
                assert error["code"] == "VALIDATION_ERROR" and error["field"] == "cursor", (path, cursor)
            jobs = await client.get(
                "/server/v1/jobs", params={"cursor": _cursor(2**63)}, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert jobs.status_code == 400 and jobs.json()["error"]["field"] == "cursor", jobs.text
            # The edges of what a cursor may hold still page normally.
            for path, cursor in [
                ("/api/v1/conversations", _cursor(-62_135_596_800_000_000, "c_1")),  # 0001-01-01
                ("/api/v1/conversations", _cursor(253_402_300_799_999_999, "c_1")),  # 9999-12-31
                ("/api/v1/notifications", _cursor("d", 2**63 - 1)),
            ]:
                response = await client.get(path, params={"cursor": cursor})
                assert response.status_code == 200, (path, cursor, response.text)


def _last_event_id(positions: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"r": positions})).decode()


async def test_a_forged_last_event_id_resumes_nothing(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"namespaces": [{"prefix": "job:", "history_size": 10}]})
        for forged in [None, [], "job:1", {"job:1": [-1, "e"]}, {"job:1": [True, "e"]}, {"job:1": [1, "e" * 129]}]:
            # Each used to answer 500 (the first three) or to attempt a recovery.
            async with sse(daemon, rooms="job:1", last_id=_last_event_id(forged)) as stream:
                ready = await stream.until("session.ready")
                assert ready["frame"]["data"]["user_id"] == "alice"
                async with httpx.AsyncClient(base_url=daemon.url()) as client:
                    published = await client.post(
                        "/server/v1/publish",
                        json={"room": "job:1", "event": "progress", "data": {"forged": repr(forged)}},
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    )
                    assert published.status_code == 200
                # No recovery was attempted (no room.reset): the stream goes on from now.
                record = await stream.next()
                assert record["event"] == "progress" and record["frame"]["data"] == {"forged": repr(forged)}
