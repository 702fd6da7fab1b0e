# -*- test-case-name: tests.test_workers -*-
"""
A worker process (C{python -m revproxy.workers.child}): the request path
of one core, on listening sockets the supervisor bound and passed down,
serving the configs, certificates, challenges and upstream health the
supervisor sends over AMP (L{revproxy.workers.protocol}).

A worker has no admin socket, no ACME client, no health checks and no
signals of its own but SIGTERM/SIGINT (drain, then exit 0); it also
drains and exits when the supervisor goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from prometheus_client.exposition import generate_latest
from twisted.application.service import MultiService
from twisted.internet import stdio
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import provider

from revproxy.acme.challenges import ChallengeStore
from revproxy.admin import AdminFactory, Answer, Operations
from revproxy.certificates import LoadedCertificate
from revproxy.config import Config, ConfigError, SiteConfig, configFromBytes
from revproxy.interfaces import IRevProxyReactor
from revproxy.metrics import poolSizes
from revproxy.ratelimit import shareLimit
from revproxy.reload import Applied, Refused, ReloadResult, siteChanges
from revproxy.runtime import Runtime, RuntimeHolder, SiteRoute, buildRuntime
from revproxy.service import (
    RequestPath,
    TLSTermination,
    httpListeners,
    requestPath,
    shutdown,
    tlsTermination,
)
from revproxy.workers.protocol import (
    Admin,
    Apply,
    ApplyFailed,
    Certificates,
    Challenge,
    Health,
    Metrics,
    Ping,
    decodeCertificates,
)

_log = Logger()

#: The admin commands a worker answers (the supervisor answers the others).
WORKER_COMMANDS = frozenset({"stats", "tunnels", "ratelimit", "reopen-logs"})


@attrs.frozen
class Inherited:
    """
    A listening socket passed down by the supervisor.

    @ivar kind: C{"http"} or C{"https"}.
    @ivar fd: its descriptor in this process.
    @ivar family: its address family.
    """

    kind: str
    fd: int
    family: int

    def describe(self) -> str:
        """
        As the command line gives it: C{kind:fd:family}.
        """
        return f"{self.kind}:{self.fd}:{int(self.family)}"

    @classmethod
    def parse(cls, text: str) -> Inherited:
        """
        The inverse of L{describe}.
        """
        kind, fd, family = text.split(":")
        if kind not in ("http", "https"):
            raise ValueError(f"unknown listener kind {kind!r}")
        return cls(kind, int(fd), socket.AddressFamily(int(family)))


def shareLimits(config: Config, workers: int) -> Config:
    """
    C{config} with every site's and route's rate limit cut to one worker's
    share (L{shareLimit}).
    """
    if workers <= 1:
        return config

    def site(s: SiteConfig) -> SiteConfig:
        return attrs.evolve(
            s,
            rate_limit=shareLimit(s.rate_limit, workers),
            routes=tuple(
                r
                if r.rate_limit is None
                else attrs.evolve(r, rate_limit=shareLimit(r.rate_limit, workers))
                for r in s.routes
            ),
        )

    return attrs.evolve(config, sites=tuple(site(s) for s in config.sites))


def workerConfig(path: str, data: bytes, static: bytes, workers: int) -> Config:
    """
    The config a worker serves: the file's C{data}, with the static
    settings of C{static} (the file the supervisor started with; C{data}
    itself when empty), no admin socket or ops listener of its own, and
    its share of the rate limits.

    @raise ConfigError: C{data} or C{static} is not a valid config.
    """
    config = configFromBytes(data, path)
    base = configFromBytes(static, path) if static else config
    server = attrs.evolve(base.server, admin_socket_path="", ops_listen="")
    config = attrs.evolve(config, server=server, acme=base.acme, cluster=base.cluster)
    if config.cluster is not None:
        # The fleet's buckets are shared exactly, through Redis; a worker
        # takes its share only while Redis is down.
        return config
    return shareLimits(config, workers)


@attrs.define
class _RemoteState:
    """
    One upstream's health, as the supervisor's checks found it.  Passive
    failures are the selector's business here (its back-off); only checks
    change health.
    """

    healthy: bool = True

    def passiveFailure(self, now: float, error: str) -> object:
        return None


class RemoteHealth:
    """
    The upstreams' health as the supervisor's checks found it, attached to
    the selectors of the checked sites (as L{HealthMonitor.update} does).
    """

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], _RemoteState] = {}
        self._routes: list[SiteRoute] = []

    def set(self, states: Iterable[tuple[str, str, bool]]) -> None:
        """
        The supervisor's checks found C{states}.
        """
        for site, url, healthy in states:
            self._states.setdefault((site, url), _RemoteState()).healthy = healthy

    def update(self, routes: Iterable[SiteRoute]) -> None:
        """
        Attach the states to C{routes}' selectors (C{None} to those of
        sites without checks).
        """
        self._routes = list(routes)
        for route in self._routes:
            if route.config.health_check is None:
                route.selector.health = None
                continue
            route.selector.health = {
                u: self._states.setdefault((route.name, u.url), _RemoteState())
                for u in route.selector.upstreams
            }

    def states(self) -> Iterable[tuple[str, str, bool]]:
        """
        C{(site, upstream url, healthy)} for every checked upstream.
        """
        return [(site, url, s.healthy) for (site, url), s in self._states.items()]


class RemoteCertificates:
    """
    The ACME sites' certificates, as the supervisor's manager last sent
    them.

    @ivar onChange: called when they change (the HTTPS listeners serve
        them).
    """

    def __init__(self) -> None:
        self._certificates: dict[str, LoadedCertificate] = {}
        self.onChange: Any = None

    def set(self, certificates: dict[str, LoadedCertificate]) -> None:
        self._certificates = certificates
        if self.onChange is not None:
            self.onChange()

    def certificates(self) -> dict[str, LoadedCertificate]:
        return dict(self._certificates)

    def isIssued(self, site: str) -> bool:
        certificate = self._certificates.get(site)
        return certificate is not None and certificate.source == "acme"

    def updateSites(self, sites: Sequence[SiteConfig]) -> object:
        return None


class _NoReload:
    """
    What a worker's admin commands read of the config (reloads are the
    supervisor's).
    """

    def __init__(self, holder: RuntimeHolder) -> None:
        self.holder = holder

    def reload(self, source: str) -> Deferred[ReloadResult]:
        return succeed(Refused("worker", "reloads are the supervisor's"))

    def check(self) -> Deferred[ReloadResult]:
        return self.reload("check")


class Worker:
    """
    One worker's state: what the supervisor sent, and, once the first
    config is applied, the request path serving it.

    @ivar tree: the services of the request path, once serving.
    """

    def __init__(
        self,
        reactor: IRevProxyReactor,
        workers: int,
        listeners: Sequence[Inherited],
        endpoint: Any = AdoptedStreamServerEndpoint,
    ) -> None:
        """
        @param workers: how many workers share the sockets (and the rate
            limits).
        @param endpoint: makes the endpoint of an inherited socket.
        """
        self.reactor = reactor
        self.workers = workers
        self.listeners = tuple(listeners)
        self._endpoint = endpoint
        self.health = RemoteHealth()
        self.certificates = RemoteCertificates()
        self.challenges = ChallengeStore(reactor)
        self.tree: MultiService | None = None
        self.path: RequestPath | None = None
        self.termination: TLSTermination | None = None
        self.admin: AdminFactory | None = None

    def _endpoints(self, kind: str) -> list[IStreamServerEndpoint]:
        return [
            self._endpoint(self.reactor, inherited.fd, inherited.family)
            for inherited in self.listeners
            if inherited.kind == kind
        ]

    def apply(self, path: str, data: bytes, static: bytes, generation: int) -> None:
        """
        Serve the config C{data} as generation C{generation}: the first
        one starts the request path on the inherited sockets.

        @raise ApplyFailed: it cannot be served; what served before still
            does.
        """
        try:
            config = workerConfig(path, data, static, self.workers)
            if self.path is None:
                self._start(config, generation)
            else:
                self._swap(config, generation)
        except ConfigError as e:
            raise ApplyFailed("; ".join(e.errors)) from None
        except ApplyFailed:
            raise
        except Exception as e:
            _log.failure(
                "Applying generation {generation} failed", generation=generation
            )
            raise ApplyFailed(f"{type(e).__name__}: {e}") from None

    def _start(self, config: Config, generation: int) -> None:
        runtime = attrs.evolve(
            buildRuntime(config, self.reactor), generation=generation
        )
        holder = RuntimeHolder(runtime)
        self.health.update(runtime.table.sites)
        https = bool(config.server.listen_https)
        path = requestPath(
            config,
            self.reactor,
            holder,
            self.health,
            self.challenges,
            self.certificates if https else None,
            sharedLog=True,
        )
        tree = MultiService()
        httpListeners(
            config, self.reactor, path, self._endpoints("http")
        ).setServiceParent(tree)
        if https:
            termination = tlsTermination(
                config,
                self.reactor,
                path,
                self.challenges,
                self.certificates,
                self._endpoints("https"),
            )
            termination.setServiceParent(tree)
            self.certificates.onChange = termination.publish
            self.termination = termination
        path.setServiceParent(tree)
        shutdown(config, self.reactor, path).setServiceParent(tree)
        tree.startService()
        self.tree = tree
        self.path = path
        self.admin = AdminFactory(
            _NoReload(holder),
            self.reactor,
            operations=Operations(
                limiter=path.limiter,
                metrics=path.metrics,
                reopenLogs=path.observer.reopen,
                poolSizes=lambda: poolSizes(path.pool, holder.current.table.sites),
                tunnels=path.tunnels,
                shared=path.shared,
            ),
        )
        _log.info(
            "Worker serving generation {generation} (pid {pid})",
            generation=generation,
            pid=os.getpid(),
        )

    def _swap(self, config: Config, generation: int) -> None:
        path = self.path
        assert path is not None
        current = path.holder.current
        runtime: Runtime = attrs.evolve(
            buildRuntime(config, self.reactor, previous=current), generation=generation
        )
        followers: list[Any] = [path, path.tunnels]
        if self.termination is not None:
            followers.append(self.termination)
            self.termination.prepare(runtime)
        path.holder.current = runtime
        self.health.update(runtime.table.sites)
        for follower in followers:
            follower.follow(runtime)
        result = Applied(
            generation,
            config.source_sha256,
            siteChanges(current.config, config),
            (),
            (),
        )
        for follower in followers:
            follower.reloadEnded(result)

    def answer(self, name: str, args: list[str]) -> Deferred[Answer]:
        """
        The answer of the admin command C{name}, one of L{WORKER_COMMANDS}.
        """
        if self.admin is None or name not in WORKER_COMMANDS:
            return succeed(
                {"status": "error", "message": f"not a worker's command: {name}"}
            )
        return self.admin.run(name, args)

    def exposition(self) -> bytes:
        """
        The worker's metrics, in the Prometheus text format.
        """
        if self.path is None:
            return b""
        return generate_latest(self.path.metrics.registry)

    def stop(self) -> Deferred[None]:
        """
        Stop serving: drain the client connections, then the rest.
        """
        tree, self.tree = self.tree, None
        if tree is None:
            return succeed(None)
        stopped = tree.stopService()
        return stopped if stopped is not None else succeed(None)


class WorkerProtocol(amp.AMP):
    """
    The worker's end of the AMP conversation with the supervisor.
    """

    def __init__(self, worker: Worker, gone: Any = None) -> None:
        """
        @param gone: called when the supervisor's end closes.
        """
        super().__init__()
        self.worker = worker
        self._gone = gone

    def makeConnection(self, transport: Any) -> None:
        # Without AMP's log lines at every connect and disconnect.
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    @Apply.responder
    def apply(
        self, path: str, config: bytes, static: bytes, generation: int
    ) -> dict[str, Any]:
        self.worker.apply(path, config, static, generation)
        return {}

    @Certificates.responder
    def setCertificates(self, certificates: bytes) -> dict[str, Any]:
        self.worker.certificates.set(decodeCertificates(certificates))
        return {}

    @Challenge.responder
    def challenge(
        self, kind: str, key: str, authorization: str, present: bool
    ) -> dict[str, Any]:
        store = self.worker.challenges
        if kind == "http-01":
            if present:
                store.addHTTP01(key, authorization)
            else:
                store.removeHTTP01(key)
        elif kind == "tls-alpn-01":
            if present:
                store.addTLSALPN01(key, authorization)
            else:
                store.removeTLSALPN01(key)
        else:
            raise ValueError(f"unknown challenge kind {kind!r}")
        return {}

    @Health.responder
    def setHealth(self, states: bytes) -> dict[str, Any]:
        self.worker.health.set(
            (str(site), str(url), bool(healthy))
            for site, url, healthy in json.loads(states)
        )
        return {}

    @Admin.responder
    def admin(self, name: str, args: list[str]) -> Deferred[dict[str, Any]]:
        def encode(answer: Answer) -> dict[str, Any]:
            return {"answer": json.dumps(answer).encode("utf-8")}

        return self.worker.answer(name, args).addCallback(encode)

    @Metrics.responder
    def metrics(self) -> dict[str, Any]:
        return {"exposition": self.worker.exposition()}

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        path = self.worker.path
        return {
            "pid": os.getpid(),
            "generation": 0 if path is None else path.holder.current.generation,
            "connections": 0 if path is None else len(path.tracker.protocols),
        }

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        if self._gone is not None:
            self._gone()


@provider(ILogObserver)
def _logLine(event: dict[str, Any]) -> None:
    """
    Write one log event to standard error as one JSON line, for the
    supervisor to log as its own.
    """
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    level = event.get("log_level")
    line = json.dumps({"level": level.name if level else "info", "text": text})
    try:
        os.write(2, line.encode("utf-8") + b"\n")
    except OSError:
        pass


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="revproxy-worker")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[], type=Inherited.parse)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run a worker: AMP on descriptors 3 (from the supervisor) and 4 (to
    it), until told to stop or the supervisor is gone.
    """
    options = _arguments(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([_logLine], redirectStandardIO=False)
    from revproxy.descriptors import raiseDescriptorLimit

    raiseDescriptorLimit()
    from twisted.internet import reactor as installed

    reactor: Any = installed
    worker = Worker(reactor, options.workers, options.listen)
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping:
            stopping.append(True)
            reactor.stop()

    reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    # POSIX's StandardIO takes the descriptors (mypy sees Windows' too).
    standardIO: Any = stdio.StandardIO
    standardIO(WorkerProtocol(worker, stop), stdin=3, stdout=4, reactor=reactor)

    def onSignal(signum: int, frame: object) -> None:
        reactor.callFromThread(stop)

    def install() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, onSignal)
        for signum in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)

    reactor.callWhenRunning(install)
    reactor.run()


if __name__ == "__main__":
    main()

__all__ = ["Inherited", "RemoteCertificates", "RemoteHealth", "Worker", "main"]
