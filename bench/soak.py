"""Soak: many sockets for a long time with churn, sampled every 10 s; not in CI.

One daemon (PostgreSQL store and Redis broker, as in production) and, in this
process, ``--sockets`` WebSocket clients (default 10,000) in pairs sharing a
conversation, plus SSE streams. For ``--minutes`` (default 30):

- every socket subscribes to an app room and chats (``--rate`` messages a second
  in all, each timed from ``message.send`` to the partner's ``message.new``);
- notifications go to random users through the server API;
- churn: ``--churn`` sockets a second disconnect and reconnect, resubscribing with
  ``since`` (recovery) and fetching missed messages with ``message.history``;
- a slow-reader population (``--slow``, default 1 % of the sockets) subscribes to a
  busy room and never reads: the daemon must cut each with 4008 (outbox overflow)
  while everyone else keeps their p99.

Every 10 s one line: the daemon's RSS, open fds, Trio tasks
(``realtimed_trio_tasks`` from /metrics), sockets in CLOSE-WAIT, its TCP
connections to PostgreSQL and to Redis, open client sockets, the send→receive
p50 / p99 of the interval, messages, reconnects and 4008 closes so far. After
warm-up (the first minute) every column but the counters should be flat; the
last lines compare the first and last samples after warm-up.

At the end it prints the close codes the clients saw and the daemon's
``realtimed_closes_total`` by code. ``--tracemalloc`` starts the daemon with
``REALTIMED_TRACEMALLOC`` (realtimed/memdebug.py) and sends it SIGUSR2 after
warm-up, half-way and at the end: it prints the daemon's RSS, traced bytes and
RSS after ``malloc_trim`` at each, then the allocation sites, tracebacks and
object types that grew. ``--memory-counts`` does the same without tracing (no
slowdown; object counts, pymalloc's arenas, RSS). Each dump trims the daemon's
heap, so the ``rss_mb`` column drops after it.

Each run has its own database, node name and room names, and drops its database
at the end.

The script raises its own ``ulimit -n`` (and the daemon's) as far as the hard limit
allows, and lowers ``--sockets`` to fit when it cannot. A progress line goes to
stderr; run it in the background, from the repository root:

    nohup .venv/bin/python bench/soak.py --minutes 30 > soak.txt 2> soak.progress &
    .venv/bin/python bench/soak.py --minutes 3 --sockets 1000      # a short check
    nice -n 10 .venv/bin/python bench/soak.py --sockets 300 --minutes 10 --rate 10 --churn 5 --tracemalloc
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _common import admin, free_port, with_database  # noqa: E402

SECRET = "soak-secret-" + "x" * 32
API_KEY = "soak-api-key-" + "y" * 24
SAMPLE_S = 10.0
WARM_UP_S = 60.0
CLOSE_WAIT = "08"
# 8 KB publications a second to the room of the slow readers: enough to fill a socket's
# kernel buffers and then its outbox (gateway.outbox_max_bytes) within a minute.
BUSY_PER_S = 20


def token(user: str, rooms: list[str] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 86400}
    if rooms:
        claims["rooms"] = rooms
    return jwt.encode(claims, SECRET, algorithm="HS256")


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft fd limit towards ``wanted``; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- what the daemon holds, read from /proc ------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def socket_inodes(pid: int) -> tuple[int, set[str]]:
    """(open fds, the inodes of its sockets)."""
    fds = 0
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        fds += 1
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return fds, inodes


def tcp_of(pid: int, inodes: set[str]) -> list[tuple[int, str]]:
    """(remote port, state) of each TCP socket of the process."""
    found: list[tuple[int, str]] = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                if parts[9] in inodes:
                    found.append((int(parts[2].rsplit(":", 1)[1], 16), parts[3]))
    return found


# -- the load ------------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.messages = 0
        self.reconnects = 0
        self.recovered = 0
        self.not_recovered = 0
        self.closed_4008 = 0
        self.errors = 0
        self.http_errors = 0  # server API calls of the load that timed out or failed
        # Close codes the clients saw (the server's close frame, or 1006 when none came).
        self.close_codes: collections.Counter[int] = collections.Counter()
        self.open = 0

    def take_latencies(self) -> list[float]:
        out, self.latencies = self.latencies, []
        return out


class Client:
    """One user's socket, reconnected by the churn; ``message.new`` of its pair timed."""

    def __init__(self, user: str, room: str, stats: Stats, sent_at: dict[str, float]) -> None:
        self.user = user
        self.room = room
        self.stats = stats
        self.sent_at = sent_at
        self.ws: WebSocketConnection | None = None
        self.room_pos: tuple[int, str] | None = None
        self.last_seq: dict[str, int] = {}
        self.ids = 0

    async def send(self, op: str, data: dict[str, Any]) -> None:
        if self.ws is None:
            return
        self.ids += 1
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
            await self.ws.send_message(orjson.dumps({"id": self.ids, "op": op, "data": data}).decode())

    async def session(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One connection: subscribe (recovering from the last position), read until closed."""
        started = False
        try:
            async with open_websocket_url(
                url, extra_headers=[(b"authorization", f"Bearer {token(self.user, ['soak:*'])}".encode())],
                connect_timeout=30, disconnect_timeout=5,
            ) as ws:
                self.ws = ws
                self.stats.open += 1
                started = True
                task_status.started()
                sub: dict[str, Any] = {"room": self.room}
                if self.room_pos is not None:
                    sub["since"] = {"seq": self.room_pos[0], "epoch": self.room_pos[1]}
                await self.send("subscribe", sub)
                for cid, seq in self.last_seq.items():
                    await self.send("message.history", {"conversation_id": cid, "after_seq": seq, "limit": 100})
                while True:
                    frame = orjson.loads(await ws.get_message())
                    event = frame.get("event")
                    if event == "message.new":
                        message = frame["data"]["message"]
                        self.last_seq[message["conversation_id"]] = message["seq"]
                        self.stats.messages += 1
                        sent = self.sent_at.pop(message["client_id"], None)
                        if sent is not None and message["sender_id"] != self.user:
                            self.stats.latencies.append(time.monotonic() - sent)
                    elif event == "soak.tick" and "seq" in frame:
                        self.room_pos = (frame["seq"], frame["epoch"])
                    elif "ok" in frame and isinstance(frame.get("data"), dict) and "recovered" in frame["data"]:
                        if frame["data"]["recovered"]:
                            self.stats.recovered += 1
                        elif self.room_pos is not None:
                            self.stats.not_recovered += 1
                        if frame["data"].get("epoch"):
                            self.room_pos = (frame["data"].get("seq", 0), frame["data"]["epoch"])
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason is not None else 1006
            self.stats.close_codes[code] += 1
            if code == 4008:
                self.stats.closed_4008 += 1
        except (HandshakeError, OSError, trio.BrokenResourceError):
            self.stats.errors += 1
        finally:
            if started:
                self.stats.open -= 1
            self.ws = None
            if not started:
                task_status.started()


async def slow_reader(url: str, user: str, room: str, stats: Stats) -> None:
    """Subscribes to the busy room and never reads again: the daemon must cut it (4008)."""
    import socket

    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        await trio.to_thread.run_sync(sock.connect, (host, int(port)))
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        await stream.send_all(
            (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             f"Authorization: Bearer {token(user, ['soak:*'])}\r\n\r\n").encode()
        )
        await stream.receive_some(4096)
        payload = orjson.dumps({"id": 1, "op": "subscribe", "data": {"room": room}})
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await stream.send_all(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        await trio.sleep_forever()  # never read
    except OSError:
        stats.errors += 1
    finally:
        sock.close()


async def soak(args: argparse.Namespace, url: str, pid: int, pg_port: int, redis_port: int) -> None:
    stats = Stats()
    sent_at: dict[str, float] = {}
    ws_url = url.replace("http", "ws", 1) + "/ws"
    tag = args.tag
    pairs = args.sockets // 2
    clients = [Client(f"s{i}-{tag}", f"soak:{tag}-r{i % 100}", stats, sent_at) for i in range(pairs * 2)]
    conversations: list[str] = []
    end = math.inf  # set once every socket is connected
    samples: list[dict[str, float]] = []
    snapshots: list[tuple[str, Path, Path]] = []  # (when, tracemalloc snapshot, object counts)
    start = trio.current_time()

    async def snapshot(label: str) -> None:
        """With --tracemalloc or --memory-counts: SIGUSR2 makes the daemon dump; wait for its files."""
        if args.mem_dir is None:
            return
        n = len(snapshots) + 1
        stem = args.mem_dir / f"{pid}-{n}"
        os.kill(pid, signal.SIGUSR2)
        with trio.move_on_after(300):
            while True:
                await trio.sleep(0.5)
                types = stem.with_suffix(".types.json")
                with contextlib.suppress(OSError, orjson.JSONDecodeError):
                    if types.stat().st_size and orjson.loads(types.read_bytes())["types"]:
                        snapshots.append((label, stem.with_suffix(".tracemalloc"), types))
                        print(f"\rsoak: memory snapshot {n} ({label}) taken", file=sys.stderr, flush=True)
                        return
        print(f"\rsoak: memory snapshot {n} ({label}) did not come", file=sys.stderr, flush=True)

    async with trio.open_nursery() as nursery, httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as http:
        limiter = trio.CapacityLimiter(50)

        async def post(path: str, body: dict[str, Any]) -> httpx.Response | None:
            """A server API call of the load; a timeout or a refused connection is counted, not fatal."""
            try:
                return await http.post(path, json=body)
            except httpx.HTTPError:
                stats.http_errors += 1
                return None

        async def keep(client: Client) -> None:
            while trio.current_time() < end:
                await client.session(ws_url)
                await trio.sleep(random.uniform(0.5, 2.0))  # a client's reconnect backoff
                stats.reconnects += 1

        async def open_client(client: Client) -> None:
            async with limiter:
                ready = trio.Event()

                async def first() -> None:
                    await client.session(ws_url, task_status=_Started(ready))
                    await trio.sleep(random.uniform(0.5, 2.0))
                    stats.reconnects += 1
                    await keep(client)

                nursery.start_soon(first)
                await ready.wait()

        print(f"connecting {len(clients)} sockets", file=sys.stderr, flush=True)
        async with trio.open_nursery() as opening:
            for client in clients:
                opening.start_soon(open_client, client)
        for i in range(pairs):
            members = [clients[2 * i].user, clients[2 * i + 1].user]
            answer = await post("/server/v1/conversations", {"member_ids": members, "type": "direct"})
            if answer is not None and answer.status_code >= 300:
                answer = await post("/server/v1/conversations", {"member_ids": members})
            ok = answer is not None and answer.status_code < 300
            conversations.append(answer.json().get("conversation", {}).get("id", "") if ok and answer else "")
        for i in range(args.slow):
            nursery.start_soon(slow_reader, url, f"slow{i}-{tag}", f"soak:{tag}-busy", stats)
        print(f"connected in {trio.current_time() - start:.0f} s; the load runs {args.minutes} min", file=sys.stderr, flush=True)
        start = trio.current_time()
        end = start + args.minutes * 60

        async def chat() -> None:
            n = 0
            while trio.current_time() < end:
                i = random.randrange(pairs)
                if conversations[i]:
                    sender = clients[2 * i + random.randrange(2)]
                    n += 1
                    client_id = f"c{n}"
                    sent_at[client_id] = time.monotonic()
                    await sender.send("message.send", {"conversation_id": conversations[i], "client_id": client_id, "body": "x" * 40})
                await trio.sleep(1 / args.rate)

        async def rooms() -> None:
            while trio.current_time() < end:
                for r in range(100):
                    await post("/server/v1/publish", {"room": f"soak:{tag}-r{r}", "event": "soak.tick", "data": {"t": time.time()}})
                for _ in range(BUSY_PER_S):
                    await post("/server/v1/publish", {"room": f"soak:{tag}-busy", "event": "soak.tick", "data": {"pad": "y" * 8000}})
                await trio.sleep(1.0)

        async def notifications() -> None:
            while trio.current_time() < end:
                user = random.choice(clients).user
                await post("/server/v1/notifications", {"user_ids": [user], "type": "announcement", "vars": {"title": "soak", "body": "tick"}})
                await trio.sleep(0.2)

        async def sse() -> None:
            """A few SSE streams that come and go."""
            while trio.current_time() < end:
                user = random.choice(clients).user
                with trio.move_on_after(random.uniform(2, 8)):
                    try:
                        async with httpx.AsyncClient(timeout=None) as stream_http, stream_http.stream(
                            "GET", f"{url}/api/v1/events", headers={"Authorization": f"Bearer {token(user)}"}
                        ) as response:
                            async for _ in response.aiter_bytes():
                                pass
                    except httpx.HTTPError:
                        stats.http_errors += 1
                        await trio.sleep(1)

        async def close(ws: WebSocketConnection) -> None:
            with contextlib.suppress(Exception), trio.move_on_after(5):
                await ws.aclose()

        async def churn() -> None:
            while trio.current_time() < end:
                await trio.sleep(1 / max(args.churn, 0.001))
                client = random.choice(clients)
                if client.ws is not None:
                    nursery.start_soon(close, client.ws)  # the close handshake must not slow the churn down

        async def sampler() -> None:
            print("time_s  rss_mb  fds  trio_tasks  close_wait  pg_conns  redis_conns  sockets  p50_ms  p99_ms  msgs  reconnects  recovered  not_recovered  4008", flush=True)
            while trio.current_time() < end:
                await trio.sleep(SAMPLE_S)
                fds, inodes = socket_inodes(pid)
                tcp = tcp_of(pid, inodes)
                tasks = math.nan
                with contextlib.suppress(Exception):
                    for line in (await http.get("/metrics")).text.splitlines():
                        if line.startswith("realtimed_trio_tasks "):
                            tasks = float(line.split()[1])
                lat = sorted(stats.take_latencies())
                p50 = lat[len(lat) // 2] * 1000 if lat else math.nan
                p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] * 1000 if lat else math.nan
                sample = {
                    "t": trio.current_time() - start, "rss": rss_mb(pid), "fds": fds, "tasks": tasks,
                    "close_wait": sum(1 for _, state in tcp if state == CLOSE_WAIT),
                    "pg": sum(1 for port, state in tcp if port == pg_port and state == "01"),
                    "redis": sum(1 for port, state in tcp if port == redis_port and state == "01"),
                    "sockets": stats.open, "p50": p50, "p99": p99,
                }
                samples.append(sample)
                if sample["t"] >= WARM_UP_S and not snapshots:
                    await snapshot(f"after warm-up, {sample['t']:.0f} s")
                elif len(snapshots) == 1 and sample["t"] >= args.minutes * 30:
                    await snapshot(f"half-way, {sample['t']:.0f} s")
                print(
                    f"{sample['t']:6.0f}  {sample['rss']:6.0f}  {fds:4d}  {tasks:10.0f}  {sample['close_wait']:10d}  "
                    f"{sample['pg']:8d}  {sample['redis']:11d}  {stats.open:7d}  {p50:6.1f}  {p99:6.1f}  {stats.messages:5d}  "
                    f"{stats.reconnects:10d}  {stats.recovered:9d}  {stats.not_recovered:13d}  {stats.closed_4008:4d}",
                    flush=True,
                )
                left = end - trio.current_time()
                print(f"\rsoak: {sample['t'] / 60:.1f} of {args.minutes} min, {stats.open} sockets, p99 {p99:.0f} ms, "
                      f"{max(left, 0):.0f} s left   ", end="", file=sys.stderr, flush=True)

        async with trio.open_nursery() as load:
            for task in (chat, rooms, notifications, sse, churn, sampler):
                load.start_soon(task)
        await snapshot(f"at the end, {trio.current_time() - start:.0f} s")
        closes: list[str] = []
        with contextlib.suppress(httpx.HTTPError):
            closes = [
                line for line in (await http.get("/metrics")).text.splitlines()
                if line.startswith("realtimed_closes_total")
            ]
        nursery.cancel_scope.cancel()
    print(file=sys.stderr)
    steady = [s for s in samples if s["t"] >= WARM_UP_S] or samples
    if steady:
        first, last = steady[0], steady[-1]
        print("\nafter warm-up, first → last sample:")
        for key in ("rss", "fds", "tasks", "close_wait", "pg", "redis", "sockets", "p99"):
            print(f"  {key}: {first[key]:.0f} → {last[key]:.0f}")
    print(f"  4008 closes seen by clients: {stats.closed_4008}")
    print("  close codes seen by clients (1006: no close frame): "
          + ", ".join(f"{code}: {n}" for code, n in sorted(stats.close_codes.items())))
    print(f"  handshake or socket errors seen by clients: {stats.errors}; server API calls failed: {stats.http_errors}")
    print("  the daemon's count of its socket closes, by code and side:")
    for line in closes:
        print(f"    {line}")
    if snapshots:
        memory_report(snapshots)


def memory_report(snapshots: list[tuple[str, Path, Path]], top: int = 25) -> None:
    """The allocation sites and object types that grew between the daemon's snapshots."""
    import tracemalloc

    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
              tracemalloc.Filter(False, "<unknown>")]
    loaded = []
    print("\nthe daemon's memory at each snapshot (MB): RSS, traced by tracemalloc, tracemalloc's own overhead, "
          "pymalloc's arenas (in live blocks), RSS after malloc_trim(0)")
    for label, snap, path in snapshots:
        dumped = orjson.loads(path.read_bytes())
        if snap.exists():
            loaded.append((label, tracemalloc.Snapshot.load(str(snap)).filter_traces(ignore), dumped["types"]))
        else:  # REALTIMED_TRACEMALLOC_FRAMES=0: the object counts only
            loaded.append((label, None, dumped["types"]))
        mem = dumped["memory"]
        print(f"  {label}: {mem['rss_kb'] / 1024:.0f}, {mem['traced_bytes'] / 2**20:.1f}, "
              f"{mem['tracemalloc_overhead_bytes'] / 2**20:.1f}, {mem.get('pymalloc_bytes_total', math.nan) / 2**20:.1f} "
              f"({mem.get('pymalloc_bytes_in_blocks', math.nan) / 2**20:.1f}), {mem.get('rss_kb_after_trim', math.nan) / 1024:.0f}")
    base_label, base, base_types = loaded[0]
    for label, snap, types in loaded[1:]:
        grew = sorted(((n - base_types.get(kind, 0), kind, n) for kind, n in types.items()), reverse=True)
        print(f"\ntop {top} growing object types (gc.get_objects) ({base_label} → {label}):")
        for diff, kind, n in grew[:top]:
            print(f"  {diff:+9d}  (now {n:8d})  {kind}")
        if snap is None or base is None:
            continue
        total = sum(stat.size for stat in snap.statistics("filename"))
        base_total = sum(stat.size for stat in base.statistics("filename"))
        print(f"\ntraced memory {base_label}: {base_total / 2**20:.1f} MB; {label}: {total / 2**20:.1f} MB "
              f"({(total - base_total) / 2**20:+.1f} MB)")
        print(f"top {top} growing allocation sites ({base_label} → {label}):")
        for stat in snap.compare_to(base, "lineno")[:top]:
            frame = stat.traceback[0]
            print(f"  {stat.size_diff / 1024:+9.0f} KiB  {stat.count_diff:+8d} blocks  "
                  f"(now {stat.size / 1024:.0f} KiB)  {frame.filename}:{frame.lineno}")
        print(f"top {top // 2} growing tracebacks:")
        for stat in snap.compare_to(base, "traceback")[: top // 2]:
            print(f"  {stat.size_diff / 1024:+9.0f} KiB  {stat.count_diff:+8d} blocks")
            for line in stat.traceback.format(limit=6, most_recent_first=True):
                print(f"      {line}")


class _Started:
    """A ``task_status`` that sets an event (a session started outside ``nursery.start``)."""

    def __init__(self, event: trio.Event) -> None:
        self._event = event

    def started(self, value: object = None) -> None:
        self._event.set()


@contextlib.contextmanager
def daemon(args: argparse.Namespace, folder: Path, dsn: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = folder / "realtimed.toml"
    config.write_text(f"""
[server]
node = "soak-{args.tag}"
state_dir = "{folder / 'state'}"
[http]
listen = "127.0.0.1:{port}"
[log]
level = "warning"
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
redis_url = "redis://127.0.0.1:{args.redis}/0"
[gateway]
max_handshakes_per_ip = 100000
outbox_max_bytes = 65536
[[namespaces]]
prefix = "soak:"
history_size = 100
recovery_cap = 100
""")

    def limits() -> None:
        raise_nofile(args.sockets * 2 + 1000)

    env = dict(os.environ)
    if args.mem_dir is not None:
        env["REALTIMED_TRACEMALLOC"] = str(args.mem_dir)  # realtimed/memdebug.py: SIGUSR2 dumps
        if not args.tracemalloc:
            env["REALTIMED_TRACEMALLOC_FRAMES"] = "0"
    log = open(folder / "daemon.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtimed", "run", "-c", str(config)], stderr=log, stdout=subprocess.DEVNULL,
        cwd=ROOT, preexec_fn=limits, env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("the daemon did not start:\n" + (folder / "daemon.log").read_text())
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0, help="chat messages per second in all")
    parser.add_argument("--churn", type=float, default=20.0, help="sockets closed (and reconnected) per second")
    parser.add_argument("--slow", type=int, default=0, help="slow readers (default: 1 %% of --sockets)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", type=int, default=6379)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace the daemon's allocations (slower, more memory) and print what grew after warm-up")
    parser.add_argument("--memory-counts", action="store_true",
                        help="as --tracemalloc without tracing: object counts, pymalloc's arenas and RSS before and "
                             "after malloc_trim at each snapshot (no slowdown)")
    args = parser.parse_args()
    args.slow = args.slow or max(1, args.sockets // 100)
    limit = raise_nofile(args.sockets * 2 + 1000)
    if limit < args.sockets + args.slow + 500:
        fit = max(100, limit - args.slow - 500)
        print(f"ulimit -n is {limit}: --sockets lowered from {args.sockets} to {fit}", file=sys.stderr)
        args.sockets = fit
    # One run's own database, node name and rooms: nothing shared with another run or the tests.
    args.tag = uuid.uuid4().hex[:6]
    name = f"rt_soak_{args.tag}"
    admin(args.dsn, f'CREATE DATABASE "{name}"')
    pg_port = int(args.dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    try:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rt-soak-"))
            args.mem_dir = Path(tmp) / "mem" if args.tracemalloc or args.memory_counts else None
            url, pid = stack.enter_context(daemon(args, Path(tmp), with_database(args.dsn, name)))
            print(f"soak: {args.sockets} sockets + {args.slow} slow readers, {args.rate:.0f} msg/s, churn {args.churn:.0f}/s,"
                  f" {args.minutes} min, daemon pid {pid}", flush=True)
            trio.run(soak, args, url, pid, pg_port, args.redis)
    finally:
        admin(args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
