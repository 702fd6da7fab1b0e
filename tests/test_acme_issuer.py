"""
Tests for L{revproxy.acme.issuer}: the ARI identifier and renewal info,
error messages, and the order of work of L{AcmeIssuer} over a fake ACME
layer (L{AcmeCalls}), with calls run inline and a L{Clock} for time.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from acme import errors as acmeErrors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.b64 import b64decode
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.acme import AcmeError
from revproxy.acme.issuer import (
    AcmeIssuer,
    LibraryCalls,
    _ChallengeAnswer,
    _retryAfter,
    ariCertID,
    describeFailure,
    makeCSR,
    parseRenewalInfo,
    splitChain,
)
from revproxy.interfaces import IIssuer
from tests.fakes import FakeChallengeResponder

#: RFC 9773 Appendix A: the example certificate whose ARI identifier is
#: "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE" (section 4.1).
RFC9773_CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt
cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS
BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu
7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf
qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B
yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb
+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK
-----END CERTIFICATE-----
"""

DIRECTORY = {
    "newNonce": "https://ca.test/nonce",
    "newAccount": "https://ca.test/account",
    "newOrder": "https://ca.test/order",
}
ACCOUNT = "https://ca.test/account/1"


def certificate(
    serial: int = 1,
    aki: bytes | None = b"\x01\x02\x03",
    names: Sequence[str] = ("a.test",),
    publicKey: ec.EllipticCurvePublicKey | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """
    A small certificate for the tests.
    """
    signer = signer or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(publicKey or signer.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False
        )
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), False
        )
    return builder.sign(signer, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class AriTests(SynchronousTestCase):
    """
    L{ariCertID} and L{parseRenewalInfo}.
    """

    def test_rfcExample(self) -> None:
        """
        The identifier of RFC 9773's example certificate is the RFC's.
        """
        cert = x509.load_pem_x509_certificate(RFC9773_CERTIFICATE)
        self.assertEqual(ariCertID(cert), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")

    def test_serialEncoding(self) -> None:
        """
        The serial is its DER INTEGER content: shortest form, with a zero
        octet in front when the high bit is set.
        """
        self.assertEqual(ariCertID(certificate(serial=1)).split(".")[1], "AQ")
        self.assertEqual(ariCertID(certificate(serial=0x7F)).split(".")[1], "fw")
        self.assertEqual(ariCertID(certificate(serial=0x80)).split(".")[1], "AIA")
        self.assertEqual(ariCertID(certificate(serial=0x0100)).split(".")[1], "AQA")

    def test_noAuthorityKeyIdentifier(self) -> None:
        """
        A certificate without an AKI has no ARI identifier.
        """
        self.assertRaises(ValueError, ariCertID, certificate(aki=None))

    def test_parse(self) -> None:
        """
        The suggested window of RFC 9773's example, in epoch seconds.
        """
        document = {
            "suggestedWindow": {
                "start": "2025-01-02T04:00:00Z",
                "end": "2025-01-03T04:00:00Z",
            },
            "explanationURL": "https://acme.example.com/docs/ari",
        }
        start = datetime(2025, 1, 2, 4, tzinfo=UTC).timestamp()
        self.assertEqual(parseRenewalInfo(document), (start, start + 86400))

    def test_parseFractionsAndOffsets(self) -> None:
        """
        Nanoseconds (Go's RFC3339Nano) and numeric offsets are read.
        """
        document = {
            "suggestedWindow": {
                "start": "2025-01-02T06:00:00.123456789+02:00",
                "end": "2025-01-02t04:00:01z",
            }
        }
        start, end = parseRenewalInfo(document)
        base = datetime(2025, 1, 2, 4, tzinfo=UTC).timestamp()
        self.assertAlmostEqual(start, base + 0.123456, places=5)
        self.assertEqual(end, base + 1)

    def test_parseRejects(self) -> None:
        """
        Anything but a well-formed window is a L{ValueError}.
        """
        good = "2025-01-02T04:00:00Z"
        for document in [
            [],
            {},
            {"suggestedWindow": "soon"},
            {"suggestedWindow": {"start": good}},
            {"suggestedWindow": {"start": good, "end": "tomorrow"}},
            {"suggestedWindow": {"start": good, "end": "2025-01-03T04:00:00"}},
            {"suggestedWindow": {"start": good, "end": 1735790400}},
            {"suggestedWindow": {"start": good, "end": "2025-01-01T04:00:00Z"}},
        ]:
            self.assertRaises(ValueError, parseRenewalInfo, document)


class HelperTests(SynchronousTestCase):
    """
    L{splitChain}, L{makeCSR} and the challenge answer.
    """

    def test_splitChain(self) -> None:
        """
        A full chain splits into its PEM certificates, in order, with LF
        line ends.
        """
        one, two = pem(certificate(serial=1)), pem(certificate(serial=2))
        text = (one + b"\n" + two.replace(b"\n", b"\r\n")).decode("ascii")
        self.assertEqual(splitChain(text), [one, two])

    def test_splitChainEmpty(self) -> None:
        """
        No certificate, or a broken one, is a L{ValueError}.
        """
        self.assertRaises(ValueError, splitChain, "<html>nope</html>")
        broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        self.assertRaises(ValueError, splitChain, broken)

    def test_csr(self) -> None:
        """
        Every name is a subject alternative name (IP addresses as such),
        and the CSR is signed by the key.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.load_pem_x509_csr(makeCSR(key, ["a.test", "b.test", "127.0.0.1"]))
        self.assertTrue(csr.is_signature_valid)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            san.value.get_values_for_type(x509.DNSName), ["a.test", "b.test"]
        )
        self.assertEqual(
            [str(a) for a in san.value.get_values_for_type(x509.IPAddress)],
            ["127.0.0.1"],
        )

    def test_answerIsEmptyObject(self) -> None:
        """
        A challenge is answered with the JSON object C{{}}, never with an
        empty payload (which would be a POST-as-GET).
        """
        answer = _ChallengeAnswer()
        self.assertTrue(answer)
        calls = LibraryCalls(
            "https://ca.test/dir",
            ec.generate_private_key(ec.SECP256R1()),
            clock=Clock(),
        )
        self.addCleanup(calls.close)
        # The library annotates the nonce as str but encodes it as bytes.
        nonce: Any = b"nonce"
        jws = json.loads(calls.net._wrap_in_jws(answer, nonce, "https://x"))
        self.assertEqual(json.loads(b64decode(jws["payload"])), {})

    def test_retryAfter(self) -> None:
        """
        C{Retry-After} in seconds or as an HTTP date (counted from C{now});
        none when absent or unreadable.
        """
        now = datetime(2025, 1, 2, 4, tzinfo=UTC)

        def after(value: str | None) -> float | None:
            response = requests.Response()
            if value is not None:
                response.headers["Retry-After"] = value
            return _retryAfter(response, now.timestamp())

        self.assertEqual(after("3"), 3.0)
        self.assertIsNone(after(None))
        self.assertIsNone(after("soon"))
        self.assertEqual(after("Wed, 21 Oct 2015 07:28:00 GMT"), 0.0)
        later = now + timedelta(seconds=120)
        self.assertEqual(after(later.strftime("%a, %d %b %Y %H:%M:%S GMT")), 120.0)

    def test_retryAfterClock(self) -> None:
        """
        L{LibraryCalls} counts a C{Retry-After} HTTP date from its clock,
        read when the answer comes.
        """
        clock = Clock()
        clock.advance(datetime(2025, 1, 2, 4, tzinfo=UTC).timestamp())
        calls = LibraryCalls(
            "https://ca.test/dir", ec.generate_private_key(ec.SECP256R1()), clock=clock
        )
        self.addCleanup(calls.close)
        response = requests.Response()
        response.headers["Retry-After"] = "Thu, 02 Jan 2025 04:02:00 GMT"
        response._content = json.dumps(
            {"status": "pending", "identifiers": [], "authorizations": []}
        ).encode()
        calls._postAsGet = lambda url: response  # type: ignore[method-assign]
        self.assertEqual(calls.order("https://ca.test/order/1")[1], 120.0)
        clock.advance(30)
        self.assertEqual(calls.order("https://ca.test/order/1")[1], 90.0)

    def test_caFile(self) -> None:
        """
        The CA file replaces the system's trust for the CA's HTTPS.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        calls = LibraryCalls(
            "https://ca.test/dir", key, caFile="/etc/ca.pem", clock=Clock()
        )
        self.addCleanup(calls.close)
        self.assertEqual(calls.net.verify_ssl, "/etc/ca.pem")


def _response(status: int, url: str, body: bytes = b"") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = "Bad Gateway"
    response.url = url
    response._content = body
    return response


class DescribeFailureTests(SynchronousTestCase):
    """
    L{describeFailure}: one line that says what failed.
    """

    def test_problem(self) -> None:
        """
        An ACME problem: its type and detail, and its subproblems'.
        """
        error = messages.Error.from_json(
            {
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "Some names\nwere refused",
                "subproblems": [
                    {
                        "type": "urn:ietf:params:acme:error:caa",
                        "detail": "CAA forbids",
                        "identifier": {"type": "dns", "value": "b.test"},
                    }
                ],
            }
        )
        self.assertEqual(
            describeFailure(error),
            "urn:ietf:params:acme:error:rejectedIdentifier: Some names were"
            " refused; b.test: urn:ietf:params:acme:error:caa: CAA forbids",
        )

    def test_connectionRefused(self) -> None:
        """
        A connection error names the URL and the errno, not urllib3's
        nested reprs.
        """
        request = requests.Request("GET", "https://127.0.0.1:1/dir").prepare()
        error = requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded"
            " with url: /dir (Caused by NewConnectionError('<urllib3.connection."
            "HTTPSConnection object at 0x7f>: Failed to establish a new connection:"
            " [Errno 111] Connection refused'))",
            request=request,
        )
        self.assertEqual(
            describeFailure(error),
            "cannot reach https://127.0.0.1:1/dir: [Errno 111] Connection refused",
        )

    def test_tls(self) -> None:
        """
        A TLS failure says why the certificate was refused.
        """
        request = requests.Request("GET", "https://ca.test/dir").prepare()
        error = requests.exceptions.SSLError(
            "HTTPSConnectionPool(host='ca.test', port=443): Max retries exceeded"
            " (Caused by SSLError(SSLCertVerificationError(1, '[SSL:"
            " CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed"
            " certificate (_ssl.c:1006)')))",
            request=request,
        )
        self.assertEqual(
            describeFailure(error),
            "TLS to https://ca.test/dir failed: certificate verify failed:"
            " self-signed certificate",
        )

    def test_timeout(self) -> None:
        """
        A request timeout names the URL.
        """
        request = requests.Request("POST", "https://ca.test/order").prepare()
        error = requests.exceptions.ReadTimeout("read timed out", request=request)
        self.assertEqual(
            describeFailure(error), "no answer from https://ca.test/order in time"
        )

    def test_notAProblem(self) -> None:
        """
        An error answer that is not a problem document: status and URL.
        """
        error = acmeErrors.ClientError(_response(502, "https://ca.test/dir", b"<"))
        self.assertEqual(
            describeFailure(error), "HTTP 502 Bad Gateway from https://ca.test/dir"
        )

    def test_other(self) -> None:
        """
        Anything else: its type and message, on one line, cut short.
        """
        self.assertEqual(
            describeFailure(RuntimeError("a\nb\tc")), "RuntimeError: a b c"
        )
        long = describeFailure(RuntimeError("x" * 5000))
        self.assertLessEqual(len(long), 600)
        self.assertTrue(long.endswith("..."))


# -- the issuer over a fake ACME layer


def _token(fill: int) -> str:
    """
    A token as CAs make them: 32 random-looking bytes in base64url.
    """
    return base64.urlsafe_b64encode(bytes([fill]) * 32).decode("ascii").rstrip("=")


TOKENS = {"a.test": _token(1), "b.test": _token(2)}


def _authorization(
    name: str, status: str = "pending", error: dict[str, str] | None = None
) -> dict[str, Any]:
    challenges: list[dict[str, Any]] = []
    for kind in ("http-01", "dns-01", "tls-alpn-01"):
        challenge: dict[str, Any] = {
            "type": kind,
            "url": f"https://ca.test/chall/{name}/{kind}",
            "token": TOKENS.get(name, _token(3)),
            "status": "pending" if status == "pending" else status,
        }
        if error is not None and kind == "http-01":
            challenge["error"] = error
        challenges.append(challenge)
    return {
        "identifier": {"type": "dns", "value": name},
        "status": status,
        "challenges": challenges,
    }


class FakeCalls:
    """
    An L{AcmeCalls} CA: records every call in C{log} (shared with the
    responder) and answers from its attributes.
    """

    def __init__(self, ca: FakeCA) -> None:
        self.ca = ca
        self.log = ca.log

    def directory(self) -> Mapping[str, Any]:
        self.log.append(("directory",))
        return self.ca.directory

    def register(self, email: str) -> str:
        self.log.append(("register", email))
        return self.ca.account

    def useAccount(self, uri: str) -> None:
        self.log.append(("useAccount", uri))

    def newOrder(self, csrPEM: bytes) -> messages.OrderResource:
        self.log.append(("newOrder",))
        if self.ca.newOrderErrors:
            raise self.ca.newOrderErrors.pop(0)
        self.ca.csrPEM = csrPEM
        csr = x509.load_pem_x509_csr(csrPEM)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
        return messages.OrderResource(
            body=messages.Order.from_json(
                {
                    "status": "pending",
                    "identifiers": [{"type": "dns", "value": n} for n in names],
                    "authorizations": [f"https://ca.test/authz/{n}" for n in names],
                    "finalize": "https://ca.test/finalize/1",
                }
            ),
            uri="https://ca.test/order/1",
            authorizations=[
                messages.AuthorizationResource(
                    body=messages.Authorization.from_json(
                        _authorization(n, self.ca.initial.get(n, "pending"))
                    ),
                    uri=f"https://ca.test/authz/{n}",
                )
                for n in names
            ],
            csr_pem=csrPEM,
        )

    def answer(self, challenge: messages.ChallengeBody) -> None:
        self.log.append(("answer", challenge.uri))
        if self.ca.hangAnswer:
            raise _Hang()

    def authorization(self, uri: str) -> tuple[messages.Authorization, float | None]:
        name = uri.rsplit("/", 1)[1]
        self.log.append(("authorization", name))
        states = self.ca.authorizations.setdefault(name, ["valid"])
        state = states.pop(0) if len(states) > 1 else states[0]
        error = self.ca.errors.get(name) if state == "invalid" else None
        return messages.Authorization.from_json(
            _authorization(name, state, error)
        ), self.ca.retryAfter

    def finalize(self, order: messages.OrderResource) -> messages.Order:
        self.log.append(("finalize",))
        if self.ca.finalizeErrors:
            raise self.ca.finalizeErrors.pop(0)
        return self._order(self.ca.finalized)

    def _order(self, status: str) -> messages.Order:
        jobj: dict[str, Any] = {"status": status, "finalize": "https://ca.test/f"}
        if status == "valid":
            jobj["certificate"] = "https://ca.test/cert/1"
        if status == "invalid":
            jobj["error"] = {
                "type": "urn:ietf:params:acme:error:badCSR",
                "detail": "key too weak",
            }
        order: messages.Order = messages.Order.from_json(jobj)
        return order

    def order(self, uri: str) -> tuple[messages.Order, float | None]:
        self.log.append(("order",))
        states = self.ca.orders
        state = states.pop(0) if len(states) > 1 else states[0]
        return self._order(state), None

    def certificate(self, url: str) -> str:
        self.log.append(("certificate",))
        assert self.ca.csrPEM is not None
        csr = x509.load_pem_x509_csr(self.ca.csrPEM)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        publicKey = csr.public_key()
        assert isinstance(publicKey, ec.EllipticCurvePublicKey)
        if self.ca.wrongKey:
            publicKey = ec.generate_private_key(ec.SECP256R1()).public_key()
        leaf = certificate(
            serial=7,
            names=san.value.get_values_for_type(x509.DNSName),
            publicKey=publicKey,
            signer=self.ca.key,
        )
        return (pem(leaf) + pem(self.ca.root)).decode("ascii")

    def getJSON(self, url: str) -> Any:
        self.log.append(("getJSON", url))
        return self.ca.renewalInfo

    def close(self) -> None:
        self.log.append(("close",))


class _Hang(Exception):
    """
    Raised by a fake call to mean: this thread never returns.
    """


class FakeCA:
    """
    The fake CA's state, shared by every L{FakeCalls}.
    """

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.directory: dict[str, Any] = dict(DIRECTORY)
        self.account = ACCOUNT
        self.initial: dict[str, str] = {}
        self.authorizations: dict[str, list[str]] = {}
        self.errors: dict[str, dict[str, str]] = {}
        self.retryAfter: float | None = None
        self.newOrderErrors: list[Exception] = []
        self.finalizeErrors: list[Exception] = []
        self.finalized = "valid"
        self.orders = ["valid"]
        self.hangAnswer = False
        self.wrongKey = False
        self.csrPEM: bytes | None = None
        self.renewalInfo: Any = None
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.root = certificate(serial=1, names=["root.test"], signer=self.key)


class IssuerTests(SynchronousTestCase):
    """
    L{AcmeIssuer} over L{FakeCalls}: calls run inline, time is a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.ca = FakeCA()
        self.log = self.ca.log
        self.responder = FakeChallengeResponder(self.log)
        self.accounts: list[str] = []
        self.key = ec.generate_private_key(ec.SECP256R1())

    def makeIssuer(self, **kwargs: Any) -> AcmeIssuer:
        options: dict[str, Any] = {
            "onAccount": self.accounts.append,
            "orderDeadline": 60.0,
            "runInThread": self._runInThread,
            "newCalls": lambda: FakeCalls(self.ca),
        }
        options.update(kwargs)
        return AcmeIssuer(
            self.clock, "https://ca.test/dir", "ops@example.test", self.key, **options
        )

    def _runInThread(self, f: Callable[[], Any]) -> Deferred[Any]:
        """
        Run C{f} now; a L{_Hang} becomes a L{Deferred} that never fires.
        """
        try:
            result = f()
        except _Hang:
            return Deferred()
        except Exception as e:
            d: Deferred[Any] = Deferred()
            d.errback(e)
            return d
        done: Deferred[Any] = Deferred()
        done.callback(result)
        return done

    def settle(self, d: Deferred[Any], seconds: float = 120.0) -> None:
        """
        Advance the clock in small steps until C{d} fires (or C{seconds}).
        """
        for _ in range(int(seconds * 10)):
            if d.called:
                return
            self.clock.advance(0.1)

    def issue(
        self, issuer: AcmeIssuer, names: Sequence[str] = ("a.test", "b.test")
    ) -> Deferred[list[bytes]]:
        leafKey = ec.generate_private_key(ec.SECP256R1())
        d = issuer.issue(names, leafKey, self.responder)
        self.settle(d)
        return d

    def kinds(self) -> list[str]:
        return [str(entry[0]) for entry in self.log]

    def test_interface(self) -> None:
        """
        L{AcmeIssuer} provides L{IIssuer}.
        """
        self.assertTrue(verifyObject(IIssuer, self.makeIssuer()))

    def test_order(self) -> None:
        """
        The account is registered, the answers are published (and the
        responder says they are everywhere) before the challenges are
        answered and removed once the authorizations are
        valid, before finalization; the chain comes back leaf first.
        """
        self.ca.authorizations = {"a.test": ["pending", "valid"], "b.test": ["valid"]}
        issuer = self.makeIssuer()
        chain = self.successResultOf(self.issue(issuer))
        self.assertEqual(len(chain), 2)
        self.assertEqual(x509.load_pem_x509_certificate(chain[0]).serial_number, 7)
        self.assertEqual(
            self.kinds(),
            [
                "directory",
                "register",
                "newOrder",
                "addHTTP01",
                "addHTTP01",
                "published",
                "answer",
                "answer",
                "authorization",
                "authorization",
                "authorization",
                "removeHTTP01",
                "removeHTTP01",
                "finalize",
                "certificate",
                "close",
            ],
        )
        thumbprint = issuer.keyAuthorization("x").split(".")[1]
        self.assertEqual(
            [e[1:] for e in self.log if e[0] == "addHTTP01"],
            [
                (TOKENS["a.test"], f"{TOKENS['a.test']}.{thumbprint}"),
                (TOKENS["b.test"], f"{TOKENS['b.test']}.{thumbprint}"),
            ],
        )
        self.assertEqual(self.accounts, [ACCOUNT])
        self.assertEqual(issuer.accountURI, ACCOUNT)

    def test_tlsalpn01(self) -> None:
        """
        With tls-alpn-01, answers are published per name.
        """
        issuer = self.makeIssuer(challenge="tls-alpn-01")
        self.successResultOf(self.issue(issuer, ["a.test"]))
        published = [e for e in self.log if e[0].endswith("TLSALPN01")]
        self.assertEqual(
            published,
            [
                ("addTLSALPN01", "a.test", issuer.keyAuthorization(TOKENS["a.test"])),
                ("removeTLSALPN01", "a.test"),
            ],
        )
        self.assertIn(("answer", "https://ca.test/chall/a.test/tls-alpn-01"), self.log)

    def test_validAuthorizationSkipped(self) -> None:
        """
        An authorization that is already valid (reused) gets no answer.
        """
        self.ca.initial = {"a.test": "valid"}
        self.successResultOf(self.issue(self.makeIssuer()))
        self.assertEqual(
            [e for e in self.log if e[0] in ("addHTTP01", "answer")],
            [
                ("addHTTP01", TOKENS["b.test"], self.log[3][2]),
                ("answer", "https://ca.test/chall/b.test/http-01"),
            ],
        )

    def test_accountOnce(self) -> None:
        """
        The account is registered on first use only; C{onAccount} hears
        of it once.
        """
        issuer = self.makeIssuer()
        self.successResultOf(self.issue(issuer))
        self.successResultOf(self.issue(issuer))
        self.assertEqual(self.kinds().count("register"), 1)
        self.assertEqual(self.kinds().count("directory"), 1)
        self.assertEqual(self.accounts, [ACCOUNT])

    def test_accountGiven(self) -> None:
        """
        A known account URL is used without registering.
        """
        issuer = self.makeIssuer(accountURI=ACCOUNT)
        self.successResultOf(self.issue(issuer))
        self.assertNotIn("register", self.kinds())
        self.assertIn(("useAccount", ACCOUNT), self.log)
        self.assertEqual(self.accounts, [])

    def test_accountForgotten(self) -> None:
        """
        When the CA no longer knows the account, it is registered again
        and the new URL reported.
        """
        self.ca.newOrderErrors = [
            messages.Error.with_code("accountDoesNotExist", detail="gone")
        ]
        issuer = self.makeIssuer(accountURI=ACCOUNT + "-old")
        self.successResultOf(self.issue(issuer))
        self.assertEqual(
            self.kinds()[:4], ["directory", "useAccount", "newOrder", "register"]
        )
        self.assertEqual(self.accounts, [ACCOUNT])

    def test_onAccountFails(self) -> None:
        """
        A failing C{onAccount} is logged; the order goes on.
        """

        def fail(uri: str) -> None:
            raise OSError("disk full")

        self.successResultOf(self.issue(self.makeIssuer(onAccount=fail)))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_challengeInvalid(self) -> None:
        """
        An invalid authorization fails the order with the CA's reason on
        one line; the answers are removed.
        """
        self.ca.authorizations = {"a.test": ["pending", "invalid"]}
        self.ca.errors = {
            "a.test": {
                "type": "urn:ietf:params:acme:error:connection",
                "detail": "dial tcp 127.0.0.1:80:\nconnection refused",
            }
        }
        failure = self.failureResultOf(self.issue(self.makeIssuer()), AcmeError)
        self.assertEqual(
            str(failure.value),
            "order for a.test, b.test failed: a.test (http-01): invalid:"
            " urn:ietf:params:acme:error:connection: dial tcp 127.0.0.1:80:"
            " connection refused",
        )
        self.assertEqual(self.kinds()[-3:], ["removeHTTP01", "removeHTTP01", "close"])
        self.assertNotIn("finalize", self.kinds())

    def test_noSuchChallenge(self) -> None:
        """
        An authorization without the configured type fails, naming what
        the CA offers; nothing is published.
        """
        self.ca.initial = {}
        issuer = self.makeIssuer()
        issuer.challenge = "tls-alpn-01"
        original = FakeCalls.newOrder

        def onlyDNS(calls: FakeCalls, csrPEM: bytes) -> messages.OrderResource:
            order = original(calls, csrPEM)
            for authorization in order.authorizations:
                object.__setattr__(
                    authorization.body,
                    "challenges",
                    tuple(
                        c
                        for c in authorization.body.challenges
                        if c.chall.to_partial_json()["type"] == "dns-01"
                    ),
                )
            return order

        self.patch(FakeCalls, "newOrder", onlyDNS)
        failure = self.failureResultOf(self.issue(issuer, ["a.test"]), AcmeError)
        self.assertEqual(
            str(failure.value),
            "order for a.test failed: a.test: the CA offers no tls-alpn-01"
            " challenge (offers: dns-01)",
        )
        self.assertFalse([k for k in self.kinds() if k.startswith("add")])

    def test_malformedToken(self) -> None:
        """
        A token that is not base64url is refused before anything is
        published.  (The library decodes and re-encodes http-01 tokens,
        dropping foreign characters; tls-alpn-01 tokens arrive raw.)
        """
        TOKENS["evil.test"] = "../../etc/passwd-and-more-characters"
        self.addCleanup(TOKENS.pop, "evil.test")
        issuer = self.makeIssuer(challenge="tls-alpn-01")
        failure = self.failureResultOf(self.issue(issuer, ["evil.test"]), AcmeError)
        self.assertIn("malformed challenge token", str(failure.value))
        self.assertFalse([k for k in self.kinds() if k.startswith("add")])

    def test_deadlinePolling(self) -> None:
        """
        An authorization that stays pending fails the order at the
        deadline; the answers are removed.
        """
        self.ca.authorizations = {"a.test": ["pending"]}
        issuer = self.makeIssuer(orderDeadline=10.0)
        failure = self.failureResultOf(self.issue(issuer), AcmeError)
        self.assertEqual(
            str(failure.value),
            "order for a.test, b.test failed: deadline of 10 s passed"
            " (validating a.test (http-01))",
        )
        self.assertLessEqual(self.clock.seconds(), 10.5)
        self.assertEqual(self.kinds()[-3:], ["removeHTTP01", "removeHTTP01", "close"])
        polls = self.kinds().count("authorization")
        self.assertTrue(5 <= polls <= 20, polls)

    def test_deadlineHungCall(self) -> None:
        """
        A call whose thread never returns is given up at the deadline; the
        answers are removed.
        """
        self.ca.hangAnswer = True
        issuer = self.makeIssuer(orderDeadline=10.0)
        failure = self.failureResultOf(self.issue(issuer), AcmeError)
        self.assertIn("deadline of 10 s passed (answering a.test)", str(failure.value))
        self.assertEqual(self.kinds()[-3:], ["removeHTTP01", "removeHTTP01", "close"])

    def test_answerWaitsForPublished(self) -> None:
        """
        The CA is told to validate only once the responder's C{published}
        fired (a fleet's nodes acknowledged the answers).
        """
        self.responder.publishing = Deferred()
        d = self.makeIssuer().issue(["a.test"], self.key, self.responder)
        self.clock.advance(3)
        self.assertEqual(self.kinds()[-2:], ["addHTTP01", "published"])
        self.assertNotIn("answer", self.kinds())
        self.responder.publishing.callback(None)
        self.settle(d)
        self.successResultOf(d)
        kinds = self.kinds()
        self.assertEqual(kinds.index("published") + 1, kinds.index("answer"))

    def test_noAnswersNotPublished(self) -> None:
        """
        With every authorization valid already, nothing is added and
        C{published} is not waited for.
        """
        self.ca.initial = {"a.test": "valid"}
        self.responder.publishing = Deferred()
        self.successResultOf(self.issue(self.makeIssuer(), ["a.test"]))
        self.assertNotIn("published", self.kinds())

    def test_deadlinePublished(self) -> None:
        """
        A C{published} that never fires is given up at the order's
        deadline; the answers are removed and the CA never told.
        """
        self.responder.publishing = Deferred()
        issuer = self.makeIssuer(orderDeadline=10.0)
        failure = self.failureResultOf(self.issue(issuer), AcmeError)
        self.assertIn(
            "deadline of 10 s passed (publishing the challenge answers)",
            str(failure.value),
        )
        self.assertLessEqual(self.clock.seconds(), 10.5)
        self.assertNotIn("answer", self.kinds())
        self.assertEqual(self.kinds()[-3:], ["removeHTTP01", "removeHTTP01", "close"])

    def test_retryAfter(self) -> None:
        """
        The CA's Retry-After sets the polling interval (within bounds).
        """
        self.ca.retryAfter = 3.0
        self.ca.authorizations = {"a.test": ["pending", "pending", "valid"]}
        self.successResultOf(self.issue(self.makeIssuer(), ["a.test"]))
        self.assertTrue(5.9 <= self.clock.seconds() <= 6.3, self.clock.seconds())

    def test_cancel(self) -> None:
        """
        Cancelling the order removes the answers at once.
        """
        self.ca.authorizations = {"a.test": ["pending"]}
        d = self.makeIssuer().issue(["a.test"], self.key, self.responder)
        self.clock.advance(1)
        self.assertNotIn("removeHTTP01", self.kinds())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.kinds()[-2:], ["removeHTTP01", "close"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_removeFails(self) -> None:
        """
        A responder that fails to remove one answer is logged; the other
        answers are still removed.
        """
        self.responder.failRemove = True
        self.successResultOf(self.issue(self.makeIssuer()))
        self.assertEqual(self.kinds().count("removeHTTP01"), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_finalizeProcessing(self) -> None:
        """
        An order still processing after finalization is polled until
        valid; C{orderNotReady} is retried.
        """
        self.ca.finalizeErrors = [
            messages.Error.with_code("orderNotReady", detail="not yet")
        ]
        self.ca.orders = ["ready", "processing", "valid"]
        self.ca.finalized = "processing"
        self.successResultOf(self.issue(self.makeIssuer(), ["a.test"]))
        tail = self.kinds()[self.kinds().index("removeHTTP01") + 1 :]
        self.assertEqual(
            tail,
            ["finalize", "order", "finalize", "order", "order", "certificate", "close"],
        )

    def test_orderInvalid(self) -> None:
        """
        An order the CA refuses fails with its reason.
        """
        self.ca.finalized = "invalid"
        failure = self.failureResultOf(
            self.issue(self.makeIssuer(), ["a.test"]), AcmeError
        )
        self.assertEqual(
            str(failure.value),
            "order for a.test failed: the CA refused to issue:"
            " urn:ietf:params:acme:error:badCSR: key too weak",
        )

    def test_problemDocument(self) -> None:
        """
        A problem document from the CA becomes one line with its type and
        detail.
        """
        self.ca.newOrderErrors = [
            messages.Error.with_code("rejectedIdentifier", detail="no .test names")
        ]
        failure = self.failureResultOf(
            self.issue(self.makeIssuer(), ["a.test"]), AcmeError
        )
        self.assertEqual(
            str(failure.value),
            "order for a.test failed: urn:ietf:params:acme:error:rejectedIdentifier:"
            " no .test names",
        )

    def test_wrongKey(self) -> None:
        """
        A certificate for another key is refused.
        """
        self.ca.wrongKey = True
        failure = self.failureResultOf(
            self.issue(self.makeIssuer(), ["a.test"]), AcmeError
        )
        self.assertIn("another key", str(failure.value))

    def test_noNames(self) -> None:
        """
        An order needs a name.
        """
        self.failureResultOf(self.issue(self.makeIssuer(), []), AcmeError)
        self.assertEqual(self.log, [])

    def test_arguments(self) -> None:
        """
        Unknown challenge types and unsupported curves are refused.
        """
        self.assertRaises(ValueError, self.makeIssuer, challenge="dns-01")
        self.assertRaises(
            ValueError,
            AcmeIssuer,
            self.clock,
            "https://ca.test/dir",
            "",
            ec.generate_private_key(ec.SECP256K1()),
        )

    def test_renewalWindow(self) -> None:
        """
        With C{renewalInfo} in the directory, the window comes from the
        certificate's ARI resource.
        """
        self.ca.directory["renewalInfo"] = "https://ca.test/ari/"
        self.ca.renewalInfo = {
            "suggestedWindow": {
                "start": "2025-01-02T04:00:00Z",
                "end": "2025-01-03T04:00:00Z",
            }
        }
        d = self.makeIssuer().renewalWindow(RFC9773_CERTIFICATE)
        start = datetime(2025, 1, 2, 4, tzinfo=UTC).timestamp()
        self.assertEqual(self.successResultOf(d), (start, start + 86400))
        self.assertIn(
            ("getJSON", "https://ca.test/ari/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"),
            self.log,
        )

    def test_noRenewalInfo(self) -> None:
        """
        Without C{renewalInfo} there is no window, and no ARI request.
        """
        d = self.makeIssuer().renewalWindow(RFC9773_CERTIFICATE)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.kinds(), ["directory", "close"])

    def test_renewalInfoBroken(self) -> None:
        """
        A broken renewal info document is an L{AcmeError}.
        """
        self.ca.directory["renewalInfo"] = "https://ca.test/ari"
        self.ca.renewalInfo = {"suggestedWindow": {"start": "soon"}}
        d = self.makeIssuer().renewalWindow(RFC9773_CERTIFICATE)
        failure = self.failureResultOf(d, AcmeError)
        self.assertEqual(
            str(failure.value),
            "renewal info for serial 87654321 failed: ValueError:"
            " suggestedWindow.start is not an RFC 3339 timestamp: 'soon'",
        )

    def test_renewalWindowNotACertificate(self) -> None:
        """
        Garbage instead of a certificate is an L{AcmeError}, with no
        request.
        """
        d = self.makeIssuer().renewalWindow(b"garbage")
        self.assertTrue(str(self.failureResultOf(d, AcmeError).value))
        self.assertEqual(self.log, [])
