"""The persistent job runner: claims jobs from the store, runs their handlers, retries.

A job is a row in the store (queue, kind, payload, priority, run_at, attempts,
status, lease). ``JobRunner`` serves a set of queues, each with its own
concurrency on this node. A queue worker claims up to its free slots with a
lease (``JobsConfig.lease_s``); while a handler runs, one task renews the leases
of every job this runner holds every third of the lease. A node that dies stops
renewing, its leases expire, and any runner claims those jobs again: delivery
is at least once, and a job runs twice only when the node running it died (or
lost its lease) before recording the outcome.

Waking: a queue worker sleeps until one of: new work (``store.wait_for_jobs``,
which PostgreSQL answers through LISTEN/NOTIFY and SQLite through an in-process
event), a free slot while more work is known to wait, the ``run_at`` of the next
scheduled job (``store.next_job_time``, which also covers the lease expiry of a
job whose node died), or the safety-net poll (``JobsConfig.poll_s``). Nothing
polls faster than that. Wake-ups for new work within ``WAKE_COALESCE_S`` of each
other share one extra claim, and while a backlog is known a worker claims once
a quarter of its slots are free (or after ``CLAIM_GATHER_S``), so that claims
stay few when jobs are short. A slot is taken from the claim until the outcome
is recorded: a slow store slows claiming down instead of piling up claims.

Recording: successes are recorded together. One task writes every success
waiting at the moment in one statement (``store.complete_jobs``, one commit),
and those that finish while it runs go in the next, so a busy runner writes
once per batch of jobs and an idle one adds no wait. A handler's slot is
freed once its success is committed. Failures are recorded one by one.

Retries: a handler that raises is retried at ``now + delay`` with exponential
backoff and *equal jitter*: ``d = min(backoff_max_s, backoff_base_s * 2 ** (attempt - 1))``
and the delay is drawn uniformly from ``[d / 2, d]``, so a retry never comes
sooner than half the nominal delay (FCM and other backends are not hammered)
while retries of many jobs still spread out. ``RetryAfter(seconds)`` replaces
the computed delay (an FCM ``Retry-After``); ``DoNotRetry(reason)`` ends the job
as ``failed`` at once (``DoNotRetry(reason, dead=True)``: ``dead``). Every claim counts as an attempt, so a job that keeps
failing (or keeps asking to be retried later) ends ``dead`` after
``max_attempts``, keeping its last error. A job of a kind that no handler is
registered for ends ``failed`` with ``unknown job kind``.

Typed kinds: a kind registered with a ``JobType`` (``realtimed.jobs.payload``)
has a payload class; ``enqueue`` encodes a value of it, and the runner decodes
the stored payload before the handler runs (``handler(ctx, payload)``). A
payload that does not decode ends the job as ``failed`` at once with
``invalid payload: <field>: <problem>``, since no retry can fix it.

Drain: ``drain(grace_s)`` stops claiming, lets running handlers finish within the
grace period, cancels the rest and gives their claims back (``store.release_jobs``)
so that another node picks them up at once instead of after the lease. A runner
whose ``run`` is cancelled without a drain gives its claims back the same way
(under a shield, bounded by ``release_timeout_s``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

import attrs
import trio
from prometheus_client import Counter, Gauge, Histogram

from realtimed import logs
from realtimed.clock import WallClock
from realtimed.config import JobQueueConfig, JobsConfig
from realtimed.errors import ValidationFailed
from realtimed.jobs.payload import JobPayload, JobType, PayloadError
from realtimed.metrics import REGISTRY
from realtimed.protocol import MAX_STORED_JSON_DEPTH, encode_json, json_depth_path

if TYPE_CHECKING:
    from realtimed.store.base import JobRecord, JobSpec, Store, WebhookAttempt

__all__ = [
    "DEFAULT_QUEUE",
    "DoNotRetry",
    "Handler",
    "JobContext",
    "JobKind",
    "JobRunner",
    "RetryAfter",
    "TypedHandler",
    "backoff_delay",
]

log = logging.getLogger(__name__)

DEFAULT_QUEUE: Final = "default"
MAX_ERROR_CHARS: Final = 2000
MAX_KIND_CHARS: Final = 100
# With a backlog and only a few free slots, the longest wait for more slots before claiming.
CLAIM_GATHER_S: Final = 0.01
# Wake-ups for new work closer together than this are served by one extra claim.
WAKE_COALESCE_S: Final = 0.02
# The most completions recorded by one store statement.
COMPLETE_BATCH: Final = 500

# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

JOBS_BY_STATUS: Final = Gauge(
    "realtimed_jobs", "jobs in the store by kind and status (refreshed periodically)", ["kind", "status"],
    registry=REGISTRY,
)
# Store-wide values: every node reports the same number, so they carry scope="cluster"
# and are alerted on with max(), never sum().
QUEUE_DEPTH: Final = Gauge(
    "realtimed_job_queue_depth",
    "queued jobs (due or scheduled) per queue, store-wide (scope=\"cluster\": alert with max(); refreshed "
    "periodically)",
    ["queue", "scope"],
    registry=REGISTRY,
)
OLDEST_QUEUED_AGE: Final = Gauge(
    "realtimed_job_oldest_queued_age_seconds",
    "how long the oldest due queued job of each queue has waited since its run_at, store-wide "
    "(scope=\"cluster\": alert with max(); 0 when none is due)",
    ["queue", "scope"],
    registry=REGISTRY,
)
JOBS_RUNNING: Final = Gauge(
    "realtimed_jobs_running",
    "jobs holding a slot on this node per queue (handler running or outcome being recorded)",
    ["queue"],
    registry=REGISTRY,
)
JOB_OUTCOMES: Final = Counter(
    "realtimed_job_runs",
    "handler runs on this node by kind and outcome (succeeded, retried, failed, dead, lost, released)",
    ["kind", "outcome"],
    registry=REGISTRY,
)
JOBS_ENQUEUED: Final = Counter(
    "realtimed_jobs_enqueued", "jobs created through the runner by kind", ["kind"], registry=REGISTRY
)
JOB_DURATION: Final = Histogram(
    "realtimed_job_duration_seconds",
    "handler run time by kind",
    ["kind"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 120, 600),
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------


class RetryAfter(Exception):
    """Raised by a handler: run this job again after ``seconds`` (e.g. FCM ``Retry-After``).

    The attempt still counts: after ``max_attempts`` the job is ``dead``.
    """

    def __init__(self, seconds: float, reason: str = "") -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"RetryAfter needs a finite, non-negative delay, got {seconds!r}")
        self.seconds = float(seconds)
        self.reason = reason
        super().__init__(reason or f"retry after {seconds:g} s")


class DoNotRetry(Exception):
    """Raised by a handler: this job cannot succeed; mark it ``failed`` now with ``reason``
    (``dead``: ``dead`` instead, as if its attempts were spent, which the ``job.dead``
    webhook reports)."""

    def __init__(self, reason: str, *, dead: bool = False) -> None:
        self.reason = reason
        self.dead = dead
        super().__init__(reason)


@attrs.define(eq=False)
class JobContext:
    """What a handler gets.

    Attributes:
        job: the claimed record (``attempts`` already counts this run).
        payload: the job's payload.
        attempt: this run's number, 1 for the first.
        clock: the runner's wall clock (use it rather than ``datetime.now()``).
        cancel_scope: the scope the handler runs in; it is cancelled when the
            lease is lost or a drain's grace period ends. A handler may shield a
            short critical section in its own scope.
        store: the store, for handlers that read or write it.
        runner: the runner, for handlers that enqueue follow-up jobs.
        attempts_with_completion: successful webhook attempts a handler leaves
            to be stored in the transaction that completes its job (together
            with the other completions of the moment), when the handler returns;
            the job's slot is then not held by a store write of its own.
    """

    job: JobRecord
    payload: dict[str, Any]
    attempt: int
    clock: WallClock
    cancel_scope: trio.CancelScope
    store: Store
    runner: JobRunner
    attempts_with_completion: list[WebhookAttempt] = attrs.Factory(list)

    @property
    def job_id(self) -> str:
        return self.job.id


Handler = Callable[[JobContext], Awaitable[None]]
P = TypeVar("P", bound=JobPayload)
TypedHandler = Callable[[JobContext, P], Awaitable[None]]


@attrs.frozen
class JobKind:
    """A registered job kind: its handler, an optional time limit per run, and
    its payload type (None: the handler reads ``ctx.payload``, a dict)."""

    name: str
    handler: Handler
    timeout_s: float | None = None
    job_type: JobType[Any] | None = None


def _decoding(job_type: JobType[P], handler: TypedHandler[P]) -> Handler:
    """A plain handler that decodes the payload and calls ``handler(ctx, payload)``."""

    async def run(ctx: JobContext) -> None:
        try:
            payload = job_type.decode(ctx.payload)
        except PayloadError as exc:
            raise DoNotRetry(f"invalid payload: {exc.message}") from None
        await handler(ctx, payload)

    return run


def backoff_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """The retry delay after failed attempt ``attempt`` (1-based), with equal jitter.

    ``d = min(max_s, base_s * 2 ** (attempt - 1))``; the result is uniform in ``[d / 2, d]``.
    """
    exponent = min(max(attempt - 1, 0), 62)
    nominal = min(max_s, base_s * float(2**exponent))
    return nominal / 2 + rng.uniform(0, nominal / 2)


# ---------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Queue:
    name: str
    concurrency: int
    running: int = 0
    # Set when more due work may be waiting than there were free slots: a slot
    # that frees up then wakes the worker to claim again.
    more: bool = False
    kick: trio.Event = attrs.field(factory=trio.Event)
    started: bool = False

    @property
    def claim_batch(self) -> int:
        """With a backlog, claim once at least this many slots are free (or after CLAIM_GATHER_S)."""
        return max(1, self.concurrency // 4)

    def wake(self) -> None:
        self.kick.set()


@attrs.define(eq=False)
class _Claim:
    job: JobRecord
    queue: _Queue
    scope: trio.CancelScope
    handler_done: bool = False
    lease_lost: bool = False


@attrs.define(eq=False)
class _Completion:
    """A success waiting to be recorded with others (``JobRunner._record_completions``)."""

    job_id: str
    attempts: list[WebhookAttempt] = attrs.Factory(list)  # stored in the same transaction
    done: trio.Event = attrs.field(factory=trio.Event)
    completed: bool = False
    error: Exception | None = None


class JobRunner:
    """Runs persistent jobs from the store on this node.

    Args:
        store: the started store (``realtimed.store``).
        config: the ``[jobs]`` section.
        clock: wall time for ``run_at``, leases and retries.
        node: this node's id; the lease owner is ``<node>:<pid>:<random>``.
        queues: more queues to serve besides those in the config and ``default``
            (queues not in the config get the default queue's concurrency). A runner
            also serves every queue it enqueues into and those named to ``serve_queue``
            (cron and push do); jobs put straight into the store in a queue that no
            runner serves wait until one does.
        rng: the source of backoff jitter (tests pass a seeded one).
        stats_interval_s: how often the store-wide gauges are refreshed (each refresh
            counts the jobs table by kind and status).
        release_timeout_s: the longest wait for giving claims back at exit.

    Usage::

        runner = JobRunner(store, config=cfg.jobs, clock=clock, node=cfg.server.node_id)
        runner.register("email.send", send_email)
        await nursery.start(runner.run)
        await runner.enqueue("email.send", {"to": "a@example.com"})
        ...
        await runner.drain(cfg.shutdown.grace_s)

    Resource handling:
        ``run`` owns every task: one worker per served queue, one lease renewer,
        one wake-up listener, one completion recorder, one metrics refresher and
        one task per running job.
        It returns after ``drain`` finished, or when cancelled; either way the
        claims it still holds are released before it returns.

    Error handling:
        A handler's exception is recorded on the job (retry or ``dead``), never
        raised here. A store error while claiming is logged and retried with
        backoff (at most the poll interval apart); an outcome that cannot be recorded is logged and the job
        comes back when its lease expires. A lost lease (another owner took the
        job) cancels the handler and records nothing.
    """

    def __init__(
        self,
        store: Store,
        *,
        config: JobsConfig,
        clock: WallClock,
        node: str = "",
        queues: Iterable[str] = (),
        rng: random.Random | None = None,
        stats_interval_s: float = 30.0,
        release_timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self.config = config
        self.clock = clock
        self.node = node or socket.gethostname()
        self.owner = f"{self.node}:{os.getpid()}:{secrets.token_hex(4)}"
        self._rng = rng or random.Random()
        self._stats_interval_s = stats_interval_s
        self._release_timeout_s = release_timeout_s
        self._kinds: dict[str, JobKind] = {}
        self._queues: dict[str, _Queue] = {}
        self._claims: dict[str, _Claim] = {}
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._drained = trio.Event()
        self._job_exit = trio.Event()
        self._job_tasks = 0
        self._completions: list[_Completion] = []
        self._completions_wanted = trio.Event()
        self._status_labels: set[tuple[str, str]] = set()
        self._queue_labels: set[str] = set()
        self._dead_hooks: list[Callable[[JobRecord, str], Awaitable[None]]] = []
        for name in [DEFAULT_QUEUE, *(q.name for q in config.queues), *queues]:
            self.serve_queue(name)

    # -- kinds -----------------------------------------------------------------------------------

    @overload
    def register(self, kind: str, handler: Handler, *, timeout_s: float | None = None) -> Handler: ...

    @overload
    def register(
        self, kind: JobType[P], handler: TypedHandler[P], *, timeout_s: float | None = None
    ) -> TypedHandler[P]: ...

    def register(self, kind: Any, handler: Any, *, timeout_s: float | None = None) -> Any:
        """Register the handler of ``kind`` (replacing any earlier one); returns the handler.

        ``kind`` is a name, and the handler ``handler(ctx)`` reads ``ctx.payload``;
        or a ``JobType``, and the handler is ``handler(ctx, payload)`` with the
        decoded payload.
        """
        job_type: JobType[Any] | None = kind if isinstance(kind, JobType) else None
        name: str = job_type.kind if job_type is not None else kind
        if not name or len(name) > MAX_KIND_CHARS:
            raise ValueError(f"job kind must be 1 to {MAX_KIND_CHARS} characters, got {name!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        plain: Handler = _decoding(job_type, handler) if job_type is not None else handler
        self._kinds[name] = JobKind(name, plain, timeout_s, job_type)
        return handler

    def kind(self, kind: str, *, timeout_s: float | None = None) -> Callable[[Handler], Handler]:
        """Decorator form of ``register``."""

        def decorate(handler: Handler) -> Handler:
            return self.register(kind, handler, timeout_s=timeout_s)

        return decorate

    @property
    def kinds(self) -> Mapping[str, JobKind]:
        return dict(self._kinds)

    # -- queues ----------------------------------------------------------------------------------

    def concurrency(self, queue: str) -> int:
        """Jobs of ``queue`` run at once on this node (the default queue's for unlisted queues)."""
        by_name = {q.name: q.concurrency for q in self.config.queues}
        if queue in by_name:
            return by_name[queue]
        return by_name.get(DEFAULT_QUEUE, JobQueueConfig().concurrency)

    def serve_queue(self, name: str) -> None:
        """Claim jobs of ``name`` on this node too (idempotent; starts its worker if running)."""
        if name in self._queues:
            return
        queue = _Queue(name, self.concurrency(name))
        self._queues[name] = queue
        if self._nursery is not None and not self._stopping and self.config.enabled:
            self._start_worker(queue)

    @property
    def queues(self) -> list[str]:
        return list(self._queues)

    @property
    def running(self) -> int:
        """Handlers running on this node now (outcomes being recorded not included)."""
        return sum(1 for claim in self._claims.values() if not claim.handler_done)

    # -- enqueue ---------------------------------------------------------------------------------

    @overload
    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        run_at: datetime | None = None,
        delay_s: float | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
    ) -> JobRecord: ...

    @overload
    async def enqueue(
        self,
        kind: JobType[P],
        payload: P,
        *,
        queue: str = DEFAULT_QUEUE,
        run_at: datetime | None = None,
        delay_s: float | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
    ) -> JobRecord: ...

    async def enqueue(
        self,
        kind: Any,
        payload: Any = None,
        *,
        queue: str = DEFAULT_QUEUE,
        run_at: datetime | None = None,
        delay_s: float | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
    ) -> JobRecord:
        """Create a job (or find the one holding ``dedupe_key``) and return its record.

        ``kind`` is a name with a dict payload, or a ``JobType`` with a value of
        its payload class (stored as its ``to_json()``).

        ``run_at`` or ``delay_s`` schedules it later; ``max_attempts`` defaults to
        ``jobs.max_attempts``. The queue is served by this runner from now on.

        Raises:
            ValidationFailed: (field ``payload``) the payload nests more than
                ``protocol.MAX_STORED_JSON_DEPTH`` levels, or cannot be encoded as
                JSON: nothing is stored, since a job list could not be answered.
        """
        if isinstance(kind, JobType):
            payload = kind.encode(payload)
            kind = kind.kind
        if not kind or len(kind) > MAX_KIND_CHARS:
            raise ValueError(f"job kind must be 1 to {MAX_KIND_CHARS} characters, got {kind!r}")
        payload = dict(payload or {})
        if json_depth_path(payload, MAX_STORED_JSON_DEPTH) is not None:
            raise ValidationFailed("payload", f"nests more than {MAX_STORED_JSON_DEPTH} levels of arrays and objects")
        encode_json(payload, "payload")
        now = self.clock.now()
        if delay_s is not None:
            run_at = now + timedelta(seconds=delay_s)
        job, created = await self._store.enqueue_job(
            queue=queue,
            kind=kind,
            payload=payload,
            now=now,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts if max_attempts is not None else self.config.max_attempts,
            dedupe_key=dedupe_key,
        )
        if created:
            JOBS_ENQUEUED.labels(kind).inc()
            log.debug("job %s (%s) enqueued on %s", job.id, kind, queue)
        else:
            log.debug("job %s (%s) already holds dedupe key %s", job.id, kind, dedupe_key)
        self.serve_queue(queue)
        self._queues[queue].wake()
        return job

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[JobRecord]:
        """``enqueue`` of many jobs in one store statement and one commit; the
        records in order (an existing job for a spec whose ``dedupe_key`` is taken).

        Each spec is checked as ``enqueue`` checks its payload; ``max_attempts``
        is the spec's. The queues are served by this runner from now on.

        Raises:
            ValidationFailed: (field ``payload``) a payload nests too deep or is
                not JSON: nothing of the batch is stored.
        """
        for spec in specs:
            if not spec.kind or len(spec.kind) > MAX_KIND_CHARS:
                raise ValueError(f"job kind must be 1 to {MAX_KIND_CHARS} characters, got {spec.kind!r}")
            if json_depth_path(spec.payload, MAX_STORED_JSON_DEPTH) is not None:
                raise ValidationFailed("payload", f"nests more than {MAX_STORED_JSON_DEPTH} levels of arrays and objects")
            encode_json(spec.payload, "payload")
        if not specs:
            return []
        results = await self._store.enqueue_jobs(specs, now=self.clock.now())
        for job, created in results:
            if created:
                JOBS_ENQUEUED.labels(job.kind).inc()
        for queue in dict.fromkeys(spec.queue for spec in specs):
            self.serve_queue(queue)
            self._queues[queue].wake()
        log.debug("%d job(s) enqueued, %d new", len(results), sum(created for _, created in results))
        return [job for job, _ in results]

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[JobRunner] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the queues until drained or cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.config.enabled:
                    for queue in self._queues.values():
                        self._start_worker(queue)
                    nursery.start_soon(self._renew_leases)
                    nursery.start_soon(self._listen_for_work)
                    nursery.start_soon(self._record_completions)
                nursery.start_soon(self._refresh_gauges)
                log.info(
                    "job runner %s serving %s (lease %.1f s)",
                    self.owner,
                    ", ".join(f"{q.name} ({q.concurrency} at once)" for q in self._queues.values())
                    if self.config.enabled
                    else "nothing (jobs.enabled is false)",
                    self.config.lease_s,
                )
                task_status.started(self)
                await self._drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._stopping = True
            if self._claims:
                with trio.CancelScope(shield=True), trio.move_on_after(self._release_timeout_s):
                    await self._release_all()

    async def drain(self, grace_s: float) -> None:
        """Stop claiming, give running jobs ``grace_s`` to finish, cancel and release the rest.

        Jobs claimed but not finished go back to ``queued`` at once (``store.release_jobs``),
        without using up an attempt, for another node to run. ``run`` returns afterwards.
        If the drain itself is cancelled (the daemon's own grace period ended first),
        ``run`` releases the claims as it is cancelled.
        """
        if self._drained.is_set():
            return
        self._stopping = True
        for queue in self._queues.values():
            queue.wake()
        running = self.running
        if running:
            log.info("job runner %s draining: %d job(s) running, grace %.1f s", self.owner, running, grace_s)
        with trio.move_on_after(grace_s):
            while self._job_tasks:
                await self._job_exit.wait()
        for claim in self._claims.values():
            if not claim.handler_done:
                log.info("job %s (%s) cancelled by the drain; releasing it", claim.job.id, claim.job.kind)
                claim.scope.cancel()
        # Cancelled handlers unwind promptly; outcomes still being recorded get a bounded wait.
        with trio.move_on_after(self._release_timeout_s):
            while self._job_tasks:
                await self._job_exit.wait()
        await self._release_all()
        self._drained.set()

    # -- internals -------------------------------------------------------------------------------

    def _start_worker(self, queue: _Queue) -> None:
        assert self._nursery is not None
        if not queue.started:
            queue.started = True
            self._nursery.start_soon(self._queue_worker, queue)

    async def _queue_worker(self, queue: _Queue) -> None:
        poll_s = self.config.poll_s
        failures = 0
        while not self._stopping:
            queue.kick = trio.Event()  # before claiming, so that a wake-up during the claim is kept
            free = queue.concurrency - queue.running
            if queue.more and 0 < free < queue.claim_batch:
                # A backlog is known but only a few slots are free: let a few more handlers
                # finish so that one claim fills them all (one store write instead of many).
                await trio.sleep(CLAIM_GATHER_S)
                free = queue.concurrency - queue.running
            timeout = poll_s
            if free > 0:
                try:
                    jobs = await self._store.claim_jobs(
                        queue=queue.name, limit=free, owner=self.owner, lease_s=self.config.lease_s, now=self.clock.now()
                    )
                    failures = 0
                except Exception as exc:
                    failures += 1
                    log.error("queue %s: claiming failed (%s); retrying", queue.name, exc, exc_info=failures == 1)
                    await trio.sleep(min(poll_s, 0.5 * 2 ** min(failures, 6)))
                    continue
                if self._stopping:
                    # A drain began during the claim: hand these back untouched.
                    await self._release_unstarted(jobs)
                    break
                for job in jobs:
                    self._start_job(queue, job)
                queue.more = len(jobs) == free
                if not queue.more:
                    timeout = await self._idle_timeout(queue, poll_s)
            else:
                queue.more = True
            with trio.move_on_after(timeout):
                await queue.kick.wait()

    async def _idle_timeout(self, queue: _Queue, poll_s: float) -> float:
        """Sleep until the next scheduled job of this queue, but no longer than the poll."""
        try:
            next_time = await self._store.next_job_time(queues=[queue.name])
        except Exception as exc:
            log.warning("queue %s: next_job_time failed (%s)", queue.name, exc)
            return poll_s
        if next_time is None:
            return poll_s
        wait = (next_time - self.clock.now()).total_seconds()
        # A due job another runner holds must not turn this into a busy loop.
        return min(poll_s, max(wait, 0.01))

    async def _listen_for_work(self) -> None:
        """Wake every queue worker when the store reports new work."""
        while True:
            try:
                await self._store.wait_for_jobs(self.config.poll_s)
            except Exception as exc:
                log.warning("waiting for new jobs failed (%s); relying on the poll", exc)
                await trio.sleep(self.config.poll_s)
                continue
            for queue in self._queues.values():
                queue.wake()
            # Every enqueue on every node notifies: let a burst of them share one more claim per
            # queue (at the end of the window) instead of costing each worker a claim per job.
            await trio.sleep(WAKE_COALESCE_S)
            # No checkpoint between this and the next wait, so no wake-up falls in between.
            for queue in self._queues.values():
                queue.wake()

    def _start_job(self, queue: _Queue, job: JobRecord) -> None:
        assert self._nursery is not None
        claim = _Claim(job, queue, trio.CancelScope())
        self._claims[job.id] = claim
        queue.running += 1
        self._job_tasks += 1
        JOBS_RUNNING.labels(queue.name).inc()
        self._nursery.start_soon(self._run_job, claim)

    async def _run_job(self, claim: _Claim) -> None:
        with logs.bind(job=claim.job.id):
            await self._run_job_logged(claim)

    async def _run_job_logged(self, claim: _Claim) -> None:
        job = claim.job
        queue = claim.queue
        outcome: str | None = None
        error: BaseException | None = None
        ctx: JobContext | None = None
        started = trio.current_time()
        try:
            kind = self._kinds.get(job.kind)
            with claim.scope:
                try:
                    if kind is None:
                        raise DoNotRetry(f"unknown job kind {job.kind!r} (no handler on node {self.node})")
                    ctx = JobContext(
                        job=job,
                        payload=dict(job.payload or {}),
                        attempt=job.attempts,
                        clock=self.clock,
                        cancel_scope=claim.scope,
                        store=self._store,
                        runner=self,
                    )
                    log.debug("job %s (%s) attempt %d/%d starts", job.id, job.kind, job.attempts, job.max_attempts)
                    if kind.timeout_s is not None:
                        with trio.fail_after(kind.timeout_s):
                            await kind.handler(ctx)
                    else:
                        await kind.handler(ctx)
                    outcome = "succeeded"
                except Exception as exc:
                    outcome = "error"
                    error = exc
            claim.handler_done = True
            JOB_DURATION.labels(job.kind).observe(trio.current_time() - started)
            if outcome is None:
                # Cancelled by a lost lease or the drain: record nothing.
                return
            await self._record(claim, error, [] if ctx is None else ctx.attempts_with_completion)
        finally:
            # The slot stays taken until the outcome is recorded: a slow store then slows
            # claiming down instead of piling up claimed jobs.
            claim.handler_done = True
            self._slot_free(queue)
            self._job_tasks -= 1
            self._job_exit.set()
            self._job_exit = trio.Event()

    def _slot_free(self, queue: _Queue) -> None:
        queue.running -= 1
        JOBS_RUNNING.labels(queue.name).dec()
        if queue.more:
            queue.wake()

    async def _record(self, claim: _Claim, error: BaseException | None, attempts: list[WebhookAttempt]) -> None:
        job = claim.job
        now = self.clock.now()
        try:
            if error is None:
                if await self._complete(job.id, attempts):
                    JOB_OUTCOMES.labels(job.kind, "succeeded").inc()
                    log.debug("job %s (%s) succeeded", job.id, job.kind)
                else:
                    JOB_OUTCOMES.labels(job.kind, "lost").inc()
                    log.warning("job %s (%s) succeeded but its lease was lost; another run may follow", job.id, job.kind)
                self._claims.pop(job.id, None)
                return
            retry_at, final_status, text = self._failure(job, error, now)
            record = await self._store.fail_job(
                job_id=job.id, owner=self.owner, error=text, now=now, retry_at=retry_at, final_status=final_status
            )
            self._claims.pop(job.id, None)
        except Exception as exc:
            # No longer renewed, the lease runs out and the job runs again (here or elsewhere).
            self._claims.pop(job.id, None)
            log.error("job %s (%s): recording the outcome failed, it will run again: %s", job.id, job.kind, exc)
            return
        if record is None:
            JOB_OUTCOMES.labels(job.kind, "lost").inc()
            log.warning("job %s (%s) failed but its lease was lost: %s", job.id, job.kind, text)
        elif record.status == "queued":
            JOB_OUTCOMES.labels(job.kind, "retried").inc()
            claim.queue.wake()  # its worker may be asleep until later than retry_at
            log.info(
                "job %s (%s) attempt %d/%d failed, retry at %s: %s",
                job.id, job.kind, job.attempts, job.max_attempts, retry_at, text,
            )
        else:
            JOB_OUTCOMES.labels(job.kind, record.status).inc()
            log.warning("job %s (%s) is %s after attempt %d: %s", job.id, job.kind, record.status, job.attempts, text)
            if record.status == "dead":
                await self._report_dead(record, text)

    def on_dead(self, hook: Callable[[JobRecord, str], Awaitable[None]]) -> None:
        """Call ``hook(job, error)`` after a job of this node ends ``dead`` (webhooks' ``job.dead``)."""
        self._dead_hooks.append(hook)

    async def _report_dead(self, job: JobRecord, text: str) -> None:
        for hook in self._dead_hooks:
            try:
                await hook(job, text)
            except Exception as exc:  # a report must not change the job's outcome
                log.error("job %s (%s): reporting it dead failed: %s", job.id, job.kind, exc)

    async def _complete(self, job_id: str, attempts: list[WebhookAttempt]) -> bool:
        """Record a success together with the others that finish meanwhile (one
        statement, one commit, for all of them; with ``attempts``, theirs in the
        same transaction); True once committed, False if the lease was lost.
        Raises what the store raised."""
        completion = _Completion(job_id, attempts)
        self._completions.append(completion)
        self._completions_wanted.set()
        await completion.done.wait()
        if completion.error is not None:
            raise completion.error
        return completion.completed

    async def _record_completions(self) -> None:
        """Record the successes waiting in ``_completions``, as many as there are
        (up to ``COMPLETE_BATCH``) per store statement: successes that come
        while one statement runs go together in the next, so nothing waits for a
        timer and a busy runner writes once for many jobs."""
        while True:
            await self._completions_wanted.wait()
            self._completions_wanted = trio.Event()
            while self._completions:
                batch = self._completions[:COMPLETE_BATCH]
                del self._completions[:COMPLETE_BATCH]
                attempts = [a for c in batch for a in c.attempts]
                try:
                    if attempts:
                        completed = await self._store.complete_jobs_with_attempts(
                            job_ids=[c.job_id for c in batch], owner=self.owner, now=self.clock.now(),
                            attempts=attempts,
                        )
                    else:
                        completed = await self._store.complete_jobs(
                            job_ids=[c.job_id for c in batch], owner=self.owner, now=self.clock.now()
                        )
                except Exception as exc:
                    for completion in batch:
                        completion.error = exc
                        completion.done.set()
                    continue
                for completion in batch:
                    completion.completed = completion.job_id in completed
                    completion.done.set()

    def _failure(self, job: JobRecord, error: BaseException, now: datetime) -> tuple[datetime | None, str, str]:
        """(retry_at, final_status, error text) for a handler's exception."""
        retry_after = _find(error, RetryAfter)
        do_not_retry = _find(error, DoNotRetry)
        if do_not_retry is not None:
            return None, "dead" if do_not_retry.dead else "failed", _clip(f"DoNotRetry: {do_not_retry.reason}")
        if isinstance(error, trio.TooSlowError):
            text = "timed out"
        elif retry_after is not None:
            text = f"RetryAfter({retry_after.seconds:g})" + (f": {retry_after.reason}" if retry_after.reason else "")
        else:
            text = f"{type(error).__name__}: {error}"
            log.debug("job %s (%s) raised", job.id, job.kind, exc_info=error)
        text = _clip(text)
        if job.attempts >= job.max_attempts:
            return None, "dead", text
        if retry_after is not None:
            delay = retry_after.seconds
        else:
            delay = backoff_delay(
                job.attempts, base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s, rng=self._rng
            )
        return now + timedelta(seconds=delay), "dead", text

    async def _renew_leases(self) -> None:
        """Renew every running job's lease each third of the lease; cancel jobs whose lease is lost."""
        lease_s = self.config.lease_s
        while True:
            await trio.sleep(lease_s / 3)
            ids = [job_id for job_id, claim in self._claims.items() if not claim.handler_done]
            if not ids:
                continue
            try:
                renewed = await self._store.renew_leases(
                    job_ids=ids, owner=self.owner, lease_s=lease_s, now=self.clock.now()
                )
            except Exception as exc:
                log.error("renewing %d lease(s) failed (%s); jobs %s may run elsewhere", len(ids), exc, ", ".join(ids[:5]))
                continue
            for job_id in ids:
                claim = self._claims.get(job_id)
                if job_id in renewed or claim is None or claim.handler_done:
                    continue
                claim.lease_lost = True
                self._claims.pop(job_id, None)
                JOB_OUTCOMES.labels(claim.job.kind, "lost").inc()
                log.warning("job %s (%s): lease lost, cancelling its handler", job_id, claim.job.kind)
                claim.scope.cancel()

    async def _release_unstarted(self, jobs: list[JobRecord]) -> None:
        if not jobs:
            return
        try:
            await self._store.release_jobs(owner=self.owner, job_ids=[j.id for j in jobs], now=self.clock.now())
            for job in jobs:
                log.info("job %s (%s) released unstarted (draining)", job.id, job.kind)
        except Exception as exc:
            log.error("releasing jobs %s failed (%s); their leases will expire", ", ".join(j.id for j in jobs), exc)

    async def _release_all(self) -> None:
        claims = [claim for claim in self._claims.values() if not claim.lease_lost]
        if not claims:
            return
        ids = [claim.job.id for claim in claims]
        try:
            await self._store.release_jobs(owner=self.owner, job_ids=ids, now=self.clock.now())
        except Exception as exc:
            log.error("releasing jobs %s failed (%s); their leases will expire", ", ".join(ids), exc)
            return
        for claim in claims:
            self._claims.pop(claim.job.id, None)
            JOB_OUTCOMES.labels(claim.job.kind, "released").inc()
            log.info("job %s (%s) released for another node", claim.job.id, claim.job.kind)

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except Exception as exc:
                log.warning("refreshing job gauges failed: %s", exc)
            await trio.sleep(self._stats_interval_s)

    async def refresh_gauges(self) -> None:
        """Set the store-wide gauges (jobs by kind and status, queue depth, oldest due job) now."""
        stats = await self._store.job_stats()
        seen: set[tuple[str, str]] = set()
        for kind, status, count in stats:
            JOBS_BY_STATUS.labels(kind, status).set(count)
            seen.add((kind, status))
        for kind, status in self._status_labels - seen:
            JOBS_BY_STATUS.labels(kind, status).set(0)  # none left of this kind and status
        self._status_labels |= seen
        queues = {name: (0, 0.0) for name in (*self._queue_labels, *self._queues)}
        for queue, depth, age in await self._store.queue_stats(self.clock.now()):
            queues[queue] = (depth, age or 0.0)
        for queue, (depth, age) in queues.items():
            QUEUE_DEPTH.labels(queue, "cluster").set(depth)
            OLDEST_QUEUED_AGE.labels(queue, "cluster").set(age)
        self._queue_labels = set(queues)


def _find(error: BaseException, kind: type[Any]) -> Any:
    """``error`` itself or the first leaf of that type in an exception group."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
