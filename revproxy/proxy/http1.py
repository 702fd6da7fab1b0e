# -*- test-case-name: tests.test_http1 -*-
"""
The HTTP/1.x client side: one L{HTTP1Connection} per client connection,
parsing requests with httptools (llhttp, strict: no lenient flag is ever
set) and writing responses itself.  Each request becomes an
L{Exchange <revproxy.proxy.exchange.Exchange>} given to the front end's
handler as soon as its head is whole; its body follows as a stream.

How it works: docs/internals.md, "HTTP/1.x client side".
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from revproxy.proxy.eager import noDelay, writerFor
from revproxy.proxy.exchange import Exchange
from revproxy.proxy.headers import HOP_BY_HOP, connectionTokens
from revproxy.proxy.http2 import HTTP2Connection
from revproxy.proxy.responses import (
    REASONS,
    httpDate,
    refusalBody,
    shortBody,
    shortHeaders,
)

if TYPE_CHECKING:
    from revproxy.proxy.exchange import FrontEndView

_log = Logger()

# The phases of a connection; the one timer means what the phase says.
#: Waiting for, or reading, a request head: the head deadline.
HEAD = 0
#: Reading the body of the request in flight: the body deadlines.
BODY = 1
#: The request in flight is read; its response is on its way: the send
#: deadline while the client does not read.
BUSY = 2
#: Kept alive between requests: the keep-alive deadline.
IDLE = 3
#: Closing after the last response or a quiet close: abort if it lingers.
CLOSING = 4
#: Refused: reading and dropping until the lingering deadline.
LINGER = 5
#: Gone, or handed over to HTTP/2.
CLOSED = 6

#: The most requests parsed ahead of the one in flight.
MAX_PIPELINED = 16
#: The most bytes kept unparsed (or as a body not yet taken) before
#: reading pauses.
AHEAD_BYTES = 64 * 1024
#: Bytes parsed at once: a read holding many pipelined requests is parsed
#: in slices, with the queue checked between them.
_SLICE = 16 * 1024
#: How long a closing connection may take to go away before it is aborted.
ABORT_TIMEOUT = 15.0

# Float sums of seconds may land a hair before a deadline computed from
# them; this much early counts as on time.
_SLACK = 1e-3
# While a body keeps coming at about the minimum rate, the rate is checked
# no more often than this.
_RATE_CHECK_SECS = 1.0

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def _statusLine(code: int, reason: bytes) -> bytes:
    line = _STATUS_LINES.get((code, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (code, reason or _phrase(code))
        if len(_STATUS_LINES) >= 256:
            _STATUS_LINES.clear()
        _STATUS_LINES[(code, reason)] = line
    return line


#: Status lines made lately: an upstream gives a few, again and again.
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


_PHRASES: dict[int, bytes] = {}


def _phrase(code: int) -> bytes:
    phrase = _PHRASES.get(code)
    if phrase is None:
        try:
            phrase = HTTPStatus(code).phrase.encode("ascii")
        except ValueError:
            phrase = b"Unknown"
        _PHRASES[code] = phrase
    return phrase


class _Refusal(Exception):
    """
    Raised from a parser callback: answer C{code}.
    """

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class _Stop(Exception):
    """
    Raised from a parser callback: parse no further (the connection ends,
    or too many requests were parsed ahead).
    """


@implementer(IPushProducer, IHalfCloseableProtocol)
class HTTP1Connection(Protocol):
    """
    One client connection speaking HTTP/1.x (or, after ALPN chose C{h2},
    handing everything to an HTTP/2 connection).
    """

    factory: Any = None
    _timer: IDelayedCall | None = None
    _phase = HEAD
    _h2: HTTP2Connection | None = None

    def __init__(self, front: FrontEndView) -> None:
        self.front = front
        limits = front.limits
        self.limits = limits
        self._clock = front.clock
        self._maxLine = limits.max_request_line_bytes
        self._maxField = limits.max_header_bytes
        self._maxTotal = limits.max_headers_total_bytes
        self._maxFields = limits.max_header_fields
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(
            self
        )
        self.secure = False
        self._negotiate = False
        # The request in flight (handled, its response not yet ended).
        self._current: Exchange | None = None
        self._handled = False
        # Requests whose heads are whole, waiting for their turn.
        self._queue: deque[Exchange] = deque()
        # Bytes come while a request is in flight, not parsed yet.
        self._ahead: list[bytes] = []
        self._aheadBytes = 0
        # The request being parsed.
        self._reading: Exchange | None = None
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._fieldBytes = 0
        self._scanBytes = 0
        self._lineLen = 0
        self._lineDone = False
        self._headStarted = False
        # What each parsed head decided.
        # Whether each exchange's connection may go on after it, and which
        # wait for 100 Continue (by the exchange's id).
        self._persistent: dict[int, bool] = {}
        self._expects: set[int] = set()
        self._peer: Any = None
        self._serverName: str | None = None
        self._requestCount = 0
        self._draining = False
        # The response in flight.
        self._chunked = False
        self._bodiless = False
        self._keepAlive = True
        self._pendingHead = b""
        self._producer: IPushProducer | None = None
        self._writePaused = False
        self._readPaused = 0
        self._dispatching = False
        # The exchange in flight became a tunnel: what comes is its body.
        self._tunnel: Exchange | None = None
        # Deadline bookkeeping.
        self._since = 0.0
        self._bodyStart = 0.0
        self._bodyLast = 0.0
        self._bodyBytes = 0
        self._bodyPaused = False

    # -- IProtocol

    def connectionMade(self) -> None:
        transport: Any = self.transport
        assert transport is not None
        self.secure = bool(ISSLTransport.providedBy(transport))
        self._negotiate = self.secure
        self._peer = transport.getPeer()
        self._write = writerFor(transport) or transport.write
        noDelay(transport)
        transport.registerProducer(self, True)
        self._phase = HEAD
        self._since = self._clock.seconds()
        self._arm(self.limits.header_timeout_secs)

    def dataReceived(self, data: bytes) -> None:
        h2 = self._h2
        if h2 is not None:
            h2.dataReceived(data)
            return
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.bodyReceived(data)
            return
        if self._negotiate:
            self._negotiate = False
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._becomeH2(data)
                return
        phase = self._phase
        if phase >= CLOSING:
            # Refused, closing or gone: read and dropped.
            return
        if phase == BUSY or self._parser is None or self._ahead:
            # A request is in flight (or bytes kept earlier wait to be
            # parsed first): keep what comes for later.
            self._keepAhead(data)
            return
        if phase == IDLE:
            self._startHead()
        self._feed(data)
        self._dispatch()

    def readConnectionLost(self) -> None:
        """
        The client sent all it will (a TCP half-close): a tunnel passes it
        on to its upstream and goes on the other way; anything else ends
        here, as without half-close (the response could not be relied on to
        be read).
        """
        tunnel = self._tunnel
        if tunnel is not None and self._h2 is None:
            tunnel.bodyEnded()
            return
        transport = self.transport
        if transport is not None:
            cast(ITCPTransport, transport).abortConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        h2 = self._h2
        if h2 is not None:
            self._h2 = None
            h2.connectionLost(reason)
            return
        self._phase = CLOSED
        self._cancel()
        self._producer = None
        self._parser = None
        self._tunnel = None
        current = self._current
        self._current = None
        reading = self._reading
        self._reading = None
        queue = self._queue
        self._queue = deque()
        if current is not None:
            current.clientGone()
        if reading is not None and reading is not current:
            reading.clientGone()
        for waiting in queue:
            waiting.clientGone()

    def _tlsServerName(self) -> str | None:
        """
        The connection's SNI name, as the TLS layer recorded it when the
        handshake completed (before any request), read once.
        """
        name = self._serverName
        if name is None:
            name = self._serverName = getattr(self.transport, "serverName", None)
        return name

    def _becomeH2(self, data: bytes) -> None:
        """
        ALPN chose HTTP/2: hand the connection to an HTTP/2 protocol.
        """
        self._cancel()
        self._phase = CLOSED
        self._parser = None
        transport: Any = self.transport
        assert transport is not None
        transport.unregisterProducer()
        h2 = HTTP2Connection(self.front)
        self._h2 = h2
        h2.makeConnection(transport)
        h2.dataReceived(data)

    # -- what the tracker asks (graceful shutdown)

    def busy(self) -> bool:
        """
        Whether a request is in flight or being received.
        """
        h2 = self._h2
        if h2 is not None:
            return bool(h2.busy())
        return (
            self._current is not None
            or bool(self._queue)
            or self._reading is not None
            or (self._phase == HEAD and self._headStarted)
        )

    def drain(self) -> None:
        """
        Close now if idle, else after the response in flight.
        """
        h2 = self._h2
        if h2 is not None:
            h2.drain()
            return
        self._draining = True
        if self._phase >= CLOSING:
            return
        if not self.busy():
            self._closeQuietly()

    # -- reading

    def _keepAhead(self, data: bytes) -> None:
        self._ahead.append(data)
        self._aheadBytes += len(data)
        if self._aheadBytes > AHEAD_BYTES:
            self._pauseReading(1)

    def _feed(self, data: bytes) -> None:
        """
        Parse C{data}, in slices when it is large, so that no more than
        about L{MAX_PIPELINED} requests are parsed ahead of the one in
        flight: what is left waits unparsed.
        """
        size = len(data)
        if size <= _SLICE:
            self._feedSlice(data)
            return
        for start in range(0, size, _SLICE):
            if self._parser is None or self._phase >= CLOSING:
                return
            if len(self._queue) >= MAX_PIPELINED:
                self._keepAhead(data[start:])
                return
            self._feedSlice(data[start : start + _SLICE])

    def _feedSlice(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Refusal):
                self.refuse(self._reading or self._describe(), cause.code, cause.detail)
            elif isinstance(cause, _Stop):
                self._parser = None
            else:
                _log.failure(
                    "Unexpected error while parsing a request",
                    Failure(cause) if cause is not None else None,
                )
                self.refuse(self._reading, 400, "the request is malformed")
            return
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0] :] if e.args else b"")
            return
        except httptools.HttpParserError:
            self.refuse(self._reading, 400, "the request is malformed")
            return
        if self._phase == HEAD and self._headStarted:
            self._checkPartialHead(data)

    def _checkPartialHead(self, data: bytes) -> None:
        """
        The head is not whole after C{data}: its lines so far, the last one
        ended or not, must stay within the limits (llhttp reports a field
        only when the next one begins).  A line's length does not count its
        CRLF; a partial line may end with the CR.
        """
        lines = data.split(b"\n")
        last = lines.pop()
        carried = self._lineLen
        for line in lines:
            length = carried + len(line) - (1 if line.endswith(b"\r") else 0)
            carried = 0
            if not self._lineDone:
                if length > self._maxLine:
                    self.refuse(
                        None,
                        414,
                        f"the request line is longer than {self._maxLine} bytes",
                    )
                    return
                if self._url:
                    self._lineDone = True
                continue
            if length > self._maxField:
                self.refuse(
                    self._describe(),
                    431,
                    f"a header field is longer than {self._maxField} bytes",
                )
                return
            self._scanBytes += length
        self._lineLen = partial = carried + len(last)
        total = max(self._fieldBytes, self._scanBytes)
        if not self._lineDone:
            if partial > self._maxLine + 1:
                self.refuse(
                    None,
                    414,
                    f"the request line is longer than {self._maxLine} bytes",
                )
        elif partial > self._maxField + 1:
            self.refuse(
                self._describe(),
                431,
                f"a header field is longer than {self._maxField} bytes",
            )
        elif total + partial > self._maxTotal + 1:
            self.refuse(
                self._describe(),
                431,
                f"the header fields are longer than {self._maxTotal} bytes in all",
            )

    def _upgraded(self, rest: bytes) -> None:
        """
        llhttp read a request asking to upgrade (or a CONNECT): it is whole,
        without a body (a body would be read as the next request: refused
        in L{on_headers_complete}); parsing goes on with a new parser.
        """
        if self._phase >= CLOSING:
            return
        self._parser = httptools.HttpRequestParser(self)
        if rest:
            if self._current is not None and self._current is not self._reading:
                self._keepAhead(rest)
            else:
                self._feed(rest)

    def _pauseReading(self, reason: int) -> None:
        before = self._readPaused
        self._readPaused = before | reason
        if not before and self.transport is not None:
            cast(Any, self.transport).pauseProducing()

    def _resumeReading(self, reason: int) -> None:
        before = self._readPaused
        self._readPaused = before & ~reason
        if before and not self._readPaused and self.transport is not None:
            cast(Any, self.transport).resumeProducing()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._phase >= CLOSING:
            raise _Stop()
        self._headStarted = True
        self._url = b""
        self._fields = []
        self._fieldBytes = 0
        self._scanBytes = 0
        self._lineLen = 0
        self._lineDone = False
        if self._phase == IDLE:
            self._startHead()

    def on_url(self, url: bytes) -> None:
        url = self._url + url
        self._url = url
        # The whole line: method, two spaces and "HTTP/1.1" (the method is
        # asked of the parser only when it could matter).
        if len(url) + 26 > self._maxLine:
            parser = self._parser
            method = parser.get_method() if parser is not None else b""
            if len(method) + len(url) + 10 > self._maxLine:
                raise _Refusal(
                    414, f"the request line is longer than {self._maxLine} bytes"
                )

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        self._lineDone = True
        size = len(name) + len(value) + 2
        if size > self._maxField:
            raise _Refusal(431, f"a header field is longer than {self._maxField} bytes")
        total = self._fieldBytes + size
        self._fieldBytes = total
        if total > self._maxTotal:
            raise _Refusal(
                431,
                f"the header fields are longer than {self._maxTotal} bytes in all",
            )
        fields.append((name.lower(), value))
        if len(fields) > self._maxFields:
            raise _Refusal(431, f"more than {self._maxFields} header fields")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        url = self._url
        version = _VERSIONS.get(parser.get_http_version())
        method = parser.get_method()
        fields = self._fields
        self._fields = []
        self._headStarted = False
        if version is None:
            self._reading = Exchange(self, method, url, b"HTTP/1.1", fields, 0)
            raise _Refusal(505, "only HTTP/1.0 and HTTP/1.1 are served here")
        length: int | None = 0
        chunked = False
        connection: list[bytes] = []
        codings: list[bytes] = []
        expect = False
        for name, value in fields:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"connection":
                connection.append(value)
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if codings:
            chunked = True
            length = None
            listed = [c.strip() for c in b",".join(codings).lower().split(b",")]
            if listed != [b"chunked"]:
                self._reading = Exchange(self, method, url, version, fields, 0)
                if listed[-1] != b"chunked":
                    # RFC 9112 6.3: the body's length cannot be known.
                    raise _Refusal(400, "chunked is not the last transfer coding")
                # RFC 9112 6.1: a coding not understood.
                raise _Refusal(501, "only the chunked transfer coding is served")
        exchange = Exchange(
            self,
            method,
            url,
            version,
            fields,
            length,
            secure=self.secure,
            peer=self._peer,
            serverName=self._tlsServerName() if self.secure else None,
            transport=self.transport,
            observer=self.front.observer,
            runtime=self.front.snapshot(),
        )
        self._reading = exchange
        if chunked and version == b"HTTP/1.0":
            raise _Refusal(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        if url == b"*" and method != b"OPTIONS":
            raise _Refusal(400, "* is a request-target for OPTIONS only")
        if method == b"CONNECT":
            raise _Refusal(405, "CONNECT is not served here")
        if parser.should_upgrade() and length != 0:
            raise _Refusal(400, "an upgrade request must not have a body")
        tokens = connectionTokens(connection) if connection else None
        exchange.hopByHop = HOP_BY_HOP if tokens is None else HOP_BY_HOP | tokens
        if version == b"HTTP/1.1":
            persistent = tokens is None or b"close" not in tokens
        else:
            persistent = tokens is not None and b"keep-alive" in tokens
        self._requestCount += 1
        cap = self.limits.max_requests_per_connection
        if cap and self._requestCount >= cap:
            persistent = False
        key = id(exchange)
        self._persistent[key] = persistent
        if expect and version == b"HTTP/1.1" and length != 0:
            self._expects.add(key)
        if self._current is None:
            self._begin(exchange)
        else:
            self._queue.append(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self._reading
        if exchange is None:
            return
        if exchange is self._current:
            if self._phase == BODY:
                self._bodyBytes += len(body)
                self._bodyLast = self._clock.seconds()
            if not exchange.bodyReceived(body):
                raise _Stop()
            if exchange.bodyBuffered > AHEAD_BYTES:
                self._pauseBody(2)
        elif not exchange.bodyReceived(body):
            raise _Stop()

    def on_message_complete(self) -> None:
        exchange = self._reading
        self._reading = None
        if exchange is None:
            return
        exchange.bodyEnded()
        if exchange is self._current and self._phase == BODY:
            self._phase = BUSY
            self._armSend()

    # -- dispatching

    def _begin(self, exchange: Exchange) -> None:
        """
        C{exchange} is in flight now (its head is whole): its body, if any,
        is read under the body deadlines.
        """
        self._current = exchange
        self._handled = False
        self._chunked = False
        self._pendingHead = b""
        if exchange.bodyLength == 0 or (
            exchange.bodyComplete and exchange is not self._reading
        ):
            # The timer stays: it fires within header_timeout_secs and does
            # nothing while a response is on its way, and the keep-alive
            # deadline then moves it later, which costs nothing (cancelling
            # it and making a new one would cost two heap operations per
            # request).
            self._phase = BUSY
            self._armSend()
            return
        self._phase = BODY
        now = self._clock.seconds()
        self._bodyStart = self._bodyLast = now
        self._bodyBytes = 0
        self._bodyPaused = False
        if self._readPaused & 2:
            self._resumeReading(2)
        self._arm(self.limits.body_timeout_secs)

    def _dispatch(self) -> None:
        """
        Hand the request in flight to the handler if it has not been, and
        go on with the next ones while responses end at once.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while True:
                current = self._current
                if current is None or self._handled:
                    return
                self._handled = True
                try:
                    self.front.handler.handle(current)
                except Exception:
                    _log.failure(
                        "Unhandled error while handling {uri}", uri=current.uri
                    )
                    self._internalError(current)
        finally:
            self._dispatching = False

    def _internalError(self, exchange: Exchange) -> None:
        if exchange.startedWriting:
            exchange.abort()
            return
        body = shortBody(500)
        exchange.respond(
            500, b"", shortHeaders(httpDate(self._clock.seconds()), len(body))
        )
        exchange.write(body)
        exchange.finish()

    def _next(self) -> None:
        """
        The response in flight ended: start the next request (queued, or
        in the bytes kept meanwhile), or wait for one.  The bytes kept
        meanwhile are parsed now, in order, whatever they hold (the rest
        of a queued request's body, more requests).
        """
        self._current = None
        if self._queue:
            self._begin(self._queue.popleft())
        else:
            limits = self.limits
            self._phase = IDLE
            self._since = self._clock.seconds()
            self._arm(min(limits.keepalive_timeout_secs, limits.header_timeout_secs))
            if self._headStarted:
                self._startHead()
        ahead = self._ahead
        if ahead and len(self._queue) < MAX_PIPELINED:
            self._ahead = []
            self._aheadBytes = 0
            self._resumeReading(1)
            if self._phase == IDLE:
                self._startHead()
            self._feed(b"".join(ahead))
        self._dispatch()

    # -- ExchangeChannel

    def sendHead(
        self,
        exchange: Exchange,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        key = id(exchange)
        persistent = self._persistent.get(key, False) and not self._draining
        method = exchange.method
        bodiless = method == b"HEAD" or code in (204, 304) or code < 200
        framed = bodiless
        parts = [_statusLine(code, reason)]
        for name, value in headers:
            if not framed and len(name) == 14 and name.lower() == b"content-length":
                framed = True
            parts += (name, b": ", value, b"\r\n")
        chunked = False
        if not framed:
            if exchange.clientproto == b"HTTP/1.1":
                chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                # Delimited by the end of the connection.
                persistent = False
        if persistent and not exchange.bodyComplete and exchange is self._reading:
            # Answered before its body came: the rest is never read.
            persistent = False
        if not persistent:
            parts.append(b"Connection: close\r\n")
        elif exchange.clientproto == b"HTTP/1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._keepAlive = persistent
        self._chunked = chunked
        self._bodiless = method == b"HEAD" or code in (204, 304)
        self._pendingHead = b"".join(parts)

    def startTunnel(
        self,
        exchange: Exchange,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        if exchange is not self._current or self._phase >= CLOSING:
            return
        parts = [_statusLine(code, reason)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self._tunnel = exchange
        self._parser = None
        self._keepAlive = False
        self._chunked = False
        self._bodiless = False
        self._pendingHead = b""
        self._persistent.pop(id(exchange), None)
        if self.transport is not None:
            self._write(b"".join(parts))
        # Bytes that came after the upgrade request are the tunnel's first.
        ahead = self._ahead
        self._ahead = []
        self._aheadBytes = 0
        self._resumeReading(1)
        for data in ahead:
            exchange.bodyReceived(data)

    def sendData(self, exchange: Exchange, data: bytes) -> None:
        if self._bodiless or exchange is not self._current:
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        head = self._pendingHead
        if head:
            self._pendingHead = b""
            data = head + data
        if self.transport is not None:
            self._write(data)

    def sendEnd(self, exchange: Exchange) -> None:
        if exchange is not self._current:
            return
        end = _LAST_CHUNK if self._chunked and not self._bodiless else b""
        head = self._pendingHead
        self._pendingHead = b""
        if (head or end) and self.transport is not None:
            self._write(head + end)
        self._persistent.pop(id(exchange), None)
        self._expects.discard(id(exchange))
        self._producer = None
        if self._phase >= CLOSING:
            return
        if self._tunnel is not None:
            # A tunnel ends with its connection.
            self._tunnel = None
            self._current = None
            self._closeQuietly()
            return
        if not self._keepAlive or self._draining:
            if not exchange.bodyComplete:
                # Its body was never read: close gracefully.
                self._current = None
                self._phase = LINGER
                self._lingeringClose()
                return
            self._current = None
            self._closeQuietly()
            return
        self._next()

    def abortExchange(self, exchange: Exchange) -> None:
        transport = self.transport
        if transport is not None:
            cast(ITCPTransport, transport).abortConnection()

    def pauseBody(self, exchange: Exchange) -> None:
        if exchange is self._current:
            self._pauseBody(4)

    def resumeBody(self, exchange: Exchange) -> None:
        if exchange is not self._current:
            return
        key = id(exchange)
        if key in self._expects:
            self._expects.discard(key)
            if self.transport is not None and self._phase < CLOSING:
                self._write(_CONTINUE)
        self._resumeBody(4 | 2)

    def _pauseBody(self, reason: int) -> None:
        if not self._readPaused & reason:
            self._pauseReading(reason)
        if self._phase == BODY and not self._bodyPaused:
            # The body deadlines wait: we are the slow side now.
            self._bodyPaused = True
            self._cancel()

    def _resumeBody(self, reasons: int) -> None:
        if self._readPaused & reasons:
            self._resumeReading(reasons)
        if self._bodyPaused and not self._readPaused & 6:
            self._bodyPaused = False
            if self._phase == BODY:
                now = self._clock.seconds()
                self._bodyLast = now
                self._arm(self.limits.body_timeout_secs)

    def responseProducer(
        self, exchange: Exchange, producer: IPushProducer | None
    ) -> None:
        if exchange is not self._current:
            return
        self._producer = producer
        if producer is not None and self._writePaused:
            producer.pauseProducing()

    def refuse(self, exchange: Exchange | None, code: int, detail: str) -> None:
        """
        Answer the request being read (or C{exchange}) with C{code} and close
        the connection gracefully (a lingering close); the request is never
        processed further.
        """
        if self._phase >= LINGER:
            return
        if exchange is None:
            # Refused before its request line was read: still one line in
            # the access log (as nginx's "-"), with what is known.
            exchange = Exchange(
                self,
                b"",
                b"",
                b"",
                [],
                0,
                secure=self.secure,
                peer=self._peer,
                transport=self.transport,
            )
        if exchange.startedWriting:
            self.abortExchange(exchange)
            exchange.clientGone()
            return
        self._phase = LINGER
        self._parser = None
        self._ahead = []
        self._queue.clear()
        body, contentType = refusalBody(exchange, code, detail)
        head = [_statusLine(code, REASONS.get(code, b""))]
        date = httpDate(self._clock.seconds())
        for name, value in shortHeaders(date, len(body), contentType):
            head += (name, b": ", value, b"\r\n")
        head.append(b"Connection: close\r\n\r\n")
        if exchange.method == b"HEAD":
            body = b""
        if self.transport is not None:
            self._write(b"".join(head) + body)
        self._current = None
        self._reading = None
        self._lingeringClose()
        exchange.refusal = exchange.code = code
        self.front.tellRefused(code, exchange, self.secure)
        exchange.clientGone()

    def _describe(self) -> Exchange | None:
        """
        The request whose head is being read, as far as it is known: its
        method, target and version once the request line is read, for the
        access log of a refusal; L{None} before.
        """
        parser = self._parser
        if parser is None or not self._lineDone:
            return None
        version = _VERSIONS.get(parser.get_http_version(), b"HTTP/1.1")
        exchange = Exchange(
            self,
            parser.get_method(),
            self._url,
            version,
            self._fields,
            0,
            secure=self.secure,
            peer=self._peer,
            transport=self.transport,
        )
        return exchange

    # -- IPushProducer (the client's side of the response)

    def pauseProducing(self) -> None:
        h2 = self._h2
        if h2 is not None:
            h2.pauseProducing()
            return
        self._writePaused = True
        producer = self._producer
        if producer is not None:
            producer.pauseProducing()
        self._armSend()

    def resumeProducing(self) -> None:
        h2 = self._h2
        if h2 is not None:
            h2.resumeProducing()
            return
        self._writePaused = False
        producer = self._producer
        if producer is not None:
            producer.resumeProducing()
        if self._phase == BUSY:
            self._cancel()

    def stopProducing(self) -> None:
        h2 = self._h2
        if h2 is not None:
            h2.stopProducing()

    # -- timer

    def _arm(self, seconds: float) -> None:
        """
        Make the one timer fire in C{seconds} (never moved sooner: a new
        one is made instead).
        """
        timer = self._timer
        if timer is not None and timer.active():
            if self._clock.seconds() + seconds >= timer.getTime():
                timer.reset(seconds)
                return
            timer.cancel()
        self._timer = self._clock.callLater(seconds, self._deadlinePassed)

    def _cancel(self) -> None:
        timer = self._timer
        self._timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _armSend(self) -> None:
        if self._phase == BUSY and self._writePaused:
            self._arm(self.limits.send_timeout_secs)

    def _startHead(self) -> None:
        """
        The first byte of a request on a kept-alive connection came.  The
        timer, set for at most C{header_timeout_secs} when the connection
        fell idle, fires before this head's deadline and moves itself then.
        """
        self._phase = HEAD
        self._since = self._clock.seconds()

    def _deadlinePassed(self) -> None:
        self._timer = None
        phase = self._phase
        limits = self.limits
        if phase == HEAD:
            now = self._clock.seconds()
            due = self._since + limits.header_timeout_secs
            if now + _SLACK < due:
                self._arm(due - now)
            elif self._headStarted:
                self.refuse(
                    self._describe(),
                    408,
                    "the request head did not arrive within "
                    f"{limits.header_timeout_secs:g} s",
                )
            else:
                self._closeQuietly()
        elif phase == BODY:
            if not self._bodyPaused:
                self._checkBody()
        elif phase == BUSY:
            if self._writePaused:
                current = self._current
                _log.info(
                    "A client took no byte of a response for {secs:g} s: "
                    "connection closed",
                    secs=limits.send_timeout_secs,
                )
                self.abortExchange(current) if current is not None else None
        elif phase == IDLE:
            now = self._clock.seconds()
            due = self._since + limits.keepalive_timeout_secs
            if now + _SLACK >= due:
                self._closeQuietly()
            else:
                self._arm(min(due - now, limits.header_timeout_secs))
        elif phase in (CLOSING, LINGER):
            transport = self.transport
            if transport is not None:
                cast(ITCPTransport, transport).abortConnection()

    def _checkBody(self) -> None:
        """
        Answer 408 if the body stalled or is too slow, else check again when
        it next could be.
        """
        limits = self.limits
        now = self._clock.seconds()
        timeout = limits.body_timeout_secs
        idleAt = self._bodyLast + timeout
        current = self._current
        if now + _SLACK >= idleAt:
            self.refuse(
                current, 408, f"no byte of the request body came for {timeout:g} s"
            )
            return
        nextAt = idleAt
        rate = limits.min_body_rate_bytes_per_sec
        if rate:
            start = self._bodyStart
            elapsed = now - start
            if elapsed + _SLACK >= timeout and self._bodyBytes < rate * elapsed:
                self.refuse(
                    current, 408, f"the request body came slower than {rate} bytes/s"
                )
                return
            belowAt = max(start + timeout, start + self._bodyBytes / rate)
            nextAt = min(nextAt, max(belowAt, now + _RATE_CHECK_SECS))
        self._arm(nextAt - now)

    # -- closing

    def _closeQuietly(self) -> None:
        """
        Close without an answer (an idle connection), aborting if it does not
        go away.
        """
        self._phase = CLOSING
        self._arm(ABORT_TIMEOUT)
        transport: Any = self.transport
        if transport is not None:
            # A registered producer that was paused would be resumed
            # instead of the connection being closed once the buffer drains.
            transport.unregisterProducer()
            self._producer = None
            transport.loseConnection()

    def _lingeringClose(self) -> None:
        """
        Send what was written, shut the write side down and drop what comes
        until the lingering deadline.
        """
        transport: Any = self.transport
        if transport is None:
            return
        transport.unregisterProducer()
        self._producer = None
        if self._readPaused:
            self._readPaused = 0
            transport.resumeProducing()
        linger = self.limits.lingering_close_secs
        if linger <= 0:
            self._arm(ABORT_TIMEOUT)
            transport.loseConnection()
            return
        self._arm(linger)
        halfClose = (
            None if self.secure else getattr(transport, "loseWriteConnection", None)
        )
        if halfClose is not None:
            halfClose()
        else:
            transport.loseConnection()
