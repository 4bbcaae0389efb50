"""Memory diagnostics for soak runs: tracemalloc snapshots and object counts on SIGUSR2.

Off by default, and nothing here runs unless the environment variable
``REALTIMED_TRACEMALLOC`` names a directory when the daemon starts. Then the
daemon starts ``tracemalloc`` (keeping ``REALTIMED_TRACEMALLOC_FRAMES`` frames per
allocation, default 8) and, on each SIGUSR2, writes into that directory
``<pid>-<n>.tracemalloc`` (a ``tracemalloc.Snapshot``, loadable with
``Snapshot.load``) and ``<pid>-<n>.types.json``, then logs the two paths. The
JSON holds ``types`` (live objects the garbage collector tracks, counted by
type) and ``memory``: the process's RSS, the bytes tracemalloc traces and its
own overhead, and, on glibc, the RSS again once ``malloc_trim(0)`` has given
back to the system the free memory the allocator kept (what RSS holds that
Python does not use). ``bench/soak.py --tracemalloc`` uses it and prints the
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
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get(ENV_FRAMES, "8") or 8))
    log.warning("tracemalloc is on (%s): SIGUSR2 writes a snapshot to %s", ENV_DIR, folder)
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


def memory() -> dict[str, int]:
    """RSS, traced bytes and tracemalloc's overhead; then trims and reads RSS again."""
    info = {
        "rss_kb": rss_kb(),
        "traced_bytes": tracemalloc.get_traced_memory()[0],
        "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
    }
    if malloc_trim():
        info["rss_kb_after_trim"] = rss_kb()
    return info


_dumps = 0


def dump() -> tuple[Path, Path] | None:
    """Write a snapshot, the object counts and the memory figures (after a full collection); None when off."""
    global _dumps
    folder = dump_dir()
    if folder is None or not tracemalloc.is_tracing():
        return None
    _dumps += 1
    gc.collect()
    stem = folder / f"{os.getpid()}-{_dumps}"
    snapshot_path = stem.with_suffix(".tracemalloc")
    types_path = stem.with_suffix(".types.json")
    tracemalloc.take_snapshot().dump(str(snapshot_path))
    types_path.write_bytes(orjson.dumps({"types": type_counts(), "memory": memory()}))
    log.warning("tracemalloc snapshot %s and object counts %s written", snapshot_path, types_path)
    return snapshot_path, types_path
