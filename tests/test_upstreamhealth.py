# -*- test-case-name: tests.test_upstreamhealth -*-
"""
Tests for L{revproxy.upstreamhealth}: the per-upstream state machine, the monitor's
check loops driven by a L{Clock} and a fake probe, and the default probe
driven over a L{MemoryReactorClock}; no sockets.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Sequence
from typing import Any, cast

import attrs
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IReactorTime,
)
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransport,
)
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface.verify import verifyObject

from revproxy.config import HealthCheck, SiteConfig, Upstream
from revproxy.proxy.pool import UpstreamSelector
from revproxy.proxy.upstream import PoolKey
from revproxy.proxy.upstreamtls import ClientCreators, UpstreamTLS
from revproxy.runtime import SiteRoute
from revproxy.upstreamhealth import (
    MAX_BODY_BYTES,
    USER_AGENT,
    AgentProbe,
    CheckTimedOut,
    HealthMonitor,
    Probe,
    UpstreamHealth,
    UpstreamHealthDescription,
    UpstreamTLSPolicy,
    describeFailure,
    statusPassed,
)

CHECK = HealthCheck(path="/healthz", interval_secs=10.0, timeout_secs=2.0)


def upstream(n: int, scheme: str = "http") -> Upstream:
    """
    Upstream number C{n}: C{http://10.0.0.n:8000}.
    """
    return Upstream(f"{scheme}://10.0.0.{n}:8000", scheme, f"10.0.0.{n}", 8000)


A, B, C = upstream(1), upstream(2), upstream(3)


def route(
    name: str = "app",
    upstreams: Sequence[Upstream] = (A, B, C),
    check: HealthCheck | None = CHECK,
    clock: IReactorTime | None = None,
    hosts: tuple[str, ...] = ("app.example",),
    selector: UpstreamSelector[Upstream] | None = None,
) -> SiteRoute:
    """
    A site's route with its own selector, as a runtime builds it.
    """
    config = SiteConfig(
        name=name, hosts=hosts, upstreams=tuple(upstreams), health_check=check
    )
    if selector is None:
        selector = UpstreamSelector(config.upstreams, clock or Clock())
    return SiteRoute(config, selector)


class FixedRandom(random.Random):
    """
    A random source whose C{uniform} always answers its upper bound (the
    longest jitter), and remembers what it was asked.
    """

    def __init__(self) -> None:
        super().__init__(0)
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return b


@attrs.define
class ProbeCall:
    """
    One check the fake probe was asked for.
    """

    upstream: Upstream
    key: PoolKey
    check: HealthCheck
    hostHeader: bytes
    result: Deferred[int]
    cancelled: bool = False


class FakeProbe:
    """
    A probe whose answers the test gives: every call returns a new
    L{Deferred} that the test fires (or not).
    """

    def __init__(self) -> None:
        self.calls: list[ProbeCall] = []
        self.raiseFor: set[str] = set()

    def __call__(
        self, upstream: Upstream, key: PoolKey, check: HealthCheck, hostHeader: bytes
    ) -> Deferred[int]:
        if upstream.url in self.raiseFor:
            raise RuntimeError("probe bug")

        def cancel(d: Deferred[int]) -> None:
            call.cancelled = True

        call = ProbeCall(upstream, key, check, hostHeader, Deferred(cancel))
        self.calls.append(call)
        return call.result

    def pending(self) -> list[ProbeCall]:
        """
        The calls not answered yet.
        """
        return [c for c in self.calls if not c.result.called]

    def urls(self) -> list[str]:
        """
        The URL of each call, in order.
        """
        return [c.upstream.url for c in self.calls]

    def answer(self, status: int, url: str | None = None) -> None:
        """
        Answer every pending call (of C{url}, if given) with C{status}.
        """
        for call in self.pending():
            if url is None or call.upstream.url == url:
                call.result.callback(status)


def _observe(case: SynchronousTestCase) -> EventLoggingObserver:
    """
    Collect the log events emitted until C{case} ends.
    """
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    case.addCleanup(globalLogPublisher.removeObserver, events)
    return events


def answering(status: int) -> Probe:
    """
    A probe whose every check gets C{status} at once.
    """

    def probe(
        upstream: Upstream, key: PoolKey, check: HealthCheck, hostHeader: bytes
    ) -> Deferred[int]:
        return succeed(status)

    return probe


def _transitions(events: EventLoggingObserver) -> list[dict[str, Any]]:
    """
    The events that say an upstream changed state.
    """
    return [
        e
        for e in events
        if "upstream" in e
        and "count" in e
        and e.get("log_namespace", "").startswith("revproxy.upstreamhealth")
    ]


class StatusTests(SynchronousTestCase):
    """
    Tests for L{statusPassed}.
    """

    def test_passing(self) -> None:
        """
        2xx and 3xx answers pass.
        """
        for status in (200, 204, 299, 301, 304, 399):
            self.assertTrue(statusPassed(status), status)

    def test_failing(self) -> None:
        """
        1xx, 4xx and 5xx answers fail.
        """
        for status in (101, 199, 400, 404, 429, 500, 502, 503):
            self.assertFalse(statusPassed(status), status)


class DescribeFailureTests(SynchronousTestCase):
    """
    Tests for L{describeFailure}: one line an operator can read.
    """

    def test_refused(self) -> None:
        """
        A refused connection says so.
        """
        self.assertEqual(
            describeFailure(Failure(ConnectionRefusedError())), "connection refused"
        )

    def test_timeout(self) -> None:
        """
        A check timeout names the timeout.
        """
        self.assertEqual(
            describeFailure(Failure(CheckTimedOut(2.5))), "timeout after 2.5 s"
        )

    def test_unwrapsAgentErrors(self) -> None:
        """
        The cause inside Agent's C{ResponseNeverReceived} is described, here
        a TLS verification failure.
        """
        tls = SSL.Error([("SSL routines", "", "certificate verify failed")])
        reason = Failure(ResponseNeverReceived([Failure(tls)]))
        self.assertEqual(describeFailure(reason), "TLS: certificate verify failed")

    def test_otherOneLine(self) -> None:
        """
        Any other error is its type and message on one line, shortened.
        """
        text = describeFailure(Failure(ValueError("bad\nthing " + "x" * 500)))
        self.assertTrue(text.startswith("ValueError: bad thing x"), text)
        self.assertNotIn("\n", text)
        self.assertLessEqual(len(text), 200)


class UpstreamHealthTests(SynchronousTestCase):
    """
    Tests for L{UpstreamHealth}, the pure state machine.
    """

    def setUp(self) -> None:
        self.events = _observe(self)
        self.state = UpstreamHealth("app", A.url, fails=3, passes=2)

    def test_startsHealthy(self) -> None:
        """
        A new upstream is presumed healthy, with nothing checked yet.
        """
        state = self.state
        self.assertTrue(state.healthy)
        self.assertEqual((state.fails, state.passes, state.checks), (0, 0, 0))
        self.assertIsNone(state.lastError)
        self.assertIsNone(state.lastCheck)
        self.assertIsNone(state.lastStatus)

    def test_unhealthyAtExactlyFails(self) -> None:
        """
        A healthy upstream turns unhealthy at the C{fails}th consecutive
        failure, not before; only that failure reports the change.
        """
        state = self.state
        self.assertFalse(state.failed(1.0, "HTTP 500", 500))
        self.assertFalse(state.failed(2.0, "HTTP 500", 500))
        self.assertTrue(state.healthy)
        self.assertTrue(state.failed(3.0, "HTTP 500", 500))
        self.assertFalse(state.healthy)
        self.assertFalse(state.failed(4.0, "HTTP 500", 500))
        self.assertFalse(state.healthy)

    def test_passResetsFails(self) -> None:
        """
        A passed check in between restarts the count of failures.
        """
        state = self.state
        state.failed(1.0, "HTTP 500", 500)
        state.failed(2.0, "HTTP 500", 500)
        state.passed(3.0, 200)
        state.failed(4.0, "HTTP 500", 500)
        state.failed(5.0, "HTTP 500", 500)
        self.assertTrue(state.healthy)
        self.assertEqual(state.fails, 2)

    def test_healthyAtExactlyPasses(self) -> None:
        """
        An unhealthy upstream turns healthy at the C{passes}th consecutive
        passed check, not before.
        """
        state = self.state
        for t in range(3):
            state.failed(float(t), "refused")
        self.assertFalse(state.passed(10.0, 200))
        self.assertFalse(state.healthy)
        self.assertTrue(state.passed(11.0, 204))
        self.assertTrue(state.healthy)

    def test_failResetsPasses(self) -> None:
        """
        A failure in between restarts the count of passes.
        """
        state = self.state
        for t in range(3):
            state.failed(float(t), "refused")
        state.passed(10.0, 200)
        state.failed(11.0, "refused")
        state.passed(12.0, 200)
        self.assertFalse(state.healthy)
        self.assertEqual(state.passes, 1)

    def test_records(self) -> None:
        """
        Each check records when it ended, its status and, when it failed,
        why; and counts.
        """
        state = self.state
        state.failed(5.0, "HTTP 503", 503)
        self.assertEqual(
            (state.lastCheck, state.lastStatus, state.lastError, state.checks),
            (5.0, 503, "HTTP 503", 1),
        )
        state.failed(6.0, "timeout after 2 s")
        self.assertEqual(
            (state.lastCheck, state.lastStatus, state.lastError, state.checks),
            (6.0, None, "timeout after 2 s", 2),
        )
        state.passed(7.0, 200)
        self.assertEqual(
            (state.lastCheck, state.lastStatus, state.checks), (7.0, 200, 3)
        )
        # The last error stays for the operator to read.
        self.assertEqual(state.lastError, "timeout after 2 s")

    def test_errorOneLine(self) -> None:
        """
        A recorded error is kept on one line.
        """
        self.state.failed(1.0, "first\nsecond\r\n third")
        self.assertEqual(self.state.lastError, "first second third")

    def test_passiveFailure(self) -> None:
        """
        A connection failure of a proxied request counts as one failure but
        not as a check.
        """
        state = self.state
        state.passed(1.0, 200)
        self.assertFalse(state.passiveFailure(2.0, "connection failed"))
        self.assertEqual((state.fails, state.passes), (1, 0))
        self.assertEqual(
            (state.checks, state.lastCheck, state.lastStatus), (1, 1.0, 200)
        )
        self.assertEqual(state.lastError, "connection failed (proxied request)")
        state.passiveFailure(3.0, "connection failed")
        self.assertTrue(state.passiveFailure(4.0, "connection failed"))
        self.assertFalse(state.healthy)

    def test_logsTransitionsOnly(self) -> None:
        """
        One line is logged per change of state, naming the site, the
        upstream and why; none per check.
        """
        state = self.state
        for t in range(5):
            state.failed(float(t), "HTTP 502", 502)
        for t in range(5):
            state.passed(10.0 + t, 200)
        events = _transitions(self.events)
        self.assertEqual(len(events), 2)
        down, up = events
        self.assertEqual(down["log_level"], LogLevel.warn)
        self.assertEqual((down["site"], down["upstream"]), ("app", A.url))
        self.assertEqual(down["reason"], "HTTP 502")
        self.assertEqual(up["log_level"], LogLevel.info)
        self.assertEqual(up["status"], 200)

    def test_describe(self) -> None:
        """
        The admin view has the URL, the state, the counts, the last error,
        the last check's time and its status.
        """
        self.assertEqual(
            self.state.describe(),
            UpstreamHealthDescription(
                url=A.url,
                healthy=True,
                fails=0,
                passes=0,
                lastError=None,
                lastCheck=None,
                lastStatus=None,
            ),
        )
        self.state.failed(1700000000.0, "HTTP 500", 500)
        self.assertEqual(
            self.state.describe(),
            UpstreamHealthDescription(
                url=A.url,
                healthy=True,
                fails=1,
                passes=0,
                lastError="HTTP 500",
                lastCheck=1700000000.0,
                lastStatus=500,
            ),
        )


class MonitorTestMixin:
    """
    A monitor on a L{Clock} with a L{FakeProbe} and the longest jitter.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.probe = FakeProbe()
        self.rng = FixedRandom()
        self.monitor = HealthMonitor(self.clock, self.probe, rng=self.rng)

    def route(self, *args: Any, **kwargs: Any) -> SiteRoute:
        kwargs.setdefault("clock", self.clock)
        return route(*args, **kwargs)

    def started(self, *routes: SiteRoute) -> None:
        """
        Give the monitor C{routes}, start it and run the first round.
        """
        self.monitor.update(routes)
        self.monitor.startService()
        cast(SynchronousTestCase, self).addCleanup(self.monitor.stopService)
        self.clock.advance(1.0)

    def rounds(self, n: int, status: int | None, check: HealthCheck = CHECK) -> None:
        """
        Answer what is pending with C{status} (if any), then run C{n} more
        rounds, each answered alike.
        """
        for _ in range(n):
            if status is not None:
                self.probe.answer(status)
            self.clock.advance(check.interval_secs)
        if status is not None:
            self.probe.answer(status)


class MonitorLoopTests(MonitorTestMixin, SynchronousTestCase):
    """
    Tests for the check loops of L{HealthMonitor}.
    """

    def test_nothingBeforeStart(self) -> None:
        """
        L{HealthMonitor.update} before the service starts attaches the
        states but checks nothing and schedules nothing.
        """
        r = self.route()
        self.monitor.update([r])
        self.assertIsNotNone(r.selector.health)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_firstRoundJittered(self) -> None:
        """
        The first round comes after a random delay of at most a second (or
        the interval, when shorter), then every interval.
        """
        short = HealthCheck(path="/", interval_secs=0.5, timeout_secs=0.5)
        self.monitor.update([self.route(), self.route("short", check=short)])
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.assertEqual(sorted(self.rng.asked), [(0.0, 0.5), (0.0, 1.0)])
        self.clock.advance(0.99)
        self.assertEqual(self.probe.urls(), [A.url, B.url, C.url])
        self.probe.calls.clear()
        self.clock.advance(0.01)
        self.assertEqual(self.probe.urls(), [A.url, B.url, C.url])
        self.probe.answer(200)
        self.probe.calls.clear()
        self.clock.advance(9.99)
        self.assertEqual(
            [c.upstream.url for c in self.probe.calls if c.check is CHECK], []
        )
        self.clock.advance(0.01)
        self.assertEqual(
            [c.upstream.url for c in self.probe.calls if c.check is CHECK],
            [A.url, B.url, C.url],
        )

    def test_allUpstreamsAtOnce(self) -> None:
        """
        A round starts the checks of all the site's upstreams before any
        answers, each with its key, the site's check and Host.
        """
        r = self.route(hosts=("*.example.com", "app.example.com"))
        self.started(r)
        self.assertEqual(len(self.probe.pending()), 3)
        for call, u in zip(self.probe.calls, (A, B, C), strict=True):
            self.assertEqual(call.upstream, u)
            self.assertEqual(call.key, r.keys[u])
            self.assertIs(call.check, CHECK)
            self.assertEqual(call.hostHeader, b"app.example.com")

    def test_neverOverlaps(self) -> None:
        """
        While an upstream's check runs, a round does not start another for
        it; the other upstreams are still checked.
        """
        slow = HealthCheck(path="/", interval_secs=5.0, timeout_secs=12.0)
        self.started(self.route(check=slow))
        for _ in range(2):
            self.probe.answer(200, B.url)
            self.probe.answer(200, C.url)
            self.clock.advance(5.0)
        self.assertEqual(
            self.probe.urls(), [A.url, B.url, C.url, B.url, C.url, B.url, C.url]
        )
        # A's check times out at 13; the round at 16 checks it again.
        self.clock.advance(3.0)
        self.assertEqual(self.monitor.describe("app")[0].fails, 1)
        self.probe.answer(200)
        self.clock.advance(3.0)
        self.assertEqual(self.probe.urls()[7:], [A.url, B.url, C.url])

    def test_timeoutEqualToIntervalEveryRound(self) -> None:
        """
        With a timeout as long as the interval, a check that never answers
        times out just before the next round, which checks again.
        """
        check = HealthCheck(path="/", interval_secs=5.0, timeout_secs=5.0, fails=2)
        r = self.route(upstreams=(A,), check=check)
        self.started(r)
        self.clock.advance(5.0)
        self.assertEqual(self.probe.urls(), [A.url, A.url])
        self.clock.advance(5.0)
        self.assertEqual(len(self.probe.calls), 3)
        self.assertFalse(self.monitor.describe("app")[0].healthy)

    def test_unhealthyThenHealthy(self) -> None:
        """
        Failing checks make an upstream unhealthy after C{fails} rounds and
        the selector skips it; passing ones bring it back after C{passes}.
        """
        r = self.route()
        self.started(r)
        self.probe.answer(200)
        for n in range(CHECK.fails):
            self.clock.advance(CHECK.interval_secs)
            self.probe.answer(200, A.url)
            self.probe.answer(200, C.url)
            self.probe.answer(500, B.url)
            self.assertEqual(
                [s.healthy for s in self.monitor.describe("app")],
                [True, n + 1 < CHECK.fails, True],
            )
        self.assertEqual({r.selector.pick() for _ in range(6)}, {A, C})
        for n in range(CHECK.passes):
            self.clock.advance(CHECK.interval_secs)
            self.probe.answer(200)
            self.assertEqual(
                self.monitor.describe("app")[1].healthy, n + 1 == CHECK.passes
            )
        self.assertEqual({r.selector.pick() for _ in range(6)}, {A, B, C})

    def test_localConnectErrorNotCounted(self) -> None:
        """
        A check that cannot connect for a local reason (EMFILE, ENFILE,
        ENOBUFS, ENOMEM, EADDRNOTAVAIL: this process or host is short of
        something) is not counted against the upstream, and is logged at
        most once a minute; a refused connection still counts.
        """
        events = _observe(self)
        r = self.route(upstreams=(A,))
        self.started(r)
        for _ in range(CHECK.fails + 1):
            for number in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
                for call in self.probe.pending():
                    call.result.errback(
                        ierror.ConnectBindError(number, os.strerror(number))
                    )
                self.clock.advance(CHECK.interval_secs)
        [state] = cast(dict[object, UpstreamHealth], r.selector.health).values()
        self.assertEqual((state.healthy, state.fails), (True, 0))
        local = [e for e in events if "local reason" in e.get("log_format", "")]
        minutes = (CHECK.fails + 1) * 3 * CHECK.interval_secs // 60
        self.assertTrue(1 <= len(local) <= 1 + minutes, (len(local), minutes))
        self.assertLess(len(local), (CHECK.fails + 1) * 3)
        for call in self.probe.pending():
            call.result.errback(ConnectionRefusedError())
        self.assertEqual(state.fails, 1)

    def test_statusesThatFail(self) -> None:
        """
        A 4xx or 5xx answer fails, and is recorded with its status.
        """
        for status in (404, 503):
            monitor = HealthMonitor(self.clock, answering(status))
            r = self.route(upstreams=(A,))
            monitor.update([r])
            monitor.startService()
            self.clock.advance(1.0)
            monitor.stopService()
            [state] = cast(dict[object, UpstreamHealth], r.selector.health).values()
            self.assertEqual(
                (state.fails, state.lastStatus, state.lastError),
                (1, status, f"HTTP {status}"),
            )

    def test_redirectPasses(self) -> None:
        """
        A 3xx answer passes.
        """
        self.started(self.route(upstreams=(A,)))
        self.probe.answer(302)
        [info] = self.monitor.describe("app")
        self.assertEqual((info.passes, info.lastStatus), (1, 302))

    def test_timeoutFails(self) -> None:
        """
        A check with no answer after C{timeout_secs} is cancelled and fails
        with the timeout as its reason.
        """
        self.started(self.route(upstreams=(A,)))
        self.clock.advance(1.99)
        [call] = self.probe.calls
        self.assertFalse(call.cancelled)
        self.clock.advance(0.01)
        self.assertTrue(call.cancelled)
        [info] = self.monitor.describe("app")
        self.assertEqual(
            (info.fails, info.lastError, info.lastStatus),
            (1, "timeout after 2 s", None),
        )

    def test_timeoutWhateverTheProbeDoes(self) -> None:
        """
        A probe that fails with its own error when cancelled still counts
        as timed out.
        """

        def probe(*args: object) -> Deferred[int]:
            return Deferred(lambda d: d.errback(ConnectionRefusedError()))

        monitor = HealthMonitor(self.clock, probe)
        monitor.update([self.route(upstreams=(A,))])
        monitor.startService()
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        monitor.stopService()
        self.assertEqual(monitor.describe("app")[0].lastError, "timeout after 2 s")

    def test_probeFailureRecorded(self) -> None:
        """
        A probe that fails records why.
        """
        self.started(self.route(upstreams=(A,)))
        self.probe.calls[0].result.errback(ConnectionRefusedError())
        [info] = self.monitor.describe("app")
        self.assertEqual((info.fails, info.lastError), (1, "connection refused"))

    def test_probeRaisesSynchronously(self) -> None:
        """
        A probe that raises is logged and not counted; the other upstreams
        are still checked and the next round still comes.
        """
        self.probe.raiseFor.add(B.url)
        self.started(self.route())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.probe.urls(), [A.url, C.url])
        self.assertEqual(self.monitor.describe("app")[1].fails, 0)
        self.probe.answer(200)
        self.probe.raiseFor.clear()
        self.clock.advance(CHECK.interval_secs)
        self.assertEqual(self.probe.urls()[2:], [A.url, B.url, C.url])

    def test_bugInResultLogged(self) -> None:
        """
        An error while recording a result is logged and the loop goes on.
        """
        self.started(self.route(upstreams=(A,)))
        self.probe.calls[0].result.callback(cast(int, "not a status"))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.clock.advance(CHECK.interval_secs)
        self.assertEqual(len(self.probe.calls), 2)
        self.probe.answer(200)
        self.assertEqual(self.monitor.describe("app")[0].passes, 1)

    def test_stopCancelsEverything(self) -> None:
        """
        Stopping the service cancels the checks in flight (without counting
        them) and every timer.
        """
        self.started(self.route(), self.route("other"))
        self.assertEqual(len(self.probe.pending()), 6)
        self.monitor.stopService()
        self.assertTrue(all(c.cancelled for c in self.probe.calls))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([s.fails for s in self.monitor.describe("app")], [0, 0, 0])

    def test_stopBetweenRounds(self) -> None:
        """
        Stopping between rounds leaves nothing on the clock, and a restart
        checks again with the states kept.
        """
        self.started(self.route())
        self.probe.answer(500)
        self.monitor.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.monitor.startService()
        self.clock.advance(1.0)
        self.assertEqual(len(self.probe.pending()), 3)
        self.probe.answer(500)
        self.assertEqual([s.fails for s in self.monitor.describe("app")], [2, 2, 2])


