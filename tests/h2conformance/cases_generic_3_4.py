"""
h2spec's generic cases (C{generic/1} to C{generic/5}) and its C{http2/3.5},
C{http2/4.1}, C{http2/4.2} and C{http2/4.3} cases, one function a case,
numbered and described as h2spec numbers and describes them, with the
verdicts h2spec gives.
"""

from __future__ import annotations

from hyperframe.frame import PriorityFrame

from tests.h2conformance.core import (
    CANCEL,
    COMPRESSION_ERROR,
    DEFAULT_WINDOW_SIZE,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    TYPE_DATA,
    TYPE_HEADERS,
    TYPE_PING,
    Closed,
    Conn,
    ContinuationFrame,
    DataFrame,
    Failed,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
    case,
    describe,
    dummyHeaders,
    expectClose,
    expectConnectionError,
    expectHeaders,
    expectPingAck,
    expectStreamClose,
    expectStreamError,
    frames,
    rawFrame,
    waitFor,
)

# -- helpers


def priority(
    streamID: int, dependsOn: int = 0, weight: int = 255, exclusive: bool = False
) -> PriorityFrame:
    """
    A PRIORITY frame; C{weight} is the wire value (h2spec's C{Weight}).
    """
    return PriorityFrame(
        streamID, depends_on=dependsOn, stream_weight=weight, exclusive=exclusive
    )


def ping(data: bytes = b"\0" * 8, ack: bool = False) -> PingFrame:
    frame = PingFrame(0, flags=["ACK"] if ack else [])
    frame.opaque_data = data
    return frame


def windowUpdate(streamID: int, increment: int) -> WindowUpdateFrame:
    return WindowUpdateFrame(streamID, window_increment=increment)


def settings(*pairs: tuple[int, int]) -> SettingsFrame:
    frame = SettingsFrame(0)
    for key, value in pairs:
        frame.settings[key] = value
    return frame


def postRequest(conn: Conn) -> list[tuple[str, str]]:
    return conn.request("POST")


def expectPingAckOrClose(conn: Conn, data: bytes) -> None:
    """
    h2spec's C{VerifyPingFrameOrConnectionClose}: a PING ACK with C{data},
    or the connection closed.
    """
    try:
        for frame in frames(conn, "PING ACK nor close"):
            if (
                isinstance(frame, PingFrame)
                and "ACK" in frame.flags
                and frame.opaque_data == data
            ):
                return
    except Closed:
        return


def expectServerSettings(conn: Conn, first: bool) -> None:
    """
    The server's SETTINGS (not an ACK): the first frame it sends when
    C{first}, else the first SETTINGS it sends.
    """
    try:
        if first:
            frame = conn.recv()
        else:
            frame = waitFor(conn, SettingsFrame)
    except Closed as e:
        raise Failed(f"closed before the server's SETTINGS: {e}") from e
    if not isinstance(frame, SettingsFrame) or "ACK" in frame.flags:
        raise Failed(f"expected SETTINGS (flags 0x00), got {describe(frame)}")


def sendPrefaceAndSettings(conn: Conn) -> None:
    """
    The client connection preface as h2spec sends it: the magic, then a
    SETTINGS with INITIAL_WINDOW_SIZE 65535.
    """
    conn.sendRaw(
        PREFACE
        + settings((SettingsFrame.INITIAL_WINDOW_SIZE, DEFAULT_WINDOW_SIZE)).serialize()
    )


def headersWithBlock(
    streamID: int, block: bytes, endStream: bool = True, endHeaders: bool = True
) -> HeadersFrame:
    flags = []
    if endStream:
        flags.append("END_STREAM")
    if endHeaders:
        flags.append("END_HEADERS")
    return HeadersFrame(streamID, block, flags=flags)


def sendGetWith(conn: Conn, prefix: bytes = b"", suffix: bytes = b"") -> None:
    """
    A GET of C{/} on stream 1 whose header block is C{prefix}, the
    connection's encoding of the request, then C{suffix}.
    """
    block = prefix + conn.encoder.encode(conn.request()) + suffix
    conn.send(headersWithBlock(1, block))


# -- generic/1: Starting HTTP/2


@case("generic/1", 1, "Sends a client connection preface", raw=True)
def startingClientPreface(conn: Conn) -> None:
    # RFC 9113 3.4: the server connection preface is a SETTINGS frame, the
    # first frame the server sends.
    sendPrefaceAndSettings(conn)
    expectServerSettings(conn, first=True)


