"""Gateway timers on Trio's MockClock, with the in-process trio-websocket client.

The autojump threshold is far above loopback latency, so the clock only jumps
when every task is really waiting on a timer. The job runner and cron are off
here: on a busy machine a slow SQLite write could let the clock leap to the next
cron tick, hours ahead.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, open_websocket_url

from realtimed.delivery.rooms import MemoryHistory
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.tokens import token

# Nothing else ticks meanwhile: no jobs or cron, presence does not turn anyone away, and the
# history sweep runs once an hour (each wake-up of a timer is an autojump that waits out the
# threshold in real time).
QUIET: dict[str, Any] = {
    "jobs": {"enabled": False},
    "presence": {"away_after_s": 86400.0},
    "broker": {"history_sweep_s": 3600.0},
}


async def _server_closes(url: str, code: str) -> float:
    """``realtimed_closes_total{by="server",code=...}`` (the registry is the process's: compare two reads)."""
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "realtimed_closes_total" and sample.labels == {"by": "server", "code": code}
    )


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)


async def test_expiring_notice_and_4004_after_an_hour(start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(7200):
        # The heartbeat's slices (a tenth of its period) are autojumps that each wait out the
        # threshold in real time: an hourly heartbeat takes 10 of them here, not 40.
        daemon = await start_daemon(QUIET | {"gateway": {"heartbeat_s": 3600.0}})
        url = daemon.url().replace("http", "ws", 1) + "/ws?token=" + token("alice", ttl=3600)
        async with open_websocket_url(url) as ws:
            ready = orjson.loads(await ws.get_message())
            assert ready["event"] == "session.ready"
            started = trio.current_time()
            expiring = orjson.loads(await ws.get_message())
            assert expiring["event"] == "session.expiring"
            assert 3535 <= trio.current_time() - started <= 3545  # 60 s before expiry
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 4004
            # At exp plus auth.leeway_s (30 s), when the verifier starts refusing the token too.
            assert 3625 <= trio.current_time() - started <= 3635


async def test_heartbeat_keeps_answering_clients_and_drops_silent_ones(start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(7200):
        daemon = await start_daemon(QUIET | {"gateway": {"heartbeat_s": 25.0}})
        host, port = daemon.address()
        url = daemon.url().replace("http", "ws", 1) + "/ws?token=" + token("alice", ttl=7200)
        silent = await trio.open_tcp_stream(host, port)
        await silent.send_all(
            (
                "GET /ws?token=" + token("mute", ttl=7200) + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        heartbeat_closes = await _server_closes(daemon.url(), "4000")
        async with open_websocket_url(url) as ws:  # answers pings by itself
            assert orjson.loads(await ws.get_message())["event"] == "session.ready"
            started = trio.current_time()
            received = b""
            while chunk := await silent.receive_some(65536):
                received += chunk
            closed_after = trio.current_time() - started
            assert b"\x89\x00" in received and b"\x0f\xa0" in received  # pings, then close 4000
            assert 50 <= closed_after <= 80  # two silent periods, checked once a period
            # Counted under its own code, not as "other".
            assert await _server_closes(daemon.url(), "4000") == heartbeat_closes + 1
            await trio.sleep(100)  # four periods: the answering client stays
            await ws.send_message(orjson.dumps({"id": 1, "op": "ping"}).decode())
            reply = orjson.loads(await ws.get_message())
            assert reply["ok"] is True


async def test_sse_stream_ends_4004_at_the_token_deadline_without_expiring_notice(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # The gateway's expiry timer serves every transport: a stream cannot re-authenticate,
    # so it gets no session.expiring, only the close at exp plus auth.leeway_s.
    with trio.fail_after(7200):
        daemon = await start_daemon(QUIET | {"gateway": {"heartbeat_s": 300.0}})
        events: list[str] = []
        async with httpx.AsyncClient(base_url=daemon.url(), timeout=None) as http, http.stream(
            "GET", "/api/v1/events", params={"token": token("alice", ttl=600)}
        ) as response:
            started = trio.current_time()
            closed: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    events.append(line[len("event: ") :])
                elif line.startswith("data: ") and events[-1] == "session.closed":
                    closed = orjson.loads(line[len("data: ") :])["data"]
            ended_after = trio.current_time() - started
        assert events == ["session.ready", "session.closed"]
        assert closed == {"code": 4004, "reason": "token expired"}
        assert 625 <= ended_after <= 635
        assert not daemon.services.gateway.sessions


async def test_memory_history_drops_expired_rooms_every_history_sweep_s(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        daemon = await start_daemon(QUIET | {
            "gateway": {"heartbeat_s": 3600.0},
            "broker": {"history_sweep_s": 20.0},
            "namespaces": [{"prefix": "job:", "history_size": 10, "history_ttl_s": 5.0}],
        })
        router = daemon.services.router
        history = router.history
        assert isinstance(history, MemoryHistory)
        await router.publish("job:1", "progress", {"pct": 1})
        assert "job:1" in history._rooms
        await trio.sleep(15)  # expired, but no sweep yet
        assert "job:1" in history._rooms
        await trio.sleep(10)  # the first sweep, 20 s after start
        assert "job:1" not in history._rooms
