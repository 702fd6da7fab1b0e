"""
Tests for L{revproxy.tls}.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from types import TracebackType

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.interfaces import ICertificateStore
from revproxy.tls import (
    CertificateError,
    CertificateStore,
    LoadedCertificate,
    SNIContextFactory,
    UnknownServerName,
    loadCertificateFiles,
    nameCovers,
)

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


class _ExceptHookRecorder:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(
        self,
        kind: type[BaseException],
        value: BaseException,
        tb: TracebackType | None,
    ) -> None:
        self.errors.append(value)


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
        self.hookErrors = _ExceptHookRecorder()
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
        A TLS 1.2 client resumes its session on a new connection, by ticket
        and by session id.
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


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class TwistedTLSTests(SynchronousTestCase):
    """
    L{SNIContextFactory} under Twisted's C{TLSMemoryBIOFactory}, with a
    Twisted TLS client that verifies the host name.
    """

    def connect(
        self, factory: SNIContextFactory, serverName: str
    ) -> tuple[_Recorder, IOPump]:
        clock = Clock()
        serverFactory = TLSMemoryBIOFactory(
            factory, False, Factory.forProtocol(_Echo), clock
        )
        clientFactory = TLSMemoryBIOFactory(
            optionsForClientTLS(
                serverName, trustRoot=Certificate.loadPEM(_CA.cert_pem.bytes())
            ),
            True,
            Factory.forProtocol(_Recorder),
            clock,
        )
        address = IPv4Address("TCP", "127.0.0.1", 1)
        clientProtocol = clientFactory.buildProtocol(address)
        assert clientProtocol is not None
        recorder = clientProtocol.wrappedProtocol
        assert isinstance(recorder, _Recorder)
        _, _, pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(address),
            lambda: clientProtocol,
            clock=clock,
        )
        return recorder, pump

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
        self.patch(sys, "excepthook", _ExceptHookRecorder())
        a = _load(self, "a.test")
        factory = SNIContextFactory(CertificateStore({"a.test": a}))
        client, pump = self.connect(factory, "b.test")
        assert client.transport is not None
        client.transport.write(b"ping")
        pump.flush()
        self.assertEqual(client.data, b"")
        assert client.lost is not None
        self.assertIn("unrecognized name", str(client.lost.value))
