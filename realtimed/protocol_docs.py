"""docs/asyncapi.yaml: the AsyncAPI 3 document of the client socket, built from ``protocol``.

Everything in it comes from ``realtimed.protocol``: the ops of ``OP_SPECS`` (their
data and reply schemas), the events of ``EVENT_SPECS`` and ``APP_EVENT``, the
shared records of ``TYPE_SCHEMAS``, the error codes and the close codes. The
document describes realtimed itself: it *receives* each op on the socket and
answers with the op's reply (or an error), and it *sends* events on the socket
and on the SSE stream.

``scripts/asyncapi.py --write`` regenerates the file; a test checks that the
committed file is what this module builds, and validates it with the AsyncAPI
parser. The YAML is written by a small emitter here, so its text is the same on
every machine and needs no YAML library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from realtimed import protocol
from realtimed.protocol import (
    APP_EVENT,
    CLOSE_CODES,
    ERROR_CODES,
    EVENT_SPECS,
    OP_SPECS,
    TYPE_SCHEMAS,
    EventSpec,
)

__all__ = ["asyncapi_document", "asyncapi_yaml", "event_message", "message_for_frame", "to_yaml"]

ASYNCAPI_VERSION: Final = "3.0.0"
SOCKET: Final = "socket"
SSE: Final = "events"
ERROR_MESSAGE: Final = "error"
APP_MESSAGE: Final = "event.app"

_SCHEMAS: Final = "#/components/schemas/"
_MESSAGES: Final = "#/components/messages/"


def _ref(where: str, name: str) -> dict[str, str]:
    return {"$ref": f"{where}{name}"}


def _request_message(name: str) -> str:
    return f"op.{name}"


def _reply_message(name: str) -> str:
    return f"reply.{name}"


def event_message(name: str) -> str:
    """The message key of an event (``event.<name>``; ``event.app`` for the application's)."""
    return f"event.{name}" if name in EVENT_SPECS else APP_MESSAGE


def message_for_frame(frame: Mapping[str, Any], request_ops: Mapping[Any, str]) -> str:
    """The message key that describes one server frame: an event, an op's reply or the error reply.

    ``request_ops`` maps the request ids the client used to their ops.
    """
    if "event" in frame:
        return event_message(str(frame["event"]))
    if frame.get("ok") is False:
        return ERROR_MESSAGE
    return _reply_message(request_ops[frame.get("id")])


def _description() -> str:
    rows = "\n".join(f"| {c.code} | {c.name} | {c.client_action} |" for c in CLOSE_CODES)
    codes = ", ".join(f"`{code}`" for code in ERROR_CODES)
    return (
        "The socket protocol of realtimed, version "
        f"{protocol.WIRE_VERSION}, as the daemon speaks it. docs/protocol.md is the contract for client "
        "authors (connecting, recovery, limits, the REST and SSE doors); this document is generated from "
        "realtimed/protocol.py and gives the shape of every frame.\n\n"
        "Every frame is one JSON object in one WebSocket text frame. A request is "
        '`{"id", "op", "data"}`; a request without `id` gets no reply at all. A reply is '
        '`{"id", "ok": true, "data"}` or `{"id", "ok": false, "error"}`. An event is '
        '`{"event", "room"?, "seq"?, "epoch"?, "data"}`. Fields a client does not know are ignored, '
        "and a field that is null counts as absent.\n\n"
        f"Error codes: {codes}.\n\n"
        "Close codes (4000 to 4499: reconnect with backoff; 4500 to 4999: do not reconnect on its own):\n\n"
        "| code | meaning | the client should |\n| --- | --- | --- |\n"
        f"{rows}\n"
    )


def _request_payload(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["op"],
        "properties": {
            "id": _ref(_SCHEMAS, "RequestId"),
            "op": {"const": name},
            "data": dict(data),
        },
    }


def _reply_payload(reply: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "ok", "data"],
        "properties": {"id": _ref(_SCHEMAS, "RequestId"), "ok": {"const": True}, "data": dict(reply)},
    }


