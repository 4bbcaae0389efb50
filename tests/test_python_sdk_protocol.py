"""The Python SDK's sans-IO parts, tested synchronously: frames, close codes,
backoff, tokens, URLs, argument checks, room recovery and bounded feeds."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
import trio
from realtimed_client import Event, RealtimeError
from realtimed_client import _protocol as proto
from realtimed_client._client import _Room
from realtimed_client._feed import Feed
from realtimed_client._protocol import CloseAction

from realtimed import protocol as server_protocol


def test_close_codes_map_to_what_the_client_does() -> None:
    expected = {
        1000: CloseAction.STOP,
        1001: CloseAction.AFTER_SHUTDOWN,
        1003: CloseAction.STOP,
        1006: CloseAction.RECONNECT,
        1009: CloseAction.STOP,
        1011: CloseAction.RECONNECT,
        4000: CloseAction.RECONNECT,
        4004: CloseAction.REFRESH_TOKEN,
        4008: CloseAction.RECONNECT,
        4009: CloseAction.SLOW_RECONNECT,
        4012: CloseAction.RECONNECT,
        4013: CloseAction.SLOW_RECONNECT,
        4499: CloseAction.RECONNECT,
        4500: CloseAction.STOP,
        4501: CloseAction.STOP,
        4503: CloseAction.STOP,
        4510: CloseAction.STOP,
        4511: CloseAction.STOP,
        4999: CloseAction.STOP,
    }
    assert {code: proto.close_action(code) for code in expected} == expected


def test_backoff_is_full_jitter_under_a_growing_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (200, 30.0)):
        delays = [proto.backoff_delay(attempt, min_s=0.5, max_s=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range


def _jwt(payload: Any) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"{b64(b'{}')}.{b64(json.dumps(payload).encode())}.sig"


def test_token_expiry_is_read_without_verifying_and_never_raises() -> None:
    assert proto.token_expiry(_jwt({"sub": "a", "exp": 1700000000})) == 1700000000.0
    assert proto.token_expiry(_jwt({"sub": "a", "exp": 1.5})) == 1.5
    for odd in ("opaque", "a.b", "a.!!!.c", _jwt([1]), _jwt({"exp": "soon"}), _jwt({"exp": True}), _jwt({"sub": "a"})):
        assert proto.token_expiry(odd) is None


def test_urls() -> None:
    assert proto.ws_url("ws://h:1/ws") == "ws://h:1/ws"
    assert proto.ws_url("http://127.0.0.1:8700") == "ws://127.0.0.1:8700/ws"
    assert proto.ws_url("https://rt.example/") == "wss://rt.example/ws"
    assert proto.ws_url("https://rt.example/custom") == "wss://rt.example/custom"
    assert proto.http_base("wss://rt.example:8443/ws?x=1") == "https://rt.example:8443"
    for bad in ("127.0.0.1:8700", "ftp://h/ws"):
        with pytest.raises(ValueError):
            proto.ws_url(bad)


def test_hostile_server_frames_are_ignored_or_read_safely() -> None:
    for text in ("", "not json", "[1,2]", "null", '"x"', "{}", '{"id": 1}', b"\xff\xfe", '{"event": 5}'):
        assert proto.parse_frame(text) is None
    event = proto.parse_frame('{"event":"x.y","room":7,"seq":"3","epoch":["e"],"data":{"a":1}}')
    assert event == Event("x.y", {"a": 1})
    ok = proto.parse_frame('{"id":3,"ok":true,"data":[1]}')
    assert isinstance(ok, proto.Reply) and ok.ok and ok.data == {}
    error = proto.parse_frame('{"id":3,"ok":false,"error":"boom"}')
    assert isinstance(error, proto.Reply) and error.error is not None and error.error.code == "INTERNAL"
    limited = proto.parse_frame(
        '{"id":"a","ok":false,"error":{"code":"RATE_LIMITED","message":"m","retry_after_ms":250,"field":3}}'
    )
    assert isinstance(limited, proto.Reply) and limited.error is not None
    assert (limited.error.code, limited.error.retry_after_ms, limited.error.field) == ("RATE_LIMITED", 250, None)


def test_requests_encode_as_the_server_parses_them() -> None:
    text = proto.encode_request(7, "message.send", {"conversation_id": "c1", "client_id": "k", "body": "héllo"})
    parsed = server_protocol.parse_frame(text)
    assert isinstance(parsed, server_protocol.Request)
    assert (parsed.id, parsed.op, parsed.data["body"]) == (7, "message.send", "héllo")
    fire = server_protocol.parse_frame(proto.encode_request(None, "typing.start", {"conversation_id": "c1"}))
    assert isinstance(fire, server_protocol.Request) and fire.fire_and_forget


# What the SDK accepts, the server accepts; what the SDK refuses, the server refuses with the same field.
ARGUMENTS: list[tuple[str, Any, dict[str, Any]]] = [
    ("subscribe", lambda: proto.subscribe_data("job:42", (3, "ep")), {}),
    ("subscribe", lambda: proto.subscribe_data("team:7:x"), {}),
    ("subscribe", lambda: proto.subscribe_data("a b"), {"room": "a b"}),
    ("subscribe", lambda: proto.subscribe_data(":x"), {"room": ":x"}),
    ("subscribe", lambda: proto.subscribe_data("job:*"), {"room": "job:*"}),
    ("subscribe", lambda: proto.subscribe_data("r" * 201), {"room": "r" * 201}),
    ("publish", lambda: proto.publish_data("lobby:1", "chat.line", {"t": 1}), {}),
    ("publish", lambda: proto.publish_data("lobby:1", "room.joined", {}), {"room": "lobby:1", "event": "room.joined"}),
    ("publish", lambda: proto.publish_data("lobby:1", "e" * 101, {}), {"room": "lobby:1", "event": "e" * 101}),
    ("message.send", lambda: proto.message_send_data("c1", "k1", "hi", type="image", media_url="https://x/y.png"), {}),
    ("message.send", lambda: proto.message_send_data("c1", "k1", None, media_url="https://x/y.png"), {}),
    ("message.send", lambda: proto.message_send_data("c1", "k1", "é" * 32_768), {}),
    (
        "message.send",
        lambda: proto.message_send_data("c1", "k1", "é" * 32_769),
        {"conversation_id": "c1", "client_id": "k1", "body": "é" * 32_769},
    ),
    (
        "message.send",
        lambda: proto.message_send_data("c1", "k1", "hi", media_url="data:x"),
        {"conversation_id": "c1", "client_id": "k1", "body": "hi", "media_url": "data:x"},
    ),
    (
        "message.send",
        lambda: proto.message_send_data("c1", "", "hi"),
        {"conversation_id": "c1", "client_id": "", "body": "hi"},
    ),
    ("message.history", lambda: proto.message_history_data("c1", after_seq=5, limit=100), {}),
    (
        "message.history",
        lambda: proto.message_history_data("c1", after_seq=1, changed_since=2),
        {"conversation_id": "c1", "after_seq": 1, "changed_since": 2},
    ),
    ("presence.set", lambda: proto.presence_set_data("invisible", ""), {}),
    ("presence.set", lambda: proto.presence_set_data("offline"), {"status": "offline"}),
    ("presence.query", lambda: proto.presence_query_data([]), {}),
    ("notification.list", lambda: proto.notification_list_data(after_seq=0, unread_only=True), {}),
    ("notification.list", lambda: proto.notification_list_data(unread_only=1), {"unread_only": 1}),
    ("notification.read", lambda: proto.notification_ids_data(["n1", "n1"]), {}),
    ("conversation.create", lambda: proto.conversation_create_data(["a", "b"], title=""), {}),
    ("conversation.list", lambda: proto.conversation_list_data(limit=True), {"limit": True}),
]


@pytest.mark.parametrize(("op", "build", "raw"), ARGUMENTS)
def test_argument_checks_agree_with_the_server(op: str, build: Any, raw: dict[str, Any]) -> None:
    try:
        data = build()
    except RealtimeError as exc:
        with pytest.raises(Exception) as server:
            server_protocol.validate(op, raw)
        assert getattr(server.value, "code", None) == exc.code
        assert getattr(server.value, "field", None) == exc.field
    else:
        assert not raw, "the SDK accepted what the test expected it to refuse"
        server_protocol.validate(op, data)


def test_listener_matching() -> None:
    assert proto.matches((), "anything")
    assert proto.matches(("message.",), "message.new") and not proto.matches(("message.",), "messages")
    assert proto.matches(("typing.updated", "presence."), "presence.updated")
    assert not proto.matches(("typing.updated",), "typing.updatedx")


def _room_with_feed(capacity: int = 100) -> tuple[_Room, Feed[Event]]:
    room = _Room("job:1")
    feed: Feed[Event] = Feed(capacity, on_overflow=room.overflowed)
    room.feeds.append(feed)
    return room, feed


def _drain(feed: Feed[Event]) -> list[Event]:
    out = []
    while (item := feed.get_nowait()) is not None:
        out.append(item)
    return out


def test_room_recovery_replays_in_order_or_resets() -> None:
    room, feed = _room_with_feed()
    room.apply_reply({"seq": 2, "epoch": "e1", "recovered": False, "publications": []}, since_given=False, resync=False)
    assert (room.seq, room.epoch, _drain(feed)) == (2, "e1", [])
    pubs = [{"seq": s, "event": "p", "data": s, "published_at": ""} for s in (2, 3, 4)]
    room.apply_reply({"seq": 4, "epoch": "e1", "recovered": True, "publications": pubs}, since_given=True, resync=True)
    replayed = _drain(feed)
    assert [(e.seq, e.replayed) for e in replayed] == [(3, True), (4, True)]  # seq 2 was delivered already
    room.apply_reply({"seq": 1, "epoch": "e2", "recovered": False, "publications": []}, since_given=True, resync=True)
    assert [(e.name, e.data) for e in _drain(feed)] == [("room.reset", {"room": "job:1", "seq": 1, "epoch": "e2"})]
    # A room without history: every resubscription after a reconnect is a reset.
    room.apply_reply({"seq": 0, "epoch": "", "recovered": False, "publications": []}, since_given=False, resync=True)
    assert [e.name for e in _drain(feed)] == ["room.reset"]


def test_room_live_events_drop_repeats_and_reset_on_holes_and_new_epochs() -> None:
    room, feed = _room_with_feed()
    room.apply_reply({"seq": 5, "epoch": "e1"}, since_given=False, resync=False)
    for seq, epoch in ((5, "e1"), (6, "e1"), (6, "e1"), (9, "e1"), (1, "e2")):
        room.live(Event("p", seq, "job:1", seq, epoch))
    got = [(e.name, e.seq) for e in _drain(feed)]
    assert got == [("p", 6), ("room.reset", None), ("p", 9), ("room.reset", None), ("p", 1)]
    assert (room.seq, room.epoch) == (1, "e2")
    room.live(Event("room.joined", {"user_id": "u"}, "job:1"))
    assert [e.name for e in _drain(feed)] == ["room.joined"]


def test_room_reply_from_a_hostile_server_does_not_break_the_room() -> None:
    room, feed = _room_with_feed()
    room.apply_reply({"seq": "x", "epoch": 3, "recovered": True, "publications": "no"}, since_given=True, resync=True)
    assert (room.seq, room.epoch, _drain(feed)) == (0, "", [])
    room.apply_reply(
        {"seq": 3, "epoch": "e", "recovered": True, "publications": [1, {"seq": "2"}, {"seq": 2, "event": 5}, {"seq": 3, "event": "ok"}]},
        since_given=True,
        resync=True,
    )
    assert [(e.name, e.seq) for e in _drain(feed)] == [("ok", 3)]


def test_a_full_room_feed_becomes_one_reset_and_a_full_listener_ends() -> None:
    room, feed = _room_with_feed(capacity=3)
    room.apply_reply({"seq": 0, "epoch": "e"}, since_given=False, resync=False)
    for seq in range(1, 6):
        room.live(Event("p", seq, "job:1", seq, "e"))
    got = [(e.name, e.seq or e.data["seq"]) for e in _drain(feed)]
    assert got == [("room.reset", 3), ("p", 4), ("p", 5)]  # refetch as of 3; 4 and 5 follow
    listener: Feed[Event] = Feed(2)
    for n in range(3):
        listener.put(Event("x", n))
    assert listener.closed

    async def read() -> list[Any]:
        items: list[Any] = []
        with pytest.raises(RealtimeError) as ended:
            async for item in listener:
                items.append(item.data)
        assert ended.value.code == "SLOW_CONSUMER"
        return items

    assert trio.run(read) == [0, 1]
