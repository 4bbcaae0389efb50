"""Presence in Redis: device counts, records and room presence shared by every node, with node heartbeats.

Keys (all share the hash tag ``{p}``, so every script's keys live in one slot of a
Redis Cluster):
    ``rt:{p}:ps:<user>``   hash, session id → node: the user's devices on every node
    ``rt:{p}:pr:<user>``   the user's ``PresenceRecord`` (JSON)
    ``rt:{p}:pu:<node>``   set of users with a device on that node
    ``rt:{p}:rp:<room>``   hash, user → the user's subscriptions to the room on every node
    ``rt:{p}:rq:<node>``   hash, ``<room>\n<user>`` → those subscriptions on that node
    ``rt:{p}:pn:<node>``   the node's heartbeat; expires ``broker.node_ttl_s`` after the last one
    ``rt:{p}:nodes``       set of the nodes that have held devices or room subscriptions
    ``rt:{p}:on``          sorted set (all scores 0, so in byte order) of the users with a
                           device on any node: kept with ``ps:<user>`` by the same scripts

Each node refreshes its heartbeat every third of ``node_ttl_s``. Every node also
looks for nodes whose heartbeat has expired (killed, powered off, cut off); the
one that takes the reaping lock of a dead node removes its devices and room
subscriptions atomically (unless the node heartbeated again meanwhile) and
learns which users have no device left anywhere and which left a room
everywhere; only that node hands them to ``on_users_gone`` and
``on_rooms_left`` (so each ``presence.updated`` and ``room.left`` is sent once).

A node that finds its own heartbeat had expired (Redis was away, or the node was
stalled, longer than ``node_ttl_s``) may have been reaped while alive: it writes
its live devices and room subscriptions back (``sync``) through ``on_resync``.
The same happens after a room change failed to reach Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import attrs
import coredis
import orjson
import trio

from realtimed import logs, metrics
from realtimed.broker.redis import LINK_ERRORS, describe_link_error, redis_call, text
from realtimed.errors import Unavailable

log = logging.getLogger(__name__)

PREFIX: Final = "rt:{p}:"
NODES_KEY: Final = PREFIX + "nodes"
ONLINE_KEY: Final = PREFIX + "on"
SYNC_BATCH: Final = 500


def _devices_key(user: str) -> str:
    return PREFIX + "ps:" + user


def _record_key(user: str) -> str:
    return PREFIX + "pr:" + user


def _node_users_key(node: str) -> str:
    return PREFIX + "pu:" + node


def _room_key(room: str) -> str:
    return PREFIX + "rp:" + room


def _node_rooms_key(node: str) -> str:
    return PREFIX + "rq:" + node


def heartbeat_key(node: str) -> str:
    return PREFIX + "pn:" + node


_ADD: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
return redis.call('HLEN', KEYS[1])
"""

# _ADD, then the user's record: KEYS as _ADD's (without the online set) and rt:{p}:pr:<user>, then
# the online set. Returns {devices, record or false}. With ARGV[4] = "1" (the user came online on
# this node) the record's status first becomes what a connected, active user shows (presence.py
# visible_status: offline while invisible, else what they chose), and the record written is returned.
_ARRIVE: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[5], 0, ARGV[3])
local raw = redis.call('GET', KEYS[4])
if ARGV[4] == '1' then
  local record = {status = 'offline', chosen = 'online'}
  if raw then record = cjson.decode(raw) end
  local status = record.chosen
  if status == 'invisible' then status = 'offline' end
  if status ~= record.status then
    record.status = status
    raw = cjson.encode(record)
    redis.call('SET', KEYS[4], raw)
  end
end
return {redis.call('HLEN', KEYS[1]), raw}
"""

_REMOVE: Final = """
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HLEN', KEYS[1])
local mine = 0
for _, node in ipairs(redis.call('HVALS', KEYS[1])) do
  if node == ARGV[2] then mine = mine + 1 end
end
if mine == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
if left == 0 then redis.call('ZREM', KEYS[3], ARGV[3]) end
return left
"""

# KEYS: rt:{p}:rp:<room>, rt:{p}:rq:<node>, rt:{p}:nodes ; ARGV: user, <room>\n<user>, node.
# Returns the user's subscriptions to the room on every node, this one included.
_ROOM_JOIN: Final = """
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('SADD', KEYS[3], ARGV[3])
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""