# -- generic/2: Streams and Multiplexing


@case("generic/2", 1, "Sends a PRIORITY frame on idle stream")
def priorityOnIdle(conn: Conn) -> None:
    conn.send(priority(1), ping())
    expectPingAck(conn, b"\0" * 8)


@case("generic/2", 2, "Sends a WINDOW_UPDATE frame on half-closed (remote) stream")
def windowUpdateOnHalfClosed(conn: Conn) -> None:
    # INITIAL_WINDOW_SIZE 0 keeps the server from ending the stream.
    conn.send(
        settings((SettingsFrame.INITIAL_WINDOW_SIZE, 0)),
        conn.headers(1),
        windowUpdate(1, 1),
    )
    waitFor(conn, DataFrame)


@case("generic/2", 3, "Sends a PRIORITY frame on half-closed (remote) stream")
def priorityOnHalfClosed(conn: Conn) -> None:
    conn.send(
        settings((SettingsFrame.INITIAL_WINDOW_SIZE, 0)),
        conn.headers(1),
        priority(1),
        windowUpdate(1, 1),
    )
    waitFor(conn, DataFrame)


@case("generic/2", 4, "Sends a RST_STREAM frame on half-closed (remote) stream")
def rstStreamOnHalfClosed(conn: Conn) -> None:
    conn.send(conn.headers(1), RstStreamFrame(1, error_code=CANCEL), ping())
    expectPingAckOrClose(conn, b"\0" * 8)


@case("generic/2", 5, "Sends a PRIORITY frame on closed stream")
def priorityOnClosed(conn: Conn) -> None:
    conn.send(conn.headers(1))
    expectStreamClose(conn)
    conn.send(priority(1), ping())
    expectPingAck(conn, b"\0" * 8)


# -- generic/3.1: DATA


@case("generic/3.1", 1, "Sends a DATA frame")
def dataFrame(conn: Conn) -> None:
    conn.send(
        conn.headers(1, postRequest(conn), endStream=False),
        DataFrame(1, b"test", flags=["END_STREAM"]),
    )
    expectHeaders(conn, 1)


@case("generic/3.1", 2, "Sends multiple DATA frames")
def multipleDataFrames(conn: Conn) -> None:
    conn.send(
        conn.headers(1, postRequest(conn), endStream=False),
        DataFrame(1, b"test"),
        DataFrame(1, b"test", flags=["END_STREAM"]),
    )
    expectHeaders(conn, 1)


@case("generic/3.1", 3, "Sends a DATA frame with padding")
def dataFrameWithPadding(conn: Conn) -> None:
    # As h2spec writes it: the padding is the octets "padded" (not zeros).
    padding = b"padded"
    conn.send(conn.headers(1, postRequest(conn), endStream=False))
    conn.sendRaw(
        rawFrame(
            TYPE_DATA,
            FLAG_END_STREAM | FLAG_PADDED,
            1,
            bytes([len(padding)]) + b"test" + padding,
        )
    )
    expectHeaders(conn, 1)


# -- generic/3.2: HEADERS


@case("generic/3.2", 1, "Sends a HEADERS frame")
def headersFrame(conn: Conn) -> None:
    conn.send(conn.headers(1))
    expectHeaders(conn, 1)


@case("generic/3.2", 2, "Sends a HEADERS frame with padding")
def headersFrameWithPadding(conn: Conn) -> None:
    frame = conn.headers(1)
    frame.flags.add("PADDED")
    frame.pad_length = 8
    conn.send(frame)
    expectHeaders(conn, 1)


@case("generic/3.2", 3, "Sends a HEADERS frame with priority")
def headersFrameWithPriority(conn: Conn) -> None:
    frame = conn.headers(1)
    frame.flags.add("PRIORITY")
    frame.depends_on = 0
    frame.stream_weight = 255
    frame.exclusive = False
    conn.send(frame)
    expectHeaders(conn, 1)


# -- generic/3.3: PRIORITY


@case("generic/3.3", 1, "Sends a PRIORITY frame with priority 1")
def priorityWeight1(conn: Conn) -> None:
    conn.send(priority(1, weight=0), conn.headers(1))
    expectHeaders(conn, 1)


@case("generic/3.3", 2, "Sends a PRIORITY frame with priority 256")
def priorityWeight256(conn: Conn) -> None:
    conn.send(priority(1, weight=255), conn.headers(1))
    expectHeaders(conn, 1)


