"""
Tests for L{revproxy.tls}.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import cast

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from revproxy.acme.challenges import ACME_IDENTIFIER_OID, ChallengeStore
from revproxy.certificates import LoadedCertificate
from revproxy.config import ConfigError, parseConfig
from revproxy.hostnames import nameCovers
from revproxy.interfaces import ICertificateStore
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, UpstreamTLS
from revproxy.tls import (
    ACME_TLS_ALPN,
    HANDSHAKE_TIMEOUT,
    CertificateError,
    CertificateStore,
    HandshakeDeadline,
    RefusalLog,
    SNIContextFactory,
    TLSFiles,
    UnknownServerName,
    loadCertificateFiles,
    loadTLSFiles,
)
from tests.fakes import FakeCertificateStore
from tests.tlshelpers import Echo, ExceptHookRecorder, Recorder

_CA = trustme.CA()
_FAR_PAST = datetime(2020, 1, 1, tzinfo=UTC)


def _ts(when: datetime) -> float:
    return when.timestamp()


class _Files:
    """
    PEM files written into a test's temporary directory.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = case.mktemp()
        os.mkdir(self.directory)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def leaf(self, prefix: str, leaf: trustme.LeafCert) -> tuple[str, str]:
        """
        Write C{leaf}'s chain and key; return their paths.
        """
        certPath = self.write(
            f"{prefix}-cert.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems)
        )
        keyPath = self.write(f"{prefix}-key.pem", leaf.private_key_pem.bytes())
        return certPath, keyPath


def _load(
    case: SynchronousTestCase, *names: str, ca: trustme.CA = _CA
) -> LoadedCertificate:
    files = _Files(case)
    certPath, keyPath = files.leaf("site", ca.issue_cert(*names))
    cert, warnings = loadCertificateFiles(
        certPath, keyPath, names, _ts(datetime(2026, 1, 1, tzinfo=UTC))
    )
    case.assertEqual(warnings, [])
    return cert


