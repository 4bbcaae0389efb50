"""``realtimed jobs list|retry|cancel``: inspect and steer jobs from a shell.

- ``realtimed jobs list [-c FILE] [--status S] [--queue Q] [--kind K] [--limit N] [--cursor C] [--json]``
- ``realtimed jobs retry [-c FILE] [--json] ID``: a failed, dead or cancelled job runs again now
- ``realtimed jobs cancel [-c FILE] [--json] ID``: a queued job is cancelled

Each opens the store named by the configuration (default ``./realtimed.toml``),
does its one thing and closes it. A SQLite database that does not exist is
never created: without a configuration file that is exit 2 (pass ``-c``), with
one exit 1. Exit status: 0 done, 1 the job cannot be found or is in the wrong
status or the store failed or has no database, 2 the configuration is invalid
or missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from realtimed.config import DEFAULT_CONFIG_FILE, Config, ConfigError, load_config
from realtimed.errors import ApiError, RealtimedError

__all__ = ["add_jobs_commands"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2

_STATUSES: Final = ("queued", "running", "succeeded", "failed", "dead", "cancelled")

_T = TypeVar("_T")


def add_jobs_commands(subparsers: Any) -> None:
    """Add ``jobs list|retry|cancel`` to the ``realtimed`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help=f"TOML file (default: ./{DEFAULT_CONFIG_FILE} if present)")
    common.add_argument("--json", action="store_true", help="print JSON (the job records of docs/protocol.md section 7)")

    jobs = subparsers.add_parser("jobs", help="list, retry and cancel persistent jobs")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)

    listing = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    listing.add_argument("--status", choices=_STATUSES)
    listing.add_argument("--queue")
    listing.add_argument("--kind")
    listing.add_argument("--limit", type=_limit, default=50, help="jobs to show (1 to 1000, default 50)")
    listing.add_argument("--cursor", help="next_cursor of a previous page")
    listing.set_defaults(func=_cmd_list)

    retry = sub.add_parser("retry", parents=[common], help="run a failed, dead or cancelled job again now")
    retry.add_argument("job_id", metavar="ID")
    retry.set_defaults(func=_cmd_retry)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued job")
    cancel.add_argument("job_id", metavar="ID")
    cancel.set_defaults(func=_cmd_cancel)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def _config_path(path: str | None) -> str | None:
    if path is None and Path(DEFAULT_CONFIG_FILE).exists():
        return DEFAULT_CONFIG_FILE
    return path


def _load(path: str | None) -> Config:
    from realtimed.config_checks import DAEMON_CONFIG_CHECKS

    try:
        return load_config(path, checks=DAEMON_CONFIG_CHECKS)
    except ConfigError as exc:
        print(f"realtimed: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for key, problem in exc.problems:
            print(f"  {key or '(file)'}: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _with_store(cfg: Config, action: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run ``action(store)`` with the configured store started, under Trio."""
    import trio

    from realtimed.clock import SystemClock
    from realtimed.store import open_store

    failure: list[BaseException] = []

    async def main() -> _T | None:
        async with trio.open_nursery() as nursery:
            store = open_store(cfg, clock=SystemClock())
            try:
                await nursery.start(store.run)
                return await action(store)
            except (RealtimedError, OSError) as exc:
                # Raised out here rather than through the nurseries, which would wrap it in a group.
                failure.append(exc)
                return None
            finally:
                nursery.cancel_scope.cancel()

    result = trio.run(main)
    if failure:
        raise failure[0]
    assert result is not None
    return result


def _line(job: Any) -> str:
    wire = job.to_wire()
    error = wire["last_error"] or ""
    if len(error) > 80:
        error = error[:79] + "…"
    return (
        f"{wire['id']}  {wire['status']:<9}  {wire['queue']}  {wire['kind']}  "
        f"attempts {wire['attempts']}/{wire['max_attempts']}  run_at {wire['run_at']}"
        + (f"  error: {error}" if error else "")
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _run(args: argparse.Namespace, action: Callable[[Any], Awaitable[_T]]) -> _T | None:
    from realtimed.cli import store_refusal

    path = _config_path(args.config)
    cfg = _load(path)
    refusal = store_refusal(cfg, path, creates=False)
    if refusal is not None:
        print(f"realtimed jobs: {refusal[0]}", file=sys.stderr)
        raise SystemExit(refusal[1])
    try:
        return _with_store(cfg, action)
    except ApiError as exc:
        print(f"realtimed: {exc.message}", file=sys.stderr)
    except RealtimedError as exc:
        print(f"realtimed: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"realtimed: cannot open the store: {exc}", file=sys.stderr)
    return None


def _cmd_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> tuple[list[Any], str | None]:
        jobs, cursor = await store.list_jobs(
            status=args.status, queue=args.queue, kind=args.kind, cursor=args.cursor, limit=args.limit
        )
        return list(jobs), cursor

    result = _run(args, action)
    if result is None:
        return EXIT_FAILURE
    jobs, cursor = result
    if args.json:
        _print_json({"jobs": [job.to_wire() for job in jobs], "next_cursor": cursor})
        return EXIT_OK
    for job in jobs:
        print(_line(job))
    if cursor:
        print(f"(more: --cursor {cursor})")
    return EXIT_OK


def _cmd_change(args: argparse.Namespace, method: str) -> int:
    from realtimed.clock import SystemClock

    async def action(store: Any) -> Any:
        return await getattr(store, method)(job_id=args.job_id, now=SystemClock().now())

    job = _run(args, action)
    if job is None:
        return EXIT_FAILURE
    if args.json:
        _print_json({"job": job.to_wire()})
    else:
        print(_line(job))
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    return _cmd_change(args, "retry_job")


def _cmd_cancel(args: argparse.Namespace) -> int:
    return _cmd_change(args, "cancel_job")
