"""
Tests for L{revproxy.service}: the service tree, driven by a
L{MemoryReactorClock}; no real socket, and no real signal except in the
L{SignalRelay} tests, which restore what they change.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import Config, parseConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.service import SignalRelay, buildService

CONFIG = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.2"]
listen_https = []
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "demo"
hosts = ["localhost"]
upstreams = ["http://127.0.0.1:9000"]
"""

CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)


def config(text: str = CONFIG) -> Config:
    """
    Parse C{text}.
    """
    return parseConfig(text)


class _TakenPortReactor(MemoryReactorClock):
    """
    A memory reactor on which every TCP port is already in use.
    """

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class _ThreadedMemoryReactor(MemoryReactorClock):
    """
    A memory reactor that records L{callFromThread} calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fromThreads: list[Callable[[], object]] = []

    def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
        self.fromThreads.append(lambda: f(*args, **kw))


@contextmanager
def capturedStderr() -> Iterator[list[str]]:
    """
    Capture what is written to file descriptor 2 (not only C{sys.stderr})
    into the yielded list, one item per line, when the block ends.
    """
    lines: list[str] = []
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += capture.read().decode("utf-8", "replace").splitlines()


def runWhenRunningHooks(reactor: MemoryReactorClock) -> None:
    """
    Run what was registered with C{callWhenRunning}, as the reactor would
    once running.
    """
    for f, args, kwargs in reactor.whenRunningHooks:
        f(*args, **kwargs)


class ListenerTests(SynchronousTestCase):
    """
    The tree listens on every C{listen_http} endpoint, and only when it
    starts.
    """

    def test_listens(self) -> None:
        """
        C{privilegedStartService} listens on each C{listen_http} port and
        interface with the proxy's site; nothing listens before.
        """
        reactor = MemoryReactorClock()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        self.assertTrue(IService.providedBy(top))
        self.assertEqual(reactor.tcpServers, [])
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual(
            [(port, interface) for port, _, _, interface in reactor.tcpServers],
            [(8080, "127.0.0.1"), (8081, "127.0.0.2")],
        )
        for _, factory, _, _ in reactor.tcpServers:
            # The site, wrapped so that every connection is known (drain).
            self.assertIs(factory, top.tracker)
            self.assertIs(top.tracker.wrappedFactory, top.site)

    def test_portTaken(self) -> None:
        """
        A port that is already taken makes C{privilegedStartService} raise
        (start-up stops) instead of running without a listener, and the
        reason is printed as one line, without a traceback.
        """
        reactor = _TakenPortReactor()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        with capturedStderr() as lines:
            e = self.assertRaises(
                (CannotListenError, SystemExit), top.privilegedStartService
            )
        if isinstance(e, SystemExit):
            self.assertNotIn(e.code, (0, None))
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("8080", lines[0])
            self.assertNotIn("Traceback", lines[0])
        self.assertEqual(reactor.tcpServers, [])
        self.assertFalse(top.running)


class SignalRelayTests(SynchronousTestCase):
    """
    L{SignalRelay} installs its handlers only once the reactor runs, and
    keeps them through shutdown; C{restore} puts the previous ones back.
    """

    def setUp(self) -> None:
        self.reactor = _ThreadedMemoryReactor()
        self.signum = signal.SIGUSR2
        self.original = signal.getsignal(self.signum)
        self.addCleanup(signal.signal, self.signum, self.original)
        self.calls: list[str] = []
        self.relay = SignalRelay(
            cast(IRevProxyReactor, self.reactor),
            {self.signum: lambda: self.calls.append("usr2")},
        )

    def test_nothingBeforeRunning(self) -> None:
        """
        C{startService} only registers a C{callWhenRunning} hook; the
        signal's handler is untouched until it runs.
        """
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.assertEqual(len(self.reactor.whenRunningHooks), 1)
        self.assertIs(signal.getsignal(self.signum), self.original)

    def test_installAndRestore(self) -> None:
        """
        Once the reactor runs, the signal is relayed to the reactor thread
        with C{callFromThread}; after C{stopService} it stays (a second
        SIGTERM during shutdown must reach it), and C{restore} puts the
        previous handler back.
        """
        self.relay.startService()
        runWhenRunningHooks(self.reactor)
        self.assertIsNot(signal.getsignal(self.signum), self.original)
        os.kill(os.getpid(), self.signum)
        self.assertEqual(self.calls, [])
        self.assertEqual(len(self.reactor.fromThreads), 1)
        self.reactor.fromThreads[0]()
        self.assertEqual(self.calls, ["usr2"])
        self.relay.stopService()
        self.assertIsNot(signal.getsignal(self.signum), self.original)
        self.relay.restore()
        self.assertIs(signal.getsignal(self.signum), self.original)

    def test_stoppedBeforeRunning(self) -> None:
        """
        A relay stopped before the reactor runs installs nothing when the
        hook runs later.
        """
        self.relay.startService()
        self.relay.stopService()
        runWhenRunningHooks(self.reactor)
        self.assertIs(signal.getsignal(self.signum), self.original)

    def test_treeLeavesSignalsAlone(self) -> None:
        """
        The whole tree, started but not yet running, leaves SIGTERM and
        SIGINT as they were; once running it replaces them and keeps them
        after stopping, until C{restore}.
        """
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s, handler in before.items():
            self.addCleanup(signal.signal, s, handler)
        reactor = MemoryReactorClock()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        top.privilegedStartService()
        top.startService()
        self.assertEqual(
            {s: signal.getsignal(s) for s in before},
            before,
        )
        self.assertEqual(len(reactor.whenRunningHooks), 1)
        runWhenRunningHooks(reactor)
        self.assertNotEqual({s: signal.getsignal(s) for s in before}, before)
        top.stopService()
        self.assertNotEqual({s: signal.getsignal(s) for s in before}, before)
        cast(SignalRelay, top.getServiceNamed("signals")).restore()
        self.assertEqual({s: signal.getsignal(s) for s in before}, before)


class ShutdownTests(SynchronousTestCase):
    """
    Stopping the tree leaves no timer and no idle upstream connection.
    """

    def test_poolClosed(self) -> None:
        """
        After one proxied exchange the upstream connection waits idle, with
        its sweep timer; C{stopService} closes it and cancels the timer.
        """
        reactor = MemoryReactorClock()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        top.privilegedStartService()
        top.startService()

        site = top.site
        channel = site.buildProtocol(CLIENT)
        client = StringTransport(peerAddress=CLIENT)
        channel.makeConnection(client)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")

        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9000))
        upstream = factory.buildProtocol(None)
        assert upstream is not None
        upstreamTransport = StringTransport()
        upstream.makeConnection(upstreamTransport)
        self.assertTrue(upstreamTransport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.value().endswith(b"\r\n\r\nhi"))
        channel.connectionLost(Failure(ConnectionDone()))

        pool = top.getServiceNamed("upstream-pool").pool
        self.assertEqual(pool.idleCount(("http", "127.0.0.1", 9000, None)), 1)
        self.assertNotEqual(reactor.getDelayedCalls(), [])
        self.assertFalse(upstreamTransport.disconnecting)

        top.stopService()
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(pool.idleCount(("http", "127.0.0.1", 9000, None)), 0)
        self.assertTrue(upstreamTransport.disconnecting)

    def test_stopWithoutTraffic(self) -> None:
        """
        A tree started and stopped without traffic leaves no timer behind,
        and its listeners stop.
        """
        reactor = MemoryReactorClock()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        top.privilegedStartService()
        top.startService()
        top.stopService()
        self.assertFalse(top.running)
        self.assertEqual(reactor.getDelayedCalls(), [])
