"""The per-user op budget, shared by the WebSocket and REST doors.

The daemon tests talk to a real daemon with httpx and the ``websockets``
client (real time, budgets whose windows are far longer than a test); the
refill is tested on Trio's MockClock with the in-process trio-websocket client.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from realtimed.config import OpLimitConfig
from realtimed.daemon import Daemon
from realtimed.gateway.limits import SWEEP_S, UserOpLimiter
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.tokens import token

QUIET: dict[str, Any] = {"jobs": {"enabled": False}, "presence": {"away_after_s": 86400.0}}
LOBBY: list[dict[str, Any]] = [{"prefix": "lobby:", "public": True}]


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


async def open_conversation(http: httpx.AsyncClient, user: str, other: str) -> str:
    answer = await http.post("/api/v1/ops/conversation.open", json={"user_id": other}, headers=bearer(user))
    assert answer.status_code == 200, answer.text
    conversation_id: str = answer.json()["conversation"]["id"]
    return conversation_id


async def send_rest(http: httpx.AsyncClient, user: str, cid: str, key: str) -> httpx.Response:
    body = {"conversation_id": cid, "client_id": key, "body": key}
    return await http.post("/api/v1/ops/message.send", json=body, headers=bearer(user))


# -- the limiter itself ------------------------------------------------------------------------


def test_bucket_allows_a_burst_of_per_then_the_refill_rate() -> None:
    limiter = UserOpLimiter()
    budget = OpLimitConfig(per=3, window_s=6.0)  # 3 at once, then one every 2 s
    assert [limiter.take("u", "op", budget, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("u", "op", budget, now=100.0) == pytest.approx(2.0)
    # A refusal spends nothing: the wait shrinks with time, not with retries.
    assert limiter.take("u", "op", budget, now=101.5) == pytest.approx(0.5)
    assert limiter.take("u", "op", budget, now=102.0) == 0.0
    assert limiter.take("u", "op", budget, now=102.0) == pytest.approx(2.0)
    # Other users and other ops have budgets of their own.
    assert limiter.take("v", "op", budget, now=102.0) == 0.0
    assert limiter.take("u", "other", budget, now=102.0) == 0.0


def test_memory_holds_only_buckets_that_have_not_refilled() -> None:
    limiter = UserOpLimiter()
    budget = OpLimitConfig(per=10, window_s=10.0)
    for i in range(1000):
        limiter.take(f"u{i}", "op", budget, now=0.0)
    assert len(limiter) == 1000
    # Each bucket is full again a second later (one op of ten, refilled at one a
    # second); the sweep after SWEEP_S drops them all but the one still in use.
    limiter.take("busy", "op", budget, now=SWEEP_S)
    assert len(limiter) == 1
    # A dropped bucket starts full, exactly like one that was kept.
    assert [limiter.take("u1", "op", budget, now=SWEEP_S) for _ in range(10)] == [0.0] * 10
    assert limiter.take("u1", "op", budget, now=SWEEP_S) > 0


# -- over the doors --------------------------------------------------------------------------


async def test_rest_message_send_past_the_default_budget_is_rate_limited(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon()
        default = daemon.cfg.gateway.op_limits["message.send"]
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            cid = await open_conversation(http, "alice", "bob")
            started = trio.current_time()
            sent = 0
            while (answer := await send_rest(http, "alice", cid, f"k{sent}")).status_code == 200:
                sent += 1
                assert sent <= 2 * default.per, "no budget over REST"
            # The burst, and what refilled while it was being sent (real time here).
            refilled = (trio.current_time() - started) * default.per / default.window_s
            assert default.per <= sent <= default.per + refilled + 1
            assert answer.status_code == 429
            error = answer.json()["error"]
            assert error["code"] == "RATE_LIMITED"
            assert 0 < error["retry_after_ms"] <= default.window_s / default.per * 1000
            assert int(answer.headers["Retry-After"]) >= 1
            # Refused before it ran: nothing was stored.
            history = await http.post(
                "/api/v1/ops/message.history", json={"conversation_id": cid, "limit": 100}, headers=bearer("bob")
            )
            assert [m["client_id"] for m in history.json()["messages"]][-1] == f"k{sent - 1}"
            # Bob's budget is his own.
            assert (await send_rest(http, "bob", cid, "b1")).status_code == 200


async def test_one_budget_for_socket_and_rest(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon({"gateway": {"op_limits": {"message.send": {"per": 10, "window_s": 3600}}}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            cid = await open_conversation(http, "alice", "bob")
            ws = await WsClient.connect(ws_url(daemon), token=token("alice"))
            await ws.event("session.ready")
            for i in range(5):
                await ws.ok("message.send", {"conversation_id": cid, "client_id": f"ws{i}", "body": "hi"})
                answer = await send_rest(http, "alice", cid, f"rest{i}")
                assert answer.status_code == 200, answer.text
            over_ws = await ws.request("message.send", {"conversation_id": cid, "client_id": "ws-over", "body": "hi"})
            assert over_ws["ok"] is False and over_ws["error"]["code"] == "RATE_LIMITED"
            assert 0 < over_ws["error"]["retry_after_ms"] <= 360_000
            over_rest = await send_rest(http, "alice", cid, "rest-over")
            assert over_rest.status_code == 429 and over_rest.json()["error"]["code"] == "RATE_LIMITED"
            # Only message.send has this budget; other ops keep theirs.
            listed = await ws.request("conversation.list")
            assert listed["ok"] is True
            await ws.close()


async def test_budget_refills_with_mock_clock(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        daemon = await start_daemon(
            QUIET | {"namespaces": LOBBY, "gateway": {"heartbeat_s": 900.0, "op_limits": {"subscribe": {"per": 2, "window_s": 60}}}}
        )
        async with open_websocket_url(ws_url(daemon) + "?token=" + token("alice")) as ws:
            assert orjson.loads(await ws.get_message())["event"] == "session.ready"

            async def request(i: int) -> dict[str, Any]:
                await ws.send_message(orjson.dumps({"id": i, "op": "subscribe", "data": {"room": f"lobby:{i}"}}).decode())
                reply: dict[str, Any] = orjson.loads(await ws.get_message())
                assert reply["id"] == i
                return reply

            assert (await request(1))["ok"] and (await request(2))["ok"]
            refused = await request(3)
            assert refused["error"]["code"] == "RATE_LIMITED"
            assert refused["error"]["retry_after_ms"] == 30_000  # one op refills in 60 s / 2
            await trio.sleep(29.0)
            assert (await request(4))["error"]["code"] == "RATE_LIMITED"
            await trio.sleep(1.5)
            assert (await request(5))["ok"]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)