@case("generic/3.3", 3, "Sends a PRIORITY frame with stream dependency")
def priorityDependency(conn: Conn) -> None:
    conn.send(priority(3, dependsOn=1, weight=0), conn.headers(1))
    expectHeaders(conn, 1)


@case("generic/3.3", 4, "Sends a PRIORITY frame with exclusive")
def priorityExclusive(conn: Conn) -> None:
    conn.send(priority(1, weight=0, exclusive=True), conn.headers(1))
    expectHeaders(conn, 1)


@case(
    "generic/3.3",
    5,
    "Sends a PRIORITY frame for an idle stream, then send a HEADER frame "
    "for a lower stream ID",
)
def priorityIdleThenLowerHeaders(conn: Conn) -> None:
    conn.send(priority(3, weight=255), conn.headers(1))
    expectHeaders(conn, 1)


# -- generic/3.4: RST_STREAM


@case("generic/3.4", 1, "Sends a RST_STREAM frame")
def rstStreamFrame(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False), RstStreamFrame(1, error_code=CANCEL), ping()
    )
    expectPingAckOrClose(conn, b"\0" * 8)


# -- generic/3.5: SETTINGS


@case("generic/3.5", 1, "Sends a SETTINGS frame")
def settingsFrame(conn: Conn) -> None:
    conn.send(
        settings(
            (SettingsFrame.HEADER_TABLE_SIZE, 4096),
            (SettingsFrame.ENABLE_PUSH, 1),
            (SettingsFrame.MAX_CONCURRENT_STREAMS, 100),
            (SettingsFrame.INITIAL_WINDOW_SIZE, 65535),
            (SettingsFrame.MAX_FRAME_SIZE, 16384),
            (SettingsFrame.MAX_HEADER_LIST_SIZE, 100),
        )
    )
    frame = waitFor(conn, SettingsFrame)
    if "ACK" not in frame.flags:
        raise Failed(f"expected SETTINGS (flags 0x01), got {describe(frame)}")


# -- generic/3.7: PING


@case("generic/3.7", 1, "Sends a PING frame")
def pingFrame(conn: Conn) -> None:
    data = b"h2spec\0\0"
    conn.send(ping(data))
    expectPingAck(conn, data)


# -- generic/3.8: GOAWAY


@case("generic/3.8", 1, "Sends a GOAWAY frame")
def goAwayFrame(conn: Conn) -> None:
    conn.send(
        GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR, additional_data=b"h2spec")
    )
    expectClose(conn)


# -- generic/3.9: WINDOW_UPDATE


@case("generic/3.9", 1, "Sends a WINDOW_UPDATE frame with stream ID 0")
def windowUpdateConnection(conn: Conn) -> None:
    conn.send(windowUpdate(0, 1), ping())
    waitFor(conn, PingFrame)


@case("generic/3.9", 2, "Sends a WINDOW_UPDATE frame with stream ID 1")
def windowUpdateStream(conn: Conn) -> None:
    conn.send(conn.headers(1), windowUpdate(1, 1))
    waitFor(conn, HeadersFrame)


# -- generic/3.10: CONTINUATION


@case("generic/3.10", 1, "Sends a CONTINUATION frame")
def continuationFrame(conn: Conn) -> None:
    block = conn.encoder.encode(conn.request())
    conn.send(
        headersWithBlock(1, block[:5], endHeaders=False),
        ContinuationFrame(1, block[5:], flags=["END_HEADERS"]),
    )
    expectHeaders(conn, 1)


@case("generic/3.10", 2, "Sends multiple CONTINUATION frames")
def multipleContinuationFrames(conn: Conn) -> None:
    block = conn.encoder.encode(conn.request())
    conn.send(
        headersWithBlock(1, block[:5], endHeaders=False),
        ContinuationFrame(1, block[5:10]),
        ContinuationFrame(1, block[10:], flags=["END_HEADERS"]),
    )
    expectHeaders(conn, 1)


# -- generic/4: HTTP Message Exchanges


@case("generic/4", 1, "Sends a GET request")
def getRequest(conn: Conn) -> None:
    conn.send(conn.headers(1))
    expectHeaders(conn, 1)


@case("generic/4", 2, "Sends a HEAD request")
def headRequest(conn: Conn) -> None:
    conn.send(conn.headers(1, conn.request("HEAD")))
    expectHeaders(conn, 1)


