# -*- test-case-name: tests.test_service -*-
"""
The service tree behind C{twistd revproxy}.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.application.strports import service as listener
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IConnector, IDelayedCall
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger

from revproxy.accesslog import AccessLog
from revproxy.acme.challenges import ChallengeStore
from revproxy.acme.client import AcmeIssuer
from revproxy.acme.manager import AcmeManager
from revproxy.acme.storage import AcmeStorage
from revproxy.admin import AdminFactory, AdminSocket, Operations
from revproxy.config import Config
from revproxy.descriptors import DescriptorLimit, currentDescriptorLimit
from revproxy.drain import ConnectionTracker, DrainService
from revproxy.formatting import shorten
from revproxy.health import HealthMonitor
from revproxy.interfaces import IIssuer, IRevProxyReactor
from revproxy.listeners import (
    ConnectionGate,
    Listener,
    defaultMaxConnections,
)
from revproxy.metrics import Metrics, opsSite
from revproxy.observer import RequestObserver
from revproxy.proxy.client import PoolKey
from revproxy.proxy.eager import EagerTLSFactory
from revproxy.proxy.forwarder import Forwarder
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.limits import ConnectionLimits
from revproxy.proxy.pool import ConnectionPool, IUpstreamConnector
from revproxy.proxy.upstreamtls import ClientCreators
from revproxy.ratelimit import RateLimiter
from revproxy.reload import Reloader, configWarnings
from revproxy.routing import Router
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime
from revproxy.sdnotify import Notifier
from revproxy.tls import HandshakeDeadline, RefusalLog, SNIContextFactory, TLSFiles

_log = Logger()


def reactorConnector(reactor: IRevProxyReactor) -> IUpstreamConnector:
    """
    Open upstream connections with C{reactor}: plain TCP for http://, TLS
    verified as the site says (system trust store, its own CA file, or not
    at all) for https://.
    """
    creators = ClientCreators()

    def connect(key: PoolKey, factory: ClientFactory, timeout: float) -> IConnector:
        _scheme, host, port, settings = key
        if settings is not None:
            creator: Any = creators.creatorFor(host, settings)
            return reactor.connectSSL(
                host, port, factory, creator, timeout=timeout, bindAddress=None
            )
        return reactor.connectTCP(host, port, factory, timeout=timeout)

    return connect


def acmeManager(
    config: Config, reactor: IRevProxyReactor, challenges: ChallengeStore
) -> AcmeManager:
    """
    The ACME manager for C{config}: certificates stored under
    C{server.state_dir}, issued by the C{[acme]} directory.  Nothing is read
    or sent until a site needs it.
    """
    storage = AcmeStorage(config.server.state_dir)
    acme = config.acme

    def issuer() -> IIssuer:
        key, created = storage.accountKey()
        if created:
            _log.info(
                "ACME: created the account key in {dir}", dir=config.server.state_dir
            )
        directory = acme.directory_url

        def remember(uri: str) -> None:
            storage.saveAccountURI(directory, uri)

        return AcmeIssuer(
            reactor,
            directory,
            acme.email,
            key,
            caFile=acme.ca_file,
            accountURI=storage.accountURI(directory),
            onAccount=remember,
            challenge="tls-alpn-01" if acme.challenge == "tls-alpn-01" else "http-01",
        )

    return AcmeManager(reactor, storage, issuer, acme, challenges)


def _http2Available() -> bool:
    """
    Whether HTTP/2 can be served (the h2 package).
    """
    try:
        import h2.connection  # noqa: F401
    except ImportError:
        return False
    return True


class _TLSService(Service):
    """
    While running, refused TLS handshakes are one rate-limited log line
    each instead of a traceback (see L{RefusalLog}).
    """

    def __init__(self, refusals: RefusalLog) -> None:
        self.refusals = refusals

    def startService(self) -> None:
        super().startService()
        self.refusals.install()

    def stopService(self) -> None:
        super().stopService()
        self.refusals.uninstall()


class _PoolService(Service):
    """
    Closes the upstream pool's idle connections and timers at shutdown.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> None:
        super().stopService()
        self.pool.close()


