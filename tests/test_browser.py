"""The demo page (``examples/web``) and the JavaScript SDK in headless Chromium.

A daemon runs here, in-process, on the demo's own configuration
(``examples/web/realtimed.toml``: the page under ``/app/``, the SDK under ``/sdk/``,
``/dev/token``) with a free port and a temporary state folder. Node then runs
``tests/browser/demo.test.mjs`` with playwright-core (pinned by
``tests/browser/package-lock.json``, installed with ``npm ci`` when
``node_modules`` is missing; it never downloads a browser), which drives Debian's
Chromium (``/usr/bin/chromium``, or ``$CHROMIUM_PATH``) as alice and bob in two
browser contexts. Screenshots of each step land in ``tests/artifacts/``.

The SDK is built (``npm ci`` and ``npm run build`` in ``clients/js``) when its
``dist/`` is missing or older than its sources.

Without Node 20+, npm or Chromium the test is skipped, except under ``CI=true``,
where it fails: CI installs them (``.ci/run``).

Resource handling: Node runs in its own process group, ended with everything it
started (Chromium) when the test fails or times out.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import trio

from realtimed.config import load_config
from realtimed.daemon import Daemon
from tests.node_support import node_major, run_in_group

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "web"
SDK = ROOT / "clients" / "js"
BROWSER_TESTS = Path(__file__).resolve().parent / "browser"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
INSTALL_TIMEOUT_S = 300
BROWSER_TIMEOUT_S = 90


def _missing(what: str) -> None:
    """Skip locally; under CI the browser test must run, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(what)


def _sdk_stale() -> bool:
    built = SDK / "dist" / "index.js"
    if not built.is_file():
        return True
    newest = max(p.stat().st_mtime for p in (SDK / "src").rglob("*.ts"))
    return newest > built.stat().st_mtime


@pytest.fixture
def tools() -> tuple[str, str, str]:
    """node, npm and Chromium, or a skip (a failure under CI). A plain fixture, so that
    the skip keeps its reason."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("Node.js and npm are needed for the browser tests")
    assert node is not None and npm is not None
    if node_major(node) < 20:
        _missing("the browser tests need Node 20 or later")
    chromium = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        _missing(f"Chromium is needed for the browser tests ({chromium} is missing)")
    return node, npm, chromium


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + BROWSER_TIMEOUT_S + 60)
async def test_demo_page_in_chromium(nursery: trio.Nursery, tmp_path: Path, tools: tuple[str, str, str]) -> None:
    node, npm, chromium = tools
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    with trio.fail_after(INSTALL_TIMEOUT_S):
        if _sdk_stale():
            if not (SDK / "node_modules").is_dir():
                await run_in_group([npm, "ci", "--no-audit", "--no-fund"], SDK, env)
            await run_in_group([npm, "run", "build"], SDK, env)
        if not (BROWSER_TESTS / "node_modules").is_dir():
            await run_in_group([npm, "ci", "--no-audit", "--no-fund"], BROWSER_TESTS, env)

    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("[0-9][0-9]-*.png"):
        old.unlink()  # the screenshots of an earlier run
    cfg = load_config(
        DEMO / "realtimed.toml",
        env={"REALTIMED__HTTP__LISTEN": "127.0.0.1:0", "REALTIMED__SERVER__STATE_DIR": str(tmp_path / "state")},
    )
    daemon = Daemon(cfg, handle_signals=False)
    await nursery.start(daemon.run)
    try:
        with trio.fail_after(BROWSER_TIMEOUT_S):
            output = await run_in_group(
                [node, "--test", "--test-timeout=60000", "demo.test.mjs"],
                BROWSER_TESTS,
                {**env, "DEMO_URL": daemon.url(), "CHROMIUM_PATH": chromium, "ARTIFACTS": str(ARTIFACTS)},
            )
    finally:
        daemon.request_drain()
        with trio.move_on_after(10):
            await daemon.wait_stopped()
    summary = [line for line in output.splitlines() if re.match(r"# (tests|pass|fail|cancelled|skipped|duration_ms) ", line)]
    print("\n".join(summary))
    print(f"screenshots: {ARTIFACTS}")
    assert any(line.startswith("# pass ") and int(line.split()[2]) > 0 for line in summary), output[-5000:]
    assert any(line == "# fail 0" for line in summary), output[-5000:]
