"""
h2spec's cases for http2/5.1 (stream states), 5.1.1 (stream identifiers),
5.1.2 (stream concurrency), 5.3.1 (stream dependencies), 5.4.1 (connection
error handling), 5.5 (extending HTTP/2), 6.1 (DATA), 6.2 (HEADERS),
6.3 (PRIORITY) and 6.4 (RST_STREAM), ported from the behaviour of
summerwind/h2spec's C{http2/*.go}.

Frames hyperframe will not build (stream 0 where a stream is required, wrong
lengths, bad padding, unknown types) are written as bytes by L{rawFrame}.

Two cases are C{Strict} in h2spec (5.4.1/2, 6.3/3): h2spec numbers them but
runs them only with C{--strict}, so they are not among its default 146.
"""

from __future__ import annotations

import struct

from hyperframe.frame import PriorityFrame

from tests.h2conformance.core import (
    CANCEL,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FRAME_SIZE_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    TYPE_DATA,
    TYPE_HEADERS,
    TYPE_PING,
    TYPE_PRIORITY,
    TYPE_RST_STREAM,
    TYPE_UNKNOWN,
    Conn,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
    case,
    continuation,
    data,
    dummyHeaders,
    expectClose,
    expectConnectionError,
    expectHeaders,
    expectPingAck,
    expectStreamClose,
    expectStreamError,
    rawFrame,
    waitFor,
)

# -- 5.1 Stream States


@case("http2/5.1", 1, "idle: Sends a DATA frame")
def idleData(conn: Conn) -> None:
    conn.send(data(1, b"test"))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/5.1", 2, "idle: Sends a RST_STREAM frame")
def idleRstStream(conn: Conn) -> None:
    conn.send(RstStreamFrame(1, error_code=CANCEL))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/5.1", 3, "idle: Sends a WINDOW_UPDATE frame")
def idleWindowUpdate(conn: Conn) -> None:
    conn.send(WindowUpdateFrame(1, window_increment=100))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/5.1", 4, "idle: Sends a CONTINUATION frame")
def idleContinuation(conn: Conn) -> None:
    conn.send(continuation(1, conn.encoder.encode(conn.request())))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/5.1", 5, "half closed (remote): Sends a DATA frame")
def halfClosedRemoteData(conn: Conn) -> None:
    conn.send(conn.headers(1), data(1, b"test"))
    expectStreamError(conn, STREAM_CLOSED)


@case("http2/5.1", 6, "half closed (remote): Sends a HEADERS frame")
def halfClosedRemoteHeaders(conn: Conn) -> None:
    conn.send(conn.headers(1), conn.headers(1))
    expectStreamError(conn, STREAM_CLOSED)


@case("http2/5.1", 7, "half closed (remote): Sends a CONTINUATION frame")
def halfClosedRemoteContinuation(conn: Conn) -> None:
    headers = conn.headers(1)
    conn.send(headers, continuation(1, headers.data))
    expectStreamError(conn, STREAM_CLOSED, PROTOCOL_ERROR)


@case("http2/5.1", 8, "closed: Sends a DATA frame after sending RST_STREAM frame")
def closedDataAfterRst(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False),
        RstStreamFrame(1, error_code=CANCEL),
        data(1, b"test"),
    )
    expectStreamError(conn, STREAM_CLOSED)


@case("http2/5.1", 9, "closed: Sends a HEADERS frame after sending RST_STREAM frame")
def closedHeadersAfterRst(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False),
        RstStreamFrame(1, error_code=CANCEL),
        conn.headers(1),
    )
    expectStreamError(conn, STREAM_CLOSED)


@case(
    "http2/5.1", 10, "closed: Sends a CONTINUATION frame after sending RST_STREAM frame"
)
def closedContinuationAfterRst(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False),
        RstStreamFrame(1, error_code=CANCEL),
        continuation(1, conn.encoder.encode(dummyHeaders())),
    )
    expectStreamError(conn, STREAM_CLOSED, PROTOCOL_ERROR)


@case("http2/5.1", 11, "closed: Sends a DATA frame")
def closedData(conn: Conn) -> None:
    conn.send(conn.headers(1))
    expectStreamClose(conn, noErrorReset=False)
    conn.send(data(1, b"test"))
    expectConnectionError(conn, STREAM_CLOSED)


@case("http2/5.1", 12, "closed: Sends a HEADERS frame")
def closedHeaders(conn: Conn) -> None:
    headers = conn.headers(1)
    conn.send(headers)
    expectStreamClose(conn, noErrorReset=False)
    # h2spec sends the very same frame (the same header block bytes) again.
    conn.send(headers)
    expectConnectionError(conn, STREAM_CLOSED)


