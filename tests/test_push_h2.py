"""The lean HTTP/2 sender of FCM sends (``realtimed.push.h2sender``).

Against the fake FCM (hypercorn, HTTP/2 over TLS): many concurrent sends share
one connection. Against a tiny h2 server written here, which misbehaves on
request: GOAWAY mid-flight, REFUSED_STREAM, a closed connection, a stalled
server, an answer over the body bound, and a server that does not choose h2.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import orjson
import pytest
import trio
import trio.testing

from realtimed.clock import SystemClock
from realtimed.config import PushConfig
from realtimed.push.fcm import FcmClient, ServiceAccount
from realtimed.push.h2sender import H2NotNegotiated, H2Sender, H2TransportError
from realtimed.push.messages import build_message
from tests.fake_fcm import FakeFcm, make_certificate

LIMIT_S = 30
PATH = "/v1/projects/p/messages:send"
HEADERS = [(b"content-type", b"application/json")]


class TinyH2:
    """An HTTPS server speaking just enough HTTP/2, misbehaving as ``mode`` says.

    Modes (on the first connection; later connections answer ``ok``):
    ``ok``; ``goaway`` (wait for ``hold`` requests, answer the first, send
    GOAWAY naming it as the last processed stream, close); ``refuse``
    (REFUSED_STREAM on the first request); ``close`` (close on the first
    request); ``stall`` (never answer, on every connection); ``stall_first``
    (never answer the first request, answer the others); ``batch`` (answer
    ``hold`` requests at once, on every connection); ``early`` (answer on the
    request's headers, on every connection); ``big`` (answer
    ``big_size`` bytes); ``h1`` (ALPN picks http/1.1 and answers HTTP/1.1).
    """

    def __init__(
        self, folder: Path, mode: str, *, hold: int = 1, big_size: int = 0, reuse_cert: bool = False,
        max_streams: int = 100,
    ) -> None:
        if reuse_cert:  # the fake FCM's, already in ``folder``
            self.cert, key = folder / "fake-fcm-cert.pem", folder / "fake-fcm-key.pem"
        else:
            self.cert, key = make_certificate(folder)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(self.cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"] if mode == "h1" else ["h2"])
        self.mode = mode
        self.max_streams = max_streams
        self.hold = hold
        self.big_size = big_size
        self.connections = 0
        self.processed: list[bytes] = []  # request bodies answered 200
        self.resets: list[int] = []  # stream ids the client reset
        self.reset_seen = trio.Event()
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        ssl_listeners = [trio.SSLListener(listener, self.ctx, https_compatible=True) for listener in listeners]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, ssl_listeners)
            task_status.started(self.port)

    async def _handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.connections += 1
        first = self.connections == 1
        try:
            if self.mode == "h1":
                await self._h1(stream)
            else:
                await self._h2(stream, first)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _h1(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = await stream.receive_some(65536)
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            while len(data) < length:
                data += await stream.receive_some(65536)
            body, data = data[:length], data[length:]
            if b"messages:send" in head:
                self.processed.append(body)
            answer = b'{"name": "projects/p/messages/h1"}'
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer)
            )

    async def _h2(self, stream: trio.SSLStream[trio.SocketStream], first: bool) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        )
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        held: list[int] = []
        mode = self.mode if first or self.mode in ("stall", "batch", "early") else "ok"
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    bodies[event.stream_id] = b""
                    if mode == "early":  # answer before the body has come
                        self._answer(conn, event.stream_id, b"")
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                elif isinstance(event, h2.events.StreamReset):
                    self.resets.append(event.stream_id)
                    self.reset_seen.set()
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    if mode == "ok":
                        self._answer(conn, sid, bodies.pop(sid))
                    elif mode == "batch":  # answer ``hold`` requests at once
                        held.append(sid)
                        if len(held) == self.hold:
                            for held_id in held:
                                self._answer(conn, held_id, bodies.pop(held_id))
                            held.clear()
                    elif mode == "stall_first":
                        mode = "ok"  # the first request is never answered, the others are
                    elif mode == "big":
                        conn.send_headers(sid, [(b":status", b"200")])
                        conn.send_data(sid, b"x" * min(self.big_size, 16000), end_stream=False)
                    elif mode == "refuse":
                        conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                        mode = "ok"
                    elif mode == "close":
                        return
                    elif mode == "goaway":
                        held.append(sid)
                        if len(held) == self.hold:
                            self._answer(conn, held[0], bodies.pop(held[0]))
                            conn.close_connection(last_stream_id=held[0])
                            await stream.send_all(conn.data_to_send())
                            return
            data = conn.data_to_send()
            if data:
                await stream.send_all(data)

    def _answer(self, conn: h2.connection.H2Connection, stream_id: int, body: bytes) -> None:
        self.processed.append(body)
        answer = orjson.dumps({"name": f"projects/p/messages/{len(self.processed)}"})
        conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/json")])
        conn.send_data(stream_id, answer, end_stream=True)


@attrs.define
class Sending:
    server: TinyH2
    sender: H2Sender


@asynccontextmanager
async def sending(tmp_path: Path, mode: str, **kwargs: Any) -> AsyncIterator[Sending]:
    """The tiny server in ``mode`` and an ``H2Sender`` to it (request timeout 0.5 s, bodies up to 1,024 bytes)."""
    server = TinyH2(tmp_path, mode, **kwargs)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(server.cert)
        sender = H2Sender(
            host="127.0.0.1", port=port, ssl_context=ctx, nursery=nursery,
            connect_timeout_s=5, request_timeout_s=0.5, max_body_bytes=1024,
        )
        try:
            yield Sending(server, sender)
        finally:
            await sender.aclose()
            nursery.cancel_scope.cancel()


def _body(i: int) -> bytes:
    return orjson.dumps({"message": {"token": f"t{i}"}})


async def test_goaway_mid_flight_resends_only_what_the_server_did_not_process(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "goaway", hold=5) as s:
            results: dict[int, int] = {}

            async def one(i: int) -> None:
                results[i] = (await s.sender.post(PATH, HEADERS, _body(i))).status

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, i)
            assert results == dict.fromkeys(range(5), 200)
            # The stream the server processed before GOAWAY is not sent again; the four
            # above its last stream id went once each, on a second connection.
            assert sorted(s.server.processed) == sorted(_body(i) for i in range(5))
            assert s.server.connections == 2
            assert s.sender.connects == 2


async def test_streams_stay_within_the_servers_max_concurrent_streams(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        # The server allows 2 streams and answers only once 2 are open: a third
        # stream would be a protocol error there, and fewer would never be answered.
        async with sending(tmp_path, "batch", hold=2, max_streams=2) as s:
            statuses: list[int] = []

            async def one(i: int) -> None:
                statuses.append((await s.sender.post(PATH, HEADERS, _body(i))).status)

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            assert statuses == [200] * 10
            assert sorted(s.server.processed) == sorted(_body(i) for i in range(10))
            assert s.server.connections == 1


async def test_an_answer_before_the_whole_body_frees_the_stream(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        # 100,000 bytes do not fit the server's 65,535-byte window: the answer comes while
        # the sender waits for more. With one stream allowed, the second send proves the
        # first stream was ended.
        async with sending(tmp_path, "early", max_streams=1) as s:
            for _ in range(2):
                assert (await s.sender.post(PATH, HEADERS, b"x" * 100_000)).status == 200
            assert s.server.connections == 1


async def test_refused_stream_is_sent_again(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "refuse") as s:
            answer = await s.sender.post(PATH, HEADERS, _body(1))
            assert answer.status == 200
            assert s.server.processed == [_body(1)]


async def test_server_closing_the_connection_is_a_transport_error_then_a_new_connection(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "close") as s:
            with pytest.raises(H2TransportError, match=r"closed the connection|connection lost"):
                await s.sender.post(PATH, HEADERS, _body(1))
            # Maybe processed: never sent again by the sender itself.
            assert s.server.processed == []
            answer = await s.sender.post(PATH, HEADERS, _body(2))
            assert answer.status == 200
            assert s.server.connections == 2


async def test_stalled_server_hits_the_request_timeout(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "stall") as s:
            started = trio.current_time()
            with pytest.raises(H2TransportError, match=r"no answer within 0\.5 s"):
                await s.sender.post(PATH, HEADERS, _body(1))
            assert trio.current_time() - started >= 0.5


async def test_a_timed_out_stream_leaves_the_others_on_its_connection_alone(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "stall_first") as s:
            statuses: list[int] = []
            timed_out = trio.Event()

            async def stalled() -> None:
                with pytest.raises(H2TransportError, match="no answer"):
                    await s.sender.post(PATH, HEADERS, _body(0))
                timed_out.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stalled)
                await trio.testing.wait_all_tasks_blocked()
                i = 1
                # Answers keep coming on the connection while the first stream waits it out.
                while not timed_out.is_set() or i < 5:
                    statuses.append((await s.sender.post(PATH, HEADERS, _body(i))).status)
                    i += 1
            assert set(statuses) == {200} and len(statuses) >= 5
            await s.server.reset_seen.wait()
            assert s.server.resets == [1]
            assert s.server.connections == 1 and s.sender.connects == 1


async def test_answer_over_the_body_bound_is_a_transport_error(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "big", big_size=5000) as s:
            with pytest.raises(H2TransportError, match="over 1024 bytes"):
                await s.sender.post(PATH, HEADERS, _body(1))


async def test_server_without_h2_is_reported_so_the_caller_uses_http1(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "h1") as s:
            with pytest.raises(H2NotNegotiated):
                await s.sender.post(PATH, HEADERS, _body(1))


async def test_cancelled_send_resets_its_stream_and_the_connection_stays_usable(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with sending(tmp_path, "stall") as s:
            with trio.move_on_after(0.2) as scope:
                await s.sender.post(PATH, HEADERS, _body(1))
            assert scope.cancelled_caught
            await s.server.reset_seen.wait()  # RST_STREAM sent at once, not with the next request
            assert s.server.resets == [1]
            live = s.sender._live
            assert live is not None and live.accepting and not live.pending
            with pytest.raises(H2TransportError, match="no answer"):  # the same connection takes the next one
                await s.sender.post(PATH, HEADERS, _body(2))
            assert s.server.resets == [1, 3]
            assert s.server.connections == 1


# -- through the FCM client --------------------------------------------------------------------


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeFcm]:
    fake = FakeFcm(clock=SystemClock())
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve, tmp_path)
        yield fake
        nursery.cancel_scope.cancel()


def _client(fake: FakeFcm, folder: Path, **extra: Any) -> FcmClient:
    section = fake.push_config(folder, **extra)
    section.pop("service_account_file")
    cfg = PushConfig(**section)
    return FcmClient(cfg, ServiceAccount.from_file(fake.write_key_file(folder)), clock=SystemClock())


async def test_many_concurrent_sends_share_one_connection(fake: FakeFcm, tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        client = _client(fake, tmp_path, concurrency=64)
        message = build_message(title="t", body="b", data={"n": "1"})
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            sender = client._h2
            assert sender is not None
            results: list[str] = []

            async def one(i: int) -> None:
                results.append((await client.send(message, token=f"tok-{i}")).kind)

            async with trio.open_nursery() as sends:
                for i in range(300):
                    sends.start_soon(one, i)
            assert results == ["ok"] * 300
            assert {r.target for r in fake.delivered} == {f"tok-{i}" for i in range(300)}
            assert sender.connects == 1
            nursery.cancel_scope.cancel()
        assert client._h2 is None
        await client.aclose()
        await client.aclose()  # idempotent


async def test_fcm_answers_are_read_as_before_through_h2(fake: FakeFcm, tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        client = _client(fake, tmp_path)
        message = build_message(title="t", body="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            assert client._h2 is not None
            fake.fail_next("UNAVAILABLE", retry_after="7")
            result = await client.send(message, token="a")
            assert (result.kind, result.status, result.retry_after) == ("unavailable", 503, 7.0)
            fake.unregister("gone")
            assert (await client.send(message, token="gone")).kind == "unregistered"
            fake.revoke_tokens()  # 401, a new access token, sent again
            assert (await client.send(message, token="b")).kind == "ok"
            assert client.tokens.refreshes == 2
            assert client._h2.connects == 1
            nursery.cancel_scope.cancel()
        await client.aclose()


async def test_h2_sender_off_sends_through_httpx(fake: FakeFcm, tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        client = _client(fake, tmp_path, h2_sender=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            assert client._h2 is None
            assert (await client.send(build_message(title="t", body="b"), token="a")).kind == "ok"
            nursery.cancel_scope.cancel()
        await client.aclose()


async def test_fcm_client_falls_back_to_httpx_when_h2_is_not_chosen(fake: FakeFcm, tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        server = TinyH2(tmp_path, "h1", reuse_cert=True)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            # The access token from the fake; the sends to the HTTP/1.1-only server.
            client = _client(fake, tmp_path, fcm_url=f"https://127.0.0.1:{port}")
            await nursery.start(client.run)
            assert client._h2 is not None
            assert (await client.send(build_message(title="t", body="b"), token="a")).kind == "ok"
            assert client._h2 is None  # no h2 from that server: httpx from now on
            assert (await client.send(build_message(title="t", body="b"), token="b")).kind == "ok"
            assert [orjson.loads(body)["message"]["token"] for body in server.processed] == ["a", "b"]
            nursery.cancel_scope.cancel()
        await client.aclose()
