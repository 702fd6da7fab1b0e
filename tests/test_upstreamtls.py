"""
Tests for L{revproxy.proxy.upstreamtls}: trust settings for https://
upstreams and the client connection creators built from them, with real
TLS handshakes over memory (L{twisted.test.iosim}); no sockets.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

import attrs
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from revproxy.proxy.upstreamtls import (
    SYSTEM_TRUST,
    ClientCreators,
    UpstreamTLS,
    loadUpstreamTLS,
)
from tests.tlshelpers import Echo, Recorder

_CA = trustme.CA()
_OTHER_CA = trustme.CA()
_ADDRESS = IPv4Address("TCP", "127.0.0.1", 1)


def _write(case: SynchronousTestCase, name: str, data: bytes) -> str:
    """
    Write C{data} to a file C{name} in a fresh temporary directory of
    C{case}.
    """
    directory = case.mktemp()
    os.mkdir(directory)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _selfSigned(name: str) -> tuple[bytes, bytes]:
    """
    A self-signed certificate for C{name} and its key, both PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@implementer(IOpenSSLServerConnectionCreator)
class _Upstream:
    """
    The TLS side of an upstream server: one certificate, and a record of the
    server names and ALPN protocols clients sent.
    """

    def __init__(self, chainPEM: bytes, keyPEM: bytes) -> None:
        chain = x509.load_pem_x509_certificates(chainPEM)
        key = serialization.load_pem_private_key(keyPEM, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.set_tlsext_servername_callback(self._serverName)
        ctx.set_alpn_select_callback(self._alpn)
        self._context = ctx
        self.serverNames: list[bytes | None] = []
        self.offered: list[list[bytes]] = []

    @classmethod
    def fromLeaf(cls, leaf: trustme.LeafCert) -> _Upstream:
        return cls(
            b"".join(p.bytes() for p in leaf.cert_chain_pems),
            leaf.private_key_pem.bytes(),
        )

    def _serverName(self, connection: SSL.Connection) -> None:
        self.serverNames.append(connection.get_servername())

    def _alpn(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        self.offered.append(offered)
        return offered[0]

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


def _exchange(
    creator: IOpenSSLClientConnectionCreator, upstream: _Upstream
) -> Recorder:
    """
    Connect a client using C{creator} to C{upstream} (an echo server) over
    memory, send C{b"ping"}, and pump until nothing moves.

    @return: What the client received, and how its connection ended.
    """
    clock = Clock()
    serverFactory = TLSMemoryBIOFactory(
        upstream, False, Factory.forProtocol(Echo), clock
    )
    clientFactory = TLSMemoryBIOFactory(
        creator, True, Factory.forProtocol(Recorder), clock
    )
    clientProtocol = clientFactory.buildProtocol(_ADDRESS)
    assert clientProtocol is not None
    recorder = clientProtocol.wrappedProtocol
    assert isinstance(recorder, Recorder)
    _, _, pump = connectedServerAndClient(
        lambda: serverFactory.buildProtocol(_ADDRESS),
        lambda: clientProtocol,
        clock=clock,
    )
    assert recorder.transport is not None
    recorder.transport.write(b"ping")
    pump.flush()
    return recorder


class UpstreamTLSTests(SynchronousTestCase):
    """
    Tests for L{UpstreamTLS} and L{SYSTEM_TRUST}.
    """

    def test_systemTrustDefault(self) -> None:
        """
        L{SYSTEM_TRUST} verifies against the system store: no CA file, no
        loaded trust root, and it equals the default settings.
        """
        self.assertTrue(SYSTEM_TRUST.verify)
        self.assertEqual(SYSTEM_TRUST.caFile, "")
        self.assertEqual(SYSTEM_TRUST.caDigest, "")
        self.assertIsNone(SYSTEM_TRUST.trustRoot)
        self.assertEqual(UpstreamTLS(), SYSTEM_TRUST)

    def test_frozen(self) -> None:
        """
        Settings cannot be changed once made: they are part of pool keys.
        """
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError,
            setattr,
            SYSTEM_TRUST,
            "verify",
            False,
        )

    def test_equalityIgnoresTrustRoot(self) -> None:
        """
        Two settings with the same file and digest are equal, and hash the
        same, whatever loaded trust root object they hold.
        """
        path = _write(self, "ca.pem", _CA.cert_pem.bytes())
        first = loadUpstreamTLS(path, True)
        second = loadUpstreamTLS(path, True)
        self.assertIsNot(first.trustRoot, second.trustRoot)
        self.assertEqual(first, second)
        self.assertEqual(hash(first), hash(second))
        self.assertEqual(first, attrs.evolve(first, trustRoot=None))
        self.assertNotEqual(first, attrs.evolve(first, caDigest="0" * 64))
        self.assertNotEqual(first, SYSTEM_TRUST)
        self.assertNotEqual(UpstreamTLS(verify=False), SYSTEM_TRUST)


class LoadUpstreamTLSTests(SynchronousTestCase):
    """
    Tests for L{loadUpstreamTLS}.
    """

    def test_noVerify(self) -> None:
        """
        With verification off, nothing is read and no trust root is kept.
        """
        settings = loadUpstreamTLS("", False)
        self.assertEqual(settings, UpstreamTLS(verify=False))
        self.assertIsNone(settings.trustRoot)

    def test_systemStore(self) -> None:
        """
        Without a CA file, verification uses the system store.
        """
        self.assertIs(loadUpstreamTLS("", True), SYSTEM_TRUST)

    def test_caFile(self) -> None:
        """
        A CA file is loaded with its path and the SHA-256 of its bytes.
        """
        data = _CA.cert_pem.bytes()
        path = _write(self, "ca.pem", data)
        settings = loadUpstreamTLS(path, True)
        self.assertTrue(settings.verify)
        self.assertEqual(settings.caFile, path)
        self.assertEqual(settings.caDigest, hashlib.sha256(data).hexdigest())
        self.assertIsNotNone(settings.trustRoot)

    def test_digestFollowsFile(self) -> None:
        """
        A CA file rewritten with another CA gives new, unequal settings (a
        new pool key); the same bytes give equal ones.
        """
        path = _write(self, "ca.pem", _CA.cert_pem.bytes())
        before = loadUpstreamTLS(path, True)
        self.assertEqual(loadUpstreamTLS(path, True), before)
        with open(path, "wb") as f:
            f.write(_OTHER_CA.cert_pem.bytes())
        after = loadUpstreamTLS(path, True)
        self.assertNotEqual(after.caDigest, before.caDigest)
        self.assertNotEqual(after, before)
        self.assertEqual(after.caFile, before.caFile)

    def test_missingFile(self) -> None:
        """
        A CA file that cannot be read is a L{ValueError} naming it.
        """
        directory = self.mktemp()
        path = os.path.join(directory, "missing.pem")
        e = self.assertRaises(ValueError, loadUpstreamTLS, path, True)
        self.assertTrue(str(e).startswith(f"{path}: cannot read: "), str(e))

    def test_directory(self) -> None:
        """
        A directory given as the CA file is a L{ValueError} naming it.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        e = self.assertRaises(ValueError, loadUpstreamTLS, directory, True)
        self.assertTrue(str(e).startswith(f"{directory}: cannot read: "), str(e))

    def test_notPEM(self) -> None:
        """
        A file without a PEM certificate (text, an empty file, a key) is a
        L{ValueError} naming it.
        """
        leaf = _CA.issue_cert("upstream.test")
        for data in [b"hello\n", b"", leaf.private_key_pem.bytes()]:
            path = _write(self, "ca.pem", data)
            e = self.assertRaises(ValueError, loadUpstreamTLS, path, True)
            self.assertEqual(str(e), f"{path}: no PEM certificate found")


class ClientCreatorsTests(SynchronousTestCase):
    """
    Tests for L{ClientCreators}.
    """

    def setUp(self) -> None:
        self.caFile = _write(self, "ca.pem", _CA.cert_pem.bytes())
        self.settings = loadUpstreamTLS(self.caFile, True)

    def test_interface(self) -> None:
        """
        Verifying and unverified creators provide
        L{IOpenSSLClientConnectionCreator}.
        """
        creators = ClientCreators()
        for settings in (self.settings, UpstreamTLS(verify=False)):
            creator = creators.creatorFor("upstream.test", settings)
            self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))

    def test_cachedPerHostAndSettings(self) -> None:
        """
        The same host and equal settings get the same creator; another host
        or other settings get another.
        """
        creators = ClientCreators()
        creator = creators.creatorFor("upstream.test", self.settings)
        self.assertIs(
            creators.creatorFor("upstream.test", loadUpstreamTLS(self.caFile, True)),
            creator,
        )
        self.assertIsNot(creators.creatorFor("other.test", self.settings), creator)
        self.assertIsNot(creators.creatorFor("upstream.test", SYSTEM_TRUST), creator)
        unverified = creators.creatorFor("upstream.test", UpstreamTLS(verify=False))
        self.assertIsNot(unverified, creator)
        self.assertIs(
            creators.creatorFor("upstream.test", UpstreamTLS(verify=False)),
            unverified,
        )

    def test_bounded(self) -> None:
        """
        The cache never holds more than C{limit} creators: it is emptied
        when full, so an earlier host then gets a new creator.
        """
        creators = ClientCreators(limit=2)
        unverified = UpstreamTLS(verify=False)
        first = creators.creatorFor("a.test", unverified)
        self.assertIs(creators.creatorFor("a.test", unverified), first)
        creators.creatorFor("b.test", unverified)
        self.assertIs(creators.creatorFor("a.test", unverified), first)
        creators.creatorFor("c.test", unverified)
        self.assertLessEqual(len(creators._cache), 2)
        again = creators.creatorFor("a.test", unverified)
        self.assertIsNot(again, first)
        self.assertLessEqual(len(creators._cache), 2)

    def test_unverifiedSNI(self) -> None:
        """
        The unverified creator sends the host name as SNI, but not an IPv4
        or IPv6 address, and makes client connections.
        """
        creators = ClientCreators()
        unverified = UpstreamTLS(verify=False)
        factory = TLSMemoryBIOFactory(
            creators.creatorFor("x", unverified),
            True,
            Factory.forProtocol(Protocol),
            Clock(),
        )
        for host, expected in [
            ("upstream.test", b"upstream.test"),
            ("127.0.0.1", None),
            ("::1", None),
        ]:
            protocol = factory.buildProtocol(_ADDRESS)
            assert isinstance(protocol, TLSMemoryBIOProtocol)
            creator = creators.creatorFor(host, unverified)
            connection = creator.clientConnectionForTLS(protocol)
            self.assertEqual(connection.get_servername(), expected, host)
            self.assertIs(connection.get_app_data(), protocol)


class HandshakeTests(SynchronousTestCase):
    """
    The creators against a TLS upstream, over memory.
    """

    def setUp(self) -> None:
        self.caFile = _write(self, "ca.pem", _CA.cert_pem.bytes())
        self.upstream = _Upstream.fromLeaf(_CA.issue_cert("upstream.test"))

    def assertWorks(self, recorder: Recorder) -> None:
        """
        The echo came back over a connection that is still open.
        """
        self.assertEqual(recorder.data, b"ping")
        self.assertIsNone(recorder.lost)

    def assertRefused(self, recorder: Recorder) -> None:
        """
        The handshake failed the client's certificate check: no data, and
        the connection closed with an OpenSSL error.
        """
        self.assertEqual(recorder.data, b"")
        assert recorder.lost is not None
        self.assertIsInstance(recorder.lost.value, SSL.Error)
        self.assertIn("certificate verify failed", str(recorder.lost.value))

    def test_verifiedWithCAFile(self) -> None:
        """
        The verifying creator trusts the site's CA file: the right host
        name completes, sends SNI and offers only http/1.1.
        """
        creator = ClientCreators().creatorFor(
            "upstream.test", loadUpstreamTLS(self.caFile, True)
        )
        self.assertWorks(_exchange(creator, self.upstream))
        self.assertEqual(self.upstream.serverNames, [b"upstream.test"])
        self.assertEqual(self.upstream.offered, [[b"http/1.1"]])

    def test_caBundle(self) -> None:
        """
        Every CA of a bundle is trusted.
        """
        bundle = _write(
            self, "bundle.pem", _OTHER_CA.cert_pem.bytes() + _CA.cert_pem.bytes()
        )
        settings = loadUpstreamTLS(bundle, True)
        creators = ClientCreators()
        self.assertWorks(
            _exchange(creators.creatorFor("upstream.test", settings), self.upstream)
        )
        other = _Upstream.fromLeaf(_OTHER_CA.issue_cert("other.test"))
        self.assertWorks(_exchange(creators.creatorFor("other.test", settings), other))

    def test_wrongHostRefused(self) -> None:
        """
        A certificate from the trusted CA for another name is refused.
        """
        creator = ClientCreators().creatorFor(
            "wrong.test", loadUpstreamTLS(self.caFile, True)
        )
        recorder = _exchange(creator, self.upstream)
        self.assertEqual(recorder.data, b"")
        assert recorder.lost is not None
        self.assertIsInstance(recorder.lost.value, VerificationError)
        self.assertIn("wrong.test", str(recorder.lost.value))

    def test_otherCARefused(self) -> None:
        """
        A CA file of another CA does not make the upstream trusted.
        """
        otherFile = _write(self, "other.pem", _OTHER_CA.cert_pem.bytes())
        creator = ClientCreators().creatorFor(
            "upstream.test", loadUpstreamTLS(otherFile, True)
        )
        self.assertRefused(_exchange(creator, self.upstream))

    def test_systemTrustRefusesPrivateCA(self) -> None:
        """
        Without the CA file (system trust store), a certificate of a
        private CA is refused.
        """
        creator = ClientCreators().creatorFor("upstream.test", SYSTEM_TRUST)
        self.assertRefused(_exchange(creator, self.upstream))

    def test_verifiedIPAddress(self) -> None:
        """
        An upstream given by IPv4 or IPv6 address is verified against the
        certificate's IP address names, without SNI.
        """
        upstream = _Upstream.fromLeaf(_CA.issue_cert("127.0.0.1", "::1"))
        settings = loadUpstreamTLS(self.caFile, True)
        creators = ClientCreators()
        self.assertWorks(
            _exchange(creators.creatorFor("127.0.0.1", settings), upstream)
        )
        self.assertWorks(_exchange(creators.creatorFor("::1", settings), upstream))
        self.assertEqual(upstream.serverNames, [None, None])
        recorder = _exchange(creators.creatorFor("127.0.0.2", settings), upstream)
        self.assertEqual(recorder.data, b"")
        assert recorder.lost is not None
        self.assertIsInstance(recorder.lost.value, VerificationError)

    def test_unverifiedSelfSigned(self) -> None:
        """
        With verification off, a self-signed certificate for another name
        is accepted, and SNI is still sent.
        """
        upstream = _Upstream(*_selfSigned("self.test"))
        creator = ClientCreators().creatorFor(
            "upstream.test", UpstreamTLS(verify=False)
        )
        self.assertWorks(_exchange(creator, upstream))
        self.assertEqual(upstream.serverNames, [b"upstream.test"])
        self.assertEqual(upstream.offered, [[b"http/1.1"]])

    def test_unverifiedIPNoSNI(self) -> None:
        """
        With verification off, an upstream given by IP address gets no SNI.
        """
        upstream = _Upstream(*_selfSigned("self.test"))
        creator = ClientCreators().creatorFor("127.0.0.1", UpstreamTLS(verify=False))
        self.assertWorks(_exchange(creator, upstream))
        self.assertEqual(upstream.serverNames, [None])

    def test_selfSignedRefusedWhenVerifying(self) -> None:
        """
        A self-signed certificate is refused by a verifying creator even
        for the right name.
        """
        upstream = _Upstream(*_selfSigned("upstream.test"))
        creator = ClientCreators().creatorFor(
            "upstream.test", loadUpstreamTLS(self.caFile, True)
        )
        self.assertRefused(_exchange(creator, upstream))
