"""
Tests for L{revproxy.proxy.forwarder} and the request path around it
(L{revproxy.proxy.http1}, L{revproxy.routing.Router}), driven end to
end: raw client bytes into a L{FrontEnd} connection, upstream connections from
a L{MemoryReactorClock} answered over L{StringTransportWithDisconnection}.
No sockets, no global reactor, no real time.
"""

from __future__ import annotations

import errno
import os
import socket
from email.utils import formatdate
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import trustme
from attrs import frozen
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IConnector, IProtocol
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import Config, parseConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.proxy.connector import reactorConnector
from revproxy.proxy.forwarder import Forwarder
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.pool import ConnectionPool, UpstreamSelector
from revproxy.proxy.upstream import PoolKey, UpstreamConnection
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, UpstreamTLS
from revproxy.routing import Router
from revproxy.runtime import RuntimeHolder, SiteRoute, buildRuntime
from tests.tlshelpers import TLSTransport

BASE_CONFIG = """
[server]
trusted_proxies = ["10.9.0.0/16"]

[[sites]]
name = "a"
hosts = ["a.example"]
upstreams = ["http://10.1.0.1:8000"]
connect_timeout_secs = 3
response_timeout_secs = 10

[[sites]]
name = "wild"
hosts = ["*.wild.example"]
upstreams = ["http://10.2.0.1:8000"]

[[sites]]
name = "pair"
hosts = ["pair.example"]
upstreams = ["http://10.3.0.1:8000", "http://10.3.0.2:8000"]
connect_timeout_secs = 30
response_timeout_secs = 10
"""

DEFAULT_CONFIG = (
    BASE_CONFIG
    + """
[[sites]]
name = "fallback"
default = true
upstreams = ["http://10.4.0.1:8000"]
"""
)

CLIENT_IP = "203.0.113.9"
TRUSTED_IP = "10.9.0.5"
A_KEY: PoolKey = ("http", "10.1.0.1", 8000, None)
FIRST = "10.3.0.1"
SECOND = "10.3.0.2"
BACKOFF = 5.0

# The client connection's one deadline timer (revproxy.proxy.http1).
CHANNEL_TIMEOUT = "HTTP1Connection._deadlinePassed"
POOL_SWEEP = "ConnectionPool._sweepIdle"
#: An upstream connection's one timer: the response timeout of its
#: exchange, kept (and doing nothing when it comes due) while it is idle.
UPSTREAM_TIMER = "UpstreamConnection._deadlinePassed"

GET_A = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
GET_PAIR = b"GET / HTTP/1.1\r\nHost: pair.example\r\n\r\n"
OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


@frozen
class HTTPResponse:
    """
    One response as a client read it off the wire.

    @ivar complete: whether the whole body arrived, as its framing says.
    """

    version: bytes
    code: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    complete: bool

    def values(self, name: bytes) -> list[bytes]:
        """
        The values of every header called C{name}, in order, any case.
        """
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]


@frozen
class HTTPRequest:
    """
    The request bytes an upstream received: request line, headers, and
    everything after the head.
    """

    line: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        """
        The values of every header called C{name}, in order, any case.
        """
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]

    def names(self) -> set[bytes]:
        """
        The lowercased names of all headers.
        """
        return {key.lower() for key, _ in self.headers}


def _splitHead(data: bytes) -> tuple[bytes, tuple[tuple[bytes, bytes], ...], bytes]:
    """
    Split a message into its first line, its headers and what follows.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise AssertionError(f"no complete head in {data!r}")
    lines = data[:end].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise AssertionError(f"bad header line {line!r}")
        headers.append((name, value.strip()))
    return lines[0], tuple(headers), data[end + 4 :]


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    """
    Read a chunked body off the front of C{data}.

    @return: the body, the bytes after it, and whether it was complete.
    """
    body = b""
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return body, b"", False
        size = int(data[:end].split(b";")[0], 16)
        data = data[end + 2 :]
        if size == 0:
            if data.startswith(b"\r\n"):
                return body, data[2:], True
            return body, b"", False
        if len(data) < size + 2:
            return body + data[:size], b"", False
        body += data[:size]
        data = data[size + 2 :]


def readResponses(data: bytes, head: bool = False) -> list[HTTPResponse]:
    """
    Parse every response in C{data}, interim ones included.

    @param head: whether the requests were HEAD, so that no final response
        has a body.
    """
    responses = []
    while data:
        line, headers, data = _splitHead(data)
        version, _, rest = line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        status = int(code)
        response = HTTPResponse(version, status, reason, headers, b"", True)
        framing = {key.lower(): value for key, value in headers}
        if 100 <= status < 200 or head or status in (204, 304):
            body, complete = b"", True
        elif b"chunked" in framing.get(b"transfer-encoding", b"").lower():
            body, data, complete = _dechunk(data)
        elif b"content-length" in framing:
            length = int(framing[b"content-length"])
            body, data = data[:length], data[length:]
            complete = len(body) == length
        else:
            body, data, complete = data, b"", False
        responses.append(
            HTTPResponse(
                response.version,
                response.code,
                response.reason,
                response.headers,
                body,
                complete,
            )
        )
    return responses


def readRequest(data: bytes) -> HTTPRequest:
    """
    Parse the request an upstream received.
    """
    line, headers, body = _splitHead(data)
    return HTTPRequest(line, headers, body)


class FakeClient:
    """
    A client connection to the proxy: a L{FrontEnd} connection on a
    L{StringTransportWithDisconnection}.
    """

    def __init__(
        self, case: SynchronousTestCase, site: FrontEnd, ip: str, secure: bool = False
    ) -> None:
        """
        @param secure: whether the connection came over TLS.
        """
        address = IPv4Address("TCP", ip, 40000)
        self.channel = cast(IProtocol, site.buildProtocol(address))
        factory = TLSTransport if secure else StringTransportWithDisconnection
        self.transport = factory(peerAddress=address)
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)
        case.addCleanup(self.close)

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} to the proxy as if it came from the network.
        """
        self.channel.dataReceived(data)

    def responses(self, head: bool = False) -> list[HTTPResponse]:
        """
        Every response the proxy wrote so far.
        """
        return readResponses(self.transport.value(), head)

    def close(self) -> None:
        """
        Close the connection from the client's side, if still open.
        """
        if self.transport.connected:
            self.transport.loseConnection()

    def pause(self) -> None:
        """
        Pause the channel as a transport with a full send buffer does: through
        the producer the channel registered with it.
        """
        producer = self.transport.producer
        assert producer is not None
        producer.pauseProducing()

    def resume(self) -> None:
        """
        Resume the channel as a transport whose send buffer drained does.
        """
        producer = self.transport.producer
        assert producer is not None
        producer.resumeProducing()


class SocketTransport(StringTransportWithDisconnection):
    """
    A string transport that may have a real socket under it, as
    C{getHandle} gives a TCP transport's.
    """

    sock: socket.socket | None = None

    def getHandle(self) -> socket.socket | None:
        return self.sock


class FakeUpstream:
    """
    The far end of one outbound connection the proxy asked the reactor for.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        host, port, factory, timeout, _ = reactor.tcpClients[index]
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.connector: IConnector = reactor.connectors[index]
        self.transport = SocketTransport()
        self.protocol: UpstreamConnection | None = None

    def accept(self) -> UpstreamConnection:
        """
        Complete the connection.
        """
        protocol = cast(UpstreamConnection, self.factory.buildProtocol(None))
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return protocol

    def refuse(self) -> None:
        """
        Fail the connection attempt as a closed port does.
        """
        self.fail(error.ConnectionRefusedError())

    def fail(self, reason: Exception) -> None:
        """
        Fail the connection attempt with C{reason}.
        """
        self.factory.clientConnectionFailed(self.connector, Failure(reason))

    def closeSocket(self, case: SynchronousTestCase) -> None:
        """
        Give the connection a real socket whose peer has closed it (a FIN
        the reactor has not read yet): what an upstream closing an idle
        keep-alive connection leaves in the kernel.
        """
        ours, theirs = socket.socketpair()
        case.addCleanup(ours.close)
        theirs.close()
        self.transport.sock = ours

    def quietSocket(self, case: SynchronousTestCase) -> None:
        """
        Give the connection a real socket with nothing waiting on it.
        """
        ours, theirs = socket.socketpair()
        case.addCleanup(ours.close)
        case.addCleanup(theirs.close)
        self.transport.sock = ours

    def request(self) -> HTTPRequest:
        """
        The request the proxy wrote on this connection.
        """
        return readRequest(self.transport.value())

    def respond(self, data: bytes) -> None:
        """
        Send C{data} to the proxy.
        """
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def close(self) -> None:
        """
        Close the connection from the upstream's side (a clean FIN).
        """
        self.transport.loseConnection()

    def pullBody(self) -> None:
        """
        Pull the request body from the proxy's pull producer until it
        unregisters, as a transport with an empty buffer would.
        """
        for _ in range(100):
            producer = self.transport.producer
            if producer is None:
                return
            producer.resumeProducing()
        raise AssertionError("the body producer never unregistered")


class ProxyHarness:
    """
    The proxy as C{buildService} wires it, on a L{MemoryReactorClock}.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        text: str = BASE_CONFIG,
        refuseAt: str | None = None,
        baseDir: str | None = None,
        maxConnections: int = 512,
        maxQueue: int = 1024,
        metrics: Any = None,
    ) -> None:
        """
        @param refuseAt: an upstream host for which the connector raises
            at once, as C{connectTCP} does for an address it cannot use.
        @param baseDir: the directory of the config's certificate files.
        @param maxConnections: the pool's most connections per upstream.
        @param maxQueue: the pool's longest line per upstream.
        @param metrics: where the forwarder counts upstream errors.
        """
        self.case = case
        self.config: Config = parseConfig(text, baseDir=baseDir)
        self.reactor = MemoryReactorClock()
        self.holder = RuntimeHolder(buildRuntime(self.config, self.reactor))
        connector = reactorConnector(cast(IRevProxyReactor, self.reactor))

        def connect(key: PoolKey, factory: ClientFactory, timeout: float) -> IConnector:
            if key[1] == refuseAt:
                raise error.ConnectError(string="bad address")
            return connector(key, factory, timeout)

        self.pool = ConnectionPool(
            self.reactor, connect, maxConnections=maxConnections, maxQueue=maxQueue
        )
        self.forwarder = Forwarder(
            self.pool, self.reactor, self.config.server.trusted_proxies, metrics
        )
        self.site = FrontEnd(Router(self.holder, self.forwarder), self.reactor)
        self._upstreams: dict[int, FakeUpstream] = {}
        case.addCleanup(self.pool.close)

    def client(self, ip: str = CLIENT_IP, secure: bool = False) -> FakeClient:
        """
        A new client connection from C{ip}, over TLS if C{secure}.
        """
        return FakeClient(self.case, self.site, ip, secure)

    def upstream(self, index: int = -1) -> FakeUpstream:
        """
        The outbound connection at C{index} in C{reactor.tcpClients}, the
        same object each time it is asked for.
        """
        index %= len(self.reactor.tcpClients)
        upstream = self._upstreams.get(index)
        if upstream is None:
            upstream = self._upstreams[index] = FakeUpstream(self.reactor, index)
        return upstream

    def upstreamHosts(self) -> list[str]:
        """
        The host of every outbound connection opened so far, in order.
        """
        return [host for host, *_ in self.reactor.tcpClients]

    def timers(self) -> list[str]:
        """
        The qualified names of the functions of all pending delayed calls.
        """
        return sorted(
            cast(DelayedCall, call).func.__qualname__
            for call in self.reactor.getDelayedCalls()
        )

    def exchange(
        self, client: FakeClient, request: bytes, response: bytes
    ) -> FakeUpstream:
        """
        Send C{request}, accept the connection it opens, and answer
        C{response}.
        """
        client.send(request)
        upstream = self.upstream()
        upstream.accept()
        upstream.respond(response)
        return upstream


