"""The client side of realtimed's wire protocol, sans-IO.

Nothing here touches a socket or Trio: frames are encoded and parsed, request
arguments are checked the way the server checks them (so a bad argument is
refused before it is sent, with the error the server would give), close codes
are mapped to what the client does next, and reconnect delays are computed.
The connection logic in ``_client.py`` is built on these pieces; they are tested
synchronously.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from realtimed_client._errors import PAYLOAD_TOO_LARGE, RealtimeError, validation_error

# -- limits (as the server checks them) ---------------------------------------------------------

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
MAX_MEMBER_IDS: Final = 10_000
MAX_NOTIFICATION_IDS: Final = 1000
MAX_NOTIFICATION_TYPE_CHARS: Final = 64
MAX_TIME_ZONE_CHARS: Final = 64
# A field that names a preference key cuts the key at this length, as the server does.
MAX_PREFERENCE_KEY_CHARS: Final = 64
MAX_SEQ: Final = 2**63 - 1
DEFAULT_MAX_MESSAGE_BYTES: Final = 65_536
DEFAULT_MAX_FRAME_BYTES: Final = 524_288

CONVERSATION_LIST_MAX: Final = 100
MESSAGE_HISTORY_MAX: Final = 100
NOTIFICATION_LIST_MAX: Final = 100
FEED_ACTIVITIES_MAX: Final = 100

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
CONVERSATION_ROOM_PREFIX: Final = "conversation:"
# An activity feed's room is this prefix and the feed's name (docs/protocol.md section 5.6).
FEED_ROOM_PREFIX: Final = "feed:"
MAX_FEED_CHARS: Final = 195
MAX_ACTOR_CHARS: Final = 128
MAX_VERB_CHARS: Final = 64
MAX_OBJECT_CHARS: Final = 200
MAX_SEARCH_CHARS: Final = 200
MESSAGE_TYPES: Final = ("text", "image", "file")
PRESENCE_STATUSES: Final = ("online", "away", "busy", "invisible")
# The keys of a notification preference entry that are not delivery channels.
PREFERENCE_KEYS: Final = ("type", "channels")

# Ops whose repetition changes nothing a second time: reads, marks, the chat
# send (idempotent on its client_id), blocks. Only these are sent again after a
# lost connection or a RATE_LIMITED reply; any other op in flight then fails with
# DISCONNECTED, because it may or may not have been applied.
IDEMPOTENT_OPS: Final = frozenset(
    {
        "ping",
        "subscribe",
        "unsubscribe",
        "room.presence",
        "conversation.open",
        "conversation.list",
        "conversation.mute",
        "message.send",
        "message.history",
        "message.read",
        "presence.set",
        "presence.query",
        "notification.list",
        "feed.activities",
        "notification.read",
        "notification.read_all",
        "user.block",
        "user.unblock",
    }
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ROOM_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f*,]")
_MEDIA_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f-\x9f]+", re.IGNORECASE)


# -- frames -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A server event, as the application sees it.

    Attributes:
        name: the event name (``message.new``, ``job.progress``, ``room.reset``).
        data: the event's data.
        room: the room it belongs to (an app room, or ``conversation:<id>``).
        seq: its position in a durable stream (messages, notifications, app
            rooms with history).
        epoch: with ``seq`` in an app room, the history the position belongs to.
        replayed: True when the SDK fetched it after a reconnect or a gap (from
            room history, ``message.history`` or ``notification.list``) rather
            than receiving it live.
    """

    name: str
    data: Any
    room: str | None = None
    seq: int | None = None
    epoch: str | None = None
    replayed: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The event frame as the server sends it (``replayed`` is not part of it)."""
        frame: dict[str, Any] = {"event": self.name}
        if self.room is not None:
            frame["room"] = self.room
        if self.seq is not None:
            frame["seq"] = self.seq
        if self.epoch is not None:
            frame["epoch"] = self.epoch
        frame["data"] = self.data
        return frame


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to a request: ``data`` when ``ok``, else ``error``."""

    id: int | str | None
    ok: bool
    data: dict[str, Any]
    error: RealtimeError | None


