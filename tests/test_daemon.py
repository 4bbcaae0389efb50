"""The daemon as operators run it: health, readiness, metrics, signals, reload, sd_notify."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.daemon import API_KEY, DaemonFactory, SpawnDaemon, toml_dumps

ROOT = Path(__file__).resolve().parent.parent


async def test_health_metrics_and_json_errors(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            missing = await client.get("/no/such/route")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "NOT_FOUND"
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
            assert "process_resident_memory_bytes" in families
            assert "realtimed_up" in families
            assert families["realtimed_up"].samples[0].value == 1


async def test_server_api_needs_an_api_key(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + API_KEY}):
                answer = await client.get("/server/v1/stats", headers=headers)
                assert answer.status_code == 401
                assert answer.json()["error"]["code"] == "UNAUTHORIZED"


async def test_internal_listener_serves_server_api_and_metrics_only(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(
            {
                "http": {"listen": "0.0.0.0:0", "internal_listen": "127.0.0.1:0"},
                "auth": {"hs256_secret": "a-production-secret-of-32-bytes-or-more"},
                "api": {"keys": ["a-production-key-of-at-least-32-characters"]},
            }
        )
        _, client_port = daemon.address("client")
        internal = daemon.url("internal")
        async with httpx.AsyncClient() as client:
            public_metrics = await client.get(f"http://127.0.0.1:{client_port}/metrics")
            assert public_metrics.status_code == 404
            public_api = await client.get(
                f"http://127.0.0.1:{client_port}/server/v1/stats", headers={"Authorization": "Bearer a-production-key-of-at-least-32-characters"}
            )
            assert public_api.status_code == 404
            assert (await client.get(f"{internal}/metrics")).status_code == 200
            assert (await client.get(f"{internal}/healthz")).status_code == 200
            assert (await client.get(f"{internal}/api/v1/notifications")).status_code == 404


async def test_head_that_never_ends_is_dropped(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"gateway": {"handshake_timeout_s": 0.5}})
        host, port = daemon.address()
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        # Other clients are unaffected.
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            assert (await client.get("/healthz")).status_code == 200


@pytest.mark.slow
async def test_run_command_serves_then_drains_on_sigterm(spawn_daemon: SpawnDaemon) -> None:
    with trio.fail_after(40):
        proc = await spawn_daemon({"shutdown": {"grace_s": 3.0}})
        async with httpx.AsyncClient(base_url=proc.url) as client:
            assert (await client.get("/healthz")).status_code == 200
        started = trio.current_time()
        proc.signal(signal.SIGTERM)
        assert await proc.wait(timeout=10) == 0
        assert trio.current_time() - started < 3.0 + 2.0
        assert any("draining" in line for line in proc.lines)


@pytest.mark.slow
async def test_sighup_changes_log_level_without_restart(spawn_daemon: SpawnDaemon) -> None:
    with trio.fail_after(40):
        proc = await spawn_daemon()
        async with httpx.AsyncClient(base_url=proc.url) as client:
            await client.get("/readyz")
            await trio.sleep(0.3)
            assert not any("DEBUG" in line for line in proc.lines)
            text = proc.config_path.read_text().replace('level = "info"', 'level = "debug"')
            proc.config_path.write_text(text)
            mark = len(proc.lines)
            proc.signal(signal.SIGHUP)
            await proc.wait_for_line(r"log level debug", start=mark)
            assert (await client.get("/readyz")).status_code == 200
            await proc.wait_for_line(r"DEBUG .*readiness", start=mark)
            assert proc.process.returncode is None
            # A broken file on reload keeps the running configuration.
            proc.config_path.write_text(text + "\n[presence]\naway_after_s = -3\n")
            mark = len(proc.lines)
            proc.signal(signal.SIGHUP)
            await proc.wait_for_line(r"reload refused: presence.away_after_s", start=mark)
            assert (await client.get("/healthz")).status_code == 200
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0


@pytest.mark.slow
async def test_sd_notify_protocol(spawn_daemon: SpawnDaemon, tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(sock_path)
    received: list[str] = []

    async def collect() -> None:
        while True:
            data = await sock.recv(4096)
            received.append(data.decode())

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            proc = await spawn_daemon(env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
            while not any(m.startswith("READY=1") for m in received):
                await trio.sleep(0.05)
            while not any(m == "WATCHDOG=1" for m in received):
                await trio.sleep(0.05)
            proc.signal(signal.SIGHUP)
            while not any(m.startswith("RELOADING=1") for m in received):
                await trio.sleep(0.05)
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 0
            assert "STOPPING=1" in received
            nursery.cancel_scope.cancel()
    sock.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "realtimed.service"
    text = (ROOT / "systemd" / "realtimed.service").read_text()
    # Point ExecStart at a binary that exists here so verify checks the rest.
    exe = shutil.which("realtimed") or "/bin/true"
    unit.write_text("\n".join(
        f"ExecStart={exe} run -c /etc/realtimed/realtimed.toml" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_toml_writer_round_trips() -> None:
    import tomllib

    data = {"a": {"b": 1, "c": ["x"], "d": {"e": True}}, "ns": [{"prefix": "job:", "history_size": 3}]}
    assert tomllib.loads(toml_dumps(data)) == data


async def test_readyz_names_the_store_when_it_cannot_answer(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        store = daemon.services.store

        async def broken() -> None:
            from realtimed.errors import Unavailable

            raise Unavailable("database is down")

        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            assert (await client.get("/readyz")).json()["backends"]["store"] == "ok"
            original = store.ping
            store.ping = broken
            try:
                answer = await client.get("/readyz")
            finally:
                store.ping = original
            assert answer.status_code == 503
            assert answer.json()["backends"]["store"] == "database is down"
            assert "store" in answer.json()["error"]["message"]
            assert (await client.get("/readyz")).status_code == 200


def test_run_refuses_a_store_it_cannot_open(tmp_path: Path) -> None:
    import os
    import sys

    config = tmp_path / "c.toml"
    config.write_text(
        toml_dumps(
            {
                "http": {"listen": "127.0.0.1:0"},
                "store": {"backend": "postgres", "postgres_dsn": "postgresql://postgres@127.0.0.1:1/none", "connect_timeout_s": 1.0},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    result = subprocess.run(
        [sys.executable, "-m", "realtimed", "run", "-c", str(config)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert "cannot run" in result.stderr and "Traceback" not in result.stderr


def test_workers_refused_on_the_embedded_defaults() -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    result = subprocess.run(
        [sys.executable, "-m", "realtimed", "run", "-c", str(ROOT / "realtimed.toml"), "--workers", "2"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 2
    assert "postgres" in result.stderr and "redis" in result.stderr


async def test_daemon_runs_jobs_and_serves_them_to_operators(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"jobs": {"poll_s": 0.5}})
        job = await daemon.services.jobs.enqueue("noop", {"n": 1})
        async with httpx.AsyncClient(base_url=daemon.url(), headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            while True:
                answer = await http.get(f"/server/v1/jobs/{job.id}")
                assert answer.status_code == 200, answer.text
                if answer.json()["job"]["status"] == "succeeded":
                    break
                await trio.sleep(0.1)
            listed = (await http.get("/server/v1/jobs", params={"status": "succeeded"})).json()
            assert job.id in [j["id"] for j in listed["jobs"]]
            assert (await http.get("/server/v1/jobs", params={"status": "bogus"})).status_code == 400


async def test_every_op_is_served_by_the_one_capability_that_lists_it(start_daemon: DaemonFactory) -> None:
    from realtimed import protocol, room_ops

    with trio.fail_after(20):
        daemon = await start_daemon({"jobs": {"enabled": False}})
        svc = daemon.services
        listed = [
            room_ops.ops(svc.router, clock=svc.clock, config=svc.live_config),
            svc.presence.ops(),
            svc.chat.ops(),
            svc.notify.ops(),
        ]
        assert svc.feeds is not None
        listed.append(svc.feeds.ops())
        names = [op for ops in listed for op in ops]
        # Each op once, and together every op of the protocol but "auth" (the socket's own
        # answer to a token refresh), all of them in the daemon's registry.
        assert len(names) == len(set(names))
        assert set(names) == set(protocol.OPS) - {"auth"}
        assert all(op in svc.ops for op in names)


def test_an_op_added_twice_is_refused() -> None:
    from realtimed.api.ops import Caller, OpRegistry
    from realtimed.config import load_config
    from realtimed.live import Live

    async def handler(caller: Caller, value: object) -> dict[str, object]:
        return {}

    registry = OpRegistry(Live(load_config(None, env={})))
    registry.add({"ping": handler})
    with pytest.raises(ValueError, match="op 'ping' is registered already"):
        registry.add({"publish": handler, "ping": handler})
