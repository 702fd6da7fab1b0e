"""
Tests for L{revproxy.proxy.tunnel}: upgrade requests forwarded, the switch to
a tunnel on the upstream's 101, bytes both ways with backpressure, the ends
of a tunnel and why, the cap per site, reloads; over in-memory connections
(the proxy as L{tests.test_forwarder.ProxyHarness} wires it).
"""

from __future__ import annotations

import base64
import hashlib

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event, ResponseReceived, StreamEnded
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import parseConfig
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.http2 import HTTP2Connection
from revproxy.proxy.tunnel import (
    CLIENT_CLOSED,
    IDLE_TIMEOUT,
    SHUTDOWN,
    SITE_REMOVED,
    UPSTREAM_CLOSED,
    TunnelRegistry,
)
from revproxy.runtime import buildRuntime
from tests.test_forwarder import A_KEY, BASE_CONFIG, ProxyHarness, readRequest

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def tunnelConfig(extra: str = "") -> str:
    """
    L{BASE_CONFIG} with tunnel settings for every site in C{[defaults]}.
    """
    return BASE_CONFIG.replace(
        "[[sites]]",
        "[defaults]\ntunnel_idle_timeout_secs = 30\ntunnel_drain_secs = 5\n"
        + extra
        + "\n[[sites]]",
        1,
    )


TUNNEL_CONFIG = tunnelConfig()


