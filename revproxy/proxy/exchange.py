# -*- test-case-name: tests.test_http1,tests.test_http2,tests.test_forwarder -*-
"""
The one interface between a client-side protocol (HTTP/1.1 in
L{revproxy.proxy.http1}, HTTP/2 in L{revproxy.proxy.http2}) and what answers
its requests (the router in L{revproxy.routing}, the forwarder in
L{revproxy.proxy.forwarder}).

How it works: docs/internals.md, "The exchange between a client side and the forwarder".
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IAddress,
        IPushProducer,
        IReactorTime,
        ITransport,
    )

    from revproxy.proxy.limits import ConnectionLimits
    from revproxy.runtime import Runtime

#: The status logged for a request whose client left before its answer
#: ended (nginx's "client closed request").
CLIENT_CLOSED = 499


class RequestHandler(TypingProtocol):
    """
    What a client-side protocol gives each request to, when its head is
    whole.
    """

    def handle(self, exchange: Exchange) -> None:
        """
        Answer C{exchange}, now or later; must not raise.
        """


class ExchangeObserver(TypingProtocol):
    """
    What an exchange tells when it ends (L{revproxy.observer.RequestObserver}
    has it).
    """

    def finished(self, request: Exchange, status: int | None = None) -> None:
        """
        C{request} ended: its response is whole, or its client left before
        (C{status}: what to log instead of the response's code).
        """


class FrontEndView(TypingProtocol):
    """
    What a client-side protocol reads of the front end that built it
    (L{revproxy.proxy.frontend.FrontEnd}).
    """

    @property
    def handler(self) -> RequestHandler:
        """
        Given every request whose head is whole, in turn.
        """

    @property
    def clock(self) -> IReactorTime:
        """
        The clock of every deadline, and of the C{Date}.
        """

    @property
    def limits(self) -> ConnectionLimits:
        """
        The connection's limits and deadlines.
        """

    @property
    def observer(self) -> ExchangeObserver | None:
        """
        Told of every finished request, if set.
        """

    def snapshot(self) -> Runtime | None:
        """
        The runtime snapshot a request whose head was just read is answered
        by, kept as its L{Exchange.runtime}; L{None} when the handler takes
        it itself.
        """

    def tellRefused(self, code: int, exchange: Exchange | None, secure: bool) -> None:
        """
        An early refusal C{code} of a request that was never handled, with
        the exchange when its request line was read, else L{None}.
        """


class BodySink(TypingProtocol):
    """
    What takes a request's body as it comes, once attached.
    """

    def bodyReceived(self, data: bytes) -> None:
        """
        Bytes of the request body (decoded from its framing).
        """

    def bodyDone(self) -> None:
        """
        The request body is all in.
        """

    def clientGone(self) -> None:
        """
        The client left (connection closed, stream reset, or a refusal or
        deadline ended the exchange) before the exchange ended.
        """


class ExchangeChannel(TypingProtocol):
    """
    What a client-side protocol does for its exchanges: an HTTP/1.1
    connection, or an HTTP/2 stream's connection.
    """

    def sendHead(
        self,
        exchange: Exchange,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """
        Send the response head.  C{headers} are end-to-end headers only (no
        hop-by-hop fields): the channel adds its own framing
        (C{Content-Length} as given, else chunked or close-delimited over
        HTTP/1.x) and C{Connection}.
        """

    def sendData(self, exchange: Exchange, data: bytes) -> None:
        """
        Send bytes of the response body (dropped for C{HEAD}).
        """

    def sendEnd(self, exchange: Exchange) -> None:
        """
        The response is whole.
        """

    def startTunnel(
        self,
        exchange: Exchange,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """
        Send the head of a switch to a tunnel now (C{101} over HTTP/1.1,
        C{200} for an HTTP/2 extended CONNECT); from then on what the
        client sends is the exchange's body, as it comes, with no framing,
        and what is sent goes out as it is; L{sendEnd} closes the connection
        (HTTP/1.1) or ends the stream (HTTP/2).
        """

    def abortExchange(self, exchange: Exchange) -> None:
        """
        Cut the response short so that the client sees it is incomplete:
        abort the connection (HTTP/1.x) or reset the stream (HTTP/2).
        """

    def pauseBody(self, exchange: Exchange) -> None:
        """
        Stop reading the request body (and acknowledging it, over HTTP/2).
        """

    def resumeBody(self, exchange: Exchange) -> None:
        """
        Read the request body again; also the first call for a body that
        waits for C{100 Continue}.
        """

    def responseProducer(
        self, exchange: Exchange, producer: IPushProducer | None
    ) -> None:
        """
        C{producer} feeds the response: pause it while the client takes no
        more (at once if that is now), resume it when the client drains.
        """

    def refuse(self, exchange: Exchange, code: int, detail: str) -> None:
        """
        End C{exchange} with the early refusal C{code} (400, 408, 413, ...)
        and a one-line body naming C{detail}; its remaining body is never
        read (HTTP/1.x: a lingering close; HTTP/2: the stream is reset).
        When a response has begun already, the exchange is aborted instead.
        """


class Exchange:
    """
    One request and its response on a client connection.

    Set by the protocol: C{method}, C{uri} (the request-target as
    received), C{clientproto} (C{b"HTTP/1.0"}, C{b"HTTP/1.1"},
    C{b"HTTP/2"}), C{headers} (every field as C{(lowercased name, value)},
    in order; over HTTP/2 C{:authority} as C{host} and the C{cookie} fields
    joined), C{bodyLength} (the Content-Length, L{None} when the body's
    length is unknown, 0 without a body), C{secure}, C{peer}, C{serverName}
    (the TLS SNI name, normalized), C{transport} (the connection's, for
    the TLS version) and C{runtime} (the runtime snapshot the request is
    answered by, L{revproxy.runtime.Runtime}, taken when its head was read;
    L{None} until the handler takes it, when the front end did not).

    Filled in by the router and the forwarder: the request context the
    access log, the metrics and the upstream read.
    """

    __slots__ = (
        "_body",
        "_bodyRead",
        "_sinkPaused",
        "bodyComplete",
        "bodyLength",
        "bodyLimit",
        "channel",
        "clientIP",
        "clientLeft",
        "clientproto",
        "closeReason",
        "code",
        "counted",
        "errorPages",
        "finished",
        "generation",
        "headers",
        "hopByHop",
        "logged",
        "method",
        "observer",
        "peer",
        "protocol",
        "receivedLength",
        "refusal",
        "relay",
        "requestID",
        "routedHost",
        "runtime",
        "secure",
        "sentLength",
        "serverName",
        "siteName",
        "startedAt",
        "startedWriting",
        "transport",
        "upstreamSeconds",
        "upstreamStatus",
        "upstreamURL",
        "uri",
    )

    def __init__(
        self,
        channel: ExchangeChannel,
        method: bytes,
        uri: bytes,
        clientproto: bytes,
        headers: list[tuple[bytes, bytes]],
        bodyLength: int | None,
        *,
        secure: bool = False,
        peer: IAddress | None = None,
        serverName: str | None = None,
        transport: ITransport | None = None,
        observer: ExchangeObserver | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.channel = channel
        self.method = method
        self.uri = uri
        self.clientproto = clientproto
        self.headers = headers
        self.bodyLength = bodyLength
        self.secure = secure
        self.peer = peer
        self.serverName = serverName
        self.transport = transport
        self.observer = observer
        self.runtime = runtime
        #: The body as it came before a sink was attached; the sink once
        #: attached (L{BodySink}).
        self._body: list[bytes] | BodySink | None = [] if bodyLength != 0 else None
        self._bodyRead = 0
        self._sinkPaused = False
        #: Whether the whole body is in (always, without one).
        self.bodyComplete = bodyLength == 0
        #: The body limit in bytes (L{None}: none), set by the handler.
        self.bodyLimit: int | None = None
        #: The forwarder's relay in progress, if any.
        self.relay: BodySink | None = None
        #: An HTTP/2 extended CONNECT's C{:protocol} (RFC 8441), else
        #: L{None}.
        self.protocol: bytes | None = None
        #: The host the router routed this request by (normalized, without
        #: a port), or L{None} (none yet, or an HTTP/1.0 request without).
        self.routedHost: str | None = None
        #: The pages of revproxy's own answers for this request's site, by
        #: status (L{revproxy.runtime.SiteRoute.errorPages}).
        self.errorPages: dict[int, bytes] | None = None
        #: Why the tunnel this exchange became ended, else L{None}.
        self.closeReason: str | None = None
        #: The bytes the client sent through that tunnel.
        self.receivedLength: int | None = None
        #: The lowercased names never forwarded: the hop-by-hop ones and
        #: those the request's Connection fields list, when the protocol
        #: read them already (else L{None}).
        self.hopByHop: frozenset[bytes] | None = None
        # The request context.
        self.startedAt = 0.0
        self.clientIP = ""
        self.requestID = ""
        self.siteName = ""
        self.generation = 0
        self.counted = False
        self.logged = False
        self.upstreamURL = ""
        self.upstreamStatus: int | None = None
        self.upstreamSeconds: float | None = None
        self.refusal: int | None = None
        # The response.
        self.code = 200
        self.sentLength = 0
        self.startedWriting = False
        self.finished = False
        self.clientLeft = False

    # -- what the handler reads

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of the field C{name} (lowercase), or L{None}.
        """
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def headerValues(self, name: bytes) -> list[bytes]:
        """
        Every value of the field C{name} (lowercase), in order.
        """
        return [value for key, value in self.headers if key == name]

    def isSecure(self) -> bool:
        return self.secure

    def getClientAddress(self) -> IAddress | None:
        return self.peer

    @property
    def hasBody(self) -> bool:
        """
        Whether the request has a body (maybe an empty chunked one).
        """
        return self.bodyLength != 0

    # -- the request body

    def attach(self, sink: BodySink) -> None:
        """
        Send the body to C{sink} from now on: what came already at once,
        then as it comes, then C{bodyDone}.  Asks the client for the body
        (C{100 Continue}) if it waits for that, unless the sink paused the
        body while taking what came already.
        """
        waiting = self._body
        self._body = sink
        if isinstance(waiting, list):
            for data in waiting:
                sink.bodyReceived(data)
        if self.bodyComplete:
            if waiting is not None:
                sink.bodyDone()
            return
        if not self.clientLeft and self.refusal is None and not self._sinkPaused:
            self.channel.resumeBody(self)

    def limitBody(self, limit: int | None) -> bool:
        """
        Refuse a body larger than C{limit} bytes (L{None}: no limit): at
        once with 413 when its Content-Length, or what came of it already,
        is larger, else as soon as it passes the limit.

        @return: whether the exchange goes on (C{False}: refused).
        """
        self.bodyLimit = limit
        if limit is None:
            return True
        length = self.bodyLength
        if (length is not None and length > limit) or self._bodyRead > limit:
            self.tooLarge()
            return False
        return True

    def bodyReceived(self, data: bytes) -> bool:
        """
        The channel read C{data} of the body.

        @return: whether the exchange goes on (C{False}: the body passed
            the limit and the exchange was refused or aborted).
        """
        read = self._bodyRead + len(data)
        self._bodyRead = read
        limit = self.bodyLimit
        if limit is not None and read > limit:
            self.tooLarge()
            return False
        body = self._body
        if isinstance(body, list):
            body.append(data)
        elif body is not None:
            body.bodyReceived(data)
        return True

    @property
    def bodyBuffered(self) -> int:
        """
        How many body bytes wait for a sink.
        """
        body = self._body
        return sum(map(len, body)) if isinstance(body, list) else 0

    def bodyEnded(self) -> None:
        """
        The channel read the end of the body.
        """
        if self.bodyComplete:
            return
        self.bodyComplete = True
        body = self._body
        if body is not None and not isinstance(body, list):
            body.bodyDone()

    def tooLarge(self) -> None:
        """
        The body passed C{bodyLimit}: 413, or an abort once the response
        began.
        """
        limit = self.bodyLimit
        self.channel.refuse(self, 413, f"the request body is larger than {limit} bytes")

    def pauseBody(self) -> None:
        self._sinkPaused = True
        if not self.bodyComplete and not self.clientLeft:
            self.channel.pauseBody(self)

    def resumeBody(self) -> None:
        self._sinkPaused = False
        if not self.bodyComplete and not self.clientLeft:
            self.channel.resumeBody(self)

    # -- the response

    def respond(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        Send the response head: C{headers} are end-to-end fields only.
        """
        if self.clientLeft or self.finished or self.startedWriting:
            return
        self.code = code
        self.startedWriting = True
        self.channel.sendHead(self, code, reason, headers)

    def startTunnel(
        self,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        sink: BodySink,
    ) -> None:
        """
        The request became a tunnel: answer C{code} with C{headers} at once,
        then every byte the client sends is body for C{sink} (no limit, no
        end until the client's side ends), and what is written goes out as
        it is until L{finish} ends the connection (HTTP/1.1) or the stream
        (HTTP/2).
        """
        if self.clientLeft or self.finished or self.startedWriting:
            return
        self.code = code
        self.startedWriting = True
        self.bodyLimit = None
        self.bodyLength = None
        if self.bodyComplete:
            self.bodyComplete = False
            self._body = []
        self.channel.startTunnel(self, code, reason, headers)
        self.attach(sink)

    def write(self, data: bytes) -> None:
        if self.clientLeft or self.finished or not data:
            return
        self.sentLength += len(data)
        self.channel.sendData(self, data)

    def finish(self) -> None:
        """
        The response is whole: send its end and log the request.
        """
        if self.clientLeft or self.finished:
            return
        self.finished = True
        # Logged first: ending the response may start the next pipelined
        # request, whose line must come after this one's.
        observer = self.observer
        if observer is not None:
            observer.finished(self)
        self.channel.sendEnd(self)

    def abort(self) -> None:
        """
        Cut the response short (the client sees it is incomplete).
        """
        if self.clientLeft or self.finished:
            return
        self.channel.abortExchange(self)

    def registerProducer(self, producer: IPushProducer) -> None:
        if not self.clientLeft and not self.finished:
            self.channel.responseProducer(self, producer)

    def unregisterProducer(self) -> None:
        self.channel.responseProducer(self, None)

    # -- the channel's side

    def clientGone(self) -> None:
        """
        The client's connection or stream ended before the exchange did (or
        a refusal or deadline ended it): tell the sink, and log a routed
        request whose answer did not end as 499.
        """
        if self.clientLeft:
            return
        self.clientLeft = True
        body = self._body
        self._body = None
        relay = self.relay
        self.relay = None
        if body is not None and not isinstance(body, list):
            body.clientGone()
        elif relay is not None:
            relay.clientGone()
        if self.counted and not self.finished:
            observer = self.observer
            if observer is not None:
                observer.finished(
                    self,
                    self.refusal
                    if self.refusal is not None
                    else None
                    if self.startedWriting
                    else CLIENT_CLOSED,
                )
