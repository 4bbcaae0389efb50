"""The gateway's own ops: ``ping``, ``subscribe``, ``unsubscribe``, ``room.presence``, ``publish``."""

from __future__ import annotations

from typing import Any, Final

from realtimed import protocol
from realtimed.api.ops import Caller, OpHandler
from realtimed.auth import Claims
from realtimed.clock import WallClock, iso
from realtimed.config import Config, NamespaceConfig
from realtimed.delivery.router import Router
from realtimed.errors import Forbidden, ValidationFailed
from realtimed.live import Live


def may_subscribe(claims: Claims, ns: NamespaceConfig, room: str) -> bool:
    """A public namespace, or a pattern of the token's ``rooms`` claim that matches;
    and every user may subscribe to the room of their own feed, ``feed:user:<sub>``."""
    return (
        ns.public
        or any(protocol.room_matches(pattern, room) for pattern in claims.rooms)
        or room == _OWN_FEED + claims.sub
    )


_OWN_FEED: Final = protocol.FEED_ROOM_PREFIX + "user:"


def check_subscribe(claims: Claims, router: Router, room: str) -> NamespaceConfig:
    if router.is_address(room):
        raise Forbidden(f"{room} is an address: a session is in it from its token or its session id, never by subscribe")
    ns = router.namespace(room)
    if not may_subscribe(claims, ns, room):
        raise Forbidden(f"not allowed to subscribe to {room}")
    return ns


def ops(router: Router, *, clock: WallClock, config: Live[Config]) -> dict[str, OpHandler]:
    """The room ops, by name, for the daemon to add to the op registry."""

    async def ping(caller: Caller, value: Any) -> dict[str, Any]:
        return {"server_time": iso(clock.now())}

    async def subscribe(caller: Caller, value: Any) -> dict[str, Any]:
        room: str = value.room
        since = (value.since.seq, value.since.epoch) if value.since is not None else None
        check_subscribe(caller.claims, router, room)
        session = caller.session
        if session is None:
            return await router.recovery_reply(room, since=since)
        limit = config.value.gateway.max_subscriptions
        if room not in session.rooms and len(session.rooms) >= limit:
            raise Forbidden(f"subscription limit reached ({limit} rooms per socket)")
        reply = await router.subscribe(session, room, since=since)
        joined = reply.pop("_joined", False)
        user_id = caller.user_id
        subscribed_at = reply["seq"]

        async def after() -> None:
            router.flush_held(session, room, subscribed_at)
            if joined:
                await router.announce_join(room, user_id, joiner=session.id)

        caller.after_reply.append(after)
        return reply

    async def unsubscribe(caller: Caller, value: Any) -> dict[str, Any]:
        if caller.session is not None:
            await router.unsubscribe(caller.session, value.room)
        return {}

    async def room_presence(caller: Caller, value: Any) -> dict[str, Any]:
        room: str = value.room
        ns = check_subscribe(caller.claims, router, room)
        if caller.session is not None and room not in caller.session.rooms:
            raise Forbidden(f"not subscribed to {room}")
        if not ns.presence:
            raise ValidationFailed("room", f"the namespace of {room} keeps no presence")
        return {"users": await router.room_presence(room)}

    async def publish(caller: Caller, value: Any) -> dict[str, Any]:
        room: str = value.room
        ns = check_subscribe(caller.claims, router, room)
        if not ns.client_publish:
            raise Forbidden(f"clients may not publish to {room}")
        exclude = None
        seq, epoch, _ = await router.publish(room, value.event, value.data, exclude_session=exclude)
        return {"seq": seq, "epoch": epoch} if seq is not None else {}

    return {
        "ping": ping,
        "subscribe": subscribe,
        "unsubscribe": unsubscribe,
        "room.presence": room_presence,
        "publish": publish,
    }
