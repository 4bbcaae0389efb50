"""The JWT battery over real sockets: every bad token is refused, whichever way it came.

Each token goes in the ``Authorization`` header, the ``?token=`` query and the
first ``auth`` frame: a bad one closes with 4501 (4004 where it has only
expired), and a valid control token of each algorithm is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import SECRET, DaemonFactory
from tests.fixtures.tokens import (
    b64,
    claims,
    ec_key,
    other_rsa_key,
    public_pem,
    raw_token,
    rsa_key,
    write_public_keys,
)

AUDIENCE = "realtimed-tests"
ISSUER = "https://id.test/"


def _std(**extra: Any) -> dict[str, Any]:
    return claims("alice", aud=AUDIENCE, iss=ISSUER, **extra)


def _hs_with(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _jwk_of(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return out


class Canary:
    """A TCP port that records whether anything connected (jku / x5u must never be fetched)."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            self.hits += 1
            await stream.aclose()

        task_status.started()
        await trio.serve_listeners(handler, listeners)


def battery(canary_port: int) -> dict[str, tuple[Callable[[], str], int]]:
    """name → (token maker, expected close code)."""
    elsewhere = f"http://127.0.0.1:{canary_port}/keys"
    attacker = other_rsa_key()
    return {
        "alg none": (lambda: raw_token({"alg": "none", "typ": "JWT"}, _std()), 4501),
        "alg None": (lambda: raw_token({"alg": "None", "typ": "JWT"}, _std()), 4501),
        "alg NONE": (lambda: raw_token({"alg": "NONE", "typ": "JWT"}, _std()), 4501),
        "RS256 public key as HS256 secret": (
            lambda: _hs_with(public_pem(rsa_key()), {"alg": "HS256", "typ": "JWT"}, _std()),
            4501,
        ),
        "embedded jwk": (
            lambda: jwt.encode(_std(), attacker, algorithm="RS256", headers={"jwk": _jwk_of(attacker)}),
            4501,
        ),
        "jku elsewhere": (
            lambda: jwt.encode(_std(), attacker, algorithm="RS256", headers={"jku": elsewhere, "kid": "k1"}),
            4501,
        ),
        "x5u elsewhere": (
            lambda: jwt.encode(_std(), attacker, algorithm="RS256", headers={"x5u": elsewhere}),
            4501,
        ),
        "kid path traversal": (
            lambda: _hs_with(b"", {"alg": "HS256", "kid": "../../../../../../dev/null"}, _std()),
            4501,
        ),
        "empty signature": (
            lambda: jwt.encode(_std(), SECRET, algorithm="HS256").rsplit(".", 1)[0] + ".",
            4501,
        ),
        "ES256 r = s = 0": (lambda: raw_token({"alg": "ES256", "typ": "JWT"}, _std(), b"\x00" * 64), 4501),
        "signed by another RSA key": (lambda: jwt.encode(_std(), attacker, algorithm="RS256"), 4501),
        "expired": (lambda: jwt.encode(_std(ttl=-300), SECRET, algorithm="HS256"), 4004),
        "not yet valid": (lambda: jwt.encode(_std(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256"), 4501),
        "wrong aud": (lambda: jwt.encode({**_std(), "aud": "someone-else"}, SECRET, algorithm="HS256"), 4501),
        "wrong iss": (lambda: jwt.encode({**_std(), "iss": "https://evil.test/"}, SECRET, algorithm="HS256"), 4501),
        "no sub": (lambda: jwt.encode({k: v for k, v in _std().items() if k != "sub"}, SECRET, algorithm="HS256"), 4501),
        "no exp": (lambda: jwt.encode({k: v for k, v in _std().items() if k != "exp"}, SECRET, algorithm="HS256"), 4501),
        "garbage": (lambda: "not.a.token", 4501),
    }


CONTROLS: dict[str, Callable[[], str]] = {
    "HS256": lambda: jwt.encode(_std(), SECRET, algorithm="HS256"),
    "RS256": lambda: jwt.encode(_std(), rsa_key(), algorithm="RS256"),
    "ES256": lambda: jwt.encode(_std(), ec_key(), algorithm="ES256"),
}

WAYS = ("header", "query", "frame")


async def _daemon(start_daemon: DaemonFactory, tmp_path: Path) -> Daemon:
    return await start_daemon(
        {
            "auth": {
                "algorithms": ["HS256", "RS256", "ES256"],
                "public_key_files": write_public_keys(tmp_path),
                "audience": AUDIENCE,
                "issuer": ISSUER,
            }
        }
    )


async def test_jwt_battery_every_way(start_daemon: DaemonFactory, nursery: trio.Nursery, tmp_path: Path) -> None:
    canary = Canary()
    await nursery.start(canary.run)
    with trio.fail_after(120):
        daemon = await _daemon(start_daemon, tmp_path)
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        failures = []
        for name, (make, expected) in battery(canary.port).items():
            for how in WAYS:
                client = await WsClient.connect(url, token=make(), how=how)
                code = await client.closed()
                if code != expected:
                    failures.append(f"{name} via {how}: closed {code}, expected {expected}")
                if how == "frame":
                    reply = client.replies.get("auth")
                    assert reply is not None and reply["ok"] is False, (name, reply)
        assert not failures, failures
        assert canary.hits == 0, "a key URL from a token was fetched"


@pytest.mark.parametrize("alg", sorted(CONTROLS))
@pytest.mark.parametrize("how", WAYS)
async def test_valid_control_tokens_accepted(start_daemon: DaemonFactory, tmp_path: Path, alg: str, how: str) -> None:
    with trio.fail_after(20):
        daemon = await _daemon(start_daemon, tmp_path)
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        client = await WsClient.connect(url, token=CONTROLS[alg](), how=how)
        ready = await client.event("session.ready")
        assert ready["data"]["user_id"] == "alice"


async def test_keys_reload_without_dropping_sockets(nursery: trio.Nursery, tmp_path: Path) -> None:
    from realtimed.config import load_config
    from tests.fixtures.daemon import BASE_CONFIG, merge, toml_dumps

    path = tmp_path / "realtimed.toml"
    data = merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}, "auth": {"hs256_secret": "old-secret-" + "x" * 30}})
    path.write_text(toml_dumps(data))
    daemon = Daemon(load_config(path, env={}), config_path=path, handle_signals=False)
    with trio.fail_after(30):
        await nursery.start(daemon.run)
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        old = jwt.encode(claims("alice"), "old-secret-" + "x" * 30, algorithm="HS256")
        new = jwt.encode(claims("alice"), "new-secret-" + "y" * 30, algorithm="HS256")
        kept = await WsClient.connect(url, token=old)
        await kept.event("session.ready")
        path.write_text(toml_dumps(merge(data, {"auth": {"hs256_secret": "new-secret-" + "y" * 30}})))
        assert await daemon.reload() is True
        refused = await WsClient.connect(url, token=old)
        assert await refused.closed() == 4501
        accepted = await WsClient.connect(url, token=new)
        await accepted.event("session.ready")
        # The socket opened before the reload is still there and answers.
        assert (await kept.ok("ping"))["server_time"]
        # A key file that cannot be read refuses the reload as a whole.
        path.write_text(toml_dumps(merge(data, {"auth": {"algorithms": ["RS256"], "public_key_files": [str(tmp_path / "missing.pem")]}})))
        assert await daemon.reload() is False
        again = await WsClient.connect(url, token=new)
        await again.event("session.ready")
        daemon.request_drain()
