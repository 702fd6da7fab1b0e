"""
Tests for L{revproxy.drain}: graceful shutdown over in-memory connections.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from revproxy.drain import ABORT_GRACE, ConnectionTracker, DrainService
from revproxy.proxy.exchange import Exchange
from revproxy.proxy.frontend import FrontEnd


class _Held:
    """
    Holds every request until the test answers it.
    """

    def __init__(self) -> None:
        self.requests: list[_Request] = []

    def handle(self, exchange: Exchange) -> None:
        self.requests.append(_Request(exchange))


class _Request:
    """
    A held exchange, answered as the test says.
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.headers: list[tuple[bytes, bytes]] = []

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def write(self, data: bytes) -> None:
        self.exchange.respond(200, b"OK", self.headers)
        self.exchange.write(data)

    def finish(self) -> None:
        self.exchange.respond(200, b"OK", self.headers or [(b"Content-Length", b"0")])
        self.exchange.finish()


class _Child(Service):
    """
    A service whose stop takes until the test fires C{stopped}.
    """

    stopped: Deferred[None] | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopped = Deferred()
        return self.stopped


class DrainTests(SynchronousTestCase):
    """
    L{DrainService.stopService} with a L{ConnectionTracker}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = _Held()
        self.site = FrontEnd(self.resource, self.clock)
        self.tracker = ConnectionTracker(self.site)
        self.drain = DrainService(self.tracker, 30, self.clock)
        self.drain.startService()

    def connect(self) -> StringTransportWithDisconnection:
        """
        Open a client connection through the tracker.
        """
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.tracker.buildProtocol(address)
        assert protocol is not None
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def test_noConnections(self) -> None:
        """
        With no connection open, stopping is immediate.
        """
        self.successResultOf(self.drain.stopService())

    def test_idleClosedAtOnce(self) -> None:
        """
        An idle keep-alive connection is closed at once and stopping is done.
        """
        transport = self.connect()
        self.successResultOf(self.drain.stopService())
        self.assertFalse(transport.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_inFlightFinishes(self) -> None:
        """
        A request in flight finishes whole; its connection closes after the
        response, and only then is stopping done.
        """
        idle = self.connect()
        busy = self.connect()
        busy.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = self.resource.requests
        stopped = self.drain.stopService()
        self.assertFalse(idle.connected)
        self.assertTrue(busy.connected)
        self.assertNoResult(stopped)
        self.clock.advance(29)
        self.assertNoResult(stopped)
        request.setHeader(b"content-length", b"5")
        request.write(b"hello")
        request.finish()
        self.assertIn(b"hello", busy.value())
        self.assertFalse(busy.connected)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_childrenStopAfterDrain(self) -> None:
        """
        The drain's children keep running while it drains and stop once it
        is over; their stopping is part of the drain's own.
        """
        child = _Child()
        child.setServiceParent(self.drain)
        self.assertTrue(child.running)
        busy = self.connect()
        busy.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = self.resource.requests
        stopped = self.drain.stopService()
        self.assertTrue(self.drain.draining)
        self.assertTrue(child.running)
        request.finish()
        self.assertFalse(child.running)
        self.assertNoResult(stopped)
        assert child.stopped is not None
        child.stopped.callback(None)
        self.successResultOf(stopped)

    def test_abortedGoneBeforeDone(self) -> None:
        """
        After the deadline, stopping is done only once the aborted
        connections are gone (a reactor turn later), so that what stops
        after the drain sees them end; or after L{ABORT_GRACE} at most.
        """
        busy = self.connect()
        busy.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        lost: list[object] = []

        def abortLater() -> None:
            # As a TCP transport: the connection is lost on a later turn.
            lost.append(True)

        busy.abortConnection = abortLater  # type: ignore[method-assign]
        stopped = self.drain.stopService()
        self.clock.advance(30)
        self.assertEqual(lost, [True])
        self.assertNoResult(stopped)
        busy.loseConnection()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()

    def test_abortGraceBounded(self) -> None:
        """
        A connection that never goes after its abort does not hold the
        drain past L{ABORT_GRACE}.
        """
        busy = self.connect()
        busy.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        busy.abortConnection = lambda: None  # type: ignore[method-assign]
        stopped = self.drain.stopService()
        self.clock.advance(30)
        self.assertNoResult(stopped)
        self.clock.advance(ABORT_GRACE)
        self.successResultOf(stopped)
        busy.loseConnection()
        self.flushLoggedErrors()

    def test_deadlineAborts(self) -> None:
        """
        A request still in flight when the deadline passes has its
        connection aborted, and stopping is done.
        """
        busy = self.connect()
        busy.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        stopped = self.drain.stopService()
        self.clock.advance(30)
        self.successResultOf(stopped)
        self.assertTrue(busy.disconnected)
        self.flushLoggedErrors()

    def test_partialRequestWaits(self) -> None:
        """
        A connection in the middle of sending a request head counts as busy.
        """
        busy = self.connect()
        busy.protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        stopped = self.drain.stopService()
        self.assertTrue(busy.connected)
        self.assertNoResult(stopped)
        busy.protocol.dataReceived(b"Host: x\r\n\r\n")
        [request] = self.resource.requests
        request.finish()
        # Closed right after its response, which said so.
        self.assertFalse(busy.connected)
        self.assertIn(b"Connection: close", busy.value())
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_busyClosedAfterResponse(self) -> None:
        """
        A keep-alive connection busy when the drain starts is closed right
        after its response.
        """
        busy = self.connect()
        busy.protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        stopped = self.drain.stopService()
        first = self.resource.requests[0]
        first.finish()
        self.assertFalse(busy.connected)
        self.successResultOf(stopped)


class TrackedConnectionTests(SynchronousTestCase):
    """
    The tracker forgets a connection only after its protocol learned that
    it is lost.
    """

    def test_lostBeforeForgotten(self) -> None:
        """
        When a connection's protocol hears of its loss, the tracker still
        counts it, so nothing waiting for the last connection to go runs
        before the protocol is done.
        """
        from twisted.internet.protocol import Factory, Protocol

        seen: list[int] = []
        tracker: ConnectionTracker

        class Recording(Protocol):
            def connectionLost(self, reason: object = None) -> None:
                seen.append(len(tracker.protocols))

        tracker = ConnectionTracker(Factory.forProtocol(Recording))
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = tracker.buildProtocol(address)
        assert protocol is not None
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        emptied = tracker.whenEmpty()
        transport.loseConnection()
        self.assertEqual(seen, [1])
        self.successResultOf(emptied)
        self.assertEqual(len(tracker.protocols), 0)

    def test_halfClosePassedOn(self) -> None:
        """
        The end of what the client sends reaches a protocol that can use
        it; for any other the connection is aborted, as without a wrapper.
        """
        from twisted.internet.interfaces import IHalfCloseableProtocol
        from twisted.internet.protocol import Factory, Protocol
        from zope.interface import implementer

        ended: list[bool] = []

        @implementer(IHalfCloseableProtocol)
        class HalfCloseable(Protocol):
            def readConnectionLost(self) -> None:
                ended.append(True)

            def writeConnectionLost(self) -> None:
                pass

        address = IPv4Address("TCP", "127.0.0.1", 40000)
        for factory, expected in (
            (Factory.forProtocol(HalfCloseable), [True]),
            (Factory.forProtocol(Protocol), []),
        ):
            tracker = ConnectionTracker(factory)
            protocol = tracker.buildProtocol(address)
            assert protocol is not None
            transport = StringTransportWithDisconnection(peerAddress=address)
            transport.protocol = protocol
            protocol.makeConnection(transport)
            self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))
            ended.clear()
            protocol.readConnectionLost()
            self.assertEqual(ended, expected)
            self.assertEqual(transport.connected, bool(expected))
            transport.loseConnection()
