# -*- test-case-name: tests.test_upstream -*-
"""
The lean upstream HTTP/1.1 client: one protocol instance per pooled
connection, one exchange (request and response) on it at a time.

It does what the forwarder needs and nothing else: write a serialized
request, parse the response with httptools (llhttp, strict) and hand status,
headers, body chunks and the end to an L{ResponseSink}.  No Agent, no
Deferred per request: the forwarder is the sink, and the pool hands
connections out and takes them back.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING, cast
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from revproxy.proxy.eager import noDelay, writerFor
from revproxy.proxy.upstreamtls import UpstreamTLS

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IDelayedCall, IReactorTime

PoolKey = tuple[str, str, int, UpstreamTLS | None]
"""
(scheme, host, port, TLS settings) of an upstream; the TLS settings are
L{None} for http://.  A connection's key, and the pool's key for its
connections to one upstream.
"""


class ConnectionOwner(TypingProtocol):
    """
    What a connection tells the pool it belongs to
    (L{revproxy.proxy.pool.ConnectionPool}, or no pool once it left one).
    """

    def connectionMade(self, connection: UpstreamConnection) -> None:
        """
        C{connection} is connected.
        """

    def connectionLost(self, connection: UpstreamConnection) -> None:
        """
        C{connection} is closed.
        """

    def release(self, connection: UpstreamConnection) -> None:
        """
        C{connection}'s exchange is over: keep it for the next one, or
        close it.
        """

    def detach(self, connection: UpstreamConnection) -> None:
        """
        C{connection} leaves the pool for good (it became a tunnel): it no
        longer counts as one of the pool's, and is never given back.
        """


_CONNECTION_DONE = Failure(ConnectionDone())
#: What one read of an upstream connection takes at most.  A client that
#: stops reading holds about one read in revproxy (in its transport, or in
#: its HTTP/2 stream's buffer beside 64 KiB) before the upstream is paused:
#: 128 KiB keeps 20 stalled clients under 5 MiB over TLS, where 256 KiB
#: took 8 to 9 MiB, for about 4 % more CPU than 256 KiB on a 1 MiB
#: response (64 KiB: 18 %).
_READ_SIZE = 128 * 1024

#: The most bytes of response head (status line, headers, and any interim
#: 1xx responses before them) accepted from an upstream: as nginx's
#: proxy_buffer_size, but with room for large cookies.
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamProtocolError(Exception):
    """
    The upstream sent bytes that are not a valid HTTP/1.1 response.
    """


class UpstreamClosed(Exception):
    """
    The upstream closed the connection before the response was complete.

    @ivar gotBytes: whether any byte of the response had arrived.
    """

    def __init__(self, gotBytes: bool, reason: Failure | None) -> None:
        super().__init__(
            "upstream closed the connection "
            + ("mid-response" if gotBytes else "before responding")
        )
        self.gotBytes = gotBytes
        self.reason = reason


class _HeadResponseDone(Exception):
    """
    Raised from the parser callback to end a response to HEAD after its
    headers: httptools cannot be told that such a response has no body.
    """


class _ExcessBytes(Exception):
    """
    Raised from the parser callback when a second response starts where one
    was asked for.
    """


class Stream(TypingProtocol):
    """
    What revproxy uses of a connected TCP or TLS transport: writing, flow
    control both ways, and closing.
    """

    def write(self, data: bytes) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...


class ResponseSink(TypingProtocol):
    """
    What an L{UpstreamConnection} reports an exchange's progress to.
    """

    def responseStarted(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        The final (non-1xx) status line and headers arrived.
        """

    def responseBody(self, data: bytes) -> None:
        """
        A chunk of the response body arrived (de-chunked).
        """

    def responseDone(self) -> None:
        """
        The response is complete; the connection is free again.
        """

    def responseFailed(self, reason: Exception) -> None:
        """
        The exchange failed; the connection is already closed.
        """


