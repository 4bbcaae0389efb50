"""JavaScript SDK benchmark: realtimed-client (clients/js/dist) in a Node process against
one daemon. Prints:

1. Reconnect after a daemon restart. N SDK clients (default 1,000), each subscribed to
   three rooms (one all share, one of ten users, its own) and knowing one 1:1
   conversation, on a daemon whose rooms keep history. The daemon is stopped with
   SIGTERM (a drain: ``server.shutdown`` with a reconnect delay drawn by the daemon,
   then close 1001), then with SIGKILL (the clients see 1006 and back off), and started
   again on the same state and port; one event is published into every room as soon as
   it is ready, so clients that come back later have something to recover. Per client:
   the time to every room resubscribed (each Subscription's ``subscribed`` event, which
   comes after the replay or the reset), from the daemon's readiness (``/readyz``
   answering 200), from the client's own close, and from the signal; p50 / p99 / max,
   and how many clients got every room back with ``recovered: true``. Also: reconnect
   attempts and why they failed, and the delay of the clients' own event loop (1,000
   clients share one Node process here; each has a browser to itself in real life).
2. The bundle size, minified and gzipped, as the SDK's build measures it.
3. CPU per received event: N SDK clients (default 500) and N raw ``ws`` sockets, in two
   Node processes, subscribed to the same room while it is published to at a steady
   rate; each process's CPU time (``process.cpuUsage``) per event received, side by side.

The restart figure runs twice: on the embedded backends (SQLite and the in-process
broker, whose room history is lost with the process, so every room is reset rather than
recovered) and on PostgreSQL and Redis (room history survives the restart; a throwaway
database is created on ``--dsn``'s server and dropped afterwards, and room names carry a
run id). ``--backends`` picks one.

The daemon is pinned to CPU 0 and the Node processes to CPU 1 when ``taskset`` exists.
Every client comes from 127.0.0.1, so ``gateway.max_handshakes_per_ip`` is raised;
everything else is the daemon's and the SDK's defaults unless given. A daemon that exits
during a run is reported, its log kept, and started again. Run from the repository root:

    .venv/bin/python bench/sdk.py
    .venv/bin/python bench/sdk.py --backends embedded --skip cpu
    .venv/bin/python bench/sdk.py --backends cluster --clients 200 --reconnect-max-ms 10000

Needs Node.js and npm; ``npm install`` in bench/ and ``npm ci`` plus the build in
clients/js are run for you when missing. Takes three to four minutes.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import API_KEY, ROOT, SECRET, NodeLoad, admin, free_port, pinned, raise_nofile, with_database

SDK = ROOT / "clients" / "js"
CLUSTER = """
[store]
backend = "postgres"
postgres_dsn = "{dsn}"
[broker]
backend = "redis"
redis_url = "{redis}"
"""


class Daemon:
    """``realtimed run`` on CPU 0 that can be stopped by a signal and started again on the
    same config, state and port. Its log goes to a file, so a chatty daemon never blocks
    on a full pipe."""

    def __init__(self, workdir: Path, *, node: str, cluster: dict[str, str] | None, shutdown: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "realtimed.toml"
        self.log = workdir / "realtimed.log"
        self.config.write_text(
            f"""