def _error_payload() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "ok", "error"],
        "properties": {
            "id": {
                "description": "the request's id; null when the frame's id could not be read",
                "oneOf": [_ref(_SCHEMAS, "RequestId"), {"type": "null"}],
            },
            "ok": {"const": False},
            "error": _ref(_SCHEMAS, "Error"),
        },
    }


_TOP_LEVEL: Final[Mapping[str, dict[str, Any]]] = {
    "room": {
        "allOf": [_ref(_SCHEMAS, "Room")],
        "description": "the room: conversation:<id> for conversation events, the app room for publications",
    },
    "seq": {"allOf": [_ref(_SCHEMAS, "Seq")], "description": "the event's place in its stream"},
    "epoch": {"allOf": [_ref(_SCHEMAS, "Epoch")], "description": "the epoch of the room's history"},
}


def _event_payload(spec: EventSpec) -> dict[str, Any]:
    name: dict[str, Any] = {"const": spec.name} if spec is not APP_EVENT else _ref(_SCHEMAS, "EventName")
    properties: dict[str, Any] = {"event": name}
    required = ["event"]
    for key, carried in (("room", spec.room), ("seq", spec.seq), ("epoch", spec.epoch)):
        if carried == "never":
            continue
        properties[key] = dict(_TOP_LEVEL[key])
        if carried == "always":
            required.append(key)
    properties["data"] = spec.data
    required.append("data")
    return {"type": "object", "required": required, "properties": properties}


