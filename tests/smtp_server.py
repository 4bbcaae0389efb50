"""A real SMTP server for the email tests: aiosmtpd on its own asyncio thread.

``SmtpServer`` records every message it accepts, can refuse recipients or data
with a given reply (``refuse``), counts the connections that said EHLO (and
the most at once), and can be stopped and started again on the same port (an
outage). With ``tls`` it offers STARTTLS with a test certificate and requires it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import attrs
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@attrs.frozen
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    @property
    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(self, smtp: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if session.ssl is None or self.server.implicit_tls:  # the EHLO after STARTTLS is on the same connection
            self.server.saw_connection(id(session))
        return responses

    async def handle_RCPT(self, smtp: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self.server.refusals.get(("rcpt", address.lower()))
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            queue = self.server.refusals_once.get(rcpt.lower())
            if queue:
                return str(queue.pop(0))
        content = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        with self.server.lock:
            self.server.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 Message accepted"


class SmtpServer:
    def __init__(
        self, folder: Path, *, tls: bool = False, implicit_tls: bool = False, credentials: tuple[str, str] | None = None
    ) -> None:
        tls = tls or implicit_tls
        self.implicit_tls = implicit_tls
        self.credentials = credentials
        self.port = free_port()
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.refusals: dict[tuple[str, str], str] = {}
        self.refusals_once: dict[str, list[str]] = {}
        self.sessions: set[int] = set()
        self._controller: Controller | None = None
        self.cert_file: Path | None = None
        self._tls: ssl.SSLContext | None = None
        if tls:
            from tests.fake_fcm import make_certificate

            folder.mkdir(parents=True, exist_ok=True)
            cert, key = make_certificate(folder)
            self.cert_file = cert
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self._tls = context

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert self.credentials is not None
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()
        ) == self.credentials
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 to a failure

    def saw_connection(self, session: int) -> None:
        with self.lock:
            self.sessions.add(session)

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO ``address`` with ``reply`` (e.g. ``550 5.1.1 no such user``) from now on."""
        self.refusals[("rcpt", address.lower())] = reply

    def refuse_data_once(self, address: str, reply: str) -> None:
        """Answer the next DATA for ``address`` with ``reply`` (e.g. ``451 try later``)."""
        self.refusals_once.setdefault(address.lower(), []).append(reply)

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.recipients]

    def config(self, **extra: Any) -> dict[str, Any]:
        section: dict[str, Any] = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": self.port,
            "security": "tls" if self.implicit_tls else "starttls" if self._tls is not None else "none",
            "from_address": "Example <notify@example.com>",
            "public_base_url": "https://links.example.com/rt",
            "unsubscribe_secret": "unsubscribe-secret-for-tests-0123456789",
        }
        if self.cert_file is not None:
            section["ca_file"] = str(self.cert_file)
        if self.credentials is not None:
            section["username"], section["password"] = self.credentials
        section.update(extra)
        return section

    async def start(self) -> None:
        options: dict[str, Any] = {}
        if self.credentials is not None:
            options.update(authenticator=self._authenticate, auth_required=True)
        # A loop of its own, made directly: once trio-asyncio is loaded (other tests of the run use
        # it), asyncio's policy refuses to make a loop inside a Trio run.
        loop = asyncio.SelectorEventLoop()
        if self.implicit_tls:
            # aiosmtpd knows only STARTTLS as TLS: on a TLS socket it must offer AUTH all the same.
            options["auth_require_tls"] = False
            controller = Controller(
                _Handler(self), loop=loop, hostname="127.0.0.1", port=self.port, ssl_context=self._tls,
                ready_timeout=10, **options,
            )
        else:
            controller = Controller(
                _Handler(self), loop=loop, hostname="127.0.0.1", port=self.port, tls_context=self._tls,
                require_starttls=self._tls is not None, ready_timeout=10, **options,
            )
        try:
            await trio.to_thread.run_sync(controller.start)
        except BaseException:
            loop.close()
            raise
        self._controller = controller

    async def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            await trio.to_thread.run_sync(controller.stop)
            controller.loop.close()

    async def wait_for(self, count: int, address: str | None = None, *, poll_s: float = 1.0) -> list[Received]:
        while True:
            got = self.to(address) if address is not None else list(self.messages)
            if len(got) >= count:
                return got
            await trio.sleep(poll_s)
