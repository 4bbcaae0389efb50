"""``GET /dev/token``: only on a loopback listener while the development secret is in use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import attrs
import httpx
import jwt
import pytest
import trio

from realtimed.config import DEV_HS256_SECRET, Config, load_config
from realtimed.daemon import Daemon
from realtimed.http.dev import dev_routes_enabled
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import BASE_CONFIG, DaemonFactory, merge, toml_dumps

OTHER_SECRET = "a-production-secret-that-is-long-enough-0123456789"


def _ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http://", "ws://") + "/ws"


async def test_a_minted_token_opens_a_session(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"auth": {"dev_token_ttl_s": 600}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            r = await http.get(
                "/dev/token",
                params={"sub": "alice", "name": "Alice A.", "rooms": "job:*, lobby:main"},
                headers={"Origin": "https://elsewhere.example"},
            )
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        assert "access-control-allow-origin" not in r.headers  # another origin's page cannot read it
        body = r.json()
        claims = jwt.decode(body["token"], DEV_HS256_SECRET, algorithms=["HS256"])
        assert claims["sub"] == body["user_id"] == "alice"
        assert claims["name"] == "Alice A."
        assert claims["rooms"] == ["job:*", "lobby:main"]
        assert claims["exp"] - claims["iat"] == 600
        assert datetime.fromtimestamp(claims["exp"], UTC) == datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))

        ws = await WsClient.connect(_ws_url(daemon), token=body["token"], how="frame")
        try:
            ready = await ws.event("session.ready")
            assert ready["data"]["user_id"] == "alice"
            reply = await ws.ok("subscribe", {"room": "job:42"})  # the rooms claim works
            assert reply["room"] == "job:42"
        finally:
            await ws.close()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "sub"),
        ({"sub": ""}, "sub"),
        ({"sub": "x" * 129}, "sub"),
        ({"sub": "al\nice"}, "sub"),
        ({"sub": "al\x00ice"}, "sub"),
        ({"sub": "alice", "name": "n" * 129}, "name"),
        ({"sub": "alice", "name": "Alice\r\nX-Injected: 1"}, "name"),
        ({"sub": "alice", "rooms": "job:*,bad room"}, "rooms[1]"),
        ({"sub": "alice", "rooms": "a::b"}, "rooms[0]"),
        ({"sub": "alice", "rooms": "job:*:x"}, "rooms[0]"),
        ({"sub": "alice", "rooms": ",".join(f"r{i}" for i in range(33))}, "rooms"),
    ],
)
async def test_bad_parameters_name_their_field(start_daemon: DaemonFactory, params: dict[str, str], field: str) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            r = await http.get("/dev/token", params=params)
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field)


async def test_only_get(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            r = await http.post("/dev/token", params={"sub": "alice"})
        assert r.status_code == 405


async def test_absent_without_the_development_secret(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"auth": {"hs256_secret": OTHER_SECRET}})
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for method, path in (("GET", "/dev/token?sub=alice"), ("POST", "/dev/token"), ("GET", "/dev/other")):
                r = await http.request(method, path)
                assert r.status_code == 404, (method, path)
                assert r.json() == {"error": {"code": "NOT_FOUND", "message": f"no route {path.split('?')[0]}"}}


async def test_absent_on_the_internal_listener(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"http": {"internal_listen": "127.0.0.1:0"}})
        async with httpx.AsyncClient() as http:
            assert (await http.get(daemon.url() + "/dev/token?sub=alice")).status_code == 200
            r = await http.get(daemon.url("internal") + "/dev/token?sub=alice")
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "NOT_FOUND"


async def test_a_reload_to_another_secret_removes_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "realtimed.toml"
    base = merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}})
    path.write_text(toml_dumps(base))
    with trio.fail_after(20):
        daemon = Daemon(load_config(path, env={}), config_path=path, handle_signals=False)
        await nursery.start(daemon.run)
        try:
            async with httpx.AsyncClient(base_url=daemon.url()) as http:
                assert (await http.get("/dev/token?sub=alice")).status_code == 200
                path.write_text(toml_dumps(merge(base, {"auth": {"hs256_secret": OTHER_SECRET}})))
                assert await daemon.reload()
                assert (await http.get("/dev/token?sub=alice")).status_code == 404
        finally:
            daemon.request_drain()
            await daemon.wait_stopped()


def _cfg(*, listen: str = "127.0.0.1:8700", secret: str = DEV_HS256_SECRET, algorithms: tuple[str, ...] = ("HS256",)) -> Config:
    # attrs.evolve skips the configuration check, which already refuses the development
    # secret on a listener that is not loopback: the decision must not rely on it.
    cfg = Config()
    return attrs.evolve(
        cfg,
        http=attrs.evolve(cfg.http, listen=listen),
        auth=attrs.evolve(cfg.auth, hs256_secret=secret, algorithms=list(algorithms)),
    )


@pytest.mark.parametrize(
    ("cfg", "enabled"),
    [
        (_cfg(), True),
        (_cfg(listen="localhost:8700"), True),
        (_cfg(listen="[::1]:8700"), True),
        (_cfg(listen="127.0.0.2:0"), True),
        (_cfg(listen="0.0.0.0:8700"), False),
        (_cfg(listen="[::]:8700"), False),
        (_cfg(listen="192.168.1.20:8700"), False),
        (_cfg(listen="rt.example.com:8700"), False),
        (_cfg(listen="not an address"), False),
        (_cfg(secret=OTHER_SECRET), False),
        (_cfg(secret=""), False),
        (_cfg(algorithms=("RS256",)), False),
    ],
)
def test_the_decision(cfg: Config, enabled: bool) -> None:
    assert dev_routes_enabled(cfg) is enabled
