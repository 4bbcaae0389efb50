"""realtimed behind a real nginx, configured with deploy/nginx/realtimed.conf.

nginx (Debian's package) runs as a subprocess with a configuration in the test's
temporary folder that includes the deploy file, changed only where a test must
(the ports and the certificate, each replaced exactly once). A WebSocket session
(``websockets``) and an SSE stream (httpx, over HTTP/2 as browsers would) go
through nginx's TLS to a daemon with ``http.trusted_proxies = ["127.0.0.1/32"]``,
and the daemon's connections list shows the address from X-Forwarded-For. The
README's nginx snippet must be the deploy file, byte for byte.

Without nginx the test is skipped, except under ``CI=true``, where it fails:
CI installs it (``.ci/run``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from websockets.sync.client import connect

from realtimed.daemon import Daemon
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.services import _free_port, _port_open
from tests.fixtures.tokens import token
from tests.test_gateway import NAMESPACES, publish
from tests.test_proxies import address_of
from tests.test_tls import make_cert

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONF = ROOT / "deploy" / "nginx" / "realtimed.conf"
README = ROOT / "README.md"
START_TIMEOUT_S = 10.0


def _missing(what: str) -> None:
    """Skip locally; under CI the nginx test must run, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(what)


def _nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        _missing("nginx is not installed (apt-get install nginx)")
    assert found is not None
    return found


def deploy_conf(*, upstream_port: int, port: int, cert: Path, key: Path) -> str:
    """The deploy file, with the test's ports and certificate; each replaced string occurs once."""
    text = DEPLOY_CONF.read_text()
    for old, new in (
        ("proxy_pass http://127.0.0.1:8700;", f"proxy_pass http://127.0.0.1:{upstream_port};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;"),
        ("/etc/ssl/certs/realtime.example.com.pem", str(cert)),
        ("/etc/ssl/private/realtime.example.com.key", str(key)),
    ):
        assert text.count(old) == 1, f"{DEPLOY_CONF} should contain {old!r} once"
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(self, port: int, folder: Path, process: trio.Process) -> None:
        self.port = port
        self.folder = folder
        self.process = process

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
async def nginx_in_front(tmp_path: Path) -> AsyncIterator[Any]:
    """``await nginx_in_front(daemon)`` starts nginx before the daemon's client listener."""
    binary = _nginx_binary()
    started: list[Nginx] = []

    async def start(daemon: Daemon) -> tuple[Nginx, Path]:
        folder = tmp_path / f"nginx{len(started)}"
        folder.mkdir()
        cert, key = make_cert(folder)
        port = _free_port()
        (folder / "realtimed.conf").write_text(
            deploy_conf(upstream_port=daemon.address()[1], port=port, cert=cert, key=key)
        )
        temp = "\n".join(f"    {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(
            f"""# One process, no user switch: everything stays in {folder}.
master_process off;
error_log {folder}/error.log info;
pid {folder}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
{temp}
    include {folder}/realtimed.conf;
}}
"""
        )
        process = await trio.lowlevel.open_process(
            [binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"]
        )
        server = Nginx(port, folder, process)
        started.append(server)
        with trio.fail_after(START_TIMEOUT_S):
            while not await trio.to_thread.run_sync(_port_open, "127.0.0.1", port):
                if process.poll() is not None:
                    pytest.fail(f"nginx exited with {process.returncode}:\n{server.log()}")
                await trio.sleep(0.05)
        return server, cert

    try:
        yield start
    finally:
        for server in started:
            if server.process.returncode is None:
                server.process.send_signal(signal.SIGTERM)
                with trio.move_on_after(5) as waiting:
                    waiting.shield = True
                    await server.process.wait()
                if server.process.returncode is None:
                    server.process.kill()
                    with trio.CancelScope(shield=True):
                        await server.process.wait()


def test_readme_snippet_is_the_deploy_file() -> None:
    blocks = re.findall(r"```nginx\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert DEPLOY_CONF.read_text() in blocks, "README.md must show deploy/nginx/realtimed.conf verbatim in an ```nginx block"


async def test_websocket_and_sse_through_nginx_carry_the_client_address(
    start_daemon: DaemonFactory, nginx_in_front: Any
) -> None:
    with trio.fail_after(40):
        daemon = await start_daemon({"http": {"trusted_proxies": ["127.0.0.1/32"]}, "namespaces": NAMESPACES})
        nginx, cert = await nginx_in_front(daemon)
        context = ssl.create_default_context(cafile=str(cert))
        base = f"https://localhost:{nginx.port}"

        # Health, through nginx.
        async with httpx.AsyncClient(base_url=base, verify=context) as http:
            answer = await http.get("/healthz")
            assert answer.status_code == 200 and answer.json()["status"] == "ok"

        # A WebSocket session. What the client wrote itself (192.0.2.66) is not believed;
        # nginx appends the address it saw (127.0.0.1, trusted), so 203.0.113.7 is the client.
        subscribed_ws = trio.Event()

        def websocket() -> list[dict[str, Any]]:
            frames = []
            headers = {"Authorization": f"Bearer {token('alice', rooms=['job:*'])}", "X-Forwarded-For": "192.0.2.66, 203.0.113.7"}
            with connect(f"wss://localhost:{nginx.port}/ws", ssl=context, additional_headers=headers, open_timeout=10) as ws:
                frames.append(orjson.loads(ws.recv(timeout=5)))
                ws.send(orjson.dumps({"id": 1, "op": "subscribe", "data": {"room": "job:1"}}).decode())
                frames.append(orjson.loads(ws.recv(timeout=5)))
                trio.from_thread.run_sync(subscribed_ws.set)
                frames.append(orjson.loads(ws.recv(timeout=10)))  # the publication, through nginx
            return frames

        results: list[list[dict[str, Any]]] = []

        async def run_websocket() -> None:
            results.append(await trio.to_thread.run_sync(websocket, abandon_on_cancel=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_websocket)
            await subscribed_ws.wait()
            assert await address_of(daemon, "alice", role="client") == {"websocket": "203.0.113.7"}
            await publish(daemon, "job:1", data={"pct": 50})
        ready, subscribed, event = results[0]
        assert ready["event"] == "session.ready"
        assert subscribed["ok"] is True
        assert event["event"] == "job.progress" and event["data"] == {"pct": 50}

        # An SSE stream over HTTP/2 to nginx (as a browser would), HTTP/1.1 behind it.
        async with httpx.AsyncClient(base_url=base, verify=context, http2=True) as http:
            headers = {"Authorization": f"Bearer {token('bob', rooms=['job:*'])}", "X-Forwarded-For": "198.51.100.9"}
            async with http.stream("GET", "/api/v1/events", params={"rooms": "job:2"}, headers=headers) as response:
                assert response.status_code == 200 and response.http_version == "HTTP/2"
                lines = response.aiter_lines()
                events: list[str] = []

                async def until(name: str) -> str:
                    async for line in lines:
                        if line == f"event: {name}":
                            data = await lines.__anext__()
                            events.append(name)
                            return data
                    raise EOFError(f"stream ended before {name}")

                await until("session.ready")
                assert await address_of(daemon, "bob", role="client") == {"sse": "198.51.100.9"}
                await publish(daemon, "job:2", data={"pct": 75})
                with trio.fail_after(5):  # proxy_buffering off: the event is not held back
                    data = await until("job.progress")
                assert orjson.loads(data.removeprefix("data: "))["data"] == {"pct": 75}
        assert "emerg" not in nginx.log()
