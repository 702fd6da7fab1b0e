# -*- test-case-name: tests.test_channel -*-
"""
The HTTP/1.x connection layer: limits on the request head and body, the
slow-client deadlines, and the graceful end of a refused connection.

L{ProxyChannel} is Twisted's L{HTTPChannel} with

  - a request line over C{max_request_line_bytes} answered 414, also when no
    line end has come yet (C{LineReceiver.MAX_LENGTH} follows what is being
    read: the request line, then header fields); a header field over
    C{max_header_bytes}, all of them over C{max_headers_total_bytes} or more
    than C{max_header_fields} of them answered 431.  Twisted's own checks
    stay in force (the request line's form, folded header lines, a
    Content-Length beside a Transfer-Encoding, a bad Content-Length, NUL, CR
    or LF in a value): they answer 400, with a body now;
  - a Content-Length over the site's body limit answered 413 when the head
    ends (before any byte of the body is read, and without
    C{100 Continue}); a chunked body counted as it is decoded
    (L{revproxy.proxy.request.ProxyRequest.handleContentChunk}) and answered
    413 as soon as it passes the limit.  The limit is asked of
    C{site.bodyLimit(request)}, since it depends on the site the request
    goes to;
  - deadlines, on one timer per connection: the request head must be whole
    C{header_timeout_secs} after the connection opened (first request) or
    after its first byte came (later requests), else 408 if any byte came,
    or a quiet close for a new connection that sent nothing (as nginx); a
    kept-alive connection with no byte of a new request for
    C{keepalive_timeout_secs} after the previous response ended is closed
    quietly; a body with no byte for C{body_timeout_secs}, or coming slower
    than C{min_body_rate_bytes_per_sec} on average once
    C{body_timeout_secs} have passed since it began, is answered 408;
  - at most C{max_requests_per_connection} requests per connection: the
    last response carries C{Connection: close} and the connection closes;
  - every early refusal (400, 408, 413, 414, 431) a whole response (Date,
    a one-line text body, C{Connection: close}, C{Cache-Control: no-store}),
    told once to C{site.refused(code, request, secure)}, and followed by a
    lingering close, as nginx's: parsing stops, the answer is sent, the
    write side is shut down, and whatever the client still sends is read
    and dropped for up to C{lingering_close_secs} before the connection is
    aborted, so that a client still sending its request reads the answer
    instead of a connection reset.  The refused request is never
    processed.

Timers.  One C{DelayedCall} per connection, touched only when the
connection changes phase, never per byte, and never moved sooner (the
reactor moves a timer sooner by searching its whole heap; moving one later
costs nothing).  A keep-alive GET pays for one cancel when its head is in
and one new timer when its response ends, as with Twisted's own timer.  The
timer fires at the earliest moment a deadline could pass and checks the
times it keeps (when the head began, the last body byte, the body's size)
lazily, moving itself on when nothing is due yet: an idle kept-alive
connection's timer fires every C{header_timeout_secs} at most, so that a
head starting on it needs no timer of its own; a body that keeps coming at
about the minimum rate is checked about once a second.  No timer outlives
the connection: C{connectionLost} cancels it.

Twisted's own idle timer (C{TimeoutMixin}, C{Site.timeOut}, 60 seconds by
default and reset on every read) is off on HTTP/1.x connections: it cannot
tell a client trickling a head one byte at a time from an active one, and
the deadlines above replace it.  While a request is proxied (its head and
body are in, its response streams) no deadline applies, as with Twisted's
timer, which also stops then: the forwarder's connect and response timeouts
bound the upstream side, and a client that stops reading a response pauses
the upstream until the forwarder's response timeout aborts the exchange.
C{Site.timeOut} (set to C{keepalive_timeout_secs} by L{ProxySite
<revproxy.proxy.request.ProxySite>}) still is the idle timeout of HTTP/2
connections (Twisted's
C{H2Connection}, which C{_GenericHTTPChannelProtocol} switches to when ALPN
chose C{h2}; switching cancels this channel's deadline).  Over HTTP/2 the
body limit is kept by L{limitStreamBody} and L{bodyTooLarge}: 413 on the
stream, whose remaining body is dropped, while the connection's other
streams go on.

Lingering close.  Over plain TCP, C{loseWriteConnection} sends the answer,
then a FIN, and reading goes on; the connection ends when the client
closes its side, or is aborted at the deadline.  Over TLS, shutting down
the TCP write side would cut the TLS stream short, so C{loseConnection} is
used instead: C{TLSMemoryBIOProtocol} flushes the answer, sends its
close_notify and keeps reading (and handing us) what the client sends until
the client's close_notify or FIN; the same deadline aborts a client that
never goes away.  With C{lingering_close_secs = 0} the connection is closed
once the answer is written (aborted if that has not happened
C{HTTPChannel.abortTimeout} seconds later).
"""

