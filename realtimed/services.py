"""The running node's services, as the HTTP doors reach them (``api.routes.services()``).

The daemon builds one ``Services`` once every service is constructed, and
before any door serves a request; each field is the one service of that kind on
this node, typed. The services themselves never read it: each takes its own
dependencies in its constructor. (A test may swap one service for another
built the same way: the doors read the field at each request.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from realtimed.api.ops import OpRegistry
    from realtimed.auth import ApiKeys, TokenVerifier
    from realtimed.broker.base import Broker
    from realtimed.chat import ChatService
    from realtimed.clock import WallClock
    from realtimed.config import Config
    from realtimed.delivery.router import Router
    from realtimed.email.service import EmailService
    from realtimed.feeds.service import FeedService
    from realtimed.gateway.gateway import Gateway
    from realtimed.jobs.http import HttpJobService
    from realtimed.jobs.runner import JobRunner
    from realtimed.live import Live
    from realtimed.notify.service import NotifyService
    from realtimed.presence import PresenceService
    from realtimed.push.service import PushService
    from realtimed.store.base import Store
    from realtimed.webhooks.service import WebhookService


@attrs.define(eq=False)
class Services:
    """Every service of the node (see the module docstring).

    ``config``, ``verifier`` and ``api_keys`` are those in force: a reload
    replaces them, and each read here sees the new one. ``live_config`` is the
    box the services hold; setting ``config`` sets it for all of them.
    """

    live_config: Live[Config]
    _verifier: Live[TokenVerifier]
    _api_keys: Live[ApiKeys]
    clock: WallClock
    node: str
    store: Store
    broker: Broker
    router: Router
    ops: OpRegistry
    gateway: Gateway
    presence: PresenceService
    jobs: JobRunner
    chat: ChatService
    notify: NotifyService
    push: PushService
    email: EmailService
    webhooks: WebhookService
    http_jobs: HttpJobService
    feeds: FeedService | None = None

    @property
    def config(self) -> Config:
        return self.live_config.value

    @config.setter
    def config(self, value: Config) -> None:
        self.live_config.value = value

    @property
    def verifier(self) -> TokenVerifier:
        return self._verifier.value

    @property
    def api_keys(self) -> ApiKeys:
        return self._api_keys.value

    @property
    def draining(self) -> bool:
        """The node is draining: it admits no new socket and ``/readyz`` says so."""
        return self.gateway.draining
