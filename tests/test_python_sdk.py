"""The Python SDK (``clients/python``, ``realtimed_client``) against a real daemon.

Every test runs a daemon in the test's Trio loop (``start_daemon``) and talks to
it over real sockets with the SDK; the application's backend is played with
httpx on the server API. A daemon restart is a drain of the first daemon and a
second one on the same port and state folder, so the SQLite store (and, with
the Redis broker, room history) outlives it. Timers that would take minutes
(token expiry, heartbeats, request timeouts) run on MockClock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from realtimed_client import (
    CLOSED,
    TIMEOUT,
    Client,
    ClientOptions,
    Event,
    RealtimeError,
    State,
    open_client,
)

from realtimed.daemon import Daemon
from tests.fixtures.daemon import API_KEY, DaemonFactory, merge, toml_dumps
from tests.fixtures.tokens import token
from tests.test_delivery_channels import FakeSms, with_sms

SERVER = {"Authorization": f"Bearer {API_KEY}"}

# Quick reconnects: the drain asks for 50 to 100 ms, the SDK backs off from 50 ms.
DAEMON: dict[str, Any] = {
    "shutdown": {"grace_s": 2.0, "reconnect_min_ms": 50, "reconnect_max_ms": 100},
    "namespaces": [
        {"prefix": "job:", "history_size": 100, "history_ttl_s": 600.0},
        {"prefix": "lobby:", "public": True, "client_publish": True, "presence": True, "history_size": 50},
        {"prefix": "live:"},
    ],
}
FAST = ClientOptions(backoff_min_s=0.05, backoff_max_s=0.5, request_timeout_s=5.0, connect_timeout_s=5.0)


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


def connect(daemon: Daemon, user: str, **claims: Any) -> AbstractAsyncContextManager[Client]:
    """A client of the daemon as ``user`` (with these token claims), with quick reconnects."""
    return open_client(ws_url(daemon), token=token(user, **claims), options=FAST)


def server_http(daemon: Daemon) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=daemon.url(), headers=SERVER, timeout=10)


async def publish(daemon: Daemon, room: str, event: str, data: Any) -> dict[str, Any]:
    async with server_http(daemon) as http:
        response = await http.post("/server/v1/publish", json={"room": room, "event": event, "data": data})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def restart(daemon: Daemon, start_daemon: DaemonFactory, override: dict[str, Any]) -> Daemon:
    """Drain the daemon (server.shutdown, close 1001) and start another on its port and state."""
    port = daemon.address()[1]
    daemon.request_drain()
    await daemon.wait_stopped()
    return await start_daemon(merge(override, {"http": {"listen": f"127.0.0.1:{port}"}}))


async def next_event(stream: Any, *, timeout: float = 5) -> Event:
    with trio.fail_after(timeout):
        event: Event = await stream.get()
        return event


async def collect(stream: Any, count: int, *, timeout: float = 10) -> list[Event]:
    found: list[Event] = []
    with trio.fail_after(timeout):
        while len(found) < count:
            found.append(await stream.get())
    return found


async def nothing_more(stream: Any, *, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        extra = await stream.get()
        raise AssertionError(f"unexpected event {extra}")


# -- connecting and rooms ------------------------------------------------------------------------


async def test_connect_subscribe_and_receive(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(DAEMON)
        async with connect(daemon, "alice", rooms=["job:*"]) as client:
            ready = await client.wait_connected()
            assert ready["user_id"] == "alice" and ready["session_id"].startswith("s_")
            assert client.state is State.CONNECTED
            async with client.subscribe("job:42") as job:
                assert job.position[0] == 0 and job.position[1]
                for pct in (10, 20, 30):
                    await publish(daemon, "job:42", "job.progress", {"pct": pct})
                events = await collect(job, 3)
                assert [e.data["pct"] for e in events] == [10, 20, 30]
                assert [e.seq for e in events] == [1, 2, 3]
                assert all(e.room == "job:42" and e.name == "job.progress" and not e.replayed for e in events)
                assert job.position == (3, events[0].epoch)
                # A room outside the token's rooms claim is refused by the server.
                with pytest.raises(RealtimeError) as refused:
                    async with client.subscribe("team:1"):
                        pass
                assert refused.value.code == "FORBIDDEN"
            pong = await client.ping()
            assert pong["server_time"].endswith("Z")
        assert client.state is State.CLOSED


def gated_provider(user: str, **claims: Any) -> tuple[Callable[[], Awaitable[str]], dict[str, Any]]:
    """A token provider the test can hold shut, so it decides when the client may reconnect.

    Its tokens expire within the client's refresh margin, so it is asked before every connection.
    """
    state: dict[str, Any] = {"open": trio.Event(), "calls": 0}
    state["open"].set()

    async def provider() -> str:
        await state["open"].wait()
        state["calls"] += 1
        return token(user, ttl=600, **claims)

    return provider, state


GATED = ClientOptions(
    backoff_min_s=0.05, backoff_max_s=0.5, request_timeout_s=5.0, connect_timeout_s=5.0, token_refresh_margin_s=3600.0
)


@pytest.mark.parametrize("history", ["redis", "memory"])
async def test_reconnect_after_a_restart_resubscribes_since(
    start_daemon: DaemonFactory, history: str, request: pytest.FixtureRequest
) -> None:
    """Publications made while the client was away are replayed in order after the
    reconnect when the history outlived the restart (Redis); when it did not (the
    in-process history starts a new epoch), the room says room.reset instead."""
    with trio.fail_after(30):
        override = DAEMON
        if history == "redis":
            node = "sdk-" + os.urandom(4).hex()
            override = merge(DAEMON, {"server": {"node": node}, "broker": {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}})
        room = "job:" + os.urandom(4).hex()
        daemon = await start_daemon(override)
        provider, gate = gated_provider("alice", rooms=["job:*"])
        async with open_client(ws_url(daemon), token=provider, options=GATED) as client:
            first = await client.wait_connected()
            async with client.subscribe(room) as job:
                await publish(daemon, room, "job.progress", {"pct": 1})
                await publish(daemon, room, "job.progress", {"pct": 2})
                assert [e.seq for e in await collect(job, 2)] == [1, 2]
                gate["open"] = trio.Event()  # the client stays away until the test lets it back
                daemon = await restart(daemon, start_daemon, override)
                await publish(daemon, room, "job.progress", {"pct": 3})
                await publish(daemon, room, "job.progress", {"pct": 4})
                assert client.state is not State.CONNECTED
                gate["open"].set()
                again = await client.wait_connected()
                assert again["session_id"] != first["session_id"]
                if history == "redis":
                    replayed = await collect(job, 2)
                    assert [(e.seq, e.data["pct"], e.replayed) for e in replayed] == [(3, 3, True), (4, 4, True)]
                    assert replayed[0].epoch == job.position[1]
                else:
                    reset = await next_event(job)
                    assert reset.name == "room.reset" and reset.room == room
                    assert reset.data == {"room": room, "seq": 2, "epoch": job.position[1]}
                await publish(daemon, room, "job.progress", {"pct": 5})
                live = await next_event(job)
                assert (live.seq, live.data["pct"], live.replayed) == (5 if history == "redis" else 3, 5, False)
                await nothing_more(job)
        assert gate["calls"] == 2


async def test_chat_outbox_across_a_restart_stores_and_delivers_each_message_once_in_order(
    start_daemon: DaemonFactory,
) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(DAEMON)
        async with (
            connect(daemon, "alice") as alice,
            connect(daemon, "bob") as bob,
            bob.listen("message.new") as inbox,
        ):
            conversation = await alice.open_conversation("bob")
            cid = conversation["id"]
            bob.track_conversation(cid, after_seq=0)
            items = [alice.queue_message(cid, f"message {i}") for i in range(40)]
            await items[9].wait()
            daemon = await restart(daemon, start_daemon, DAEMON)
            stored = [await item.wait() for item in items]
            assert [m["seq"] for m in stored] == list(range(1, 41))
            assert [m["body"] for m in stored] == [f"message {i}" for i in range(40)]
            assert [m["client_id"] for m in stored] == [item.client_id for item in items]
            received = await collect(inbox, 40)
            assert [e.seq for e in received] == list(range(1, 41))
            assert [e.data["message"]["body"] for e in received] == [f"message {i}" for i in range(40)]
            assert all(e.room == f"conversation:{cid}" for e in received)
            await nothing_more(inbox)
            history = await bob.message_history(cid, limit=100)
            assert [m["body"] for m in history["messages"]] == [f"message {i}" for i in range(40)]


async def until(stream: Any, name: str, check: Callable[[Event], bool] = lambda e: True, *, timeout: float = 5) -> Event:
    """The next event of this name that passes ``check``; others are skipped."""
    with trio.fail_after(timeout):
        while True:
            event: Event = await stream.get()
            if event.name == name and check(event):
                return event


# -- chat extras, presence, the inbox, REST --------------------------------------------------------


async def test_typing_receipts_presence_inbox_and_rest(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(DAEMON)
        async with (
            connect(daemon, "alice") as alice,
            connect(daemon, "bob") as bob,
            bob.listen("typing.", "presence.updated", "notification.", "message.new") as seen_by_bob,
            alice.listen("receipt.updated") as receipts,
        ):
            cid = (await alice.open_conversation("bob"))["id"]
            await bob.wait_connected()
            sent = alice.frames_sent
            await alice.start_typing(cid)
            await alice.start_typing(cid)  # within 3 s of the first: not sent again
            assert alice.frames_sent == sent + 1
            typing = await until(seen_by_bob, "typing.updated")
            assert typing.data == {"conversation_id": cid, "user_id": "alice", "typing": True}
            await alice.stop_typing(cid)
            assert (await until(seen_by_bob, "typing.updated")).data["typing"] is False

            message = await alice.send_message(cid, "hello")
            new = await until(seen_by_bob, "message.new")
            assert new.data["message"]["id"] == message["id"] and new.seq == message["seq"] == 1
            assert await bob.mark_read(cid, message["seq"]) == 1
            receipt = await until(receipts, "receipt.updated", lambda e: e.data["user_id"] == "bob")
            assert (receipt.data["conversation_id"], receipt.data["read_seq"]) == (cid, 1)

            await alice.set_presence("busy", message="in a meeting")
            busy = await until(seen_by_bob, "presence.updated", lambda e: e.data["status"] == "busy")
            assert busy.data["user_id"] == "alice" and busy.data["message"] == "in a meeting"
            assert (await bob.query_presence(["alice"]))["alice"]["status"] == "busy"

            async with server_http(daemon) as http:
                answer = await http.post(
                    "/server/v1/notifications",
                    json={"user_ids": ["bob"], "type": "announcement", "vars": {"title": "Hi", "body": "there"}},
                )
                assert answer.status_code == 200, answer.text
            note = await until(seen_by_bob, "notification.new")
            assert note.seq == 1 and note.data["notification"]["title"] == "Hi"
            listed = await bob.list_notifications()
            assert [n["id"] for n in listed["notifications"]] == [note.data["notification"]["id"]]
            assert await bob.read_notifications([note.data["notification"]["id"]]) == 0
            read = await until(seen_by_bob, "notification.read")
            assert read.data["unread_count"] == 0

            device = await bob.register_device(
                "fcm-token-1", "android", app_version="1.0", device_info={"model": "Pixel 8", "os": "Android"}
            )
            assert device["token"] == "fcm-token-1"
            assert device["device_info"] == {"model": "Pixel 8", "os": "Android"}
            assert [d["token"] for d in await bob.list_devices()] == ["fcm-token-1"]
            await bob.unregister_device("fcm-token-1")
            assert await bob.list_devices() == []
            preferences = await bob.get_preferences()
            assert "types" in preferences


def otp(preferences: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(t for t in preferences["types"] if t["type"] == "otp")
    return entry


async def test_preferences_read_and_set_any_channel(start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(DAEMON)
        with_sms(daemon, FakeSms())  # a third channel, sms, and a type that uses it
        async with connect(daemon, "bob") as bob:
            entry = {"type": "otp", "in_app": True, "push": True, "sms": True, "channels": ["in_app", "push", "sms"]}
            assert otp(await bob.get_preferences()) == entry
            answer = await bob.set_preferences({"types": [{"type": "otp", "sms": False}]})
            assert otp(answer) == {**entry, "sms": False}  # the channels not named kept
            # An entry of get_preferences goes back as it is (channels and all); None keeps a setting.
            answer = await bob.set_preferences({"types": [{**otp(answer), "in_app": False, "sms": None}]})
            assert otp(answer) == {**entry, "in_app": False, "sms": False}
            assert await bob.get_preferences() == answer
            with pytest.raises(RealtimeError) as unknown:
                await bob.set_preferences({"types": [{"type": "otp", "email": False}]})
            assert (unknown.value.code, unknown.value.field) == ("VALIDATION_ERROR", "types[0].email")

            calls: list[str] = []
            rest = bob.rest

            async def counted(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
                calls.append(f"{method} {path}")
                return await rest(method, path, **kwargs)

            monkeypatch.setattr(bob, "rest", counted)
            cases: list[tuple[Any, str]] = [
                ({"types": [{"type": "otp", "sms": "no"}]}, "types[0].sms"),
                ({"types": [{"type": "otp", "in_app": True}, {"type": "otp", "push": 0}]}, "types[1].push"),
                ({"types": [{"type": "otp", "x" * 100: []}]}, "types[0]." + "x" * 64),
                ({"types": [{"type": "otp", ("sms",): True}]}, "types[0]"),
                ({"types": [{"in_app": True}]}, "types[0]"),
                ({"types": ["otp"]}, "types[0]"),
                ({"types": [{"type": ""}]}, "types[0].type"),
                ({"types": {"type": "otp"}}, "types"),
                ({"quiet_hours": {"start": "22:00"}}, "quiet_hours"),
                ({"time_zone": 7}, "time_zone"),
                (["otp"], "data"),
            ]
            for bad, field in cases:
                with pytest.raises(RealtimeError) as refused:
                    await bob.set_preferences(bad)
                assert (refused.value.code, refused.value.field) == ("VALIDATION_ERROR", field), (refused.value, field)
            assert calls == []  # none reached the server
            assert await bob.get_preferences() == answer


# -- errors ---------------------------------------------------------------------------------------


async def test_server_errors_reach_the_caller_as_realtime_error(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(DAEMON)
        async with connect(daemon, "alice", rooms=["job:*"]) as alice:
            with pytest.raises(RealtimeError) as missing:
                await alice.edit_message("m_missing", "new text")
            assert missing.value.code == "NOT_FOUND" and missing.value.message
            with pytest.raises(RealtimeError) as invalid:
                await alice.request("conversation.mute", {"conversation_id": "c1", "muted": "yes"})
            assert (invalid.value.code, invalid.value.field) == ("VALIDATION_ERROR", "muted")
            assert invalid.value.message.startswith("muted:")
            with pytest.raises(RealtimeError) as forbidden:
                await alice.publish("job:1", "job.progress", {"pct": 1})
            assert forbidden.value.code == "FORBIDDEN"
            with pytest.raises(RealtimeError) as unknown:
                await alice.request("no.such.op")
            assert unknown.value.code == "BAD_REQUEST"
            # The outbox gives up a message the server refuses, and goes on with the next.
            refused = alice.queue_message("c_missing", "hi")
            with pytest.raises(RealtimeError) as gone:
                await refused.wait()
            assert gone.value.code == "NOT_FOUND" and refused.done
            cid = (await alice.open_conversation("bob"))["id"]
            assert (await alice.send_message(cid, "still works"))["seq"] == 1


async def test_bad_arguments_are_refused_before_sending(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(DAEMON)
        url = ws_url(daemon)
        with pytest.raises(RealtimeError) as empty:
            Client(url, token="")
        assert (empty.value.code, empty.value.field) == ("VALIDATION_ERROR", "token")
        with pytest.raises(ValueError, match="scheme"):
            Client("ftp://127.0.0.1/ws", token="t")
        async with connect(daemon, "alice", rooms=["job:*"]) as client:
            await client.wait_connected()
            sent = client.frames_sent
            big = {"blob": "x" * 600_000}

            async def subscribe(room: str, since: Any = None) -> None:
                async with client.subscribe(room, since=since):
                    pass

            cases: list[tuple[Callable[[], Awaitable[Any]], str, str | None]] = [
                (lambda: subscribe("job 42"), "VALIDATION_ERROR", "room"),
                (lambda: subscribe("job::42"), "VALIDATION_ERROR", "room"),
                (lambda: subscribe("job:42", since=(-1, "e")), "VALIDATION_ERROR", "since.seq"),
                (lambda: subscribe("job:42", since=(1, 2)), "VALIDATION_ERROR", "since.epoch"),
                (lambda: client.publish("lobby:x", "message.fake", {}), "VALIDATION_ERROR", "event"),
                (lambda: client.publish("lobby:x", "big", big), "PAYLOAD_TOO_LARGE", "data"),
                (lambda: client.publish("lobby:x", "nan", {"v": float("nan")}), "VALIDATION_ERROR", "data"),
                (lambda: client.publish("lobby:x", "bad", {"s": "\ud800"}), "VALIDATION_ERROR", "data"),
                (lambda: client.send_message("c1", "x" * 65_537), "PAYLOAD_TOO_LARGE", "body"),
                (lambda: client.send_message("c1", ""), "VALIDATION_ERROR", "body"),
                (lambda: client.send_message("c1", "hi", media_url="javascript:alert(1)"), "VALIDATION_ERROR", "media_url"),
                (lambda: client.send_message("c1", "hi", type="video"), "VALIDATION_ERROR", "type"),
                (lambda: client.send_message("c1", "hi", client_id="k" * 65), "VALIDATION_ERROR", "client_id"),
                (lambda: client.send_message("", "hi"), "VALIDATION_ERROR", "conversation_id"),
                (lambda: client.message_history("c1", before_seq=5, after_seq=1), "VALIDATION_ERROR", "after_seq"),
                (lambda: client.message_history("c1", limit=101), "VALIDATION_ERROR", "limit"),
                (lambda: client.mark_read("c1", True), "VALIDATION_ERROR", "seq"),  # type: ignore[arg-type]
                (lambda: client.set_presence("sleeping"), "VALIDATION_ERROR", "status"),
                (lambda: client.query_presence(["u"] * 201), "VALIDATION_ERROR", "user_ids"),
                (lambda: client.query_presence(["ok", "bad\n"]), "VALIDATION_ERROR", "user_ids[1]"),
                (lambda: client.list_notifications(limit=0), "VALIDATION_ERROR", "limit"),
                (lambda: client.list_notifications(cursor="x", after_seq=1), "VALIDATION_ERROR", "after_seq"),
                (lambda: client.read_notifications([]), "VALIDATION_ERROR", "ids"),
                (lambda: client.create_conversation("alice"), "VALIDATION_ERROR", "member_ids"),
                (lambda: client.open_conversation("x" * 129), "VALIDATION_ERROR", "user_id"),
                (lambda: client.request("ping", [1]), "VALIDATION_ERROR", "data"),  # type: ignore[arg-type]
                (lambda: client.request("subscribe", {"room": "job:1"}), "VALIDATION_ERROR", "op"),
                (lambda: client.register_device("t", "symbian"), "VALIDATION_ERROR", "platform"),
                (lambda: client.register_device("t", "ios", device_info={"imei": "1"}), "VALIDATION_ERROR", "device_info.imei"),
            ]
            for call, code, field in cases:
                with pytest.raises(RealtimeError) as refused:
                    await call()
                assert (refused.value.code, refused.value.field) == (code, field), (refused.value, field)
            assert client.frames_sent == sent  # nothing reached the socket
            assert client.state is State.CONNECTED


async def test_terminal_close_codes_stop_the_client(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(DAEMON)
        url = ws_url(daemon)
        # A bad token: close 4501, reported, never retried.
        async with open_client(url, token="not-a-token", options=FAST) as client, client.state_changes() as changes:
            with pytest.raises(RealtimeError) as refused:
                await client.wait_connected()
            assert (refused.value.code, refused.value.close_code) == (CLOSED, 4501)
            states = [change.state async for change in changes]
            assert State.DISCONNECTED not in states and states[-1] is State.CLOSED
        # Disconnected by the server API: close 4510 ends the streams with the error.
        async with connect(daemon, "carol") as client:
            await client.wait_connected()
            async with client.subscribe("lobby:hall") as hall, client.listen() as events:
                async with server_http(daemon) as http:
                    answer = await http.post("/server/v1/users/carol/disconnect", json={})
                    assert answer.json()["disconnected"] == 1
                with pytest.raises(RealtimeError) as stopped:
                    await next_event(hall)
                assert (stopped.value.code, stopped.value.close_code) == (CLOSED, 4510)
                with pytest.raises(RealtimeError):
                    await next_event(events)
            assert client.state is State.CLOSED and client.error is not None and client.error.close_code == 4510
            with pytest.raises(RealtimeError) as after:
                await client.ping()
            assert after.value.code == CLOSED
            with pytest.raises(RealtimeError):
                client.queue_message("c1", "hi")
            async with server_http(daemon) as http:
                await trio.sleep(0.3)
                answer = await http.get("/server/v1/connections", params={"user_id": "carol"})
                assert answer.json()["connections"] == []  # it did not come back


# -- timers on the mock clock ---------------------------------------------------------------------

QUIET: dict[str, Any] = merge(DAEMON, {"jobs": {"enabled": False}, "presence": {"away_after_s": 86400.0}})


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)


async def start_paused(start_daemon: DaemonFactory, clock: trio.testing.MockClock, override: dict[str, Any]) -> Daemon:
    """Start a daemon with the clock held still (a slow disk must not jump it to a deadline)."""
    threshold = clock.autojump_threshold
    clock.autojump_threshold = float("inf")
    try:
        return await start_daemon(override)
    finally:
        clock.autojump_threshold = threshold


async def test_token_refresh_on_session_expiring_keeps_the_socket(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600):
        # Few timers tick meanwhile, so the clock takes few (real-time costly) jumps.
        daemon = await start_paused(start_daemon, autojump_clock, merge(QUIET, {"gateway": {"heartbeat_s": 900.0}}))
        issued: list[float] = []

        async def provider() -> str:
            issued.append(trio.current_time())
            return token("alice", ttl=120 if len(issued) == 1 else 3600)

        options = ClientOptions(connect_timeout_s=60.0, request_timeout_s=60.0, heartbeat_s=900.0)
        async with open_client(ws_url(daemon), token=provider, options=options) as client, client.listen("session.expiring") as expiring:
            ready = await client.wait_connected()
            started = trio.current_time()
            await next_event(expiring, timeout=100)
            assert 55 <= trio.current_time() - started <= 65  # expiring_notice_s before the 120 s token ends
            await trio.sleep(100)  # past the first token's expiry
            assert client.state is State.CONNECTED
            assert client.session is not None and client.session["session_id"] == ready["session_id"]
            assert len(issued) == 2
            assert "server_time" in await client.ping()
        # A fixed token cannot be renewed: close 4004 at expiry stops the client.
        async with open_client(ws_url(daemon), token=token("bob", ttl=120), options=options) as client:
            await client.wait_connected()
            async with client.state_changes() as changes:
                change = await until_state(changes, State.CLOSED, timeout=200)
            assert change.error is not None and change.error.close_code == 4004
            with pytest.raises(RealtimeError) as stopped:
                await client.ping()
            assert (stopped.value.code, stopped.value.close_code) == (CLOSED, 4004)


async def until_state(changes: Any, state: State, *, timeout: float) -> Any:
    with trio.fail_after(timeout):
        async for change in changes:
            if change.state is state:
                return change
    raise AssertionError(f"the client never became {state}")


class FreezingProxy:
    """A TCP proxy between the client and the daemon; ``freeze`` turns the open
    connections into black holes (nothing forwarded, nothing closed), as a dead
    network path does. Connections made afterwards work."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._generation = 0
        self._frozen_below = 0

    def freeze(self) -> None:
        self._frozen_below = self._generation

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        generation = self._generation
        self._generation += 1
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            await downstream.aclose()
            return
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, downstream, upstream, generation, nursery)
            nursery.start_soon(self._pump, upstream, downstream, generation, nursery)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, generation: int, nursery: trio.Nursery) -> None:
        try:
            async for chunk in source:
                if generation < self._frozen_below:
                    await trio.sleep_forever()
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()


