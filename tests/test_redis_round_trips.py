"""How many Redis calls presence makes per connect and per disconnect on a cluster node.

The presence backend's Redis client is wrapped by one that records every call naming the
user (the heartbeats and reaping of the node go on beside them and are not counted).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import trio

from realtimed.redis_presence import RedisPresence
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.tokens import token


class _Counting:
    """A Redis client that records (command, its arguments) of every call before making it."""

    def __init__(self, client: Any, calls: list[tuple[str, str]]) -> None:
        self._client = client
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append((name, repr((args, kwargs))))
            return method(*args, **kwargs)

        return call


def _naming(calls: list[tuple[str, str]], user: str) -> Callable[[], list[str]]:
    return lambda: [name for name, args in calls if user in args]


async def test_a_disconnect_leaves_every_presence_room_in_one_call(start_daemon: DaemonFactory, redis_url: str) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(
            {
                "server": {"node": "rt-" + uuid.uuid4().hex[:8]},
                "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
                "presence": {"offline_grace_s": 3600},
                "namespaces": [{"prefix": "job:", "history_size": 10, "presence": True}],
            }
        )
        backend = daemon.services.presence.backend
        assert isinstance(backend, RedisPresence)
        calls: list[tuple[str, str]] = []
        backend._client = _Counting(backend._client, calls)
        user = "u" + uuid.uuid4().hex
        seen = _naming(calls, user)
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        client = await WsClient.connect(url, token=token(user, rooms=["job:*"]))
        await client.event("session.ready")
        # The first presence.updated is sent at once: wait for the record read it makes.
        while "mget" not in seen():
            await trio.sleep(0.01)
        rooms = [f"job:{user}-1", f"job:{user}-2", f"job:{user}-3"]
        for room in rooms:
            await client.ok("subscribe", {"room": room})
        calls.clear()
        await client.close()
        while daemon.services.gateway.count("websocket") or len(seen()) < 2:
            await trio.sleep(0.01)
        # The leaves of the three rooms in one script, then the device's removal.
        assert seen() == ["eval", "eval"]
        room_call = next(args for _, args in calls if user in args)
        assert all(room in room_call for room in rooms)


async def test_a_connect_that_brings_the_user_online_writes_the_status_with_the_arrival(
    start_daemon: DaemonFactory, redis_url: str
) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(
            {
                "server": {"node": "rt-" + uuid.uuid4().hex[:8]},
                "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
                "presence": {"offline_grace_s": 3600},
            }
        )
        backend = daemon.services.presence.backend
        assert isinstance(backend, RedisPresence)
        calls: list[tuple[str, str]] = []
        backend._client = _Counting(backend._client, calls)
        user = "u" + uuid.uuid4().hex
        seen = _naming(calls, user)
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        client = await WsClient.connect(url, token=token(user))
        await client.event("session.ready")
        while "mget" not in seen():
            await trio.sleep(0.01)
        # The admission's device count, the arrival (device, online list, status written, record
        # read), and the record read of the first presence.updated: no separate status write.
        assert seen() == ["hlen", "eval", "mget"]
        assert (await backend.get([user]))[user].status == "online"
        await client.close()
