"""Property tests of the sans-IO wire protocol: whatever arrives either parses into
something that encodes and replays, or is refused with one of the protocol's errors.

Covered: client frames (section 4), every op's data (section 5), the SSE
``Last-Event-ID`` cursor and the store's page cursors. Generation is bounded and
deterministic (``derandomize=True``, no example database), so a failure here
fails the same way on every machine. JSON nesting stays modest (the generated
values are at most a few levels deep): the depth limit is the gateway's business.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import attrs
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from realtimed import protocol
from realtimed.errors import (
    BAD_REQUEST,
    PAYLOAD_TOO_LARGE,
    VALIDATION_ERROR,
    BadRequest,
    PayloadTooLarge,
    ValidationFailed,
)
from realtimed.gateway.sse import decode_cursor as decode_last_event_id
from realtimed.gateway.sse import encode_cursor as encode_last_event_id
from realtimed.protocol import (
    MAX_EPOCH_CHARS,
    MAX_SEQ,
    OP_SPECS,
    OPS,
    FrameError,
    Request,
    parse_frame,
    validate,
)
from realtimed.store.paging import decode_cursor as decode_page_cursor
from realtimed.store.paging import decode_time_cursor
from realtimed.store.paging import encode_cursor as encode_page_cursor
from realtimed.store.values import from_micros, to_micros

_FUZZ: Final = settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much),
)
# Round trips of what realtimed itself wrote, and the unknown-op refusal: simpler
# properties that need fewer examples.
_FUZZ_LIGHT: Final = settings(_FUZZ, max_examples=100)

# -- strategies ------------------------------------------------------------------------------------
# Values as ``orjson.loads`` produces them: no surrogates, 64-bit integers (signed or
# unsigned), finite floats.

_TEXT = st.text(st.characters(codec="utf-8"), max_size=24)
_INT = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, -1, 1, 2**31, MAX_SEQ, MAX_SEQ + 1, 2**64 - 1, -(2**63)]),
)
_SCALAR = st.one_of(
    st.none(), st.booleans(), _INT, st.floats(allow_nan=False, allow_infinity=False), _TEXT
)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=12,
)


def _sized(lengths: list[int], alphabet: str = "ab") -> st.SearchStrategy[str]:
    """Strings at and around a length limit."""
    return st.builds(lambda n, c: c * n, st.sampled_from(lengths), st.sampled_from(alphabet))


_VALID_ROOM = st.from_regex(r"\A[a-z0-9_.-]{1,8}(:[a-z0-9_.-]{1,8}){0,3}\Z")
_ROOM = st.one_of(
    _VALID_ROOM,
    st.sampled_from(["job:1", "a", ":a", "a:", "a::b", "a b", "a*", "a,b", "\x85x", "team:7:*"]),
    _sized([protocol.MAX_ROOM_CHARS, protocol.MAX_ROOM_CHARS + 1]),
)
_VALID_ID = st.from_regex(r"\A[a-z0-9_]{1,16}\Z")
_WIRE_ID = st.one_of(
    _VALID_ID,
    st.sampled_from(["", "\x00", "a\nb", "u\x7f"]),
    _sized([protocol.MAX_ID_CHARS, protocol.MAX_ID_CHARS + 1, protocol.MAX_CLIENT_ID_CHARS + 1]),
)
_STRING_FIELD = st.one_of(
    _TEXT,
    _WIRE_ID,
    _ROOM,
    st.sampled_from(
        ["text", "image", "file", "video", "online", "away", "busy", "invisible", "gone",
         "https://cdn.example/a.png", "javascript:alert(1)", "http://", "my.event", "message.new", "room.x"]
    ),
    _sized([0, 100, 101, 200, 201, 512, 513], "xé"),
)
_LIST_FIELD = st.lists(st.one_of(_WIRE_ID, _SCALAR), max_size=6)
_FIELD_VALUE = st.one_of(
    _STRING_FIELD,
    _INT,
    st.booleans(),
    st.none(),
    _LIST_FIELD,
    st.fixed_dictionaries({}, optional={"seq": _INT, "epoch": st.one_of(_TEXT, _sized([128, 129]))}),
    _JSON,
)
_ALL_FIELDS: Final = sorted({f.name for spec in OP_SPECS.values() for f in attrs.fields(spec.value_type)})
_PLAIN = st.text(st.characters(codec="utf-8", exclude_categories=("Cc",)), max_size=24)
_SEQ = st.integers(0, MAX_SEQ)
_VALID_FIELD: Final[dict[str, st.SearchStrategy[Any]]] = {
    "token": _VALID_ID,
    "room": _VALID_ROOM,
    "since": st.fixed_dictionaries({"seq": _SEQ, "epoch": _PLAIN}),
    "event": st.from_regex(r"\Aapp\.[a-z0-9_.]{0,20}\Z"),
    "data": _JSON,
    "user_id": _VALID_ID,
    "member_ids": st.lists(_VALID_ID, min_size=1, max_size=5),
    "user_ids": st.lists(_VALID_ID, max_size=5),
    "ids": st.lists(_VALID_ID, min_size=1, max_size=5),
    "title": _PLAIN,
    "message": _PLAIN,
    # At most one of these may be given (a null one counts as absent).
    "cursor": st.one_of(st.none(), _VALID_ID),
    "limit": st.integers(1, 100),
    "conversation_id": _VALID_ID,
    "message_id": _VALID_ID,
    "reply_to": _VALID_ID,
    "client_id": _VALID_ID,
    "muted": st.booleans(),
    "unread_only": st.booleans(),
    "body": st.one_of(st.text(st.characters(codec="utf-8"), max_size=24), _sized([0, 4, 5, 16, 17], "aé€😀")),
    "type": st.sampled_from(["text", "image", "file"]),
    "media_url": _VALID_ID.map(lambda name: f"https://cdn.example/{name}.png"),
    "status": st.sampled_from(["online", "away", "busy", "invisible"]),
    "seq": _SEQ,
    "before_seq": st.one_of(st.none(), _SEQ),
    "after_seq": st.one_of(st.none(), _SEQ),
    "changed_since": st.one_of(st.none(), _SEQ),
    "feed": _VALID_ROOM,
    "actor": _VALID_ID,
    "verb": _VALID_ID,
    "object": _VALID_ID,
    "until": st.one_of(st.none(), st.sampled_from(["2026-01-01T00:00:00Z", "2026-12-31T23:59:59.999Z"])),
    "q": st.one_of(st.none(), _PLAIN.filter(bool)),
}
_ABSENT: Final = object()


def _mostly_valid(field: str) -> st.SearchStrategy[Any]:
    """A valid value nine times in ten; otherwise absent, or anything."""
    return st.integers(0, 19).flatmap(
        lambda roll: _VALID_FIELD[field] if roll < 18 else st.just(_ABSENT) if roll == 18 else _FIELD_VALUE
    )


def _op_data(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """Data for ``op``: its own fields, each mostly valid, sometimes absent or anything; or
    any fields at all."""
    own = {f.name: _mostly_valid(f.name) for f in attrs.fields(OP_SPECS[op].value_type)}
    return st.one_of(
        st.fixed_dictionaries(own).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT}),
        st.fixed_dictionaries(own).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT}),
        st.dictionaries(st.sampled_from(_ALL_FIELDS) | _TEXT, _FIELD_VALUE, max_size=6),
    )


_OP_AND_DATA = st.sampled_from(sorted(OPS)).flatmap(lambda op: st.tuples(st.just(op), _op_data(op)))

_FRAME_OBJECT = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(_INT, _TEXT, _sized([64, 65]), _SCALAR, _JSON),
        "op": st.one_of(st.sampled_from(sorted(OPS)), _TEXT, _SCALAR),
        "data": st.one_of(_JSON, st.sampled_from(sorted(OPS)).flatmap(_op_data)),
        "extra": _JSON,
    },
)


def _mangled(raw: bytes) -> st.SearchStrategy[bytes]:
    """The bytes as sent, or cut short, or with a byte changed."""
    if not raw:
        return st.just(raw)
    return st.one_of(
        st.just(raw),
        st.integers(0, len(raw) - 1).map(lambda i: raw[:i]),
        st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)).map(
            lambda t: raw[: t[0]] + bytes([t[1]]) + raw[t[0] + 1 :]
        ),
    )


_FRAME_TEXT = st.one_of(
    _FRAME_OBJECT.map(orjson.dumps).flatmap(_mangled),
    _JSON.map(orjson.dumps),
    st.binary(max_size=64),
)


# -- frames (section 4) -------------------------------------------------------------------------


def _frame_bytes(request: Request) -> bytes:
    frame: dict[str, Any] = {"op": request.op, "data": request.data}
    if request.id is not None:
        frame["id"] = request.id
    return orjson.dumps(frame)


@_FUZZ
@given(raw=_FRAME_TEXT, as_text=st.booleans())
def test_any_frame_parses_and_replays_or_is_refused(raw: bytes, as_text: bool) -> None:
    text: str | bytes = raw
    if as_text:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    result = parse_frame(text)
    if isinstance(result, Request):
        assert result.op in OPS and type(result.data) is dict
        assert type(result.id) in (int, str, type(None))
        assert parse_frame(_frame_bytes(result)) == result
        reply = orjson.loads(protocol.encode_reply_ok(result.id, {"echo": result.data}))
        assert reply == {"id": result.id, "ok": True, "data": {"echo": result.data}}
        return
    assert isinstance(result, FrameError)
    assert isinstance(result.error, BadRequest | ValidationFailed)
    assert result.error.code in (BAD_REQUEST, VALIDATION_ERROR)
    assert type(result.reply) is bool and (result.id is None or result.reply)
    reply = orjson.loads(protocol.encode_reply_error(result.id, result.error))
    assert reply["id"] == result.id and reply["ok"] is False
    assert reply["error"]["code"] == result.error.code and reply["error"]["message"]


# -- op data (section 5) ------------------------------------------------------------------------


def _wire_data(value: Any) -> dict[str, Any]:
    """An op's typed value back as the ``data`` a client would send."""
    data: dict[str, Any] = attrs.asdict(value)
    return data