class LoadCertificateFilesTests(SynchronousTestCase):
    """
    Tests for L{loadCertificateFiles}.
    """

    def setUp(self) -> None:
        self.files = _Files(self)
        self.now = _ts(datetime(2026, 6, 1, tzinfo=UTC))

    def test_good(self) -> None:
        """
        A matching chain and key load with their names, expiry and issuer,
        and no warnings.
        """
        notAfter = datetime(2027, 1, 1, tzinfo=UTC)
        leaf = _CA.issue_cert(
            "Example.com", "*.example.com", not_before=_FAR_PAST, not_after=notAfter
        )
        certPath, keyPath = self.files.leaf("good", leaf)
        cert, warnings = loadCertificateFiles(
            certPath, keyPath, ("example.com", "a.example.com"), self.now
        )
        self.assertEqual(warnings, [])
        self.assertEqual(cert.names, ("example.com", "*.example.com"))
        self.assertEqual(cert.not_after, _ts(notAfter))
        self.assertEqual(cert.source, "files")
        self.assertEqual(cert.path, certPath)
        caCert = x509.load_pem_x509_certificate(_CA.cert_pem.bytes())
        self.assertEqual(cert.issuer, caCert.subject.rfc4514_string())
        self.assertEqual(
            cert.chain[0].public_bytes(serialization.Encoding.PEM),
            leaf.cert_chain_pems[0].bytes(),
        )
        self.assertIsInstance(cert.key, ec.EllipticCurvePrivateKey)

    def test_chainWithIntermediate(self) -> None:
        """
        An intermediate certificate after the leaf is kept, in order.
        """
        intermediate = _CA.create_child_ca()
        certPath, keyPath = self.files.leaf("chain", intermediate.issue_cert("a.test"))
        cert, warnings = loadCertificateFiles(certPath, keyPath, ["a.test"], self.now)
        self.assertEqual(warnings, [])
        self.assertEqual(len(cert.chain), 2)
        self.assertEqual(cert.chain[0].issuer, cert.chain[1].subject)

    def test_mismatchedKey(self) -> None:
        """
        A key that is not the leaf's is an error naming both files.
        """
        certPath, _ = self.files.leaf("a", _CA.issue_cert("a.test"))
        _, otherKey = self.files.leaf("b", _CA.issue_cert("a.test"))
        e = self.assertRaises(
            CertificateError,
            loadCertificateFiles,
            certPath,
            otherKey,
            ["a.test"],
            self.now,
        )
        self.assertEqual(
            str(e), f"{otherKey} does not match the certificate in {certPath}"
        )

    def test_expired(self) -> None:
        """
        A leaf whose not-after has passed is an error with its date.
        """
        leaf = _CA.issue_cert(
            "a.test",
            not_before=_FAR_PAST,
            not_after=datetime(2026, 1, 1, tzinfo=UTC),
        )
        certPath, keyPath = self.files.leaf("old", leaf)
        e = self.assertRaises(
            CertificateError,
            loadCertificateFiles,
            certPath,
            keyPath,
            ["a.test"],
            self.now,
        )
        self.assertEqual(
            str(e), f"{certPath}: certificate expired 2026-01-01T00:00:00Z"
        )

    def test_expiringSoon(self) -> None:
        """
        A leaf expiring in 3 days loads with a warning.
        """
        notAfter = datetime(2026, 6, 4, tzinfo=UTC)
        leaf = _CA.issue_cert("a.test", not_before=_FAR_PAST, not_after=notAfter)
        certPath, keyPath = self.files.leaf("soon", leaf)
        cert, warnings = loadCertificateFiles(certPath, keyPath, ["a.test"], self.now)
        self.assertEqual(
            warnings, [f"{certPath}: certificate expires 2026-06-04T00:00:00Z"]
        )
        self.assertEqual(cert.not_after, _ts(notAfter))
        _, warnings = loadCertificateFiles(
            certPath, keyPath, ["a.test"], _ts(notAfter - timedelta(days=8))
        )
        self.assertEqual(warnings, [])

    def test_namesNotCovered(self) -> None:
        """
        Hosts the names do not cover are a warning; a wildcard name covers
        one label only, and only the same wildcard covers a wildcard host.
        """
        certPath, keyPath = self.files.leaf(
            "w", _CA.issue_cert("example.com", "*.example.com")
        )
        hosts = ["example.com", "a.example.com", "a.b.example.com", "*.example.com"]
        _, warnings = loadCertificateFiles(certPath, keyPath, hosts, self.now)
        self.assertEqual(
            warnings,
            [
                f"{certPath}: certificate names (example.com, *.example.com) "
                "do not cover a.b.example.com"
            ],
        )
        _, warnings = loadCertificateFiles(certPath, keyPath, ["other.test"], self.now)
        self.assertEqual(len(warnings), 1)
        self.assertIn("do not cover other.test", warnings[0])

    def test_nameCovers(self) -> None:
        """
        L{nameCovers} matches exact names and one-label wildcards.
        """
        self.assertTrue(nameCovers("a.test", "a.test"))
        self.assertTrue(nameCovers("*.a.test", "x.a.test"))
        self.assertTrue(nameCovers("*.a.test", "*.a.test"))
        self.assertFalse(nameCovers("*.a.test", "a.test"))
        self.assertFalse(nameCovers("*.a.test", "x.y.a.test"))
        self.assertFalse(nameCovers("x.a.test", "*.a.test"))

    def test_ipAddressCovered(self) -> None:
        """
        An IP address host is covered by an IP address name.
        """
        certPath, keyPath = self.files.leaf("ip", _CA.issue_cert("127.0.0.1", "::1"))
        _, warnings = loadCertificateFiles(
            certPath, keyPath, ["127.0.0.1", "::1"], self.now
        )
        self.assertEqual(warnings, [])

    def test_noCertificate(self) -> None:
        """
        A certificate file without a PEM certificate is an error.
        """
        _, keyPath = self.files.leaf("a", _CA.issue_cert("a.test"))
        certPath = self.files.write("cert.pem", b"hello\n")
        e = self.assertRaises(
            CertificateError, loadCertificateFiles, certPath, keyPath, [], self.now
        )
        self.assertEqual(str(e), f"{certPath}: no PEM certificate found")

    def test_noKey(self) -> None:
        """
        A key file without a PEM key is an error naming it.
        """
        certPath, _ = self.files.leaf("a", _CA.issue_cert("a.test"))
        keyPath = self.files.write("key.pem", b"hello\n")
        e = self.assertRaises(
            CertificateError, loadCertificateFiles, certPath, keyPath, [], self.now
        )
        self.assertEqual(str(e), f"{keyPath}: no usable PEM private key found")

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is a clear error.
        """
        leaf = _CA.issue_cert("a.test")
        certPath, _ = self.files.leaf("a", leaf)
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        keyPath = self.files.write(
            "key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        e = self.assertRaises(
            CertificateError, loadCertificateFiles, certPath, keyPath, [], self.now
        )
        self.assertIn(f"{keyPath}: private key is encrypted", str(e))

    def test_missingFile(self) -> None:
        """
        A file that cannot be read is an error naming it.
        """
        _, keyPath = self.files.leaf("a", _CA.issue_cert("a.test"))
        certPath = os.path.join(self.files.directory, "missing.pem")
        e = self.assertRaises(
            CertificateError, loadCertificateFiles, certPath, keyPath, [], self.now
        )
        self.assertTrue(str(e).startswith(f"{certPath}: cannot read"))


class CertificateStoreTests(SynchronousTestCase):
    """
    Tests for L{CertificateStore}.
    """

    def setUp(self) -> None:
        self.a = _load(self, "a.test")
        self.wild = _load(self, "*.w.test")
        self.fallback = _load(self, "fallback.test")

    def test_interface(self) -> None:
        """
        L{CertificateStore} provides L{ICertificateStore}.
        """
        self.assertTrue(verifyObject(ICertificateStore, CertificateStore({})))

    def test_exact(self) -> None:
        """
        An exact name finds its certificate, whatever its case or a
        trailing dot.
        """
        store = CertificateStore({"a.test": self.a}, self.fallback)
        self.assertIs(store.lookup("a.test"), self.a)
        self.assertIs(store.lookup("A.Test."), self.a)

    def test_wildcardOneLabel(self) -> None:
        """
        A wildcard finds names one label below it only.
        """
        store = CertificateStore({"*.w.test": self.wild, "a.test": self.a})
        self.assertIs(store.lookup("x.w.test"), self.wild)
        self.assertIsNone(store.lookup("w.test"))
        self.assertIsNone(store.lookup("y.x.w.test"))

    def test_exactBeforeWildcard(self) -> None:
        """
        An exact name wins over a wildcard that also matches it.
        """
        store = CertificateStore({"*.w.test": self.wild, "a.w.test": self.a})
        self.assertIs(store.lookup("a.w.test"), self.a)

    def test_unknownGetsDefault(self) -> None:
        """
        An unknown name and no SNI get the default certificate.
        """
        store = CertificateStore({"a.test": self.a}, self.fallback)
        self.assertIs(store.lookup("other.test"), self.fallback)
        self.assertIs(store.lookup(None), self.fallback)

    def test_unknownWithoutDefault(self) -> None:
        """
        Without a default, an unknown name and no SNI get nothing, never
        another site's certificate.
        """
        store = CertificateStore({"a.test": self.a, "*.w.test": self.wild})
        self.assertIsNone(store.lookup("other.test"))
        self.assertIsNone(store.lookup(None))

    def test_all(self) -> None:
        """
        L{CertificateStore.all} lists each certificate once.
        """
        store = CertificateStore(
            {"a.test": self.a, "b.test": self.a, "*.w.test": self.wild}, self.a
        )
        self.assertEqual(store.all(), [self.a, self.wild])

    def test_badWildcard(self) -> None:
        """
        A C{*} that is not a whole first label is rejected.
        """
        self.assertRaises(ValueError, CertificateStore, {"a.*.test": self.a})
        self.assertRaises(ValueError, CertificateStore, {"*a.test": self.a})

    def test_fromSites(self) -> None:
        """
        L{CertificateStore.fromSites} maps every host of a site to its
        certificate, and the default site's certificate is the default.
        """

        class Site:
            def __init__(self, hosts: tuple[str, ...], default: bool) -> None:
                self.hosts = hosts
                self.default = default

        store = CertificateStore.fromSites(
            [
                (Site(("a.test", "b.test"), False), self.a),
                (Site(("*.w.test",), True), self.wild),
            ]
        )
        self.assertIs(store.lookup("b.test"), self.a)
        self.assertIs(store.lookup("x.w.test"), self.wild)
        self.assertIs(store.lookup(None), self.wild)


class _Handshake:
    """
    The outcome of a TLS handshake over memory BIOs.
    """

    def __init__(self, client: SSL.Connection, server: SSL.Connection) -> None:
        self.client = client
        self.server = server
        self.clientError: SSL.Error | None = None
        self.serverError: SSL.Error | None = None
        self.clientDone = False
        self.serverDone = False

    @property
    def ok(self) -> bool:
        return self.clientDone and self.serverDone

    def peerNames(self) -> list[str]:
        cert = self.client.get_peer_certificate(as_cryptography=True)
        assert cert is not None
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)


def _shuttle(source: SSL.Connection, sink: SSL.Connection) -> bool:
    moved = False
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        sink.bio_write(data)
        moved = True


def _pump(handshake: _Handshake) -> None:
    """
    Move bytes both ways and drive both handshakes, at most 100 rounds.
    """
    for _ in range(100):
        for side in ("client", "server"):
            conn = getattr(handshake, side)
            if getattr(handshake, side + "Done") or getattr(handshake, side + "Error"):
                continue
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                setattr(handshake, side + "Error", e)
            else:
                setattr(handshake, side + "Done", True)
        moved = _shuttle(handshake.client, handshake.server)
        moved = _shuttle(handshake.server, handshake.client) or moved
        if not moved:
            return
    raise AssertionError("handshake did not settle in 100 rounds")


def _session(handshake: _Handshake) -> SSL.Session:
    """
    The client's session after C{handshake}, once it has read what the
    server sent after the handshake (TLS 1.3 tickets).
    """
    try:
        handshake.client.recv(1)
    except SSL.WantReadError:
        pass
    session = handshake.client.get_session()
    assert session is not None
    return session


class SNIContextFactoryTests(SynchronousTestCase):
    """
    Tests for L{SNIContextFactory}, with real handshakes over memory BIOs.
    """

    def setUp(self) -> None:
        self.files = _Files(self)
        self.caFile = self.files.write("ca.pem", _CA.cert_pem.bytes())
        self.a = _load(self, "a.test")
        self.b = _load(self, "b.test", ca=_CA.create_child_ca())
        self.fallback = _load(self, "fallback.test")
        self.store = CertificateStore({"a.test": self.a, "b.test": self.b})
        self.factory = SNIContextFactory(self.store)
        # pyOpenSSL reports exceptions raised in the SNI callback with
        # sys.excepthook; record them instead of printing them.
        self.hookErrors = ExceptHookRecorder()
        self.patch(sys, "excepthook", self.hookErrors)

    def clientContext(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(self.caFile)
        ctx.set_verify(SSL.VERIFY_PEER)
        return ctx

    def serverConnection(self, factory: SNIContextFactory) -> SSL.Connection:
        tlsFactory = TLSMemoryBIOFactory(
            factory, False, Factory.forProtocol(Protocol), Clock()
        )
        protocol = tlsFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        conn = factory.serverConnectionForTLS(protocol)
        conn.set_accept_state()
        return conn

    def handshake(
        self,
        serverName: bytes | None,
        clientContext: SSL.Context | None = None,
        factory: SNIContextFactory | None = None,
        session: SSL.Session | None = None,
    ) -> _Handshake:
        client = SSL.Connection(clientContext or self.clientContext(), None)
        if serverName is not None:
            client.set_tlsext_host_name(serverName)
        if session is not None:
            client.set_session(session)
        client.set_connect_state()
        result = _Handshake(client, self.serverConnection(factory or self.factory))
        _pump(result)
        return result

    def test_interface(self) -> None:
        """
        L{SNIContextFactory} provides L{IOpenSSLServerConnectionCreator}.
        """
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, self.factory))

    def test_certificateBySNI(self) -> None:
        """
        Two sites on one listener each get their own certificate, with its
        chain, verified by the client.
        """
        a = self.handshake(b"a.test")
        self.assertTrue(a.ok, a.clientError)
        self.assertEqual(a.peerNames(), ["a.test"])
        b = self.handshake(b"b.test")
        self.assertTrue(b.ok, b.clientError)
        self.assertEqual(b.peerNames(), ["b.test"])
        chain = b.client.get_peer_cert_chain(as_cryptography=True)
        assert chain is not None
        self.assertEqual(len(chain), 2)

    def test_unknownNameRefused(self) -> None:
        """
        An unknown name with no default certificate fails the handshake
        with an unrecognized_name alert.
        """
        result = self.handshake(b"other.test")
        self.assertFalse(result.clientDone)
        self.assertIn("unrecognized name", str(result.clientError))
        self.assertIsInstance(self.hookErrors.errors[0], UnknownServerName)

    def test_noSNIRefused(self) -> None:
        """
        A client without SNI and no default certificate is refused.
        """
        result = self.handshake(None)
        self.assertFalse(result.clientDone)
        self.assertIn("unrecognized name", str(result.clientError))

    def test_unknownNameGetsDefault(self) -> None:
        """
        An unknown name and no SNI get the default certificate.
        """
        factory = SNIContextFactory(CertificateStore({"a.test": self.a}, self.fallback))
        for name in (b"other.test", None):
            result = self.handshake(name, factory=factory)
            self.assertTrue(result.ok, result.clientError)
            self.assertEqual(result.peerNames(), ["fallback.test"])

    def test_tls13AndALPN(self) -> None:
        """
        A modern client negotiates TLS 1.3 and ALPN http/1.1, not h2 unless
        enabled.
        """
        ctx = self.clientContext()
        ctx.set_alpn_protos([b"h2", b"http/1.1"])
        result = self.handshake(b"a.test", ctx)
        self.assertTrue(result.ok, result.clientError)
        self.assertEqual(result.client.get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(result.client.get_alpn_proto_negotiated(), b"http/1.1")

        ctx = self.clientContext()
        ctx.set_alpn_protos([b"h2", b"http/1.1"])
        h2 = self.handshake(b"a.test", ctx, SNIContextFactory(self.store, http2=True))
        self.assertEqual(h2.client.get_alpn_proto_negotiated(), b"h2")

    def test_noALPNOverlap(self) -> None:
        """
        A client offering no protocol we speak still completes, without
        ALPN.
        """
        ctx = self.clientContext()
        ctx.set_alpn_protos([b"spdy/3"])
        result = self.handshake(b"a.test", ctx)
        self.assertTrue(result.ok, result.clientError)
        self.assertEqual(result.client.get_alpn_proto_negotiated(), b"")

    def test_tls12Ciphers(self) -> None:
        """
        TLS 1.2 works with ECDHE and AES-GCM or ChaCha20, and is refused
        with CBC suites.
        """
        ctx = self.clientContext()
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        result = self.handshake(b"a.test", ctx)
        self.assertTrue(result.ok, result.clientError)
        self.assertEqual(result.client.get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(
            result.client.get_cipher_name(), "ECDHE-ECDSA-AES256-GCM-SHA384"
        )

        ctx = self.clientContext()
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
        result = self.handshake(b"a.test", ctx)
        self.assertFalse(result.clientDone)
        self.assertIn("no shared cipher", str(result.serverError))

    def test_tls11Refused(self) -> None:
        """
        A TLS 1.1 client is refused by the server.

        With the OpenSSL that pyOpenSSL 26.4 bundles this holds even without
        our minimum version (OpenSSL 4 refuses TLS 1.1 itself), so it guards
        the requirement against a build with older defaults; our own
        minimum is pinned by L{test_minVersion13}.
        """
        ctx = self.clientContext()
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        ctx.set_min_proto_version(SSL.TLS1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
        result = self.handshake(b"a.test", ctx)
        self.assertFalse(result.clientDone)
        self.assertIn("unsupported protocol", str(result.serverError))

    def test_minVersion13(self) -> None:
        """
        With C{minVersion="1.3"}, a TLS 1.2 client is refused.
        """
        ctx = self.clientContext()
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        factory = SNIContextFactory(self.store, minVersion="1.3")
        result = self.handshake(b"a.test", ctx, factory)
        self.assertFalse(result.clientDone)
        self.assertIn("unsupported protocol", str(result.serverError))
        self.assertRaises(ValueError, SNIContextFactory, self.store, minVersion="1.1")

    def test_groups(self) -> None:
        """
        X25519, P-256 and P-384 are accepted for key exchange, P-521 is
        not.
        """
        for group, accepted in [
            (b"X25519", True),
            (b"P-256", True),
            (b"P-384", True),
            (b"P-521", False),
        ]:
            ctx = self.clientContext()
            self.assertEqual(_lib.SSL_CTX_set1_curves_list(ctx._context, group), 1)
            result = self.handshake(b"a.test", ctx)
            self.assertEqual(result.ok, accepted, group)

    def test_options(self) -> None:
        """
        Compression and renegotiation are off, and the client's cipher
        order is honoured.
        """
        server = self.handshake(b"a.test").server
        options = server.set_options(0)
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)
        self.assertTrue(options & SSL.OP_NO_RENEGOTIATION)
        self.assertFalse(options & SSL.OP_CIPHER_SERVER_PREFERENCE)

    def test_sessionResumption(self) -> None:
        """
        A TLS 1.2 client resumes its session on a new connection, whether
        or not it offers to take a ticket (it gets none: by session id).
        """
        for options in (0, SSL.OP_NO_TICKET):
            ctx = self.clientContext()
            ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
            ctx.set_options(options)
            first = self.handshake(b"a.test", ctx)
            self.assertTrue(first.ok, first.clientError)
            session = first.client.get_session()
            assert session is not None
            second = self.handshake(b"a.test", ctx, session=session)
            self.assertTrue(second.ok, second.clientError)
            self.assertEqual(_lib.SSL_session_reused(second.client._ssl), 1, options)

    def test_noSessionTickets(self) -> None:
        """
        Session tickets are off and sessions last a day: Mozilla's profile
        turns tickets off, because a ticket key that never rotates undoes
        forward secrecy, and pyOpenSSL cannot rotate one.
        """
        server = self.handshake(b"a.test").server
        self.assertTrue(server.set_options(0) & SSL.OP_NO_TICKET)
        self.assertEqual(server.get_context().get_timeout(), 86400)

    def test_releaseBuffers(self) -> None:
        """
        Connections give their record buffers back while idle
        (C{SSL_MODE_RELEASE_BUFFERS}, as nginx sets it), in the context
        of the connection and in that of its certificate.
        """
        server = self.handshake(b"a.test").server
        # Setting no mode bit answers the mode set.
        context = _lib.SSL_CTX_set_mode(server.get_context()._context, 0)
        self.assertTrue(context & SSL.MODE_RELEASE_BUFFERS)
        self.assertTrue(_lib.SSL_set_mode(server._ssl, 0) & SSL.MODE_RELEASE_BUFFERS)

    def test_closeWithoutCloseNotify(self) -> None:
        """
        A client that closes without a close_notify (as Python's C{ssl}
        does) ends the TLS connection as cleanly as one that sends it
        (C{ZeroReturnError}, on which Twisted shuts TLS down), so OpenSSL
        keeps the session in the cache and the client resumes it.
        """
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            ctx = self.clientContext()
            ctx.set_min_proto_version(version)
            ctx.set_max_proto_version(version)
            first = self.handshake(b"a.test", ctx)
            self.assertTrue(first.ok, first.clientError)
            session = _session(first)
            first.server.bio_shutdown()
            self.assertRaises(SSL.ZeroReturnError, first.server.recv, 1)
            first.server.shutdown()
            del first.server
            second = self.handshake(b"a.test", ctx, session=session)
            self.assertTrue(second.ok, second.clientError)
            self.assertEqual(_lib.SSL_session_reused(second.client._ssl), 1, version)

    def test_resumptionFromTheCacheOnly(self) -> None:
        """
        TLS 1.2 and TLS 1.3 sessions resume, each whichever certificate
        the name chose, and only from the server's session cache: with the
        cache's lookups off, none does, so no ticket key was involved (in
        TLS 1.3 the ticket is only a reference into the cache).
        """
        sessions = []
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            for name in (b"a.test", b"b.test"):
                ctx = self.clientContext()
                ctx.set_min_proto_version(version)
                ctx.set_max_proto_version(version)
                first = self.handshake(name, ctx)
                self.assertTrue(first.ok, first.clientError)
                second = self.handshake(name, ctx, session=_session(first))
                self.assertTrue(second.ok, second.clientError)
                self.assertEqual(
                    _lib.SSL_session_reused(second.client._ssl), 1, (version, name)
                )
                fresh = self.handshake(name, ctx)
                self.assertTrue(fresh.ok, fresh.clientError)
                # The handshake is kept: a client connection freed without
                # a TLS shutdown makes its session unresumable.
                sessions.append((version, name, ctx, fresh, _session(fresh)))
        # pyOpenSSL refuses to change a context in use; OpenSSL does not.
        _lib.SSL_CTX_set_session_cache_mode(
            self.factory._baseContext._context,
            SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_INTERNAL_LOOKUP,
        )
        for version, name, ctx, _, session in sessions:
            third = self.handshake(name, ctx, session=session)
            self.assertTrue(third.ok, third.clientError)
            self.assertEqual(
                _lib.SSL_session_reused(third.client._ssl), 0, (version, name)
            )

    def test_replaceStore(self) -> None:
        """
        Replacing the store changes the certificate of new handshakes; an
        open connection keeps working with its certificate.
        """
        old = self.handshake(b"a.test")
        self.assertTrue(old.ok, old.clientError)
        renewed = _load(self, "a.test", "www.a.test")
        self.factory.store = CertificateStore({"a.test": renewed})
        new = self.handshake(b"a.test")
        self.assertTrue(new.ok, new.clientError)
        self.assertEqual(new.peerNames(), ["a.test", "www.a.test"])
        self.assertIsNotNone(self.handshake(b"b.test").clientError)

        self.assertEqual(old.peerNames(), ["a.test"])
        old.client.send(b"hello")
        _shuttle(old.client, old.server)
        self.assertEqual(old.server.recv(100), b"hello")

    def test_replaceStoreReusesContexts(self) -> None:
        """
        A certificate kept across a store replacement keeps its context.
        """
        before = dict(self.factory._current[1])
        self.factory.store = CertificateStore({"a.test": self.a})
        after = self.factory._current[1]
        self.assertEqual(list(after), [id(self.a)])
        self.assertIs(after[id(self.a)][1], before[id(self.a)][1])


def _connectTLS(factory: SNIContextFactory, serverName: str) -> tuple[Recorder, IOPump]:
    """
    Connect a Twisted TLS client that verifies C{serverName} against L{_CA}
    to an echo server using C{factory}, over memory.

    @return: The client's recording protocol, and the pump.
    """
    clock = Clock()
    serverFactory = TLSMemoryBIOFactory(
        factory, False, Factory.forProtocol(Echo), clock
    )
    clientFactory = TLSMemoryBIOFactory(
        optionsForClientTLS(
            serverName, trustRoot=Certificate.loadPEM(_CA.cert_pem.bytes())
        ),
        True,
        Factory.forProtocol(Recorder),
        clock,
    )
    address = IPv4Address("TCP", "127.0.0.1", 1)
    clientProtocol = clientFactory.buildProtocol(address)
    assert clientProtocol is not None
    recorder = clientProtocol.wrappedProtocol
    assert isinstance(recorder, Recorder)
    _, _, pump = connectedServerAndClient(
        lambda: serverFactory.buildProtocol(address),
        lambda: clientProtocol,
        clock=clock,
    )
    return recorder, pump


class TwistedTLSTests(SynchronousTestCase):
    """
    L{SNIContextFactory} under Twisted's C{TLSMemoryBIOFactory}, with a
    Twisted TLS client that verifies the host name.
    """

    def connect(
        self, factory: SNIContextFactory, serverName: str
    ) -> tuple[Recorder, IOPump]:
        return _connectTLS(factory, serverName)

    def test_echoBySNI(self) -> None:
        """
        Each name gets a certificate that passes the client's host name
        check, and data flows both ways.
        """
        a = _load(self, "a.test")
        b = _load(self, "b.test")
        factory = SNIContextFactory(CertificateStore({"a.test": a, "b.test": b}))
        for name in ("a.test", "b.test"):
            client, pump = self.connect(factory, name)
            assert client.transport is not None
            client.transport.write(b"ping")
            pump.flush()
            self.assertEqual(client.data, b"ping")
            self.assertIsNone(client.lost)

    def test_wrongCertificateNotServed(self) -> None:
        """
        A name with no certificate and no default closes the connection
        before any data.
        """
        self.patch(sys, "excepthook", ExceptHookRecorder())
        a = _load(self, "a.test")
        factory = SNIContextFactory(CertificateStore({"a.test": a}))
        client, pump = self.connect(factory, "b.test")
        assert client.transport is not None
        client.transport.write(b"ping")
        pump.flush()
        self.assertEqual(client.data, b"")
        assert client.lost is not None
        self.assertIn("unrecognized name", str(client.lost.value))

    def test_anyStore(self) -> None:
        """
        The factory serves from any L{ICertificateStore}: it asks the store
        for the name the client sent, once per handshake.
        """
        a = _load(self, "a.test")
        store = FakeCertificateStore({"a.test": a})
        client, pump = self.connect(SNIContextFactory(store), "a.test")
        assert client.transport is not None
        client.transport.write(b"ping")
        pump.flush()
        self.assertEqual(client.data, b"ping")
        self.assertEqual(store.lookups, ["a.test"])


_NOW = _ts(datetime(2026, 6, 1, tzinfo=UTC))
_TLS_CONFIG_HEAD = """\
[server]
listen_https = ["tcp:8443"]

