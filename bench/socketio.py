"""Socket.IO bench: realtimed's Socket.IO door against a Socket.IO 4 server on Node, in one run,
with realtimed's native WebSocket door as a second yardstick.

Three servers, each pinned to CPU 0 when ``taskset`` exists, each with its own load generator
on CPU 1:

- ``realtimed native``: the daemon's ``/ws`` door, driven by bench/fanout_client.mjs (``ws``);
- ``realtimed Socket.IO``: the same daemon build's ``/socket.io/`` door, driven by
  bench/socketio_client.mjs (socket.io-client 4, WebSocket transport);
- ``Socket.IO 4 on Node``: bench/socketio_server.mjs (the ``socket.io`` package, which
  verifies the same HS256 tokens and joins sockets to the room on ``subscribe``), driven by the
  same socket.io-client generator.

For each: authenticated connects per second (1,000 sockets by default, 64 at a time; the token
verified and the room joined) with the server's and the load generator's CPU per connect, resident memory per idle subscribed socket, then fan-out to
every socket of one room at a fixed delivery rate (default 50,000 deliveries/s: 50 publishes/s
of 64-byte payloads to 1,000 sockets, sent to ``POST /server/v1/publish`` from 8 connections):
p50 and p99 publish-to-receive latency and server CPU per delivery. The rate steps of the three
servers are interleaved, ``--rounds`` times, and the median of each is printed with the ratio to
Socket.IO on Node.

The machine may be shared: compare the three figures of one run with each other, never figures
of different runs. Run from the repository root (about a minute and a half):

    .venv/bin/python bench/socketio.py
    .venv/bin/python bench/socketio.py --sockets 2000 --deliveries 50000 --rounds 3

Needs Node.js; ``npm ci`` in bench/ is run when socket.io is missing.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import (
    API_KEY,
    BENCH,
    SECRET,
    DaemonProcess,
    NodeLoad,
    cpu_seconds,
    free_port,
    pinned,
    raise_nofile,
)
from fanout import ROOM, run_rate


def rss_bytes(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) * 1024 if match else 0


class Realtimed(DaemonProcess):
    """One realtimed with both doors: ``/ws`` and ``/socket.io/``."""

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "realtimed.toml"
        config.write_text(
            f"""
[server]
node = "bench"
state_dir = "{workdir / 'state'}"
[http]
listen = "127.0.0.1:{port}"
[log]
level = "warning"
[auth]
hs256_secret = "{SECRET}"
[api]
keys = ["{API_KEY}"]
[gateway]
max_handshakes_per_ip = 100000
max_sockets_per_user = 4
ops_burst = 1000
[socketio]
enabled = true
path = "/socket.io/"
transports = ["polling", "websocket"]
[[namespaces]]
prefix = "bench:"
"""
        )
        super().__init__(config, port=port, cpu=0, start_timeout_s=30)

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)


class NodeSocketIO:
    """bench/socketio_server.mjs on CPU 0; ready once it prints ``listening``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            pinned(0, ["node", str(BENCH / "socketio_server.mjs"), str(self.port), SECRET]),
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=raise_nofile,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "listening":
            raise SystemExit("the Socket.IO server on Node did not start")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Setup:
    """A server, its load generator and its publishing connections."""

    def __init__(self, label: str, server: Any, script: str, connect: dict[str, Any], publishers: int) -> None:
        self.label = label
        self.server = server
        self.gen = NodeLoad(script)
        self.connect_args = connect
        self.clients = [
            httpx.Client(
                base_url=server.url,
                headers={"Authorization": f"Bearer {API_KEY}"},
                transport=httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]),
                timeout=10,
            )
            for _ in range(publishers)
        ]
        self.rows: list[dict[str, Any]] = []
        self.connects_per_s = 0.0
        self.server_ms_per_connect = 0.0
        self.gen_ms_per_connect = 0.0
        self.kib_per_socket = 0.0
        self.connected = 0

    def connect(self, count: int) -> None:
        for http in self.clients:
            http.get("/healthz")
        time.sleep(0.5)
        before = self.server.rss()
        server_cpu, gen_cpu = self.server.cpu_seconds(), cpu_seconds(self.gen.proc.pid)
        out = self.gen.call(cmd="connect", count=count, secret=SECRET, room=ROOM, concurrency=64, **self.connect_args)
        connected = max(1, out["connected"])
        self.server_ms_per_connect = (self.server.cpu_seconds() - server_cpu) * 1000 / connected
        self.gen_ms_per_connect = (cpu_seconds(self.gen.proc.pid) - gen_cpu) * 1000 / connected
        if out.get("failed"):
            print(f"{self.label}: {out['failed']} connects failed (first: {out.get('first_error')})")
        self.connected = out["connected"]
        self.connects_per_s = out["per_s"]
        time.sleep(1.0)
        self.kib_per_socket = (self.server.rss() - before) / max(1, self.connected) / 1024

    def close(self) -> None:
        self.gen.close()
        for http in self.clients:
            http.close()
        self.server.stop()


