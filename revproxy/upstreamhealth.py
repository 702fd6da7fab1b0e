# -*- test-case-name: tests.test_upstreamhealth -*-
"""
Active health checks of upstreams, for the sites that configure
C{health_check}.

L{UpstreamHealth} is the pure state of one upstream of one site: healthy or
not, and the counts and last results that decide it.  L{HealthMonitor} is the
service that runs one check loop per site (every C{interval_secs}, every
upstream of the site at once) and attaches the states to the site's
L{UpstreamSelector<revproxy.proxy.pool.UpstreamSelector>}, which then skips
unhealthy upstreams.  The probe that asks an upstream is injected; the
default, L{AgentProbe}, is a C{GET} over L{twisted.web.client.Agent} that
verifies an https upstream exactly as the forwarder does.

The loops re-arm their own timers and catch their own errors instead of using
C{TimerService}, which stops for good after one failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

import attrs
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgent,
    IAgentEndpointFactory,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from revproxy.formatting import oneLine
from revproxy.proxy.pool import localConnectError
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, ClientCreators, UpstreamTLS
from revproxy.throttle import LogThrottle

if TYPE_CHECKING:
    from revproxy.config import HealthCheck, Upstream
    from revproxy.proxy.upstream import PoolKey
    from revproxy.runtime import SiteRoute

_log = Logger()

#: A health check that cannot connect for a local reason is logged at most
#: once this many seconds.
LOCAL_ERROR_LOG_INTERVAL = 60.0

#: The User-Agent of every check.
USER_AGENT = b"revproxy-health-check"
#: A check reads at most this much of an answer's body, then hangs up.
MAX_BODY_BYTES = 64 * 1024
#: The first check of a site comes after a random delay of up to this many
#: seconds (or its interval, if shorter), so that many sites started or
#: reloaded together do not check all at once.
FIRST_CHECK_JITTER = 1.0
#: The longest error kept (and shown) for one upstream.
_MAX_ERROR = 200


Probe = Callable[["Upstream", "PoolKey", "HealthCheck", bytes], Deferred[int]]
"""
Asks one upstream once: C{probe(upstream, key, check, hostHeader)} fires
with the HTTP status of C{GET check.path}, or fails with why there was none.
The monitor applies C{check.timeout_secs} itself, by cancelling the
L{Deferred}.
"""


def statusPassed(status: int) -> bool:
    """
    Whether a check that got C{status} passed: a 2xx or 3xx answer.
    """
    return 200 <= status < 400


class CheckTimedOut(Exception):
    """
    A check got no complete answer within its C{timeout_secs}.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout

    def __str__(self) -> str:
        return f"timeout after {self.timeout:g} s"


