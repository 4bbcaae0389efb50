"""The operator console: its page, where it is served, the counters stream, and the page in Chromium.

- The page and its files carry a strict Content-Security-Policy, hold no inline
  script, style or handler, and never write HTML from data (a static check of the
  script; the browser test checks the behaviour).
- ``/console`` is served where the server API is (the internal listener, a
  loopback client listener, ``http.expose_server_api``) and while
  ``console.enabled`` is on; elsewhere it is a 404 like a path without a route.
- ``GET /server/v1/stats/stream`` (on Trio's MockClock) streams the node's
  counters, which move when a client connects and a room is published to; it is
  refused without a key and past ``console.max_streams``, and ends on a reload
  that removes its key and when the node drains.
- In headless Chromium (``tests/browser/console.test.mjs``, the harness of the
  demo page's test): every view loads, the counters move, a dead job is retried
  from the page, ``<script>`` in names, bodies, room ids and job fields shows as
  text, and a screenshot of each view lands in ``tests/artifacts/``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from realtimed.config import ConfigError, load_config
from realtimed.daemon import Daemon
from realtimed.http.console import CONTENT_SECURITY_POLICY
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, BASE_CONFIG, DaemonFactory, merge, toml_dumps
from tests.fixtures.tokens import token
from tests.node_support import node_major, run_in_group

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "realtimed" / "http" / "console_files"
BROWSER_TESTS = Path(__file__).resolve().parent / "browser"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PRODUCTION: dict[str, Any] = {
    "auth": {"hs256_secret": "a-production-secret-of-32-bytes-or-more"},
    "api": {"keys": ["a-production-key-of-at-least-32-characters"]},
}
PRODUCTION_AUTH = {"Authorization": "Bearer a-production-key-of-at-least-32-characters"}
# Nothing else ticks on the mock clock: no jobs or cron, presence turns nobody away, no history sweep.
QUIET: dict[str, Any] = {
    "jobs": {"enabled": False},
    "presence": {"away_after_s": 86400.0},
    "broker": {"history_sweep_s": 3600.0},
    "namespaces": [{"prefix": "lab:", "public": True, "client_publish": True, "history_size": 50, "presence": True}],
}
INSTALL_TIMEOUT_S = 300
BROWSER_TIMEOUT_S = 90


# -- the page --------------------------------------------------------------------------------------


def test_the_page_has_no_inline_code_and_the_script_writes_text_only() -> None:
    html = (FILES / "index.html").read_text()
    # The script without its comments (which name what it never does).
    script = re.sub(r"^\s*//.*$", "", (FILES / "console.js").read_text(), flags=re.MULTILINE)
    # Every <script> loads a file of the console; no inline handler, style or javascript: URL.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/console/console.js">']
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE)
    assert "<style" not in html and " style=" not in html and "javascript:" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing is loaded from another origin"
    # The script never turns data into HTML, nor keeps the key anywhere but in memory.
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                   "localStorage", "sessionStorage", "document.cookie", "indexedDB", "EventSource", "/ws"):
        assert banned not in script, banned
    assert "credentials: 'omit'" in script


async def test_the_page_is_served_with_a_strict_policy_and_the_data_needs_a_key(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for path, kind in (
                ("/console", "text/html"),
                ("/console/", "text/html"),
                ("/console/console.js", "text/javascript"),
                ("/console/console.css", "text/css"),
            ):
                answer = await http.get(path)
                assert answer.status_code == 200, path
                assert answer.headers["content-type"].startswith(kind)
                policy = answer.headers["content-security-policy"]
                assert policy == CONTENT_SECURITY_POLICY
                assert "script-src 'self';" in policy and "unsafe" not in policy and "default-src 'none'" in policy
                assert answer.headers["x-frame-options"] == "DENY"
                assert answer.headers["x-content-type-options"] == "nosniff"
                assert answer.headers["referrer-policy"] == "no-referrer"
                assert "set-cookie" not in answer.headers
            assert (await http.get("/console/console.js")).text == (FILES / "console.js").read_text()
            for missing in ("/console/../realtimed.toml", "/console/console.py", "/console/index.html.bak", "/consoles"):
                answer = await http.get(missing)
                assert answer.status_code == 404, missing
                assert answer.json()["error"]["code"] == "NOT_FOUND"
            assert (await http.post("/console")).status_code == 405
            # Every piece of data is behind the API key, and the server API sends no CORS headers.
            for path in ("/server/v1/stats/stream", "/server/v1/nodes", "/server/v1/stats"):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
                    answer = await http.get(path, headers={**headers, "Origin": "https://evil.example"})
                    assert answer.status_code == 401, (path, headers)
                    assert answer.json()["error"]["code"] == "UNAUTHORIZED"
                    assert "access-control-allow-origin" not in answer.headers
            nodes = await http.get("/server/v1/nodes", headers=AUTH)
            assert nodes.json() == {
                "nodes": [{"node": "t1", "sessions": 0, "users": 0, "rooms": 0, "deliveries": 0, "publications": 0}],
                "complete": True,
            }


async def test_served_only_where_the_server_api_is(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        async with httpx.AsyncClient() as http:
            # A public client listener and an internal one: the console is on the internal one only.
            split = await start_daemon(merge(PRODUCTION, {"http": {"listen": "0.0.0.0:0", "internal_listen": "127.0.0.1:0"}}))
            _, public_port = split.address("client")
            public = f"http://127.0.0.1:{public_port}"
            internal = split.url("internal")
            for path in ("/console", "/console/console.js"):
                refused = await http.get(public + path)
                assert refused.status_code == 404
                assert refused.json()["error"]["code"] == "NOT_FOUND"
                assert "content-security-policy" not in refused.headers
                assert (await http.get(internal + path)).status_code == 200
            async with http.stream("GET", internal + "/server/v1/stats/stream", headers=PRODUCTION_AUTH) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
            assert (await http.get(public + "/server/v1/stats/stream", headers=PRODUCTION_AUTH)).status_code == 404

            # A public client listener alone: no server API, no console, unless expose_server_api says so.
            closed = await start_daemon(merge(PRODUCTION, {"http": {"listen": "0.0.0.0:0"}}))
            _, port = closed.address("client")
            assert (await http.get(f"http://127.0.0.1:{port}/console")).status_code == 404
            exposed = await start_daemon(merge(PRODUCTION, {"http": {"listen": "0.0.0.0:0", "expose_server_api": True}}))
            _, port = exposed.address("client")
            assert (await http.get(f"http://127.0.0.1:{port}/console")).status_code == 200

            # Turned off: 404 on a loopback listener too, while the server API stays.
            off = await start_daemon({"console": {"enabled": False}})
            assert (await http.get(off.url() + "/console")).status_code == 404
            assert (await http.get(off.url() + "/server/v1/stats", headers=AUTH)).status_code == 200


async def test_nodes_lists_every_node_of_a_cluster(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        suffix = uuid.uuid4().hex[:8]
        # A loaded machine may be slow to answer: the survey waits longer than its default here.
        redis = {"broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0, "survey_timeout_s": 5.0}}
        a = await start_daemon(merge(redis, {"server": {"node": f"a-{suffix}"}}))
        b = await start_daemon(merge(redis, {"server": {"node": f"b-{suffix}"}}))
        client = await WsClient.connect(b.url().replace("http", "ws", 1) + "/ws", token=token(f"u-{suffix}"))
        try:
            await client.event("session.ready")
            async with httpx.AsyncClient(headers=AUTH, timeout=20) as http:
                answer = (await http.get(f"{a.url()}/server/v1/nodes")).json()
        finally:
            await client.close()
        # A Redis shared with other suites may carry their nodes too (an older version of them
        # cannot answer this question, which makes the answer incomplete): ours are there, in order.
        ours = {n["node"]: n for n in answer["nodes"] if n["node"].endswith(suffix)}
        assert [n["node"] for n in answer["nodes"]] == sorted(n["node"] for n in answer["nodes"])
        assert {name: (n["sessions"], n["users"], n["rooms"]) for name, n in ours.items()} == {
            f"a-{suffix}": (0, 0, 0),
            f"b-{suffix}": (1, 1, 0),
        }
        assert all(set(n) == {"node", "sessions", "users", "rooms", "deliveries", "publications"} for n in ours.values())


def test_a_static_folder_cannot_take_the_consoles_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, data={"http": {"static": [{"path": "/console/", "dir": str(tmp_path)}]}})
    assert dict(info.value.problems) == {"http.static[0].path": "'/console/' would shadow the daemon's own routes"}


# -- the counters stream ---------------------------------------------------------------------------


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.25)


async def _records(stream: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The stream's records as (event, data); comments and retry lines skipped."""
    event, data = "message", ""
    async for line in stream.aiter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif not line and data:
            yield event, orjson.loads(data)
            event, data = "message", ""


