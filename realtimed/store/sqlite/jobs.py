"""SQLite: jobs and cron ticks (``JobStore``).

The single writer makes claims atomic: a claim is one write request, so no
two claimers ever see the same job queued. Jobs keep their creation order in
the ``n`` column (``claim_order``, list cursors).
"""

from __future__ import annotations

import functools
from datetime import datetime

from realtimed.store import jobs
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, json_list, us
from realtimed.store.values import dumps

__all__ = ["SQLiteJobs", "insert_job"]


def insert_job(conn: Conn, job: jobs.NewJob) -> tuple[jobs.JobRecord, bool]:
    """Enqueue ``job``, or find the one holding its dedupe key."""
    if job.dedupe_key is not None:
        row = conn.execute(
            f"SELECT {jobs.JOB_COLS} FROM jobs WHERE dedupe_key = ?", (job.dedupe_key,)
        ).fetchone()
        if row is not None:
            return jobs.job_from(row, CODEC), False
    conn.execute(
        "INSERT INTO jobs (id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, dedupe_key, "
        "created_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?)",
        (
            job.id,
            job.queue,
            job.kind,
            dumps(job.payload),
            job.priority,
            job.max_attempts,
            us(job.run_at),
            job.dedupe_key,
            us(job.now),
        ),
    )
    return job.record(), True


def _insert_jobs(conn: Conn, jobs_: list[jobs.NewJob]) -> list[tuple[jobs.JobRecord, bool]]:
    return [insert_job(conn, job) for job in jobs_]


def _claim(conn: Conn, queue: str, limit: int, owner: str, expires: int, now: int) -> list[jobs.JobRecord]:
    candidates = conn.execute(
        "SELECT priority, run_at, n FROM jobs WHERE status = 'queued' AND queue = ? AND run_at <= ? "
        "ORDER BY priority DESC, run_at, n LIMIT ?",
        (queue, now, limit),
    ).fetchall()
    candidates += conn.execute(
        "SELECT priority, run_at, n FROM jobs WHERE status = 'running' AND queue = ? AND lease_expires_at <= ?",
        (queue, now),
    ).fetchall()
    if not candidates:
        return []
    candidates.sort(key=jobs.claim_order)
    chosen = [r["n"] for r in candidates[:limit]]
    rows = conn.execute(
        f"UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1 "
        f"WHERE n IN (SELECT value FROM json_each(?)) RETURNING n, {jobs.JOB_COLS}",
        (owner, expires, dumps(chosen)),
    ).fetchall()
    rows.sort(key=jobs.claim_order)
    return [jobs.job_from(r, CODEC) for r in rows]


def _renew(conn: Conn, job_ids: list[str], owner: str, expires: int) -> set[str]:
    rows = conn.execute(
        "UPDATE jobs SET lease_expires_at = ? WHERE status = 'running' AND lease_owner = ? "
        "AND id IN (SELECT value FROM json_each(?)) RETURNING id",
        (expires, owner, json_list(job_ids)),
    ).fetchall()
    return {r[0] for r in rows}


def _complete(conn: Conn, job_id: str, owner: str, now: int) -> bool:
    cur = conn.execute(
        "UPDATE jobs SET status = 'succeeded', finished_at = ?, lease_expires_at = NULL "
        "WHERE id = ? AND status = 'running' AND lease_owner = ?",
        (now, job_id, owner),
    )
    return cur.rowcount == 1


def complete_many(conn: Conn, job_ids: list[str], owner: str, now: int) -> set[str]:
    rows = conn.execute(
        "UPDATE jobs SET status = 'succeeded', finished_at = ?, lease_expires_at = NULL "
        "WHERE id IN (SELECT value FROM json_each(?)) AND status = 'running' AND lease_owner = ? RETURNING id",
        (now, json_list(job_ids), owner),
    ).fetchall()
    return {r[0] for r in rows}


def _fail(
    conn: Conn, job_id: str, owner: str, error: str, now: int, retry_at: int | None, final_status: str
) -> jobs.JobRecord | None:
    if retry_at is not None:
        row = conn.execute(
            f"UPDATE jobs SET status = 'queued', run_at = ?, last_error = ?, lease_owner = NULL, "
            f"lease_expires_at = NULL WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING {jobs.JOB_COLS}",
            (retry_at, error, job_id, owner),
        ).fetchone()
    else:
        row = conn.execute(
            f"UPDATE jobs SET status = ?, finished_at = ?, last_error = ?, lease_expires_at = NULL "
            f"WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING {jobs.JOB_COLS}",
            (final_status, now, error, job_id, owner),
        ).fetchone()
    return None if row is None else jobs.job_from(row, CODEC)


