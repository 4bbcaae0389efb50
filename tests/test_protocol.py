"""The sans-IO wire protocol: frames (section 4), op data (section 5), rooms, encoders."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from realtimed import protocol
from realtimed.errors import (
    BAD_REQUEST,
    VALIDATION_ERROR,
    ApiError,
    BadRequest,
    Internal,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ValidationFailed,
)
from realtimed.protocol import (
    FrameError,
    Request,
    encode_event,
    encode_reply_error,
    encode_reply_ok,
    is_reserved_event,
    parse_frame,
    room_matches,
    validate,
    validate_event_name,
    validate_room,
    validate_room_pattern,
)

# -- frames (section 4) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "",
        "{",
        "[1, 2]",
        '"ping"',
        "7",
        "null",
        '{"id": true, "op": "ping"}',
        '{"id": false, "op": "ping"}',
        '{"id": 1.5, "op": "ping"}',
        '{"id": 7.0, "op": "ping"}',
        '{"id": null, "op": "ping"}',
        '{"id": [1], "op": "ping"}',
        '{"id": {"a": 1}, "op": "ping"}',
        '{"id": 18446744073709551616, "op": "ping"}',
        orjson.dumps({"id": "x" * 65, "op": "ping"}).decode(),
        '{"id": true, "op": "no.such.op"}',
    ],
)
def test_unreadable_frames_get_one_bad_request_with_null_id(text: str) -> None:
    result = parse_frame(text)
    assert isinstance(result, FrameError)
    assert result.id is None and result.reply is True
    assert result.error.code == BAD_REQUEST
    reply = orjson.loads(encode_reply_error(result.id, result.error))
    assert reply["id"] is None and reply["ok"] is False and reply["error"]["code"] == BAD_REQUEST


def test_bytes_and_invalid_utf8_frames() -> None:
    assert isinstance(parse_frame(b'{"id": 1, "op": "ping"}'), Request)
    result = parse_frame(b'{"id": 1, "op": "\xff"}')
    assert isinstance(result, FrameError) and result.id is None and result.error.code == BAD_REQUEST


@pytest.mark.parametrize("request_id", [0, -3, 7, 2**63, "", "u", "x" * 64])
def test_valid_ids_are_echoed(request_id: int | str) -> None:
    result = parse_frame(orjson.dumps({"id": request_id, "op": "ping"}))
    assert result == Request(request_id, "ping", {})
    reply = orjson.loads(encode_reply_ok(request_id, {}))
    assert reply == {"id": request_id, "ok": True, "data": {}}


@pytest.mark.parametrize(
    ("frame", "expected_id"),
    [
        ({"id": 7}, 7),
        ({"id": "u", "op": "no.such.op"}, "u"),
        ({"id": 3, "op": 5}, 3),
        ({"id": 4, "op": None}, 4),
        ({"id": 5, "op": "PING"}, 5),
        ({"id": 6, "op": ""}, 6),
    ],
)
def test_missing_or_unknown_op_is_bad_request_with_the_id(frame: dict[str, Any], expected_id: Any) -> None:
    result = parse_frame(orjson.dumps(frame))
    assert isinstance(result, FrameError)
    assert result.id == expected_id and result.reply is True
    assert isinstance(result.error, BadRequest)


def test_unknown_op_message_is_bounded() -> None:
    result = parse_frame(orjson.dumps({"id": 1, "op": "x" * 10_000}))
    assert isinstance(result, FrameError)
    assert len(result.error.message) < 100


def test_absent_data_is_an_empty_object() -> None:
    result = parse_frame('{"id": 1, "op": "ping"}')
    assert isinstance(result, Request) and result.data == {}
    # A fresh dict each time: a handler that writes into it touches nobody else.
    other = parse_frame('{"id": 2, "op": "ping"}')
    assert isinstance(other, Request) and other.data is not result.data


@pytest.mark.parametrize("data", [[1], 5, "x", True, None])
def test_data_not_an_object_is_a_validation_error(data: Any) -> None:
    result = parse_frame(orjson.dumps({"id": 8, "op": "subscribe", "data": data}))
    assert isinstance(result, FrameError)
    assert result.id == 8 and result.reply is True
    assert result.error.code == VALIDATION_ERROR and "data" in result.error.message


def test_unknown_fields_are_ignored() -> None:
    result = parse_frame('{"id": "p", "op": "subscribe", "extra": 1, "data": {"room": "job:1", "new": [1]}}')
    assert result == Request("p", "subscribe", {"room": "job:1", "new": [1]})
    assert validate("subscribe", result.data) == protocol.Subscribe("job:1")


@pytest.mark.parametrize(
    "text",
    ['{"op": "no.such.op"}', '{"op": "ping", "data": 5}', "{}", '{"op": 5}'],
)
def test_fire_and_forget_errors_get_no_reply(text: str) -> None:
    result = parse_frame(text)
    assert isinstance(result, FrameError)
    assert result.reply is False


def test_fire_and_forget_request() -> None:
    result = parse_frame('{"op": "typing.start", "data": {"conversation_id": "c1"}}')
    assert isinstance(result, Request)
    assert result.id is None and result.fire_and_forget
    with_id = parse_frame('{"id": 1, "op": "typing.start", "data": {"conversation_id": "c1"}}')
    assert isinstance(with_id, Request) and not with_id.fire_and_forget


# -- JSON depth (section 4) -----------------------------------------------------------------------


def nested(levels: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``levels`` arrays and objects, alternating (0 levels: the leaf)."""
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def nested_json(levels: int) -> str:
    """``nested(levels)`` as JSON text, written out: orjson writes at most 254 levels."""
    text = "0"
    for i in range(levels):
        text = f"[{text}]" if i % 2 else '{"k":' + text + "}"
    return text


