# -*- test-case-name: tests.test_observer -*-
"""
What happens after a request ends: its access-log line and its metrics.

L{RequestObserver} is the one place the request path reports to.  The root
resource tells it when a routed request starts (L{started}); the site tells
it when any request ends (L{finished}), including one whose client left
before its answer (logged as C{499}, as nginx does); the connection layer
tells it about requests refused before they were whole (L{refused}: 400,
408, 413, 414, 431).  It builds the L{AccessRecord} once and hands it to
the access log, and counts the request in the metrics.

The access log follows the C{[logging]} table of each new runtime
(L{reconfigure}): a changed path or format closes the old file, after
writing what it buffered, and opens the new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from revproxy.accesslog import AccessLog, AccessRecord

if TYPE_CHECKING:
    from revproxy.config import LoggingConfig
    from revproxy.metrics import Metrics
    from revproxy.proxy.exchange import Exchange

_log = Logger()

_PROTOCOLS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0", b"HTTP/2": "HTTP/2.0"}


def tlsVersion(request: Exchange) -> str | None:
    """
    The TLS version of the connection C{request} came over (C{"TLSv1.3"}),
    or L{None} over plain HTTP.

    The exchange's transport is the connection's (over TLS, protocol
    wrappers above the TLS protocol, which hand on what they lack); its
    handle is the OpenSSL connection.
    """
    if not request.secure:
        return None
    transport: Any = request.transport
    for _ in range(3):
        if transport is None:
            return None
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is not None:
            try:
                handle = getHandle()
            except Exception:
                return None
            version = getattr(handle, "get_protocol_version_name", None)
            if version is not None:
                try:
                    return str(version())
                except Exception:
                    return None
            return None
        transport = getattr(transport, "transport", None)
    return None


def _text(value: object) -> str:
    """
    A header or request-line value as text, each byte one character (the
    access log escapes what is not printable); C{""} for anything but
    bytes (twisted.web's C{"(no method yet)"} placeholders of a request
    refused before its request line was read).
    """
    return value.decode("latin-1") if isinstance(value, bytes) else ""


def _header(request: Exchange, name: bytes) -> str:
    """
    The first value of header C{name} of C{request}, or C{""}.
    """
    value = request.header(name)
    return _text(value) if value is not None else ""


class RequestObserver:
    """
    Access-log lines and metrics for finished requests.

    @ivar accessLog: The access log in use (replaced by L{reconfigure}).
    @ivar metrics: The metrics, or L{None} when not kept.
    """

    def __init__(
        self,
        clock: IReactorTime,
        accessLog: AccessLog,
        metrics: Metrics | None = None,
        generation: int = 0,
    ) -> None:
        self._clock = clock
        self.accessLog = accessLog
        self.metrics = metrics
        #: The generation logged for a request refused before routing.
        self.generation = generation

    # -- the request path

    def started(self, request: Exchange, site: str) -> None:
        """
        C{request} was routed to C{site} and will be answered there.
        """
        request.siteName = site
        request.counted = True
        metrics = self.metrics
        if metrics is not None:
            metrics.requestStarted(site)

    def finished(self, request: Exchange, status: int | None = None) -> None:
        """
        C{request} ended: with its response, or with C{status} when the
        response did not end (L{revproxy.proxy.exchange.CLIENT_CLOSED}).
        Each request is logged once.
        """
        if request.logged:
            return
        request.logged = True
        code = request.code if status is None else status
        now = self._clock.seconds()
        startedAt = request.startedAt or now
        seconds = max(0.0, now - startedAt)
        metrics = self.metrics
        if metrics is not None:
            if request.counted:
                metrics.requestFinished(
                    request.siteName, code, seconds, request.upstreamSeconds
                )
            else:
                metrics.refused(request.siteName, code, seconds)
        if self.accessLog.enabled:
            self.accessLog.log(self.record(request, code, startedAt, seconds))

    def refused(self, code: int, request: Exchange | None, secure: bool) -> None:
        """
        The connection layer refused a request before it was whole.
        """
        metrics = self.metrics
        if request is None:
            if metrics is not None:
                metrics.refused("", code)
            return
        if not request.startedAt:
            request.startedAt = self._clock.seconds()
        if not request.generation:
            request.generation = self.generation
        if not request.clientIP:
            peer = request.peer
            request.clientIP = getattr(peer, "host", "") or ""
        self.finished(request, code)

    def record(
        self, request: Exchange, status: int, startedAt: float, seconds: float
    ) -> AccessRecord:
        """
        The access-log record of C{request}.
        """
        uri = request.uri if isinstance(request.uri, bytes) else b""
        path, _, query = uri.partition(b"?")
        peer = request.peer
        peerIP = getattr(peer, "host", "") or ""
        upstreamSeconds = request.upstreamSeconds
        proto = request.clientproto if isinstance(request.clientproto, bytes) else b""
        return AccessRecord(
            ts=startedAt,
            client_ip=request.clientIP or peerIP,
            peer=peerIP,
            method=_text(request.method),
            host=_header(request, b"host"),
            path=_text(path),
            query=_text(query),
            protocol=_PROTOCOLS.get(proto) or _text(proto),
            status=status,
            bytes_sent=request.sentLength,
            duration_ms=round(seconds * 1000, 3),
            site=request.siteName,
            upstream=request.upstreamURL,
            upstream_status=request.upstreamStatus,
            upstream_ms=(
                None if upstreamSeconds is None else round(upstreamSeconds * 1000, 3)
            ),
            request_id=request.requestID,
            user_agent=_header(request, b"user-agent"),
            referer=_header(request, b"referer"),
            tls_version=tlsVersion(request),
            generation=request.generation or self.generation,
            bytes_received=request.receivedLength,
            close_reason=request.closeReason,
        )

    # -- operations

    def reconfigure(self, logging: LoggingConfig) -> None:
        """
        Follow a new C{[logging]} table: a changed path or format replaces
        the access log (the old one writes what it holds and closes).
        """
        old = self.accessLog
        if old.path == logging.access_log and old.format == logging.access_log_format:
            return
        new = AccessLog(self._clock, logging.access_log, logging.access_log_format)
        old.stop()
        self.accessLog = new
        new.start()
        _log.info(
            "access log: now {path} ({logFormat})",
            path=logging.access_log or "off",
            logFormat=logging.access_log_format,
        )

    def reopen(self) -> None:
        """
        Reopen the access log file (after logrotate renamed it).
        """
        self.accessLog.reopen()
