"""Chat benchmark: one daemon process, a Node ``ws`` load generator in another.

N pairs of users (default 1,000), each pair in its own 1:1 conversation; one
side of each pair sends ``message.send``, the other receives ``message.new``.
The total rate is spread round-robin over the pairs, so 1,000 messages a second
over 1,000 pairs is each pair sending one message a second. For each rate it
prints:

- messages persisted per second (``message.send`` replies, which come only
  once the message is committed) and delivered per second (``message.new`` on
  the other participant's socket);
- p50 / p99 from sending ``message.send`` to the other participant's
  ``message.new``, and p50 / p99 of the reply (the durable acknowledgement);
- the daemon's CPU, and its CPU per message;

then the highest rate held with p99 under 100 ms (and every message delivered).
Steps of ``--heartbeat-s`` (default 25 s, the daemon's default) or longer
include a whole heartbeat period: every socket's ping and the generator's pong.

The daemon is pinned to CPU 0 and the load generator to CPU 1 when ``taskset``
exists (a PostgreSQL server runs wherever the machine puts it). Run from the
repository root:

    .venv/bin/python bench/chat.py                                   # SQLite (embedded)
    .venv/bin/python bench/chat.py --store postgres --dsn postgresql://postgres@127.0.0.1:5432/postgres

With ``--store postgres`` a throwaway database is created on ``--dsn``'s server
and dropped afterwards. Needs Node.js; ``npm install`` in bench/ is run for you.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import API_KEY, SECRET, DaemonProcess, NodeLoad, admin, free_port


class Daemon(DaemonProcess):
    def __init__(self, workdir: Path, *, store: str, dsn: str | None, heartbeat_s: float) -> None:
        port = free_port()
        store_section = ""
        if store == "postgres":
            assert dsn is not None
            store_section = f'[store]\nbackend = "postgres"\npostgres_dsn = "{dsn}"\npool_max = 20\n'
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
ops_burst = 1000
ops_per_s = 1000
heartbeat_s = {heartbeat_s}
[gateway.op_limits]
# A throughput benchmark: no user meets a budget, whatever --pairs and --rates.
"message.send" = {{per = 1000000, window_s = 1}}
[jobs]
enabled = false
{store_section}"""
        )
        super().__init__(config, port=port)


class LoadGenerator(NodeLoad):
    def __init__(self) -> None:
        super().__init__("chat_client.mjs")


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def bench(args: argparse.Namespace, dsn: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="realtimed-chat-bench-") as tmp:
        daemon = Daemon(Path(tmp), store=args.store, dsn=dsn, heartbeat_s=args.heartbeat_s)
        gen = LoadGenerator()
        try:
            print(
                f"realtimed chat bench ({args.store}, heartbeat every {args.heartbeat_s:g} s), "
                f"daemon pid {daemon.proc.pid}, {os.cpu_count()} CPUs"
            )
            conn = gen.call(cmd="connect", url=daemon.ws_url, pairs=args.pairs, secret=SECRET, concurrency=32, prefix="p")
            print(f"{conn['pairs']} pairs ({2 * conn['pairs']} sockets) connected, conversations opened in {conn['seconds']:.1f} s (failed {conn['failed']})")
            gen.call(cmd="run", rate=min(200, args.pairs), seconds=2.0)  # warm up
            print(
                f"\n{'rate/s':>7} {'persisted/s':>11} {'delivered/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'ack p50':>7} {'ack p99':>7} {'server CPU':>10} {'µs/msg':>7}  delivered/sent"
            )
            held: dict[str, Any] | None = None
            for rate in [int(r) for r in args.rates.split(",") if r]:
                cpu0 = daemon.cpu_seconds()
                row = gen.call(cmd="run", rate=rate, seconds=args.seconds)
                cpu = daemon.cpu_seconds() - cpu0
                window = row["elapsed"]
                persisted = row["acked"] / window
                delivered = row["delivered"] / window
                cpu_share = cpu / window
                ok = row["p99"] is not None and row["p99"] < 100 and row["delivered"] >= row["sent"] and not row["errors"]
                if ok:
                    held = {"rate": rate, **row, "persisted": persisted, "delivered_per_s": delivered}
                print(
                    f"{rate:>7} {persisted:>11.0f} {delivered:>11.0f} {ms(row['p50']):>7} {ms(row['p99']):>7} "
                    f"{ms(row['ack_p50']):>7} {ms(row['ack_p99']):>7} {cpu_share * 100:>9.0f}% "
                    f"{cpu / max(1, row['acked']) * 1e6:>7.0f}  {row['delivered']}/{row['sent']}"
                    + (f"  errors {row['errors']}: {row['last_error']}" if row["errors"] else "")
                )
                if not ok and row["p99"] is not None and row["p99"] > 1000:
                    break  # far past saturation; higher rates only queue more
            if held:
                print(
                    f"\nhighest rate held with p99 < 100 ms: {held['rate']} messages/s "
                    f"({held['persisted']:.0f} persisted/s, {held['delivered_per_s']:.0f} delivered/s, "
                    f"p50 {ms(held['p50'])} ms, p99 {ms(held['p99'])} ms)"
                )
            else:
                print("\nno rate held with p99 < 100 ms")
        finally:
            gen.close()
            daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--rates", default="500,1000,1500,2000,2500,3000,4000", help="messages per second in all, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate step")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--heartbeat-s", type=float, default=25.0,
        help="gateway.heartbeat_s of the daemon (its pings and the pongs are part of the load)",
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a PostgreSQL server to create a throwaway database on")
    args = parser.parse_args()
    if not shutil.which("node"):
        raise SystemExit("needs Node.js")
    if args.store == "sqlite":
        bench(args, None)
        return
    name = f"realtimed_chat_bench_{secrets.token_hex(4)}"
    admin(args.dsn, f'CREATE DATABASE "{name}"')
    try:
        bench(args, args.dsn.rpartition("/")[0] + "/" + name)
    finally:
        admin(args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