from __future__ import annotations

from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.http_headers import Headers

from revproxy.config import ServerConfig

if TYPE_CHECKING:
    from revproxy.proxy.request import ProxyRequest, ProxySite

_log = Logger()


_SERVER = ServerConfig()


@attrs.frozen
class ConnectionLimits:
    """
    The limits and deadlines of a client connection, from C{[server]} (see
    L{revproxy.config.ServerConfig} for each field); the defaults are its
    defaults.
    """

    max_request_line_bytes: int = _SERVER.max_request_line_bytes
    max_header_bytes: int = _SERVER.max_header_bytes
    max_headers_total_bytes: int = _SERVER.max_headers_total_bytes
    max_header_fields: int = _SERVER.max_header_fields
    header_timeout_secs: float = _SERVER.header_timeout_secs
    body_timeout_secs: float = _SERVER.body_timeout_secs
    min_body_rate_bytes_per_sec: int = _SERVER.min_body_rate_bytes_per_sec
    keepalive_timeout_secs: float = _SERVER.keepalive_timeout_secs
    max_requests_per_connection: int = _SERVER.max_requests_per_connection
    lingering_close_secs: float = _SERVER.lingering_close_secs

    @classmethod
    def fromServer(cls, server: ServerConfig) -> ConnectionLimits:
        """
        The limits a C{[server]} table sets.
        """
        return cls(
            max_request_line_bytes=server.max_request_line_bytes,
            max_header_bytes=server.max_header_bytes,
            max_headers_total_bytes=server.max_headers_total_bytes,
            max_header_fields=server.max_header_fields,
            header_timeout_secs=server.header_timeout_secs,
            body_timeout_secs=server.body_timeout_secs,
            min_body_rate_bytes_per_sec=server.min_body_rate_bytes_per_sec,
            keepalive_timeout_secs=server.keepalive_timeout_secs,
            max_requests_per_connection=server.max_requests_per_connection,
            lingering_close_secs=server.lingering_close_secs,
        )


#: The limits of a site built without any: C{[server]}'s defaults.
DEFAULT_LIMITS = ConnectionLimits()

#: The reason phrases of the early refusals (RFC 9110 section 15).
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}

# The phases of a connection; the one timer means what the phase says.
#: Waiting for, or reading, a request head: the head deadline.
_HEAD = 0
#: Reading a request body: the body deadlines.
_BODY = 1
#: A request is with the resource: no deadline.
_BUSY = 2
#: Kept alive between requests: the keep-alive deadline.
_IDLE = 3
#: Closing after the last response or a quiet close: abort if it lingers.
_CLOSING = 4
#: Refused: reading and dropping until the lingering deadline.
_LINGER = 5
#: Gone, or handed over to HTTP/2.
_CLOSED = 6

# Float sums of seconds may land a hair before a deadline computed from
# them; this much early counts as on time.
_SLACK = 1e-3

# While a body keeps coming at about the minimum rate, the rate is checked
# no more often than this.
_RATE_CHECK_SECS = 1.0


def refusalBody(code: int, detail: str) -> bytes:
    """
    The one-line text body of an early refusal: C{"431 Request Header
    Fields Too Large: ..."}.
    """
    return b"%d %s: %s\n" % (code, REASONS[code], detail.encode("utf-8"))


def _tellRefused(
    site: ProxySite, code: int, request: ProxyRequest | None, secure: bool
) -> None:
    """
    Tell C{site} of a refusal; its failure must not stop the refusal.
    """
    try:
        site.refused(code, request, secure)
    except Exception:
        _log.failure("site.refused({code}) failed", code=code)


