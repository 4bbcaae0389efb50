"""Persistent jobs and cron ticks in the store.

``JobStore`` is the Protocol and ``JobRecord`` its record. Written once here:
the statuses and their transitions (which an operator's retry and cancel may
make, and the errors that say why not), record building, the list cursor, the
wake-ups of ``wait_for_jobs``, and the rules of ``JobRules`` before a
backend's primitives.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal, Protocol

import attrs
import trio

from realtimed.clock import iso
from realtimed.errors import Conflict, NotFound
from realtimed.store.paging import clamp_limit, decode_cursor, encode_cursor, split_page
from realtimed.store.values import Row, RowCodec, new_id, prefix_upper, utc

__all__ = [
    "FINISHED_JOB_STATUSES",
    "JOB_COLS",
    "JOB_STATUSES",
    "JobFilter",
    "JobRecord",
    "JobRules",
    "JobSpec",
    "JobStore",
    "JobWakeups",
    "NewJob",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled"]

JOB_STATUSES: Final[tuple[str, ...]] = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
FINISHED_JOB_STATUSES: Final[tuple[str, ...]] = ("succeeded", "failed", "dead", "cancelled")
# An operator's retry applies to these; a cancel to "queued" only.
RETRYABLE_JOB_STATUSES: Final[tuple[str, ...]] = ("dead", "failed", "cancelled")
JOB_COLS: Final = (
    "id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, last_error, dedupe_key, "
    "lease_owner, lease_expires_at, created_at, finished_at"
)


@attrs.frozen
class JobRecord:
    """A persistent job. ``attempts`` counts claims (the running one included)."""

    id: str
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_at: datetime
    last_error: str | None
    dedupe_key: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    finished_at: datetime | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "kind": self.kind,
            "payload": self.payload,
            "priority": self.priority,
            "status": self.status,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_at": iso(self.run_at),
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
        }


@attrs.frozen
class JobSpec:
    """A job to enqueue together with a message (``Store.append_message(jobs=...)``).

    ``run_at`` None means the append's ``now``. The store adds ``message_id``
    and ``seq`` of the new message to the payload.
    """

    queue: str
    kind: str
    payload: dict[str, Any] = attrs.field(factory=dict)
    run_at: datetime | None = None
    priority: int = 0
    max_attempts: int = 5
    dedupe_key: str | None = None


@attrs.frozen
class NewJob:
    """An ``enqueue_job`` call (times in UTC), with the id its job will have."""

    queue: str
    kind: str
    payload: dict[str, Any]
    now: datetime
    run_at: datetime
    priority: int
    max_attempts: int
    dedupe_key: str | None
    id: str = attrs.Factory(lambda: new_id("j"))

    @classmethod
    def of(cls, spec: JobSpec, *, payload: dict[str, Any], now: datetime) -> NewJob:
        """The job of a ``JobSpec`` appended with a message at ``now``."""
        run_at = utc(spec.run_at) if spec.run_at is not None else now
        return cls(
            spec.queue, spec.kind, payload, now, run_at, spec.priority, spec.max_attempts, spec.dedupe_key
        )

    def record(self) -> JobRecord:
        """The job as stored: queued, never attempted."""
        return JobRecord(
            id=self.id,
            queue=self.queue,
            kind=self.kind,
            payload=dict(self.payload),
            priority=self.priority,
            status="queued",
            attempts=0,
            max_attempts=self.max_attempts,
            run_at=self.run_at,
            last_error=None,
            dedupe_key=self.dedupe_key,
            lease_owner=None,
            lease_expires_at=None,
            created_at=self.now,
            finished_at=None,
        )


def job_from(r: Row, codec: RowCodec) -> JobRecord:
    """A job from a row of ``JOB_COLS``."""
    return JobRecord(
        id=r["id"],
        queue=r["queue"],
        kind=r["kind"],
        payload=codec.json(r["payload"]),
        priority=r["priority"],
        status=r["status"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        run_at=codec.time(r["run_at"]),
        last_error=r["last_error"],
        dedupe_key=r["dedupe_key"],
        lease_owner=r["lease_owner"],
        lease_expires_at=codec.opt_time(r["lease_expires_at"]),
        created_at=codec.time(r["created_at"]),
        finished_at=codec.opt_time(r["finished_at"]),
    )


def claim_order(row: Row) -> tuple[int, Any, int]:
    """The order claims are handed out in: highest priority, then ``run_at``, then creation (``n``)."""
    return -row["priority"], row["run_at"], row["n"]


# ---------------------------------------------------------------------------
# Transitions
# ---------------------------------------------------------------------------


def check_final_status(final_status: str) -> None:
    if final_status not in ("dead", "failed"):
        raise ValueError(f"final_status must be 'dead' or 'failed', got {final_status!r}")


def check_retry(status: str | None) -> None:
    """An operator's retry of a job in ``status`` (None: no such job).

    Raises:
        NotFound: no such job.
        Conflict: the job is queued, running or succeeded.
    """
    if status is None:
        raise NotFound("no such job")
    if status not in RETRYABLE_JOB_STATUSES:
        raise Conflict(f"only a dead, failed or cancelled job can be retried; this one is {status}")


def check_cancel(status: str | None) -> None:
    """An operator's cancel of a job in ``status`` (None: no such job).

    Raises:
        NotFound: no such job.
        Conflict: the job is not queued.
    """
    if status is None:
        raise NotFound("no such job")
    if status != "queued":
        raise Conflict(f"only a queued job can be cancelled; this one is {status}")


@attrs.frozen
class JobFilter:
    """One ``list_jobs`` page: jobs matching the filters, created before ``before_n``
    (the creation order; None: the newest), newest first."""

    status: str | None
    queue: str | None
    kind: str | None
    before_n: int | None
    limit: int

    def conditions(self) -> list[tuple[str, Any]]:
        """``(column, value)`` of the equality filters given."""
        return [
            (c, v)
            for c, v in (("status", self.status), ("queue", self.queue), ("kind", self.kind))
            if v is not None
        ]

    def result(self, rows: Sequence[tuple[int, JobRecord]]) -> tuple[list[JobRecord], str | None]:
        """The page of ``(n, job)`` rows fetched with ``LIMIT limit + 1``, and the next cursor."""
        page, more = split_page(rows, self.limit)
        return [job for _, job in page], encode_cursor(page[-1][0]) if more else None


# ---------------------------------------------------------------------------
# The Protocol
# ---------------------------------------------------------------------------


class JobStore(Protocol):
    """Jobs and cron ticks.

    Atomicity: no job is ever handed to two claimers at once; a dedupe key is
    unique while its job exists. Expiry: a ``running`` job whose
    ``lease_expires_at`` has passed is claimable again (a lost lease).
    """

    async def enqueue_job(
        self,
        *,
        queue: str,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        dedupe_key: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create a queued job (``run_at`` None: ``now``); returns ``(job, created)``.

        A ``dedupe_key`` is unique while its job exists in any status: a repeat
        returns the existing job and ``created=False``. Wakes ``wait_for_jobs``
        (on every node, for PostgreSQL) once committed.
        """
        ...

    async def enqueue_jobs(self, specs: Sequence[JobSpec], *, now: datetime) -> list[tuple[JobRecord, bool]]:
        """``enqueue_job`` of every spec (``run_at`` None: ``now``) in one
        statement and one commit; returns ``(job, created)`` per spec, in order.

        Dedupe keys hold as in ``enqueue_job``, within the batch too: of two
        specs with one key, the first creates the job and the second gets it
        with ``created=False``. Wakes ``wait_for_jobs`` once committed.
        """
        ...

    async def claim_jobs(
        self, *, queue: str, limit: int, owner: str, lease_s: float, now: datetime
    ) -> list[JobRecord]:
        """Claim up to ``limit`` jobs of ``queue``: queued with ``run_at <= now``,
        or running with ``lease_expires_at <= now`` (a lost lease). Highest
        priority first, then ``run_at``, then creation order. Each becomes
        ``running`` for ``owner`` until ``now + lease_s``, ``attempts + 1``.
        No job is ever handed to two claimers at once."""
        ...

    async def renew_leases(
        self, *, job_ids: Sequence[str], owner: str, lease_s: float, now: datetime
    ) -> set[str]:
        """Extend ``owner``'s leases to ``now + lease_s``; returns the ids it still holds."""
        ...

    async def complete_job(self, *, job_id: str, owner: str, now: datetime) -> bool:
        """Mark ``succeeded``; False if ``owner`` no longer holds the job."""
        ...

    async def complete_jobs(self, *, job_ids: Sequence[str], owner: str, now: datetime) -> set[str]:
        """Mark many jobs ``succeeded`` in one statement (one commit); returns the
        ids that were completed. A job ``owner`` no longer holds is left as it
        is and missing from the answer; it never keeps the others from completing."""
        ...

    async def fail_job(
        self,
        *,
        job_id: str,
        owner: str,
        error: str,
        now: datetime,
        retry_at: datetime | None,
        final_status: str = "dead",
    ) -> JobRecord | None:
        """Record a failure: with ``retry_at``, back to ``queued`` at that time;
        without, ``final_status`` (``dead``: attempts exhausted; ``failed``: not
        worth retrying). None if ``owner`` no longer holds the job."""
        ...

    async def release_jobs(self, *, owner: str, job_ids: Sequence[str], now: datetime) -> None:
        """Give back unfinished claims (a drain): ``queued``, ``run_at = now``,
        the attempt not counted."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        """Jobs, newest first, filtered; returns the page and the next cursor."""
        ...

    async def retry_job(self, *, job_id: str, now: datetime) -> JobRecord:
        """An operator retry: a dead, failed or cancelled job is queued again
        now with ``attempts`` 0. Raises NotFound, or Conflict in other statuses."""
        ...

    async def cancel_job(self, *, job_id: str, now: datetime) -> JobRecord:
        """Cancel a queued job. Raises NotFound, or Conflict when it is not queued."""
        ...

    async def cancel_jobs_by_dedupe_prefix(self, *, prefix: str, now: datetime) -> int:
        """Cancel every queued job whose dedupe key starts with ``prefix``; returns how many."""
        ...

    async def next_job_time(self, *, queues: Sequence[str]) -> datetime | None:
        """The earliest ``run_at`` of a queued job or lease expiry of a running
        one in these queues; None if there is neither."""
        ...

    async def wait_for_jobs(self, timeout_s: float) -> None:
        """Return when a job is enqueued (or requeued), or after ``timeout_s``.
        A wake-up may be spurious; one may be missed while the store reconnects,
        which the caller's timeout covers."""
        ...

    async def job_stats(self) -> list[tuple[str, str, int]]:
        """``(kind, status, count)`` for every kind and status present."""
        ...

    async def oldest_queued_job_age_s(self, now: datetime) -> float | None:
        """How long the longest-waiting due job (queued, ``run_at <= now``) has
        waited since its ``run_at``; None if none is due."""
        ...

    async def queue_stats(self, now: datetime) -> list[tuple[str, int, float | None]]:
        """``(queue, queued, oldest_due_age_s)`` for every queue with a queued job,
        store-wide: how many jobs are queued (due or scheduled), and how long its
        longest-waiting due job has waited since its ``run_at`` (None if none is due).
        One query, however many jobs are queued."""
        ...

    async def cron_claim_tick(self, *, name: str, tick: datetime) -> bool:
        """Record ``tick`` as the last enqueued tick of cron entry ``name`` if it
        is later than the stored one; True if this call advanced it."""
        ...

    async def cron_last_tick(self, *, name: str) -> datetime | None:
        """The last tick of cron entry ``name`` that any node claimed, or None
        if none ever was (the entry has never run)."""
        ...


