# -*- test-case-name: tests.test_forwarder -*-
"""
The forwarder: one L{_Exchange} per client request, relaying it to a site's
upstream over a pooled connection and streaming the answer back.

Policy, in the words of the issues it implements:
  - round robin over a site's upstreams; one that refuses a connection is
    skipped for a short back-off;
  - no request is delivered twice unless its method is idempotent (RFC 9110
    section 9.2.2: a proxy must not retry the others automatically).  An
    idempotent request that fails on a reused connection before any
    response byte is retried once on a fresh connection (the upstream
    closed an idle keep-alive connection as we wrote: the classic sporadic
    502).  Any other request is written to a reused connection only after
    the connection is verified alive (L{UpstreamConnection.verified}: its
    socket shows no FIN, reset or stray byte), and is never sent again once
    written: it gets a 502 if that connection then fails;
  - the next upstream is tried only when nothing reached the first, or for
    idempotent methods before a response began;
  - refused or reset -> 502, connect or response timeout -> 504, each with a
    short body; an upstream that dies mid-body aborts the client connection,
    so a truncated body is never passed off as whole;
  - waiting in line for a connection (the upstream has its most) is bounded
    by the site's C{queue_timeout_secs} and the pool's line length: 503, and
    never a mark against the upstream (HAProxy's C{timeout queue}); a
    connect that fails for a local reason (out of descriptors, buffers or
    memory) is a 503 too, logged at most once a second, and no mark either;
  - the response streams with backpressure: the upstream transport is the
    client request's producer.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from email.utils import formatdate
from typing import IO, TYPE_CHECKING

from twisted.internet import error as ierror
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from revproxy.accesslog import logText
from revproxy.proxy.client import (
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
)
from revproxy.proxy.headers import (
    clientResponseHeaders,
    isTrusted,
    upstreamRequestHeaders,
)
from revproxy.proxy.pool import (
    ConnectionPool,
    PoolKey,
    QueueFull,
    UpstreamSelector,
    localConnectError,
)
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, UpstreamTLS
from revproxy.throttle import LogThrottle

if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network

    from revproxy.config import SiteConfig, Upstream
    from revproxy.metrics import Metrics
    from revproxy.proxy.request import ProxyRequest

_log = Logger()

#: RFC 9110 section 9.2.2: the methods a proxy may send again on its own.
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


_INLINE_BODY = 64 * 1024
_BODY_CHUNK = 64 * 1024


class SiteRoute:
    """
    A site as the request path sees it: its config and its upstream selector.
    Satisfies L{revproxy.routing.HasHosts}.
    """

    __slots__ = ("config", "fallbackHost", "hsts", "keys", "selector")

    def __init__(
        self,
        config: SiteConfig,
        selector: UpstreamSelector,
        upstreamTLS: UpstreamTLS = SYSTEM_TRUST,
    ) -> None:
        """
        @param upstreamTLS: How the site's https:// upstreams are verified.
        """
        self.config = config
        self.selector = selector
        self.keys: dict[object, PoolKey] = {
            u: (u.scheme, u.host, u.port, upstreamTLS if u.scheme == "https" else None)
            for u in config.upstreams
        }
        #: The Strict-Transport-Security value for HTTPS responses, if any.
        self.hsts = (
            b"max-age=%d" % (config.hsts_max_age_secs,)
            if config.hsts_max_age_secs
            else None
        )
        exact = [h for h in config.hosts if not h.startswith("*.")]
        if exact:
            fallback = exact[0]
        else:
            first = config.upstreams[0]
            host = f"[{first.host}]" if ":" in first.host else first.host
            default = 443 if first.scheme == "https" else 80
            fallback = host if first.port == default else f"{host}:{first.port}"
        #: The Host sent upstream for a request that came without one.
        self.fallbackHost = fallback.encode("ascii")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.config.hosts

    @property
    def default(self) -> bool:
        return self.config.default


class _DateCache:
    """
    The HTTP Date for the current second, formatted once per second.
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


