"""Cron: ``[[cron]]`` entries enqueue one job per tick, once across every node.

Each entry has a schedule (five cron fields, or six with seconds first), a time
zone, and the job to enqueue (kind, payload, queue; an ``http`` entry gives its
target, path, method and body instead of a payload, ``realtimed.jobs.http``). For every tick the
scheduler of each node asks the store to advance the entry's last tick
(``store.cron_claim_tick``, atomic: only a tick later than the stored one
advances it, and only one caller wins); the winner enqueues the job with the
dedupe key ``cron:<name>:<tick>`` (the tick in RFC 3339 UTC with milliseconds).
So any number of nodes, and a node whose clock steps back, run each tick once.

Missed ticks do not flood: a scheduler only ever considers the latest tick at or
before now, so a node that was down (or a cluster that was) runs the latest
missed tick once when it comes back, and none of the earlier ones.

An entry that has never run (no node ever claimed a tick of it: it was just
added, or the database is new) does what ``jobs.cron_catch_up`` says at start:
``none`` (the default) waits for its next tick, ``last`` runs its latest past
tick once at start. Built-in entries follow the same rule.

Wall time comes from the injected ``WallClock``; the scheduler sleeps with
``trio.sleep`` until the next tick (at most ``max_sleep_s`` at a time, so a wall
clock that steps is noticed), which lets ``trio.testing.MockClock`` drive it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import trio
from croniter import croniter
from prometheus_client import Counter

from realtimed.clock import WallClock, iso
from realtimed.config import HTTP_JOB_KIND, Config, CronCatchUp, CronConfig, JobsConfig
from realtimed.metrics import REGISTRY

if TYPE_CHECKING:
    from realtimed.jobs.runner import JobRunner

__all__ = ["CronEntry", "CronScheduler", "cron_dedupe_key", "merge_entries"]

log = logging.getLogger(__name__)

CRON_TICKS: Final = Counter(
    "realtimed_cron_ticks",
    "cron ticks handled by this node by entry and outcome (enqueued, skipped: another node or an earlier run had it, error)",
    ["entry", "outcome"],
    registry=REGISTRY,
)

_ENQUEUE_TRIES: Final = 5


def cron_dedupe_key(name: str, tick: datetime) -> str:
    """``cron:<name>:<tick ISO>``, the dedupe key of the job of one tick."""
    return f"cron:{name}:{iso(tick)}"


@attrs.frozen
class CronEntry:
    """One validated ``[[cron]]`` entry, able to compute its ticks."""

    config: CronConfig
    zone: ZoneInfo
    seconds: bool

    @classmethod
    def parse(cls, entry: CronConfig) -> CronEntry:
        """Validate ``entry``; raises ValueError naming the problem."""
        if not entry.name:
            raise ValueError("cron entry without a name")
        if not entry.kind:
            raise ValueError(f"cron entry {entry.name!r}: kind is empty")
        fields = entry.schedule.split()
        seconds = len(fields) == 6
        if len(fields) not in (5, 6) or not croniter.is_valid(entry.schedule, second_at_beginning=seconds):
            raise ValueError(f"cron entry {entry.name!r}: not a valid cron schedule: {entry.schedule!r}")
        try:
            zone = ZoneInfo(entry.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"cron entry {entry.name!r}: unknown time zone {entry.timezone!r}") from exc
        return cls(entry, zone, seconds)

    @property
    def name(self) -> str:
        return self.config.name

    def _iter(self, start: datetime) -> Any:
        return croniter(self.config.schedule, start.astimezone(self.zone), second_at_beginning=self.seconds)

    def latest_tick(self, now: datetime) -> datetime:
        """The latest tick at or before ``now`` (UTC)."""
        # croniter's get_prev is strictly before its start; a start just after the
        # whole second makes a tick that falls exactly on ``now`` count.
        start = now.replace(microsecond=0) + timedelta(microseconds=1)
        tick: datetime = self._iter(start).get_prev(datetime)
        return tick.astimezone(UTC)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (UTC)."""
        tick: datetime = self._iter(after).get_next(datetime)
        tick = tick.astimezone(UTC)
        if tick <= after:  # croniter drops sub-second parts of the start
            tick = self._iter(after + timedelta(seconds=1)).get_next(datetime).astimezone(UTC)
        return tick