def socketOf(transport: object) -> socket.socket | None:
    """
    The socket under C{transport}: its own (TCP), or that of the transport
    it wraps (TLS: a L{twisted.protocols.tls.TLSMemoryBIOProtocol} over
    TCP), through the public C{getHandle} and C{transport}; L{None} when
    there is none (a test's string transport).
    """
    for _ in range(4):
        if transport is None:
            return None
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is not None:
            handle = getHandle()
            if isinstance(handle, socket.socket):
                return handle
        transport = getattr(transport, "transport", None)
    return None


class UpstreamConnection(Protocol):
    """
    One keep-alive connection to an upstream.

    @ivar key: the pool key this connection belongs to.
    @ivar reused: whether this connection has completed an exchange before.
    @ivar idleSince: when the connection went back to the pool.
    """

    def __init__(
        self, pool: ConnectionOwner, key: PoolKey, clock: IReactorTime | None = None
    ) -> None:
        self.pool = pool
        self.key = key
        self.clock = clock
        #: The connection's one timer (L{watch}), kept from one exchange to
        #: the next: moving it later costs no heap work, where a timer per
        #: exchange cost two heap operations and their comparisons.
        self._deadline: IDelayedCall | None = None
        self._onDeadline: Callable[[], None] | None = None
        self._watchSeconds = 0.0
        self.reused = False
        self.idleSince = 0.0
        self.connected = False
        self._sink: ResponseSink | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._cutAtHead = False
        #: What L{verified} asks the kernel with, and about which socket.
        self._poller: select.poll | None = None
        self._polled: socket.socket | None = None
        #: Whether the connection became a tunnel (L{startTunnel}): once the
        #: parser is gone, every byte goes to the sink as it comes.
        self.tunnelled = False
        self._reset(False)

    def _reset(self, isHead: bool) -> None:
        """
        Forget the previous exchange's state.
        """
        self.bodyPending = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._isHead = isHead
        self._gotBytes = False
        self._started = False
        self._keepAlive = False
        self._untilClose = False
        self._done = False
        self._excess = False
        self._remaining: int | None = None
        self._tail = b""
        self._headBytes = 0

    @property
    def stream(self) -> Stream | None:
        """
        The transport, typed as what it is.
        """
        return cast("Stream | None", self.transport)

    # -- the exchange's deadline

    def watch(self, seconds: float, onTimeout: Callable[[], None]) -> None:
        """
        Call C{onTimeout} when C{seconds} pass with no L{touch}, until
        L{unwatch}.
        """
        self._onDeadline = onTimeout
        self._watchSeconds = seconds
        timer = self._deadline
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            assert self.clock is not None
            self._deadline = self.clock.callLater(seconds, self._deadlinePassed)

    def touch(self) -> None:
        """
        Something happened: the deadline is L{watch}'s seconds from now.
        """
        timer = self._deadline
        if timer is not None and self._onDeadline is not None:
            timer.reset(self._watchSeconds)

    def unwatch(self) -> None:
        """
        No deadline any more.  The timer stays, for the next exchange; when
        it comes due first it does nothing.
        """
        self._onDeadline = None

    def close(self) -> None:
        """
        Close this connection, which serves no exchange: its timer goes at
        once, not when the close is done.
        """
        self._onDeadline = None
        timer = self._deadline
        self._deadline = None
        if timer is not None and timer.active():
            timer.cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    def _deadlinePassed(self) -> None:
        self._deadline = None
        onTimeout = self._onDeadline
        self._onDeadline = None
        if onTimeout is not None:
            onTimeout()

    # -- the pool's side

    def connectionMade(self) -> None:
        self.connected = True
        transport = self.transport
        if transport is not None:
            self._write = writerFor(transport) or transport.write
            noDelay(transport)
        if transport is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = _READ_SIZE
        self.pool.connectionMade(self)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.connected = False
        self._poller = self._polled = None
        timer = self._deadline
        self._deadline = self._onDeadline = None
        if timer is not None and timer.active():
            timer.cancel()
        sink = self._sink
        self.pool.connectionLost(self)
        if sink is None:
            return
        self._sink = None
        if self.tunnelled:
            if reason.check(ConnectionDone):
                sink.responseDone()
            else:
                sink.responseFailed(UpstreamClosed(True, reason))
            return
        if self._started and self._untilClose and not self._done:
            # A body delimited by the end of the connection is complete when
            # the connection closes cleanly.
            if reason.check(ConnectionDone):
                self._done = True
                sink.responseDone()
                return
        sink.responseFailed(UpstreamClosed(self._gotBytes, reason))

    def verified(self) -> bool:
        """
        Whether this idle connection is fit to carry a request that must
        never be sent twice: connected, and its socket has nothing waiting
        to be read (no FIN, no reset, no TLS close_notify, no stray byte),
        so the upstream had not closed it when we looked.  A connection
        without a socket (tests) is judged by L{connected} alone.
        """
        if not self.connected:
            return False
        sock = socketOf(self.transport)
        if sock is None:
            return True
        poller = self._poller
        if poller is None or sock is not self._polled:
            # One poll object per socket: asking it costs one system call
            # and no exception (a MSG_PEEK read raises when there is
            # nothing).  POLLIN covers a byte and the end of the stream;
            # errors are always reported.
            poller = self._poller = select.poll()
            poller.register(sock, select.POLLIN)
            self._polled = sock
        return not poller.poll(0)

    def send(self, sink: ResponseSink, data: bytes, isHead: bool) -> None:
        """
        Start an exchange: write C{data} (the serialized request head, and the
        body when it is small) and report the response to C{sink}.
        """
        self._sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._reset(isHead)
        assert self.transport is not None
        self._write(data)

    def startTunnel(self, sink: ResponseSink) -> None:
        """
        The upstream switched protocols (101) and the exchange accepted it:
        from the end of the response head on, every byte read goes to
        C{sink}'s C{responseBody} as it is, the end of the connection to its
        C{responseDone} (or C{responseFailed}), and the connection leaves
        its pool for good.  Its deadline is the caller's to L{watch}.
        """
        self._sink = sink
        self.tunnelled = True
        self._onDeadline = None
        self.pool.detach(self)

    def abandon(self) -> None:
        """
        Drop the exchange in progress and close the connection: the client
        went away or a deadline passed.
        """
        self._sink = None
        stream = self.stream
        if stream is not None:
            stream.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnelled and self._parser is None:
            sink = self._sink
            if sink is not None:
                sink.responseBody(data)
            return
        if self._sink is None:
            # Bytes nobody asked for: the connection is out of step.
            self._abort()
            return
        self._gotBytes = True
        if self._remaining is not None:
            self._rawBody(data)
            return
        while data:
            parser = self._parser
            if parser is None:
                return
            rest = b""
            self._cutAtHead = False
            if not self._started:
                # Find the end of the head ourselves (llhttp insists on CRLF),
                # so that a body of known length can skip the parser.
                tail = self._tail
                window = tail + data if tail else data
                pos = window.find(b"\r\n\r\n")
                if pos >= 0:
                    cut = pos + 4 - len(tail)
                    data, rest = data[:cut], data[cut:]
                    self._tail = b""
                    self._cutAtHead = True
                else:
                    self._tail = window[-3:]
                self._headBytes += len(data)
                if self._headBytes > MAX_RESPONSE_HEAD:
                    # llhttp sets no limit; an upstream that never ends its
                    # head must not make us buffer without end.
                    sink = self._sink
                    self._sink = None
                    self._abort()
                    if sink is not None:
                        sink.responseFailed(
                            UpstreamProtocolError(
                                f"response head longer than {MAX_RESPONSE_HEAD} bytes"
                            )
                        )
                    return
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                # A 101 response head is whole (llhttp stops there).
                self._switched(data[e.args[0] :] + rest if e.args else rest)
                return
            except httptools.HttpParserError as e:
                cause = e.__context__
                if isinstance(cause, _HeadResponseDone):
                    self._done = True
                elif isinstance(cause, _ExcessBytes):
                    self._excess = True
                else:
                    sink = self._sink
                    self._sink = None
                    self._abort()
                    if sink is not None and not self._done:
                        sink.responseFailed(UpstreamProtocolError(str(e)))
                    return
            if self._done:
                if rest:
                    self._excess = True
                # Only now, with the parser out of the way: releasing from
                # inside its callback would let bytes after the response
                # reach the next exchange on this connection (smuggling).
                self._finish()
                return
            if self._remaining is not None:
                if rest:
                    self._rawBody(rest)
                return
            data = rest

    def _switched(self, rest: bytes) -> None:
        """
        The upstream's 101 head is read: go on as a tunnel if the exchange
        took it (L{startTunnel}), with C{rest}, the bytes after the head,
        as its first; else drop the connection.
        """
        self._parser = None
        if not self.tunnelled:
            self._sink = None
            self._abort()
            return
        sink = self._sink
        if rest and sink is not None:
            sink.responseBody(rest)

    def _rawBody(self, data: bytes) -> None:
        """
        Pass on body bytes of a response with a known length, unparsed and
        uncopied.
        """
        remaining = self._remaining
        assert remaining is not None
        size = len(data)
        if size > remaining:
            self._excess = True
            data = data[:remaining]
            size = remaining
        remaining -= size
        self._remaining = remaining
        sink = self._sink
        if data and sink is not None:
            sink.responseBody(data)
        if remaining == 0 and self._sink is not None:
            self._done = True
            self._finish()

    def _abort(self) -> None:
        self._parser = None
        stream = self.stream
        if stream is not None:
            stream.abortConnection()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._done:
            # A second response where one was asked for.
            raise _ExcessBytes()

    def on_status(self, reason: bytes) -> None:
        # httptools may report the reason phrase in pieces.
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        code = parser.get_status_code()
        if 100 <= code < 200 and code != 101:
            # Interim responses (100 Continue, 103 Early Hints) are not
            # relayed: the proxy answered the client's Expect itself.
            self._headers = []
            self._reason = b""
            return
        headers = self._headers
        self._headers = []
        framed = False
        closes = False
        chunked = False
        length = 0
        for name, value in headers:
            # Most names are none of the three: their length says so.
            size = len(name)
            if size == 14:
                if name.lower() == b"content-length":
                    framed = True
                    # llhttp has checked it: digits, no conflicting copies.
                    length = int(value)
            elif size == 17:
                if name.lower() == b"transfer-encoding":
                    chunked = chunked or b"chunked" in value.lower()
                    framed = framed or chunked
            elif size == 10 and name.lower() == b"connection":
                closes = closes or b"close" in value.lower()
        isHead = self._isHead
        self._untilClose = not framed and code not in (204, 304) and not isHead
        if isHead:
            # llhttp does not know the request was HEAD, so without a length
            # it would think the body runs to the end of the connection.
            self._keepAlive = not closes and parser.get_http_version() == "1.1"
        else:
            self._keepAlive = bool(parser.should_keep_alive()) and not self._untilClose
        self._started = True
        if (
            self._cutAtHead
            and length
            and not chunked
            and not isHead
            and code not in (204, 304)
        ):
            self._remaining = length
        sink = self._sink
        if sink is not None:
            sink.responseStarted(code, self._reason, headers)
        if isHead:
            raise _HeadResponseDone()

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None and self._started and body and self._remaining is None:
            sink.responseBody(body)

    def on_message_complete(self) -> None:
        if self._started:
            self._done = True
        # else: the end of an interim (1xx) response; the final one follows.

    def _finish(self) -> None:
        sink = self._sink
        self._sink = None
        self._parser = None
        self.reused = True
        if self._excess:
            # The upstream is out of step with us: drop it hard.
            self._abort()
        elif self._keepAlive and not self.bodyPending:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.loseConnection()
        if sink is not None:
            sink.responseDone()