class _AccessLogService(Service):
    """
    Writes the access log while running; at stop, writes what is left and
    closes the file (after the drain, so the last requests are logged).
    """

    def __init__(self, observer: RequestObserver) -> None:
        self.observer = observer

    def startService(self) -> None:
        super().startService()
        self.observer.accessLog.start()

    def stopService(self) -> None:
        super().stopService()
        self.observer.accessLog.stop()


class _AfterDrain(MultiService):
    """
    Children that keep running while the drain runs and stop once it is
    over: the ops listener answers C{/healthz} with 503 during a graceful
    shutdown, and the access log gets the lines of the last requests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.drained: Callable[[], Deferred[None] | None] = lambda: None

    def stopService(self) -> Deferred[None] | None:
        drained = self.drained()
        if drained is None:
            stopped: Deferred[None] | None = super().stopService()
            return stopped
        result: Deferred[None] = Deferred()

        def stopChildren(_: object) -> None:
            stopped = MultiService.stopService(self)
            if stopped is None:
                result.callback(None)
            else:
                stopped.addBoth(lambda _: result.callback(None))

        drained.addBoth(stopChildren)
        return result


#: The listen backlog of TCP listeners that do not set one, as nginx's on
#: Linux (Twisted's default is 50: a burst of new connections, such as 500
#: slow clients reconnecting at once, overflows it and a normal client's
#: SYN waits a whole second to be sent again).
DEFAULT_BACKLOG = 511


def withBacklog(description: str) -> str:
    """
    C{description}, a server endpoint string, with C{backlog=511} added
    when it is a TCP endpoint that does not set its own backlog.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def poolSizes(pool: ConnectionPool, runtime: Runtime) -> list[tuple[str, int, int]]:
    """
    (upstream url, idle, active) for every upstream of C{runtime}.
    """
    seen: dict[str, tuple[str, int, int]] = {}
    for route in runtime.table.sites:
        for upstream, key in route.keys.items():
            url = getattr(upstream, "url", str(upstream))
            if url not in seen:
                seen[url] = (url, pool.idleCount(key), pool.activeCount(key))
    return list(seen.values())


class RevProxyService(MultiService):
    """
    The root of the tree.  A listener that cannot bind (port taken, no
    permission) stops start-up with one clear line instead of a traceback.

    @ivar site: the one L{FrontEnd} behind every listener.
    @ivar tracker: the factory the listeners use: the site, wrapped so that
        every client connection is known (graceful shutdown).
    @ivar holder: the current runtime.
    @ivar reloader: applies the config file (SIGHUP, admin C{reload}).
    @ivar pool: the upstream connection pool.
    @ivar contexts: the TLS connection creator of the HTTPS listeners, or
        L{None} without any.
    @ivar acme: the ACME certificates (with HTTPS listeners), else L{None}.
    @ivar servedTLS: the certificates the HTTPS listeners serve now (files
        and ACME), else L{None}.
    @ivar descriptors: the file descriptor limit as raised at start (in the
        proxy's own process), else L{None};
        L{revproxy.descriptors.currentDescriptorLimit} gives it at any time.
    """

    site: FrontEnd
    tracker: ConnectionTracker
    holder: RuntimeHolder
    reloader: Reloader
    pool: ConnectionPool
    contexts: SNIContextFactory | None = None
    acme: AcmeManager | None = None
    servedTLS: Callable[[], TLSFiles] | None = None
    descriptors: DescriptorLimit | None = None
    metrics: Metrics
    observer: RequestObserver
    limiter: RateLimiter
    health: HealthMonitor

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self.fatal(f"revproxy: cannot start: {e}")

    def fatal(self, message: str) -> None:
        """
        Print C{message} on the process's real standard error (twistd has
        redirected C{sys.stderr} into its log) and exit 1.
        """
        _log.critical("{message}", message=message)
        os.write(2, message.encode("utf-8", "replace") + b"\n")
        raise SystemExit(1)


