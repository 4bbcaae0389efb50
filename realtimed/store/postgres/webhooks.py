"""PostgreSQL: webhook endpoints and delivery attempts (``WebhookStore``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from realtimed.store.postgres.engine import Conn, PostgresEngine
from realtimed.store.postgres.jobs import COMPLETE_MANY_SQL
from realtimed.store.webhooks import WebhookAttempt, WebhookEndpoint, WebhookRules

__all__ = ["PostgresWebhooks"]

_ENDPOINT_COLS = (
    "id, source, url, events, secrets, enabled, created_at, updated_at, consecutive_failures, disabled_at"
)
_ATTEMPT_COLS = "delivery_id, webhook_id, endpoint_id, event, attempt, status, error, latency_ms, response, at"


def _endpoint(r: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=r[0], source=r[1], url=r[2], events=tuple(r[3]), secrets=tuple(r[4]), enabled=r[5],
        created_at=r[6], updated_at=r[7], consecutive_failures=r[8], disabled_at=r[9],
    )


def _attempt(r: Any) -> WebhookAttempt:
    return WebhookAttempt(
        delivery_id=r[0], webhook_id=r[1], endpoint_id=r[2], event=r[3], attempt=r[4], status=r[5],
        error=r[6], latency_ms=r[7], response=r[8], at=r[9],
    )


async def _sync_config(conn: Conn, endpoints: list[WebhookEndpoint], now: datetime) -> None:
    await conn.execute(
        "DELETE FROM webhook_endpoints WHERE source = 'config' AND NOT (id = ANY($1::text[]))",
        [ep.id for ep in endpoints],
    )
    for ep in endpoints:
        row = await conn.fetchrow(f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints WHERE id = $1 FOR UPDATE", ep.id)
        if (
            row is not None and row[1] == "config" and row[2] == ep.url and tuple(row[3]) == ep.events
            and tuple(row[4]) == ep.secrets and row[5] == ep.enabled and row[9] is None
        ):
            continue
        await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", ep.id)
        await conn.execute(
            f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLS}) VALUES ($1, 'config', $2, $3, $4, $5, $6, $7, 0, NULL)",
            ep.id, ep.url, list(ep.events), list(ep.secrets), ep.enabled, row[6] if row is not None else now, now,
        )


async def _put_endpoint(conn: Conn, ep: WebhookEndpoint, create: bool) -> str:
    row = await conn.fetchrow("SELECT source FROM webhook_endpoints WHERE id = $1 FOR UPDATE", ep.id)
    if row is not None and row[0] == "config":
        return "config"
    if create and row is not None:
        return "taken"
    if not create and row is None:
        return "missing"
    if row is None:
        inserted = await conn.fetchrow(
            f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLS}) VALUES ($1, 'api', $2, $3, $4, $5, $6, $6, 0, NULL) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            ep.id, ep.url, list(ep.events), list(ep.secrets), ep.enabled, ep.updated_at,
        )
        return "ok" if inserted is not None else "taken"
    await conn.execute(
        "UPDATE webhook_endpoints SET url = $2, events = $3, secrets = $4, enabled = $5, updated_at = $6, "
        "consecutive_failures = CASE WHEN $5 THEN 0 ELSE consecutive_failures END, "
        "disabled_at = CASE WHEN $5 THEN NULL ELSE disabled_at END WHERE id = $1",
        ep.id, ep.url, list(ep.events), list(ep.secrets), ep.enabled, ep.updated_at,
    )
    return "ok"


async def _delete_endpoint(conn: Conn, endpoint_id: str) -> str | None:
    row = await conn.fetchrow("SELECT source FROM webhook_endpoints WHERE id = $1 FOR UPDATE", endpoint_id)
    if row is None or row[0] == "config":
        return None if row is None else str(row[0])
    await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return "api"


# One statement each (no transaction block to open and commit): the attempt and the
# endpoint's run of failures move together.
_RECORD_OK = (
    f"WITH attempt AS (INSERT INTO webhook_attempts ({_ATTEMPT_COLS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)) "
    "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = $3 AND consecutive_failures <> 0"
)
_RECORD_FAILED = (
    f"WITH attempt AS (INSERT INTO webhook_attempts ({_ATTEMPT_COLS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)) "
    "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1, "
    "disabled_at = CASE WHEN $11 > 0 AND disabled_at IS NULL AND consecutive_failures + 1 >= $11 "
    "THEN $10 ELSE disabled_at END WHERE id = $3 "
    "RETURNING consecutive_failures, disabled_at IS NOT DISTINCT FROM $10 AS now_disabled"
)


def _args(a: WebhookAttempt) -> tuple[Any, ...]:
    return (
        a.delivery_id, a.webhook_id, a.endpoint_id, a.event, a.attempt, a.status, a.error, a.latency_ms,
        a.response, a.at,
    )


async def _record_one(conn: Conn, a: WebhookAttempt, disable_after: int) -> tuple[int, bool]:
    if a.ok:
        await conn.execute(_RECORD_OK, *_args(a))
        return 0, False
    row = await conn.fetchrow(_RECORD_FAILED, *_args(a), disable_after)
    return (0, False) if row is None else (int(row[0]), bool(row[1]))


async def _record_many(conn: Conn, attempts: list[WebhookAttempt], disable_after: int) -> list[tuple[int, bool]]:
    """In one transaction, in order (a run of failures is counted attempt by attempt)."""
    return [await _record_one(conn, a, disable_after) for a in attempts]


async def _complete_with_attempts(
    conn: Conn, job_ids: list[str], owner: str, now: datetime, attempts: list[WebhookAttempt]
) -> set[str]:
    rows = await conn.fetch(COMPLETE_MANY_SQL, job_ids, owner, now) if job_ids else []
    if attempts:
        await conn.executemany(_RECORD_OK, [_args(a) for a in attempts])
    return {r["id"] for r in rows}


class PostgresWebhooks(PostgresEngine, WebhookRules):
    """``WebhookStore`` on PostgreSQL."""

    async def _sync_config(self, endpoints: list[WebhookEndpoint], now: datetime) -> None:
        await self._call(_sync_config, endpoints, now)

    async def _endpoints(self, endpoint_id: str | None) -> list[WebhookEndpoint]:
        if endpoint_id is None:
            sql = f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints ORDER BY id"
            rows = await self._call(lambda conn: conn.fetch(sql), tx=False, read=True)
        else:
            sql = f"SELECT {_ENDPOINT_COLS} FROM webhook_endpoints WHERE id = $1"
            rows = await self._call(lambda conn: conn.fetch(sql, endpoint_id), tx=False, read=True)
        return [_endpoint(r) for r in rows]

    async def _put_endpoint(self, endpoint: WebhookEndpoint, create: bool) -> str:
        return await self._call(_put_endpoint, endpoint, create)

    async def _delete_endpoint(self, endpoint_id: str) -> str | None:
        return await self._call(_delete_endpoint, endpoint_id)

    async def _complete_with_attempts(
        self, job_ids: list[str], owner: str, now: datetime, attempts: list[WebhookAttempt]
    ) -> set[str]:
        return await self._call(_complete_with_attempts, job_ids, owner, now, attempts)

    async def _record_attempts(self, attempts: list[WebhookAttempt], disable_after: int) -> list[tuple[int, bool]]:
        if len(attempts) == 1:  # one statement, no transaction block
            return [await self._call(_record_one, attempts[0], disable_after, tx=False)]
        return await self._call(_record_many, attempts, disable_after)

    async def _attempts(self, endpoint_id: str | None, delivery_id: str | None, limit: int) -> list[WebhookAttempt]:
        sql = (
            f"SELECT {_ATTEMPT_COLS} FROM webhook_attempts WHERE ($1::text IS NULL OR endpoint_id = $1) "
            "AND ($2::text IS NULL OR delivery_id = $2) ORDER BY n DESC LIMIT $3"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, endpoint_id, delivery_id, limit), tx=False, read=True)
        return [_attempt(r) for r in rows]
