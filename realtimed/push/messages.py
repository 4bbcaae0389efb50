"""FCM HTTP v1 messages: building them, and refusing what FCM would refuse.

A message is the ``message`` object of ``messages:send`` without its target
(``token`` or ``topic`` is added by the sender). ``build_message`` gives every
platform what it needs from one title and body: the shared ``notification``,
``android`` (priority, ttl, channel id, collapse key, sound), ``apns`` (headers
with priority, collapse id and expiration; ``aps`` with badge and sound) and
``webpush`` (Urgency and TTL headers, a tag, a link).

Size: FCM refuses a message whose payload is over 4,096 bytes (2,048 to a
topic). ``payload_size`` measures the whole JSON of the message without its
target, which is never less than what FCM counts, so a message that passes
here is not refused for its size there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import orjson

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_TOPIC_PAYLOAD_BYTES",
    "build_message",
    "check_message",
    "merge_platform",
    "payload_size",
    "string_data",
]

MAX_PAYLOAD_BYTES: Final = 4096
MAX_TOPIC_PAYLOAD_BYTES: Final = 2048
MAX_TTL_S: Final = 2_419_200  # four weeks
_RESERVED_DATA_KEYS: Final = frozenset({"from", "message_type", "notification"})
_RESERVED_DATA_PREFIXES: Final = ("google", "gcm")
_TARGETS: Final = ("token", "topic", "condition")
_MAX_COLLAPSE_ID_BYTES: Final = 64  # apns-collapse-id

# notification priority → (android priority, apns-priority, webpush Urgency)
_PRIORITY: Final[dict[str, tuple[str, str, str]]] = {
    "low": ("NORMAL", "5", "low"),
    "normal": ("NORMAL", "5", "normal"),
    "high": ("HIGH", "10", "high"),
    "critical": ("HIGH", "10", "high"),
}


def string_data(data: Mapping[str, Any]) -> dict[str, str]:
    """FCM data values are strings: others are sent JSON-encoded."""
    out: dict[str, str] = {}
    for key, value in data.items():
        out[str(key)] = value if isinstance(value, str) else orjson.dumps(value).decode()
    return out


def build_message(
    *,
    title: str,
    body: str,
    data: Mapping[str, Any] | None = None,
    priority: str = "normal",
    collapse_key: str | None = None,
    channel_id: str = "",
    sound: str = "default",
    ttl_s: float | None = None,
    badge: int | None = None,
    link: str | None = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """One message for every platform (without a target); ``expires_at`` becomes
    APNs' ``apns-expiration`` (Android and the web take ``ttl_s``)."""
    android_priority, apns_priority, urgency = _PRIORITY.get(priority, _PRIORITY["normal"])
    message: dict[str, Any] = {"notification": _drop_empty({"title": title, "body": body})}
    if data:
        message["data"] = string_data(data)

    android_note: dict[str, Any] = {}
    if channel_id:
        android_note["channel_id"] = channel_id
    if sound:
        android_note["sound"] = sound
    if collapse_key:
        android_note["tag"] = collapse_key
    android: dict[str, Any] = {"priority": android_priority}
    if ttl_s is not None:
        android["ttl"] = _duration(ttl_s)
    if collapse_key:
        android["collapse_key"] = collapse_key
    if android_note:
        android["notification"] = android_note
    message["android"] = android

    headers = {"apns-priority": apns_priority}
    if collapse_key and len(collapse_key.encode()) <= _MAX_COLLAPSE_ID_BYTES:
        headers["apns-collapse-id"] = collapse_key
    if expires_at is not None:
        headers["apns-expiration"] = str(int(expires_at.timestamp()))
    aps: dict[str, Any] = {}
    if badge is not None:
        aps["badge"] = badge
    if sound:
        aps["sound"] = sound
    if priority == "critical":
        aps["interruption-level"] = "time-sensitive"
    apns: dict[str, Any] = {"headers": headers}
    if aps:
        apns["payload"] = {"aps": aps}
    message["apns"] = apns

    web_headers = {"Urgency": urgency}
    if ttl_s is not None:
        web_headers["TTL"] = str(int(min(ttl_s, MAX_TTL_S)))
    webpush: dict[str, Any] = {"headers": web_headers}
    if collapse_key:
        webpush["notification"] = {"tag": collapse_key}
    if link:
        webpush["fcm_options"] = {"link": link}
    message["webpush"] = webpush
    return message


def merge_platform(message: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge caller-given ``android`` / ``apns`` / ``webpush`` options into a message."""
    out = dict(message)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_platform(out[key], value)
        else:
            out[key] = value
    return out


def payload_size(message: Mapping[str, Any]) -> int:
    """Bytes of the message's JSON without its target."""
    return len(orjson.dumps({k: v for k, v in message.items() if k not in _TARGETS}))


def check_message(message: Mapping[str, Any], *, to_topic: bool = False) -> str | None:
    """What FCM would refuse in this message before any request, or None."""
    limit = MAX_TOPIC_PAYLOAD_BYTES if to_topic else MAX_PAYLOAD_BYTES
    size = payload_size(message)
    if size > limit:
        where = "to a topic " if to_topic else ""
        return f"the push payload is {size} bytes, over FCM's limit of {limit} bytes {where}(shorten the body or data)"
    data = message.get("data") or {}
    if not isinstance(data, Mapping):
        return "data must be an object"
    for key, value in data.items():
        if key in _RESERVED_DATA_KEYS or key.lower().startswith(_RESERVED_DATA_PREFIXES):
            return f"data key {key!r} is reserved by FCM"
        if not isinstance(value, str):
            return f"data value of {key!r} must be a string"
    return None


def _duration(seconds: float) -> str:
    """A protobuf Duration as FCM reads it: ``"3.5s"``."""
    seconds = min(max(seconds, 0.0), float(MAX_TTL_S))
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _drop_empty(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}