@case("generic/4", 3, "Sends a POST request")
def postRequestCase(conn: Conn) -> None:
    conn.send(
        conn.headers(1, postRequest(conn), endStream=False),
        DataFrame(1, b"test", flags=["END_STREAM"]),
    )
    expectHeaders(conn, 1)


@case("generic/4", 4, "Sends a POST request with trailers")
def postRequestWithTrailers(conn: Conn) -> None:
    conn.send(
        conn.headers(1, [*postRequest(conn), ("trailer", "x-test")], endStream=False),
        DataFrame(1, b"test"),
    )
    conn.send(conn.headers(1, [("x-test", "ok")]))
    expectHeaders(conn, 1)


# -- generic/5: HPACK (RFC 7541 section 6)

_HPACK_APPENDED: list[tuple[str, bytes]] = [
    # 6.1 indexed header field (user-agent: , static index 58)
    ("Sends a indexed header field representation", b"\xba"),
    # 6.2.1 literal with incremental indexing (user-agent: h2spec)
    (
        "Sends a literal header field with incremental indexing - indexed name",
        b"\x40\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4",
    ),
    (
        "Sends a literal header field with incremental indexing - indexed name "
        "(with Huffman coding)",
        b"\x40\x0a\x75\x73\x65\x72\x2d\x61\x67\x65\x6e\x74\x06\x68\x32\x73\x70\x65\x63",
    ),
    # 6.2.1 literal with incremental indexing (x-test: h2spec)
    (
        "Sends a literal header field with incremental indexing - new name",
        b"\x40\x06\x78\x2d\x74\x65\x73\x74\x06\x68\x32\x73\x70\x65\x63",
    ),
    (
        "Sends a literal header field with incremental indexing - new name "
        "(with Huffman coding)",
        b"\x40\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4",
    ),
    # 6.2.2 literal without indexing
    (
        "Sends a literal header field without indexing - indexed name",
        b"\x00\x0a\x75\x73\x65\x72\x2d\x61\x67\x65\x6e\x74\x06\x68\x32\x73\x70\x65\x63",
    ),
    (
        "Sends a literal header field without indexing - indexed name "
        "(with Huffman coding)",
        b"\x00\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4",
    ),
    (
        "Sends a literal header field without indexing - new name",
        b"\x00\x06\x78\x2d\x74\x65\x73\x74\x06\x68\x32\x73\x70\x65\x63",
    ),
    (
        "Sends a literal header field without indexing - new name (huffman encoded)",
        b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4",
    ),
    # 6.2.3 literal never indexed
    (
        "Sends a literal header field never indexed - indexed name",
        b"\x10\x0a\x75\x73\x65\x72\x2d\x61\x67\x65\x6e\x74\x06\x68\x32\x73\x70\x65\x63",
    ),
    (
        "Sends a literal header field never indexed - indexed name (huffman encoded)",
        b"\x10\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4",
    ),
    # h2spec sends the Huffman form for both "new name" cases.
    (
        "Sends a literal header field never indexed - new name",
        b"\x10\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4",
    ),
    (
        "Sends a literal header field never indexed - new name (huffman encoded)",
        b"\x10\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4",
    ),
]


def _hpackCase(number: int, description: str, representation: bytes) -> None:
    @case("generic/5", number, description)
    def run(conn: Conn) -> None:
        sendGetWith(conn, suffix=representation)
        expectHeaders(conn, 1)

    run.__name__ = run.__qualname__ = f"hpack{number}"


for _number, (_description, _representation) in enumerate(_HPACK_APPENDED, 1):
    _hpackCase(_number, _description, _representation)


@case("generic/5", 14, "Sends a dynamic table size update")
def dynamicTableSizeUpdate(conn: Conn) -> None:
    # The encoder's table shrinks to 128: its next block starts with a
    # dynamic table size update of 128 (RFC 7541 6.3).
    conn.encoder.header_table_size = 128
    sendGetWith(conn)
    expectHeaders(conn, 1)


@case("generic/5", 15, "Sends multiple dynamic table size update")
def multipleDynamicTableSizeUpdates(conn: Conn) -> None:
    # Two updates at the start of the block: 128, then 4096 (RFC 7541 4.2).
    sendGetWith(conn, prefix=b"\x3f\x61\x3f\xe1\x1f")
    expectHeaders(conn, 1)


# -- http2/3.5: HTTP/2 Connection Preface


@case("http2/3.5", 1, "Sends client connection preface", raw=True)
def connectionPreface(conn: Conn) -> None:
    sendPrefaceAndSettings(conn)
    expectServerSettings(conn, first=False)