[acme]
email = "ops@example.com"
"""


def _site(name: str, hosts: str, extra: str = "", upstream: str = "") -> str:
    """
    One C{[[sites]]} table of a test config.
    """
    return (
        f"\n[[sites]]\nname = {name!r}\nhosts = {hosts}\n"
        f'upstreams = ["{upstream or "http://127.0.0.1:9000"}"]\n{extra}'
    )


def _files(prefix: str) -> str:
    """
    The C{tls = "files"} keys of a site whose PEM files start with
    C{prefix}, relative to the config's directory.
    """
    return (
        f'tls = "files"\ncert_file = "{prefix}-cert.pem"\n'
        f'key_file = "{prefix}-key.pem"\n'
    )


class LoadTLSFilesTests(SynchronousTestCase):
    """
    Tests for L{loadTLSFiles}: every file a config names, read at once.
    """

    def setUp(self) -> None:
        self.files = _Files(self)

    def load(self, text: str) -> TLSFiles:
        return loadTLSFiles(
            parseConfig(_TLS_CONFIG_HEAD + text, baseDir=self.files.directory), _NOW
        )

    def loadErrors(self, text: str) -> list[str]:
        """
        The errors of loading C{text}, which must fail.
        """
        e = self.assertRaises(ConfigError, self.load, text)
        return list(e.errors)

    def test_certificatesBySite(self) -> None:
        """
        Each C{tls = "files"} site's certificate serves its hosts and knows
        its site; C{"none"} and C{"acme"} sites contribute nothing, and
        without a default site an unknown name has no certificate.
        """
        self.files.leaf("a", _CA.issue_cert("a.test", "www.a.test"))
        self.files.leaf("b", _CA.issue_cert("*.b.test"))
        tls = self.load(
            _site("a", '["a.test", "www.a.test"]', _files("a"))
            + _site("b", '["*.b.test"]', _files("b"))
            + _site("plain", '["plain.test"]')
            + _site("later", '["later.test"]', 'tls = "acme"\n')
        )
        a = tls.certificates.lookup("www.a.test")
        b = tls.certificates.lookup("x.b.test")
        assert a is not None and b is not None
        self.assertEqual(a.path, os.path.join(self.files.directory, "a-cert.pem"))
        self.assertIs(tls.certificates.lookup("a.test"), a)
        self.assertEqual(b.names, ("*.b.test",))
        self.assertEqual(tls.sitesOf(a), ("a",))
        self.assertEqual(tls.sitesOf(b), ("b",))
        for name in ("plain.test", "later.test", "other.test", None):
            self.assertIsNone(tls.certificates.lookup(name), name)
        self.assertEqual(len(tls.certificates.all()), 2)
        self.assertEqual(tls.warnings, ())
        self.assertEqual(dict(tls.upstreamTLS), {})

    def test_sharedFilesOneCertificate(self) -> None:
        """
        Sites naming the same files share one certificate, which knows all
        of them; other files make another certificate.
        """
        self.files.leaf("ab", _CA.issue_cert("a.test", "b.test"))
        self.files.leaf("c", _CA.issue_cert("c.test"))
        tls = self.load(
            _site("a", '["a.test"]', _files("ab"))
            + _site("c", '["c.test"]', _files("c"))
            + _site("b", '["b.test"]', _files("ab"))
        )
        a = tls.certificates.lookup("a.test")
        c = tls.certificates.lookup("c.test")
        assert a is not None and c is not None
        self.assertIs(tls.certificates.lookup("b.test"), a)
        self.assertIsNot(c, a)
        self.assertEqual(tls.sitesOf(a), ("a", "b"))
        self.assertEqual(tls.sitesOf(c), ("c",))
        self.assertEqual(len(tls.certificates.all()), 2)

    def test_sitesOfUnknownCertificate(self) -> None:
        """
        A certificate that is not one of the config's belongs to no site.
        """
        self.files.leaf("a", _CA.issue_cert("a.test"))
        tls = self.load(_site("a", '["a.test"]', _files("a")))
        self.assertEqual(tls.sitesOf(_load(self, "a.test")), ())

    def test_defaultSiteCertificate(self) -> None:
        """
        The default site's certificate answers unknown names and clients
        without SNI.
        """
        self.files.leaf("a", _CA.issue_cert("a.test"))
        self.files.leaf("d", _CA.issue_cert("d.test"))
        tls = self.load(
            _site("a", '["a.test"]', _files("a"))
            + _site("d", '["d.test"]', _files("d") + "default = true\n")
        )
        default = tls.certificates.lookup("d.test")
        assert default is not None
        self.assertIs(tls.certificates.lookup("other.test"), default)
        self.assertIs(tls.certificates.lookup(None), default)
        self.assertIsNot(tls.certificates.lookup("a.test"), default)

    def test_defaultSiteWithoutCertificate(self) -> None:
        """
        A default site without a certificate leaves unknown names without
        one, rather than giving them another site's.
        """
        self.files.leaf("a", _CA.issue_cert("a.test"))
        tls = self.load(
            _site("a", '["a.test"]', _files("a"))
            + _site("d", '["d.test"]', "default = true\n")
        )
        self.assertIsNone(tls.certificates.lookup("other.test"))
        self.assertIsNone(tls.certificates.lookup(None))

    def test_allErrorsAtOnce(self) -> None:
        """
        Every unusable file is reported, each under its site's key: a bad
        certificate as C{cert_file}, a missing or mismatched key as
        C{key_file}, a bad CA file as C{upstream_ca_file}.
        """
        directory = self.files.directory
        self.files.leaf("bad", _CA.issue_cert("bad.test"))
        self.files.write("bad-cert.pem", b"not a certificate\n")
        cert, _ = self.files.leaf("mixed", _CA.issue_cert("mixed.test"))
        _, otherKey = self.files.leaf("other", _CA.issue_cert("mixed.test"))
        os.replace(otherKey, os.path.join(directory, "mixed-key.pem"))
        self.files.leaf("nokey", _CA.issue_cert("nokey.test"))
        os.remove(os.path.join(directory, "nokey-key.pem"))
        self.files.write("ca.pem", b"not a CA\n")
        errors = self.loadErrors(
            _site("bad", '["bad.test"]', _files("bad"))
            + _site("mixed", '["mixed.test"]', _files("mixed"))
            + _site("nokey", '["nokey.test"]', _files("nokey"))
            + _site(
                "up",
                '["up.test"]',
                'upstream_ca_file = "ca.pem"\n',
                "https://10.0.0.1:8443",
            )
        )
        path = os.path.join
        self.assertEqual(len(errors), 4, errors)
        self.assertEqual(
            errors[0],
            f"sites[0].cert_file: {path(directory, 'bad-cert.pem')}: "
            "no PEM certificate found",
        )
        self.assertEqual(
            errors[1],
            f"sites[1].key_file: {path(directory, 'mixed-key.pem')} does not "
            f"match the certificate in {cert}",
        )
        self.assertTrue(
            errors[2].startswith(
                f"sites[2].key_file: {path(directory, 'nokey-key.pem')}: cannot read"
            ),
            errors[2],
        )
        self.assertEqual(
            errors[3],
            f"sites[3].upstream_ca_file: {path(directory, 'ca.pem')}: "
            "no PEM certificate found",
        )

    def test_oneSiteSeveralErrors(self) -> None:
        """
        A site with both an unusable certificate and an unusable CA file
        gets both errors.
        """
        self.files.write("a-cert.pem", b"")
        self.files.write("a-key.pem", b"")
        self.files.write("ca.pem", b"")
        errors = self.loadErrors(
            _site(
                "a",
                '["a.test"]',
                _files("a") + 'upstream_ca_file = "ca.pem"\n',
                "https://10.0.0.1:8443",
            )
        )
        self.assertEqual(
            [error.split(":", 1)[0] for error in errors],
            ["sites[0].cert_file", "sites[0].upstream_ca_file"],
        )

    def test_expiredIsCertFileError(self) -> None:
        """
        An expired certificate is an error under C{cert_file}.
        """
        leaf = _CA.issue_cert(
            "a.test", not_before=_FAR_PAST, not_after=datetime(2026, 1, 1, tzinfo=UTC)
        )
        certPath, _ = self.files.leaf("a", leaf)
        self.assertEqual(
            self.loadErrors(_site("a", '["a.test"]', _files("a"))),
            [
                f"sites[0].cert_file: {certPath}: certificate expired 2026-01-01T00:00:00Z"
            ],
        )

    def test_warningsNameTheSite(self) -> None:
        """
        Warnings are kept, each under its site's C{cert_file}.
        """
        leaf = _CA.issue_cert(
            "a.test", not_before=_FAR_PAST, not_after=datetime(2026, 6, 4, tzinfo=UTC)
        )
        certPath, _ = self.files.leaf("a", leaf)
        self.files.leaf("b", _CA.issue_cert("b.test"))
        tls = self.load(
            _site("b", '["b.test", "www.b.test"]', _files("b"))
            + _site("a", '["a.test"]', _files("a"))
        )
        self.assertEqual(
            tls.warnings,
            (
                f"sites[0].cert_file: {os.path.join(self.files.directory, 'b-cert.pem')}"
                ": certificate names (b.test) do not cover www.b.test",
                f"sites[1].cert_file: {certPath}: certificate expires "
                "2026-06-04T00:00:00Z",
            ),
        )

    def test_upstreamTLS(self) -> None:
        """
        Sites with https:// upstreams get their trust settings: their CA
        file, the system store, or no verification; sites without are not
        listed.
        """
        self.files.write("ca.pem", _CA.cert_pem.bytes())
        tls = self.load(
            _site("ca", '["ca.test"]', 'upstream_ca_file = "ca.pem"\n', "https://u:1")
            + _site("system", '["system.test"]', "", "https://u:2")
            + _site(
                "off", '["off.test"]', "upstream_tls_verify = false\n", "https://u:3"
            )
            + _site("plain", '["plain.test"]')
        )
        self.assertEqual(set(tls.upstreamTLS), {"ca", "system", "off"})
        ca = tls.upstreamTLS["ca"]
        self.assertEqual(ca.caFile, os.path.join(self.files.directory, "ca.pem"))
        self.assertTrue(ca.verify)
        self.assertIsNotNone(ca.trustRoot)
        self.assertIs(tls.upstreamTLS["system"], SYSTEM_TRUST)
        self.assertEqual(tls.upstreamTLS["off"], UpstreamTLS(verify=False))


class _HookRecorder(ExceptHookRecorder):
    """
    A C{sys.excepthook} that records what it is given.
    """


def _refusal(name: str | None) -> tuple[type[BaseException], BaseException, None]:
    return UnknownServerName, UnknownServerName(name), None


class RefusalLogTests(SynchronousTestCase):
    """
    Tests for L{RefusalLog}, with a L{Clock} and a patched
    C{sys.excepthook}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.previous = _HookRecorder()
        self.patch(sys, "excepthook", self.previous)
        self.refusals = RefusalLog(self.clock)
        self.addCleanup(self.refusals.uninstall)
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def lines(self) -> list[str]:
        """
        The log lines of L{revproxy.tls}, formatted.
        """
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace") == "revproxy.tls"
        ]

    def test_installUninstall(self) -> None:
        """
        C{install} replaces C{sys.excepthook}, a second C{install} changes
        nothing, and C{uninstall} restores the previous hook.
        """
        self.refusals.install()
        self.assertIs(sys.excepthook, self.refusals)
        self.refusals.install()
        self.refusals.uninstall()
        self.assertIs(sys.excepthook, self.previous)
        self.refusals.uninstall()
        self.assertIs(sys.excepthook, self.previous)

    def test_uninstallLeavesLaterHook(self) -> None:
        """
        C{uninstall} does not remove a hook installed after it.
        """
        self.refusals.install()
        later = _HookRecorder()
        sys.excepthook = later
        self.refusals.uninstall()
        self.assertIs(sys.excepthook, later)

    def test_otherExceptionsToPreviousHook(self) -> None:
        """
        Any other exception goes to the previous hook, unlogged and
        uncounted.
        """
        self.refusals.install()
        error = ValueError("boom")
        sys.excepthook(ValueError, error, None)
        self.assertEqual(self.previous.errors, [error])
        self.assertEqual(self.refusals.refused, 0)
        self.assertEqual(self.lines(), [])

    def test_refusalLogged(self) -> None:
        """
        A refused handshake is one log line naming the server name, and it
        does not reach the previous hook.
        """
        self.refusals.install()
        sys.excepthook(*_refusal("scan.test"))
        self.assertEqual(self.refusals.refused, 1)
        self.assertEqual(self.previous.errors, [])
        [line] = self.lines()
        self.assertIn("Refused a TLS handshake for 'scan.test'", line)
        self.assertNotIn("more since", line)

    def test_noServerName(self) -> None:
        """
        A refusal without SNI says so.
        """
        self.refusals(*_refusal(None))
        [line] = self.lines()
        self.assertIn("Refused a TLS handshake for no server name (SNI)", line)

    def test_rateLimited(self) -> None:
        """
        At most one line per interval is logged; the next one counts those
        suppressed since the last, and all are counted in C{refused}.
        """
        self.refusals(*_refusal("a.test"))
        self.clock.advance(30)
        self.refusals(*_refusal("b.test"))
        self.refusals(*_refusal("c.test"))
        self.clock.advance(29.9)
        self.refusals(*_refusal("d.test"))
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(0.1)
        self.refusals(*_refusal("e.test"))
        lines = self.lines()
        self.assertEqual(len(lines), 2)
        self.assertIn("'e.test'", lines[1])
        self.assertIn("(3 more since the last report)", lines[1])
        self.clock.advance(60)
        self.refusals(*_refusal("f.test"))
        lines = self.lines()
        self.assertEqual(len(lines), 3)
        self.assertNotIn("more since", lines[2])
        self.assertEqual(self.refusals.refused, 6)

    def test_interval(self) -> None:
        """
        The interval is configurable.
        """
        refusals = RefusalLog(self.clock, interval=5)
        refusals(*_refusal("a.test"))
        self.clock.advance(4)
        refusals(*_refusal("a.test"))
        self.clock.advance(1)
        refusals(*_refusal("a.test"))
        lines = self.lines()
        self.assertEqual(len(lines), 2)
        self.assertIn("(1 more since the last report)", lines[1])

    def test_realHandshake(self) -> None:
        """
        A handshake refused by L{SNIContextFactory} reaches the installed
        log as a refusal, not the previous hook.
        """
        self.refusals.install()
        factory = SNIContextFactory(CertificateStore({"a.test": _load(self, "a.test")}))
        client, pump = _connectTLS(factory, "b.test")
        pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertEqual(self.previous.errors, [])
        self.assertEqual(self.refusals.refused, 1)
        [line] = self.lines()
        self.assertIn("'b.test'", line)


