"""
Tests for the request context the root resource gives every request (client
address, X-Request-ID, generation), the rate limit it applies (429 and
C{Retry-After}, dry run), and L{revproxy.observer.RequestObserver}, which
turns finished requests into access-log lines and metrics.
"""

from __future__ import annotations

import io
import json
from ipaddress import ip_network
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import _DataLoss

from revproxy.accesslog import AccessLog
from revproxy.config import LoggingConfig, parseConfig
from revproxy.observer import RequestObserver, tlsVersion
from revproxy.proxy.exchange import Exchange
from revproxy.proxy.forwarder import Forwarder
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.responses import httpDate, simpleResponse
from revproxy.ratelimit import ALLOWED, Decision, RateLimiter
from revproxy.routing import Router
from revproxy.runtime import RuntimeHolder, SiteRoute, buildRuntime

CONFIG = """
[server]
listen_http = ["tcp:0"]
listen_https = []
admin_socket_path = ""
trusted_proxies = ["10.0.0.0/8"]

[[sites]]
name = "limited"
hosts = ["limited.example"]
upstreams = ["http://127.0.0.1:9"]
rate_limit = { requests_per_second = 1, burst = 2 }

[[sites]]
name = "dry"
hosts = ["dry.example"]
upstreams = ["http://127.0.0.1:9"]
rate_limit = { requests_per_second = 1, burst = 1, dry_run = true }

[[sites]]
name = "open"
hosts = ["open.example"]
upstreams = ["http://127.0.0.1:9"]
"""


class RecordingMetrics:
    """
    The parts of L{revproxy.metrics.Metrics} the observer and the root
    resource call, recorded.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def requestStarted(self, site: str) -> None:
        self.calls.append(("started", site))

    def requestFinished(
        self,
        site: str,
        status: int,
        seconds: float,
        upstreamSeconds: float | None = None,
    ) -> None:
        self.calls.append(("finished", site, status, seconds, upstreamSeconds))

    def refused(self, site: str, code: int, seconds: float = 0.0) -> None:
        self.calls.append(("refused", site, code))

    def rateLimitDryRun(self, site: str) -> None:
        self.calls.append(("dry_run", site))


class _Forwarder:
    """
    Answers 200 at once, as if an upstream had, and records what it got.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.trustedProxies = (ip_network("10.0.0.0/8"),)
        self.forwarded: list[tuple[str, dict[bytes, list[bytes]]]] = []
        self.answer = True
        self.delay = 0.0

    def forward(self, request: Exchange, route: SiteRoute, target: bytes) -> None:
        headers: dict[bytes, list[bytes]] = {}
        for name, value in request.headers:
            headers.setdefault(name, []).append(value)
        self.forwarded.append((route.name, headers))
        if self.answer:
            request.upstreamURL = "http://127.0.0.1:9"
            request.upstreamStatus = 200
            request.upstreamSeconds = 0.25
            self.clock.advance(self.delay)
            simpleResponse(
                request, 200, "200 forwarded", httpDate(self.clock.seconds())
            )


