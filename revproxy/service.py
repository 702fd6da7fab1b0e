# -*- test-case-name: tests.test_service -*-
"""
The service tree behind C{twistd revproxy}: the composition root.

L{buildService} builds the parts, each by one function here: the request
path (L{requestPath}), the HTTP and HTTPS listeners (L{httpListeners},
L{tlsTermination}), operations (admin socket, ops listener, access log:
L{operations}), the graceful shutdown (L{shutdown}) and the signals.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.application.strports import service as listener
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from revproxy.access import ChecksBusy
from revproxy.accesslog import AccessLog
from revproxy.acme.challenges import ChallengeStore
from revproxy.acme.renewal import AcmeManager
from revproxy.acme.wiring import acmeManager
from revproxy.admin import AdminFactory, AdminSocket, Operations
from revproxy.certificates import LoadedCertificate
from revproxy.cluster.fleet import Fleet, FleetCollector, buildFleet
from revproxy.cluster.ratelimit import ClusterCollector, SharedRateLimiter
from revproxy.cluster.resp import RespLink
from revproxy.config import Config, SiteConfig, allUpstreams
from revproxy.descriptors import DescriptorLimit, currentDescriptorLimit
from revproxy.drain import ConnectionTracker, DrainService
from revproxy.interfaces import IRevProxyReactor
from revproxy.listeners import (
    ConnectionGate,
    Listener,
    defaultMaxConnections,
    withBacklog,
)
from revproxy.metrics import LiveSources, Metrics, poolSizes
from revproxy.observer import RequestObserver
from revproxy.opslistener import opsSite
from revproxy.proxy.connector import reactorConnector
from revproxy.proxy.eager import EagerTLSFactory
from revproxy.proxy.forwarder import Forwarder
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.limits import ConnectionLimits
from revproxy.proxy.pool import ConnectionPool
from revproxy.proxy.tunnel import TunnelRegistry
from revproxy.ratelimit import RateLimiter
from revproxy.reload import (
    IReloadFollower,
    Reloader,
    ReloadFollower,
    ReloadResult,
    configWarnings,
)
from revproxy.routing import Router
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime
from revproxy.sdnotify import Notifier, servingStatus
from revproxy.tls import HandshakeDeadline, RefusalLog, SNIContextFactory, TLSFiles
from revproxy.upstreamhealth import HealthMonitor

_log = Logger()


class HealthStates(Protocol):
    """
    Where the request path reads the upstreams' health from: the checks
    themselves (L{HealthMonitor}), or, in a worker process, what the
    supervisor's checks found.
    """

    def states(self) -> Iterable[tuple[str, str, bool]]:
        """
        C{(site, upstream url, healthy)} for every checked upstream.
        """


class AcmeCertificates(Protocol):
    """
    The ACME sites' certificates as the request path and the HTTPS
    listeners need them: the manager itself (L{AcmeManager}), or, in a
    worker process, what the supervisor's manager sent.
    """

    def certificates(self) -> dict[str, LoadedCertificate]:
        """
        The certificate each ACME site serves now, by site name.
        """

    def isIssued(self, site: str) -> bool:
        """
        Whether C{site} has its certificate from the CA.
        """

    def updateSites(self, sites: Sequence[SiteConfig]) -> object:
        """
        Follow a new config's sites.
        """


class RevProxyService(MultiService):
    """
    The root of the tree.  A listener that cannot bind (port taken, no
    permission) stops start-up with one clear line instead of a traceback.

    Its parts are named children: C{"request-path"} (L{RequestPath}),
    C{"tls"} (L{TLSTermination}) and C{"acme"} with HTTPS listeners,
    C{"health"}, C{"reloader"}, C{"admin"} with an admin socket, C{"drain"}
    (with C{"access-log"} and C{"ops"} under it), C{"signals"},
    C{"systemd-notify"}.

    @ivar descriptors: the file descriptor limit as raised at start (in the
        proxy's own process), else L{None};
        L{revproxy.descriptors.currentDescriptorLimit} gives it at any time.
    """

    def __init__(self, descriptors: DescriptorLimit | None = None) -> None:
        super().__init__()
        self.descriptors = descriptors

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self.fatal(f"revproxy: cannot start: {e}")

    def fatal(self, message: str) -> None:
        """
        Say C{message} (L{reportFatal}) and exit 1.
        """
        reportFatal(message)
        raise SystemExit(1)


def reportFatal(message: str) -> None:
    """
    Log C{message} as critical and print it on the process's real standard
    error (twistd has redirected C{sys.stderr} into its log): why the proxy
    cannot run.
    """
    _log.critical("{message}", message=message)
    try:
        os.write(2, message.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass


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

    Children start in the order they are added and stop in the reverse
    order, all at once: the drain is added after the listeners, so it
    starts in the same turn as they stop accepting.

    @param tls: The config's certificate and CA files, already read (by
        L{revproxy.tap}); when L{None}, they are read now.
    @param notifier: Tells systemd about start-up, reloads and shutdown;
        when L{None}, one for C{$NOTIFY_SOCKET}.
    @param descriptors: The file descriptor limit the process raised at
        start (L{revproxy.tap.makeService}), kept as the tree's
        C{descriptors}.
    @raise ConfigError: A certificate, key or CA file cannot be used.
    """
    top = RevProxyService(descriptors)
    holder = RuntimeHolder(buildRuntime(config, reactor, tls=tls))
    health = HealthMonitor(reactor)
    health.update(holder.current.table.sites)
    challenges = ChallengeStore(reactor)
    termination: TLSTermination | None = None
    manager: AcmeManager | None = None
    fleet = buildFleet(config, reactor)
    if fleet is not None:
        fleet.setServiceParent(top)
    if config.server.listen_https:
        # The manager tells the HTTPS listeners of every new certificate;
        # they are built below, once the manager's certificates exist.
        manager = acmeManager(
            config,
            reactor,
            challenges if fleet is None else fleet.shareChallenges(challenges),
            lambda: _publish(termination),
            None if fleet is None else fleet.orders,
        )
        manager.updateSites(config.sites)
    path = requestPath(config, reactor, holder, health, challenges, manager)
    if fleet is not None:
        path.metrics.registry.register(FleetCollector(fleet))
    httpListeners(config, reactor, path).setServiceParent(top)
    if manager is not None:
        manager.setName("acme")
        manager.setServiceParent(top)
        termination = tlsTermination(config, reactor, path, challenges, manager)
        termination.setServiceParent(top)
    for warning in configWarnings(config) + list(holder.current.tls.warnings):
        _log.warn("{problem}", problem=warning)
    path.setServiceParent(top)
    health.setName("health")
    health.setServiceParent(top)
    notifier = Notifier() if notifier is None else notifier
    reloader = Reloader(
        configPath,
        holder,
        reactor,
        [HealthFollower(health), path, path.tunnels]
        + ([] if termination is None else [termination])
        + [SystemdFollower(notifier, holder)],
    )
    reloader.setName("reloader")
    reloader.setServiceParent(top)
    operations(
        config, reactor, path, reloader, health, termination, manager, fleet
    ).setServiceParent(top)

    def reopenLogs() -> None:
        _log.info("SIGUSR1: reopening the access log")
        path.observer.reopen()

    signals(reactor, reloader, reopenLogs).setServiceParent(top)
    # Added last, so it is the first child asked to stop: STOPPING=1 goes
    # out as the graceful shutdown begins, before the drain.
    notice = SystemdNotice(
        notifier,
        reactor,
        lambda: servingStatus(
            len(holder.current.config.sites), holder.current.generation
        ),
        config.server.shutdown_timeout_secs,
    )
    notice.setName("systemd-notify")
    notice.setServiceParent(top)
    return top


@implementer(IReloadFollower)
class RequestPath(Service):
    """
    Everything a client's request goes through, from accept to access log
    (named C{"request-path"}); it follows each reload (access log, rate
    limits, metrics) and closes the upstream pool's idle connections at
    stop.

    @ivar holder: the current runtime.
    @ivar site: the one L{FrontEnd} behind every listener.
    @ivar tracker: the factory the listeners use: the site, wrapped so that
        every client connection is known (graceful shutdown).
    @ivar gate: the cap on client and upstream connections together.
    @ivar pool: the upstream connection pool.
    @ivar tunnels: the open tunnels (WebSocket and other Upgrades).
    """

    name = "request-path"
    part = "request path (access log, rate limits, metrics)"

    def __init__(
        self,
        holder: RuntimeHolder,
        gate: ConnectionGate,
        pool: ConnectionPool,
        metrics: Metrics,
        limiter: RateLimiter,
        observer: RequestObserver,
        site: FrontEnd,
        tunnels: TunnelRegistry,
        passwords: PasswordThreads | None = None,
        shared: SharedRateLimiter | None = None,
        redis: RespLink | None = None,
    ) -> None:
        """
        @param shared: the fleet's rate limiter (with C{[cluster]}), in
            front of C{limiter}.
        @param redis: its Redis connection (the lean one, L{RespLink}:
            one script call per request), opened and closed with the
            request path.
        """
        self.holder = holder
        self.shared = shared
        self.redis = redis
        self.passwords = passwords
        self.gate = gate
        self.pool = pool
        self.metrics = metrics
        self.limiter = limiter
        self.observer = observer
        self.site = site
        self.tunnels = tunnels
        self.tracker = ConnectionTracker(site, gate)

    def startService(self) -> None:
        super().startService()
        if self.passwords is not None:
            self.passwords.pool.start()
        if self.redis is not None:
            self.redis.startService()
        if self.shared is not None:
            self.shared.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.passwords is not None:
            self.passwords.pool.stop()
        stopped = None
        if self.shared is not None:
            self.shared.stop()
        if self.redis is not None:
            stopped = self.redis.stopService()
        # Tunnels that end from now on end for the shutdown.
        self.tunnels.shuttingDown = True
        self.pool.close()
        return stopped

    def reloadStarting(self, source: str) -> None:
        pass

    def prepare(self, runtime: Runtime) -> None:
        pass

    def follow(self, runtime: Runtime) -> None:
        """
        Log, rate-limit and count requests as C{runtime} says.
        """
        sites = runtime.config.sites
        self.observer.generation = runtime.generation
        self.observer.reconfigure(runtime.config.logging)
        limits = {s.name: s.rate_limit for s in sites}
        for site in runtime.table.sites:
            for route in site.routes.all() if site.routes is not None else ():
                if route.limitKey != site.limitKey:
                    limits[route.limitKey] = route.config.rate_limit
        self.limiter.retain(limits)
        self.metrics.retainSites(
            [s.name for s in sites],
            {s.name: [u.url for u in allUpstreams(s)] for s in sites},
        )

    def reloadEnded(self, result: ReloadResult) -> None:
        self.metrics.reloaded(result.ok)


def maxConnections(config: Config) -> int:
    """
    The cap on the process's connections, clients' and upstreams' together,
    as nginx's C{worker_connections}: at it the listeners stop accepting.
    """
    limit = config.server.max_connections
    if limit is None:
        limit = defaultMaxConnections(currentDescriptorLimit())
        _log.info(
            "max_connections: {count} (80 % of the descriptor limit), client "
            "and upstream connections together",
            count=limit,
        )
    return limit


def requestPath(
    config: Config,
    reactor: IRevProxyReactor,
    holder: RuntimeHolder,
    health: HealthStates,
    challenges: ChallengeStore,
    manager: AcmeCertificates | None,
    sharedLog: bool = False,
) -> RequestPath:
    """
    The request path for C{config}, serving C{holder}'s runtime: routing,
    rate limits, forwarding over pooled upstream connections, the access
    log and metrics.

    @param sharedLog: whether other processes (workers) write the same
        access log: each write is then whole lines of at most C{PIPE_BUF}
        bytes, so that lines never interleave.
    """
    gate = ConnectionGate(maxConnections(config), reactor)
    passwords = PasswordThreads(reactor)
    pool = ConnectionPool(
        reactor,
        reactorConnector(reactor),
        maxConnections=config.server.upstream_max_connections,
        maxQueue=config.server.upstream_max_queue,
        counter=gate,
    )
    limiter = RateLimiter(
        reactor,
        config.server.max_tracked_clients,
        config.server.rate_limit_ipv6_prefix,
    )
    tunnels = TunnelRegistry(reactor)
    metrics = Metrics(
        reactor,
        sources=LiveSources(
            # Read at scrape time, when the path below exists.
            connections=lambda: len(path.tracker.protocols),
            connectionGate=lambda: (gate.limit, gate.open, gate.paused, gate.pauses),
            generation=lambda: holder.current.generation,
            certificates=(
                (lambda: _expiries(manager, holder.current))
                if manager is not None
                else lambda: ()
            ),
            upstreamHealth=lambda: _upstreamHealth(health, holder.current),
            poolSizes=lambda: poolSizes(pool, holder.current.table.sites),
            trackedClients=lambda: len(limiter),
            tunnels=tunnels.counts,
        ),
    )
    observer = RequestObserver(
        reactor,
        AccessLog(
            reactor,
            config.logging.access_log,
            config.logging.access_log_format,
            writeLimit=select.PIPE_BUF if sharedLog else None,
        ),
        metrics,
        holder.current.generation,
    )
    shared = redis = None
    if config.cluster is not None:
        redis = RespLink(reactor, config.cluster)
        shared = SharedRateLimiter(
            reactor,
            redis,
            limiter,
            config.cluster.key_prefix,
            f"{config.cluster.node_name}:{os.getpid()}",
            config.server.rate_limit_ipv6_prefix,
        )
    if shared is not None:
        metrics.registry.register(ClusterCollector(shared))
    router = Router(
        holder,
        Forwarder(
            pool, reactor, config.server.trusted_proxies, metrics, tunnels=tunnels
        ),
        challenges=challenges,
        limiter=limiter if shared is None else shared,
        observer=observer,
        issued=None if manager is None else manager.isIssued,
        inThread=passwords.run,
    )
    site = FrontEnd(
        router,
        reactor,
        ConnectionLimits.fromServer(config.server),
        observer=observer,
        refused=observer.refused,
        snapshot=router.snapshot,
    )
    path = RequestPath(
        holder,
        gate,
        pool,
        metrics,
        limiter,
        observer,
        site,
        tunnels,
        passwords,
        shared,
        redis,
    )
    path.follow(holder.current)
    return path


class PasswordThreads:
    """
    The threads that check passwords (bcrypt, argon2: a third of a second
    of CPU each): at most one fewer than the machine's cores, so that
    however many logins come at once a core stays with the reactor and the
    requests of other sites are not slowed; started and stopped with the
    request path.
    """

    def __init__(
        self,
        reactor: IRevProxyReactor,
        threads: int | None = None,
        waiting: int = 200,
    ) -> None:
        """
        @param waiting: the most checks that may wait for a thread; beyond,
            a check fails at once with L{ChecksBusy} (the login is answered
            503) instead of making every later one wait longer.
        """
        if threads is None:
            threads = max(1, (os.cpu_count() or 2) - 1)
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="passwords")
        self.waiting = waiting
        self.pending = 0

    def run(self, check: Callable[[], bool]) -> Deferred[bool]:
        """
        Run C{check} in one of the threads, its result back on the reactor
        thread.
        """
        if self.pending >= self.pool.max + self.waiting:
            return fail(ChecksBusy())
        self.pending += 1

        def done(result: object) -> object:
            self.pending -= 1
            return result

        d: Deferred[bool] = deferToThreadPool(self._reactor, self.pool, check)
        return d.addBoth(done)


