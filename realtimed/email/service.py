"""The email service: SMTP connections, addresses, bounces, unsubscribes, and ``email.send``.

Every email is one ``email.send`` job on ``email.queue`` (payload:
``realtimed.email.jobs``), with the dedupe key ``email:<user>:<ref>:``, so that
it survives a restart, goes out at least once and is cancelled when the
notification is read first. When the job runs, an email that waited (quiet
hours, a digest, a retry, a backlog) is checked again: the notification is still
unread (its ``DeliveryCheck``) and a stored address is still the user's, still
verified and has not bounced. Then it is submitted through ``SmtpPool`` and
``outcome`` decides, from the server's reply, what happens:

- 2xx: ``delivered``;
- 5xx: ``failed:smtp_<code>``, final; ``delivery.failed`` is reported;
- 4xx, or no answer (connection refused, timeout, dropped: ``failed:smtp_unavailable``):
  retried after exponential backoff with jitter (``email.backoff_base_s``), up to
  ``email.max_attempts``; the last failure is reported as ``delivery.failed``
  and the job is ``dead``.

Addresses are the application's: ``set_address`` (with the ``verified`` flag it
decides), ``delete_address``, and ``report_bounce`` for the mail provider's
bounce and complaint webhooks (the address gets no more mail until it is set
again). ``unsubscribe`` turns a type's email preference off, or every type's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio
from prometheus_client import Counter

from realtimed.clock import WallClock, iso
from realtimed.config import Config, EmailConfig
from realtimed.email.jobs import EMAIL_DIGEST, EMAIL_SEND, EmailDigest, EmailSend, email_key
from realtimed.email.message import Rendered, build_message, check_address, digest_parts, new_message_id
from realtimed.email.smtp import SendResult, SmtpPool
from realtimed.email.unsubscribe import ALL_TYPES, Unsubscribe, sign
from realtimed.errors import NotFound, Unavailable, ValidationFailed
from realtimed.jobs.runner import DoNotRetry, JobContext, JobRunner, RetryAfter, backoff_delay
from realtimed.live import Live
from realtimed.metrics import REGISTRY
from realtimed.notify.checks import NotificationCheck, still_wanted
from realtimed.notify.delivery_log import DeliveryLog
from realtimed.notify.types import type_table
from realtimed.outcomes import DELIVERED, SKIPPED_EXPIRED, SKIPPED_WITHDRAWN
from realtimed.store.base import EmailAddressRecord, JobSpec, NotificationRecord, Store
from realtimed.store.emails import EMAIL_DIGESTS
from realtimed.templates import render

__all__ = ["BOUNCE_KINDS", "EmailService", "Outcome", "outcome"]

log = logging.getLogger(__name__)

CHANNEL: Final = "email"
FRESH_S: Final = 2.0  # an email job younger than this is not checked again before it is sent
BOUNCE_KINDS: Final = ("bounce", "complaint")
UNSUBSCRIBE_PATH: Final = "/email/unsubscribe/"
DIGEST_SCAN_PAGES: Final = 10  # a digest reads at most this many pages of 100 of the unread inbox

EMAILS: Final = Counter(
    "realtimed_email_sends",
    "email.send attempts by outcome: delivered, retried, failed (final), skipped (no longer wanted)",
    ["outcome"],
    registry=REGISTRY,
)


@attrs.frozen
class Outcome:
    """What one submission's result means.

    Attributes:
        code: ``delivered``, ``failed:smtp_<reply code>`` or ``failed:smtp_unavailable``
            (the delivery log's codes).
        retry: try again later (a 4xx or no answer); False: done, for good.
    """

    code: str
    retry: bool

    @property
    def delivered(self) -> bool:
        return self.code == "delivered"


def outcome(result: SendResult) -> Outcome:
    """The one place where an SMTP answer becomes a delivery outcome."""
    if result.code is None:
        return Outcome("failed:smtp_unavailable", retry=True)
    if 200 <= result.code < 300:
        return Outcome("delivered", retry=False)
    if 400 <= result.code < 500:
        return Outcome(f"failed:smtp_{result.code}", retry=True)
    return Outcome(f"failed:smtp_{result.code}", retry=False)


class EmailService:
    """Email of one node.

    Args:
        config: the configuration in force (templates and texts are read at each use).
        store: addresses and preferences.
        clock: wall time.
        jobs: the job runner.
        rng: the source of backoff jitter.

    Resource handling:
        ``run`` owns the SMTP pool while ``email.enabled`` (at start) and closes
        it when cancelled; the pool's size and server are those of the start.

    Error handling:
        Nothing an SMTP server or the network does reaches ``run``: each job
        decides (see the module docstring). A store that cannot be reached
        raises ``Unavailable`` to the caller (the job is retried).
    """

    def __init__(
        self,
        config: Live[Config],
        *,
        store: Store,
        clock: WallClock,
        jobs: JobRunner,
        rng: random.Random | None = None,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self.jobs = jobs
        self.deliveries = deliveries
        self._rng = rng or random.Random()
        self.pool: SmtpPool | None = None

    #: Reports ``delivery.failed`` to the application (webhooks: ``WebhookService.emit``); None reports nothing.
    event_sink: Callable[[str, Mapping[str, Any]], Awaitable[object]] | None = None

    @property
    def cfg(self) -> EmailConfig:
        return self._config.value.email

    @property
    def enabled(self) -> bool:
        """True while the SMTP pool runs on this node."""
        return self.pool is not None

    async def run(self, *, task_status: trio.TaskStatus[EmailService] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        if not cfg.enabled:
            log.info("email is off (email.enabled is false)")
            task_status.started(self)
            await trio.sleep_forever()
        pool = SmtpPool(cfg)
        try:
            self.pool = pool
            log.info(
                "email through %s:%d (%s), up to %d connection(s), from %s",
                cfg.host, cfg.port, cfg.security, cfg.max_connections, cfg.from_address,
            )
            task_status.started(self)
            await trio.sleep_forever()
        finally:
            self.pool = None
            await pool.aclose()

    def register_jobs(self, runner: JobRunner) -> None:
        runner.register(EMAIL_SEND, self.handle_send)
        runner.register(EMAIL_DIGEST, self.handle_digest)
        runner.serve_queue(self.cfg.queue)

    # -- links -------------------------------------------------------------------------------

    def unsubscribe_url(self, user_id: str, type: str) -> str:
        cfg = self.cfg
        expires = int(self.clock.now().timestamp() + cfg.unsubscribe_ttl_s)
        token = sign(cfg.unsubscribe_secret, Unsubscribe(user_id, type, expires))
        return cfg.public_base_url.rstrip("/") + UNSUBSCRIBE_PATH + token

    # -- the job -----------------------------------------------------------------------------

    async def handle_send(self, ctx: JobContext, p: EmailSend) -> None:
        pool = self.pool
        if pool is None:
            raise DoNotRetry("email is not enabled on this node (email.enabled)")
        now = ctx.clock.now()
        if p.expires_at is not None and now >= p.expires_at:
            EMAILS.labels("skipped").inc()
            log.info("job %s: email to user %s not sent: expired", ctx.job_id, p.user_id)
            await self._report(
                "delivery.failed",
                {
                    "channel": CHANNEL,
                    "code": SKIPPED_EXPIRED,
                    "error": f"the notification expired at {iso(p.expires_at)}",
                    "user_id": p.user_id,
                    "address": p.to,
                    "job_id": ctx.job_id,
                },
            )
            await self._log(p, SKIPPED_EXPIRED, f"expired at {iso(p.expires_at)}")
            return
        waited = ctx.attempt > 1 or (now - ctx.job.created_at).total_seconds() > FRESH_S
        skip = await self._still_wanted(p) if waited else None
        if skip is not None:
            EMAILS.labels("skipped").inc()
            log.info("job %s: email to user %s not sent: %s", ctx.job_id, p.user_id, skip)
            await self._log(p, SKIPPED_WITHDRAWN, skip)
            return
        cfg = self.cfg
        message = build_message(
            cfg, to=p.to, rendered=Rendered(subject=p.subject, text=p.text, html=p.html), unsubscribe_url=p.unsubscribe_url, message_id=p.message_id
        )
        result = await pool.send(message, sender=_envelope(cfg.from_address), to=p.to)
        decided = outcome(result)
        if decided.delivered:
            EMAILS.labels("delivered").inc()
            log.debug("job %s: email to user %s delivered (%s)", ctx.job_id, p.user_id, result.text)
            await self._log(p, DELIVERED, result.text)
            return
        text = f"{result.code or '-'} {result.text}"
        if decided.retry and ctx.attempt < ctx.job.max_attempts:
            EMAILS.labels("retried").inc()
            delay = backoff_delay(ctx.attempt, base_s=cfg.backoff_base_s, max_s=cfg.backoff_max_s, rng=self._rng)
            log.warning(
                "job %s: email to user %s attempt %d/%d: %s; retry in %.1f s",
                ctx.job_id, p.user_id, ctx.attempt, ctx.job.max_attempts, text, delay,
            )
            raise RetryAfter(delay, text)
        EMAILS.labels("failed").inc()
        log.warning("job %s: email to user %s failed (%s): %s", ctx.job_id, p.user_id, decided.code, text)
        await self._log(p, decided.code, text)
        await self._report(
            "delivery.failed",
            {
                "channel": CHANNEL,
                "code": decided.code,
                "error": text,
                "user_id": p.user_id,
                "address": p.to,
                "job_id": ctx.job_id,
            },
        )
        if decided.retry:
            raise RetryAfter(0, text)  # the last attempt: the runner marks the job dead
        raise DoNotRetry(text)

    async def handle_digest(self, ctx: JobContext, p: EmailDigest) -> None:
        """The end of a user's digest window: one email listing the window's unread
        notifications of the types the user gets by email (none: no email)."""
        record = (await self.store.get_email_addresses([p.user_id])).get(p.user_id)
        if record is None or not record.deliverable:
            log.info("job %s: no digest email for user %s: no deliverable address", ctx.job_id, p.user_id)
            return
        entries = await self._digest_entries(p)
        if not entries:
            log.debug("job %s: digest for user %s: nothing unread", ctx.job_id, p.user_id)
            return
        cfg = self.cfg
        count = len(entries)
        subject = render(cfg.digest_subject, {"count": count})
        rendered = digest_parts(
            subject=subject, items=[(n.title, n.body) for n in entries[: cfg.digest_max_items]], total=count
        )
        ref = f"ed{int(p.since.timestamp())}"
        payload = EmailSend(
            to=record.address,
            user_id=p.user_id,
            type="digest",
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            unsubscribe_url=self.unsubscribe_url(p.user_id, ALL_TYPES),
            message_id=new_message_id(cfg),
            ref=ref,
            stored=True,
        )
        await self.jobs.enqueue_many(
            [
                JobSpec(
                    queue=cfg.queue, kind=EMAIL_SEND.kind, payload=EMAIL_SEND.encode(payload),
                    max_attempts=cfg.max_attempts, dedupe_key=email_key(p.user_id, ref),
                )
            ]
        )
        log.info("job %s: digest email of %d notification(s) queued for user %s", ctx.job_id, count, p.user_id)

    async def _digest_entries(self, p: EmailDigest) -> list[NotificationRecord]:
        """Unread notifications of ``[since, until)`` whose type mails and that the
        user gets by email, newest first (walks at most 1,000 of the unread inbox)."""
        types = type_table(self._config.value.notify)
        prefs = {pref.type: pref for pref in await self.store.get_preferences(p.user_id)}
        out: list[NotificationRecord] = []
        cursor: str | None = None
        for _page in range(DIGEST_SCAN_PAGES):
            records, cursor = await self.store.list_notifications(
                user_id=p.user_id, cursor=cursor, unread_only=True, limit=100
            )
            for n in records:
                if n.created_at < p.since:
                    return out
                ntype = types.get(n.type)
                if n.created_at >= p.until or ntype is None or CHANNEL not in ntype.channels:
                    continue
                if ntype.priority == "critical":
                    continue  # mailed at once
                pref = prefs.get(n.type)
                if pref is None or pref.enabled(CHANNEL):
                    out.append(n)
            if cursor is None:
                break
        return out

    async def _still_wanted(self, p: EmailSend) -> str | None:
        """None if the email should go; else why not."""
        if p.stored:
            record = (await self.store.get_email_addresses([p.user_id])).get(p.user_id)
            if record is None or record.address != p.to:
                return "address_changed"
            if not record.deliverable:
                return "address_bounced" if record.bounced_at is not None else "address_unverified"
        if p.check is None:
            return None
        return await still_wanted(self.store, p.check)

    async def _log(self, p: EmailSend, outcome: str, detail: str) -> None:
        """Log what became of an email in the delivery log (not waited for: the outcome is final)."""
        deliveries = self.deliveries
        if deliveries is None or not deliveries.enabled:
            return
        check = p.check
        await deliveries.record(wait=False, entries=[
            deliveries.entry(
                at=self.clock.now(), user_id=p.user_id, channel=CHANNEL, type=p.type, outcome=outcome, ref=p.ref,
                notification_id=check.id if isinstance(check, NotificationCheck) else None,
                detail=f"{p.to}: {detail}" if detail else p.to,
            )
        ])

    async def _report(self, event: str, data: Mapping[str, Any]) -> None:
        if self.event_sink is None:
            return
        try:
            await self.event_sink(event, data)
        except Exception as exc:  # the email's own outcome stands
            log.error("%s not reported: %s", event, exc)

    # -- addresses ---------------------------------------------------------------------------

    def check(self, address: str, field: str) -> str:
        problem = check_address(address, max_chars=self.cfg.max_address_chars)
        if problem is not None:
            raise ValidationFailed(field, problem)
        return address

    async def set_address(
        self, *, user_id: str, address: str, verified: bool, digest: str | None = None
    ) -> EmailAddressRecord:
        self.check(address, "address")
        if digest is not None and digest not in EMAIL_DIGESTS:
            raise ValidationFailed("digest", f"must be one of {', '.join(EMAIL_DIGESTS)}")
        record: EmailAddressRecord = await self.store.set_email_address(
            user_id=user_id, address=address, verified=verified, now=self.clock.now(), digest=digest
        )
        log.info("user %s: email address set (%s)", user_id, "verified" if verified else "not verified")
        return record

    async def get_address(self, user_id: str) -> EmailAddressRecord:
        record = (await self.store.get_email_addresses([user_id])).get(user_id)
        if record is None:
            raise NotFound("this user has no email address")
        return record

    async def delete_address(self, user_id: str) -> None:
        if not await self.store.delete_email_address(user_id=user_id):
            raise NotFound("this user has no email address")
        log.info("user %s: email address deleted", user_id)

    async def report_bounce(self, *, address: str, kind: str, reason: str) -> list[str]:
        """Mark ``address`` undeliverable for every user holding it; the users marked."""
        if kind not in BOUNCE_KINDS:
            raise ValidationFailed("kind", f"must be one of {', '.join(BOUNCE_KINDS)}")
        users: list[str] = await self.store.mark_email_bounced(
            address=address, kind=kind, reason=reason, now=self.clock.now()
        )
        log.info("email %s reported for %d user(s): %s", kind, len(users), reason[:200])
        return users

    # -- unsubscribing -----------------------------------------------------------------------

    async def unsubscribe(self, what: Unsubscribe) -> list[str]:
        """Turn email off for the link's type, or for every type (``*``); the types changed.

        A type that is no longer configured is still turned off (the stored
        preference stays for when it comes back)."""
        types = type_table(self._config.value.notify)
        names = sorted(types) if what.type == ALL_TYPES else [what.type]
        for name in names:
            await self.store.set_preference(user_id=what.user_id, type=name, channels={CHANNEL: False})
        log.info("user %s unsubscribed from email: %s", what.user_id, "all" if what.type == ALL_TYPES else what.type)
        return names

    def require_enabled(self) -> None:
        if not self.enabled:
            raise Unavailable("email is not enabled on this node (email.enabled)")


def _envelope(from_address: str) -> str:
    """The envelope sender: the address inside ``Name <address>``, or the whole."""
    if "<" in from_address and from_address.endswith(">"):
        return from_address[from_address.rindex("<") + 1 : -1]
    return from_address
