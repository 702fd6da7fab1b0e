"""
Tests for L{revproxy.service}: the service tree, driven by a
L{MemoryReactorClock}; no real socket, and no real signal except in the
L{SignalRelay} tests, which restore what they change.  The tree's systemd
notifications (a real datagram socket) and the admin socket's directory
check (the real reactor and a real socket file) are in
L{tests.integration.test_service}.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import trustme
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme.renewal import AcmeManager
from revproxy.admin import reloadAnswer
from revproxy.config import Config, loadConfig, parseConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.listeners import GatedFactory, withBacklog
from revproxy.proxy.connector import reactorConnector
from revproxy.proxy.eager import EagerTLSFactory
from revproxy.proxy.upstreamtls import UpstreamTLS, loadUpstreamTLS
from revproxy.reload import Reloader
from revproxy.service import (
    RequestPath,
    RevProxyService,
    SignalRelay,
    TLSTermination,
    buildService,
)
from revproxy.tls import (
    HANDSHAKE_TIMEOUT,
    HandshakeDeadline,
    RefusalLog,
    SNIContextFactory,
)
from revproxy.upstreamhealth import HealthMonitor
from tests.fakes import FakeReactor
from tests.tlshelpers import ExceptHookRecorder, Recorder

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


def pathOf(top: RevProxyService) -> RequestPath:
    """
    The request path of the tree C{top}.
    """
    return cast(RequestPath, top.getServiceNamed("request-path"))


def tlsOf(top: RevProxyService) -> TLSTermination:
    """
    The HTTPS listeners and certificates of the tree C{top}.
    """
    return cast(TLSTermination, top.getServiceNamed("tls"))


def reloaderOf(top: RevProxyService) -> Reloader:
    """
    The reloader of the tree C{top}.
    """
    return cast(Reloader, top.getServiceNamed("reloader"))


class _TakenPortReactor(MemoryReactorClock):
    """
    A memory reactor on which every TCP port is already in use.
    """

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


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
            # The site, wrapped so that every connection is known (drain),
            # behind the cap on client connections.
            assert isinstance(factory, GatedFactory)
            self.assertIs(factory.wrapped, pathOf(top).tracker)
            self.assertIs(factory.gate, pathOf(top).tracker.gate)
            self.assertIs(pathOf(top).tracker.wrappedFactory, pathOf(top).site)

    def test_snapshotWhenHeadRead(self) -> None:
        """
        The front end takes a request's runtime snapshot (the current one)
        when the request's head is read.
        """
        reactor = MemoryReactorClock()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        self.assertIs(pathOf(top).site.snapshot(), pathOf(top).holder.current)

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
        self.reactor = FakeReactor()
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

        site = pathOf(top).site
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

        pool = pathOf(top).pool
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


_CA = trustme.CA()

TLS_CONFIG = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = ["tcp:8443:interface=127.0.0.1", "tcp:9443"]
admin_socket_path = ""
ops_listen = ""
tls_min_version = "1.3"
# Later than twice the handshake deadline, so that test_handshake sees that
# deadline cancelled rather than the silent connection's head deadline.
header_timeout_secs = 60

[[sites]]
name = "secure"
hosts = ["secure.example"]
upstreams = ["http://127.0.0.1:9000"]
tls = "files"
cert_file = "cert.pem"
key_file = "key.pem"
redirect_http = true
hsts_max_age_secs = 600

[[sites]]
name = "plain"
hosts = ["plain.example"]
upstreams = ["http://127.0.0.1:9001"]
"""


