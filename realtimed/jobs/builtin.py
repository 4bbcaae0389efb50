"""Built-in job kinds and their cron entries.

Kinds (``register_builtin_kinds``):

==========================  ==================================================================
``retention.notifications``  delete notifications read more than ``retention.read_notifications_days`` ago,
                             those past their ``expires_at``, and (when
                             ``retention.unread_notifications_days`` is not 0) unread ones older than that,
                             and delivery log entries older than ``retention.delivery_log_days``
``retention.jobs``           delete succeeded, failed, dead and cancelled jobs finished more than
                             ``retention.finished_jobs_days`` ago
``retention.messages``       purge the body and media of messages deleted more than
                             ``retention.deleted_messages_days`` ago (the row and its ``seq`` stay)
``devices.stale``            deactivate device tokens unseen for ``retention.stale_device_days``
``retention.activities``     remove from each feed the activities older than its namespace keeps them
                             (``[[feeds.retention]]``, else ``feeds.keep_s``; the longest matching prefix
                             wins); an activity left in no feed is deleted
``noop``                     does nothing (benchmarks, health checks)
==========================  ==================================================================

A retention job's payload (``RetentionPayload``) may carry ``{"days": N}`` to
override the configured age for that run (of ``retention.notifications``: the
read notifications' age; the delivery log keeps its own); anything else in it is ignored. A
``days`` that is not a non-negative number fails the job at once. The ages are
read from the configuration when the job runs, so a reload (SIGHUP) applies to
the next run. ``noop`` ignores its payload (``NoopPayload``).

Cron entries (``builtin_cron_entries``), daily, UTC, on the ``default`` queue;
an operator's ``[[cron]]`` entry with the same name replaces one (with another
schedule, or with a schedule that never fires in practice, to move or silence it):

==========================  ============
name (and kind)              schedule
==========================  ============
``retention.notifications``  ``10 3 * * *``
``retention.jobs``           ``20 3 * * *``
``retention.messages``       ``30 3 * * *``
``devices.stale``            ``40 3 * * *``
``retention.activities``     ``50 3 * * *``
==========================  ============
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from realtimed.clock import iso
from realtimed.config import CronConfig, FeedsConfig, RetentionConfig
from realtimed.jobs.payload import JobType, opt_number
from realtimed.jobs.runner import JobContext, JobRunner

__all__ = [
    "BUILTIN_CRON_SCHEDULES",
    "DEVICES_STALE",
    "KIND_DEVICES_STALE",
    "KIND_NOOP",
    "KIND_RETENTION_ACTIVITIES",
    "KIND_RETENTION_JOBS",
    "KIND_RETENTION_MESSAGES",
    "KIND_RETENTION_NOTIFICATIONS",
    "NOOP",
    "RETENTION_ACTIVITIES",
    "RETENTION_JOBS",
    "RETENTION_MESSAGES",
    "RETENTION_NOTIFICATIONS",
    "NoopPayload",
    "RetentionPayload",
    "builtin_cron_entries",
    "register_builtin_kinds",
]

log = logging.getLogger(__name__)

KIND_RETENTION_NOTIFICATIONS: Final = "retention.notifications"
KIND_RETENTION_JOBS: Final = "retention.jobs"
KIND_RETENTION_MESSAGES: Final = "retention.messages"
KIND_DEVICES_STALE: Final = "devices.stale"
KIND_RETENTION_ACTIVITIES: Final = "retention.activities"
KIND_NOOP: Final = "noop"



@attrs.frozen
class RetentionPayload:
    """The payload of the retention kinds and ``devices.stale``: an optional age
    in days that replaces the configured one for this run."""

    days: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {} if self.days is None else {"days": self.days}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetentionPayload:
        return cls(days=opt_number(data, "days", minimum=0))


@attrs.frozen
class NoopPayload:
    """``noop`` takes nothing; whatever a benchmark puts in its payload is ignored."""

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NoopPayload:
        return cls()


RETENTION_NOTIFICATIONS: Final = JobType(KIND_RETENTION_NOTIFICATIONS, RetentionPayload)
RETENTION_JOBS: Final = JobType(KIND_RETENTION_JOBS, RetentionPayload)
RETENTION_MESSAGES: Final = JobType(KIND_RETENTION_MESSAGES, RetentionPayload)
DEVICES_STALE: Final = JobType(KIND_DEVICES_STALE, RetentionPayload)
RETENTION_ACTIVITIES: Final = JobType(KIND_RETENTION_ACTIVITIES, RetentionPayload)
NOOP: Final = JobType(KIND_NOOP, NoopPayload)

BUILTIN_CRON_SCHEDULES: Final[dict[str, str]] = {
    KIND_RETENTION_NOTIFICATIONS: "10 3 * * *",
    KIND_RETENTION_JOBS: "20 3 * * *",
    KIND_RETENTION_MESSAGES: "30 3 * * *",
    KIND_DEVICES_STALE: "40 3 * * *",
    KIND_RETENTION_ACTIVITIES: "50 3 * * *",
}

RetentionSource = Callable[[], RetentionConfig]
FeedsSource = Callable[[], FeedsConfig]


def builtin_cron_entries() -> list[CronConfig]:
    """The built-in cron entries, named like their kinds."""
    return [
        CronConfig(name=kind, schedule=schedule, kind=kind, queue="default", timezone="UTC")
        for kind, schedule in BUILTIN_CRON_SCHEDULES.items()
    ]


def _cutoff(ctx: JobContext, payload: RetentionPayload, configured_days: float) -> datetime:
    days = configured_days if payload.days is None else payload.days
    return ctx.clock.now() - timedelta(days=days)


def register_builtin_kinds(
    runner: JobRunner, *, retention: RetentionConfig | RetentionSource, feeds: FeedsConfig | FeedsSource | None = None
) -> None:
    """Register the built-in kinds on ``runner``.

    ``retention`` is the ``[retention]`` section, or a function returning the
    current one (the daemon passes ``lambda: services.config.retention`` so that
    reloads apply); ``feeds`` the same for the ``[feeds]`` section (None: its defaults).
    """
    current: RetentionSource = retention if callable(retention) else (lambda: retention)
    feeds_now: FeedsSource = feeds if callable(feeds) else (lambda: feeds or FeedsConfig())

    async def retention_notifications(ctx: JobContext, payload: RetentionPayload) -> None:
        before = _cutoff(ctx, payload, current().read_notifications_days)
        count = await ctx.store.delete_read_notifications(before=before)
        log.info("job %s: deleted %d notification(s) read before %s", ctx.job_id, count, iso(before))
        now = ctx.clock.now()
        expired = await ctx.store.delete_expired_notifications(now=now)
        log.info("job %s: deleted %d notification(s) expired by %s", ctx.job_id, expired, iso(now))
        unread_days = current().unread_notifications_days
        if unread_days > 0:
            # The payload's days is the read retention's; unread ones keep their own.
            unread_before = now - timedelta(days=unread_days)
            unread = await ctx.store.delete_unread_notifications(before=unread_before)
            log.info(
                "job %s: deleted %d unread notification(s) created before %s", ctx.job_id, unread, iso(unread_before)
            )
        before = now - timedelta(days=current().delivery_log_days)
        count = await ctx.store.delete_delivery_log(before=before)
        log.info("job %s: deleted %d delivery log entries older than %s", ctx.job_id, count, iso(before))

    async def retention_jobs(ctx: JobContext, payload: RetentionPayload) -> None:
        before = _cutoff(ctx, payload, current().finished_jobs_days)
        count = await ctx.store.delete_finished_jobs(before=before)
        log.info("job %s: deleted %d job(s) finished before %s", ctx.job_id, count, iso(before))

    async def retention_messages(ctx: JobContext, payload: RetentionPayload) -> None:
        before = _cutoff(ctx, payload, current().deleted_messages_days)
        count = await ctx.store.purge_deleted_messages(before=before)
        log.info("job %s: purged %d message(s) deleted before %s", ctx.job_id, count, iso(before))

    async def devices_stale(ctx: JobContext, payload: RetentionPayload) -> None:
        before = _cutoff(ctx, payload, current().stale_device_days)
        count = await ctx.store.deactivate_stale_devices(before=before)
        log.info("job %s: deactivated %d device token(s) unseen since %s", ctx.job_id, count, iso(before))

    async def retention_activities(ctx: JobContext, payload: RetentionPayload) -> None:
        cfg = feeds_now()
        rules = [(rule.prefix, rule.keep_s) for rule in cfg.retention]
        if not any(prefix == "" for prefix, _ in rules):
            rules.append(("", cfg.keep_s))
        prefixes = [prefix for prefix, _ in rules]
        now = ctx.clock.now()
        removed = 0
        for prefix, keep_s in rules:
            keep = keep_s if payload.days is None else payload.days * 86400
            if keep <= 0:
                continue  # this namespace keeps its activities
            removed += await ctx.store.delete_feed_activities(
                prefix=prefix, before=now - timedelta(seconds=keep), except_prefixes=prefixes
            )
        log.info("job %s: removed %d activit(ies) from their feeds", ctx.job_id, removed)

    async def noop(ctx: JobContext, payload: NoopPayload) -> None:
        log.debug("job %s: noop", ctx.job_id)

    runner.register(RETENTION_NOTIFICATIONS, retention_notifications)
    runner.register(RETENTION_JOBS, retention_jobs)
    runner.register(RETENTION_MESSAGES, retention_messages)
    runner.register(DEVICES_STALE, devices_stale)
    runner.register(RETENTION_ACTIVITIES, retention_activities)
    runner.register(NOOP, noop)
