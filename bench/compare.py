"""Compare realtimed's benchmarks between two git revisions on this machine.

    .venv/bin/python bench/compare.py BEFORE [AFTER] [--runs 3] [--benches fanout,chat,store,webhooks,http_jobs]

Checks both revisions out into temporary worktrees, then runs each bench of each
revision in turn, interleaved (before, after, before, after, ...) so that a busy
machine weighs on both alike. Each revision runs its own bench script, from its
own checkout (``PYTHONPATH=<checkout>``, so the daemon it starts is that
revision's code), with identical flags. At the end it prints one row per figure:
the median of the runs for each revision, their spread (min-max), and the ratio
after/before, with the direction that is better (``+`` higher, ``-`` lower).

The default flags keep each run near a minute on two cores, on the embedded
defaults (SQLite, the in-process broker); pass ``--fanout``, ``--chat`` and
``--store`` to change them. ``webhooks`` and ``http_jobs`` (not run unless named in
``--benches``) use PostgreSQL on its default local server. The raw output of every run is kept in ``--keep``
when given. Needs Node.js for fanout and chat; bench/node_modules is installed
once here and shared with both checkouts.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_FLAGS: dict[str, str] = {
    "fanout": "--sockets 1000 --rates 10,30 --seconds 5 --idle ''",
    "chat": "--pairs 200 --rates 200,500 --seconds 5",
    "store": "--backend sqlite --seconds 2",
    "webhooks": "--backend postgres --deliveries 3000",
    "http_jobs": "--backend postgres --jobs 3000",
}

# A figure: (name, value, higher_is_better).
Figure = tuple[str, float, bool]


def _num(text: str) -> float | None:
    try:
        return float(text.rstrip("%").replace(",", ""))
    except ValueError:
        return None


def rates(flags: str) -> list[str]:
    """The ``--rates`` asked for in a bench's flags, which label its rows (the rate a
    row reports is the one achieved, and differs from run to run)."""
    words = shlex.split(flags)
    for i, word in enumerate(words):
        if word == "--rates" and i + 1 < len(words):
            return [r for r in words[i + 1].split(",") if r]
        if word.startswith("--rates="):
            return [r for r in word.split("=", 1)[1].split(",") if r]
    return []


def step_label(asked: list[str], index: int, unit: str) -> str:
    return f"@{asked[index]} {unit}" if index < len(asked) else f"step {index + 1}"


def parse_fanout(out: str, flags: str) -> list[Figure]:
    asked = rates(flags)
    step = 0
    figures: list[Figure] = []
    if m := re.search(r"connects: ([\d.]+) authenticated connects/s", out):
        figures.append(("connects/s", float(m.group(1)), True))
    if m := re.search(r"memory: (-?[\d.]+) KiB per subscribed idle socket", out):
        figures.append(("KiB per idle socket", float(m.group(1)), False))
    for line in out.splitlines():
        cells = line.split()
        # publish/s deliveries/s p50 p99 CPU% us/delivery redis% loadgen% received/expected
        if len(cells) == 9 and "/" in cells[8] and cells[4].endswith("%") and _num(cells[0]) is not None:
            label = step_label(asked, step, "publish/s")
            step += 1
            for name, cell, higher in (
                ("deliveries/s", cells[1], True),
                ("p50 ms", cells[2], False),
                ("p99 ms", cells[3], False),
                ("daemon CPU %", cells[4], False),
                ("CPU us/delivery", cells[5], False),
            ):
                value = _num(cell)
                if value is not None:
                    figures.append((f"{label} {name}", value, higher))
    return figures


def parse_chat(out: str, flags: str) -> list[Figure]:
    figures: list[Figure] = []
    for line in out.splitlines():
        cells = line.split()
        # rate persisted/s delivered/s p50 p99 ack-p50 ack-p99 CPU% us/msg delivered/sent
        if len(cells) >= 10 and cells[0].isdigit() and cells[7].endswith("%") and "/" in cells[9]:
            for name, cell, higher in (
                ("persisted/s", cells[1], True),
                ("delivered/s", cells[2], True),
                ("p50 ms", cells[3], False),
                ("p99 ms", cells[4], False),
                ("ack p50 ms", cells[5], False),
                ("ack p99 ms", cells[6], False),
                ("daemon CPU %", cells[7], False),
                ("CPU us/message", cells[8], False),
            ):
                value = _num(cell)
                if value is not None:
                    figures.append((f"@{cells[0]} msg/s {name}", value, higher))
    return figures


def parse_store(out: str, flags: str) -> list[Figure]:
    figures: list[Figure] = []
    pattern = r"(\w+)\s+(\d+) writers, (own conversations|one conversation)\s*:\s*([\d,]+) appends/s\s+\(\s*([\d.]+) us CPU"
    for m in re.finditer(pattern, out):
        label = f"{m.group(1)} {m.group(2)} writers, {m.group(3)}"
        figures.append((f"{label} appends/s", float(m.group(4).replace(",", "")), True))
        figures.append((f"{label} CPU us/append", float(m.group(5)), False))
    return figures


def parse_outbound(out: str, flags: str) -> list[Figure]:
    """bench/webhooks.py and bench/http_jobs.py: the yardstick's and the calls' rates and CPU."""
    figures: list[Figure] = []
    pattern = r"(\w+) (noop jobs|webhook deliveries|http jobs)[^:]*:\s*([\d,]+)/s\s+([\d.]+) ms CPU each"
    for m in re.finditer(pattern, out):
        label = f"{m.group(1)} {m.group(2)}"
        figures.append((f"{label}/s", float(m.group(3).replace(",", "")), True))
        figures.append((f"{label} CPU ms each", float(m.group(4)), False))
    return figures


PARSERS: dict[str, Callable[[str, str], list[Figure]]] = {
    "fanout": parse_fanout, "chat": parse_chat, "store": parse_store, "webhooks": parse_outbound,
    "http_jobs": parse_outbound,
}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def node_modules() -> Path:
    """bench/node_modules of this checkout, installed when missing."""
    target = ROOT / "bench" / "node_modules"
    if not (target / "ws").exists():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=ROOT / "bench", check=True)
    return target


def checkout(rev: str, folder: Path) -> Path:
    git("worktree", "add", "--detach", str(folder), rev)
    modules = folder / "bench" / "node_modules"
    if not modules.exists() and (ROOT / "bench" / "node_modules").exists():
        modules.symlink_to(ROOT / "bench" / "node_modules", target_is_directory=True)
    return folder


def run_bench(tree: Path, bench: str, flags: str, timeout_s: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, str(tree / "bench" / f"{bench}.py"), *shlex.split(flags)]
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise SystemExit(f"{bench} at {tree} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def spread(values: list[float]) -> str:
    return f"{min(values):g}-{max(values):g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="git revision measured first in each pair")
    parser.add_argument("after", nargs="?", default="HEAD", help="git revision to compare (default HEAD)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each bench per revision (the median is reported)")
    parser.add_argument("--benches", default="fanout,chat,store", help="comma-separated: " + ", ".join(PARSERS))
    for bench, flags in DEFAULT_FLAGS.items():
        parser.add_argument(f"--{bench}", default=flags, help=f"flags for bench/{bench}.py (default: {flags})")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="limit for one bench run")
    parser.add_argument("--keep", type=Path, help="a folder to write every run's raw output to")
    args = parser.parse_args()
    benches = [b for b in args.benches.split(",") if b]
    for bench in benches:
        if bench not in PARSERS:
            raise SystemExit(f"unknown bench {bench!r} (one of {', '.join(PARSERS)})")
    revs = {"before": git("rev-parse", "--short", args.before), "after": git("rev-parse", "--short", args.after)}
    if {"fanout", "chat"} & set(benches):
        node_modules()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)

    # results[bench][figure][side] -> one value per run
    results: dict[str, dict[str, dict[str, list[float]]]] = {b: {} for b in benches}
    higher: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="realtimed-compare-") as tmp:
        trees: dict[str, Path] = {}
        try:
            for side, rev in revs.items():
                trees[side] = checkout(rev, Path(tmp) / side)
            print(
                f"before {revs['before']}, after {revs['after']}; {args.runs} interleaved runs; "
                f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            for bench in benches:
                print(f"  {bench}.py {getattr(args, bench)}", flush=True)
            for run in range(args.runs):
                for bench in benches:
                    for side in ("before", "after"):
                        started = time.monotonic()
                        out = run_bench(trees[side], bench, getattr(args, bench), args.timeout_s)
                        if args.keep:
                            (args.keep / f"{bench}-{side}-{run + 1}.txt").write_text(out)
                        figures = PARSERS[bench](out, getattr(args, bench))
                        if not figures:
                            raise SystemExit(f"no figures found in {bench}'s output:\n{out}")
                        for name, value, better_high in figures:
                            results[bench].setdefault(name, {"before": [], "after": []})[side].append(value)
                            higher[f"{bench} {name}"] = better_high
                        print(
                            f"run {run + 1}/{args.runs} {bench:6} {side:6} {time.monotonic() - started:5.1f} s, "
                            f"load average {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)

    print(f"\nmedian of {args.runs} (min-max); ratio = after/before; better: + higher, - lower\n")
    header = f"{'bench':6} {'figure':44} {'before':>10} {'spread':>17} {'after':>10} {'spread':>17} {'ratio':>6} better"
    print(header)
    print("-" * len(header))
    for bench in benches:
        for name, sides in results[bench].items():
            if not sides["before"] or not sides["after"]:
                continue
            before, after = statistics.median(sides["before"]), statistics.median(sides["after"])
            ratio = f"{after / before:.3f}" if before else "-"
            sign = "+" if higher[f"{bench} {name}"] else "-"
            print(
                f"{bench:6} {name:44} {before:>10g} {spread(sides['before']):>17} "
                f"{after:>10g} {spread(sides['after']):>17} {ratio:>6} {sign}"
            )


if __name__ == "__main__":
    main()