@_FUZZ
@given(op_data=_OP_AND_DATA, max_message_bytes=st.sampled_from([protocol.DEFAULT_MAX_MESSAGE_BYTES, 16]))
def test_any_op_data_validates_and_replays_or_names_the_field(
    op_data: tuple[str, dict[str, Any]], max_message_bytes: int
) -> None:
    op, data = op_data
    try:
        value = validate(op, data, max_message_bytes=max_message_bytes)
    except ValidationFailed as exc:
        assert exc.code == VALIDATION_ERROR
        assert exc.field and exc.message.startswith(exc.field + ": ")
        assert orjson.loads(protocol.encode_reply_error(1, exc))["error"]["field"] == exc.field
        return
    except PayloadTooLarge as exc:
        assert exc.code == PAYLOAD_TOO_LARGE and exc.field == "body"
        return
    assert isinstance(value, OP_SPECS[op].value_type)
    # The value encodes, and the encoded frame parses and validates to the same value.
    frame = parse_frame(orjson.dumps({"id": 1, "op": op, "data": _wire_data(value)}))
    assert isinstance(frame, Request)
    assert validate(op, frame.data, max_message_bytes=max_message_bytes) == value


@_FUZZ_LIGHT
@given(op=st.one_of(_TEXT, st.sampled_from(["PING", "ping ", "message", "auth.", ""])), data=_JSON)
def test_an_unknown_op_is_a_bad_request(op: str, data: Any) -> None:
    if op in OPS:
        return
    try:
        validate(op, data if isinstance(data, dict) else {})
    except BadRequest as exc:
        # The op is quoted, cut to 64 characters (each at most 10 once escaped).
        assert exc.code == BAD_REQUEST and len(exc.message) <= len("unknown op ''") + 64 * 10
    else:
        raise AssertionError(f"{op!r} validated")


