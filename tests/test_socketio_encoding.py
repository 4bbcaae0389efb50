"""The Socket.IO door's encodings, synchronously: router frames encoded once, the flat ack errors."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from realtimed.clock import SystemClock
from realtimed.config import Config
from realtimed.errors import Banned, Internal, RateLimited, ValidationFailed
from realtimed.frames import OP_TEXT, Frame, ws_frame
from realtimed.protocol import encode_event
from realtimed.socketio.door import ack_error, encode_frame
from realtimed.socketio.engine import EngineServer


def test_a_frame_is_encoded_once_for_every_socket() -> None:
    frame = Frame(encode_event("job.progress", {"pct": 5}, room="job:7", seq=3, epoch="e1"), "job.progress", room="job:7", seq=3, epoch="e1")
    ws_bytes, record = encode_frame(frame)
    assert record == '42["job.progress",{"pct":5},{"room":"job:7","seq":3,"epoch":"e1"}]'
    assert ws_bytes == ws_frame(OP_TEXT, record.encode())
    assert encode_frame(frame) is frame.socketio is encode_frame(frame)  # cached on the frame
    plain = Frame(encode_event("presence.updated", {"user_id": "u2"}), "presence.updated")
    assert encode_frame(plain)[1] == '42["presence.updated",{"user_id":"u2"}]'
    user_event = Frame(encode_event("message.new", {"message": {"seq": 4}}, room="conversation:c1", seq=4), "message.new", room="conversation:c1", seq=4)
    assert orjson.loads(encode_frame(user_event)[1][2:]) == ["message.new", {"message": {"seq": 4}}, {"room": "conversation:c1", "seq": 4}]


def test_event_names_are_json_escaped() -> None:
    # App event names may hold quotes and backslashes (only control characters are refused).
    frame = Frame(encode_event('say "hi" \\ é', {}), 'say "hi" \\ é')
    assert orjson.loads(encode_frame(frame)[1][2:]) == ['say "hi" \\ é', {}]


def test_a_frame_of_another_shape_is_decoded_rather_than_cut() -> None:
    # A frame whose JSON does not start as encode_event writes it (another node's, say).
    frame = Frame(b'{"data":{"a":"\\"data\\":"},"event":"x.y"}', "x.y")
    assert orjson.loads(encode_frame(frame)[1][2:]) == ["x.y", {"a": '"data":'}]


def test_ack_errors_are_flat_with_camel_case_extras() -> None:
    assert ack_error(ValidationFailed("room", "must be a string")) == {
        "ok": False, "error": "VALIDATION_ERROR", "message": "room: must be a string", "field": "room",
    }
    limited = ack_error(RateLimited("too many ops", retry_after_ms=250))
    assert (limited["error"], limited["retryAfterMs"]) == ("RATE_LIMITED", 250)
    internal = ack_error(Internal())
    assert internal["error"] == "INTERNAL" and internal["correlationId"].startswith("err_")
    banned = ack_error(Banned(datetime(2030, 1, 1, tzinfo=UTC)))
    assert banned["error"] == "FORBIDDEN" and banned["bannedUntil"].startswith("2030-01-01")


class _NoListener:
    def opened(self, socket: object) -> None: ...


def test_workers_offer_websocket_only() -> None:
    cfg = Config()
    alone = EngineServer(lambda: cfg, node="n", listener=_NoListener(), clock=SystemClock())  # type: ignore[arg-type]
    worker = EngineServer(lambda: cfg, node="n", listener=_NoListener(), clock=SystemClock(), polling=False)  # type: ignore[arg-type]
    assert alone.transports() == ["polling", "websocket"]
    assert worker.transports() == ["websocket"]
    # The WebSocket sessions read the door's payload limit as their largest frame.
    assert alone.config.gateway.max_frame_bytes == cfg.socketio.max_payload_bytes
