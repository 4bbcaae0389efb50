"""Fan-out benchmark: one daemon process, a Node ``ws`` load generator in another.

Prints, for N sockets (default 1,000) subscribed to one room and 64-byte event
payloads published through the server API:

- deliveries per second, p50 / p99 publish-to-receive latency and server CPU at
  rising publish rates, and the highest rate held with p99 under 50 ms;
- authenticated connects per second (JWT verification included);
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
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "bench-secret-" + "x" * 24
API_KEY = "bench-api-key"
ROOM = "bench:1"


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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Daemon:
    def __init__(self, workdir: Path, *, tls: bool) -> None:
        self.port = free_port()
        http = f'listen = "127.0.0.1:{self.port}"\n'
        if tls:
            cert, key = self_signed(workdir)
            http += f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        config = workdir / "realtimed.toml"
        config.write_text(
            f"""
[server]
node = "bench"
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
"""
        )
        self.proc = subprocess.Popen(
            pinned(0, [sys.executable, "-m", "realtimed", "run", "-c", str(config)]),
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=raise_nofile,
            cwd=workdir,
        )
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.ws_url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self.port}/ws"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", verify=False, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit("the daemon did not start:\n" + (self.proc.stderr.read() if self.proc.stderr else ""))

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) * 1024 if match else 0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class LoadGenerator:
    def __init__(self, *, tls: bool) -> None:
        if not (BENCH / "node_modules" / "ws").exists():
            subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=BENCH, check=True)
        env = dict(os.environ)
        if tls:
            env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"
        self.proc = subprocess.Popen(
            pinned(1, ["node", str(BENCH / "fanout_client.mjs")]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=raise_nofile,
            env=env,
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


def payload() -> dict[str, Any]:
    data = {"t": time.time() * 1000, "p": ""}
    size = len(json.dumps(data, separators=(",", ":")))
    data["p"] = "x" * max(0, 64 - size)
    return data


def run_rate(daemon: Daemon, gen: LoadGenerator, clients: list[httpx.Client], *, rate: int, seconds: float, sockets: int) -> dict[str, Any]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rates", default="10,25,50,75,90,100,110,120", help="publishes per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate step")
    parser.add_argument("--idle", default="1000,10000", help="socket counts for the memory figure")
    parser.add_argument("--tls", action="store_true", help="realtimed terminates TLS itself")
    parser.add_argument("--publishers", type=int, default=4, help="concurrent publishing connections")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as tmp:
        workdir = Path(tmp)
        daemon = Daemon(workdir, tls=args.tls)
        gen = LoadGenerator(tls=args.tls)
        print(f"realtimed fan-out bench ({'TLS in realtimed' if args.tls else 'plaintext'}), daemon pid {daemon.proc.pid}")
        try:
            # TCP_NODELAY: httpx writes the head and the body separately, and Nagle plus
            # delayed ACKs would add 40 ms to every publish.
            clients = [
                httpx.Client(
                    base_url=daemon.url,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    transport=httpx.HTTPTransport(verify=False, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]),
                    timeout=10,
                )
                for _ in range(args.publishers)
            ]
            for http in clients:
                http.get("/healthz")
            time.sleep(0.5)
            rss_before = daemon.rss_bytes()
            conn = gen.call(cmd="connect", url=daemon.ws_url, count=args.sockets, secret=SECRET, room=ROOM, concurrency=64, prefix="u")
            print(f"connects: {conn['connected']} sockets in {conn['seconds']:.2f} s = {conn['per_s']:.0f} authenticated connects/s (failed {conn['failed']})")
            time.sleep(1.0)
            rss_after = daemon.rss_bytes()
            print(f"memory: {(rss_after - rss_before) / max(1, conn['connected']) / 1024:.1f} KiB per subscribed idle socket at {conn['connected']} sockets")
            print(f"\n{'publish/s':>10} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>10} {'µs/delivery':>11} {'loadgen CPU':>11}  received/expected")
            held = None
            for rate in [int(r) for r in args.rates.split(",") if r]:
                row = run_rate(daemon, gen, clients, rate=rate, seconds=args.seconds, sockets=conn["connected"])
                ok = row["p99_ms"] is not None and row["p99_ms"] < 50 and row["received"] >= 0.99 * row["expected"]
                if ok:
                    held = row
                print(
                    f"{row['publish_per_s']:>10} {row['deliveries_per_s']:>13} {row['p50_ms']!s:>8} {row['p99_ms']!s:>8} "
                    f"{row['server_cpu']:>10} {row['us_per_delivery']:>11} {row['generator_cpu']:>11}  {row['received']}/{row['expected']}"
                )
            if held:
                print(f"\nhighest rate held with p99 < 50 ms: {held['deliveries_per_s']} deliveries/s ({held['publish_per_s']} publishes/s to {conn['connected']} sockets, p99 {held['p99_ms']} ms)")
            else:
                print("\nno rate held with p99 < 50 ms")
        finally:
            gen.close()
            daemon.stop()

        for count in [int(c) for c in args.idle.split(",") if c]:
            daemon = Daemon(workdir, tls=args.tls)
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