async def test_the_stats_stream_moves_with_sockets_publications_and_jobs(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(QUIET | {"console": {"stats_interval_s": 2.0}})
        store = daemon.services.store
        ws_url = daemon.url().replace("http", "ws", 1) + "/ws?token=" + token("alice")
        async with (
            httpx.AsyncClient(base_url=daemon.url()) as http,
            http.stream("GET", "/server/v1/stats/stream", headers=AUTH) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["cache-control"] == "no-cache"
            records = _records(stream)
            event, first = await anext(records)
            assert event == "stats"
            assert first["node"] == "t1"
            assert (first["sockets"], first["users"], first["users_online"], first["rooms"]) == (0, 0, 0, 0)
            assert first["deliveries_per_s"] == 0.0 and first["draining"] is False
            assert first["jobs"] == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "dead": 0, "cancelled": 0}
            assert first["queues"] == []
            started = trio.current_time()
            assert (await anext(records))[0] == "stats"
            assert trio.current_time() - started == pytest.approx(2.0, abs=0.3)

            async with open_websocket_url(ws_url) as ws:
                assert orjson.loads(await ws.get_message())["event"] == "session.ready"
                await ws.send_message(orjson.dumps({"op": "subscribe", "id": 1, "data": {"room": "lab:r"}}).decode())
                while orjson.loads(await ws.get_message()).get("id") != 1:
                    pass
                for i in range(3):
                    published = await http.post(
                        "/server/v1/publish", headers=AUTH, json={"room": "lab:r", "event": "tick", "data": {"i": i}}
                    )
                    assert published.json()["delivered"] == 1
                conversation = await http.post(
                    "/server/v1/conversations", headers=AUTH, json={"type": "group", "member_ids": ["alice", "bob"]}
                )
                sent = await http.post(
                    f"/server/v1/conversations/{conversation.json()['conversation']['id']}/messages",
                    headers=AUTH, json={"sender_id": "bob", "client_id": "c1", "body": "hello"},
                )
                assert sent.status_code == 200, sent.text
                await store.enqueue_job(queue="default", kind="x", payload={}, now=daemon.services.clock.now())
                seen: list[dict[str, Any]] = []
                async for _, record in records:
                    seen.append(record)
                    if record["deliveries"] >= 3 and record["messages"] == 1 and record["jobs"]["queued"] == 1:
                        break
                assert max(r["messages_per_s"] for r in seen) > 0
                assert record["queues"] == [{"queue": "default", "queued": 1, "oldest_due_age_s": record["queues"][0]["oldest_due_age_s"]}]
                assert record["queues"][0]["oldest_due_age_s"] >= 0
                assert (record["sockets"], record["websocket_sockets"], record["users"], record["users_online"]) == (1, 1, 1, 1)
                assert record["rooms"] == 1
                assert record["publications"] - first["publications"] >= 3
                assert max(r["deliveries_per_s"] for r in seen) > 0
                assert max(r["publications_per_s"] for r in seen) > 0
            # The socket has gone: the next records say so.
            async for _, record in records:
                if record["sockets"] == 0:
                    break
            assert record["users"] == 0


async def test_the_streams_share_one_read_of_the_job_counts(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(QUIET | {"console": {"stats_interval_s": 2.0, "jobs_interval_s": 6.0}})
        store = daemon.services.store
        reads: list[float] = []
        job_stats = store.job_stats

        async def counted() -> list[tuple[str, str, int]]:
            reads.append(trio.current_time())
            return await job_stats()

        monkeypatch.setattr(store, "job_stats", counted)
        async with (
            httpx.AsyncClient(base_url=daemon.url(), headers=AUTH) as http,
            http.stream("GET", "/server/v1/stats/stream") as one,
            http.stream("GET", "/server/v1/stats/stream") as two,
        ):
            first, second = _records(one), _records(two)
            for records in (first, second):
                for _ in range(3):
                    assert (await anext(records))[1]["jobs"]["queued"] == 0
            started = reads[0]
            await store.enqueue_job(queue="default", kind="x", payload={}, now=daemon.services.clock.now())
            async for _, record in first:
                if record["jobs"]["queued"] == 1:
                    break
            # Six records and more, one read per console.jobs_interval_s.
            assert len(reads) == 2
            assert reads[1] - started == pytest.approx(6.0, abs=1.0)


async def test_the_streams_are_bounded_and_end_with_their_key_or_the_node(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "realtimed.toml"
    base = merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}} | QUIET)
    base = merge(base, {"api": {"keys": [API_KEY, "another-key-that-stays"]}, "console": {"max_streams": 1}})
    path.write_text(toml_dumps(base))
    with trio.fail_after(600):
        daemon = Daemon(load_config(path, env={}), config_path=path, handle_signals=False)
        threshold, autojump_clock.autojump_threshold = autojump_clock.autojump_threshold, float("inf")
        await nursery.start(daemon.run)
        autojump_clock.autojump_threshold = threshold
        try:
            async with httpx.AsyncClient(base_url=daemon.url()) as http:
                async with http.stream("GET", "/server/v1/stats/stream", headers=AUTH) as stream:
                    records = _records(stream)
                    assert (await anext(records))[0] == "stats"
                    # A HEAD gets the head alone, and takes no place.
                    head = await http.head("/server/v1/stats/stream", headers=AUTH)
                    assert (head.status_code, head.headers["content-type"]) == (200, "text/event-stream")
                    # One more than console.max_streams is refused, with the error body.
                    refused = await http.get("/server/v1/stats/stream", headers=AUTH)
                    assert refused.status_code == 503
                    assert refused.json()["error"]["code"] == "UNAVAILABLE"
                    assert "console.max_streams" in refused.json()["error"]["message"]
                    # A reload that removes the key ends its stream (and turns the page off at once).
                    path.write_text(toml_dumps(merge(base, {"api": {"keys": ["another-key-that-stays"]}, "console": {"enabled": False}})))
                    assert await daemon.reload()
                    assert (await http.get("/console")).status_code == 404
                    async for event, record in records:
                        if event == "closed":
                            assert record == {"reason": "the API key is no longer accepted"}
                            break
                    assert [rest async for rest in records] == [], "the stream ends after its closed record"
                # Its place is free again. A drain ends the stream at once (a socket still open keeps
                # the node up to send the closed record).
                other = {"Authorization": "Bearer another-key-that-stays"}
                async with open_websocket_url(daemon.url().replace("http", "ws", 1) + "/ws?token=" + token("alice")) as ws:
                    assert orjson.loads(await ws.get_message())["event"] == "session.ready"
                    async with http.stream("GET", "/server/v1/stats/stream", headers=other) as stream:
                        assert stream.status_code == 200
                        records = _records(stream)
                        assert (await anext(records))[0] == "stats"
                        daemon.request_drain()
                        drained = trio.current_time()
                        assert await anext(records) == ("closed", {"reason": "the node is draining"})
                        assert trio.current_time() - drained < 1.0
        finally:
            daemon.request_drain()
            with trio.move_on_after(10):
                await daemon.wait_stopped()