@case("http2/5.1", 13, "closed: Sends a CONTINUATION frame")
def closedContinuation(conn: Conn) -> None:
    conn.send(conn.headers(1))
    expectStreamClose(conn, noErrorReset=False)
    conn.send(continuation(1, conn.encoder.encode(dummyHeaders())))
    expectConnectionError(conn, STREAM_CLOSED, PROTOCOL_ERROR)


# -- 5.1.1 Stream Identifiers


@case("http2/5.1.1", 1, "Sends even-numbered stream identifier")
def evenStreamID(conn: Conn) -> None:
    conn.send(conn.headers(2))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case(
    "http2/5.1.1",
    2,
    "Sends stream identifier that is numerically smaller than previous",
)
def smallerStreamID(conn: Conn) -> None:
    conn.send(conn.headers(5), conn.headers(3))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case(
    "http2/5.1.1",
    3,
    "Sends HEADERS frame with the stream which is in half-closed (remote) state",
)
def headersOnHalfClosedRemote(conn: Conn) -> None:
    conn.send(conn.headers(5), conn.headers(5))
    expectStreamError(conn, STREAM_CLOSED)


# -- 5.1.2 Stream Concurrency


@case(
    "http2/5.1.2",
    1,
    "Sends HEADERS frames that causes their advertised concurrent stream limit to be exceeded",
)
def concurrencyExceeded(conn: Conn) -> None:
    maxStreams = conn.settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS)
    if maxStreams is None:
        # h2spec skips the case when the limit is unlimited.
        return
    # A zero window keeps the server from finishing (and closing) streams.
    settings = SettingsFrame(0)
    settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = 0
    conn.send(settings)
    block = conn.encoder.encode(conn.request())
    frames = []
    for i in range(maxStreams + 1):
        frame = HeadersFrame(1 + 2 * i, data=block, flags=["END_STREAM", "END_HEADERS"])
        frames.append(frame)
    conn.send(*frames)
    expectStreamError(conn, PROTOCOL_ERROR, REFUSED_STREAM)


# -- 5.3.1 Stream Dependencies


@case("http2/5.3.1", 1, "Sends HEADERS frame that depends on itself")
def headersDependsOnItself(conn: Conn) -> None:
    frame = conn.headers(1)
    frame.flags.add("PRIORITY")
    frame.depends_on = 1
    frame.stream_weight = 255
    frame.exclusive = False
    conn.send(frame)
    expectStreamError(conn, PROTOCOL_ERROR)


@case("http2/5.3.1", 2, "Sends PRIORITY frame that depend on itself")
def priorityDependsOnItself(conn: Conn) -> None:
    conn.send(PriorityFrame(1, depends_on=1, stream_weight=255, exclusive=False))
    expectStreamError(conn, PROTOCOL_ERROR)


# -- 5.4.1 Connection Error Handling


def invalidPing() -> bytes:
    """
    A PING on stream 3 (PING belongs to stream 0).
    """
    return rawFrame(TYPE_PING, 0, 3, bytes(8))


@case("http2/5.4.1", 1, "Sends an invalid PING frame for connection close")
def connectionErrorCloses(conn: Conn) -> None:
    conn.sendRaw(invalidPing())
    expectClose(conn)


@case("http2/5.4.1", 2, "Sends an invalid PING frame to receive GOAWAY frame")
def connectionErrorGoAway(conn: Conn) -> None:
    # Strict in h2spec: any GOAWAY before the close passes.
    conn.sendRaw(invalidPing())
    waitFor(conn, GoAwayFrame)


# -- 5.5 Extending HTTP/2


def unknownFrame() -> bytes:
    """
    An extension frame of unknown type 0x16, 8 zero octets, on stream 0.
    """
    return rawFrame(TYPE_UNKNOWN, 0, 0, bytes(8))


@case("http2/5.5", 1, "Sends an unknown extension frame")
def unknownExtensionFrame(conn: Conn) -> None:
    conn.sendRaw(unknownFrame())
    conn.send(PingFrame(0, opaque_data=bytes(8)))
    expectPingAck(conn, bytes(8))


@case(
    "http2/5.5", 2, "Sends an unknown extension frame in the middle of a header block"
)
def unknownFrameInHeaderBlock(conn: Conn) -> None:
    conn.send(conn.headers(1, endHeaders=False))
    conn.sendRaw(unknownFrame())
    expectConnectionError(conn, PROTOCOL_ERROR)


# -- 6.1 DATA