def _upstreamHealth(
    health: HealthStates, runtime: Runtime
) -> list[tuple[str, str, bool]]:
    """
    C{(site, upstream url, healthy)} for every upstream of C{runtime}.
    """
    checked = {(site, url): healthy for site, url, healthy in health.states()}
    return [
        (s.name, u.url, checked.get((s.name, u.url), True))
        for s in runtime.config.sites
        for u in s.upstreams
    ]


def httpListeners(
    config: Config,
    reactor: IRevProxyReactor,
    path: RequestPath,
    endpoints: Sequence[IStreamServerEndpoint] | None = None,
) -> MultiService:
    """
    The plain HTTP listeners, under one C{"http"} service.

    @param endpoints: where to listen; C{server.listen_http}'s endpoints
        if not given (a worker process gives the sockets it was passed).
    """
    listeners = MultiService()
    listeners.setName("http")
    if endpoints is None:
        endpoints = listenEndpoints(reactor, config.server.listen_http)
    for endpoint in endpoints:
        Listener(endpoint, path.tracker, path.gate).setServiceParent(listeners)
    return listeners


def listenEndpoints(
    reactor: IRevProxyReactor, descriptions: Iterable[str]
) -> list[IStreamServerEndpoint]:
    """
    The server endpoints of listener C{descriptions}, with nginx's backlog
    where they set none.
    """
    return [serverFromString(reactor, withBacklog(d)) for d in descriptions]