class ProxyChannel(HTTPChannel):
    """
    Twisted's L{HTTPChannel} with limits, deadlines and a lingering close:
    see the module's description.

    @ivar limits: The limits and deadlines of this connection.
    """

    site: ProxySite
    _timer: IDelayedCall | None = None
    _phase = _HEAD
    _requestCount = 0
    _since = 0.0
    _bodyStart = 0.0
    _bodyLast = 0.0
    _bodyBytes = 0

    def __init__(self, limits: ConnectionLimits, clock: IReactorTime) -> None:
        super().__init__()
        self.limits = limits
        self._clock = clock
        self._maxRequestLine = limits.max_request_line_bytes
        self._maxField = limits.max_header_bytes
        # Twisted's own counters keep the limits, so that a header line
        # costs nothing more than it does in Twisted;
        # _respondToBadRequestAndDisconnect tells which limit was passed
        # and answers 431 instead of Twisted's 400.  A line longer than
        # MAX_LENGTH, ended or not, is lineLengthExceeded: MAX_LENGTH is the
        # request line's limit until the request line is read, then a
        # header field's.
        self.maxHeaders = limits.max_header_fields
        self.totalHeadersSize = limits.max_headers_total_bytes
        self._expectRequestLine()

    # -- timer

    def _arm(self, seconds: float) -> None:
        """
        Make the one timer fire in C{seconds}.

        A timer is never moved sooner: the reactor does that by searching
        its whole heap of timers (C{_moveCallLaterSooner}), so a new one
        is made instead; moving it later costs nothing.
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

    def _deadlinePassed(self) -> None:
        """
        The timer fired: what that means depends on the phase.
        """
        self._timer = None
        phase = self._phase
        limits = self.limits
        if phase == _HEAD:
            now = self._clock.seconds()
            due = self._since + limits.header_timeout_secs
            if now + _SLACK < due:
                # The head began after the timer was set (see _IDLE).
                self._arm(due - now)
            elif self._buffer or self.requests:
                self.refuse(
                    408,
                    "the request head did not arrive within "
                    f"{limits.header_timeout_secs:g} s",
                )
            else:
                self._closeQuietly()
        elif phase == _BODY:
            self._checkBody()
        elif phase == _IDLE:
            now = self._clock.seconds()
            due = self._since + limits.keepalive_timeout_secs
            if now + _SLACK >= due:
                self._closeQuietly()
            else:
                self._arm(min(due - now, limits.header_timeout_secs))
        elif phase in (_CLOSING, _LINGER):
            transport = cast(ITCPTransport | None, self.transport)
            if transport is not None:
                transport.abortConnection()

    def _checkBody(self) -> None:
        """
        Answer 408 if the body stalled or is too slow, else check again when
        it next could be.
        """
        limits = self.limits
        now = self._clock.seconds()
        timeout = limits.body_timeout_secs
        idleAt = self._bodyLast + timeout
        if now + _SLACK >= idleAt:
            self.refuse(408, f"no byte of the request body came for {timeout:g} s")
            return
        nextAt = idleAt
        rate = limits.min_body_rate_bytes_per_sec
        if rate:
            start = self._bodyStart
            elapsed = now - start
            if elapsed + _SLACK >= timeout and self._bodyBytes < rate * elapsed:
                self.refuse(
                    408,
                    f"the request body came slower than {rate} bytes/s",
                )
                return
            # When the average would fall below the minimum if nothing more
            # came.
            belowAt = max(start + timeout, start + self._bodyBytes / rate)
            nextAt = min(nextAt, max(belowAt, now + _RATE_CHECK_SECS))
        self._arm(nextAt - now)

    # -- Twisted's idle timer

    def setTimeout(self, period: float | None) -> float | None:
        """
        Twisted's idle timer is not used (C{timeOut} is L{None} from the
        start); C{setTimeout(None)} is also how the channel is told that
        the connection ends or is handed over to HTTP/2, so it stops every
        deadline here too.
        """
        if period is None:
            self._cancel()
            if self._phase != _LINGER:
                self._phase = _CLOSED
        previous: float | None = super().setTimeout(period)
        return previous

    # -- IProtocol

    def connectionMade(self) -> None:
        self.timeOut = None
        self._secure = None
        super().connectionMade()
        self._phase = _HEAD
        self._since = self._clock.seconds()
        self._arm(self.limits.header_timeout_secs)

    _secure: bool | None = None

    def isSecure(self) -> bool:
        """
        Whether the connection is over TLS, found once: Twisted's answer
        adapts the transport to C{ISSLTransport} every time, and the
        request path asks several times per request.
        """
        secure = self._secure
        if secure is None:
            secure = bool(HTTPChannel.isSecure(self))
            if self.transport is not None:
                self._secure = secure
        return secure

    def dataReceived(self, data: bytes) -> None:
        # Unlike HTTPChannel.dataReceived, no timer is reset per read.
        phase = self._phase
        if phase != _HEAD:
            if phase == _IDLE:
                self._startHead()
            elif phase >= _CLOSING:
                # Refused, closing or gone: read and dropped.
                return
        LineReceiver.dataReceived(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._phase = _CLOSED
        self._cancel()
        super().connectionLost(reason)

    # -- the request head

    def _startHead(self) -> None:
        """
        The first byte of a request on a kept-alive connection came.  The
        timer, set for at most C{header_timeout_secs} when the connection
        fell idle, fires before this head's deadline and moves itself then.
        """
        self._phase = _HEAD
        self._since = self._clock.seconds()

    def _expectRequestLine(self) -> None:
        """
        The next line is a request line: until it is read, lines go
        through L{_requestLineReceived} and may be as long as a request
        line.
        """
        self.lineReceived = self._requestLineReceived  # type: ignore[method-assign]
        self.MAX_LENGTH = self._maxRequestLine

    def _readingRequestLine(self) -> bool:
        """
        Whether the line being read is a request line (not a header).
        """
        return "lineReceived" in self.__dict__

    def _requestLineReceived(self, line: bytes) -> None:
        """
        L{lineReceived} for a request line: once it is read, header lines go
        straight to Twisted's C{lineReceived}, with a header field's length
        limit, and Twisted's count of the head's bytes (which included the
        request line) counts the header fields only.
        """
        HTTPChannel.lineReceived(self, line)
        if line and self.__dict__.get("lineReceived") == self._requestLineReceived:
            del self.__dict__["lineReceived"]
            self.MAX_LENGTH = self._maxField
            self._receivedHeaderSize -= len(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._readingRequestLine():
            self.refuse(
                414, f"the request line is longer than {self._maxRequestLine} bytes"
            )
        else:
            self.refuse(431, f"a header field is longer than {self._maxField} bytes")

    def allHeadersReceived(self) -> None:
        length = self.length
        if length != 0:
            # A body follows (a Content-Length, or chunked).
            request: ProxyRequest = self.requests[-1]
            self._describe(request)
            limit = self.site.bodyLimit(request)
            if limit is not None:
                if length is None:
                    request.countBody(limit)
                elif length > limit:
                    self.refuse(413, f"the request body is larger than {limit} bytes")
                    return
            self._phase = _BODY
            self._bodyStart = self._bodyLast = self._clock.seconds()
            self._bodyBytes = 0
            self._arm(self.limits.body_timeout_secs)
        HTTPChannel.allHeadersReceived(self)
        self._requestCount += 1
        cap = self.limits.max_requests_per_connection
        if cap and self._requestCount >= cap and self.persistent:
            # The last request this connection may make: its response says
            # so, as Twisted's does for a client's "Connection: close".
            self.persistent = False
            self.requests[-1].responseHeaders.setRawHeaders(b"connection", [b"close"])

    # -- the request body

    def rawDataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase == _BODY:
            self._bodyBytes += len(data)
            self._bodyLast = self._clock.seconds()
        elif phase >= _CLOSING:
            return
        HTTPChannel.rawDataReceived(self, data)

    def allContentReceived(self) -> None:
        if self._phase >= _CLOSING:
            # Refused: the chunked decoder may still reach the body's end.
            return
        self._phase = _BUSY
        self._cancel()
        # Before Twisted's: the resource may answer at once, and the next
        # request's head, if already read, is then parsed in that call.
        self._expectRequestLine()
        HTTPChannel.allContentReceived(self)

    # -- the response

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            # The timer fires every header_timeout_secs at most while idle,
            # so that a head starting later needs no timer of its own.
            limits = self.limits
            self._phase = _IDLE
            self._since = self._clock.seconds()
            self._arm(min(limits.keepalive_timeout_secs, limits.header_timeout_secs))
        else:
            self._phase = _CLOSING
            self._arm(self.abortTimeout)
        HTTPChannel.requestDone(self, request)
        if self._phase == _IDLE and self._buffer:
            # The resource answered within the read that brought the next
            # request's first bytes.
            self._startHead()

    def _closeQuietly(self) -> None:
        """
        Close without an answer (an idle connection), aborting if it does not
        go away.
        """
        self._phase = _CLOSING
        self._arm(self.abortTimeout)
        self.loseConnection()

    # -- refusals

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        Twisted's answer to a malformed head or chunked body, and to its
        header counters passing their limits: now a whole 431 for those,
        400 for the rest, with a lingering close.
        """
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.refuse(
                431,
                "the header fields are longer than "
                f"{self.totalHeadersSize} bytes in all",
            )
        elif self._receivedHeaderCount > self.maxHeaders:
            self.refuse(431, f"more than {self.maxHeaders} header fields")
        else:
            self.refuse(400, "the request is malformed")

    def _describe(self, request: ProxyRequest) -> None:
        """
        Fill C{request}'s method, target and version in from the request
        line (Twisted does so only once the body is in); L{None} when the
        request line could not be parsed, rather than Twisted's
        placeholders.
        """
        command = getattr(self, "_command", None)
        if command is not None:
            request.method = command
            request.uri = self._path
            request.clientproto = self._version
        else:
            # Twisted types these as bytes; the refused request is only
            # described, never processed.
            unknown: Any = None
            request.method = request.uri = request.clientproto = unknown

    def refuse(self, code: int, detail: str) -> None:
        """
        Answer the request being read with C{code} and close the connection
        gracefully (a lingering close); the request is never processed.

        @param detail: What was wrong, for the one-line body.
        """
        if self._phase >= _LINGER:
            return
        request: ProxyRequest | None = self.requests[-1] if self.requests else None
        if request is not None:
            self._describe(request)
            request.refusal = code
        self._phase = _LINGER
        self.persistent = False
        self.clearLineBuffer()
        self._dataBuffer = []
        body = refusalBody(code, detail)
        head = (
            b"HTTP/1.1 %d %s\r\n"
            b"Date: %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n"
            b"Cache-Control: no-store\r\n"
            b"\r\n"
        ) % (
            code,
            REASONS[code],
            formatdate(self._clock.seconds(), usegmt=True).encode("ascii"),
            len(body),
        )
        if request is not None and request.method == b"HEAD":
            body = b""
        secure = self.isSecure()
        cast(ITCPTransport, self.transport).write(head + body)
        self._lingeringClose(secure)
        _tellRefused(self.site, code, request, secure)

    def _lingeringClose(self, secure: bool) -> None:
        """
        Send what was written, shut the write side down and drop what comes
        until the lingering deadline (see the module's description).
        """
        transport = cast(ITCPTransport, self.transport)
        producer: Any = self._networkProducer
        # A registered producer would hold the close back; reading must go
        # on (it is paused while the client does not read our answers).
        producer.unregisterProducer()
        producer.resumeProducing()
        linger = self.limits.lingering_close_secs
        if linger <= 0:
            self._arm(self.abortTimeout)
            transport.loseConnection()
            return
        self._arm(linger)
        halfClose = None if secure else getattr(transport, "loseWriteConnection", None)
        if halfClose is not None:
            halfClose()
        else:
            transport.loseConnection()