def _frame(fields: dict[str, str], **members: str) -> str:
    """A publish frame whose fields and extra members are given as JSON text."""
    data = ",".join(f'"{name}":{text}' for name, text in fields.items())
    extra = "".join(f',"{name}":{text}' for name, text in members.items())
    return '{"id":5,"op":"publish","data":{' + data + "}" + extra + "}"


@pytest.mark.parametrize(
    ("value", "depth"),
    [(0, 0), ("x", 0), (None, 0), ([], 1), ({}, 1), ([1, [2]], 2), ({"a": [1]}, 2), ({"a": 1, "b": [[], [[{}]]]}, 5)],
)
def test_json_depth_counts_levels_of_arrays_and_objects(value: Any, depth: int) -> None:
    assert protocol.json_depth_path(value, depth) is None
    if depth:
        assert protocol.json_depth_path(value, depth - 1) is not None


def test_json_depth_path_leads_to_the_first_level_too_deep() -> None:
    value = {"a": 1, "b": [1, {"c": {"d": []}}], "e": [[[[[]]]]]}
    assert protocol.json_depth_path(value, 3) == ["b", 1, "c"]
    assert protocol.json_depth_path(value, 4) == ["b", 1, "c", "d"]
    assert protocol.json_depth_path(value, 5) == ["e", 0, 0, 0, 0]
    assert protocol.json_depth_path(value, 6) is None
    assert protocol.json_depth_path([], 0) == []


def test_json_depth_is_iterative() -> None:
    # Far deeper than the interpreter's recursion limit: no RecursionError.
    deep = nested(200_000)
    path = protocol.json_depth_path(deep, 32)
    assert path is not None and len(path) == 32


def test_check_json_depth_names_the_field() -> None:
    protocol.check_json_depth({"a": nested(32), "b": 1}, 32)
    with pytest.raises(ValidationFailed) as info:
        protocol.check_json_depth({"a": nested(32), "vars": nested(33)}, 32)
    assert info.value.field == "vars" and info.value.code == VALIDATION_ERROR
    assert info.value.message == "vars: nests more than 32 levels of arrays and objects"
    with pytest.raises(ValidationFailed) as info:
        protocol.check_json_depth({"x": nested(3)}, 2, prefix="data.")
    assert info.value.field == "data.x"


