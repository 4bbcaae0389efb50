"""What notification expiry costs the inbox reads, through the Store.

    .venv/bin/python bench/inbox.py [--backend sqlite|postgres|both] [--users N] [--seconds S]

N users get 20 notifications each, a quarter of them with an ``expires_at``
(half of those already past). Then, for S seconds each, three reads are
repeated as the daemon makes them, without ``now`` (what every read was before
expiry: the counter alone) and with it (expired notifications left out):

- the badges of a push batch: ``notification_unread_counts`` of 500 users;
- one user's unread count (``GET /api/v1/notifications/unread-count``);
- one user's first page (``notification.list``, 20 entries).

It prints calls per second and this process's CPU per call (the database
server's own CPU is not counted). PostgreSQL runs in a throwaway database
created on ``--dsn``'s server and dropped afterwards; SQLite in a temporary
folder.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import admin, with_database
from store import running

from realtimed.config import Config, ServerConfig, StoreConfig
from realtimed.store import Store
from realtimed.store.base import NewNotification

PER_USER = 20
BATCH = 500


async def fill(store: Store, users: list[str], now: datetime) -> None:
    for start in range(0, len(users), 100):
        items = []
        for user in users[start : start + 100]:
            for i in range(PER_USER):
                # Every fourth expires: every eighth already has, at "now".
                expires = None if i % 4 else now + timedelta(hours=-1 if i % 8 == 0 else 1)
                items.append(
                    NewNotification(user_id=user, type="mention", title="t", body=f"b{i}", expires_at=expires)
                )
        await store.insert_notifications(items=items, now=now - timedelta(hours=2))


async def rate(call: Callable[[int], Awaitable[Any]], seconds: float) -> tuple[float, float]:
    """Calls per second and CPU microseconds per call."""
    n = 0
    cpu = time.process_time()
    until = trio.current_time() + seconds
    while trio.current_time() < until:
        await call(n)
        n += 1
    return n / seconds, (time.process_time() - cpu) / n * 1e6


async def bench_backend(cfg: Config, users: int, seconds: float) -> None:
    now = datetime.now(UTC)
    names = [f"u{i:06d}" for i in range(users)]
    async with running(cfg) as store:
        await fill(store, names, now)
        checks: list[tuple[str, Callable[[datetime | None], Callable[[int], Awaitable[Any]]]]] = [
            (
                f"unread counts of {BATCH} users",
                lambda at: lambda n: store.notification_unread_counts(
                    names[(n * BATCH) % users : (n * BATCH) % users + BATCH], now=at
                ),
            ),
            ("one user's unread count", lambda at: lambda n: store.notification_unread_count(names[n % users], now=at)),
            (
                "one user's first page (20)",
                lambda at: lambda n: store.list_notifications(user_id=names[n % users], limit=20, now=at),
            ),
        ]
        for label, make in checks:
            for at, how in ((None, "counter only"), (now, "expiry-aware")):
                per_s, cpu_us = await rate(make(at), seconds)
                print(
                    f"  {cfg.store.backend:8} {label:28} {how:13}: {per_s:9,.0f} calls/s"
                    f"  ({cpu_us:6.0f} us CPU per call in this process)",
                    flush=True,
                )


async def main(args: argparse.Namespace) -> None:
    print(f"inbox reads, {args.users:,} users x {PER_USER} notifications, {args.seconds:g} s per measurement")
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as folder:
            cfg = Config(server=ServerConfig(state_dir=Path(folder)), store=StoreConfig(backend="sqlite"))
            await bench_backend(cfg, args.users, args.seconds)
    if args.backend in ("postgres", "both"):
        name = f"realtimed_bench_{secrets.token_hex(4)}"
        await trio.to_thread.run_sync(admin, args.dsn, f'CREATE DATABASE "{name}"')
        try:
            cfg = Config(store=StoreConfig(backend="postgres", postgres_dsn=with_database(args.dsn, name)))
            await bench_backend(cfg, args.users, args.seconds)
        finally:
            await trio.to_thread.run_sync(admin, args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--users", type=int, default=5000, help="users, each with 20 notifications")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
