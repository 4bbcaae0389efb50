"""Fan-out benchmark: one daemon process, a Node ``ws`` load generator in another.

Prints, for N sockets (default 1,000) subscribed to one room and 64-byte event
payloads published through the server API:

- deliveries per second, p50 / p99 publish-to-receive latency and server CPU at
  rising publish rates, and the highest rate held with p99 under 50 ms;
- authenticated connects per second (JWT verification included);
- with ``--storm N``: N more sockets connecting all at once (a reconnect storm),
  and the p50 / p95 of each one's connect (upgrade, ``session.ready``, subscribe);
- resident memory per idle socket at 1,000 and 10,000 sockets.

The daemon is pinned to CPU 0 and the load generator to CPU 1 when ``taskset``
exists. Run from the repository root:

    .venv/bin/python bench/fanout.py               # plaintext sockets (the fast path)
    .venv/bin/python bench/fanout.py --tls         # realtimed terminates TLS (the flush path)

Needs Node.js; ``npm install`` in bench/ is run for you.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import API_KEY, SECRET, DaemonProcess, NodeLoad, children, cpu_seconds, free_port

ROOM = "bench:1"


def self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def redis_pid() -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(proc, "comm").read_text().strip().startswith("redis-serv"):
                    return int(proc.name)
            except OSError:
                continue
    return None


CLUSTER = """
[store]
backend = "postgres"
postgres_dsn = "{dsn}"
[broker]
backend = "redis"
redis_url = "{redis}"
"""


class Daemon(DaemonProcess):
    def __init__(self, workdir: Path, *, tls: bool, node: str = "bench", cluster: dict[str, str] | None = None, workers: int = 1, cpu: int = 0) -> None:
        port = free_port()
        workdir = workdir / node
        workdir.mkdir(parents=True, exist_ok=True)
        http = f'listen = "127.0.0.1:{port}"\n'
        if tls:
            cert, key = self_signed(workdir)
            http += f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        config = workdir / "realtimed.toml"
        config.write_text(
            f"""
