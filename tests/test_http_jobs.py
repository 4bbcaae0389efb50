"""HTTP jobs: signed calls to configured targets, made through the server API and
``[[cron]]``, against a real HTTP receiver that verifies each request with the
``standardwebhooks`` package. Real daemons on SQLite and PostgreSQL, on Trio's
MockClock with a wall clock that follows it (backoff, Retry-After, timeouts and
cron ticks are minutes of mock time, a few seconds of real time).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

from realtimed.config import (
    Config,
    ConfigError,
    HttpTargetConfig,
    JobQueueConfig,
    JobsConfig,
    config_to_dict,
    load_config,
)
from realtimed.daemon import Daemon
from realtimed.errors import ValidationFailed
from realtimed.jobs.cron import cron_dedupe_key
from realtimed.jobs.http import HttpJob, cron_payload, parse_http_job_request, path_problem, target_url
from realtimed.jobs.kinds import cron_config_problems
from realtimed.outbound.client import retry_after_s
from realtimed.store import open_store
from tests.fixtures.daemon import API_KEY, BASE_CONFIG, DaemonFactory, make_config, merge, toml_dumps
from tests.notify_support import following
from tests.test_cli_store_checks import realtimed
from tests.webhook_receiver import Answer, Receiver, new_secret

SERVER = {"Authorization": f"Bearer {API_KEY}"}
AUTOJUMP_S = 0.25  # real I/O (SQLite's thread, PostgreSQL, the receiver) must not let the clock jump
SECRET = new_secret()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_S)


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


def config(receiver: Receiver, *, cron: list[dict[str, Any]] | None = None, **http: Any) -> dict[str, Any]:
    return {
        "jobs": {
            "poll_s": 60.0,  # the runner wakes for new work and at each run_at; few timers let the clock jump far
            "queues": [{"name": "http", "concurrency": 16}],
            "http": {
                "allow_private": True, "backoff_base_s": 10.0, "backoff_max_s": 60.0, "timeout_s": 5.0,
                "max_body_bytes": 1000, **http,
            },
            "http_targets": [{
                "name": "app", "base_url": f"http://127.0.0.1:{receiver.port}/api/", "secret": SECRET,
                "headers": {"X-App-Token": "t0ken"},
            }],
        },
        "cron": cron or [],
        "metrics": {"loop_lag_interval_s": 60.0},
    }


@asynccontextmanager
async def api(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=daemon.url() + "/server/v1", headers=SERVER, timeout=60) as http:
        yield http


async def enqueue(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    answer = await http.post("/jobs", json={"kind": "http", "target": "app", **fields})
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()["job"]
    return job


async def refused(http: httpx.AsyncClient, **fields: Any) -> str:
    """The field a bad request is refused for (400 VALIDATION_ERROR)."""
    answer = await http.post("/jobs", json=fields)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    field: str = error["field"]
    return field


async def job_when(http: httpx.AsyncClient, job_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = (await http.get(f"/jobs/{job_id}")).json()["job"]
        if done(job):
            return job
        await trio.sleep(5)


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "dead", "failed")


async def test_http_jobs_are_signed_and_retried_as_the_answers_say(
    nursery: trio.Nursery, start_daemon: DaemonFactory, store_section: dict[str, Any], clock: trio.testing.MockClock
) -> None:
    wall = following(datetime.now(UTC))
    receiver = Receiver([SECRET], now=wall.now)
    await receiver.start(nursery)
    with trio.fail_after(3600):  # mock time: minutes of backoff pass in seconds
        daemon = await start_daemon(merge(store_section, config(receiver)), clock=wall)
        retry_at = (wall.now() + timedelta(seconds=60)).replace(microsecond=0)
        at = format_datetime(retry_at, usegmt=True)
        receiver.script = {
            "/api/retry": [Answer(503, body=b"busy")],
            "/api/later": [Answer(429, retry_after="40")],
            "/api/date": [Answer(503, retry_after=at)],
            "/api/gone": [Answer(404, body=b"no such order")],
            "/api/timeout": [Answer(408)],
            "/api/slow": [Answer(200, delay_s=30)],  # beyond jobs.http.timeout_s
            "/api/down": [Answer(500), Answer(502)],
        }
        async with api(daemon) as http:
            ok = await enqueue(http, path="/orders/1?notify=yes", method="PUT", body={"order": 1})
            got = await enqueue(http, path="ping", method="GET")
            jobs = {
                name: await enqueue(http, path=name, body={"n": name})
                for name in ("retry", "later", "date", "gone", "timeout", "slow")
            }
            down = await enqueue(http, path="down", max_attempts=2, backoff_base_s=1, backoff_max_s=2)
            done = {name: await job_when(http, job["id"], finished) for name, job in jobs.items()}
            down = await job_when(http, down["id"], finished)

            # Signed per Standard Webhooks (verified by the package) with the job id as webhook-id.
            by_id = {r.webhook_id: r for r in receiver.received}
            put = by_id[ok["id"]]
            assert (put.method, put.target, put.body) == ("PUT", "/api/orders/1?notify=yes", {"order": 1})
            assert put.headers["x-app-token"] == "t0ken" and put.headers["user-agent"] == "realtimed-jobs"
            assert put.headers["content-type"] == "application/json"
            ping = by_id[got["id"]]
            assert (ping.method, ping.target, ping.body) == ("GET", "/api/ping", None)
            assert receiver.unverified == 0

            # A 5xx, then a 2xx: succeeded on the second attempt, after the backoff (10 s with jitter: 5 to
            # 10; not backoff_max_s, 30 to 60; the bound above leaves room for the clock's jumps).
            assert (done["retry"]["status"], done["retry"]["attempts"]) == ("succeeded", 2)
            times = {name: sorted(e.at for e in receiver.log if e.target == f"/api/{name}") for name in jobs}
            assert 5 <= times["retry"][1] - times["retry"][0] < 25
            # Retry-After in seconds and as an HTTP date are honoured (not the 10 s backoff).
            assert done["later"]["status"] == "succeeded" and times["later"][1] - times["later"][0] >= 40
            assert done["date"]["status"] == "succeeded"
            dated = sorted((e for e in receiver.log if e.target == "/api/date"), key=lambda e: e.at)
            assert dated[1].wall is not None and dated[1].wall >= retry_at
            # 408 is retried; a 4xx other than 408 and 429 is final: dead after one attempt.
            assert (done["timeout"]["status"], done["timeout"]["attempts"]) == ("succeeded", 2)
            gone = done["gone"]
            assert (gone["status"], gone["attempts"]) == ("dead", 1)
            assert "HTTP 404 after" in gone["last_error"] and " ms: no such order" in gone["last_error"]
            # No answer within jobs.http.timeout_s: retried.
            assert (done["slow"]["status"], done["slow"]["attempts"]) == ("succeeded", 2)
            assert times["slow"][1] - times["slow"][0] >= 5
            # 5xx until max_attempts: dead, with the last answer's status.
            assert (down["status"], down["attempts"]) == ("dead", 2) and "HTTP 502" in down["last_error"]

            # The operator steers them with the jobs API: the dead one runs again and succeeds.
            listed = (await http.get("/jobs", params={"kind": "http", "status": "dead"})).json()["jobs"]
            assert {j["id"] for j in listed} == {gone["id"], down["id"]}
            assert (await http.post(f"/jobs/{gone['id']}/retry")).status_code == 200
            again = await job_when(http, gone["id"], finished)
            assert again["status"] == "succeeded"

            # A unique key answers the job that holds it; a later job can be cancelled.
            first = await enqueue(http, path="once", unique_key="order-7", delay_s=3600, max_attempts=3, queue="default")
            second = await enqueue(http, path="other", unique_key="order-7")
            assert second["id"] == first["id"] and first["max_attempts"] == 3 and first["queue"] == "default"
            assert first["payload"]["path"] == "once" and first["status"] == "queued"
            assert (await http.post(f"/jobs/{first['id']}/cancel")).json()["job"]["status"] == "cancelled"

            # Every field is checked, and named when refused.
            good = {"kind": "http", "target": "app", "path": "x"}
            assert await refused(http, **{**good, "target": "billing"}) == "target"
            assert await refused(http, **{**good, "kind": "noop"}) == "kind"
            assert await refused(http, **{**good, "path": "https://evil.example/x"}) == "path"
            assert await refused(http, **{**good, "path": "//evil.example/x"}) == "path"
            assert await refused(http, **{**good, "path": "a/%2e%2e/admin"}) == "path"
            assert await refused(http, **{**good, "method": "TRACE"}) == "method"
            assert await refused(http, **{**good, "method": "GET", "body": {"a": 1}}) == "body"
            assert await refused(http, **{**good, "body": "x" * 1000}) == "body"  # jobs.http.max_body_bytes
            assert await refused(http, **{**good, "delay_s": 5, "run_at": "2030-01-01T00:00:00Z"}) == "run_at"
            assert await refused(http, **{**good, "run_at": "tomorrow"}) == "run_at"
            assert await refused(http, **{**good, "delay_s": 10**9}) == "delay_s"
            assert await refused(http, **{**good, "max_attempts": 0}) == "max_attempts"
            assert await refused(http, **{**good, "backoff_base_s": 9, "backoff_max_s": 1}) == "backoff_base_s"
            assert await refused(http, **{**good, "queue": "elsewhere"}) == "queue"
            assert await refused(http, **{**good, "unique_key": ""}) == "unique_key"
            assert await refused(http, **{**good, "unique_key": "a\x00b"}) == "unique_key"
            assert await refused(http, **{**good, "body": {"a": "\x00"}}) == "body"
            assert await refused(http, **{**good, "url": "http://evil.example"}) == "url"
            assert await refused(http, **{**good, "run_at": "0001-01-01T00:00:00+14:00"}) == "run_at"  # before UTC's year 1
            # The same time elsewhere in the server API is a 400 too (parse_iso), not a 500.
            scheduled = await http.post("/notifications", json={
                "user_ids": ["u1"], "type": "announcement", "vars": {"title": "t", "body": "b"},
                "scheduled_for": "0001-01-01T00:00:00+14:00",
            })
            assert scheduled.status_code == 400 and scheduled.json()["error"]["field"] == "scheduled_for"
            # A time past runs now.
            past = await enqueue(http, path="past", run_at="2001-01-01T00:00:00+14:00")
            assert past["run_at"] >= ok["run_at"]
            assert (await http.post("/jobs", content=b"[1]")).status_code == 400


async def test_a_target_that_is_not_public_is_refused_unless_allowed(
    nursery: trio.Nursery, start_daemon: DaemonFactory, clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    receiver = Receiver([SECRET])
    await receiver.start(nursery)
    settings = config(receiver, allow_private=False)
    with trio.fail_after(7200):  # mock time, which jumps while the commands below run
        # The commands run on the machine's clock: the daemon's wall clock starts from it.
        daemon = await start_daemon(settings, clock=following(datetime.now(UTC)))
        async with api(daemon) as http:
            job = await enqueue(http, path="x", body={"a": 1})
            job = await job_when(http, job["id"], finished)
            assert (job["status"], job["attempts"]) == ("dead", 1)
            assert "not a public address (jobs.http.allow_private)" in job["last_error"]
            # The operator's commands see and steer it too.
            config_file = tmp_path / "realtimed.toml"
            config_file.write_text(toml_dumps(merge(merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}}), settings)))
            listed = await realtimed(tmp_path, "jobs", "list", "--kind", "http", "--json", "-c", str(config_file))
            assert listed.returncode == 0, listed.stderr
            [shown] = orjson.loads(listed.stdout)["jobs"]
            assert shown["id"] == job["id"] and shown["status"] == "dead" and "allow_private" in shown["last_error"]
            retried = await realtimed(tmp_path, "jobs", "retry", job["id"], "-c", str(config_file))
            assert retried.returncode == 0, retried.stderr
            again = await job_when(http, job["id"], lambda j: j["status"] == "dead" and j["attempts"] == 1
                                   and j["finished_at"] > job["finished_at"])
            assert "not a public address" in again["last_error"]
    assert receiver.requests == 0


async def test_a_reload_applies_new_targets_and_secrets(
    nursery: trio.Nursery, tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    rotated = new_secret()
    receiver = Receiver([rotated])  # the application moved to a new secret first
    await receiver.start(nursery)
    path = tmp_path / "realtimed.toml"
    base = merge(merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}}), config(receiver))
    path.write_text(toml_dumps(base))
    cfg = load_config(path, env={}, checks=(cron_config_problems,))
    daemon = Daemon(cfg, config_path=path, handle_signals=False, clock=following(datetime.now(UTC)))
    with trio.fail_after(3600):  # mock time
        clock.autojump_threshold = math.inf  # still while the daemon starts (as start_daemon does)
        await nursery.start(daemon.run)
        clock.autojump_threshold = AUTOJUMP_S
        async with api(daemon) as http:
            job = await enqueue(http, path="signed", body={"n": 1})
            job = await job_when(http, job["id"], finished)
            assert job["status"] == "dead" and "HTTP 401" in job["last_error"]  # signed with the old secret
            assert await refused(http, kind="http", target="billing") == "target"
            targets = [
                {**base["jobs"]["http_targets"][0], "secret": rotated},
                {"name": "billing", "base_url": f"http://127.0.0.1:{receiver.port}/billing", "secret": rotated},
            ]
            path.write_text(toml_dumps(merge(base, {"jobs": {"http_targets": targets, "poll_s": 30.0}})))
            assert await daemon.reload() is True
            assert daemon.cfg.jobs.poll_s == 60.0  # the rest of [jobs] waits for a restart
            assert (await http.post(f"/jobs/{job['id']}/retry")).status_code == 200
            assert (await job_when(http, job["id"], finished))["status"] == "succeeded"
            billed = await enqueue(http, target="billing", path="invoices")
            assert (await job_when(http, billed["id"], finished))["status"] == "succeeded"
        daemon.request_drain()
        await daemon.wait_stopped()
    assert {r.target for r in receiver.received} == {"/api/signed", "/billing/invoices"}


async def test_a_cron_http_entry_runs_once_per_tick_across_two_daemons(
    nursery: trio.Nursery, start_daemon: DaemonFactory, clock: trio.testing.MockClock, pg_dsn: str, tmp_path: Path
) -> None:
    # Both nodes read one wall clock, 5 s after a minute: the ticks come at :10, :20, :30 ...
    start = datetime.now(UTC).replace(second=5, microsecond=0)
    wall = following(start)
    receiver = Receiver([SECRET], now=wall.now)
    await receiver.start(nursery)
    entry = {
        "name": "digest", "schedule": "*/10 * * * * *", "kind": "http", "target": "app", "path": "digest",
        "body": {"what": "weekly digest"},
    }
    base = merge(config(receiver, cron=[entry]), {"store": {"backend": "postgres", "postgres_dsn": pg_dsn}})
    with trio.fail_after(3600):
        daemons = [
            await start_daemon(merge(base, {"server": {"node": node}}), clock=wall) for node in ("n1", "n2")
        ]
        while len(receiver.received) < 3:
            await trio.sleep(1)
        for daemon in daemons:
            daemon.request_drain()
            await daemon.wait_stopped()
        # Every tick claimed made exactly one job, though two nodes ran the entry.
        async with trio.open_nursery() as inner:
            store = open_store(make_config(tmp_path, base), clock=wall)
            await inner.start(store.run)
            jobs, _ = await store.list_jobs(kind="http", limit=500)
            last = await store.cron_last_tick(name="digest")
            inner.cancel_scope.cancel()
    assert last is not None
    ticks = int((last - start).total_seconds() - 5) // 10 + 1  # :10 to the last one claimed
    expected = [cron_dedupe_key("digest", start + timedelta(seconds=5 + 10 * i)) for i in range(ticks)]
    assert ticks >= 3 and sorted(str(job.dedupe_key) for job in jobs) == sorted(expected)
    assert all(job.payload == {"target": "app", "path": "digest", "method": "POST", "body": {"what": "weekly digest"}}
               and job.max_attempts == 8 for job in jobs)  # jobs.http.max_attempts, not jobs.max_attempts
    digests = [r for r in receiver.received if r.target == "/api/digest"]
    assert len({r.webhook_id for r in digests}) == len(digests) >= 3
    assert {r.webhook_id for r in digests} <= {job.id for job in jobs}
    assert all(r.method == "POST" and r.body == {"what": "weekly digest"} for r in digests)


# -- sans IO ----------------------------------------------------------------------------------


def test_paths_are_relative_to_the_target() -> None:
    for path in ("", "/", "orders/1", "/orders/1?x=1&y=%20", "a/b.json", "v1/..x/y", "%2Fetc"):
        assert path_problem(path) is None, path
    for path in (
        "http://evil/x", "//evil/x", "a/../b", "..", "./a", "a/%2E%2e/b", "a\\b", "a b", "a#frag", "a\nb",
        "javascript:alert(1)", "é", "x" * 2001,
    ):
        assert path_problem(path) is not None, path
    assert target_url("http://h/api/", "/x?y=1") == "http://h/api/x?y=1"
    assert target_url("http://h/api", "x") == "http://h/api/x"
    assert target_url("http://h/api", "") == "http://h/api"


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s({"retry-after": "120"}, now) == 120
    assert retry_after_s({"retry-after": " 1.5 "}, now) == 1.5
    assert retry_after_s({"retry-after": "Mon, 02 Mar 2026 12:05:00 GMT"}, now) == 300
    assert retry_after_s({"retry-after": "Mon, 02 Mar 2026 11:00:00 GMT"}, now) == 0  # past: at once
    for bad in ("-1", "soon", "nan", "inf", ""):
        assert retry_after_s({"retry-after": bad}, now) is None, bad
    assert retry_after_s({}, now) is None


def test_a_request_without_when_or_retries_takes_the_configured_ones() -> None:
    cfg = Config(jobs=JobsConfig(
        queues=[JobQueueConfig(name="reports")],
        http_targets=[HttpTargetConfig(name="app", base_url="https://app.example", secret=SECRET)],
    ))
    now = datetime(2026, 3, 2, tzinfo=UTC)
    req = parse_http_job_request({"kind": "http", "target": "app", "path": None, "queue": "reports"}, cfg, now)
    assert req.job == HttpJob(target="app", path="", method="POST")
    assert (req.queue, req.run_at, req.max_attempts, req.dedupe_key) == ("reports", None, 8, None)
    req = parse_http_job_request(
        {"kind": "http", "target": "app", "run_at": "2026-03-02T01:00:00+01:00", "unique_key": "k"}, cfg, now
    )
    assert (req.queue, req.run_at, req.dedupe_key) == ("http", now, "http:k")
    with pytest.raises(ValidationFailed) as info:
        parse_http_job_request({"kind": "http", "target": "app", "run_at": "2026-06-02T00:00:00Z"}, cfg, now)
    assert info.value.field == "run_at"  # beyond jobs.http.max_delay_s


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, data=data, checks=(cron_config_problems,))
    return dict(info.value.problems)


def test_targets_and_cron_http_entries_are_checked_at_load() -> None:
    target = {"name": "app", "base_url": "https://app.example/hooks", "secret": SECRET}
    found = problems({
        "jobs": {"http_targets": [
            target,
            {**target, "base_url": "ftp://x"},
            {"name": "b", "base_url": "https://u:p@x", "secret": "nope"},
            {"name": "c", "base_url": "https://x/?q=1", "secret": SECRET, "headers": {"Host": "y", "X-A": "1\n2"}},
        ]},
        "cron": [
            {"name": "ok", "schedule": "0 4 * * *", "kind": "http", "target": "app", "path": "nightly"},
            {"name": "t", "schedule": "0 4 * * *", "kind": "http", "target": "billing"},
            {"name": "p", "schedule": "0 4 * * *", "kind": "http", "target": "app", "path": "../x"},
            {"name": "m", "schedule": "0 4 * * *", "kind": "http", "target": "app", "method": "HEAD"},
            {"name": "g", "schedule": "0 4 * * *", "kind": "http", "target": "app", "method": "GET", "body": {"a": 1}},
            {"name": "big", "schedule": "0 4 * * *", "kind": "http", "target": "app", "body": {"a": "x" * 70000}},
            {"name": "pl", "schedule": "0 4 * * *", "kind": "http", "target": "app", "payload": {"a": 1}},
            {"name": "n", "schedule": "0 4 * * *", "kind": "noop", "target": "app"},
        ],
    })
    assert set(found) == {
        "jobs.http_targets[1].name", "jobs.http_targets[1].base_url", "jobs.http_targets[2].base_url",
        "jobs.http_targets[2].secret", "jobs.http_targets[3].base_url", "jobs.http_targets[3].headers.Host",
        "jobs.http_targets[3].headers.X-A", "cron[1].target", "cron[2].path", "cron[3].method", "cron[4].body",
        "cron[5].body", "cron[6].payload", "cron[7].target",
    }
    assert found["jobs.http_targets[1].name"] == "duplicate name 'app'"
    assert "no [[jobs.http_targets]] target 'billing'" in found["cron[1].target"]
    assert "jobs.http.max_body_bytes" in found["cron[5].body"]
    ok = load_config(None, env={}, data={"jobs": {"http_targets": [{**target, "headers": {"Authorization": "Bearer t"}}]}, "cron": [
        {"name": "ok", "schedule": "0 4 * * *", "kind": "http", "target": "app", "path": "nightly", "method": "GET"},
    ]}, checks=(cron_config_problems,))
    assert cron_payload(ok.cron[0]) == {"target": "app", "path": "nightly", "method": "GET"}
    shown = config_to_dict(ok)["jobs"]["http_targets"][0]
    assert shown["headers"] == {"Authorization": "***"} and shown["secret"] == "***"


async def test_a_target_with_two_secrets_signs_with_both(
    nursery: trio.Nursery, start_daemon: DaemonFactory, clock: trio.testing.MockClock
) -> None:
    new, old = new_secret(), new_secret()
    wall = following(datetime.now(UTC))
    receiver = Receiver([new, old], now=wall.now)
    await receiver.start(nursery)
    settings = config(receiver)
    base_url = f"http://127.0.0.1:{receiver.port}"
    settings["jobs"]["http_targets"] = [
        {"name": "app", "base_url": f"{base_url}/rotating", "secrets": [new, old]},
        {"name": "legacy", "base_url": f"{base_url}/legacy", "secret": old},
    ]
    with trio.fail_after(3600):
        daemon = await start_daemon(settings, clock=wall)
        async with api(daemon) as http:
            jobs = [await enqueue(http, body={"n": 1}), await enqueue(http, target="legacy", body={"n": 2})]
            for job in jobs:
                assert (await job_when(http, job["id"], finished))["status"] == "succeeded"
    signed = {r.target: r for r in receiver.received}
    # The standardwebhooks package verifies each signature alone: the new one and the old one.
    assert signed["/rotating"].verified_with == (0, 1)
    assert len(signed["/rotating"].headers["webhook-signature"].split()) == 2
    assert signed["/legacy"].verified_with == (1,)
    assert len(signed["/legacy"].headers["webhook-signature"].split()) == 1


def test_target_secrets_are_checked_at_load_and_redacted() -> None:
    new, old = new_secret(), new_secret()
    target = {"name": "app", "base_url": "https://app.example/hooks"}
    found = problems({"jobs": {"http_targets": [
        {**target, "name": "both", "secret": new, "secrets": [new]},
        {**target, "name": "three", "secrets": [new, old, new_secret()]},
        {**target, "name": "bad", "secrets": [new, "whsec_short"]},
        {**target, "name": "none"},
    ]}})
    assert found == {
        "jobs.http_targets[0].secrets": "give secret or secrets, not both",
        "jobs.http_targets[1].secrets": "give one secret, or two while rotating",
        "jobs.http_targets[2].secrets[1]": "must be whsec_ then the base64 of 24 to 64 random bytes",
        "jobs.http_targets[3].secret": "must be whsec_ then the base64 of 24 to 64 random bytes (or give secrets)",
    }
    ok = load_config(None, env={}, data={"jobs": {"http_targets": [{**target, "secrets": [new, old]}]}})
    assert ok.jobs.http_targets[0].signing_secrets == (new, old)
    shown = config_to_dict(ok)["jobs"]["http_targets"][0]
    assert shown["secrets"] == ["***", "***"] and shown["secret"] == ""
