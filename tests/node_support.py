"""Node for the tests of the JavaScript SDK and of the demo page: its version, and
commands (npm, node --test) run to completion.

Resource handling: a command runs in its own process group, which is ended, with
everything the command started (the daemons of the SDK's suite, Chromium), when
the test fails, times out or is cancelled.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import trio


def node_major(node: str) -> int:
    """The major version of the ``node`` executable."""
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


async def run_in_group(args: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    """Run a command in its own process group; its output, or a test failure with it."""
    process = await trio.lowlevel.open_process(
        args, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
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