def _http2Available() -> bool:
    """
    Whether HTTP/2 can be served (the h2 package).
    """
    try:
        import h2.connection  # noqa: F401
    except ImportError:
        return False
    return True


@implementer(IReloadFollower)
class TLSTermination(MultiService):
    """
    The HTTPS listeners and the certificates they serve (named C{"tls"}):
    the config's files and the ACME sites' certificates, chosen by SNI.
    While running, refused TLS handshakes are one rate-limited log line
    each instead of a traceback (see L{RefusalLog}).

    @ivar contexts: the TLS connection creator of the HTTPS listeners.
    """

    name = "tls"
    part = "TLS certificates"

    def __init__(
        self,
        holder: RuntimeHolder,
        manager: AcmeCertificates,
        contexts: SNIContextFactory,
        refusals: RefusalLog,
    ) -> None:
        super().__init__()
        self.holder = holder
        self.manager = manager
        self.contexts = contexts
        self.refusals = refusals

    def startService(self) -> None:
        super().startService()
        self.refusals.install()

    def stopService(self) -> Any:
        stopped = super().stopService()
        self.refusals.uninstall()
        return stopped

    def served(self) -> TLSFiles:
        """
        The certificates the HTTPS listeners serve now.
        """
        return servedTLS(self.manager, self.holder.current)

    def publish(self) -> None:
        """
        Serve the certificates as they are now (an ACME certificate
        changed).
        """
        self.contexts.store = self.served().certificates

    def reloadStarting(self, source: str) -> None:
        pass

    def prepare(self, runtime: Runtime) -> None:
        """
        Serve C{runtime}'s certificates from the swap on.
        """
        self.contexts.store = servedTLS(self.manager, runtime).certificates

    def follow(self, runtime: Runtime) -> None:
        """
        Obtain and renew the certificates of C{runtime}'s ACME sites.
        """
        self.manager.updateSites(runtime.config.sites)

    def reloadEnded(self, result: ReloadResult) -> None:
        pass


