"""The embedded defaults against the production configuration, in one run.

Runs the project's benches one after another on this machine, each with both
configurations, and prints one table:

- embedded: SQLite, the in-process broker (``realtimed.toml`` as shipped);
- production: PostgreSQL and Redis (one node, and two nodes where it says so).

| row | bench |
| --- | --- |
| authenticated connects/s | ``fanout.py`` (embedded) and ``fanout.py --nodes 2`` (one node, then two) |
| connect storm p95 | the same runs: ``--storm`` sockets connecting at once, each one's connect to ``session.ready`` and its subscribe reply |
| idle memory per subscribed socket | the same runs (VmRSS growth over the sockets connected) |
| chat: highest rate with p99 < 100 ms, CPU per message | ``chat.py --store sqlite`` and ``--store postgres`` |
| jobs completed/s (one runner, two) | ``jobs.py --backend sqlite`` and ``--backend postgres`` |
| pushes/s through the pipeline | ``notify.py`` (PostgreSQL only; ``—`` embedded) |

Each bench's own output is printed as it runs, so every figure of the table
can be traced to its line. The daemon and the load generators are pinned to
separate CPUs by ``bench/_common.py``; PostgreSQL and Redis run wherever the
machine puts them. Figures on a machine that other work loads are noisy:
compare the two columns of one run, not figures of different runs. fsync on a
development machine may be much cheaper than on production disks (both stores
keep their durability settings: ``synchronous=FULL`` on SQLite,
``synchronous_commit`` on PostgreSQL).

    .venv/bin/python bench/production.py --quick     # a few minutes
    .venv/bin/python bench/production.py             # the full sizes (longer)
    .venv/bin/python bench/production.py --only fanout,chat

Needs Node.js (``npm install`` in bench/ is run by the benches), a PostgreSQL
server at ``--dsn`` (trust auth; throwaway databases are created and dropped)
and Redis at ``--redis``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# (quick, full) flags of each bench, beside the configuration flags added below.
SIZES: dict[str, tuple[str, str]] = {
    "fanout": (
        "--sockets 1000 --rates 10 --seconds 2 --idle '' --storm 500",
        "--sockets 5000 --rates 10,50 --seconds 5 --idle '' --storm 500",
    ),
    "chat": (
        "--pairs 200 --rates 250,500,1000,1500 --seconds 3",
        "--pairs 1000 --rates 250,500,1000,1500,2000,2500,3000 --seconds 10",
    ),
    "jobs": ("--jobs 2000", "--jobs 10000"),
    "notify": ("--recipients 2000 --online 500 --alone 500", "--recipients 10000 --online 2000 --alone 3000"),
}


def run(name: str, flags: str, *, timeout_s: float) -> str:
    """Run ``bench/<name>.py`` with ``flags``, echo its output, return it ('' when it failed)."""
    argv = [sys.executable, str(BENCH / f"{name}.py"), *shlex.split(flags)]
    print(f"\n$ {' '.join(shlex.quote(a) for a in argv[1:])}", flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        )
    except subprocess.TimeoutExpired:
        print(f"  (timed out after {timeout_s:.0f} s)")
        return ""
    out = proc.stdout
    for line in out.splitlines():
        print("  " + line)
    if proc.returncode != 0:
        print(f"  (exit {proc.returncode})\n" + "\n".join("  " + line for line in proc.stderr.splitlines()[-15:]))
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    return out


def sections(out: str) -> dict[str, str]:
    """fanout.py's output per ``== label:`` section."""
    found: dict[str, str] = {}
    for part in re.split(r"^== ", out, flags=re.M)[1:]:
        found[part.split(":", 1)[0].strip()] = part
    return found


def fanout_figures(section: str) -> dict[str, str]:
    figures: dict[str, str] = {}
    if m := re.search(r"connects: ([\d.]+) authenticated connects/s", section):
        figures["connects"] = f"{float(m.group(1)):,.0f}"
    if m := re.search(r"memory: (-?[\d.]+) KiB per subscribed idle socket", section):
        figures["memory"] = f"{float(m.group(1)):.1f} KiB"
    if m := re.search(r"connect storm: (\d+) sockets at once.*?p50 ([\d.]+) ms, p95 ([\d.]+) ms", section):
        figures["storm"] = f"p95 {float(m.group(3)):.0f} ms (p50 {float(m.group(2)):.0f}; {m.group(1)} at once)"
    return figures