class _ContextCase(SynchronousTestCase):
    """
    L{Router} with a rate limiter and an observer, on a real L{FrontEnd}
    connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.forwarder = _Forwarder(self.clock)
        self.limiter = RateLimiter(self.clock)
        self.metrics = RecordingMetrics()
        self.out = io.BytesIO()
        self.accessLog = AccessLog(self.clock, "-", "json", stdout=self.out)
        self.observer = RequestObserver(
            self.clock, self.accessLog, cast(Any, self.metrics), 1
        )
        runtime = buildRuntime(parseConfig(CONFIG), self.clock)
        self.root = Router(
            RuntimeHolder(runtime),
            cast(Forwarder, self.forwarder),
            limiter=self.limiter,
            observer=self.observer,
        )
        self.site = FrontEnd(self.root, self.clock, observer=self.observer)
        self.transports: list[StringTransportWithDisconnection] = []

    def connect(self, peer: str = "203.0.113.9") -> tuple[Any, Any]:
        address = IPv4Address("TCP", peer, 40000)
        channel = cast(IProtocol, self.site.buildProtocol(address))
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = channel
        channel.makeConnection(transport)
        self.addCleanup(lambda: transport.connected and transport.loseConnection())
        return channel, transport

    def get(
        self,
        host: bytes,
        peer: str = "203.0.113.9",
        headers: bytes = b"",
        target: bytes = b"/a?b=c",
    ) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        channel, transport = self.connect(peer)
        channel.dataReceived(
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: "
            + host
            + b"\r\n"
            + headers
            + b"\r\n"
        )
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parsed: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            parsed.setdefault(name.lower(), []).append(value.strip())
        return int(lines[0].split()[1]), parsed, body

    def logLines(self) -> list[dict[str, Any]]:
        self.accessLog.flush()
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


class ContextTests(_ContextCase):
    """
    The request context of L{Router} with L{RateLimiter} and an observer.
    """

    # -- rate limit

    def test_overLimit429(self) -> None:
        """
        Beyond its burst, a client gets 429 with a whole-second Retry-After
        and a short body, and nothing is forwarded; another client is not
        affected, and the bucket refills with time.
        """
        for _ in range(2):
            self.assertEqual(self.get(b"limited.example")[0], 200)
        code, headers, body = self.get(b"limited.example")
        self.assertEqual(code, 429)
        self.assertEqual(headers[b"retry-after"], [b"1"])
        self.assertEqual(
            body, b"429 Too Many Requests: rate limit exceeded, retry in 1 s\n"
        )
        self.assertEqual(len(self.forwarder.forwarded), 2)
        self.assertEqual(self.get(b"limited.example", peer="198.51.100.1")[0], 200)
        self.clock.advance(1)
        self.assertEqual(self.get(b"limited.example")[0], 200)
        self.assertIn(("finished", "limited", 429, 0.0, None), self.metrics.calls)

    def test_retryAfterWholeSeconds(self) -> None:
        """
        C{Retry-After} is rounded up to whole seconds, at least 1.
        """
        for _ in range(2):
            self.get(b"limited.example")
        self.clock.advance(0.2)
        self.assertEqual(self.get(b"limited.example")[1][b"retry-after"], [b"1"])

    def test_unlimitedSite(self) -> None:
        """
        A site without a rate limit is never refused and tracks no bucket.
        """
        for _ in range(20):
            self.assertEqual(self.get(b"open.example")[0], 200)
        self.assertEqual(len(self.limiter), 0)

    def test_dryRun(self) -> None:
        """
        In dry-run mode a request over the limit is forwarded, counted and
        logged, at most one line a second per site.
        """
        messages: list[dict[str, Any]] = []
        observer = cast(ILogObserver, messages.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for _ in range(4):
            self.assertEqual(self.get(b"dry.example")[0], 200)
        self.assertEqual(len(self.forwarder.forwarded), 4)
        self.assertEqual(self.metrics.calls.count(("dry_run", "dry")), 3)
        dry = [m for m in messages if "dry run" in m.get("log_format", "")]
        self.assertEqual(len(dry), 1)

    def test_limitedByForwardedClient(self) -> None:
        """
        Behind a trusted proxy, the bucket is the forwarded client's, not
        the proxy's.
        """
        for n in range(3):
            code = self.get(
                b"limited.example",
                peer="10.0.0.2",
                headers=b"X-Forwarded-For: 198.51.100.%d\r\n" % n,
            )[0]
            self.assertEqual(code, 200)
        self.assertIsNotNone(self.limiter.bucket("limited", "198.51.100.0"))
        self.assertIsNone(self.limiter.bucket("limited", "10.0.0.2"))

    # -- request id and client address

    def test_requestIDGenerated(self) -> None:
        """
        A request gets a new X-Request-ID, sent back, in place of an
        untrusted peer's own (the forwarder sends the new one upstream
        instead: see tests.test_forwarder).
        """
        _, headers, _ = self.get(b"open.example", headers=b"X-Request-ID: injected\r\n")
        [sent] = headers[b"x-request-id"]
        self.assertRegex(sent.decode(), "^[0-9a-f]{32}$")

    def test_requestIDKeptFromTrustedPeer(self) -> None:
        """
        A trusted proxy's X-Request-ID is kept, if it is sane.
        """
        _, headers, _ = self.get(
            b"open.example", peer="10.1.2.3", headers=b"X-Request-ID: abc-123\r\n"
        )
        self.assertEqual(headers[b"x-request-id"], [b"abc-123"])
        _, headers, _ = self.get(
            b"open.example", peer="10.1.2.3", headers=b"X-Request-ID: a b\r\n"
        )
        self.assertNotEqual(headers[b"x-request-id"], [b"a b"])

    def test_requestIDOnOwnAnswers(self) -> None:
        """
        revproxy's own answers (421 here) carry the X-Request-ID too.
        """
        code, headers, _ = self.get(b"nowhere.example")
        self.assertEqual(code, 421)
        self.assertRegex(headers[b"x-request-id"][0].decode(), "^[0-9a-f]{32}$")

    # -- the access log and metrics

    def test_accessLogLine(self) -> None:
        """
        A forwarded request's line has its client, request, answer,
        upstream, request id and generation.
        """
        self.forwarder.delay = 0.5
        _, headers, _ = self.get(
            b"open.example",
            peer="10.0.0.2",
            headers=(
                b"X-Forwarded-For: 198.51.100.7\r\nUser-Agent: t/1\r\n"
                b"Referer: http://r.example/\r\n"
            ),
        )
        [line] = self.logLines()
        self.assertEqual(
            {k: line[k] for k in line if k != "ts"},
            {
                "client_ip": "198.51.100.7",
                "peer": "10.0.0.2",
                "method": "GET",
                "host": "open.example",
                "path": "/a",
                "query": "b=c",
                "protocol": "HTTP/1.1",
                "status": 200,
                "bytes_sent": len(b"200 forwarded\n"),
                "duration_ms": 500.0,
                "site": "open",
                "upstream": "http://127.0.0.1:9",
                "upstream_status": 200,
                "upstream_ms": 250.0,
                "request_id": headers[b"x-request-id"][0].decode(),
                "user_agent": "t/1",
                "referer": "http://r.example/",
                "tls_version": None,
                "generation": 1,
                "bytes_received": None,
                "close_reason": None,
            },
        )
        self.assertEqual(
            self.metrics.calls,
            [("started", "open"), ("finished", "open", 200, 0.5, 0.25)],
        )

    def test_unroutedCounted(self) -> None:
        """
        A request answered by the root resource itself (421) is counted
        with no site, once.
        """
        self.get(b"nowhere.example")
        self.assertEqual(
            self.metrics.calls, [("started", ""), ("finished", "", 421, 0.0, None)]
        )
        [line] = self.logLines()
        self.assertEqual((line["status"], line["site"]), (421, ""))

    def test_clientGone499(self) -> None:
        """
        A client that leaves before the answer is logged as 499, once.
        """
        self.forwarder.answer = False
        channel, _transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: open.example\r\n\r\n")
        channel.connectionLost(Failure(_DataLoss()))
        [line] = self.logLines()
        self.assertEqual((line["status"], line["site"]), (499, "open"))
        self.assertEqual(self.metrics.calls[-1][:3], ("finished", "open", 499))

    def test_refusedEarly(self) -> None:
        """
        A refusal from the connection layer is logged with what is known
        of the request and counted as a refusal, not as in flight.
        """
        channel, transport = self.connect()
        request = Exchange(
            channel,
            b"POST",
            b"/upload",
            b"HTTP/1.1",
            [],
            10,
            peer=transport.getPeer(),
        )
        self.observer.refused(413, request, False)
        self.observer.refused(400, None, False)
        [line] = self.logLines()
        self.assertEqual(
            (line["status"], line["method"], line["path"], line["generation"]),
            (413, "POST", "/upload", 1),
        )
        self.assertEqual(
            self.metrics.calls, [("refused", "", 413), ("refused", "", 400)]
        )

    def test_tlsVersionPlain(self) -> None:
        """
        Over plain HTTP there is no TLS version.
        """
        channel, transport = self.connect()
        request = Exchange(
            channel, b"GET", b"/", b"HTTP/1.1", [], 0, transport=transport
        )
        self.assertIsNone(tlsVersion(request))


class _LaterLimiter:
    """
    A shared rate limiter's stand-in: each decision is a L{Deferred} the
    test fires.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, Deferred[Decision]]] = []

    def allow(self, site: str, limit: Any, clientIP: str) -> Deferred[Decision]:
        d: Deferred[Decision] = Deferred()
        self.asked.append((site, clientIP, d))
        return d