# -- Last-Event-ID (the SSE resume cursor) ------------------------------------------------------

_POSITION = st.tuples(st.integers(0, MAX_SEQ), st.text(st.characters(codec="utf-8"), max_size=MAX_EPOCH_CHARS))
_POSITIONS = st.dictionaries(_VALID_ROOM, _POSITION.map(list), max_size=4)
_BAD_POSITION = st.one_of(
    _JSON,
    st.tuples(_SCALAR, _SCALAR).map(list),
    st.tuples(st.sampled_from([-1, MAX_SEQ + 1, 2**64 - 1, True, 1.5]), _TEXT).map(list),
    st.tuples(st.integers(0, 9), _sized([MAX_EPOCH_CHARS + 1])).map(list),
)


def _b64(raw: bytes, *, padded: bool) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


_LAST_EVENT_ID = st.one_of(
    _POSITIONS.map(encode_last_event_id),
    st.dictionaries(_ROOM, _POSITION.map(list), max_size=4).map(encode_last_event_id),
    st.tuples(
        st.one_of(
            st.dictionaries(_ROOM, st.one_of(_POSITION.map(list), _BAD_POSITION), max_size=4).map(lambda r: {"r": r}),
            _JSON.map(lambda r: {"r": r}),
            _JSON,
        ).map(orjson.dumps),
        st.booleans(),
    ).map(lambda t: _b64(t[0], padded=t[1])),
    _TEXT,
    st.sampled_from(["", "=", "====", "e30", "eyJyIjpudWxsfQ", "eyJyIjpbXX0", "!!!", "é"]),
)


