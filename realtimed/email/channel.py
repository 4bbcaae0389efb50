"""The email channel: notifications to a user's address, through SMTP.

``EmailChannel`` is the planned ``DeliveryChannel`` named ``email``
(``realtimed.notify.channel``). For one delivery it picks the address (the
one the notification names for the recipient, else the user's stored address
if it is verified and has not bounced; none: nothing is delivered), renders
the subject, text and HTML (``realtimed.email.message``: the type's
``[[email.templates]]`` entry, or the title and body; a digest mails the
digest's text), signs the unsubscribe link, and queues one ``email.send`` job
at ``run_at`` carrying the delivery's check. For a user who chose an hourly or
daily digest (``digest`` of the stored address), a delivery about the inbox that
is not critical queues instead the user's ``email.digest`` job of the current
window (UTC hours or days; once per window), which mails the window's unread
notifications together at its end. A batch of deliveries costs one read (the
addresses) and one write. Withdrawing cancels the queued jobs by
their dedupe keys (``email:<user>:<ref>:``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from realtimed.config import EmailTemplateConfig
from realtimed.email.jobs import (
    EMAIL_DIGEST,
    EMAIL_SEND,
    EmailDigest,
    EmailSend,
    digest_job_key,
    email_key,
    email_prefix,
    inbox_email_prefix,
)
from realtimed.email.message import new_message_id, render_parts
from realtimed.email.service import CHANNEL, EmailService
from realtimed.notify.channel import Delivery, Receipt
from realtimed.notify.checks import GroupCheck, NotificationCheck
from realtimed.notify.policy import digest_window
from realtimed.store.base import EmailAddressRecord, JobSpec
from realtimed.templates import TemplateError

__all__ = ["EmailChannel"]

log = logging.getLogger(__name__)

QUEUE_BATCH: Final = 1000  # email.send jobs queued by one store statement
DIGEST_PERIODS_S: Final = {"hourly": 3600.0, "daily": 86400.0}
# Refs of digest deliveries (``realtimed.notify.service``): their text is the digest's, not the type's template.
_DIGEST_REFS: Final = ("ng", "mg")


class EmailChannel:
    """Email through SMTP, on a node with ``email.enabled``.

    Args:
        email: the email service (addresses, links, the job runner).

    Error handling:
        A store or job runner that cannot be reached raises; the planning job
        that called is retried, and the dedupe keys keep the emails already
        queued single.
    """

    name: Final = CHANNEL
    immediate: Final = False

    def __init__(self, email: EmailService) -> None:
        self.email = email

    def available(self) -> bool:
        return self.email.enabled

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Receipt | None]:
        if not deliveries:
            return []
        svc = self.email
        cfg = svc.cfg
        lookup = [d.user_id for d in deliveries if CHANNEL not in d.addresses]
        stored = await svc.store.get_email_addresses(list(dict.fromkeys(lookup))) if lookup else {}
        templates = {t.type: t for t in cfg.templates}
        specs: list[JobSpec] = []
        receipts: list[Receipt | None] = []
        for delivery in deliveries:
            to = delivery.addresses.get(CHANNEL)
            from_store = to is None
            record: EmailAddressRecord | None = None
            if to is None:
                record = stored.get(delivery.user_id)
                to = record.address if record is not None and record.deliverable else None
            if to is None:
                receipts.append(None)
                continue
            if record is not None and self._gathered(delivery, record):
                specs.append(self._digest_spec(delivery, record))
                receipts.append(Receipt(ref=delivery.ref, check=delivery.check, endpoints=1))
                continue
            payload = EmailSend(
                to=to,
                user_id=delivery.user_id,
                type=delivery.type.name,
                message_id=new_message_id(cfg),
                unsubscribe_url=svc.unsubscribe_url(delivery.user_id, delivery.type.name),
                ref=delivery.ref,
                stored=from_store,
                check=delivery.check,
                expires_at=delivery.expires_at,
                **_parts(delivery, templates.get(delivery.type.name)),
            )
            specs.append(
                JobSpec(
                    queue=cfg.queue,
                    kind=EMAIL_SEND.kind,
                    payload=EMAIL_SEND.encode(payload),
                    run_at=delivery.run_at,
                    max_attempts=cfg.max_attempts,
                    dedupe_key=email_key(delivery.user_id, delivery.ref),
                )
            )
            receipts.append(Receipt(ref=delivery.ref, check=delivery.check, endpoints=1))
        for start in range(0, len(specs), QUEUE_BATCH):
            await svc.jobs.enqueue_many(specs[start : start + QUEUE_BATCH])
        return receipts

    @staticmethod
    def _gathered(delivery: Delivery, record: EmailAddressRecord) -> bool:
        """Whether the delivery waits for the user's digest: the user chose one, it is
        about the inbox (the digest lists the inbox), and the type is not critical."""
        return (
            record.digest in DIGEST_PERIODS_S
            and isinstance(delivery.check, NotificationCheck | GroupCheck)
            and delivery.type.priority != "critical"
        )

    def _digest_spec(self, delivery: Delivery, record: EmailAddressRecord) -> JobSpec:
        """The user's ``email.digest`` job of the current window (queued once per window)."""
        cfg = self.email.cfg
        since, until = digest_window(self.email.clock.now(), DIGEST_PERIODS_S[record.digest])
        run_at = max(until, delivery.run_at) if delivery.run_at is not None else until
        return JobSpec(
            queue=cfg.queue,
            kind=EMAIL_DIGEST.kind,
            payload=EMAIL_DIGEST.encode(EmailDigest(user_id=delivery.user_id, since=since, until=until)),
            run_at=run_at,
            max_attempts=cfg.max_attempts,
            dedupe_key=digest_job_key(delivery.user_id, since),
        )

    async def withdraw(self, *, user_id: str, refs: Sequence[str] | None) -> int:
        if not self.email.cfg.enabled:
            return 0  # nothing was queued by this configuration: no store call on every read
        store = self.email.store
        now = self.email.clock.now()
        if refs is None:
            cancelled: int = await store.cancel_jobs_by_dedupe_prefix(prefix=inbox_email_prefix(user_id), now=now)
            return cancelled
        total = 0
        for ref in refs:
            total += await store.cancel_jobs_by_dedupe_prefix(prefix=email_prefix(user_id, ref), now=now)
        return total


def _parts(delivery: Delivery, template: EmailTemplateConfig | None) -> dict[str, str]:
    if delivery.ref.startswith(_DIGEST_REFS):
        template = None
    try:
        rendered = render_parts(title=delivery.title, body=delivery.body, values=delivery.vars, template=template)
    except (KeyError, TemplateError) as exc:  # prevented by the config checks
        log.error("email template of %s cannot be rendered (%s); the title and body are mailed", delivery.type.name, exc)
        rendered = render_parts(title=delivery.title, body=delivery.body, values={}, template=None)
    return {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}