def proxyChannelProtocol(site: ProxySite) -> _GenericHTTPChannelProtocol:
    """
    The protocol of one client connection: Twisted's
    C{_GenericHTTPChannelProtocol}, which switches to HTTP/2 when ALPN chose
    it, around a L{ProxyChannel} for HTTP/1.x.  L{ProxySite}'s
    C{protocol}, called with the site, as Twisted's own
    C{_genericHTTPChannelProtocolFactory}.
    """
    return _GenericHTTPChannelProtocol(ProxyChannel(site.limits, site.reactor))


# -- HTTP/2


def isStream(channel: object) -> bool:
    """
    Whether C{channel} is Twisted's C{H2Stream} (an HTTP/2 request's
    channel) rather than an HTTP/1.x channel.
    """
    return hasattr(channel, "streamID")


def limitStreamBody(request: ProxyRequest, length: int | None) -> None:
    """
    Apply the site's body limit to an HTTP/2 request whose headers gave
    C{length} (L{None}: no Content-Length, the body is counted).

    Twisted calls this (through C{gotLength}) while it builds the stream,
    before the connection knows it, so a Content-Length over the limit is
    answered from the reactor's next turn.
    """
    if request.refusal is not None:
        return
    stream: Any = request.channel
    site: ProxySite = stream.site
    request.method = stream.command
    request.uri = stream.path
    request.clientproto = b"HTTP/2"
    limit = site.bodyLimit(request)
    if limit is None:
        return
    if length is None:
        request.countBody(limit)
        return
    if length > limit:
        _markRefused(request, 413)
        request.countBody(-1)
        # H2Stream answers "Expect: 100-continue" right after parseCookies,
        # once the headers are all in: a refused body is not asked for.
        parseCookies = request.parseCookies

        def parseCookiesNoExpect() -> None:
            request.requestHeaders.removeHeader(b"expect")
            parseCookies()

        request.parseCookies = parseCookiesNoExpect  # type: ignore[method-assign]
        site.reactor.callLater(
            0,
            _refuseStream,
            request,
            413,
            f"the request body is larger than {limit} bytes",
        )