def _release(conn: Conn, owner: str, job_ids: list[str], now: int) -> None:
    conn.execute(
        "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), run_at = ?, lease_owner = NULL, "
        "lease_expires_at = NULL WHERE status = 'running' AND lease_owner = ? "
        "AND id IN (SELECT value FROM json_each(?))",
        (now, owner, json_list(job_ids)),
    )


def _get_job(conn: Conn, job_id: str) -> jobs.JobRecord | None:
    row = conn.execute(f"SELECT {jobs.JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else jobs.job_from(row, CODEC)


def _job_rows(conn: Conn, page: jobs.JobFilter) -> list[tuple[int, jobs.JobRecord]]:
    sql = f"SELECT n, {jobs.JOB_COLS} FROM jobs WHERE 1 = 1"
    args: list[object] = []
    for column, value in page.conditions():
        sql += f" AND {column} = ?"
        args.append(value)
    if page.before_n is not None:
        sql += " AND n < ?"
        args.append(page.before_n)
    sql += " ORDER BY n DESC LIMIT ?"
    args.append(page.limit + 1)
    return [(r["n"], jobs.job_from(r, CODEC)) for r in conn.execute(sql, args)]


def _status(conn: Conn, job_id: str) -> str | None:
    row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def _retry(conn: Conn, job_id: str, now: int) -> jobs.JobRecord:
    jobs.check_retry(_status(conn, job_id))
    row = conn.execute(
        f"UPDATE jobs SET status = 'queued', attempts = 0, run_at = ?, finished_at = NULL, lease_owner = NULL, "
        f"lease_expires_at = NULL WHERE id = ? RETURNING {jobs.JOB_COLS}",
        (now, job_id),
    ).fetchone()
    return jobs.job_from(row, CODEC)


def _cancel(conn: Conn, job_id: str, now: int) -> jobs.JobRecord:
    jobs.check_cancel(_status(conn, job_id))
    row = conn.execute(
        f"UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? RETURNING {jobs.JOB_COLS}",
        (now, job_id),
    ).fetchone()
    return jobs.job_from(row, CODEC)


def _cancel_by_prefix(conn: Conn, prefix: str, upper: str | None, now: int) -> int:
    sql = "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE status = 'queued' AND dedupe_key >= ?"
    if upper is None:
        return conn.execute(sql, (now, prefix)).rowcount
    return conn.execute(sql + " AND dedupe_key < ?", (now, prefix, upper)).rowcount


def _next_job_time(conn: Conn, queues: list[str]) -> datetime | None:
    qs = json_list(queues)
    row = conn.execute(
        "SELECT MIN(t) FROM ("
        "SELECT MIN(run_at) AS t FROM jobs WHERE status = 'queued' AND queue IN (SELECT value FROM json_each(?)) "
        "UNION ALL SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running' "
        "AND queue IN (SELECT value FROM json_each(?)))",
        (qs, qs),
    ).fetchone()
    return CODEC.opt_time(row[0])


def _job_stats(conn: Conn) -> list[tuple[str, str, int]]:
    rows = conn.execute("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status ORDER BY kind, status")
    return [(r[0], r[1], int(r[2])) for r in rows]


def _oldest_due(conn: Conn, now: int) -> datetime | None:
    row = conn.execute(
        "SELECT MIN(run_at) FROM jobs WHERE status = 'queued' AND run_at <= ?", (now,)
    ).fetchone()
    return CODEC.opt_time(row[0])


def _queue_counts(conn: Conn, now: int) -> list[tuple[str, int, datetime | None]]:
    rows = conn.execute(
        "SELECT queue, COUNT(*), MIN(CASE WHEN run_at <= ? THEN run_at END) FROM jobs "
        "WHERE status = 'queued' GROUP BY queue",
        (now,),
    ).fetchall()
    return [(row[0], int(row[1]), CODEC.opt_time(row[2])) for row in rows]


def _advance_tick(conn: Conn, name: str, tick: int) -> bool:
    cur = conn.execute(
        "INSERT INTO cron_ticks (name, last_tick) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
        "SET last_tick = excluded.last_tick WHERE excluded.last_tick > cron_ticks.last_tick",
        (name, tick),
    )
    return cur.rowcount == 1


def _last_tick(conn: Conn, name: str) -> datetime | None:
    row = conn.execute("SELECT last_tick FROM cron_ticks WHERE name = ?", (name,)).fetchone()
    return None if row is None else CODEC.opt_time(row[0])


class SQLiteJobs(SQLiteEngine, jobs.JobRules):
    """``JobStore`` on SQLite; writes that queue a job wake ``wait_for_jobs`` once committed."""

    async def _enqueue(self, job: jobs.NewJob) -> tuple[jobs.JobRecord, bool]:
        return await self._write(functools.partial(insert_job, job=job), wakes_jobs=True)

    async def _enqueue_many(self, jobs_: list[jobs.NewJob]) -> list[tuple[jobs.JobRecord, bool]]:
        return await self._write(functools.partial(_insert_jobs, jobs_=jobs_), wakes_jobs=True)

    async def _claim(
        self, queue: str, limit: int, owner: str, expires: datetime, now: datetime
    ) -> list[jobs.JobRecord]:
        fn = functools.partial(
            _claim, queue=queue, limit=limit, owner=owner, expires=us(expires), now=us(now)
        )
        return await self._write(fn)

    async def _renew(self, job_ids: list[str], owner: str, expires: datetime) -> set[str]:
        return await self._write(functools.partial(_renew, job_ids=job_ids, owner=owner, expires=us(expires)))

    async def _complete(self, job_id: str, owner: str, now: datetime) -> bool:
        return await self._write(functools.partial(_complete, job_id=job_id, owner=owner, now=us(now)))

    async def _complete_many(self, job_ids: list[str], owner: str, now: datetime) -> set[str]:
        return await self._write(functools.partial(complete_many, job_ids=job_ids, owner=owner, now=us(now)))

    async def _fail(
        self, job_id: str, owner: str, error: str, now: datetime, retry_at: datetime | None, final_status: str
    ) -> jobs.JobRecord | None:
        retry_us = None if retry_at is None else us(retry_at)
        fn = functools.partial(
            _fail,
            job_id=job_id,
            owner=owner,
            error=error,
            now=us(now),
            retry_at=retry_us,
            final_status=final_status,
        )
        return await self._write(fn, wakes_jobs=retry_at is not None)

    async def _release(self, owner: str, job_ids: list[str], now: datetime) -> None:
        await self._write(
            functools.partial(_release, owner=owner, job_ids=job_ids, now=us(now)), wakes_jobs=True
        )

    async def get_job(self, job_id: str) -> jobs.JobRecord | None:
        return await self._read(_get_job, job_id)

    async def _job_rows(self, page: jobs.JobFilter) -> list[tuple[int, jobs.JobRecord]]:
        return await self._read(_job_rows, page)

    async def _retry(self, job_id: str, now: datetime) -> jobs.JobRecord:
        return await self._write(functools.partial(_retry, job_id=job_id, now=us(now)), wakes_jobs=True)

    async def _cancel(self, job_id: str, now: datetime) -> jobs.JobRecord:
        return await self._write(functools.partial(_cancel, job_id=job_id, now=us(now)))

    async def _cancel_by_prefix(self, prefix: str, upper: str | None, now: datetime) -> int:
        return await self._write(
            functools.partial(_cancel_by_prefix, prefix=prefix, upper=upper, now=us(now))
        )

    async def _next_job_time(self, queues: list[str]) -> datetime | None:
        return await self._read(_next_job_time, queues)

    async def job_stats(self) -> list[tuple[str, str, int]]:
        return await self._read(_job_stats)

    async def _oldest_due(self, now: datetime) -> datetime | None:
        return await self._read(_oldest_due, us(now))

    async def _queue_counts(self, now: datetime) -> list[tuple[str, int, datetime | None]]:
        return await self._read(_queue_counts, us(now))

    async def _last_tick(self, name: str) -> datetime | None:
        return await self._read(_last_tick, name)

    async def _advance_tick(self, name: str, tick: datetime) -> bool:
        return await self._write(functools.partial(_advance_tick, name=name, tick=us(tick)))
