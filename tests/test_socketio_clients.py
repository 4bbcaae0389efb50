"""Real Socket.IO clients against realtimed's Socket.IO door (``[socketio]``).

- socket.io-client 4 for JavaScript in Node: ``tests/socketio/clients.test.mjs`` (chat with
  acks, typing and receipts over WebSocket only, long-polling only and polling upgraded;
  presence, a notification, an app room, refusals) and ``tests/socketio/recovery.test.mjs``
  (connection state recovery, a daemon restart mid-chat) and ``tests/socketio/guide.test.mjs``
  (the example of docs/socketio-migration.md, run as written), each file with a daemon of its own
  that it starts with this interpreter (``REALTIMED_PYTHON``) and this checkout;
- the same client's browser bundle in headless Chromium (``tests/socketio/browser.test.mjs``,
  playwright-core, Debian's Chromium);
- python-socketio's client, here, in threads, against a daemon in this process.

The Node packages are pinned by ``tests/socketio/package-lock.json`` and installed with
``npm ci`` when ``node_modules`` is missing. Without Node 20+ and npm (or Chromium, for the
browser) those tests are skipped, except under ``CI=true``, where they fail.

Resource handling: Node runs in its own process group, ended with every daemon and browser it
started when a test fails or times out. The python-socketio clients are disconnected in a
``finally``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import trio

from realtimed.daemon import Daemon
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.node_support import node_major, run_in_group

SUITE = Path(__file__).resolve().parent / "socketio"
INSTALL_TIMEOUT_S = 180
NODE_TIMEOUT_S = 120
WAIT_S = 5.0

SOCKETIO: dict[str, Any] = {
    "enabled": True,
    "path": "/socket.io/",
    "ping_interval_ms": 2000,
    "ping_timeout_ms": 2000,
}


def _missing(what: str) -> None:
    """Skip locally; under CI these tests must run, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture
def node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("Node.js and npm are needed for socket.io-client")
    assert node is not None and npm is not None
    if node_major(node) < 20:
        _missing("socket.io-client's tests need Node 20 or later")
    return node, npm


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    env["REALTIMED_PYTHON"] = sys.executable
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    return env


async def _node_test(node: str, npm: str, files: list[str], env: dict[str, str]) -> None:
    with trio.fail_after(INSTALL_TIMEOUT_S):
        if not (SUITE / "node_modules").is_dir():
            await run_in_group([npm, "ci", "--no-audit", "--no-fund"], SUITE, env)
    with trio.fail_after(NODE_TIMEOUT_S):
        output = await run_in_group([node, "--test", "--test-timeout=60000", *files], SUITE, env)
    summary = [line for line in output.splitlines() if re.match(r"# (tests|pass|fail|cancelled|skipped|duration_ms) ", line)]
    print("\n".join(summary))
    assert any(line.startswith("# pass ") and int(line.split()[2]) > 0 for line in summary), output[-5000:]
    assert "# fail 0" in summary, output[-5000:]
    assert "# skipped 0" in summary, output[-5000:]


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + NODE_TIMEOUT_S + 30)
async def test_socket_io_client_in_node(node_tools: tuple[str, str]) -> None:
    node, npm = node_tools
    await _node_test(node, npm, ["clients.test.mjs", "guide.test.mjs"], _env())


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + NODE_TIMEOUT_S + 30)
async def test_socket_io_client_recovers_its_connection_state(node_tools: tuple[str, str]) -> None:
    node, npm = node_tools
    await _node_test(node, npm, ["recovery.test.mjs"], _env())


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + NODE_TIMEOUT_S + 30)
async def test_socket_io_client_in_chromium(node_tools: tuple[str, str]) -> None:
    node, npm = node_tools
    chromium = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        _missing(f"Chromium is needed for the browser test ({chromium} is missing)")
    await _node_test(node, npm, ["browser.test.mjs"], {**_env(), "CHROMIUM_PATH": chromium})


# -- python-socketio ----------------------------------------------------------------------------


class PyClient:
    """A python-socketio ``Client`` whose events (every name, with all their arguments) land in
    a list that the test waits on from Trio through a worker thread."""

    def __init__(self, user: str, **claims: Any) -> None:
        self.user = user
        self.token = token(user, **claims)
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.connect_errors: list[Any] = []
        self._changed = threading.Condition()
        self.sio.on("*", self._on_event)
        self.sio.on("connect_error", self._on_connect_error)

    def _on_event(self, event: str, *args: Any) -> None:
        with self._changed:
            self.events.append((event, args))
            self._changed.notify_all()

    def _on_connect_error(self, data: Any) -> None:
        self.connect_errors.append(data)

    async def connect(self, daemon: Daemon, *, transports: list[str]) -> None:
        url = daemon.url()
        await trio.to_thread.run_sync(
            lambda: self.sio.connect(url, auth={"token": self.token}, transports=transports, socketio_path="/socket.io/", wait_timeout=WAIT_S)
        )

    async def call(self, event: str, data: dict[str, Any] | None = None) -> Any:
        return await trio.to_thread.run_sync(lambda: self.sio.call(event, data or {}, timeout=WAIT_S))

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        await trio.to_thread.run_sync(lambda: self.sio.emit(event, data))

    async def wait_for(self, event: str, match: Callable[..., bool] = lambda *_: True) -> tuple[Any, ...]:
        """The arguments of the first ``event`` (received so far or later) that ``match`` accepts."""

        def wait() -> tuple[Any, ...]:
            end = time.monotonic() + WAIT_S
            with self._changed:
                while True:
                    for name, args in self.events:
                        if name == event and match(*args):
                            return args
                    left = end - time.monotonic()
                    if left <= 0:
                        raise AssertionError(f"{self.user}: no {event} within {WAIT_S} s; got {[n for n, _ in self.events]}")
                    self._changed.wait(left)

        return await trio.to_thread.run_sync(wait)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.sio.disconnect)