[server]
node = "{node}"
state_dir = "{workdir / 'state'}"
[http]
listen = "127.0.0.1:{self.port}"
[log]
level = "warning"
[auth]
hs256_secret = "{SECRET}"
[api]
keys = ["{API_KEY}"]
[gateway]
max_handshakes_per_ip = 100000
[jobs]
enabled = false
{shutdown}
[[namespaces]]
prefix = "bench:"
history_size = 100
history_ttl_s = 600
"""
            + (CLUSTER.format(**cluster) if cluster else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, timeout_s: float = 60) -> float:
        """Start it; answer the Unix time at which ``/readyz`` first answered 200 (polled every 5 ms)."""
        offset = self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                pinned(0, [sys.executable, "-m", "realtimed", "run", "-c", str(self.config)]),
                stderr=log,
                stdout=subprocess.DEVNULL,
                preexec_fn=raise_nofile,
                cwd=self.config.parent,
            )
        deadline = time.time() + timeout_s
        with httpx.Client(timeout=1) as probe:
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if probe.get(f"{self.url}/readyz").status_code == 200:
                        return time.time()
                except httpx.HTTPError:
                    pass
                time.sleep(0.005)
        self.stop()
        raise SystemExit(f"the daemon did not start (its log: {self.keep_log()}):\n" + self.log.read_text()[offset:][-3000:])

    def keep_log(self) -> Path:
        """Copy the log out of the temporary directory; answer where."""
        kept = Path(tempfile.gettempdir()) / f"realtimed-sdk-bench-{self.config.parent.name}.log"
        shutil.copy(self.log, kept)
        return kept

    def exited(self) -> str | None:
        """Why the daemon is gone, if it is: its exit status and last log line."""
        if self.proc is None or self.proc.poll() is None:
            return None
        lines = self.log.read_text()[self._offset :].strip().splitlines()
        fatal = [line for line in lines if line.startswith("realtimed: ")] or lines[-1:]
        return f"exited with {self.proc.returncode}: {fatal[0] if fatal else ''} (its log: {self.keep_log()})"

    def signal(self, sig: signal.Signals, timeout_s: float = 60) -> float:
        """Send ``sig``, wait for the process to exit; answer the Unix time of the signal."""
        assert self.proc is not None
        sent = time.time()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return sent

    def publish_all(self, rooms: list[str]) -> None:
        """One event into each room (a fresh connection: the last one may have gone with a restart)."""
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            for i in range(0, len(rooms), 1000):
                body = {"rooms": rooms[i : i + 1000], "event": "bench", "data": {"t": time.time() * 1000}}
                http.post("/server/v1/broadcast", json=body).raise_for_status()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ensure_sdk() -> None:
    """Install the SDK's build tools and build dist/ when it is missing or older than src/."""
    if not (SDK / "node_modules" / "esbuild").exists():
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=SDK, check=True)
    built = SDK / "dist" / "index.js"
    newest = max(p.stat().st_mtime for p in (SDK / "src").rglob("*.ts"))
    if not built.exists() or built.stat().st_mtime < newest:
        subprocess.run(["npm", "run", "--silent", "build"], cwd=SDK, check=True, stdout=subprocess.DEVNULL)


