"""Webhook endpoints and the attempts of their deliveries in the store.

``WebhookStore`` is the Protocol, ``WebhookEndpoint`` and ``WebhookAttempt``
its records; ``WebhookRules`` holds the rules, written once. A delivery is a
``webhook.deliver`` job (its id is the delivery's id); each attempt to deliver
it is recorded here, with the endpoint's run of consecutive failures in the
same transaction, so that the run is counted once across every node.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

import attrs

from realtimed.clock import iso
from realtimed.errors import Conflict, NotFound
from realtimed.store.values import utc

__all__ = ["WebhookAttempt", "WebhookEndpoint", "WebhookRules", "WebhookSource", "WebhookStore"]

#: Where an endpoint comes from: the configuration file (replaced on reload) or the server API (kept).
WebhookSource = Literal["config", "api"]


@attrs.frozen
class WebhookEndpoint:
    """An endpoint: where events go, which ones, and the secrets that sign them.

    ``events`` empty means every event. ``disabled_at`` is set when the endpoint was
    disabled after ``webhooks.disable_after_failures`` consecutive failed attempts;
    it is cleared by setting ``enabled`` again through the server API, or for a
    configured one by the next start or reload.
    """

    id: str
    source: WebhookSource
    url: str
    events: tuple[str, ...]
    secrets: tuple[str, ...]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    consecutive_failures: int = 0
    disabled_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Deliveries are made to it: enabled and not disabled after failures."""
        return self.enabled and self.disabled_at is None

    def wants(self, event: str) -> bool:
        return self.active and (not self.events or event in self.events)

    def to_wire(self) -> dict[str, Any]:
        """The endpoint as the server API shows it; secrets are never shown."""
        return {
            "id": self.id,
            "source": self.source,
            "url": self.url,
            "events": list(self.events),
            "secrets": len(self.secrets),
            "enabled": self.enabled,
            "consecutive_failures": self.consecutive_failures,
            "disabled_at": iso(self.disabled_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@attrs.frozen
class WebhookAttempt:
    """One attempt at one delivery: the HTTP status (None when no response came),
    the error (None on a 2xx), the latency and a bounded excerpt of the response body."""

    delivery_id: str
    webhook_id: str
    endpoint_id: str
    event: str
    attempt: int
    status: int | None
    error: str | None
    latency_ms: float
    response: str
    at: datetime

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_wire(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "endpoint_id": self.endpoint_id,
            "event": self.event,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "latency_ms": round(self.latency_ms, 3),
            "response": self.response,
            "at": iso(self.at),
        }


class WebhookStore(Protocol):
    """Webhook endpoints and delivery attempts.

    Atomicity: each call is one transaction. ``record_webhook_attempts`` stores
    attempts and moves their endpoints' runs of consecutive failures together
    (a success ends a run), and disables an endpoint in the same transaction
    when its run reaches ``disable_after``.
    """

    async def sync_config_webhooks(self, *, endpoints: Sequence[WebhookEndpoint], now: datetime) -> None:
        """Make the ``config`` endpoints exactly ``endpoints``: others of that source are
        deleted, these are inserted or updated (an unchanged one keeps its failure run;
        a changed one, or one disabled after failures, starts afresh). ``api`` endpoints
        are kept; one whose id a configured endpoint takes is replaced by it."""
        ...

    async def list_webhook_endpoints(self) -> list[WebhookEndpoint]:
        """Every endpoint, by id."""
        ...

    async def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None: ...

    async def put_webhook_endpoint(self, *, endpoint: WebhookEndpoint, create: bool) -> WebhookEndpoint:
        """Create (``create``) or replace an ``api`` endpoint. Replacing keeps its
        ``created_at``; enabling one clears its failure run and ``disabled_at``.

        Raises:
            Conflict: ``create`` and the id is taken, or the id is a ``config`` endpoint's.
            NotFound: not ``create`` and there is no such endpoint.
        """
        ...

    async def delete_webhook_endpoint(self, endpoint_id: str) -> bool:
        """Delete an ``api`` endpoint; False if there is none.

        Raises:
            Conflict: it is a ``config`` endpoint (remove it from the file and reload).
        """
        ...

    async def record_webhook_attempts(
        self, *, attempts: Sequence[WebhookAttempt], disable_after: int
    ) -> list[tuple[int, bool]]:
        """Store ``attempts`` (in their order); per attempt, its endpoint's run of
        consecutive failures after it and whether it disabled the endpoint
        (``disable_after`` > 0 and the run reached it)."""
        ...

    async def complete_jobs_with_attempts(
        self, *, job_ids: Sequence[str], owner: str, now: datetime, attempts: Sequence[WebhookAttempt]
    ) -> set[str]:
        """``complete_jobs`` and the storing of ``attempts`` (successful ones, which
        end their endpoint's run of failures) in one transaction: a delivery's job
        never succeeds without its attempt, nor the reverse. The attempts are
        stored whether or not their job is among the ids completed (a lost lease)."""
        ...

    async def list_webhook_attempts(
        self, *, endpoint_id: str | None = None, delivery_id: str | None = None, limit: int = 50
    ) -> list[WebhookAttempt]:
        """Attempts newest first, of one endpoint or one delivery (or all)."""
        ...


class WebhookRules(abc.ABC):
    """``WebhookStore``'s rules over a backend's primitives."""

    async def sync_config_webhooks(self, *, endpoints: Sequence[WebhookEndpoint], now: datetime) -> None:
        await self._sync_config(list(endpoints), utc(now))

    async def list_webhook_endpoints(self) -> list[WebhookEndpoint]:
        return await self._endpoints(None)

    async def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        found = await self._endpoints(endpoint_id)
        return found[0] if found else None

    async def put_webhook_endpoint(self, *, endpoint: WebhookEndpoint, create: bool) -> WebhookEndpoint:
        outcome = await self._put_endpoint(endpoint, create)
        if outcome == "taken":
            raise Conflict(f"webhook endpoint {endpoint.id!r} exists")
        if outcome == "config":
            raise Conflict(f"webhook endpoint {endpoint.id!r} comes from the configuration file; change it there")
        if outcome == "missing":
            raise NotFound(f"no webhook endpoint {endpoint.id!r}")
        stored = await self.get_webhook_endpoint(endpoint.id)
        assert stored is not None
        return stored

    async def delete_webhook_endpoint(self, endpoint_id: str) -> bool:
        source = await self._delete_endpoint(endpoint_id)
        if source == "config":
            raise Conflict(f"webhook endpoint {endpoint_id!r} comes from the configuration file; remove it there")
        return source is not None

    async def record_webhook_attempts(
        self, *, attempts: Sequence[WebhookAttempt], disable_after: int
    ) -> list[tuple[int, bool]]:
        if not attempts:
            return []
        return await self._record_attempts([attrs.evolve(a, at=utc(a.at)) for a in attempts], disable_after)

    async def complete_jobs_with_attempts(
        self, *, job_ids: Sequence[str], owner: str, now: datetime, attempts: Sequence[WebhookAttempt]
    ) -> set[str]:
        if any(not a.ok for a in attempts):
            raise ValueError("only successful attempts are stored with their job's completion")
        return await self._complete_with_attempts(
            list(dict.fromkeys(job_ids)), owner, utc(now), [attrs.evolve(a, at=utc(a.at)) for a in attempts]
        )

    async def list_webhook_attempts(
        self, *, endpoint_id: str | None = None, delivery_id: str | None = None, limit: int = 50
    ) -> list[WebhookAttempt]:
        return await self._attempts(endpoint_id, delivery_id, max(1, min(limit, 1000)))

    @abc.abstractmethod
    async def _sync_config(self, endpoints: list[WebhookEndpoint], now: datetime) -> None: ...

    @abc.abstractmethod
    async def _endpoints(self, endpoint_id: str | None) -> list[WebhookEndpoint]:
        """Every endpoint by id, or the one with ``endpoint_id``."""

    @abc.abstractmethod
    async def _put_endpoint(self, endpoint: WebhookEndpoint, create: bool) -> str:
        """``ok``, or why not: ``taken``, ``config``, ``missing``."""

    @abc.abstractmethod
    async def _delete_endpoint(self, endpoint_id: str) -> str | None:
        """Delete an ``api`` endpoint; the source of what was found (None: nothing)."""

    @abc.abstractmethod
    async def _record_attempts(
        self, attempts: list[WebhookAttempt], disable_after: int
    ) -> list[tuple[int, bool]]: ...

    @abc.abstractmethod
    async def _attempts(self, endpoint_id: str | None, delivery_id: str | None, limit: int) -> list[WebhookAttempt]: ...

    @abc.abstractmethod
    async def _complete_with_attempts(
        self, job_ids: list[str], owner: str, now: datetime, attempts: list[WebhookAttempt]
    ) -> set[str]:
        """Complete the jobs of ``job_ids`` that ``owner`` holds and store ``attempts``, in one transaction."""