class _NoSNIConnection:
    """
    The pyOpenSSL connection of a handshake without SNI, as far as the
    server name goes.
    """

    def get_servername(self) -> bytes | None:
        return None


class _AbortRecordingTransport(StringTransport):
    """
    A transport that counts C{abortConnection} calls; its TLS connection
    had no SNI.
    """

    aborts = 0

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()

    def getHandle(self) -> _NoSNIConnection:
        return _NoSNIConnection()


class _NegotiatedTransport(_AbortRecordingTransport):
    """
    A TLS transport, as far as the ALPN protocol goes.
    """

    negotiatedProtocol: bytes | None = None


class HandshakeDeadlineTests(SynchronousTestCase):
    """
    Tests for L{HandshakeDeadline} on a fake transport and a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = HandshakeDeadline(Factory.forProtocol(Recorder), self.clock)
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        self.protocol = protocol
        self.transport = _AbortRecordingTransport()

    def test_defaultTimeout(self) -> None:
        """
        The default deadline is ten seconds.
        """
        self.assertEqual(HANDSHAKE_TIMEOUT, 10.0)
        self.assertEqual(self.factory.timeout, HANDSHAKE_TIMEOUT)

    def test_abortedAtDeadline(self) -> None:
        """
        A connection whose handshake has not completed after the deadline
        is aborted, once, and not before.
        """
        self.protocol.makeConnection(self.transport)
        self.clock.advance(9.999)
        self.assertEqual(self.transport.aborts, 0)
        self.clock.advance(0.001)
        self.assertEqual(self.transport.aborts, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.transport.aborts, 1)

    def test_customTimeout(self) -> None:
        """
        The deadline is C{timeout} seconds after the connection is made.
        """
        factory = HandshakeDeadline(Factory.forProtocol(Recorder), self.clock, 2.5)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        self.clock.advance(50)
        protocol.makeConnection(self.transport)
        self.clock.advance(2.4)
        self.assertEqual(self.transport.aborts, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.transport.aborts, 1)

    def test_handshakeCancelsDeadline(self) -> None:
        """
        A completed handshake cancels the deadline.
        """
        self.protocol.makeConnection(self.transport)
        self.clock.advance(9)
        self.assertTrue(IHandshakeListener.providedBy(self.protocol))
        cast(IHandshakeListener, self.protocol).handshakeCompleted()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.transport.aborts, 0)

    def test_connectionLostCancelsDeadline(self) -> None:
        """
        A connection lost before the deadline leaves no timer, and the
        wrapped protocol learns of the loss.
        """
        self.protocol.makeConnection(self.transport)
        wrapped = self.protocol.wrappedProtocol
        assert isinstance(wrapped, Recorder)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNotNone(wrapped.lost)
        self.clock.advance(100)
        self.assertEqual(self.transport.aborts, 0)

    def test_wrappedProtocolConnected(self) -> None:
        """
        The wrapped protocol is connected at once and gets the data.
        """
        self.protocol.makeConnection(self.transport)
        wrapped = self.protocol.wrappedProtocol
        assert isinstance(wrapped, Recorder)
        self.assertIsNotNone(wrapped.transport)
        self.protocol.dataReceived(b"GET /")
        self.assertEqual(wrapped.data, b"GET /")

    def test_challengeClosedAfterHandshake(self) -> None:
        """
        After a handshake that negotiated C{acme-tls/1}, the connection is
        closed, the site's protocol gets no data, and the deadline still
        aborts a peer that does not close in turn.
        """
        transport = _NegotiatedTransport()
        transport.negotiatedProtocol = ACME_TLS_ALPN
        self.protocol.makeConnection(transport)
        self.clock.advance(4)
        cast(IHandshakeListener, self.protocol).handshakeCompleted()
        self.assertTrue(transport.disconnecting)
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        wrapped = self.protocol.wrappedProtocol
        assert isinstance(wrapped, Recorder)
        self.assertEqual(wrapped.data, b"")
        self.clock.advance(5.5)
        self.assertEqual(transport.aborts, 0)
        self.clock.advance(0.5)
        self.assertEqual(transport.aborts, 1)

    def test_otherProtocolNotClosed(self) -> None:
        """
        After a handshake that negotiated another protocol, the connection
        stays open and the site gets the data.
        """
        transport = _NegotiatedTransport()
        transport.negotiatedProtocol = b"http/1.1"
        self.protocol.makeConnection(transport)
        cast(IHandshakeListener, self.protocol).handshakeCompleted()
        self.assertFalse(transport.disconnecting)
        self.protocol.dataReceived(b"GET /")
        wrapped = self.protocol.wrappedProtocol
        assert isinstance(wrapped, Recorder)
        self.assertEqual(wrapped.data, b"GET /")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logPrefix(self) -> None:
        """
        The factory logs under the wrapped factory's prefix.
        """
        self.assertEqual(self.factory.logPrefix(), "Factory")


class HandshakeDeadlineTLSTests(SynchronousTestCase):
    """
    L{HandshakeDeadline} between C{TLSMemoryBIOFactory} and the site, with
    real handshakes over memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorders: list[Recorder] = []
        store = CertificateStore({"a.test": _load(self, "a.test")})
        self.contexts = SNIContextFactory(store, http2=True)
        self.serverFactory = TLSMemoryBIOFactory(
            self.contexts,
            False,
            HandshakeDeadline(Factory.forProtocol(self.serverProtocol), self.clock),
            self.clock,
        )

    def serverProtocol(self) -> Protocol:
        """
        The site's protocol: records what it receives, echoes it.
        """
        recorder = _EchoRecorder()
        self.recorders.append(recorder)
        return recorder

    def deadlines(self) -> list[object]:
        """
        The pending deadline timers.
        """
        return [
            call
            for call in self.clock.getDelayedCalls()
            if getattr(call, "func", None) is not None
            and getattr(call.func, "__name__", "") == "_expired"  # type: ignore[attr-defined]
        ]

    def connectTLS(
        self,
        alpn: list[bytes] | None = None,
        creator: IOpenSSLClientConnectionCreator | None = None,
    ) -> tuple[Recorder, IOPump]:
        if creator is None:
            creator = optionsForClientTLS(
                "a.test",
                trustRoot=Certificate.loadPEM(_CA.cert_pem.bytes()),
                acceptableProtocols=alpn,
            )
        clientFactory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(Recorder), self.clock
        )
        address = IPv4Address("TCP", "127.0.0.1", 1)
        clientProtocol = clientFactory.buildProtocol(address)
        assert clientProtocol is not None
        recorder = clientProtocol.wrappedProtocol
        assert isinstance(recorder, Recorder)
        _, _, pump = connectedServerAndClient(
            lambda: self.serverFactory.buildProtocol(address),
            lambda: clientProtocol,
            clock=self.clock,
            greet=False,
        )
        return recorder, pump

    def test_handshakeCancelsDeadline(self) -> None:
        """
        The deadline starts with the connection and is cancelled when the
        handshake completes; the connection then outlives it.
        """
        client, pump = self.connectTLS()
        self.assertEqual(len(self.deadlines()), 1)
        pump.flush()
        self.assertEqual(self.deadlines(), [])
        self.clock.advance(HANDSHAKE_TIMEOUT * 3)
        pump.flush()
        assert client.transport is not None
        client.transport.write(b"ping")
        pump.flush()
        self.assertEqual(client.data, b"ping")
        self.assertIsNone(client.lost)
        self.assertEqual(self.recorders[0].data, b"ping")

    def test_siteSeesTLSTransport(self) -> None:
        """
        Through the deadline wrapper, the site's protocol sees a TLS
        transport (requests are secure) and the ALPN protocol (HTTP/2 can
        be chosen).
        """
        client, pump = self.connectTLS([b"h2", b"http/1.1"])
        pump.flush()
        self.assertIsNone(client.lost)
        [server] = self.recorders
        self.assertTrue(ISSLTransport.providedBy(server.transport))
        self.assertEqual(getattr(server.transport, "negotiatedProtocol", None), b"h2")

    def test_serverNameRecorded(self) -> None:
        """
        The handshake's SNI name, normalized as a C{Host} is, is recorded
        once on the connection: the site's protocol finds it as its
        transport's C{serverName}.
        """
        client, pump = self.connectTLS()
        pump.flush()
        self.assertIsNone(client.lost)
        [server] = self.recorders
        self.assertEqual(getattr(server.transport, "serverName", None), "a.test")

    def test_noServerName(self) -> None:
        """
        A connection without SNI (a client that connected to an IP
        literal) records L{None}.
        """
        self.contexts.store = CertificateStore({}, _load(self, "a.test"))
        client, pump = self.connectTLS(creator=CertificateOptions())
        pump.flush()
        self.assertIsNone(client.lost)
        [server] = self.recorders
        self.assertTrue(ISSLTransport.providedBy(server.transport))
        self.assertIsNone(getattr(server.transport, "serverName", "missing"))

    def test_silentClientAborted(self) -> None:
        """
        A client that connects and never sends a ClientHello is
        disconnected ten seconds later, and not before; the site's protocol
        learns of it.
        """
        silent = Recorder()
        _, _, pump = connectedServerAndClient(
            lambda: self.serverFactory.buildProtocol(
                IPv4Address("TCP", "127.0.0.1", 1)
            ),
            lambda: silent,
            clock=self.clock,
        )
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.01)
        pump.flush()
        self.assertIsNone(silent.lost)
        self.assertIsNone(self.recorders[0].lost)
        self.clock.advance(0.01)
        pump.flush()
        self.assertIsNotNone(silent.lost)
        self.assertIsNotNone(self.recorders[0].lost)
        self.assertEqual(self.deadlines(), [])

    def test_slowHandshakeAborted(self) -> None:
        """
        A client that starts the handshake but does not finish it in time
        is disconnected.
        """
        client, pump = self.connectTLS()
        # The ClientHello reaches the server; its answer never comes back.
        pump.pump()
        self.clock.advance(HANDSHAKE_TIMEOUT)
        pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertEqual(client.data, b"")
        self.assertIsNotNone(self.recorders[0].lost)