def encode_request(request_id: int | str | None, op: str, data: Mapping[str, Any]) -> str:
    """The text of one request frame (no ``id``: fire-and-forget)."""
    frame: dict[str, Any] = {"op": op, "data": data}
    if request_id is not None:
        frame = {"id": request_id, **frame}
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_frame(text: str | bytes) -> Reply | Event | None:
    """Parse one server frame; None for anything that is neither a reply nor an event."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("event")
    if isinstance(name, str):
        room = obj.get("room")
        seq = obj.get("seq")
        epoch = obj.get("epoch")
        return Event(
            name,
            obj.get("data"),
            room if isinstance(room, str) else None,
            seq if type(seq) is int else None,
            epoch if isinstance(epoch, str) else None,
        )
    if "ok" in obj:
        request_id = obj.get("id")
        if obj.get("ok") is True:
            data = obj.get("data")
            return Reply(request_id, True, data if isinstance(data, dict) else {}, None)
        return Reply(request_id, False, {}, RealtimeError.from_wire(obj.get("error")))
    return None


# -- close codes --------------------------------------------------------------------------------


class CloseAction(enum.Enum):
    """What the client does after the socket closed with a given code."""

    RECONNECT = "reconnect"  # with backoff and full jitter
    SLOW_RECONNECT = "slow_reconnect"  # after a longer backoff (4009 abuse, 4013 node full)
    AFTER_SHUTDOWN = "after_shutdown"  # after the delay of the preceding server.shutdown (1001)
    REFRESH_TOKEN = "refresh_token"  # get a fresh token, then reconnect (4004)
    STOP = "stop"  # terminal: report and stay closed


_STOP_CODES: Final = frozenset({1000, 1003, 1009})


def close_action(code: int) -> CloseAction:
    """docs/protocol.md section 4's table: 1000 stop; 1001 reconnect after the
    ``server.shutdown`` delay; 1003 and 1009 stop (the client is at fault);
    4004 refresh the token; 4009 and 4013 a longer backoff; 4500 to 4999 stop;
    everything else (4000 to 4499, 1006, other 1xxx) reconnect with backoff."""
    if code in _STOP_CODES or 4500 <= code <= 4999:
        return CloseAction.STOP
    if code == 1001:
        return CloseAction.AFTER_SHUTDOWN
    if code == 4004:
        return CloseAction.REFRESH_TOKEN
    if code in (4009, 4013):
        return CloseAction.SLOW_RECONNECT
    return CloseAction.RECONNECT


CLOSE_NAMES: Final[Mapping[int, str]] = {
    1000: "normal",
    1001: "going away",
    1003: "binary frame",
    1006: "connection lost",
    1009: "frame too big",
    4000: "no answer to heartbeats",
    4004: "token expired",
    4008: "slow consumer",
    4009: "rate-limit abuse",
    4012: "auth timeout",
    4013: "node full",
    4501: "unauthorized",
    4503: "banned",
    4510: "disconnected by the server",
    4511: "too many sockets for this user",
}


def backoff_delay(attempt: int, *, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max_s, min_s * 2**attempt)]."""
    ceiling = min(max_s, min_s * (2 ** min(attempt, 32)))
    return (rng or random).uniform(0.0, ceiling)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), read without verifying it; None if absent."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def ws_url(url: str) -> str:
    """A WebSocket URL from ``ws(s)://…`` as given, or from an ``http(s)://host:port`` base (``/ws`` added)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {url!r} (expected ws://host:port/ws or http://host:port)")
    scheme = scheme.lower()
    if scheme in ("ws", "wss"):
        return url
    if scheme in ("http", "https"):
        host, slash, path = rest.partition("/")
        return f"{'wss' if scheme == 'https' else 'ws'}://{host}/{path if slash and path else 'ws'}"
    raise ValueError(f"unsupported URL scheme {scheme!r} (expected ws, wss, http or https)")


def http_base(url: str) -> str:
    """The HTTP base URL (``http(s)://host:port``) of the daemon behind a WebSocket URL."""
    scheme, _, rest = ws_url(url).partition("://")
    host = rest.partition("/")[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}"


# -- argument checks (as realtimed/protocol.py does them) ---------------------------------------


def _string(value: object, field: str, *, max_len: int, min_len: int = 1, control_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise validation_error(field, "must be a string")
    if not min_len <= len(value) <= max_len:
        if min_len == 0:
            raise validation_error(field, f"must be at most {max_len} characters")
        raise validation_error(field, f"must be {min_len} to {max_len} characters")
    if not control_ok and _CONTROL.search(value):
        raise validation_error(field, "must not contain control characters")
    return value


def _opt_string(value: object, field: str, *, max_len: int, min_len: int = 1) -> str | None:
    return None if value is None else _string(value, field, max_len=max_len, min_len=min_len)


def check_id(value: object, field: str) -> str:
    """An opaque record id (conversation, message, notification)."""
    return _string(value, field, max_len=MAX_ID_CHARS)


def check_user_id(value: object, field: str = "user_id") -> str:
    return _string(value, field, max_len=MAX_USER_ID_CHARS)


def check_room(value: object, field: str = "room") -> str:
    """A room name: 1 to 200 characters, ``:``-separated non-empty segments, no
    whitespace, control characters, ``*`` or ``,``."""
    if not isinstance(value, str):
        raise validation_error(field, "must be a string")
    if not value:
        raise validation_error(field, "must not be empty")
    if len(value) > MAX_ROOM_CHARS:
        raise validation_error(field, f"must be at most {MAX_ROOM_CHARS} characters")
    if _ROOM_FORBIDDEN.search(value):
        raise validation_error(field, "must not contain whitespace, control characters, '*' or ','")
    if value[0] == ":" or value[-1] == ":" or "::" in value:
        raise validation_error(field, "segments separated by ':' must not be empty")
    return value


def check_feed(value: object, field: str = "feed") -> str:
    """A feed name: a room name of at most 195 characters (``user:alice``, ``team:t1``, ``global``)."""
    feed = check_room(value, field)
    if len(feed) > MAX_FEED_CHARS:
        raise validation_error(field, f"must be at most {MAX_FEED_CHARS} characters")
    return feed


def feed_room(feed: str) -> str:
    """The room of a feed: ``feed:<name>``."""
    return FEED_ROOM_PREFIX + check_feed(feed)


def check_event_name(value: object, field: str = "event") -> str:
    name = _string(value, field, max_len=MAX_EVENT_CHARS)
    if name.startswith(RESERVED_EVENT_PREFIXES):
        raise validation_error(field, f"{name!r} uses a reserved prefix")
    return name


def check_int(value: object, field: str, *, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise validation_error(field, "must be an integer")
    if not lo <= value <= hi:
        raise validation_error(field, f"must be between {lo} and {hi}")
    return value


def check_seq(value: object, field: str) -> int:
    return check_int(value, field, lo=0, hi=MAX_SEQ)


def check_bool(value: object, field: str) -> bool:
    if type(value) is not bool:
        raise validation_error(field, "must be true or false")
    return value


def check_body(value: object, *, max_bytes: int, may_be_empty: bool) -> str:
    """A message body: UTF-8 of at most ``max_bytes`` (``PAYLOAD_TOO_LARGE`` over it)."""
    if not isinstance(value, str):
        raise validation_error("body", "must be a string")
    if not value and not may_be_empty:
        raise validation_error("body", "must not be empty (unless media_url is set)")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise validation_error("body", "must be valid Unicode text") from None
    if size > max_bytes:
        raise RealtimeError(PAYLOAD_TOO_LARGE, f"body: must be at most {max_bytes} bytes of UTF-8", "body")
    return value


def _user_ids(values: object, field: str, *, min_items: int, max_items: int) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise validation_error(field, "must be a list")
    items = list(values)
    if not min_items <= len(items) <= max_items:
        raise validation_error(field, f"must have {min_items} to {max_items} items")
    for i, item in enumerate(items):
        check_user_id(item, f"{field}[{i}]")
    return list(dict.fromkeys(items))


def _ids(values: object, field: str, *, max_items: int) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise validation_error(field, "must be a list")
    items = list(values)
    if not 1 <= len(items) <= max_items:
        raise validation_error(field, f"must have 1 to {max_items} items")
    for i, item in enumerate(items):
        check_id(item, f"{field}[{i}]")
    return list(dict.fromkeys(items))


def _limit(value: object, most: int) -> dict[str, Any]:
    return {} if value is None else {"limit": check_int(value, "limit", lo=1, hi=most)}


def _exclusive(**given: object) -> None:
    names = [name for name, value in given.items() if value is not None]
    if len(names) > 1:
        raise validation_error(names[1], f"cannot be combined with {names[0]}")


# -- the data of each op ------------------------------------------------------------------------


def subscribe_data(room: object, since: tuple[int, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"room": check_room(room)}
    if since is not None:
        if not isinstance(since, tuple) or len(since) != 2:
            raise validation_error("since", "must be a (seq, epoch) pair")
        data["since"] = {
            "seq": check_seq(since[0], "since.seq"),
            "epoch": _string(since[1], "since.epoch", min_len=0, max_len=MAX_EPOCH_CHARS),
        }
    return data


def publish_data(room: object, event: object, data: object) -> dict[str, Any]:
    return {"room": check_room(room), "event": check_event_name(event), "data": {} if data is None else data}


def conversation_create_data(member_ids: object, title: object = None) -> dict[str, Any]:
    data: dict[str, Any] = {"member_ids": _user_ids(member_ids, "member_ids", min_items=1, max_items=MAX_MEMBER_IDS)}
    if title is not None:
        data["title"] = _string(title, "title", min_len=0, max_len=MAX_TITLE_CHARS)
    return data


def conversation_list_data(cursor: object = None, limit: object = None) -> dict[str, Any]:
    data: dict[str, Any] = _limit(limit, CONVERSATION_LIST_MAX)
    if cursor is not None:
        data["cursor"] = _string(cursor, "cursor", max_len=MAX_CURSOR_CHARS)
    return data


def message_send_data(
    conversation_id: object,
    client_id: object,
    body: object,
    *,
    type: object = None,
    media_url: object = None,
    reply_to: object = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "conversation_id": check_id(conversation_id, "conversation_id"),
        "client_id": _string(client_id, "client_id", max_len=MAX_CLIENT_ID_CHARS),
    }
    url = _opt_string(media_url, "media_url", max_len=MAX_MEDIA_URL_CHARS)
    if url is not None:
        if not _MEDIA_URL.fullmatch(url):
            raise validation_error("media_url", "must be an http or https URL")
        data["media_url"] = url
    if body is None:
        if url is None:
            raise validation_error("body", "is required")
        body = ""
    data["body"] = check_body(body, max_bytes=max_message_bytes, may_be_empty=url is not None)
    if type is not None:
        if type not in MESSAGE_TYPES:
            raise validation_error("type", "must be one of text, image, file")
        data["type"] = type
    if reply_to is not None:
        data["reply_to"] = check_id(reply_to, "reply_to")
    return data


def message_edit_data(message_id: object, body: object, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    return {
        "message_id": check_id(message_id, "message_id"),
        "body": check_body(body, max_bytes=max_message_bytes, may_be_empty=True),
    }


def message_history_data(
    conversation_id: object,
    *,
    before_seq: object = None,
    after_seq: object = None,
    changed_since: object = None,
    limit: object = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"conversation_id": check_id(conversation_id, "conversation_id")}
    _exclusive(before_seq=before_seq, after_seq=after_seq, changed_since=changed_since)
    for name, value in (("before_seq", before_seq), ("after_seq", after_seq), ("changed_since", changed_since)):
        if value is not None:
            data[name] = check_seq(value, name)
    data.update(_limit(limit, MESSAGE_HISTORY_MAX))
    return data


def presence_set_data(status: object, message: object = None) -> dict[str, Any]:
    if status not in PRESENCE_STATUSES:
        raise validation_error("status", "must be one of online, away, busy, invisible")
    data: dict[str, Any] = {"status": status}
    if message is not None:
        data["message"] = _string(message, "message", min_len=0, max_len=MAX_STATUS_MESSAGE_CHARS)
    return data


def presence_query_data(user_ids: object) -> dict[str, Any]:
    return {"user_ids": _user_ids(user_ids, "user_ids", min_items=0, max_items=MAX_PRESENCE_QUERY)}


def notification_list_data(
    *, cursor: object = None, after_seq: object = None, unread_only: object = None, limit: object = None
) -> dict[str, Any]:
    _exclusive(cursor=cursor, after_seq=after_seq)
    data: dict[str, Any] = _limit(limit, NOTIFICATION_LIST_MAX)
    if cursor is not None:
        data["cursor"] = _string(cursor, "cursor", max_len=MAX_CURSOR_CHARS)
    if after_seq is not None:
        data["after_seq"] = check_seq(after_seq, "after_seq")
    if unread_only is not None:
        data["unread_only"] = check_bool(unread_only, "unread_only")
    return data


def _time_text(value: object, field: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise validation_error(field, "must be an aware datetime")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return _string(value, field, max_len=64)


def feed_activities_data(
    feed: object,
    *,
    actor: object = None,
    verb: object = None,
    object: object = None,
    since: object = None,
    until: object = None,
    q: object = None,
    cursor: object = None,
    limit: object = None,
) -> dict[str, Any]:
    """The data of ``feed.activities`` (docs/protocol.md section 5.6)."""
    data: dict[str, Any] = {"feed": check_feed(feed), **_limit(limit, FEED_ACTIVITIES_MAX)}
    for name, value, most in (("actor", actor, MAX_ACTOR_CHARS), ("verb", verb, MAX_VERB_CHARS),
                              ("object", object, MAX_OBJECT_CHARS), ("q", q, MAX_SEARCH_CHARS),
                              ("cursor", cursor, MAX_CURSOR_CHARS)):
        if value is not None:
            data[name] = _string(value, name, max_len=most)
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            data[name] = _time_text(value, name)
    return data


def notification_ids_data(ids: object) -> dict[str, Any]:
    return {"ids": _ids(ids, "ids", max_items=MAX_NOTIFICATION_IDS)}


def preferences_data(preferences: object) -> dict[str, Any]:
    """The body of ``PUT /notifications/preferences`` (docs/protocol.md section 8.3).

    ``types``: entries ``{type, <channel>: True, False or None}`` naming any
    delivery channel (the server refuses one it does not have; None keeps the
    setting, as does a channel not named); ``channels`` is ignored, so an entry
    of ``get_preferences`` may be sent back as it is. ``quiet_hours``:
    ``{start, end}`` or None. ``time_zone``: an IANA name.
    """
    data = check_data(preferences)
    if "types" in data:
        types = data["types"]
        if not isinstance(types, (list, tuple)):
            raise validation_error("types", "must be a list of {type, <channel>: True, False or None}")
        for i, item in enumerate(types):
            field = f"types[{i}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
                raise validation_error(field, "must be an object with a type")
            _string(item["type"], f"{field}.type", max_len=MAX_NOTIFICATION_TYPE_CHARS)
            for key, value in item.items():
                if not isinstance(key, str):
                    raise validation_error(field, f"keys must be strings, not {key!r:.64}")
                if key not in PREFERENCE_KEYS and value is not None and type(value) is not bool:
                    raise validation_error(f"{field}.{key[:MAX_PREFERENCE_KEY_CHARS]}", "must be True, False or None")
    quiet = data.get("quiet_hours")
    if quiet is not None and not (
        isinstance(quiet, Mapping) and isinstance(quiet.get("start"), str) and isinstance(quiet.get("end"), str)
    ):
        raise validation_error("quiet_hours", 'must be None or {"start": "HH:MM", "end": "HH:MM"}')
    if "time_zone" in data:
        _string(data["time_zone"], "time_zone", max_len=MAX_TIME_ZONE_CHARS)
    return data


def check_op(op: object) -> str:
    """An op name for ``Client.request`` (any op, so that a newer server's ops work too)."""
    return _string(op, "op", max_len=MAX_EVENT_CHARS)


def check_data(data: object) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise validation_error("data", "must be an object")
    return data


def reserved(name: str) -> bool:
    return name.startswith(RESERVED_EVENT_PREFIXES)


def matches(patterns: Sequence[str], name: str) -> bool:
    """Whether an event name matches a listener's patterns (exact names, or prefixes ending in '.')."""
    if not patterns:
        return True
    return any(pattern == name or (pattern.endswith(".") and name.startswith(pattern)) for pattern in patterns)
