"""The ``webhook.deliver`` job kind: one event to one endpoint.

The job's id is the delivery's id (``delivery_id`` in the attempts);
``webhook_id`` is the Standard Webhooks message id, the same for every attempt
and for a replay, so that a receiver drops repeats. A delivery queued with a chat
message (``Store.append_message(jobs=...)``) gets ``message_id`` and ``seq``
from the store; they join the event's data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from realtimed.clock import iso
from realtimed.jobs.payload import JobType, obj, opt_int, opt_str, req_str, req_time

__all__ = ["WEBHOOK_DELIVER", "WebhookDeliver"]


@attrs.frozen
class WebhookDeliver:
    """One event for one endpoint."""

    endpoint_id: str
    event: str
    webhook_id: str
    created_at: datetime
    data: Mapping[str, Any] = attrs.field(factory=dict)
    message_id: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint_id": self.endpoint_id,
            "event": self.event,
            "webhook_id": self.webhook_id,
            "created_at": iso(self.created_at),
            "data": dict(self.data),
        }
        if self.message_id is not None:
            out["message_id"] = self.message_id
        if self.seq is not None:
            out["seq"] = self.seq
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WebhookDeliver:
        return cls(
            endpoint_id=req_str(data, "endpoint_id", allow_empty=False),
            event=req_str(data, "event", allow_empty=False),
            webhook_id=req_str(data, "webhook_id", allow_empty=False),
            created_at=req_time(data, "created_at"),
            data=obj(data, "data"),
            message_id=opt_str(data, "message_id"),
            seq=opt_int(data, "seq"),
        )

    def event_data(self) -> dict[str, Any]:
        """The event's ``data``, with what the store added to a chat message's job."""
        out = dict(self.data)
        if self.message_id is not None:
            out["message_id"] = self.message_id
        if self.seq is not None:
            out["seq"] = self.seq
        return out


WEBHOOK_DELIVER: Final = JobType("webhook.deliver", WebhookDeliver)
