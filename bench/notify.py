"""Notification benchmark: one server API call to 10,000 users, on PostgreSQL.

One daemon process (store on PostgreSQL), the fake FCM (``tests/fake_fcm.py``,
HTTPS with HTTP/2) in another, and a Node ``ws`` load generator holding one
socket per online user. Every recipient has a device token. Prints:

- the time from ``POST /server/v1/notifications`` (10,000 user ids) until every
  notification is stored (the answer comes once they are committed) and every
  online socket has its ``notification.new``;
- the pushes per second the fake FCM receives for the offline recipients (the
  online ones are skipped: active on a device), through the whole pipeline
  (planning jobs, one ``push.send`` job per device, ``messages:send`` on HTTP/2
  with ``--concurrency`` requests in flight), and the FCM client alone at the
  same concurrency, without jobs.

The daemon is pinned to CPU 0, the fake FCM and the load generator to CPU 1,
when ``taskset`` exists (PostgreSQL runs wherever the machine puts it). Run from
the repository root:

    .venv/bin/python bench/notify.py
    .venv/bin/python bench/notify.py --dsn postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/notify.py --dsn ... --h2-sender off   # messages:send through httpx, to compare
    .venv/bin/python bench/notify.py --delivery-log both        # the run without the delivery log, then with it

``--delivery-log both`` runs the whole bench twice, on a fresh database each time,
``notify.delivery_log`` off then on (``--rounds N``: N such pairs, alternating, so
that a machine whose load changes weighs on both alike), and prints what the log
costs: notifications stored and delivered live per second, pushes per second
through the pipeline, and the daemon's CPU per push, each the best of its runs.

Without ``--dsn`` a throwaway PostgreSQL server is started (initdb) and removed
afterwards; with it, a throwaway database is created on that server and dropped.
Needs Node.js; ``npm install`` in bench/ is run for you.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from _common import API_KEY, ROOT, SECRET, DaemonProcess, NodeLoad, admin, cpu_seconds, free_port, pinned

sys.path.insert(0, str(ROOT))  # tests.fixtures.services and tests.fake_fcm


class FakeFcmProcess:
    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            pinned(1, [sys.executable, "-m", "tests.fake_fcm", "--dir", str(folder)]),
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the fake FCM did not start")
        info = json.loads(line)
        self.url: str = info["url"]
        self.ca_file: str = info["ca_file"]
        self.key_file: str = info["key_file"]

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/_fake/stats", verify=self.ca_file, timeout=10).json()
        return answer

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Daemon(DaemonProcess):
    def __init__(
        self, workdir: Path, *, dsn: str, fake: FakeFcmProcess, concurrency: int, h2_sender: bool, delivery_log: bool
    ) -> None:
        port = free_port()
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
[store]
backend = "postgres"
postgres_dsn = "{dsn}"
pool_max = 40
[notify]
max_recipients = 100000
delivery_log = {str(delivery_log).lower()}
[push]
service_account_file = "{fake.key_file}"
fcm_url = "{fake.url}"
iid_url = "{fake.url}/iid-base"
ca_file = "{fake.ca_file}"
concurrency = {concurrency}
h2_sender = {str(h2_sender).lower()}
[jobs]
poll_s = 1.0
[[jobs.queues]]
name = "default"
concurrency = 8
[[jobs.queues]]
name = "push"
concurrency = {concurrency}
"""
        )
        super().__init__(config, port=port)


class NotifyLoad(NodeLoad):
    def __init__(self) -> None:
        super().__init__("notify_client.mjs")


def user_token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 7200}, SECRET, algorithm="HS256")


async def register_devices(url: str, count: int) -> float:
    started = time.perf_counter()
    limiter = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def one(i: int) -> None:
            async with limiter:
                answer = await http.post(
                    "/api/v1/devices",
                    json={"token": f"tok-{i:06d}", "platform": "android" if i % 2 else "ios"},
                    headers={"Authorization": f"Bearer {user_token(f'u{i}')}"},
                )
                answer.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))
    return time.perf_counter() - started


