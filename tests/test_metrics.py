"""The metrics an SRE alerts on, scraped from a real daemon's /metrics after a real session.

A client connects with the third-party ``websockets`` library, subscribes (with
recovery), sends ops; the server API publishes over httpx; then /metrics is
scraped and each family is checked for its labels and for having moved. The
registry is the process's, so every check compares a scrape after with one
before. The dashboard and alert rules under deploy/ are checked to name only
metrics that exist.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

import realtimed.daemon  # noqa: F401  (imports every module, so every family is registered)
from realtimed import metrics, protocol
from realtimed.broker import redis as redis_broker
from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

ROOT = Path(__file__).resolve().parent.parent
SERVER = {"Authorization": f"Bearer {API_KEY}"}
NAMESPACES: list[dict[str, Any]] = [{"prefix": "job:", "history_size": 100, "history_ttl_s": 600, "recovery_cap": 5}]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


async def scrape(daemon: Daemon) -> Samples:
    async with httpx.AsyncClient(base_url=daemon.url()) as http:
        answer = await http.get("/metrics")
        assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples if sample == name]


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


async def connect(daemon: Daemon, user: str = "alice") -> WsClient:
    client = await WsClient.connect(ws_url(daemon), token=token(user, rooms=["job:*"]))
    await client.event("session.ready")
    return client


async def publish(http: httpx.AsyncClient, room: str, i: int) -> None:
    answer = await http.post("/server/v1/publish", json={"room": room, "event": "job.progress", "data": {"i": i}})
    assert answer.status_code == 200, answer.text


async def test_a_session_moves_every_new_metric(start_daemon: DaemonFactory, backend: dict[str, Any]) -> None:
    with trio.fail_after(30):
        store_backend = backend.get("store", {}).get("backend", "sqlite")
        daemon = await start_daemon(
            {"namespaces": NAMESPACES, "metrics": {"loop_lag_interval_s": 0.02, "readiness_interval_s": 1}, **backend}
        )
        before = await scrape(daemon)
        client = await connect(daemon)
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            epoch = (await client.ok("subscribe", {"room": "job:1"}))["epoch"]
            during = await scrape(daemon)
            await client.ok("unsubscribe", {"room": "job:1"})
            for i in range(3):
                await publish(http, "job:1", i)
            recovered = await client.ok("subscribe", {"room": "job:1", "since": {"seq": 1, "epoch": epoch}})
            assert recovered["recovered"] is True
            reset = await client.ok("subscribe", {"room": "job:2", "since": {"seq": 5, "epoch": "gone"}})
            assert reset["recovered"] is False
            await client.ok("notification.list", {})
            assert (await http.get("/no/such/route")).status_code == 404
        # realtimed_backend_ready moves without anyone asking /readyz.
        metrics.READY.labels("store").set(0)
        while metrics.READY.labels("store")._value.get() != 1:
            await trio.sleep(0.05)
        await trio.sleep(0.1)  # a few lag samples
        after = await scrape(daemon)
        await client.close()

    for op in ("subscribe", "unsubscribe", "notification.list"):
        assert value(after, "realtimed_op_duration_seconds_count", op=op) > value(
            before, "realtimed_op_duration_seconds_count", op=op
        ), op
    route = {"route": "/server/v1/publish", "method": "POST"}
    assert value(after, "realtimed_http_request_duration_seconds_count", **route) >= 3 + value(
        before, "realtimed_http_request_duration_seconds_count", **route
    )
    # The route template, never the path: a path nobody serves is "unmatched".
    routes = {labels["route"] for labels in labelled(after, "realtimed_http_request_duration_seconds_count")}
    assert "unmatched" in routes and "/no/such/route" not in routes
    assert all(r == "unmatched" or r.startswith("/") for r in routes)

    store_calls = sum(
        v for (name, labels), v in after.items()
        if name == "realtimed_store_call_duration_seconds_count" and ("backend", store_backend) in labels
    ) - sum(
        v for (name, labels), v in before.items()
        if name == "realtimed_store_call_duration_seconds_count" and ("backend", store_backend) in labels
    )
    assert store_calls > 0
    operations = {
        labels["operation"] for labels in labelled(after, "realtimed_store_call_duration_seconds_count")
        if labels["backend"] == store_backend
    }
    assert operations and all(re.fullmatch(r"[a-z_][a-z0-9_]*", op) for op in operations), operations

    assert value(after, "realtimed_broker_publish_duration_seconds_count") >= 3 + value(
        before, "realtimed_broker_publish_duration_seconds_count"
    )
    assert value(after, "realtimed_event_loop_lag_seconds_count") > value(before, "realtimed_event_loop_lag_seconds_count")
    assert value(after, "realtimed_recoveries_total", outcome="recovered") == 1 + value(
        before, "realtimed_recoveries_total", outcome="recovered"
    )
    assert value(after, "realtimed_recoveries_total", outcome="reset") == 1 + value(
        before, "realtimed_recoveries_total", outcome="reset"
    )
    for name in ("realtimed_socket_received_bytes_total", "realtimed_socket_sent_bytes_total"):
        assert value(after, name, transport="websocket") > value(before, name, transport="websocket") + 50, name
    assert value(during, "realtimed_subscriptions") == value(before, "realtimed_subscriptions") + 1
    assert value(after, "realtimed_subscriptions") == value(before, "realtimed_subscriptions") + 2  # job:1 and job:2
    assert value(after, "realtimed_cluster_nodes") == 1
    assert value(after, "realtimed_backend_ready", backend="store") == 1
    # The in-process broker has nothing to be connected to: no gauge that reads 0 like an outage.
    assert not labelled(after, "realtimed_broker_connected")


async def test_job_queue_gauges_are_per_queue_and_cluster_scoped(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        runner = daemon.services.jobs
        await runner.enqueue("push.send", {}, queue="metrics-test", delay_s=3600)
        await runner.refresh_gauges()
        after = await scrape(daemon)
    depth = labelled(after, "realtimed_job_queue_depth")
    assert {"queue": "metrics-test", "scope": "cluster"} in depth
    assert all(labels["scope"] == "cluster" for labels in depth)
    assert value(after, "realtimed_job_queue_depth", queue="metrics-test", scope="cluster") == 1
    ages = labelled(after, "realtimed_job_oldest_queued_age_seconds")
    assert {"queue": "metrics-test", "scope": "cluster"} in ages  # not due yet: 0
    assert value(after, "realtimed_job_oldest_queued_age_seconds", queue="metrics-test", scope="cluster") == 0


def test_every_close_code_the_server_sends_has_its_own_label() -> None:
    # 4000 (heartbeats) once counted as "other".
    for close in protocol.CLOSE_CODES:
        assert metrics.close_code_label(close.code) == str(close.code)
    assert metrics.close_code_label(4777) == "other"


async def test_close_code_label_takes_only_known_codes(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        before = await scrape(daemon)
        for code in (3999, 4777, 1000):
            client = await connect(daemon)
            await trio.to_thread.run_sync(lambda c=client, k=code: c.conn.close(code=k))  # type: ignore[misc]
        # The daemon counts a close when the peer's frame arrives; wait until all three have.
        while True:
            after = await scrape(daemon)
            closes = value(after, "realtimed_closes_total", code="other", by="client") - value(
                before, "realtimed_closes_total", code="other", by="client"
            )
            normal = value(after, "realtimed_closes_total", code="1000", by="client") - value(
                before, "realtimed_closes_total", code="1000", by="client"
            )
            if closes >= 2 and normal >= 1:
                break
            await trio.sleep(0.05)
    assert closes == 2 and normal == 1
    codes = {labels["code"] for labels in labelled(after, "realtimed_closes_total")}
    assert "3999" not in codes and "4777" not in codes
    assert codes <= {str(c) for c in metrics.KNOWN_CLOSE_CODES} | {"other"}


# -- deploy/: the dashboard and the alert rules ----------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}
_NAME = re.compile(r"\b((?:realtimed|process|python)_[a-zA-Z0-9_]+)\b")


def series_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every series name the registry can export, the Redis-only gauge included."""
    class Connected:
        connected = True

    monkeypatch.setattr(redis_broker, "_RUNNING", {Connected()})
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "expr" and isinstance(item, str):
                yield item
            else:
                yield from exprs(item)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


