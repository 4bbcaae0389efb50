"""What the bench scripts share: ports, CPU pinning and accounting, the daemon and
the Node load generators as child processes, and throwaway PostgreSQL databases."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "bench-secret-" + "x" * 24
API_KEY = "bench-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 200_000) if hard != resource.RLIM_INFINITY else 200_000
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def children(pid: int) -> list[int]:
    """The process's children, whichever of its threads started them (a supervisor
    may spawn its workers from a helper thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def admin(dsn: str, sql: str) -> None:
    """Run one statement (CREATE or DROP DATABASE) on PostgreSQL."""
    import asyncpg

    async def main() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(main())


def with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


class DaemonProcess:
    """``realtimed run -c config`` pinned to a CPU; returns once ``/healthz`` answers 200."""

    def __init__(
        self, config: Path, *, port: int, cpu: int = 0, workers: int = 1, tls: bool = False, start_timeout_s: float = 60
    ) -> None:
        self.port = port
        argv = [sys.executable, "-m", "realtimed", "run", "-c", str(config)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            pinned(cpu, argv), stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile, cwd=config.parent
        )
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.ws_url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ws"
        deadline = time.time() + start_timeout_s
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", verify=False, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        raise SystemExit("the daemon did not start:\n" + (self.proc.stderr.read() if self.proc.stderr else ""))

    def cpu_seconds(self) -> float:
        """CPU of the daemon, or of the supervisor and every worker."""
        return sum(cpu_seconds(pid) for pid in [self.proc.pid, *children(self.proc.pid)])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class NodeLoad:
    """A Node load generator (``bench/<script>``) on CPU 1, driven by JSON lines on stdin and stdout."""

    def __init__(self, script: str, *, env: Mapping[str, str] | None = None) -> None:
        if not (BENCH / "node_modules" / "ws").exists():
            subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=BENCH, check=True)
        self.proc = subprocess.Popen(
            pinned(1, ["node", str(BENCH / script)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=raise_nofile,
            env={**os.environ, **(env or {})},
        )

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the load generator died")
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        try:
            self.call(cmd="close")
        except (SystemExit, BrokenPipeError):
            pass
        self.proc.wait(timeout=10)
