"""The client wire protocol (docs/protocol.md sections 4 to 6), sans-IO.

This module turns the text of a client frame into typed values and server
frames into bytes. It does no I/O and knows nothing of Trio or sockets, so it is
tested synchronously and shared by the socket, the client REST door and the
server API.

Parsing happens in two steps, because the gateway must decide what to do
between them (an op sent before ``auth`` gets ``UNAUTHORIZED`` whatever its
data):

1. ``parse_frame`` applies section 4: it returns a ``Request`` or a
   ``FrameError`` that says whether it deserves a reply.
2. ``validate(op, data)`` applies section 5: it returns the op's typed value
   (an attrs class named after the op, whose attributes are the wire fields) or
   raises ``ValidationFailed`` naming the field (``PayloadTooLarge`` for a
   message body over the limit).

Encoders produce the bytes of one text frame with a single ``orjson.dumps``.

Beside each validator, its op's ``OpSpec`` carries the JSON Schema of the op's
data and of its reply; ``EVENT_SPECS`` describes every server event and
``TYPE_SCHEMAS`` the records they carry. ``realtimed.protocol_docs`` builds
docs/asyncapi.yaml from them, and tests hold them to the validators.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, TypeVar

import attrs
import orjson

from realtimed.errors import (
    BAD_REQUEST,
    BLOCKED,
    CONFLICT,
    FORBIDDEN,
    INTERNAL,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNAVAILABLE,
    VALIDATION_ERROR,
    ApiError,
    BadRequest,
    PayloadTooLarge,
    ValidationFailed,
)

__all__ = [
    "APP_EVENT",
    "CLOSE_CODES",
    "DEFAULT_MAX_JSON_DEPTH",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ERROR_CODES",
    "EVENT_SPECS",
    "FEED_ACTIVITIES_LIMIT",
    "FEED_ACTIVITY_EVENT",
    "FEED_ROOM_PREFIX",
    "MAX_ACTOR_CHARS",
    "MAX_FEED_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_OBJECT_CHARS",
    "MAX_SEARCH_CHARS",
    "MAX_STORED_JSON_DEPTH",
    "MAX_VERB_CHARS",
    "OPS",
    "OP_SPECS",
    "RESERVED_EVENT_PREFIXES",
    "SOCKET_ONLY_OPS",
    "TYPE_SCHEMAS",
    "WIRE_VERSION",
    "CloseCode",
    "EventSpec",
    "FeedActivities",
    "FrameError",
    "JsonSchema",
    "Limits",
    "OpSpec",
    "Request",
    "RequestId",
    "check_json_depth",
    "encode_event",
    "encode_json",
    "encode_reply_error",
    "encode_reply_ok",
    "is_reserved_event",
    "is_valid_room",
    "json_depth_path",
    "json_fragment",
    "op_spec",
    "parse_frame",
    "room_matches",
    "validate",
    "validate_event_name",
    "validate_feed",
    "validate_name",
    "validate_room",
    "validate_room_pattern",
    "validate_user_id",
]

RequestId: TypeAlias = int | str | None

# -- limits (docs/protocol.md sections 2, 4, 5 and 9) ---------------------------------------------

MAX_REQUEST_ID_CHARS: Final = 64
MAX_USER_ID_CHARS: Final = 128
MAX_ID_CHARS: Final = 128
MAX_CLIENT_ID_CHARS: Final = 64
MAX_ROOM_CHARS: Final = 200
MAX_EVENT_CHARS: Final = 100
MAX_CURSOR_CHARS: Final = 512
MAX_EPOCH_CHARS: Final = 128
MAX_TOKEN_CHARS: Final = 65_536
MAX_TITLE_CHARS: Final = 200
MAX_STATUS_MESSAGE_CHARS: Final = 200
MAX_MEDIA_URL_CHARS: Final = 2048
MAX_PRESENCE_QUERY: Final = 200
# A notification type's name (notify.types[].name), as configured and as sent.
MAX_NOTIFICATION_TYPE_CHARS: Final = 64
MAX_MEMBER_IDS: Final = 10_000
MAX_NOTIFICATION_IDS: Final = 1000
# Sequence numbers and versions are stored as signed 64-bit integers.
MAX_SEQ: Final = 2**63 - 1
DEFAULT_MAX_MESSAGE_BYTES: Final = 65_536
# Nesting of arrays and objects (section 4). orjson writes at most 254 levels, and
# an answer wraps a stored value in a few more (a publication inside a subscribe
# reply, a job payload inside a job list): so a field may nest at most
# MAX_JSON_DEPTH levels whatever the configuration, and a value realtimed stores
# on its own account (a job payload) at most MAX_STORED_JSON_DEPTH.
DEFAULT_MAX_JSON_DEPTH: Final = 32
MAX_JSON_DEPTH: Final = 128
MAX_STORED_JSON_DEPTH: Final = 200

CONVERSATION_LIST_LIMIT: Final = (20, 100)  # (default, max)
MESSAGE_HISTORY_LIMIT: Final = (50, 100)
NOTIFICATION_LIST_LIMIT: Final = (20, 100)
FEED_ACTIVITIES_LIMIT: Final = (20, 100)

#: The room of an activity feed is this prefix and the feed's name: ``feed:user:alice``.
FEED_ROOM_PREFIX: Final = "feed:"
#: A feed name is a room name short enough to take ``FEED_ROOM_PREFIX``.
MAX_FEED_CHARS: Final = MAX_ROOM_CHARS - len(FEED_ROOM_PREFIX)
#: The event of an activity logged to a feed.
FEED_ACTIVITY_EVENT: Final = "feed.activity"
# Fixed sizes of an activity's fields (docs/protocol.md section 9).
MAX_ACTOR_CHARS: Final = 128
MAX_VERB_CHARS: Final = 64
MAX_OBJECT_CHARS: Final = 200
MAX_SEARCH_CHARS: Final = 200

RESERVED_EVENT_PREFIXES: Final[tuple[str, ...]] = (
    "session.",
    "server.",
    "message.",
    "receipt.",
    "typing.",
    "conversation.",
    "presence.",
    "notification.",
    "room.",
    "feed.",
)

MessageType: TypeAlias = Literal["text", "image", "file"]
PresenceStatus: TypeAlias = Literal["online", "away", "busy", "invisible"]
_MESSAGE_TYPES: Final[Mapping[str, MessageType]] = {"text": "text", "image": "image", "file": "file"}
_PRESENCE_STATUSES: Final[Mapping[str, PresenceStatus]] = {
    "online": "online",
    "away": "away",
    "busy": "busy",
    "invisible": "invisible",
}

# C0 and C1 control characters: never part of an id, a name or an event, because
# they would forge lines in logs and in the SSE stream.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A room name additionally has no whitespace; no "*" (that is the pattern
# wildcard, so that a name never looks like a pattern) and no "," (the SSE door
# lists rooms separated by commas).
_ROOM_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f*,]")
_MEDIA_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f-\x9f]+", re.IGNORECASE)


# -- JSON depth and encoding (section 4) --------------------------------------------------------


def json_depth_path(value: object, max_depth: int) -> list[str | int] | None:
    """Where ``value`` nests more than ``max_depth`` levels of arrays and objects.

    A scalar is 0 levels deep, ``[]`` and ``{}`` are 1, ``{"a": [1]}`` is 2.
    Returns None when ``value`` is within the limit, else the keys and indexes
    leading from ``value`` to the first array or object beyond it (``[]`` when
    ``value`` itself is, for a ``max_depth`` of 0). Iterative, so no depth can
    exhaust the stack; it stops at the first array or object too deep.
    """
    if type(value) is not dict and type(value) is not list:
        return None
    if max_depth < 1:
        return []
    path: list[str | int] = []
    stack: list[Iterator[tuple[str | int, Any]]] = [_members(value)]
    while stack:
        for key, child in stack[-1]:
            kind = type(child)
            if kind is dict or kind is list:
                path.append(key)
                if len(stack) >= max_depth:
                    return path
                stack.append(_members(child))
                break
        else:
            stack.pop()
            if path:
                path.pop()
    return None


def _members(container: Any) -> Iterator[tuple[str | int, Any]]:
    if type(container) is dict:
        return iter(container.items())
    return enumerate(container)


def _brackets(raw: str | bytes) -> int:
    """An upper bound of the nesting of a JSON text (brackets inside strings count too)."""
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[")
    return raw.count(b"{") + raw.count(b"[")


def check_json_depth(
    fields: Mapping[str, Any], max_depth: int, *, raw: str | bytes | None = None, prefix: str = ""
) -> None:
    """Refuse a field of ``fields`` whose value nests more than ``max_depth`` levels.

    ``fields`` is a parsed request body, or an op's ``data``; ``raw``, when given,
    is the JSON text it came from, whose brackets bound its depth: a text with no
    more than ``max_depth + 1`` of them is not walked at all.

    Raises:
        ValidationFailed: naming the first such field (``prefix`` + its name).
    """
    if raw is not None and _brackets(raw) <= max_depth + 1:
        return
    for name, value in fields.items():
        if json_depth_path(value, max_depth) is not None:
            raise ValidationFailed(
                f"{prefix}{name}", f"nests more than {max_depth} levels of arrays and objects"
            )


def encode_json(value: Any, field: str = "data") -> bytes:
    """``value`` as JSON; ``ValidationFailed`` naming ``field`` when it cannot be.

    What realtimed keeps (room history) is encoded once with this before it is
    kept, so nothing kept can fail to encode later.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValidationFailed(field, f"cannot be encoded as JSON ({exc})") from None


