"""Frame accounting over a real socket, with the third-party ``wsproto`` client.

Every text frame is charged to the socket's token bucket before it is parsed,
and malformed frames count toward ``gateway.abuse_limit`` like RATE_LIMITED
refusals: a flood of garbage gets at most ``abuse_limit`` replies, then close 4009.
wsproto lets a test write thousands of frames in one ``send_all`` and count every
reply exactly.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from realtimed.daemon import Daemon
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.tokens import token


class RawClient:
    """A WebSocket client that writes frames in bulk and records every frame it receives."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._read = 0  # frames handed out by next_frame

    @classmethod
    async def connect(cls, daemon: Daemon, *, user: str | None = "alice") -> RawClient:
        host, port = daemon.address()
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        target = "/ws" if user is None else f"/ws?token={token(user)}"
        await stream.send_all(ws.send(Request(host="127.0.0.1", target=target)))
        client = cls(stream, ws)
        while True:
            data = await stream.receive_some(65536)
            assert data, "the server closed during the handshake"
            ws.receive_data(data)
            if any(isinstance(event, AcceptConnection) for event in ws.events()):
                return client

    def frame_bytes(self, texts: list[str]) -> bytes:
        return b"".join(self.ws.send(TextMessage(data=text)) for text in texts)

    async def send(self, texts: list[str]) -> None:
        await self.stream.send_all(self.frame_bytes(texts))

    async def next_frame(self) -> dict[str, Any]:
        """The next text frame (the session.ready event included)."""
        while len(self.frames) == self._read:
            if not await self._pump():
                raise EOFError("closed")
        self._read += 1
        return self.frames[self._read - 1]

    async def next_reply(self) -> dict[str, Any]:
        """The next reply, skipping events."""
        while "event" in (frame := await self.next_frame()):
            pass
        return frame

    async def read_until_closed(self) -> int:
        while await self._pump():
            pass
        assert self.close_code is not None
        return self.close_code

    async def _pump(self) -> bool:
        """Read once and record what came; False when the connection is over."""
        if self.close_code is not None:
            return False
        data = await self.stream.receive_some(65536)
        if not data:
            self.close_code = self.close_code or 1006
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self.frames.append(orjson.loads(event.data))
            elif isinstance(event, CloseConnection):
                # Recorded only: the test then drops the connection (a flood may still be writing).
                self.close_code = event.code
                return False
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def _replies(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame for frame in frames if "event" not in frame]


@pytest.mark.parametrize("authenticated", [True, False], ids=["after-auth", "before-auth"])
async def test_flood_of_malformed_frames_is_closed_4009(start_daemon: DaemonFactory, authenticated: bool) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        limit = daemon.services.config.gateway.abuse_limit
        client = await RawClient.connect(daemon, user="alice" if authenticated else None)
        if authenticated:
            assert (await client.next_frame())["event"] == "session.ready"
        garbage = ["not json", "[1, 2]", '{"id": true, "op": "ping"}', '{"id": 7}', '{"op": "no.such.op"}']
        flood = [garbage[i % len(garbage)] for i in range(10_000)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, flood)
            code = await client.read_until_closed()
            nursery.cancel_scope.cancel()  # the rest of the flood need not be written
        await client.aclose()
        assert code == 4009
        replies = _replies(client.frames)
        # One reply per answerable malformed frame, none after the limit; the
        # fire-and-forget one ({"op": "no.such.op"}) is counted but not answered.
        assert len(replies) == limit * 4 // 5
        assert {reply["error"]["code"] for reply in replies} == {"BAD_REQUEST"}


async def test_malformed_frames_are_charged_to_the_bucket(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"gateway": {"ops_burst": 5, "ops_per_s": 0.1, "abuse_limit": 1000}})
        client = await RawClient.connect(daemon)
        assert (await client.next_frame())["event"] == "session.ready"
        await client.send(["not json"] * 5 + ['{"id": "p", "op": "ping"}'])
        replies = [await client.next_reply() for _ in range(6)]
        assert [reply["error"]["code"] for reply in replies[:5]] == ["BAD_REQUEST"] * 5
        assert replies[5]["id"] == "p" and replies[5]["error"]["code"] == "RATE_LIMITED"
        assert replies[5]["error"]["retry_after_ms"] > 0
        # Over the bucket, a malformed frame is refused as RATE_LIMITED (id null) without being looked at twice.
        await client.send(["not json"])
        limited = await client.next_reply()
        assert limited["id"] is None and limited["error"]["code"] == "RATE_LIMITED"


async def test_a_good_frame_resets_the_refusal_count(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"gateway": {"abuse_limit": 3}})
        client = await RawClient.connect(daemon)
        assert (await client.next_frame())["event"] == "session.ready"
        for round_ in range(3):
            await client.send(["not json", "not json", f'{{"id": {round_}, "op": "ping"}}'])
            replies = [await client.next_reply() for _ in range(3)]
            assert [r["ok"] for r in replies] == [False, False, True], replies
        await client.send(["not json"] * 3)
        assert await client.read_until_closed() == 4009
        assert len(_replies(client.frames)) == 9 + 3
        await client.aclose()
