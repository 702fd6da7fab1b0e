# -*- test-case-name: tests.integration.test_upstreamhealth -*-
"""
Integration tests for L{revproxy.upstreamhealth}: the monitor with its default
probe against in-process upstreams on loopback (plain and TLS), with small
intervals.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import trustme
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from revproxy.config import HealthCheck, SiteConfig, Upstream
from revproxy.proxy.pool import UpstreamSelector
from revproxy.proxy.upstreamtls import UpstreamTLS, loadUpstreamTLS
from revproxy.runtime import SiteRoute
from revproxy.upstreamhealth import HealthMonitor, UpstreamHealthDescription
from tests.integration.support import (
    Upstream as UpstreamServer,
)
from tests.integration.support import (
    closedPort,
    getReactor,
    waitFor,
)

#: How long any one wait may take.
WAIT = 5.0


class _Health(Resource):
    """
    C{/healthz}: answers C{status}, and remembers each request's headers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.seen: list[dict[bytes, list[bytes]]] = []

    def render_GET(self, request: Request) -> bytes:
        self.seen.append(
            {k: list(v) for k, v in request.requestHeaders.getAllRawHeaders()}
        )
        request.setResponseCode(self.status)
        return b"status\n"


class _TLSUpstream(UpstreamServer):
    """
    The in-process upstream, served over TLS with C{certificate}.
    """

    def __init__(self, certificate: trustme.LeafCert) -> None:
        super().__init__(getReactor(), "tls")
        self.certificate = certificate

    async def start(self) -> None:
        options = PrivateCertificate.loadPEM(
            self.certificate.private_key_and_cert_chain_pem.bytes()
        ).options()
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(
            TLSMemoryBIOFactory(options, False, self.site)
        )
        self.port = cast(IPv4Address, self._listening.getHost()).port


class HealthIntegrationTests(TestCase):
    """
    L{HealthMonitor} and its L{AgentProbe} over real loopback sockets.
    """

    timeout = 20

    async def upstream(self, server: UpstreamServer | None = None) -> _Health:
        """
        Start an upstream (plain by default) with a C{/healthz}; stop it
        after the test.
        """
        if server is None:
            server = UpstreamServer(getReactor())
        health = _Health()
        server.site.resource.putChild(b"healthz", health)
        await server.start()
        self.addCleanup(server.stop)
        self.servers.append(server)
        return health

    def setUp(self) -> None:
        self.servers: list[UpstreamServer] = []
        self.monitor = HealthMonitor(getReactor())

    def watch(
        self,
        ports: Sequence[int],
        check: HealthCheck,
        scheme: str = "http",
        upstreamTLS: UpstreamTLS | None = None,
    ) -> SiteRoute:
        """
        Check a site with upstreams on C{127.0.0.1} at C{ports}.
        """
        upstreams = tuple(
            Upstream(f"{scheme}://127.0.0.1:{p}", scheme, "127.0.0.1", p) for p in ports
        )
        config = SiteConfig(
            name="app",
            hosts=("app.example",),
            upstreams=upstreams,
            health_check=check,
        )
        selector = UpstreamSelector(upstreams, getReactor())
        route = (
            SiteRoute(config, selector, upstreamTLS)
            if upstreamTLS is not None
            else SiteRoute(config, selector)
        )
        self.monitor.update([route])
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        return route

    def info(self, index: int = 0) -> UpstreamHealthDescription:
        return self.monitor.describe("app")[index]

    async def test_unhealthyThenHealthy(self) -> None:
        """
        An upstream that starts answering 500 is marked unhealthy after
        C{fails} checks and skipped by the selector; healthy again after
        C{passes} checks once it answers 200.
        """
        first = await self.upstream()
        second = await self.upstream()
        check = HealthCheck(
            path="/healthz", interval_secs=0.1, timeout_secs=0.1, fails=2, passes=2
        )
        route = self.watch([s.port for s in self.servers], check)
        a, b = route.config.upstreams
        await waitFor(lambda: self.info().passes >= 2, WAIT, "two passed checks")
        headers = first.seen[0]
        self.assertEqual(headers[b"Host"], [b"app.example"])
        self.assertEqual(headers[b"User-Agent"], [b"revproxy-health-check"])
        first.status = 500
        await waitFor(lambda: not self.info().healthy, WAIT, "unhealthy")
        info = self.info()
        self.assertEqual(
            (info.fails, info.lastError, info.lastStatus),
            (2, "HTTP 500", 500),
        )
        self.assertEqual({route.selector.pick() for _ in range(4)}, {b})
        self.assertTrue(self.monitor.describe("app")[1].healthy)
        first.status = 200
        await waitFor(lambda: self.info().healthy, WAIT, "healthy again")
        self.assertEqual(self.info().passes, 2)
        self.assertEqual({route.selector.pick() for _ in range(4)}, {a, b})
        self.assertTrue(second.seen)

    async def test_timeout(self) -> None:
        """
        An upstream that does not answer within C{timeout_secs} fails its
        checks.
        """
        await self.upstream()
        check = HealthCheck(
            path="/slow?delay=5", interval_secs=0.3, timeout_secs=0.2, fails=1
        )
        self.watch([self.servers[0].port], check)
        await waitFor(lambda: not self.info().healthy, WAIT, "unhealthy")
        self.assertEqual(self.info().lastError, "timeout after 0.2 s")

    async def test_refused(self) -> None:
        """
        An upstream that refuses connections fails its checks.
        """
        check = HealthCheck(path="/", interval_secs=0.2, timeout_secs=0.2, fails=1)
        self.watch([closedPort()], check)
        await waitFor(lambda: not self.info().healthy, WAIT, "unhealthy")
        self.assertEqual(self.info().lastError, "connection refused")

    async def test_bigBodyNotRead(self) -> None:
        """
        A check of a path with a huge body passes once the head and the
        first bytes came, without reading the rest.
        """
        await self.upstream()
        check = HealthCheck(
            path="/stream?bytes=5000000000", interval_secs=1.0, timeout_secs=1.0
        )
        self.watch([self.servers[0].port], check)
        await waitFor(lambda: self.info().passes >= 1, WAIT, "a passed check")
        self.assertEqual(self.info().lastStatus, 200)

    async def test_https(self) -> None:
        """
        An https upstream is verified with the site's CA: a certificate from
        that CA passes, one from another CA fails with a TLS error.
        """
        authority = trustme.CA()
        server = _TLSUpstream(authority.issue_cert("127.0.0.1"))
        await self.upstream(server)
        directory = self.mktemp()
        os.mkdir(directory)
        trusted = os.path.join(directory, "ca.pem")
        authority.cert_pem.write_to_path(trusted)
        check = HealthCheck(path="/healthz", interval_secs=0.2, timeout_secs=1.0)
        self.watch([server.port], check, "https", loadUpstreamTLS(trusted, True))
        await waitFor(lambda: self.info().passes >= 1, WAIT, "a passed check")

        other = os.path.join(directory, "other.pem")
        trustme.CA().cert_pem.write_to_path(other)
        self.monitor.stopService()
        self.monitor = HealthMonitor(getReactor())
        check = HealthCheck(
            path="/healthz", interval_secs=0.2, timeout_secs=1.0, fails=1
        )
        self.watch([server.port], check, "https", loadUpstreamTLS(other, True))
        await waitFor(lambda: not self.info().healthy, WAIT, "unhealthy")
        self.assertIn("certificate verify failed", self.info().lastError)
