"""Emails per second to a local SMTP server, against no-op jobs on the same runner.

    .venv/bin/python bench/emails.py [--backend sqlite|postgres] [--emails N] [--concurrency C] [--connections K]

One process holds the store, a ``JobRunner`` serving one queue with C jobs at once,
and the ``EmailService`` with an SMTP pool of K connections; the SMTP server is
aiosmtpd in its own process (it accepts every message and keeps nothing). The
yardstick comes first in the same run: N ``noop`` jobs on the same queue, then N
``email.send`` jobs (each a rendered text and HTML email built into a MIME message
and submitted over a pooled connection: MAIL, RCPT, DATA). Each set is enqueued
before a runner starts; the rate is N over the time from the runner's start to the
last ``finished_at``, and the CPU per item is this process's CPU time over that span
(the worker threads' included), divided by N; the SMTP server's CPU is shown apart.
The machine may be shared: compare the two rates of one run, not figures of
different runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import free_port
from webhooks import QUEUE, measure, with_store

from realtimed.clock import SystemClock
from realtimed.config import Config, EmailConfig, JobQueueConfig, JobsConfig
from realtimed.email.jobs import EMAIL_SEND, EmailSend
from realtimed.email.service import EmailService
from realtimed.jobs import JobRunner, register_builtin_kinds
from realtimed.live import Live
from realtimed.store import open_store

# -- the SMTP server process ---------------------------------------------------------------------


def smtp_server(port: int) -> None:
    from aiosmtpd.controller import Controller

    class Accept:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


# -- the driver ------------------------------------------------------------------------------------------


def email_payload(i: int) -> dict[str, Any]:
    return EMAIL_SEND.encode(
        EmailSend(
            to=f"user{i}@example.com",
            user_id=f"user{i}",
            type="comment",
            subject="New comment from Ann",
            text="Ann wrote: " + "nice picture! " * 20,
            html="<p><b>Ann</b> wrote: " + "nice picture! " * 20 + "</p>",
            unsubscribe_url="https://rt.example.com/email/unsubscribe/" + "x" * 80,
            message_id=f"<{i}.{secrets.token_hex(8)}@example.com>",
            ref=f"n{i}",
            stored=False,
        )
    )


async def bench(args: argparse.Namespace, cfg: Config) -> None:
    port = free_port()
    process = await trio.lowlevel.open_process([sys.executable, __file__, "--smtp", str(port)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            assert (await process.stdout.receive_some(100)).startswith(b"ready")
        email = EmailConfig(
            enabled=True, host="127.0.0.1", port=port, security="none", from_address="Example <notify@example.com>",
            public_base_url="https://rt.example.com", unsubscribe_secret="b" * 32, queue=QUEUE,
            max_connections=args.connections,
        )
        jobs = JobsConfig(queues=[JobQueueConfig(name=QUEUE, concurrency=args.concurrency)])
        live = Live(Config(server=cfg.server, store=cfg.store, jobs=jobs, email=email))
        clock = SystemClock()
        async with trio.open_nursery() as nursery:
            store = open_store(cfg, clock=clock)
            await nursery.start(store.run)
            runners: list[JobRunner] = []

            def make_runner() -> JobRunner:
                runner = JobRunner(store, config=jobs, clock=clock, node=f"bench-{os.getpid()}-{len(runners)}")
                register_builtin_kinds(runner, retention=cfg.retention)
                service.register_jobs(runner)
                runners.append(runner)
                return runner

            service = EmailService(live, store=store, clock=clock, jobs=JobRunner(store, config=jobs, clock=clock))
            await nursery.start(service.run)
            n = args.emails
            noop = await measure(store, make_runner, "noop", [{} for _ in range(n)], process.pid)
            mail = await measure(store, make_runner, EMAIL_SEND.kind, [email_payload(i) for i in range(n)], process.pid)
            pool = service.pool
            assert pool is not None
            backend = cfg.store.backend
            print(f"  {backend:8} noop jobs (yardstick): {noop[0]:8,.0f}/s  {noop[1]:.3f} ms CPU each")
            print(
                f"  {backend:8} emails:               {mail[0]:8,.0f}/s  {mail[1]:.3f} ms CPU each "
                f"(SMTP server: {mail[2]:.3f} ms each; {pool.opened_total} connection(s) opened)",
                flush=True,
            )
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        await process.wait()


async def main(args: argparse.Namespace) -> None:
    print(f"{args.emails:,} items per measurement, {args.concurrency} jobs at once, {args.connections} SMTP connections")
    await with_store(args.backend, args.dsn, 10, lambda cfg: bench(args, cfg))


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="sqlite")
    parser.add_argument("--emails", type=int, default=2_000, help="items per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="jobs at once")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections (email.max_connections)")
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (its database is used only to create and drop the bench database)",
    )
    parser.add_argument("--smtp", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.smtp:
        smtp_server(arguments.smtp)
    else:
        trio.run(main, arguments)
