"""Activity feeds on PostgreSQL: activities logged per second, and search latency.

    .venv/bin/python bench/feeds.py [--seconds S] [--batch 100] [--posters C] [--activities N] [--queries Q]

A daemon (``realtimed run``, pinned to CPU 0) runs on a throwaway database
created on ``--dsn``'s server and dropped afterwards. Then, through the server
API as an application's backend would call it (httpx, keep-alive):

1. **logging**: C posters each send ``POST /server/v1/activities`` with batches of
   ``--batch`` activities for S seconds; each activity goes to a user's feed (one
   of 1,000) and to ``global``, with a few words of data. The rate is activities
   stored (and sent to their feeds' rooms) per second, end to end, and the
   daemon's CPU time per activity (what one core would allow). Then the same
   through the store alone (``FeedStore.append_activities`` in this process, C
   concurrent callers), which is the database's share of it.
2. **fill**: more batches (of 1,000) until the database holds N activities, all in
   ``global`` (the largest feed, the hardest to search); then ``ANALYZE``, as
   autovacuum would once it caught up with the fill.
3. **search**: Q sequential ``GET /server/v1/feeds/global/activities?q=<word>``
   (a word of a 20,000-word vocabulary, so about 3N/20,000 activities match each),
   then Q with two words, then Q filtered by actor: p50, p99 and max latency,
   through the server API and as store calls (``FeedStore.read_feed``).

The machine may be shared: the figures are this run's, on this machine.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import API_KEY, SECRET, DaemonProcess, admin, free_port, with_database

from realtimed.clock import SystemClock
from realtimed.config import Config, StoreConfig
from realtimed.feeds.service import FeedService
from realtimed.live import Live
from realtimed.store import Store, open_store
from realtimed.store.feeds import ActivityQuery

VOCABULARY = [f"w{i}" for i in range(20_000)]
VERBS = ["like", "comment", "share", "join", "leave", "edit", "upload", "follow", "mention", "react"]
ACTORS = [f"u{i}" for i in range(1000)]


class Daemon(DaemonProcess):
    def __init__(self, workdir: Path, *, dsn: str) -> None:
        port = free_port()
        config = workdir / "realtimed.toml"
        config.write_text(
            f"""