# Same keys and arguments. Returns the user's subscriptions left on every node.
_ROOM_LEAVE: Final = """
local mine = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
if mine <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
if mine < 0 then
  -- Not counted here (lost with a reaping): the total does not include it.
  return tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
end
local total = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if total <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return total
"""

# _ROOM_LEAVE for several rooms of one user. KEYS: rt:{p}:rq:<node>, then rt:{p}:rp:<room> of
# each room ; ARGV: user, then each room. Returns the rooms the user has no subscription left to.
_ROOMS_LEAVE: Final = """
local user = ARGV[1]
local left = {}
for i = 2, #ARGV do
  local room_key = KEYS[i]
  local field = ARGV[i] .. '\\n' .. user
  local mine = redis.call('HINCRBY', KEYS[1], field, -1)
  if mine <= 0 then redis.call('HDEL', KEYS[1], field) end
  local total
  if mine < 0 then
    total = tonumber(redis.call('HGET', room_key, user) or '0')
  else
    total = redis.call('HINCRBY', room_key, user, -1)
    if total <= 0 then redis.call('HDEL', room_key, user) end
  end
  if total <= 0 then table.insert(left, ARGV[i]) end
end
return left
"""

# KEYS: rt:{p}:pu:<dead>, rt:{p}:nodes, rt:{p}:rq:<dead>, rt:{p}:pn:<dead> ; ARGV: dead node,
# "1" to reap even a live heartbeat (a node clearing what its previous run left).
# Returns {users left with no device, {room, user, room, user, ...} left everywhere},
# or false when the node heartbeated again before the lock was taken.
# Takes ``count`` subscriptions of a node's ``<room>\n<user>`` entry off the room's
# totals, and adds room and user to ``left`` when the user has none left there.
_UNCOUNT: Final = """
local function uncount(entry, count, left)
  local cut = string.find(entry, '\\n', 1, true)
  local room = string.sub(entry, 1, cut - 1)
  local user = string.sub(entry, cut + 1)
  local key = 'rt:{p}:rp:' .. room
  if redis.call('HINCRBY', key, user, -tonumber(count)) <= 0 then
    redis.call('HDEL', key, user)
    table.insert(left, room)
    table.insert(left, user)
  end
end
"""

_REAP: Final = _UNCOUNT + """
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[4]) == 1 then return false end
local prefix = 'rt:{p}:'
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = prefix .. 'ps:' .. user
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if fields[i + 1] == ARGV[1] then redis.call('HDEL', key, fields[i]) end
  end
  if redis.call('HLEN', key) == 0 then
    table.insert(gone, user)
    redis.call('ZREM', prefix .. 'on', user)
  end
end
local left = {}
local rooms = redis.call('HGETALL', KEYS[3])
for i = 1, #rooms, 2 do uncount(rooms[i], rooms[i + 1], left) end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
return {gone, left}
"""

# KEYS: rt:{p}:pu:<node>, rt:{p}:rq:<node>, rt:{p}:nodes ; ARGV: node, n_devices,
# then n_devices (user, session) pairs, then (room, user, count) triples.
# Writes this node's live state back; idempotent, so it also corrects drift.
_SYNC: Final = """
local prefix = 'rt:{p}:'
local node = ARGV[1]
local n = tonumber(ARGV[2])
redis.call('SADD', KEYS[3], node)
local i = 3
for _ = 1, n do
  redis.call('HSET', prefix .. 'ps:' .. ARGV[i], ARGV[i + 1], node)
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('ZADD', prefix .. 'on', 0, ARGV[i])
  i = i + 2
end
while i <= #ARGV do
  local field = ARGV[i] .. '\\n' .. ARGV[i + 1]
  local want = tonumber(ARGV[i + 2])
  local had = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if want ~= had then
    redis.call('HSET', KEYS[2], field, want)
    local total = redis.call('HINCRBY', prefix .. 'rp:' .. ARGV[i], ARGV[i + 1], want - had)
    if total <= 0 then redis.call('HDEL', prefix .. 'rp:' .. ARGV[i], ARGV[i + 1]) end
  end
  i = i + 3
end
return 1
"""

