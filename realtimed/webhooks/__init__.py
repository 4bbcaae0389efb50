"""Webhooks: signed deliveries of events to the application's endpoints.

- signing and the outbound HTTP request live in ``realtimed.outbound``, shared with HTTP jobs;
- ``jobs``: the ``webhook.deliver`` job kind and its payload type;
- ``service``: the endpoints this node knows, the deliveries queued for an
  event, and the ``webhook.deliver`` handler;
- ``http``: the server API routes (endpoints, attempts, replay).
"""

from __future__ import annotations

from realtimed.webhooks.jobs import WEBHOOK_DELIVER, WebhookDeliver
from realtimed.webhooks.service import WebhookService

__all__ = ["WEBHOOK_DELIVER", "WebhookDeliver", "WebhookService"]
