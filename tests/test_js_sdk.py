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
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

JS = Path(__file__).resolve().parent.parent / "clients" / "js"
SUITE_TIMEOUT_S = 300


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


async def _run(args: list[str], env: dict[str, str]) -> str:
    """Run a command in clients/js in its own process group; its output, or a failure with it."""
    process = await trio.lowlevel.open_process(
        args, cwd=JS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    assert process.stdout is not None
    chunks: list[bytes] = []
    try:
        async for chunk in process.stdout:
            chunks.append(bytes(chunk))
        await process.wait()
    finally:
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        break
                    with trio.move_on_after(5):
                        await process.wait()
                        break
    output = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, f"{' '.join(args)} failed ({process.returncode}):\n{output[-20000:]}"
    return output


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
async def test_js_sdk() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed for the JavaScript SDK's tests")
    if _node_major(node) < 20:
        pytest.skip("the JavaScript SDK needs Node 20 or later")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    env["REALTIMED_PYTHON"] = sys.executable
    with trio.fail_after(SUITE_TIMEOUT_S):
        if not (JS / "node_modules").is_dir():
            await _run([npm, "ci", "--no-audit", "--no-fund"], env)
        build = await _run([npm, "run", "build"], env)
        print(next(line for line in build.splitlines() if line.startswith("realtimed-client:")))
        files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
        output = await _run([node, "--test", "--test-timeout=60000", *files], env)
    summary = [
        line
        for line in output.splitlines()
        if re.match(r"# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ", line)
    ]
    print("\n".join(summary))
    assert any(line.startswith("# pass ") and int(line.split()[2]) > 0 for line in summary), output[-5000:]