# ---------------------------------------------------------------------------
# The rules, written once
# ---------------------------------------------------------------------------


class JobWakeups:
    """``wait_for_jobs``, woken by ``_wake_jobs`` (which a backend calls once a
    job it enqueued or requeued is committed, or when another node says so)."""

    def __init__(self) -> None:
        self._jobs_event = trio.Event()

    def _wake_jobs(self) -> None:
        self._jobs_event.set()
        self._jobs_event = trio.Event()

    async def wait_for_jobs(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self._jobs_event.wait()


class JobRules(abc.ABC):
    """``JobStore`` in terms of a backend's primitives (the abstract methods)."""

    async def enqueue_job(
        self,
        *,
        queue: str,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        dedupe_key: str | None = None,
    ) -> tuple[JobRecord, bool]:
        at = utc(now)
        job = NewJob(
            queue,
            kind,
            dict(payload),
            at,
            utc(run_at) if run_at is not None else at,
            priority,
            max_attempts,
            dedupe_key,
        )
        return await self._enqueue(job)

    async def enqueue_jobs(self, specs: Sequence[JobSpec], *, now: datetime) -> list[tuple[JobRecord, bool]]:
        if not specs:
            return []
        at = utc(now)
        return await self._enqueue_many([NewJob.of(spec, payload=dict(spec.payload), now=at) for spec in specs])

    async def claim_jobs(
        self, *, queue: str, limit: int, owner: str, lease_s: float, now: datetime
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        at = utc(now)
        return await self._claim(queue, limit, owner, at + timedelta(seconds=lease_s), at)

    async def renew_leases(
        self, *, job_ids: Sequence[str], owner: str, lease_s: float, now: datetime
    ) -> set[str]:
        if not job_ids:
            return set()
        return await self._renew(list(job_ids), owner, utc(now) + timedelta(seconds=lease_s))

    async def complete_job(self, *, job_id: str, owner: str, now: datetime) -> bool:
        return await self._complete(job_id, owner, utc(now))

    async def complete_jobs(self, *, job_ids: Sequence[str], owner: str, now: datetime) -> set[str]:
        if not job_ids:
            return set()
        return await self._complete_many(list(dict.fromkeys(job_ids)), owner, utc(now))

    async def fail_job(
        self,
        *,
        job_id: str,
        owner: str,
        error: str,
        now: datetime,
        retry_at: datetime | None,
        final_status: str = "dead",
    ) -> JobRecord | None:
        check_final_status(final_status)
        return await self._fail(
            job_id, owner, error, utc(now), None if retry_at is None else utc(retry_at), final_status
        )

    async def release_jobs(self, *, owner: str, job_ids: Sequence[str], now: datetime) -> None:
        if job_ids:
            await self._release(owner, list(job_ids), utc(now))

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        limit = clamp_limit(limit)
        before_n = decode_cursor(cursor, (int,))[0] if cursor is not None else None
        page = JobFilter(status, queue, kind, before_n, limit)
        return page.result(await self._job_rows(page))

    async def retry_job(self, *, job_id: str, now: datetime) -> JobRecord:
        return await self._retry(job_id, utc(now))

    async def cancel_job(self, *, job_id: str, now: datetime) -> JobRecord:
        return await self._cancel(job_id, utc(now))

    async def cancel_jobs_by_dedupe_prefix(self, *, prefix: str, now: datetime) -> int:
        return await self._cancel_by_prefix(prefix, prefix_upper(prefix), utc(now))

    async def next_job_time(self, *, queues: Sequence[str]) -> datetime | None:
        return await self._next_job_time(list(queues))

    async def oldest_queued_job_age_s(self, now: datetime) -> float | None:
        at = utc(now)
        oldest = await self._oldest_due(at)
        return None if oldest is None else (at - oldest).total_seconds()

    async def queue_stats(self, now: datetime) -> list[tuple[str, int, float | None]]:
        at = utc(now)
        return [
            (queue, count, None if oldest is None else (at - oldest).total_seconds())
            for queue, count, oldest in await self._queue_counts(at)
        ]

    async def cron_claim_tick(self, *, name: str, tick: datetime) -> bool:
        return await self._advance_tick(name, utc(tick))

    async def cron_last_tick(self, *, name: str) -> datetime | None:
        return await self._last_tick(name)

    # -- primitives ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _enqueue(self, job: NewJob) -> tuple[JobRecord, bool]: ...

    @abc.abstractmethod
    async def _enqueue_many(self, jobs: list[NewJob]) -> list[tuple[JobRecord, bool]]:
        """Enqueue ``jobs`` in one transaction; ``(job, created)`` of each, in order."""

    @abc.abstractmethod
    async def _claim(
        self, queue: str, limit: int, owner: str, expires: datetime, now: datetime
    ) -> list[JobRecord]:
        """Claim in ``claim_order``; the claimed jobs in that order."""

    @abc.abstractmethod
    async def _renew(self, job_ids: list[str], owner: str, expires: datetime) -> set[str]: ...

    @abc.abstractmethod
    async def _complete(self, job_id: str, owner: str, now: datetime) -> bool: ...

    @abc.abstractmethod
    async def _complete_many(self, job_ids: list[str], owner: str, now: datetime) -> set[str]:
        """Complete the jobs of ``job_ids`` (no repeats) that ``owner`` holds, in one statement."""

    @abc.abstractmethod
    async def _fail(
        self, job_id: str, owner: str, error: str, now: datetime, retry_at: datetime | None, final_status: str
    ) -> JobRecord | None: ...

    @abc.abstractmethod
    async def _release(self, owner: str, job_ids: list[str], now: datetime) -> None: ...

    @abc.abstractmethod
    async def _job_rows(self, page: JobFilter) -> list[tuple[int, JobRecord]]:
        """Up to ``page.limit + 1`` ``(n, job)``, newest first."""

    @abc.abstractmethod
    async def _retry(self, job_id: str, now: datetime) -> JobRecord:
        """Requeue after ``check_retry`` of the job's status (in the same transaction)."""

    @abc.abstractmethod
    async def _cancel(self, job_id: str, now: datetime) -> JobRecord:
        """Cancel after ``check_cancel`` of the job's status (in the same transaction)."""

    @abc.abstractmethod
    async def _cancel_by_prefix(self, prefix: str, upper: str | None, now: datetime) -> int:
        """Cancel the queued jobs with ``prefix <= dedupe_key < upper`` (no upper bound: None)."""

    @abc.abstractmethod
    async def _next_job_time(self, queues: list[str]) -> datetime | None: ...

    @abc.abstractmethod
    async def _queue_counts(self, now: datetime) -> list[tuple[str, int, datetime | None]]:
        """``(queue, queued jobs, earliest run_at of a due one or None)`` per queue with a queued job."""

    @abc.abstractmethod
    async def _oldest_due(self, now: datetime) -> datetime | None:
        """The earliest ``run_at`` of a queued job due at ``now``."""

    @abc.abstractmethod
    async def _advance_tick(self, name: str, tick: datetime) -> bool: ...

    @abc.abstractmethod
    async def _last_tick(self, name: str) -> datetime | None: ...
