"""The per-user op budget, shared by the WebSocket and REST doors.

The daemon tests talk to a real daemon with httpx and the ``websockets``
client (real time, budgets whose windows are far longer than a test); the
refill is tested on Trio's MockClock with the in-process trio-websocket client
and with httpx. Every route of the client REST door is charged (the resource
routes by the door, from realtimed/http/budgets.py), and a test walks the app's
URL map so that a new route cannot bypass the budget.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from realtimed.api.limits import SWEEP_S, UserOpLimiter, budget_for
from realtimed.api.routes import CLIENT_PREFIX
from realtimed.config import DEFAULT_OP_LIMITS, REST_BUDGETS, ConfigError, OpLimitConfig, load_config
from realtimed.daemon import Daemon
from realtimed.http.app import create_app
from realtimed.http.budgets import ROUTE_BUDGETS, UNCHARGED_ROUTES, Chooser
from realtimed.protocol import OPS
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


# -- the resource routes of the client REST door -------------------------------------------------

FOREVER_S = 3600.0


def _budget_names(budget: str | Chooser) -> frozenset[str]:
    return frozenset({budget}) if isinstance(budget, str) else budget.names


def _path(rule: str) -> str:
    """A concrete path for a rule under /api/v1 (every variable part filled in)."""
    return CLIENT_PREFIX + re.sub(r"<(?:[^:>]+:)?[^>]+>", "x1", rule)


async def test_every_client_route_is_in_the_budget_table(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(QUIET)
        app = create_app(daemon.services)
        routes: set[tuple[str, str]] = set()
        for rule in app.url_map.iter_rules():
            if not rule.rule.startswith(CLIENT_PREFIX + "/"):
                continue
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                route = (method, rule.rule.removeprefix(CLIENT_PREFIX))
                routes.add(route)
                assert (route in ROUTE_BUDGETS) != (route in UNCHARGED_ROUTES), f"{method} {rule.rule} has no budget"
        # Nothing in the table that the app does not serve (a renamed route would leave its old line).
        assert set(ROUTE_BUDGETS) | set(UNCHARGED_ROUTES) == routes
        names = frozenset().union(*(_budget_names(b) for b in ROUTE_BUDGETS.values()))
        # A route charges an op's budget, or one of the REST budgets the config knows;
        # every REST budget the config accepts is charged by some route.
        assert names <= OPS | REST_BUDGETS
        assert names - OPS == REST_BUDGETS
        assert not REST_BUDGETS & OPS


async def test_every_resource_route_is_refused_past_its_budget(start_daemon: DaemonFactory) -> None:
    """With every budget at one call, each route's second call is 429, before it validates anything."""
    with trio.fail_after(30):
        names = frozenset().union(*(_budget_names(b) for b in ROUTE_BUDGETS.values()))
        limits = {name: {"per": 1, "window_s": FOREVER_S} for name in names}
        daemon = await start_daemon(QUIET | {"gateway": {"op_limits": limits}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for (method, rule), budget in ROUTE_BUDGETS.items():
                user = f"user-{method}-{rule}"  # a user of its own: only this route counts against it
                body = {"user_id": "bob"} if (method, rule) == ("POST", "/conversations") else {}
                kwargs: dict[str, Any] = {"json": body} if method in ("POST", "PUT", "PATCH") else {}
                first = await http.request(method, _path(rule), headers=bearer(user), **kwargs)
                assert first.status_code != 429, f"{method} {rule}: {first.text}"
                second = await http.request(method, _path(rule), headers=bearer(user), **kwargs)
                assert second.status_code == 429, f"{method} {rule} is not charged: {second.status_code} {second.text}"
                error = second.json()["error"]
                assert error["code"] == "RATE_LIMITED"
                assert 0 < error["retry_after_ms"] <= FOREVER_S * 1000
                assert int(second.headers["Retry-After"]) >= 1
                label = budget if isinstance(budget, str) else "conversation.open"
                assert label in error["message"]
            # HEAD is charged as the GET it is.
            assert (await http.head(f"{CLIENT_PREFIX}/devices", headers=bearer("user-GET-/devices"))).status_code == 429
            # A request that no route serves runs nothing and costs nothing.
            for _ in range(3):
                assert (await http.get(f"{CLIENT_PREFIX}/nowhere", headers=bearer("carol"))).status_code == 404
                assert (await http.put(f"{CLIENT_PREFIX}/devices", headers=bearer("carol"))).status_code == 405
            assert (await http.get(f"{CLIENT_PREFIX}/devices", headers=bearer("carol"))).status_code == 200


async def test_post_conversations_charges_the_op_its_body_asks_for(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(QUIET | {"gateway": {"op_limits": {"conversation.open": {"per": 2, "window_s": FOREVER_S}}}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for other in ("bob", "carol"):
                answer = await http.post(f"{CLIENT_PREFIX}/conversations", json={"user_id": other}, headers=bearer("alice"))
                assert answer.status_code == 200, answer.text
            refused = await http.post(f"{CLIENT_PREFIX}/conversations", json={"user_id": "dave"}, headers=bearer("alice"))
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["code"] == "RATE_LIMITED" and "conversation.open" in error["message"]
            assert FOREVER_S / 2 * 1000 - 60_000 < error["retry_after_ms"] <= FOREVER_S / 2 * 1000
            # Refused before it is validated: a malformed open costs the same and is refused the same.
            malformed = await http.post(f"{CLIENT_PREFIX}/conversations", json={"user_id": 5}, headers=bearer("alice"))
            assert malformed.status_code == 429
            # A group is conversation.create, a budget of its own.
            group = await http.post(
                f"{CLIENT_PREFIX}/conversations", json={"member_ids": ["bob", "dave"], "title": "t"}, headers=bearer("alice")
            )
            assert group.status_code == 200, group.text
            # Nothing ran for the refused ones: no conversation with dave but the group.
            listed = await http.get(f"{CLIENT_PREFIX}/conversations", headers=bearer("dave"))
            assert [c["type"] for c in listed.json()["conversations"]] == ["group"]
            # A body that is not JSON is charged too (to conversation.create), then refused as before.
            broken = await http.post(
                f"{CLIENT_PREFIX}/conversations", content=b"{not json", headers=bearer("erin") | {"Content-Type": "application/json"}
            )
            assert broken.status_code == 400 and broken.json()["error"]["code"] == "BAD_REQUEST"


async def test_socket_and_resource_routes_share_one_budget(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(QUIET | {"gateway": {"op_limits": {"conversation.open": {"per": 5, "window_s": FOREVER_S}}}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            ws = await WsClient.connect(ws_url(daemon), token=token("alice"))
            await ws.event("session.ready")
            for other in ("bob", "carol"):
                await ws.ok("conversation.open", {"user_id": other})
            for other in ("dave", "erin"):
                answer = await http.post(f"{CLIENT_PREFIX}/conversations", json={"user_id": other}, headers=bearer("alice"))
                assert answer.status_code == 200, answer.text
            # The ops route is the third door onto the same bucket.
            assert (await http.post(f"{CLIENT_PREFIX}/ops/conversation.open", json={"user_id": "frank"}, headers=bearer("alice"))).status_code == 200
            over_ws = await ws.request("conversation.open", {"user_id": "gina"})
            assert over_ws["ok"] is False and over_ws["error"]["code"] == "RATE_LIMITED"
            over_rest = await http.post(f"{CLIENT_PREFIX}/conversations", json={"user_id": "gina"}, headers=bearer("alice"))
            assert over_rest.status_code == 429 and over_rest.json()["error"]["code"] == "RATE_LIMITED"
            # Another user's budget is untouched.
            bob = await http.post(f"{CLIENT_PREFIX}/conversations", json={"user_id": "gina"}, headers=bearer("bob"))
            assert bob.status_code == 200, bob.text
            await ws.close()


async def test_a_rest_only_route_has_its_own_configurable_budget(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(QUIET | {"gateway": {"op_limits": {"device.register": {"per": 2, "window_s": FOREVER_S}}}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:

            async def register(name: str) -> httpx.Response:
                body = {"token": name, "platform": "android"}
                return await http.post(f"{CLIENT_PREFIX}/devices", json=body, headers=bearer("alice"))

            assert (await register("tok-1")).status_code == 200
            assert (await register("tok-2")).status_code == 200
            refused = await register("tok-3")
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["code"] == "RATE_LIMITED" and "device.register" in error["message"]
            assert FOREVER_S / 2 * 1000 - 60_000 < error["retry_after_ms"] <= FOREVER_S / 2 * 1000
            # Listing and the other REST budgets are not this one; the refused token was not stored.
            listed = await http.get(f"{CLIENT_PREFIX}/devices", headers=bearer("alice"))
            assert listed.status_code == 200
            assert sorted(d["token"] for d in listed.json()["devices"]) == ["tok-1", "tok-2"]
            prefs = await http.put(f"{CLIENT_PREFIX}/notifications/preferences", json={}, headers=bearer("alice"))
            assert prefs.status_code == 200, prefs.text


async def test_a_rest_only_budget_refills_with_mock_clock(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        # A long heartbeat period: its ticks would make the clock jump 59 s in small steps.
        limits = {"preferences.put": {"per": 1, "window_s": 60}}
        daemon = await start_daemon(QUIET | {"gateway": {"heartbeat_s": 900.0, "op_limits": limits}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:

            async def put() -> httpx.Response:
                return await http.put(f"{CLIENT_PREFIX}/notifications/preferences", json={}, headers=bearer("alice"))

            assert (await put()).status_code == 200
            refused = await put()
            assert refused.status_code == 429
            assert refused.json()["error"]["retry_after_ms"] == 60_000
            assert refused.headers["Retry-After"] == "60"
            await trio.sleep(59.0)
            assert (await put()).status_code == 429
            await trio.sleep(1.5)
            assert (await put()).status_code == 200


def test_rest_budgets_are_configured_like_ops() -> None:
    cfg = load_config(None, env={}, text="")
    # The defaults: registering push tokens and saving preferences are held to one a
    # second after a burst; the other REST budgets are "*", each counted apart.
    assert budget_for(cfg.gateway, "device.register") == OpLimitConfig(per=60, window_s=60.0)
    assert budget_for(cfg.gateway, "preferences.put") == OpLimitConfig(per=60, window_s=60.0)
    assert budget_for(cfg.gateway, "device.list") == DEFAULT_OP_LIMITS["*"]
    text = "[gateway.op_limits]\n" + "".join(f'"{name}" = {{per = 3, window_s = 7}}\n' for name in sorted(REST_BUDGETS))
    cfg = load_config(None, env={}, text=text)
    for name in REST_BUDGETS:
        assert budget_for(cfg.gateway, name) == OpLimitConfig(per=3, window_s=7.0)
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, text='[gateway.op_limits]\n"device.regster" = {per = 3, window_s = 7}\n')
    problems = dict(info.value.problems)
    assert "unknown op 'device.regster'" in problems['gateway.op_limits."device.regster"']
    assert "device.register" in problems['gateway.op_limits."device.regster"']
