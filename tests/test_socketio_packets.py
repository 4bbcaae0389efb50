"""The Engine.IO v4 / Socket.IO v5 codec (realtimed.socketio.packets), synchronously."""

from __future__ import annotations

import pytest

from realtimed.socketio.packets import (
    EioPacket,
    EioType,
    PacketError,
    SioPacket,
    SioType,
    deconstruct,
    encode_eio,
    encode_payload,
    encode_sio,
    parse_eio,
    parse_payload,
    parse_sio,
    reconstruct,
)


def sio(text: str) -> SioPacket:
    parsed = parse_sio(text, max_attachments=10)
    assert isinstance(parsed, SioPacket), parsed
    return parsed


def test_engine_io_text_and_binary() -> None:
    assert parse_eio("2probe") == EioPacket(EioType.PING, "probe")
    assert parse_eio("40") == EioPacket(EioType.MESSAGE, "0")
    assert parse_eio(b"\x01\x02") == EioPacket(EioType.MESSAGE, b"\x01\x02")
    assert parse_eio("") == PacketError("empty packet")
    assert parse_eio("7") == PacketError("unknown Engine.IO packet type")
    assert parse_eio("x") == PacketError("unknown Engine.IO packet type")
    assert encode_eio(EioPacket(EioType.PONG, "probe")) == "3probe"
    assert encode_eio(EioPacket(EioType.MESSAGE, b"\x01\x02\x03")) == b"\x01\x02\x03"
    assert encode_eio(EioPacket(EioType.MESSAGE, b"\x01\x02\x03"), binary_as_base64=True) == "bAQID"


def test_polling_payloads() -> None:
    packets = parse_payload("2\x1e40\x1ebAQID", max_packets=10)
    assert packets == [EioPacket(EioType.PING), EioPacket(EioType.MESSAGE, "0"), EioPacket(EioType.MESSAGE, b"\x01\x02\x03")]
    assert parse_payload("b!!!", max_packets=10) == PacketError("invalid base64 binary packet")
    assert parse_payload("2\x1e2\x1e2", max_packets=2) == PacketError("too many packets in one request")
    assert parse_payload("2\x1e9", max_packets=10) == PacketError("unknown Engine.IO packet type")
    assert encode_payload(["2", "40{}"]) == "2\x1e40{}"


def test_socket_io_packets_parse() -> None:
    assert sio("0") == SioPacket(SioType.CONNECT)
    assert sio('0{"token":"123"}') == SioPacket(SioType.CONNECT, data={"token": "123"})
    assert sio('0/custom,{"token":"abc"}') == SioPacket(SioType.CONNECT, "/custom", {"token": "abc"})
    assert sio("0/random") == SioPacket(SioType.CONNECT, "/random")
    assert sio("1") == SioPacket(SioType.DISCONNECT)
    assert sio('2["message",1,"2",{"3":[true]}]') == SioPacket(SioType.EVENT, data=["message", 1, "2", {"3": [True]}])
    assert sio('2456["m"]') == SioPacket(SioType.EVENT, data=["m"], id=456)
    assert sio('2/admin,12["m"]') == SioPacket(SioType.EVENT, "/admin", ["m"], 12)
    assert sio("3456[1]") == SioPacket(SioType.ACK, data=[1], id=456)
    assert sio('52-789["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]') == SioPacket(
        SioType.BINARY_EVENT,
        data=["m", {"_placeholder": True, "num": 0}, {"_placeholder": True, "num": 1}],
        id=789,
        attachments=2,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty packet"),
        ("abc", "unknown packet type"),
        ("9", "unknown packet type"),
        ("2{}", "invalid payload"),  # an event's payload is an array
        ('2abc["m"]', "invalid payload"),  # an ack id that is not digits
        ("2[]", "invalid payload"),  # no event name
        ('2["connect"]', "invalid payload"),  # reserved
        ('2["disconnecting",1]', "invalid payload"),
        ("2[true]", "invalid payload"),
        ("1{}", "invalid payload"),  # DISCONNECT carries nothing
        ("0[]", "invalid payload"),  # CONNECT's auth is an object
        ("3{}", "invalid payload"),
        ("4abc", "invalid payload"),
        ("4", "invalid payload"),
        ('5["m"]', "illegal attachments"),
        ('5x-["m"]', "illegal attachments"),
        ('511-["m"]', "too many attachments"),
        ("21234567890123456[\"m\"]", "invalid ack id"),
        ('2["m"', "invalid payload"),
    ],
)
def test_socket_io_packets_refused(text: str, reason: str) -> None:
    assert parse_sio(text, max_attachments=10) == PacketError(reason)


def test_socket_io_packets_encode() -> None:
    assert encode_sio(SioPacket(SioType.CONNECT, data={"sid": "x"})) == '0{"sid":"x"}'
    assert encode_sio(SioPacket(SioType.CONNECT_ERROR, "/random", {"message": "Invalid namespace"})) == (
        '4/random,{"message":"Invalid namespace"}'
    )
    assert encode_sio(SioPacket(SioType.ACK, data=[1, "2"], id=456)) == '3456[1,"2"]'
    assert encode_sio(SioPacket(SioType.EVENT, "/custom", ["auth", {}])) == '2/custom,["auth",{}]'
    assert encode_sio(SioPacket(SioType.DISCONNECT)) == "1"
    assert encode_sio(SioPacket(SioType.BINARY_ACK, data=[{"_placeholder": True, "num": 0}], id=7, attachments=1)) == (
        '61-7[{"_placeholder":true,"num":0}]'
    )


def test_binary_attachments_round_trip() -> None:
    data, buffers = deconstruct(["m", b"\x01", {"x": [b"\x02"]}])
    assert data == ["m", {"_placeholder": True, "num": 0}, {"x": [{"_placeholder": True, "num": 1}]}]
    assert buffers == [b"\x01", b"\x02"]
    assert reconstruct(data, buffers) == ["m", b"\x01", {"x": [b"\x02"]}]
    assert reconstruct(["m", {"_placeholder": True, "num": 2}], [b""]) == PacketError("illegal attachment placeholder")
    assert reconstruct(["m", {"_placeholder": True, "num": True}], [b""]) == PacketError("illegal attachment placeholder")