def _publish(termination: TLSTermination | None) -> None:
    """
    Serve a changed ACME certificate, once the HTTPS listeners exist.
    """
    if termination is not None:
        termination.publish()


def servedTLS(manager: AcmeCertificates, runtime: Runtime) -> TLSFiles:
    """
    The certificate files of C{runtime} and the ACME sites' certificates
    (issued or placeholder).
    """
    acme = manager.certificates()
    return runtime.tls.withCertificates(
        (site, acme[site.name]) for site in runtime.config.sites if site.name in acme
    )


def _expiries(
    manager: AcmeCertificates, runtime: Runtime
) -> list[tuple[str, str, float]]:
    """
    C{(site, source, not_after)} for every certificate served.
    """
    served = servedTLS(manager, runtime)
    return [
        (site, cert.source, cert.not_after)
        for cert in served.certificates.all()
        for site in served.sitesOf(cert)
    ]


def tlsTermination(
    config: Config,
    reactor: IRevProxyReactor,
    path: RequestPath,
    challenges: ChallengeStore,
    manager: AcmeCertificates,
    endpoints: Sequence[IStreamServerEndpoint] | None = None,
) -> TLSTermination:
    """
    The HTTPS listeners for C{config}: TLS chosen by SNI (with TLS-ALPN-01
    answers from C{challenges}), then HTTP/1.1 or HTTP/2 by ALPN into
    C{path}.

    @param endpoints: where to listen; C{server.listen_https}'s endpoints
        if not given.
    """
    contexts = SNIContextFactory(
        servedTLS(manager, path.holder.current).certificates,
        minVersion=config.server.tls_min_version,
        http2=config.server.http2 and _http2Available(),
        challenges=challenges,
    )
    termination = TLSTermination(path.holder, manager, contexts, RefusalLog(reactor))
    factory = EagerTLSFactory(
        contexts,
        False,
        HandshakeDeadline(path.tracker, reactor, config.server.handshake_timeout_secs),
        reactor,
    )
    if endpoints is None:
        endpoints = listenEndpoints(reactor, config.server.listen_https)
    for endpoint in endpoints:
        Listener(endpoint, factory, path.gate).setServiceParent(termination)
    return termination


