"""PostgreSQL: jobs and cron ticks (``JobStore``).

Claims lock with ``FOR UPDATE SKIP LOCKED``, so concurrent claimers on any
number of nodes never take the same job. Every write that queues a job sends
``NOTIFY realtimed_jobs`` in its transaction, which wakes ``wait_for_jobs``
on every node (``engine``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from realtimed.errors import Unavailable
from realtimed.store import jobs
from realtimed.store.postgres.engine import CODEC, JOBS_CHANNEL, Conn, PostgresEngine, count

__all__ = ["PostgresJobs"]

_TRIES: Final = 3
_ENQUEUE: Final = (
    f"WITH ins AS (INSERT INTO jobs (id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, "
    f"dedupe_key, created_at) VALUES ($1, $2, $3, $4::jsonb, $5, 'queued', 0, $6, $7, $8, $9) "
    f"ON CONFLICT (dedupe_key) DO NOTHING RETURNING {jobs.JOB_COLS}) "
    f"SELECT ins.*, pg_notify('{JOBS_CHANNEL}', ins.queue) FROM ins"
)


#: Complete the jobs of $1 (an array of ids) that $2 holds, at $3; the ids completed.
COMPLETE_MANY_SQL = (
    "UPDATE jobs SET status = 'succeeded', finished_at = $3, lease_expires_at = NULL "
    "WHERE id = ANY($1::text[]) AND status = 'running' AND lease_owner = $2 RETURNING id"
)


async def _enqueue(conn: Conn, job: jobs.NewJob) -> tuple[jobs.JobRecord, bool]:
    for _ in range(_TRIES):
        row = await conn.fetchrow(
            _ENQUEUE,
            job.id,
            job.queue,
            job.kind,
            job.payload,
            job.priority,
            job.max_attempts,
            job.run_at,
            job.dedupe_key,
            job.now,
        )
        if row is not None:
            return jobs.job_from(row, CODEC), True
        row = await conn.fetchrow(f"SELECT {jobs.JOB_COLS} FROM jobs WHERE dedupe_key = $1", job.dedupe_key)
        if row is not None:
            return jobs.job_from(row, CODEC), False
        # The job holding the key was deleted in between: try again.
    raise Unavailable("could not enqueue the job: its dedupe key keeps changing hands")


_ENQUEUE_MANY: Final = (
    "INSERT INTO jobs (id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, dedupe_key, "
    "created_at) SELECT t.id, t.queue, t.kind, t.payload, t.priority, 'queued', 0, t.max_attempts, t.run_at, "
    "t.dedupe_key, t.created_at FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::int[], $6::int[], "
    "$7::timestamptz[], $8::text[], $9::timestamptz[]) "
    "AS t(id, queue, kind, payload, priority, max_attempts, run_at, dedupe_key, created_at) "
    "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
)


async def _enqueue_many(conn: Conn, batch: list[jobs.NewJob]) -> list[tuple[jobs.JobRecord, bool]]:
    """One INSERT over arrays for the whole batch; a spec whose dedupe key is
    taken gets the job holding it (looked up together); one whose holder was
    deleted in between is inserted again, as in ``_enqueue``."""
    found: dict[int, tuple[jobs.JobRecord, bool]] = {}
    pending = list(range(len(batch)))
    for _ in range(_TRIES):
        todo = [batch[i] for i in pending]
        rows = await conn.fetch(
            _ENQUEUE_MANY,
            [j.id for j in todo],
            [j.queue for j in todo],
            [j.kind for j in todo],
            [j.payload for j in todo],
            [j.priority for j in todo],
            [j.max_attempts for j in todo],
            [j.run_at for j in todo],
            [j.dedupe_key for j in todo],
            [j.now for j in todo],
        )
        # A new job is what was given, so only its id comes back (no payload to decode).
        created = {r["id"] for r in rows}
        keys = [batch[i].dedupe_key for i in pending if batch[i].id not in created]
        holders: dict[str, jobs.JobRecord] = {}
        if keys:
            held = await conn.fetch(f"SELECT {jobs.JOB_COLS} FROM jobs WHERE dedupe_key = ANY($1::text[])", keys)
            holders = {r["dedupe_key"]: jobs.job_from(r, CODEC) for r in held}
        missing = []
        for i in pending:
            job = batch[i]
            if job.id in created:
                found[i] = job.record(), True
            elif job.dedupe_key in holders:
                found[i] = holders[job.dedupe_key], False
            else:
                missing.append(i)  # the job holding the key was deleted in between: try again
        if not missing:
            queues = sorted({record.queue for record, was_created in found.values() if was_created})
            if queues:
                await conn.execute(f"SELECT pg_notify('{JOBS_CHANNEL}', q) FROM unnest($1::text[]) q", queues)
            return [found[i] for i in range(len(batch))]
        pending = missing
    raise Unavailable("could not enqueue the jobs: a dedupe key keeps changing hands")


async def _claim(
    conn: Conn, queue: str, limit: int, owner: str, expires: datetime, now: datetime
) -> list[jobs.JobRecord]:
    rows = await conn.fetch(
        "WITH picked AS ("
        " SELECT n FROM jobs WHERE queue = $1 AND ((status = 'queued' AND run_at <= $2) "
        " OR (status = 'running' AND lease_expires_at <= $2)) "
        " ORDER BY priority DESC, run_at, n LIMIT $3 FOR UPDATE SKIP LOCKED) "
        "UPDATE jobs j SET status = 'running', lease_owner = $4, lease_expires_at = $5, attempts = j.attempts + 1 "
        f"FROM picked WHERE j.n = picked.n RETURNING j.n, {', '.join('j.' + c for c in jobs.JOB_COLS.split(', '))}",
        queue,
        now,
        limit,
        owner,
        expires,
    )
    return [jobs.job_from(r, CODEC) for r in sorted(rows, key=jobs.claim_order)]


async def _fail(
    conn: Conn,
    job_id: str,
    owner: str,
    error: str,
    now: datetime,
    retry_at: datetime | None,
    final_status: str,
) -> jobs.JobRecord | None:
    if retry_at is not None:
        row = await conn.fetchrow(
            f"WITH upd AS (UPDATE jobs SET status = 'queued', run_at = $3, last_error = $4, lease_owner = NULL, "
            f"lease_expires_at = NULL WHERE id = $1 AND status = 'running' AND lease_owner = $2 "
            f"RETURNING {jobs.JOB_COLS}) SELECT upd.*, pg_notify('{JOBS_CHANNEL}', upd.queue) FROM upd",
            job_id,
            owner,
            retry_at,
            error,
        )
    else:
        row = await conn.fetchrow(
            f"UPDATE jobs SET status = $3, finished_at = $4, last_error = $5, lease_expires_at = NULL "
            f"WHERE id = $1 AND status = 'running' AND lease_owner = $2 RETURNING {jobs.JOB_COLS}",
            job_id,
            owner,
            final_status,
            now,
            error,
        )
    return None if row is None else jobs.job_from(row, CODEC)


async def _get_job(conn: Conn, job_id: str) -> jobs.JobRecord | None:
    row = await conn.fetchrow(f"SELECT {jobs.JOB_COLS} FROM jobs WHERE id = $1", job_id)
    return None if row is None else jobs.job_from(row, CODEC)


async def _job_rows(conn: Conn, page: jobs.JobFilter) -> list[tuple[int, jobs.JobRecord]]:
    sql = f"SELECT n, {jobs.JOB_COLS} FROM jobs WHERE true"
    args: list[Any] = []
    for column, value in page.conditions():
        args.append(value)
        sql += f" AND {column} = ${len(args)}"
    if page.before_n is not None:
        args.append(page.before_n)
        sql += f" AND n < ${len(args)}"
    args.append(page.limit + 1)
    sql += f" ORDER BY n DESC LIMIT ${len(args)}"
    return [(r["n"], jobs.job_from(r, CODEC)) for r in await conn.fetch(sql, *args)]


async def _retry(conn: Conn, job_id: str, now: datetime) -> jobs.JobRecord:
    jobs.check_retry(await conn.fetchval("SELECT status FROM jobs WHERE id = $1 FOR UPDATE", job_id))
    updated = await conn.fetchrow(
        f"WITH upd AS (UPDATE jobs SET status = 'queued', attempts = 0, run_at = $2, finished_at = NULL, "
        f"lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 RETURNING {jobs.JOB_COLS}) "
        f"SELECT upd.*, pg_notify('{JOBS_CHANNEL}', upd.queue) FROM upd",
        job_id,
        now,
    )
    return jobs.job_from(updated, CODEC)


async def _cancel(conn: Conn, job_id: str, now: datetime) -> jobs.JobRecord:
    for _ in range(_TRIES):
        row = await conn.fetchrow(
            f"UPDATE jobs SET status = 'cancelled', finished_at = $2 WHERE id = $1 AND status = 'queued' "
            f"RETURNING {jobs.JOB_COLS}",
            job_id,
            now,
        )
        if row is not None:
            return jobs.job_from(row, CODEC)
        jobs.check_cancel(await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id))
        # Queued again in between (an operator's retry): try again.
    raise Unavailable("could not cancel the job: its status keeps changing")


async def _cancel_by_prefix(conn: Conn, prefix: str, upper: str | None, now: datetime) -> int:
    sql = (
        "UPDATE jobs SET status = 'cancelled', finished_at = $1 WHERE status = 'queued' AND dedupe_key >= $2"
    )
    if upper is None:
        return count(await conn.execute(sql, now, prefix))
    return count(await conn.execute(sql + " AND dedupe_key < $3", now, prefix, upper))


class PostgresJobs(PostgresEngine, jobs.JobRules):
    """``JobStore`` on PostgreSQL."""

    async def _enqueue(self, job: jobs.NewJob) -> tuple[jobs.JobRecord, bool]:
        record, created = await self._call(_enqueue, job, tx=False)
        if created:
            self._wake_jobs()
        return record, created

    async def _enqueue_many(self, batch: list[jobs.NewJob]) -> list[tuple[jobs.JobRecord, bool]]:
        results = await self._call(_enqueue_many, batch)
        if any(created for _, created in results):
            self._wake_jobs()
        return results

    async def _claim(
        self, queue: str, limit: int, owner: str, expires: datetime, now: datetime
    ) -> list[jobs.JobRecord]:
        return await self._call(_claim, queue, limit, owner, expires, now, tx=False)

    async def _renew(self, job_ids: list[str], owner: str, expires: datetime) -> set[str]:
        sql = (
            "UPDATE jobs SET lease_expires_at = $3 WHERE status = 'running' AND lease_owner = $2 "
            "AND id = ANY($1::text[]) RETURNING id"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, job_ids, owner, expires), tx=False)
        return {r["id"] for r in rows}

    async def _complete(self, job_id: str, owner: str, now: datetime) -> bool:
        sql = (
            "UPDATE jobs SET status = 'succeeded', finished_at = $3, lease_expires_at = NULL "
            "WHERE id = $1 AND status = 'running' AND lease_owner = $2"
        )
        return count(await self._call(lambda conn: conn.execute(sql, job_id, owner, now), tx=False)) == 1

    async def _complete_many(self, job_ids: list[str], owner: str, now: datetime) -> set[str]:
        rows = await self._call(lambda conn: conn.fetch(COMPLETE_MANY_SQL, job_ids, owner, now), tx=False)
        return {r["id"] for r in rows}

    async def _fail(
        self, job_id: str, owner: str, error: str, now: datetime, retry_at: datetime | None, final_status: str
    ) -> jobs.JobRecord | None:
        record = await self._call(_fail, job_id, owner, error, now, retry_at, final_status, tx=False)
        if record is not None and retry_at is not None:
            self._wake_jobs()
        return record

    async def _release(self, owner: str, job_ids: list[str], now: datetime) -> None:
        sql = (
            "WITH upd AS (UPDATE jobs SET status = 'queued', attempts = GREATEST(attempts - 1, 0), run_at = $3, "
            "lease_owner = NULL, lease_expires_at = NULL WHERE status = 'running' AND lease_owner = $2 "
            "AND id = ANY($1::text[]) RETURNING queue) "
            f"SELECT count(*) FROM (SELECT pg_notify('{JOBS_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM upd) q) n"
        )
        await self._call(lambda conn: conn.fetchval(sql, job_ids, owner, now), tx=False)
        self._wake_jobs()

    async def get_job(self, job_id: str) -> jobs.JobRecord | None:
        return await self._call(_get_job, job_id, tx=False, read=True)

    async def _job_rows(self, page: jobs.JobFilter) -> list[tuple[int, jobs.JobRecord]]:
        return await self._call(_job_rows, page, tx=False, read=True)

    async def _retry(self, job_id: str, now: datetime) -> jobs.JobRecord:
        job = await self._call(_retry, job_id, now)
        self._wake_jobs()
        return job

    async def _cancel(self, job_id: str, now: datetime) -> jobs.JobRecord:
        return await self._call(_cancel, job_id, now, tx=False)

    async def _cancel_by_prefix(self, prefix: str, upper: str | None, now: datetime) -> int:
        return await self._call(_cancel_by_prefix, prefix, upper, now, tx=False)

    async def _next_job_time(self, queues: list[str]) -> datetime | None:
        sql = (
            "SELECT LEAST((SELECT min(run_at) FROM jobs WHERE status = 'queued' AND queue = ANY($1::text[])), "
            "(SELECT min(lease_expires_at) FROM jobs WHERE status = 'running' AND queue = ANY($1::text[])))"
        )
        value: datetime | None = await self._call(
            lambda conn: conn.fetchval(sql, queues), tx=False, read=True
        )
        return value

    async def job_stats(self) -> list[tuple[str, str, int]]:
        sql = "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status ORDER BY kind, status"
        rows = await self._call(lambda conn: conn.fetch(sql), tx=False, read=True)
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def _oldest_due(self, now: datetime) -> datetime | None:
        sql = "SELECT min(run_at) FROM jobs WHERE status = 'queued' AND run_at <= $1"
        oldest: datetime | None = await self._call(lambda conn: conn.fetchval(sql, now), tx=False, read=True)
        return oldest

    async def _queue_counts(self, now: datetime) -> list[tuple[str, int, datetime | None]]:
        sql = (
            "SELECT queue, count(*), min(run_at) FILTER (WHERE run_at <= $1) FROM jobs "
            "WHERE status = 'queued' GROUP BY queue"
        )

        async def queue_counts(conn: Conn) -> list[Any]:
            return list(await conn.fetch(sql, now))

        rows = await self._call(queue_counts, tx=False, read=True)
        return [(r[0], int(r[1]), r[2]) for r in rows]

    async def _advance_tick(self, name: str, tick: datetime) -> bool:
        sql = (
            "INSERT INTO cron_ticks (name, last_tick) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE "
            "SET last_tick = excluded.last_tick WHERE cron_ticks.last_tick < excluded.last_tick RETURNING 1"
        )
        return await self._call(lambda conn: conn.fetchval(sql, name, tick), tx=False) is not None

    async def _last_tick(self, name: str) -> datetime | None:
        sql = "SELECT last_tick FROM cron_ticks WHERE name = $1"
        tick: datetime | None = await self._call(lambda conn: conn.fetchval(sql, name), tx=False, read=True)
        return tick
