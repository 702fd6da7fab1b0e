# -*- test-case-name: tests.test_forwarder -*-
"""
The forwarder: one L{_Exchange} per client request, relaying it to a site's
upstream over a pooled connection and streaming the answer back.

How it works: docs/internals.md, "The forwarder".
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from twisted.internet import error as ierror
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from revproxy.accesslog import logText
from revproxy.proxy.headers import (
    HAS_DATE,
    HAS_HSTS,
    HAS_REQUEST_ID,
    connectionTokens,
    isTrusted,
    relayResponseHeaders,
    upstreamRequestHeaders,
)
from revproxy.proxy.pool import (
    ConnectionPool,
    QueueFull,
    localConnectError,
)
from revproxy.proxy.responses import httpDate, shortLine, simpleResponse
from revproxy.proxy.rules import (
    applyHeaderRules,
    mountPoint,
    placeholderValues,
    rewriteRedirects,
    stripPrefix,
)
from revproxy.proxy.tunnel import Tunnel, TunnelRegistry
from revproxy.proxy.upstream import (
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
)
from revproxy.throttle import LogThrottle

if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network

    from revproxy.config import Upstream
    from revproxy.metrics import Metrics
    from revproxy.proxy.exchange import Exchange
    from revproxy.runtime import SiteRoute

_log = Logger()

#: RFC 9110 section 9.2.2: the methods a proxy may send again on its own.
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


#: The most request body bytes held for the upstream: while waiting for a
#: connection (the client's body is paused past it), and for sending again
#: on a fresh connection (a body sent beyond it cannot be retried).
BODY_BUFFER = 64 * 1024


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
        tunnels: TunnelRegistry | None = None,
    ) -> None:
        """
        @param metrics: Where upstream errors are counted, if anywhere.
        @param tunnels: The open tunnels (WebSocket and other Upgrades); a
            registry of the forwarder's own if not given.
        """
        self.pool = pool
        self.clock = clock
        self.trustedProxies = trustedProxies
        self.metrics = metrics
        self.tunnels = TunnelRegistry(clock) if tunnels is None else tunnels
        #: Local connect errors are logged once a second at most.
        self.localErrors = LogThrottle(clock, 1.0)

    def forward(self, exchange: Exchange, route: SiteRoute, target: bytes) -> None:
        """
        Relay C{exchange} to one of C{route}'s upstreams.

        @param target: the request-target to send upstream (origin-form).
        """
        _Relay(self, exchange, route, target).start()


@implementer(IPushProducer)
class _Relay:
    """
    One client request on its way to an upstream and back: the sink of its
    body (L{revproxy.proxy.exchange.BodySink}), the waiter for an upstream
    connection and the sink of the upstream's response.

    The body streams: bytes that come before a connection is ready wait
    here (the client's body is paused past L{BODY_BUFFER}); then they go
    upstream as they come, and the upstream transport's backpressure
    pauses the client's body (this relay is the upstream transport's
    producer while the body is sent).  A body of unknown length (chunked,
    or HTTP/2 without C{content-length}) is sent with a Content-Length when
    it is all in before the connection is ready, else chunked.
    """

    __slots__ = (
        "accept",
        "attempt",
        "bodyIn",
        "bodyPaused",
        "chunked",
        "config",
        "connection",
        "done",
        "forwarder",
        "hasBody",
        "head",
        "lastError",
        "method",
        "pending",
        "pendingBytes",
        "request",
        "retriedFresh",
        "route",
        "sent",
        "sentBytes",
        "started",
        "startedAt",
        "streaming",
        "target",
        "timedOut",
        "timer",
        "tried",
        "upgrade",
        "upstream",
        "uri",
        "waiting",
        "watched",
        "withdraw",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        exchange: Exchange,
        route: SiteRoute,
        target: bytes,
    ) -> None:
        self.forwarder = forwarder
        self.request = exchange
        self.route = route
        self.target = target
        #: The request's target in origin form as the client sent it (the
        #: target sent upstream may lose a mounted route's prefix).
        self.uri = target
        self.config = route.config
        self.method = exchange.method
        self.tried: list[Upstream] = []
        self.upstream: Upstream | None = None
        self.connection: UpstreamConnection | None = None
        self.withdraw: Callable[[], None] | None = None
        self.timer: IDelayedCall | None = None
        #: The connection whose deadline is this exchange's response
        #: timeout (L{UpstreamConnection.watch}), while it is.
        self.watched: UpstreamConnection | None = None
        self.started = False
        self.done = False
        self.retriedFresh = False
        self.lastError: str = ""
        self.timedOut = False
        self.head = b""
        self.startedAt = 0.0
        self.waiting = False
        self.attempt = 0
        # The body: what waits for a connection, what was sent (kept for a
        # retry while it fits in BODY_BUFFER), and how it is framed.
        self.hasBody = exchange.hasBody
        self.pending: list[bytes] = []
        self.pendingBytes = 0
        self.sent: list[bytes] | None = []
        self.sentBytes = 0
        self.bodyIn = not self.hasBody
        self.chunked = False
        self.streaming = False
        self.bodyPaused = False
        #: The protocols asked for in C{Upgrade} upstream, when the request
        #: may become a tunnel (L{revproxy.proxy.tunnel.Tunnel}).
        self.upgrade: bytes | None = None
        #: The C{Sec-WebSocket-Accept} a translated extended CONNECT needs.
        self.accept: bytes | None = None

    # -- start

    def start(self) -> None:
        request = self.request
        request.relay = self
        self.startedAt = self.forwarder.clock.seconds()
        peer = request.peer
        peerIP: str = getattr(peer, "host", "") or ""
        trusted = self.forwarder.trustedProxies
        host = request.header(b"host")
        headers = upstreamRequestHeaders(
            request.headers,
            clientIP=peerIP,
            peerTrusted=bool(trusted) and isTrusted(peerIP, trusted),
            scheme=b"https" if request.secure else b"http",
            host=host,
            bodyLength=None,
            requestID=request.requestID.encode("ascii") if request.requestID else None,
            lowercase=True,
            drop=request.hopByHop,
        )
        route = self.route
        if route.upstreamHost is not None:
            # upstream_host: the Host the upstream routes by (the client's
            # stays in X-Forwarded-Host).
            headers = [(b"host", route.upstreamHost)] + [
                pair for pair in headers if pair[0].lower() != b"host"
            ]
        elif host is None:
            # An HTTP/1.0 request without Host (routed to the default site):
            # HTTP/1.1 requires one upstream, so name the site or upstream.
            headers.insert(0, (b"Host", route.fallbackHost))
        rule = route.rule
        if rule is not None and rule.strip_prefix and rule.path_prefix is not None:
            prefix = rule.path_prefix.encode("utf-8")
            self.target = stripPrefix(self.target, prefix)
            headers.append((b"X-Forwarded-Prefix", mountPoint(prefix)))
        if route.requestHeaders:
            headers = applyHeaderRules(headers, route.requestHeaders, self._values())
        method = self.method
        if request.protocol is not None or request.header(b"upgrade") is not None:
            upgrade = self._upgradeOffered()
            if upgrade is None and request.protocol is not None:
                self._end()
                self._answer(501, "this site does not serve that protocol")
                return
            if upgrade is not None:
                if self.forwarder.tunnels.count(self.config.name) >= (
                    self.config.max_tunnels
                ):
                    self._end()
                    self._log(
                        LogLevel.warn,
                        "site {site}: {method} {target}: max_tunnels ({max}) "
                        "reached (request_id {request_id})",
                        max=self.config.max_tunnels,
                    )
                    self._answer(503, "too many open tunnels", [(b"Retry-After", b"5")])
                    return
                self.upgrade = upgrade
                headers += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
                if request.protocol is not None:
                    # RFC 8441: an HTTP/2 extended CONNECT goes upstream as
                    # an HTTP/1.1 WebSocket upgrade, with a key of our own.
                    method = b"GET"
                    key = base64.b64encode(os.urandom(16))
                    headers.append((b"sec-websocket-key", key))
                    self.accept = _websocketAccept(key)
                # Nothing is sent upstream before the switch: what the
                # client sends meanwhile waits in the exchange.
                self.hasBody = False
                self.bodyIn = True
        parts = [method, b" ", self.target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        self.head = b"".join(parts)
        if self.hasBody:
            request.attach(self)
            if self.done:
                return
        self._tryNext()

    def _values(self) -> dict[str, str]:
        """
        The placeholder values of this request (for header rules).
        """
        request = self.request
        return placeholderValues(request, self.route, request.routedHost, self.uri)

    def _upgradeOffered(self) -> bytes | None:
        """
        What to ask the upstream for in C{Upgrade}: the protocols of the
        client's upgrade request (an HTTP/1.1 GET with C{Connection:
        upgrade}, or an HTTP/2 extended CONNECT) that the site's
        C{upgrade_protocols} lists; L{None} when there are none (the
        request then goes as an ordinary one, without C{Upgrade}).
        """
        request = self.request
        allowed = self.config.upgrade_protocols
        protocol = request.protocol
        if protocol is not None:
            if request.method == b"CONNECT" and protocol.lower() == b"websocket":
                return b"websocket" if "websocket" in allowed else None
            return None
        if (
            request.method != b"GET"
            or request.clientproto != b"HTTP/1.1"
            or b"upgrade" not in connectionTokens(request.headerValues(b"connection"))
        ):
            return None
        offered = []
        for value in request.headerValues(b"upgrade"):
            for item in value.split(b","):
                item = item.strip()
                name = item.split(b"/", 1)[0].lower()
                if name and name.decode("latin-1") in allowed:
                    offered.append(item)
        return b", ".join(offered) if offered else None

    # -- BodySink

    def bodyReceived(self, data: bytes) -> None:
        if self.done:
            return
        if not self.streaming:
            self.pending.append(data)
            self.pendingBytes += len(data)
            if self.pendingBytes > BODY_BUFFER and not self.bodyPaused:
                self.bodyPaused = True
                self.request.pauseBody()
            return
        self._sendBody(data)

    def bodyDone(self) -> None:
        self.bodyIn = True
        if self.done or not self.streaming:
            return
        self._endBody()

    def _sendBody(self, data: bytes) -> None:
        connection = self.connection
        stream = connection.stream if connection is not None else None
        if stream is None:
            return
        sent = self.sent
        if sent is not None:
            self.sentBytes += len(data)
            if self.sentBytes > BODY_BUFFER:
                self.sent = None
            else:
                sent.append(data)
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        watched = self.watched
        if watched is not None:
            watched.touch()
        stream.write(data)

    def _endBody(self) -> None:
        connection = self.connection
        stream = connection.stream if connection is not None else None
        self.streaming = False
        if stream is None:
            return
        if self.chunked:
            stream.write(b"0\r\n\r\n")
        stream.unregisterProducer()
        if connection is not None:
            connection.bodyPending = False

    # -- IPushProducer: the upstream transport's, while the body is sent

    def pauseProducing(self) -> None:
        if not self.bodyPaused:
            self.bodyPaused = True
            self.request.pauseBody()

    def resumeProducing(self) -> None:
        if self.bodyPaused:
            self.bodyPaused = False
            self.request.resumeBody()

    def stopProducing(self) -> None:
        pass

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
            self.upstream = upstream
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
        watched = self.watched
        if watched is not None:
            self.watched = None
            watched.unwatch()

    # -- ConnectionWaiter

    def connectionReady(self, connection: UpstreamConnection) -> None:
        self.waiting = False
        self.withdraw = None
        if self.done:
            # Raced with the client leaving: give the connection back.
            connection.pool.release(connection)
            return
        self.connection = connection
        timer = self.timer
        if timer is not None:
            # The connect or queue timeout: over.
            self.timer = None
            if timer.active():
                timer.cancel()
        self.watched = connection
        connection.watch(self.config.response_timeout_secs, self._responseTimedOut)
        isHead = self.method == b"HEAD"
        if not self.hasBody:
            connection.send(self, self.head + b"\r\n", isHead)
            return
        if self.attempt > 1 or self.retriedFresh:
            # Sent before: again only what was kept.
            kept = self.sent or []
            self.sent, self.sentBytes = [], 0
            self.pending[:0] = kept
            self.pendingBytes += sum(map(len, kept))
        pending = self.pending
        self.pending = []
        self.pendingBytes = 0
        length = self.request.bodyLength
        if length is None and self.bodyIn:
            length = sum(map(len, pending))
        if length is None:
            self.chunked = True
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        else:
            self.chunked = False
            framing = b"Content-Length: %d\r\n\r\n" % length
        if self.bodyIn:
            whole = b"".join(pending)
            self._keep(whole)
            if self.chunked:
                whole = (
                    b"%x\r\n%b\r\n" % (len(whole), whole) if whole else b""
                ) + b"0\r\n\r\n"
            connection.send(self, self.head + framing + whole, isHead)
            return
        connection.send(self, self.head + framing, isHead)
        connection.bodyPending = True
        self.streaming = True
        stream = connection.stream
        assert stream is not None
        stream.registerProducer(self, True)
        for data in pending:
            self._sendBody(data)
        if self.bodyPaused:
            self.bodyPaused = False
            self.request.resumeBody()

    def _keep(self, body: bytes) -> None:
        """
        Keep C{body}, sent whole, for a retry if it is small enough.
        """
        if len(body) <= BODY_BUFFER:
            self.sent, self.sentBytes = [body], len(body)
        else:
            self.sent = None

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

    # -- ResponseSink

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
        watched = self.watched
        if watched is not None:
            watched.touch()
        if request.clientLeft:
            return
        if code == 101:
            self._switch(reason, headers)
            return
        out, found = relayResponseHeaders(headers, noBody=code == 204 or code == 304)
        route = self.route
        rule = route.rule
        if rule is not None and rule.rewrite_redirects and rule.path_prefix is not None:
            hosts = [route.upstreamHost] if route.upstreamHost is not None else []
            given = request.header(b"host")
            if given is not None:
                hosts.append(given)
            out = rewriteRedirects(
                out, mountPoint(rule.path_prefix.encode("utf-8")), hosts
            )
        if route.responseHeaders:
            out = applyHeaderRules(out, route.responseHeaders, self._values())
        if not found & HAS_DATE:
            out.append((b"Date", httpDate(self.forwarder.clock.seconds())))
        if request.requestID and not found & HAS_REQUEST_ID:
            out.append((b"X-Request-ID", request.requestID.encode("ascii")))
        hsts = self.route.hsts
        if hsts is not None and not found & HAS_HSTS and request.secure:
            out.append((b"Strict-Transport-Security", hsts))
        request.respond(code, reason, out)
        connection = self.connection
        stream = connection.stream if connection is not None else None
        if stream is not None:
            request.registerProducer(cast(IPushProducer, stream))

    def _switch(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        The upstream switched protocols: if it switched to what was asked
        for, the exchange and the connection become a tunnel; else 502.
        """
        connection = self.connection
        upstream = self.upstream
        problem = self._switchProblem(headers)
        if problem is not None or connection is None or upstream is None:
            self._disarm()
            self._stopBody()
            self.connection = None
            if connection is not None:
                connection.abandon()
            self._count("protocol")
            self.done = True
            self.request.relay = None
            self._log(
                LogLevel.warn,
                "site {site}: upstream {upstream}: {problem} (request_id {request_id})",
                problem=problem,
            )
            self._answer(502, "the upstream switched protocols wrongly")
            return
        self._disarm()
        self.done = True
        self.connection = None
        request = self.request
        out, found = relayResponseHeaders(headers, noBody=True)
        if request.requestID and not found & HAS_REQUEST_ID:
            out.append((b"X-Request-ID", request.requestID.encode("ascii")))
        if self.accept is not None:
            # RFC 8441 section 5: the client's stream is accepted with 200,
            # without the HTTP/1.1 handshake's fields.
            out = [pair for pair in out if pair[0].lower() != b"sec-websocket-accept"]
            code, phrase = 200, b"OK"
        else:
            out += [(b"Connection", b"upgrade"), (b"Upgrade", _upgradeOf(headers))]
            code, phrase = 101, reason
        forwarder = self.forwarder
        Tunnel(
            request,
            connection,
            self.config,
            upstream.url,
            forwarder.tunnels,
            forwarder.clock,
        ).start(code, phrase, out)

    def _switchProblem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """
        What is wrong with the upstream's 101 C{headers}, if anything: a
        switch nobody asked for, to another protocol than asked, or (for a
        translated extended CONNECT) without the right
        C{Sec-WebSocket-Accept}.
        """
        upgrade = self.upgrade
        if upgrade is None:
            return "101 Switching Protocols to a request that asked for no upgrade"
        answered = _upgradeOf(headers)
        names = {item.strip().split(b"/", 1)[0].lower() for item in upgrade.split(b",")}
        if answered.split(b"/", 1)[0].strip().lower() not in names:
            return (
                "101 Switching Protocols to "
                f"{logText(answered) or 'nothing'} where {logText(upgrade)} was asked"
            )
        if self.accept is not None:
            accepts = [v for k, v in headers if k.lower() == b"sec-websocket-accept"]
            if accepts != [self.accept]:
                return "101 Switching Protocols with a wrong Sec-WebSocket-Accept"
        return None

    def responseBody(self, data: bytes) -> None:
        watched = self.watched
        if watched is not None:
            watched.touch()
        self.request.write(data)

    def responseDone(self) -> None:
        self._disarm()
        self.done = True
        request = self.request
        request.relay = None
        self._stopBody()
        self.connection = None
        if request.clientLeft:
            return
        request.unregisterProducer()
        request.finish()

    def responseFailed(self, reason: Exception) -> None:
        self._disarm()
        self._stopBody()
        connection = self.connection
        self.connection = None
        request = self.request
        if self.started:
            self.done = True
            request.relay = None
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
            and self.sent is not None
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
        if not gotBytes and self.method in IDEMPOTENT and self.sent is not None:
            self._tryNext(fresh=True)
            return
        self._fail()

    def _responseTimedOut(self) -> None:
        self.watched = None
        self._stopBody()
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abandon()
        self._count("response_timeout")
        if self.started:
            self.done = True
            self.request.relay = None
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
        self.request.relay = None
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
            self._answer(504, "the upstream did not answer in time")
        else:
            self._answer(502, "the upstream failed")

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
        self._answer(
            503,
            "no healthy upstream for this site",
            [(b"Retry-After", b"5")],
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
        self._answer(503, "the upstream is busy, try again later")

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
        self._answer(
            503,
            "the proxy is out of resources, try again later",
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
                self.config.name, "" if upstream is None else upstream.url, kind
            )

    def _answer(
        self,
        code: int,
        detail: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """
        Answer the client with a short response of the proxy's own, with a
        line saying what happened (C{detail}).
        """
        simpleResponse(
            self.request,
            code,
            shortLine(code, detail),
            httpDate(self.forwarder.clock.seconds()),
            headers,
        )

    def _abortClient(self) -> None:
        request = self.request
        request.unregisterProducer()
        request.abort()

    def _stopBody(self) -> None:
        """
        Send no more of the request body (the exchange is over upstream).
        """
        if self.streaming:
            self.streaming = False
            connection = self.connection
            stream = connection.stream if connection is not None else None
            if stream is not None:
                stream.unregisterProducer()
        self.pending = []
        self.pendingBytes = 0

    def clientGone(self) -> None:
        """
        The client left (or was refused) before the exchange ended.
        """
        if self.done:
            return
        self.done = True
        self._disarm()
        self._stopBody()
        withdraw = self.withdraw
        self.withdraw = None
        if withdraw is not None:
            withdraw()
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abandon()


#: RFC 6455 section 1.3: the GUID a WebSocket key is hashed with.
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _websocketAccept(key: bytes) -> bytes:
    """
    The C{Sec-WebSocket-Accept} that answers C{key} (RFC 6455 section 4.2.2).
    """
    return base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())


def _upgradeOf(headers: list[tuple[bytes, bytes]]) -> bytes:
    """
    The value of the C{Upgrade} field among C{headers} (the first, trimmed),
    or C{b""}.
    """
    for name, value in headers:
        if len(name) == 7 and name.lower() == b"upgrade":
            return value.strip()
    return b""
