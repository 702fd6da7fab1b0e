"""
Tests for L{revproxy.listeners}: the cap on client connections, in memory,
and the listener service.  The cap on real loopback sockets is in
L{tests.integration.test_listeners}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IPushProducer,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactor,
    StringTransportWithDisconnection,
)
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from revproxy.drain import ConnectionTracker
from revproxy.listeners import (
    ConnectionGate,
    GatedFactory,
    Listener,
    defaultMaxConnections,
)


@implementer(IPushProducer)
class FakePort:
    """
    A listening port as the gate sees it: a push producer.
    """

    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class GateTests(SynchronousTestCase):
    """
    L{ConnectionGate} pauses its ports at the cap and resumes them below.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gate = ConnectionGate(2, self.clock)
        self.ports = [FakePort(), FakePort()]
        for port in self.ports:
            self.gate.addPort(port)

    def states(self) -> list[str]:
        return [port.state for port in self.ports]

    def test_pauseAtCapResumeBelow(self) -> None:
        """
        Every port pauses when the cap is reached and resumes as soon as a
        connection closes.
        """
        self.gate.opened()
        self.assertEqual(self.states(), ["producing"] * 2)
        self.assertFalse(self.gate.full())
        self.gate.opened()
        self.assertEqual(self.states(), ["paused"] * 2)
        self.assertTrue(self.gate.full())
        self.assertEqual((self.gate.paused, self.gate.pauses), (True, 1))
        self.gate.closed()
        self.assertEqual(self.states(), ["producing"] * 2)
        self.assertEqual((self.gate.paused, self.gate.open), (False, 1))
        self.gate.opened()
        self.assertEqual(self.gate.pauses, 2)

    def test_newPortWhilePaused(self) -> None:
        """
        A port added while the gate is closed starts paused; a removed one
        is no longer touched.
        """
        self.gate.opened()
        self.gate.opened()
        late = FakePort()
        self.gate.addPort(late)
        self.assertEqual(late.state, "paused")
        self.gate.removePort(self.ports[0])
        self.gate.closed()
        self.assertEqual(late.state, "producing")
        self.assertEqual(self.ports[0].state, "paused")

    def test_loggedOnceAMinute(self) -> None:
        """
        Reaching the cap is logged, at most once a minute.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        for _ in range(3):
            self.gate.opened()
            self.gate.opened()
            self.gate.closed()
            self.gate.closed()
            self.clock.advance(20)
        self.assertEqual(len(events), 1)
        self.clock.advance(1)
        self.gate.opened()
        self.gate.opened()
        self.assertEqual(len(events), 2)
        self.assertIn("max_connections", events[1]["log_format"])

    def test_default(self) -> None:
        """
        Without C{max_connections}, 80 % of the descriptor limit.
        """
        self.assertEqual(defaultMaxConnections(1024), 819)
        self.assertEqual(defaultMaxConnections(65536), 52428)
        self.assertEqual(defaultMaxConnections(1), 1)


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class GatedFactoryTests(SynchronousTestCase):
    """
    L{GatedFactory} with a L{ConnectionTracker}: what a listening port sees.
    """

    def setUp(self) -> None:
        self.gate = ConnectionGate(2, Clock())
        self.tracker = ConnectionTracker(Factory.forProtocol(_Echo), self.gate)
        self.factory = GatedFactory(self.tracker, self.gate)

    def connect(self) -> StringTransportWithDisconnection | None:
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.factory.buildProtocol(address)
        if protocol is None:
            return None
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def test_countsWithTracker(self) -> None:
        """
        The tracker tells the gate of each connection that opens and closes.
        """
        first = self.connect()
        self.assertEqual(self.gate.open, 1)
        second = self.connect()
        self.assertTrue(self.gate.full())
        assert first is not None and second is not None
        first.loseConnection()
        self.assertEqual(self.gate.open, 1)
        self.assertFalse(self.gate.full())

    def test_refusedAtCap(self) -> None:
        """
        A connection accepted at the cap (in the same accept loop) gets no
        protocol, so the port closes it; it is counted.
        """
        self.connect()
        self.connect()
        self.assertIsNone(self.connect())
        self.assertEqual((self.gate.refused, self.gate.open), (1, 2))

    def test_delegates(self) -> None:
        """
        The port's log line names the real factory, which is started and
        stopped with the port.
        """
        self.assertEqual(self.factory.logPrefix(), "Factory")
        self.factory.doStart()
        self.assertEqual(self.tracker.numPorts, 1)
        self.factory.doStop()
        self.assertEqual(self.tracker.numPorts, 0)


@implementer(IStreamServerEndpoint)
class _FailingEndpoint:
    """
    An endpoint whose port is taken.
    """

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        return fail(CannotListenError("127.0.0.1", 80, OSError(98, "in use")))


@implementer(IStreamServerEndpoint)
class _LateEndpoint:
    """
    An endpoint that listens later, or fails later.
    """

    def __init__(self) -> None:
        self.result: Deferred[IListeningPort] = Deferred()

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        return self.result


class ListenerTests(SynchronousTestCase):
    """
    L{Listener}: a service that listens while running.
    """

    def test_listensAndStops(self) -> None:
        """
        It listens from C{privilegedStartService}, registers the port with
        the gate and stops listening when stopped.
        """
        reactor = MemoryReactor()
        gate = ConnectionGate(10, Clock())
        factory = Factory.forProtocol(_Echo)
        service = Listener(
            serverFromString(reactor, "tcp:8080:interface=127.0.0.1"), factory, gate
        )
        service.privilegedStartService()
        service.startService()
        [(port, wrapped, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        assert isinstance(wrapped, GatedFactory)
        self.assertIs(wrapped.wrapped, factory)
        self.assertIsNotNone(service.port)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)

    def test_withoutGate(self) -> None:
        """
        Without a gate the factory is listened with as it is.
        """
        reactor = MemoryReactor()
        factory = Factory.forProtocol(_Echo)
        service = Listener(serverFromString(reactor, "tcp:8080"), factory)
        service.startService()
        self.assertIs(reactor.tcpServers[0][1], factory)
        self.successResultOf(service.stopService())

    def test_portTakenRaises(self) -> None:
        """
        A port that cannot be bound raises from C{privilegedStartService}, so
        start-up stops.
        """
        service = Listener(_FailingEndpoint(), Factory.forProtocol(_Echo))
        self.assertRaises(CannotListenError, service.privilegedStartService)

    def test_lateFailureLogged(self) -> None:
        """
        An endpoint that fails after start-up is logged, not raised.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        endpoint = _LateEndpoint()
        service = Listener(endpoint, Factory.forProtocol(_Echo))
        service.privilegedStartService()
        endpoint.result.errback(CannotListenError("127.0.0.1", 80, OSError(98, "x")))
        self.assertEqual(len(events), 1)
        self.flushLoggedErrors(CannotListenError)

    def test_stopBeforeListening(self) -> None:
        """
        Stopping before the endpoint listened calls the attempt off.
        """
        endpoint = _LateEndpoint()
        cancelled: list[object] = []
        endpoint.result = Deferred(cancelled.append)
        service = Listener(endpoint, Factory.forProtocol(_Echo))
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(len(cancelled), 1)
