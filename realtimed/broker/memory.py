"""The in-process broker: the default for one node, and the test double for several.

Nodes attached to the same ``MemoryHub`` (several routers in one test process)
reach each other; a node alone on its hub publishes to no one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from realtimed.broker.base import Delivery, SurveyAnswers, SurveyHandler, device_tag, node_tag

log = logging.getLogger(__name__)


class MemoryHub:
    """Connects the memory brokers of several in-process nodes."""

    def __init__(self) -> None:
        self.brokers: list[MemoryBroker] = []


class MemoryBroker:
    """In-process Broker (see ``base.Broker`` for the promises).

    Delivery to other nodes on the hub is synchronous, so ordering holds trivially.
    """

    def __init__(self, node: str, hub: MemoryHub | None = None) -> None:
        self.node = node
        self._hub = hub or MemoryHub()
        self._tag = node_tag(node)
        self._handler: Callable[[Delivery], object] | None = None
        self._survey_handler: SurveyHandler | None = None
        self._rooms: dict[str, int] = {}
        self._users: dict[str, int] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._hub.brokers.append(self)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._hub.brokers.remove(self)

    def attach(self, handler: Callable[[Delivery], object]) -> None:
        self._handler = handler

    async def publish(self, delivery: Delivery) -> None:
        for broker in self._hub.brokers:
            if broker is self or broker._handler is None:
                continue
            if delivery.room is not None and delivery.room not in broker._rooms and device_tag(delivery.room) != broker._tag:
                continue
            if delivery.room is None and not delivery.everyone and not any(u in broker._users for u in delivery.users):
                continue
            try:
                broker._handler(delivery)
            except Exception:
                log.exception("node %s failed to take a delivery", broker.node)
        await trio.lowlevel.checkpoint()

    def attach_survey(self, handler: SurveyHandler) -> None:
        self._survey_handler = handler

    async def survey(self, op: str, data: dict[str, Any], *, timeout_s: float) -> SurveyAnswers:
        answers: list[Any] = []
        complete = True
        for broker in list(self._hub.brokers):
            handler = broker._survey_handler
            if broker is self or handler is None:
                continue
            try:
                with trio.fail_after(timeout_s):
                    answers.append(await handler(op, dict(data)))
            except trio.TooSlowError:
                complete = False
            except Exception:
                log.exception("node %s failed to answer survey %s", broker.node, op)
                complete = False
        await trio.lowlevel.checkpoint()
        return SurveyAnswers(answers, complete)

    async def watch_room(self, room: str) -> None:
        self._rooms[room] = self._rooms.get(room, 0) + 1

    async def unwatch_room(self, room: str) -> None:
        _decrement(self._rooms, room)

    async def watch_user(self, user_id: str) -> None:
        self._users[user_id] = self._users.get(user_id, 0) + 1

    async def unwatch_user(self, user_id: str) -> None:
        _decrement(self._users, user_id)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left <= 0:
        counts.pop(key, None)
    else:
        counts[key] = left