@pytest.mark.parametrize("path", ["deploy/grafana/realtimed.json", "deploy/prometheus/alerts.yml"])
def test_deploy_files_name_only_metrics_that_exist(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / path).read_text()
    document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    queries = list(exprs(document))
    assert len(queries) >= 10
    named = {name for query in queries for name in _NAME.findall(query)}
    assert named
    missing = named - series_names(monkeypatch)
    assert not missing, f"{path} names metrics that do not exist: {sorted(missing)}"


def test_alert_rules_pass_promtool_when_it_is_installed() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    done = subprocess.run([promtool, "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_trio_tasks_are_counted_at_scrape_time_and_follow_the_sockets(start_daemon: DaemonFactory) -> None:
    """``realtimed_trio_tasks`` (what a soak run watches for leaks): each open socket
    holds tasks, and they are gone once it closes."""
    with trio.fail_after(30):
        daemon = await start_daemon()
        idle = value(await scrape(daemon), "realtimed_trio_tasks")
        assert idle > 1
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        clients = [await WsClient.connect(url, token=token(f"tasks-{i}")) for i in range(3)]
        for client in clients:
            await client.event("session.ready")
        assert value(await scrape(daemon), "realtimed_trio_tasks") >= idle + 3
        for client in clients:
            await client.close()
        with trio.fail_after(10):
            while value(await scrape(daemon), "realtimed_trio_tasks") > idle:
                await trio.sleep(0.1)