def test_check_json_depth_skips_texts_with_few_brackets() -> None:
    body = {"data": nested(40)}
    raw = ('{"data":' + nested_json(40) + "}").encode()
    with pytest.raises(ValidationFailed):
        protocol.check_json_depth(body, 32, raw=raw)
    with pytest.raises(ValidationFailed):
        protocol.check_json_depth(body, 32, raw=raw.decode())
    # The raw text bounds the depth: only a text with more brackets than the limit allows is walked.
    protocol.check_json_depth(body, 32, raw=b"{}")


@pytest.mark.parametrize("limit", [1, 2, 32, 128])
def test_frame_at_the_depth_limit_is_a_request(limit: int) -> None:
    result = parse_frame(_frame({"room": '"r"', "data": nested_json(limit)}), max_json_depth=limit)
    assert isinstance(result, Request) and result.data["data"] == nested(limit)


@pytest.mark.parametrize("levels", [33, 300, 1000])
def test_frame_over_the_depth_limit_is_a_validation_error_naming_the_field(levels: int) -> None:
    result = parse_frame(_frame({"room": '"r"', "data": nested_json(levels)}))
    assert isinstance(result, FrameError)
    assert result.id == 5 and result.reply is True
    assert result.error.code == VALIDATION_ERROR and result.error.field == "data"
    assert "32 levels" in result.error.message


def test_frame_depth_applies_to_every_field_and_member() -> None:
    result = parse_frame(_frame({"room": '"r"', "since": nested_json(9)}), max_json_depth=8)
    assert isinstance(result, FrameError) and result.error.field == "since"
    # An unknown member of the frame is ignored, yet not let through at any depth.
    result = parse_frame(_frame({"room": '"r"'}, extra=nested_json(9)), max_json_depth=8)
    assert isinstance(result, FrameError) and result.error.field == "extra"
    result = parse_frame(_frame({"room": '"r"'}, extra=nested_json(8)), max_json_depth=8)
    assert isinstance(result, Request)
    # Fire-and-forget: refused without a reply.
    result = parse_frame('{"op":"publish","data":{"data":' + nested_json(9) + "}}", max_json_depth=8)
    assert isinstance(result, FrameError) and result.reply is False
    # Deeper than orjson parses (1024): still a BAD_REQUEST, not a crash.
    result = parse_frame("[" * 2000 + "]" * 2000)
    assert isinstance(result, FrameError) and result.error.code == BAD_REQUEST


def test_encode_json_names_the_field_it_cannot_encode() -> None:
    assert protocol.encode_json({"a": [1]}) == b'{"a":[1]}'
    for value in (nested(300), {1, 2}, object()):
        with pytest.raises(ValidationFailed) as info:
            protocol.encode_json(value, "payload")
        assert info.value.field == "payload" and "cannot be encoded as JSON" in info.value.message
    with pytest.raises(ValidationFailed):
        protocol.json_fragment(nested(300))


def test_a_fragment_encodes_inside_any_envelope() -> None:
    # 254 levels is as deep as orjson writes; kept as a fragment, it can still be
    # sent inside a reply that wraps it in five more.
    fragment = protocol.json_fragment(nested(254))
    assert protocol.json_fragment(fragment) is fragment
    reply = encode_reply_ok(1, {"publications": [{"seq": 1, "data": fragment}]})
    assert orjson.loads(reply)["data"]["publications"][0]["data"] == nested(254)
    event = encode_event("e", fragment, room="r", seq=1, epoch="x")
    assert orjson.loads(event)["data"] == nested(254)


# -- op data (section 5) --------------------------------------------------------------------------