class TunnelTests(SynchronousTestCase):
    """
    An HTTP/1.1 upgrade through the proxy.
    """

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, TUNNEL_CONFIG)
        self.registry = self.proxy.forwarder.tunnels

    def open(self, early: bytes = b"", after: bytes = b""):  # type: ignore[no-untyped-def]
        """
        Open a tunnel to site "a": the client's upgrade (and C{early}
        bytes in the same read), the upstream's 101 (and C{after} bytes in
        the same read).
        """
        client = self.proxy.client()
        client.send(UPGRADE + early)
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.respond(SWITCHED + after)
        return client, upstream

    def test_upgradeForwarded(self) -> None:
        """
        An upgrade to a protocol the site lists goes upstream with
        C{Connection: upgrade} and C{Upgrade}, its other fields as they were.
        """
        client = self.proxy.client()
        client.send(UPGRADE)
        upstream = self.proxy.upstream()
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertEqual(request.line, b"GET /chat HTTP/1.1")
        self.assertEqual(request.values(b"connection"), [b"upgrade"])
        self.assertEqual(request.values(b"upgrade"), [b"websocket"])
        self.assertEqual(
            request.values(b"sec-websocket-key"), [b"dGhlIHNhbXBsZSBub25jZQ=="]
        )
        self.assertEqual(request.body, b"")

    def test_switch(self) -> None:
        """
        On the upstream's 101 the client gets it, with C{Connection} and
        C{Upgrade}; then bytes go through as they are both ways, those that
        came with the request and with the 101 first; the upstream
        connection leaves the pool.
        """
        client, upstream = self.open(early=b"early", after=b"hello")
        data = client.transport.value()
        head, _, rest = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"\r\nConnection: upgrade", head)
        self.assertIn(b"\r\nUpgrade: websocket", head)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertEqual(rest, b"hello")
        self.assertTrue(upstream.transport.value().endswith(b"\r\n\r\nearly"))
        client.transport.clear()
        upstream.transport.clear()
        client.send(b"\x81\x05frame")
        upstream.respond(b"\x81\x03abc")
        self.assertEqual(upstream.transport.value(), b"\x81\x05frame")
        self.assertEqual(client.transport.value(), b"\x81\x03abc")
        self.assertEqual(self.registry.count("a"), 1)
        self.assertEqual(self.proxy.pool.activeCount(A_KEY), 0)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)

    def test_upstreamCloses(self) -> None:
        """
        The upstream closing ends the tunnel: the client's connection is
        closed after what it was sent, and the end is counted.
        """
        client, upstream = self.open()
        client.send(b"hi")
        [tunnel] = self.registry.tunnels()
        upstream.respond(b"bye")
        upstream.close()
        exchange = tunnel.exchange
        self.assertEqual(
            (exchange.code, exchange.closeReason, exchange.receivedLength),
            (101, UPSTREAM_CLOSED, 2),
        )
        self.assertEqual(exchange.sentLength, 3)
        self.assertTrue(client.transport.value().endswith(b"bye"))
        self.assertTrue(client.transport.connected is False)
        self.assertEqual(self.registry.count("a"), 0)
        [counts] = self.registry.counts()
        self.assertEqual(counts.closed, {UPSTREAM_CLOSED: 1})
        self.assertEqual((counts.bytesUp, counts.bytesDown), (2, 3))

    def test_clientCloses(self) -> None:
        """
        The client closing ends the tunnel: the upstream is closed after
        what it was sent.
        """
        client, upstream = self.open()
        client.send(b"last")
        client.close()
        self.assertTrue(upstream.transport.value().endswith(b"last"))
        self.assertTrue(upstream.transport.connected is False)
        [counts] = self.registry.counts()
        self.assertEqual(counts.closed, {CLIENT_CLOSED: 1})
        self.assertEqual(counts.bytesUp, 4)

    def test_shutdown(self) -> None:
        """
        A tunnel cut while the process shuts down ends for C{"shutdown"}.
        """
        client, upstream = self.open()
        self.registry.shuttingDown = True
        client.transport.abortConnection()
        self.assertTrue(upstream.transport.connected is False)
        [counts] = self.registry.counts()
        self.assertEqual(counts.closed, {SHUTDOWN: 1})

    def test_idle(self) -> None:
        """
        No byte either way for C{tunnel_idle_timeout_secs} closes both
        sides; a byte moves the deadline.
        """
        client, upstream = self.open()
        self.proxy.reactor.advance(20)
        client.send(b"x")
        self.proxy.reactor.advance(20)
        self.assertFalse(upstream.transport.connected is False)
        self.proxy.reactor.advance(10)
        self.assertTrue(upstream.transport.connected is False)
        self.assertTrue(client.transport.connected is False)
        [counts] = self.registry.counts()
        self.assertEqual(counts.closed, {IDLE_TIMEOUT: 1})

    def test_backpressure(self) -> None:
        """
        A client that stops reading pauses the upstream, and an upstream
        that stops reading pauses the client.
        """
        client, upstream = self.open()
        client.pause()
        self.assertEqual(upstream.transport.producerState, "paused")
        client.resume()
        self.assertEqual(upstream.transport.producerState, "producing")
        producer = upstream.transport.producer
        assert producer is not None
        producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_notListed(self) -> None:
        """
        An upgrade to a protocol the site does not list (h2c here) goes
        upstream as an ordinary request, without C{Upgrade}.
        """
        client = self.proxy.client()
        client.send(UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"))
        upstream = self.proxy.upstream()
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertNotIn(b"upgrade", request.names())
        self.assertNotIn(b"upgrade", b"".join(request.values(b"connection")).lower())

    def test_ordinaryAnswer(self) -> None:
        """
        An ordinary answer to an upgrade (426 here) is relayed as it is, and
        the client's connection goes on with its next request.
        """
        client = self.proxy.client()
        client.send(UPGRADE)
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.respond(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
        [response] = client.responses()
        self.assertEqual(response.code, 426)
        self.assertFalse(client.transport.connected is False)
        client.send(b"GET /next HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.assertTrue(upstream.transport.value().endswith(b"\r\n\r\n"))
        self.assertIn(b"GET /next HTTP/1.1", upstream.transport.value())
        self.assertEqual(self.registry.count("a"), 0)

    def test_switchWithoutUpgrade(self) -> None:
        """
        A 101 without the asked-for C{Upgrade} is 502, and nothing is
        tunnelled.
        """
        client = self.proxy.client()
        client.send(UPGRADE)
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.respond(b"HTTP/1.1 101 Switching Protocols\r\n\r\nxyz")
        [response] = client.responses()
        self.assertEqual(response.code, 502)
        self.assertTrue(upstream.transport.connected is False)
        self.assertEqual(self.registry.count("a"), 0)

    def test_switchNotAsked(self) -> None:
        """
        A 101 to a request that asked for no upgrade is 502.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.respond(SWITCHED)
        [response] = client.responses()
        self.assertEqual(response.code, 502)
        self.assertTrue(upstream.transport.connected is False)

    def test_maxTunnels(self) -> None:
        """
        Past C{max_tunnels} open tunnels of a site, an upgrade is 503.
        """
        self.proxy = ProxyHarness(self, tunnelConfig("max_tunnels = 1\n"))
        self.registry = self.proxy.forwarder.tunnels
        self.open()
        client = self.proxy.client()
        client.send(UPGRADE)
        [response] = client.responses()
        self.assertEqual(response.code, 503)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)

    def test_reloadKeeps(self) -> None:
        """
        A reload that keeps the tunnel's site and upstream keeps the tunnel,
        whatever else changed.
        """
        _client, upstream = self.open()
        changed = TUNNEL_CONFIG.replace("response_timeout_secs = 10", "")
        self.registry.follow(buildRuntime(parseConfig(changed), self.proxy.reactor))
        self.proxy.reactor.advance(10)
        self.assertFalse(upstream.transport.connected is False)
        self.assertEqual(self.registry.count("a"), 1)

    def test_reloadRemovesSite(self) -> None:
        """
        A reload that removes the tunnel's site closes it after the site's
        C{tunnel_drain_secs}.
        """
        client, upstream = self.open()
        without = TUNNEL_CONFIG.replace('name = "a"', 'name = "other"')
        self.registry.follow(buildRuntime(parseConfig(without), self.proxy.reactor))
        self.proxy.reactor.advance(4.9)
        self.assertFalse(upstream.transport.connected is False)
        self.proxy.reactor.advance(0.1)
        self.assertTrue(upstream.transport.connected is False)
        self.assertTrue(client.transport.connected is False)
        [counts] = [c for c in self.registry.counts() if c.site == "a"]
        self.assertEqual(counts.closed, {SITE_REMOVED: 1})

    def test_describe(self) -> None:
        """
        The registry describes the open tunnels of each site.
        """
        client, upstream = self.open()
        client.send(b"12")
        upstream.respond(b"345")
        self.proxy.reactor.advance(3)
        described = self.registry.describe()
        self.assertEqual(list(described), ["a"])
        tunnels = described["a"]
        self.assertEqual(
            (tunnels.open, tunnels.bytesUp, tunnels.bytesDown, tunnels.oldestSecs),
            (1, 2, 3, 3.0),
        )


class RegistryTests(SynchronousTestCase):
    """
    L{TunnelRegistry} on its own.
    """

    def test_empty(self) -> None:
        """
        Without tunnels it counts none and describes nothing.
        """
        from twisted.internet.task import Clock

        registry = TunnelRegistry(Clock())
        self.assertEqual((len(registry), registry.count("a")), (0, 0))
        self.assertEqual(registry.describe(), {})
        self.assertEqual(registry.counts(), [])


def _accept(key: bytes) -> bytes:
    return base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )


class H2Client:
    """
    An HTTP/2 client connection to the proxy's front end, in memory.
    """

    def __init__(self, case: SynchronousTestCase, site: FrontEnd) -> None:
        self.transport = StringTransport()
        self.server = HTTP2Connection(site)
        self.server.makeConnection(self.transport)
        self.client = H2Connection(
            H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.flush()
        self.events()
        case.addCleanup(self.server.connectionLost, Failure(ConnectionDone()))

    def flush(self) -> None:
        """
        Give the server what the client has to send.
        """
        self.server.dataReceived(self.client.data_to_send())

    def events(self) -> list[Event]:
        """
        What the server sent since last asked, read by the client (whose
        acknowledgements go back at once).
        """
        data = self.transport.value()
        self.transport.clear()
        events = list(self.client.receive_data(data))
        for event in events:
            if isinstance(event, DataReceived) and event.stream_id:
                self.client.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
        self.flush()
        return events


class ExtendedConnectTests(SynchronousTestCase):
    """
    An HTTP/2 extended CONNECT (RFC 8441) goes upstream as an HTTP/1.1
    WebSocket upgrade.
    """

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, TUNNEL_CONFIG)
        self.peer = H2Client(self, self.proxy.site)

    def connect(self) -> int:
        client = self.peer.client
        streamID = client.get_next_available_stream_id()
        client.send_headers(
            streamID,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":path", b"/chat"),
                (b":authority", b"a.example"),
                (b"sec-websocket-version", b"13"),
            ],
            end_stream=False,
        )
        self.peer.flush()
        return streamID

    def test_translated(self) -> None:
        """
        Upstream it is a GET with C{Upgrade: websocket} and a fresh key; the
        101 with the right accept becomes a 200 on the stream, without
        ending it, and DATA goes through both ways.
        """
        streamID = self.connect()
        upstream = self.proxy.upstream()
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertEqual(request.line, b"GET /chat HTTP/1.1")
        self.assertEqual(request.values(b"upgrade"), [b"websocket"])
        [key] = request.values(b"sec-websocket-key")
        self.assertEqual(len(base64.b64decode(key)), 16)
        upstream.transport.clear()
        upstream.respond(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + _accept(key)
            + b"\r\n\r\nfirst"
        )
        events = self.peer.events()
        [response] = [e for e in events if isinstance(e, ResponseReceived)]
        self.assertEqual(dict(response.headers)[b":status"], b"200")
        self.assertNotIn(b"sec-websocket-accept", dict(response.headers))
        self.assertEqual(
            b"".join(e.data for e in events if isinstance(e, DataReceived)), b"first"
        )
        self.assertFalse([e for e in events if isinstance(e, StreamEnded)])
        self.peer.client.send_data(streamID, b"\x81\x02hi")
        self.peer.flush()
        self.assertEqual(upstream.transport.value(), b"\x81\x02hi")
        upstream.close()
        events = self.peer.events()
        self.assertTrue([e for e in events if isinstance(e, StreamEnded)])

    def test_wrongAccept(self) -> None:
        """
        A 101 with the wrong C{Sec-WebSocket-Accept} is 502 on the stream.
        """
        self.connect()
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.respond(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n"
        )
        events = self.peer.events()
        [response] = [e for e in events if isinstance(e, ResponseReceived)]
        self.assertEqual(dict(response.headers)[b":status"], b"502")


class HalfCloseTests(SynchronousTestCase):
    """
    A plain-TCP client that ends its side of a tunnel (a TCP half-close)
    half-closes the upstream and still gets what the upstream sends.
    """

    def test_clientHalfCloses(self) -> None:
        proxy = ProxyHarness(self, TUNNEL_CONFIG)
        client = proxy.client()
        client.send(UPGRADE)
        upstream = proxy.upstream()
        upstream.accept()
        upstream.respond(SWITCHED)
        halfClosed: list[bool] = []
        upstream.transport.loseWriteConnection = (  # type: ignore[attr-defined]
            lambda: halfClosed.append(True)
        )
        client.send(b"last words")
        client.channel.readConnectionLost()  # type: ignore[attr-defined]
        self.assertEqual(halfClosed, [True])
        self.assertTrue(upstream.transport.value().endswith(b"last words"))
        upstream.respond(b"answer")
        self.assertTrue(client.transport.value().endswith(b"answer"))
        upstream.close()
        self.assertTrue(client.transport.connected is False)
        [counts] = proxy.forwarder.tunnels.counts()
        # The client ended its side first: the tunnel ended for it.
        self.assertEqual(counts.closed, {CLIENT_CLOSED: 1})

    def test_halfCloseOutsideTunnel(self) -> None:
        """
        Outside a tunnel, the end of what the client sends ends the
        connection, as it did before half-close was passed on.
        """
        proxy = ProxyHarness(self, TUNNEL_CONFIG)
        client = proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        client.channel.readConnectionLost()  # type: ignore[attr-defined]
        self.assertTrue(client.transport.connected is False)