def buildService(
    config: Config,
    configPath: str,
    reactor: IRevProxyReactor,
    tls: TLSFiles | None = None,
    notifier: Notifier | None = None,
    descriptors: DescriptorLimit | None = None,
) -> RevProxyService:
    """
    Build the service tree for C{config}.  Nothing listens until it starts.

    Children stop in the reverse order of addition, all at once; the drain
    is added after the listeners so that it starts first, in the same turn
    as they stop accepting.

    @param tls: The config's certificate and CA files, already read (by
        L{revproxy.tap}); when L{None}, they are read now.
    @param notifier: Tells systemd about start-up, reloads and shutdown;
        when L{None}, one for C{$NOTIFY_SOCKET}.
    @param descriptors: The file descriptor limit the process raised at
        start (L{revproxy.tap.makeService}), kept as the tree's
        C{descriptors}.
    @raise ConfigError: A certificate, key or CA file cannot be used.
    """
    top = RevProxyService()
    top.descriptors = descriptors
    holder = RuntimeHolder(buildRuntime(config, reactor, tls=tls))
    # One cap on the process's connections, clients' and upstreams', as
    # nginx's worker_connections: at it the listeners stop accepting.
    maxConnections = config.server.max_connections
    if maxConnections is None:
        maxConnections = defaultMaxConnections(currentDescriptorLimit())
        _log.info(
            "max_connections: {count} (80 % of the descriptor limit), client "
            "and upstream connections together",
            count=maxConnections,
        )
    gate = ConnectionGate(maxConnections, reactor)
    pool = ConnectionPool(
        reactor,
        reactorConnector(reactor),
        maxConnections=config.server.upstream_max_connections,
        maxQueue=config.server.upstream_max_queue,
        counter=gate,
    )
    metrics = Metrics(reactor)
    forwarder = Forwarder(pool, reactor, config.server.trusted_proxies, metrics)
    challenges = ChallengeStore(reactor)
    limiter = RateLimiter(
        reactor,
        config.server.max_tracked_clients,
        config.server.rate_limit_ipv6_prefix,
    )
    observer = RequestObserver(
        reactor,
        AccessLog(reactor, config.logging.access_log, config.logging.access_log_format),
        metrics,
        holder.current.generation,
    )
    root = Router(
        holder, forwarder, challenges=challenges, limiter=limiter, observer=observer
    )
    site = FrontEnd(
        root,
        reactor,
        ConnectionLimits.fromServer(config.server),
        observer=observer,
        refused=observer.refused,
        snapshot=root.snapshot,
    )
    tracker = ConnectionTracker(site, gate)
    reloader = Reloader(configPath, holder, reactor)
    top.metrics, top.observer, top.limiter = metrics, observer, limiter
    health = HealthMonitor(reactor)
    health.update(holder.current.table.sites)
    top.health = health

    def followRuntime(runtime: Runtime) -> None:
        observer.generation = runtime.generation
        observer.reconfigure(runtime.config.logging)
        limiter.retain({s.name: s.rate_limit for s in runtime.config.sites})
        metrics.retainSites(
            [s.name for s in runtime.config.sites],
            {s.name: [u.url for u in s.upstreams] for s in runtime.config.sites},
        )

    def upstreamHealth() -> list[tuple[str, str, bool]]:
        checked = {(site, url): healthy for site, url, healthy in health.states()}
        return [
            (s.name, u.url, checked.get((s.name, u.url), True))
            for s in holder.current.config.sites
            for u in s.upstreams
        ]

    followRuntime(holder.current)

    # After the swap (the same reactor turn, so no request sees the gap):
    # a reload that fails in a later beforeSwap must not move the checks.
    reloader.afterSwap.append(lambda runtime: health.update(runtime.table.sites))
    reloader.afterSwap.append(followRuntime)
    reloader.onResult.append(lambda answer: metrics.reloaded(answer["status"] == "ok"))
    metrics.connections = lambda: len(tracker.protocols)
    metrics.connectionGate = lambda: (gate.limit, gate.open, gate.paused, gate.pauses)
    metrics.generation = lambda: holder.current.generation
    metrics.upstreamHealth = upstreamHealth
    metrics.trackedClients = lambda: len(limiter)
    metrics.poolSizes = lambda: poolSizes(pool, holder.current)
    top.site, top.tracker, top.holder, top.reloader, top.pool = (
        site,
        tracker,
        holder,
        reloader,
        pool,
    )

    for description in config.server.listen_http:
        Listener(
            serverFromString(reactor, withBacklog(description)), tracker, gate
        ).setServiceParent(top)
    manager: AcmeManager | None = None
    if config.server.listen_https:
        manager = acmeManager(config, reactor, challenges)
        root.issued = manager.isIssued
        top.acme = manager

        def certificates(runtime: Runtime) -> TLSFiles:
            """
            The certificate files of C{runtime} and the ACME sites'
            certificates (issued or placeholder).
            """
            acme = manager.certificates()
            return runtime.tls.withCertificates(
                (site, acme[site.name])
                for site in runtime.config.sites
                if site.name in acme
            )

        top.servedTLS = lambda: certificates(holder.current)

        def expiries() -> list[tuple[str, str, float]]:
            served = certificates(holder.current)
            return [
                (site, cert.source, cert.not_after)
                for cert in served.certificates.all()
                for site in served.sitesOf(cert)
            ]

        metrics.certificates = expiries
        manager.updateSites(config.sites)
        contexts = SNIContextFactory(
            certificates(holder.current).certificates,
            minVersion=config.server.tls_min_version,
            http2=config.server.http2 and _http2Available(),
            challenges=challenges,
        )
        top.contexts = contexts

        def useCertificates(runtime: Runtime) -> None:
            contexts.store = certificates(runtime).certificates

        def publish() -> None:
            useCertificates(holder.current)

        def followSites(runtime: Runtime) -> None:
            manager.updateSites(runtime.config.sites)

        manager.onChange = publish
        reloader.beforeSwap.append(useCertificates)
        reloader.afterSwap.append(followSites)
        manager.setName("acme")
        manager.setServiceParent(top)
        tlsFactory = EagerTLSFactory(
            contexts,
            False,
            HandshakeDeadline(tracker, reactor, config.server.handshake_timeout_secs),
            reactor,
        )
        for description in config.server.listen_https:
            Listener(
                serverFromString(reactor, withBacklog(description)), tlsFactory, gate
            ).setServiceParent(top)
        tlsService = _TLSService(RefusalLog(reactor))
        tlsService.setName("tls")
        tlsService.setServiceParent(top)
    for warning in configWarnings(config) + list(holder.current.tls.warnings):
        _log.warn("{problem}", problem=warning)

    poolService = _PoolService(pool)
    poolService.setName("upstream-pool")
    poolService.setServiceParent(top)
    health.setName("health")
    health.setServiceParent(top)

    if config.server.admin_socket_path:
        admin = AdminSocket(
            config.server.admin_socket_path,
            AdminFactory(
                reloader,
                reactor,
                reactor.seconds(),
                certificates=manager,
                servedTLS=top.servedTLS,
                operations=Operations(
                    limiter=limiter,
                    metrics=metrics,
                    health=health,
                    reopenLogs=observer.reopen,
                    poolSizes=lambda: poolSizes(pool, holder.current),
                ),
            ),
            reactor,
        )
        admin.setName("admin")
        admin.setServiceParent(top)

    drain = DrainService(tracker, config.server.shutdown_timeout_secs, reactor)
    drain.setName("drain")
    afterDrain = _AfterDrain()
    afterDrain.setName("after-drain")
    # Added before the drain, so it is asked to stop after it, in the same
    # turn, and waits for it.
    afterDrain.setServiceParent(top)
    afterDrain.drained = drain.whenDrained
    _AccessLogService(observer).setServiceParent(afterDrain)
    if config.server.ops_listen:
        ops = listener(
            config.server.ops_listen,
            opsSite(metrics, lambda: drain.draining, reactor),
            reactor=reactor,
        )
        ops.setName("ops")
        ops.setServiceParent(afterDrain)
    drain.setServiceParent(top)

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            # A second SIGTERM while shutting down.
            pass

    def reload() -> None:
        reloader.reload("SIGHUP")

    def reopenLogs() -> None:
        _log.info("SIGUSR1: reopening the access log")
        observer.reopen()

    relay = SignalRelay(
        reactor,
        {
            signal.SIGTERM: stop,
            signal.SIGINT: stop,
            signal.SIGHUP: reload,
            signal.SIGUSR1: reopenLogs,
        },
    )
    relay.setName("signals")
    relay.setServiceParent(top)

    notifier = Notifier() if notifier is None else notifier
    reloader.onStart.append(
        lambda source: notifier.reloading(f"Reloading the config ({source})")
    )
    reloader.onResult.append(
        lambda answer: notifier.ready(servingStatus(holder.current, answer))
    )
    # Added last, so it is the first child asked to stop: STOPPING=1 goes
    # out as the graceful shutdown begins, before the drain.
    notice = _SystemdNotice(
        notifier,
        reactor,
        lambda: servingStatus(holder.current),
        config.server.shutdown_timeout_secs,
    )
    notice.setName("systemd-notify")
    notice.setServiceParent(top)
    return top