class MonitorUpdateTests(MonitorTestMixin, SynchronousTestCase):
    """
    Tests for L{HealthMonitor.update}: states attached to selectors and
    carried over reloads.
    """

    def states(self, r: SiteRoute) -> dict[object, UpstreamHealth]:
        health = r.selector.health
        assert health is not None
        return cast(dict[object, UpstreamHealth], health)

    def test_attachedBySelectorUpstreams(self) -> None:
        """
        The selector's health map is keyed by the selector's own upstream
        objects.
        """
        selector = UpstreamSelector(
            [Upstream(u.url, u.scheme, u.host, u.port) for u in (A, B, C)], self.clock
        )
        r = self.route(selector=selector)
        self.monitor.update([r])
        keys = list(self.states(r))
        self.assertEqual(len(keys), 3)
        for key, own in zip(keys, selector.upstreams, strict=True):
            self.assertIs(key, own)

    def test_noHealthCheck(self) -> None:
        """
        A site without C{health_check} gets no health map and no loop.
        """
        r = self.route(check=None)
        r.selector.health = {}
        self.started(r)
        self.assertIsNone(r.selector.health)
        self.assertEqual(self.monitor.describe("app"), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unchangedKeepsStatesAndRhythm(self) -> None:
        """
        A reload that leaves a site's checks alone keeps its states (now on
        the new selector) and its loop: no extra round, no lost one.
        """
        old = self.route()
        self.started(old)
        self.probe.answer(500)
        timers = self.clock.getDelayedCalls()
        new = self.route()
        self.monitor.update([new])
        self.assertEqual(self.clock.getDelayedCalls(), timers)
        for u in (A, B, C):
            self.assertIs(self.states(new)[u], self.states(old)[u])
        self.assertEqual(len(self.probe.calls), 3)
        self.clock.advance(CHECK.interval_secs)
        self.assertEqual(len(self.probe.calls), 6)

    def test_checkInFlightSurvivesUnchanged(self) -> None:
        """
        A check in flight during a reload that leaves the site alone is
        still counted.
        """
        self.started(self.route())
        self.monitor.update([self.route()])
        self.probe.answer(500)
        self.assertEqual([s.fails for s in self.monitor.describe("app")], [1, 1, 1])

    def test_changedCheckRestarts(self) -> None:
        """
        A changed C{health_check} starts the site's states afresh, cancels
        its checks in flight and runs its loop with the new settings.
        """
        old = self.route()
        self.started(old)
        self.probe.answer(500)
        self.clock.advance(CHECK.interval_secs)
        changed = attrs.evolve(CHECK, path="/other")
        new = self.route(check=changed)
        self.monitor.update([new])
        self.assertTrue(all(c.cancelled for c in self.probe.calls[3:]))
        for u in (A, B, C):
            self.assertIsNot(self.states(new)[u], self.states(old)[u])
        self.assertEqual([s.fails for s in self.monitor.describe("app")], [0, 0, 0])
        self.clock.advance(1.0)
        self.assertEqual([c.check for c in self.probe.pending()], [changed] * 3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 4)

    def test_upstreamsChanged(self) -> None:
        """
        With the same checks, an upstream still there keeps its state, a
        new one starts healthy and a removed one is dropped (its check in
        flight cancelled).
        """
        D = upstream(4)
        old = self.route()
        self.started(old)
        self.probe.answer(500, A.url)
        new = self.route(upstreams=(A, D))
        self.monitor.update([new])
        self.assertIs(self.states(new)[A], self.states(old)[A])
        self.assertEqual([s.url for s in self.monitor.describe("app")], [A.url, D.url])
        self.assertEqual([c.cancelled for c in self.probe.calls], [False, True, True])
        self.clock.advance(CHECK.interval_secs)
        self.assertEqual(self.probe.urls()[3:], [A.url, D.url])

    def test_removedSiteStops(self) -> None:
        """
        The loop of a site that is gone, or no longer checked, stops: its
        checks are cancelled and its timer too.
        """
        self.started(self.route("gone"), self.route("unchecked"))
        unchecked = self.route("unchecked", check=None)
        self.monitor.update([unchecked])
        self.assertTrue(all(c.cancelled for c in self.probe.calls))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.monitor.describe("gone"), [])
        self.assertEqual(list(self.monitor.states()), [])
        self.assertIsNone(unchecked.selector.health)

    def test_addedSiteWhileRunning(self) -> None:
        """
        A site added while the monitor runs gets its loop at once, with a
        jittered first round.
        """
        self.started(self.route())
        self.probe.answer(200)
        self.monitor.update([self.route(), self.route("new", upstreams=(A,))])
        self.clock.advance(1.0)
        self.assertEqual(
            [(c.upstream.url, c.result.called) for c in self.probe.calls[3:]],
            [(A.url, False)],
        )

    def test_passiveMarking(self) -> None:
        """
        Connection failures the forwarder reports (C{markDown}) take an
        upstream out after C{fails} of them, between checks; a response
        (C{markUp}) does not bring it back, passing checks do.
        """
        r = self.route()
        self.started(r)
        self.probe.answer(200)
        for _ in range(CHECK.fails):
            r.selector.markDown(B)
        self.assertFalse(self.monitor.describe("app")[1].healthy)
        self.assertEqual(
            self.monitor.describe("app")[1].lastError,
            "connection failed (proxied request)",
        )
        r.selector.markUp(B)
        self.assertFalse(self.monitor.describe("app")[1].healthy)
        self.rounds(CHECK.passes, 200)
        self.assertTrue(self.monitor.describe("app")[1].healthy)

    def test_describeAndStates(self) -> None:
        """
        L{HealthMonitor.describe} lists a site's upstreams in config order;
        L{HealthMonitor.states} yields (site, upstream, healthy) for all.
        """
        self.started(self.route(), self.route("other", upstreams=(C,)))
        self.clock.advance(0.5)
        self.probe.answer(503, A.url)
        self.rounds(CHECK.fails - 1, None)
        for call in self.probe.pending():
            call.result.callback(503 if call.upstream == A else 200)
        self.assertEqual(
            self.monitor.describe("app")[0],
            UpstreamHealthDescription(
                url=A.url,
                healthy=False,
                fails=CHECK.fails,
                passes=0,
                lastError="HTTP 503",
                lastCheck=21.5,
                lastStatus=503,
            ),
        )
        self.assertEqual(
            sorted(self.monitor.states()),
            [
                ("app", A.url, False),
                ("app", B.url, True),
                ("app", C.url, True),
                ("other", C.url, True),
            ],
        )
        self.assertEqual(self.monitor.describe("nope"), [])


