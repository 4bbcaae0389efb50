"""Memory diagnostics for soak runs: tracemalloc snapshots and object counts on SIGUSR2.

Off by default, and nothing here runs unless the environment variable
``REALTIMED_TRACEMALLOC`` names a directory when the daemon starts. Then the
daemon starts ``tracemalloc`` (keeping ``REALTIMED_TRACEMALLOC_FRAMES`` frames per
allocation, default 8) and, on each SIGUSR2, writes into that directory
``<pid>-<n>.tracemalloc`` (a ``tracemalloc.Snapshot``, loadable with
``Snapshot.load``) and ``<pid>-<n>.types.json``, then logs the two paths. The
JSON holds ``types`` (live objects the garbage collector tracks, counted by
type) and ``memory``: the process's RSS, the bytes tracemalloc traces and its
own overhead, pymalloc's arenas (``sys._debugmallocstats``: the bytes its
arenas hold against the bytes in live blocks, the gap being fragmentation; only
without tracemalloc, whose hooks hide pymalloc), and, on glibc, the RSS again
once ``malloc_trim(0)`` has given back to the system the free memory the
allocator kept. ``REALTIMED_TRACEMALLOC_FRAMES=0`` leaves tracemalloc off (no
snapshot, no slowdown): each dump then writes the JSON only. ``bench/soak.py --tracemalloc`` uses it and prints the
allocation sites and types that grew between a snapshot after warm-up and the
later ones.

tracemalloc roughly doubles the memory the daemon uses and slows it down; it is
a diagnostic, not something to leave on in production. A dump holds the event
loop while it is taken (a second or two for a few hundred MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Final

import orjson

log = logging.getLogger(__name__)

ENV_DIR: Final = "REALTIMED_TRACEMALLOC"
ENV_FRAMES: Final = "REALTIMED_TRACEMALLOC_FRAMES"


def dump_dir() -> Path | None:
    """The directory dumps go to, or None when the diagnostics are off."""
    value = os.environ.get(ENV_DIR, "")
    return Path(value) if value else None


def start() -> bool:
    """Start tracing allocations when ``REALTIMED_TRACEMALLOC`` is set; returns whether it is."""
    folder = dump_dir()
    if folder is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get(ENV_FRAMES, "") or 8)
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    log.warning("memory diagnostics on (%s, tracemalloc %s): SIGUSR2 writes to %s",
                ENV_DIR, "on" if tracemalloc.is_tracing() else "off", folder)
    return True


def type_counts() -> dict[str, int]:
    """Objects tracked by the garbage collector, by ``module.qualname`` of their type."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return dict(counts)


def rss_kb() -> int:
    """This process's resident set (``VmRSS``) in KiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def malloc_trim() -> bool:
    """Give back to the system the free memory glibc's allocator keeps; False without glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def pymalloc_stats() -> dict[str, int]:
    """pymalloc's counters from ``sys._debugmallocstats`` (which writes to fd 2: it is redirected meanwhile)."""
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    wanted = {
        "# arenas allocated current": "pymalloc_arenas",
        "# bytes in allocated blocks": "pymalloc_bytes_in_blocks",
        "Total": "pymalloc_bytes_total",
    }
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        key = wanted.get(name.strip())
        if key is not None and key not in stats:
            try:
                stats[key] = int(value.strip().replace(",", ""))
            except ValueError:
                pass
    return stats


def memory() -> dict[str, int]:
    """RSS, traced bytes and tracemalloc's overhead; then trims and reads RSS again."""
    info = {
        "rss_kb": rss_kb(),
        "traced_bytes": tracemalloc.get_traced_memory()[0],
        "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
        **pymalloc_stats(),
    }
    if malloc_trim():
        info["rss_kb_after_trim"] = rss_kb()
    return info


_dumps = 0


def dump() -> tuple[Path | None, Path] | None:
    """Write a snapshot (when tracing), the object counts and the memory figures, after a full
    collection; returns their paths, None when the diagnostics are off."""
    global _dumps
    folder = dump_dir()
    if folder is None:
        return None
    _dumps += 1
    gc.collect()
    stem = folder / f"{os.getpid()}-{_dumps}"
    snapshot_path = stem.with_suffix(".tracemalloc")
    types_path = stem.with_suffix(".types.json")
    written: Path | None = None
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(snapshot_path))
        written = snapshot_path
    types_path.write_bytes(orjson.dumps({"types": type_counts(), "memory": memory()}))
    log.warning("memory snapshot %s and object counts %s written", written or "(no tracemalloc)", types_path)
    return written, types_path
