"""Outbound HTTP of realtimed: signed requests to the application, made safely.

- ``signing``: the Standard Webhooks signature, sans IO;
- ``client``: the one HTTP request of an attempt, with the address checks
  (resolved once, connected to the pinned address, no redirects, a bounded body)
  and the reading of ``Retry-After``.

Webhook deliveries (``realtimed.webhooks``) and HTTP jobs (``realtimed.jobs.http``)
both use them, each with its own configuration section.
"""

from __future__ import annotations

from realtimed.outbound.client import (
    AttemptFailed,
    Outbound,
    OutboundSettings,
    Refused,
    Response,
    retry_after_s,
)
from realtimed.outbound.signing import signature_headers

__all__ = ["AttemptFailed", "Outbound", "OutboundSettings", "Refused", "Response", "retry_after_s", "signature_headers"]