@case("http2/6.1", 1, "Sends a DATA frame with 0x0 stream identifier")
def dataOnStreamZero(conn: Conn) -> None:
    conn.sendRaw(rawFrame(TYPE_DATA, FLAG_END_STREAM, 0, b"test"))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case(
    "http2/6.1",
    2,
    'Sends a DATA frame on the stream that is not in "open" or "half-closed (local)" state',
)
def dataOnHalfClosedRemote(conn: Conn) -> None:
    conn.send(conn.headers(1, conn.request("POST")), data(1, b"test"))
    expectStreamError(conn, STREAM_CLOSED)


@case("http2/6.1", 3, "Sends a DATA frame with invalid pad length")
def dataInvalidPadLength(conn: Conn) -> None:
    request = [*conn.request("POST"), ("content-length", "4")]
    conn.send(conn.headers(1, request, endStream=False))
    # Length 5: pad length 6, then "Test"; the padding exceeds the payload.
    conn.sendRaw(rawFrame(TYPE_DATA, FLAG_PADDED | FLAG_END_STREAM, 1, b"\x06Test"))
    expectConnectionError(conn, PROTOCOL_ERROR)


# -- 6.2 HEADERS


@case(
    "http2/6.2",
    1,
    "Sends a HEADERS frame without the END_HEADERS flag, and a PRIORITY frame",
)
def headersThenPriority(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False, endHeaders=False),
        PriorityFrame(1, depends_on=0, stream_weight=255, exclusive=False),
        continuation(1, conn.encoder.encode(dummyHeaders())),
    )
    expectConnectionError(conn, PROTOCOL_ERROR)


@case(
    "http2/6.2",
    2,
    "Sends a HEADERS frame to another stream while sending a HEADERS frame",
)
def headersInterleaved(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False, endHeaders=False),
        conn.headers(3),
        continuation(1, conn.encoder.encode(dummyHeaders())),
    )
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/6.2", 3, "Sends a HEADERS frame with 0x0 stream identifier")
def headersOnStreamZero(conn: Conn) -> None:
    block = conn.encoder.encode(conn.request())
    conn.sendRaw(rawFrame(TYPE_HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 0, block))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/6.2", 4, "Sends a HEADERS frame with invalid pad length")
def headersInvalidPadLength(conn: Conn) -> None:
    block = conn.encoder.encode(conn.request())
    # The pad length (fragment + 2) exceeds what follows it (fragment).
    payload = bytes([len(block) + 2]) + block
    flags = FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED
    conn.sendRaw(rawFrame(TYPE_HEADERS, flags, 1, payload))
    expectStreamError(conn, PROTOCOL_ERROR)


# -- 6.3 PRIORITY


@case("http2/6.3", 1, "Sends a PRIORITY frame with 0x0 stream identifier")
def priorityOnStreamZero(conn: Conn) -> None:
    # Exclusive clear, depends on 0, weight 255.
    conn.sendRaw(rawFrame(TYPE_PRIORITY, 0, 0, struct.pack("!LB", 0, 255)))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/6.3", 2, "Sends a PRIORITY frame with a length other than 5 octets")
def priorityBadLength(conn: Conn) -> None:
    conn.send(conn.headers(1))
    conn.sendRaw(rawFrame(TYPE_PRIORITY, 0, 1, b"\x80\x00\x00\x01"))
    expectStreamError(conn, FRAME_SIZE_ERROR)


@case(
    "http2/6.3",
    3,
    "Sends a PRIORITY frame for an idle stream, then send a HEADER frame for a lower stream ID",
)
def priorityIdleThenLowerHeaders(conn: Conn) -> None:
    # Strict in h2spec.
    conn.send(
        PriorityFrame(3, depends_on=0, stream_weight=255, exclusive=False),
        conn.headers(1),
    )
    expectHeaders(conn, 1)


# -- 6.4 RST_STREAM


@case("http2/6.4", 1, "Sends a RST_STREAM frame with 0x0 stream identifier")
def rstStreamOnStreamZero(conn: Conn) -> None:
    conn.sendRaw(rawFrame(TYPE_RST_STREAM, 0, 0, struct.pack("!L", CANCEL)))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/6.4", 2, "Sends a RST_STREAM frame on a idle stream")
def rstStreamOnIdle(conn: Conn) -> None:
    conn.send(RstStreamFrame(1, error_code=CANCEL))
    expectConnectionError(conn, PROTOCOL_ERROR)


@case("http2/6.4", 3, "Sends a RST_STREAM frame with a length other than 4 octets")
def rstStreamBadLength(conn: Conn) -> None:
    conn.send(conn.headers(1))
    conn.sendRaw(rawFrame(TYPE_RST_STREAM, 0, 1, b"\x00\x00\x00"))
    expectStreamError(conn, FRAME_SIZE_ERROR)