class HealthFollower(ReloadFollower):
    """
    Moves the upstream health checks to each new runtime's sites.
    """

    part = "upstream health checks"

    def __init__(self, health: HealthMonitor) -> None:
        self.health = health

    def follow(self, runtime: Runtime) -> None:
        # After the swap, in the same reactor turn (no request sees the
        # gap): a reload refused by a later follower's prepare must not
        # move the checks.
        self.health.update(runtime.table.sites)


class SystemdFollower(ReloadFollower):
    """
    Tells systemd when a reload begins and how it ended.
    """

    part = "systemd notification"

    def __init__(self, notifier: Notifier, holder: RuntimeHolder) -> None:
        self.notifier = notifier
        self.holder = holder

    def reloadStarting(self, source: str) -> None:
        self.notifier.reloading(f"Reloading the config ({source})")

    def reloadEnded(self, result: ReloadResult) -> None:
        runtime = self.holder.current
        self.notifier.ready(
            servingStatus(len(runtime.config.sites), runtime.generation, result)
        )


def operations(
    config: Config,
    reactor: IRevProxyReactor,
    path: RequestPath,
    reloader: Reloader,
    health: HealthMonitor,
    termination: TLSTermination | None,
    manager: AcmeManager | None,
    fleet: Fleet | None = None,
) -> MultiService:
    """
    What operators drive and read: the admin socket (C{"admin"}), and,
    under the graceful shutdown (L{shutdown}), the access log and the ops
    listener (C{/healthz}, C{/metrics}), which keep running while it drains.
    """
    parts = MultiService()
    parts.setName("operations")
    if config.server.admin_socket_path:
        admin = AdminSocket(
            config.server.admin_socket_path,
            AdminFactory(
                reloader,
                reactor,
                reactor.seconds(),
                certificates=manager,
                servedTLS=None if termination is None else termination.served,
                operations=Operations(
                    limiter=path.limiter,
                    metrics=path.metrics,
                    health=health,
                    reopenLogs=path.observer.reopen,
                    poolSizes=lambda: poolSizes(
                        path.pool, path.holder.current.table.sites
                    ),
                    tunnels=path.tunnels,
                    shared=path.shared,
                    fleet=None if fleet is None else fleet.enableReloads(reloader),
                    cluster=None if fleet is None else fleet.status,
                ),
            ),
            reactor,
        )
        admin.setName("admin")
        admin.setServiceParent(parts)
    shutdown(config, reactor, path).setServiceParent(parts)
    return parts


