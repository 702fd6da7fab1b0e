# -*- test-case-name: tests.test_forwarder -*-
"""
The twisted.web request and site classes of the proxy.

L{ProxyRequest} skips what a proxy does not need from
L{twisted.web.server.Request.process} (path splitting into C{postpath}, the
resource traversal, the default Server header) and tells the exchange in
progress when the client leaves, without a Deferred per request.
L{ProxySite} serves each connection with L{revproxy.proxy.channel}'s
channel (limits, deadlines, lingering close) and holds what it asks of the
site: the limits, the body limit of a request, and who to tell of a
refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from revproxy.proxy.channel import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    ProxyChannel,
    bodyTooLarge,
    isStream,
    limitStreamBody,
    proxyChannelProtocol,
    streamConnection,
)
from revproxy.proxy.client import Stream

if TYPE_CHECKING:
    from revproxy.observer import RequestObserver
    from revproxy.proxy.forwarder import _Exchange

#: The status logged for a request whose client left before its answer
#: ended (nginx's "client closed request").
CLIENT_CLOSED = 499

_log = Logger()


class ProxyRequest(server.Request):
    """
    A request whose root resource renders it directly.

    @ivar exchange: the upstream exchange in progress, if any.
    """

    exchange: _Exchange | None = None
    defaultContentType = None

    # What the access log, the metrics and the upstream learn about the
    # request, filled in once by the root resource and the forwarder.
    #: When the root resource began with it (the clock's seconds).
    startedAt = 0.0
    #: The client's address: the peer or, behind a trusted proxy, the
    #: right-most untrusted X-Forwarded-For hop.
    clientIP = ""
    #: The X-Request-ID sent upstream and back ("" until routed): the
    #: incoming one from a trusted proxy, if sane, else a new one.
    requestID = ""
    #: The name of the site it was routed to ("" when none).
    siteName = ""
    #: The config generation that served it.
    generation = 0
    #: Whether it was routed (or answered by the root resource itself) and
    #: counted as in flight, and whether its access-log line is written.
    counted = False
    logged = False
    #: The upstream it went to last, its status and how long its response
    #: head took, when any.
    upstreamURL = ""
    upstreamStatus: int | None = None
    upstreamSeconds: float | None = None

    #: The status of the early refusal that answered this request, if any
    #: (L{revproxy.proxy.channel}); such a request is never processed.
    refusal: int | None = None
    #: Body bytes still allowed, when the body is counted as it comes (no
    #: Content-Length to check up front), else L{None}.
    _bodyAllowance: int | None = None
    _bodyLimit = 0

    def process(self) -> None:
        site: ProxySite = self.channel.site  # type: ignore[attr-defined]
        self.site = site
        self.prepath = []
        self.postpath = []
        try:
            site.resource.render(self)
        except Exception:
            self.processingFailed(Failure())

    @property
    def clientLeft(self) -> bool:
        """
        Whether the client's connection (or HTTP/2 stream) is gone: Twisted's
        private C{Request._disconnected}, read here only.
        """
        return bool(self._disconnected)

    def processingFailed(self, reason: Failure) -> Any:
        _log.failure("Unhandled error while proxying {uri}", reason, uri=self.uri)
        if self.clientLeft or self.finished:
            return None
        body = b"500 Internal Server Error\n"
        if self.startedWriting:
            self.abort()
            return None
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(
            b"content-type", [b"text/plain; charset=utf-8"]
        )
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()
        return None

    def tlsServerName(self) -> str | None:
        """
        The SNI name of the request's TLS connection, normalized
        (L{revproxy.routing.normalizeServerName}), or L{None} when the
        client sent none or the connection is not over TLS.

        The TLS layer (L{revproxy.tls.HandshakeDeadline}) records it once
        per connection, as its C{serverName}; the channel's transport is a
        protocol wrapper above that layer, which hands on what it lacks.
        """
        channel: Any = self.channel
        # An HTTP/2 stream has no transport; its connection has.
        connection = streamConnection(channel) if isStream(channel) else channel
        transport = getattr(connection, "transport", None)
        if transport is None:
            return None
        name: str | None = getattr(transport, "serverName", None)
        return name

    def countBody(self, limit: int) -> None:
        """
        Count the body as it comes and refuse it once it passes C{limit}
        bytes.
        """
        self._bodyLimit = limit
        self._bodyAllowance = limit

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if (
            length != 0
            and type(channel) is not ProxyChannel
            and hasattr(channel, "streamID")
        ):
            # HTTP/2: the HTTP/1.x channel checks its heads itself.
            limitStreamBody(self, length)
            if self.refusal is not None:
                self.content = None
                return
        server.Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        allowance = self._bodyAllowance
        if allowance is not None:
            allowance -= len(data)
            self._bodyAllowance = allowance
            if allowance < 0:
                bodyTooLarge(self, self._bodyLimit)
                return
        self.content.write(data)  # type: ignore[union-attr]  # set by gotLength

    def abort(self) -> None:
        """
        Cut the response short so that the client sees it is incomplete:
        reset the stream over HTTP/2, abort the connection over HTTP/1.x.
        """
        channel: Any = self.channel
        if channel is None:
            return
        if hasattr(channel, "streamID"):
            # An H2Stream: RST_STREAM, the connection's other streams go on.
            channel.abortConnection()
            return
        transport = channel.transport
        if transport is not None:
            cast(Stream, transport).abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.clientGone()
        if self.counted and not self.finished:
            # Routed, but the client left before its answer ended: logged
            # as nginx's 499 "client closed request".
            observer = getattr(self.site, "observer", None)
            if observer is not None:
                observer.finished(self, None if self.startedWriting else CLIENT_CLOSED)


class ProxySite(server.Site):
    """
    The one L{server.Site} behind every listener.
    """

    requestFactory = ProxyRequest
    noisy = False
    protocol = proxyChannelProtocol

    #: The body limit of a request, in bytes (L{None}: no limit); asked
    #: when its head ends, so it may depend on the site its C{Host} goes to.
    bodyLimit: Callable[[ProxyRequest], int | None]

    def __init__(
        self,
        resource: IResource,
        reactor: Any = None,
        limits: ConnectionLimits = DEFAULT_LIMITS,
    ) -> None:
        """
        @param limits: The limits and deadlines of client connections.
        """
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.limits = limits
        # Twisted's idle timeout, which only HTTP/2 connections still use
        # (HTTP/1.x ones have the channel's deadlines): the keep-alive one.
        self.timeOut = limits.keepalive_timeout_secs
        self.bodyLimit = _noBodyLimit

    def refused(self, code: int, request: ProxyRequest | None, secure: bool) -> None:
        """
        Called once for every early refusal (400, 408, 413, 414, 431) of a
        request that was never processed.

        @param request: The request Twisted made for the refused head, its
            C{method}, C{uri} and C{clientproto} filled in when the request
            line was read, or L{None} when refused before that.
        @param secure: Whether the connection is over TLS.
        """

    #: Told of every finished request (access log and metrics), if set.
    observer: RequestObserver | None = None

    def log(self, request: http.Request) -> None:
        """
        Twisted's own per-request log line is off: the observer writes
        revproxy's access log and counts the request.
        """
        observer = self.observer
        if observer is not None:
            observer.finished(request)  # type: ignore[arg-type]


def _noBodyLimit(request: ProxyRequest) -> int | None:
    """
    No body limit: L{ProxySite.bodyLimit} until one is set.
    """
    return None
