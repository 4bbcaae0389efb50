"""The Broker Protocol: how a delivery made on one node reaches the others.

A node always hands a delivery to its own sessions itself; the broker carries it
to the *other* nodes, each of which hands it to its own sessions only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeAlias

import attrs
import trio

from realtimed.config import DEVICE_PREFIX
from realtimed.frames import Frame

#: Characters of a node's tag at the start of its session ids (after ``s_``).
NODE_TAG_CHARS: Final = 8


def node_tag(node: str) -> str:
    """The short tag of a node that its session ids carry (``s_<tag><random>``), so that a
    delivery to ``device:<session_id>`` goes to that node alone. Two nodes whose tags
    collide both receive such deliveries, and the one without the session drops them."""
    return hashlib.blake2b(node.encode(), digest_size=NODE_TAG_CHARS // 2).hexdigest()


def device_tag(room: str) -> str | None:
    """The node tag of a ``device:<session_id>`` room; None for any other room."""
    if not room.startswith(DEVICE_PREFIX + "s_"):
        return None
    tag = room[len(DEVICE_PREFIX) + 2 : len(DEVICE_PREFIX) + 2 + NODE_TAG_CHARS]
    return tag if len(tag) == NODE_TAG_CHARS else None


@attrs.frozen
class Close:
    """Close sessions instead of sending them a frame: every session of the
    delivery's users, or only ``session_id`` among them."""

    code: int
    reason: str = ""
    session_id: str | None = None


@attrs.frozen
class Delivery:
    """One frame for a set of users (every device) or for an app room's subscribers.

    Exactly one of ``users``, ``room`` and ``everyone`` is set: ``everyone``
    reaches every session of every node. ``exclude_users`` are skipped
    (typing goes to the others), ``exclude_session`` is one socket to skip.
    With ``close`` set (user deliveries only) the frame is not sent: each node
    closes the users' sessions it holds with that code (the server API's
    disconnect and ban reach every node this way).
    """

    frame: Frame
    users: tuple[str, ...] = ()
    room: str | None = None
    exclude_users: frozenset[str] = frozenset()
    exclude_session: str | None = None
    origin: str = ""
    close: Close | None = None
    everyone: bool = False


#: Answers a survey on this node: ``(op, data)`` → a JSON-serialisable answer.
SurveyHandler: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[Any]]


@attrs.frozen
class SurveyAnswers:
    """The other nodes' answers to a survey.

    Attributes:
        answers: one per node that answered in time (not this node's own).
        complete: every node that heard the question answered in time.
    """

    answers: list[Any]
    complete: bool = True


class Broker(Protocol):
    """Carries deliveries between nodes.

    Promises:
        - Ordering: deliveries published by one node arrive at every other node
          in the order they were published.
        - At most once: a delivery may be lost while a node is cut off from the
          broker; durable streams (messages, notifications, room history) are how
          clients recover, never the broker.
        - No echo: a node does not receive its own deliveries.
        - Interest: a node receives room deliveries only for rooms it watches and
          user deliveries only for users it watches (brokers may deliver more);
          every node receives the deliveries to ``everyone``, and a room
          delivery to ``device:<session_id>`` reaches the node whose tag
          (``node_tag``) the session id carries, without ``watch_room``.
        - ``publish`` never blocks on a slow node; it fails fast with
          ``errors.Unavailable`` when the broker cannot be reached.
        - ``survey`` asks every other node that is connected to the broker and
          waits at most ``timeout_s`` for their answers; a node that does not
          answer in time (or whose handler fails) is left out, and the result
          says so (``complete``). Answers are never cached.
    """

    node: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect; ``task_status.started()`` once deliveries flow."""
        ...

    def attach(self, handler: Callable[[Delivery], object]) -> None:
        """Set the function that hands a delivery from another node to local sessions."""
        ...

    async def publish(self, delivery: Delivery) -> None: ...

    def attach_survey(self, handler: SurveyHandler) -> None:
        """Set the function that answers other nodes' surveys on this node."""
        ...

    async def survey(self, op: str, data: dict[str, Any], *, timeout_s: float) -> SurveyAnswers:
        """Ask every other node ``op`` with ``data``; their answers (raises ``Unavailable``
        when the broker cannot be reached)."""
        ...

    async def watch_room(self, room: str) -> None: ...

    async def unwatch_room(self, room: str) -> None: ...

    async def watch_user(self, user_id: str) -> None: ...

    async def unwatch_user(self, user_id: str) -> None: ...

    async def ping(self) -> None:
        """Raise ``errors.Unavailable`` when the broker cannot be reached."""
        ...