class HTTPSServiceTests(SynchronousTestCase):
    """
    The tree with C{listen_https}: TLS listeners in front of the same site,
    certificates that follow reloads, and the refusal log while running.
    """

    configText = TLS_CONFIG

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.writeCertificate("secure.example")
        self.path = os.path.join(self.directory, "revproxy.toml")
        with open(self.path, "w") as f:
            f.write(self.configText)
        self.reactor = MemoryReactorClock()
        self.hook = ExceptHookRecorder()
        self.patch(sys, "excepthook", self.hook)
        self.top = buildService(
            loadConfig(self.path), self.path, cast(IRevProxyReactor, self.reactor)
        )

    def writeCertificate(self, *names: str) -> None:
        """
        (Re)write C{cert.pem} and C{key.pem} for C{names}.
        """
        leaf = _CA.issue_cert(*names)
        for name, data in [
            ("cert.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems)),
            ("key.pem", leaf.private_key_pem.bytes()),
        ]:
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(data)

    def start(self) -> RevProxyService:
        self.top.privilegedStartService()
        self.top.startService()
        self.addCleanup(self.top.stopService)
        return self.top

    def listeners(self) -> dict[int, Any]:
        """
        The factory listening on each port.
        """
        return {
            port: cast(GatedFactory, factory).wrapped
            for port, factory, _, _ in self.reactor.tcpServers
        }

    def tlsFactory(self) -> TLSMemoryBIOFactory:
        """
        The factory of the HTTPS listeners.
        """
        factory = self.listeners()[8443]
        assert isinstance(factory, TLSMemoryBIOFactory)
        return factory

    def servingFactory(self) -> TLSMemoryBIOFactory:
        """
        The factory of the HTTPS listeners, which flushes its writes with
        the test's reactor (see L{test_tlsUsesInjectedReactor}).
        """
        factory = self.tlsFactory()
        self.assertIs(cast(EagerTLSFactory, factory).clock, self.reactor)
        return factory

    def connectTLS(
        self,
        acceptableProtocols: list[bytes] | None = None,
        maxVersion: TLSVersion | None = None,
    ) -> tuple[Recorder, IOPump]:
        """
        Connect a TLS client that verifies C{secure.example} to the 8443
        listener, over memory, and pump until nothing moves.
        """
        extra: dict[str, Any] = {}
        if maxVersion is not None:
            extra["lowerMaximumSecurityTo"] = maxVersion
        creator = optionsForClientTLS(
            "secure.example",
            trustRoot=Certificate.loadPEM(_CA.cert_pem.bytes()),
            acceptableProtocols=acceptableProtocols,
            extraCertificateOptions=extra,
        )
        clientFactory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(Recorder), self.reactor
        )
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        clientProtocol = clientFactory.buildProtocol(address)
        assert isinstance(clientProtocol, TLSMemoryBIOProtocol)
        recorder = clientProtocol.wrappedProtocol
        assert isinstance(recorder, Recorder)
        serverFactory = self.servingFactory()
        _, _, pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(address),
            lambda: clientProtocol,
            clock=self.reactor,
        )
        self.addCleanup(pump.flush)
        self.addCleanup(clientProtocol.loseConnection)
        return recorder, pump

    def test_httpsListeners(self) -> None:
        """
        Each C{listen_https} endpoint listens with TLS in front of a
        handshake deadline in front of the same tracked site as HTTP.
        """
        top = self.start()
        listeners = self.listeners()
        self.assertEqual(sorted(listeners), [8080, 8443, 9443])
        self.assertIs(listeners[8080], pathOf(top).tracker)
        self.assertIs(listeners[8443], listeners[9443])
        tlsFactory = self.tlsFactory()
        deadline = tlsFactory.wrappedFactory
        assert isinstance(deadline, HandshakeDeadline)
        self.assertIs(deadline.wrappedFactory, pathOf(top).tracker)
        self.assertIs(deadline.clock, self.reactor)
        self.assertEqual(deadline.timeout, HANDSHAKE_TIMEOUT)
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(8080, "127.0.0.1"), (8443, "127.0.0.1"), (9443, "")],
        )

    def test_tlsUsesInjectedReactor(self) -> None:
        """
        The TLS listeners' factory schedules its writes on the reactor the
        tree was built with, not on the global reactor.
        """
        self.start()
        self.assertIs(cast(EagerTLSFactory, self.tlsFactory()).clock, self.reactor)

    def assertServesRuntime(self, top: RevProxyService) -> None:
        """
        The listeners serve the current runtime's certificates (no ACME
        site here, so exactly those).
        """
        contexts = tlsOf(top).contexts
        assert contexts is not None
        self.assertEqual(
            [id(c) for c in contexts.store.all()],
            [id(c) for c in pathOf(top).holder.current.tls.certificates.all()],
        )

    def test_contexts(self) -> None:
        """
        C{tlsOf(top).contexts} is the listeners' connection creator and serves the
        runtime's certificates.
        """
        top = self.start()
        contexts = tlsOf(top).contexts
        assert isinstance(contexts, SNIContextFactory)
        self.assertServesRuntime(top)
        cert = contexts.store.lookup("secure.example")
        assert cert is not None
        self.assertEqual(cert.names, ("secure.example",))
        self.assertIsNone(contexts.store.lookup("plain.example"))

    def test_handshake(self) -> None:
        """
        A client completes a TLS handshake for the site's name and is
        offered HTTP/2 when it asks; the site's channel, behind the
        deadline and the tracker, sees a secure transport and the ALPN
        protocol; the deadline is cancelled.
        """
        top = self.start()
        client, pump = self.connectTLS([b"h2", b"http/1.1"])
        self.assertIsNone(client.lost)
        transport = client.transport
        assert transport is not None
        self.assertEqual(getattr(transport, "negotiatedProtocol", None), b"h2")
        [channelTransport] = pathOf(top).tracker.protocols
        self.assertTrue(ISSLTransport.providedBy(channelTransport))
        self.assertEqual(getattr(channelTransport, "negotiatedProtocol", None), b"h2")
        self.reactor.advance(HANDSHAKE_TIMEOUT * 2)
        pump.flush()
        self.assertIsNone(client.lost)

    def test_minVersion(self) -> None:
        """
        With C{tls_min_version = "1.3"}, a TLS 1.2 client is refused.
        """
        self.start()
        client, _ = self.connectTLS(maxVersion=TLSVersion.TLSv1_2)
        assert client.lost is not None
        self.assertIsInstance(client.lost.value, SSL.Error)

    def test_proxiesOverHTTPS(self) -> None:
        """
        A request over TLS reaches the site's upstream as an HTTPS request,
        and its response comes back with the site's HSTS; a site without a
        certificate is refused over HTTPS.
        """
        self.start()
        client, pump = self.connectTLS()
        transport = client.transport
        assert transport is not None
        transport.write(b"GET /x HTTP/1.1\r\nHost: secure.example\r\n\r\n")
        pump.flush()
        [(host, port, factory, _, _)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9000))
        upstream = factory.buildProtocol(None)
        assert upstream is not None
        upstreamTransport = StringTransport()
        upstream.makeConnection(upstreamTransport)
        sent = upstreamTransport.value()
        self.assertTrue(sent.startswith(b"GET /x HTTP/1.1\r\n"), sent)
        self.assertIn(b"\r\nX-Forwarded-Proto: https\r\n", sent)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        pump.flush()
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 OK\r\n"), client.data)
        self.assertIn(b"\r\nStrict-Transport-Security: max-age=600\r\n", client.data)
        self.assertTrue(client.data.endswith(b"\r\n\r\nhi"))

        client.data = b""
        transport.write(b"GET / HTTP/1.1\r\nHost: plain.example\r\n\r\n")
        pump.flush()
        self.assertTrue(client.data.startswith(b"HTTP/1.1 421 "), client.data)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_httpRedirected(self) -> None:
        """
        Over the HTTP listener, the site redirects to the first HTTPS port.
        """
        top = self.start()
        channel = pathOf(top).tracker.buildProtocol(CLIENT)
        assert channel is not None
        transport = StringTransport(peerAddress=CLIENT)
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        channel.dataReceived(b"GET /x?y HTTP/1.1\r\nHost: secure.example\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 308 "))
        self.assertIn(
            b"\r\nLocation: https://secure.example:8443/x?y\r\n", transport.value()
        )

    def test_refusalLogWhileRunning(self) -> None:
        """
        While the tree runs, C{sys.excepthook} is its L{RefusalLog}; once
        stopped, the previous hook is back.
        """
        self.assertIs(sys.excepthook, self.hook)
        self.top.privilegedStartService()
        self.top.startService()
        tlsService = self.top.getServiceNamed("tls")
        self.assertIsInstance(sys.excepthook, RefusalLog)
        self.assertIs(sys.excepthook, getattr(tlsService, "refusals", None))
        self.top.stopService()
        self.assertIs(sys.excepthook, self.hook)

    def test_refusalLogged(self) -> None:
        """
        A handshake for an unknown name (no default site) is refused and
        counted by the refusal log, without reaching the previous hook.
        """
        self.start()
        refusals = sys.excepthook
        assert isinstance(refusals, RefusalLog)
        creator = optionsForClientTLS(
            "unknown.example", trustRoot=Certificate.loadPEM(_CA.cert_pem.bytes())
        )
        clientFactory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(Recorder), self.reactor
        )
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        serverFactory = self.servingFactory()
        clientProtocol = clientFactory.buildProtocol(address)
        assert isinstance(clientProtocol, TLSMemoryBIOProtocol)
        recorder = clientProtocol.wrappedProtocol
        assert isinstance(recorder, Recorder)
        connectedServerAndClient(
            lambda: serverFactory.buildProtocol(address),
            lambda: clientProtocol,
            clock=self.reactor,
        )
        assert recorder.lost is not None
        self.assertIn("unrecognized name", str(recorder.lost.value))
        self.assertEqual(refusals.refused, 1)
        self.assertEqual(self.hook.errors, [])

    def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = reloadAnswer(
            self.successResultOf(reloaderOf(self.top).reload("test"))
        )
        return result

    def test_reloadSwapsCertificates(self) -> None:
        """
        A reload with a renewed certificate gives new handshakes the new
        certificate; a reload that fails leaves the certificates alone.
        """
        top = self.start()
        contexts = tlsOf(top).contexts
        assert contexts is not None
        before = contexts.store.lookup("secure.example")
        self.writeCertificate("secure.example", "www.secure.example")
        answer = self.reload()
        self.assertEqual(answer["status"], "ok", answer)
        self.assertServesRuntime(top)
        renewed = contexts.store.lookup("secure.example")
        assert renewed is not None
        self.assertIsNot(renewed, before)
        self.assertEqual(renewed.names, ("secure.example", "www.secure.example"))
        client, _ = self.connectTLS()
        self.assertIsNone(client.lost)
        transport = client.transport
        assert transport is not None
        peerCertificate = cast(ISSLTransport, transport).getPeerCertificate()
        assert isinstance(peerCertificate, crypto.X509)
        peer = peerCertificate.to_cryptography()
        san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            san.value.get_values_for_type(x509.DNSName),
            ["secure.example", "www.secure.example"],
        )

        with open(os.path.join(self.directory, "cert.pem"), "wb") as f:
            f.write(b"garbage\n")
        answer = self.reload()
        self.assertEqual(answer["status"], "error")
        self.assertEqual(answer["code"], "certificate_invalid")
        self.assertIs(contexts.store.lookup("secure.example"), renewed)
        self.assertServesRuntime(top)


