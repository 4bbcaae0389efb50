"""A userspace TCP fault proxy for the fault tests: delay, stall, reset, blackhole.

``tc netem`` needs privileges the test machines do not grant, so the faults are
made in Trio between a daemon and its Redis or PostgreSQL: the daemon is given
the proxy's address, and the test changes the proxy's mode while traffic flows.

- ``delay(seconds)``: every chunk is forwarded ``seconds`` after it arrived, in
  order (added latency, both ways).
- ``stall()``: nothing is forwarded, both ways, and connections stay open; what
  was sent meanwhile is forwarded on ``heal()``. A server that stops answering
  (a Redis busy in a long script, a frozen VM).
- ``blackhole()``: a partition. Bytes are read and dropped both ways, new
  connections are accepted and hear nothing; nothing is closed. What was sent
  meanwhile is lost; on ``heal()`` the connections opened during the partition
  are closed by reset too, so that both ends reconnect (a partition that heals
  without a reset would leave TCP streams holding dropped bytes, which a real
  network never does).
- ``reset()``: every open connection is closed with an RST now (``SO_LINGER``
  of 0); new connections are accepted as before.
- ``refuse()``: new connections are refused (the listener is closed) until
  ``await accept_again()``.
- ``heal()``: back to forwarding, at no delay.

Resource handling: ``run`` owns the listener and one nursery of connections; each
connection is a pair of pumps in its own cancel scope, and its two sockets are
closed when either side ends, when it is reset, or when ``run`` is cancelled.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Callable

import attrs
import trio

_CHUNK = 65536
# Chunks a delayed direction may hold before it stops reading (TCP backpressure then).
_DELAY_QUEUE = 256


class Mode(enum.Enum):
    FORWARD = "forward"
    STALL = "stall"
    BLACKHOLE = "blackhole"


@attrs.define(eq=False)
class _Link:
    client: trio.SocketStream
    server: trio.SocketStream
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


def _abort(stream: trio.SocketStream) -> None:
    """Make the coming close an RST rather than a FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class FaultProxy:
    """One listening port on 127.0.0.1 forwarding to ``target_port``.

    Args:
        target_port: the port of the real server (Redis, PostgreSQL) on 127.0.0.1.
        port: the port to listen on; 0 picks a free one (``port`` is set once
            ``run`` has started).
    """

    def __init__(self, target_port: int, *, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.mode = Mode.FORWARD
        self.delay_s = 0.0
        self.accepted = 0
        self.dropped_bytes = 0
        self._links: set[_Link] = set()
        self._changed = trio.Event()
        self._refusing = False
        self._listener_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def url_port(self) -> int:
        assert self.port, "the proxy is not running"
        return self.port

    @property
    def open_links(self) -> int:
        return len(self._links)

    # -- control ------------------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        self.delay_s = seconds
        self._set(Mode.FORWARD)

    def stall(self) -> None:
        self._set(Mode.STALL)

    def blackhole(self) -> None:
        self._set(Mode.BLACKHOLE)

    def heal(self) -> None:
        was_blackhole = self.mode is Mode.BLACKHOLE
        self.delay_s = 0.0
        if was_blackhole:
            self.reset()
        self._set(Mode.FORWARD)

    def reset(self) -> None:
        """Close every open connection with an RST, now."""
        for link in list(self._links):
            _abort(link.client)
            _abort(link.server)
            link.scope.cancel()

    def refuse(self) -> None:
        """Close the listener: new connections are refused until ``accept_again``."""
        if self._listener_scope is not None:
            self._listener_scope.cancel()
            self._listener_scope = None

    async def accept_again(self) -> None:
        """Listen again, on the same port."""
        assert self._nursery is not None
        if self._listener_scope is None:
            await self._nursery.start(self._listen)

    def _set(self, mode: Mode) -> None:
        self.mode = mode
        self._changed.set()
        self._changed = trio.Event()

    # -- service ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._listen)
            task_status.started()

    async def _listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as scope:
            self._listener_scope = scope
            assert self._nursery is not None
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=self._nursery)
        for listener in listeners:
            await listener.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            _abort(client)
            await client.aclose()
            return
        link = _Link(client, server)
        self._links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._direction, client, server, nursery.cancel_scope.cancel)
                    nursery.start_soon(self._direction, server, client, nursery.cancel_scope.cancel)
        finally:
            self._links.discard(link)
            with trio.CancelScope(shield=True):
                await client.aclose()
                await server.aclose()

    async def _direction(self, src: trio.SocketStream, dst: trio.SocketStream, end: Callable[[], None]) -> None:
        """One direction: read, then forward in order once each chunk's time has come."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_DELAY_QUEUE)

        async def reader() -> None:
            async with send:
                while True:
                    try:
                        chunk = await src.receive_some(_CHUNK)
                    except trio.BrokenResourceError:
                        break
                    if not chunk:
                        break
                    if self.mode is Mode.BLACKHOLE:
                        self.dropped_bytes += len(chunk)
                        continue
                    await send.send((trio.current_time() + self.delay_s, chunk))

        async def writer() -> None:
            async with receive:
                async for due, chunk in receive:
                    while self.mode is not Mode.FORWARD:
                        if self.mode is Mode.BLACKHOLE:
                            self.dropped_bytes += len(chunk)
                            break
                        await self._changed.wait()
                    else:
                        await trio.sleep_until(due)
                        try:
                            await dst.send_all(chunk)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
            end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