def merge_entries(configured: Iterable[CronConfig], builtin: Iterable[CronConfig]) -> list[CronConfig]:
    """The operator's entries plus the built-in ones whose name the operator did not use."""
    entries = list(configured)
    names = {entry.name for entry in entries}
    entries.extend(entry for entry in builtin if entry.name not in names)
    return entries


class CronScheduler:
    """Enqueues a job per tick of every cron entry.

    Args:
        store: the started store (``cron_claim_tick``, ``enqueue_job``).
        entries: the entries to schedule (see ``from_config`` for the daemon's set).
        clock: wall time for ticks.
        runner: when given, jobs are enqueued through it (its queues then serve
            the entries' queues and wake at once); else straight into the store.
        max_attempts: attempts of the enqueued jobs when there is no runner.
        attempts_by_kind: attempts of the jobs of these kinds, whether or not there is
            a runner (``http``: ``jobs.http.max_attempts``).
        max_sleep_s: the longest single sleep, so that a stepped wall clock is noticed.
        catch_up: what an entry that has never run does at start (``jobs.cron_catch_up``):
            ``none`` waits for its next tick, ``last`` runs its latest past tick once.

    Resource handling:
        ``run`` owns one task per entry and returns only when cancelled.

    Error handling:
        An invalid entry raises ValueError from the constructor, and so does,
        with a runner, an entry whose kind the runner has not registered (the
        configuration loader refuses those already). A store error
        while claiming a tick is logged and retried with backoff until it works
        or a later tick is due (then that one is claimed instead); a tick that
        was claimed but whose job could not be enqueued after several tries is
        logged as lost.
    """

    def __init__(
        self,
        store: Any,
        entries: Sequence[CronConfig],
        *,
        clock: WallClock,
        runner: JobRunner | None = None,
        max_attempts: int = 5,
        attempts_by_kind: Mapping[str, int] | None = None,
        max_sleep_s: float = 60.0,
        catch_up: CronCatchUp = JobsConfig().cron_catch_up,
    ) -> None:
        if catch_up not in ("none", "last"):
            raise ValueError(f"catch_up must be 'none' or 'last', got {catch_up!r}")
        self._store = store
        self._catch_up = catch_up
        self._clock = clock
        self._runner = runner
        self._max_attempts = max_attempts
        self._attempts_by_kind = dict(attempts_by_kind or {})
        self._max_sleep_s = max_sleep_s
        parsed = [CronEntry.parse(entry) for entry in entries]
        names = [entry.name for entry in parsed]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate cron entry names: {', '.join(duplicates)}")
        self.entries: list[CronEntry] = parsed
        if runner is not None:
            # A job of a kind the runner does not know would end dead at every tick.
            unknown = sorted({e.config.kind for e in parsed} - set(runner.kinds))
            if unknown:
                raise ValueError(f"cron entries name job kinds nothing handles: {', '.join(unknown)}")
            for entry in parsed:
                runner.serve_queue(entry.config.queue)

    @classmethod
    def from_config(
        cls, store: Any, cfg: Config, *, clock: WallClock, runner: JobRunner | None = None, builtin: bool = True
    ) -> CronScheduler:
        """The daemon's scheduler: ``[[cron]]`` plus the built-in entries not overridden by name."""
        from realtimed.jobs.builtin import builtin_cron_entries

        entries = merge_entries(cfg.cron, builtin_cron_entries() if builtin else ())
        return cls(
            store,
            entries,
            clock=clock,
            runner=runner,
            max_attempts=cfg.jobs.max_attempts,
            attempts_by_kind={HTTP_JOB_KIND: cfg.jobs.http.max_attempts},
            catch_up=cfg.jobs.cron_catch_up,
        )

    async def run(self, *, task_status: trio.TaskStatus[CronScheduler] = trio.TASK_STATUS_IGNORED) -> None:
        """Schedule every entry until cancelled."""
        async with trio.open_nursery() as nursery:
            for entry in self.entries:
                nursery.start_soon(self._run_entry, entry)
            if self.entries:
                log.info("cron: %s", ", ".join(f"{e.name} ({e.config.schedule} {e.config.timezone})" for e in self.entries))
            task_status.started(self)

    async def _run_entry(self, entry: CronEntry) -> None:
        last: datetime | None = None
        failures = 0
        while True:
            now = self._clock.now()
            due = entry.latest_tick(now)
            if last is None or due > last:
                try:
                    if last is None and await self._waits_for_next_tick(entry, due):
                        pass  # never ran: ``due`` counts as handled, the next tick is the first
                    else:
                        await self._fire(entry, due)
                except Exception as exc:
                    failures += 1
                    CRON_TICKS.labels(entry.name, "error").inc()
                    log.error("cron %s tick %s: the store failed (%s); retrying", entry.name, iso(due), exc)
                    await trio.sleep(min(self._max_sleep_s, 0.5 * 2 ** min(failures, 7)))
                    continue
                failures = 0
                last = due
            nxt = entry.next_tick(max(now, last))
            delay = (nxt - self._clock.now()).total_seconds()
            await trio.sleep(min(max(delay, 0.0), self._max_sleep_s))

    async def _waits_for_next_tick(self, entry: CronEntry, due: datetime) -> bool:
        """At start: True when ``due`` (the latest past tick) is not to run because
        the entry has never run and ``catch_up`` is ``none``."""
        if self._catch_up == "last":
            return False
        if await self._store.cron_last_tick(name=entry.name) is not None:
            return False  # it ran before: the latest missed tick runs once
        log.info(
            "cron %s: has never run; its first tick is %s (jobs.cron_catch_up = none)",
            entry.name,
            iso(entry.next_tick(due)),
        )
        return True

    async def _fire(self, entry: CronEntry, tick: datetime) -> None:
        name = entry.name
        if not await self._store.cron_claim_tick(name=name, tick=tick):
            CRON_TICKS.labels(name, "skipped").inc()
            log.debug("cron %s tick %s: already handled", name, iso(tick))
            return
        key = cron_dedupe_key(name, tick)
        for attempt in range(1, _ENQUEUE_TRIES + 1):
            try:
                job_id = await self._enqueue(entry, key)
            except Exception as exc:
                if attempt == _ENQUEUE_TRIES:
                    CRON_TICKS.labels(name, "error").inc()
                    log.error("cron %s tick %s: enqueueing failed %d times, tick lost: %s", name, iso(tick), attempt, exc)
                    return
                log.warning("cron %s tick %s: enqueueing failed (%s); retrying", name, iso(tick), exc)
                await trio.sleep(0.5 * 2**attempt)
                continue
            CRON_TICKS.labels(name, "enqueued").inc()
            log.info("cron %s tick %s: job %s (%s) enqueued", name, iso(tick), job_id, entry.config.kind)
            return

    async def _enqueue(self, entry: CronEntry, key: str) -> str:
        from realtimed.jobs.http import cron_payload

        cfg = entry.config
        payload = cron_payload(cfg)  # an http entry's target, path, method and body; else its payload
        attempts = self._attempts_by_kind.get(cfg.kind)
        if self._runner is not None:
            job = await self._runner.enqueue(
                cfg.kind, payload, queue=cfg.queue, dedupe_key=key, max_attempts=attempts
            )
            return str(job.id)
        job, _created = await self._store.enqueue_job(
            queue=cfg.queue,
            kind=cfg.kind,
            payload=payload,
            now=self._clock.now(),
            max_attempts=attempts or self._max_attempts,
            dedupe_key=key,
        )
        return str(job.id)
