"""The memory diagnostics behind ``bench/soak.py --tracemalloc`` (realtimed/memdebug.py)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson
import pytest

from realtimed import memdebug


def test_off_unless_the_environment_names_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memdebug.ENV_DIR, raising=False)
    assert memdebug.start() is False
    assert memdebug.dump() is None


def test_a_dump_writes_a_loadable_snapshot_the_object_counts_and_the_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(memdebug.ENV_DIR, str(tmp_path / "mem"))
    monkeypatch.setenv(memdebug.ENV_FRAMES, "2")
    was_tracing = tracemalloc.is_tracing()
    try:
        assert memdebug.start() is True
        kept = [bytearray(1000) for _ in range(100)]  # noqa: F841 (alive during the dump)
        written = memdebug.dump()
        assert written is not None
        snapshot_path, types_path = written
        assert snapshot_path is not None and snapshot_path.parent == tmp_path / "mem"
        snapshot = tracemalloc.Snapshot.load(str(snapshot_path))
        assert sum(stat.size for stat in snapshot.statistics("filename") if stat.traceback[0].filename == __file__) >= 100_000
        dumped = orjson.loads(types_path.read_bytes())
        assert dumped["types"]["builtins.dict"] > 0
        assert dumped["memory"]["rss_kb"] > 0 and dumped["memory"]["traced_bytes"] >= 100_000
    finally:
        if not was_tracing:
            tracemalloc.stop()


def test_frames_0_leaves_tracemalloc_off_and_dumps_the_counts_and_pymalloc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is on in this process")
    monkeypatch.setenv(memdebug.ENV_DIR, str(tmp_path))
    monkeypatch.setenv(memdebug.ENV_FRAMES, "0")
    assert memdebug.start() is True
    assert not tracemalloc.is_tracing()
    written = memdebug.dump()
    assert written is not None and written[0] is None
    memory = orjson.loads(written[1].read_bytes())["memory"]
    # pymalloc's arenas hold at least the bytes of the live blocks in them.
    assert memory["pymalloc_bytes_total"] >= memory["pymalloc_bytes_in_blocks"] > 0
