"""The delivery log's writer: what the pipeline and the channels decided, per user and channel.

Every channel and the pipeline report their outcomes (``realtimed.outcomes``)
here once the decision is made: the pipeline when a planning job has decided
(skipped for a preference, activity, a cap, quiet hours, held for a digest), the
push channel when FCM answered. The in-app channel logs its deliveries in the
inbox's own transaction instead (``Store.insert_notifications(log_channel=)``),
when ``enabled``. The log is read through ``GET /server/v1/deliveries``.

Entries reported while another write is in flight wait and go together in the
next one. A caller that does not wait (``wait=False``: ``push.send``, whose
outcome is final once FCM answered) hands its entries over and goes on; the
writer then lingers ``LINGER_S`` (0.2 s) for more, so a busy push queue costs one store
write per batch of pushes, not one per push and no wait in any job::

    log = DeliveryLog(config, store=store, clock=clock)
    await nursery.start(log.run)
    await log.record([log.entry(user_id="u1", channel="push", type="mention", outcome=DELIVERED, ref="n...")])

Resource handling:
    ``run`` owns the one task that writes; before it runs (or after it ends) each
    ``record`` writes on its own. Entries not waited for are bounded: past
    ``MAX_PENDING`` the caller waits too. When ``run`` is cancelled it writes what
    is pending, within ``STOP_S``.

Error handling:
    A write that fails is logged and counted (``realtimed_delivery_log_errors``),
    never raised: the delivery it records stands, and is not made again because
    its log entry was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import attrs
import trio
from prometheus_client import Counter

from realtimed.clock import WallClock
from realtimed.config import Config
from realtimed.live import Live
from realtimed.metrics import REGISTRY
from realtimed.store.base import DeliveryEntry, Store

__all__ = ["DeliveryLog"]

log = logging.getLogger(__name__)

#: The most entries one store write takes.
WRITE_BATCH: Final = 2000
#: How long the writer waits for more entries when nobody waits for the ones it has.
LINGER_S: Final = 0.2
#: Entries handed over without waiting, past which callers wait for the write.
MAX_PENDING: Final = 20_000
#: The longest the pending entries are given to be written when the writer stops.
STOP_S: Final = 2.0

LOG_ERRORS: Final = Counter(
    "realtimed_delivery_log_errors", "delivery log entries that could not be written", registry=REGISTRY
)


@attrs.define(eq=False)
class _Round:
    entries: list[DeliveryEntry] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    waited: bool = False  # a caller waits for this round: no lingering


class DeliveryLog:
    """Writes delivery log entries, those of concurrent callers together.

    Args:
        config: the configuration in force (``notify.delivery_log`` is read at each use).
        store: where the entries go.
        clock: wall time of the entries.
    """

    def __init__(self, config: Live[Config], *, store: Store, clock: WallClock) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self._next = _Round()
        self._wanted = trio.Event()
        self._running = False
        self.writes = 0  # store writes made (tests and benchmarks)

    @property
    def enabled(self) -> bool:
        return self._config.value.notify.delivery_log

    def entry(
        self,
        *,
        user_id: str,
        channel: str,
        type: str,
        outcome: str,
        ref: str = "",
        notification_id: str | None = None,
        cap: str | None = None,
        deferred_until: datetime | None = None,
        detail: str = "",
        at: datetime | None = None,
    ) -> DeliveryEntry:
        """An entry at ``at`` (default: now)."""
        return DeliveryEntry(
            at=at or self.clock.now(), user_id=user_id, channel=channel, type=type, outcome=outcome,
            notification_id=notification_id, ref=ref, cap=cap, deferred_until=deferred_until, detail=detail,
        )

    async def record(self, entries: Sequence[DeliveryEntry], *, wait: bool = True) -> None:
        """Write ``entries`` (nothing when the log is off); returns once they are
        written, or their write failed (logged). ``wait=False``: returns at once,
        the entries go with the writer's next batch."""
        if not entries or not self.enabled:
            return
        if not self._running:
            await self._write(list(entries))
            return
        current = self._next
        first = not current.entries
        current.entries.extend(entries)
        if wait or len(current.entries) > MAX_PENDING:
            current.waited = True
            self._wanted.set()
            await current.done.wait()
        elif first or len(current.entries) >= WRITE_BATCH:
            # The writer wakes for a round's first entry and a full batch, not for each entry.
            self._wanted.set()

    async def flush(self) -> None:
        """Return once every entry handed over so far is written (or its write failed)."""
        if self._running and self._next.entries:
            current = self._next
            current.waited = True
            self._wanted.set()
            await current.done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            task_status.started()
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                if not self._next.waited:
                    # Nobody waits: let more entries join this write (a caller that waits ends the lingering).
                    with trio.move_on_after(LINGER_S):
                        while not self._next.waited and len(self._next.entries) < WRITE_BATCH:
                            await self._wanted.wait()
                            self._wanted = trio.Event()
                while self._next.entries:
                    await self._round()
        finally:
            self._running = False
            pending = len(self._next.entries)
            if pending:
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_S) as stopping:
                    await self._round()
                if stopping.cancelled_caught:
                    LOG_ERRORS.inc(pending)
                    log.warning("delivery log: %d entries not written in %.0f s (stopping)", pending, STOP_S)
            self._next.done.set()

    async def _round(self) -> None:
        current, self._next = self._next, _Round()
        try:
            for start in range(0, len(current.entries), WRITE_BATCH):
                await self._write(current.entries[start : start + WRITE_BATCH])
        finally:
            current.done.set()

    async def _write(self, entries: list[DeliveryEntry]) -> None:
        self.writes += 1
        try:
            await self.store.record_deliveries(entries=entries)
        except Exception as exc:  # the deliveries stand; only their record is lost
            LOG_ERRORS.inc(len(entries))
            log.error("delivery log: %d entries not written: %s", len(entries), exc)