def _fails(op: str, data: dict[str, Any], field: str, **kwargs: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        validate(op, data, **kwargs)
    assert info.value.field == field, info.value.message
    assert info.value.message.startswith(f"{field}: "), info.value.message
    return info.value


def test_the_registry_covers_every_op_of_section_5() -> None:
    assert {
        "auth",
        "ping",
        "subscribe",
        "unsubscribe",
        "room.presence",
        "publish",
        "conversation.open",
        "conversation.create",
        "conversation.list",
        "conversation.mute",
        "conversation.leave",
        "message.send",
        "message.edit",
        "message.delete",
        "message.history",
        "message.read",
        "typing.start",
        "typing.stop",
        "presence.set",
        "presence.query",
        "notification.list",
        "notification.read",
        "notification.delete",
        "notification.read_all",
        "user.block",
        "user.unblock",
        "feed.activities",
    } == protocol.OPS
    for name, spec in protocol.OP_SPECS.items():
        assert spec.name == name
    assert protocol.op_spec("message.send").value_type is protocol.MessageSend
    with pytest.raises(BadRequest):
        protocol.op_spec("nope")
    with pytest.raises(BadRequest):
        validate("nope", {})


def test_auth() -> None:
    assert validate("auth", {"token": "a.b.c"}) == protocol.Auth("a.b.c")
    _fails("auth", {}, "token")
    _fails("auth", {"token": ""}, "token")
    _fails("auth", {"token": 5}, "token")


def test_ping_and_read_all_take_nothing() -> None:
    assert validate("ping", {}) == protocol.Ping()
    assert validate("ping", {"anything": 1}) == protocol.Ping()
    assert validate("notification.read_all", {}) == protocol.NotificationReadAll()


def test_subscribe() -> None:
    assert validate("subscribe", {"room": "job:42"}) == protocol.Subscribe("job:42", None)
    assert validate("subscribe", {"room": "job:42", "since": None}).since is None
    value = validate("subscribe", {"room": "job:42", "since": {"seq": 0, "epoch": "e1"}})
    assert value == protocol.Subscribe("job:42", protocol.Since(0, "e1"))
    assert value.since.seq == 0 and value.since.epoch == "e1"
    _fails("subscribe", {}, "room")
    _fails("subscribe", {"room": ""}, "room")
    _fails("subscribe", {"room": 5}, "room")
    _fails("subscribe", {"room": "job:*"}, "room")
    _fails("subscribe", {"room": "job:1", "since": 5}, "since")
    _fails("subscribe", {"room": "job:1", "since": {"epoch": "e"}}, "since.seq")
    _fails("subscribe", {"room": "job:1", "since": {"seq": -1, "epoch": "e"}}, "since.seq")
    _fails("subscribe", {"room": "job:1", "since": {"seq": 1.0, "epoch": "e"}}, "since.seq")
    _fails("subscribe", {"room": "job:1", "since": {"seq": True, "epoch": "e"}}, "since.seq")
    _fails("subscribe", {"room": "job:1", "since": {"seq": 1}}, "since.epoch")
    _fails("subscribe", {"room": "job:1", "since": {"seq": 1, "epoch": 5}}, "since.epoch")


@pytest.mark.parametrize("op", ["unsubscribe", "room.presence"])
def test_room_ops(op: str) -> None:
    assert validate(op, {"room": "episode:9"}).room == "episode:9"
    _fails(op, {}, "room")
    _fails(op, {"room": "bad room"}, "room")


def test_publish() -> None:
    value = validate("publish", {"room": "lobby:main", "event": "chat.line", "data": {"text": "hi"}})
    assert value == protocol.Publish("lobby:main", "chat.line", {"text": "hi"})
    assert validate("publish", {"room": "lobby:main", "event": "x"}).data == {}
    assert validate("publish", {"room": "lobby:main", "event": "x", "data": [1, 2]}).data == [1, 2]
    _fails("publish", {"event": "x"}, "room")
    _fails("publish", {"room": "lobby:main"}, "event")
    _fails("publish", {"room": "lobby:main", "event": ""}, "event")
    _fails("publish", {"room": "lobby:main", "event": "x" * 101}, "event")
    _fails("publish", {"room": "lobby:main", "event": 5}, "event")
    for reserved in ("message.new", "session.ready", "room.joined", "presence.updated", "typing.updated"):
        _fails("publish", {"room": "lobby:main", "event": reserved}, "event")


def test_conversation_open_and_user_blocks() -> None:
    assert validate("conversation.open", {"user_id": "bob"}) == protocol.ConversationOpen("bob")
    assert validate("user.block", {"user_id": "bob"}) == protocol.UserBlock("bob")
    assert validate("user.unblock", {"user_id": "bob"}) == protocol.UserUnblock("bob")
    for op in ("conversation.open", "user.block", "user.unblock"):
        _fails(op, {}, "user_id")
        _fails(op, {"user_id": ""}, "user_id")
        _fails(op, {"user_id": "u" * 129}, "user_id")
        _fails(op, {"user_id": 7}, "user_id")
    assert validate("conversation.open", {"user_id": "u" * 128}).user_id == "u" * 128


def test_conversation_create() -> None:
    value = validate("conversation.create", {"member_ids": ["bob", "carol", "bob"], "title": "Trip"})
    assert value == protocol.ConversationCreate(("bob", "carol"), "Trip")
    assert validate("conversation.create", {"member_ids": ["bob"]}).title is None
    _fails("conversation.create", {}, "member_ids")
    _fails("conversation.create", {"member_ids": "bob"}, "member_ids")
    _fails("conversation.create", {"member_ids": []}, "member_ids")
    _fails("conversation.create", {"member_ids": ["bob", ""]}, "member_ids[1]")
    _fails("conversation.create", {"member_ids": ["bob", 3]}, "member_ids[1]")
    _fails("conversation.create", {"member_ids": ["bob"], "title": 5}, "title")
    _fails("conversation.create", {"member_ids": ["bob"], "title": "t" * 201}, "title")


def test_conversation_list() -> None:
    assert validate("conversation.list", {}) == protocol.ConversationList(None, 20)
    assert validate("conversation.list", {"cursor": "abc", "limit": 100}) == protocol.ConversationList(
        "abc", 100
    )
    _fails("conversation.list", {"limit": 0}, "limit")
    _fails("conversation.list", {"limit": 101}, "limit")
    _fails("conversation.list", {"limit": "5"}, "limit")
    _fails("conversation.list", {"cursor": 5}, "cursor")


def test_conversation_mute_and_leave() -> None:
    assert validate(
        "conversation.mute", {"conversation_id": "c1", "muted": True}
    ) == protocol.ConversationMute("c1", True)
    _fails("conversation.mute", {"conversation_id": "c1"}, "muted")
    _fails("conversation.mute", {"conversation_id": "c1", "muted": 1}, "muted")
    _fails("conversation.mute", {"muted": False}, "conversation_id")
    assert validate("conversation.leave", {"conversation_id": "c1"}) == protocol.ConversationLeave("c1")
    _fails("conversation.leave", {}, "conversation_id")
    _fails("conversation.leave", {"conversation_id": "c" * 129}, "conversation_id")
    _fails("conversation.leave", {"conversation_id": "c\n1"}, "conversation_id")


def _send(**fields: Any) -> dict[str, Any]:
    return {"conversation_id": "c1", "client_id": "k-1", "body": "hi", **fields}


def test_message_send() -> None:
    assert validate("message.send", _send()) == protocol.MessageSend("c1", "k-1", "hi", "text", None, None)
    value = validate(
        "message.send",
        _send(type="image", media_url="https://cdn.test/a.png", reply_to="m1", body=""),
    )
    assert value == protocol.MessageSend("c1", "k-1", "", "image", "https://cdn.test/a.png", "m1")
    # With a media_url the body may be left out altogether.
    assert (
        validate(
            "message.send", {"conversation_id": "c1", "client_id": "k", "media_url": "http://x.test/f"}
        ).body
        == ""
    )
    _fails("message.send", _send(conversation_id=None), "conversation_id")
    _fails("message.send", _send(client_id=None), "client_id")
    error = _fails("message.send", _send(client_id=""), "client_id")
    assert error.message == "client_id: must be 1 to 64 characters"
    _fails("message.send", _send(client_id="k" * 65), "client_id")
    assert validate("message.send", _send(client_id="k" * 64)).client_id == "k" * 64
    _fails("message.send", _send(body=None), "body")
    _fails("message.send", _send(body=""), "body")
    _fails("message.send", _send(body=5), "body")
    _fails("message.send", _send(type="system"), "type")
    _fails("message.send", _send(type=["text"]), "type")
    _fails("message.send", _send(media_url="javascript:alert(1)"), "media_url")
    _fails("message.send", _send(media_url="https://x.test/a b"), "media_url")
    _fails("message.send", _send(media_url=""), "media_url")
    _fails("message.send", _send(reply_to=5), "reply_to")


def test_message_body_size_is_utf8_bytes_after_decoding() -> None:
    # "é" is one character but two bytes of UTF-8; "\u00e9" in the JSON text is six.
    frame = parse_frame(
        '{"id": 1, "op": "message.send", "data": ' + orjson.dumps(_send(body="\u00e9" * 5)).decode() + "}"
    )
    assert isinstance(frame, Request)
    assert validate("message.send", frame.data, max_message_bytes=10).body == "é" * 5
    with pytest.raises(PayloadTooLarge) as info:
        validate("message.send", _send(body="é" * 6), max_message_bytes=10)
    assert info.value.code == "PAYLOAD_TOO_LARGE" and info.value.field == "body"
    assert validate("message.send", _send(body="x" * 65_536)).body == "x" * 65_536
    with pytest.raises(PayloadTooLarge):
        validate("message.send", _send(body="x" * 65_537))
    # Four-byte characters near the limit are measured, not estimated.
    assert validate("message.send", _send(body="😀" * 4), max_message_bytes=16).body == "😀" * 4
    with pytest.raises(PayloadTooLarge):
        validate("message.send", _send(body="😀" * 4 + "a"), max_message_bytes=16)
    with pytest.raises(PayloadTooLarge):
        validate("message.edit", {"message_id": "m1", "body": "é" * 6}, max_message_bytes=10)
    # A lone surrogate (possible from a lenient JSON parser) is not text.
    _fails("message.send", _send(body="\ud800" * 10), "body", max_message_bytes=30)


def test_message_edit_and_delete() -> None:
    assert validate("message.edit", {"message_id": "m1", "body": "fixed"}) == protocol.MessageEdit(
        "m1", "fixed"
    )
    assert validate("message.edit", {"message_id": "m1", "body": ""}).body == ""
    _fails("message.edit", {"body": "x"}, "message_id")
    _fails("message.edit", {"message_id": "m1"}, "body")
    _fails("message.edit", {"message_id": "m1", "body": 5}, "body")
    assert validate("message.delete", {"message_id": "m1"}) == protocol.MessageDelete("m1")
    _fails("message.delete", {}, "message_id")


def test_message_history() -> None:
    assert validate("message.history", {"conversation_id": "c1"}) == protocol.MessageHistory("c1", limit=50)
    assert (
        validate("message.history", {"conversation_id": "c1", "before_seq": 10, "limit": 100}).before_seq
        == 10
    )
    assert validate("message.history", {"conversation_id": "c1", "after_seq": 0}).after_seq == 0
    assert validate("message.history", {"conversation_id": "c1", "changed_since": 3}).changed_since == 3
    _fails("message.history", {}, "conversation_id")
    _fails("message.history", {"conversation_id": "c1", "before_seq": 5, "after_seq": 1}, "after_seq")
    _fails("message.history", {"conversation_id": "c1", "after_seq": 5, "changed_since": 1}, "changed_since")
    _fails("message.history", {"conversation_id": "c1", "before_seq": -1}, "before_seq")
    _fails("message.history", {"conversation_id": "c1", "after_seq": "5"}, "after_seq")
    _fails("message.history", {"conversation_id": "c1", "limit": 101}, "limit")
    _fails("message.history", {"conversation_id": "c1", "limit": 0}, "limit")
    _fails("message.history", {"conversation_id": "c1", "before_seq": 2**63}, "before_seq")


def test_message_read() -> None:
    assert validate("message.read", {"conversation_id": "c1", "seq": 42}) == protocol.MessageRead("c1", 42)
    _fails("message.read", {"conversation_id": "c1"}, "seq")
    _fails("message.read", {"conversation_id": "c1", "seq": -1}, "seq")
    _fails("message.read", {"conversation_id": "c1", "seq": 4.2}, "seq")
    _fails("message.read", {"seq": 1}, "conversation_id")


def test_typing() -> None:
    assert validate("typing.start", {"conversation_id": "c1"}) == protocol.TypingStart("c1")
    assert validate("typing.stop", {"conversation_id": "c1"}) == protocol.TypingStop("c1")
    _fails("typing.start", {}, "conversation_id")
    _fails("typing.stop", {"conversation_id": ""}, "conversation_id")


def test_presence_set() -> None:
    for status in ("online", "away", "busy", "invisible"):
        assert validate("presence.set", {"status": status}) == protocol.PresenceSet(status, None)
    assert validate("presence.set", {"status": "busy", "message": "in a call"}).message == "in a call"
    _fails("presence.set", {}, "status")
    _fails("presence.set", {"status": "offline"}, "status")
    _fails("presence.set", {"status": ["online"]}, "status")
    _fails("presence.set", {"status": "away", "message": 5}, "message")
    _fails("presence.set", {"status": "away", "message": "m" * 201}, "message")


def test_presence_query() -> None:
    value = validate("presence.query", {"user_ids": ["bob", "carol"]})
    assert value == protocol.PresenceQuery(("bob", "carol"))
    assert validate("presence.query", {"user_ids": [f"u{i}" for i in range(200)]}).user_ids[-1] == "u199"
    _fails("presence.query", {"user_ids": [f"u{i}" for i in range(201)]}, "user_ids")
    _fails("presence.query", {}, "user_ids")
    _fails("presence.query", {"user_ids": "bob"}, "user_ids")
    _fails("presence.query", {"user_ids": ["bob", None]}, "user_ids[1]")


def test_notification_list() -> None:
    assert validate("notification.list", {}) == protocol.NotificationList(None, None, False, 20)
    value = validate("notification.list", {"after_seq": 7, "unread_only": True, "limit": 100})
    assert value == protocol.NotificationList(None, 7, True, 100)
    assert validate("notification.list", {"cursor": "n:9"}).cursor == "n:9"
    _fails("notification.list", {"cursor": "n:9", "after_seq": 7}, "after_seq")
    _fails("notification.list", {"unread_only": "yes"}, "unread_only")
    _fails("notification.list", {"limit": 101}, "limit")
    _fails("notification.list", {"after_seq": -1}, "after_seq")


@pytest.mark.parametrize("op", ["notification.read", "notification.delete"])
def test_notification_ids(op: str) -> None:
    assert validate(op, {"ids": ["n1", "n2", "n1"]}).ids == ("n1", "n2")
    _fails(op, {}, "ids")
    _fails(op, {"ids": []}, "ids")
    _fails(op, {"ids": "n1"}, "ids")
    _fails(op, {"ids": ["n1", 2]}, "ids[1]")
    _fails(op, {"ids": ["n"] * 1001}, "ids")


def test_null_optional_fields_count_as_absent() -> None:
    assert validate("conversation.list", {"cursor": None, "limit": None}) == protocol.ConversationList()
    assert validate("message.send", _send(type=None, media_url=None, reply_to=None)).type == "text"


# -- rooms and event names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "room", "matches"),
    [
        ("team:7:*", "team:7:x", True),
        ("team:7:*", "team:7:x:y", True),
        ("team:7:*", "team:70", False),
        ("team:7:*", "team:7", False),
        ("team:7:*", "team:70:x", False),
        ("team:7:*", "xteam:7:x", False),
        ("job:42", "job:42", True),
        ("job:42", "job:420", False),
        ("job:42", "job:42:x", False),
        ("job", "job:42", False),
        ("*", "anything:at:all", True),
        ("*", "a", True),
    ],
)
def test_room_matches(pattern: str, room: str, matches: bool) -> None:
    validate_room_pattern(pattern)
    validate_room(room)
    assert room_matches(pattern, room) is matches