class _EchoRecorder(Recorder):
    """
    Records and echoes what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)


_KEY_AUTHORIZATION = "token-1.thumbprint"
_ACME_DIGEST = b"\x04\x20" + hashlib.sha256(_KEY_AUTHORIZATION.encode()).digest()


def _acmeIdentifier(cert: x509.Certificate) -> bytes | None:
    """
    The value of C{cert}'s critical acmeIdentifier extension, or L{None}
    when it has none.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        return None
    assert ext.critical
    value = ext.value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


class TLSALPN01Tests(SynchronousTestCase):
    """
    ACME tls-alpn-01 answers of L{SNIContextFactory}, with real handshakes
    over memory BIOs.
    """

    def setUp(self) -> None:
        self.caFile = _Files(self).write("ca.pem", _CA.cert_pem.bytes())
        self.a = _load(self, "a.test")
        # b.test has an intermediate, which must not go along with the
        # challenge certificate.
        self.b = _load(self, "b.test", ca=_CA.create_child_ca())
        self.challenges = ChallengeStore(Clock())
        self.factory = SNIContextFactory(
            CertificateStore({"a.test": self.a, "b.test": self.b}),
            http2=True,
            challenges=self.challenges,
        )
        self.hookErrors = ExceptHookRecorder()
        self.patch(sys, "excepthook", self.hookErrors)

    def handshake(
        self,
        serverName: bytes,
        protocols: list[bytes] | None,
        verify: bool = False,
        maxVersion: int = 0,
    ) -> _Handshake:
        """
        Handshake with SNI C{serverName}, offering C{protocols} in ALPN
        (none if L{None}), verifying the certificate against L{_CA} if
        C{verify} (a validator does not).
        """
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if verify:
            ctx.load_verify_locations(self.caFile)
            ctx.set_verify(SSL.VERIFY_PEER)
        if protocols is not None:
            ctx.set_alpn_protos(protocols)
        ctx.set_max_proto_version(maxVersion)
        client = SSL.Connection(ctx, None)
        client.set_tlsext_host_name(serverName)
        client.set_connect_state()
        tlsFactory = TLSMemoryBIOFactory(
            self.factory, False, Factory.forProtocol(Protocol), Clock()
        )
        protocol = tlsFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, TLSMemoryBIOProtocol)
        server = self.factory.serverConnectionForTLS(protocol)
        server.set_accept_state()
        result = _Handshake(client, server)
        _pump(result)
        return result

    def peerCertificate(self, result: _Handshake) -> x509.Certificate:
        cert = result.client.get_peer_certificate(as_cryptography=True)
        assert cert is not None
        return cert

    def test_challengeCertificate(self) -> None:
        """
        A validator offering only C{acme-tls/1} for a name with a pending
        challenge gets C{acme-tls/1} and the challenge certificate, alone:
        the site's intermediate is not sent.
        """
        self.challenges.addTLSALPN01("b.test", _KEY_AUTHORIZATION)
        result = self.handshake(b"b.test", [ACME_TLS_ALPN])
        self.assertTrue(result.ok, result.clientError or result.serverError)
        self.assertEqual(result.client.get_alpn_proto_negotiated(), ACME_TLS_ALPN)
        self.assertEqual(result.client.get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(_acmeIdentifier(self.peerCertificate(result)), _ACME_DIGEST)
        self.assertEqual(result.peerNames(), ["b.test"])
        chain = result.client.get_peer_cert_chain(as_cryptography=True)
        assert chain is not None
        self.assertEqual(len(chain), 1)

    def test_sniCaseInsensitive(self) -> None:
        """
        The challenge is found whatever the case of the SNI name.
        """
        self.challenges.addTLSALPN01("a.test", _KEY_AUTHORIZATION)
        result = self.handshake(b"A.Test", [ACME_TLS_ALPN])
        self.assertTrue(result.ok, result.clientError)
        self.assertEqual(_acmeIdentifier(self.peerCertificate(result)), _ACME_DIGEST)

    def test_ordinaryClientGetsSiteCertificate(self) -> None:
        """
        A client not offering C{acme-tls/1} for a name with a pending
        challenge gets the site's certificate, verified, and its protocol.
        """
        self.challenges.addTLSALPN01("b.test", _KEY_AUTHORIZATION)
        for protocols, negotiated in [
            ([b"h2", b"http/1.1"], b"h2"),
            ([b"http/1.1"], b"http/1.1"),
            (None, b""),
        ]:
            result = self.handshake(b"b.test", protocols, verify=True)
            self.assertTrue(result.ok, result.clientError)
            self.assertEqual(result.client.get_alpn_proto_negotiated(), negotiated)
            self.assertIsNone(_acmeIdentifier(self.peerCertificate(result)))
            chain = result.client.get_peer_cert_chain(as_cryptography=True)
            assert chain is not None
            self.assertEqual(len(chain), 2)

    def test_notSelectedWithoutChallenge(self) -> None:
        """
        C{acme-tls/1} is never selected for a name without a pending
        challenge, nor without a challenge store: the client gets the site's
        certificate and no ALPN, or its other protocol.
        """
        self.challenges.addTLSALPN01("b.test", _KEY_AUTHORIZATION)
        for protocols, negotiated in [
            ([ACME_TLS_ALPN], b""),
            ([ACME_TLS_ALPN, b"http/1.1"], b"http/1.1"),
        ]:
            result = self.handshake(b"a.test", protocols, verify=True)
            self.assertTrue(result.ok, result.clientError)
            self.assertEqual(result.client.get_alpn_proto_negotiated(), negotiated)
            self.assertEqual(result.peerNames(), ["a.test"])
        self.factory.challenges = None
        result = self.handshake(b"b.test", [ACME_TLS_ALPN], verify=True)
        self.assertTrue(result.ok, result.clientError)
        self.assertEqual(result.client.get_alpn_proto_negotiated(), b"")
        self.assertIsNone(_acmeIdentifier(self.peerCertificate(result)))

    def test_challengesAssignedLater(self) -> None:
        """
        A challenge store assigned after construction is used by new
        handshakes.
        """
        factory = SNIContextFactory(CertificateStore({"a.test": self.a}))
        self.factory = factory
        store = ChallengeStore(Clock())
        store.addTLSALPN01("a.test", _KEY_AUTHORIZATION)
        self.assertEqual(
            self.handshake(
                b"a.test", [ACME_TLS_ALPN]
            ).client.get_alpn_proto_negotiated(),
            b"",
        )
        factory.challenges = store
        result = self.handshake(b"a.test", [ACME_TLS_ALPN])
        self.assertEqual(result.client.get_alpn_proto_negotiated(), ACME_TLS_ALPN)
        self.assertEqual(_acmeIdentifier(self.peerCertificate(result)), _ACME_DIGEST)

    def test_removedChallenge(self) -> None:
        """
        Once the challenge is removed, C{acme-tls/1} is no longer
        selected.
        """
        self.challenges.addTLSALPN01("a.test", _KEY_AUTHORIZATION)
        self.challenges.removeTLSALPN01("a.test")
        result = self.handshake(b"a.test", [ACME_TLS_ALPN])
        self.assertEqual(result.client.get_alpn_proto_negotiated(), b"")
        self.assertIsNone(_acmeIdentifier(self.peerCertificate(result)))

    def test_pendingNameWithoutCertificate(self) -> None:
        """
        For a name with a pending challenge but no certificate and no
        default, the validator gets the challenge certificate, while other
        clients of that name still fail the handshake; other unknown names
        are refused as before.
        """
        self.challenges.addTLSALPN01("new.test", _KEY_AUTHORIZATION)
        result = self.handshake(b"new.test", [ACME_TLS_ALPN])
        self.assertTrue(result.ok, result.clientError or result.serverError)
        self.assertEqual(result.client.get_alpn_proto_negotiated(), ACME_TLS_ALPN)
        self.assertEqual(_acmeIdentifier(self.peerCertificate(result)), _ACME_DIGEST)
        self.assertEqual(self.hookErrors.errors, [])
        for protocols in ([b"h2", b"http/1.1"], [b"http/1.1"], None):
            result = self.handshake(b"new.test", protocols)
            self.assertFalse(result.clientDone, protocols)
            self.assertIsNotNone(result.serverError)
            self.assertIsNone(result.client.get_peer_certificate())
        result = self.handshake(b"other.test", [ACME_TLS_ALPN])
        self.assertFalse(result.clientDone)
        self.assertIn("unrecognized name", str(result.clientError))
        [error] = self.hookErrors.errors
        self.assertIsInstance(error, UnknownServerName)

    def test_tls12NotAnswered(self) -> None:
        """
        Over TLS 1.2, where OpenSSL has chosen the certificate before ALPN,
        C{acme-tls/1} is not selected: a name with a certificate gets it,
        and a name with only a pending challenge is refused as an unknown
        name.
        """
        self.challenges.addTLSALPN01("a.test", _KEY_AUTHORIZATION)
        self.challenges.addTLSALPN01("new.test", _KEY_AUTHORIZATION)
        result = self.handshake(
            b"a.test", [ACME_TLS_ALPN], maxVersion=SSL.TLS1_2_VERSION
        )
        self.assertTrue(result.ok, result.clientError)
        self.assertEqual(result.client.get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(result.client.get_alpn_proto_negotiated(), b"")
        self.assertEqual(result.peerNames(), ["a.test"])
        self.assertIsNone(_acmeIdentifier(self.peerCertificate(result)))
        result = self.handshake(
            b"new.test", [ACME_TLS_ALPN], maxVersion=SSL.TLS1_2_VERSION
        )
        self.assertFalse(result.clientDone)
        self.assertIn("unrecognized name", str(result.clientError))


@implementer(IOpenSSLClientConnectionCreator)
class _Validator:
    """
    A client like an ACME tls-alpn-01 validator: SNI, ALPN, no certificate
    verification.
    """

    def __init__(self, serverName: bytes, protocols: list[bytes]) -> None:
        self.serverName = serverName
        self.protocols = protocols

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_alpn_protos(self.protocols)
        connection = SSL.Connection(ctx, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self.serverName)
        connection.set_connect_state()
        return connection


@implementer(IHandshakeListener)
class _HandshakeRecorder(Recorder):
    """
    Records what it receives, and the peer certificate and ALPN protocol
    when the handshake completes.
    """

    peerCertificate: x509.Certificate | None = None
    negotiated: bytes | None = None

    def handshakeCompleted(self) -> None:
        transport = cast(TLSMemoryBIOProtocol, self.transport)
        self.peerCertificate = transport.getHandle().get_peer_certificate(
            as_cryptography=True
        )
        self.negotiated = transport.negotiatedProtocol


class TLSALPN01ConnectionTests(SynchronousTestCase):
    """
    tls-alpn-01 through C{TLSMemoryBIOFactory} and L{HandshakeDeadline}, as
    the HTTPS listeners serve it, over memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorders: list[Recorder] = []
        self.challenges = ChallengeStore(Clock())
        self.challenges.addTLSALPN01("a.test", _KEY_AUTHORIZATION)
        self.a = _load(self, "a.test")
        contexts = SNIContextFactory(
            CertificateStore({"a.test": self.a}),
            http2=True,
            challenges=self.challenges,
        )
        self.serverFactory = TLSMemoryBIOFactory(
            contexts,
            False,
            HandshakeDeadline(Factory.forProtocol(self.serverProtocol), self.clock),
            self.clock,
        )

    def serverProtocol(self) -> Protocol:
        """
        The site's protocol: records what it receives, echoes it.
        """
        recorder = _EchoRecorder()
        self.recorders.append(recorder)
        return recorder

    def connect(self, protocols: list[bytes]) -> tuple[_HandshakeRecorder, IOPump]:
        clientFactory = TLSMemoryBIOFactory(
            _Validator(b"a.test", protocols),
            True,
            Factory.forProtocol(_HandshakeRecorder),
            self.clock,
        )
        address = IPv4Address("TCP", "127.0.0.1", 1)
        clientProtocol = clientFactory.buildProtocol(address)
        assert isinstance(clientProtocol, TLSMemoryBIOProtocol)
        recorder = clientProtocol.wrappedProtocol
        assert isinstance(recorder, _HandshakeRecorder)
        _, _, pump = connectedServerAndClient(
            lambda: self.serverFactory.buildProtocol(address),
            lambda: clientProtocol,
            clock=self.clock,
            greet=False,
        )
        return recorder, pump

    def test_validatorAnsweredAndClosed(self) -> None:
        """
        The validator sees the challenge certificate, then the server
        closes the connection; what the validator sends never reaches the
        site, and no timer is left.
        """
        client, pump = self.connect([ACME_TLS_ALPN])
        assert client.transport is not None
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        pump.flush()
        assert client.peerCertificate is not None
        self.assertEqual(_acmeIdentifier(client.peerCertificate), _ACME_DIGEST)
        self.assertEqual(client.negotiated, ACME_TLS_ALPN)
        assert client.lost is not None
        client.lost.trap(ConnectionDone)
        self.assertEqual(client.data, b"")
        [server] = self.recorders
        self.assertEqual(server.data, b"")
        self.assertIsNotNone(server.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ordinaryClientServed(self) -> None:
        """
        A client offering HTTP protocols for the same name gets the site's
        certificate and its data reaches the site.
        """
        client, pump = self.connect([b"h2", b"http/1.1"])
        assert client.transport is not None
        client.transport.write(b"ping")
        pump.flush()
        assert client.peerCertificate is not None
        self.assertIsNone(_acmeIdentifier(client.peerCertificate))
        self.assertEqual(client.peerCertificate, self.a.chain[0])
        self.assertEqual(client.negotiated, b"h2")
        self.assertIsNone(client.lost)
        self.assertEqual(self.recorders[0].data, b"ping")
        self.assertEqual(client.data, b"ping")
