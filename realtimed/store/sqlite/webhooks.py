"""SQLite: webhook endpoints and delivery attempts (``WebhookStore``)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, us
from realtimed.store.sqlite.jobs import complete_many
from realtimed.store.values import dumps
from realtimed.store.webhooks import WebhookAttempt, WebhookEndpoint, WebhookRules

__all__ = ["SQLiteWebhooks"]

_ENDPOINT_COLS = (
    "id, source, url, events, secrets, enabled, created_at, updated_at, consecutive_failures, disabled_at"
)
_ATTEMPT_COLS = "delivery_id, webhook_id, endpoint_id, event, attempt, status, error, latency_ms, response, at"


def _endpoint(r: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=r[0], source=r[1], url=r[2], events=tuple(CODEC.json(r[3])), secrets=tuple(CODEC.json(r[4])),
        enabled=bool(r[5]), created_at=CODEC.time(r[6]), updated_at=CODEC.time(r[7]),
        consecutive_failures=r[8], disabled_at=CODEC.opt_time(r[9]),
    )


def _attempt(r: Any) -> WebhookAttempt:
    return WebhookAttempt(
        delivery_id=r[0], webhook_id=r[1], endpoint_id=r[2], event=r[3], attempt=r[4], status=r[5],
        error=r[6], latency_ms=r[7], response=r[8], at=CODEC.time(r[9]),
    )


def _same_settings(row: Any, ep: WebhookEndpoint) -> bool:
    return bool(
        row[2] == ep.url and tuple(CODEC.json(row[3])) == ep.events and tuple(CODEC.json(row[4])) == ep.secrets
        and bool(row[5]) == ep.enabled and row[9] is None
    )


def _sync_config(conn: Conn, endpoints: list[WebhookEndpoint], now: int) -> None:
    keep = {ep.id for ep in endpoints}
    for (endpoint_id,) in conn.execute("SELECT id FROM webhook_endpoints WHERE source = 'config'").fetchall():
        if endpoint_id not in keep:
            conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
    for ep in endpoints:
        row = conn.execute(f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints WHERE id = ?", (ep.id,)).fetchone()
        if row is not None and row[1] == "config" and _same_settings(row, ep):
            continue
        conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (ep.id,))
        conn.execute(
            f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLS}) VALUES (?, 'config', ?, ?, ?, ?, ?, ?, 0, NULL)",
            (ep.id, ep.url, dumps(list(ep.events)), dumps(list(ep.secrets)), int(ep.enabled),
             row[6] if row is not None else now, now),
        )


def _endpoints(conn: Conn, endpoint_id: str | None) -> list[WebhookEndpoint]:
    if endpoint_id is None:
        rows = conn.execute(f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints ORDER BY id").fetchall()
    else:
        rows = conn.execute(f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchall()
    return [_endpoint(r) for r in rows]


def _put_endpoint(conn: Conn, ep: WebhookEndpoint, create: bool) -> str:
    row = conn.execute("SELECT source, created_at FROM webhook_endpoints WHERE id = ?", (ep.id,)).fetchone()
    if row is not None and row[0] == "config":
        return "config"
    if create and row is not None:
        return "taken"
    if not create and row is None:
        return "missing"
    now = us(ep.updated_at)
    if row is None:
        conn.execute(
            f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLS}) VALUES (?, 'api', ?, ?, ?, ?, ?, ?, 0, NULL)",
            (ep.id, ep.url, dumps(list(ep.events)), dumps(list(ep.secrets)), int(ep.enabled), now, now),
        )
    else:
        conn.execute(
            "UPDATE webhook_endpoints SET url = ?, events = ?, secrets = ?, enabled = ?, updated_at = ?, "
            "consecutive_failures = CASE WHEN ? THEN 0 ELSE consecutive_failures END, "
            "disabled_at = CASE WHEN ? THEN NULL ELSE disabled_at END WHERE id = ?",
            (ep.url, dumps(list(ep.events)), dumps(list(ep.secrets)), int(ep.enabled), now,
             int(ep.enabled), int(ep.enabled), ep.id),
        )
    return "ok"


def _delete_endpoint(conn: Conn, endpoint_id: str) -> str | None:
    row = conn.execute("SELECT source FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchone()
    if row is None or row[0] == "config":
        return None if row is None else str(row[0])
    conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
    return "api"


def _record_attempt(conn: Conn, a: WebhookAttempt, disable_after: int) -> tuple[int, bool]:
    conn.execute(
        f"INSERT INTO webhook_attempts ({_ATTEMPT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (a.delivery_id, a.webhook_id, a.endpoint_id, a.event, a.attempt, a.status, a.error, a.latency_ms,
         a.response, us(a.at)),
    )
    if a.ok:
        conn.execute(
            "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = ? AND consecutive_failures <> 0",
            (a.endpoint_id,),
        )
        return 0, False
    row = conn.execute(
        "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1 WHERE id = ? "
        "RETURNING consecutive_failures, disabled_at",
        (a.endpoint_id,),
    ).fetchone()
    if row is None:
        return 0, False
    failures, disabled_at = int(row[0]), row[1]
    if disable_after > 0 and failures >= disable_after and disabled_at is None:
        conn.execute("UPDATE webhook_endpoints SET disabled_at = ? WHERE id = ?", (us(a.at), a.endpoint_id))
        return failures, True
    return failures, False


def _record_attempts(conn: Conn, attempts: list[WebhookAttempt], disable_after: int) -> list[tuple[int, bool]]:
    return [_record_attempt(conn, a, disable_after) for a in attempts]


def _attempts(conn: Conn, endpoint_id: str | None, delivery_id: str | None, limit: int) -> list[WebhookAttempt]:
    where, args = [], []
    if endpoint_id is not None:
        where.append("endpoint_id = ?")
        args.append(endpoint_id)
    if delivery_id is not None:
        where.append("delivery_id = ?")
        args.append(delivery_id)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = conn.execute(
        f"SELECT {_ATTEMPT_COLS} FROM webhook_attempts {clause}ORDER BY n DESC LIMIT ?", (*args, limit)
    ).fetchall()
    return [_attempt(r) for r in rows]


def _complete_with_attempts(
    conn: Conn, job_ids: list[str], owner: str, now: int, attempts: list[WebhookAttempt]
) -> set[str]:
    completed = complete_many(conn, job_ids, owner, now) if job_ids else set()
    for attempt in attempts:
        _record_attempt(conn, attempt, 0)
    return completed


class SQLiteWebhooks(SQLiteEngine, WebhookRules):
    """``WebhookStore`` on SQLite."""

    async def _sync_config(self, endpoints: list[WebhookEndpoint], now: datetime) -> None:
        await self._write(functools.partial(_sync_config, endpoints=endpoints, now=us(now)))

    async def _endpoints(self, endpoint_id: str | None) -> list[WebhookEndpoint]:
        return await self._read(_endpoints, endpoint_id)

    async def _put_endpoint(self, endpoint: WebhookEndpoint, create: bool) -> str:
        return await self._write(functools.partial(_put_endpoint, ep=endpoint, create=create))

    async def _delete_endpoint(self, endpoint_id: str) -> str | None:
        return await self._write(functools.partial(_delete_endpoint, endpoint_id=endpoint_id))

    async def _complete_with_attempts(
        self, job_ids: list[str], owner: str, now: datetime, attempts: list[WebhookAttempt]
    ) -> set[str]:
        return await self._write(
            functools.partial(_complete_with_attempts, job_ids=job_ids, owner=owner, now=us(now), attempts=attempts)
        )

    async def _record_attempts(self, attempts: list[WebhookAttempt], disable_after: int) -> list[tuple[int, bool]]:
        return await self._write(functools.partial(_record_attempts, attempts=attempts, disable_after=disable_after))

    async def _attempts(self, endpoint_id: str | None, delivery_id: str | None, limit: int) -> list[WebhookAttempt]:
        return await self._read(_attempts, endpoint_id, delivery_id, limit)
