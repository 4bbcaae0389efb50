"""The README's backup of the SQLite state, run while the daemon serves.

``sqlite3 /var/lib/realtimed/realtimed.db ".backup /var/backups/realtimed.db"`` uses
SQLite's online backup API; Python's ``sqlite3.Connection.backup`` is the same API.
The store runs in WAL mode with ``synchronous=FULL``, so a message acknowledged by
the server API is committed and the backup taken afterwards holds it. A second
daemon started on the copy (the restore) serves it back over HTTP.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import trio

from realtimed.daemon import Daemon
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}


def _online_backup(source: Path, target: Path) -> None:
    """What ``sqlite3 <source> ".backup <target>"`` does: copy a live database page by page."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


async def _history(daemon: Daemon, user: str, conversation_id: str) -> list[str]:
    async with httpx.AsyncClient(
        base_url=daemon.url(), headers={"Authorization": f"Bearer {token(user)}"}, timeout=10
    ) as http:
        answer = await http.get(f"/api/v1/conversations/{conversation_id}/messages", params={"after_seq": 0})
    assert answer.status_code == 200, answer.text
    return [message["body"] for message in answer.json()["messages"]]


async def test_online_backup_restores_on_a_second_daemon(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    with trio.fail_after(20):
        live_dir = tmp_path / "live"
        daemon = await start_daemon({"server": {"state_dir": str(live_dir)}, "store": {"backend": "sqlite"}})
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER, timeout=10) as http:
            answer = await http.post("/server/v1/conversations", json={"type": "group", "member_ids": ["alice", "bob"], "title": "ops"})
            assert answer.status_code == 200, answer.text
            cid = answer.json()["conversation"]["id"]
            sent = await http.post(
                f"/server/v1/conversations/{cid}/messages",
                json={"sender_id": "alice", "client_id": "b-1", "body": "kept by the backup"},
            )
            assert sent.status_code == 200, sent.text

            # The backup runs while the daemon keeps serving (its write connection stays open).
            backup_dir = tmp_path / "restored"
            backup_dir.mkdir()
            await trio.to_thread.run_sync(_online_backup, live_dir / "realtimed.db", backup_dir / "realtimed.db")

            # Written after the backup: the copy must not hold it.
            later = await http.post(
                f"/server/v1/conversations/{cid}/messages",
                json={"sender_id": "alice", "client_id": "b-2", "body": "after the backup"},
            )
            assert later.status_code == 200, later.text
        assert await _history(daemon, "bob", cid) == ["kept by the backup", "after the backup"]

        # The copy is one self-contained file: no -wal or -shm beside it is needed to restore.
        assert sorted(p.name for p in backup_dir.iterdir()) == ["realtimed.db"]
        restored = await start_daemon(
            {"server": {"state_dir": str(backup_dir), "node": "t2"}, "store": {"backend": "sqlite"}}
        )
        assert await _history(restored, "bob", cid) == ["kept by the backup"]
        with closing(sqlite3.connect(backup_dir / "realtimed.db")) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