def _notProcessed(command: bytes, path: bytes, version: bytes) -> None:
    """
    The C{requestReceived} of a refused HTTP/2 request.
    """


def _markRefused(request: ProxyRequest, code: int) -> None:
    """
    Mark an HTTP/2 C{request} refused with C{code}.  Twisted hands a request
    on when its stream ends (C{H2Stream.requestComplete}, maybe after the
    refusal): a refused one is not processed.  Set on the instance, so that
    requests that are not refused pay nothing for it.
    """
    request.refusal = code
    request.requestReceived = _notProcessed  # type: ignore[method-assign]


def bodyTooLarge(request: ProxyRequest, limit: int) -> None:
    """
    The body of C{request} passed C{limit} bytes as it came: answer 413,
    over HTTP/2 on its stream, over HTTP/1.x with a lingering close.
    """
    channel = request.channel
    if channel is None:
        return
    detail = f"the request body is larger than {limit} bytes"
    if isStream(channel):
        if request.refusal is None:
            _markRefused(request, 413)
            _refuseStream(request, 413, detail)
    elif isinstance(channel, ProxyChannel):
        channel.refuse(413, detail)


def streamConnection(stream: Any) -> Any:
    """
    The L{twisted.web._http2.H2Connection} of Twisted's C{H2Stream}
    C{stream}: its private C{_conn}, read here only (no public accessor
    exists; #13's own HTTP/2 protocol makes this go).
    """
    return stream._conn


