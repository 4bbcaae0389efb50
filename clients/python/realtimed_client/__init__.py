"""realtimed-client: a Python (Trio) client for realtimed.

>>> async with open_client("ws://127.0.0.1:8700/ws", token=get_token) as client:
...     async with client.subscribe("job:42") as job:
...         async for event in job:
...             print(event.name, event.data)

See the package README for the behaviour: reconnects, room recovery, the chat
outbox, request timeouts and errors.
"""

from __future__ import annotations

from realtimed_client._client import (
    Client,
    ClientOptions,
    OutboxItem,
    State,
    StateChange,
    Subscription,
    TokenProvider,
    open_client,
)
from realtimed_client._errors import (
    CLOSED,
    DISCONNECTED,
    OUTBOX_FULL,
    SLOW_CONSUMER,
    TIMEOUT,
    RealtimeError,
)
from realtimed_client._feed import Feed
from realtimed_client._protocol import IDEMPOTENT_OPS, Event

__version__ = "0.1.0"

__all__ = [
    "CLOSED",
    "DISCONNECTED",
    "IDEMPOTENT_OPS",
    "OUTBOX_FULL",
    "SLOW_CONSUMER",
    "TIMEOUT",
    "Client",
    "ClientOptions",
    "Event",
    "Feed",
    "OutboxItem",
    "RealtimeError",
    "State",
    "StateChange",
    "Subscription",
    "TokenProvider",
    "__version__",
    "open_client",
]
