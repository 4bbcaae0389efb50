"""Engine.IO v4 and Socket.IO v5 packets, sans-IO: parse, validate, encode.

Nothing here touches a socket or Trio; every function is synchronous and is
tested as such. A malformed packet is never an exception that escapes: parsing
returns a ``PacketError`` naming what was wrong, and the caller answers as the
protocol says (the reference server closes the connection on a packet it cannot
decode).

Engine.IO v4 (https://socket.io/docs/v4/engine-io-protocol/):
    A text packet is one digit, its type (0 open, 1 close, 2 ping, 3 pong,
    4 message, 5 upgrade, 6 noop), then its data. Over WebSocket a binary frame
    is a message with binary data; over HTTP long-polling a binary message is
    ``b`` and its base64, and the packets of one request or response body are
    joined with the record separator ``\\x1e``.

Socket.IO v5 (https://socket.io/docs/v4/socket-io-protocol/), carried as the
data of an Engine.IO message::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

with the types 0 CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR,
5 BINARY_EVENT, 6 BINARY_ACK. A binary packet announces how many binary
Engine.IO messages follow it; each ``{"_placeholder": true, "num": n}`` in its
data stands for the n-th of them.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import orjson

__all__ = [
    "RECORD_SEPARATOR",
    "RESERVED_EVENTS",
    "EioPacket",
    "EioType",
    "PacketError",
    "SioPacket",
    "SioType",
    "deconstruct",
    "encode_eio",
    "encode_payload",
    "encode_sio",
    "parse_eio",
    "parse_payload",
    "parse_sio",
    "reconstruct",
]

RECORD_SEPARATOR: Final = "\x1e"

#: Event names socket.io-client keeps for itself: never sent, and refused from a client.
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

# Longest ack id: socket.io-client counts from 0; anything longer than a safe JS integer is garbage.
_MAX_ACK_ID_DIGITS: Final = 15


class EioType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class SioType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


@attrs.frozen
class PacketError:
    """Why a packet could not be parsed (the connection is then closed)."""

    reason: str


@attrs.frozen
class EioPacket:
    """One Engine.IO packet; ``data`` is bytes only for a binary message."""

    type: EioType
    data: str | bytes = ""


@attrs.frozen
class SioPacket:
    """One Socket.IO packet.

    Attributes:
        type: the packet type.
        namespace: ``/`` unless the packet names another.
        data: the decoded JSON payload (None when absent).
        id: the ack id, if any.
        attachments: how many binary messages follow (binary types only).
    """

    type: SioType
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0


# -- Engine.IO --------------------------------------------------------------------------------


def parse_eio(message: str | bytes) -> EioPacket | PacketError:
    """One Engine.IO packet from one WebSocket message (text, or binary: a binary message)."""
    if isinstance(message, bytes):
        return EioPacket(EioType.MESSAGE, message)
    if not message:
        return PacketError("empty packet")
    head = message[0]
    if not "0" <= head <= "6":
        return PacketError("unknown Engine.IO packet type")
    return EioPacket(EioType(ord(head) - 48), message[1:])


def encode_eio(packet: EioPacket, *, binary_as_base64: bool = False) -> str | bytes:
    """An Engine.IO packet as one WebSocket message, or (``binary_as_base64``) as a polling record."""
    if isinstance(packet.data, bytes):
        if binary_as_base64:
            return "b" + base64.b64encode(packet.data).decode()
        return packet.data
    return str(int(packet.type)) + packet.data


def parse_payload(body: str, *, max_packets: int) -> list[EioPacket] | PacketError:
    """The packets of one HTTP long-polling request body (records joined by ``\\x1e``)."""
    records = body.split(RECORD_SEPARATOR, max_packets)
    if len(records) > max_packets:
        return PacketError("too many packets in one request")
    packets: list[EioPacket] = []
    for record in records:
        if record.startswith("b"):
            try:
                packets.append(EioPacket(EioType.MESSAGE, base64.b64decode(record[1:], validate=True)))
            except (binascii.Error, ValueError):
                return PacketError("invalid base64 binary packet")
            continue
        parsed = parse_eio(record)
        if isinstance(parsed, PacketError):
            return parsed
        packets.append(parsed)
    return packets


def encode_payload(records: Iterable[str]) -> str:
    """Polling records (already encoded packets) as one response body."""
    return RECORD_SEPARATOR.join(records)


# -- Socket.IO --------------------------------------------------------------------------------


def parse_sio(text: str, *, max_attachments: int) -> SioPacket | PacketError:
    """One Socket.IO packet from the data of an Engine.IO text message.

    Validates as socket.io-parser's decoder does: the type, the attachment count
    of binary packets, the namespace, the ack id, the JSON, and the payload's
    shape for the type (CONNECT an object or nothing, DISCONNECT nothing, EVENT
    an array whose first element is a string event name not reserved, ACK an
    array, CONNECT_ERROR a string or an object).
    """
    if not text:
        return PacketError("empty packet")
    head = text[0]
    if not "0" <= head <= "6":
        return PacketError("unknown packet type")
    kind = SioType(ord(head) - 48)
    i = 1
    attachments = 0
    if kind in (SioType.BINARY_EVENT, SioType.BINARY_ACK):
        dash = text.find("-", i)
        count = text[i:dash] if dash > 0 else ""
        if not count.isascii() or not count.isdigit() or len(count) > 6:
            return PacketError("illegal attachments")
        attachments = int(count)
        if attachments > max_attachments:
            return PacketError("too many attachments")
        i = dash + 1
    namespace = "/"
    if i < len(text) and text[i] == "/":
        comma = text.find(",", i)
        end = len(text) if comma < 0 else comma
        namespace = text[i:end]
        i = end + 1 if comma >= 0 else end
    start = i
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
    ack_id: int | None = None
    if i > start:
        if i - start > _MAX_ACK_ID_DIGITS:
            return PacketError("invalid ack id")
        ack_id = int(text[start:i])
    data: Any = None
    if i < len(text):
        try:
            data = orjson.loads(text[i:])
        except orjson.JSONDecodeError:
            return PacketError("invalid payload")
    if not _payload_valid(kind, data):
        return PacketError("invalid payload")
    return SioPacket(kind, namespace, data, ack_id, attachments)


def _payload_valid(kind: SioType, data: Any) -> bool:
    if kind is SioType.CONNECT:
        return data is None or isinstance(data, dict)
    if kind is SioType.DISCONNECT:
        return data is None
    if kind is SioType.CONNECT_ERROR:
        return isinstance(data, (str, dict))
    if kind in (SioType.EVENT, SioType.BINARY_EVENT):
        if not isinstance(data, list) or not data:
            return False
        name = data[0]
        return (isinstance(name, str) and name not in RESERVED_EVENTS) or (
            isinstance(name, int) and not isinstance(name, bool)
        )
    return isinstance(data, list)  # ACK, BINARY_ACK


def encode_sio(packet: SioPacket) -> str:
    """A Socket.IO packet as the data of an Engine.IO text message (binary attachments go apart)."""
    parts = [str(int(packet.type))]
    if packet.type in (SioType.BINARY_EVENT, SioType.BINARY_ACK):
        parts.append(f"{packet.attachments}-")
    if packet.namespace != "/":
        parts.append(packet.namespace + ",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if packet.data is not None:
        parts.append(orjson.dumps(packet.data).decode())
    return "".join(parts)


def deconstruct(data: Any) -> tuple[Any, list[bytes]]:
    """Replace every bytes value in ``data`` with a placeholder; returns the data and the buffers in order."""
    buffers: list[bytes] = []

    def walk(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(bytes(value))
            return {"_placeholder": True, "num": len(buffers) - 1}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(data), buffers


def reconstruct(data: Any, buffers: Sequence[bytes]) -> Any | PacketError:
    """Put the binary attachments back in place of their placeholders (iteratively: no depth limit)."""
    root: list[Any] = [data]
    stack: list[tuple[list[Any] | dict[str, Any], int | str]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        value = parent[key]  # type: ignore[index]
        if isinstance(value, dict):
            if value.get("_placeholder") is True:
                num = value.get("num")
                if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num < len(buffers):
                    return PacketError("illegal attachment placeholder")
                parent[key] = buffers[num]  # type: ignore[index]
                continue
            stack.extend((value, k) for k in value)
        elif isinstance(value, list):
            stack.extend((value, i) for i in range(len(value)))
    return root[0]
