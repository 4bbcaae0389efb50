"""The Socket.IO protocol's own conformance suite (tests/socketio-protocol) against the door.

A daemon runs with the suite's intervals (ping every 300 ms, pong within 200 ms)
and ``maxPayload`` (1,000,000), and the test-only echo handler
(tests/socketio_echo.py) in place of realtimed's; mocha runs the vendored
``test-suite.js`` against it. ``npm ci`` installs mocha, chai and ws from the
committed lock file when ``node_modules`` is missing. Skipped without Node and
npm, except under ``CI=true``, where that is a failure.

Resource handling: mocha runs in its own process group, ended with everything
it started when the test fails or times out.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import trio

from tests.fixtures.daemon import DaemonFactory
from tests.node_support import run_in_group
from tests.socketio_echo import EchoHandler

SUITE = Path(__file__).resolve().parent / "socketio-protocol"
SUITE_TIMEOUT_S = 120

# The settings the suite names (PING_INTERVAL, PING_TIMEOUT, maxPayload), and a connect
# timeout inside mocha's 2 s per test ("should close the connection if no handshake is received").
SUITE_CONFIG = {
    "socketio": {
        "enabled": True,
        "ping_interval_ms": 300,
        "ping_timeout_ms": 200,
        "connect_timeout_ms": 1000,
        "max_payload_bytes": 1_000_000,
    }
}


@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
async def test_socketio_protocol_suite(start_daemon: DaemonFactory) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js and npm are needed for the Socket.IO conformance suite")
        pytest.skip("Node.js and npm are needed for the Socket.IO conformance suite")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    with trio.fail_after(SUITE_TIMEOUT_S):
        if not (SUITE / "node_modules" / ".package-lock.json").is_file():
            await run_in_group([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], SUITE, env)
        daemon = await start_daemon(SUITE_CONFIG, socketio_handler=EchoHandler())
        env["SOCKETIO_PROTOCOL_URL"] = daemon.url()
        mocha = str(SUITE / "node_modules" / ".bin" / "mocha")
        output = await run_in_group([node, mocha, "--reporter", "dot", "test-suite.js"], SUITE, env)
    passing = re.search(r"(\d+) passing", output)
    print(output.strip().splitlines()[-1] if output.strip() else output)
    assert passing is not None and int(passing.group(1)) >= 30, output[-5000:]
    assert "failing" not in output, output[-5000:]