class Forwarder:
    """
    Starts exchanges: the part of the proxy shared by all requests (pool,
    clock, trusted proxies).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        clock: IReactorTime,
        trustedProxies: tuple[IPv4Network | IPv6Network, ...] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """
        @param metrics: Where upstream errors are counted, if anywhere.
        """
        self.pool = pool
        self.clock = clock
        self.trustedProxies = trustedProxies
        self.metrics = metrics
        self.date = _DateCache(clock)
        #: Local connect errors are logged once a second at most.
        self.localErrors = LogThrottle(clock, 1.0)

    def forward(self, request: ProxyRequest, route: SiteRoute, target: bytes) -> None:
        """
        Relay C{request} to one of C{route}'s upstreams.

        @param target: the request-target to send upstream (origin-form).
        """
        _Exchange(self, request, route, target).start()


def simpleResponse(request: ProxyRequest, code: int, message: str) -> None:
    """
    Answer C{request} with C{code} and a one-line text body, unless the client
    already left.
    """
    if request.clientLeft or request.finished:
        return
    body = (message + "\n").encode("utf-8")
    request.setResponseCode(code)
    headers = request.responseHeaders
    site = getattr(request.channel, "site", None)
    clock = getattr(site, "reactor", None)
    if clock is not None:
        headers.setRawHeaders(
            b"date", [formatdate(clock.seconds(), usegmt=True).encode()]
        )
    headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    if request.requestID:
        headers.setRawHeaders(b"x-request-id", [request.requestID.encode("ascii")])
    request.write(body)
    request.finish()


class _Exchange:
    """
    One client request on its way to an upstream and back.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        request: ProxyRequest,
        route: SiteRoute,
        target: bytes,
    ) -> None:
        self.forwarder = forwarder
        self.request = request
        self.route = route
        self.target = target
        self.config = route.config
        self.method = request.method
        self.tried: list[object] = []
        self.upstream: Upstream | None = None
        self.connection: UpstreamConnection | None = None
        self.withdraw: Callable[[], None] | None = None
        self.timer: IDelayedCall | None = None
        self.started = False
        self.done = False
        self.retriedFresh = False
        self.lastError: str = ""
        self.timedOut = False
        self.body: IO[bytes] | None = None
        self.bodyLength: int | None = None
        self.head = b""
        self.sender: _BodySender | None = None
        self.startedAt = 0.0
        self.waiting = False
        self.attempt = 0

    # -- start

    def start(self) -> None:
        request = self.request
        request.exchange = self
        self.startedAt = self.forwarder.clock.seconds()
        rawHeaders = [
            (name, value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        content = request.content
        hasBody = request.requestHeaders.hasHeader(
            b"content-length"
        ) or request.requestHeaders.hasHeader(b"transfer-encoding")
        if hasBody and content is not None:
            content.seek(0, 2)
            self.bodyLength = content.tell()
            content.seek(0, 0)
            self.body = content
        peer = request.getClientAddress()
        peerIP: str = getattr(peer, "host", "") or ""
        trusted = self.forwarder.trustedProxies
        headers = upstreamRequestHeaders(
            rawHeaders,
            clientIP=peerIP,
            peerTrusted=bool(trusted) and isTrusted(peerIP, trusted),
            scheme=b"https" if request.isSecure() else b"http",
            host=request.requestHeaders.getRawHeaders(b"host", [None])[0],
            bodyLength=self.bodyLength,
            requestID=request.requestID.encode("ascii") if request.requestID else None,
        )
        if not request.requestHeaders.hasHeader(b"host"):
            # An HTTP/1.0 request without Host (routed to the default site):
            # HTTP/1.1 requires one upstream, so name the site or upstream.
            headers.insert(0, (b"Host", self.route.fallbackHost))
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        self._tryNext()

    def _tryNext(self, fresh: bool = False, same: bool = False) -> None:
        """
        Ask the pool for a connection to the next upstream (or the same one,
        on a fresh connection).
        """
        if not same:
            selector = self.route.selector
            if not self.tried and not selector.available():
                self._unavailable()
                return
            upstream = selector.pick(self.tried)
            if upstream is None:
                self._fail()
                return
            self.upstream = upstream  # type: ignore[assignment]
            self.tried.append(upstream)
        upstream = self.upstream
        assert upstream is not None
        timeout = self.config.connect_timeout_secs
        self.waiting = True
        self.attempt += 1
        attempt = self.attempt
        pending = self.forwarder.pool.acquire(
            self.route.keys[upstream],
            self,
            timeout,
            fresh=fresh,
            verify=self.method not in IDEMPOTENT,
        )
        if self.waiting and self.attempt == attempt:
            # Not served from the idle pool at once: a connection is being
            # opened, or we wait in line for one.
            self.withdraw = pending
            if pending.queued:
                self._arm(self.config.queue_timeout_secs, self._queueTimedOut)
            else:
                self._arm(timeout, self._connectTimedOut)

    def _arm(self, seconds: float, f: Callable[[], None]) -> None:
        timer = self.timer
        if timer is not None and timer.active():
            timer.cancel()
        self.timer = self.forwarder.clock.callLater(seconds, f)

    def _disarm(self) -> None:
        timer = self.timer
        self.timer = None
        if timer is not None and timer.active():
            timer.cancel()

    # -- IConnectionWaiter

    def connectionReady(self, connection: UpstreamConnection) -> None:
        self.waiting = False
        self.withdraw = None
        if self.done:
            # Raced with the client leaving: give the connection back.
            connection.pool.release(connection)
            return
        self.connection = connection
        self._arm(self.config.response_timeout_secs, self._responseTimedOut)
        body = self.body
        length = self.bodyLength
        if body is None or not length:
            connection.send(self, self.head, self.method == b"HEAD")
        elif length <= _INLINE_BODY:
            body.seek(0, 0)
            connection.send(self, self.head + body.read(), self.method == b"HEAD")
        else:
            connection.send(self, self.head, self.method == b"HEAD")
            connection.bodyPending = True
            body.seek(0, 0)
            self.sender = _BodySender(self, connection, body)

    def connectionOpening(self) -> None:
        """
        Our turn in line came: the connect timeout starts now.
        """
        if not self.done:
            self._arm(self.config.connect_timeout_secs, self._connectTimedOut)

    def connectionFailed(self, reason: Failure) -> None:
        self.waiting = False
        self.withdraw = None
        if self.done:
            return
        upstream = self.upstream
        if reason.check(QueueFull):
            self._queueRefused("queue_full", reason.getErrorMessage())
            return
        local = localConnectError(reason)
        if local is not None:
            self._localError(local, reason.getErrorMessage())
            return
        if reason.check(ierror.TimeoutError):
            self.timedOut = True
            self.lastError = "connect timeout"
        else:
            self.timedOut = False
            self.lastError = reason.getErrorMessage()
        if upstream is not None:
            self.route.selector.markDown(upstream)
        self._count("connect_timeout" if self.timedOut else "connect")
        self._log(
            LogLevel.warn,
            "site {site}: upstream {upstream} unreachable: {error} "
            "(request_id {request_id})",
            error=self.lastError,
        )
        # Nothing reached this upstream: any method may go to the next one.
        self._tryNext()

    def _queueTimedOut(self) -> None:
        self.timer = None
        self.waiting = False
        withdraw = self.withdraw
        self.withdraw = None
        if withdraw is not None:
            withdraw()
        self._queueRefused(
            "queue_timeout",
            f"no free connection within {self.config.queue_timeout_secs:g} s",
        )

    def _connectTimedOut(self) -> None:
        self.timer = None
        withdraw = self.withdraw
        self.withdraw = None
        if withdraw is not None:
            withdraw()
        self.connectionFailed(Failure(ierror.TimeoutError("connect timeout")))

    # -- IResponseSink

    def responseStarted(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.started = True
        request = self.request
        upstream = self.upstream
        if upstream is not None:
            self.route.selector.markUp(upstream)
            request.upstreamURL = upstream.url
        request.upstreamStatus = code
        request.upstreamSeconds = self.forwarder.clock.seconds() - self.startedAt
        timer = self.timer
        if timer is not None and timer.active():
            timer.reset(self.config.response_timeout_secs)
        if request.clientLeft:
            return
        request.setResponseCode(code, reason or None)
        out = Headers()
        hasDate = False
        noBody = code == 204 or code == 304
        for name, value in clientResponseHeaders(headers):
            if not hasDate and name.lower() == b"date":
                hasDate = True
            elif noBody and name.lower() == b"content-length":
                # RFC 9110 sections 8.6 and 15.3.5: a 204 has no body and no
                # framing; a 304's length would describe another response.
                continue
            out.addRawHeader(name, value)
        if not hasDate:
            out.addRawHeader(b"Date", self.forwarder.date.now())
        if request.requestID and not out.hasHeader(b"x-request-id"):
            out.addRawHeader(b"X-Request-ID", request.requestID.encode("ascii"))
        hsts = self.route.hsts
        if (
            hsts is not None
            and request.isSecure()
            and not out.hasHeader(b"strict-transport-security")
        ):
            out.addRawHeader(b"Strict-Transport-Security", hsts)
        closing = request.responseHeaders.getRawHeaders(b"connection")
        if closing is not None:
            # Twisted's own "Connection: close" for a client that asked for it.
            out.setRawHeaders(b"connection", closing)
        request.responseHeaders = out
        connection = self.connection
        stream = connection.stream if connection is not None else None
        if stream is not None:
            request.registerProducer(stream, True)
            if getattr(request.channel, "_waitingForTransport", False):
                # The client's buffer was already full: registering does not
                # tell the new producer, so pause it ourselves.
                stream.pauseProducing()

    def responseBody(self, data: bytes) -> None:
        timer = self.timer
        if timer is not None:
            timer.reset(self.config.response_timeout_secs)
        self.request.write(data)

    def responseDone(self) -> None:
        self._disarm()
        self.done = True
        request = self.request
        request.exchange = None
        self.connection = None
        self._stopSender()
        if request.clientLeft:
            return
        if request.producer is not None:
            request.unregisterProducer()
        request.finish()

    def responseFailed(self, reason: Exception) -> None:
        self._disarm()
        connection = self.connection
        self.connection = None
        self._stopSender()
        request = self.request
        if self.started:
            self.done = True
            request.exchange = None
            self._count("reset")
            self._log(
                LogLevel.warn,
                "site {site}: upstream {upstream} failed mid-response: {error} "
                "(request_id {request_id})",
                error=str(reason),
            )
            self._abortClient()
            return
        gotBytes = isinstance(reason, UpstreamClosed) and reason.gotBytes
        if isinstance(reason, UpstreamProtocolError):
            gotBytes = True
        self.lastError = str(reason)
        self.timedOut = False
        if (
            isinstance(reason, UpstreamClosed)
            and not gotBytes
            and connection is not None
            and connection.reused
            and not self.retriedFresh
            and self.method in IDEMPOTENT
        ):
            # A pooled connection the upstream had closed: not its error.
            # Only an idempotent request may be sent again: any other one
            # may have been processed (RFC 9110 section 9.2.2).
            self.retriedFresh = True
            self._tryNext(fresh=True, same=True)
            return
        self._count(
            "protocol" if isinstance(reason, UpstreamProtocolError) else "reset"
        )
        if not gotBytes and self.method in IDEMPOTENT:
            self._tryNext(fresh=True)
            return
        self._fail()

    def _responseTimedOut(self) -> None:
        self.timer = None
        connection = self.connection
        self.connection = None
        self._stopSender()
        if connection is not None:
            connection.abandon()
        self._count("response_timeout")
        if self.started:
            self.done = True
            self.request.exchange = None
            self._log(
                LogLevel.warn,
                "site {site}: upstream {upstream} stalled mid-response "
                "(request_id {request_id})",
            )
            self._abortClient()
            return
        self.timedOut = True
        self.lastError = "response timeout"
        self._fail()

    # -- endings

    def _end(self) -> None:
        """
        The exchange ends with an answer of the proxy's own: no timer, no
        longer the request's exchange, the upstream it last tried noted.
        """
        self._disarm()
        self.done = True
        self.request.exchange = None
        upstream = self.upstream
        if upstream is not None:
            self.request.upstreamURL = upstream.url

    def _fail(self) -> None:
        """
        No upstream could answer: 504 if the last try timed out, else 502.
        """
        self._end()
        self._log(
            LogLevel.warn,
            "site {site}: {method} {target} failed: {error} (request_id {request_id})",
            error=self.lastError,
        )
        if self.timedOut:
            simpleResponse(
                self.request,
                504,
                "504 Gateway Timeout: the upstream did not answer in time",
            )
        else:
            simpleResponse(self.request, 502, "502 Bad Gateway: the upstream failed")

    def _unavailable(self) -> None:
        """
        Every upstream of the site is unhealthy: 503, nothing tried.
        """
        self._end()
        self._count("unavailable")
        self._log(
            LogLevel.warn,
            "site {site}: {method} {target}: no healthy upstream "
            "(request_id {request_id})",
        )
        self.request.responseHeaders.setRawHeaders(b"retry-after", [b"5"])
        simpleResponse(
            self.request,
            503,
            "503 Service Unavailable: no healthy upstream for this site",
        )

    def _queueRefused(self, kind: str, error: str) -> None:
        """
        No connection came free in time, or the line for one was full:
        503, counted as C{kind}, never a mark against the upstream.
        """
        self._end()
        self._count(kind)
        self._log(
            LogLevel.warn,
            "site {site}: {method} {target}: upstream {upstream} busy: {error} "
            "(request_id {request_id})",
            error=error,
        )
        simpleResponse(
            self.request,
            503,
            "503 Service Unavailable: the upstream is busy, try again later",
        )

    def _localError(self, number: int, error: str) -> None:
        """
        A connect failed for want of a local resource (C{number} is its
        errno): 503, one log line a second at most, no mark against the
        upstream and no other upstream tried (they would fail alike).
        """
        self._end()
        self._count("local")
        quiet = self.forwarder.localErrors.due()
        if quiet is not None:
            self._log(
                LogLevel.error,
                "site {site}: cannot connect to upstream {upstream}: {error} "
                "({code}, a local limit; {quiet} more since the last line) "
                "(request_id {request_id})",
                error=error,
                code=errno.errorcode.get(number, str(number)),
                quiet=quiet,
            )
        simpleResponse(
            self.request,
            503,
            "503 Service Unavailable: the proxy is out of resources, try again later",
        )

    def _log(self, level: LogLevel, format: str, **fields: object) -> None:
        """
        Log C{format} about this exchange, with the fields every such line
        may name: C{site}, C{upstream}, C{request_id}, and C{method} and
        C{target} escaped (L{logText}: they came from the client).
        """
        _log.emit(
            level,
            format,
            **{
                "site": self.config.name,
                "upstream": getattr(self.upstream, "url", self.upstream),
                "method": logText(self.method),
                "target": logText(self.target),
                "request_id": self.request.requestID,
                **fields,
            },
        )

    def _count(self, kind: str) -> None:
        """
        Count an upstream error of C{kind} for the current upstream.
        """
        metrics = self.forwarder.metrics
        if metrics is not None:
            upstream = self.upstream
            metrics.upstreamError(
                self.config.name, getattr(upstream, "url", "") or "", kind
            )

    def _abortClient(self) -> None:
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        request.abort()

    def _stopSender(self) -> None:
        sender = self.sender
        self.sender = None
        if sender is not None:
            sender.stop()

    def bodySent(self) -> None:
        """
        The request body is all written.
        """
        self.sender = None
        if self.connection is not None:
            self.connection.bodyPending = False

    def clientGone(self) -> None:
        """
        The client connection closed before the exchange ended.
        """
        if self.done:
            return
        self.done = True
        self._disarm()
        self._stopSender()
        withdraw = self.withdraw
        self.withdraw = None
        if withdraw is not None:
            withdraw()
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abandon()


class _BodySender:
    """
    Writes a spooled request body to the upstream in chunks, as fast as the
    upstream takes it (a pull producer on the upstream transport).
    """

    def __init__(
        self, exchange: _Exchange, connection: UpstreamConnection, body: IO[bytes]
    ) -> None:
        self.exchange = exchange
        self.connection = connection
        self.body = body
        self.stopped = False
        transport = connection.stream
        assert transport is not None
        transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        data = self.body.read(_BODY_CHUNK)
        transport = self.connection.stream
        if transport is None:
            return
        if data:
            timer = self.exchange.timer
            if timer is not None and timer.active():
                timer.reset(self.exchange.config.response_timeout_secs)
            transport.write(data)
            return
        self.stopped = True
        transport.unregisterProducer()
        self.exchange.bodySent()

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            transport = self.connection.stream
            if transport is not None:
                transport.unregisterProducer()