def _event_summary(spec: EventSpec) -> str:
    return f"{spec.summary}. To: {spec.audience}."


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3 document as plain data."""
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    socket_messages: dict[str, Any] = {}
    sse_messages: dict[str, Any] = {}

    def add(key: str, message: dict[str, Any], *, socket: bool = True, sse: bool = False) -> None:
        messages[key] = message
        if socket:
            socket_messages[key] = _ref(_MESSAGES, key)
        if sse:
            sse_messages[key] = _ref(_MESSAGES, key)

    def channel_message(channel: str, key: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{channel}/messages/{key}"}

    correlation = {"description": "a reply carries its request's id", "location": "$message.payload#/id"}
    for name, spec in OP_SPECS.items():
        add(
            _request_message(name),
            {"name": name, "title": f"{name} request", "summary": spec.summary,
             "correlationId": correlation, "payload": _request_payload(name, spec.data)},
        )
        add(
            _reply_message(name),
            {"name": f"{name} reply", "title": f"{name} reply", "summary": f"The answer to {name}.",
             "correlationId": correlation, "payload": _reply_payload(spec.reply)},
        )
    add(
        ERROR_MESSAGE,
        {"name": "error", "title": "error reply", "summary": "A request refused, or a frame that could not be read.",
         "correlationId": correlation, "payload": _error_payload()},
    )
    for event in (*EVENT_SPECS.values(), APP_EVENT):
        add(
            event_message(event.name),
            {"name": event.name, "title": event.name if event is not APP_EVENT else "application event",
             "summary": _event_summary(event), "payload": _event_payload(event)},
            socket="websocket" in event.doors,
            sse="sse" in event.doors,
        )
    for name in OP_SPECS:
        operations[name] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{SOCKET}"},
            "summary": OP_SPECS[name].summary,
            "messages": [channel_message(SOCKET, _request_message(name))],
            "reply": {
                "channel": {"$ref": f"#/channels/{SOCKET}"},
                "messages": [channel_message(SOCKET, _reply_message(name)), channel_message(SOCKET, ERROR_MESSAGE)],
            },
        }
    socket_events = [
        channel_message(SOCKET, event_message(event.name))
        for event in (*EVENT_SPECS.values(), APP_EVENT)
        if "websocket" in event.doors
    ]
    operations["socket.events"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{SOCKET}"},
        "summary": "Events on the socket",
        "messages": socket_events,
    }
    operations["sse.events"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{SSE}"},
        "summary": "Events on the SSE stream: `event: <name>` and `data: <the event frame>`",
        "messages": [channel_message(SSE, key) for key in sse_messages],
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "realtimed client protocol",
            "version": protocol.WIRE_VERSION,
            "description": _description(),
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {
                "host": "{host}",
                "protocol": "ws",
                "description": "the client listener (wss with TLS)",
                "variables": {"host": {"default": "127.0.0.1:8700", "description": "http.listen"}},
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/queryToken"},
                ],
            },
            "sse": {
                "host": "{host}",
                "protocol": "http",
                "description": "the same listener's SSE fallback (https with TLS)",
                "variables": {"host": {"default": "127.0.0.1:8700", "description": "http.listen"}},
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/queryToken"},
                ],
            },
        },
        "channels": {
            SOCKET: {
                "address": "/ws",
                "title": "client socket",
                "description": "The WebSocket (gateway.path). Without a token in the request, the first frame "
                "must be the auth op, within gateway.auth_timeout_s.",
                "servers": [{"$ref": "#/servers/websocket"}],
                "messages": socket_messages,
            },
            SSE: {
                "address": "/api/v1/events",
                "title": "SSE fallback",
                "description": "GET /api/v1/events?rooms=a,b: the user's events and those of the listed rooms. "
                "Each record has an opaque id: a reconnect with Last-Event-ID resumes the rooms.",
                "servers": [{"$ref": "#/servers/sse"}],
                "messages": sse_messages,
            },
        },
        "operations": operations,
        "components": {
            "schemas": dict(TYPE_SCHEMAS),
            "messages": messages,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Authorization: Bearer <jwt> on the upgrade request or the SSE request",
                },
                "queryToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "?token=<jwt> (ends up in proxy logs: prefer the header or the auth frame)",
                },
            },
        },
    }


# -- YAML -------------------------------------------------------------------------------------

_PLAIN_KEY: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$-]*")
_PLAIN_VALUE: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9 _./()-]*[A-Za-z0-9_./)]|[A-Za-z_/]")
_RESERVED_WORDS: Final = frozenset(
    {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
)


def _scalar_text(value: str, pattern: re.Pattern[str]) -> str:
    if pattern.fullmatch(value) and value.lower() not in _RESERVED_WORDS:
        return value
    text = json.dumps(value, ensure_ascii=False)
    if not text.isprintable():
        text = json.dumps(value, ensure_ascii=True)
    return text


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _scalar_text(value, _PLAIN_VALUE)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = _scalar_text(str(key), _PLAIN_KEY)
            if isinstance(item, (Mapping, list)) and item:
                lines.append(f"{pad}{name}:")
                _emit(item, indent + 1, lines)
            elif isinstance(item, str) and _block_ok(item):
                chomp = "" if item.endswith("\n") else "-"
                lines.append(f"{pad}{name}: |{chomp}")
                lines.extend(f"{pad}  {line}" if line else "" for line in item.removesuffix("\n").split("\n"))
            else:
                lines.append(f"{pad}{name}: {_inline(item)}")
        return
    for item in value:
        if isinstance(item, (Mapping, list)) and item:
            nested: list[str] = []
            _emit(item, indent + 1, nested)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
        else:
            lines.append(f"{pad}- {_inline(item)}")


def _block_ok(text: str) -> bool:
    """Whether a string reads back the same from a literal block (``|`` or ``|-``)."""
    body = text.removesuffix("\n")
    lines = body.split("\n")
    return (
        len(lines) > 1
        and not body.endswith("\n")
        and not lines[0].startswith((" ", "\t"))
        and all(line.isprintable() and line == line.rstrip() for line in lines)
    )


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(document: Mapping[str, Any]) -> str:
    """Block-style YAML for plain data (mappings, lists, strings, numbers, booleans, null)."""
    lines: list[str] = []
    _emit(document, 0, lines)
    return "\n".join(lines) + "\n"


def asyncapi_yaml() -> str:
    """The text of docs/asyncapi.yaml."""
    header = "# Generated from realtimed/protocol.py by scripts/asyncapi.py --write: do not edit.\n"
    return header + to_yaml(asyncapi_document())
