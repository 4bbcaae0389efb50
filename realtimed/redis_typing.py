"""Typing state and the typing rate limit in Redis, shared by every node.

Keys, per user and conversation (one hash tag, so each script's keys share a
slot of a Redis Cluster):
    ``rt:{ty:<conversation>:<user>}:s``  hash: ``d`` the deadline (ms, Redis time),
                                           ``n`` the node that last refreshed it
    ``rt:{ty:<conversation>:<user>}:b``  hash: ``t`` tokens, ``at`` when (ms)

Time is Redis's own (``TIME``), so nodes whose clocks differ agree on deadlines.
Both keys expire by themselves a while after their last use, so a state whose
nodes all died goes away too.
"""

from __future__ import annotations

from typing import Any, Final

from realtimed.broker.redis import redis_call

# How long a state outlives its deadline in Redis, for the timers of every node
# that refreshed it to find it and end it once.
_LINGER_MS: Final = 60_000

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: bucket ; ARGV: rate per s, burst. Returns 0, or the ms until a token.
_TAKE: Final = (
    _NOW
    + """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', KEYS[1], 't') or burst)
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""
)

# KEYS: state ; ARGV: timeout ms, node. Returns 1 when there was no state.
_BEGIN: Final = (
    _NOW
    + """
local first = redis.call('EXISTS', KEYS[1]) == 0
redis.call('HSET', KEYS[1], 'd', now + tonumber(ARGV[1]), 'n', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + ARGV[3])
if first then return 1 end
return 0
"""
)

# KEYS: state ; ARGV: node or ''. Returns 1 when this call removed it.
_END: Final = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'n') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: state. Returns -1 when gone, 0 when due and removed here, else the ms left.
_EXPIRE: Final = (
    _NOW
    + """
local deadline = redis.call('HGET', KEYS[1], 'd')
if not deadline then return -1 end
local left = tonumber(deadline) - now
if left > 0 then return left end
redis.call('DEL', KEYS[1])
return 0
"""
)

# KEYS: state. Returns 1 when its deadline is ahead.
_TYPING: Final = (
    _NOW
    + """
local deadline = redis.call('HGET', KEYS[1], 'd')
if deadline and tonumber(deadline) > now then return 1 end
return 0
"""
)


def _keys(user_id: str, conversation_id: str) -> tuple[str, str]:
    tag = f"rt:{{ty:{conversation_id}:{user_id}}}:"
    return tag + "s", tag + "b"


class RedisTyping:
    """``TypingBackend`` in Redis (see ``realtimed.typing_state.TypingBackend``).

    Error handling:
        Every call raises ``Unavailable`` when Redis cannot be reached within
        ``timeout_s``.
    """

    shared = True

    def __init__(self, client: Any, *, node: str, timeout_s: float) -> None:
        self._client = client
        self._node = node
        self._timeout_s = timeout_s

    async def _eval(self, script: str, key: str, args: list[Any]) -> int:
        return int(await redis_call("typing state", self._client.eval(script, keys=[key], args=args), timeout_s=self._timeout_s))

    async def take_token(self, user_id: str, conversation_id: str, *, rate: float, burst: float) -> float:
        _, bucket = _keys(user_id, conversation_id)
        return await self._eval(_TAKE, bucket, [rate, burst]) / 1000

    async def begin(self, user_id: str, conversation_id: str, *, timeout_s: float) -> bool:
        state, _ = _keys(user_id, conversation_id)
        return await self._eval(_BEGIN, state, [round(timeout_s * 1000), self._node, _LINGER_MS]) == 1

    async def end(self, user_id: str, conversation_id: str, *, node_only: bool = False) -> bool:
        state, _ = _keys(user_id, conversation_id)
        return await self._eval(_END, state, [self._node if node_only else ""]) == 1

    async def expire(self, user_id: str, conversation_id: str) -> float | None:
        state, _ = _keys(user_id, conversation_id)
        left = await self._eval(_EXPIRE, state, [])
        if left < 0:
            return None
        return left / 1000

    async def typing(self, conversation_id: str, user_ids: list[str]) -> list[str]:
        # One state per (user, conversation), each in its own slot: one call per user.
        return [uid for uid in user_ids if await self._eval(_TYPING, _keys(uid, conversation_id)[0], []) == 1]
