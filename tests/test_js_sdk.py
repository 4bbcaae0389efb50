"""The JavaScript SDK (``clients/js``) against real daemons, through Node's test runner.

The Node suite starts its own daemons with this interpreter (``REALTIMED_PYTHON``)
and this checkout (``PYTHONPATH``). Here: ``npm ci`` when ``node_modules`` is
missing (pinned by the committed lock file), ``npm run build`` (which prints the
bundle size), then ``node --test``; the summary is printed. Skipped without Node
20+ and npm.

Resource handling: Node runs in its own process group, so that a timeout or a
failure here ends it together with every daemon its tests started.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import trio

from tests.node_support import node_major, run_in_group

JS = Path(__file__).resolve().parent.parent / "clients" / "js"
SUITE_TIMEOUT_S = 300


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
async def test_js_sdk() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed for the JavaScript SDK's tests")
    if node_major(node) < 20:
        pytest.skip("the JavaScript SDK needs Node 20 or later")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    env["REALTIMED_PYTHON"] = sys.executable
    with trio.fail_after(SUITE_TIMEOUT_S):
        if not (JS / "node_modules").is_dir():
            await run_in_group([npm, "ci", "--no-audit", "--no-fund"], JS, env)
        build = await run_in_group([npm, "run", "build"], JS, env)
        print(next(line for line in build.splitlines() if line.startswith("realtimed-client:")))
        files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
        output = await run_in_group([node, "--test", "--test-timeout=60000", *files], JS, env)
    summary = [
        line
        for line in output.splitlines()
        if re.match(r"# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ", line)
    ]
    print("\n".join(summary))
    assert any(line.startswith("# pass ") and int(line.split()[2]) > 0 for line in summary), output[-5000:]