class NoHTTPSServiceTests(SynchronousTestCase):
    """
    The tree without C{listen_https}.
    """

    def test_noTLS(self) -> None:
        """
        Without C{listen_https} there are no contexts, no TLS listener and
        no refusal log.
        """
        hook = ExceptHookRecorder()
        self.patch(sys, "excepthook", hook)
        reactor = MemoryReactorClock()
        top = buildService(config(), "", cast(IRevProxyReactor, reactor))
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        self.assertRaises(KeyError, top.getServiceNamed, "tls")
        self.assertRaises(KeyError, top.getServiceNamed, "tls")
        self.assertIs(sys.excepthook, hook)
        for _, factory, _, _ in reactor.tcpServers:
            self.assertIs(cast(GatedFactory, factory).wrapped, pathOf(top).tracker)


class ReactorConnectorTests(SynchronousTestCase):
    """
    L{reactorConnector} opens plain TCP for http:// upstreams and TLS, as
    the site's settings say, for https:// ones.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.connect = reactorConnector(cast(IRevProxyReactor, self.reactor))
        self.factory = ClientFactory()

    def creator(self, index: int = -1) -> IOpenSSLClientConnectionCreator:
        creator = self.reactor.sslClients[index][3]
        assert IOpenSSLClientConnectionCreator.providedBy(creator)
        return creator

    def clientConnection(
        self, creator: IOpenSSLClientConnectionCreator
    ) -> SSL.Connection:
        tlsFactory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(Protocol), self.reactor
        )
        protocol = tlsFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, TLSMemoryBIOProtocol)
        return creator.clientConnectionForTLS(protocol)

    def test_http(self) -> None:
        """
        An http:// key connects with C{connectTCP} and the timeout.
        """
        self.connect(("http", "10.0.0.1", 8000, None), self.factory, 3.0)
        self.assertEqual(
            self.reactor.tcpClients, [("10.0.0.1", 8000, self.factory, 3.0, None)]
        )
        self.assertEqual(self.reactor.sslClients, [])

    def test_httpsUnverified(self) -> None:
        """
        An https:// key without verification connects with C{connectSSL}
        and a creator that sends SNI and verifies nothing.
        """
        self.connect(
            ("https", "backend.internal", 8443, UpstreamTLS(verify=False)),
            self.factory,
            4.0,
        )
        [(host, port, factory, _, timeout, bindAddress)] = self.reactor.sslClients
        self.assertEqual(
            (host, port, timeout, bindAddress), ("backend.internal", 8443, 4.0, None)
        )
        self.assertIs(factory, self.factory)
        self.assertEqual(self.reactor.tcpClients, [])
        connection = self.clientConnection(self.creator())
        self.assertEqual(connection.get_servername(), b"backend.internal")
        self.assertEqual(connection.get_context().get_verify_mode(), SSL.VERIFY_NONE)

    def test_httpsVerified(self) -> None:
        """
        An https:// key with a CA file connects with a creator that sends
        SNI and verifies the peer.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        caFile = os.path.join(directory, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(_CA.cert_pem.bytes())
        self.connect(
            ("https", "backend.internal", 8443, loadUpstreamTLS(caFile, True)),
            self.factory,
            4.0,
        )
        connection = self.clientConnection(self.creator())
        self.assertEqual(connection.get_servername(), b"backend.internal")
        self.assertTrue(connection.get_context().get_verify_mode() & SSL.VERIFY_PEER)

    def test_creatorsCached(self) -> None:
        """
        Connections with the same host and settings share a creator; other
        settings get another.
        """
        unverified = ("https", "backend.internal", 8443, UpstreamTLS(verify=False))
        self.connect(unverified, self.factory, 4.0)
        self.connect(unverified, self.factory, 4.0)
        self.connect(
            ("https", "backend.internal", 8443, UpstreamTLS()), self.factory, 4.0
        )
        self.assertIs(self.creator(0), self.creator(1))
        self.assertIsNot(self.creator(0), self.creator(2))


class ACMEServiceTests(SynchronousTestCase):
    """
    The tree with a C{tls = "acme"} site.
    """

    def test_placeholderServed(self) -> None:
        """
        An acme site is served its self-signed placeholder from the start,
        by SNI, while nothing has been issued; the admin socket's factory
        and the root resource know the manager; a reload that removes the
        site drops its certificate from the listeners.
        """
        stateDir = self.mktemp()
        text = f"""
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = ["tcp:8443:interface=127.0.0.1"]
admin_socket_path = ""
state_dir = "{stateDir}"

[acme]
email = "ops@example.com"
directory_url = "http://127.0.0.1:1/dir"

[[sites]]
name = "auto"
hosts = ["auto.example"]
upstreams = ["http://127.0.0.1:9000"]
tls = "acme"
redirect_http = true
"""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        reactor = MemoryReactorClock()
        top = buildService(parseConfig(text), path, cast(IRevProxyReactor, reactor))
        contexts = tlsOf(top).contexts
        manager = cast(AcmeManager, top.getServiceNamed("acme"))
        assert contexts is not None and manager is not None
        cert = contexts.store.lookup("auto.example")
        assert cert is not None
        self.assertEqual(cert.source, "placeholder")
        self.assertEqual(cert.names, ("auto.example",))
        self.assertIs(top.getServiceNamed("acme"), manager)
        self.assertFalse(manager.isIssued("auto"))
        self.assertIn("auto", pathOf(top).holder.current.secured)
        with open(path, "w") as f:
            f.write(
                text.split("[[sites]]")[0]
                + """
[[sites]]
name = "plain"
hosts = ["plain.example"]
upstreams = ["http://127.0.0.1:9000"]
"""
            )
        answer = reloadAnswer(self.successResultOf(reloaderOf(top).reload("test")))
        self.assertEqual(answer["status"], "ok", answer)
        self.assertIsNone(contexts.store.lookup("auto.example"))
        self.assertEqual(manager.certificates(), {})


class BacklogTests(SynchronousTestCase):
    """
    L{withBacklog} gives TCP listeners nginx's backlog unless they set one.
    """

    def test_tcp(self) -> None:
        """
        TCP endpoints without a backlog get C{backlog=511}.
        """
        self.assertEqual(withBacklog("tcp:80"), "tcp:80:backlog=511")
        self.assertEqual(
            withBacklog("tcp6:443:interface=\\:\\:1"),
            "tcp6:443:interface=\\:\\:1:backlog=511",
        )

    def test_kept(self) -> None:
        """
        A backlog set in the config, and non-TCP endpoints, are kept.
        """
        self.assertEqual(withBacklog("tcp:80:backlog=64"), "tcp:80:backlog=64")
        self.assertEqual(withBacklog("unix:/run/x.sock"), "unix:/run/x.sock")


class OperationsWiringTests(SynchronousTestCase):
    """
    What a reload carries over of the operations state: rate-limit buckets
    of unchanged limits, the generation the access log and metrics see.
    """

    LIMITED = CONFIG + ("rate_limit = { requests_per_second = 1, burst = 2 }\n")

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.path = self.mktemp()
        self.write(self.LIMITED)
        self.top = buildService(
            loadConfig(self.path), self.path, cast(IRevProxyReactor, self.reactor)
        )

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def reload(self) -> None:
        answers: list[Any] = []
        reloaderOf(self.top).reload("test").addCallback(answers.append)
        self.assertEqual(reloadAnswer(answers[0])["status"], "ok", answers)

    def test_bucketsFollowLimits(self) -> None:
        """
        A reload that leaves a site's limit alone keeps its buckets; one
        that changes the limit starts them afresh.
        """
        limit = pathOf(self.top).holder.current.config.sites[0].rate_limit
        for _ in range(2):
            pathOf(self.top).limiter.allow("demo", limit, "192.0.2.1")
        self.write(self.LIMITED + "default = true\n")
        self.reload()
        self.assertIsNotNone(pathOf(self.top).limiter.bucket("demo", "192.0.2.1"))
        self.write(self.LIMITED.replace("burst = 2", "burst = 3"))
        self.reload()
        self.assertIsNone(pathOf(self.top).limiter.bucket("demo", "192.0.2.1"))

    def test_generationAndReloadCount(self) -> None:
        """
        After a reload, the observer logs the new generation and the
        metrics count the reload.
        """
        self.write(self.LIMITED + "default = true\n")
        self.reload()
        self.assertEqual(pathOf(self.top).observer.generation, 2)
        self.assertEqual(pathOf(self.top).metrics.sources.generation(), 2)
        self.assertEqual(
            pathOf(self.top).metrics.registry.get_sample_value(
                "revproxy_reloads_total", {"result": "ok"}
            ),
            1.0,
        )

    def test_partiallyApplied(self) -> None:
        """
        When a part fails to follow a reload (here the health checks), the
        new config still serves, the others follow it, and the answer is
        C{"partially applied"}, naming the part; the metrics count a failed
        reload.
        """
        health = cast(HealthMonitor, self.top.getServiceNamed("health"))

        def broken(routes: object) -> None:
            raise RuntimeError("health checks broke")

        self.patch(health, "update", broken)
        self.write(self.LIMITED + "default = true\n")
        answers: list[Any] = []
        reloaderOf(self.top).reload("test").addCallback(answers.append)
        answer = reloadAnswer(answers[0])
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["failed"], ["upstream health checks"])
        self.assertEqual(pathOf(self.top).holder.current.generation, 2)
        self.assertEqual(pathOf(self.top).observer.generation, 2)
        self.assertEqual(
            pathOf(self.top).metrics.registry.get_sample_value(
                "revproxy_reloads_total", {"result": "failed"}
            ),
            1.0,
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PasswordThreadsTests(SynchronousTestCase):
    """
    L{PasswordThreads}: the threads of password checks leave a core to the
    reactor.
    """

    def test_size(self) -> None:
        """
        One fewer thread than cores, at least one; or as many as given.
        """
        from revproxy.service import PasswordThreads

        reactor = cast(IRevProxyReactor, MemoryReactorClock())
        self.patch(os, "cpu_count", lambda: 8)
        self.assertEqual(PasswordThreads(reactor).pool.max, 7)
        self.patch(os, "cpu_count", lambda: 1)
        self.assertEqual(PasswordThreads(reactor).pool.max, 1)
        self.assertEqual(PasswordThreads(reactor, 3).pool.max, 3)

    def test_tooManyWaiting(self) -> None:
        """
        Past the threads and C{waiting} checks, a check fails at once with
        L{ChecksBusy} (the pool not started, nothing runs here).
        """
        from revproxy.access import ChecksBusy
        from revproxy.service import PasswordThreads

        reactor = cast(IRevProxyReactor, MemoryReactorClock())
        threads = PasswordThreads(reactor, threads=1, waiting=1)
        first = threads.run(lambda: True)
        second = threads.run(lambda: True)
        self.assertEqual(threads.pending, 2)
        self.failureResultOf(threads.run(lambda: True), ChecksBusy)
        self.assertNoResult(first)
        self.assertNoResult(second)