class ProbeTests(SynchronousTestCase):
    """
    Tests for L{AgentProbe}, the default probe, over a
    L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monitor = HealthMonitor(self.reactor)
        self.route = route(upstreams=(A,), clock=self.reactor)
        self.monitor.update([self.route])
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.reactor.advance(1.0)

    def connect(self) -> StringTransport:
        """
        Complete the check's connection; return its transport.
        """
        [(host, port, factory, timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("10.0.0.1", 8000, 2.0))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.protocol: IProtocol = protocol
        return transport

    def info(self) -> UpstreamHealthDescription:
        return self.monitor.describe("app")[0]

    def test_request(self) -> None:
        """
        The check is a C{GET} of the path with the site's Host, its own
        User-Agent, and no keep-alive.
        """
        transport = self.connect()
        head = transport.value().split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(head[0], b"GET /healthz HTTP/1.1")
        self.assertEqual(
            sorted(h.lower() for h in head[1:]),
            [
                b"connection: close",
                b"host: app.example",
                b"user-agent: " + USER_AGENT,
            ],
        )

    def test_status(self) -> None:
        """
        The answer's status decides the check.
        """
        transport = self.connect()
        self.protocol.dataReceived(
            b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\ndown"
        )
        self.assertEqual((self.info().fails, self.info().lastStatus), (1, 503))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(), 11.0)

    def test_bodyBounded(self) -> None:
        """
        At most L{MAX_BODY_BYTES} of a body are read: then the check ends
        and the connection is dropped.
        """
        transport = self.connect()
        self.protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
        )
        chunk = b"x" * 16384
        for _ in range(MAX_BODY_BYTES // len(chunk) - 1):
            self.protocol.dataReceived(chunk)
        self.assertIsNone(self.info().lastStatus)
        self.protocol.dataReceived(chunk)
        self.assertEqual((self.info().passes, self.info().lastStatus), (1, 200))
        self.assertEqual(transport.producerState, "stopped")

    def test_timeout(self) -> None:
        """
        A connection that never completes fails the check after
        C{timeout_secs}; the attempt is abandoned and nothing is left on
        the clock.
        """
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(2.0)
        self.assertEqual(self.info().lastError, "timeout after 2 s")
        self.monitor.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.connectors), 1)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_slowAnswerTimesOut(self) -> None:
        """
        An answer whose head does not come within C{timeout_secs} fails
        the check and the connection is dropped.
        """
        transport = self.connect()
        self.reactor.advance(2.0)
        self.assertEqual(self.info().lastError, "timeout after 2 s")
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_slowBodyTimesOut(self) -> None:
        """
        A body that does not end within C{timeout_secs} fails the check.
        """
        transport = self.connect()
        self.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.reactor.advance(2.0)
        self.assertEqual(
            (self.info().fails, self.info().lastError),
            (1, "timeout after 2 s"),
        )
        self.assertEqual(transport.producerState, "stopped")

    def test_resetFails(self) -> None:
        """
        A connection closed before the answer fails the check.
        """
        self.connect()
        self.protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.info().fails, 1)


class RecordingCreators(ClientCreators):
    """
    L{ClientCreators} that remember what they were asked for.
    """

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, UpstreamTLS]] = []

    def creatorFor(
        self, host: str, settings: UpstreamTLS
    ) -> IOpenSSLClientConnectionCreator:
        self.asked.append((host, settings))
        return super().creatorFor(host, settings)


class PolicyTests(SynchronousTestCase):
    """
    Tests for L{UpstreamTLSPolicy}.
    """

    def test_sameCreatorAsForwarder(self) -> None:
        """
        The policy answers the creator the forwarder's L{ClientCreators}
        gives for the pool key's host and the site's settings, whatever the
        URL's netloc looks like.
        """
        creators = ClientCreators()
        settings = UpstreamTLS(verify=False)
        policy = UpstreamTLSPolicy(creators, "::1", settings)
        self.assertTrue(verifyObject(IPolicyForHTTPS, policy))
        self.assertIs(
            policy.creatorForNetloc(b"[::1]", 8443),
            creators.creatorFor("::1", settings),
        )

    def test_probeUsesKeySettings(self) -> None:
        """
        An https check connects with TLS verified per the pool key's
        settings.
        """
        reactor = MemoryReactorClock()
        creators = RecordingCreators()
        probe = AgentProbe(reactor, creators)
        u = upstream(1, "https")
        settings = UpstreamTLS(verify=False)
        d = probe(u, ("https", u.host, u.port, settings), CHECK, b"app.example")
        [(host, port, _factory, timeout, _bind)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), (u.host, u.port, CHECK.timeout_secs))
        self.assertEqual(creators.asked, [(u.host, settings)])
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_pathEncoded(self) -> None:
        """
        A path with non-ASCII characters is sent percent-encoded, the rest
        as configured.
        """
        reactor = MemoryReactorClock()
        probe = AgentProbe(reactor)
        check = HealthCheck(path="/é?a=b&c=%20")
        d = probe(A, ("http", A.host, A.port, None), check, b"h")
        [(host, port, factory, _timeout, _bind)] = reactor.tcpClients
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(
            transport.value().startswith(b"GET /%C3%A9?a=b&c=%20 HTTP/1.1\r\n")
        )
        d.cancel()
        self.failureResultOf(d)
