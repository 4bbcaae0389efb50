"""Presence in Redis: device counts and records shared by every node, with node heartbeats.

Keys:
    ``rt:ps:<user>``   hash, session id → node: the user's devices on every node
    ``rt:pr:<user>``   the user's ``PresenceRecord`` (JSON)
    ``rt:pu:<node>``   set of users with a device on that node
    ``rt:pn:<node>``   the node's heartbeat; expires ``broker.node_ttl_s`` after the last one
    ``rt:nodes``       set of the nodes that have held devices

Each node refreshes its heartbeat every third of ``node_ttl_s``. Every node also
looks for nodes whose heartbeat has expired (killed, powered off, cut off); the
one that takes the reaping lock of a dead node removes its devices atomically
and learns which users have no device left anywhere, and only that node hands
them to ``on_users_gone`` (so each user's ``presence.updated`` is sent once).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import coredis
import orjson
import trio

from realtimed.broker.redis import LINK_ERRORS
from realtimed.errors import Unavailable

log = logging.getLogger(__name__)

_ADD: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
return redis.call('HLEN', KEYS[1])
"""

_REMOVE: Final = """
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HLEN', KEYS[1])
local mine = 0
for _, node in ipairs(redis.call('HVALS', KEYS[1])) do
  if node == ARGV[2] then mine = mine + 1 end
end
if mine == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return left
"""

# KEYS: rt:pu:<dead>, rt:nodes ; ARGV: dead node. Returns the users left with no device.
_REAP: Final = """
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = 'rt:ps:' .. user
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if fields[i + 1] == ARGV[1] then redis.call('HDEL', key, fields[i]) end
  end
  if redis.call('HLEN', key) == 0 then table.insert(gone, user) end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return gone
"""

UsersGone = Callable[[list[str]], Awaitable[None]]


class RedisPresence:
    """``PresenceBackend`` in Redis (see ``realtimed.presence.PresenceBackend``).

    Args:
        client: the broker's Redis client.
        node: this node's id.
        node_ttl_s: a node whose heartbeat is this old is dead.
        timeout_s: the longest any Redis call may take.
        record_type: the presence record class (attrs), to rebuild records read back.
    """

    def __init__(self, client: coredis.Redis[bytes] | coredis.RedisCluster[bytes], *, node: str, node_ttl_s: float, timeout_s: float, record_type: type[Any]) -> None:
        self._client = client
        self.node = node
        self._ttl_s = node_ttl_s
        self._timeout_s = timeout_s
        self._record_type = record_type
        self.on_users_gone: UsersGone | None = None

    # -- the PresenceBackend calls ----------------------------------------------------------

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            with trio.fail_after(self._timeout_s):
                return await self._client.eval(script, keys=keys, args=args)
        except LINK_ERRORS as exc:
            raise Unavailable(f"presence unavailable: {exc or type(exc).__name__}") from exc

    async def add_session(self, user_id: str, session_id: str) -> int:
        count = await self._eval(_ADD, [f"rt:ps:{user_id}", f"rt:pu:{self.node}", "rt:nodes"], [session_id, self.node, user_id])
        return int(count)

    async def remove_session(self, user_id: str, session_id: str) -> int:
        count = await self._eval(_REMOVE, [f"rt:ps:{user_id}", f"rt:pu:{self.node}"], [session_id, self.node, user_id])
        return int(count)

    async def device_count(self, user_id: str) -> int:
        """The user's devices on every node."""
        try:
            with trio.fail_after(self._timeout_s):
                return int(await self._client.hlen(f"rt:ps:{user_id}"))
        except LINK_ERRORS as exc:
            raise Unavailable(f"presence unavailable: {exc or type(exc).__name__}") from exc

    async def get(self, user_ids: Sequence[str]) -> dict[str, Any]:
        if not user_ids:
            return {}
        try:
            with trio.fail_after(self._timeout_s):
                values = await self._client.mget([f"rt:pr:{uid}" for uid in user_ids])
        except LINK_ERRORS as exc:
            raise Unavailable(f"presence unavailable: {exc or type(exc).__name__}") from exc
        out = {}
        for uid, raw in zip(user_ids, values, strict=True):
            if raw:
                out[uid] = self._record_type(**orjson.loads(raw))
        return out

    async def put(self, user_id: str, record: Any) -> None:
        try:
            with trio.fail_after(self._timeout_s):
                if record.is_default:
                    await self._client.delete([f"rt:pr:{user_id}"])
                else:
                    await self._client.set(f"rt:pr:{user_id}", orjson.dumps(attrs.asdict(record)))
        except LINK_ERRORS as exc:
            raise Unavailable(f"presence unavailable: {exc or type(exc).__name__}") from exc

    # -- heartbeats and reaping ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat this node and reap dead ones, every third of ``node_ttl_s``."""
        task_status.started()
        period = self._ttl_s / 3
        while True:
            try:
                await self.heartbeat()
                await self.reap()
            except (Unavailable, *LINK_ERRORS) as exc:
                log.warning("node %s: presence heartbeat failed: %s", self.node, exc)
            await trio.sleep(period)

    async def heartbeat(self) -> None:
        with trio.fail_after(self._timeout_s):
            await self._client.set(f"rt:pn:{self.node}", b"1", px=int(self._ttl_s * 1000))

    async def reap(self) -> list[str]:
        """Remove the devices of dead nodes; returns the users who have none left."""
        with trio.fail_after(self._timeout_s):
            nodes = [n.decode() if isinstance(n, bytes) else n for n in await self._client.smembers("rt:nodes")]
        gone: list[str] = []
        for other in nodes:
            if other == self.node:
                continue
            with trio.fail_after(self._timeout_s):
                alive = await self._client.exists([f"rt:pn:{other}"])
                if alive:
                    continue
                # One reaper per dead node, whichever node gets there first.
                lock = await self._client.set(
                    f"rt:reap:{other}", self.node.encode(), condition=coredis.PureToken.NX, px=int(self._ttl_s * 2000)
                )
                if not lock:
                    continue
                users: Any = await self._client.eval(_REAP, keys=[f"rt:pu:{other}", "rt:nodes"], args=[other])
            names = [u.decode() if isinstance(u, bytes) else str(u) for u in users or ()]
            log.warning("node %s: node %s stopped heartbeating; %d of its users have no device left", self.node, other, len(names))
            gone.extend(names)
        if gone and self.on_users_gone is not None:
            await self.on_users_gone(gone)
        return gone