def describeFailure(reason: Failure) -> str:
    """
    Why a check failed, in one line for an operator: C{"connection
    refused"}, C{"timeout after 2 s"}, C{"TLS: certificate verify
    failed"}...
    """
    value = reason.value
    # Agent wraps the real causes in ResponseNeverReceived & co.
    while isinstance(reasons := getattr(value, "reasons", None), list):
        inner = [r for r in reasons if isinstance(r, Failure)]
        if not inner:
            break
        value = inner[0].value
    if isinstance(value, CheckTimedOut):
        text = str(value)
    elif isinstance(value, ierror.ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(value, ierror.TimeoutError | DeferredTimeoutError):
        text = "timeout"
    elif isinstance(value, ierror.ConnectionLost | ierror.ConnectionDone):
        text = "connection closed before a complete answer"
    elif isinstance(value, ierror.DNSLookupError):
        text = f"DNS lookup failed: {value}"
    elif isinstance(value, SSL.Error):
        details = [
            str(part[-1])
            for part in (value.args[0] if value.args else [])
            if isinstance(part, tuple) and part
        ]
        text = "TLS: " + ("; ".join(d for d in details if d) or str(value))
    elif isinstance(value, BaseException):
        message = str(value)
        name = type(value).__name__
        text = f"{name}: {message}" if message else name
    else:
        text = reason.getErrorMessage()
    return oneLine(text, _MAX_ERROR)


@attrs.frozen
class UpstreamHealthDescription:
    """
    The health of one upstream of one site at one moment, as the admin
    socket shows it (C{sites}, C{stats}): the upstream's URL and the fields
    of L{UpstreamHealth} of the same names.
    """

    url: str
    healthy: bool
    fails: int
    passes: int
    lastError: str | None
    lastCheck: float | None
    lastStatus: int | None


class UpstreamHealth:
    """
    The health of one upstream of one site, as its checks found it: a pure
    state machine, fed results with L{passed} and L{failed}.

    An upstream starts healthy: it is presumed up until checks say otherwise,
    as HAProxy and nginx do, so that a start-up or a reload never takes a
    working site out of service while its first checks run.  It becomes
    unhealthy after C{fails} consecutive failures (of checks, or of
    connections by proxied requests: L{passiveFailure}) and healthy again
    after C{passes} consecutive passed checks.  Each change of state is
    logged, one line; single checks are not.

    @ivar healthy: Whether the upstream gets traffic.
    @ivar fails: Consecutive failures so far.
    @ivar passes: Consecutive passed checks so far.
    @ivar lastError: Why the last failure failed, one line, or L{None}.
    @ivar lastCheck: When the last check ended (seconds since the epoch),
        or L{None}.
    @ivar lastStatus: The HTTP status of the last check, or L{None} when it
        got none.
    @ivar checks: How many checks have ended.
    """

    def __init__(self, site: str, url: str, fails: int = 3, passes: int = 2) -> None:
        """
        @param site: The site's name, for the log.
        @param url: The upstream's URL, for the log.
        @param fails: Consecutive failures that make a healthy upstream
            unhealthy.
        @param passes: Consecutive passed checks that make an unhealthy
            upstream healthy.
        """
        self.site = site
        self.url = url
        self.failThreshold = fails
        self.passThreshold = passes
        self.healthy = True
        self.fails = 0
        self.passes = 0
        self.lastError: str | None = None
        self.lastCheck: float | None = None
        self.lastStatus: int | None = None
        self.checks = 0

    def passed(self, now: float, status: int) -> bool:
        """
        A check got C{status} (2xx or 3xx) in time.

        @return: Whether the upstream just became healthy.
        """
        self.checks += 1
        self.lastCheck = now
        self.lastStatus = status
        self.fails = 0
        self.passes += 1
        if not self.healthy and self.passes >= self.passThreshold:
            self.healthy = True
            _log.info(
                "site {site}: upstream {upstream} is healthy again after "
                "{count} passed checks (HTTP {status})",
                site=self.site,
                upstream=self.url,
                count=self.passes,
                status=status,
            )
            return True
        return False

    def failed(self, now: float, error: str, status: int | None = None) -> bool:
        """
        A check failed: refused, reset, timed out, TLS verification failed,
        or answered C{status} (not 2xx or 3xx).

        @param error: Why, for an operator (kept on one line).
        @return: Whether the upstream just became unhealthy.
        """
        self.checks += 1
        self.lastCheck = now
        self.lastStatus = status
        return self._failure(error)

    def passiveFailure(self, now: float, error: str) -> bool:
        """
        A proxied request could not connect to the upstream: one more
        failure, as a failed check would be (so a dead upstream is taken out
        after C{fails} failures of real traffic, even between checks).  Only
        checks bring an unhealthy upstream back.

        @return: Whether the upstream just became unhealthy.
        """
        return self._failure(f"{error} (proxied request)")

    def _failure(self, error: str) -> bool:
        self.lastError = oneLine(error, _MAX_ERROR)
        self.passes = 0
        self.fails += 1
        if self.healthy and self.fails >= self.failThreshold:
            self.healthy = False
            _log.warn(
                "site {site}: upstream {upstream} is unhealthy after {count} "
                "failures: {reason}",
                site=self.site,
                upstream=self.url,
                count=self.fails,
                reason=self.lastError,
            )
            return True
        return False

    def describe(self) -> UpstreamHealthDescription:
        """
        The state now, as the admin socket shows it.
        """
        return UpstreamHealthDescription(
            url=self.url,
            healthy=self.healthy,
            fails=self.fails,
            passes=self.passes,
            lastError=self.lastError,
            lastCheck=self.lastCheck,
            lastStatus=self.lastStatus,
        )


class _SiteChecks:
    """
    The check loop of one site: its upstreams' states, the checks in flight
    and the timer of the next round.
    """

    def __init__(self, name: str, check: HealthCheck) -> None:
        self.name = name
        self.check = check
        #: By upstream URL, in config order.
        self.states: dict[str, UpstreamHealth] = {}
        self.targets: dict[str, tuple[Upstream, PoolKey]] = {}
        self.hostHeader = b""
        self.inflight: dict[str, Deferred[int]] = {}
        self.timer: IDelayedCall | None = None
        self.stopped = False

    def follow(self, route: SiteRoute) -> None:
        """
        Check C{route}'s upstreams from now on: states of upstreams still
        there are kept, new ones start healthy, removed ones are dropped.
        """
        self.hostHeader = route.fallbackHost
        targets: dict[str, tuple[Upstream, PoolKey]] = {}
        for upstream in route.config.upstreams:
            targets[upstream.url] = (upstream, route.keys[upstream])
            if upstream.url not in self.states:
                self.states[upstream.url] = UpstreamHealth(
                    self.name, upstream.url, self.check.fails, self.check.passes
                )
        for url in list(self.states):
            if url not in targets:
                del self.states[url]
                checking = self.inflight.pop(url, None)
                if checking is not None:
                    checking.cancel()
        self.states = {url: self.states[url] for url in targets}
        self.targets = targets

    def stop(self) -> None:
        """
        Cancel the next round and every check in flight.
        """
        self.stopped = True
        self.disarm()
        inflight = list(self.inflight.values())
        self.inflight.clear()
        for checking in inflight:
            checking.cancel()

    def disarm(self) -> None:
        timer = self.timer
        self.timer = None
        if timer is not None and timer.active():
            timer.cancel()


class HealthMonitor(Service):
    """
    Runs the active health checks of every site with a C{health_check}, one
    loop per site, and attaches each site's upstream states to its selector.

    Call L{update} with the routes of a runtime before that runtime serves
    (at start-up and before each reload swaps it in).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        probe: Probe | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """
        @param reactor: The clock of the loops and timeouts; the default
            probe also connects with it, so it must then be a real reactor
            (L{IReactorTCP} too).
        @param probe: How an upstream is asked; L{AgentProbe} by default.
        @param rng: The source of the first check's jitter.
        """
        self._reactor = reactor
        self._probe: Probe = probe if probe is not None else AgentProbe(reactor)
        self._rng = rng or random.Random()
        #: Checks that could not connect for a local reason are logged once
        #: a minute at most.
        self._localErrors = LogThrottle(reactor, LOCAL_ERROR_LOG_INTERVAL)
        self._sites: dict[str, _SiteChecks] = {}

    # -- following the config

    def update(self, routes: Iterable[SiteRoute]) -> None:
        """
        Follow a new runtime's sites: attach each checked site's states to
        its selector (C{selector.health}), and C{None} to the others.

        States are carried over by site name, upstream URL and identical
        C{health_check} settings: a site whose checks did not change keeps
        its states and its loop's rhythm; one whose C{health_check} changed
        starts afresh; loops of sites gone or no longer checked stop.
        """
        wanted: dict[str, SiteRoute] = {}
        for route in routes:
            if route.config.health_check is None:
                route.selector.health = None
            else:
                wanted[route.name] = route
        for name, running in list(self._sites.items()):
            still = wanted.get(name)
            if still is None or still.config.health_check != running.check:
                del self._sites[name]
                running.stop()
        for name, route in wanted.items():
            existing = self._sites.get(name)
            new = existing is None
            if existing is None:
                check = route.config.health_check
                assert check is not None
                loop = self._sites[name] = _SiteChecks(name, check)
            else:
                loop = existing
            loop.follow(route)
            byUpstream = {u: loop.states[u.url] for u in route.config.upstreams}
            # Keyed by the selector's own upstream objects.
            route.selector.health = {
                u: byUpstream[u] for u in route.selector.upstreams if u in byUpstream
            }
            if new and self.running:
                self._armFirst(loop)

    # -- the service

    def startService(self) -> None:
        super().startService()
        for loop in self._sites.values():
            loop.stopped = False
            self._armFirst(loop)

    def stopService(self) -> None:
        super().stopService()
        for loop in self._sites.values():
            loop.stop()

    # -- the loops

    def _armFirst(self, loop: _SiteChecks) -> None:
        interval = loop.check.interval_secs
        delay = self._rng.uniform(0.0, min(FIRST_CHECK_JITTER, interval))
        loop.disarm()
        loop.timer = self._reactor.callLater(delay, self._round, loop)

    def _round(self, loop: _SiteChecks) -> None:
        """
        Check every upstream of C{loop}'s site at once (but one whose last
        check is still running), then come back in C{interval_secs}.  Never
        raises: a failure is logged and the next round still comes.
        """
        loop.timer = None
        if loop.stopped:
            return
        try:
            for url in list(loop.targets):
                if url in loop.inflight:
                    continue
                try:
                    self._start(loop, url)
                except Exception:
                    _log.failure(
                        "site {site}: the health check of {upstream} could not "
                        "start; it is not counted",
                        site=loop.name,
                        upstream=url,
                    )
        except Exception:
            _log.failure("site {site}: a health check round failed", site=loop.name)
        # Armed after the checks started, so that a check's timeout (no
        # longer than the interval) comes before the next round.
        if self.running and not loop.stopped:
            loop.timer = self._reactor.callLater(
                loop.check.interval_secs, self._round, loop
            )

    def _start(self, loop: _SiteChecks, url: str) -> None:
        """
        Start one check of C{url}; its result goes to the upstream's state.
        """
        state = loop.states[url]
        upstream, key = loop.targets[url]
        check = loop.check
        checking = self._probe(upstream, key, check, loop.hostHeader)

        def timedOut(result: object, timeout: float) -> Failure:
            # Whatever the probe did when it was cancelled, it was too slow.
            return Failure(CheckTimedOut(timeout))

        checking.addTimeout(check.timeout_secs, self._reactor, timedOut)
        loop.inflight[url] = checking

        def current() -> bool:
            if loop.inflight.get(url) is checking:
                del loop.inflight[url]
            return not loop.stopped and loop.states.get(url) is state

        def answered(status: int) -> None:
            if not current():
                return
            now = self._reactor.seconds()
            if statusPassed(status):
                state.passed(now, status)
            else:
                state.failed(now, f"HTTP {status}", status)

        def failed(reason: Failure) -> None:
            if not current():
                return
            if localConnectError(reason) is not None:
                # Out of descriptors, buffers or memory here: nothing is
                # known of the upstream, so nothing is counted against it.
                if self._localErrors.due() is not None:
                    _log.warn(
                        "site {site}: the health check of {upstream} could not "
                        "connect for a local reason ({error}); not counted",
                        site=loop.name,
                        upstream=url,
                        error=describeFailure(reason),
                    )
                return
            state.failed(self._reactor.seconds(), describeFailure(reason))

        def bug(reason: Failure) -> None:
            _log.failure(
                "site {site}: the result of the health check of {upstream} "
                "could not be recorded",
                reason,
                site=loop.name,
                upstream=url,
            )

        checking.addCallbacks(answered, failed).addErrback(bug)

    # -- reading the states

    def describe(self, siteName: str) -> list[UpstreamHealthDescription]:
        """
        The health of each upstream of C{siteName}, in config order, for the
        admin socket; empty when the site has no health checks.
        """
        loop = self._sites.get(siteName)
        if loop is None:
            return []
        return [state.describe() for state in loop.states.values()]

    def states(self) -> Iterator[tuple[str, str, bool]]:
        """
        (site, upstream URL, healthy) for every checked upstream, for
        metrics.
        """
        for name, loop in self._sites.items():
            for url, state in loop.states.items():
                yield name, url, state.healthy


# -- the default probe


@implementer(IPolicyForHTTPS)
class UpstreamTLSPolicy:
    """
    How L{AgentProbe} verifies an https upstream: with the connection
    creator the forwarder uses for the same host and site settings.
    """

    def __init__(self, creators: ClientCreators, host: str, settings: UpstreamTLS):
        self._creators = creators
        self._host = host
        self._settings = settings

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        # The pool key's host, not the URL's (an IPv6 one is in brackets).
        return self._creators.creatorFor(self._host, self._settings)


class _Discard(Protocol):
    """
    Reads an answer's body and drops it; fires C{finished} with the status
    at its end, or once C{limit} bytes came (then hangs up).
    """

    def __init__(self, status: int, limit: int, finished: Deferred[int]) -> None:
        self.status = status
        self.limit = limit
        self.finished = finished
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.received += len(data)
        if self.received >= self.limit:
            self.finished.callback(self.status)
            self.stop()

    def stop(self) -> None:
        # Agent's body transport is a producer: stopping it hangs up.
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(self.status)
        else:
            self.finished.errback(reason)


def _target(path: str) -> bytes:
    """
    C{path} as a request-target: non-ASCII characters percent-encoded as
    UTF-8, the rest as configured.
    """
    return quote(path, safe="".join(chr(c) for c in range(0x21, 0x7F))).encode("ascii")


@implementer(IAgentEndpointFactory)
class _UpstreamEndpoint:
    """
    Where L{AgentProbe}'s agent connects: the pool key's host and port,
    with C{reactor.connectTCP} as the forwarder does (so a check takes the
    path traffic takes, and an IP address needs no resolver), and TLS from
    the policy for https.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        key: PoolKey,
        policy: IPolicyForHTTPS,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._key = key
        self._policy = policy
        self._timeout = timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        scheme, host, port, _settings = self._key
        reactor = cast(IReactorTCP, self._reactor)
        endpoint: IStreamClientEndpoint
        if ":" in host:
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=self._timeout)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=self._timeout)
        if scheme == "https":
            creator = self._policy.creatorForNetloc(host.encode("ascii"), port)
            return wrapClientTLS(creator, endpoint)
        return endpoint