[server]
node = "{node}"
state_dir = "{workdir / 'state'}"
[http]
{http}
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
[[namespaces]]
prefix = "bench:"
""" + (CLUSTER.format(**cluster) if cluster else "")
        )
        super().__init__(config, port=port, cpu=cpu, workers=workers, tls=tls, start_timeout_s=30)

    def rss_bytes(self) -> int:
        total = 0
        for pid in [self.proc.pid, *children(self.proc.pid)]:
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(match.group(1)) * 1024 if match else 0
        return total


class LoadGenerator(NodeLoad):
    def __init__(self, *, tls: bool) -> None:
        super().__init__("fanout_client.mjs", env={"NODE_TLS_REJECT_UNAUTHORIZED": "0"} if tls else None)


def payload() -> dict[str, Any]:
    data = {"t": time.time() * 1000, "p": ""}
    size = len(json.dumps(data, separators=(",", ":")))
    data["p"] = "x" * max(0, 64 - size)
    return data


def run_rate(daemon: Any, gen: LoadGenerator, clients: list[httpx.Client], *, rate: int, seconds: float, sockets: int) -> dict[str, Any]:
    """Publish at ``rate`` per second for ``seconds`` from several connections at once.

    Each connection paces its share of the rate; a publish waits for its own
    fan-out, so one connection alone would measure the publisher, not realtimed.
    """
    gen.call(cmd="mark")
    cpu0, gen_cpu0, t0 = daemon.cpu_seconds(), cpu_seconds(gen.proc.pid), time.perf_counter()
    end = t0 + seconds
    share = rate / len(clients)
    counts = [0] * len(clients)

    def publisher(index: int) -> None:
        http = clients[index]
        interval = 1.0 / share
        next_at = t0 + index * interval / len(clients)
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            if now < next_at:
                time.sleep(min(next_at - now, 0.002))
                continue
            http.post("/server/v1/publish", json={"room": ROOM, "event": "bench", "data": payload()})
            counts[index] += 1
            next_at += interval

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = sum(counts)
    elapsed = time.perf_counter() - t0
    time.sleep(1.0)
    cpu = (daemon.cpu_seconds() - cpu0) / (elapsed + 1.0)
    gen_cpu = (cpu_seconds(gen.proc.pid) - gen_cpu0) / (elapsed + 1.0)
    report = gen.call(cmd="report")
    expected = sent * sockets
    return {
        "publish_per_s": round(sent / elapsed, 1),
        "deliveries_per_s": round(report["received"] / elapsed),
        "received": report["received"],
        "expected": expected,
        "p50_ms": round(report["p50"], 2) if report["p50"] is not None else None,
        "p99_ms": round(report["p99"], 2) if report["p99"] is not None else None,
        "server_cpu": f"{cpu * 100:.0f}%",
        "generator_cpu": f"{gen_cpu * 100:.0f}%",
        "us_per_delivery": round(cpu * (elapsed + 1.0) / max(1, report["received"]) * 1e6, 1),
    }


def ensure_database(dsn: str) -> None:
    """Create the bench database when it is missing (PostgreSQL on its usual port, trust auth)."""
    name = dsn.rsplit("/", 1)[1]
    base = dsn.rsplit("/", 1)[0]
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {name}"], capture_output=True, check=False)


def measure(label: str, daemons: list[Daemon], args: argparse.Namespace, *, tls: bool) -> None:
    """Connect the sockets spread over ``daemons``, publish on the first, print the table."""
    gen = LoadGenerator(tls=tls)
    redis = redis_pid()
    try:
        clients = [
            httpx.Client(
                base_url=daemons[0].url,
                headers={"Authorization": f"Bearer {API_KEY}"},
                transport=httpx.HTTPTransport(verify=False, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]),
                timeout=10,
            )
            for _ in range(args.publishers)
        ]
        for http in clients:
            http.get("/healthz")
        time.sleep(0.5)
        rss_before = sum(d.rss_bytes() for d in daemons)
        connected, seconds = 0, 0.0
        cpu_before = sum(d.cpu_seconds() for d in daemons)
        share = args.sockets // len(daemons)
        for i, daemon in enumerate(daemons):
            count = share if i < len(daemons) - 1 else args.sockets - share * (len(daemons) - 1)
            conn = gen.call(cmd="connect", url=daemon.ws_url, count=count, secret=SECRET, room=ROOM, concurrency=64, prefix=f"n{i}u")
            connected = conn["connected"]  # the generator's running total
            seconds += conn["seconds"]
        print(f"\n== {label}: {connected} sockets over {len(daemons)} listener(s), publishing on the first")
        connect_cpu = sum(d.cpu_seconds() for d in daemons) - cpu_before
        print(f"connects: {connected / seconds:.0f} authenticated connects/s (JWT verified, subscribed), "
              f"{connect_cpu / max(1, connected) * 1e6:.0f} µs of daemon CPU per connect")
        time.sleep(1.0)
        print(f"memory: {(sum(d.rss_bytes() for d in daemons) - rss_before) / max(1, connected) / 1024:.1f} KiB per subscribed idle socket")
        print(f"{'publish/s':>10} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'realtimed CPU':>13} {'µs/delivery':>11} {'redis CPU':>9} {'loadgen CPU':>11}  received/expected")
        held = None
        for rate in [int(r) for r in args.rates.split(",") if r]:
            redis0 = cpu_seconds(redis) if redis else 0.0
            row = run_rate(_Combined(daemons), gen, clients, rate=rate, seconds=args.seconds, sockets=connected)
            redis_cpu = (cpu_seconds(redis) - redis0) / (args.seconds + 1.0) if redis else 0.0
            ok = row["p99_ms"] is not None and row["p99_ms"] < 50 and row["received"] >= 0.99 * row["expected"]
            if ok:
                held = row
            print(
                f"{row['publish_per_s']:>10} {row['deliveries_per_s']:>13} {row['p50_ms']!s:>8} {row['p99_ms']!s:>8} "
                f"{row['server_cpu']:>13} {row['us_per_delivery']:>11} {redis_cpu * 100:>8.0f}% {row['generator_cpu']:>11}  "
                f"{row['received']}/{row['expected']}"
            )
        if held:
            print(f"highest rate held with p99 < 50 ms: {held['deliveries_per_s']} deliveries/s (p99 {held['p99_ms']} ms)")
        else:
            print("no rate held with p99 < 50 ms")
        if args.storm:
            storm = gen.call(cmd="storm", url=daemons[0].ws_url, count=args.storm, secret=SECRET, room=ROOM, prefix="storm")
            print(
                f"connect storm: {args.storm} sockets at once on the first listener ({storm['connected']} connected, "
                f"{storm['failed']} failed, in {storm['seconds']:.2f} s): p50 {storm['p50'] or 0:.1f} ms, "
                f"p95 {storm['p95'] or 0:.1f} ms, max {storm['max'] or 0:.1f} ms"
            )
    finally:
        gen.close()


class _Combined:
    """Several daemons seen as one for CPU accounting."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self._daemons = daemons

    def cpu_seconds(self) -> float:
        return sum(d.cpu_seconds() for d in self._daemons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rates", default="10,25,40,50,60,80,100", help="publishes per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate step")
    parser.add_argument("--idle", default="1000,10000", help="socket counts for the idle-memory figure ('' to skip)")
    parser.add_argument("--tls", action="store_true", help="realtimed terminates TLS itself")
    parser.add_argument("--publishers", type=int, default=4, help="concurrent publishing connections")
    parser.add_argument("--storm", type=int, default=0, help="then this many sockets connecting at once (0: none)")
    parser.add_argument("--nodes", type=int, default=1, help="2: two daemons on PostgreSQL and Redis, against one")
    parser.add_argument("--workers", type=int, default=1, help="2: `run --workers 2` against `--workers 1`")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/realtimed_bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as tmp:
        workdir = Path(tmp)
        cluster = None
        if args.nodes > 1 or args.workers > 1:
            ensure_database(args.dsn)
            cluster = {"dsn": args.dsn, "redis": args.redis}
        print(f"realtimed fan-out bench ({'TLS in realtimed' if args.tls else 'plaintext'}); load generator: Node ws (bench/fanout_client.mjs)")
        setups: list[tuple[str, list[tuple[str, int]]]] = []
        if args.nodes > 1:
            setups = [("1 node (PostgreSQL + Redis)", [("na", 1)]), (f"{args.nodes} nodes", [(f"n{i}", 1) for i in range(args.nodes)])]
        elif args.workers > 1:
            setups = [("--workers 1 (PostgreSQL + Redis)", [("wk", 1)]), (f"--workers {args.workers}", [("wk", args.workers)])]
        else:
            setups = [("1 node (embedded defaults)", [("bench", 1)])]
        for label, nodes in setups:
            daemons = [Daemon(workdir, tls=args.tls, node=name, cluster=cluster, workers=w, cpu=i % 2) for i, (name, w) in enumerate(nodes)]
            try:
                measure(label, daemons, args, tls=args.tls)
            finally:
                for daemon in daemons:
                    daemon.stop()

        for count in [int(c) for c in args.idle.split(",") if c]:
            daemon = Daemon(workdir, tls=args.tls, node=f"idle{count}")
            gen = LoadGenerator(tls=args.tls)
            try:
                time.sleep(0.5)
                before = daemon.rss_bytes()
                conn = gen.call(cmd="connect", url=daemon.ws_url, count=count, secret=SECRET, room=ROOM, concurrency=64, prefix="m")
                time.sleep(2.0)
                after = daemon.rss_bytes()
                print(f"idle memory: {count} sockets ({conn['connected']} connected, {conn['per_s']:.0f} connects/s): "
                      f"{(after - before) / max(1, conn['connected']) / 1024:.1f} KiB per socket")
            finally:
                gen.close()
                daemon.stop()


if __name__ == "__main__":
    main()
