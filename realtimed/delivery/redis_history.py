"""Room history in Redis: every node sees the same ``{seq, epoch}`` and publications.

Per room, ``rt:{r:<room>}:hm`` is a hash holding ``epoch`` and ``seq``, and
``rt:{r:<room>}:hs`` a stream capped at the namespace's ``history_size`` whose
entry ids are ``<seq>-1``. Both keys carry the hash tag ``{r:<room>}`` (Redis
hashes what lies between the first ``{`` and the next ``}``, which is the same
non-empty text for both whatever the room holds), so in a Redis Cluster they
share a slot and every script below runs on one shard. A Lua script appends
atomically (next ``seq``, stream entry, expiry refreshed). Both keys expire
``history_ttl_s`` after the last append, and each entry carries its publish time
so that older ones are not replayed.

A Redis that lost the keys (flushed, restarted without persistence, expired)
starts a new epoch on the next append or subscribe: a client holding the old
epoch gets ``recovered: false``, never a silent gap. So does a Redis whose
replication history changed (``master_replid``: a replica promoted by a
failover, or a restart), since the writes the old primary had not passed on
may be missing and their ``seq`` would otherwise be given again.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

import orjson

from realtimed.broker.redis import RedisClient, redis_call, text
from realtimed.config import NamespaceConfig
from realtimed.delivery.rooms import Publication, Recovery
from realtimed.protocol import encode_json

# The epoch belongs to one replication history of the server: a replica promoted by a
# failover (or a restarted server) has a new master_replid, and whatever the old
# primary had not passed on may be missing, so the room starts a new epoch.
_CURRENT_EPOCH: Final = """
local rid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and redis.call('HGET', KEYS[1], 'rid') ~= rid then epoch = false end
"""

_APPEND: Final = _CURRENT_EPOCH + """
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'rid', rid)
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-1', 'e', ARGV[4], 'd', ARGV[5], 't', ARGV[6], 'ms', ARGV[7])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {seq, epoch}
"""

_POSITION: Final = _CURRENT_EPOCH + """
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'rid', rid)
  redis.call('DEL', KEYS[2])
  if tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return {tonumber(redis.call('HGET', KEYS[1], 'seq')), epoch}
"""


def _keys(room: str) -> list[str]:
    tagged = "rt:{r:" + room + "}:"
    return [tagged + "hm", tagged + "hs"]


def _ttl_ms(ns: NamespaceConfig) -> int:
    return int(ns.history_ttl_s * 1000)


class RedisHistory:
    """``HistoryBackend`` in Redis (see ``gateway.rooms.HistoryBackend`` for the promises)."""

    def __init__(self, client: RedisClient, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await redis_call("room history", self._client.eval(script, keys=keys, args=args), timeout_s=self._timeout_s)

    async def append(self, room: str, ns: NamespaceConfig, event: str, data: Any, published_at: str) -> tuple[int, str]:
        encoded = encode_json(data)  # before the script takes a seq: an encode failure takes none
        seq, epoch = await self._call(
            _APPEND,
            _keys(room),
            [secrets.token_hex(4), ns.history_size, _ttl_ms(ns), event, encoded, published_at, int(time.time() * 1000)],
        )
        return int(seq), text(epoch)

    async def position(self, room: str, ns: NamespaceConfig) -> tuple[int, str]:
        seq, epoch = await self._call(_POSITION, _keys(room), [secrets.token_hex(4), _ttl_ms(ns)])
        return int(seq), text(epoch)

    async def _entries(self, room: str, since_seq: int, count: int) -> list[tuple[int, dict[Any, Any]]]:
        raw = await redis_call(
            "room history",
            self._client.xrange(_keys(room)[1], start=f"{since_seq + 1}-1", end="+", count=count),
            timeout_s=self._timeout_s,
        )
        out = []
        for entry in raw:
            identifier = text(entry.identifier)
            out.append((int(identifier.split("-", 1)[0]), dict(entry.field_values)))
        return out

    @staticmethod
    def _publication(seq: int, fields: dict[Any, Any]) -> Publication:
        get = {(text(k)): v for k, v in fields.items()}
        # Kept as it was encoded at append: replayed as it is, never decoded and encoded again.
        return Publication(seq, text(get["e"]), orjson.Fragment(get["d"]), text(get["t"]))

    async def recover(self, room: str, ns: NamespaceConfig, *, since_seq: int, since_epoch: str) -> Recovery:
        seq, epoch = await self.position(room, ns)
        if since_epoch != epoch or since_seq > seq:
            return Recovery(seq, epoch, False)
        missed = seq - since_seq
        if missed == 0:
            return Recovery(seq, epoch, True)
        if missed > ns.recovery_cap:
            return Recovery(seq, epoch, False)
        entries = await self._entries(room, since_seq, missed)
        horizon_ms = (time.time() - ns.history_ttl_s) * 1000 if ns.history_ttl_s > 0 else None
        expected = list(range(since_seq + 1, since_seq + 1 + missed))
        if [s for s, _ in entries] != expected:
            return Recovery(seq, epoch, False)  # trimmed, or appended to meanwhile: all or nothing
        if horizon_ms is not None and int(text(entries[0][1].get(b"ms", b"0"))) < horizon_ms:
            return Recovery(seq, epoch, False)
        return Recovery(seq, epoch, True, tuple(self._publication(s, f) for s, f in entries))

    async def read(self, room: str, ns: NamespaceConfig, *, since_seq: int, limit: int) -> tuple[int, str, list[Publication]]:
        seq, epoch = await self.position(room, ns)
        entries = await self._entries(room, since_seq, limit)
        return seq, epoch, [self._publication(s, f) for s, f in entries]
