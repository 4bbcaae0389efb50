"""``realtimed listen``: print events as they come, one JSON line each (like ``ntfy subscribe``).

It follows the given app rooms and prints their events, and the user's own
events (chat, notifications, events sent to the user through the server API),
each as the event frame the socket carried. It is a client like any other,
built on the Python SDK (``clients/python``, package ``realtimed-client``): it
reconnects by itself, and a room that kept history replays what was missed
(``room.reset`` when it could not). Connection changes go to stderr.

Where to connect and as whom: ``--url`` and ``--token`` (or ``REALTIMED_TOKEN``);
without them, the configuration (``-c``, default ``./realtimed.toml``) gives the
listener's address, and a development token for ``--sub`` with the rooms asked
for is minted from it while the development secret is in use (renewed before it
expires).

The SDK is imported only here, so that the daemon runs without it; when it is
missing the command says how to install it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from realtimed.config import DEV_HS256_SECRET, Config, parse_host_port

if TYPE_CHECKING:
    import trio
    from realtimed_client import Event

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
TOKEN_ENV: Final = "REALTIMED_TOKEN"
# A developer watching a terminal wants the listener back soon after a restart.
LISTEN_BACKOFF_MAX_S: Final = 5.0
# Connection events are the SDK's business, not the listener's output.
_HIDDEN_PREFIXES: Final = ("session.", "server.")

_MISSING_SDK = (
    "realtimed listen needs the Python SDK (the realtimed-client package). Install it from the\n"
    "realtimed repository with:  pip install ./clients/python\n"
    "(./scripts/run and ./scripts/test install it into ./.venv)"
)


def add_listen_command(sub: Any, load_config: Callable[[str | None], Config], default_config: Callable[[], str | None]) -> None:
    parser = sub.add_parser(
        "listen",
        help="print the events of app rooms (and the user's own) as JSON lines, like ntfy subscribe",
        description="Print events as they come, one JSON line each; reconnects by itself.",
    )
    parser.add_argument("--room", action="append", default=[], help="an app room to follow (repeat for several)")
    parser.add_argument("--url", help="the daemon's WebSocket URL (ws://host:port/ws) or base URL (http://host:port); default: from the configuration")
    parser.add_argument("--token", help=f"the user's token (default: ${TOKEN_ENV}, else a development token minted from the configuration)")
    parser.add_argument("-c", "--config", help="configuration file (default: ./realtimed.toml if present)")
    parser.add_argument("--sub", default="listener", help="user id of a minted development token (default: listener)")
    parser.add_argument("--count", type=int, help="exit after printing this many events")

    def run(args: argparse.Namespace) -> int:
        return _cmd_listen(args, load_config, default_config)

    parser.set_defaults(func=run)


def _cmd_listen(args: argparse.Namespace, load_config: Callable[[str | None], Config], default_config: Callable[[], str | None]) -> int:
    try:
        import realtimed_client
    except ImportError:
        print(_MISSING_SDK, file=sys.stderr)
        return EXIT_FAILURE
    if args.count is not None and args.count < 1:
        print("realtimed listen: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    token: str | Callable[[], Awaitable[str]] | None = args.token or os.environ.get(TOKEN_ENV) or None
    url: str | None = args.url
    if url is None or token is None:
        path = args.config if args.config is not None else default_config()
        if path is None:
            print("realtimed listen: give --url and --token, or a configuration with -c", file=sys.stderr)
            return EXIT_USAGE
        cfg = load_config(path)
        if url is None:
            url = listener_url(cfg)
        if token is None:
            if cfg.auth.hs256_secret != DEV_HS256_SECRET:
                print(
                    "realtimed listen: give --token (or $REALTIMED_TOKEN): a token is minted from the configuration\n"
                    "only while the development secret is in use; mint one with your backend or `realtimed token`",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            try:
                token = dev_token_provider(cfg, sub=args.sub, rooms=args.room)
            except ValueError as exc:
                print(f"realtimed listen: cannot mint a token: {exc}", file=sys.stderr)
                return EXIT_USAGE
    try:
        realtimed_client.Client(url, token=token)
    except (ValueError, realtimed_client.RealtimeError) as exc:
        print(f"realtimed listen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import trio

    try:
        return trio.run(listen, url, token, args.room, args.count)
    except KeyboardInterrupt:
        return 130


def listener_url(cfg: Config) -> str:
    """The WebSocket URL of the configured client listener (a wildcard address means this host)."""
    host, port = parse_host_port(cfg.http.listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    scheme = "wss" if cfg.http.tls_cert_file else "ws"
    return f"{scheme}://{shown}:{port}{cfg.gateway.path}"


def dev_token_provider(cfg: Config, *, sub: str, rooms: list[str]) -> Callable[[], Awaitable[str]]:
    """A token provider minting development tokens (so the listener outlives one token's lifetime)."""
    from realtimed.auth import mint_dev_token

    def mint() -> str:
        return mint_dev_token(
            cfg.auth.hs256_secret,
            sub=sub,
            ttl_s=cfg.auth.dev_token_ttl_s,
            rooms=rooms,
            now=datetime.now(UTC),
            audience=cfg.auth.audience or None,
            issuer=cfg.auth.issuer or None,
        )

    mint()  # a bad sub or room is reported now, not at the first connection

    async def provider() -> str:
        return mint()

    return provider


def format_event(event: Event) -> str:
    """One output line: the event frame as the socket carried it."""
    return json.dumps(event.to_wire(), separators=(",", ":"), ensure_ascii=False)


async def listen(
    url: str, token: str | Callable[[], Awaitable[str]], rooms: list[str], count: int | None, *, out: Any = None
) -> int:
    """Follow ``rooms`` and print events until ``count`` were printed (or forever)."""
    import trio
    from realtimed_client import Client, ClientOptions, RealtimeError, State, StateChange, open_client

    output = out if out is not None else sys.stdout
    printed = 0
    failure: RealtimeError | None = None

    async def states(client: Client, changes: Any) -> None:
        async for change in changes:
            change_: StateChange = change
            if change_.state is State.DISCONNECTED:
                print(
                    f"realtimed listen: disconnected ({change_.code} {change_.reason}); "
                    f"reconnecting in {change_.retry_in_s or 0:.2f} s",
                    file=sys.stderr,
                )
            elif change_.state is State.CONNECTED and client.session is not None:
                print(f"realtimed listen: connected (session {client.session.get('session_id')})", file=sys.stderr)

    try:
        async with (
            open_client(url, token=token, options=ClientOptions(backoff_max_s=LISTEN_BACKOFF_MAX_S)) as client,
            client.state_changes() as changes,
            AsyncExitStack() as stack,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(states, client, changes)
            session = await client.wait_connected()
            events: trio.MemorySendChannel[Event]
            events, received = trio.open_memory_channel(0)
            streams: list[Any] = [await stack.enter_async_context(client.subscribe(room)) for room in rooms]
            streams.append(await stack.enter_async_context(client.listen()))

            async def pump(stream: Any, channel: trio.MemorySendChannel[Event]) -> None:
                async with channel:
                    async for event in stream:
                        await channel.send(event)

            async with events:
                for stream in streams:
                    nursery.start_soon(pump, stream, events.clone())
            following = ", ".join(rooms) if rooms else "no rooms"
            print(
                f"realtimed listen: following {following} as {session.get('user_id')} at {url}",
                file=sys.stderr,
                flush=True,
            )
            async for event in received:
                if event.name.startswith(_HIDDEN_PREFIXES):
                    continue
                print(format_event(event), file=output, flush=True)
                printed += 1
                if count is not None and printed >= count:
                    break
            nursery.cancel_scope.cancel()
    except* RealtimeError as group:
        error = group.exceptions[0]
        failure = error if isinstance(error, RealtimeError) else RealtimeError("INTERNAL", str(error))
    if failure is not None:
        print(f"realtimed listen: {failure.message}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