# -- the page in Chromium --------------------------------------------------------------------------

XSS_USER = '<script>window.__xss="user"</script>'
XSS_ROOM = 'lab:<img/src=x/onerror=window.__xss="room">'
XSS_BODY = '<script>window.__xss="body"</script><b>bold</b>'
XSS_QUEUE = '<script>window.__xss="queue"</script>'
XSS_KIND = '<img src=x onerror="window.__xss=\'kind\'">'
XSS_ERROR = '<script>window.__xss="error"</script>'
CONSOLE_KEY_NAME = "console-test"


def _missing(what: str) -> None:
    """Skip locally; under CI the browser test must run, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(what)


@pytest.fixture
def tools() -> tuple[str, str, str]:
    """node, npm and Chromium, or a skip (a failure under CI)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("Node.js and npm are needed for the browser tests")
    assert node is not None and npm is not None
    if node_major(node) < 20:
        _missing("the browser tests need Node 20 or later")
    chromium = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        _missing(f"Chromium is needed for the browser tests ({chromium} is missing)")
    return node, npm, chromium


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + BROWSER_TIMEOUT_S + 60)
async def test_the_console_in_chromium(
    start_daemon: DaemonFactory, tools: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    node, npm, chromium = tools
    caplog.set_level(logging.INFO, logger="realtimed.http.app")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    with trio.fail_after(INSTALL_TIMEOUT_S):
        if not (BROWSER_TESTS / "node_modules").is_dir():
            await run_in_group([npm, "ci", "--no-audit", "--no-fund"], BROWSER_TESTS, env)
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("console-*.png"):
        old.unlink()  # the screenshots of an earlier run

    daemon = await start_daemon(
        {
            "api": {"keys": [{"name": CONSOLE_KEY_NAME, "key": API_KEY}]},
            "gateway": {"allowed_origins": ["*"]},
            "console": {"stats_interval_s": 0.25, "jobs_interval_s": 1.0},
            "namespaces": QUIET["namespaces"],
        }
    )
    svc = daemon.services
    # A dead job whose every field is markup, in a queue no worker serves (a retried job stays queued).
    now = svc.clock.now()
    job, _ = await svc.store.enqueue_job(queue=XSS_QUEUE, kind=XSS_KIND, payload={"note": XSS_BODY}, now=now, max_attempts=1)
    [claimed] = await svc.store.claim_jobs(queue=XSS_QUEUE, limit=1, owner="test", lease_s=30, now=now)
    assert await svc.store.fail_job(job_id=claimed.id, owner="test", error=XSS_ERROR, now=now, retry_at=None)
    ws_base = daemon.url().replace("http", "ws", 1) + "/ws"
    # A user whose id is markup, in a room whose name is markup, that has a publication whose body is markup.
    client = await WsClient.connect(ws_base, token=token(XSS_USER, rooms=["*"]))
    try:
        await client.event("session.ready")
        await client.ok("subscribe", {"room": XSS_ROOM})
        await client.ok("publish", {"room": XSS_ROOM, "event": "note", "data": {"body": XSS_BODY}})
        with trio.fail_after(BROWSER_TIMEOUT_S):
            # The test's own client uses Node's WebSocket, behind a flag before Node 22.
            flags = ["--experimental-websocket"] if node_major(node) < 22 else []
            output = await run_in_group(
                [node, *flags, "--test", "--test-timeout=60000", "console.test.mjs"],
                BROWSER_TESTS,
                {
                    **env,
                    "CONSOLE_URL": daemon.url(),
                    "API_KEY": API_KEY,
                    "COUNTER_TOKEN": token("counter-user", rooms=["*"]),
                    "DEAD_JOB_ID": job.id,
                    "XSS": orjson.dumps(
                        {"user": XSS_USER, "room": XSS_ROOM, "body": XSS_BODY, "queue": XSS_QUEUE, "kind": XSS_KIND, "error": XSS_ERROR}
                    ).decode(),
                    "CHROMIUM_PATH": chromium,
                    "ARTIFACTS": str(ARTIFACTS),
                },
            )
    finally:
        await client.close()
    summary = [line for line in output.splitlines() if re.match(r"# (tests|pass|fail|cancelled|skipped|duration_ms) ", line)]
    print("\n".join(summary))
    print(f"screenshots: {ARTIFACTS}")
    assert any(line.startswith("# pass ") and int(line.split()[2]) > 0 for line in summary), output[-5000:]
    assert any(line == "# fail 0" for line in summary), output[-5000:]
    # The retry from the page changed the job in the store.
    retried = await svc.store.get_job(job.id)
    assert retried is not None
    assert (retried.status, retried.attempts) == ("queued", 0)
    # Each action is in the log with the API key's name, and as the console's.
    audit = [r.getMessage() for r in caplog.records if r.name == "realtimed.http.app" and "with API key" in r.getMessage()]
    assert f"server API POST /server/v1/jobs/{job.id}/retry -> 200 with API key {CONSOLE_KEY_NAME} from the console" in audit
    assert any(
        line.startswith("server API POST /server/v1/users/counter-user/disconnect -> 200") and line.endswith("from the console")
        for line in audit
    ), audit
    assert all(API_KEY not in line for line in audit)
    for view in ("sign-in", "nodes", "users", "rooms", "jobs", "push", "deliveries"):
        assert (ARTIFACTS / f"console-{view}.png").is_file(), view