@case("http2/3.5", 2, "Sends invalid connection preface", raw=True)
def invalidConnectionPreface(conn: Conn) -> None:
    # RFC 9113 3.4: an invalid preface is a connection error of type
    # PROTOCOL_ERROR; the connection must end.
    conn.sendRaw(b"INVALID CONNECTION PREFACE\r\n\r\n")
    expectClose(conn)


# -- http2/4.1: Frame Format


@case("http2/4.1", 1, "Sends a frame with unknown type")
def unknownFrameType(conn: Conn) -> None:
    # RFC 9113 4.1/5.5: frames of unknown types are ignored.
    conn.sendRaw(rawFrame(0x16, 0, 0, b"\0" * 8))
    conn.send(ping())
    waitFor(conn, PingFrame)


@case("http2/4.1", 2, "Sends a frame with undefined flag")
def undefinedFlag(conn: Conn) -> None:
    # RFC 9113 4.1: undefined flags are ignored.
    conn.sendRaw(rawFrame(TYPE_PING, 0x16, 0, b"\0" * 8))
    waitFor(conn, PingFrame)


@case("http2/4.1", 3, "Sends a frame with reserved field bit")
def reservedBit(conn: Conn) -> None:
    # RFC 9113 4.1: the reserved bit is ignored on receipt.
    conn.sendRaw(rawFrame(TYPE_PING, 0x16, 0x80000000, b"\0" * 8))
    waitFor(conn, PingFrame)


# -- http2/4.2: Frame Size


@case("http2/4.2", 1, "Sends a DATA frame with 2^14 octets in length")
def dataOfMaxFrameSize(conn: Conn) -> None:
    conn.send(
        conn.headers(1, postRequest(conn), endStream=False),
        DataFrame(1, b"x" * conn.maxFrameSize, flags=["END_STREAM"]),
    )
    waitFor(conn, HeadersFrame)


@case(
    "http2/4.2",
    2,
    "Sends a large size DATA frame that exceeds the SETTINGS_MAX_FRAME_SIZE",
)
def dataOverMaxFrameSize(conn: Conn) -> None:
    # RFC 9113 4.2: a frame over SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR.
    conn.send(
        conn.headers(1, postRequest(conn), endStream=False),
        DataFrame(1, b"x" * (conn.maxFrameSize + 1), flags=["END_STREAM"]),
    )
    expectStreamError(conn, FRAME_SIZE_ERROR)


@case(
    "http2/4.2",
    3,
    "Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE",
)
def headersOverMaxFrameSize(conn: Conn) -> None:
    # RFC 9113 4.2: a frame carrying a field block that is too large is a
    # connection error of type FRAME_SIZE_ERROR.
    conn.send(conn.headers(1, [*conn.request(), *dummyHeaders(5)]))
    expectConnectionError(conn, FRAME_SIZE_ERROR)


# -- http2/4.3: Header Compression and Decompression


@case("http2/4.3", 1, "Sends invalid header block fragment")
def invalidHeaderBlock(conn: Conn) -> None:
    # A literal with incremental indexing and neither name length nor
    # value: RFC 9113 4.3, a decoding error is a COMPRESSION_ERROR.
    conn.sendRaw(rawFrame(TYPE_HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 1, b"\x40"))
    expectConnectionError(conn, COMPRESSION_ERROR)


@case("http2/4.3", 2, "Sends a PRIORITY frame while sending the header blocks")
def priorityInsideHeaderBlock(conn: Conn) -> None:
    # RFC 9113 4.3: a field block is a contiguous sequence of frames.
    conn.send(
        conn.headers(1, endStream=False, endHeaders=False),
        priority(1),
        ContinuationFrame(
            1, conn.encoder.encode(dummyHeaders(1)), flags=["END_HEADERS"]
        ),
    )
    expectConnectionError(conn, PROTOCOL_ERROR)


@case(
    "http2/4.3",
    3,
    "Sends a HEADERS frame to another stream while sending the header blocks",
)
def headersInsideHeaderBlock(conn: Conn) -> None:
    conn.send(
        conn.headers(1, endStream=False, endHeaders=False),
        conn.headers(3),
        ContinuationFrame(
            1, conn.encoder.encode(dummyHeaders(1)), flags=["END_HEADERS"]
        ),
    )
    expectConnectionError(conn, PROTOCOL_ERROR)
