"""
Every private name of another library that revproxy uses, each wrapped in
one module of L{revproxy.private}: a release that removes or changes one
fails one test here, with one message that names the library, the name and
what revproxy needs it for, instead of a request in production.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from acme.client import ClientV2
from h2.config import H2Configuration
from h2.connection import H2Connection
from OpenSSL import SSL
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import InterfaceClass

from revproxy.private import twisted as privateTwisted
from revproxy.private.h2 import forgetContentLength
from revproxy.private.pyopenssl import setCurvesList
from revproxy.private.txredisapi import connected


class PrivateNamesTests(SynchronousTestCase):
    """
    Each private name still is what revproxy takes it for.
    """

    @contextmanager
    def needs(
        self, library: str, name: str, module: str, purpose: str
    ) -> Iterator[None]:
        """
        Fail with one clear message if the block finds C{name} gone or
        changed.

        @param library: The library, as C{pyOpenSSL}.
        @param name: Its private name, as C{OpenSSL._util.lib}.
        @param module: The revproxy module that uses it.
        @param purpose: What for, after C{needs a new way to}.
        """
        try:
            yield
        except (ImportError, AttributeError, KeyError, self.failureException) as e:
            self.fail(
                f"{library} no longer has {name} as revproxy knows it ({e}): "
                f"{module} needs a new way to {purpose}"
            )

    # -- pyOpenSSL

    def test_curvesList(self) -> None:
        """
        pyOpenSSL's C{OpenSSL._util.lib.SSL_CTX_set1_curves_list}, which
        L{setCurvesList} calls: it accepts X25519 and refuses a name that is
        no group.
        """
        with self.needs(
            "pyOpenSSL",
            "OpenSSL._util.lib.SSL_CTX_set1_curves_list",
            "revproxy/private/pyopenssl.py",
            "restrict the key exchange groups of a TLS context",
        ):
            from OpenSSL._util import lib

            self.assertTrue(callable(lib.SSL_CTX_set1_curves_list))
            context = SSL.Context(SSL.TLS_METHOD)
            self.assertTrue(setCurvesList(context, b"X25519:P-256"))
            self.assertFalse(setCurvesList(context, b"no-such-group"))

    def test_contextPointer(self) -> None:
        """
        pyOpenSSL's C{Context._context}, the OpenSSL C{SSL_CTX} pointer that
        L{setCurvesList} passes to OpenSSL.
        """
        with self.needs(
            "pyOpenSSL",
            "SSL.Context._context",
            "revproxy/private/pyopenssl.py",
            "pass a context to OpenSSL's SSL_CTX_set1_curves_list",
        ):
            from OpenSSL._util import ffi

            context = SSL.Context(SSL.TLS_METHOD)
            self.assertEqual(ffi.typeof(context._context).cname, "SSL_CTX *")

    def test_noOverlappingProtocols(self) -> None:
        """
        pyOpenSSL's C{SSL._NoOverlappingProtocols}, the type of what an ALPN
        callback returns to select nothing
        (L{revproxy.private.pyopenssl.NoOverlappingProtocols}).
        """
        with self.needs(
            "pyOpenSSL",
            "SSL._NoOverlappingProtocols",
            "revproxy/private/pyopenssl.py",
            "annotate the ALPN callback's answer of no protocol",
        ):
            self.assertIsInstance(
                SSL.NO_OVERLAPPING_PROTOCOLS, SSL._NoOverlappingProtocols
            )

    # -- acme

    def test_acmePostAsGet(self) -> None:
        """
        C{acme}'s C{ClientV2._post_as_get}, the POST-as-GET of RFC 8555
        section 6.3, which L{revproxy.private.acme.postAsGet} calls.
        """
        with self.needs(
            "acme",
            "ClientV2._post_as_get",
            "revproxy/private/acme.py",
            "send a POST-as-GET (RFC 8555 section 6.3)",
        ):
            self.assertTrue(callable(ClientV2._post_as_get))

    # -- Twisted

    def test_trustRootInterface(self) -> None:
        """
        Twisted's C{IOpenSSLTrustRoot} (only in its private C{_sslverify}),
        the type of what the public C{trustRootFromCertificates} returns.
        """
        with self.needs(
            "Twisted",
            "twisted.internet._sslverify.IOpenSSLTrustRoot",
            "revproxy/private/twisted.py",
            "annotate an upstream's trust root",
        ):
            from twisted.internet import _sslverify

            self.assertIsInstance(_sslverify.IOpenSSLTrustRoot, InterfaceClass)
            self.assertIn("_addCACertsToContext", _sslverify.IOpenSSLTrustRoot.names())

    def connection(self) -> Any:
        """
        A Twisted TCP connection over one end of a socket pair, never
        registered with a reactor.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        connection = Connection(ours, Protocol(), MemoryReactor())
        connection.connected = True
        return connection

    def test_tcpWriteBuffer(self) -> None:
        """
        Twisted's C{FileDescriptor._tempDataLen}, C{dataBuffer}, C{offset}
        and C{_writeDisconnected}, which
        L{revproxy.private.twisted.canSendNow} reads: an empty buffer, then
        one write waiting in it.
        """
        with self.needs(
            "Twisted",
            "FileDescriptor._tempDataLen, dataBuffer, offset and _writeDisconnected",
            "revproxy/private/twisted.py",
            "tell whether a TCP connection has nothing buffered (eager writes)",
        ):
            connection = self.connection()
            self.assertEqual(connection._tempDataLen, 0)
            self.assertEqual(connection.dataBuffer, b"")
            self.assertEqual(connection.offset, 0)
            self.assertFalse(connection._writeDisconnected)
            self.assertTrue(privateTwisted.canSendNow(connection))
            connection.write(b"buffered")
            self.assertEqual(connection._tempDataLen, 8)
            self.assertFalse(privateTwisted.canSendNow(connection))

    def test_tcpEndpointAddress(self) -> None:
        """
        Twisted's C{TCP4ServerEndpoint._port} and C{_interface} (and
        C{TCP6ServerEndpoint}'s), which L{revproxy.private.twisted.tcpPort}
        and C{tcpInterface} read.
        """
        with self.needs(
            "Twisted",
            "TCP4ServerEndpoint._port and _interface",
            "revproxy/private/twisted.py",
            "read the port and interface of a listen endpoint (config checks)",
        ):
            endpoint = serverFromString(MemoryReactor(), "tcp:8080:interface=127.0.0.1")
            self.assertIsInstance(endpoint, TCP4ServerEndpoint)
            self.assertEqual(endpoint._port, 8080)
            self.assertEqual(endpoint._interface, "127.0.0.1")
            self.assertEqual(privateTwisted.tcpPort(endpoint), 8080)
            self.assertEqual(privateTwisted.tcpInterface(endpoint), "127.0.0.1")
            endpoint6 = serverFromString(MemoryReactor(), "tcp6:443")
            self.assertIsInstance(endpoint6, TCP6ServerEndpoint)
            self.assertEqual(privateTwisted.tcpPort(endpoint6), 443)
            self.assertEqual(privateTwisted.tcpInterface(endpoint6), "::")

    def test_tcpEndpointBacklog(self) -> None:
        """
        Twisted's C{TCP4ServerEndpoint._backlog}, which
        L{revproxy.private.twisted.tcpBacklog} reads.
        """
        with self.needs(
            "Twisted",
            "TCP4ServerEndpoint._backlog",
            "revproxy/private/twisted.py",
            "bind one SO_REUSEPORT socket per worker with the listener's backlog",
        ):
            endpoint = serverFromString(MemoryReactor(), "tcp:8080:backlog=511")
            self.assertEqual(endpoint._backlog, 511)
            self.assertEqual(privateTwisted.tcpBacklog(endpoint), 511)
            self.assertEqual(privateTwisted.tcpBacklog(object()), 50)

    def test_unixEndpointAddress(self) -> None:
        """
        Twisted's C{UNIXServerEndpoint._address}, which
        L{revproxy.private.twisted.unixPath} reads.
        """
        with self.needs(
            "Twisted",
            "UNIXServerEndpoint._address",
            "revproxy/private/twisted.py",
            "read the path of a unix: listen endpoint (config checks)",
        ):
            endpoint = serverFromString(MemoryReactor(), "unix:/run/x.sock")
            self.assertIsInstance(endpoint, UNIXServerEndpoint)
            self.assertEqual(endpoint._address, "/run/x.sock")
            self.assertEqual(privateTwisted.unixPath(endpoint), "/run/x.sock")

    def test_processPipes(self) -> None:
        """
        Twisted's C{Process.pipes} (each child descriptor's
        C{ProcessWriter}, with C{doWrite}), which
        L{revproxy.private.twisted.flushToChild} writes through.
        """
        with self.needs(
            "Twisted",
            "Process.pipes and ProcessWriter.doWrite",
            "revproxy/private/twisted.py",
            "write an ACME challenge to the workers before the CA is told",
        ):
            import inspect

            from twisted.internet import process

            self.assertIn("self.pipes", inspect.getsource(process.Process.__init__))
            self.assertTrue(callable(process.ProcessWriter.doWrite))

            class Writer:
                disconnecting = disconnected = False
                written = 0

                def doWrite(self) -> None:
                    self.written += 1

            writer = Writer()
            privateTwisted.flushToChild(type("P", (), {"pipes": {3: writer}})(), 3)
            privateTwisted.flushToChild(type("P", (), {"pipes": {}})(), 3)
            self.assertEqual(writer.written, 1)

    # -- txredisapi

    def test_redisFactoryPool(self) -> None:
        """
        txredisapi's C{RedisFactory.pool}, which
        L{revproxy.private.txredisapi.connected} reads.
        """
        with self.needs(
            "txredisapi",
            "RedisFactory.pool",
            "revproxy/private/txredisapi.py",
            "tell whether the cluster's Redis connection is open",
        ):
            import txredisapi  # type: ignore[import-untyped]

            factory = txredisapi.RedisFactory("127.0.0.1:6379", 0, 1, isLazy=True)
            self.assertEqual(factory.pool, [])
            self.assertFalse(connected(factory))
            factory.pool.append(object())
            self.assertTrue(connected(factory))

    # -- h2

    def test_expectedContentLength(self) -> None:
        """
        C{h2}'s C{H2Stream._expected_content_length}, which
        L{forgetContentLength} clears: a request's content-length is kept
        there.
        """
        with self.needs(
            "h2",
            "H2Stream._expected_content_length",
            "revproxy/private/h2.py",
            "stop checking a request body answered early against its content-length",
        ):
            client = H2Connection(H2Configuration(client_side=True))
            client.initiate_connection()
            client.send_headers(
                1,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", "a.test"),
                    (":path", "/"),
                    ("content-length", "100"),
                ],
            )
            server = H2Connection(H2Configuration(client_side=False))
            server.initiate_connection()
            server.receive_data(client.data_to_send())
            stream: Any = server.streams[1]
            self.assertEqual(stream._expected_content_length, 100)
            forgetContentLength(server, 1)
            self.assertIsNone(stream._expected_content_length)
