"""``realtimed run --workers 2``: two processes on one port, one supervisor."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import httpx
import pytest
import trio

from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, SpawnDaemon
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.slow
async def test_two_workers_share_the_port_restart_and_drain(spawn_daemon: SpawnDaemon, pg_dsn: str, redis_url: str) -> None:
    with trio.fail_after(90):
        proc = await spawn_daemon(
            {
                "server": {"node": "wk"},
                "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
                "broker": {"backend": "redis", "redis_url": redis_url},
                "namespaces": [{"prefix": "job:", "history_size": 10}],
            },
            args=["--workers", "2"],
            wait_ready=False,
        )
        await proc.wait_for_line(r"all 2 workers ready", timeout=60)
        url = next(line for line in proc.lines if "listening on http" in line).split("listening on ")[1].split(" ")[0]
        room = f"job:{uuid.uuid4().hex[:8]}"  # room history in the shared Redis outlives a test run
        nodes: set[str] = set()
        clients: list[WsClient] = []
        for i in range(12):
            client = await WsClient.connect(url.replace("http", "ws", 1) + "/ws", token=token(f"u{i}", rooms=["job:*"]))
            ready = await client.event("session.ready")
            nodes.add(ready["data"]["node"])
            await client.ok("subscribe", {"room": room})
            clients.append(client)
        assert nodes == {"wk-w0", "wk-w1"}, nodes
        await trio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url, headers=SERVER) as http:
            answer: Any = (await http.post("/server/v1/publish", json={"room": room, "event": "job.done", "data": {}})).json()
            assert answer["seq"] == 1
        for client in clients:
            assert (await client.event("job.done"))["seq"] == 1
        # A worker that dies is started again.
        pids = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in proc.lines if "worker 0 started" in line]
        mark = len(proc.lines)
        import os

        os.kill(pids[-1], signal.SIGKILL)
        await proc.wait_for_line(r"worker 0 .* died", start=mark, timeout=10)
        await proc.wait_for_line(r"worker 0 started", start=mark, timeout=15)
        # SIGTERM drains every worker and the supervisor exits 0.
        proc.signal(signal.SIGTERM)
        assert await proc.wait(timeout=40) == 0
