# -*- test-case-name: tests.test_forwarder -*-
"""
The twisted.web request and site classes of the proxy.

L{ProxyRequest} skips what a proxy does not need from
L{twisted.web.server.Request.process} (path splitting into C{postpath}, the
resource traversal, the default Server header) and tells the exchange in
progress when the client leaves, without a Deferred per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from revproxy.proxy.client import Stream

if TYPE_CHECKING:
    from revproxy.proxy.forwarder import _Exchange

_log = Logger()


class ProxyRequest(server.Request):
    """
    A request whose root resource renders it directly.

    @ivar exchange: the upstream exchange in progress, if any.
    """

    exchange: _Exchange | None = None
    defaultContentType = None

    def process(self) -> None:
        site: ProxySite = self.channel.site  # type: ignore[attr-defined]
        self.site = site
        self.prepath = []
        self.postpath = []
        try:
            site.resource.render(self)
        except Exception:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> Any:
        _log.failure("Unhandled error while proxying {uri}", reason, uri=self.uri)
        if self._disconnected or self.finished:
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


class ProxySite(server.Site):
    """
    The one L{server.Site} behind every listener.
    """

    requestFactory = ProxyRequest
    noisy = False

    def __init__(self, resource: IResource, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)

    def log(self, request: http.Request) -> None:
        """
        Twisted's own per-request log line is off; revproxy's access log is
        its own writer.
        """