def json_fragment(value: Any, field: str = "data") -> orjson.Fragment:
    """``value`` encoded once (``encode_json``), as a fragment that later encodes
    cannot fail on, whatever it is nested in; a fragment is returned as it is."""
    if type(value) is orjson.Fragment:
        return value
    return orjson.Fragment(encode_json(value, field))


# -- frames (section 4) -------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Request:
    """A well-formed request frame.

    Attributes:
        id: the client's request id; None when the frame had no ``id``, which
            makes it fire-and-forget: it gets no reply at all, not even an error.
        op: a known op (one of ``OPS``).
        data: the ``data`` object, ``{}`` when it was absent; not validated yet.
    """

    id: int | str | None
    op: str
    data: dict[str, Any]

    @property
    def fire_and_forget(self) -> bool:
        return self.id is None


@attrs.frozen(slots=True)
class FrameError:
    """A frame refused by section 4.

    Attributes:
        id: the id to answer with (None for a frame whose id could not be read).
        error: ``BadRequest`` or ``ValidationFailed``.
        reply: whether to send ``encode_reply_error(id, error)``; False for a
            fire-and-forget request, which gets nothing.
    """

    id: int | str | None
    error: ApiError
    reply: bool


_NO_DATA: Final[Mapping[str, Any]] = MappingProxyType({})


