"""``realtimed run --workers N``: N daemon processes sharing the ports, one supervisor.

The parent starts N ``realtimed run`` workers. They bind the same addresses with
``SO_REUSEPORT`` (the kernel spreads connections over them) and act as one
cluster through the Redis broker and PostgreSQL, which is why more than one
worker needs both. Each worker is node ``<server.node>-w<i>``.

For systemd the parent is the service: each worker reports to the parent over
its own notify socket, and the parent sends ``READY=1`` once every worker is
ready, forwards ``SIGHUP`` (reload) and ``SIGTERM``/``SIGINT`` (drain) to all of
them, feeds the watchdog, and restarts a worker that dies on its own (with a
growing delay while it keeps dying).

Resource handling:
    Every worker is a child process owned by the supervisor's nursery; the
    supervisor returns only when all have exited, killing those still running
    ``shutdown.grace_s`` plus a margin after a drain began.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Final

import trio

from realtimed.config import Config, parse_host_port
from realtimed.daemon import WORKER_ENV
from realtimed.sdnotify import SystemdNotifier

log = logging.getLogger(__name__)

KILL_MARGIN_S: Final = 5.0
RESTART_MAX_DELAY_S: Final = 30.0


def refusal(cfg: Config, workers: int) -> str | None:
    """Why this configuration cannot run ``workers`` processes, or None."""
    if workers <= 1:
        return None
    missing = []
    if cfg.store.backend != "postgres":
        missing.append('store.backend = "postgres" (SQLite has one writer per file)')
    if cfg.broker.backend != "redis":
        missing.append('broker.backend = "redis" (the in-process broker cannot reach the other workers)')
    if not missing:
        return None
    return f"--workers {workers} needs " + " and ".join(missing)


def _fixed_port(listen: str) -> str:
    """Port 0 means any free port: choose one now so that every worker binds the same."""
    host, port = parse_host_port(listen)
    if port != 0:
        return listen
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}"


class _Worker:
    def __init__(self, index: int, notify_path: str) -> None:
        self.index = index
        self.notify_path = notify_path
        self.process: trio.Process | None = None
        self.ready = False
        self.restarts = 0


class Supervisor:
    """Runs and supervises the workers (see the module docstring)."""

    def __init__(self, cfg: Config, *, config_path: str | None, workers: int, notifier: SystemdNotifier | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.count = workers
        self._notifier = notifier or SystemdNotifier()
        self._draining = False
        self._env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self._env["REALTIMED__HTTP__LISTEN"] = _fixed_port(cfg.http.listen)
        if cfg.http.internal_listen:
            self._env["REALTIMED__HTTP__INTERNAL_LISTEN"] = _fixed_port(cfg.http.internal_listen)
        self._all_ready_sent = False

    async def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="realtimed-workers-") as folder:
            workers = [_Worker(i, str(Path(folder) / f"w{i}.sock")) for i in range(self.count)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, workers, nursery.cancel_scope)
                interval = self._notifier.watchdog_interval_s()
                if interval:
                    nursery.start_soon(self._watchdog, interval)
                async with trio.open_nursery() as children:
                    for worker in workers:
                        await children.start(self._keep_running, worker, workers)
                nursery.cancel_scope.cancel()
        log.info("all %d workers stopped", self.count)
        return 0

    async def _keep_running(self, worker: _Worker, workers: list[_Worker], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(worker.notify_path)
        delay = 1.0
        started = False
        with sock:
            while True:
                env = dict(self._env)
                env[WORKER_ENV] = str(worker.index)
                env["NOTIFY_SOCKET"] = worker.notify_path
                env["REALTIMED__SERVER__NODE"] = f"{self.cfg.server.node_id}-w{worker.index}"
                argv = [sys.executable, "-m", "realtimed", "run"]
                if self.config_path:
                    argv += ["-c", self.config_path]
                worker.process = await trio.lowlevel.open_process(argv, env=env)
                worker.ready = False
                log.info("worker %d started (pid %d)", worker.index, worker.process.pid)
                if not started:
                    started = True
                    task_status.started()
                async with trio.open_nursery() as watch:
                    watch.start_soon(self._listen, worker, workers, sock)
                    code = await worker.process.wait()
                    watch.cancel_scope.cancel()
                if self._draining:
                    log.info("worker %d exited with %d", worker.index, code)
                    return
                worker.restarts += 1
                log.error("worker %d (pid %d) died with %d; restarting in %.0f s", worker.index, worker.process.pid, code, delay)
                await trio.sleep(delay)
                if self._draining:
                    return
                delay = min(delay * 2, RESTART_MAX_DELAY_S)

    async def _listen(self, worker: _Worker, workers: list[_Worker], sock: trio.socket.SocketType) -> None:
        while True:
            data = await sock.recv(4096)
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1":
                    worker.ready = True
                    if all(w.ready for w in workers) and not self._draining:
                        self._notifier.ready(f"{self.count} workers serving")
                        if not self._all_ready_sent:
                            self._all_ready_sent = True
                            log.info("all %d workers ready", self.count)

    async def _signals(self, workers: list[_Worker], scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._notifier.reloading()
                    self._send_all(workers, signal.SIGHUP)
                    continue
                if self._draining and signum == signal.SIGINT:
                    self._send_all(workers, signal.SIGKILL)
                    continue
                self._draining = True
                self._notifier.stopping()
                log.info("%s: draining %d workers", signal.Signals(signum).name, self.count)
                self._send_all(workers, signal.SIGTERM)
                with trio.move_on_after(self.cfg.shutdown.grace_s + KILL_MARGIN_S):
                    while any(w.process is not None and w.process.returncode is None for w in workers):
                        await trio.sleep(0.1)
                self._send_all(workers, signal.SIGKILL)

    def _send_all(self, workers: list[_Worker], signum: int) -> None:
        for worker in workers:
            if worker.process is not None and worker.process.returncode is None:
                try:
                    worker.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def _watchdog(self, interval: float) -> None:
        while True:
            self._notifier.watchdog()
            await trio.sleep(interval)