[server]
node = "bench"
state_dir = "{workdir / 'state'}"
[http]
listen = "127.0.0.1:{port}"
max_body_bytes = 8388608
[log]
level = "warning"
[auth]
hs256_secret = "{SECRET}"
[api]
keys = ["{API_KEY}"]
[jobs]
enabled = false
[feeds]
max_batch = 1000
[store]
backend = "postgres"
postgres_dsn = "{dsn}"
pool_max = 10
"""
        )
        super().__init__(config, port=port)


def activity(rng: random.Random, feeds: list[str]) -> dict[str, Any]:
    return {
        "actor": rng.choice(ACTORS),
        "verb": rng.choice(VERBS),
        "object": f"doc{rng.randrange(100_000)}",
        "data": {"text": " ".join(rng.choice(VOCABULARY) for _ in range(3))},
        "feeds": feeds,
    }


async def post(http: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
    answer = await http.post("/server/v1/activities", json={"activities": batch})
    if answer.status_code != 200:
        raise SystemExit(f"POST /server/v1/activities: {answer.status_code} {answer.text[:500]}")


async def logging_rate(url: str, *, seconds: float, batch: int, posters: int) -> tuple[float, int]:
    """Activities per second over ``seconds``, and how many were logged."""
    logged = 0
    deadline = trio.current_time() + seconds

    async def poster(seed: int) -> None:
        nonlocal logged
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
            while trio.current_time() < deadline:
                await post(http, [activity(rng, [f"user:{rng.choice(ACTORS)}", "global"]) for _ in range(batch)])
                logged += batch

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(posters):
            nursery.start_soon(poster, i)
    return logged / (time.perf_counter() - started), logged


async def store_rate(store: Store, parse: FeedService, *, seconds: float, batch: int, writers: int) -> float:
    """Activities per second appended by ``writers`` concurrent store calls (batches checked first)."""
    logged = 0
    deadline = trio.current_time() + seconds

    async def writer(seed: int) -> None:
        nonlocal logged
        rng = random.Random(500 + seed)
        while trio.current_time() < deadline:
            body = {"activities": [activity(rng, [f"user:{rng.choice(ACTORS)}", "global"]) for _ in range(batch)]}
            await store.append_activities(activities=parse.parse_batch(body), now=SystemClock().now())
            logged += batch

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(writer, i)
    return logged / (time.perf_counter() - started)


async def fill(url: str, *, have: int, target: int) -> None:
    """Log batches of 1,000 to ``global`` until ``target`` activities are stored."""
    remaining = max(0, target - have)
    started = time.perf_counter()

    async def filler(seed: int, count: int) -> None:
        rng = random.Random(1000 + seed)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as http:
            while count > 0:
                n = min(1000, count)
                await post(http, [activity(rng, ["global"]) for _ in range(n)])
                count -= n

    async with trio.open_nursery() as nursery:
        share, extra = divmod(remaining, 4)
        for i in range(4):
            nursery.start_soon(filler, i, share + (1 if i < extra else 0))
    if remaining:
        print(f"  filled {remaining} more activities in {time.perf_counter() - started:.0f} s", flush=True)


def summary(name: str, samples: list[float], hits: list[int]) -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"  {name:<30} p50 {statistics.median(ordered) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms   "
        f"max {ordered[-1] * 1000:6.1f} ms   ({len(samples)} queries, {statistics.mean(hits):.1f} results each)",
        flush=True,
    )


def _query(params: dict[str, Any]) -> ActivityQuery:
    return ActivityQuery(feed="global", q=params.get("q"), actor=params.get("actor"), limit=params["limit"])


async def search_latency(url: str, store: Store, *, queries: int) -> None:
    rng = random.Random(7)
    cases: list[tuple[str, Any]] = [
        ("one word", lambda: {"q": rng.choice(VOCABULARY), "limit": 20}),
        ("two words", lambda: {"q": f"{rng.choice(VERBS)} {rng.choice(VOCABULARY)}", "limit": 20}),
        ("actor filter", lambda: {"actor": rng.choice(ACTORS), "limit": 20}),
        ("word and actor", lambda: {"q": rng.choice(VOCABULARY), "actor": rng.choice(ACTORS), "limit": 20}),
    ]
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        for name, params in cases:
            samples: list[float] = []
            hits: list[int] = []
            for _ in range(queries):
                query = params()
                started = time.perf_counter()
                answer = await http.get("/server/v1/feeds/global/activities", params=query)
                samples.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise SystemExit(f"search: {answer.status_code} {answer.text[:300]}")
                hits.append(len(answer.json()["activities"]))
            summary(name + " (API)", samples, hits)
            samples, hits = [], []
            for _ in range(queries):
                query = params()
                started = time.perf_counter()
                page = await store.read_feed(_query(query))
                samples.append(time.perf_counter() - started)
                hits.append(len(page.items))
            summary(name + " (store)", samples, hits)


async def main(args: argparse.Namespace) -> None:
    name = f"realtimed_bench_{secrets.token_hex(4)}"
    await trio.to_thread.run_sync(admin, args.dsn, f'CREATE DATABASE "{name}"')
    daemon: Daemon | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="realtimed-feeds-bench-") as folder:
            dsn = with_database(args.dsn, name)
            daemon = await trio.to_thread.run_sync(lambda: Daemon(Path(folder), dsn=dsn))
            cfg = Config(store=StoreConfig(backend="postgres", postgres_dsn=dsn, pool_max=10))
            store = open_store(cfg, clock=SystemClock())
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                print(f"logging: batches of {args.batch}, {args.posters} at once, {args.seconds:g} s, "
                      "each activity in 2 feeds")
                cpu_before = daemon.cpu_seconds()
                rate, logged = await logging_rate(
                    daemon.url, seconds=args.seconds, batch=args.batch, posters=args.posters
                )
                cpu_us = (daemon.cpu_seconds() - cpu_before) / max(1, logged) * 1e6
                print(f"  server API    {rate:8,.0f} activities/s  ({cpu_us:.0f} us of daemon CPU per activity)",
                      flush=True)
                checker = FeedService(Live(cfg), store=store, router=None, clock=SystemClock())  # type: ignore[arg-type]
                rate = await store_rate(store, checker, seconds=args.seconds, batch=args.batch, writers=args.posters)
                logged += int(rate * args.seconds)
                print(f"  store alone   {rate:8,.0f} activities/s", flush=True)
                print(f"search over {args.activities:,} activities in one feed (global)")
                await fill(daemon.url, have=logged, target=args.activities)
                # What autovacuum does on its own after a table grew (it may not have caught up
                # with a bulk fill yet): without row counts, the planner cannot tell that a word
                # matches fewer activities than the feed holds.
                await trio.to_thread.run_sync(admin, dsn, "ANALYZE")
                await search_latency(daemon.url, store, queries=args.queries)
                nursery.cancel_scope.cancel()
    finally:
        if daemon is not None:
            daemon.stop()
        await trio.to_thread.run_sync(admin, args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the logging measurement")
    parser.add_argument("--batch", type=int, default=100, help="activities per POST while measuring logging")
    parser.add_argument("--posters", type=int, default=8, help="concurrent POSTs while measuring logging")
    parser.add_argument("--activities", type=int, default=1_000_000, help="activities in the database for search")
    parser.add_argument("--queries", type=int, default=500, help="queries per search case")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