@pytest.mark.parametrize("room", ["a", "job:42", "feed:team-7", "x" * 200, "a:b:c:d", "ünïcode:房间"])
def test_valid_room_names(room: str) -> None:
    assert validate_room(room) == room
    assert protocol.is_valid_room(room)


@pytest.mark.parametrize(
    "room",
    [
        "",
        "x" * 201,
        "job 42",
        "job:\t1",
        "job:\n",
        "job\x00",
        "job:\x85",
        ":job",
        "job:",
        "a::b",
        "job:*",
        "a,b",
        42,
        None,
    ],
)
def test_invalid_room_names(room: Any) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_room(room, "rooms")
    assert info.value.field == "rooms"
    assert not protocol.is_valid_room(room)


@pytest.mark.parametrize("pattern", ["*", "team:*", "team:7:*", "job:42"])
def test_valid_room_patterns(pattern: str) -> None:
    assert validate_room_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern", ["", "*:x", "team:*:x", "team*", "te*am:1", ":*", "team::*", "a b:*", 5, "x" * 199 + ":*"]
)
def test_invalid_room_patterns(pattern: Any) -> None:
    with pytest.raises(ValidationFailed):
        validate_room_pattern(pattern)


def test_event_names() -> None:
    for prefix in protocol.RESERVED_EVENT_PREFIXES:
        assert is_reserved_event(prefix + "x")
        with pytest.raises(ValidationFailed):
            validate_event_name(prefix + "x")
    assert not is_reserved_event("job.progress")
    assert not is_reserved_event("messages")  # only the prefix with its dot is reserved
    assert validate_event_name("job.progress") == "job.progress"
    assert validate_event_name("e" * 100) == "e" * 100
    for bad in ("", "e" * 101, "line\nbreak", "tab\there", 5, None):
        with pytest.raises(ValidationFailed) as info:
            validate_event_name(bad)
        assert info.value.field == "event"


