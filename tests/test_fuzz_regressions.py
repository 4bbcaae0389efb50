"""HTTP bugs that fuzzing found, each pinned down over a real socket:

- a page cursor no store wrote (an integer past 64 bits, a time no datetime
  holds, a NUL) answered 500; it is a VALIDATION_ERROR on ``cursor``, on both stores;
- an SSE ``Last-Event-ID`` whose rooms were not an object answered 500, and one
  with positions ``subscribe`` would refuse attempted a recovery; it resumes nothing;
- an answer sent before the request body arrived (the door's 401, a 404, a
  405) left the keep-alive connection stuck: the next request on it waited for
  ``http.read_timeout_s``; and a connection the daemon meant to close stayed open.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import httpx
import orjson
import pytest
import trio
import trio.testing

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


# -- keep-alive after an early answer ------------------------------------------------------------

# Nothing else ticks meanwhile (see tests/test_gateway_timers.py).
QUIET: dict[str, Any] = {"jobs": {"enabled": False}, "presence": {"away_after_s": 86400.0}}


AUTOJUMP_S = 0.2


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # start_daemon keeps the clock still while the daemon starts.
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_S)


async def _read_response(stream: trio.SocketStream, buffer: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, headers, body, bytes after it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(f"the connection closed before a response: {buffer!r}")
        buffer += chunk
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("the connection closed inside a response body")
        buffer += chunk
    return int(status_line.split(" ")[1]), headers, buffer[:length], buffer[length:]


def _post_head(path: str, length: int, *, api_key: bool = False) -> bytes:
    auth = f"Authorization: Bearer {API_KEY}\r\n" if api_key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("path", "api_key", "status"),
    [
        ("/server/v1/publish", False, 401),  # the door refuses before any handler reads the body
        ("/server/v1/no-such-route", True, 404),
        ("/server/v1/stats", True, 405),
    ],
)
async def test_an_answer_sent_before_the_body_arrived_keeps_the_connection_usable(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock, path: str, api_key: bool, status: int
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(QUIET)
        stream = await trio.open_tcp_stream(*daemon.address())
        body = b'{"room": "job:1", "event": "progress"}'
        await stream.send_all(_post_head(path, len(body), api_key=api_key))
        # Like http.client (and so requests), the body follows the head: here a
        # second later, when the refusal is long decided.
        await trio.sleep(1)
        await stream.send_all(body)
        answered, headers, _, rest = await _read_response(stream, b"")
        assert answered == status and headers.get("connection") != "close"
        # The next request on the same connection is answered (it used to wait for
        # http.read_timeout_s, then the connection closed).
        started = trio.current_time()
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answered, _, payload, _ = await _read_response(stream, rest)
        assert answered == 200 and orjson.loads(payload)["status"] == "ok"
        assert trio.current_time() - started < 1
        await stream.aclose()


async def test_a_body_over_the_limit_is_refused_and_the_connection_closes(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(QUIET | {"http": {"max_body_bytes": 1024}})
        stream = await trio.open_tcp_stream(*daemon.address())
        await stream.send_all(_post_head("/server/v1/publish", 4096, api_key=True) + b"{" * 1000)
        answered, headers, payload, _ = await _read_response(stream, b"")
        assert answered == 413 and orjson.loads(payload)["error"]["code"] == "PAYLOAD_TOO_LARGE"
        # The rest of that body will not be read: the client must not send another
        # request on this connection, and the daemon closes it.
        assert headers["connection"] == "close"
        started = trio.current_time()
        assert await stream.receive_some(65536) == b""
        assert trio.current_time() - started < 1