async def _server_api(daemon: Daemon, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=daemon.url(), headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        answer = await http.post(f"/server/v1{path}", json=body)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


PY_CONFIG: dict[str, Any] = {
    "socketio": SOCKETIO,
    "presence": {"throttle_s": 0.1},
    "namespaces": [{"prefix": "job:", "history_size": 100}],
    "jobs": {"enabled": False},
}


@pytest.mark.parametrize(
    "transports", [["websocket"], ["polling"], ["polling", "websocket"]], ids=["websocket", "polling", "upgraded"]
)
async def test_python_socketio_client_chat_and_room(start_daemon: DaemonFactory, transports: list[str]) -> None:
    daemon = await start_daemon(PY_CONFIG)
    alice, bob = PyClient("alice"), PyClient("bob", rooms=["job:*"])
    try:
        with trio.fail_after(30):
            await alice.connect(daemon, transports=transports)
            await bob.connect(daemon, transports=transports)
            if len(transports) == 1:
                assert alice.sio.transport() == transports[0]

            opened = await alice.call("conversation.open", {"user_id": "bob"})
            assert opened["ok"] is True, opened
            conversation = opened["data"]["conversation"]
            await alice.emit("typing.start", {"conversation_id": conversation["id"]})
            typing, *_ = await bob.wait_for("typing.updated", lambda d, *_: d["typing"] is True)
            assert typing == {"conversation_id": conversation["id"], "user_id": "alice", "typing": True}

            sent = await alice.call("message.send", {"conversation_id": conversation["id"], "client_id": "p-1", "body": "hi from python"})
            assert sent["ok"] is True, sent
            data, meta, *_ = await bob.wait_for("message.new")
            assert data["message"]["body"] == "hi from python"
            assert meta == {"room": f"conversation:{conversation['id']}", "seq": 1}

            read = await bob.call("message.read", {"conversation_id": conversation["id"], "seq": 1})
            assert read == {"ok": True, "data": {"read_seq": 1}}
            receipt, *_ = await alice.wait_for("receipt.updated", lambda d, *_: d["user_id"] == "bob")
            assert receipt["read_seq"] == 1

            bad = await alice.call("message.send", {"conversation_id": conversation["id"], "client_id": "p-2"})
            assert bad["ok"] is False
            assert (bad["error"], bad["field"]) == ("VALIDATION_ERROR", "body")
            unknown = await alice.call("chat message", {"text": "x"})
            assert unknown["ok"] is False and unknown["error"] == "BAD_REQUEST"

            sub = await bob.call("subscribe", {"room": "job:7"})
            assert sub["ok"] is True and sub["data"]["recovered"] is False, sub
            published = await _server_api(daemon, "/publish", {"room": "job:7", "event": "job.progress", "data": {"pct": 40}})
            assert published["delivered"] == 1
            pub, pub_meta, *_ = await bob.wait_for("job.progress")
            assert pub == {"pct": 40}
            assert pub_meta == {"room": "job:7", "seq": 1, "epoch": sub["data"]["epoch"]}

            # Presence between contacts, and a notification from the backend.
            assert (await alice.call("presence.set", {"status": "busy"}))["ok"] is True
            presence, *_ = await bob.wait_for("presence.updated", lambda d, *_: d["user_id"] == "alice" and d["status"] == "busy")
            assert presence["message"] is None
            queued = await _server_api(daemon, "/notifications", {"user_ids": ["bob"], "type": "announcement", "vars": {"title": "Hi", "body": ""}})
            assert queued["queued"] == 1
            note, note_meta, *_ = await bob.wait_for("notification.new")
            assert note["notification"]["title"] == "Hi"
            assert note_meta == {"seq": 1}
            if len(transports) > 1:
                # python-socketio upgrades once its probe succeeds; poll its state until it has.
                with trio.fail_after(WAIT_S):
                    while alice.sio.transport() != "websocket" or bob.sio.transport() != "websocket":
                        await trio.sleep(0.02)
                assert (await alice.call("ping"))["ok"] is True
    finally:
        with trio.move_on_after(10):
            await alice.close()
            await bob.close()


async def test_python_socketio_client_refused_tokens(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(PY_CONFIG)
    bad = PyClient("mallory", secret="not-the-secret-of-this-daemon-000000")
    expired = PyClient("late", ttl=-120)
    with trio.fail_after(30):
        for client, close_code in ((bad, 4501), (expired, 4004)):
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.connect(daemon, transports=["websocket"])
            (error,) = client.connect_errors
            assert error["data"]["code"] == "UNAUTHORIZED", error
            assert error["data"]["close_code"] == close_code, error
            assert isinstance(error["data"]["message"], str)
            assert not client.sio.connected
