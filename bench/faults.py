"""Fault runs too long for the test suite: a node killed at 500 msg/s, Redis stalled
for 10 s, a 30 s partition between one node and Redis.

Two daemon processes (nodes A and B) share one PostgreSQL and one Redis; each
fault is made in a userspace TCP proxy (``tests/fault_proxy.py``) between a node
and Redis, so the machine's servers are never stopped. Run from the repository
root (PostgreSQL and Redis on their usual ports, or pass ``--dsn`` / ``--redis``):

    .venv/bin/python bench/faults.py kill --rate 500 --clients 500
    .venv/bin/python bench/faults.py stall --seconds 10
    .venv/bin/python bench/faults.py partition --seconds 30
    .venv/bin/python bench/faults.py all

``kill``: the scenario of ``tests/chat_kill.py`` (half the users on each node, in
pairs across the nodes, sending at ``--rate`` in all; B gets SIGKILL at
``--kill-at``; its users reconnect to A and resend what was not acknowledged).
Prints messages acknowledged, acknowledged but not stored (must be 0),
conversations with a ``seq`` gap or a duplicate, clients behind, live duplicates,
and the p50 / p99 time from the kill until each of B's users was caught up.

``stall`` (both nodes' Redis holds every byte) and ``partition`` (B's Redis link
drops every byte, then its connections are reset): one pair of users chatting
across the nodes at 2 msg/s through the fault, and a third user who leaves B
during it. Prints when each node's ``/readyz`` turned 503 and 200 again, messages
acknowledged and lost, live duplicates, and the presence updates the user on A
received for the one who left (1 expected) and for the one who stayed (0 expected
while the fault is shorter than ``broker.node_ttl_s``; one offline and one online
when longer: the transitions of a partition are announced as they were seen).

The machine's load moves every figure; say so with them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import admin, with_database  # noqa: E402

from tests import chat_kill  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402

SECRET = "faults-secret-" + "x" * 32
# A database of its own on the machine's Redis: the presence keys of other clusters
# using that Redis (other test runs) are then out of reach, so only these two nodes
# can take one another for dead.
REDIS_DB = 9
API_KEY = "faults-api-key-" + "y" * 24


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """``realtimed run`` in a subprocess, its log in a file of the run's folder."""

    def __init__(self, folder: Path, name: str, *, dsn: str, redis_port: int, node_ttl_s: float) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / f"{name}.toml"
        config.write_text(f"""
[server]
node = "{name}-{uuid.uuid4().hex[:6]}"
state_dir = "{folder / name}"
[http]
listen = "127.0.0.1:{self.port}"
[log]
level = "{os.environ.get('REALTIMED_BENCH_LOG_LEVEL', 'warning')}"
[auth]
algorithms = ["HS256"]
hs256_secret = "{SECRET}"
[api]
keys = ["{API_KEY}"]
[store]
backend = "postgres"
postgres_dsn = "{dsn}"
pool_max = 20
[broker]
backend = "redis"
redis_url = "redis://127.0.0.1:{redis_port}/{REDIS_DB}"
timeout_s = 2.0
node_ttl_s = {node_ttl_s}
[presence]
offline_grace_s = 1.0
[gateway]
max_handshakes_per_ip = 10000
""")
        self.log = open(folder / f"{name}.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "realtimed", "run", "-c", str(config)], stderr=self.log, stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"node {name} did not start; see {folder / (name + '.log')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@contextlib.contextmanager
def throwaway_database(dsn: str) -> Iterator[str]:
    """A new database on ``dsn``'s server for the run, dropped afterwards."""
    name = f"rt_faults_{uuid.uuid4().hex[:8]}"
    admin(dsn, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(dsn, name)
    finally:
        admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


async def kill_run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    a = Node(folder, "a", dsn=args.dsn, redis_port=args.redis, node_ttl_s=5.0)
    b = Node(folder, "b", dsn=args.dsn, redis_port=args.redis, node_ttl_s=5.0)
    try:

        async def kill() -> None:
            b.proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(b.proc.wait)

        with trio.fail_after(args.duration + 600):
            outcome = await chat_kill.run(
                url_a=a.url, url_b=b.url, kill=kill, token=token, clients=args.clients, rate=args.rate,
                duration_s=args.duration, kill_at_s=args.kill_at, progress=say,
            )
    finally:
        a.stop()
        b.stop()
    result = {
        "acknowledged": outcome.acked,
        "acknowledged before the kill": outcome.acked_before_kill,
        "acknowledged, not stored": len(outcome.lost),
        "conversations with a seq gap or duplicate": len(outcome.gaps),
        "clients behind": len(outcome.behind),
        "clients with a live duplicate": len(outcome.duplicates),
        "ack p50 / p99 s": f"{outcome.p(0.5, outcome.ack_s) or 0:.3f} / {outcome.p(0.99, outcome.ack_s) or 0:.3f}",
        "caught up p50 / p99 s": f"{outcome.p(0.5) or 0:.3f} / {outcome.p(0.99) or 0:.3f}",
    }
    return result


async def fault_run(kind: str, seconds: float, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One pair chatting across the nodes through a Redis fault; see the module docstring."""
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        proxy = FaultProxy(args.redis)
        await nursery.start(proxy.run)
        # stall: both nodes behind the proxy; partition: only B.
        a_port = proxy.port if kind == "stall" else args.redis
        a = await trio.to_thread.run_sync(lambda: Node(folder, "a", dsn=args.dsn, redis_port=a_port, node_ttl_s=args.node_ttl))
        b = await trio.to_thread.run_sync(lambda: Node(folder, "b", dsn=args.dsn, redis_port=proxy.port, node_ttl_s=args.node_ttl))
        try:
            tag = uuid.uuid4().hex[:6]
            alice = chat_kill.ChatClient(f"alice-{tag}", token)
            bob = chat_kill.ChatClient(f"bob-{tag}", token)
            carol = chat_kill.ChatClient(f"carol-{tag}", token)
            presence: list[tuple[float, str, str]] = []
            await nursery.start(alice.serve, a.url)
            await nursery.start(bob.serve, b.url)
            await nursery.start(carol.serve, b.url)
            reply = await alice.request("conversation.open", {"user_id": bob.user})
            assert reply and reply.get("ok"), reply
            cid = reply["data"]["conversation"]["id"]
            reply = await alice.request("conversation.open", {"user_id": carol.user})
            assert reply and reply.get("ok"), reply
            await trio.sleep(1.0)
            watch_presence(alice, presence)
            acked: dict[str, int] = {}
            unanswered = 0
            ready: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
            start = trio.current_time()

            async def readiness(node: Node) -> None:
                async with httpx.AsyncClient(timeout=5) as http:
                    last = None
                    while True:
                        try:
                            code = (await http.get(f"{node.url}/readyz")).status_code
                        except httpx.HTTPError:
                            code = 0
                        if code != last:
                            ready[node.name].append((round(trio.current_time() - start, 2), code))
                            last = code
                        await trio.sleep(0.1)

            async def chat(stop_at: float) -> None:
                nonlocal unanswered
                n = 0
                while trio.current_time() < stop_at:
                    n += 1
                    for sender in (alice, bob):
                        client_id = f"{sender.user}-{n}"
                        answer = await sender.request("message.send", {"conversation_id": cid, "client_id": client_id, "body": client_id})
                        if answer and answer.get("ok"):
                            acked[client_id] = answer["data"]["message"]["seq"]
                        else:
                            unanswered += 1
                    await trio.sleep(0.5)

            with trio.fail_after(seconds + 120):
                async with trio.open_nursery() as run:
                    run.start_soon(readiness, a)
                    run.start_soon(readiness, b)
                    fault_at = start + 3.0
                    heal_at = fault_at + seconds
                    run.start_soon(chat, heal_at + 8.0)
                    await trio.sleep_until(fault_at)
                    say(f"{kind}: Redis {'stalled for both nodes' if kind == 'stall' else 'cut off from node B'} for {seconds:.0f} s")
                    if kind == "stall":
                        proxy.stall()
                    else:
                        proxy.blackhole()
                    await trio.sleep(1.0)
                    if carol.ws is not None:
                        with trio.move_on_after(3):
                            await carol.ws.aclose()  # a real change during the fault
                    say(f"{kind}: {carol.user} left node B")
                    await trio.sleep_until(heal_at)
                    proxy.heal()
                    say(f"{kind}: healed")
                    await trio.sleep(8.0 + max(args.node_ttl, 5.0))
                    run.cancel_scope.cancel()
            messages = await chat_kill.history(alice, cid)
            stored = {m["client_id"]: m["seq"] for m in messages}
            seqs = [m["seq"] for m in messages]
            lost = [k for k, seq in acked.items() if stored.get(k) != seq]
            live_dups = sum(len(c.live.get(cid, [])) - len(set(c.live.get(cid, []))) for c in (alice, bob))
            behind = [c.user for c in (alice, bob) if not set(seqs) <= set(c.live.get(cid, [])) | set(seqs)]
            result = {
                "fault": f"{kind} {seconds:.0f} s (at 3.0 s, healed at {3.0 + seconds:.1f} s)",
                "readyz a (s, status)": ready["a"],
                "readyz b (s, status)": ready["b"],
                "acknowledged": len(acked),
                "refused or unanswered (not acknowledged)": unanswered,
                "acknowledged, not stored": len(lost),
                "seq gap-free": seqs == list(range(1, len(seqs) + 1)),
                "live duplicates": live_dups,
                "clients behind after history": len(behind),
                "presence.updated for the user who left": [
                    (round(t - start, 2), s) for t, u, s in presence if u == carol.user
                ],
                "presence.updated for the user who stayed": [
                    (round(t - start, 2), s) for t, u, s in presence if u == bob.user
                ],
            }
        finally:
            await trio.to_thread.run_sync(a.stop)
            await trio.to_thread.run_sync(b.stop)
            nursery.cancel_scope.cancel()
    return result


def watch_presence(client: chat_kill.ChatClient, into: list[tuple[float, str, str]]) -> None:
    """Record the ``presence.updated`` events ``client`` receives (its reader hands them over)."""
    client.on_event = lambda frame: (
        into.append((trio.current_time(), frame["data"]["user_id"], frame["data"]["status"]))
        if frame.get("event") == "presence.updated"
        else None
    )


def show(title: str, result: dict[str, Any]) -> None:
    print(f"\n== {title}")
    for key, value in result.items():
        print(f"  {key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["kill", "stall", "partition", "all"])
    parser.add_argument("--dsn", default=os.environ.get("REALTIMED_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis", type=int, default=6379, help="the Redis port on 127.0.0.1")
    parser.add_argument("--rate", type=float, default=500.0, help="kill: messages per second in all")
    parser.add_argument("--clients", type=int, default=500, help="kill: sockets (half on each node)")
    parser.add_argument("--duration", type=float, default=10.0, help="kill: seconds of load")
    parser.add_argument("--kill-at", type=float, default=5.0, help="kill: seconds into the load")
    parser.add_argument("--seconds", type=float, default=0.0, help="stall / partition length (default 10 / 30)")
    parser.add_argument("--node-ttl", type=float, default=15.0, help="broker.node_ttl_s of the nodes")
    parser.add_argument("--logs", type=Path, default=None, help="keep the nodes' configurations and logs in this folder")
    args = parser.parse_args()
    with throwaway_database(args.dsn) as dsn, tempfile.TemporaryDirectory(prefix="rt-faults-") as tmp:
        args.dsn = dsn
        folder = Path(tmp)
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            folder = args.logs
        runs: list[tuple[str, Callable[[], Any]]] = []
        if args.scenario in ("kill", "all"):
            runs.append(("kill", lambda: kill_run(args, folder)))
        if args.scenario in ("stall", "all"):
            runs.append(("stall", lambda: fault_run("stall", args.seconds or 10.0, args, folder)))
        if args.scenario in ("partition", "all"):
            runs.append(("partition", lambda: fault_run("partition", args.seconds or 30.0, args, folder)))
        for name, make in runs:
            say(f"{name}: starting")
            show(name, trio.run(make))


if __name__ == "__main__":
    main()