async def test_request_timeout_and_heartbeat_detect_a_dead_socket(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(3600):
        daemon = await start_paused(start_daemon, autojump_clock, QUIET)
        proxy = FreezingProxy(daemon.address())
        await nursery.start(proxy.run)
        options = ClientOptions(
            heartbeat_s=10.0, heartbeat_timeout_s=5.0, connect_timeout_s=60.0, request_timeout_s=60.0, backoff_min_s=0.5
        )
        async with open_client(f"ws://127.0.0.1:{proxy.port}/ws", token=token("alice"), options=options) as client:
            first = await client.wait_connected()
            async with client.state_changes() as changes:
                proxy.freeze()
                frozen_at = trio.current_time()
                with pytest.raises(RealtimeError) as timed_out:
                    await client.request("conversation.list", timeout=3.0)
                assert timed_out.value.code == TIMEOUT
                assert 3.0 <= trio.current_time() - frozen_at < 3.5
                # No frame for heartbeat_s, then a ping unanswered for heartbeat_timeout_s.
                lost = await until_state(changes, State.DISCONNECTED, timeout=60)
                assert (lost.code, lost.reason) == (1006, "no answer to the client's heartbeat")
                assert 14.5 <= trio.current_time() - frozen_at <= 16
                await until_state(changes, State.CONNECTED, timeout=60)
            assert client.session is not None and client.session["session_id"] != first["session_id"]
            assert "server_time" in await client.ping()


# -- a scripted server: hostile frames, exact close codes ------------------------------------------


class ScriptedServer:
    """A WebSocket server the test scripts frame by frame.

    It stands in for realtimed only where the daemon cannot be made to misbehave
    on cue: frames no daemon sends, a RATE_LIMITED reply to one given request, a
    given close code at a given moment.
    """

    def __init__(self) -> None:
        self._send, self._accepted = trio.open_memory_channel[tuple[Any, dict[bytes, bytes], float]](16)
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from trio_websocket import serve_websocket

        async def handler(request: Any) -> None:
            headers = {name.lower(): value for name, value in request.headers}
            ws = await request.accept()
            await self._send.send((ws, headers, trio.current_time()))
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            self.port = server.port
            task_status.started()

    async def accept(self, *, timeout: float = 60) -> tuple[Any, dict[bytes, bytes], float]:
        with trio.fail_after(timeout):
            return await self._accepted.receive()

    async def no_connection(self, *, wait: float) -> None:
        with trio.move_on_after(wait):
            await self._accepted.receive()
            raise AssertionError("the client connected again")


async def ready(ws: Any, n: int) -> None:
    data = {"session_id": f"s_{n}", "user_id": "alice", "heartbeat_s": 25}
    await ws.send_message(json.dumps({"event": "session.ready", "data": data}))


async def request_frame(ws: Any) -> dict[str, Any]:
    with trio.fail_after(10):
        frame: dict[str, Any] = json.loads(await ws.get_message())
        return frame


class NumberedTokens:
    """A token provider that hands out ``token-1``, ``token-2``, ... and keeps them in ``issued``."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def __call__(self) -> str:
        self.issued.append(f"token-{len(self.issued) + 1}")
        return self.issued[-1]


async def test_close_codes_decide_when_and_how_the_client_reconnects(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(600):
        server = ScriptedServer()
        await nursery.start(server.run)
        tokens = NumberedTokens()
        options = ClientOptions(backoff_min_s=0.5, backoff_max_s=20.0, slow_backoff_min_s=10.0, heartbeat_s=600.0)
        async with open_client(f"ws://127.0.0.1:{server.port}/ws", token=tokens, options=options) as client:
            ws, headers, _ = await server.accept()
            assert headers[b"authorization"] == b"Bearer token-1"
            await ready(ws, 1)
            await client.wait_connected()
            # A drain: back after exactly the delay server.shutdown named.
            await ws.send_message(json.dumps({"event": "server.shutdown", "data": {"reconnect_after_ms": 7000}}))
            await ws.aclose(1001, "server draining")
            closed_at = trio.current_time()
            ws, headers, at = await server.accept()
            assert 7.0 <= at - closed_at < 7.2
            assert headers[b"authorization"] == b"Bearer token-1"  # still valid: not asked again
            await ready(ws, 2)
            # Rate-limit abuse: a longer backoff.
            await ws.aclose(4009, "rate limit abuse")
            closed_at = trio.current_time()
            ws, headers, at = await server.accept()
            assert 10.0 <= at - closed_at <= 11.2
            await ready(ws, 3)
            # Token expired: a fresh one from the provider.
            await ws.aclose(4004, "token expired")
            ws, headers, _ = await server.accept()
            assert headers[b"authorization"] == b"Bearer token-2"
            await ready(ws, 4)
            async with client.state_changes() as changes:
                await ws.aclose(4503, "banned")
                stopped = await until_state(changes, State.CLOSED, timeout=10)
            assert stopped.code == 4503 and stopped.error is not None and stopped.error.close_code == 4503
            await server.no_connection(wait=120)
        assert tokens.issued == ["token-1", "token-2"]


async def test_hostile_frames_rate_limits_and_requests_lost_with_the_socket(nursery: trio.Nursery) -> None:
    with trio.fail_after(30):
        server = ScriptedServer()
        await nursery.start(server.run)
        tokens = NumberedTokens()
        options = ClientOptions(backoff_min_s=0.01, backoff_max_s=0.05, request_timeout_s=10.0)
        results: dict[str, Any] = {}

        async def run(name: str, call: Callable[[], Awaitable[Any]]) -> None:
            try:
                results[name] = await call()
            except RealtimeError as exc:
                results[name] = exc

        async with open_client(f"ws://127.0.0.1:{server.port}/ws", token=tokens, options=options) as client:
            ws, _, _ = await server.accept()
            await ready(ws, 1)
            # session.expiring right after session.ready: the renewal is refused, the socket stays.
            await ws.send_message(json.dumps({"event": "session.expiring", "data": {"expires_at": "soon"}}))
            auth = await request_frame(ws)
            assert (auth["op"], auth["data"]) == ("auth", {"token": "token-2"})
            await ws.send_message(json.dumps({"id": auth["id"], "ok": False, "error": {"code": "FORBIDDEN", "message": "other user"}}))
            for junk in (
                "not json",
                "[1]",
                '{"id": 999, "ok": true, "data": {}}',
                '{"id": null, "ok": false, "error": {"code": "BAD_REQUEST", "message": "x"}}',
                '{"event": 5}',
                '{"event": "room.joined", "room": "lobby:unknown", "data": {}}',
                '{"event": "message.new", "room": "conversation:c1", "seq": "1", "data": null}',
            ):
                await ws.send_message(junk)
            await ws.send_message(b"\x00binary")
            # An idempotent request answered RATE_LIMITED is sent again after retry_after_ms.
            async with trio.open_nursery() as calls:
                calls.start_soon(run, "ping", client.ping)
                ping = await request_frame(ws)
                limited_at = trio.current_time()
                limited = {"code": "RATE_LIMITED", "message": "slow down", "retry_after_ms": 200}
                await ws.send_message(json.dumps({"id": ping["id"], "ok": False, "error": limited}))
                assert await request_frame(ws) == ping
                assert trio.current_time() - limited_at >= 0.2
                await ws.send_message(json.dumps({"id": ping["id"], "ok": True, "data": {"server_time": "T"}}))
            assert results["ping"] == {"server_time": "T"}
            # Any other op gets the error.
            async with trio.open_nursery() as calls:
                calls.start_soon(run, "publish", lambda: client.publish("lobby:1", "line", {"t": 1}))
                publish_frame = await request_frame(ws)
                await ws.send_message(json.dumps({"id": publish_frame["id"], "ok": False, "error": limited}))
            assert isinstance(results["publish"], RealtimeError)
            assert (results["publish"].code, results["publish"].retry_after_ms) == ("RATE_LIMITED", 200)
            # In flight when the socket is lost: publish may or may not have been applied,
            # so it fails with DISCONNECTED; conversation.list is sent again on the next socket.
            async with trio.open_nursery() as calls:
                calls.start_soon(run, "publish", lambda: client.publish("lobby:1", "line", {"t": 2}))
                calls.start_soon(run, "list", client.list_conversations)
                ops = {(await request_frame(ws))["op"], (await request_frame(ws))["op"]}
                assert ops == {"publish", "conversation.list"}
                await ws.aclose(4000, "no answer to heartbeats")
                ws, _, _ = await server.accept()
                await ready(ws, 2)
                again = await request_frame(ws)
                assert again["op"] == "conversation.list"
                await ws.send_message(json.dumps({"id": again["id"], "ok": True, "data": {"conversations": [], "next_cursor": None}}))
            assert isinstance(results["publish"], RealtimeError) and results["publish"].code == "DISCONNECTED"
            assert results["list"] == {"conversations": [], "next_cursor": None}
            assert client.state is State.CONNECTED
            with trio.move_on_after(0.3):
                extra = await ws.get_message()
                raise AssertionError(f"unexpected frame {extra!r}")


async def test_a_skipped_seq_or_a_reconnect_is_filled_from_history_once_and_in_order(nursery: trio.Nursery) -> None:
    with trio.fail_after(30):
        server = ScriptedServer()
        await nursery.start(server.run)
        options = ClientOptions(backoff_min_s=0.01, backoff_max_s=0.05)

        def new(seq: int) -> str:
            message = {"id": f"m{seq}", "conversation_id": "c1", "seq": seq, "body": f"b{seq}"}
            return json.dumps({"event": "message.new", "room": "conversation:c1", "seq": seq, "data": {"message": message}})

        def history(request: dict[str, Any], seqs: list[int]) -> str:
            messages = [{"id": f"m{s}", "conversation_id": "c1", "seq": s, "body": f"b{s}"} for s in seqs]
            return json.dumps({"id": request["id"], "ok": True, "data": {"messages": messages, "has_more": False, "version": 1}})

        async with open_client(f"ws://127.0.0.1:{server.port}/ws", token="t", options=options) as client, client.listen("message.new") as events:
            ws, _, _ = await server.accept()
            await ready(ws, 1)
            await ws.send_message(new(1))
            assert (await next_event(events)).seq == 1
            await ws.send_message(new(3))  # 2 is missing
            fetch = await request_frame(ws)
            assert (fetch["op"], fetch["data"]) == ("message.history", {"conversation_id": "c1", "after_seq": 1, "limit": 100})
            await ws.send_message(new(4))  # live meanwhile: held until the backfill is done
            await ws.send_message(new(3))  # a repeat: dropped
            await ws.send_message(history(fetch, [2, 3]))
            got = await collect(events, 3)
            assert [(e.seq, e.replayed, e.data["message"]["body"]) for e in got] == [(2, True, "b2"), (3, True, "b3"), (4, False, "b4")]
            # After a reconnect, what was sent meanwhile is fetched for every conversation followed.
            await ws.aclose(4000, "no answer to heartbeats")
            ws, _, _ = await server.accept()
            await ready(ws, 2)
            fetch = await request_frame(ws)
            assert fetch["data"] == {"conversation_id": "c1", "after_seq": 4, "limit": 100}
            await ws.send_message(history(fetch, [5]))
            assert [(e.seq, e.replayed) for e in await collect(events, 1)] == [(5, True)]
            await ws.send_message(new(5))
            await ws.send_message(new(6))
            assert (await next_event(events)).seq == 6
            await nothing_more(events)


async def test_a_failing_token_provider_is_retried_with_backoff(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        server = ScriptedServer()
        await nursery.start(server.run)
        answers: list[Any] = [RuntimeError("auth backend down"), "", 42, "token-ok"]

        async def provider() -> str:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[no-any-return]

        options = ClientOptions(backoff_min_s=0.01, backoff_max_s=0.05)
        async with open_client(f"ws://127.0.0.1:{server.port}/ws", token=provider, options=options) as client:
            ws, headers, _ = await server.accept()
            assert headers[b"authorization"] == b"Bearer token-ok"  # no socket was opened before
            await ready(ws, 1)
            assert (await client.wait_connected())["session_id"] == "s_1"
            assert answers == []


# -- realtimed listen ------------------------------------------------------------------------------


async def test_realtimed_listen_prints_events_as_json_lines(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(DAEMON)
        host, port = daemon.address()
        config = tmp_path / "listen.toml"
        config.write_text(
            toml_dumps(
                {
                    "server": {"state_dir": str(tmp_path / "unused")},
                    "http": {"listen": f"{host}:{port}"},
                    "auth": {"hs256_secret": daemon.cfg.auth.hs256_secret},
                }
            )
        )
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "realtimed", "listen", "-c", str(config), "--room", "job:42", "--count", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            errors = b""
            while b"following job:42 as listener" not in errors:
                chunk = await process.stderr.receive_some(4096)
                assert chunk, errors.decode()
                errors += chunk
            answer = await publish(daemon, "job:42", "job.progress", {"pct": 40})
            lines = await read_lines(process.stdout, 1)
            assert json.loads(lines[0]) == {
                "event": "job.progress",
                "room": "job:42",
                "seq": answer["seq"],
                "epoch": answer["epoch"],
                "data": {"pct": 40},
            }
            async with server_http(daemon) as http:
                sent = await http.post(
                    "/server/v1/users/events", json={"user_ids": ["listener"], "event": "hello", "data": {"n": 1}}
                )
                assert sent.status_code == 200, sent.text
            lines = await read_lines(process.stdout, 1)
            assert json.loads(lines[0]) == {"event": "hello", "data": {"n": 1}}
            assert await process.wait() == 0  # --count 2
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        # A terminal close is reported and ends the command.
        refused = await trio.run_process(
            [sys.executable, "-m", "realtimed", "listen", "--url", daemon.url(), "--token", "not-a-token", "--room", "job:1"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert refused.returncode == 1 and refused.stdout == b""
        assert b"4501" in refused.stderr


async def read_lines(stream: trio.abc.ReceiveStream, count: int) -> list[str]:
    buffer = b""
    while buffer.count(b"\n") < count:
        chunk = await stream.receive_some(4096)
        assert chunk, buffer
        buffer += chunk
    return buffer.decode().splitlines()[:count]


def test_realtimed_listen_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from realtimed.cli import main

    config = tmp_path / "prod.toml"
    config.write_text(toml_dumps({"server": {"state_dir": str(tmp_path)}, "auth": {"hs256_secret": "x" * 40}}))
    # Not the development secret: no token is minted.
    assert main(["listen", "-c", str(config), "--room", "job:1"]) == 2
    assert "give --token" in capsys.readouterr().err
    assert main(["listen", "--url", "ws://127.0.0.1:1/ws", "--token", "t", "--count", "0"]) == 2
    assert main(["listen", "--url", "gopher://x", "--token", "t"]) == 2
    assert "unsupported URL scheme" in capsys.readouterr().err
    # Without the SDK installed, the command says how to get it.
    code = (
        "import sys; sys.modules['realtimed_client'] = None\n"
        "from realtimed.cli import main\n"
        "raise SystemExit(main(['listen', '--url', 'ws://127.0.0.1:1/ws', '--token', 't']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert result.returncode == 1
    assert "pip install ./clients/python" in result.stderr


async def test_a_feed_subscription_recovers_from_the_store_across_a_restart(start_daemon: DaemonFactory) -> None:
    """Activities logged while the client was away come after the reconnect, from the
    store (the daemon restarted: no room history survived), in order and once."""
    with trio.fail_after(30):
        daemon = await start_daemon(DAEMON)
        provider, gate = gated_provider("alice", rooms=["feed:team:*"])

        async def log(*actors: str) -> None:
            activities = [{"actor": a, "verb": "join", "object": "t1", "feeds": ["team:t1"]} for a in actors]
            async with server_http(daemon) as http:
                answer = await http.post("/server/v1/activities", json={"activities": activities})
            assert answer.status_code == 200, answer.text

        async with open_client(ws_url(daemon), token=provider, options=GATED) as client:
            await client.wait_connected()
            async with client.subscribe_feed("team:t1") as feed:
                assert feed.room == "feed:team:t1" and feed.position[0] == 0 and feed.position[1]
                await log("ann", "bo")
                live = await collect(feed, 2)
                assert [(e.name, e.seq, e.data["activity"]["actor"]) for e in live] == [
                    ("feed.activity", 1, "ann"), ("feed.activity", 2, "bo")
                ]
                gate["open"] = trio.Event()
                daemon = await restart(daemon, start_daemon, DAEMON)
                await log("cy", "di")
                gate["open"].set()
                await client.wait_connected()
                replayed = await collect(feed, 2)
                assert [(e.seq, e.data["activity"]["actor"], e.replayed) for e in replayed] == [
                    (3, "cy", True), (4, "di", True)
                ]
                await log("ed")
                assert (await next_event(feed)).seq == 5
                await nothing_more(feed)
                page = await client.feed_activities("team:t1", verb="join", limit=2)
                assert [a["actor"] for a in page["activities"]] == ["ed", "di"] and page["next_cursor"]
                with pytest.raises(RealtimeError) as refused:
                    await client.feed_activities("user:bob")
                assert refused.value.code == "FORBIDDEN"
                with pytest.raises(RealtimeError) as bad:
                    await client.feed_activities("a b")
                assert bad.value.field == "feed"
