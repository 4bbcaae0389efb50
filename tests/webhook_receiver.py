"""A real HTTP server receiving webhooks, for the tests: it verifies each delivery's
signature with the ``standardwebhooks`` package (the reference implementation of the
specification, not realtimed's code) and keeps what it received.

The test steers it: ``status`` answers every request with that status (with
``retry_after``), ``delay_s`` holds each answer back, ``stop()`` closes its port
and ``start()`` opens the same port again. ``script[path]`` gives the answers to
the next requests for a path (without the query), one ``Answer`` each, before
``status`` applies again. Every request is in ``log`` (method, target, time, the
status answered, the connection it came on), verified or not. ``connections``
counts the connections accepted and ``open`` those still open; ``close_after``
ends each connection after one answer: ``"header"`` says so (``Connection:
close``), ``"silently"`` does not (as a server whose idle timeout is short).
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
import h11
import orjson
import trio
from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["Answer", "Logged", "Received", "Receiver", "new_secret"]


class _ClockedWebhook(Webhook):
    """The package's verification, with the timestamp's tolerance (five minutes)
    taken around ``now()`` instead of the machine's clock: a daemon on a mock
    wall clock signs with its own time."""

    def __init__(self, secret: str, now: Callable[[], datetime]) -> None:
        super().__init__(secret)
        self._now = now

    def _Webhook__verify_timestamp(self, timestamp_header: str) -> datetime:
        timestamp = datetime.fromtimestamp(float(timestamp_header), tz=self._now().tzinfo)
        if abs(timestamp - self._now()) > timedelta(minutes=5):
            raise WebhookVerificationError("Message timestamp too old or too new")
        return timestamp


def new_secret() -> str:
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@attrs.frozen
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: Any  # the JSON body; None when there was none
    verified_with: tuple[int, ...]  # the indexes of the receiver's secrets that verify it
    method: str = "POST"
    target: str = "/"


@attrs.frozen
class Answer:
    """One scripted answer: a status, an optional Retry-After and body, a delay before it."""

    status: int = 200
    retry_after: str | None = None
    body: bytes | None = None
    delay_s: float = 0.0


@attrs.frozen
class Logged:
    method: str
    target: str
    at: float  # trio.current_time() when the request was read
    status: int
    wall: datetime | None = None  # ``now()`` then, when the receiver was given one
    connection: int = 0  # the number of the connection it came on, from 1


class Receiver:
    """Listens on 127.0.0.1; ``url`` is where it receives."""

    def __init__(
        self, secrets_: list[str], *, tls: ssl.SSLContext | None = None, now: Callable[[], datetime] | None = None
    ) -> None:
        self.secrets = secrets_
        self.now = now  # the signers' wall clock, when it is not the machine's
        self.tls = tls
        self.status = 200
        self.retry_after: str | None = None
        self.location: str | None = None
        self.delay_s = 0.0
        self.body = b'{"ok":true}'
        self.received: list[Received] = []
        self.requests = 0
        self.unverified = 0
        self.port = 0
        self.got = trio.Event()
        self.script: dict[str, list[Answer]] = {}
        self.log: list[Logged] = []
        self.connections = 0
        self.open = 0
        self.close_after = ""
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/hooks"
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        tcp = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = tcp[0].socket.getsockname()[1]
        listeners: list[Any] = list(tcp)
        if self.tls is not None:
            listeners = [trio.SSLListener(listener, self.tls, https_compatible=True) for listener in tcp]
        scope = self._scope = trio.CancelScope()

        async def serve() -> None:
            with scope:
                await trio.serve_listeners(self._handle, listeners)

        nursery.start_soon(serve)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        self.connections += 1
        self.open += 1
        number = self.connections
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                self.requests += 1
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                method, target = request.method.decode(), request.target.decode()
                arrived, arrived_wall = trio.current_time(), (self.now() if self.now is not None else None)
                scripted = self.script.get(target.split("?", 1)[0])
                answer = scripted.pop(0) if scripted else None
                delay_s = answer.delay_s if answer is not None else self.delay_s
                if delay_s:
                    await trio.sleep(delay_s)
                status = answer.status if answer is not None else self.status
                reply = answer.body if answer is not None and answer.body is not None else self.body
                retry_after = answer.retry_after if answer is not None else self.retry_after
                if status < 300:
                    verified = self._verify(body, headers)
                    if verified:
                        self.received.append(Received(
                            headers["webhook-id"], headers, orjson.loads(body) if body else None, tuple(verified),
                            method, target,
                        ))
                        self.got.set()
                        self.got = trio.Event()
                    else:
                        self.unverified += 1
                        status = 401
                self.log.append(Logged(method, target, arrived, status, arrived_wall, number))
                out_headers = [("content-length", str(len(reply))), ("content-type", "application/json")]
                if self.close_after == "header":
                    out_headers.append(("connection", "close"))
                if retry_after is not None:
                    out_headers.append(("retry-after", retry_after))
                if self.location is not None:
                    out_headers.append(("location", self.location))
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=out_headers)) or b"")
                await stream.send_all(conn.send(h11.Data(data=reply)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is h11.MUST_CLOSE or self.close_after:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError, ssl.SSLError):
            return
        finally:
            self.open -= 1
            await trio.aclose_forcefully(stream)

    def _verify(self, body: bytes, headers: dict[str, str]) -> list[int]:
        ok: list[int] = []
        for i, secret in enumerate(self.secrets):
            try:
                (Webhook(secret) if self.now is None else _ClockedWebhook(secret, self.now)).verify(body, headers, json_parse=bool(body))
            except WebhookVerificationError:
                continue
            ok.append(i)
        return ok
