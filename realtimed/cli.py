"""The ``realtimed`` command.

- ``realtimed run [-c FILE] [--workers N]``: run the daemon (default ``realtimed.toml``),
  or N worker processes sharing the port under a supervisor.
- ``realtimed check-config FILE [--as-user USER] [--credentials DIR]``: print the
  effective configuration, secrets redacted, or every problem with its key (and,
  with ``--as-user``, every file that user could not read; then every file the
  daemon loads at start that it would refuse); exit 2 on any problem.
- ``realtimed install-systemd [--root DIR] [--user NAME] [--config FILE]``: write the
  systemd unit, the system user, the configuration and its credentials.
- ``realtimed token --sub USER [--ttl 1h] [--rooms PATTERN ...]``: mint a
  development token with the configured HS256 secret; prints only the token.
- ``realtimed migrate [-c FILE]``: apply pending store migrations; without a
  configuration file it refuses to create a SQLite database under the current folder.
- ``realtimed jobs list|retry|cancel``: inspect and steer jobs; never creates a database.
- ``realtimed listen --room ROOM [--url URL] [--token TOKEN | -c FILE]``: print
  events as they come, one JSON line each (needs the Python SDK, clients/python).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from realtimed import __version__
from realtimed.config import (
    CREDENTIALS_DIRECTORY_ENV,
    DEFAULT_CONFIG_FILE,
    Config,
    ConfigError,
    config_to_dict,
    load_config,
)
from realtimed.jobs.cli import add_jobs_commands
from realtimed.listen import add_listen_command

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 2d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _default_config_path() -> str | None:
    return DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).exists() else None


def _load(path: str | None, env: dict[str, str] | None = None) -> Config:
    """Load the configuration or print every problem and exit 2."""
    # The checks that need the capabilities (imported here, like each command's own imports).
    from realtimed.config_checks import DAEMON_CONFIG_CHECKS

    try:
        return load_config(path, env=env, checks=DAEMON_CONFIG_CHECKS)
    except ConfigError as exc:
        _print_problems("invalid configuration", exc.problems)
        raise SystemExit(EXIT_CONFIG) from None


def _print_problems(what: str, problems: Sequence[tuple[str, str]]) -> None:
    """A header and a line for each problem; every line ``<3>`` first when stderr is the journal."""
    from realtimed.logs import PRIORITY_ERR, journal_is_stderr

    prio = f"<{PRIORITY_ERR}>" if journal_is_stderr() else ""
    print(f"{prio}realtimed: {what} ({len(problems)} problem(s)):", file=sys.stderr)
    for key, problem in problems:
        print(f"{prio}  {key or '(file)'}: {problem}", file=sys.stderr)


def store_refusal(cfg: Config, config_path: str | None, *, creates: bool) -> tuple[str, int] | None:
    """Why a command that opens the store must not, as ``(one-line message, exit status)``.

    Opening a SQLite store creates its file. Without a configuration file that file
    would be a new, empty database under the current folder (``./state``), which is
    never what ``jobs`` or ``migrate`` run from the wrong folder mean; and ``jobs``
    (``creates`` false) only ever inspects a database the daemon made. None: go on.
    """
    if cfg.store.backend != "sqlite":
        return None
    # The file open_store opens.
    database = cfg.state_dir / cfg.store.sqlite_path
    if database.exists():
        return None
    shown = str(database) if database.is_absolute() else f"./{database}"
    if config_path is None:
        return (
            f"no configuration file and no database at {shown}: pass -c FILE, the daemon's configuration "
            f"(or run this in the folder of its {DEFAULT_CONFIG_FILE}); nothing was created",
            EXIT_CONFIG,
        )
    if creates:
        return None
    return (
        f"no database at {shown} (server.state_dir and store.sqlite_path of {config_path}): "
        "the daemon has not run with this configuration; nothing was created",
        EXIT_FAILURE,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from realtimed import logs
    from realtimed.daemon import run_daemon

    path = args.config if args.config is not None else _default_config_path()
    cfg = _load(path)
    logs.setup_logging(cfg.log.level, cfg.log.format, include_user_ids=cfg.log.include_user_ids)
    if args.workers > 1:
        from realtimed.workers import Supervisor, refusal

        reason = refusal(cfg, args.workers)
        if reason is not None:
            print(f"realtimed: {reason}", file=sys.stderr)
            return EXIT_CONFIG
        return trio.run(Supervisor(cfg, config_path=path, workers=args.workers).run)
    try:
        trio.run(lambda: run_daemon(cfg, config_path=path))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        _report_fatal("cannot run", exc)
        return EXIT_FAILURE
    return EXIT_OK


def _report_fatal(what: str, exc: BaseException) -> None:
    """One line on stderr (``<3>`` first under the journal) for a failure that stops a command.

    A known condition is the line alone; anything else is logged with its
    traceback at debug level, and the line names the exception.
    """
    import logging

    from realtimed import logs

    reason = _fatal_reason(exc)
    if reason is None:
        logging.getLogger("realtimed.cli").debug("%s", what, exc_info=exc)
        leaf = _first_leaf(exc)
        reason = (
            f"unexpected {type(leaf).__name__}: {leaf or '(no message)'} "
            '(set log.level = "debug" to log its traceback, and report it)'
        )
    logs.fatal(f"{what}: {reason}")


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _fatal_reason(exc: BaseException) -> str | None:
    """The operator-facing reason for a failure to start or run, if it is one we know (one line).

    A ``ConnectionError`` (reset, refused, "unexpected connection_lost() call") is
    not one: every backend turns a lost link into ``Unavailable``, so one that
    ends the daemon escaped that and is a bug, reported as an unknown failure.
    """
    import errno
    import ssl

    from realtimed.errors import RealtimedError

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            reason = _fatal_reason(inner)
            if reason is not None:
                return reason
        return None
    if isinstance(exc, RealtimedError):
        return " ".join((str(exc) or type(exc).__name__).split())
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}; check the certificate and key files (http.tls_cert_file, http.tls_key_file)"
    if isinstance(exc, ConnectionError):
        return None
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return f"an address is already in use ({exc.strerror}); stop what holds the port or change http.listen"
        if exc.filename is not None:
            return f"cannot read {exc.filename} ({exc.strerror}); fix the path or let the daemon's user read it"
        return " ".join((str(exc) or type(exc).__name__).split())
    return None


def startup_problems(cfg: Config) -> list[tuple[str, str]]:
    """What ``run`` refuses only once its services start, found without starting them.

    These are the files the daemon loads at start, read the way it reads them:
    the JWT public keys, the TLS certificate and key, the FCM service-account key
    and push's CA file. (What needs a server, such as whether PostgreSQL answers,
    is left to ``run`` and ``/readyz``.)
    """
    import ssl

    from realtimed.auth import load_public_keys
    from realtimed.push.fcm import ServiceAccount

    problems: list[tuple[str, str]] = []
    base_dir = Path(cfg.source).parent if cfg.source else None
    try:
        load_public_keys(cfg.auth.public_key_files, base_dir=base_dir)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if cfg.http.tls_cert_file and cfg.http.tls_key_file:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            # A key that asks for a passphrase gets none rather than a prompt: the daemon has no one to ask.
            context.load_cert_chain(cfg.http.tls_cert_file, cfg.http.tls_key_file, password=lambda: b"")
        except (OSError, ValueError) as exc:
            problems.append(("http.tls_cert_file", f"the certificate and its key (http.tls_key_file) cannot be loaded: {exc}"))
    if cfg.push.service_account_file:  # push is on: the FCM client starts with the daemon
        try:
            ServiceAccount.from_file(cfg.push.service_account_file)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if cfg.push.ca_file:
            try:
                ssl.create_default_context().load_verify_locations(cfg.push.ca_file)
            except (OSError, ValueError) as exc:
                problems.append(("push.ca_file", f"cannot load CA certificates from {cfg.push.ca_file}: {exc}"))
    # The outbound clients of webhooks and HTTP jobs load theirs at their first https:// request.
    for key, ca_file in (("webhooks.ca_file", cfg.webhooks.ca_file), ("jobs.http.ca_file", cfg.jobs.http.ca_file)):
        if ca_file:
            try:
                ssl.create_default_context().load_verify_locations(ca_file)
            except (OSError, ValueError) as exc:
                problems.append((key, f"cannot load CA certificates from {ca_file}: {exc}"))
    return problems


def _cmd_check_config(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.credentials is not None:
        env[CREDENTIALS_DIRECTORY_ENV] = args.credentials
    if args.as_user is not None:
        from realtimed.install import user_ids

        try:
            user_ids(args.as_user)
        except (KeyError, ValueError):
            print(f"realtimed: there is no user {args.as_user!r} on this machine", file=sys.stderr)
            return EXIT_CONFIG
    cfg = _load(args.file, env)
    if args.as_user is not None:
        from realtimed.install import unreadable_files

        problems = unreadable_files(cfg, args.as_user, env.get(CREDENTIALS_DIRECTORY_ENV))
        if problems:
            _print_problems(f"files {args.as_user} could not read", problems)
            return EXIT_CONFIG
    loaded = startup_problems(cfg)
    if loaded:
        _print_problems("configuration that run would refuse at start", loaded)
        return EXIT_CONFIG
    sys.stdout.write(orjson.dumps(config_to_dict(cfg), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _cmd_token(args: argparse.Namespace) -> int:
    from realtimed.auth import mint_dev_token

    path = args.config if args.config is not None else _default_config_path()
    cfg = _load(path)
    if not cfg.auth.hs256_secret:
        print("realtimed: auth.hs256_secret is not set; tokens cannot be minted", file=sys.stderr)
        return EXIT_CONFIG
    ttl = args.ttl if args.ttl is not None else cfg.auth.dev_token_ttl_s
    try:
        token = mint_dev_token(
            cfg.auth.hs256_secret,
            sub=args.sub,
            ttl_s=ttl,
            rooms=args.rooms or (),
            name=args.name,
            now=datetime.now(UTC),
            audience=cfg.auth.audience or None,
            issuer=cfg.auth.issuer or None,
        )
    except ValueError as exc:
        print(f"realtimed: cannot mint that token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(token)
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    import trio

    from realtimed.store import run_migrations

    path = args.config if args.config is not None else _default_config_path()
    cfg = _load(path)
    refusal = store_refusal(cfg, path, creates=True)
    if refusal is not None:
        print(f"realtimed migrate: {refusal[0]}", file=sys.stderr)
        return refusal[1]

    async def main() -> Any:
        return await run_migrations(cfg)

    try:
        applied = trio.run(main)
    except Exception as exc:
        _report_fatal("migration failed", exc)
        return EXIT_FAILURE
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("schema is up to date")
    return EXIT_OK


def _cmd_install_systemd(args: argparse.Namespace) -> int:
    from realtimed.install import DEFAULT_CONFIG, InstallError, default_exec_path, install, render_unit

    try:
        config_text = None
        if args.config is not None:
            try:
                config_text = Path(args.config).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InstallError(f"cannot read {args.config}: {exc}") from exc
        if args.print_unit:
            from realtimed.install import credential_names

            names = credential_names(config_text if config_text is not None else DEFAULT_CONFIG)
            sys.stdout.write(render_unit(exec_path=args.exec or default_exec_path(), user=args.user, credentials=names))
            return EXIT_OK
        install(
            root=Path(args.root),
            user=args.user,
            exec_path=args.exec,
            config_text=config_text,
            replace_config=args.replace_config,
        )
    except InstallError as exc:
        print(f"realtimed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"realtimed: install-systemd failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    root = "" if Path(args.root).absolute() == Path("/") else f" (under {args.root})"
    print(
        f"next{root}: check the configuration as the service reads it, then start it:\n"
        f"  sudo {args.exec or default_exec_path()} check-config --as-user {args.user} "
        "--credentials /etc/realtimed/credentials /etc/realtimed/realtimed.toml\n"
        "  sudo systemctl daemon-reload && sudo systemctl enable --now realtimed"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtimed", description="a standalone realtime daemon")
    parser.add_argument("--version", action="version", version=f"realtimed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", help=f"TOML file (default: ./{DEFAULT_CONFIG_FILE} if present)")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT) under one supervisor; more than 1 needs PostgreSQL and Redis",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file and print the effective one")
    check.add_argument("file")
    check.add_argument(
        "--as-user",
        metavar="USER",
        help="also check that USER (the unit's User=) can read every file the configuration names "
        "(by owner, group and mode; POSIX ACLs are not read)",
    )
    check.add_argument(
        "--credentials",
        metavar="DIR",
        help="read <key>_credential names from DIR, as the unit's LoadCredential= lines would "
        "(default: $CREDENTIALS_DIRECTORY)",
    )
    check.set_defaults(func=_cmd_check_config)

    systemd = sub.add_parser(
        "install-systemd",
        help="write the systemd unit, its system user (sysusers.d), the configuration and credentials (as root)",
    )
    systemd.add_argument("--root", default="/", help="install under this folder instead of / (default: /)")
    systemd.add_argument("--user", default="realtimed", help="the system user the unit runs as (default: realtimed)")
    systemd.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration to install (default: a single node on SQLite, secrets as credentials); "
        "an installed one is kept unless --replace-config",
    )
    systemd.add_argument("--replace-config", action="store_true", help="replace an installed configuration")
    systemd.add_argument(
        "--exec", metavar="PATH", help="the realtimed executable ExecStart= names (default: the one of this Python)"
    )
    systemd.add_argument("--print-unit", action="store_true", help="only print the unit it would write")
    systemd.set_defaults(func=_cmd_install_systemd)

    token = sub.add_parser("token", help="mint a development token (HS256) and print it")
    token.add_argument("-c", "--config")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--ttl", type=parse_duration, help="lifetime, e.g. 1h (default auth.dev_token_ttl_s)")
    token.add_argument("--rooms", nargs="*", help="room patterns the user may subscribe to")
    token.add_argument("--name", help="display name")
    token.set_defaults(func=_cmd_token)

    migrate = sub.add_parser("migrate", help="apply pending store migrations")
    migrate.add_argument("-c", "--config")
    migrate.set_defaults(func=_cmd_migrate)

    add_jobs_commands(sub)
    add_listen_command(sub, _load, _default_config_path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: Any = args.func(args)
    return int(result or 0)