def bundle_size() -> str:
    out = subprocess.run(["node", "scripts/build.mjs", "--size-only"], cwd=SDK, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def fmt(s: dict[str, Any]) -> str:
    return f"{s['p50']!s:>6} {s['p99']!s:>6} {s['max']!s:>6}"


def report(name: str, down_s: float, r: dict[str, Any], timeout_s: float) -> None:
    """Print one restart's figures."""
    print(f"{name}: {r['done']}/{r['clients']} clients had every room back; the daemon was away {down_s * 1000:.0f} ms (signal to /readyz 200)")
    print("  ms to every room resubscribed       p50    p99    max")
    print(f"    from the daemon ready          {fmt(r['from_ready'])}")
    print(f"    from the client's close        {fmt(r['from_close'])}")
    print(f"    from the signal                {fmt(r['from_signal'])}")
    resets = ", ".join(f"{n} {why}" for why, n in sorted(r["resets"].items())) or "none"
    print(
        f"  recovered=true: {r['all_recovered']} clients in every room ({r['rooms_recovered']}/{r['rooms']} rooms); "
        f"{r['replayed']} events replayed; resets: {resets}"
    )
    codes = ", ".join(f"{n}x {code}" for code, n in sorted(r["close_codes"].items()))
    failures = ", ".join(f"{n}x {why}" for why, n in sorted(r["failures"].items())) or "none"
    print(f"  attempts per client: mean {r['attempts_mean']:.1f}, max {r['attempts_max']}; closes seen: {codes}; failed before open: {failures}")
    lag = r["loop_delay_ms"]
    print(f"  the clients' Node event loop delay: p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms, max {lag['max']:.0f} ms")
    if r["sse"]:
        print(f"  {r['sse']} clients came back over SSE, not WebSocket")
    if r["errors"]:
        print(f"  {r['errors']} subscriptions refused on the resubscribe")
    if r["done"] < r["clients"]:
        print(f"  {r['clients'] - r['done']} clients not back within {timeout_s:.0f} s, e.g. {r['stuck'][:1]}")


def reconnect(args: argparse.Namespace, workdir: Path, run: str, backend: str) -> None:
    cluster = None
    database = None
    if backend == "cluster":
        database = f"realtimed_sdk_bench_{run}"
        admin(args.dsn, f'CREATE DATABASE "{database}"')
        cluster = {"dsn": with_database(args.dsn, database), "redis": args.redis}
    shutdown = ""
    if args.reconnect_min_ms is not None or args.reconnect_max_ms is not None:
        shutdown = "[shutdown]\n"
        shutdown += f"reconnect_min_ms = {args.reconnect_min_ms}\n" if args.reconnect_min_ms is not None else ""
        shutdown += f"reconnect_max_ms = {args.reconnect_max_ms}\n" if args.reconnect_max_ms is not None else ""
    (workdir / backend).mkdir()
    daemon = Daemon(workdir / backend, node=f"sdkbench-{backend}-{run}", cluster=cluster, shutdown=shutdown)
    gen: NodeLoad | None = None
    try:
        daemon.start()
        gen = NodeLoad("sdk_client.mjs")
        prefix = f"bench:{run}{backend[0]}"
        templates = [f"{prefix}:all", f"{prefix}:g{{g}}", f"{prefix}:u{{i}}"]
        groups = max(1, args.clients // 10)
        conn = gen.call(
            cmd="sdk", url=daemon.url, secret=SECRET, count=args.clients, prefix=f"s{run}{backend[0]}u", rooms=templates,
            groups=groups, conversation=True, concurrency=32,
        )
        if conn["failed"]:
            raise SystemExit(f"{conn['failed']} SDK clients failed to connect: {conn['error']}")
        rooms = [f"{prefix}:all", *(f"{prefix}:g{g}" for g in range(groups)), *(f"{prefix}:u{i}" for i in range(args.clients))]
        daemon.publish_all(rooms)  # every room has a position (seq, epoch) to resume from
        time.sleep(1.0)
        backends = (
            "PostgreSQL + Redis (room history survives the restart)" if cluster
            else "SQLite + in-process broker (room history is lost with the process)"
        )
        print(
            f"\n== 1. reconnect after a restart, {backends}: {conn['clients']} SDK clients "
            f"(set up at {conn['clients'] / conn['seconds']:.0f}/s), each in 3 rooms (1 shared by all, 1 of 10 users, its own) "
            "and knowing 1 conversation"
        )
        window = (
            f"{args.reconnect_min_ms if args.reconnect_min_ms is not None else 500}.."
            f"{args.reconnect_max_ms if args.reconnect_max_ms is not None else 5000} ms"
        )
        print(f"server.shutdown's reconnect delay (shutdown.reconnect_min_ms..max_ms): {window}; SDK reconnect backoff: its defaults")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            settled = gen.call(cmd="settle", timeout_s=20)
            if settled["connected"] < settled["clients"]:
                print(f"({settled['clients'] - settled['connected']} clients were not connected before the {sig.name})")
            gen.call(cmd="arm")
            sent = daemon.signal(sig)
            ready = daemon.start()
            try:
                daemon.publish_all(rooms)  # missed by every client not yet back
            except httpx.HTTPError as exc:
                print(f"(publishing after the restart failed: {exc!r})")
            r = gen.call(cmd="wait", ready=ready, signal=sent, timeout_s=args.timeout_s)
            report(sig.name, ready - sent, r, args.timeout_s)
            gone = daemon.exited()
            if gone:
                print(f"  the restarted daemon {gone}")
                daemon.start()
            time.sleep(1.0)
    finally:
        if gen is not None:
            gen.close()
        daemon.stop()
        if database is not None:
            admin(args.dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def publish_at(daemon: Daemon, room: str, *, rate: float, seconds: float, threads: int = 1) -> int:
    """Publish ~64-byte events into ``room`` at ``rate`` per second, paced over ``threads`` connections.

    One by default: publishes to one room that overlap may reach a socket out of ``seq``
    order (the SDK then resets the room), which is not what this figure measures.
    """
    counts = [0] * threads
    t0 = time.perf_counter()
    end = t0 + seconds

    def publisher(index: int) -> None:
        interval = threads / rate
        next_at = t0 + index * interval / threads
        with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
            while (now := time.perf_counter()) < end:
                if now < next_at:
                    time.sleep(min(next_at - now, 0.002))
                    continue
                http.post("/server/v1/publish", json={"room": room, "event": "bench", "data": {"t": time.time() * 1000, "p": "x" * 30}})
                counts[index] += 1
                next_at += interval

    workers = [threading.Thread(target=publisher, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts)


def cpu_per_event(args: argparse.Namespace, workdir: Path, run: str) -> None:
    (workdir / "cpu").mkdir()
    daemon = Daemon(workdir / "cpu", node=f"sdkcpu-{run}", cluster=None, shutdown="")
    gens: dict[str, NodeLoad] = {}
    try:
        daemon.start()
        room = f"bench:{run}:fan"
        for kind in ("sdk", "raw"):
            gens[kind] = NodeLoad("sdk_client.mjs")
            out = gens[kind].call(cmd=kind, url=daemon.url, secret=SECRET, count=args.cpu_clients, prefix=f"{kind}{run}u", rooms=[room], concurrency=32)
            if out["failed"]:
                raise SystemExit(f"{out['failed']} {kind} clients failed to connect: {out['error']}")
        time.sleep(1.0)
        for gen in gens.values():
            gen.call(cmd="mark")
        sent = publish_at(daemon, room, rate=args.cpu_rate, seconds=args.cpu_seconds)
        time.sleep(1.0)
        reports = {kind: gen.call(cmd="report") for kind, gen in gens.items()}
        expected = sent * args.cpu_clients
        print(
            f"\n== 3. CPU per received event: {args.cpu_clients} SDK clients and {args.cpu_clients} raw ws sockets (two Node processes "
            f"on one core) in one room, {sent / args.cpu_seconds:.0f} publishes/s for {args.cpu_seconds:.0f} s"
        )
        print(f"{'client':<22} {'events':>16} {'events/s':>9} {'Node CPU':>8} {'µs CPU/event':>12} {'(user + system)':>17}")
        per: dict[str, float] = {}
        for kind, label in (("sdk", "realtimed-client"), ("raw", "raw ws + JSON.parse")):
            r = reports[kind]
            total = r["user_us"] + r["system_us"]
            per[kind] = total / max(1, r["received"])
            print(
                f"{label:<22} {r['received']:>7}/{expected:<8} {r['received'] / r['seconds']:>9.0f} {total / 1e6 / r['seconds'] * 100:>7.0f}% "
                f"{per[kind]:>12.2f} {r['user_us'] / max(1, r['received']):>8.2f} + {r['system_us'] / max(1, r['received']):.2f}"
            )
        print(f"SDK cost: {per['sdk'] - per['raw']:.2f} µs per event over raw ws ({per['sdk'] / max(per['raw'], 1e-9):.2f} times)")
        if reports["sdk"]["resets"] or reports["raw"]["disorder"]:
            print(f"  out of seq order: {reports['raw']['disorder']} events on raw sockets, {reports['sdk']['resets']} SDK room resets")
    finally:
        for gen in gens.values():
            gen.close()
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="SDK clients for the restart figure")
    parser.add_argument(
        "--backends", default="embedded,cluster", help="for the restart figure, comma-separated: embedded (SQLite), cluster (PostgreSQL + Redis)"
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--reconnect-min-ms", type=int, default=None, help="the daemon's shutdown.reconnect_min_ms (default: its default)")
    parser.add_argument("--reconnect-max-ms", type=int, default=None, help="the daemon's shutdown.reconnect_max_ms (default: its default)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="longest wait for every client to resubscribe")
    parser.add_argument("--cpu-clients", type=int, default=500, help="clients of each kind for the CPU figure")
    parser.add_argument("--cpu-rate", type=float, default=10.0, help="publishes per second for the CPU figure")
    parser.add_argument("--cpu-seconds", type=float, default=8.0)
    parser.add_argument("--skip", default="", help="comma-separated figures to skip: reconnect, size, cpu")
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    ensure_sdk()
    run = secrets.token_hex(3)
    print(f"realtimed JavaScript SDK bench (Node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}, run {run})")
    with tempfile.TemporaryDirectory(prefix="realtimed-sdk-bench-") as tmp:
        if "reconnect" not in skip:
            for backend in [b for b in args.backends.split(",") if b]:
                if backend not in ("embedded", "cluster"):
                    raise SystemExit(f"--backends: unknown backend {backend!r}")
                reconnect(args, Path(tmp), run, backend)
        if "size" not in skip:
            print(f"\n== 2. bundle size (clients/js: npm run size): {bundle_size()}")
        if "cpu" not in skip:
            cpu_per_event(args, Path(tmp), run)


if __name__ == "__main__":
    main()
