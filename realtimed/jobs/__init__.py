"""Persistent jobs: the runner, cron, and the built-in kinds.

The daemon builds them once the store is running::

    runner = JobRunner(store, config=cfg.jobs, clock=clock, node=cfg.server.node_id)
    register_builtin_kinds(runner, retention=lambda: services.config.retention)
    await nursery.start(runner.run)
    cron = CronScheduler.from_config(store, cfg, clock=clock, runner=runner)
    await nursery.start(cron.run)
    ...
    await runner.drain(cfg.shutdown.grace_s)   # on SIGTERM

Handlers are ``async def handler(ctx: JobContext) -> None``, or, for a kind
registered with a ``JobType`` (``realtimed.jobs.payload``), ``async def
handler(ctx: JobContext, payload: P) -> None`` with the decoded payload; they
raise ``RetryAfter(seconds)`` to come back later or ``DoNotRetry(reason)`` to
fail for good.
"""

from __future__ import annotations

from realtimed.jobs.builtin import builtin_cron_entries, register_builtin_kinds
from realtimed.jobs.cron import CronEntry, CronScheduler, cron_dedupe_key, merge_entries
from realtimed.jobs.payload import JobPayload, JobType, PayloadError
from realtimed.jobs.runner import (
    DEFAULT_QUEUE,
    DoNotRetry,
    Handler,
    JobContext,
    JobKind,
    JobRunner,
    RetryAfter,
    TypedHandler,
    backoff_delay,
)

__all__ = [
    "DEFAULT_QUEUE",
    "CronEntry",
    "CronScheduler",
    "DoNotRetry",
    "Handler",
    "JobContext",
    "JobKind",
    "JobPayload",
    "JobRunner",
    "JobType",
    "PayloadError",
    "RetryAfter",
    "TypedHandler",
    "backoff_delay",
    "builtin_cron_entries",
    "cron_dedupe_key",
    "merge_entries",
    "register_builtin_kinds",
]