class AgentProbe:
    """
    The default L{Probe}: C{GET check.path} with L{Agent}, a connection per
    check (C{HTTPConnectionPool(persistent=False)}), C{check.timeout_secs}
    to connect, the site's Host, C{User-Agent: revproxy-health-check}, and
    an https upstream verified as the forwarder verifies it.  At most
    L{MAX_BODY_BYTES} of the body are read, and dropped.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        creators: ClientCreators | None = None,
        maxBody: int = MAX_BODY_BYTES,
    ) -> None:
        """
        @param reactor: A real reactor (L{IReactorTCP} and L{IReactorTime}).
        @param creators: The TLS connection creators; a new set by default.
        """
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._creators = creators if creators is not None else ClientCreators()
        self._maxBody = maxBody

    def __call__(
        self, upstream: Upstream, key: PoolKey, check: HealthCheck, hostHeader: bytes
    ) -> Deferred[int]:
        policy = UpstreamTLSPolicy(self._creators, key[1], key[3] or SYSTEM_TRUST)
        agent: IAgent = Agent.usingEndpointFactory(
            self._reactor,
            _UpstreamEndpoint(self._reactor, key, policy, check.timeout_secs),
            pool=self._pool,
        )
        headers = Headers({b"host": [hostHeader], b"user-agent": [USER_AGENT]})
        url = upstream.url.encode("ascii") + _target(check.path)
        return agent.request(b"GET", url, headers).addCallback(self._drain)

    def _drain(self, response: IResponse) -> Deferred[int]:
        discard: _Discard

        def cancel(d: Deferred[int]) -> None:
            discard.stop()

        finished: Deferred[int] = Deferred(cancel)
        discard = _Discard(response.code, self._maxBody, finished)
        response.deliverBody(discard)
        return finished
