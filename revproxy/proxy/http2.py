# -*- test-case-name: tests.test_http2 -*-
"""
The client side of HTTP/2: L{HTTP2Connection}, a Twisted L{Protocol} on the
C{h2} library's state machine (framing, HPACK, stream states) with
revproxy's own flow control, deadlines and limits on top.  Each stream is an
L{Exchange} handed to the front end's handler as soon as its head is whole;
the connection is the exchanges' L{ExchangeChannel}.

How it works: docs/internals.md, "HTTP/2 client side".
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection as _H2
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.settings import SettingCodes, Settings
from hpack.exceptions import HPACKError
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from revproxy.private.h2 import forgetContentLength
from revproxy.proxy.exchange import Exchange, FrontEndView
from revproxy.proxy.headers import HOP_BY_HOP
from revproxy.proxy.responses import httpDate, refusalBody, shortHeaders

_log = Logger()

#: What every HTTP/2 client sends first (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: C{SETTINGS_MAX_CONCURRENT_STREAMS}.
MAX_CONCURRENT_STREAMS = 100
#: C{SETTINGS_INITIAL_WINDOW_SIZE}: the upload window of each stream.
STREAM_WINDOW = 256 * 1024
#: The upload window of the connection.
CONNECTION_WINDOW = 1024 * 1024
#: A stream's response producer is paused past this many bytes waiting...
HIGH_WATER = 64 * 1024
#: ...and resumed under this many.
LOW_WATER = 16 * 1024
#: Body bytes acknowledged before the handler attaches a sink.
UNATTACHED_BODY = 64 * 1024
#: Streams the client may reset before their answer ended, net of the
#: streams answered in full (h2o's budget).
RESET_BUDGET = 100
#: Bytes written while the transport is paused before the connection is
#: aborted (control frames: nothing else is sent then).
MAX_PAUSED_BYTES = 64 * 1024
#: Seconds a closing connection may take to go away before it is aborted.
ABORT_TIMEOUT = 15.0

# Float sums of seconds may land a hair before a deadline computed from
# them; this much early counts as on time.
_SLACK = 1e-3
# While a body keeps coming at about the minimum rate, the rate is checked
# no more often than this.
_RATE_CHECK_SECS = 1.0

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: A field name as HTTP/1.1 can carry it: a token, lowercase (h2 has
#: refused uppercase already).
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
#: What a field value must not hold (RFC 9110 section 5.5): control
#: characters other than HTAB, and DEL; HTTP/1.1 refuses them as llhttp
#: does, so one reading of a request holds across both.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*\Z")
_AUTHORITY = re.compile(rb"[\x21-\x3f\x41-\x7e]+\Z")

#: Response fields HTTP/2 forbids (RFC 9113 section 8.2.2), dropped if the
#: handler gives them.
_CONNECTION_SPECIFIC = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    ]
)

# Frame types and flags the inbound scanner looks at (RFC 9113 section 6).
_DATA = 0x0
_HEADERS = 0x1
_SETTINGS = 0x4
_PUSH_PROMISE = 0x5
_GOAWAY = 0x7
_CONTINUATION = 0x9
_END_HEADERS = 0x4
_ACK = 0x1


#: The most request body bytes dropped after an answer that did not need
#: them, before the stream is reset.
DISCARD_BYTES = 64 * 1024 * 1024


class _PeerGoAway:
    """
    A well-formed GOAWAY frame from the client, taken out of the bytes
    C{h2} reads.
    """

    __slots__ = ("errorCode", "lastStreamID")

    def __init__(self, payload: bytes) -> None:
        self.lastStreamID = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
        self.errorCode = int.from_bytes(payload[4:8], "big")


class _SettingsAckWithPayload:
    """
    A SETTINGS frame with the ACK flag and a payload: a connection error
    FRAME_SIZE_ERROR (RFC 9113 section 6.5).
    """


_SETTINGS_ACK_WITH_PAYLOAD = _SettingsAckWithPayload()


class _DataOnClosed:
    """
    A DATA frame on a stream that is closed after the client's END_STREAM
    (its response is complete too): a connection error STREAM_CLOSED (RFC
    9113 section 5.1, "closed").  C{h2} answers it with a stream error
    while it still remembers the stream.
    """

    __slots__ = ("streamID",)

    def __init__(self, streamID: int) -> None:
        self.streamID = streamID


#: How many streams closed after both END_STREAMs a connection remembers.
CLOSED_REMEMBERED = 256

#: What the inbound scanner takes out of the bytes and ends the connection.
_Taken = _SettingsAckWithPayload | _DataOnClosed


class _InboundFrames:
    """
    Follows the frame boundaries in what the client sends, to take out the
    frames C{h2} mishandles for a server: a well-formed GOAWAY (which would
    stop C{h2} from sending anything more, see the module's description)
    and a SETTINGS ACK with a payload.

    Every other byte goes to C{h2} unchanged and in order, in as few pieces
    as possible: usually one, the bytes as they came.  A frame header split
    across reads is held back until whole.  Frames inside a header block,
    over C{maxFrameSize} or malformed are left to C{h2}, which fails the
    connection on them.
    """

    def __init__(self) -> None:
        self._preface = len(PREFACE)
        self._header = b""
        self._left = 0
        self._goaway: bytearray | None = None
        self._inBlock = False
        self.maxFrameSize = 16384
        #: The streams closed after both END_STREAMs (L{_DataOnClosed}),
        #: oldest first, at most L{CLOSED_REMEMBERED}.
        self.closed: dict[int, None] = {}

    def streamClosed(self, streamID: int) -> None:
        """
        Both sides ended stream C{streamID} with END_STREAM.
        """
        closed = self.closed
        closed[streamID] = None
        if len(closed) > CLOSED_REMEMBERED:
            del closed[next(iter(closed))]

    def split(self, data: bytes) -> list[bytes | _PeerGoAway | _Taken]:
        """
        The pieces of C{data} for C{h2}, with the frames taken out in their
        place.
        """
        out: list[bytes | _PeerGoAway | _Taken] = []
        end = len(data)
        pos = start = 0
        if self._preface:
            pos = min(self._preface, end)
            self._preface -= pos
        while pos < end:
            left = self._left
            if left:
                take = min(left, end - pos)
                goaway = self._goaway
                if goaway is not None:
                    goaway += data[pos : pos + take]
                pos += take
                self._left = left - take
                if goaway is not None:
                    start = pos
                    if not self._left:
                        out.append(_PeerGoAway(bytes(goaway)))
                        self._goaway = None
                continue
            held = bool(self._header) or end - pos < 9
            if held:
                if start < pos:
                    out.append(data[start:pos])
                need = 9 - len(self._header)
                self._header += data[pos : pos + need]
                pos = start = min(pos + need, end)
                if len(self._header) < 9:
                    break
                header = self._header
                self._header = b""
            else:
                header = data[pos : pos + 9]
                pos += 9
            length = int.from_bytes(header[0:3], "big")
            kind = header[3]
            flags = header[4]
            streamID = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            taken: _Taken | None = None
            if self._inBlock:
                if kind == _CONTINUATION and flags & _END_HEADERS:
                    self._inBlock = False
            elif kind in (_HEADERS, _PUSH_PROMISE):
                self._inBlock = not flags & _END_HEADERS
            elif kind == _DATA and streamID in self.closed:
                taken = _DataOnClosed(streamID)
            elif streamID == 0 and length <= self.maxFrameSize:
                if kind == _GOAWAY and length >= 8:
                    self._goaway = bytearray()
                elif kind == _SETTINGS and flags & _ACK and length:
                    taken = _SETTINGS_ACK_WITH_PAYLOAD
            if self._goaway is not None or taken is not None:
                if not held and start < pos - 9:
                    out.append(data[start : pos - 9])
                start = pos
                if taken is not None:
                    # The connection ends here: nothing after matters.
                    out.append(taken)
                    return out
            elif held:
                out.append(header)
            self._left = length
        if start < end and not self._header:
            out.append(data[start:end] if start else data)
        return out


def _errorCode(error: ProtocolError) -> int:
    """
    The error code RFC 9113 gives the connection error C{error} of
    C{h2}: COMPRESSION_ERROR for a header block HPACK cannot decode (C{h2}
    says PROTOCOL_ERROR), else C{h2}'s.
    """
    cause = error.__cause__
    if isinstance(cause, HPACKError | IndexError) and not isinstance(
        error, DenialOfServiceError
    ):
        return ErrorCodes.COMPRESSION_ERROR
    return int(error.error_code)


def _errorName(code: int) -> str:
    """
    The name of the HTTP/2 error code C{code}, for the log.
    """
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def _goAwayFrame(lastStreamID: int, errorCode: int) -> bytes:
    """
    A GOAWAY frame, serialized.
    """
    frame = GoAwayFrame(0, last_stream_id=lastStreamID, error_code=errorCode)
    return bytes(frame.serialize())


def _withErrorCode(data: bytes, lastStreamID: int, errorCode: int) -> bytes:
    """
    C{data}, the bytes C{h2} queued when it failed the connection, ending
    with a GOAWAY that says C{errorCode}: C{h2}'s last frame is its GOAWAY
    (17 bytes, no debug data), whose code is replaced; when C{h2} queued
    none (an invalid preface), one is added.
    """
    tail = data[-17:]
    if len(tail) == 17 and tail[:3] == b"\x00\x00\x08" and tail[3] == _GOAWAY:
        return data[:-4] + errorCode.to_bytes(4, "big")
    return data + _goAwayFrame(lastStreamID, errorCode)


class _Refusal(Exception):
    """
    A request head HTTP/2 allows but revproxy refuses with C{code}.
    """

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class _Head:
    """
    A request head read from a HEADERS block.
    """

    __slots__ = (
        "contentLength",
        "expectContinue",
        "fields",
        "method",
        "path",
        "protocol",
    )

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.contentLength: int | None = None
        self.expectContinue = False
        #: An extended CONNECT's C{:protocol} (RFC 8441).
        self.protocol: bytes | None = None


def readHead(
    headers: list[tuple[bytes, bytes]],
    head: _Head,
    maxFields: int,
    maxPath: int,
) -> None:
    """
    Fill C{head} in from the decoded C{headers} of a request (RFC 9113
    section 8.3), as far as they go.

    @raise _Refusal: The request is refused (400, 405, 414, 431, 501);
        C{head} holds its method and target for the log.
    """
    method = path = scheme = authority = protocol = None
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    cookieAt = -1
    host: bytes | None = None
    hosts = 0
    count = 0
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = head.method = value
            elif name == b":path":
                path = head.path = value
            elif name == b":scheme":
                scheme = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue
        count += 1
        if _FIELD_NAME.match(name) is None:
            raise _Refusal(400, "a field name is not a token")
        if _BAD_VALUE.search(value) is not None:
            raise _Refusal(400, "a field value holds a control character")
        if name == b"cookie":
            if cookieAt < 0:
                cookieAt = len(fields)
                fields.append((name, value))
            cookies.append(value)
            continue
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"content-length":
            try:
                head.contentLength = int(value)
            except ValueError:
                raise _Refusal(400, "the content-length is not a number") from None
        elif name == b"expect" and value.lower() == b"100-continue":
            # Answered by the connection (resumeBody), never forwarded.
            head.expectContinue = True
            continue
        fields.append((name, value))
    if method is not None and path is None:
        head.path = authority or b""
    if method is None or not _TOKEN.match(method):
        raise _Refusal(400, "the method is not a token")
    if method == b"CONNECT":
        if protocol is None:
            raise _Refusal(405, "CONNECT is not allowed")
        # RFC 8441 section 4: an extended CONNECT carries :scheme and
        # :path like any request (checked below); only WebSocket is served.
        if protocol.lower() != b"websocket":
            raise _Refusal(501, "extended CONNECT is served for websocket only")
        head.protocol = protocol
    elif protocol is not None:
        raise _Refusal(400, "a :protocol on a request that is not a CONNECT")
    if count > maxFields:
        raise _Refusal(431, f"more than {maxFields} header fields")
    if path is None:
        raise _Refusal(400, "the :path is missing")
    if len(path) > maxPath:
        raise _Refusal(414, f"the :path is longer than {maxPath} bytes")
    if not (_ORIGIN_FORM.match(path) or (path == b"*" and method == b"OPTIONS")):
        raise _Refusal(400, "the :path is not in origin form")
    if scheme not in (b"https", b"http"):
        raise _Refusal(400, "the :scheme is not https or http")
    if hosts > 1:
        raise _Refusal(400, "more than one host field")
    if authority is not None:
        if not _AUTHORITY.match(authority):
            raise _Refusal(400, "the :authority is malformed")
        if host is None:
            fields.insert(0, (b"host", authority))
            if cookieAt >= 0:
                cookieAt += 1
        elif host.lower() != authority.lower():
            raise _Refusal(400, "the host field differs from the :authority")
    elif host is None:
        raise _Refusal(400, "neither :authority nor host")
    if len(cookies) > 1:
        # RFC 9113 section 8.2.3: one field for HTTP/1.1.
        fields[cookieAt] = (b"cookie", b"; ".join(cookies))
    head.fields = fields


class _Stream:
    """
    What the connection keeps of one stream whose request it read.
    """

    __slots__ = (
        "attached",
        "bodyBytes",
        "bodyDone",
        "bodyLast",
        "bodyPaused",
        "bodyStart",
        "buffer",
        "ended",
        "exchange",
        "expectContinue",
        "headSent",
        "id",
        "isHead",
        "producer",
        "producerPaused",
        "queued",
        "refused",
        "stalled",
        "stalledAt",
        "tunnel",
        "unacked",
        "waiting",
    )

    def __init__(self, streamID: int, exchange: Exchange, now: float) -> None:
        self.id = streamID
        self.exchange = exchange
        self.isHead = exchange.method == b"HEAD"
        # The response.
        self.buffer = bytearray()
        self.headSent = False
        self.ended = False
        self.queued = False
        self.producer: IPushProducer | None = None
        self.producerPaused = False
        self.stalled = False
        self.stalledAt = 0.0
        #: An extended CONNECT: what the client sends is a tunnel's, under
        #: the tunnel's idle deadline, not the body deadlines.
        self.tunnel = False
        # The request body.
        self.bodyDone = exchange.bodyComplete
        self.bodyPaused = False
        self.attached = False
        self.waiting = 0
        self.unacked = 0
        self.expectContinue = False
        self.bodyStart = self.bodyLast = now
        self.bodyBytes = 0
        self.refused = False


@implementer(IPushProducer)
class HTTP2Connection(Protocol):
    """
    One HTTP/2 client connection: see the module's description.

    @ivar front: The front end: handler, clock, limits, observer.
    """

    def __init__(self, front: FrontEndView) -> None:
        self.front = front
        self.limits = front.limits
        self._clock = front.clock
        self._conn: _H2 | None = None
        self._frames = _InboundFrames()
        self._streams: dict[int, _Stream] = {}
        self._ofExchange: dict[Exchange, _Stream] = {}
        self._ready: deque[_Stream] = deque()
        # Streams answered in full while the client still sends their
        # body: what comes is acknowledged and dropped, as HTTP/1.1's
        # lingering close does, for lingering_close_secs or DISCARD_BYTES,
        # and only then is the stream reset (RST_STREAM NO_ERROR, RFC 9113
        # section 8.1).  A client that reads the answer stops sending and
        # ends its stream (short of its content-length: see
        # forgetContentLength).  Not at once: curl (7.88) fails an upload
        # whose stream is reset before it read the answer's status.
        self._resetOnData: dict[int, tuple[float, int]] = {}
        self._secure = False
        self._peer: Any = None
        self._serverName: str | None = None
        # Phases.
        self._madeAt = 0.0
        self._seenRequest = False
        self._idleSince = 0.0
        self._lastStreamID: int | None = None
        self._goAwaySent = False
        self._closing = False
        self._closingAt = 0.0
        self._gone = False
        # Writing.
        self._receiving = False
        self._pumping = False
        self._writePaused = False
        self._pausedAt = 0.0
        self._pausedBytes = 0
        # Counters.
        self._requests = 0
        # The highest stream whose request was taken (handed to the handler
        # or answered): what a GOAWAY names, not h2's highest inbound id,
        # which also counts streams parsed in the same read and never
        # taken, so that a client retries those (RFC 9113 section 6.8).
        self._lastTaken = 0
        self._resetBudget = RESET_BUDGET
        # The one timer, and the clientGone calls that wait for the next turn.
        self._timer: IDelayedCall | None = None
        self._leaving: list[Exchange] = []
        self._leavingCall: IDelayedCall | None = None

    # -- IProtocol

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self._secure = bool(ISSLTransport.providedBy(transport))
        self._peer = transport.getPeer()
        self._serverName = getattr(transport, "serverName", None)
        limits = self.limits
        conn = _H2(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=True,
                # What this connection sends is its own: sendHead lowercases
                # the names and drops connection-specific fields, and the
                # values come from llhttp (an upstream's) or revproxy.
                # Checking them again costs a tenth of a stream's time.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_headers_total_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                # RFC 8441: WebSocket over an HTTP/2 stream.
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        # h2 copies the setting into the decoder only when a change is
        # acknowledged.
        conn.decoder.max_header_list_size = limits.max_headers_total_bytes
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._conn = conn
        cast(IConsumer, transport).registerProducer(self, True)
        self._madeAt = self._idleSince = self._clock.seconds()
        self._flush()
        self._arm(self._madeAt + limits.header_timeout_secs)

    def dataReceived(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self._closing:
            return
        self._receiving = True
        try:
            for piece in self._frames.split(data):
                if self._closing:
                    break
                if isinstance(piece, bytes):
                    self._dispatch(conn.receive_data(piece))
                elif isinstance(piece, _PeerGoAway):
                    self._peerGoAway(piece)
                elif isinstance(piece, _DataOnClosed):
                    self._connectionError(
                        ErrorCodes.STREAM_CLOSED,
                        f"DATA on stream {piece.streamID}, closed after END_STREAM",
                    )
                else:
                    self._connectionError(
                        ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload"
                    )
        except ProtocolError as e:
            self._connectionError(_errorCode(e), str(e) or type(e).__name__, e)
        except Exception:
            _log.failure("HTTP/2 connection failed")
            self._abort()
        finally:
            self._receiving = False
        if not self._closing:
            self._pump()
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = self._closing = True
        self._writePaused = True
        self._cancel()
        leaving = self._leaving
        self._leaving = []
        call = self._leavingCall
        self._leavingCall = None
        if call is not None and call.active():
            call.cancel()
        streams = list(self._streams.values())
        self._streams.clear()
        self._ofExchange.clear()
        self._ready.clear()
        for exchange in leaving:
            exchange.clientGone()
        for stream in streams:
            if not stream.exchange.finished:
                stream.exchange.clientGone()

    # -- what the tracker asks (graceful shutdown)

    def busy(self) -> bool:
        """
        Whether a stream is in flight.
        """
        return bool(self._streams)

    def drain(self) -> None:
        """
        Shut down gracefully: C{SETTINGS_MAX_CONCURRENT_STREAMS} 0 and a
        GOAWAY naming the highest stream so far, new streams refused, and
        the connection closed once the streams in flight are done.
        """
        conn = self._conn
        if conn is None or self._closing:
            return
        if self._lastStreamID is None:
            try:
                conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            except ProtocolError:
                pass
            self._goAway(conn.highest_inbound_stream_id, ErrorCodes.NO_ERROR)
        if not self._streams:
            self._close()
        else:
            self._flush()

    # -- events

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if self._closing:
                return
            handler = self._handlers.get(type(event))
            if handler is not None:
                handler(self, event)

    def _requestReceived(self, event: RequestReceived) -> None:
        conn = self._conn
        assert conn is not None
        streamID = event.stream_id
        assert streamID is not None
        self._seenRequest = True
        last = self._lastStreamID
        if last is not None and streamID > last:
            try:
                conn.reset_stream(streamID, ErrorCodes.REFUSED_STREAM)
            except ProtocolError:
                pass
            return
        self._requests += 1
        self._lastTaken = streamID
        limits = self.limits
        cap = limits.max_requests_per_connection
        if cap and self._requests >= cap and last is None:
            self._goAway(streamID, ErrorCodes.NO_ERROR)
        head = _Head()
        refusal: _Refusal | None = None
        try:
            readHead(
                event.headers,
                head,
                limits.max_header_fields,
                limits.max_request_line_bytes,
            )
        except _Refusal as e:
            refusal = e
        ended = event.stream_ended is not None
        if refusal is not None or ended:
            bodyLength: int | None = 0
        else:
            bodyLength = head.contentLength
        transport = self.transport
        exchange = Exchange(
            self,
            head.method,
            head.path,
            b"HTTP/2",
            head.fields,
            bodyLength,
            secure=self._secure,
            peer=self._peer,
            serverName=self._serverName,
            transport=transport,
            observer=self.front.observer,
            runtime=self.front.snapshot(),
        )
        # No Connection field reaches here (h2 refuses connection-specific
        # fields), so nothing more is hop-by-hop.
        exchange.hopByHop = HOP_BY_HOP
        exchange.protocol = head.protocol
        now = self._clock.seconds()
        stream = _Stream(streamID, exchange, now)
        stream.tunnel = head.protocol is not None
        stream.bodyDone = ended
        self._streams[streamID] = stream
        self._ofExchange[exchange] = stream
        if refusal is not None:
            _log.info(
                "HTTP/2 request refused ({code}): {detail}",
                code=refusal.code,
                detail=refusal.detail,
            )
            self.refuse(exchange, refusal.code, refusal.detail)
            return
        stream.expectContinue = head.expectContinue
        if not ended:
            self._arm(now + limits.body_timeout_secs)
        try:
            self.front.handler.handle(exchange)
        except Exception:
            _log.failure("The request handler failed")
            if not exchange.finished and not exchange.clientLeft:
                self.abortExchange(exchange)

    def _dataReceived(self, event: DataReceived) -> None:
        conn = self._conn
        assert conn is not None
        streamID = event.stream_id
        assert streamID is not None
        length = event.flow_controlled_length or 0
        data = event.data or b""
        discarding = self._resetOnData.get(streamID)
        if discarding is not None:
            self._ack(streamID, length)
            until, left = discarding
            left -= length
            if left < 0 or self._clock.seconds() >= until:
                del self._resetOnData[streamID]
                self._resetID(streamID, ErrorCodes.NO_ERROR)
            else:
                self._resetOnData[streamID] = (until, left)
            return
        stream = self._streams.get(streamID)
        if stream is None or stream.refused or stream.exchange.bodyComplete:
            self._ack(streamID, length)
            return
        stream.bodyBytes += len(data)
        stream.bodyLast = self._clock.seconds()
        if not stream.attached:
            stream.waiting += len(data)
        if data and not stream.exchange.bodyReceived(data):
            # Refused (413) or aborted: acknowledged with the remainder.
            self._ack(streamID, length)
            return
        if stream.id not in self._streams:
            self._ack(streamID, length)
        elif stream.bodyPaused or stream.waiting > UNATTACHED_BODY:
            stream.unacked += length
        else:
            self._ack(streamID, length)

    def _streamEnded(self, event: StreamEnded) -> None:
        streamID = event.stream_id
        assert streamID is not None
        self._resetOnData.pop(streamID, None)
        stream = self._streams.get(streamID)
        if stream is None:
            return
        stream.bodyDone = True
        # The whole body is in memory now: its window need not stay shut.
        self._ackRest(stream)
        if not stream.refused:
            stream.exchange.bodyEnded()

    def _streamReset(self, event: StreamReset) -> None:
        streamID = event.stream_id
        assert streamID is not None
        self._resetOnData.pop(streamID, None)
        stream = self._streams.get(streamID)
        if stream is None:
            return
        self._lost(stream, later=False)

    def _windowUpdated(self, event: WindowUpdated) -> None:
        streamID = event.stream_id
        if streamID:
            stream = self._streams.get(streamID)
            if stream is not None and stream.buffer:
                self._queue(stream)
        else:
            self._queueAll()

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._queueAll()

    def _connectionTerminated(self, event: ConnectionTerminated) -> None:
        # Only if a GOAWAY slipped past _InboundFrames: h2 can send nothing
        # more, so the streams in flight cannot be answered.
        self._close(goAway=False)

    _handlers: dict[type[Event], Callable[[HTTP2Connection, Any], None]] = {
        RequestReceived: _requestReceived,
        DataReceived: _dataReceived,
        StreamEnded: _streamEnded,
        StreamReset: _streamReset,
        WindowUpdated: _windowUpdated,
        RemoteSettingsChanged: _settingsChanged,
        ConnectionTerminated: _connectionTerminated,
    }

    def _peerGoAway(self, frame: _PeerGoAway) -> None:
        """
        The client sent GOAWAY: it opens no more streams; those in flight
        finish, then the connection closes.
        """
        conn = self._conn
        assert conn is not None
        if self._lastStreamID is None:
            self._lastStreamID = conn.highest_inbound_stream_id
        if not self._streams:
            self._close()

    # -- request bodies

    def _ack(self, streamID: int, length: int) -> None:
        """
        Acknowledge C{length} flow-controlled bytes of C{streamID} (the
        connection's window too).
        """
        conn = self._conn
        if length and conn is not None and not self._closing:
            try:
                conn.acknowledge_received_data(length, streamID)
            except ProtocolError:
                pass

    def _ackRest(self, stream: _Stream) -> None:
        unacked = stream.unacked
        if unacked:
            stream.unacked = 0
            self._ack(stream.id, unacked)

    def pauseBody(self, exchange: Exchange) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is not None:
            stream.bodyPaused = True

    def resumeBody(self, exchange: Exchange) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is None or stream.refused:
            return
        if not stream.attached:
            stream.attached = True
            stream.waiting = 0
            if stream.expectContinue and not stream.headSent:
                self._send(
                    stream,
                    lambda conn: conn.send_headers(stream.id, [(b":status", b"100")]),
                )
        stream.bodyPaused = False
        if stream.bodyDone:
            return
        # The body deadlines start over: we were the slow side.
        now = self._clock.seconds()
        stream.bodyStart = stream.bodyLast = now
        stream.bodyBytes = 0
        self._ackRest(stream)
        self._arm(now + self.limits.body_timeout_secs)
        self._flushSoon()

    # -- responses

    def sendHead(
        self,
        exchange: Exchange,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is None or stream.headSent:
            return
        stream.headSent = True
        fields = [(b":status", b"%d" % code)]
        for name, value in headers:
            name = name.lower()
            if name not in _CONNECTION_SPECIFIC:
                fields.append((name, value))
        self._send(stream, lambda conn: conn.send_headers(stream.id, fields))
        self._flushSoon()

    def startTunnel(
        self,
        exchange: Exchange,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is None:
            return
        stream.tunnel = True
        self.sendHead(exchange, code, reason, headers)
        if not self._receiving:
            self._pump()
            self._flush()

    def sendData(self, exchange: Exchange, data: bytes) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is None or stream.isHead or stream.ended:
            return
        stream.buffer += data
        self._queue(stream)
        if not self._receiving:
            self._pump()
            self._flush()
        if (
            stream.producer is not None
            and not stream.producerPaused
            and len(stream.buffer) > HIGH_WATER
            and stream.id in self._streams
        ):
            stream.producerPaused = True
            stream.producer.pauseProducing()

    def sendEnd(self, exchange: Exchange) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is None or stream.ended:
            return
        stream.ended = True
        self._queue(stream)
        if not self._receiving:
            self._pump()
            self._flush()

    def abortExchange(self, exchange: Exchange) -> None:
        """
        Reset the stream of C{exchange} (INTERNAL_ERROR); the connection's
        other streams go on.  As with HTTP/1.1, where an abort closes the
        connection, the exchange is told C{clientGone} on the reactor's next
        turn.
        """
        stream = self._ofExchange.get(exchange)
        if stream is None:
            return
        self._reset(stream, ErrorCodes.INTERNAL_ERROR)
        self._forget(stream, finished=False)
        self._leave(exchange)
        self._flushSoon()

    def responseProducer(
        self, exchange: Exchange, producer: IPushProducer | None
    ) -> None:
        stream = self._ofExchange.get(exchange)
        if stream is None:
            return
        stream.producer = producer
        stream.producerPaused = False
        if producer is not None and (
            self._writePaused or len(stream.buffer) > HIGH_WATER
        ):
            stream.producerPaused = True
            producer.pauseProducing()

    def refuse(self, exchange: Exchange, code: int, detail: str) -> None:
        """
        Answer C{exchange} with the early refusal C{code} and end its
        stream, reset (NO_ERROR) if the client still sends its body (RFC
        9113 section 8.1); abort it if its response began.
        """
        stream = self._ofExchange.get(exchange)
        if stream is None or stream.refused or exchange.finished:
            return
        if stream.headSent:
            self.abortExchange(exchange)
            exchange.clientGone()
            return
        stream.refused = True
        stream.headSent = stream.ended = True
        body, contentType = refusalBody(exchange, code, detail)
        fields = [(b":status", b"%d" % code)]
        date = httpDate(self._clock.seconds())
        for name, value in shortHeaders(date, len(body), contentType):
            fields.append((name.lower(), value))
        stream.buffer = bytearray(b"" if stream.isHead else body)
        stream.producer = None
        self._ackRest(stream)
        if self._send(stream, lambda conn: conn.send_headers(stream.id, fields)):
            self._queue(stream)
        exchange.refusal = exchange.code = code
        self.front.tellRefused(code, exchange, self._secure)
        exchange.clientGone()
        if not self._receiving:
            self._pump()
            self._flush()

    # -- the send pump

    def _send(self, stream: _Stream, call: Callable[[_H2], object]) -> bool:
        """
        Run C{call} on the C{h2} connection for C{stream}: a stream C{h2}
        closed already (reset by the client in the same read) is lost.

        @return: Whether it went.
        """
        conn = self._conn
        if conn is None or self._closing:
            return False
        try:
            call(conn)
        except ProtocolError:
            if stream.id in self._streams:
                self._lost(stream, later=True)
            return False
        return True

    def _queue(self, stream: _Stream) -> None:
        if not stream.queued:
            stream.queued = True
            self._ready.append(stream)

    def _queueAll(self) -> None:
        for stream in self._streams.values():
            if stream.buffer or stream.ended:
                self._queue(stream)

    def _pump(self) -> None:
        """
        Send what the streams hold, one frame per stream in turn, while the
        window and the transport take it.
        """
        conn = self._conn
        if self._pumping or conn is None:
            return
        self._pumping = True
        try:
            self._pumpFrames(conn)
        finally:
            self._pumping = False

    def _pumpFrames(self, conn: _H2) -> None:
        ready = self._ready
        streams = self._streams
        maxFrame = conn.max_outbound_frame_size
        now: float | None = None
        sent = 0
        while ready and not self._writePaused and not self._closing:
            stream = ready.popleft()
            stream.queued = False
            streamID = stream.id
            if streams.get(streamID) is not stream:
                continue
            buffer = stream.buffer
            try:
                if buffer:
                    window = conn.local_flow_control_window(streamID)
                    size = min(len(buffer), window, maxFrame)
                    if size > 0:
                        # The last bytes carry END_STREAM: one frame less.
                        last = stream.ended and size == len(buffer)
                        conn.send_data(streamID, bytes(buffer[:size]), end_stream=last)
                        del buffer[:size]
                        if last:
                            self._endStream(stream, sent=True)
                            continue
                        sent += size
                        if stream.stalled:
                            if now is None:
                                now = self._clock.seconds()
                            stream.stalledAt = now
                if not buffer:
                    stream.stalled = False
                    if stream.ended:
                        self._endStream(stream)
                        continue
                elif conn.local_flow_control_window(streamID) > 0:
                    self._queue(stream)
                elif not stream.stalled:
                    if now is None:
                        now = self._clock.seconds()
                    stream.stalled = True
                    stream.stalledAt = now
                    self._arm(now + self.limits.send_timeout_secs)
            except ProtocolError:
                self._lost(stream, later=True)
                continue
            producer = stream.producer
            if (
                producer is not None
                and stream.producerPaused
                and len(buffer) < LOW_WATER
            ):
                stream.producerPaused = False
                producer.resumeProducing()
            if sent >= HIGH_WATER:
                # Written now, so that the transport can pause us.
                sent = 0
                self._flush()

    def _endStream(self, stream: _Stream, sent: bool = False) -> None:
        """
        The response of C{stream} is all sent: END_STREAM (unless C{sent}
        with its last bytes), and RST_STREAM NO_ERROR if the client still
        sends its request (RFC 9113 section 8.1), when more of it comes
        (see C{_resetOnData}).
        """
        if not sent and not self._send(stream, lambda conn: conn.end_stream(stream.id)):
            return
        if stream.bodyDone:
            self._frames.streamClosed(stream.id)
        else:
            conn = self._conn
            if conn is not None:
                forgetContentLength(conn, stream.id)
            self._resetOnData[stream.id] = (
                self._clock.seconds() + self.limits.lingering_close_secs,
                DISCARD_BYTES,
            )
        self._forget(stream, finished=not stream.refused)

    def _reset(self, stream: _Stream, code: int) -> None:
        self._resetID(stream.id, code)

    def _resetID(self, streamID: int, code: int) -> None:
        conn = self._conn
        if conn is None or self._closing:
            return
        try:
            conn.reset_stream(streamID, code)
        except ProtocolError:
            pass

    def _forget(self, stream: _Stream, finished: bool) -> None:
        """
        C{stream} is over: its remaining body is acknowledged, and an
        answer in full gives back one reset credit.
        """
        if self._streams.pop(stream.id, None) is None:
            return
        self._ofExchange.pop(stream.exchange, None)
        stream.producer = None
        stream.buffer = bytearray()
        self._ackRest(stream)
        if finished and self._resetBudget < RESET_BUDGET:
            self._resetBudget += 1
        if not self._streams:
            now = self._idleSince = self._clock.seconds()
            if self._lastStreamID is not None:
                self._close()
            else:
                self._arm(now + self.limits.keepalive_timeout_secs)

    def _lost(self, stream: _Stream, later: bool) -> None:
        """
        The client reset C{stream} (or C{h2} closed it) before its answer
        ended: one reset credit is spent, the exchange is told.
        """
        exchange = stream.exchange
        self._forget(stream, finished=False)
        if stream.refused or exchange.finished:
            return
        if later:
            self._leave(exchange)
        else:
            exchange.clientGone()
        self._resetBudget -= 1
        if self._resetBudget <= 0 and not self._closing:
            _log.info(
                "HTTP/2 client {peer} reset too many streams: closing",
                peer=self._peer,
            )
            self._goAway(self._lastTaken, ErrorCodes.ENHANCE_YOUR_CALM)
            self._close()

    def _leave(self, exchange: Exchange) -> None:
        """
        Tell C{exchange} C{clientGone} on the reactor's next turn, out of
        the call of its handler that led here.
        """
        self._leaving.append(exchange)
        if self._leavingCall is None:
            self._leavingCall = self._clock.callLater(0, self._left)

    def _left(self) -> None:
        self._leavingCall = None
        leaving = self._leaving
        self._leaving = []
        for exchange in leaving:
            exchange.clientGone()

    # -- writing

    def _flushSoon(self) -> None:
        if not self._receiving:
            self._flush()

    def _flush(self) -> None:
        conn = self._conn
        if conn is None:
            return
        data = conn.data_to_send()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self._gone:
            return
        if self._writePaused:
            self._pausedBytes += len(data)
            if self._pausedBytes > MAX_PAUSED_BYTES:
                _log.info(
                    "HTTP/2 client {peer} does not read: aborting",
                    peer=self._peer,
                )
                self._abort()
                return
        transport.write(data)

    def _goAway(self, lastStreamID: int, code: int) -> None:
        """
        Send GOAWAY with C{lastStreamID}; streams above it are refused from
        now on.  Written by hand: after C{h2}'s own GOAWAY nothing more could
        be sent on the streams in flight.
        """
        if self._lastStreamID is None or lastStreamID < self._lastStreamID:
            self._lastStreamID = lastStreamID
        self._goAwaySent = True
        self._flush()
        self._write(_goAwayFrame(lastStreamID, code))

    def _close(self, goAway: bool = True) -> None:
        """
        Close gracefully: GOAWAY (unless one went already), the answers
        written, then the connection; aborted if it lingers.
        """
        if self._closing:
            return
        conn = self._conn
        if goAway and not self._goAwaySent and conn is not None:
            self._goAway(self._lastTaken, ErrorCodes.NO_ERROR)
        self._flush()
        self._closing = True
        now = self._closingAt = self._clock.seconds()
        for stream in list(self._streams.values()):
            self._forget(stream, finished=False)
            if not stream.exchange.finished:
                stream.exchange.clientGone()
        transport = self.transport
        if transport is not None and not self._gone:
            # A registered producer would hold TLS's close back.
            cast(IConsumer, transport).unregisterProducer()
            transport.loseConnection()
        self._arm(now + ABORT_TIMEOUT)

    def _connectionError(
        self, code: int, detail: str, error: ProtocolError | None = None
    ) -> None:
        """
        A connection error: GOAWAY with C{code}, then close.
        """
        conn = self._conn
        if conn is None or self._closing:
            return
        _log.info(
            "HTTP/2 connection error from {peer} ({code}): {detail}",
            peer=self._peer,
            code=_errorName(code),
            detail=detail,
        )
        last = self._lastTaken
        data = conn.data_to_send()
        if error is not None:
            data = _withErrorCode(data, last, code)
        else:
            data += _goAwayFrame(last, code)
        self._write(data)
        self._goAwaySent = True
        self._close()

    def _abort(self) -> None:
        transport = self.transport
        self._closing = True
        if transport is not None and not self._gone:
            cast(ITCPTransport, transport).abortConnection()

    # -- IPushProducer (the client's side of the responses)

    def pauseProducing(self) -> None:
        if self._writePaused:
            return
        self._writePaused = True
        self._pausedBytes = 0
        now = self._pausedAt = self._clock.seconds()
        for stream in self._streams.values():
            producer = stream.producer
            if producer is not None and not stream.producerPaused:
                stream.producerPaused = True
                producer.pauseProducing()
        self._arm(now + self.limits.send_timeout_secs)

    def resumeProducing(self) -> None:
        if not self._writePaused or self._gone:
            return
        self._writePaused = False
        self._pump()
        self._flush()
        for stream in list(self._streams.values()):
            producer = stream.producer
            if (
                producer is not None
                and stream.producerPaused
                and len(stream.buffer) < LOW_WATER
            ):
                stream.producerPaused = False
                producer.resumeProducing()

    def stopProducing(self) -> None:
        self._writePaused = True

    # -- the timer

    def _arm(self, at: float) -> None:
        """
        Make the one timer fire by C{at}: a timer due sooner stays (it
        checks then and moves itself on), one due later is replaced.
        """
        if self._gone:
            return
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= at + _SLACK:
                return
            timer.cancel()
        self._timer = self._clock.callLater(
            max(0.0, at - self._clock.seconds()), self._deadline
        )

    def _cancel(self) -> None:
        timer = self._timer
        self._timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _deadline(self) -> None:
        """
        The timer fired: check every deadline, act on those passed, and fire
        again at the next.
        """
        self._timer = None
        now = self._clock.seconds()
        limits = self.limits
        if self._closing:
            if now + _SLACK >= self._closingAt + ABORT_TIMEOUT:
                self._abort()
            else:
                self._arm(self._closingAt + ABORT_TIMEOUT)
            return
        nextAt = float("inf")
        if self._writePaused:
            due = self._pausedAt + limits.send_timeout_secs
            if now + _SLACK >= due:
                _log.info(
                    "HTTP/2 client {peer} took nothing for {secs:g} s: aborting",
                    peer=self._peer,
                    secs=limits.send_timeout_secs,
                )
                self._abort()
                return
            nextAt = due
        if not self._streams:
            if self._seenRequest:
                due = self._idleSince + limits.keepalive_timeout_secs
            else:
                due = self._madeAt + limits.header_timeout_secs
            if now + _SLACK >= due:
                self._close()
                return
            nextAt = min(nextAt, due)
        for stream in list(self._streams.values()):
            if self._closing:
                return
            streamDue = self._checkStream(stream, now)
            if streamDue is not None:
                nextAt = min(nextAt, streamDue)
        if self._closing:
            return
        self._flush()
        if nextAt != float("inf"):
            self._arm(nextAt)

    def _checkStream(self, stream: _Stream, now: float) -> float | None:
        """
        Act on C{stream}'s deadlines that passed.

        @return: When it next could have one, if ever.
        """
        limits = self.limits
        nextAt: float | None = None
        if stream.stalled and stream.buffer:
            due = stream.stalledAt + limits.send_timeout_secs
            if now + _SLACK >= due:
                exchange = stream.exchange
                self._reset(stream, ErrorCodes.INTERNAL_ERROR)
                self._forget(stream, finished=False)
                exchange.clientGone()
                return None
            nextAt = due
        if (
            stream.bodyDone
            or stream.refused
            or stream.bodyPaused
            or stream.tunnel
            or stream.waiting > UNATTACHED_BODY
        ):
            return nextAt
        timeout = limits.body_timeout_secs
        idleAt = stream.bodyLast + timeout
        if now + _SLACK >= idleAt:
            self.refuse(
                stream.exchange,
                408,
                f"no byte of the request body came for {timeout:g} s",
            )
            return None
        due = idleAt
        rate = limits.min_body_rate_bytes_per_sec
        if rate:
            start = stream.bodyStart
            elapsed = now - start
            if elapsed + _SLACK >= timeout and stream.bodyBytes < rate * elapsed:
                self.refuse(
                    stream.exchange,
                    408,
                    f"the request body came slower than {rate} bytes/s",
                )
                return None
            belowAt = max(start + timeout, start + stream.bodyBytes / rate)
            due = min(due, max(belowAt, now + _RATE_CHECK_SECS))
        return due if nextAt is None else min(nextAt, due)