def _refuseStream(request: ProxyRequest, code: int, detail: str) -> None:
    """
    Answer an HTTP/2 request with C{code} before its body is all in, and end
    its stream; the connection's other streams go on.

    Twisted forgets a stream once its END_STREAM is sent, after which a
    DATA frame the client still sends for it would fail the whole
    connection (C{H2Connection._requestDataReceived} looks the stream up):
    so a RST_STREAM with NO_ERROR follows the END_STREAM in the same call,
    as RFC 9113 section 8.1 suggests for a response sent before the request
    ended, and the HTTP/2 library then drops what the client still sends.
    """
    stream: Any = request.channel
    if stream is None or request.clientLeft:
        return
    connection = streamConnection(stream)
    streamID = stream.streamID
    if not connection._streamIsActive(streamID):
        return
    site: ProxySite = stream.site
    content = request.content
    if content is not None:
        content.close()
    body = refusalBody(code, detail)
    headers = Headers()
    headers.setRawHeaders(
        b"date", [formatdate(site.reactor.seconds(), usegmt=True).encode("ascii")]
    )
    headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    stream.writeHeaders(b"HTTP/2", b"%d" % code, REASONS[code], headers)
    if request.method != b"HEAD":
        stream.write(body)

    def reset(_: object) -> None:
        from h2.exceptions import ProtocolError

        if not connection._stillProducing:
            return
        try:
            connection.conn.reset_stream(streamID)
        except ProtocolError:
            # The client had ended its side: the stream is closed already.
            return
        connection._tryToWriteControlData()

    connection._streamCleanupCallbacks[streamID].addCallback(reset)
    stream.loseConnection()
    _tellRefused(site, code, request, stream.isSecure())