# KEYS: rt:{p}:pu:<node>, rt:{p}:rq:<node> ; ARGV: node, n_sessions, the session ids
# this node holds, then the ``<room>\n<user>`` fields it holds. Removes the node's
# other devices and room entries (those that ended while Redis was away); returns
# {room, user, ...} for users who so left a room everywhere.
_PRUNE: Final = _UNCOUNT + """
local prefix = 'rt:{p}:'
local node = ARGV[1]
local n = tonumber(ARGV[2])
local live = {}
for i = 3, 2 + n do live[ARGV[i]] = true end
local keep = {}
for i = 3 + n, #ARGV do keep[ARGV[i]] = true end
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = prefix .. 'ps:' .. user
  local fields = redis.call('HGETALL', key)
  local mine = 0
  for i = 1, #fields, 2 do
    if fields[i + 1] == node then
      if live[fields[i]] then mine = mine + 1 else redis.call('HDEL', key, fields[i]) end
    end
  end
  if mine == 0 then redis.call('SREM', KEYS[1], user) end
  if redis.call('HLEN', key) == 0 then redis.call('ZREM', prefix .. 'on', user) end
end
local stale = {}
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if not keep[fields[i]] then
    uncount(fields[i], fields[i + 1], stale)
    redis.call('HDEL', KEYS[2], fields[i])
  end
end
return stale
"""

# KEYS: rt:{p}:on ; ARGV: page min, max, limit, count min (ZRANGEBYLEX bounds).
# Returns {{user, devices, user, devices, ...}, users between count min and max}.
_ONLINE: Final = """
local users = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, user in ipairs(users) do
  table.insert(out, user)
  table.insert(out, redis.call('HLEN', 'rt:{p}:ps:' .. user))
end
return {out, redis.call('ZLEXCOUNT', KEYS[1], ARGV[4], ARGV[2])}
"""

_T = TypeVar("_T")

UsersGone = Callable[[list[str]], Awaitable[None]]
RoomsLeft = Callable[[list[tuple[str, str]]], Awaitable[None]]
Resync = Callable[[], Awaitable[None]]


def _pairs(flat: Sequence[Any] | None) -> list[tuple[str, str]]:
    items = [text(v) for v in flat or ()]
    return list(zip(items[0::2], items[1::2], strict=True))


