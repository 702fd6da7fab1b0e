"""
What every conformance case uses: a TLS connection with ALPN C{h2} to the
server under test, raw frames out (C{hyperframe}), frames in, and the
verdicts h2spec gives (a connection error is a GOAWAY with the code, or the
connection closed; a stream error is an RST_STREAM or GOAWAY with the code,
or the connection closed).

A case is a function C{(conn: Conn) -> None} registered with L{case}; it
raises L{Failed} with what it saw when the server did not answer as the RFC
says.  Cases never send to anything but the address they are given.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

#: How long a case waits for the server's answer.
TIMEOUT = 2.0

# Frame types and flags (RFC 9113 section 6), for frames built by hand.
TYPE_DATA = 0x0
TYPE_HEADERS = 0x1
TYPE_PRIORITY = 0x2
TYPE_RST_STREAM = 0x3
TYPE_SETTINGS = 0x4
TYPE_PING = 0x6
TYPE_GOAWAY = 0x7
TYPE_WINDOW_UPDATE = 0x8
TYPE_CONTINUATION = 0x9
#: An extension frame type no endpoint knows (h2spec uses 0x16).
TYPE_UNKNOWN = 0x16
FLAG_ACK = 0x1
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8

#: h2spec's default C{--max-header-length}: the length of a dummy value.
MAX_HEADER_LEN = 4000
#: h2spec's (and RFC 9113's) default flow-control window.
DEFAULT_WINDOW_SIZE = 65535


class Failed(Exception):
    """
    The server did not answer as the case expects.
    """


class Closed(Exception):
    """
    The server closed the connection.
    """


@dataclass
class Target:
    host: str
    port: int
    tls: bool = True
    authority: str = ""

    def __post_init__(self) -> None:
        if not self.authority:
            self.authority = f"{self.host}:{self.port}"


@dataclass
class Case:
    section: str
    number: int
    description: str
    run: Callable[[Conn], None]
    #: Whether the case sends its own preface and SETTINGS.
    raw: bool = False


CASES: list[Case] = []


def case(
    section: str, number: int, description: str, raw: bool = False
) -> Callable[[Callable[[Conn], None]], Callable[[Conn], None]]:
    """
    Register a case: C{section} as h2spec numbers it (C{"http2/6.5"},
    C{"hpack/4.2"}, C{"generic/3.1"}), C{number} within it.
    """

    def register(f: Callable[[Conn], None]) -> Callable[[Conn], None]:
        CASES.append(Case(section, number, description, f, raw))
        return f

    return register


@dataclass
class Conn:
    """
    One connection to the server under test.

    @ivar settings: the server's SETTINGS, once L{handshake} is done.
    """

    target: Target
    sock: socket.socket | ssl.SSLSocket = field(init=False)
    buffer: bytes = b""
    closed: bool = False
    settings: dict[int, int] = field(default_factory=dict)
    encoder: Encoder = field(default_factory=Encoder)
    maxFrameSize: int = 16384

    def __post_init__(self) -> None:
        raw = socket.create_connection((self.target.host, self.target.port), 5)
        if self.target.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(raw, server_hostname=self.target.host)
            if sock.selected_alpn_protocol() != "h2":
                raise Failed(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
            self.sock = sock
        else:
            self.sock = raw

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending

    def sendRaw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Closed(str(e)) from e

    def send(self, *frames: Frame) -> None:
        self.sendRaw(b"".join(f.serialize() for f in frames))

    def handshake(self, settings: Iterable[tuple[int, int]] = ()) -> None:
        """
        Preface and SETTINGS out; the server's SETTINGS in and acknowledged,
        and ours acknowledged.
        """
        ours = SettingsFrame(0)
        for key, value in settings:
            ours.settings[key] = value
        self.sendRaw(PREFACE + ours.serialize())
        gotSettings = gotAck = False
        deadline = time.monotonic() + TIMEOUT
        while not (gotSettings and gotAck):
            frame = self.recv(deadline - time.monotonic())
            if isinstance(frame, SettingsFrame):
                if "ACK" in frame.flags:
                    gotAck = True
                else:
                    gotSettings = True
                    self.settings.update(frame.settings)
                    self.send(SettingsFrame(0, flags=["ACK"]))
        self.maxFrameSize = self.settings.get(SettingsFrame.MAX_FRAME_SIZE, 16384)

    def headers(
        self,
        streamID: int,
        headers: list[tuple[str, str]] | None = None,
        endStream: bool = True,
        endHeaders: bool = True,
    ) -> HeadersFrame:
        """
        A HEADERS frame with C{headers} (a GET of C{/} when L{None}),
        encoded with this connection's HPACK encoder.
        """
        frame = HeadersFrame(streamID)
        frame.data = self.encoder.encode(self.request() if headers is None else headers)
        if endStream:
            frame.flags.add("END_STREAM")
        if endHeaders:
            frame.flags.add("END_HEADERS")
        return frame

    def request(self, method: str = "GET", path: str = "/") -> list[tuple[str, str]]:
        return [
            (":method", method),
            (":scheme", "https" if self.target.tls else "http"),
            (":path", path),
            (":authority", self.target.authority),
        ]

    # -- receiving

    def _fill(self, timeout: float) -> None:
        if timeout <= 0:
            raise Failed("timed out waiting for the server")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError as e:
            raise Failed("timed out waiting for the server") from e
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self.closed = True
            raise Closed(str(e)) from e
        if not data:
            self.closed = True
            raise Closed("connection closed")
        self.buffer += data

    def recv(self, timeout: float = TIMEOUT) -> Frame:
        """
        The next frame; L{Closed} if the connection ends first, L{Failed}
        after C{timeout}.
        """
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 9:
            self._fill(deadline - time.monotonic())
        frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
        while len(self.buffer) < 9 + length:
            self._fill(deadline - time.monotonic())
        frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
        self.buffer = self.buffer[9 + length :]
        return frame


# -- building


def rawFrame(kind: int, flags: int, streamID: int, payload: bytes) -> bytes:
    """
    A frame as it goes on the wire, whatever its type, flags, length or
    stream identifier (the reserved bit included, in C{streamID}): nothing
    is checked.
    """
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + streamID.to_bytes(4, "big")
        + payload
    )


def dummyHeaders(count: int = 1) -> list[tuple[str, str]]:
    """
    h2spec's C{DummyHeaders}: C{x-dummy0} ... with values of
    L{MAX_HEADER_LEN} C{x}s.
    """
    return [(f"x-dummy{i}", "x" * MAX_HEADER_LEN) for i in range(count)]


def continuation(
    streamID: int, block: bytes, endHeaders: bool = True
) -> ContinuationFrame:
    frame = ContinuationFrame(streamID, data=block)
    if endHeaders:
        frame.flags.add("END_HEADERS")
    return frame


def data(streamID: int, payload: bytes, endStream: bool = True) -> DataFrame:
    frame = DataFrame(streamID, data=payload)
    if endStream:
        frame.flags.add("END_STREAM")
    return frame


# -- verdicts


def describe(frame: Frame) -> str:
    if isinstance(frame, GoAwayFrame):
        return f"GOAWAY(code {frame.error_code:#x}, last {frame.last_stream_id})"
    if isinstance(frame, RstStreamFrame):
        return f"RST_STREAM(stream {frame.stream_id}, code {frame.error_code:#x})"
    return (
        f"{type(frame).__name__}(stream {frame.stream_id}, flags {sorted(frame.flags)})"
    )


def frames(conn: Conn, awaited: str) -> Iterator[Frame]:
    """
    The server's frames as they come, for L{TIMEOUT}: then L{Failed}
    naming what was C{awaited} and what came instead.  L{Closed} when the
    connection ends, likewise with what came before.
    """
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            frame = conn.recv(deadline - time.monotonic())
        except Failed as e:
            raise Failed(f"no {awaited} ({', '.join(seen) or 'nothing'}): {e}") from e
        except Closed as e:
            raise Closed(f"{e}, before {awaited} ({', '.join(seen)})") from e
        yield frame
        seen.append(describe(frame))


def expectConnectionError(conn: Conn, *codes: int) -> None:
    """
    A GOAWAY with one of C{codes}, or the connection closed.
    """
    try:
        for frame in frames(conn, "connection error"):
            if isinstance(frame, GoAwayFrame):
                if frame.error_code in codes:
                    return
                raise Failed(
                    f"expected GOAWAY {[hex(c) for c in codes]}, got {describe(frame)}"
                )
    except Closed:
        return


def expectStreamError(conn: Conn, *codes: int) -> None:
    """
    An RST_STREAM or GOAWAY with one of C{codes}, or the connection closed.
    """
    try:
        for frame in frames(conn, "stream error"):
            if isinstance(frame, (GoAwayFrame, RstStreamFrame)):
                if frame.error_code in codes:
                    return
                raise Failed(
                    f"expected {[hex(c) for c in codes]}, got {describe(frame)}"
                )
    except Closed:
        return


def expectClose(conn: Conn) -> None:
    """
    The connection closed (a GOAWAY first is fine).
    """
    try:
        for _ in frames(conn, "the connection closed"):
            pass
    except Closed:
        return


def waitFor(conn: Conn, kind: type[Frame]) -> Frame:
    """
    h2spec's C{VerifyEventType}: frames are read until one of C{kind}
    comes, whatever comes before it; a close or a timeout first fails.
    """
    try:
        for frame in frames(conn, kind.__name__):
            if isinstance(frame, kind):
                return frame
    except Closed as e:
        raise Failed(str(e)) from e
    raise AssertionError("unreachable")


def expectFrame(
    conn: Conn, kind: type[Frame], streamID: int | None = None, flag: str | None = None
) -> Frame:
    """
    Frames are read until one of C{kind} (on C{streamID}, with C{flag})
    comes; a GOAWAY, RST_STREAM or close before it fails.
    """
    try:
        for frame in frames(conn, kind.__name__):
            if (
                isinstance(frame, kind)
                and (streamID is None or frame.stream_id == streamID)
                and (flag is None or flag in frame.flags)
            ):
                return frame
            if isinstance(frame, (GoAwayFrame, RstStreamFrame)) and kind not in (
                GoAwayFrame,
                RstStreamFrame,
            ):
                raise Failed(f"expected {kind.__name__}, got {describe(frame)}")
    except Closed as e:
        raise Failed(str(e)) from e
    raise AssertionError("unreachable")


def expectStreamClose(conn: Conn, noErrorReset: bool = True) -> None:
    """
    h2spec's C{VerifyStreamClose}: a DATA or HEADERS with END_STREAM, or
    (C{noErrorReset}, as h2spec's newer releases allow) an RST_STREAM with
    NO_ERROR.
    """
    try:
        for frame in frames(conn, "the stream's end"):
            if (
                isinstance(frame, (DataFrame, HeadersFrame))
                and "END_STREAM" in frame.flags
            ):
                return
            if (
                noErrorReset
                and isinstance(frame, RstStreamFrame)
                and frame.error_code == NO_ERROR
            ):
                return
    except Closed as e:
        raise Failed(str(e)) from e


def expectHeaders(conn: Conn, streamID: int) -> HeadersFrame:
    """
    A response's HEADERS on C{streamID}.
    """
    frame = expectFrame(conn, HeadersFrame, streamID)
    assert isinstance(frame, HeadersFrame)
    return frame


def expectPingAck(conn: Conn, data: bytes) -> None:
    frame = expectFrame(conn, PingFrame, 0, "ACK")
    assert isinstance(frame, PingFrame)
    if frame.opaque_data != data:
        raise Failed(f"PING ACK with {frame.opaque_data!r}, not {data!r}")


__all__ = [
    "CANCEL",
    "CASES",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "DEFAULT_WINDOW_SIZE",
    "ENHANCE_YOUR_CALM",
    "FLAG_ACK",
    "FLAG_END_HEADERS",
    "FLAG_END_STREAM",
    "FLAG_PADDED",
    "FLOW_CONTROL_ERROR",
    "FRAME_SIZE_ERROR",
    "HTTP_1_1_REQUIRED",
    "INADEQUATE_SECURITY",
    "INTERNAL_ERROR",
    "MAX_HEADER_LEN",
    "NO_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "TIMEOUT",
    "TYPE_CONTINUATION",
    "TYPE_DATA",
    "TYPE_GOAWAY",
    "TYPE_HEADERS",
    "TYPE_PING",
    "TYPE_PRIORITY",
    "TYPE_RST_STREAM",
    "TYPE_SETTINGS",
    "TYPE_UNKNOWN",
    "TYPE_WINDOW_UPDATE",
    "Case",
    "Closed",
    "Conn",
    "ContinuationFrame",
    "DataFrame",
    "Failed",
    "Frame",
    "GoAwayFrame",
    "HeadersFrame",
    "PingFrame",
    "RstStreamFrame",
    "SettingsFrame",
    "Target",
    "WindowUpdateFrame",
    "case",
    "continuation",
    "data",
    "describe",
    "dummyHeaders",
    "expectClose",
    "expectConnectionError",
    "expectFrame",
    "expectHeaders",
    "expectPingAck",
    "expectStreamClose",
    "expectStreamError",
    "frames",
    "rawFrame",
    "waitFor",
]
