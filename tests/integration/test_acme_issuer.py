"""
Integration tests: L{revproxy.acme.issuer.AcmeIssuer} against a real
pebble (L{tests.integration.pebble}), answering http-01 from an in-test
twisted.web server and tls-alpn-01 from an in-test pyOpenSSL server, both
on loopback ports pebble is configured to validate on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    maybeDeferred,
)
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer
from zope.interface.verify import verifyObject

from revproxy.acme import AcmeError
from revproxy.acme.issuer import AcmeIssuer, ChallengeType
from revproxy.interfaces import IIssuer
from tests.fakes import FakeChallengeResponder
from tests.integration.pebble import Pebble, startPebble
from tests.integration.support import (
    EXIT_TIMEOUT,
    IIntegrationReactor,
    UpstreamSite,
    closedPort,
    getReactor,
    withTimeout,
)

#: How long one issuance may take here (pebble issues in well under 1 s).
ISSUE_TIMEOUT = 30.0

_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


class _ChallengeResource(Resource):
    """
    C{/.well-known/acme-challenge/TOKEN}: the responder's answer, or 404.
    """

    isLeaf = True

    def __init__(self, responder: FakeChallengeResponder) -> None:
        super().__init__()
        self.responder = responder
        self.requests: list[bytes] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path or b""
        self.requests.append(path)
        request.setHeader(b"connection", b"close")
        prefix = b"/.well-known/acme-challenge/"
        token = path[len(prefix) :].decode("ascii", "replace")
        answer = self.responder.http01.get(token)
        if not path.startswith(prefix) or answer is None:
            request.setResponseCode(404)
            return b"no such token\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        return answer.encode("ascii")


def challengeCertificate(
    name: str, keyAuthorization: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    The RFC 8737 certificate: self-signed, SAN C{name}, and the critical
    acmeIdentifier extension: DER OCTET STRING of sha256(keyAuthorization).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme challenge")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(
            x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), True
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@implementer(IOpenSSLServerConnectionCreator)
class _TLSALPNServer:
    """
    pyOpenSSL server connections that answer tls-alpn-01 for the names
    the responder has an answer for: the SNI callback installs the
    challenge certificate, the ALPN callback selects C{acme-tls/1}.
    """

    def __init__(self, responder: FakeChallengeResponder) -> None:
        self.responder = responder
        self.answered: list[str] = []
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_tlsext_servername_callback(self._serverName)
        context.set_alpn_select_callback(self._selectALPN)
        self._context = context

    def _serverName(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        name = raw.decode("ascii") if raw else ""
        keyAuthorization = self.responder.tlsalpn01.get(name)
        if keyAuthorization is None:
            return
        certificate, key = challengeCertificate(name, keyAuthorization)
        connection.use_certificate(certificate)
        connection.use_privatekey(key)
        self.answered.append(name)

    def _selectALPN(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        if b"acme-tls/1" not in offered:
            return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]
        return b"acme-tls/1"

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


@implementer(IHandshakeListener)
class _Validator(Protocol):
    """
    A validation connection: closed once its handshake is done.
    """

    def connectionMade(self) -> None:
        self.closed: Deferred[None] = Deferred()
        cast(_ValidatorFactory, self.factory).connections.add(self)

    def handshakeCompleted(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        cast(_ValidatorFactory, self.factory).connections.discard(self)
        self.closed.callback(None)


class _ValidatorFactory(ServerFactory):
    protocol = _Validator

    def __init__(self) -> None:
        self.connections: set[_Validator] = set()


def verifyChain(chain: Sequence[bytes], rootPEM: bytes, names: Sequence[str]) -> None:
    """
    C{chain} (leaf first) must lead to C{rootPEM} and the leaf name each
    of C{names}.
    """
    root = x509.load_pem_x509_certificate(rootPEM)
    leaf, *intermediates = (x509.load_pem_x509_certificate(c) for c in chain)
    for name in names:
        verifier = (
            PolicyBuilder()
            .store(Store([root]))
            .build_server_verifier(x509.DNSName(name))
        )
        verifier.verify(leaf, intermediates)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names), san


class AcmeIssuerTests(TestCase):
    """
    L{AcmeIssuer} against pebble.
    """

    timeout = 60

    def setUp(self) -> None:
        self.reactor: IIntegrationReactor = getReactor()
        self.responder = FakeChallengeResponder()
        self.accountKey = ec.generate_private_key(ec.SECP256R1())
        self.accounts: list[str] = []

    async def listenHTTP(self) -> tuple[int, _ChallengeResource]:
        """
        Serve the responder's http-01 answers on a loopback port.
        """
        resource = _ChallengeResource(self.responder)
        site = UpstreamSite(resource, self.reactor)
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        port: IListeningPort = await endpoint.listen(site)

        async def stop() -> None:
            await maybeDeferred(port.stopListening)
            channels = list(site.channels)
            for channel in channels:
                if channel.transport is not None:
                    cast(ITCPTransport, channel.transport).abortConnection()
            await DeferredList([c.closed for c in channels])

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return cast(IPv4Address, port.getHost()).port, resource

    async def listenTLS(self) -> tuple[int, _TLSALPNServer]:
        """
        Serve the responder's tls-alpn-01 answers on a loopback port.
        """
        context = _TLSALPNServer(self.responder)
        factory = _ValidatorFactory()
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        port: IListeningPort = await endpoint.listen(
            TLSMemoryBIOFactory(context, False, factory)
        )

        async def stop() -> None:
            await maybeDeferred(port.stopListening)
            connections = list(factory.connections)
            for connection in connections:
                if connection.transport is not None:
                    cast(ITCPTransport, connection.transport).abortConnection()
            await DeferredList([c.closed for c in connections])

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return cast(IPv4Address, port.getHost()).port, context

    def makeIssuer(
        self,
        pebble: Pebble,
        challenge: ChallengeType = "http-01",
        accountURI: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        accounts: list[str] | None = None,
    ) -> AcmeIssuer:
        return AcmeIssuer(
            self.reactor,
            pebble.directoryURL,
            "ops@revproxy.example",
            key or self.accountKey,
            caFile=pebble.caFile,
            accountURI=accountURI,
            onAccount=(self.accounts if accounts is None else accounts).append,
            challenge=challenge,
            timeout=10.0,
            orderDeadline=ISSUE_TIMEOUT,
        )

    async def issue(self, issuer: AcmeIssuer, names: Sequence[str]) -> list[bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        chain: list[bytes] = await withTimeout(
            issuer.issue(names, key, self.responder),
            ISSUE_TIMEOUT + 5,
            f"issuing {names}",
        )
        return chain

    def assertCleanedUp(self) -> None:
        """
        Every answer was removed again, and the responder was only used
        on the reactor thread.
        """
        self.assertEqual(self.responder.http01, {})
        self.assertEqual(self.responder.tlsalpn01, {})
        self.assertEqual(self.responder.offThread, [])

    async def test_http01(self) -> None:
        """
        An order for two names is validated over http-01 from the
        responder's answers; the chain leads to pebble's root and names
        both; the answers are removed afterwards; the account is reported
        once; pebble has no ARI, so there is no renewal window.
        """
        httpPort, resource = await self.listenHTTP()
        pebble = await startPebble(self, httpPort, closedPort())
        issuer = self.makeIssuer(pebble)
        verifyObject(IIssuer, issuer)
        names = ["www.http01.example", "http01.example"]
        chain = await self.issue(issuer, names)
        verifyChain(chain, await pebble.root(), names)
        self.assertEqual(
            [m for m, _ in self.responder.calls],
            ["addHTTP01", "addHTTP01", "removeHTTP01", "removeHTTP01"],
        )
        # pebble validates from several perspectives: one GET each.
        self.assertEqual(len(set(resource.requests)), 2)
        self.assertCleanedUp()
        self.assertEqual(self.accounts, [issuer.accountURI])
        window = await withTimeout(issuer.renewalWindow(chain[0]), 15, "ARI")
        self.assertIsNone(window)

    async def test_tlsalpn01(self) -> None:
        """
        An order is validated over tls-alpn-01: the validator's handshake
        for the name, with ALPN C{acme-tls/1}, gets the RFC 8737
        certificate made from the responder's answer.
        """
        tlsPort, context = await self.listenTLS()
        pebble = await startPebble(self, closedPort(), tlsPort)
        issuer = self.makeIssuer(pebble, challenge="tls-alpn-01")
        names = ["tls.example", "www.tls.example"]
        chain = await self.issue(issuer, names)
        verifyChain(chain, await pebble.root(), names)
        self.assertEqual(sorted(set(context.answered)), sorted(names))
        self.assertEqual(
            sorted(self.responder.calls),
            sorted(
                [("addTLSALPN01", n) for n in names]
                + [("removeTLSALPN01", n) for n in names]
            ),
        )
        self.assertCleanedUp()

    async def test_accountReused(self) -> None:
        """
        A second order reuses the account (C{onAccount} is called once)
        and, when the CA hands back the valid authorization, publishes
        nothing; another issuer with the same key finds the same account;
        one given a URL the CA does not know registers again.
        """
        httpPort, resource = await self.listenHTTP()
        pebble = await startPebble(self, httpPort, closedPort(), authzReuse=100)
        issuer = self.makeIssuer(pebble)
        await self.issue(issuer, ["reuse.example"])
        first = issuer.accountURI
        self.assertIsNotNone(first)
        calls = len(self.responder.calls)
        await self.issue(issuer, ["reuse.example"])
        self.assertEqual(self.accounts, [first])
        self.assertEqual(len(self.responder.calls), calls)
        self.assertEqual(len(set(resource.requests)), 1)

        again: list[str] = []
        other = self.makeIssuer(pebble, accounts=again)
        await self.issue(other, ["other.example"])
        self.assertEqual(again, [first])

        forgotten: list[str] = []
        assert first is not None
        stale = self.makeIssuer(pebble, accountURI=first + "-gone", accounts=forgotten)
        await self.issue(stale, ["stale.example"])
        self.assertEqual(forgotten, [first])
        self.assertEqual(stale.accountURI, first)
        self.assertCleanedUp()

    async def test_challengeFails(self) -> None:
        """
        When nothing answers on the validation port, the order fails with
        one line naming the name and pebble's reason, and the answer is
        removed.
        """
        pebble = await startPebble(self, closedPort(), closedPort())
        issuer = self.makeIssuer(pebble)
        key = ec.generate_private_key(ec.SECP256R1())
        d = issuer.issue(["nobody.example"], key, self.responder)
        error = await self.assertFailure(
            withTimeout(d, ISSUE_TIMEOUT + 5, "failing"), AcmeError
        )
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(
            message.startswith("order for nobody.example failed: nobody.example"),
            message,
        )
        self.assertIn("urn:ietf:params:acme:error:connection", message)
        self.assertIn("refused", message)
        self.assertEqual(
            [m for m, _ in self.responder.calls], ["addHTTP01", "removeHTTP01"]
        )
        self.assertCleanedUp()

    async def test_cancelled(self) -> None:
        """
        Cancelling an order once its answer is published removes the
        answer at once and fails with L{CancelledError}.
        """
        httpPort, _ = await self.listenHTTP()
        pebble = await startPebble(self, httpPort, closedPort())
        issuer = self.makeIssuer(pebble)
        key = ec.generate_private_key(ec.SECP256R1())
        d = issuer.issue(["cancel.example"], key, self.responder)
        self.responder.onAdd = lambda: self.reactor.callLater(0, d.cancel)
        await self.assertFailure(
            withTimeout(d, ISSUE_TIMEOUT, "cancelling"), CancelledError
        )
        self.assertEqual(
            [m for m, _ in self.responder.calls], ["addHTTP01", "removeHTTP01"]
        )
        self.assertCleanedUp()

    async def test_unreachable(self) -> None:
        """
        A directory nobody listens on fails at once, on one line.
        """
        port = closedPort()
        issuer = AcmeIssuer(
            self.reactor,
            f"https://127.0.0.1:{port}/dir",
            "",
            self.accountKey,
            timeout=5.0,
            orderDeadline=20.0,
        )
        key = ec.generate_private_key(ec.SECP256R1())
        started = self.reactor.seconds()
        error = await self.assertFailure(
            withTimeout(
                issuer.issue(["a.example"], key, self.responder),
                EXIT_TIMEOUT,
                "failing",
            ),
            AcmeError,
        )
        self.assertLess(self.reactor.seconds() - started, 5.0)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("order for a.example failed: "), message)
        self.assertIn(f"127.0.0.1:{port}", message)
        self.assertIn("Connection refused", message)
        self.assertEqual(self.responder.calls, [])