class ProxyTestCase(SynchronousTestCase):
    """
    Shared set-up: a proxy on L{BASE_CONFIG} and assertions on responses.
    """

    configText = BASE_CONFIG

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, self.configText)

    def onlyResponse(self, client: FakeClient, head: bool = False) -> HTTPResponse:
        """
        The one response C{client} received.
        """
        responses = client.responses(head)
        self.assertEqual(len(responses), 1, responses)
        return responses[0]

    def assertShortError(self, response: HTTPResponse, code: int) -> None:
        """
        C{response} is a complete C{code} with a short one-line text body.
        """
        self.assertEqual(response.code, code)
        self.assertTrue(response.complete)
        self.assertEqual(
            response.values(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(
            response.values(b"content-length"), [b"%d" % len(response.body)]
        )
        self.assertTrue(response.body.startswith(b"%d " % code), response.body)
        self.assertTrue(response.body.endswith(b"\n"))
        self.assertEqual(response.body.count(b"\n"), 1)
        self.assertLess(len(response.body), 128)

    def assertTimers(self, *names: str) -> None:
        """
        Exactly the delayed calls C{names} are pending, in any order.
        """
        self.assertEqual(self.proxy.timers(), sorted(names))


class RoutingTests(ProxyTestCase):
    """
    Requests reach the site their C{Host} names, or get a 400 or 421.
    """

    def test_exactHostCaseAndPortIgnored(self) -> None:
        """
        A C{Host} in another case and with a port reaches the site with that
        exact name.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: A.Example:8080\r\n\r\n")
        self.assertEqual(self.proxy.upstreamHosts(), ["10.1.0.1"])
        upstream = self.proxy.upstream()
        self.assertEqual(upstream.port, 8000)

    def test_wildcardHost(self) -> None:
        """
        A name one label below a C{*.} wildcard reaches the wildcard's site.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: api.wild.example\r\n\r\n")
        self.assertEqual(self.proxy.upstreamHosts(), ["10.2.0.1"])

    def test_unknownHostMisdirected(self) -> None:
        """
        A C{Host} no site claims gets a short 421 and opens no connection.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n")
        self.assertShortError(self.onlyResponse(client), 421)
        self.assertEqual(self.proxy.reactor.tcpClients, [])
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_defaultSiteCatchesUnknownHost(self) -> None:
        """
        With a default site, a C{Host} no site claims goes to the default.
        """
        proxy = ProxyHarness(self, DEFAULT_CONFIG)
        client = proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n")
        self.assertEqual(proxy.upstreamHosts(), ["10.4.0.1"])

    def test_missingHostBadRequest(self) -> None:
        """
        An HTTP/1.1 request without C{Host} gets a 400, even with a default
        site.
        """
        proxy = ProxyHarness(self, DEFAULT_CONFIG)
        client = proxy.client()
        client.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assertShortError(self.onlyResponse(client), 400)
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_twoHostsBadRequest(self) -> None:
        """
        A request with two C{Host} headers gets a 400.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n")
        self.assertShortError(self.onlyResponse(client), 400)
        self.assertEqual(self.proxy.reactor.tcpClients, [])

    def test_invalidHostBadRequest(self) -> None:
        """
        A C{Host} that is not a valid host name gets a 400.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n")
        client.send(b"GET / HTTP/1.1\r\nHost: a b.example\r\n\r\n")
        responses = client.responses()
        self.assertEqual([r.code for r in responses], [400, 400])
        self.assertEqual(self.proxy.reactor.tcpClients, [])

    def test_http10WithoutHostGoesToDefault(self) -> None:
        """
        An HTTP/1.0 request without C{Host} goes to the default site.
        """
        proxy = ProxyHarness(self, DEFAULT_CONFIG)
        client = proxy.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(proxy.upstreamHosts(), ["10.4.0.1"])

    def test_http10WithoutHostNoDefault(self) -> None:
        """
        An HTTP/1.0 request without C{Host} gets a 421 when there is no
        default site.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertShortError(self.onlyResponse(client), 421)

    def test_absoluteFormRoutesByAuthority(self) -> None:
        """
        An absolute-form target is routed by its authority, whatever the
        C{Host}, and goes upstream in origin form with that authority as
        C{Host}.
        """
        client = self.proxy.client()
        client.send(
            b"GET http://a.example/x?y HTTP/1.1\r\nHost: api.wild.example\r\n\r\n"
        )
        self.assertEqual(self.proxy.upstreamHosts(), ["10.1.0.1"])
        upstream = self.proxy.upstream()
        upstream.accept()
        sent = upstream.request()
        self.assertEqual(sent.line, b"GET /x?y HTTP/1.1")
        self.assertEqual(sent.values(b"host"), [b"a.example"])


class UpstreamRequestTests(ProxyTestCase):
    """
    The request the upstream receives.
    """

    def sent(self, request: bytes, ip: str = CLIENT_IP) -> HTTPRequest:
        """
        Send C{request} from C{ip}, accept the upstream connection and
        return what the upstream received.
        """
        client = self.proxy.client(ip)
        client.send(request)
        upstream = self.proxy.upstream()
        upstream.accept()
        return upstream.request()

    def test_requestLineRawTarget(self) -> None:
        """
        The request line is the method, the raw target (percent-encoding
        untouched) and C{HTTP/1.1}.
        """
        sent = self.sent(
            b"GET /p%2Fq/%7e?q=a%20b&r HTTP/1.1\r\nHost: a.example\r\n\r\n"
        )
        self.assertEqual(sent.line, b"GET /p%2Fq/%7e?q=a%20b&r HTTP/1.1")

    def test_http10RequestSentAsHttp11(self) -> None:
        """
        An HTTP/1.0 request goes upstream as HTTP/1.1.
        """
        sent = self.sent(b"GET /p?q HTTP/1.0\r\nHost: a.example\r\n\r\n")
        self.assertEqual(sent.line, b"GET /p?q HTTP/1.1")

    def test_http10WithoutHostSendsHostUpstream(self) -> None:
        """
        The HTTP/1.1 request forwarded for an HTTP/1.0 request without
        C{Host} still carries exactly one C{Host} header.
        """
        proxy = ProxyHarness(self, DEFAULT_CONFIG)
        client = proxy.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        upstream = proxy.upstream()
        upstream.accept()
        sent = upstream.request()
        self.assertEqual(sent.line, b"GET / HTTP/1.1")
        # Regression test for a fixed bug
        # (revproxy.proxy.forwarder._Relay.start): with no Host from the
        # client, host=None and upstreamRequestHeaders adds none, so an
        # HTTP/1.1 request without Host goes upstream, which RFC 9112
        # section 3.2 forbids (origin servers answer it with 400).
        self.assertEqual(len(sent.values(b"host")), 1, sent.headers)

    def test_hostPreserved(self) -> None:
        """
        The client's C{Host} goes upstream as it was, once.
        """
        sent = self.sent(b"GET / HTTP/1.1\r\nHost: A.Example:8080\r\n\r\n")
        self.assertEqual(sent.values(b"host"), [b"A.Example:8080"])

    def test_hopByHopRemoved(self) -> None:
        """
        Hop-by-hop headers, and those the client's C{Connection} lists, are
        not forwarded; end-to-end ones are.
        """
        sent = self.sent(
            b"POST / HTTP/1.1\r\nHost: a.example\r\n"
            b"Connection: keep-alive, X-Secret\r\n"
            b"X-Secret: s3cret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
            b"TE: trailers\r\n"
            b"Trailer: X-Checksum\r\n"
            b"Upgrade: websocket\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"X-Kept: yes\r\n"
            b"\r\n"
            b"0\r\n\r\n"
        )
        names = sent.names()
        for name in [
            b"connection",
            b"x-secret",
            b"keep-alive",
            b"proxy-connection",
            b"proxy-authorization",
            b"te",
            b"trailer",
            b"upgrade",
            b"transfer-encoding",
        ]:
            self.assertNotIn(name, names)
        self.assertEqual(sent.values(b"x-kept"), [b"yes"])

    def test_forwardedForUntrustedPeer(self) -> None:
        """
        For a peer that is not a trusted proxy, C{X-Forwarded-For} is the
        peer's address alone: the client's own is dropped.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\n"
            b"X-Forwarded-For: 198.51.100.7\r\n\r\n"
        )
        self.assertEqual(sent.values(b"x-forwarded-for"), [CLIENT_IP.encode()])

    def test_requestIDUntrustedPeer(self) -> None:
        """
        The upstream gets the request's new X-Request-ID, never the one an
        untrusted client sent; the client gets the same id back.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Request-ID: forged\r\n\r\n"
        )
        [value] = sent.values(b"x-request-id")
        self.assertRegex(value, b"^[0-9a-f]{32}$")

    def test_requestIDNotStrippable(self) -> None:
        """
        A client's C{Connection: x-request-id} does not keep the request
        id from the upstream, nor does a trusted proxy's strip the one it
        sent.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: x-request-id\r\n\r\n"
        )
        [value] = sent.values(b"x-request-id")
        self.assertRegex(value, b"^[0-9a-f]{32}$")
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Request-ID: abc-1\r\n"
            b"Connection: X-Request-ID\r\n\r\n",
            ip=TRUSTED_IP,
        )
        self.assertEqual(sent.values(b"x-request-id"), [b"abc-1"])

    def test_underscoreHeadersDropped(self) -> None:
        """
        A header with an underscore in its name never reaches the upstream.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX_Forwarded_For: 6.6.6.6\r\n"
            b"X-Ok: 1\r\n\r\n"
        )
        self.assertEqual([n for n in sent.names() if b"_" in n], [])
        self.assertEqual(sent.values(b"x-ok"), [b"1"])

    def test_requestIDTrustedPeer(self) -> None:
        """
        A trusted proxy's X-Request-ID reaches the upstream as it is, once.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Request-ID: abc-1\r\n\r\n",
            ip=TRUSTED_IP,
        )
        self.assertEqual(sent.values(b"x-request-id"), [b"abc-1"])

    def test_forwardedForTrustedPeer(self) -> None:
        """
        For a peer in C{trusted_proxies}, the peer's address is appended to
        the incoming C{X-Forwarded-For}.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\n"
            b"X-Forwarded-For: 198.51.100.7\r\n\r\n",
            ip=TRUSTED_IP,
        )
        self.assertEqual(
            sent.values(b"x-forwarded-for"), [b"198.51.100.7, " + TRUSTED_IP.encode()]
        )

    def test_forwardedProtoAndHost(self) -> None:
        """
        C{X-Forwarded-Proto} is C{http} and C{X-Forwarded-Host} the client's
        C{Host}, whatever an untrusted client sent for them.
        """
        sent = self.sent(
            b"GET / HTTP/1.1\r\nHost: a.example\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n"
        )
        self.assertEqual(sent.values(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(sent.values(b"x-forwarded-host"), [b"a.example"])

    def test_viaAdded(self) -> None:
        """
        The proxy adds itself to C{Via}.
        """
        sent = self.sent(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.assertEqual(sent.values(b"via"), [b"1.1 revproxy"])

    def test_viaAppended(self) -> None:
        """
        The proxy appends itself to the client's C{Via}.
        """
        sent = self.sent(b"GET / HTTP/1.1\r\nHost: a.example\r\nVia: 1.0 fred\r\n\r\n")
        self.assertEqual(sent.values(b"via"), [b"1.0 fred, 1.1 revproxy"])

    def test_expectDropped(self) -> None:
        """
        C{Expect} is not forwarded: the proxy holds the whole body.
        """
        sent = self.sent(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\nabc"
        )
        self.assertNotIn(b"expect", sent.names())
        self.assertEqual(sent.body, b"abc")

    def test_contentLengthBody(self) -> None:
        """
        A body with C{Content-Length} is forwarded byte for byte, with
        exactly one C{Content-Length}.
        """
        body = bytes(range(256)) + b"\r\n\r\n0\r\n"
        sent = self.sent(
            b"POST /form HTTP/1.1\r\nHost: a.example\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body),) + body
        )
        self.assertEqual(sent.line, b"POST /form HTTP/1.1")
        self.assertEqual(sent.values(b"content-length"), [b"%d" % len(body)])
        self.assertEqual(sent.body, body)

    def test_chunkedUploadGetsContentLength(self) -> None:
        """
        A chunked upload is forwarded de-chunked, with a C{Content-Length}
        and no C{Transfer-Encoding}.
        """
        sent = self.sent(
            b"POST /up HTTP/1.1\r\nHost: a.example\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        self.assertEqual(sent.values(b"content-length"), [b"11"])
        self.assertNotIn(b"transfer-encoding", sent.names())
        self.assertEqual(sent.body, b"hello world")

    def test_largeBodyStreamed(self) -> None:
        """
        A body above 64 KiB that is all in before the upstream connection
        is ready goes in one write with its Content-Length; the response
        then comes back as usual.
        """
        body = bytes(range(256)) * 1200
        client = self.proxy.client()
        client.send(
            b"PUT /big HTTP/1.1\r\nHost: a.example\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body),)
        )
        client.send(body)
        upstream = self.proxy.upstream()
        upstream.accept()
        sent = upstream.request()
        self.assertEqual(sent.values(b"content-length"), [b"%d" % len(body)])
        self.assertEqual(sent.body, body)
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)

    def test_bodyStreamsWithBackpressure(self) -> None:
        """
        A body that comes after the upstream connection is ready streams
        to it as it comes; while the upstream takes no more (its transport
        pauses its producer), the client's body is not read; the body waits
        in the proxy while the connection opens (past 64 KiB the client is
        paused), and it is never spooled.
        """
        client = self.proxy.client()
        client.send(
            b"PUT /big HTTP/1.1\r\nHost: a.example\r\nContent-Length: 300000\r\n\r\n"
        )
        client.send(b"a" * 70000)
        self.assertEqual(client.transport.producerState, "paused")
        upstream = self.proxy.upstream()
        upstream.accept()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(upstream.request().body, b"a" * 70000)
        producer = upstream.transport.producer
        assert producer is not None
        self.assertTrue(upstream.transport.streaming)
        producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"b" * 230000)
        sent = upstream.request()
        self.assertEqual(sent.values(b"content-length"), [b"300000"])
        self.assertEqual(sent.body, b"a" * 70000 + b"b" * 230000)
        self.assertIsNone(upstream.transport.producer)
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)

    def test_chunkedBodyStreamsChunked(self) -> None:
        """
        A chunked body still coming when the connection is ready goes
        upstream chunked; one all in before then goes with a Content-Length.
        """
        client = self.proxy.client()
        client.send(
            b"POST /c HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n"
        )
        upstream = self.proxy.upstream()
        upstream.accept()
        client.send(b"2\r\nde\r\n0\r\n\r\n")
        raw = upstream.transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertNotIn(b"content-length", head.lower())
        self.assertEqual(body, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        upstream.transport.clear()
        other = self.proxy.client()
        other.send(
            b"POST /c HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        # The kept-alive connection, reused at once: the body was all in.
        sent = upstream.request()
        self.assertEqual(sent.values(b"content-length"), [b"3"])
        self.assertEqual(sent.values(b"transfer-encoding"), [])
        self.assertEqual(sent.body, b"abc")
        upstream.respond(OK_HI)

    def test_expectContinueAnsweredByProxy(self) -> None:
        """
        C{Expect: 100-continue} gets C{100 Continue} from the proxy before
        any body is sent, without waiting for the upstream connection (which
        opens meanwhile); C{Expect} is not sent upstream.
        """
        client = self.proxy.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertEqual(client.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        upstream = self.proxy.upstream()
        client.send(b"abc")
        upstream.accept()
        sent = upstream.request()
        self.assertEqual(sent.body, b"abc")
        self.assertEqual(sent.values(b"expect"), [])
        upstream.respond(OK_HI)
        self.assertEqual([r.code for r in client.responses()], [100, 200])


class ResponseRelayTests(ProxyTestCase):
    """
    The response the client receives.
    """

    def relay(
        self, response: bytes, request: bytes = GET_A, head: bool = False
    ) -> HTTPResponse:
        """
        Send C{request}, have the upstream answer C{response}, and return the
        one response the client got.
        """
        client = self.proxy.client()
        self.proxy.exchange(client, request, response)
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)
        return self.onlyResponse(client, head)

    def test_statusAndReason(self) -> None:
        """
        The upstream's status code and reason phrase reach the client.
        """
        response = self.relay(
            b"HTTP/1.1 418 I Am A Teapot\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(response.code, 418)
        self.assertEqual(response.reason, b"I Am A Teapot")

    def test_setCookiesKeptInOrder(self) -> None:
        """
        Every C{Set-Cookie} is relayed, in the upstream's order.
        """
        response = self.relay(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Other: o\r\n"
            b"Set-Cookie: b=2; Path=/\r\nSet-Cookie: c=3, d=4\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        self.assertEqual(
            response.values(b"set-cookie"), [b"a=1", b"b=2; Path=/", b"c=3, d=4"]
        )

    def test_hopByHopResponseHeadersDropped(self) -> None:
        """
        Hop-by-hop response headers, and those the upstream's C{Connection}
        lists, are not relayed; end-to-end ones are.
        """
        response = self.relay(
            b"HTTP/1.1 200 OK\r\nConnection: X-Up\r\nX-Up: 1\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
            b"Trailer: X-Checksum\r\nUpgrade: h2c\r\nX-Kept: yes\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        )
        names = {name.lower() for name, _ in response.headers}
        for name in [
            b"connection",
            b"x-up",
            b"keep-alive",
            b"proxy-connection",
            b"trailer",
            b"upgrade",
        ]:
            self.assertNotIn(name, names)
        self.assertEqual(response.values(b"x-kept"), [b"yes"])
        self.assertEqual(response.body, b"hi")

    def test_viaAppended(self) -> None:
        """
        The proxy appends itself to the upstream's C{Via}.
        """
        response = self.relay(
            b"HTTP/1.1 200 OK\r\nVia: 1.1 cache\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(response.values(b"via"), [b"1.1 cache, 1.1 revproxy"])

    def test_dateAddedWhenMissing(self) -> None:
        """
        A response without C{Date} gets one from the proxy's clock.
        """
        self.proxy.reactor.advance(1_700_000_000)
        response = self.relay(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(
            response.values(b"date"),
            [formatdate(1_700_000_000, usegmt=True).encode("ascii")],
        )

    def test_dateKept(self) -> None:
        """
        The upstream's C{Date} is relayed as it was, and no other is added.
        """
        self.proxy.reactor.advance(1_700_000_000)
        response = self.relay(
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        self.assertEqual(response.values(b"date"), [b"Sun, 06 Nov 1994 08:49:37 GMT"])

    def test_noServerInvented(self) -> None:
        """
        The proxy adds no C{Server} header of its own.
        """
        response = self.relay(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(response.values(b"server"), [])

    def test_serverRelayed(self) -> None:
        """
        The upstream's C{Server} header is relayed alone.
        """
        response = self.relay(
            b"HTTP/1.1 200 OK\r\nServer: app/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(response.values(b"server"), [b"app/1.0"])

    def test_contentLengthPassedThrough(self) -> None:
        """
        A body with C{Content-Length} is relayed with that length and
        without chunking.
        """
        response = self.relay(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(response.values(b"content-length"), [b"5"])
        self.assertEqual(response.values(b"transfer-encoding"), [])
        self.assertEqual(response.body, b"hello")
        self.assertTrue(response.complete)

    def test_chunkedRechunked(self) -> None:
        """
        A chunked response reaches an HTTP/1.1 client chunked once, with the
        same body.
        """
        response = self.relay(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
        )
        self.assertEqual(response.values(b"transfer-encoding"), [b"chunked"])
        self.assertEqual(response.values(b"content-length"), [])
        self.assertEqual(response.body, b"Wikipedia")
        self.assertTrue(response.complete)

    def test_headResponse(self) -> None:
        """
        A response to HEAD has no body and keeps its C{Content-Length}; the
        connections stay usable.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client,
            b"HEAD / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        )
        self.assertEqual(
            client.transport.value().count(b"\r\n\r\n"), 1, client.transport.value()
        )
        self.assertTrue(client.transport.value().endswith(b"\r\n\r\n"))
        response = self.onlyResponse(client, head=True)
        self.assertEqual(response.values(b"content-length"), [b"5"])
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)
        upstream.transport.clear()
        client.transport.clear()
        client.send(GET_A)
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")

    def test_noContentHasNoBody(self) -> None:
        """
        A 204 reaches the client with no body and no chunking.
        """
        client = self.proxy.client()
        self.proxy.exchange(client, GET_A, b"HTTP/1.1 204 No Content\r\n\r\n")
        raw = client.transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 204 No Content\r\n"))
        self.assertTrue(raw.endswith(b"\r\n\r\n"))
        self.assertEqual(raw.count(b"\r\n\r\n"), 1)
        self.assertNotIn(b"transfer-encoding", raw.lower())
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)

    def test_notModifiedHasNoBody(self) -> None:
        """
        A 304 reaches the client with no body, even with a
        C{Content-Length}, and ends the exchange.
        """
        client = self.proxy.client()
        self.proxy.exchange(
            client,
            GET_A,
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 5\r\n\r\n',
        )
        raw = client.transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 304 Not Modified\r\n"))
        self.assertTrue(raw.endswith(b"\r\n\r\n"))
        self.assertEqual(raw.count(b"\r\n\r\n"), 1)
        self.assertNotIn(b"transfer-encoding", raw.lower())
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)

    def test_noContentFramingDropped(self) -> None:
        """
        A 204 goes to the client without the C{Content-Length} or
        C{Transfer-Encoding} its upstream sent, and without a body.
        """
        for head in (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        ):
            proxy = ProxyHarness(self)
            client = proxy.client()
            proxy.exchange(client, GET_A, head)
            raw = client.transport.value()
            self.assertTrue(raw.endswith(b"\r\n\r\n"), head)
            self.assertEqual(raw.count(b"\r\n\r\n"), 1, head)
            self.assertNotIn(b"content-length", raw.lower(), head)
            self.assertNotIn(b"transfer-encoding", raw.lower(), head)

    def test_interimResponseNotRelayed(self) -> None:
        """
        A C{100 Continue} from the upstream is not relayed: the client sees
        only the final response.
        """
        response = self.relay(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"hi")

    def test_keepAliveReusesUpstream(self) -> None:
        """
        A second request on the same client connection goes over the same
        upstream connection, and only the expected timers remain.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(client, GET_A, OK_HI)
        upstream.transport.clear()
        client.send(b"GET /second HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        self.assertEqual(upstream.request().line, b"GET /second HTTP/1.1")
        upstream.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
        self.assertEqual([r.body for r in client.responses()], [b"hi", b"bye"])
        self.assertTrue(client.transport.connected)
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)

    def test_clientConnectionCloseKept(self) -> None:
        """
        A client that asks for C{Connection: close} gets C{Connection: close}
        on the proxied response and the connection is closed after it, while
        the upstream connection stays pooled.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client,
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            OK_HI,
        )
        [response] = client.responses()
        self.assertEqual(response.values(b"connection"), [b"close"])
        self.assertEqual(response.body, b"hi")
        self.assertFalse(client.transport.connected)
        self.assertTrue(upstream.transport.connected)


class UpstreamFailureTests(ProxyTestCase):
    """
    What the client gets when the upstream fails.
    """

    def test_connectionRefused(self) -> None:
        """
        A refused connection gets a short 502.
        """
        client = self.proxy.client()
        client.send(GET_A)
        self.proxy.upstream().refuse()
        self.assertShortError(self.onlyResponse(client), 502)
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_connectTimeout(self) -> None:
        """
        A connection not made within C{connect_timeout_secs} gets a 504 and
        the attempt is called off.
        """
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        self.assertEqual(upstream.timeout, 3.0)
        self.proxy.reactor.advance(2.9)
        self.assertEqual(client.transport.value(), b"")
        self.proxy.reactor.advance(0.1)
        self.assertShortError(self.onlyResponse(client), 504)
        self.assertTrue(getattr(upstream.connector, "_disconnected", False))
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_responseTimeout(self) -> None:
        """
        No response within C{response_timeout_secs} gets a 504, and the
        upstream connection is aborted.
        """
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        upstream.accept()
        self.proxy.reactor.advance(9.9)
        self.assertEqual(client.transport.value(), b"")
        self.proxy.reactor.advance(0.1)
        self.assertShortError(self.onlyResponse(client), 504)
        self.assertTrue(upstream.transport.disconnected)
        self.assertEqual(self.proxy.pool.activeCount(A_KEY), 0)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_responseTimeoutOnReusedConnection(self) -> None:
        """
        The response timeout of an exchange on a reused connection counts
        from that exchange's start, not from where the connection's timer
        was left by the exchange before.
        """
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        upstream.accept()
        self.proxy.reactor.advance(6)
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        # The first exchange's deadline would be t = 16.
        self.proxy.reactor.advance(3)
        client.transport.clear()
        upstream.transport.clear()
        client.send(GET_A)
        self.assertEqual(upstream.request().line, b"GET / HTTP/1.1")
        self.proxy.reactor.advance(9.9)
        self.assertEqual(client.transport.value(), b"")
        self.proxy.reactor.advance(0.1)
        self.assertShortError(self.onlyResponse(client), 504)
        self.assertTrue(upstream.transport.disconnected)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_freshConnectionClosedPost(self) -> None:
        """
        A POST whose fresh connection closes before any response gets a 502,
        and no second connection.
        """
        client = self.proxy.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\n\r\nx")
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.close()
        self.assertShortError(self.onlyResponse(client), 502)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_reusedConnectionClosedRetried(self) -> None:
        """
        An idempotent request whose reused idle connection closes before any
        response is sent again, body and all, on a fresh connection, and
        the client gets that answer.
        """
        client = self.proxy.client()
        first = self.proxy.exchange(client, GET_A, OK_HI)
        client.transport.clear()
        first.transport.clear()
        put = b"PUT /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\nbody"
        client.send(put)
        self.assertEqual(first.request().body, b"body")
        first.close()
        self.assertEqual(len(self.proxy.reactor.tcpClients), 2)
        second = self.proxy.upstream()
        self.assertEqual(second.host, "10.1.0.1")
        second.accept()
        sent = second.request()
        self.assertEqual(sent.line, b"PUT /p HTTP/1.1")
        self.assertEqual(sent.body, b"body")
        second.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        response = self.onlyResponse(client)
        self.assertEqual((response.code, response.body), (201, b"ok"))
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)

    def test_reusedConnectionClosedPostNotReplayed(self) -> None:
        """
        A POST (or any request whose method is not idempotent) written to a
        reused connection that then closes without a response byte is
        never sent again (RFC 9110 section 9.2.2: the upstream may have
        processed it): the client gets a 502, and no other connection is
        opened.
        """
        for method in (b"POST", b"PATCH", b"LOCK"):
            proxy = ProxyHarness(self, BASE_CONFIG)
            client = proxy.client()
            first = proxy.exchange(client, GET_A, OK_HI)
            client.transport.clear()
            first.transport.clear()
            client.send(
                method
                + b" /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\nbody"
            )
            self.assertEqual(first.request().line, method + b" /p HTTP/1.1")
            first.close()
            self.assertShortError(self.onlyResponse(client), 502)
            self.assertEqual(len(proxy.reactor.tcpClients), 1, method)

    def test_postSkipsClosedIdleConnection(self) -> None:
        """
        A POST is not written to an idle connection whose upstream has
        already closed it (its FIN waits in the kernel, unread): that
        connection is closed and the POST goes on a fresh one, once.
        """
        client = self.proxy.client()
        first = self.proxy.exchange(client, GET_A, OK_HI)
        first.closeSocket(self)
        client.transport.clear()
        first.transport.clear()
        client.send(
            b"POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\nbody"
        )
        self.assertEqual(first.transport.value(), b"")
        self.assertFalse(first.transport.connected)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 2)
        second = self.proxy.upstream()
        second.accept()
        self.assertEqual(second.request().body, b"body")
        second.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        response = self.onlyResponse(client)
        self.assertEqual((response.code, response.body), (201, b"ok"))

    def test_postReusesQuietIdleConnection(self) -> None:
        """
        A POST does reuse an idle connection whose socket shows nothing
        from the upstream: keep-alive is not given up for it.
        """
        client = self.proxy.client()
        first = self.proxy.exchange(client, GET_A, OK_HI)
        first.quietSocket(self)
        client.transport.clear()
        first.transport.clear()
        client.send(
            b"POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\nbody"
        )
        self.assertEqual(first.request().body, b"body")
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)

    def test_getNotVerified(self) -> None:
        """
        An idempotent request takes an idle connection without looking at
        its socket: should the upstream have closed it, the request is
        simply retried.
        """
        client = self.proxy.client()
        first = self.proxy.exchange(client, GET_A, OK_HI)
        first.closeSocket(self)
        client.transport.clear()
        first.transport.clear()
        client.send(GET_A)
        self.assertEqual(first.request().line, b"GET / HTTP/1.1")
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)

    def test_retryOnNewConnectionNotIdleOne(self) -> None:
        """
        The retry after a reused connection closed goes on a newly opened
        connection, not on another idle one that may be just as stale.
        """
        first, second = self.proxy.client(), self.proxy.client()
        first.send(GET_A)
        second.send(GET_A)
        upstreams = [self.proxy.upstream(0), self.proxy.upstream(1)]
        for upstream in upstreams:
            upstream.accept()
            upstream.respond(OK_HI)
            upstream.transport.clear()
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 2)
        first.transport.clear()
        first.send(GET_A)
        [reused] = [u for u in upstreams if u.transport.value()]
        reused.close()
        self.assertEqual(len(self.proxy.reactor.tcpClients), 3)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)
        fresh = self.proxy.upstream()
        fresh.accept()
        fresh.respond(OK_HI)
        self.assertEqual(self.onlyResponse(first).body, b"hi")
        # Two idle connections now (the fresh one and the one never
        # reused), each with its timer.
        self.assertTimers(
            CHANNEL_TIMEOUT, CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER, UPSTREAM_TIMER
        )

    def test_retryFailsToo(self) -> None:
        """
        When the fresh connection of the retry closes before any response
        too, a PUT gets a 502, without a third try.
        """
        client = self.proxy.client()
        first = self.proxy.exchange(client, GET_A, OK_HI)
        client.transport.clear()
        client.send(b"PUT /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\n\r\nx")
        first.close()
        second = self.proxy.upstream()
        second.accept()
        second.close()
        self.assertShortError(self.onlyResponse(client), 502)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 2)
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP)

    def test_garbageResponse(self) -> None:
        """
        Bytes that are not an HTTP response get a 502, and the upstream
        connection is dropped.
        """
        client = self.proxy.client()
        self.proxy.exchange(client, GET_A, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        self.assertShortError(self.onlyResponse(client), 502)
        self.assertTrue(self.proxy.upstream().transport.disconnected)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_diesMidBody(self) -> None:
        """
        An upstream that closes before its C{Content-Length} is reached gets
        the client connection aborted, with no complete response.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client, GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        )
        upstream.close()
        self.assertTrue(client.transport.disconnected)
        self.assertFalse(client.transport.connected)
        self.assertFalse(any(r.complete for r in client.responses()))
        self.assertTimers()

    def test_stallsMidBody(self) -> None:
        """
        An upstream that sends nothing for C{response_timeout_secs} in the
        middle of a body gets both connections aborted.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client, GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        )
        self.proxy.reactor.advance(9)
        upstream.respond(b"ha")
        self.proxy.reactor.advance(9.9)
        self.assertTrue(client.transport.connected)
        self.proxy.reactor.advance(0.1)
        self.assertTrue(client.transport.disconnected)
        self.assertTrue(upstream.transport.disconnected)
        self.assertFalse(any(r.complete for r in client.responses()))
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)
        self.assertTimers()


class RecordingMetrics:
    """
    Records the upstream errors the forwarder counts.
    """

    def __init__(self) -> None:
        self.errors: list[tuple[str, str, str]] = []

    def upstreamError(self, site: str, upstream: str, kind: str) -> None:
        self.errors.append((site, upstream, kind))


class RecordingHealth:
    """
    An upstream's health state that records the passive failures it is
    told of.
    """

    healthy = True

    def __init__(self) -> None:
        self.failures: list[str] = []

    def passiveFailure(self, now: float, error: str) -> None:
        self.failures.append(error)


QUEUE_CONFIG = BASE_CONFIG.replace(
    "connect_timeout_secs = 3\n",
    "connect_timeout_secs = 3\nqueue_timeout_secs = 2\n",
    1,
)


class LogLineTests(ProxyTestCase):
    """
    What a client sent cannot end or forge a line of the proxy's log.
    """

    def test_errorLineEscaped(self) -> None:
        """
        A request target with a control character or a line separator is
        logged escaped in the error line of a failed request: one line.
        """
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for raw in (b"\x85", b"\x7f", b"\x01"):
            # llhttp refuses any of them in a target: 400, never forwarded.
            client = self.proxy.client()
            client.send(b"GET /a" + raw + b"b HTTP/1.1\r\nHost: a.example\r\n\r\n")
            self.assertEqual(self.onlyResponse(client).code, 400)
        self.assertEqual(self.proxy.reactor.tcpClients, [])
        # A method is a token, a target is visible ASCII: what reaches an
        # error line from HTTP/1.1 is printable; the escaping stays for
        # what other front ends pass (HTTP/2 paths).
        for raw in (b"%0A", b"%85"):
            client = self.proxy.client()
            client.send(b"GET /a" + raw + b"b HTTP/1.1\r\nHost: a.example\r\n\r\n")
            self.proxy.upstream().refuse()
            self.assertEqual(self.onlyResponse(client).code, 502)
        lines = [
            formatEvent(e) for e in observer if "failed" in e.get("log_format", "")
        ]
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertEqual(len(line.splitlines()), 1, line)
            self.assertIn("GET /a%", line)


class QueueTests(ProxyTestCase):
    """
    Waiting in line for a connection when the upstream has its most
    (HAProxy's C{timeout queue}, C{maxqueue}).
    """

    def setUp(self) -> None:
        self.metrics = RecordingMetrics()
        self.proxy = ProxyHarness(
            self, QUEUE_CONFIG, maxConnections=1, maxQueue=2, metrics=self.metrics
        )
        route = self.proxy.holder.current.table.match("a.example")
        assert route is not None
        self.route = route
        self.health = RecordingHealth()
        self.route.selector.health = {route.config.upstreams[0]: self.health}
        self.busy = self.proxy.client()
        self.busy.send(GET_A)
        self.proxy.upstream().accept()

    def assertUpstreamBlameless(self) -> None:
        """
        The upstream was neither put in back-off nor told a failure.
        """
        self.assertFalse(self.route.selector.isDown(self.route.config.upstreams[0]))
        self.assertEqual(self.health.failures, [])

    def test_queueTimeout(self) -> None:
        """
        A request that waits C{queue_timeout_secs} for a free connection
        gets a 503, is counted as a queue timeout, and does not count
        against the upstream.
        """
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = self.proxy.client()
        client.send(GET_A)
        self.assertEqual(self.proxy.pool.waitingCount(A_KEY), 1)
        self.proxy.reactor.advance(1.9)
        self.assertEqual(client.transport.value(), b"")
        self.proxy.reactor.advance(0.1)
        self.assertShortError(self.onlyResponse(client), 503)
        self.assertEqual(self.proxy.pool.waitingCount(A_KEY), 0)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        self.assertEqual(
            self.metrics.errors, [("a", "http://10.1.0.1:8000", "queue_timeout")]
        )
        self.assertUpstreamBlameless()
        [line] = [e for e in observer if "busy" in e.get("log_format", "")]
        self.assertEqual(line["log_level"], LogLevel.warn)
        # The busy connection finishes and serves the next request at once.
        self.proxy.upstream().respond(OK_HI)
        other = self.proxy.client()
        other.send(GET_A)
        self.proxy.upstream().respond(OK_HI)
        self.assertEqual(self.onlyResponse(other).body, b"hi")

    def test_queueFull(self) -> None:
        """
        With the line full, a request gets a 503 at once, counted as
        C{queue_full}, and does not count against the upstream.
        """
        waiting = [self.proxy.client(), self.proxy.client()]
        for client in waiting:
            client.send(GET_A)
        refused = self.proxy.client()
        refused.send(GET_A)
        self.assertShortError(self.onlyResponse(refused), 503)
        self.assertEqual(self.proxy.pool.waitingCount(A_KEY), 2)
        self.assertEqual(
            self.metrics.errors, [("a", "http://10.1.0.1:8000", "queue_full")]
        )
        self.assertUpstreamBlameless()
        for client in waiting:
            self.assertEqual(client.transport.value(), b"")

    def test_servedFromLine(self) -> None:
        """
        A request in line gets the connection the busy one releases, and its
        queue timer is gone.
        """
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        upstream.transport.clear()
        upstream.respond(OK_HI)
        self.assertEqual(upstream.request().line, b"GET / HTTP/1.1")
        self.proxy.reactor.advance(2)
        self.assertEqual(client.transport.value(), b"")
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        self.assertEqual(self.metrics.errors, [])

    def test_lineThenConnectTimeout(self) -> None:
        """
        A request whose turn in line comes when the busy connection is lost
        gets a new connection with the whole connect timeout from then: not
        what was left of its queue timeout.
        """
        client = self.proxy.client()
        client.send(GET_A)
        self.proxy.reactor.advance(1.5)
        self.proxy.upstream().close()
        self.assertEqual(len(self.proxy.reactor.tcpClients), 2)
        self.proxy.reactor.advance(2.9)
        self.assertEqual(client.transport.value(), b"")
        self.proxy.reactor.advance(0.1)
        self.assertShortError(self.onlyResponse(client), 504)
        self.assertEqual(
            [kind for _, _, kind in self.metrics.errors], ["reset", "connect_timeout"]
        )

    def test_clientLeavesLine(self) -> None:
        """
        A client that leaves while in line leaves the line, and no timer
        of its remains.
        """
        client = self.proxy.client()
        client.send(GET_A)
        client.close()
        self.assertEqual(self.proxy.pool.waitingCount(A_KEY), 0)
        # Only the busy request's response timer, and its connection's one
        # timer, are left.
        self.assertTimers(CHANNEL_TIMEOUT, UPSTREAM_TIMER)
        self.assertEqual(self.metrics.errors, [])


class LocalErrorTests(ProxyTestCase):
    """
    A connect that fails for want of a local resource.
    """

    def test_localErrors(self) -> None:
        """
        EMFILE, ENFILE, ENOBUFS, ENOMEM and EADDRNOTAVAIL on connect give a
        503, no other upstream is tried, the upstream is not put in
        back-off nor told a failure, and one line is logged at most each
        second.
        """
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        metrics = RecordingMetrics()
        proxy = ProxyHarness(self, BASE_CONFIG, metrics=metrics)
        route = proxy.holder.current.table.match("pair.example")
        assert route is not None
        health = {u: RecordingHealth() for u in route.config.upstreams}
        route.selector.health = health
        numbers = (
            errno.EMFILE,
            errno.ENFILE,
            errno.ENOBUFS,
            errno.ENOMEM,
            errno.EADDRNOTAVAIL,
        )
        for number in numbers:
            client = proxy.client()
            client.send(GET_PAIR)
            proxy.upstream().fail(error.ConnectBindError(number, os.strerror(number)))
            self.assertShortError(self.onlyResponse(client), 503)
        self.assertEqual(len(proxy.reactor.tcpClients), len(numbers))
        for upstream in route.config.upstreams:
            self.assertFalse(route.selector.isDown(upstream))
            self.assertEqual(health[upstream].failures, [])
        self.assertEqual(
            [kind for _, _, kind in metrics.errors], ["local"] * len(numbers)
        )
        lines = [e for e in observer if "local limit" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        proxy.reactor.advance(1)
        client = proxy.client()
        client.send(GET_PAIR)
        proxy.upstream().fail(error.ConnectError(errno.EMFILE, "Too many open files"))
        lines = [e for e in observer if "local limit" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["quiet"], len(numbers) - 1)

    def test_refusedStillMarks(self) -> None:
        """
        A refused connection is still the upstream's fault: back-off.
        """
        route = self.proxy.holder.current.table.match("a.example")
        assert route is not None
        client = self.proxy.client()
        client.send(GET_A)
        self.proxy.upstream().refuse()
        self.assertTrue(route.selector.isDown(route.config.upstreams[0]))


class SeveralUpstreamsTests(ProxyTestCase):
    """
    A site with two upstreams.
    """

    def test_roundRobin(self) -> None:
        """
        Requests go to the two upstreams in turn.
        """
        for _ in range(4):
            self.proxy.client().send(GET_PAIR)
        self.assertEqual(self.proxy.upstreamHosts(), [FIRST, SECOND, FIRST, SECOND])

    def test_refusedFirstTriesSecond(self) -> None:
        """
        When the first upstream refuses, the same request goes on to the
        second and the client gets its answer.
        """
        client = self.proxy.client()
        client.send(GET_PAIR)
        self.proxy.upstream().refuse()
        self.assertEqual(self.proxy.upstreamHosts(), [FIRST, SECOND])
        second = self.proxy.upstream()
        second.accept()
        second.respond(OK_HI)
        response = self.onlyResponse(client)
        self.assertEqual((response.code, response.body), (200, b"hi"))
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)

    def test_refusedSkippedDuringBackoff(self) -> None:
        """
        An upstream that refused is skipped until its back-off has passed,
        then tried again.
        """
        close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        client = self.proxy.client()
        client.send(GET_PAIR)
        self.proxy.upstream().refuse()
        second = self.proxy.upstream()
        second.accept()
        second.respond(close)
        for _ in range(2):
            self.proxy.exchange(self.proxy.client(), GET_PAIR, close)
        self.assertEqual(self.proxy.upstreamHosts(), [FIRST, SECOND, SECOND, SECOND])
        self.proxy.reactor.advance(BACKOFF)
        self.proxy.client().send(GET_PAIR)
        self.assertEqual(self.proxy.upstreamHosts()[-1], FIRST)

    def test_idempotentGoesToSecond(self) -> None:
        """
        A GET whose first upstream closes before responding goes to the
        second upstream.
        """
        client = self.proxy.client()
        client.send(GET_PAIR)
        first = self.proxy.upstream()
        first.accept()
        first.close()
        self.assertEqual(self.proxy.upstreamHosts(), [FIRST, SECOND])
        second = self.proxy.upstream()
        second.accept()
        self.assertEqual(second.request().line, b"GET / HTTP/1.1")
        second.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)

    def test_postNotSentToSecond(self) -> None:
        """
        A POST whose fresh connection closes before responding gets a 502,
        and the second upstream is not tried.
        """
        client = self.proxy.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: pair.example\r\nContent-Length: 1\r\n\r\nx"
        )
        first = self.proxy.upstream()
        first.accept()
        first.close()
        self.assertShortError(self.onlyResponse(client), 502)
        self.assertEqual(self.proxy.upstreamHosts(), [FIRST])
        self.assertTimers(CHANNEL_TIMEOUT)


class ClientGoneTests(ProxyTestCase):
    """
    A client that disconnects before its response is complete.
    """

    def test_goneWhileConnecting(self) -> None:
        """
        A client that leaves while the upstream connection is being made
        calls the attempt off without logging an error, and a connection that
        completes anyway goes idle unused.
        """
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        client.close()
        self.assertTrue(getattr(upstream.connector, "_disconnected", False))
        upstream.accept()
        self.assertEqual(upstream.transport.value(), b"")
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)
        self.assertTimers(POOL_SWEEP)
        errors = [
            event
            for event in observer
            if event["log_level"] in (LogLevel.error, LogLevel.critical)
        ]
        self.assertEqual(errors, [])

    def test_goneAfterConnectorRaised(self) -> None:
        """
        A client that leaves while the next upstream is being connected to,
        after the first one's connector raised, calls that attempt off too.
        """
        proxy = ProxyHarness(self, BASE_CONFIG, refuseAt=FIRST)
        client = proxy.client()
        client.send(GET_PAIR)
        self.assertEqual(proxy.upstreamHosts(), [SECOND])
        upstream = proxy.upstream()
        client.close()
        # Regression test for a fixed bug
        # (revproxy.proxy.forwarder._Relay._tryNext): the first acquire()
        # fails synchronously and connectionFailed() re-enters _tryNext(),
        # which stores the second attempt's withdraw; back in the outer
        # _tryNext(), self.waiting is True again, so self.withdraw is
        # overwritten with the first attempt's dead cancel and the second
        # connection attempt can no longer be withdrawn, by the client
        # leaving or by the connect timeout (with three upstreams, a POST
        # then reaches both the late second one and the third).
        self.assertTrue(getattr(upstream.connector, "_disconnected", False))

    def test_goneMidResponse(self) -> None:
        """
        A client that leaves in the middle of a response gets the upstream
        connection aborted, not pooled.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client, GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        )
        client.close()
        self.assertTrue(upstream.transport.disconnected)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)
        self.assertEqual(self.proxy.pool.activeCount(A_KEY), 0)
        self.assertTimers()

    def test_goneWaitingForResponse(self) -> None:
        """
        A client that leaves before the response starts gets the upstream
        connection aborted and the response timer cancelled.
        """
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        upstream.accept()
        client.close()
        self.assertTrue(upstream.transport.disconnected)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)
        self.assertTimers()


class BackpressureTests(ProxyTestCase):
    """
    The client's flow control reaches the upstream transport.
    """

    def test_pauseAndResume(self) -> None:
        """
        Pausing the client channel pauses the upstream transport; resuming
        it resumes the upstream.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client, GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        )
        self.assertEqual(upstream.transport.producerState, "producing")
        client.pause()
        self.assertEqual(upstream.transport.producerState, "paused")
        client.resume()
        self.assertEqual(upstream.transport.producerState, "producing")

    def test_pausedBeforeResponse(self) -> None:
        """
        A client channel already paused when the response starts pauses the
        upstream transport at once.
        """
        client = self.proxy.client()
        client.send(GET_A)
        upstream = self.proxy.upstream()
        upstream.accept()
        client.pause()
        upstream.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        self.assertEqual(upstream.transport.producerState, "paused")
        client.resume()
        self.assertEqual(upstream.transport.producerState, "producing")

    def test_pooledProducing(self) -> None:
        """
        An upstream connection whose response ends while the client is
        paused goes back to the pool producing, not paused.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(
            client, GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        )
        client.pause()
        upstream.respond(b"-whole")
        self.assertEqual(self.onlyResponse(client).body, b"half-whole")
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 1)
        self.assertEqual(upstream.transport.producerState, "producing")
        client.resume()
        client.pause()
        self.assertEqual(upstream.transport.producerState, "producing")
        self.assertTimers(CHANNEL_TIMEOUT, POOL_SWEEP, UPSTREAM_TIMER)


class ErrorBodyTests(ProxyTestCase):
    """
    The proxy's own error responses.
    """

    def check(
        self, code: int, request: bytes, refuse: bool = False, wait: float = 0
    ) -> None:
        """
        Send C{request}, refuse the upstream connection if C{refuse}, let
        C{wait} seconds pass, and check the response is a short text C{code}.
        """
        client = self.proxy.client()
        client.send(request)
        if refuse:
            self.proxy.upstream().refuse()
        self.proxy.reactor.advance(wait)
        response = self.onlyResponse(client)
        self.assertShortError(response, code)
        self.assertEqual(response.values(b"cache-control"), [b"no-store"])
        self.assertTimers(CHANNEL_TIMEOUT)

    def test_badRequest(self) -> None:
        """
        A 400 is short text with its length.
        """
        self.check(400, b"GET / HTTP/1.1\r\n\r\n")

    def test_misdirected(self) -> None:
        """
        A 421 is short text with its length.
        """
        self.check(421, b"GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n")

    def test_badGateway(self) -> None:
        """
        A 502 is short text with its length.
        """
        self.check(502, GET_A, refuse=True)

    def test_gatewayTimeout(self) -> None:
        """
        A 504 is short text with its length.
        """
        self.check(504, GET_A, wait=3)

    def test_headErrorHasNoBody(self) -> None:
        """
        An error answering HEAD keeps its C{Content-Length} but sends no
        body.
        """
        client = self.proxy.client()
        client.send(b"HEAD / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.proxy.upstream().refuse()
        raw = client.transport.value()
        self.assertTrue(raw.endswith(b"\r\n\r\n"))
        response = self.onlyResponse(client, head=True)
        self.assertEqual(response.code, 502)
        self.assertNotEqual(response.values(b"content-length"), [b"0"])


_CA = trustme.CA()


def writeCertificate(case: SynchronousTestCase, *names: str) -> str:
    """
    Write a certificate for C{names} and its key as C{cert.pem} and
    C{key.pem}, and the CA as C{ca.pem}, in a new temporary directory.

    @return: The directory.
    """
    directory: str = case.mktemp()
    os.mkdir(directory)
    leaf = _CA.issue_cert(*names)
    for name, data in [
        ("cert.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems)),
        ("key.pem", leaf.private_key_pem.bytes()),
        ("ca.pem", _CA.cert_pem.bytes()),
    ]:
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return directory


_FILES = 'tls = "files"\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'

HSTS_CONFIG = (
    BASE_CONFIG
    + f"""
[[sites]]
name = "hsts"
hosts = ["hsts.example"]
upstreams = ["http://10.5.0.1:8000"]
{_FILES}hsts_max_age_secs = 31536000

[[sites]]
name = "nohsts"
hosts = ["nohsts.example"]
upstreams = ["http://10.6.0.1:8000"]
{_FILES}"""
)

GET_HSTS = b"GET / HTTP/1.1\r\nHost: hsts.example\r\n\r\n"


class HSTSTests(ProxyTestCase):
    """
    C{Strict-Transport-Security} on the responses of sites with
    C{hsts_max_age_secs}.
    """

    def setUp(self) -> None:
        directory = writeCertificate(self, "hsts.example", "nohsts.example")
        self.proxy = ProxyHarness(self, HSTS_CONFIG, baseDir=directory)

    def test_siteRouteValue(self) -> None:
        """
        A site's route holds its header value, or L{None} without HSTS.
        """
        routes = {route.name: route for route in self.proxy.holder.current.table.sites}
        self.assertEqual(routes["hsts"].hsts, b"max-age=31536000")
        self.assertIsNone(routes["nohsts"].hsts)
        self.assertIsNone(routes["a"].hsts)

    def test_addedOverHTTPS(self) -> None:
        """
        A response to an HTTPS request gets the site's header, and the
        upstream is told the request was HTTPS.
        """
        client = self.proxy.client(secure=True)
        upstream = self.proxy.exchange(client, GET_HSTS, OK_HI)
        response = self.onlyResponse(client)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.values(b"strict-transport-security"), [b"max-age=31536000"]
        )
        self.assertEqual(upstream.request().values(b"x-forwarded-proto"), [b"https"])

    def test_addedToEveryResponse(self) -> None:
        """
        Every response on a kept-alive HTTPS connection gets the header,
        errors from the upstream included.
        """
        client = self.proxy.client(secure=True)
        upstream = self.proxy.exchange(client, GET_HSTS, OK_HI)
        client.send(GET_HSTS)
        upstream.respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        responses = client.responses()
        self.assertEqual([r.code for r in responses], [200, 404])
        for response in responses:
            self.assertEqual(
                response.values(b"strict-transport-security"), [b"max-age=31536000"]
            )

    def test_upstreamValueKept(self) -> None:
        """
        A header the upstream sent, in any case, is kept as it is and not
        doubled.
        """
        client = self.proxy.client(secure=True)
        upstream = self.proxy.exchange(
            client,
            GET_HSTS,
            b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60; "
            b"includeSubDomains\r\nContent-Length: 2\r\n\r\nhi",
        )
        client.send(GET_HSTS)
        upstream.respond(
            b"HTTP/1.1 200 OK\r\nstrict-transport-security: max-age=0\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        )
        self.assertEqual(
            [r.values(b"strict-transport-security") for r in client.responses()],
            [[b"max-age=60; includeSubDomains"], [b"max-age=0"]],
        )

    def test_notOverHTTP(self) -> None:
        """
        A response over plain HTTP never gets the header.
        """
        client = self.proxy.client()
        upstream = self.proxy.exchange(client, GET_HSTS, OK_HI)
        response = self.onlyResponse(client)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"strict-transport-security"), [])
        self.assertEqual(upstream.request().values(b"x-forwarded-proto"), [b"http"])

    def test_notForOtherSites(self) -> None:
        """
        An HTTPS site without C{hsts_max_age_secs} gets no header.
        """
        client = self.proxy.client(secure=True)
        self.proxy.exchange(
            client, b"GET / HTTP/1.1\r\nHost: nohsts.example\r\n\r\n", OK_HI
        )
        response = self.onlyResponse(client)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"strict-transport-security"), [])


HTTPS_UPSTREAM_CONFIG = """
[[sites]]
name = "ca"
hosts = ["ca.example"]
upstreams = ["https://backend.internal:8443", "http://10.7.0.1:8000"]
upstream_ca_file = "ca.pem"

[[sites]]
name = "off"
hosts = ["off.example"]
upstreams = ["https://backend.internal:8443"]
upstream_tls_verify = false

[[sites]]
name = "system"
hosts = ["system.example"]
upstreams = ["https://backend.internal:8443"]

[[sites]]
name = "system2"
hosts = ["system2.example"]
upstreams = ["https://backend.internal:8443"]
"""


class UpstreamKeyTests(SynchronousTestCase):
    """
    The pool keys of https:// upstreams carry the site's trust settings, so
    sites that verify differently never share a connection.
    """

    def setUp(self) -> None:
        self.directory = writeCertificate(self, "unused.example")
        self.proxy = ProxyHarness(self, HTTPS_UPSTREAM_CONFIG, baseDir=self.directory)
        self.routes = {
            route.name: route for route in self.proxy.holder.current.table.sites
        }

    def key(self, site: str, index: int = 0) -> PoolKey:
        route = self.routes[site]
        return route.keys[route.config.upstreams[index]]

    def test_keys(self) -> None:
        """
        An https:// upstream's key ends with the site's L{UpstreamTLS}; an
        http:// one's with L{None}.
        """
        caKey = self.key("ca")
        self.assertEqual(caKey[:3], ("https", "backend.internal", 8443))
        settings = caKey[3]
        assert isinstance(settings, UpstreamTLS)
        self.assertEqual(settings.caFile, os.path.join(self.directory, "ca.pem"))
        self.assertIsNotNone(settings.trustRoot)
        self.assertEqual(self.key("ca", 1), ("http", "10.7.0.1", 8000, None))
        self.assertEqual(
            self.key("off"), ("https", "backend.internal", 8443, UpstreamTLS(False))
        )
        self.assertEqual(
            self.key("system"), ("https", "backend.internal", 8443, SYSTEM_TRUST)
        )

    def test_differentSettingsDifferentKeys(self) -> None:
        """
        Sites with other trust settings have other keys for the same
        upstream; sites with the same settings share one.
        """
        self.assertEqual(len({self.key(s) for s in ("ca", "off", "system")}), 3)
        self.assertEqual(self.key("system"), self.key("system2"))

    def test_defaultRouteSettings(self) -> None:
        """
        A route built without settings verifies with the system store.
        """
        route = SiteRoute(
            self.routes["off"].config,
            UpstreamSelector(self.routes["off"].config.upstreams, Clock()),
        )
        self.assertEqual(
            list(route.keys.values()),
            [("https", "backend.internal", 8443, SYSTEM_TRUST)],
        )

    def test_connectionsNotShared(self) -> None:
        """
        An idle connection to an https:// upstream is reused by a site with
        the same settings and not by one with other settings.
        """
        reactor = self.proxy.reactor

        def answer(index: int) -> None:
            factory = reactor.sslClients[index][2]
            protocol = cast(UpstreamConnection, factory.buildProtocol(None))
            transport = StringTransportWithDisconnection()
            transport.protocol = protocol
            protocol.makeConnection(transport)
            protocol.dataReceived(OK_HI)

        first = self.proxy.client()
        first.send(b"GET / HTTP/1.1\r\nHost: system.example\r\n\r\n")
        self.assertEqual(len(reactor.sslClients), 1)
        self.assertEqual(reactor.tcpClients, [])
        answer(0)
        self.assertEqual([r.code for r in first.responses()], [200])
        self.assertEqual(self.proxy.pool.idleCount(self.key("system")), 1)
        self.proxy.client().send(b"GET / HTTP/1.1\r\nHost: system2.example\r\n\r\n")
        self.assertEqual(len(reactor.sslClients), 1)
        self.assertEqual(self.proxy.pool.idleCount(self.key("system")), 0)
        self.proxy.client().send(b"GET / HTTP/1.1\r\nHost: ca.example\r\n\r\n")
        self.proxy.client().send(b"GET / HTTP/1.1\r\nHost: off.example\r\n\r\n")
        self.assertEqual(len(reactor.sslClients), 3)
        self.assertEqual(
            [(host, port) for host, port, *_ in reactor.sslClients],
            [("backend.internal", 8443)] * 3,
        )


class _AbortRecorder:
    """
    A transport or HTTP/2 stream that records C{abortConnection} calls.
    """

    def __init__(self) -> None:
        self.aborts = 0

    def abortConnection(self) -> None:
        self.aborts += 1


class _FakeSite:
    """
    What a request reads of its site when it is made.
    """

    _parsePOSTFormSubmission = False


class H2Client:
    """
    An HTTP/2 client (the h2 library) on one connection to revproxy's
    L{HTTP2Connection} serving the proxy's front end over a TLS transport,
    the bytes moved by hand and the clock advanced for the server's sends.
    """

    def __init__(self, case: SynchronousTestCase, proxy: ProxyHarness) -> None:
        from revproxy.proxy.http2 import HTTP2Connection

        self.reactor = proxy.reactor
        address = IPv4Address("TCP", CLIENT_IP, 40000)
        server: Any = HTTP2Connection(proxy.site)
        self.server = server
        self.transport = TLSTransport(peerAddress=address)
        self.transport.protocol = server
        server.makeConnection(self.transport)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        case.addCleanup(self.close)
        self.pump()

    def pump(self) -> None:
        """
        Move bytes both ways until nothing moves.
        """
        for _ in range(100):
            self.reactor.advance(0)
            outgoing = self.conn.data_to_send()
            if outgoing:
                self.server.dataReceived(outgoing)
            incoming = self.transport.value()
            self.transport.clear()
            if incoming:
                self.events += self.conn.receive_data(incoming)
            if not outgoing and not incoming:
                return
        raise AssertionError("HTTP/2 did not settle")

    def get(
        self, streamID: int, host: bytes = b"hsts.example", path: bytes = b"/"
    ) -> None:
        """
        Send a GET on C{streamID}.
        """
        self.conn.send_headers(
            streamID,
            [
                (b":method", b"GET"),
                (b":path", path),
                (b":scheme", b"https"),
                (b":authority", host),
            ],
            end_stream=True,
        )
        self.pump()

    def headers(self, streamID: int) -> dict[bytes, bytes]:
        """
        The response headers on C{streamID} (C{:status} included), if any.
        """
        for event in self.events:
            if (
                isinstance(event, h2.events.ResponseReceived)
                and event.stream_id == streamID
                and event.headers is not None
            ):
                return {bytes(k): bytes(v) for k, v in event.headers}
        return {}

    def status(self, streamID: int) -> bytes | None:
        """
        The C{:status} of the response on C{streamID}, if any.
        """
        return self.headers(streamID).get(b":status")

    def body(self, streamID: int) -> bytes:
        """
        The body bytes received on C{streamID}.
        """
        return b"".join(
            event.data or b""
            for event in self.events
            if isinstance(event, h2.events.DataReceived) and event.stream_id == streamID
        )

    def ended(self, streamID: int) -> bool:
        """
        Whether the response on C{streamID} ended normally.
        """
        return any(
            isinstance(event, h2.events.StreamEnded) and event.stream_id == streamID
            for event in self.events
        )

    def reset(self, streamID: int) -> bool:
        """
        Whether the server reset C{streamID}.
        """
        return any(
            isinstance(event, h2.events.StreamReset) and event.stream_id == streamID
            for event in self.events
        )

    def closed(self) -> bool:
        """
        Whether the connection is closing: the transport was closed or a
        GOAWAY came.
        """
        return not self.transport.connected or any(
            isinstance(event, h2.events.ConnectionTerminated) for event in self.events
        )

    def close(self) -> None:
        """
        Close the connection from the client's side, if still open.
        """
        if self.transport.connected:
            self.transport.loseConnection()


class HTTP2Tests(ProxyTestCase):
    """
    The proxy behind revproxy's HTTP/2 server, with an h2 client.
    """

    def setUp(self) -> None:
        directory = writeCertificate(self, "hsts.example", "nohsts.example")
        self.proxy = ProxyHarness(self, HSTS_CONFIG, baseDir=directory)

    def test_get(self) -> None:
        """
        A GET over HTTP/2 is proxied as HTTP/1.1, as an HTTPS request, and
        its response comes back on the stream, with the site's HSTS.
        """
        client = H2Client(self, self.proxy)
        client.get(1, path=b"/x?y=1")
        upstream = self.proxy.upstream()
        upstream.accept()
        request = upstream.request()
        self.assertEqual(request.line, b"GET /x?y=1 HTTP/1.1")
        self.assertEqual(request.values(b"host"), [b"hsts.example"])
        self.assertEqual(request.values(b"x-forwarded-proto"), [b"https"])
        upstream.respond(OK_HI)
        client.pump()
        self.assertEqual(client.status(1), b"200")
        self.assertEqual(
            client.headers(1).get(b"strict-transport-security"), b"max-age=31536000"
        )
        self.assertEqual(client.body(1), b"hi")
        self.assertTrue(client.ended(1))
        self.assertFalse(client.reset(1))
        self.assertFalse(client.closed())

    def test_diesMidBodyResetsOnlyItsStream(self) -> None:
        """
        An upstream that dies mid-body resets its stream only: the body is
        not ended, another stream completes, and the connection serves new
        streams.
        """
        client = H2Client(self, self.proxy)
        client.get(1)
        client.get(3)
        dying, healthy = self.proxy.upstream(0), self.proxy.upstream(1)
        dying.accept()
        healthy.accept()
        dying.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        client.pump()
        self.assertEqual(client.body(1), b"half")
        dying.close()
        client.pump()
        self.assertTrue(client.reset(1))
        self.assertFalse(client.ended(1))
        self.assertFalse(client.closed())

        healthy.respond(OK_HI)
        client.pump()
        self.assertEqual(client.status(3), b"200")
        self.assertEqual(client.body(3), b"hi")
        self.assertTrue(client.ended(3))
        self.assertFalse(client.reset(3))

        client.get(5)
        upstream = self.proxy.upstream()
        if upstream.protocol is None:
            upstream.accept()
        upstream.respond(OK_HI)
        client.pump()
        self.assertEqual(client.body(5), b"hi")
        self.assertTrue(client.ended(5))
        self.assertFalse(client.closed())