def servingStatus(runtime: Runtime, reload: dict[str, Any] | None = None) -> str:
    """
    The one-line status systemd shows for C{runtime}, after the answer of a
    C{reload} if there was one.
    """
    serving = (
        f"serving {len(runtime.config.sites)} site(s), "
        f"config generation {runtime.generation}"
    )
    if reload is None:
        return serving[0].upper() + serving[1:]
    if reload.get("status") == "ok":
        return f"Reloaded: {serving}"
    message = shorten(str(reload.get("message", "unknown error")), 300)
    return f"Reload failed, {serving}: {message}"


class _SystemdNotice(Service):
    """
    Tells systemd (C{READY=1}) that the proxy serves once the reactor runs:
    every listener is bound by then (they bind in C{privilegedStartService},
    and a port that cannot be had ends start-up before).  Tells it
    C{STOPPING=1} when the tree starts to stop.
    """

    def __init__(
        self,
        notifier: Notifier,
        reactor: IRevProxyReactor,
        status: Callable[[], str],
        timeout: float,
    ) -> None:
        self.notifier = notifier
        self._reactor = reactor
        self._status = status
        self._timeout = timeout
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        # A delayed call runs once the reactor runs, after its
        # callWhenRunning hooks: SignalRelay's handlers are in by then, so
        # a SIGTERM right after READY=1 is a graceful stop (exit 0).
        self._call = self._reactor.callLater(0, self._ready)

    def _ready(self) -> None:
        self._call = None
        self.notifier.ready(self._status())

    def stopService(self) -> None:
        super().stopService()
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.notifier.stopping(
            f"Shutting down: finishing requests in flight (up to {self._timeout:g} s)"
        )


