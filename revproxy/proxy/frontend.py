# -*- test-case-name: tests.test_http1 -*-
"""
The factory behind every listener (L{FrontEnd}), which builds one
L{revproxy.proxy.http1.HTTP1Connection} per client connection; that
connection becomes an HTTP/2 one (L{revproxy.proxy.http2.HTTP2Connection})
when TLS's ALPN chose C{h2}.  What the protocols read of it is
L{revproxy.proxy.exchange.FrontEndView}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from revproxy.proxy.http1 import HTTP1Connection
from revproxy.proxy.limits import DEFAULT_LIMITS, ConnectionLimits

if TYPE_CHECKING:
    from revproxy.observer import RequestObserver
    from revproxy.proxy.exchange import Exchange, RequestHandler
    from revproxy.runtime import Runtime

_log = Logger()


def _ignoreRefusal(code: int, exchange: Exchange | None, secure: bool) -> None:
    """
    Nobody is told of refusals.
    """


class FrontEnd(Factory):
    """
    The factory behind every listener: one client-side protocol per
    connection, all sharing the handler, the limits and the observer.

    @ivar handler: Given every request whose head is whole.
    @ivar observer: Told of every finished request, if set.
    @ivar refused: Told once of every early refusal (400, 408, 413, 414,
        431, ...) of a request that was never handled, with the exchange
        when its request line was read (else L{None}) and whether the
        connection is over TLS.
    """

    noisy = False

    def __init__(
        self,
        handler: RequestHandler,
        clock: IReactorTime,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        observer: RequestObserver | None = None,
        refused: Callable[[int, Exchange | None, bool], None] | None = None,
        snapshot: Callable[[], Runtime] | None = None,
    ) -> None:
        """
        @param snapshot: Takes the runtime snapshot a request is answered
            by (L{revproxy.routing.Router.snapshot}), called when the
            request's head is read; L{None}: the handler takes it when it
            handles the request.
        """
        self.handler = handler
        self.clock = clock
        self.limits = limits
        self.observer = observer
        self.refused = refused if refused is not None else _ignoreRefusal
        self._snapshot = snapshot

    def snapshot(self) -> Runtime | None:
        """
        See L{revproxy.proxy.exchange.FrontEndView.snapshot}.
        """
        take = self._snapshot
        return None if take is None else take()

    def tellRefused(self, code: int, exchange: Exchange | None, secure: bool) -> None:
        """
        Tell L{refused} of a refusal; its failure must not stop the refusal.
        """
        try:
            self.refused(code, exchange, secure)
        except Exception:
            _log.failure("refused({code}) failed", code=code)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = HTTP1Connection(self)
        protocol.factory = self
        return protocol

    def logPrefix(self) -> str:
        # Twisted logs "<prefix> starting on <port>" for each listener; the
        # name twisted.web's site gave it stays, since operators' scripts
        # (and the integration tests) wait for that line.
        return "ProxySite"
