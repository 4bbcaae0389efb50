"""FCM client micro-benchmark: CPU per ``messages:send``, lean h2 sender against httpx.

The fake FCM (``tests/fake_fcm.py``, HTTPS with HTTP/2 through hypercorn) runs in
another process pinned to CPU 1; the FCM client runs here, pinned to CPU 0, with
no store and no jobs. Each round sends ``--count`` messages with
``--concurrency`` in flight, alternately through httpx (``push.h2_sender =
false``) and through the lean sender (``push.h2_sender = true``), so both
are measured back to back in the same run. Prints, per round, the sends per
second and this process's CPU per send (``time.process_time``), then the
median of each. The machine may be loaded: compare the two columns of one run,
not figures across runs. Run from the repository root:

    .venv/bin/python bench/fcm_client.py
    .venv/bin/python bench/fcm_client.py --count 5000 --concurrency 64 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, cpu_seconds
from notify import FakeFcmProcess

sys.path.insert(0, str(ROOT))


def one_round(fake: FakeFcmProcess, *, h2_sender: bool, concurrency: int, count: int) -> tuple[float, float, float]:
    """(sends per second, CPU µs per send here, the fake's CPU µs per send) for ``count`` sends."""
    import trio

    from realtimed.clock import SystemClock
    from realtimed.config import load_config
    from realtimed.push.fcm import FcmClient, ServiceAccount
    from realtimed.push.messages import build_message

    async def main() -> tuple[float, float, float]:
        cfg = load_config(env={}, data={"push": {
            "service_account_file": fake.key_file, "fcm_url": fake.url, "ca_file": fake.ca_file,
            "concurrency": concurrency, "h2_sender": h2_sender,
        }})
        client = FcmClient(cfg.push, ServiceAccount.from_file(fake.key_file), clock=SystemClock())
        message = build_message(title="Ann mentioned you", body="look @bob", data={"notification_id": "n_1"})
        kinds: dict[str, int] = {}

        async def send(i: int) -> None:
            kind = (await client.send(message, token=f"bench-{i}")).kind
            kinds[kind] = kinds.get(kind, 0) + 1

        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            assert (client._h2 is not None) == h2_sender
            await send(-1)  # warm up: the connection and an access token
            kinds.clear()
            limiter = trio.CapacityLimiter(concurrency)

            async def limited(i: int) -> None:
                async with limiter:
                    await send(i)

            fake_cpu0 = cpu_seconds(fake.proc.pid)
            cpu0, started = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as sends:
                for i in range(count):
                    sends.start_soon(limited, i)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
            fake_cpu = cpu_seconds(fake.proc.pid) - fake_cpu0
            nursery.cancel_scope.cancel()
        await client.aclose()
        if kinds != {"ok": count}:
            raise SystemExit(f"sends did not all succeed: {kinds}")
        return count / elapsed, cpu / count * 1e6, fake_cpu / count * 1e6

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="sends per round")
    parser.add_argument("--concurrency", type=int, default=64, help="sends in flight (push.concurrency)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each sender, alternating")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="realtimed-fcm-bench-") as tmp:
        fake = FakeFcmProcess(Path(tmp))
        try:
            print(f"FCM client micro-bench: {args.count} sends per round, {args.concurrency} in flight, "
                  f"{os.cpu_count()} CPUs (client on CPU 0, fake FCM on CPU 1)")
            results: dict[str, list[tuple[float, float, float]]] = {"httpx": [], "h2 sender": []}
            for n in range(args.rounds):
                for name, h2_sender in (("httpx", False), ("h2 sender", True)):
                    rate, cpu_us, fake_us = one_round(fake, h2_sender=h2_sender, concurrency=args.concurrency,
                                                      count=args.count)
                    results[name].append((rate, cpu_us, fake_us))
                    print(f"  round {n + 1} {name:10} {rate:7.0f} sends/s  {cpu_us:6.0f} µs CPU per send "
                          f"(fake FCM {fake_us:4.0f} µs)")
            print("median:")
            for name, rows in results.items():
                print(f"  {name:10} {statistics.median(r[0] for r in rows):7.0f} sends/s  "
                      f"{statistics.median(r[1] for r in rows):6.0f} µs CPU per send "
                      f"(fake FCM {statistics.median(r[2] for r in rows):4.0f} µs)")
        finally:
            fake.stop()


if __name__ == "__main__":
    main()