class RedisPresence:
    """``PresenceBackend`` and ``RoomPresenceBackend`` in Redis.

    See ``realtimed.presence.PresenceBackend`` and
    ``realtimed.delivery.rooms.RoomPresenceBackend`` for the promises.

    Args:
        client: the broker's Redis client.
        node: this node's id.
        node_ttl_s: a node whose heartbeat is this old is dead.
        timeout_s: the longest any Redis call may take.
        record_type: the presence record class (attrs), to rebuild records read back.

    Resource handling:
        ``run`` heartbeats, reaps and resyncs; the client belongs to the broker.

    Error handling:
        Every call raises ``Unavailable`` when Redis cannot be reached within
        ``timeout_s``. A room change that did not reach Redis marks the node for
        a resync, done on the next heartbeat that succeeds.
    """

    def __init__(self, client: coredis.Redis[bytes] | coredis.RedisCluster[bytes], *, node: str, node_ttl_s: float, timeout_s: float, record_type: type[Any]) -> None:
        self._client = client
        self.node = node
        self._ttl_s = node_ttl_s
        self._timeout_s = timeout_s
        self._record_type = record_type
        self.on_users_gone: UsersGone | None = None
        self.on_rooms_left: RoomsLeft | None = None
        self.on_resync: Resync | None = None
        self._beaten = False  # a heartbeat has been written
        self._previous_run_pending = True
        self.resync_needed = False

    # -- the PresenceBackend calls ----------------------------------------------------------

    async def _call(self, call: Awaitable[_T]) -> _T:
        return await redis_call("presence", call, timeout_s=self._timeout_s)

    async def _change(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script that changes this node's entries; one that fails marks the node for a resync."""
        try:
            return await self._call(self._client.eval(script, keys=keys, args=args))
        except BaseException:
            # Unavailable, or cancelled by the caller's own deadline (a session's
            # cleanup budget): either way Redis may not hold this change.
            self.resync_needed = True
            raise

    async def add_session(self, user_id: str, session_id: str) -> int:
        keys = [_devices_key(user_id), _node_users_key(self.node), NODES_KEY, ONLINE_KEY]
        return int(await self._change(_ADD, keys, [session_id, self.node, user_id]))

    async def arrive(self, user_id: str, session_id: str, *, online: bool = False) -> tuple[int, Any]:
        keys = [_devices_key(user_id), _node_users_key(self.node), NODES_KEY, _record_key(user_id), ONLINE_KEY]
        count, raw = await self._change(_ARRIVE, keys, [session_id, self.node, user_id, "1" if online else "0"])
        return int(count), self._record_type(**orjson.loads(raw)) if raw else None

    async def remove_session(self, user_id: str, session_id: str) -> int:
        keys = [_devices_key(user_id), _node_users_key(self.node), ONLINE_KEY]
        return int(await self._change(_REMOVE, keys, [session_id, self.node, user_id]))

    async def online(self, *, prefix: str = "", after: str | None = None, limit: int = 100) -> tuple[list[tuple[str, int]], int]:
        low = prefix.encode()
        # No UTF-8 text holds the byte 0xff: every id with the prefix sorts below prefix + 0xff.
        count_min, high = (b"[" + low, b"[" + low + b"\xff") if prefix else (b"-", b"+")
        page_min = b"(" + after.encode() if after is not None and after.encode() >= low else count_min
        raw: Any = await self._call(self._client.eval(_ONLINE, keys=[ONLINE_KEY], args=[page_min, high, limit, count_min]))
        flat, total = raw
        items = [text(v) for v in flat or ()]
        return [(user, int(n)) for user, n in zip(items[0::2], items[1::2], strict=True)], int(total)

    async def device_count(self, user_id: str) -> int:
        """The user's devices on every node."""
        return int(await self._call(self._client.hlen(_devices_key(user_id))))

    async def get(self, user_ids: Sequence[str]) -> dict[str, Any]:
        if not user_ids:
            return {}
        values = await self._call(self._client.mget([_record_key(uid) for uid in user_ids]))
        out = {}
        for uid, raw in zip(user_ids, values, strict=True):
            if raw:
                out[uid] = self._record_type(**orjson.loads(raw))
        return out

    async def put(self, user_id: str, record: Any) -> None:
        if record.is_default:
            await self._call(self._client.delete([_record_key(user_id)]))
        else:
            await self._call(self._client.set(_record_key(user_id), orjson.dumps(attrs.asdict(record))))

    # -- the RoomPresenceBackend calls ------------------------------------------------------

    def _room_call(self, room: str, user_id: str) -> tuple[list[str], list[Any]]:
        keys = [_room_key(room), _node_rooms_key(self.node), NODES_KEY]
        return keys, [user_id, f"{room}\n{user_id}", self.node]

    async def join(self, room: str, user_id: str) -> bool:
        """Count one more subscription of the user to the room; True if it is their first anywhere."""
        return int(await self._change(_ROOM_JOIN, *self._room_call(room, user_id))) == 1

    async def leave(self, room: str, user_id: str) -> bool:
        """Count one subscription less; True if the user has none left anywhere."""
        return int(await self._change(_ROOM_LEAVE, *self._room_call(room, user_id))) <= 0

    async def leave_many(self, rooms: Sequence[str], user_id: str) -> list[str]:
        """``leave`` of each room, in one script: the rooms the user has no subscription left to anywhere."""
        if not rooms:
            return []
        keys = [_node_rooms_key(self.node), *(_room_key(room) for room in rooms)]
        return [text(room) for room in await self._change(_ROOMS_LEAVE, keys, [user_id, *rooms]) or ()]

    async def members(self, room: str) -> dict[str, int]:
        """Every user subscribed to the room on any node, with their subscriptions."""
        raw = await self._call(self._client.hgetall(_room_key(room)))
        return {text(user): int(count) for user, count in raw.items() if int(count) > 0}

    # -- heartbeats, reaping and resync ----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat this node, resync it if needed and reap dead ones, every third of ``node_ttl_s``."""
        period = self._ttl_s / 3
        try:
            # Before any session registers: what a previous run of this node left
            # (killed, or restarted within the ttl) is reaped as a dead node's would be.
            await self.reap_previous_run()
        except (Unavailable, *LINK_ERRORS) as exc:
            log.warning("node %s: presence left by a previous run not reaped yet: %s", self.node, exc)
        task_status.started()
        # A Redis outage is said once, then at a doubling interval with a count.
        outage = logs.Repeated(log, first_interval_s=10.0, max_interval_s=300.0)
        while True:
            try:
                if self._previous_run_pending:
                    await self.reap_previous_run()
                await self.heartbeat()
                if self.resync_needed and self.on_resync is not None:
                    await self.on_resync()
                await self.reap()
            except (Unavailable, *LINK_ERRORS) as exc:
                outage.failed(trio.current_time(), "node %s: presence heartbeat failed: %s", self.node, describe_link_error(exc))
            else:
                outage.recovered(trio.current_time(), "node %s: presence heartbeats written again", self.node)
            await trio.sleep(period)

    async def heartbeat(self) -> None:
        """Refresh this node's heartbeat; one that had expired marks the node for a resync."""
        with trio.fail_after(self._timeout_s):
            before = await self._client.set(heartbeat_key(self.node), b"1", px=int(self._ttl_s * 1000), get=True)
        if before is None and self._beaten:
            log.warning("node %s: its heartbeat had expired; writing its devices and rooms back", self.node)
            self.resync_needed = True
        self._beaten = True

    async def sync(self, devices: Iterable[tuple[str, str]], rooms: Iterable[tuple[str, str, int]]) -> list[tuple[str, str]]:
        """Write this node's live state back: (user, session) devices and (room, user, count) subscriptions.

        Entries of this node that are not in the given state are removed. Returns
        (room, user) for users who so left a room everywhere. Clears
        ``resync_needed`` when done.
        """
        self.resync_needed = False
        device_list = list(devices)
        room_list = list(rooms)
        keys = [_node_users_key(self.node), _node_rooms_key(self.node), NODES_KEY]
        for start in range(0, max(len(device_list), len(room_list), 1), SYNC_BATCH):
            part_devices = device_list[start : start + SYNC_BATCH]
            part_rooms = room_list[start : start + SYNC_BATCH]
            args: list[Any] = [self.node, len(part_devices)]
            for user, session in part_devices:
                args += [user, session]
            for room, user, count in part_rooms:
                args += [room, user, count]
            await self._change(_SYNC, keys, args)
        prune_args: list[Any] = [self.node, len(device_list), *(session for _, session in device_list)]
        prune_args += [f"{room}\n{user}" for room, user, _ in room_list]
        return _pairs(await self._change(_PRUNE, keys[:2], prune_args))

    async def reap_previous_run(self) -> None:
        """Reap what an earlier run of this node id left in Redis."""
        users, rooms = await self._reap_node(self.node, force=True) or ([], [])
        self._previous_run_pending = False
        if users:
            log.warning("node %s: %d users of a previous run of this node have no device left", self.node, len(users))
            if self.on_users_gone is not None:
                await self.on_users_gone(users)
        if rooms and self.on_rooms_left is not None:
            await self.on_rooms_left(rooms)

    async def _reap_node(self, node: str, *, force: bool = False) -> tuple[list[str], list[tuple[str, str]]] | None:
        keys = [_node_users_key(node), NODES_KEY, _node_rooms_key(node), heartbeat_key(node)]
        result: Any = await self._call(self._client.eval(_REAP, keys=keys, args=[node, "1" if force else "0"]))
        if not result:
            return None
        users, rooms = result
        return [text(u) for u in users or ()], _pairs(rooms)

    async def reap(self) -> list[str]:
        """Remove the devices and room subscriptions of dead nodes; returns the users who have no device left."""
        with trio.fail_after(self._timeout_s):
            nodes = [text(n) for n in await self._client.smembers(NODES_KEY)]
        gone: list[str] = []
        left: list[tuple[str, str]] = []
        alive = 1  # this node
        for other in nodes:
            if other == self.node:
                continue
            with trio.fail_after(self._timeout_s):
                if await self._client.exists([heartbeat_key(other)]):
                    alive += 1
                    continue
                # One reaper per dead node, whichever node gets there first.
                lock = await self._client.set(
                    PREFIX + "reap:" + other, self.node.encode(), condition=coredis.PureToken.NX, px=int(self._ttl_s * 2000)
                )
                if not lock:
                    continue
            reaped = await self._reap_node(other)
            if reaped is None:
                continue  # it heartbeated again just now
            names, rooms = reaped
            log.warning("node %s: node %s stopped heartbeating; %d of its users have no device left", self.node, other, len(names))
            gone.extend(names)
            left.extend(rooms)
        metrics.CLUSTER_NODES.set(alive)
        if gone and self.on_users_gone is not None:
            await self.on_users_gone(gone)
        if left and self.on_rooms_left is not None:
            await self.on_rooms_left(left)
        return gone