@_FUZZ
@given(text=_LAST_EVENT_ID)
def test_any_last_event_id_resumes_valid_positions_or_nothing(text: str) -> None:
    positions = decode_last_event_id(text)
    assert type(positions) is dict
    for room, (seq, epoch) in positions.items():
        assert protocol.is_valid_room(room)
        assert type(seq) is int and 0 <= seq <= MAX_SEQ
        assert type(epoch) is str and len(epoch) <= MAX_EPOCH_CHARS
    # What parsed re-encodes to a cursor that parses to the same positions, and
    # that cursor is the canonical one: encoding it again gives the same string.
    canonical = encode_last_event_id({room: [seq, epoch] for room, (seq, epoch) in positions.items()})
    assert decode_last_event_id(canonical) == positions
    again = decode_last_event_id(canonical)
    assert encode_last_event_id({room: [seq, epoch] for room, (seq, epoch) in again.items()}) == canonical


@_FUZZ_LIGHT
@given(positions=_POSITIONS)
def test_a_last_event_id_the_daemon_wrote_replays_exactly(positions: dict[str, list[Any]]) -> None:
    text = encode_last_event_id(positions)
    assert text.isascii() and "\n" not in text and "=" not in text
    assert decode_last_event_id(text) == {room: (seq, epoch) for room, (seq, epoch) in positions.items()}


# -- page cursors (conversation.list, notification.list, the jobs API) --------------------------

_CURSOR_TYPES = st.sampled_from([(int, str), (str, int), (int,)])
_CURSOR_PART = st.one_of(_SCALAR, st.sampled_from([MAX_SEQ, MAX_SEQ + 1, 2**64 - 1, -(2**63), "a", "d", "\x00"]))
_CURSOR_TEXT = st.one_of(
    st.lists(_CURSOR_PART, max_size=3).map(lambda parts: encode_page_cursor(*parts)),
    # Shaped like the store's own cursors, with any values.
    st.tuples(_INT, st.one_of(_WIRE_ID, _TEXT)).map(lambda parts: encode_page_cursor(*parts)),
    st.tuples(st.sampled_from(["a", "d", "x"]), _INT).map(lambda parts: encode_page_cursor(*parts)),
    _INT.map(encode_page_cursor),
    st.tuples(_JSON.map(orjson.dumps), st.booleans()).map(lambda t: _b64(t[0], padded=t[1])),
    _TEXT,
    _sized([protocol.MAX_CURSOR_CHARS]),
)


@_FUZZ
@given(cursor=_CURSOR_TEXT, types=_CURSOR_TYPES)
def test_any_page_cursor_decodes_to_storable_parts_and_replays_or_is_invalid(
    cursor: str, types: tuple[type, ...]
) -> None:
    try:
        parts = decode_page_cursor(cursor, types)
    except ValidationFailed as exc:
        assert exc.code == VALIDATION_ERROR and exc.field == "cursor"
        return
    assert len(parts) == len(types)
    for part, kind in zip(parts, types, strict=True):
        assert type(part) is kind
        # Every store keeps these as signed 64-bit integers and text without NUL.
        if kind is int:
            assert -(2**63) <= part <= MAX_SEQ
        else:
            assert "\x00" not in part
    canonical = encode_page_cursor(*parts)
    assert decode_page_cursor(canonical, types) == parts
    assert encode_page_cursor(*decode_page_cursor(canonical, types)) == canonical


@_FUZZ_LIGHT
@given(
    parts=st.one_of(
        st.tuples(st.integers(0, MAX_SEQ), _VALID_ID),
        st.tuples(st.sampled_from(["a", "d"]), st.integers(0, MAX_SEQ)),
        st.tuples(st.integers(0, MAX_SEQ)),
    )
)
def test_a_page_cursor_the_store_wrote_replays_exactly(parts: tuple[Any, ...]) -> None:
    types = tuple(type(p) for p in parts)
    cursor = encode_page_cursor(*parts)
    assert decode_page_cursor(cursor, types) == list(parts)
    assert encode_page_cursor(*decode_page_cursor(cursor, types)) == cursor



@_FUZZ
@given(cursor=_CURSOR_TEXT)
def test_any_conversation_cursor_holds_a_time_every_store_can_hold_or_is_invalid(cursor: str) -> None:
    try:
        micros, conversation_id = decode_time_cursor(cursor)
    except ValidationFailed as exc:
        assert exc.code == VALIDATION_ERROR and exc.field == "cursor"
        return
    assert to_micros(from_micros(micros)) == micros
    assert encode_page_cursor(micros, conversation_id) == encode_page_cursor(*decode_time_cursor(cursor))
