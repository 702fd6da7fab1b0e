# -*- test-case-name: tests.test_http1 -*-
"""
What the client-side protocols share: their limits (L{ConnectionLimits}),
the early refusals' words (L{REASONS}, L{refusalBody}, L{refusalHead}),
the cached C{Date} (L{DateCache}) and the factory behind every listener
(L{FrontEnd}), which builds one L{revproxy.proxy.http1.HTTP1Connection} per
client connection; that connection becomes an HTTP/2 one
(L{revproxy.proxy.http2.HTTP2Connection}) when TLS's ALPN chose C{h2}.
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from revproxy.config import ServerConfig

if TYPE_CHECKING:
    from revproxy.observer import RequestObserver
    from revproxy.proxy.exchange import Exchange, IRequestHandler

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
    send_timeout_secs: float = _SERVER.send_timeout_secs
    max_requests_per_connection: int = _SERVER.max_requests_per_connection
    lingering_close_secs: float = _SERVER.lingering_close_secs

    @classmethod
    def fromServer(cls, server: ServerConfig) -> ConnectionLimits:
        """
        The limits a C{[server]} table sets.
        """
        return cls(
            **{field.name: getattr(server, field.name) for field in attrs.fields(cls)}
        )


#: The limits of a front end built without any: C{[server]}'s defaults.
DEFAULT_LIMITS = ConnectionLimits()

#: The reason phrases of the answers the client side makes itself (RFC
#: 9110 section 15).
REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}


def refusalBody(code: int, detail: str) -> bytes:
    """
    The one-line text body of an early refusal: C{"431 Request Header
    Fields Too Large: ..."}.
    """
    return b"%d %s: %s\n" % (code, REASONS[code], detail.encode("utf-8"))


def refusalHeaders(date: bytes, length: int) -> list[tuple[bytes, bytes]]:
    """
    The fields of a short text answer of revproxy's own (an early refusal,
    a 502, a redirect...) whose body is C{length} bytes.
    """
    return [
        (b"Date", date),
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % length),
        (b"Cache-Control", b"no-store"),
    ]


class DateCache:
    """
    The HTTP C{Date} for the current second, formatted once per second.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(self._clock.seconds())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode("ascii")
        return self._value


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
        handler: IRequestHandler,
        clock: IReactorTime,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        observer: RequestObserver | None = None,
        refused: Callable[[int, Exchange | None, bool], None] | None = None,
    ) -> None:
        self.handler = handler
        self.clock = clock
        self.limits = limits
        self.observer = observer
        self.refused = refused if refused is not None else _ignoreRefusal
        self.date = DateCache(clock)

    def tellRefused(self, code: int, exchange: Exchange | None, secure: bool) -> None:
        """
        Tell L{refused} of a refusal; its failure must not stop the refusal.
        """
        try:
            self.refused(code, exchange, secure)
        except Exception:
            _log.failure("refused({code}) failed", code=code)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        from revproxy.proxy.http1 import HTTP1Connection

        protocol = HTTP1Connection(self)
        protocol.factory = self
        return protocol

    def logPrefix(self) -> str:
        # Twisted logs "<prefix> starting on <port>" for each listener; the
        # name twisted.web's site gave it stays, since operators' scripts
        # (and the integration tests) wait for that line.
        return "ProxySite"
