# -*- test-case-name: tests.test_tunnel -*-
"""
Tunnels: a client's exchange and an upstream connection that switched
protocols (WebSocket and other Upgrades), relaying bytes both ways; and the
registry of the open ones, which caps them per site, keeps them across
reloads that leave their site and upstream, and drains the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from revproxy.config import allUpstreams
from revproxy.reload import ReloadFollower, ReloadResult

if TYPE_CHECKING:
    from revproxy.config import SiteConfig
    from revproxy.proxy.exchange import Exchange
    from revproxy.proxy.upstream import UpstreamConnection
    from revproxy.runtime import Runtime

_log = Logger()

#: Why a tunnel ended, as the access log and the metrics say it.
CLIENT_CLOSED = "client closed"
UPSTREAM_CLOSED = "upstream closed"
IDLE_TIMEOUT = "idle timeout"
SITE_REMOVED = "site removed"
SHUTDOWN = "shutdown"
REASONS = (CLIENT_CLOSED, UPSTREAM_CLOSED, IDLE_TIMEOUT, SITE_REMOVED, SHUTDOWN)


@implementer(IPushProducer)
class Tunnel:
    """
    One upgraded connection: what the client sends goes to the upstream as
    it is, and back.  It is the exchange's body sink (client to upstream,
    the client paused while the upstream's transport is full) and the
    upstream connection's sink (upstream to client, the upstream paused
    while the client's is full).  One side's end ends it: what the other
    side was sent is flushed, then that side is closed (an HTTP/2 stream
    that ends its request half-closes the upstream's write side where the
    transport can).  No byte either way for C{tunnel_idle_timeout_secs}
    ends it too, on the upstream connection's one timer.

    @ivar site: the site's name.
    @ivar upstreamURL: the upstream's URL.
    @ivar generation: the config generation it was opened under.
    @ivar openedAt: when it opened, in the clock's seconds.
    @ivar bytesUp: bytes the client sent through it.
    @ivar bytesDown: bytes the upstream sent through it.
    @ivar reason: why it ended, once it has (one of L{REASONS}).
    """

    def __init__(
        self,
        exchange: Exchange,
        connection: UpstreamConnection,
        config: SiteConfig,
        upstreamURL: str,
        registry: TunnelRegistry,
        clock: IReactorTime,
    ) -> None:
        self.exchange = exchange
        self.connection = connection
        self.config = config
        self.site = config.name
        self.upstreamURL = upstreamURL
        self.registry = registry
        self.generation = exchange.generation
        self.openedAt = clock.seconds()
        self.bytesUp = 0
        self.bytesDown = 0
        self.reason: str | None = None
        self._upstreamPaused = False
        # Whether the client ended its side first (a half-close, or an
        # HTTP/2 END_STREAM): the tunnel then ends for the client.
        self._clientEnded = False
        self.drainTimer: IDelayedCall | None = None

    def start(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        Take over the exchange and the connection: answer the client with
        C{code} (101 for HTTP/1.1, 200 for an HTTP/2 extended CONNECT) and
        C{headers}, then relay.
        """
        connection = self.connection
        connection.startTunnel(self)
        connection.watch(self.config.tunnel_idle_timeout_secs, self._idle)
        self.registry.opened(self)
        exchange = self.exchange
        exchange.relay = self
        stream = connection.stream
        exchange.startTunnel(code, reason, headers, self)
        if stream is not None and not exchange.clientLeft:
            exchange.registerProducer(cast(IPushProducer, stream))
            stream.registerProducer(self, True)

    # -- client to upstream (BodySink)

    def bodyReceived(self, data: bytes) -> None:
        if self.reason is not None:
            return
        self.bytesUp += len(data)
        connection = self.connection
        connection.touch()
        stream = connection.stream
        if stream is not None:
            stream.write(data)

    def bodyDone(self) -> None:
        """
        The client ended its side (an HTTP/2 stream's END_STREAM): the
        upstream's write side is shut once what was sent is flushed, where
        the transport can; else the upstream is closed.
        """
        if self.reason is not None:
            return
        self._clientEnded = True
        stream = self.connection.stream
        if stream is None:
            return
        halfClose = getattr(stream, "loseWriteConnection", None)
        if halfClose is not None:
            halfClose()
        else:
            self._end(CLIENT_CLOSED)
            stream.loseConnection()
            self._finishClient()

    def clientGone(self) -> None:
        """
        The client's connection (or stream) ended: close the upstream once
        what was sent to it is flushed.
        """
        if self.reason is not None:
            return
        self._end(SHUTDOWN if self.registry.shuttingDown else CLIENT_CLOSED)
        stream = self.connection.stream
        if stream is not None:
            stream.loseConnection()

    # -- upstream to client (the upstream connection's sink)

    def responseStarted(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        Never called: the tunnel starts after the response head.
        """

    def responseBody(self, data: bytes) -> None:
        if self.reason is not None:
            return
        self.bytesDown += len(data)
        self.connection.touch()
        self.exchange.write(data)

    def responseDone(self) -> None:
        self._upstreamEnded()

    def responseFailed(self, reason: Exception) -> None:
        self._upstreamEnded()

    def _upstreamEnded(self) -> None:
        if self.reason is not None:
            return
        self._end(CLIENT_CLOSED if self._clientEnded else UPSTREAM_CLOSED)
        self._finishClient()

    # -- IPushProducer: the upstream transport's

    def pauseProducing(self) -> None:
        if not self._upstreamPaused:
            self._upstreamPaused = True
            self.exchange.pauseBody()

    def resumeProducing(self) -> None:
        if self._upstreamPaused:
            self._upstreamPaused = False
            self.exchange.resumeBody()

    def stopProducing(self) -> None:
        pass

    # -- ends

    def _idle(self) -> None:
        self.close(IDLE_TIMEOUT)

    def close(self, reason: str) -> None:
        """
        End the tunnel for C{reason} (idle, its site removed): both sides
        are closed once what they were sent is flushed.
        """
        if self.reason is not None:
            return
        self._end(reason)
        stream = self.connection.stream
        if stream is not None:
            stream.loseConnection()
        self._finishClient()

    def _finishClient(self) -> None:
        """
        The client's side ends: HTTP/1.1 closes the connection after what
        it was sent, HTTP/2 ends the stream.
        """
        exchange = self.exchange
        exchange.unregisterProducer()
        exchange.finish()

    def _end(self, reason: str) -> None:
        """
        Record that the tunnel ended and why, before the access log line
        is written.
        """
        self.reason = reason
        self.connection.unwatch()
        exchange = self.exchange
        exchange.relay = None
        exchange.closeReason = reason
        exchange.receivedLength = self.bytesUp
        self.registry.closed(self, reason)


@attrs.frozen
class SiteTunnels:
    """
    The tunnels of one site, as admin C{tunnels} shows them.

    @ivar open: how many are open.
    @ivar byGeneration: how many are open, by the config generation each
        was opened under.
    @ivar oldestSecs: the age of the oldest open one, or L{None}.
    @ivar bytesUp: bytes the open ones carried from clients.
    @ivar bytesDown: bytes the open ones carried from upstreams.
    """

    open: int
    byGeneration: dict[int, int]
    oldestSecs: float | None
    bytesUp: int
    bytesDown: int


@attrs.frozen
class TunnelCounts:
    """
    What the metrics read of one site's tunnels.

    @ivar closed: how many ended, by reason (L{REASONS}).
    """

    site: str
    open: int
    opened: int
    closed: dict[str, int]
    bytesUp: int
    bytesDown: int


@attrs.define
class _SiteCounters:
    opened: int = 0
    closed: dict[str, int] = attrs.Factory(dict)
    bytesUp: int = 0
    bytesDown: int = 0


class TunnelRegistry(ReloadFollower):
    """
    The open tunnels, by site.  A reload keeps every tunnel whose site
    still exists with its upstream, whatever else changed; the others get
    their site's C{tunnel_drain_secs} (as it was configured), then are
    closed.

    @ivar shuttingDown: whether the process is stopping (tunnels that end
        now end for C{"shutdown"}).
    """

    part = "tunnels"

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._open: dict[str, dict[Tunnel, None]] = {}
        self._counters: dict[str, _SiteCounters] = {}
        self.shuttingDown = False

    def __len__(self) -> int:
        return sum(len(tunnels) for tunnels in self._open.values())

    def count(self, site: str) -> int:
        """
        How many tunnels of C{site} are open.
        """
        tunnels = self._open.get(site)
        return len(tunnels) if tunnels else 0

    def opened(self, tunnel: Tunnel) -> None:
        self._open.setdefault(tunnel.site, {})[tunnel] = None
        counters = self._counters.get(tunnel.site)
        if counters is None:
            counters = self._counters[tunnel.site] = _SiteCounters()
        counters.opened += 1

    def closed(self, tunnel: Tunnel, reason: str) -> None:
        timer = tunnel.drainTimer
        tunnel.drainTimer = None
        if timer is not None and timer.active():
            timer.cancel()
        tunnels = self._open.get(tunnel.site)
        if tunnels is None or tunnel not in tunnels:
            return
        del tunnels[tunnel]
        if not tunnels:
            del self._open[tunnel.site]
        counters = self._counters.get(tunnel.site)
        if counters is None:
            counters = self._counters[tunnel.site] = _SiteCounters()
        counters.closed[reason] = counters.closed.get(reason, 0) + 1
        counters.bytesUp += tunnel.bytesUp
        counters.bytesDown += tunnel.bytesDown

    def tunnels(self) -> Iterable[Tunnel]:
        """
        Every open tunnel.
        """
        for tunnels in list(self._open.values()):
            yield from list(tunnels)

    # -- reloads

    def follow(self, runtime: Runtime) -> None:
        """
        Drain the tunnels whose site or upstream C{runtime} no longer has.
        """
        sites = {site.name: site for site in runtime.config.sites}
        for tunnel in self.tunnels():
            site = sites.get(tunnel.site)
            if site is not None and any(
                u.url == tunnel.upstreamURL for u in allUpstreams(site)
            ):
                continue
            if tunnel.drainTimer is not None:
                continue
            seconds = tunnel.config.tunnel_drain_secs
            _log.info(
                "Tunnel of site {site} to {upstream}: its "
                "{what} was removed by a reload; closing it in {secs:g} s",
                site=tunnel.site,
                upstream=tunnel.upstreamURL,
                what="site" if site is None else "upstream",
                secs=seconds,
            )
            tunnel.drainTimer = self._clock.callLater(seconds, self._drained, tunnel)
        for name in list(self._counters):
            if name not in sites and name not in self._open:
                del self._counters[name]

    def reloadEnded(self, result: ReloadResult) -> None:
        pass

    def _drained(self, tunnel: Tunnel) -> None:
        tunnel.drainTimer = None
        _log.info(
            "Tunnel of site {site} to {upstream} closed: removed by a reload",
            site=tunnel.site,
            upstream=tunnel.upstreamURL,
        )
        tunnel.close(SITE_REMOVED)

    # -- what admin and the metrics read

    def describe(self, site: str | None = None) -> dict[str, SiteTunnels]:
        """
        The open tunnels of every site that has any (or of C{site}).
        """
        now = self._clock.seconds()
        names = sorted(self._open) if site is None else [site]
        described = {}
        for name in names:
            tunnels = list(self._open.get(name, {}))
            byGeneration: dict[int, int] = {}
            for tunnel in tunnels:
                byGeneration[tunnel.generation] = (
                    byGeneration.get(tunnel.generation, 0) + 1
                )
            described[name] = SiteTunnels(
                open=len(tunnels),
                byGeneration=byGeneration,
                oldestSecs=(
                    round(now - min(t.openedAt for t in tunnels), 3)
                    if tunnels
                    else None
                ),
                bytesUp=sum(t.bytesUp for t in tunnels),
                bytesDown=sum(t.bytesDown for t in tunnels),
            )
        return described

    def counts(self) -> list[TunnelCounts]:
        """
        Every site's tunnel counts since start (bytes include the open
        tunnels' so far).
        """
        out = []
        for name in sorted(set(self._counters) | set(self._open)):
            counters = self._counters.get(name) or _SiteCounters()
            tunnels = list(self._open.get(name, {}))
            out.append(
                TunnelCounts(
                    site=name,
                    open=len(tunnels),
                    opened=counters.opened,
                    closed=dict(counters.closed),
                    bytesUp=counters.bytesUp + sum(t.bytesUp for t in tunnels),
                    bytesDown=counters.bytesDown + sum(t.bytesDown for t in tunnels),
                )
            )
        return out
