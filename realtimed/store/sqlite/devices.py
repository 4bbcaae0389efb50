"""SQLite: push devices and their topics (``DeviceStore``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import datetime

from realtimed.store import devices
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, json_list, us
from realtimed.store.values import Row, dumps

__all__ = ["SQLiteDevices"]

log = logging.getLogger(__name__)


def _devices(conn: Conn, rows: Sequence[Row]) -> list[devices.DeviceRecord]:
    if not rows:
        return []
    topics = conn.execute(
        "SELECT token, topic FROM device_topics WHERE token IN (SELECT value FROM json_each(?)) ORDER BY topic",
        (json_list(r["token"] for r in rows),),
    ).fetchall()
    return devices.devices_from(rows, devices.topics_by_token(topics), CODEC)


def _get_device(conn: Conn, token: str) -> devices.DeviceRecord | None:
    found = _devices(
        conn, conn.execute(f"SELECT {devices.DEVICE_COLS} FROM devices WHERE token = ?", (token,)).fetchall()
    )
    return found[0] if found else None


def _list_devices(conn: Conn, user_id: str, active_only: bool) -> list[devices.DeviceRecord]:
    sql = f"SELECT {devices.DEVICE_COLS} FROM devices WHERE user_id = ?"
    if active_only:
        sql += " AND active = 1"
    return _devices(conn, conn.execute(sql + " ORDER BY created_at, token", (user_id,)).fetchall())


def _get_devices(conn: Conn, tokens: list[str]) -> dict[str, devices.DeviceRecord]:
    rows = conn.execute(
        f"SELECT {devices.DEVICE_COLS} FROM devices WHERE token IN (SELECT value FROM json_each(?))",
        (json_list(tokens),),
    ).fetchall()
    return {d.token: d for d in _devices(conn, rows)}


def _list_devices_many(conn: Conn, user_ids: list[str]) -> dict[str, list[devices.DeviceRecord]]:
    rows = conn.execute(
        f"SELECT {devices.DEVICE_COLS} FROM devices WHERE user_id IN (SELECT value FROM json_each(?)) AND active = 1 "
        "ORDER BY user_id, created_at, token",
        (json_list(user_ids),),
    ).fetchall()
    by_user: dict[str, list[devices.DeviceRecord]] = {}
    for device in _devices(conn, rows):
        by_user.setdefault(device.user_id, []).append(device)
    return by_user


def _topic_devices(conn: Conn, topic: str) -> list[devices.DeviceRecord]:
    rows = conn.execute(
        "SELECT d.token, d.user_id, d.platform, d.app_version, d.active, d.last_seen_at, d.created_at, d.device_info "
        "FROM device_topics t JOIN devices d ON d.token = t.token WHERE t.topic = ? AND d.active = 1 "
        "ORDER BY d.token",
        (topic,),
    ).fetchall()
    return _devices(conn, rows)


def _register(
    conn: Conn, user_id: str, token: str, platform: str, app_version: str, device_info: dict[str, str], now: int
) -> devices.DeviceRecord:
    row = conn.execute("SELECT user_id FROM devices WHERE token = ?", (token,)).fetchone()
    if row is not None and row[0] != user_id:
        conn.execute("DELETE FROM devices WHERE token = ?", (token,))
        conn.execute("DELETE FROM device_topics WHERE token = ?", (token,))
        log.info("push token moved from user %s to user %s", row[0], user_id)
    conn.execute(
        f"INSERT INTO devices ({devices.DEVICE_COLS}) VALUES (?, ?, ?, ?, 1, ?, ?, ?) "
        "ON CONFLICT (token) DO UPDATE SET platform = excluded.platform, app_version = excluded.app_version, "
        "active = 1, last_seen_at = excluded.last_seen_at, device_info = excluded.device_info",
        (token, user_id, platform, app_version, now, now, dumps(device_info)),
    )
    device = _get_device(conn, token)
    assert device is not None
    return device


def _unregister(conn: Conn, token: str, user_id: str | None) -> bool:
    if user_id is None:
        cur = conn.execute("DELETE FROM devices WHERE token = ?", (token,))
    else:
        cur = conn.execute("DELETE FROM devices WHERE token = ? AND user_id = ?", (token, user_id))
    if cur.rowcount:
        conn.execute("DELETE FROM device_topics WHERE token = ?", (token,))
    return cur.rowcount > 0


def _deactivate(conn: Conn, token: str) -> bool:
    return (
        conn.execute("UPDATE devices SET active = 0 WHERE token = ? AND active = 1", (token,)).rowcount == 1
    )


def _touch(conn: Conn, token: str, now: int) -> bool:
    cur = conn.execute("UPDATE devices SET last_seen_at = MAX(last_seen_at, ?) WHERE token = ?", (now, token))
    return cur.rowcount == 1


def _change_topics(conn: Conn, token: str, topics: list[str], add: bool) -> devices.DeviceRecord:
    if conn.execute("SELECT 1 FROM devices WHERE token = ?", (token,)).fetchone() is None:
        raise devices.no_device()
    if add:
        conn.executemany(
            "INSERT OR IGNORE INTO device_topics (token, topic) VALUES (?, ?)", [(token, t) for t in topics]
        )
    else:
        conn.executemany(
            "DELETE FROM device_topics WHERE token = ? AND topic = ?", [(token, t) for t in topics]
        )
    device = _get_device(conn, token)
    assert device is not None
    return device


class SQLiteDevices(SQLiteEngine, devices.DeviceRules):
    """``DeviceStore`` on SQLite."""

    async def _register(
        self, user_id: str, token: str, platform: str, app_version: str, device_info: dict[str, str], now: datetime
    ) -> devices.DeviceRecord:
        fn = functools.partial(
            _register,
            user_id=user_id,
            token=token,
            platform=platform,
            app_version=app_version,
            device_info=device_info,
            now=us(now),
        )
        return await self._write(fn)

    async def unregister_device(self, *, token: str, user_id: str | None = None) -> bool:
        return await self._write(functools.partial(_unregister, token=token, user_id=user_id))

    async def get_device(self, token: str) -> devices.DeviceRecord | None:
        return await self._read(_get_device, token)

    async def list_devices(self, user_id: str, *, active_only: bool = True) -> list[devices.DeviceRecord]:
        return await self._read(_list_devices, user_id, active_only)

    async def get_devices(self, tokens: Sequence[str]) -> dict[str, devices.DeviceRecord]:
        if not tokens:
            return {}
        return await self._read(_get_devices, list(dict.fromkeys(tokens)))

    async def list_devices_many(self, user_ids: Sequence[str]) -> dict[str, list[devices.DeviceRecord]]:
        if not user_ids:
            return {}
        return await self._read(_list_devices_many, list(dict.fromkeys(user_ids)))

    async def deactivate_device(self, *, token: str) -> bool:
        return await self._write(functools.partial(_deactivate, token=token))

    async def _touch(self, token: str, now: datetime) -> bool:
        return await self._write(functools.partial(_touch, token=token, now=us(now)))

    async def _change_topics(self, token: str, topics: list[str], *, add: bool) -> devices.DeviceRecord:
        return await self._write(functools.partial(_change_topics, token=token, topics=topics, add=add))

    async def topic_devices(self, topic: str) -> list[devices.DeviceRecord]:
        return await self._read(_topic_devices, topic)