def chat_figures(out: str) -> dict[str, str]:
    """The highest rate held with p99 < 100 ms, and the CPU per message of that rate's row."""
    rows: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        cells = line.split()
        # rate persisted delivered p50 p99 ack50 ack99 cpu% us/msg delivered/sent
        if len(cells) >= 10 and cells[0].isdigit() and cells[7].endswith("%"):
            rows[cells[0]] = (cells[4], cells[8])
    m = re.search(r"highest rate held with p99 < 100 ms: (\d+) messages/s", out)
    if m is None:
        return {"rate": "none held", "cpu": ", ".join(f"{cpu} µs @ {rate}/s" for rate, (_, cpu) in list(rows.items())[:1])}
    rate = m.group(1)
    p99, cpu = rows.get(rate, ("?", "?"))
    above = [f"{r}/s: p99 {p} ms" for r, (p, _) in rows.items() if int(r) > int(rate)][:2]
    return {
        "rate": f"{int(rate):,} msg/s (p99 {p99} ms" + (f"; {'; '.join(above)}" if above else "") + ")",
        "cpu": f"{cpu} µs",
    }


def jobs_figures(out: str, backend: str) -> str:
    rates = re.findall(rf"{backend}\s+(\d) runner process\(es\).*?([\d,]+) jobs/s", out)
    return ", ".join(f"{rate} ({n} runner{'s' if n != '1' else ''})" for n, rate in rates) or "?"


def notify_figures(out: str) -> str:
    m = re.search(r"through the pipeline\s+(\d+) pushes/s", out)
    cpu = re.search(r"\(([\d.]+) ms per push\)", out)
    alone = re.search(r"the FCM client alone\s+(\d+) pushes/s", out)
    if m is None:
        return "?"
    text = f"{m.group(1)} pushes/s"
    if cpu:
        text += f" ({cpu.group(1)} ms CPU each"
        text += f"; FCM client alone {alone.group(1)}/s)" if alone else ")"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--only", default="fanout,chat,jobs,notify", help="benches to run, comma-separated")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server to create throwaway databases on")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--timeout", type=float, default=1800.0, help="the longest one bench may run, in seconds")
    args = parser.parse_args()
    only = {b for b in args.only.split(",") if b}
    size = 0 if args.quick else 1
    base = args.dsn.rpartition("/")[0]
    embedded: dict[str, str] = {}
    production: dict[str, str] = {}
    cluster: dict[str, str] = {}
    print(f"realtimed: embedded defaults against PostgreSQL + Redis ({'quick' if args.quick else 'full'} sizes), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    if "fanout" in only:
        flags = SIZES["fanout"][size]
        out = sections(run("fanout", flags, timeout_s=args.timeout))
        embedded.update(fanout_figures(next(iter(out.values()), "")))
        out = sections(run("fanout", f"{flags} --nodes 2 --dsn {base}/realtimed_bench --redis {args.redis}", timeout_s=args.timeout))
        parts = list(out.values())
        if parts:
            production.update(fanout_figures(parts[0]))
        if len(parts) > 1:
            cluster.update(fanout_figures(parts[1]))
    if "chat" in only:
        flags = SIZES["chat"][size]
        embedded.update({f"chat_{k}": v for k, v in chat_figures(run("chat", f"{flags} --store sqlite", timeout_s=args.timeout)).items()})
        out = run("chat", f"{flags} --store postgres --dsn {args.dsn}", timeout_s=args.timeout)
        production.update({f"chat_{k}": v for k, v in chat_figures(out).items()})
    if "jobs" in only:
        flags = SIZES["jobs"][size]
        embedded["jobs"] = jobs_figures(run("jobs", f"{flags} --backend sqlite", timeout_s=args.timeout), "sqlite")
        production["jobs"] = jobs_figures(run("jobs", f"{flags} --backend postgres --dsn {args.dsn}", timeout_s=args.timeout), "postgres")
    if "notify" in only:
        production["notify"] = notify_figures(run("notify", f"{SIZES['notify'][size]} --dsn {args.dsn}", timeout_s=args.timeout))

    def cell(figures: dict[str, str], key: str) -> str:
        return figures.get(key, "—")

    connects = cell(production, "connects")
    if "connects" in cluster:
        connects += f" ({cluster['connects']} with two nodes)"
    rows = [
        ("`bench/fanout.py` authenticated connects/s", cell(embedded, "connects"), connects),
        ("connect storm: each socket's connect + subscribe", cell(embedded, "storm"), cell(production, "storm")),
        ("idle memory per subscribed socket", cell(embedded, "memory"),
         cell(production, "memory") + (f" ({cluster['memory']} with two nodes)" if "memory" in cluster else "")),
        ("`bench/chat.py` highest rate with p99 < 100 ms", cell(embedded, "chat_rate"), cell(production, "chat_rate")),
        ("chat CPU per message (at that rate)", cell(embedded, "chat_cpu"), cell(production, "chat_cpu")),
        ("`bench/jobs.py` jobs/s", cell(embedded, "jobs"), cell(production, "jobs")),
        ("`bench/notify.py` pushes through the pipeline", "—", cell(production, "notify")),
    ]
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (a loaded machine makes every figure noisy)\n")
    print("| bench | embedded (SQLite, in-process broker) | production (PostgreSQL + Redis) |")
    print("| --- | --- | --- |")
    for name, left, right in rows:
        print(f"| {name} | {left} | {right} |")


if __name__ == "__main__":
    main()