def client_alone(fake: FakeFcmProcess, *, concurrency: int, count: int, h2_sender: bool) -> float:
    """Pushes per second of the FCM client by itself (no store, no jobs)."""
    import trio

    from realtimed.clock import SystemClock
    from realtimed.config import load_config
    from realtimed.push.fcm import FcmClient, ServiceAccount
    from realtimed.push.messages import build_message

    async def main() -> float:
        cfg = load_config(env={}, data={"push": {
            "service_account_file": fake.key_file, "fcm_url": fake.url, "ca_file": fake.ca_file,
            "concurrency": concurrency, "h2_sender": h2_sender,
        }})
        client = FcmClient(cfg.push, ServiceAccount.from_file(fake.key_file), clock=SystemClock())
        message = build_message(title="Ann mentioned you", body="look @bob", data={"notification_id": "n_1"})
        async with trio.open_nursery() as running:
            await running.start(client.run)
            await client.send(message, token="warm-up")
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(lambda i=i: client.send(message, token=f"alone-{i}"))
            elapsed = time.perf_counter() - started
            running.cancel_scope.cancel()
        await client.aclose()
        return count / elapsed

    return trio.run(main)


def bench(args: argparse.Namespace, dsn: str, *, delivery_log: bool, alone: bool = True) -> dict[str, float]:
    """One run; returns notifications stored and delivered live per second and pushes per second."""
    with tempfile.TemporaryDirectory(prefix="realtimed-notify-bench-") as tmp:
        folder = Path(tmp)
        fake = FakeFcmProcess(folder)
        daemon = Daemon(folder, dsn=dsn, fake=fake, concurrency=args.concurrency, h2_sender=args.h2_sender == "on",
                        delivery_log=delivery_log)
        gen = NotifyLoad()
        try:
            print(f"realtimed notify bench (postgres), daemon pid {daemon.proc.pid}, {os.cpu_count()} CPUs, "
                  f"notify.delivery_log {'on' if delivery_log else 'off'}")
            seconds = asyncio.run(register_devices(daemon.url, args.recipients))
            print(f"{args.recipients} device tokens registered in {seconds:.1f} s")
            conn = gen.call(cmd="connect", url=daemon.ws_url, count=args.online, secret=SECRET, concurrency=32, prefix="u")
            print(f"{conn['connected']} online users connected in {conn['seconds']:.1f} s (failed {conn['failed']})")
            headers = {"Authorization": f"Bearer {API_KEY}"}
            mention = {"mentioner_name": "Ann", "excerpt": "look at this"}
            # Warm up: connections, prepared statements, an access token.
            httpx.post(f"{daemon.url}/server/v1/notifications", headers=headers, timeout=60,
                       json={"user_ids": ["u0", f"u{args.recipients - 1}"], "type": "mention", "vars": mention})
            gen.call(cmd="wait", count=1, timeout_s=10)
            deadline = time.time() + 30
            while fake.stats()["delivered"] < 1 and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            gen.call(cmd="mark")
            before = fake.stats()["delivered"]
            cpu0 = daemon.cpu_seconds()
            fake_cpu_start = cpu_seconds(fake.proc.pid)

            users = [f"u{i}" for i in range(args.recipients)]
            t0 = time.time()
            answer = httpx.post(f"{daemon.url}/server/v1/notifications", headers=headers, timeout=120,
                                json={"user_ids": users, "type": "mention", "vars": mention})
            t_answer = time.time()
            answer.raise_for_status()
            live = gen.call(cmd="wait", count=conn["connected"], timeout_s=60)
            t_live = (live["last_at_ms"] or 0) / 1000
            # The 10,000 rows commit in one transaction before the first live
            # delivery, so the last notification.new marks "stored and delivered".
            stored_and_live = (t_live if live["received"] else t_answer) - t0
            print(
                f"\none POST /server/v1/notifications to {args.recipients} users (queued {answer.json()['queued']}):\n"
                f"  first notification.new         {(live['first_at_ms'] or 0) / 1000 - t0:6.2f} s  (all {args.recipients} committed)\n"
                f"  last notification.new          {t_live - t0:6.2f} s  ({live['received']}/{conn['connected']} online sockets)\n"
                f"  stored and delivered live      {stored_and_live:6.2f} s  (aim: under 5 s)\n"
                f"  the API answered               {t_answer - t0:6.2f} s  (stored, delivered, push planning queued)"
            )
            expected = args.recipients - conn["connected"]
            deadline = time.time() + args.push_timeout
            stats = fake.stats()
            while stats["delivered"] - before < expected and time.time() < deadline:
                time.sleep(0.2)
                stats = fake.stats()
            t_pushed = time.time()
            pushed = stats["delivered"] - before
            cpu = daemon.cpu_seconds() - cpu0
            fake_cpu = cpu_seconds(fake.proc.pid) - fake_cpu_start
            print(
                f"\npushes to the {expected} offline recipients (sender concurrency {args.concurrency}, HTTP/2, "
                f"push.h2_sender {args.h2_sender}):\n"
                f"  delivered to the fake FCM      {pushed}/{expected} in {t_pushed - t0:.1f} s after the call\n"
                f"  through the pipeline           {pushed / max(t_pushed - t0, 1e-9):6.0f} pushes/s  "
                f"(plan jobs, push.send jobs on PostgreSQL, messages:send)\n"
                f"  daemon CPU over the run        {cpu:.1f} s ({cpu / max(pushed, 1) * 1e3:.2f} ms per push); "
                f"the fake FCM's {fake_cpu:.1f} s"
            )
            figures = {
                "notifications_per_s": args.recipients / max(stored_and_live, 1e-9),
                "pushes_per_s": pushed / max(t_pushed - t0, 1e-9),
                "cpu_ms_per_push": cpu / max(pushed, 1) * 1e3,
            }
            if not alone:
                return figures
            fake_cpu0, started = cpu_seconds(fake.proc.pid), time.time()
            rate = client_alone(fake, concurrency=args.concurrency, count=args.alone, h2_sender=args.h2_sender == "on")
            fake_share = (cpu_seconds(fake.proc.pid) - fake_cpu0) / (time.time() - started)
            print(
                f"  the FCM client alone           {rate:6.0f} pushes/s  ({args.alone} sends, {args.concurrency} in flight, "
                f"no jobs; the fake FCM at {fake_share * 100:.0f}% of a CPU)"
            )
            return figures
        finally:
            gen.close()
            daemon.stop()
            fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--online", type=int, default=2_000, help="recipients with an open socket")
    parser.add_argument("--concurrency", type=int, default=64, help="FCM requests in flight, and push.send jobs at once")
    parser.add_argument("--alone", type=int, default=3000, help="sends for the FCM-client-alone figure")
    parser.add_argument("--push-timeout", type=float, default=300.0)
    parser.add_argument("--h2-sender", choices=["on", "off"], default="on",
                        help="push.h2_sender: messages:send through the lean h2 sender (on) or httpx (off)")
    parser.add_argument("--delivery-log", choices=["on", "off", "both"], default="on",
                        help="notify.delivery_log; both: a run without, then one with, and the cost")
    parser.add_argument("--rounds", type=int, default=1, help="with --delivery-log both: pairs of runs, alternating")
    parser.add_argument("--dsn", default="",
                        help="a PostgreSQL server to create a throwaway database on (default: start a throwaway server)")
    args = parser.parse_args()
    server = None
    dsn = args.dsn
    if not dsn:
        from tests.fixtures.services import PostgresServer

        server = PostgresServer.create()
        dsn = server.dsn()
        print(f"throwaway PostgreSQL on port {server.port}")
    modes = [False, True] * max(1, args.rounds) if args.delivery_log == "both" else [args.delivery_log == "on"]
    results: dict[bool, list[dict[str, float]]] = {}
    try:
        for i, delivery_log in enumerate(modes):
            name = f"realtimed_notify_bench_{secrets.token_hex(4)}"
            admin(dsn, f'CREATE DATABASE "{name}"')
            try:
                if i:
                    print()
                results.setdefault(delivery_log, []).append(bench(
                    args, dsn.rpartition("/")[0] + "/" + name, delivery_log=delivery_log, alone=i == len(modes) - 1
                ))
            finally:
                admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if server is not None:
            server.destroy()
    if len(results) == 2:
        runs = len(results[True])
        print(f"\nthe delivery log's cost (notify.delivery_log off → on, best of {runs} run(s) each; aim: at most 10% fewer):")
        for key, label, unit, best in (
            ("notifications_per_s", "notifications stored and live", "/s", max),
            ("pushes_per_s", "pushes through the pipeline", "/s", max),
            ("cpu_ms_per_push", "daemon CPU per push", " ms", min),
        ):
            off, on = best(r[key] for r in results[False]), best(r[key] for r in results[True])
            change = (on - off) / off * 100
            print(f"  {label:32s} {off:8.2f}{unit} → {on:8.2f}{unit}  ({change:+.1f}%)")


if __name__ == "__main__":
    main()