# -- encoders -------------------------------------------------------------------------------------


def test_encode_reply_ok_round_trip() -> None:
    data = {"message": {"id": "m1", "body": "héllo \u2028", "seq": 42}}
    raw = encode_reply_ok(7, data)
    assert isinstance(raw, bytes)
    assert orjson.loads(raw) == {"id": 7, "ok": True, "data": data}
    assert list(orjson.loads(raw)) == ["id", "ok", "data"]


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no such conversation"),
        ValidationFailed("room", "is required"),
        PayloadTooLarge("body: too big", field="body"),
    ],
)
def test_encode_reply_error_round_trip(error: ApiError) -> None:
    frame = orjson.loads(encode_reply_error("r1", error))
    assert frame["id"] == "r1" and frame["ok"] is False
    assert frame["error"]["code"] == error.code and frame["error"]["message"] == error.message
    assert "data" not in frame


def test_internal_and_rate_limited_errors_carry_their_extras() -> None:
    internal = Internal()
    frame = orjson.loads(encode_reply_error(1, internal))
    assert frame["error"]["code"] == "INTERNAL"
    assert frame["error"]["correlation_id"] == internal.correlation_id
    frame = orjson.loads(encode_reply_error(2, RateLimited("too many ops", retry_after_ms=250)))
    assert frame["error"] == {"code": "RATE_LIMITED", "message": "too many ops", "retry_after_ms": 250}
    frame = orjson.loads(encode_reply_error(None, BadRequest("the frame is not valid JSON")))
    assert frame["id"] is None


def test_encode_event_round_trip_and_shape() -> None:
    raw = encode_event("message.new", {"message": {"seq": 42}}, room="conversation:c1", seq=42)
    frame = orjson.loads(raw)
    assert frame == {
        "event": "message.new",
        "room": "conversation:c1",
        "seq": 42,
        "data": {"message": {"seq": 42}},
    }
    assert list(frame) == ["event", "room", "seq", "data"]
    plain = orjson.loads(encode_event("session.expiring", {"expires_at": "2026-11-22T11:00:00.000Z"}))
    assert plain == {"event": "session.expiring", "data": {"expires_at": "2026-11-22T11:00:00.000Z"}}
    assert "seq" not in plain and "room" not in plain and "epoch" not in plain
    history = orjson.loads(encode_event("job.progress", {"pct": 50}, room="job:42", seq=3, epoch="ep1"))
    assert list(history) == ["event", "room", "seq", "epoch", "data"]
    assert history["epoch"] == "ep1" and history["seq"] == 3
    # seq 0 is a value, not an absence.
    assert orjson.loads(encode_event("x", {}, seq=0))["seq"] == 0