class LaterDecisionTests(_ContextCase):
    """
    A rate limiter that decides after a round trip (the fleet's): the
    request waits for its decision.
    """

    def setUp(self) -> None:
        super().setUp()
        self.later = _LaterLimiter()
        self.root.limiter = self.later

    def send(self) -> Any:
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: limited.example\r\n\r\n")
        return channel, transport

    def test_waits(self) -> None:
        """
        Nothing is forwarded before the decision; admitted, it is.
        """
        _, transport = self.send()
        self.assertEqual(len(self.later.asked), 1)
        self.assertEqual(self.forwarder.forwarded, [])
        self.later.asked[0][2].callback(ALLOWED)
        self.assertEqual(len(self.forwarder.forwarded), 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_refusedLater(self) -> None:
        """
        Refused, it is answered 429 with the decision's C{Retry-After}.
        """
        _, transport = self.send()
        self.later.asked[0][2].callback(Decision(False, 3))
        self.assertEqual(self.forwarder.forwarded, [])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 "))
        self.assertIn(b"Retry-After: 3\r\n", transport.value())

    def test_failedAdmits(self) -> None:
        """
        A limiter that fails admits the request (and it is logged): a
        request never fails because the shared limiter did.
        """
        self.send()
        self.later.asked[0][2].errback(RuntimeError("redis went away"))
        self.assertEqual(len(self.forwarder.forwarded), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_clientLeft(self) -> None:
        """
        A client gone before the decision is not forwarded.
        """
        _, transport = self.send()
        transport.loseConnection()
        self.later.asked[0][2].callback(ALLOWED)
        self.assertEqual(self.forwarder.forwarded, [])


class ReconfigureTests(SynchronousTestCase):
    """
    L{RequestObserver.reconfigure} follows the C{[logging]} table.
    """

    def test_changedPathReplacesLog(self) -> None:
        """
        A new path or format replaces the access log; the old one is
        stopped (what it buffered is written).
        """
        clock = Clock()
        path = self.mktemp()
        old = AccessLog(clock, "", "json")
        observer = RequestObserver(clock, old)
        observer.reconfigure(LoggingConfig(access_log="", access_log_format="json"))
        self.assertIs(observer.accessLog, old)
        observer.reconfigure(
            LoggingConfig(access_log=path, access_log_format="combined")
        )
        self.assertIsNot(observer.accessLog, old)
        self.assertEqual(observer.accessLog.path, path)
        self.assertEqual(observer.accessLog.format, "combined")
        observer.accessLog.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
