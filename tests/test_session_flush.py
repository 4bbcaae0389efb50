"""The socket writer of a Session against an abort that lands while it waits.

A session's flush task waits for its socket to turn writable; when the socket
does, and the session is aborted (the peer went away, the close handshake timed
out, the daemon drains) before the task runs again, the wait returns normally
in spite of the cancellation, into an outbox the abort has emptied.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from realtimed.config import Config
from realtimed.gateway.session import Session
from tests.fixtures.daemon import make_config


class _Handler:
    """The least a Session needs of its owner: nothing happens on the socket but writes."""

    node = "unit"

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self.ended = trio.Event()

    @property
    def config(self) -> Config:
        return self._cfg

    async def serve_session(self, session: Session) -> None:
        pass

    async def on_message(self, session: Session, text: str) -> None:
        raise AssertionError("the peer sends nothing")

    async def on_binary(self, session: Session, data: bytes) -> None:
        raise AssertionError("the peer sends nothing")

    def note_overflow(self, session: Session) -> None:
        raise AssertionError("the outbox stays under its limit")

    def note_close(self, session: Session, code: int, *, by_peer: bool = False) -> None:
        pass

    async def session_ended(self, session: Session) -> None:
        self.ended.set()


async def test_abort_while_the_flush_waits_for_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        handler = _Handler(make_config(tmp_path))
        ours, peer = trio.socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        session = Session(handler, trio.SocketStream(ours), "unit", connected_at=datetime.now(UTC))
        real_wait_writable = trio.lowlevel.wait_writable

        async def wait_then_abort(sock: Any) -> None:
            # Trio wakes the flush task once the socket is writable; the abort
            # comes before that task runs again, as when many sockets close at once.
            await real_wait_writable(sock)
            if sock is session._sock:
                session._abort()

        monkeypatch.setattr(trio.lowlevel, "wait_writable", wait_then_abort)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: session.run(leftover=b""))
            await trio.testing.wait_all_tasks_blocked()
            session.send_json(b'"' + b"x" * 200_000 + b'"')  # more than the kernel takes at once
            assert session.outbox_bytes > 0
            await trio.testing.wait_all_tasks_blocked()  # the flush task waits for the socket
            # The peer reads: the socket turns writable, and the session is aborted.
            while chunk := await peer.recv(65536):
                received += chunk
        assert handler.ended.is_set()
        assert session.close_code == 1006
        assert session.outbox_bytes == 0
        assert 0 < len(received) < 200_000  # the frame was cut off, nothing more was written
        peer.close()