class SignalRelay(Service):
    """
    While running, turn POSIX signals into calls made on the reactor thread.
    """

    def __init__(
        self, reactor: IRevProxyReactor, handlers: Mapping[int, Callable[[], object]]
    ) -> None:
        self._reactor = reactor
        self._handlers = handlers
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        # The reactor installs its own SIGINT/SIGTERM handlers as it starts;
        # installing ours when it is running lets ours win, and SIGTERM then
        # exits 0 instead of twistd's 143.
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if not self.running:
            return
        for signum, handler in self._handlers.items():
            self._previous[signum] = signal.signal(signum, self._relay(handler))

    def _relay(
        self, handler: Callable[[], object]
    ) -> Callable[[int, FrameType | None], None]:
        def onSignal(signum: int, frame: FrameType | None) -> None:
            self._reactor.callFromThread(handler)

        return onSignal

    def stopService(self) -> None:
        # Our handlers stay: services stop as the reactor starts shutting
        # down, and a second SIGTERM until the process is gone must reach
        # ours (which tolerate it), not the reactor's, which would log it and
        # make twistd exit by the signal instead of with status 0.
        super().stopService()

    def restore(self) -> None:
        """
        Put back the handlers that were there before ours (for tests and
        embedders; a real process exits with ours in place).
        """
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
