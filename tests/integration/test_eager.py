"""
Tests for L{revproxy.proxy.eager}: writing to a plain TCP connection at
once, on Twisted's real TCP transport over loopback.  (L{plainTCP} on
in-memory transports: L{tests.test_plaintcp}.)
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, cast

import trustme
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import TestCase

from revproxy.proxy.eager import (
    EagerTLS,
    EagerTLSFactory,
    noDelay,
    sendNow,
    writerFor,
)

reactor: Any = globalReactor


class _Server(Protocol):
    """
    Hands its connection to the test.
    """

    def __init__(self, made: Deferred[_Server]) -> None:
        self.made = made
        self.lost: Deferred[None] = Deferred()
        self.received: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.received.called:
            self.received.callback(data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class SendNowTests(TestCase):
    """
    L{sendNow} and the private names of Twisted's TCP transport it reads.
    """

    async def connect(self, wrap: bool = False) -> tuple[_Server, socket.socket]:
        made: Deferred[_Server] = Deferred()
        factory: Any = Factory.forProtocol(lambda: _Server(made))
        if wrap:
            factory = WrappingFactory(factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.settimeout(5)
        server = await made

        async def close() -> None:
            transport: Any = server.transport
            if transport is not None and transport.connected:
                transport.loseConnection()
                await server.lost

        self.addCleanup(close)
        return server, client

    def test_privateNames(self) -> Deferred[None]:
        """
        The names L{sendNow} reads exist on Twisted's TCP connection with the
        values of an empty buffer.
        """

        async def check() -> None:
            server, _ = await self.connect()
            transport: Any = server.transport
            self.assertIsInstance(transport, Connection)
            self.assertEqual(transport._tempDataLen, 0)
            self.assertEqual(transport.dataBuffer, b"")
            self.assertEqual(transport.offset, 0)
            self.assertFalse(transport._writeDisconnected)
            self.assertIsInstance(transport.socket, socket.socket)
            transport.write(b"buffered")
            self.assertEqual(transport._tempDataLen, 8)

        return Deferred.fromCoroutine(check())

    def test_sentAtOnce(self) -> Deferred[None]:
        """
        With nothing buffered, the bytes reach the peer before the reactor
        runs again: the transport's buffer stays empty.
        """

        async def check() -> None:
            server, client = await self.connect()
            transport: Any = server.transport
            sendNow(transport, b"hello")
            self.assertEqual(transport._tempDataLen, 0)
            self.assertEqual(client.recv(100), b"hello")

        return Deferred.fromCoroutine(check())

    def test_afterBufferedInOrder(self) -> Deferred[None]:
        """
        With bytes buffered by the transport, more go behind them, in
        order, through the transport.
        """

        async def check() -> None:
            server, client = await self.connect()
            transport: Any = server.transport
            transport.write(b"first ")
            sendNow(transport, b"second")
            self.assertEqual(transport._tempDataLen, 12)
            received = b""
            while len(received) < 12:
                done: Deferred[None] = Deferred()
                reactor.callLater(0.01, done.callback, None)
                await done
                try:
                    received += client.recv(100, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            self.assertEqual(received, b"first second")

        return Deferred.fromCoroutine(check())

    def test_throughWrapper(self) -> Deferred[None]:
        """
        A protocol under a L{ProtocolWrapper} that passes writes on finds
        the TCP connection under it.
        """

        async def check() -> None:
            server, client = await self.connect(wrap=True)
            wrapper = server.transport
            self.assertIsInstance(wrapper, ProtocolWrapper)
            write = writerFor(wrapper)
            assert write is not None
            write(b"via wrapper")
            self.assertEqual(client.recv(100), b"via wrapper")

        return Deferred.fromCoroutine(check())

    def test_noDelay(self) -> Deferred[None]:
        """
        L{noDelay} turns Nagle's algorithm off on the TCP connection under
        a wrapper; a transport without TCP is left alone.
        """

        async def check() -> None:
            server, _ = await self.connect(wrap=True)
            transport: Any = server.transport
            sock = transport.transport.socket
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
            noDelay(transport)
            self.assertNotEqual(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0
            )
            noDelay(StringTransport())

        return Deferred.fromCoroutine(check())


class EagerTLSTests(TestCase):
    """
    L{EagerTLSFactory}'s connections send each record at once, and
    L{writerFor} skips the write buffering of Twisted's TLS transport.
    """

    async def connect(self) -> tuple[_Server, ssl.SSLSocket]:
        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        options = PrivateCertificate.loadPEM(
            issued.private_key_and_cert_chain_pem.bytes()
        ).options()
        made: Deferred[_Server] = Deferred()
        factory = EagerTLSFactory(
            options, False, WrappingFactory(Factory.forProtocol(lambda: _Server(made)))
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        raw = socket.create_connection(("127.0.0.1", port.getHost().port))
        context = ssl.create_default_context()
        ca.configure_trust(context)
        client = context.wrap_socket(
            raw, server_hostname="localhost", do_handshake_on_connect=False
        )
        self.addCleanup(client.close)
        client.setblocking(False)
        server = await made
        # The handshake, a step at a time, the reactor running between.
        for _ in range(500):
            try:
                client.do_handshake()
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pause: Deferred[None] = Deferred()
                reactor.callLater(0.01, pause.callback, None)
                await pause
        else:
            self.fail("no TLS handshake")
        client.settimeout(5)
        # As a request does: the server answers once it has read, when its
        # side of the handshake is done too.
        client.sendall(b"ping")
        self.assertEqual(await server.received, b"ping")

        async def close() -> None:
            transport: Any = server.transport
            if not server.lost.called and transport is not None:
                transport.abortConnection()
                await server.lost

        self.addCleanup(close)
        return server, client

    def test_sentAtOnce(self) -> Deferred[None]:
        """
        What the writer from L{writerFor} gets is a TLS record on the socket
        before the reactor runs again; the TLS transport is an L{EagerTLS}.
        """

        async def check() -> None:
            server, client = await self.connect()
            wrapper: Any = server.transport
            self.assertIsInstance(wrapper.transport, EagerTLS)
            write = writerFor(wrapper)
            assert write is not None
            write(b"hello")
            write(b" again")
            received = b""
            while len(received) < 11:
                received += client.recv(100)
            self.assertEqual(received, b"hello again")

        return Deferred.fromCoroutine(check())

    def test_bufferedWritesStillGo(self) -> Deferred[None]:
        """
        The TLS transport's own C{write} (what HTTP/2 uses) still gathers
        and sends, at the next reactor iteration.
        """

        async def check() -> None:
            server, client = await self.connect()
            transport: Any = server.transport
            transport.write(b"one ")
            transport.write(b"two")
            client.setblocking(False)
            received = b""
            for _ in range(500):
                pause: Deferred[None] = Deferred()
                reactor.callLater(0.01, pause.callback, None)
                await pause
                try:
                    received += client.recv(100)
                except ssl.SSLWantReadError:
                    continue
                if len(received) >= 7:
                    break
            self.assertEqual(received, b"one two")

        return Deferred.fromCoroutine(check())

    def test_order(self) -> Deferred[None]:
        """
        C{writeNow} sends what C{write} gathered first; a write larger
        than the socket takes (several records, more than the kernel's
        buffer) arrives whole and in order, the rest sent by the TCP
        transport as the peer reads.
        """

        async def check() -> None:
            server, client = await self.connect()
            wrapper: Any = server.transport
            tls = wrapper.transport
            big = bytes(range(256)) * 16384  # 4 MiB
            tls.write(b"gathered ")
            tls.writeNow(b"now ")
            tls.writeNow(big)
            tls.write(b" end")
            client.setblocking(False)
            expected = b"gathered now " + big + b" end"
            received = bytearray()
            for _ in range(2000):
                try:
                    received += client.recv(1 << 20)
                except ssl.SSLWantReadError:
                    pause: Deferred[None] = Deferred()
                    reactor.callLater(0.001, pause.callback, None)
                    await pause
                if len(received) >= len(expected):
                    break
            self.assertEqual(bytes(received), expected)

        return Deferred.fromCoroutine(check())

    def test_lostWithGathered(self) -> Deferred[None]:
        """
        Writes gathered when the connection is lost are dropped with their
        flush (no delayed call is left: trial checks the reactor is clean),
        and a loseConnection first sends what was gathered.
        """

        async def check() -> None:
            server, client = await self.connect()
            wrapper: Any = server.transport
            tls = wrapper.transport
            tls.write(b"sent before the close")
            tls.loseConnection()
            client.setblocking(False)
            received = b""
            for _ in range(500):
                try:
                    data = client.recv(100)
                except ssl.SSLWantReadError:
                    pause: Deferred[None] = Deferred()
                    reactor.callLater(0.01, pause.callback, None)
                    await pause
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionError):
                    break
                if not data:
                    break
                received += data
            self.assertEqual(received, b"sent before the close")
            # The server waits for the client's side of the TLS shutdown.
            client.close()
            await server.lost

            other, _ = await self.connect()
            otherTLS = cast(Any, other.transport).transport
            otherTLS.write(b"never sent")
            otherTLS.abortConnection()
            await other.lost
            self.assertEqual(otherTLS._pending, [])

        return Deferred.fromCoroutine(check())
