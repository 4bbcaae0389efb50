"""Sans-IO view of what a client sends on one HTTP connection, for the listener's guard.

``RequestSide`` follows the client's half of a connection and says what it holds:
where each request head starts and ends, whether a body is still due, and when a
message must be refused. It also produces the bytes that hypercorn is given.

HTTP/1.1 goes through h11, the parser hypercorn itself uses, so both agree on where
every message ends. Each request is then written out again in one canonical form
(a head, then the body as it was framed, re-chunked when it came chunked). What
hypercorn reads is therefore exactly what was checked here: a request can never
hide a second one in bytes that the two parsers frame differently.

Refused here, before hypercorn sees them (``Refused``: the status, a message and
the header at fault; the connection closes after the answer):

- a head over ``max_head_bytes`` (431), and anything h11 refuses (400, 501);
- ``Content-Length`` together with ``Transfer-Encoding`` (400);
- more than one ``Origin`` header (400);
- the HTTP/2 connection preface anywhere but at the start of a connection (400).

HTTP/2 without TLS (prior knowledge, or ``Upgrade: h2c``) is served only when
``h2c`` is true. Otherwise an ``Upgrade: h2c`` header is removed, so the request
is answered over HTTP/1.1 like any server without HTTP/2 would, and the preface
gets ``GoAway`` with HTTP_1_1_REQUIRED.

On HTTP/2 connections the frames pass through as they are, but a header block is
held until it is complete and decoded (with its own HPACK decoder, which follows
the client's encoder exactly as hypercorn's does): a header list over
``max_head_bytes`` ends the connection with ENHANCE_YOUR_CALM, whether or not
the client has acknowledged the server's SETTINGS, which is when h2 itself starts
to apply that limit. More than ``max_resets`` RST_STREAM frames within
``reset_window_s`` (the rapid reset attack) end it the same way.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import h11
import hpack
import orjson
from hpack.exceptions import HPACKError, OversizedHeaderListError

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_PREFACE_HEAD: Final = b"PRI * HTTP/2.0\r\n\r\n"

# HTTP/2 frame types and flags (RFC 9113 section 6).
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_RST_STREAM: Final = 0x3
_SETTINGS: Final = 0x4
_PUSH_PROMISE: Final = 0x5
_GOAWAY: Final = 0x7
_CONTINUATION: Final = 0x9
_END_HEADERS: Final = 0x4
_PADDED: Final = 0x8
_PRIORITY: Final = 0x20

# HTTP/2 error codes (RFC 9113 section 7).
H2_PROTOCOL_ERROR: Final = 0x1
H2_COMPRESSION_ERROR: Final = 0x9
H2_ENHANCE_YOUR_CALM: Final = 0xB
H2_HTTP_1_1_REQUIRED: Final = 0xD

_REASONS: Final = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large", 501: "Not Implemented"}


class RequestHead:
    """The head of an HTTP/1.1 request: names in lower case, plus any bytes read past it.

    ``raw`` is the head as hypercorn is given it; ``rest`` holds the bytes that
    followed the head when the request switches protocols (a WebSocket upgrade).
    """

    __slots__ = ("headers", "method", "raw", "rest", "target")

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], raw: bytes, rest: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.raw = raw
        self.rest = rest

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def is_websocket_upgrade(self) -> bool:
        return _is_websocket_upgrade(self.method, self.header("upgrade") or "", self.header("connection") or "")


def _is_websocket_upgrade(method: str, upgrade: str, connection: str) -> bool:
    # hypercorn's rule (protocol/h11.py), so that both sides switch on the same requests.
    tokens = {token.strip() for token in connection.lower().split(",")}
    return method.upper() == "GET" and upgrade.strip().lower() == "websocket" and "upgrade" in tokens


class HeadReceived:
    """A complete, accepted request head (HTTP/1.1)."""

    __slots__ = ("head",)

    def __init__(self, head: RequestHead) -> None:
        self.head = head


class Refused:
    """An HTTP/1.1 message that is answered with ``status`` and then the connection closed."""

    __slots__ = ("field", "message", "status")

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field

    def response(self) -> bytes:
        """The answer, with the error body of PROTOCOL.md section 8 and ``Connection: close``."""
        error: dict[str, str] = {"code": "BAD_REQUEST", "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        body = orjson.dumps({"error": error})
        reason = _REASONS.get(self.status, "Bad Request")
        return (
            f"HTTP/1.1 {self.status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode() + body


class GoAway:
    """An HTTP/2 connection that is ended with GOAWAY ``error_code``.

    ``preface`` is true when the server has not spoken HTTP/2 on it yet, so its
    own connection preface (an empty SETTINGS frame) must come first.
    """

    __slots__ = ("error_code", "last_stream_id", "message", "preface")

    def __init__(self, error_code: int, message: str, *, last_stream_id: int, preface: bool = False) -> None:
        self.error_code = error_code
        self.message = message
        self.last_stream_id = last_stream_id
        self.preface = preface

    def frames(self) -> bytes:
        payload = struct.pack(">II", self.last_stream_id & 0x7FFFFFFF, self.error_code) + self.message.encode()
        out = h2_frame(_SETTINGS, 0, 0, b"") if self.preface else b""
        return out + h2_frame(_GOAWAY, 0, 0, payload)


Event = HeadReceived | Refused | GoAway


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id & 0x7FFFFFFF) + payload


class Mode(enum.Enum):
    HTTP1 = "http/1.1"
    RAW = "raw"  # switched protocols (a WebSocket served by hypercorn): passed through
    HTTP2 = "h2"
    ENDED = "ended"  # the last request said the connection closes after it: nothing more is passed on
    REFUSED = "refused"


class RequestSide:
    """The client's half of one connection (see the module docstring).

    Args:
        max_head_bytes: the largest request head, and the largest HTTP/2 header list.
        h2c: serve HTTP/2 without TLS (prior knowledge, ``Upgrade: h2c``).
        max_resets, reset_window_s: the RST_STREAM budget of an HTTP/2 client.
        http2: the connection speaks HTTP/2 from the start (TLS with ALPN ``h2``).

    ``feed`` takes what the client sent and returns the events it completes; the
    bytes for hypercorn accumulate in ``out``. After a ``Refused`` or ``GoAway``
    nothing more is passed on.
    """

    def __init__(
        self, *, max_head_bytes: int, h2c: bool, max_resets: int, reset_window_s: float, http2: bool = False
    ) -> None:
        self.max_head_bytes = max_head_bytes
        self.h2c = h2c
        self._max_resets = max_resets
        self._reset_window_s = reset_window_s
        self.out = bytearray()
        self.mode = Mode.HTTP1
        self.requests = 0
        # h11 answers 431 when a head (or a chunk line, or trailers) outgrows this.
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self._chunked = False
        self._h2: _H2Frames | None = None
        if http2:
            self._start_h2(H2_PREFACE, b"", now=0.0, events=[])

    # -- state the guard reads -----------------------------------------------------------

    @property
    def in_head(self) -> bool:
        """Part of a request head (or of an HTTP/2 preface or header block) has arrived."""
        if self.mode is Mode.HTTP1:
            return self._h11.their_state is h11.IDLE and bool(self._h11.trailing_data[0])
        if self.mode is Mode.HTTP2 and self._h2 is not None:
            return self._h2.in_head
        return False

    @property
    def in_body(self) -> bool:
        """A request head has arrived and its body has not yet ended."""
        return self.mode is Mode.HTTP1 and self._h11.their_state is h11.SEND_BODY

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray, now: float) -> list[Event]:
        events: list[Event] = []
        if self.mode is Mode.HTTP1:
            self._h11.receive_data(bytes(data))
            self._http1(events, now)
        elif self.mode is Mode.RAW:
            self.out += data
        elif self.mode is Mode.HTTP2 and self._h2 is not None:
            self._h2_feed(data, now, events)
        return events

    def _http1(self, events: list[Event], now: float) -> None:
        conn = self._h11
        while self.mode is Mode.HTTP1:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                message = f"request head over {self.max_head_bytes} bytes" if status == 431 else str(exc)
                self._refuse(events, Refused(status, message))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request(event, events, now)
            elif isinstance(event, h11.Data):
                if self._chunked:
                    if event.data:
                        self.out += b"%x\r\n" % len(event.data) + event.data + b"\r\n"
                else:
                    self.out += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self._chunked:
                    self.out += b"0\r\n" + _header_lines(event.headers.raw_items()) + b"\r\n"
                self._next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.mode = Mode.ENDED

    def _next_cycle(self) -> None:
        """Answer the request on our side of h11 (never sent) to move it to the next one."""
        conn = self._h11
        try:
            # A 404 neither accepts an upgrade nor a CONNECT: hypercorn answers those
            # requests over HTTP/1.1 too (those it switches on never get here).
            conn.send(h11.Response(status_code=404, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            # The request closes the connection (Connection: close, HTTP/1.0): hypercorn
            # closes it after its answer, and anything sent after it is never read.
            self.mode = Mode.ENDED

    def _request(self, event: h11.Request, events: list[Event], now: float) -> None:
        first = self.requests == 0
        self.requests += 1
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("latin-1")
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            if not first:
                self._refuse(events, Refused(400, "the HTTP/2 preface can only start a connection"))
            elif not self.h2c:
                self._refuse(
                    events,
                    GoAway(H2_HTTP_1_1_REQUIRED, "HTTP/2 without TLS is disabled (http.h2c)", last_stream_id=0, preface=True),
                )
            else:
                self.out += _H2_PREFACE_HEAD
                events.append(HeadReceived(RequestHead(method, target, [], _H2_PREFACE_HEAD, b"")))
                self._start_h2(H2_PREFACE[len(_H2_PREFACE_HEAD) :], self._h11.trailing_data[0], now, events)
            return
        raw_items = event.headers.raw_items()
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw_items]
        upgrade = connection = ""
        lengths = encodings = origins = 0
        for name, value in headers:
            if name == "content-length":
                lengths += 1
            elif name == "transfer-encoding":
                encodings += 1
            elif name == "origin":
                origins += 1
            elif name == "upgrade":
                upgrade = value
            elif name == "connection":
                connection = value
        if lengths and encodings:
            self._refuse(events, Refused(400, "Content-Length together with Transfer-Encoding", "Transfer-Encoding"))
            return
        if origins > 1:  # (h11 itself refuses a second Host)
            self._refuse(events, Refused(400, "more than one Origin header", "Origin"))
            return
        # hypercorn's rules (protocol/h11.py): these two switch protocols at the head.
        websocket = bool(upgrade) and _is_websocket_upgrade(method, upgrade, connection)
        h2c_upgrade = upgrade.strip().lower() == "h2c" and not (lengths or encodings)
        if not self.h2c and upgrade and "h2c" in {token.strip() for token in upgrade.lower().split(",")}:
            # Declined: the request is answered over HTTP/1.1 (RFC 9110 section 7.8).
            keep = [name not in ("upgrade", "http2-settings") for name, _ in headers]
            raw_items = [item for item, kept in zip(raw_items, keep, strict=True) if kept]
            headers = [item for item, kept in zip(headers, keep, strict=True) if kept]
            h2c_upgrade = False
        raw = b"%s %s HTTP/%s\r\n" % (event.method, event.target, event.http_version) + _header_lines(raw_items) + b"\r\n"
        if len(raw) > self.max_head_bytes:
            # h11 only limits a head that is still incomplete; one that arrived whole is measured here.
            self._refuse(events, Refused(431, f"request head over {self.max_head_bytes} bytes"))
            return
        self.out += raw
        self._chunked = encodings > 0
        rest = self._h11.trailing_data[0] if websocket or h2c_upgrade else b""
        events.append(HeadReceived(RequestHead(method, target, headers, raw, rest)))
        if websocket:
            self.mode = Mode.RAW
            self.out += rest
        elif h2c_upgrade:
            self._start_h2(H2_PREFACE, rest, now, events)

    def _refuse(self, events: list[Event], event: Refused | GoAway) -> None:
        self.mode = Mode.REFUSED
        events.append(event)

    # -- HTTP/2 --------------------------------------------------------------------------

    def _start_h2(self, preface: bytes, data: bytes, now: float, events: list[Event]) -> None:
        self.mode = Mode.HTTP2
        self._h2 = _H2Frames(
            preface, max_header_list_bytes=self.max_head_bytes, max_resets=self._max_resets, reset_window_s=self._reset_window_s
        )
        if data:
            self._h2_feed(data, now, events)

    def _h2_feed(self, data: bytes | bytearray, now: float, events: list[Event]) -> None:
        assert self._h2 is not None
        goaway = self._h2.feed(data, now, self.out)
        if goaway is not None:
            self._refuse(events, goaway)


def _header_lines(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in items)


class _H2Frames:
    """Follows HTTP/2 frames from a client; passes them on, holding header blocks until checked."""

    def __init__(self, preface: bytes, *, max_header_list_bytes: int, max_resets: int, reset_window_s: float) -> None:
        self._preface_left = preface
        self._max_header_list_bytes = max_header_list_bytes
        self._max_resets = max_resets
        self._reset_window_s = reset_window_s
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_bytes)
        self._header = bytearray()  # the frame header being read
        self._kind = -1
        self._flags = 0
        self._stream_id = 0
        self._left = 0  # payload bytes of the current frame still to come
        self._payload = bytearray()  # the current frame's payload, when it belongs to a header block
        self._held = bytearray()  # raw frames of the open header block
        self._fragments = bytearray()  # its HPACK data
        self._block_stream = 0  # the stream of the open header block (0: none)
        self.last_stream_id = 0
        self._resets = 0
        self._window_start = 0.0

    @property
    def in_head(self) -> bool:
        return bool(self._preface_left) or bool(self._held)

    def feed(self, data: bytes | bytearray, now: float, out: bytearray) -> GoAway | None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._preface_left:
                n = min(len(self._preface_left), len(view) - pos)
                if view[pos : pos + n] != self._preface_left[:n]:
                    return GoAway(H2_PROTOCOL_ERROR, "bad connection preface", last_stream_id=0)
                out += view[pos : pos + n]
                self._preface_left = self._preface_left[n:]
                pos += n
                continue
            if self._kind < 0:  # between frames: reading a frame header
                n = min(9 - len(self._header), len(view) - pos)
                self._header += view[pos : pos + n]
                pos += n
                if len(self._header) < 9:
                    continue
                problem = self._frame_start(now, out)
                if problem is not None:
                    return problem
                if self._left == 0:
                    problem = self._frame_end(out)
                    if problem is not None:
                        return problem
                continue
            n = min(self._left, len(view) - pos)
            chunk = view[pos : pos + n]
            if self._holding:
                self._held += chunk
                self._payload += chunk
            else:
                out += chunk
            self._left -= n
            pos += n
            if self._left == 0:
                problem = self._frame_end(out)
                if problem is not None:
                    return problem
        return None

    @property
    def _holding(self) -> bool:
        return self._kind in (_HEADERS, _CONTINUATION)

    def _frame_start(self, now: float, out: bytearray) -> GoAway | None:
        length = int.from_bytes(self._header[0:3], "big")
        self._kind = self._header[3]
        self._flags = self._header[4]
        self._stream_id = int.from_bytes(self._header[5:9], "big") & 0x7FFFFFFF
        self._left = length
        if self._block_stream and (self._kind != _CONTINUATION or self._stream_id != self._block_stream):
            return self._goaway(H2_PROTOCOL_ERROR, "header block interrupted")
        if self._kind == _CONTINUATION and not self._block_stream:
            return self._goaway(H2_PROTOCOL_ERROR, "CONTINUATION outside a header block")
        if self._kind == _PUSH_PROMISE:
            return self._goaway(H2_PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        if self._holding:
            if len(self._held) + 9 + length > self._max_header_list_bytes + 9 * 16:
                return self._goaway(H2_ENHANCE_YOUR_CALM, f"header block over {self._max_header_list_bytes} bytes")
            if self._kind == _HEADERS:
                self._block_stream = self._stream_id
            self._held += self._header
            self._payload = bytearray()
        else:
            out += self._header
            if self._kind == _RST_STREAM:
                if now - self._window_start >= self._reset_window_s:
                    self._window_start = now
                    self._resets = 0
                self._resets += 1
                if self._resets > self._max_resets:
                    return self._goaway(H2_ENHANCE_YOUR_CALM, "too many stream resets")
        self._header = bytearray()
        return None

    def _frame_end(self, out: bytearray) -> GoAway | None:
        kind, flags, payload = self._kind, self._flags, self._payload
        self._kind = -1
        self._payload = bytearray()
        if kind not in (_HEADERS, _CONTINUATION):
            return None
        start, end = 0, len(payload)
        if kind == _HEADERS:
            if flags & _PADDED:
                if not payload or payload[0] >= len(payload):
                    return self._goaway(H2_PROTOCOL_ERROR, "bad padding")
                start, end = 1, len(payload) - payload[0]
            if flags & _PRIORITY:
                start += 5
            if start > end:
                return self._goaway(H2_PROTOCOL_ERROR, "HEADERS frame too short")
        self._fragments += payload[start:end]
        if not flags & _END_HEADERS:
            return None
        try:
            self._decoder.decode(bytes(self._fragments), raw=True)
        except OversizedHeaderListError:
            return self._goaway(H2_ENHANCE_YOUR_CALM, f"header list over {self._max_header_list_bytes} bytes")
        except HPACKError:
            return self._goaway(H2_COMPRESSION_ERROR, "bad header block")
        out += self._held
        self.last_stream_id = max(self.last_stream_id, self._block_stream)
        self._held = bytearray()
        self._fragments = bytearray()
        self._block_stream = 0
        return None

    def _goaway(self, code: int, message: str) -> GoAway:
        return GoAway(code, message, last_stream_id=self.last_stream_id)
