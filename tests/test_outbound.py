"""The outbound client of webhooks and HTTP jobs: kept-alive connections (reused,
bounded, closed when idle, never reused after an answer that did not end cleanly)
and name lookups reused for ``dns_cache_s``, against a real HTTP receiver that
counts its connections and verifies each request with the ``standardwebhooks``
package. Trio's MockClock stands in for the idle and cache times.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from realtimed.config import WebhooksConfig
from realtimed.outbound import AttemptFailed, Outbound, Refused, Response, signature_headers
from tests.webhook_receiver import Receiver, new_secret

SECRET = new_secret()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.25)


def settings(**keys: Any) -> WebhooksConfig:
    return attrs.evolve(WebhooksConfig(allow_private=True, timeout_s=5.0, connect_timeout_s=5.0), **keys)


async def started(nursery: trio.Nursery) -> Receiver:
    receiver = Receiver([SECRET])
    await receiver.start(nursery)
    return receiver


async def post(outbound: Outbound, url: str, n: int = 0) -> Response:
    body = b'{"n":%d}' % n
    headers = signature_headers([SECRET], webhook_id=f"msg_{n}", timestamp=int(time.time()), body=body)
    return await outbound.post(url, headers=headers, body=body)


async def settled() -> None:
    """Let the receiver notice the connections the client closed."""
    await trio.testing.wait_all_tasks_blocked()


async def test_requests_one_after_another_reuse_one_connection(nursery: trio.Nursery) -> None:
    receiver = await started(nursery)
    outbound = Outbound(settings())
    for n in range(20):
        assert (await post(outbound, receiver.url, n)).status == 200
    assert len(receiver.received) == 20 and receiver.unverified == 0
    assert receiver.connections == 1 and {entry.connection for entry in receiver.log} == {1}
    await outbound.aclose()
    await settled()
    assert receiver.open == 0


async def test_requests_at_once_keep_at_most_max_idle_connections(nursery: trio.Nursery) -> None:
    receiver = await started(nursery)
    outbound = Outbound(settings(max_idle_connections=3))
    statuses: list[int] = []

    async def one(n: int) -> None:
        statuses.append((await post(outbound, receiver.url, n)).status)

    for round_ in range(3):
        async with trio.open_nursery() as requests:
            for n in range(8):
                requests.start_soon(one, round_ * 8 + n)
        await settled()
        assert receiver.open <= 3  # the rest were closed after their answer
    assert statuses == [200] * 24 and len(receiver.received) == 24
    # 8 at once need 8 connections; each later round reuses the 3 kept ones.
    assert receiver.connections <= 8 + 5 + 5
    await outbound.aclose()


async def test_idle_connections_are_closed_after_keepalive_s(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    receiver = await started(nursery)
    outbound = Outbound(settings(keepalive_s=10.0))
    async with trio.open_nursery() as sweeping:
        sweeping.start_soon(outbound.run)  # looks every 5 s
        await post(outbound, receiver.url, 1)
        await trio.sleep(4)
        await post(outbound, receiver.url, 2)  # idle 4 s: reused
        assert receiver.connections == 1 and receiver.open == 1
        await trio.sleep(12)
        await settled()
        assert receiver.open == 0  # closed by run(), with no request coming
        sweeping.cancel_scope.cancel()
    await post(outbound, receiver.url, 3)
    assert receiver.connections == 2
    # A connection past keepalive_s is not taken even before run() gets to it.
    quiet = Outbound(settings(keepalive_s=10.0))
    await post(quiet, receiver.url, 4)
    await trio.sleep(11)
    await post(quiet, receiver.url, 5)
    assert [entry.connection for entry in receiver.log[-2:]] == [3, 4]
    await outbound.aclose()
    await quiet.aclose()


async def test_keepalive_s_0_opens_a_connection_per_request(nursery: trio.Nursery) -> None:
    receiver = await started(nursery)
    outbound = Outbound(settings(keepalive_s=0.0))
    for n in range(3):
        await post(outbound, receiver.url, n)
    await settled()
    assert receiver.connections == 3 and receiver.open == 0


@pytest.mark.parametrize("close_after", ["header", "silently"])
async def test_a_receiver_closing_after_each_answer_gets_every_request(
    nursery: trio.Nursery, close_after: str
) -> None:
    receiver = await started(nursery)
    receiver.close_after = close_after
    outbound = Outbound(settings())
    for n in range(10):
        assert (await post(outbound, receiver.url, n)).status == 200
    assert [r.webhook_id for r in receiver.received] == [f"msg_{n}" for n in range(10)]
    assert receiver.connections == 10  # each on a connection of its own, none sent twice
    assert receiver.requests == 10


async def test_a_connection_is_not_reused_after_a_cut_answer_or_an_error(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    receiver = await started(nursery)
    outbound = Outbound(settings(max_response_bytes=4))
    receiver.body = b"x" * 5000
    assert (await post(outbound, receiver.url, 1)).body == b"xxxx"  # the rest was not read: closed
    receiver.body = b"{}"
    await post(outbound, receiver.url, 2)
    await post(outbound, receiver.url, 3)
    assert [entry.connection for entry in receiver.log] == [1, 2, 2]
    receiver.delay_s = 60.0  # beyond timeout_s: the request fails and its connection is dropped
    with pytest.raises(AttemptFailed, match="timeout_s"):
        await post(outbound, receiver.url, 4)
    receiver.delay_s = 0.0
    await post(outbound, receiver.url, 5)
    assert receiver.log[-1].connection == 3
    await outbound.aclose()


@attrs.define
class CountingResolver(trio.abc.HostnameResolver):
    """Answers every name with 127.0.0.1, counting the lookups."""

    lookups: list[str] = attrs.Factory(list)

    async def getaddrinfo(
        self, host: bytes | None, port: bytes | str | int | None, family: int = 0, type: int = 0, proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[str, int]]]:
        assert host is not None
        self.lookups.append(host.decode())
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))]

    async def getnameinfo(self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_a_name_is_looked_up_once_per_dns_cache_s(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    receiver = await started(nursery)
    resolver = CountingResolver()
    trio.socket.set_custom_hostname_resolver(resolver)
    url = f"http://app.test:{receiver.port}/hooks"
    outbound = Outbound(settings(dns_cache_s=30.0))
    for n in range(5):
        await post(outbound, url, n)
    assert resolver.lookups == ["app.test"]
    assert receiver.received[-1].headers["host"] == f"app.test:{receiver.port}"
    await trio.sleep(31)
    await post(outbound, url, 5)
    assert resolver.lookups == ["app.test"] * 2
    await post(outbound, receiver.url, 6)  # an IP address: no lookup
    assert len(resolver.lookups) == 2
    uncached = Outbound(settings(dns_cache_s=0.0))
    await post(uncached, url, 7)
    await post(uncached, url, 8)
    assert len(resolver.lookups) == 4
    # A refused address is refused at every attempt (and never remembered as good).
    public_only = Outbound(settings(allow_private=False))
    for n in (9, 10):
        with pytest.raises(Refused, match="allow_private"):
            await post(public_only, url, n)
    with pytest.raises(Refused, match="not a public address"):
        await post(public_only, receiver.url, 11)
    assert len(resolver.lookups) == 6
    # A reload forgets what was resolved (allow_private may have changed).
    outbound.configure(settings(dns_cache_s=30.0, allow_private=False))
    with pytest.raises(Refused):
        await post(outbound, url, 12)
    assert len(receiver.received) == 9
    for client in (outbound, uncached, public_only):
        await client.aclose()
