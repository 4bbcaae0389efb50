"""The webhook service: which endpoints want an event, the deliveries, the attempts.

An event becomes one ``webhook.deliver`` job per endpoint that wants it (enabled,
not disabled after failures, and its ``events`` empty or naming the event). Where
the event reports a store write, its jobs go into that write's transaction:
``specs`` gives the ``JobSpec`` values a caller hands to the store
(``append_message(jobs=...)``). Events that are no store write (presence, room
subscriptions, a job's end) are queued right after they happen (``emit``).

Endpoints: those of ``[[webhooks.endpoints]]`` are written to the store at start
and after each reload (``source = "config"``, replacing the previous ones);
those made through the server API (``source = "api"``) live only in the store.
Each node keeps the list in memory, re-read after a change through this node, and
when an event comes while the list is older than ``webhooks.refresh_s`` (so an
endpoint made through another node is used here from then on; an idle node reads
nothing).

Resource handling: ``run`` owns the task that re-reads the endpoints, the task
that writes the failed attempts (those made at the same time go in one store
call; a successful attempt is stored by the runner in the transaction that
completes its job, with the other completions of the moment), and
the outbound connections (``Outbound``: the task that closes idle ones after
``webhooks.keepalive_s``), all closed when it ends.

Error handling: an attempt's failure is recorded (status, error, latency, a
bounded excerpt of the body) and the job retried with backoff
(``webhooks.backoff_base_s`` doubling to ``webhooks.backoff_max_s``, or the
receiver's ``Retry-After`` on 429 and 503, in seconds or as an HTTP date) until ``webhooks.max_attempts``, when
the runner marks it ``dead``; a refused target fails the job at once. After
``webhooks.disable_after_failures`` consecutive failed attempts the endpoint is
disabled (``realtimed_webhook_endpoints_disabled_total`` and a warning).
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from prometheus_client import Counter, Histogram

from realtimed.clock import WallClock, iso
from realtimed.config import Config, WebhookEndpointConfig
from realtimed.errors import NotFound, Unavailable
from realtimed.jobs.runner import DoNotRetry, JobContext, JobRunner, RetryAfter, backoff_delay
from realtimed.metrics import REGISTRY
from realtimed.outbound.client import AttemptFailed, Outbound, Refused, retry_after_s
from realtimed.outbound.signing import signature_headers
from realtimed.protocol import encode_json
from realtimed.store.base import JobRecord, JobSpec, Store, WebhookAttempt, WebhookEndpoint
from realtimed.webhooks.jobs import WEBHOOK_DELIVER, WebhookDeliver

if TYPE_CHECKING:
    from realtimed.live import Live

__all__ = ["WEBHOOK_ATTEMPTS", "WEBHOOK_ENDPOINTS_DISABLED", "WebhookService"]

log = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS: Final = Counter(
    "realtimed_webhook_attempts",
    "webhook delivery attempts on this node by outcome (ok, http_error, no_response, refused)",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY: Final = Histogram(
    "realtimed_webhook_attempt_seconds",
    "time from sending a webhook attempt to its answer (or failure)",
    buckets=(0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30),
    registry=REGISTRY,
)
WEBHOOK_ENDPOINTS_DISABLED: Final = Counter(
    "realtimed_webhook_endpoints_disabled",
    "webhook endpoints disabled after webhooks.disable_after_failures consecutive failed attempts, by endpoint",
    ["endpoint"],
    registry=REGISTRY,
)
# Retry-After values above this are taken as this (an endpoint cannot park a delivery for days).
_RETRY_AFTER_STATUSES: Final = (429, 503)


def new_webhook_id() -> str:
    """A Standard Webhooks message id: the same for every attempt and replay of a delivery."""
    return "msg_" + secrets.token_urlsafe(18)


@attrs.define(eq=False)
class _Pending:
    attempt: WebhookAttempt
    done: trio.Event = attrs.Factory(trio.Event)
    result: tuple[int, bool] | None = None
    error: str = ""


def config_endpoint(entry: WebhookEndpointConfig, now: datetime) -> WebhookEndpoint:
    """A configured endpoint as the store keeps it."""
    return WebhookEndpoint(
        id=entry.id, source="config", url=entry.url, events=tuple(entry.events), secrets=tuple(entry.secrets),
        enabled=entry.enabled, created_at=now, updated_at=now,
    )


class WebhookService:
    """Endpoints, deliveries and attempts (see the module docstring).

    Args:
        config: the configuration in force (``webhooks``; a reload replaces it).
        store: where endpoints, attempts and the delivery jobs live.
        clock: wall time (signature timestamps, attempt times).
        jobs: the runner that queues and runs ``webhook.deliver``.
    """

    def __init__(self, config: Live[Config], *, store: Store, clock: WallClock, jobs: JobRunner) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self.jobs = jobs
        self.outbound = Outbound(config.value.webhooks)
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._rng = random.Random()
        self._resync = False
        self._wake = trio.Event()
        self._refreshed_at = -math.inf
        # Attempts waiting to be written, together, by the recording task of ``run``.
        self._pending: list[_Pending] = []
        self._record_wanted = trio.Event()
        self._recording = False

    @property
    def cfg(self) -> Config:
        return self._config.value

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the configured endpoints to the store, load them all, then refresh until cancelled."""
        try:
            await self._sync_config()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._record_loop)
                nursery.start_soon(self.outbound.run)
                task_status.started()
                await self._refresh_loop()
        finally:
            self._recording = False
            with trio.CancelScope(shield=True):
                await self.outbound.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                if self._resync:
                    self._resync = False
                    await self._sync_config()
                else:
                    await self.refresh()
            except Exception as exc:  # the store is down: keep the list we have, try again later
                log.warning("webhooks: could not re-read the endpoints: %s", exc)

    async def _record_loop(self) -> None:
        """Write the attempts waiting, all in one store call; those that come meanwhile go in the next."""
        self._recording = True
        while True:
            await self._record_wanted.wait()
            self._record_wanted = trio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                results = await self.store.record_webhook_attempts(
                    attempts=[p.attempt for p in batch], disable_after=self.cfg.webhooks.disable_after_failures
                )
            except Exception as exc:
                for p in batch:
                    p.error = f"{type(exc).__name__}: {exc}"
            else:
                for p, result in zip(batch, results, strict=True):
                    p.result = result
            finally:
                for p in batch:
                    p.done.set()

    async def _record(self, attempt: WebhookAttempt) -> tuple[int, bool]:
        """Record one attempt (with others waiting at the same time, while ``run`` runs)."""
        if not self._recording:
            disable_after = self.cfg.webhooks.disable_after_failures
            return (await self.store.record_webhook_attempts(attempts=[attempt], disable_after=disable_after))[0]
        pending = _Pending(attempt)
        self._pending.append(pending)
        self._record_wanted.set()
        await pending.done.wait()
        if pending.result is None:
            raise Unavailable(f"the attempt could not be recorded: {pending.error}")
        return pending.result

    def reload(self, new: Config) -> None:
        """After a reload: the configured endpoints are replaced (in the run loop)."""
        self.outbound.configure(new.webhooks)
        self._resync = True
        self._wake.set()

    async def _sync_config(self) -> None:
        now = self.clock.now()
        await self.store.sync_config_webhooks(
            endpoints=[config_endpoint(e, now) for e in self.cfg.webhooks.endpoints], now=now
        )
        await self.refresh()

    async def refresh(self) -> None:
        """Re-read every endpoint from the store."""
        self._refreshed_at = trio.current_time()
        self._endpoints = {ep.id: ep for ep in await self.store.list_webhook_endpoints()}

    def endpoints(self) -> list[WebhookEndpoint]:
        return list(self._endpoints.values())

    # -- events ---------------------------------------------------------------------------------

    def specs(self, event: str, data: Mapping[str, Any]) -> list[JobSpec]:
        """The deliveries of ``event`` for a store write's transaction (one per wanting endpoint)."""
        if trio.current_time() - self._refreshed_at > self.cfg.webhooks.refresh_s:
            self._wake.set()  # re-read in the background; this event goes by the list as it is
        endpoints = [ep for ep in self._endpoints.values() if ep.wants(event)]
        if not endpoints:
            return []
        now = self.clock.now()
        cfg = self.cfg.webhooks
        return [
            JobSpec(
                queue=cfg.queue,
                kind=WEBHOOK_DELIVER.kind,
                payload=WEBHOOK_DELIVER.encode(
                    WebhookDeliver(
                        endpoint_id=ep.id, event=event, webhook_id=new_webhook_id(), created_at=now, data=dict(data)
                    )
                ),
                max_attempts=cfg.max_attempts,
            )
            for ep in endpoints
        ]

    async def emit(self, event: str, data: Mapping[str, Any]) -> int:
        """Queue ``event`` for every endpoint that wants it, now; returns how many.

        For events that are no store write. A store that cannot be reached is
        logged and the event dropped: the fact it reports has happened already.
        """
        specs = self.specs(event, data)
        for spec in specs:
            try:
                await self.jobs.enqueue(
                    spec.kind, spec.payload, queue=spec.queue, max_attempts=spec.max_attempts
                )
            except Exception as exc:
                log.error("webhooks: %s for endpoint %s not queued: %s", event, spec.payload.get("endpoint_id"), exc)
        return len(specs)

    async def on_presence(self, user_id: str, status: str) -> None:
        """``presence.online`` or ``presence.offline`` (``status``) for ``user_id``, seen by this node."""
        await self.emit(f"presence.{status}", {"user_id": user_id, "at": iso(self.clock.now())})

    async def on_job_dead(self, job: JobRecord, error: str) -> None:
        """``job.dead`` for a job that ended dead (a webhook delivery's own end is not reported)."""
        if job.kind == WEBHOOK_DELIVER.kind:
            return
        await self.emit(
            "job.dead",
            {"job_id": job.id, "kind": job.kind, "queue": job.queue, "attempts": job.attempts, "last_error": error},
        )

    async def replay(self, delivery_id: str) -> JobRecord:
        """A new delivery of a stored one, with the same ``webhook-id`` and body.

        Raises:
            NotFound: no such delivery.
        """
        job = await self.store.get_job(delivery_id)
        if job is None or job.kind != WEBHOOK_DELIVER.kind:
            raise NotFound(f"no webhook delivery {delivery_id!r}")
        return await self.jobs.enqueue(
            WEBHOOK_DELIVER.kind, dict(job.payload), queue=job.queue, max_attempts=self.cfg.webhooks.max_attempts
        )

    # -- deliveries -----------------------------------------------------------------------------

    def register_jobs(self, runner: JobRunner) -> None:
        # A handler's own bound: the request's, plus the store writes around it.
        runner.register(WEBHOOK_DELIVER, self._job_deliver, timeout_s=self.cfg.webhooks.timeout_s + 30)

    async def _endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        ep = self._endpoints.get(endpoint_id)
        if ep is None:
            ep = await self.store.get_webhook_endpoint(endpoint_id)
            if ep is not None:
                self._endpoints[ep.id] = ep
        return ep

    async def _job_deliver(self, ctx: JobContext, p: WebhookDeliver) -> None:
        cfg = self.cfg.webhooks
        ep = await self._endpoint(p.endpoint_id)
        if ep is None:
            raise DoNotRetry(f"webhook endpoint {p.endpoint_id!r} no longer exists")
        if not ep.active:
            raise DoNotRetry(f"webhook endpoint {ep.id!r} is disabled")
        body = encode_json({"type": p.event, "timestamp": iso(p.created_at), "data": p.event_data()})
        timestamp = int(ctx.clock.now().timestamp())
        headers = signature_headers(ep.secrets, webhook_id=p.webhook_id, timestamp=timestamp, body=body)
        status: int | None = None
        error: str | None = None
        excerpt = ""
        retry_after: float | None = None
        final = False
        started = time.perf_counter()
        try:
            response = await self.outbound.post(ep.url, headers=headers, body=body)
        except Refused as exc:
            error, final, outcome = f"refused: {exc}", True, "refused"
        except AttemptFailed as exc:
            error, outcome = str(exc), "no_response"
        else:
            status = response.status
            excerpt = response.body.decode("utf-8", "replace")[: cfg.excerpt_chars]
            if 200 <= status < 300:
                outcome = "ok"
            else:
                error, outcome = f"HTTP {status}", "http_error"
                if status in _RETRY_AFTER_STATUSES:
                    retry_after = retry_after_s(response.headers, ctx.clock.now())
        latency = time.perf_counter() - started
        WEBHOOK_ATTEMPTS.labels(outcome).inc()
        WEBHOOK_LATENCY.observe(latency)
        attempt = WebhookAttempt(
            delivery_id=ctx.job_id, webhook_id=p.webhook_id, endpoint_id=ep.id, event=p.event, attempt=ctx.attempt,
            status=status, error=error, latency_ms=latency * 1000, response=excerpt, at=ctx.clock.now(),
        )
        if error is None:
            # Stored with the job's completion, in its transaction (the runner batches them).
            ctx.attempts_with_completion.append(attempt)
            log.debug("job %s: %s %s delivered to %s (%s)", ctx.job_id, p.event, p.webhook_id, ep.id, status)
            return
        failures, disabled = await self._record(attempt)
        if disabled:
            WEBHOOK_ENDPOINTS_DISABLED.labels(ep.id).inc()
            log.warning(
                "webhook endpoint %s disabled after %d consecutive failed attempts (last: %s); enable it again "
                "through the server API", ep.id, failures, error,
            )
            await self.refresh()
        log.info("job %s: %s %s to %s attempt %d failed: %s", ctx.job_id, p.event, p.webhook_id, ep.id, ctx.attempt, error)
        if final:
            raise DoNotRetry(error)
        delay = retry_after if retry_after is not None else backoff_delay(
            ctx.attempt, base_s=cfg.backoff_base_s, max_s=cfg.backoff_max_s, rng=self._rng
        )
        raise RetryAfter(min(delay, cfg.backoff_max_s), error)
