"""The daemon: the root nursery, services in order, signals, reload and drain.

The task tree, started in order with ``nursery.start`` and stopped the other way::

    root nursery            signals (TERM/INT drain, second INT forces, HUP reloads), watchdog
     └─ backends            store
         └─ services        broker, router, presence (+ cluster heartbeats), chat, push,
         │                  (cluster activity marks), notify, gateway (the session
         │                  lifecycle), WebSocket door (heartbeats), job runner, cron
             └─ doors       HTTP listeners (client; internal when configured)

The wiring (who gets what in its constructor) is ``_wire``; the choice between
in-process and Redis state is ``backends.open_backends``.

A drain stops accepting, lets the gateway say ``server.shutdown`` and close its
sockets with 1001, lets running jobs finish, all within ``shutdown.grace_s``, and
then cancels what is left, layer by layer, so that backends close last.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from realtimed import logs, memdebug, metrics, room_ops
from realtimed.api.ops import OpRegistry
from realtimed.auth import ApiKeys, TokenVerifier
from realtimed.backends import Backends, open_backends
from realtimed.chat import ChatService
from realtimed.clock import SystemClock, WallClock
from realtimed.config import DEV_API_KEY, DEV_HS256_SECRET, Config, ConfigError, load_config, parse_host_port
from realtimed.config_checks import DAEMON_CONFIG_CHECKS
from realtimed.delivery.router import Router
from realtimed.email.channel import EmailChannel
from realtimed.email.service import EmailService
from realtimed.errors import OperatorError
from realtimed.feeds.service import FeedService
from realtimed.gateway.bans import Bans
from realtimed.gateway.gateway import Gateway, SessionHooks
from realtimed.gateway.websocket import WebSocketDoor
from realtimed.http.app import check_backends, create_app
from realtimed.http.listener import Listener
from realtimed.jobs import CronScheduler, JobRunner, register_builtin_kinds
from realtimed.jobs.http import HttpJobService
from realtimed.live import Live
from realtimed.notify.delivery_log import DeliveryLog
from realtimed.notify.inbox import InAppChannel
from realtimed.notify.service import NotifyService
from realtimed.presence import PresenceService
from realtimed.push.channel import FcmChannel
from realtimed.push.service import PushService
from realtimed.sdnotify import SystemdNotifier
from realtimed.services import Services
from realtimed.socketio.door import RealtimeHandler
from realtimed.socketio.engine import EngineServer
from realtimed.socketio.server import NamespaceHandler, SocketIOServer
from realtimed.socketio.state import CurrentState
from realtimed.store import Store, open_store
from realtimed.webhooks.service import WebhookService

log = logging.getLogger(__name__)

WORKER_ENV = "REALTIMED_WORKER"

# Sections whose change takes effect without a restart; everything else needs one.
_LIVE_KEYS = {
    "log", "auth", "api", "gateway", "namespaces", "chat", "presence", "notify", "shutdown", "retention", "metrics",
    "webhooks", "console",
}


class Daemon:
    """One realtimed node.

    Args:
        cfg: the configuration.
        config_path: the file to re-read on SIGHUP (None: reload keeps the config).
        clock: the wall clock (tests inject one).
        handle_signals: install TERM/INT/HUP handling (off for in-process test daemons).
        socketio_handler: the Socket.IO door's namespace handler (None: realtimed's own,
            which authenticates; another is for tests, and no configuration sets it).

    Resource handling:
        Every task lives in one of the layer nurseries above; ``run`` returns only
        when all of them have finished.

    Error handling:
        A service that fails at start makes ``run`` raise (the CLI exits 1 with
        the reason); a failure of one connection or job never reaches here.
    """

    _verifier_live: Live[TokenVerifier]
    _api_keys: Live[ApiKeys]

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | Path | None = None,
        clock: WallClock | None = None,
        handle_signals: bool = True,
        notifier: SystemdNotifier | None = None,
        socketio_handler: NamespaceHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self._socketio_handler = socketio_handler
        self.config_path = config_path
        self.clock: WallClock = clock or SystemClock()
        self.node = cfg.server.node_id
        logs.set_node(self.node)
        # What a reload replaces; every service holding one of these sees the new value
        # (the verifier and the API keys are built with the services, in ``_wire``).
        self._config = Live(cfg)
        self._services: Services | None = None
        self._backends: Backends | None = None
        self._websocket: WebSocketDoor | None = None
        self._socketio: EngineServer | None = None
        self.listeners: list[Listener] = []
        self._handle_signals = handle_signals
        self._notifier = notifier or SystemdNotifier()
        self._drain_requested = trio.Event()
        self._drained = trio.Event()
        self._force_scope: trio.CancelScope | None = None
        self._reload_hooks: list[Callable[[Config], None]] = []
        self._pending_verifier: TokenVerifier | None = None

    @property
    def services(self) -> Services:
        """The node's services (built once the store is running)."""
        if self._services is None:
            raise RuntimeError("the daemon has not started its services yet")
        return self._services

    # -- addresses -------------------------------------------------------------------------------

    def address(self, role: str = "client") -> tuple[str, int]:
        for listener in self.listeners:
            if listener.role == role and listener.bound:
                host, port = listener.bound[0]
                return host, port
        raise LookupError(f"no {role} listener")

    def url(self, role: str = "client") -> str:
        host, port = self.address(role)
        scheme = next(lst.scheme for lst in self.listeners if lst.role == role)
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    # -- lifecycle -------------------------------------------------------------------------------

    def request_drain(self) -> None:
        self._drain_requested.set()

    def on_reload(self, hook: Callable[[Config], None]) -> None:
        """Call ``hook(new_config)`` after a successful reload."""
        self._reload_hooks.append(hook)

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        _warn_dev_secrets(cfg)
        metrics.UP.set(1)
        with trio.CancelScope() as force:
            self._force_scope = force
            async with trio.open_nursery() as root:
                if self._handle_signals:
                    await root.start(self._signals)
                interval = self._notifier.watchdog_interval_s()
                if interval:
                    root.start_soon(self._watchdog, interval)
                await self._run_layers(task_status)
                root.cancel_scope.cancel()
        metrics.UP.set(0)
        self._drained.set()
        log.info("stopped")

    async def _run_layers(self, task_status: trio.TaskStatus[Daemon]) -> None:
        cfg = self.cfg
        async with trio.open_nursery() as backends:
            store = await self._start_backends(backends)
            async with trio.open_nursery() as service_layer:
                self._wire(store)
                await self._start_services(service_layer)
                async with trio.open_nursery() as doors:
                    await self._start_doors(doors)
                    self._notifier.ready(f"serving {self.url()}")
                    task_status.started(self)
                    await self._drain_requested.wait()
                    log.info("draining (grace %.1f s)", cfg.shutdown.grace_s)
                    self.services.gateway.stop_admitting()
                    self._notifier.stopping()
                    for listener in self.listeners:
                        listener.stop_accepting()
                    with trio.move_on_after(cfg.shutdown.grace_s):
                        await self._drain_services()
                    doors.cancel_scope.cancel()
                service_layer.cancel_scope.cancel()
            backends.cancel_scope.cancel()

    async def _start_backends(self, nursery: trio.Nursery) -> Store:
        """Start the store (migrations are applied or checked before it is ready)."""
        store = open_store(self.cfg, clock=self.clock)
        await nursery.start(store.run)
        return store

    def _wire(self, store: Store) -> None:
        """Build every service with its dependencies; nothing runs yet."""
        cfg, config, clock, node = self.cfg, self._config, self.clock, self.node
        self._verifier_live = Live(self._verifier(cfg))
        self._api_keys = Live(ApiKeys.from_config(cfg.api))
        backends = self._backends = open_backends(cfg, node=node, config=config)
        runner = JobRunner(store, config=cfg.jobs, clock=clock, node=node)
        register_builtin_kinds(runner, retention=lambda: config.value.retention, feeds=lambda: config.value.feeds)
        router = Router(cfg, node=node, broker=backends.broker, clock=clock,
                        history=backends.history, room_presence=backends.room_presence)
        presence = PresenceService(config, store=store, router=router, clock=clock, backend=backends.presence)
        webhooks = WebhookService(config, store=store, clock=clock, jobs=runner)
        chat = ChatService(config, store=store, router=router, clock=clock, presence=presence, typing=backends.typing,
                           webhook_specs=webhooks.specs)
        presence.online_hooks.append(webhooks.on_presence)
        runner.on_dead(webhooks.on_job_dead)
        router.event_sink = webhooks.emit
        # What became of each notification per user and channel (GET /server/v1/deliveries).
        deliveries = DeliveryLog(config, store=store, clock=clock)
        push = PushService(cfg, store=store, clock=clock, jobs=runner, deliveries=deliveries)
        email = EmailService(config, store=store, clock=clock, jobs=runner, deliveries=deliveries)
        # The delivery channels notify calls (realtimed/notify/channel.py), each named like its config section.
        in_app = InAppChannel(store, clock=clock, router=router, deliveries=deliveries)
        notify = NotifyService(config, store=store, clock=clock, router=router, jobs=runner,
                               channels=[in_app, FcmChannel(push), *_email_channel(cfg, email)],
                               caps=backends.caps, activity=backends.activity, deliveries=deliveries)
        notify.event_sink = in_app.event_sink = push.event_sink = email.event_sink = webhooks.emit
        ops = OpRegistry(config)
        ops.add(room_ops.ops(router, clock=clock, config=config))
        ops.add(presence.ops())
        ops.add(chat.ops())
        ops.add(notify.ops())
        feeds = FeedService(config, store=store, router=router, clock=clock)
        if cfg.feeds.enabled:
            router.feeds = feeds
        ops.add(feeds.ops())
        push.register_jobs(runner)
        email.register_jobs(runner)
        notify.register_jobs(runner)
        webhooks.register_jobs(runner)
        http_jobs = HttpJobService(config, clock=clock)
        http_jobs.register_jobs(runner)
        hooks = SessionHooks(
            on_connect=(presence.on_connect,),
            on_disconnect=(presence.on_disconnect, chat.on_disconnect),
            mark_active=backends.activity.mark if backends.activity is not None else None,
            user_socket_count=backends.cluster.device_count if backends.cluster is not None else None,
        )
        bans = Bans(store, clock=clock, config=config)
        gateway = Gateway(config, clock=clock, node=node, router=router, bans=bans, hooks=hooks)
        self._websocket = WebSocketDoor(gateway, ops=ops, verifier=self._verifier_live)
        if config.value.socketio.enabled:
            sio = SocketIOServer(self._socketio_handler or RealtimeHandler(
                gateway, ops=ops, verifier=self._verifier_live, store=store,
                state=CurrentState(
                    presence=presence, chat=chat, store=store, max_contacts=config.value.socketio.recovery_max_replay
                ),
            ))
            # Long-polling needs every request of a session on this process: workers offer WebSocket only.
            polling = os.environ.get(WORKER_ENV) is None
            self._socketio = sio.engine = EngineServer(
                lambda: config.value, node=node, listener=sio, clock=clock, polling=polling
            )
        if backends.cluster is not None:
            _wire_cluster(backends, presence, router)
        self._services = Services(
            live_config=config, verifier=self._verifier_live, api_keys=self._api_keys, clock=clock, node=node,
            store=store, broker=backends.broker, router=router, ops=ops, gateway=gateway, presence=presence,
            jobs=runner, chat=chat, notify=notify, push=push, email=email, webhooks=webhooks, http_jobs=http_jobs,
            feeds=feeds,
        )
        self.on_reload(self._reload_services)

    async def _start_services(self, nursery: trio.Nursery) -> None:
        """Start the services in dependency order (each is ready when ``start`` returns)."""
        svc, backends, websocket = self.services, self._backends, self._websocket
        assert backends is not None and websocket is not None
        await nursery.start(svc.broker.run)
        await nursery.start(svc.router.run)
        await nursery.start(svc.presence.run)
        if backends.cluster is not None:
            # Heartbeats; reaps what a dead node (or this node's previous run) left.
            await nursery.start(backends.cluster.run)
        await nursery.start(svc.chat.run)
        await nursery.start(svc.push.run)
        await nursery.start(svc.email.run)
        await nursery.start(svc.webhooks.run)
        await nursery.start(svc.http_jobs.run)
        if backends.activity is not None:
            await nursery.start(backends.activity.run)
        await nursery.start(svc.notify.run)
        await nursery.start(svc.gateway.run)
        await nursery.start(websocket.run)
        if self._socketio is not None:
            await nursery.start(self._socketio.run)
        # realtimed_event_loop_lag_seconds, and realtimed_backend_ready refreshed without waiting for /readyz.
        await nursery.start(functools.partial(
            metrics.run_probes,
            lag_interval_s=self.cfg.metrics.loop_lag_interval_s,
            readiness_interval_s=self.cfg.metrics.readiness_interval_s,
            check_readiness=functools.partial(check_backends, self.services),
        ))
        if backends.cluster is None:
            metrics.CLUSTER_NODES.set(1)  # alone: the Redis presence service counts a cluster's nodes
        if self.cfg.jobs.enabled:
            # Claiming starts once every capability has registered its kinds, so a
            # job left from before a restart never meets an unknown kind.
            await nursery.start(svc.jobs.run)
            cron = CronScheduler.from_config(svc.store, self.cfg, clock=self.clock, runner=svc.jobs)
            await nursery.start(cron.run)

    def _verifier(self, cfg: Config) -> TokenVerifier:
        base_dir = Path(cfg.source).parent if cfg.source else None
        return TokenVerifier.from_config(cfg.auth, base_dir=base_dir, clock=self.clock)

    def _reload_services(self, new: Config) -> None:
        self._verifier_live.value = self._pending_verifier or self._verifier(new)
        self._pending_verifier = None
        self._api_keys.value = ApiKeys.from_config(new.api)
        self.services.router.set_config(new)
        self.services.webhooks.reload(new)
        self.services.http_jobs.reload(new)

    async def _drain_services(self) -> None:
        """Let sockets close and running jobs finish; returns early when all are done."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.services.gateway.drain)
            if self.cfg.jobs.enabled:
                nursery.start_soon(self.services.jobs.drain, self.cfg.shutdown.grace_s)

    async def _start_doors(self, nursery: trio.Nursery) -> None:
        cfg = self.cfg
        app = create_app(self.services)
        ssl_context = _ssl_context(cfg)
        host, port = parse_host_port(cfg.http.listen)
        # Set by `realtimed run --workers N` for its workers, which share the ports.
        shared = os.environ.get(WORKER_ENV) is not None
        assert self._websocket is not None
        client = Listener(
            cfg, host=host, port=port, role="client", asgi_app=app, ws_handler=self._websocket.handle_ws,
            socketio=self._socketio, ssl_context=ssl_context, reuse_port=shared,
        )
        self.listeners = [client]
        if cfg.http.internal_listen:
            ihost, iport = parse_host_port(cfg.http.internal_listen)
            self.listeners.append(Listener(cfg, host=ihost, port=iport, role="internal", asgi_app=app, reuse_port=shared))
        for listener in self.listeners:
            await nursery.start(listener.run)
            what = (
                "WebSocket, client REST, SSE, health"
                + (", server API, metrics" if listener.role == "client" and not cfg.http.internal_listen else "")
                if listener.role == "client"
                else "server API, metrics, health"
            )
            for bhost, bport in listener.bound:
                shown = f"[{bhost}]" if ":" in bhost else bhost
                log.info("listening on %s://%s:%d (%s)", listener.scheme, shown, bport, what)
                if listener.role == "client":
                    for mount in cfg.http.static:
                        root = mount.dir.resolve() if mount.dir else None
                        log.info("serving %s at %s://%s:%d%s", root, listener.scheme, shown, bport, mount.path)

    # -- signals, reload, watchdog ---------------------------------------------------------------

    async def _signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        # Memory diagnostics (realtimed/memdebug.py): only when REALTIMED_TRACEMALLOC is set.
        if memdebug.start():
            wanted.append(signal.SIGUSR2)
        with trio.open_signal_receiver(*wanted) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                elif signum == signal.SIGUSR2:
                    memdebug.dump()
                elif signum == signal.SIGINT and self._drain_requested.is_set():
                    log.warning("second SIGINT: stopping now")
                    if self._force_scope is not None:
                        self._force_scope.cancel()
                else:
                    log.info("%s received", signal.Signals(signum).name)
                    self.request_drain()

    async def reload(self) -> bool:
        """Re-read the configuration and apply what can change live. Returns success."""
        self._notifier.reloading()
        try:
            if self.config_path is None:
                new = self.cfg
            else:
                new = await trio.to_thread.run_sync(
                    functools.partial(load_config, self.config_path, checks=DAEMON_CONFIG_CHECKS)
                )
            # Keys are read now, so that an unreadable key file refuses the reload.
            self._pending_verifier = self._verifier(new)
        except ConfigError as exc:
            for key, problem in exc.problems:
                log.error("reload refused: %s: %s", key or "config", problem)
            metrics.RELOADS.labels("error").inc()
            self._notifier.ready("reload refused; previous configuration kept")
            return False
        old = self.cfg
        # Of [jobs], the HTTP targets apply live (each attempt reads them): a secret or URL
        # changes without a restart; the rest of the section needs one.
        new_jobs = new.jobs
        new = attrs.evolve(new, jobs=attrs.evolve(new.jobs, http_targets=old.jobs.http_targets))
        restart_needed = [
            field.name
            for field in attrs.fields(Config)
            if field.name not in _LIVE_KEYS
            and field.name != "source"
            and getattr(old, field.name) != getattr(new, field.name)
        ]
        if restart_needed:
            log.warning("reload: changes to [%s] take effect after a restart", "], [".join(restart_needed))
            # Keep the running values of what cannot change live.
            new = attrs.evolve(new, **{name: getattr(old, name) for name in restart_needed})
        new = attrs.evolve(new, jobs=attrs.evolve(new.jobs, http_targets=new_jobs.http_targets))
        if old.log != new.log:
            logs.setup_logging(new.log.level, new.log.format, include_user_ids=new.log.include_user_ids)
            log.info("reload: log level %s, format %s", new.log.level, new.log.format)
        self.cfg = new
        self._config.value = new
        for listener in self.listeners:
            listener.set_config(new)
        for hook in self._reload_hooks:
            hook(new)
        metrics.RELOADS.labels("ok").inc()
        log.info("configuration reloaded from %s", self.config_path or "memory")
        self._notifier.ready("reloaded")
        return True

    async def _watchdog(self, interval: float) -> None:
        while True:
            self._notifier.watchdog()
            await trio.sleep(interval)

    async def wait_stopped(self) -> None:
        await self._drained.wait()


def _wire_cluster(backends: Backends, presence: PresenceService, router: Router) -> None:
    """Let the shared presence reach presence and the router (dead nodes, resyncs)."""
    cluster = backends.cluster
    assert cluster is not None

    async def resync() -> None:
        # Written back after this node's heartbeat expired or a change was lost.
        stale = await cluster.sync(presence.local_devices(), router.local_room_counts())
        await router.rooms_left(stale)
        await presence.resynced()

    cluster.on_users_gone = presence.users_gone
    cluster.on_rooms_left = router.rooms_left
    cluster.on_resync = resync


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.http.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A key that asks for a passphrase gets none rather than a prompt: the daemon has no one to ask.
        ctx.load_cert_chain(cfg.http.tls_cert_file, cfg.http.tls_key_file, password=lambda: b"")
    except OSError as exc:
        # ssl.SSLError is an OSError: a file that is not PEM, or a key that does not match the certificate.
        if isinstance(exc, ssl.SSLError):
            detail = f"not a PEM certificate and its matching PEM key ({exc.reason or exc})"
        else:
            detail = f"{exc.filename or cfg.http.tls_cert_file}: {exc.strerror or exc}"
        raise OperatorError(
            f"cannot load the TLS certificate {cfg.http.tls_cert_file} and key {cfg.http.tls_key_file} "
            f"(http.tls_cert_file, http.tls_key_file): {detail}; give a matching, readable PEM pair "
            "(realtimed check-config FILE checks it)"
        ) from exc
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def _email_channel(cfg: Config, email: EmailService) -> list[EmailChannel]:
    """The email channel, on a node with ``email.enabled`` (preferences name it only there)."""
    return [EmailChannel(email)] if cfg.email.enabled else []


def _warn_dev_secrets(cfg: Config) -> None:
    if cfg.auth.hs256_secret == DEV_HS256_SECRET:
        log.warning("the development HS256 secret is in use: set auth.hs256_secret before exposing realtimed")
    if DEV_API_KEY in cfg.api.key_values:
        log.warning("the development API key is in use: set api.keys before exposing realtimed")


async def run_daemon(cfg: Config, *, config_path: str | Path | None, **kwargs: Any) -> None:
    """Run a daemon until it has drained (the CLI's ``run``)."""
    daemon = Daemon(cfg, config_path=config_path, **kwargs)
    await daemon.run()