def shutdown(
    config: Config, reactor: IRevProxyReactor, path: RequestPath
) -> DrainService:
    """
    The graceful shutdown (C{"drain"}), with what must stop only once it is
    over as its children: the access log (C{"access-log"}: the last
    requests are logged) and the ops listener (C{"ops"}: C{/healthz}
    answers 503 while it drains).
    """
    drain = DrainService(path.tracker, config.server.shutdown_timeout_secs, reactor)
    drain.setName("drain")
    accessLog = _AccessLogService(path.observer)
    accessLog.setName("access-log")
    accessLog.setServiceParent(drain)
    if config.server.ops_listen:
        ops = listener(
            config.server.ops_listen,
            opsSite(path.metrics, lambda: drain.draining, reactor),
            reactor=reactor,
        )
        ops.setName("ops")
        ops.setServiceParent(drain)
    return drain


class _AccessLogService(Service):
    """
    Writes the access log while running; at stop, writes what is left and
    closes the file.
    """

    def __init__(self, observer: RequestObserver) -> None:
        self.observer = observer

    def startService(self) -> None:
        super().startService()
        self.observer.accessLog.start()

    def stopService(self) -> None:
        super().stopService()
        self.observer.accessLog.stop()


def signals(
    reactor: IRevProxyReactor, reloader: Reloader, reopenLogs: Callable[[], None]
) -> SignalRelay:
    """
    The signals an operator sends: SIGTERM and SIGINT stop gracefully,
    SIGHUP reloads, SIGUSR1 reopens the access log.
    """

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            # A second SIGTERM while shutting down.
            pass

    def reload() -> None:
        reloader.reload("SIGHUP")

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
    return relay


class SystemdNotice(Service):
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
        whenServing: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        """
        @param whenServing: fires when the proxy serves (the workers of a
            supervisor); when not given, it serves once the reactor runs.
        """
        self.notifier = notifier
        self._whenServing = whenServing
        self._reactor = reactor
        self._status = status
        self._timeout = timeout
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        # A delayed call runs once the reactor runs, after its
        # callWhenRunning hooks: SignalRelay's handlers are in by then, so
        # a SIGTERM right after READY=1 is a graceful stop (exit 0).
        self._call = self._reactor.callLater(0, self._running)

    def _running(self) -> None:
        self._call = None
        if self._whenServing is None:
            self._ready()
        else:
            self._whenServing().addCallback(lambda _: self._ready())

    def _ready(self) -> None:
        if self.running:
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