def ensure_packages() -> None:
    if not (BENCH / "node_modules" / "socket.io").exists() or not (BENCH / "node_modules" / "socket.io-client").exists():
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=BENCH, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000, help="subscribers of the one room, per server")
    parser.add_argument("--deliveries", type=int, default=50_000, help="deliveries per second to hold")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate step")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rate steps per server (the median is shown)")
    parser.add_argument("--publishers", type=int, default=8, help="concurrent publishing connections per server")
    args = parser.parse_args()
    ensure_packages()
    rate = max(1, round(args.deliveries / args.sockets))

    print(f"Socket.IO bench: {args.sockets} subscribers in one room, {rate} publishes/s "
          f"({rate * args.sockets} deliveries/s), {args.rounds} interleaved rounds of {args.seconds:.0f} s; "
          f"servers on CPU 0, load generators on CPU 1 (the machine may be loaded: compare within this run)")
    setups: list[Setup] = []
    with tempfile.TemporaryDirectory(prefix="realtimed-bench-sio-") as tmp:
        try:
            native = Realtimed(Path(tmp) / "native")
            setups.append(Setup("realtimed native /ws", native, "fanout_client.mjs", {"url": native.ws_url, "prefix": "w"}, args.publishers))
            door = Realtimed(Path(tmp) / "door")
            setups.append(Setup("realtimed Socket.IO", door, "socketio_client.mjs", {"url": door.url, "path": "/socket.io/", "prefix": "s"}, args.publishers))
            node = NodeSocketIO()
            setups.append(Setup("Socket.IO 4 on Node", node, "socketio_client.mjs", {"url": node.url, "path": "/socket.io/", "prefix": "n"}, args.publishers))
            for setup in setups:
                setup.connect(args.sockets)
            for _ in range(args.rounds):
                for setup in (s for s in setups if s.connected):
                    setup.rows.append(run_rate(setup.server, setup.gen, setup.clients, rate=rate, seconds=args.seconds, sockets=setup.connected))
        finally:
            for setup in setups:
                setup.close()

    node_us = statistics.median(r["us_per_delivery"] for r in setups[-1].rows) if setups and setups[-1].rows else None
    print(f"\n{'server':<22} {'connects/s':>10} {'KiB/socket':>10} {'publish/s':>9} {'deliveries/s':>12} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU':>5} {'µs/delivery':>11} {'vs Node':>7} {'loadgen CPU':>11}  received/expected")
    for setup in setups:
        if not setup.rows:
            print(f"{setup.label:<22} not measured: no socket connected")
            continue
        us = statistics.median(r["us_per_delivery"] for r in setup.rows)
        mid = sorted(setup.rows, key=lambda r: r["us_per_delivery"])[len(setup.rows) // 2]
        p50 = _median([r["p50_ms"] for r in setup.rows])
        p99 = _median([r["p99_ms"] for r in setup.rows])
        publish = _median([r["publish_per_s"] for r in setup.rows])
        received = sum(r["received"] for r in setup.rows)
        expected = sum(r["expected"] for r in setup.rows)
        ratio = f"{us / node_us:.2f}" if node_us else "-"
        print(f"{setup.label:<22} {setup.connects_per_s:>10.0f} {setup.kib_per_socket:>10.1f} {publish!s:>9} {mid['deliveries_per_s']:>12} "
              f"{p50!s:>7} {p99!s:>7} {mid['server_cpu']:>5} {us:>11.1f} {ratio:>7} {mid['generator_cpu']:>11}  {received}/{expected}")
    print(f"\n{'server':<22} {'connects/s':>10} {'server CPU ms/connect':>21} {'loadgen CPU ms/connect':>22}")
    for setup in setups:
        print(f"{setup.label:<22} {setup.connects_per_s:>10.0f} {setup.server_ms_per_connect:>21.2f} {setup.gen_ms_per_connect:>22.2f}")
    print("A connect: the handshake, the token verified, the room joined with an acknowledged subscribe; its CPU is "
          "the server's and the load generator's (socket.io-client costs more per connect than ws: with a generator "
          "near its CPU, connects/s measures the client library, and server CPU per connect is the server's figure)")
    print("µs/delivery: server CPU time per event delivered to one socket (lower is better); "
          "vs Node: that figure over Socket.IO 4 on Node's, in this run. A publish rate under the target, or a "
          "load generator near 100%, means the fixed rate was not held: the latencies then measure the backlog")


def _median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


if __name__ == "__main__":
    sys.exit(main())
