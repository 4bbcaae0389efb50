"""The node's shared state, chosen in one place: in-process, or Redis for a cluster.

``broker.backend`` decides, once, where every piece of state that other nodes
must see is kept; the services take the pieces in their constructors and never
ask which kind they got.

| piece | in-process | Redis |
| --- | --- | --- |
| deliveries between nodes | ``MemoryBroker`` | ``RedisBroker`` |
| room history | ``MemoryHistory`` | ``RedisHistory`` |
| room presence, devices, presence records | ``MemoryRoomPresence``, ``MemoryPresence`` | ``RedisPresence`` |
| typing states and budgets | ``MemoryTyping`` | ``RedisTyping`` |
| push caps | ``PushCaps`` | ``RedisPushCaps`` |
| activity marks (push-skip rule) | none: this node's sessions | ``RedisActivity`` |
"""

from __future__ import annotations

import attrs

from realtimed.broker.base import Broker
from realtimed.broker.memory import MemoryBroker
from realtimed.broker.redis import RedisBroker
from realtimed.config import Config
from realtimed.delivery.redis_history import RedisHistory
from realtimed.delivery.rooms import HistoryBackend, MemoryHistory, MemoryRoomPresence, RoomPresenceBackend
from realtimed.live import Live
from realtimed.notify.policy import PushCaps, SharedCaps
from realtimed.notify.redis_activity import RedisActivity, RedisPushCaps
from realtimed.presence import MemoryPresence, PresenceBackend, PresenceRecord
from realtimed.redis_presence import RedisPresence
from realtimed.redis_typing import RedisTyping
from realtimed.typing_state import MemoryTyping, TypingBackend

__all__ = ["Backends", "open_backends"]


@attrs.frozen(eq=False)
class Backends:
    """Where this node keeps what other nodes see (see the module docstring).

    Attributes:
        cluster: the Redis presence service (heartbeats, reaping of dead nodes,
            resync, the cluster-wide device count); None on a single node.
        activity: activity marks every node reads; None on a single node, where
            this node's own sessions are the whole truth.
    """

    broker: Broker
    history: HistoryBackend
    room_presence: RoomPresenceBackend
    presence: PresenceBackend
    typing: TypingBackend
    caps: SharedCaps
    cluster: RedisPresence | None = None
    activity: RedisActivity | None = None


def open_backends(cfg: Config, *, node: str, config: Live[Config]) -> Backends:
    """The backends ``cfg.broker.backend`` names (none running yet).

    Args:
        cfg: the configuration at start (the broker section cannot change live).
        node: this node's id.
        config: the configuration in force (the activity window is read at each use).
    """
    if cfg.broker.backend != "redis":
        return Backends(
            broker=MemoryBroker(node),
            history=MemoryHistory(),
            room_presence=MemoryRoomPresence(),
            presence=MemoryPresence(),
            typing=MemoryTyping(),
            caps=PushCaps(),
        )
    redis = RedisBroker(node, cfg.broker)
    timeout_s = cfg.broker.timeout_s
    # Device counts, records and room presence shared by every node, with
    # heartbeats so that the users of a node that dies turn offline.
    shared = RedisPresence(
        redis.client, node=node, node_ttl_s=cfg.broker.node_ttl_s, timeout_s=timeout_s, record_type=PresenceRecord
    )
    return Backends(
        broker=redis,
        history=RedisHistory(redis.client, timeout_s=timeout_s),
        room_presence=shared,
        presence=shared,
        typing=RedisTyping(redis.client, node=node, timeout_s=timeout_s),
        # Push caps and the active-skip rule count what every node sees.
        caps=RedisPushCaps(redis.client, timeout_s=timeout_s),
        cluster=shared,
        activity=RedisActivity(
            redis.client, window_s=lambda: config.value.notify.active_window_s, timeout_s=timeout_s
        ),
    )
