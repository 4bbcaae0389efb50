"""PostgreSQL: push devices and their topics (``DeviceStore``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from realtimed.store import devices
from realtimed.store.postgres.engine import CODEC, Conn, PostgresEngine, count
from realtimed.store.values import Row

__all__ = ["PostgresDevices"]

log = logging.getLogger(__name__)


async def _devices(conn: Conn, rows: Sequence[Row]) -> list[devices.DeviceRecord]:
    if not rows:
        return []
    topics = await conn.fetch(
        "SELECT token, topic FROM device_topics WHERE token = ANY($1::text[]) ORDER BY topic",
        [r["token"] for r in rows],
    )
    return devices.devices_from(rows, devices.topics_by_token(topics), CODEC)


async def _get_device(conn: Conn, token: str) -> devices.DeviceRecord | None:
    found = await _devices(
        conn, await conn.fetch(f"SELECT {devices.DEVICE_COLS} FROM devices WHERE token = $1", token)
    )
    return found[0] if found else None


async def _register(
    conn: Conn, user_id: str, token: str, platform: str, app_version: str, device_info: dict[str, str], now: datetime
) -> devices.DeviceRecord:
    owner = await conn.fetchval("SELECT user_id FROM devices WHERE token = $1 FOR UPDATE", token)
    if owner is not None and owner != user_id:
        await conn.execute("DELETE FROM devices WHERE token = $1", token)
        await conn.execute("DELETE FROM device_topics WHERE token = $1", token)
        log.info("push token moved from user %s to user %s", owner, user_id)
    await conn.execute(
        f"INSERT INTO devices ({devices.DEVICE_COLS}) VALUES ($1, $2, $3, $4, true, $5, $5, $6) "
        "ON CONFLICT (token) DO UPDATE SET platform = excluded.platform, app_version = excluded.app_version, "
        "active = true, last_seen_at = excluded.last_seen_at, device_info = excluded.device_info",
        token,
        user_id,
        platform,
        app_version,
        now,
        device_info,
    )
    device = await _get_device(conn, token)
    assert device is not None
    return device


async def _unregister(conn: Conn, token: str, user_id: str | None) -> bool:
    if user_id is None:
        status = await conn.execute("DELETE FROM devices WHERE token = $1", token)
    else:
        status = await conn.execute("DELETE FROM devices WHERE token = $1 AND user_id = $2", token, user_id)
    if count(status):
        await conn.execute("DELETE FROM device_topics WHERE token = $1", token)
    return count(status) > 0


async def _change_topics(conn: Conn, token: str, topics: list[str], add: bool) -> devices.DeviceRecord:
    if await conn.fetchval("SELECT 1 FROM devices WHERE token = $1 FOR UPDATE", token) is None:
        raise devices.no_device()
    if add:
        await conn.execute(
            "INSERT INTO device_topics (token, topic) SELECT $1, t FROM unnest($2::text[]) AS t ON CONFLICT DO NOTHING",
            token,
            topics,
        )
    else:
        await conn.execute(
            "DELETE FROM device_topics WHERE token = $1 AND topic = ANY($2::text[])", token, topics
        )
    device = await _get_device(conn, token)
    assert device is not None
    return device


async def _list_devices(conn: Conn, user_id: str, active_only: bool) -> list[devices.DeviceRecord]:
    sql = f"SELECT {devices.DEVICE_COLS} FROM devices WHERE user_id = $1"
    if active_only:
        sql += " AND active"
    return await _devices(conn, await conn.fetch(sql + " ORDER BY created_at, token", user_id))


async def _get_devices(conn: Conn, tokens: list[str]) -> dict[str, devices.DeviceRecord]:
    rows = await conn.fetch(f"SELECT {devices.DEVICE_COLS} FROM devices WHERE token = ANY($1::text[])", tokens)
    return {d.token: d for d in await _devices(conn, rows)}


async def _list_devices_many(conn: Conn, user_ids: list[str]) -> dict[str, list[devices.DeviceRecord]]:
    rows = await conn.fetch(
        f"SELECT {devices.DEVICE_COLS} FROM devices WHERE user_id = ANY($1::text[]) AND active "
        "ORDER BY user_id, created_at, token",
        user_ids,
    )
    by_user: dict[str, list[devices.DeviceRecord]] = {}
    for device in await _devices(conn, rows):
        by_user.setdefault(device.user_id, []).append(device)
    return by_user


async def _topic_devices(conn: Conn, topic: str) -> list[devices.DeviceRecord]:
    rows = await conn.fetch(
        "SELECT d.token, d.user_id, d.platform, d.app_version, d.active, d.last_seen_at, d.created_at, d.device_info "
        "FROM device_topics t JOIN devices d ON d.token = t.token WHERE t.topic = $1 AND d.active "
        "ORDER BY d.token",
        topic,
    )
    return await _devices(conn, rows)


class PostgresDevices(PostgresEngine, devices.DeviceRules):
    """``DeviceStore`` on PostgreSQL."""

    async def _register(
        self, user_id: str, token: str, platform: str, app_version: str, device_info: dict[str, str], now: datetime
    ) -> devices.DeviceRecord:
        return await self._call(_register, user_id, token, platform, app_version, device_info, now)

    async def unregister_device(self, *, token: str, user_id: str | None = None) -> bool:
        return await self._call(_unregister, token, user_id)

    async def get_device(self, token: str) -> devices.DeviceRecord | None:
        return await self._call(_get_device, token, tx=False, read=True)

    async def list_devices(self, user_id: str, *, active_only: bool = True) -> list[devices.DeviceRecord]:
        return await self._call(_list_devices, user_id, active_only, tx=False, read=True)

    async def get_devices(self, tokens: Sequence[str]) -> dict[str, devices.DeviceRecord]:
        if not tokens:
            return {}
        return await self._call(_get_devices, list(dict.fromkeys(tokens)), tx=False, read=True)

    async def list_devices_many(self, user_ids: Sequence[str]) -> dict[str, list[devices.DeviceRecord]]:
        if not user_ids:
            return {}
        return await self._call(_list_devices_many, list(dict.fromkeys(user_ids)), tx=False, read=True)

    async def deactivate_device(self, *, token: str) -> bool:
        sql = "UPDATE devices SET active = false WHERE token = $1 AND active"
        return count(await self._call(lambda conn: conn.execute(sql, token), tx=False)) == 1

    async def _touch(self, token: str, now: datetime) -> bool:
        sql = "UPDATE devices SET last_seen_at = GREATEST(last_seen_at, $2) WHERE token = $1"
        return count(await self._call(lambda conn: conn.execute(sql, token, now), tx=False)) == 1

    async def _change_topics(self, token: str, topics: list[str], *, add: bool) -> devices.DeviceRecord:
        return await self._call(_change_topics, token, topics, add)

    async def topic_devices(self, topic: str) -> list[devices.DeviceRecord]:
        return await self._call(_topic_devices, topic, tx=False, read=True)