def parse_frame(text: str | bytes, *, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Request | FrameError:
    """Parse one client text frame, following docs/protocol.md section 4.2 to the letter.

    - not JSON, not an object, or an ``id`` that is not an integer (booleans are
      not) or a string of at most 64 characters: ``BAD_REQUEST`` with id null,
      always answered (the id cannot be trusted to tell fire-and-forget apart;
      an explicit ``"id": null`` is such an invalid id);
    - no ``op``, or an unknown one: ``BAD_REQUEST`` with the request's id;
    - ``data`` absent is ``{}``; ``data`` not an object: ``VALIDATION_ERROR``;
    - unknown fields are ignored;
    - a field of ``data`` (or a member of the frame beside it) that nests more
      than ``max_json_depth`` levels of arrays and objects: ``VALIDATION_ERROR``
      naming it, so nothing deeper reaches a handler or the store;
    - without ``id`` nothing is answered, not even an error (``reply`` False).

    Frame size and binary frames are the socket's business, not this one's.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return FrameError(None, BadRequest("the frame is not valid JSON"), True)
    if type(obj) is not dict:
        return FrameError(None, BadRequest("the frame must be a JSON object"), True)
    if "id" in obj:
        request_id = obj["id"]
        kind = type(request_id)
        # type() rather than isinstance(): True and False are ints to isinstance.
        if kind is str:
            if len(request_id) > MAX_REQUEST_ID_CHARS:
                return FrameError(
                    None, BadRequest(f"id: a string id has at most {MAX_REQUEST_ID_CHARS} characters"), True
                )
        elif kind is not int:
            return FrameError(None, BadRequest("id: must be an integer or a string"), True)
        reply = True
    else:
        request_id = None
        reply = False
    op = obj.get("op")
    if op is None:
        return FrameError(request_id, BadRequest("op: is required"), reply)
    if type(op) is not str:
        return FrameError(request_id, BadRequest("op: must be a string"), reply)
    if op not in OPS:
        return FrameError(request_id, BadRequest(f"unknown op {op[:64]!r}"), reply)
    data = obj.get("data", _NO_DATA)
    if data is _NO_DATA:
        data = {}
    elif type(data) is not dict:
        return FrameError(request_id, ValidationFailed("data", "must be an object"), reply)
    # A member of the frame nesting too deep takes more than max_json_depth + 1 brackets.
    if _brackets(text) > max_json_depth + 1:
        try:
            check_json_depth({k: v for k, v in obj.items() if k != "data"}, max_json_depth)
            check_json_depth(data, max_json_depth)
        except ValidationFailed as exc:
            return FrameError(request_id, exc, reply)
    return Request(request_id, op, data)


# -- encoders -----------------------------------------------------------------------------------


def encode_reply_ok(request_id: RequestId, data: Mapping[str, Any]) -> bytes:
    """``{"id", "ok": true, "data"}`` as the bytes of one text frame."""
    return orjson.dumps({"id": request_id, "ok": True, "data": data})


def encode_reply_error(request_id: RequestId, error: ApiError) -> bytes:
    """``{"id", "ok": false, "error": {"code", "message", ...}}``.

    ``INTERNAL`` carries ``correlation_id`` and ``RATE_LIMITED`` carries
    ``retry_after_ms``: ``ApiError.to_dict`` adds them.
    """
    return orjson.dumps({"id": request_id, "ok": False, "error": error.to_dict()})


def encode_event(
    event: str,
    data: Any,
    *,
    room: str | None = None,
    seq: int | None = None,
    epoch: str | None = None,
) -> bytes:
    """``{"event", "room"?, "seq"?, "epoch"?, "data"}`` as the bytes of one text frame.

    On the delivery hot path: one dict, one ``orjson.dumps``. Keys that are None
    are left out (a top-level ``seq`` appears only on events that append to a
    stream).
    """
    if room is None and seq is None and epoch is None:
        return orjson.dumps({"event": event, "data": data})
    frame: dict[str, Any] = {"event": event}
    if room is not None:
        frame["room"] = room
    if seq is not None:
        frame["seq"] = seq
    if epoch is not None:
        frame["epoch"] = epoch
    frame["data"] = data
    return orjson.dumps(frame)


# -- names: users, rooms, events ----------------------------------------------------------------


def validate_user_id(value: object, field: str = "user_id") -> str:
    """A user id (a JWT ``sub``): a string of 1 to 128 characters, no control characters."""
    if type(value) is not str:
        raise ValidationFailed(field, "must be a string")
    if not 1 <= len(value) <= MAX_USER_ID_CHARS:
        raise ValidationFailed(field, f"must be 1 to {MAX_USER_ID_CHARS} characters")
    if _CONTROL.search(value):
        raise ValidationFailed(field, "must not contain control characters")
    return value


def validate_id(value: object, field: str = "id") -> str:
    """An opaque record id (conversation, message, notification, job): a string of
    1 to 128 characters, no control characters. Raises ValidationFailed."""
    return _check_string(value, field, min_len=1, max_len=MAX_ID_CHARS, control_ok=False)


def _room_problem(room: object) -> str | None:
    if type(room) is not str:
        return "must be a string"
    if not room:
        return "must not be empty"
    if len(room) > MAX_ROOM_CHARS:
        return f"must be at most {MAX_ROOM_CHARS} characters"
    if _ROOM_FORBIDDEN.search(room):
        return "must not contain whitespace, control characters, '*' or ','"
    if room[0] == ":" or room[-1] == ":" or "::" in room:
        return "segments separated by ':' must not be empty"
    return None


def is_valid_room(room: object) -> bool:
    return _room_problem(room) is None


def validate_room(room: object, field: str = "room") -> str:
    """A room name: 1 to 200 characters, ``:``-separated non-empty segments, no
    whitespace, control characters, ``*`` or ``,``. Raises ValidationFailed."""
    problem = _room_problem(room)
    if problem is not None:
        raise ValidationFailed(field, problem)
    assert isinstance(room, str)
    return room


def validate_name(value: object, field: str, *, max_len: int) -> str:
    """A string of 1 to ``max_len`` characters without control characters (an
    activity's actor, verb, object). Raises ValidationFailed."""
    return _check_string(value, field, min_len=1, max_len=max_len, control_ok=False)


def validate_feed(feed: object, field: str = "feed") -> str:
    """A feed name: a room name of at most ``MAX_FEED_CHARS`` characters (its room is
    ``feed:<name>``), such as ``user:alice``, ``team:t1`` or ``global``."""
    problem = _room_problem(feed)
    if problem is None and len(feed) > MAX_FEED_CHARS:  # type: ignore[arg-type]
        problem = f"must be at most {MAX_FEED_CHARS} characters"
    if problem is not None:
        raise ValidationFailed(field, problem)
    assert isinstance(feed, str)
    return feed


def validate_room_pattern(pattern: object, field: str = "rooms") -> str:
    """A room pattern of a token's ``rooms`` claim: a room name, or one whose last
    segment is ``*`` (``team:7:*``), or ``*`` alone (every room)."""
    if pattern == "*":
        return "*"
    if type(pattern) is str and pattern.endswith(":*"):
        if len(pattern) > MAX_ROOM_CHARS:
            raise ValidationFailed(field, f"must be at most {MAX_ROOM_CHARS} characters")
        problem = _room_problem(pattern[:-2])
        if problem is not None:
            raise ValidationFailed(field, f"{problem} ('*' may only be the last segment)")
        return pattern
    problem = _room_problem(pattern)
    if problem is not None:
        raise ValidationFailed(field, problem)
    assert isinstance(pattern, str)
    return pattern


def room_matches(pattern: str, room: str) -> bool:
    """Whether ``room`` matches ``pattern``.

    A trailing ``*`` segment matches one or more whole segments: ``team:7:*``
    matches ``team:7:x`` and ``team:7:x:y``, not ``team:70`` nor ``team:7``.
    Both arguments are taken as already valid (``validate_room_pattern``,
    ``validate_room``); a ``*`` anywhere else is not a wildcard.
    """
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        prefix = pattern[:-1]  # keeps the ":" so that "team:7:*" never matches "team:70"
        return len(room) > len(prefix) and room.startswith(prefix)
    return pattern == room


def is_reserved_event(name: str) -> bool:
    """Whether an event name uses a prefix reserved for realtimed's own events."""
    return name.startswith(RESERVED_EVENT_PREFIXES)


def validate_event_name(name: object, field: str = "event") -> str:
    """An app event name: 1 to 100 characters, no control characters, no reserved prefix."""
    if type(name) is not str:
        raise ValidationFailed(field, "must be a string")
    if not 1 <= len(name) <= MAX_EVENT_CHARS:
        raise ValidationFailed(field, f"must be 1 to {MAX_EVENT_CHARS} characters")
    if _CONTROL.search(name):
        raise ValidationFailed(field, "must not contain control characters")
    if is_reserved_event(name):
        raise ValidationFailed(field, f"{name!r} uses a reserved prefix")
    return name


# -- field helpers ------------------------------------------------------------------------------
# A field that is absent or null is missing: optional fields take their default.


def _string(
    data: Mapping[str, Any],
    field: str,
    *,
    max_len: int,
    min_len: int = 1,
    path: str = "",
    control_ok: bool = False,
) -> str:
    value = data.get(field)
    name = path + field
    if value is None:
        raise ValidationFailed(name, "is required")
    return _check_string(value, name, min_len=min_len, max_len=max_len, control_ok=control_ok)


def _opt_string(
    data: Mapping[str, Any], field: str, *, max_len: int, min_len: int = 1, control_ok: bool = False
) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    return _check_string(value, field, min_len=min_len, max_len=max_len, control_ok=control_ok)


def _check_string(value: object, name: str, *, min_len: int, max_len: int, control_ok: bool) -> str:
    if type(value) is not str:
        raise ValidationFailed(name, "must be a string")
    if not min_len <= len(value) <= max_len:
        if min_len == 0:
            raise ValidationFailed(name, f"must be at most {max_len} characters")
        raise ValidationFailed(name, f"must be {min_len} to {max_len} characters")
    if not control_ok and _CONTROL.search(value):
        raise ValidationFailed(name, "must not contain control characters")
    return value


def _id(data: Mapping[str, Any], field: str) -> str:
    """An opaque record id (conversation, message, notification)."""
    return _string(data, field, max_len=MAX_ID_CHARS)


def _opt_id(data: Mapping[str, Any], field: str) -> str | None:
    return _opt_string(data, field, max_len=MAX_ID_CHARS)


def _user(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if value is None:
        raise ValidationFailed(field, "is required")
    return validate_user_id(value, field)


def _room(data: Mapping[str, Any], field: str = "room") -> str:
    value = data.get(field)
    if value is None:
        raise ValidationFailed(field, "is required")
    return validate_room(value, field)


def _opt_int(data: Mapping[str, Any], field: str, *, lo: int, hi: int, path: str = "") -> int | None:
    value = data.get(field)
    if value is None:
        return None
    return _check_int(value, path + field, lo=lo, hi=hi)


def _int(data: Mapping[str, Any], field: str, *, lo: int, hi: int, path: str = "") -> int:
    value = data.get(field)
    if value is None:
        raise ValidationFailed(path + field, "is required")
    return _check_int(value, path + field, lo=lo, hi=hi)


def _check_int(value: object, name: str, *, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise ValidationFailed(name, "must be an integer")
    if not lo <= value <= hi:
        raise ValidationFailed(name, f"must be between {lo} and {hi}")
    return value


def _seq(data: Mapping[str, Any], field: str) -> int | None:
    return _opt_int(data, field, lo=0, hi=MAX_SEQ)


def _bool(data: Mapping[str, Any], field: str, *, default: bool | None = None) -> bool:
    value = data.get(field)
    if value is None:
        if default is None:
            raise ValidationFailed(field, "is required")
        return default
    if type(value) is not bool:
        raise ValidationFailed(field, "must be true or false")
    return value


def _limit(data: Mapping[str, Any], bounds: tuple[int, int]) -> int:
    default, most = bounds
    value = _opt_int(data, "limit", lo=1, hi=most)
    return default if value is None else value


def _list(data: Mapping[str, Any], field: str, *, min_items: int, max_items: int) -> list[Any]:
    value = data.get(field)
    if value is None:
        raise ValidationFailed(field, "is required")
    if type(value) is not list:
        raise ValidationFailed(field, "must be a list")
    if not min_items <= len(value) <= max_items:
        raise ValidationFailed(field, f"must have {min_items} to {max_items} items")
    return value


def _user_ids(data: Mapping[str, Any], field: str, *, min_items: int, max_items: int) -> tuple[str, ...]:
    items = _list(data, field, min_items=min_items, max_items=max_items)
    for i, item in enumerate(items):
        validate_user_id(item, f"{field}[{i}]")
    return tuple(dict.fromkeys(items))  # without repeats, in the client's order


def _ids(data: Mapping[str, Any], field: str, *, max_items: int) -> tuple[str, ...]:
    items = _list(data, field, min_items=1, max_items=max_items)
    for i, item in enumerate(items):
        _check_string(item, f"{field}[{i}]", min_len=1, max_len=MAX_ID_CHARS, control_ok=False)
    return tuple(dict.fromkeys(items))


def _exclusive(data: Mapping[str, Any], *fields: str) -> None:
    """At most one of ``fields`` may be given."""
    given = [f for f in fields if data.get(f) is not None]
    if len(given) > 1:
        raise ValidationFailed(given[1], f"cannot be combined with {given[0]}")


def _body(value: object, *, max_bytes: int, may_be_empty: bool) -> str:
    if type(value) is not str:
        raise ValidationFailed("body", "must be a string")
    if not value and not may_be_empty:
        raise ValidationFailed("body", "must not be empty (unless media_url is set)")
    chars = len(value)
    # A character is 1 to 4 bytes of UTF-8: only the uncertain middle is encoded.
    if chars > max_bytes:
        size = chars
    elif chars * 4 <= max_bytes:
        size = 0
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationFailed("body", "must be valid Unicode text") from None
    if size > max_bytes:
        raise PayloadTooLarge(f"body: must be at most {max_bytes} bytes of UTF-8", field="body")
    return value


# -- op values (section 5) ----------------------------------------------------------------------
# Each class is named after its op; its attributes are the op's wire fields.


@attrs.frozen(slots=True)
class Limits:
    """Limits from the configuration that validation needs."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@attrs.frozen(slots=True)
class Auth:
    token: str


@attrs.frozen(slots=True)
class Ping:
    pass


@attrs.frozen(slots=True)
class Since:
    seq: int
    epoch: str


@attrs.frozen(slots=True)
class Subscribe:
    room: str
    since: Since | None = None


@attrs.frozen(slots=True)
class Unsubscribe:
    room: str


@attrs.frozen(slots=True)
class RoomPresence:
    room: str


@attrs.frozen(slots=True)
class Publish:
    room: str
    event: str
    data: Any


@attrs.frozen(slots=True)
class ConversationOpen:
    user_id: str


@attrs.frozen(slots=True)
class ConversationCreate:
    member_ids: tuple[str, ...]
    title: str | None = None


@attrs.frozen(slots=True)
class ConversationList:
    cursor: str | None = None
    limit: int = CONVERSATION_LIST_LIMIT[0]


@attrs.frozen(slots=True)
class ConversationMute:
    conversation_id: str
    muted: bool


@attrs.frozen(slots=True)
class ConversationLeave:
    conversation_id: str


@attrs.frozen(slots=True)
class MessageSend:
    conversation_id: str
    client_id: str
    body: str
    type: MessageType = "text"
    media_url: str | None = None
    reply_to: str | None = None


@attrs.frozen(slots=True)
class MessageEdit:
    """``body`` may be empty here: only the stored message knows whether it has a
    ``media_url``, so the chat capability refuses an empty body when it has none."""

    message_id: str
    body: str


@attrs.frozen(slots=True)
class MessageDelete:
    message_id: str


@attrs.frozen(slots=True)
class MessageHistory:
    """At most one of ``before_seq``, ``after_seq`` and ``changed_since`` is set."""

    conversation_id: str
    before_seq: int | None = None
    after_seq: int | None = None
    changed_since: int | None = None
    limit: int = MESSAGE_HISTORY_LIMIT[0]


@attrs.frozen(slots=True)
class MessageRead:
    conversation_id: str
    seq: int


@attrs.frozen(slots=True)
class TypingStart:
    conversation_id: str


@attrs.frozen(slots=True)
class TypingStop:
    conversation_id: str


@attrs.frozen(slots=True)
class PresenceSet:
    status: PresenceStatus
    message: str | None = None


@attrs.frozen(slots=True)
class PresenceQuery:
    user_ids: tuple[str, ...]


@attrs.frozen(slots=True)
class NotificationList:
    """At most one of ``cursor`` and ``after_seq`` is set."""

    cursor: str | None = None
    after_seq: int | None = None
    unread_only: bool = False
    limit: int = NOTIFICATION_LIST_LIMIT[0]


@attrs.frozen(slots=True)
class FeedActivities:
    """A read of one feed: filters (each optional), a page. ``since`` and ``until`` are RFC 3339 times."""

    feed: str
    actor: str | None = None
    verb: str | None = None
    object: str | None = None
    since: str | None = None
    until: str | None = None
    q: str | None = None
    cursor: str | None = None
    limit: int = FEED_ACTIVITIES_LIMIT[0]


@attrs.frozen(slots=True)
class NotificationRead:
    ids: tuple[str, ...]


@attrs.frozen(slots=True)
class NotificationDelete:
    ids: tuple[str, ...]


@attrs.frozen(slots=True)
class NotificationReadAll:
    pass


@attrs.frozen(slots=True)
class UserBlock:
    user_id: str


@attrs.frozen(slots=True)
class UserUnblock:
    user_id: str


# -- wire schemas (docs/protocol.md, docs/asyncapi.yaml) -----------------------------------------
# JSON Schema (draft 7, as AsyncAPI 3 reads it) of each op's data and reply, of each server
# event and of the records they carry, kept beside the validators they describe.
# ``realtimed.protocol_docs`` builds docs/asyncapi.yaml from them, and tests check that each
# op's data schema names exactly the fields of its typed value, with the validator's bounds.
# No schema forbids extra properties: clients ignore fields they do not know.

JsonSchema: TypeAlias = dict[str, Any]

WIRE_VERSION: Final = "1"
"""The version of the wire protocol (docs/protocol.md); it changes only by adding a version."""

ERROR_CODES: Final[tuple[str, ...]] = (
    BAD_REQUEST,
    VALIDATION_ERROR,
    UNAUTHORIZED,
    FORBIDDEN,
    NOT_FOUND,
    CONFLICT,
    BLOCKED,
    RATE_LIMITED,
    PAYLOAD_TOO_LARGE,
    UNAVAILABLE,
    INTERNAL,
)


@attrs.frozen(slots=True)
class CloseCode:
    """A WebSocket close code the server sends, and what a client does on it."""

    code: int
    name: str
    client_action: str


CLOSE_CODES: Final[tuple[CloseCode, ...]] = (
    CloseCode(1000, "normal", "stop"),
    CloseCode(1001, "going away: the server drains", "reconnect after the delay of the server.shutdown event before it"),
    CloseCode(1002, "protocol error (a WebSocket framing error)", "fix the client"),
    CloseCode(1003, "binary frame", "fix the client"),
    CloseCode(1007, "invalid UTF-8 in a text frame", "fix the client"),
    CloseCode(1009, "frame over gateway.max_frame_bytes", "fix the client"),
    CloseCode(4000, "no answer to heartbeats", "reconnect with backoff"),
    CloseCode(4004, "token expired", "get a fresh token, then reconnect"),
    CloseCode(4008, "slow consumer: the outbox overflowed", "reconnect, then resync"),
    CloseCode(4009, "rate-limit abuse", "reconnect after a longer backoff"),
    CloseCode(4012, "no auth frame in time", "reconnect"),
    CloseCode(4013, "node full or draining", "reconnect after a longer backoff, or to another node"),
    CloseCode(4501, "unauthorized: a bad token", "stop (a new token may be tried)"),
    CloseCode(4503, "banned", "stop"),
    CloseCode(4510, "disconnected by the server API", "stop"),
    CloseCode(4511, "too many sockets for this user (sent to the new socket)", "stop"),
)
"""Every close code realtimed sends: 4000 to 4499 are recoverable, 4500 to 4999 terminal."""

_NO_CONTROL: Final = r"^[^\u0000-\u001f\u007f-\u009f]*$"
_MEDIA_URL_PATTERN: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s\u0000-\u001f\u007f-\u009f]+$"
_SEGMENT: Final = r"[^\s\u0000-\u001f\u007f-\u009f*,:]+"


def _ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def _jstr(
    description: str = "",
    *,
    min_len: int | None = None,
    max_len: int | None = None,
    enum: tuple[str, ...] | None = None,
    pattern: str | None = None,
    fmt: str | None = None,
    nullable: bool = False,
) -> JsonSchema:
    out: JsonSchema = {"type": ["string", "null"] if nullable else "string"}
    if enum is not None:
        out["enum"] = [*enum, None] if nullable else list(enum)
    if min_len is not None:
        out["minLength"] = min_len
    if max_len is not None:
        out["maxLength"] = max_len
    if pattern is not None:
        out["pattern"] = pattern
    if fmt is not None:
        out["format"] = fmt
    if description:
        out["description"] = description
    return out


def _jint(description: str = "", *, lo: int | None = None, hi: int | None = None, default: int | None = None) -> JsonSchema:
    out: JsonSchema = {"type": "integer"}
    if lo is not None:
        out["minimum"] = lo
    if hi is not None:
        out["maximum"] = hi
    if default is not None:
        out["default"] = default
    if description:
        out["description"] = description
    return out


def _jbool(description: str = "", *, default: bool | None = None) -> JsonSchema:
    out: JsonSchema = {"type": "boolean"}
    if default is not None:
        out["default"] = default
    if description:
        out["description"] = description
    return out


def _jarray(items: JsonSchema, description: str = "", *, min_items: int | None = None, max_items: int | None = None) -> JsonSchema:
    out: JsonSchema = {"type": "array", "items": items}
    if min_items is not None:
        out["minItems"] = min_items
    if max_items is not None:
        out["maxItems"] = max_items
    if description:
        out["description"] = description
    return out


def _jobject(properties: Mapping[str, JsonSchema], *, required: tuple[str, ...] = (), description: str = "") -> JsonSchema:
    out: JsonSchema = {"type": "object"}
    if description:
        out["description"] = description
    if required:
        out["required"] = list(required)
    out["properties"] = dict(properties)
    return out


def _jall(properties: Mapping[str, JsonSchema], description: str = "") -> JsonSchema:
    """An object whose every property is always present."""
    return _jobject(properties, required=tuple(properties), description=description)


def _nullable(schema: JsonSchema) -> JsonSchema:
    return {"oneOf": [schema, {"type": "null"}]}


def _with(schema: JsonSchema, description: str) -> JsonSchema:
    """A ``$ref`` (or any schema) with a description of its own use."""
    return {"allOf": [schema], "description": description}


def _limit_schema(bounds: tuple[int, int]) -> JsonSchema:
    return _jint("page size", lo=1, hi=bounds[1], default=bounds[0])


TYPE_SCHEMAS: Final[Mapping[str, JsonSchema]] = MappingProxyType(
    {
        "RequestId": {
            "description": "chosen by the client: an integer, or a string of at most 64 characters",
            "oneOf": [{"type": "integer"}, {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS}],
        },
        "UserId": _jstr("a user id (the JWT sub)", min_len=1, max_len=MAX_USER_ID_CHARS, pattern=_NO_CONTROL),
        "Id": _jstr("an opaque record id", min_len=1, max_len=MAX_ID_CHARS, pattern=_NO_CONTROL),
        "Room": _jstr(
            "a room name: ':'-separated non-empty segments without whitespace, control characters, '*' or ','",
            min_len=1,
            max_len=MAX_ROOM_CHARS,
            pattern=f"^{_SEGMENT}(:{_SEGMENT})*$",
        ),
        "EventName": {
            **_jstr("an app event name, outside the reserved prefixes", min_len=1, max_len=MAX_EVENT_CHARS, pattern=_NO_CONTROL),
            "not": {"pattern": "^(" + "|".join(p.rstrip(".") for p in RESERVED_EVENT_PREFIXES) + r")\."},
        },
        "Seq": _jint("a position in a stream", lo=0, hi=MAX_SEQ),
        "Epoch": _jstr("the epoch of a room's history ('' for a room without history)", min_len=0, max_len=MAX_EPOCH_CHARS),
        "Time": _jstr("RFC 3339 UTC with milliseconds, e.g. 2026-11-22T10:00:00.000Z", fmt="date-time"),
        "Cursor": _jstr("an opaque page cursor", min_len=1, max_len=MAX_CURSOR_CHARS, pattern=_NO_CONTROL),
        "Since": _jall(
            {"seq": _ref("Seq"), "epoch": _ref("Epoch")},
            "the last position the client has of a room",
        ),
        "Error": _jobject(
            {
                "code": _jstr("the error code", enum=ERROR_CODES),
                "message": _jstr("what is wrong, for people; for VALIDATION_ERROR it starts with the field"),
                "field": _jstr("the field at fault (VALIDATION_ERROR, and PAYLOAD_TOO_LARGE for a body)"),
                "retry_after_ms": _jint("RATE_LIMITED: when to try again", lo=1),
                "correlation_id": _jstr("INTERNAL: the id of the server's log line"),
                "banned_until": _jstr("FORBIDDEN for a banned user: until when (null: no end)", fmt="date-time", nullable=True),
            },
            required=("code", "message"),
        ),
        "Message": _jall(
            {
                "id": _ref("Id"),
                "conversation_id": _ref("Id"),
                "seq": _jint("the message's place in its conversation, gap-free from 1", lo=1),
                "version": _jint("the conversation's version at the message's last change", lo=1),
                "sender_id": _ref("UserId"),
                "client_id": _jstr("the sender's idempotency key", min_len=1, max_len=MAX_CLIENT_ID_CHARS),
                "type": _jstr(enum=("text", "image", "file", "system")),
                "body": _jstr("'' once deleted"),
                "media_url": _jstr("null once deleted", nullable=True),
                "reply_to": _jstr("the id of a message of the same conversation", nullable=True),
                "created_at": _ref("Time"),
                "edited_at": _jstr(fmt="date-time", nullable=True),
                "deleted_at": _jstr(fmt="date-time", nullable=True),
                "deleted": _jbool(),
            }
        ),
        "Member": _jall(
            {"user_id": _ref("UserId"), "role": _jstr(enum=("owner", "member")), "joined_at": _ref("Time")}
        ),
        "Conversation": _jobject(
            {
                "id": _ref("Id"),
                "type": _jstr(enum=("direct", "group")),
                "title": _jstr("groups only", nullable=True),
                "members": _jarray(_ref("Member"), "current members"),
                "last_message": _nullable(_ref("Message")),
                "last_seq": _jint(lo=0),
                "version": _jint("rises with every append, edit and delete", lo=0),
                "updated_at": _ref("Time"),
                "unread_count": _jint("the asking member's (not in conversation.updated)", lo=0),
                "muted": _jbool("the asking member's (not in conversation.updated)"),
                "read_seq": _jint("the asking member's (not in conversation.updated)", lo=0),
            },
            required=("id", "type", "title", "members", "last_message", "last_seq", "version", "updated_at"),
        ),
        "MemberConversation": {
            "description": "a conversation as one member sees it",
            "allOf": [_ref("Conversation"), {"required": ["unread_count", "muted", "read_seq"]}],
        },
        "Notification": _jall(
            {
                "id": _ref("Id"),
                "seq": _jint("the notification's place in the user's inbox, gap-free from 1", lo=1),
                "type": _jstr("a notification type of the configuration"),
                "title": _jstr(),
                "body": _jstr(),
                "data": {"type": "object", "description": "the data given by the application"},
                "priority": _jstr(enum=("low", "normal", "high", "critical")),
                "group_key": _jstr(nullable=True),
                "created_at": _ref("Time"),
                "read_at": _jstr(fmt="date-time", nullable=True),
                "expires_at": _jstr(
                    "when it leaves the inbox and is no longer pushed (null: never)", fmt="date-time", nullable=True
                ),
            }
        ),
        "Publication": _jall(
            {"seq": _ref("Seq"), "event": _jstr(), "data": {"description": "as published"}, "published_at": _ref("Time")}
        ),
        "Presence": _jall(
            {
                "user_id": _ref("UserId"),
                "status": _jstr(enum=("online", "away", "busy", "offline")),
                "message": _jstr("null while offline", nullable=True),
                "last_seen": _jstr("when the user last turned offline", fmt="date-time", nullable=True),
            }
        ),
        "RoomUser": _jall({"user_id": _ref("UserId"), "sessions": _jint("the user's subscriptions to the room", lo=1)}),
        "Feed": _jstr(
            "a feed name: a room name of at most 195 characters (its room is feed:<name>), e.g. user:alice, team:t1, global",
            min_len=1,
            max_len=MAX_FEED_CHARS,
            pattern=f"^{_SEGMENT}(:{_SEGMENT})*$",
        ),
        "Activity": _jall(
            {
                "id": _ref("Id"),
                "actor": _jstr(min_len=1, max_len=MAX_ACTOR_CHARS),
                "verb": _jstr(min_len=1, max_len=MAX_VERB_CHARS),
                "object": _jstr(min_len=1, max_len=MAX_OBJECT_CHARS),
                "target": _jstr(max_len=MAX_OBJECT_CHARS, nullable=True),
                "time": _ref("Time"),
                "data": {"type": "object", "description": "the data given by the application"},
                "feeds": _jarray(_ref("Feed"), "every feed the activity was logged to"),
                "created_at": _with(_ref("Time"), "when it was logged"),
                "feed": _with(_ref("Feed"), "the feed it is read from"),
                "seq": _jint("its place in that feed, gap-free from 1", lo=1),
            },
            "an activity as read from one feed",
        ),
    }
)
"""The shared types and records of the wire, by name (``#/components/schemas/<name>``)."""

_EMPTY: Final[JsonSchema] = {"type": "object", "properties": {}}
_CONVERSATION_ID: Final = {"conversation_id": _ref("Id")}
_UNREAD: Final = _jall({"unread_count": _jint("the user's unread notifications", lo=0)})
_REPLY_CONVERSATION: Final = _jall({"conversation": _ref("MemberConversation")})
_REPLY_MESSAGE: Final = _jall({"message": _ref("Message")})


# -- the op registry ----------------------------------------------------------------------------

Validator: TypeAlias = Callable[[Mapping[str, Any], Limits], Any]


@attrs.frozen(slots=True)
class OpSpec:
    """One op of section 5: its name, the type of its validated data, its validator,
    and its documentation: a one-line summary and the JSON Schemas of its ``data``
    and of its reply's ``data`` (``{}`` for an op whose reply is empty)."""

    name: str
    value_type: type[Any]
    validator: Validator
    summary: str = ""
    data: JsonSchema = attrs.field(factory=lambda: dict(_EMPTY))
    reply: JsonSchema = attrs.field(factory=lambda: dict(_EMPTY))


_REGISTRY: dict[str, OpSpec] = {}
_V = TypeVar("_V")


def _op(
    name: str,
    value_type: type[_V],
    *,
    summary: str,
    data: JsonSchema = _EMPTY,
    reply: JsonSchema = _EMPTY,
) -> Callable[[Callable[[Mapping[str, Any], Limits], _V]], Validator]:
    def register(func: Callable[[Mapping[str, Any], Limits], _V]) -> Validator:
        _REGISTRY[name] = OpSpec(name, value_type, func, summary, dict(data), dict(reply))
        return func

    return register


@_op(
    "auth",
    Auth,
    summary="Authenticate as the first frame, or send a fresh token on an open socket (re-auth)",
    data=_jobject({"token": _jstr("a JWT", min_len=1, max_len=MAX_TOKEN_CHARS, pattern=_NO_CONTROL)}, required=("token",)),
    reply=_jall({"user_id": _ref("UserId"), "expires_at": _jstr(fmt="date-time", nullable=True)}),
)
def _auth(data: Mapping[str, Any], limits: Limits) -> Auth:
    return Auth(_string(data, "token", max_len=MAX_TOKEN_CHARS))


_PING: Final = Ping()


@_op("ping", Ping, summary="Ask for the server time (not activity)", reply=_jall({"server_time": _ref("Time")}))
def _ping(data: Mapping[str, Any], limits: Limits) -> Ping:
    return _PING


@_op(
    "subscribe",
    Subscribe,
    summary="Subscribe to an app room, recovering what was missed since a position",
    data=_jobject({"room": _ref("Room"), "since": _ref("Since")}, required=("room",)),
    reply=_jall(
        {
            "room": _ref("Room"),
            "seq": _with(_ref("Seq"), "the room's latest seq (0 without history)"),
            "epoch": _ref("Epoch"),
            "recovered": _jbool("true only when since was given and every missed publication follows"),
            "publications": _jarray(_ref("Publication"), "the missed publications, oldest first"),
        }
    ),
)
def _subscribe(data: Mapping[str, Any], limits: Limits) -> Subscribe:
    room = _room(data)
    raw = data.get("since")
    if raw is None:
        return Subscribe(room)
    if type(raw) is not dict:
        raise ValidationFailed("since", "must be an object {seq, epoch}")
    seq = _int(raw, "seq", lo=0, hi=MAX_SEQ, path="since.")
    epoch = _string(raw, "epoch", min_len=0, max_len=MAX_EPOCH_CHARS, path="since.")
    return Subscribe(room, Since(seq, epoch))


@_op("unsubscribe", Unsubscribe, summary="Leave an app room", data=_jobject({"room": _ref("Room")}, required=("room",)))
def _unsubscribe(data: Mapping[str, Any], limits: Limits) -> Unsubscribe:
    return Unsubscribe(_room(data))


@_op(
    "room.presence",
    RoomPresence,
    summary="Who is subscribed to a room whose namespace keeps presence",
    data=_jobject({"room": _ref("Room")}, required=("room",)),
    reply=_jall({"users": _jarray(_ref("RoomUser"))}),
)
def _room_presence(data: Mapping[str, Any], limits: Limits) -> RoomPresence:
    return RoomPresence(_room(data))


@_op(
    "publish",
    Publish,
    summary="Publish an app event to a room whose namespace allows client publishing",
    data=_jobject(
        {"room": _ref("Room"), "event": _ref("EventName"), "data": {"description": "any JSON value; absent: {}"}},
        required=("room", "event"),
    ),
    reply=_jobject(
        {"seq": _ref("Seq"), "epoch": _ref("Epoch")},
        description="seq and epoch only when the room keeps history; otherwise {}",
    ),
)
def _publish(data: Mapping[str, Any], limits: Limits) -> Publish:
    room = _room(data)
    raw_event = data.get("event")
    if raw_event is None:
        raise ValidationFailed("event", "is required")
    event = validate_event_name(raw_event)
    payload = data.get("data")
    return Publish(room, event, {} if payload is None else payload)


@_op(
    "conversation.open",
    ConversationOpen,
    summary="Find or create the 1:1 conversation with a user",
    data=_jobject({"user_id": _ref("UserId")}, required=("user_id",)),
    reply=_REPLY_CONVERSATION,
)
def _conversation_open(data: Mapping[str, Any], limits: Limits) -> ConversationOpen:
    return ConversationOpen(_user(data, "user_id"))


@_op(
    "conversation.create",
    ConversationCreate,
    summary="Create a group, the caller its owner",
    data=_jobject(
        {
            "member_ids": _jarray(_ref("UserId"), "the other members", min_items=1, max_items=MAX_MEMBER_IDS),
            "title": _jstr("empty: none", min_len=0, max_len=MAX_TITLE_CHARS, pattern=_NO_CONTROL),
        },
        required=("member_ids",),
    ),
    reply=_REPLY_CONVERSATION,
)
def _conversation_create(data: Mapping[str, Any], limits: Limits) -> ConversationCreate:
    members = _user_ids(data, "member_ids", min_items=1, max_items=MAX_MEMBER_IDS)
    title = _opt_string(data, "title", min_len=0, max_len=MAX_TITLE_CHARS)
    return ConversationCreate(members, title)


@_op(
    "conversation.list",
    ConversationList,
    summary="The caller's conversations, newest activity first",
    data=_jobject({"cursor": _ref("Cursor"), "limit": _limit_schema(CONVERSATION_LIST_LIMIT)}),
    reply=_jall(
        {
            "conversations": _jarray(_ref("MemberConversation")),
            "next_cursor": _jstr("null at the end", nullable=True),
            "unread_total": _jint("unread messages over the conversations not muted", lo=0),
        }
    ),
)
def _conversation_list(data: Mapping[str, Any], limits: Limits) -> ConversationList:
    return ConversationList(
        _opt_string(data, "cursor", max_len=MAX_CURSOR_CHARS), _limit(data, CONVERSATION_LIST_LIMIT)
    )


@_op(
    "conversation.mute",
    ConversationMute,
    summary="Mute or unmute a conversation for the caller",
    data=_jobject({**_CONVERSATION_ID, "muted": _jbool()}, required=("conversation_id", "muted")),
)
def _conversation_mute(data: Mapping[str, Any], limits: Limits) -> ConversationMute:
    return ConversationMute(_id(data, "conversation_id"), _bool(data, "muted"))


@_op(
    "conversation.leave",
    ConversationLeave,
    summary="Leave a group, or hide a direct conversation",
    data=_jobject(_CONVERSATION_ID, required=("conversation_id",)),
)
def _conversation_leave(data: Mapping[str, Any], limits: Limits) -> ConversationLeave:
    return ConversationLeave(_id(data, "conversation_id"))


@_op(
    "message.send",
    MessageSend,
    summary="Send a message, idempotent on client_id; answered once stored",
    data={
        **_jobject(
            {
                **_CONVERSATION_ID,
                "client_id": _jstr("the sender's idempotency key", min_len=1, max_len=MAX_CLIENT_ID_CHARS, pattern=_NO_CONTROL),
                "body": _jstr("at most chat.max_message_bytes of UTF-8; may be empty or absent with a media_url"),
                "type": {**_jstr(enum=tuple(_MESSAGE_TYPES)), "default": "text"},
                "media_url": _jstr("an http or https URL", min_len=1, max_len=MAX_MEDIA_URL_CHARS, pattern=_MEDIA_URL_PATTERN),
                "reply_to": _with(_ref("Id"), "a message of the same conversation"),
            },
            required=("conversation_id", "client_id"),
        ),
        "anyOf": [{"required": ["body"]}, {"required": ["media_url"]}],
    },
    reply=_REPLY_MESSAGE,
)
def _message_send(data: Mapping[str, Any], limits: Limits) -> MessageSend:
    conversation_id = _id(data, "conversation_id")
    client_id = _string(data, "client_id", max_len=MAX_CLIENT_ID_CHARS)
    media_url = _opt_string(data, "media_url", max_len=MAX_MEDIA_URL_CHARS)
    # Other clients render it: only web URLs, never javascript: or data:.
    if media_url is not None and not _MEDIA_URL.fullmatch(media_url):
        raise ValidationFailed("media_url", "must be an http or https URL")
    raw_body = data.get("body")
    if raw_body is None:
        if media_url is None:
            raise ValidationFailed("body", "is required")
        raw_body = ""
    body = _body(raw_body, max_bytes=limits.max_message_bytes, may_be_empty=media_url is not None)
    raw_kind = data.get("type")
    kind: MessageType = "text"
    if raw_kind is not None:
        found = _MESSAGE_TYPES.get(raw_kind) if type(raw_kind) is str else None
        if found is None:
            raise ValidationFailed("type", "must be one of text, image, file")
        kind = found
    return MessageSend(conversation_id, client_id, body, kind, media_url, _opt_id(data, "reply_to"))


@_op(
    "message.edit",
    MessageEdit,
    summary="Replace the body of one's own message",
    data=_jobject(
        {"message_id": _ref("Id"), "body": _jstr("as in message.send; empty only for a message with a media_url")},
        required=("message_id", "body"),
    ),
    reply=_REPLY_MESSAGE,
)
def _message_edit(data: Mapping[str, Any], limits: Limits) -> MessageEdit:
    message_id = _id(data, "message_id")
    raw_body = data.get("body")
    if raw_body is None:
        raise ValidationFailed("body", "is required")
    return MessageEdit(message_id, _body(raw_body, max_bytes=limits.max_message_bytes, may_be_empty=True))


@_op(
    "message.delete",
    MessageDelete,
    summary="Delete one's own message (it keeps its seq)",
    data=_jobject({"message_id": _ref("Id")}, required=("message_id",)),
)
def _message_delete(data: Mapping[str, Any], limits: Limits) -> MessageDelete:
    return MessageDelete(_id(data, "message_id"))


@_op(
    "message.history",
    MessageHistory,
    summary="A page of a conversation's messages, in ascending seq; at most one bound",
    data=_jobject(
        {
            **_CONVERSATION_ID,
            "before_seq": _with(_ref("Seq"), "the newest messages before this seq"),
            "after_seq": _with(_ref("Seq"), "the oldest messages after this seq"),
            "changed_since": _with(_ref("Seq"), "messages new, edited or deleted since this conversation version"),
            "limit": _limit_schema(MESSAGE_HISTORY_LIMIT),
        },
        required=("conversation_id",),
    ),
    reply=_jall(
        {
            "messages": _jarray(_ref("Message"), "ascending seq (changed_since: ascending version)"),
            "has_more": _jbool("more messages lie beyond this page, in its direction"),
            "version": _jint("the conversation's current version", lo=0),
        }
    ),
)
def _message_history(data: Mapping[str, Any], limits: Limits) -> MessageHistory:
    conversation_id = _id(data, "conversation_id")
    _exclusive(data, "before_seq", "after_seq", "changed_since")
    return MessageHistory(
        conversation_id,
        before_seq=_seq(data, "before_seq"),
        after_seq=_seq(data, "after_seq"),
        changed_since=_seq(data, "changed_since"),
        limit=_limit(data, MESSAGE_HISTORY_LIMIT),
    )


@_op(
    "message.read",
    MessageRead,
    summary="Move the caller's read cursor forward",
    data=_jobject({**_CONVERSATION_ID, "seq": _ref("Seq")}, required=("conversation_id", "seq")),
    reply=_jall({"read_seq": _jint("the cursor after the call", lo=0)}),
)
def _message_read(data: Mapping[str, Any], limits: Limits) -> MessageRead:
    return MessageRead(_id(data, "conversation_id"), _int(data, "seq", lo=0, hi=MAX_SEQ))


@_op(
    "typing.start",
    TypingStart,
    summary="The caller is typing (send without id, again every few seconds while typing)",
    data=_jobject(_CONVERSATION_ID, required=("conversation_id",)),
)
def _typing_start(data: Mapping[str, Any], limits: Limits) -> TypingStart:
    return TypingStart(_id(data, "conversation_id"))


@_op(
    "typing.stop",
    TypingStop,
    summary="The caller stopped typing (send without id)",
    data=_jobject(_CONVERSATION_ID, required=("conversation_id",)),
)
def _typing_stop(data: Mapping[str, Any], limits: Limits) -> TypingStop:
    return TypingStop(_id(data, "conversation_id"))


@_op(
    "presence.set",
    PresenceSet,
    summary="Choose a status and a status message (absent: none)",
    data=_jobject(
        {
            "status": _jstr(enum=tuple(_PRESENCE_STATUSES)),
            "message": _jstr(min_len=0, max_len=MAX_STATUS_MESSAGE_CHARS, pattern=_NO_CONTROL),
        },
        required=("status",),
    ),
)
def _presence_set(data: Mapping[str, Any], limits: Limits) -> PresenceSet:
    raw_status = data.get("status")
    if raw_status is None:
        raise ValidationFailed("status", "is required")
    status = _PRESENCE_STATUSES.get(raw_status) if type(raw_status) is str else None
    if status is None:
        raise ValidationFailed("status", "must be one of online, away, busy, invisible")
    message = _opt_string(data, "message", min_len=0, max_len=MAX_STATUS_MESSAGE_CHARS)
    return PresenceSet(status, message)


@_op(
    "presence.query",
    PresenceQuery,
    summary="The presence of contacts (other users are left out)",
    data=_jobject(
        {"user_ids": _jarray(_ref("UserId"), min_items=0, max_items=MAX_PRESENCE_QUERY)}, required=("user_ids",)
    ),
    reply=_jall(
        {"presences": {"type": "object", "description": "user id to presence", "additionalProperties": _ref("Presence")}}
    ),
)
def _presence_query(data: Mapping[str, Any], limits: Limits) -> PresenceQuery:
    return PresenceQuery(_user_ids(data, "user_ids", min_items=0, max_items=MAX_PRESENCE_QUERY))


@_op(
    "notification.list",
    NotificationList,
    summary="A page of the inbox: newest first, or ascending after after_seq",
    data=_jobject(
        {
            "cursor": _ref("Cursor"),
            "after_seq": _with(_ref("Seq"), "the oldest notifications after this seq, ascending"),
            "unread_only": _jbool(default=False),
            "limit": _limit_schema(NOTIFICATION_LIST_LIMIT),
        }
    ),
    reply=_jall(
        {"notifications": _jarray(_ref("Notification")), "next_cursor": _jstr("null at the end", nullable=True)}
    ),
)
def _notification_list(data: Mapping[str, Any], limits: Limits) -> NotificationList:
    _exclusive(data, "cursor", "after_seq")
    return NotificationList(
        cursor=_opt_string(data, "cursor", max_len=MAX_CURSOR_CHARS),
        after_seq=_seq(data, "after_seq"),
        unread_only=_bool(data, "unread_only", default=False),
        limit=_limit(data, NOTIFICATION_LIST_LIMIT),
    )


_TIME_FILTER: Final = _jstr(fmt="date-time", max_len=64)


@_op(
    "feed.activities",
    FeedActivities,
    summary="A page of an activity feed the caller may subscribe to: newest first, filtered",
    data=_jobject(
        {
            "feed": _ref("Feed"),
            "actor": _jstr("only this actor's", min_len=1, max_len=MAX_ACTOR_CHARS),
            "verb": _jstr("only this verb", min_len=1, max_len=MAX_VERB_CHARS),
            "object": _jstr("only about this object", min_len=1, max_len=MAX_OBJECT_CHARS),
            "since": _with(_TIME_FILTER, "only activities timed at or after this"),
            "until": _with(_TIME_FILTER, "only activities timed before this"),
            "q": _jstr("full-text search: every word must appear", min_len=1, max_len=MAX_SEARCH_CHARS),
            "cursor": _ref("Cursor"),
            "limit": _limit_schema(FEED_ACTIVITIES_LIMIT),
        },
        required=("feed",),
    ),
    reply=_jall({"activities": _jarray(_ref("Activity")), "next_cursor": _jstr("null at the end", nullable=True)}),
)
def _feed_activities(data: Mapping[str, Any], limits: Limits) -> FeedActivities:
    raw = data.get("feed")
    if raw is None:
        raise ValidationFailed("feed", "is required")
    return FeedActivities(
        feed=validate_feed(raw),
        actor=_opt_string(data, "actor", max_len=MAX_ACTOR_CHARS),
        verb=_opt_string(data, "verb", max_len=MAX_VERB_CHARS),
        object=_opt_string(data, "object", max_len=MAX_OBJECT_CHARS),
        since=_opt_string(data, "since", max_len=64),
        until=_opt_string(data, "until", max_len=64),
        q=_opt_string(data, "q", max_len=MAX_SEARCH_CHARS),
        cursor=_opt_string(data, "cursor", max_len=MAX_CURSOR_CHARS),
        limit=_limit(data, FEED_ACTIVITIES_LIMIT),
    )


@_op(
    "notification.read",
    NotificationRead,
    summary="Mark notifications read (unknown ids are ignored)",
    data=_jobject({"ids": _jarray(_ref("Id"), min_items=1, max_items=MAX_NOTIFICATION_IDS)}, required=("ids",)),
    reply=_UNREAD,
)
def _notification_read(data: Mapping[str, Any], limits: Limits) -> NotificationRead:
    return NotificationRead(_ids(data, "ids", max_items=MAX_NOTIFICATION_IDS))


@_op(
    "notification.delete",
    NotificationDelete,
    summary="Delete notifications (unknown ids are ignored)",
    data=_jobject({"ids": _jarray(_ref("Id"), min_items=1, max_items=MAX_NOTIFICATION_IDS)}, required=("ids",)),
    reply=_UNREAD,
)
def _notification_delete(data: Mapping[str, Any], limits: Limits) -> NotificationDelete:
    return NotificationDelete(_ids(data, "ids", max_items=MAX_NOTIFICATION_IDS))


_READ_ALL: Final = NotificationReadAll()


@_op("notification.read_all", NotificationReadAll, summary="Mark the whole inbox read", reply=_UNREAD)
def _notification_read_all(data: Mapping[str, Any], limits: Limits) -> NotificationReadAll:
    return _READ_ALL


@_op(
    "user.block",
    UserBlock,
    summary="Block a user from opening, sending to and typing in 1:1 conversations with the caller",
    data=_jobject({"user_id": _ref("UserId")}, required=("user_id",)),
)
def _user_block(data: Mapping[str, Any], limits: Limits) -> UserBlock:
    return UserBlock(_user(data, "user_id"))


@_op(
    "user.unblock",
    UserUnblock,
    summary="Lift a block",
    data=_jobject({"user_id": _ref("UserId")}, required=("user_id",)),
)
def _user_unblock(data: Mapping[str, Any], limits: Limits) -> UserUnblock:
    return UserUnblock(_user(data, "user_id"))


OP_SPECS: Final[Mapping[str, OpSpec]] = MappingProxyType(_REGISTRY)
"""Every op of section 5: name → ``OpSpec``."""

OPS: Final[frozenset[str]] = frozenset(_REGISTRY)
"""The names of every op of section 5."""

SOCKET_ONLY_OPS: Final[frozenset[str]] = frozenset({"auth", "ping"})
"""Ops that only make sense on a socket: the client REST (``POST /api/v1/ops/{op}``) runs the others."""

# -- server events (section 6) ------------------------------------------------------------------

Carried: TypeAlias = Literal["always", "optional", "never"]


@attrs.frozen(slots=True)
class EventSpec:
    """One server event of section 6, for the documentation (docs/asyncapi.yaml).

    Attributes:
        name: the event name (``*`` for the application's own events).
        summary: what it means, in one line.
        audience: who receives it.
        data: the JSON Schema of its ``data``.
        room, seq, epoch: whether the frame carries a top-level ``room``, ``seq``
            and ``epoch``: always, sometimes (``optional``) or never.
        doors: where it is sent: ``websocket``, ``sse`` or both.
    """

    name: str
    summary: str
    audience: str
    data: JsonSchema
    room: Carried = "never"
    seq: Carried = "never"
    epoch: Carried = "never"
    doors: tuple[str, ...] = ("websocket", "sse")


_EVERY_PARTICIPANT: Final = "every device of every participant, the sender's included"


def _events(*specs: EventSpec) -> Mapping[str, EventSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


EVENT_SPECS: Final[Mapping[str, EventSpec]] = _events(
    EventSpec(
        "session.ready",
        "The socket is authenticated; the first event of a session",
        "this socket or SSE stream",
        _jall(
            {
                "session_id": _jstr("s_ followed by an opaque id"),
                "user_id": _ref("UserId"),
                "node": _jstr("the node serving this socket"),
                "server_time": _ref("Time"),
                "heartbeat_s": {"type": "number", "description": "the server pings every this many seconds"},
                "expires_at": _jstr("when the token expires (null: never)", fmt="date-time", nullable=True),
                "unread_total": _jint("unread messages over the conversations not muted", lo=0),
                "notifications_unread": _jint("unread notifications", lo=0),
                "addresses": _jarray(
                    _ref("Room"),
                    "the rooms this device is in without subscribing: device:<session_id> first, then those "
                    "of its token's claims (auth.claim_rooms)",
                    min_items=1,
                ),
            }
        ),
    ),
    EventSpec(
        "session.expiring",
        "The token expires soon: send a fresh one with auth",
        "this socket",
        _jall({"expires_at": _ref("Time")}),
        doors=("websocket",),
    ),
    EventSpec(
        "session.closed",
        "The last event of an SSE stream: why it ends",
        "this SSE stream",
        _jall({"code": _jint("a close code of section 4"), "reason": _jstr()}),
        doors=("sse",),
    ),
    EventSpec(
        "server.shutdown",
        "The node drains: the connection closes next (1001); reconnect after the delay",
        "every socket and SSE stream of the node",
        _jall({"reconnect_after_ms": _jint(lo=0)}),
    ),
    EventSpec(
        "message.new",
        "A message was sent; top-level seq is its place in the conversation",
        _EVERY_PARTICIPANT,
        _jall({"message": _ref("Message")}),
        room="always",
        seq="always",
    ),
    EventSpec(
        "message.updated",
        "A message was edited (it keeps its seq; its version rose)",
        _EVERY_PARTICIPANT,
        _jall({"message": _ref("Message")}),
        room="always",
    ),
    EventSpec(
        "message.deleted",
        "A message was deleted (it keeps its seq; its body is gone)",
        _EVERY_PARTICIPANT,
        _jall({"message": _ref("Message")}),
        room="always",
    ),
    EventSpec(
        "receipt.updated",
        "A participant's read cursor moved",
        "every device of every participant",
        _jall(
            {
                "conversation_id": _ref("Id"),
                "user_id": _ref("UserId"),
                "read_seq": _jint(lo=0),
                "read_at": _jstr(fmt="date-time", nullable=True),
            }
        ),
        room="always",
    ),
    EventSpec(
        "typing.updated",
        "A participant started or stopped typing",
        "every device of the other participants",
        _jall({"conversation_id": _ref("Id"), "user_id": _ref("UserId"), "typing": _jbool()}),
        room="always",
    ),
    EventSpec(
        "conversation.updated",
        "A conversation was created, retitled, or its members changed (shared fields only)",
        "every device of every member (leaving: the leaver too)",
        _jall({"conversation": _ref("Conversation")}),
        room="always",
    ),
    EventSpec(
        "conversation.state",
        "One member's own state of a conversation changed, other than by a new message",
        "every device of that member",
        _jall(
            {
                "conversation_id": _ref("Id"),
                "read_seq": _jint(lo=0),
                "unread_count": _jint(lo=0),
                "muted": _jbool(),
                "unread_total": _jint(lo=0),
            }
        ),
        room="always",
    ),
    EventSpec(
        "presence.updated",
        "A contact's presence as others see it changed",
        "every device of each contact of the user (not the user's own)",
        _ref("Presence"),
    ),
    EventSpec(
        "notification.new",
        "A notification reached the inbox; top-level seq is its place in the inbox",
        "every device of the recipient",
        _jall({"notification": _ref("Notification")}),
        seq="always",
    ),
    EventSpec(
        "notification.read",
        "Notifications were read (ids), or all of them (up_to_seq)",
        "every device of the recipient, the one that read included",
        _jobject(
            {
                "ids": _jarray(_ref("Id"), "the ids as the reader gave them"),
                "up_to_seq": _jint("after notification.read_all: everything up to here", lo=0),
                "unread_count": _jint(lo=0),
            },
            required=("unread_count",),
        ),
    ),
    EventSpec(
        "notification.deleted",
        "Notifications were deleted",
        "every device of the recipient, the one that deleted included",
        _jall({"ids": _jarray(_ref("Id")), "unread_count": _jint(lo=0)}),
    ),
    EventSpec(
        "room.joined",
        "A user's first subscription to a room that keeps presence",
        "the room's other subscribers",
        _jall({"room": _ref("Room"), "user_id": _ref("UserId")}),
        room="always",
    ),
    EventSpec(
        "room.left",
        "A user's last subscription to a room that keeps presence ended",
        "the room's subscribers",
        _jall({"room": _ref("Room"), "user_id": _ref("UserId")}),
        room="always",
    ),
    EventSpec(
        "feed.activity",
        "An activity was logged to a feed; top-level seq is its place in the feed",
        "the subscribers of the feed's room (feed:<name>)",
        _jall({"activity": _ref("Activity")}),
        room="always",
        seq="always",
        epoch="always",
    ),
    EventSpec(
        "room.reset",
        "A room of Last-Event-ID could not be recovered: refetch its state",
        "this SSE stream",
        _jall({"room": _ref("Room"), "seq": _ref("Seq"), "epoch": _ref("Epoch")}),
        doors=("sse",),
    ),
)
"""realtimed's own events (their names use the reserved prefixes): name → ``EventSpec``."""

APP_EVENT: Final = EventSpec(
    "*",
    "An event of the application: a room publication (top-level room; seq and epoch in rooms that keep "
    "history) or an event to users (no room)",
    "the room's subscribers, or every device of the users named by the server API",
    {"description": "as published"},
    room="optional",
    seq="optional",
    epoch="optional",
)
"""The application's own events, under any name outside ``RESERVED_EVENT_PREFIXES``."""

_DEFAULT_LIMITS: Final = Limits()


def op_spec(op: str) -> OpSpec:
    """The spec of a known op; ``BadRequest`` for an unknown one."""
    spec = _REGISTRY.get(op)
    if spec is None:
        raise BadRequest(f"unknown op {op[:64]!r}")
    return spec


def validate(op: str, data: Mapping[str, Any], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Validate an op's ``data`` into its typed value (an instance of ``OP_SPECS[op].value_type``).

    Unknown fields are ignored; a field that is null counts as absent.

    Raises:
        BadRequest: the op is unknown.
        ValidationFailed: a field is missing, of the wrong type or out of range;
            the message starts with the field's name.
        PayloadTooLarge: a message body over ``max_message_bytes`` of UTF-8.
    """
    limits = (
        _DEFAULT_LIMITS
        if max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
        else Limits(max_message_bytes=max_message_bytes)
    )
    if type(data) is not dict and not isinstance(data, Mapping):
        raise ValidationFailed("data", "must be an object")
    return op_spec(op).validator(data, limits)
