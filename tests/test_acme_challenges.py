"""
Tests for L{revproxy.acme.challenges}: the RFC 8737 challenge certificate
and the store of pending challenge answers.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.acme.challenges import (
    ACME_IDENTIFIER_OID,
    ChallengeStore,
    tlsALPN01Certificate,
)
from revproxy.interfaces import IChallengeResponder

_KEY_AUTHORIZATION = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _acmeIdentifier(cert: x509.Certificate) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)


class TLSALPN01CertificateTests(SynchronousTestCase):
    """
    Tests for L{tlsALPN01Certificate}.
    """

    def setUp(self) -> None:
        self.cert, self.key = tlsALPN01Certificate(
            "a.example", _KEY_AUTHORIZATION, _NOW.timestamp()
        )

    def test_acmeIdentifier(self) -> None:
        """
        The acmeIdentifier extension is critical and its value is the DER
        OCTET STRING of the SHA-256 digest of the key authorization.
        """
        ext = _acmeIdentifier(self.cert)
        self.assertTrue(ext.critical)
        value = ext.value
        assert isinstance(value, x509.UnrecognizedExtension)
        digest = hashlib.sha256(_KEY_AUTHORIZATION.encode("ascii")).digest()
        self.assertEqual(value.value, b"\x04\x20" + digest)
        self.assertEqual(ACME_IDENTIFIER_OID.dotted_string, "1.3.6.1.5.5.7.1.31")
        # The whole extension as encoded: the OID, critical TRUE, and the
        # extnValue OCTET STRING wrapping the 32-byte OCTET STRING.
        self.assertIn(
            b"\x30\x31\x06\x08\x2b\x06\x01\x05\x05\x07\x01\x1f\x01\x01\xff"
            b"\x04\x22\x04\x20" + digest,
            self.cert.public_bytes(_DER),
        )

    def test_digestOfThisKeyAuthorization(self) -> None:
        """
        Another key authorization gives another extension value.
        """
        other, _ = tlsALPN01Certificate(
            "a.example", _KEY_AUTHORIZATION + "x", _NOW.timestamp()
        )
        self.assertNotEqual(
            _acmeIdentifier(other).value, _acmeIdentifier(self.cert).value
        )

    def test_subjectAltName(self) -> None:
        """
        The subject alternative names are exactly the one DNS name.
        """
        san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(list(san.value), [x509.DNSName("a.example")])
        self.assertFalse(san.critical)
        self.assertEqual(
            {ext.oid for ext in self.cert.extensions},
            {ACME_IDENTIFIER_OID, ExtensionOID.SUBJECT_ALTERNATIVE_NAME},
        )

    def test_keyP256SelfSigned(self) -> None:
        """
        The key is a fresh P-256 key, the certificate's, and the
        certificate is signed by it.
        """
        self.assertIsInstance(self.key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(self.key.curve, ec.SECP256R1)
        self.assertEqual(
            self.cert.public_key().public_bytes(_DER, _SPKI),
            self.key.public_key().public_bytes(_DER, _SPKI),
        )
        self.assertEqual(self.cert.issuer, self.cert.subject)
        self.cert.verify_directly_issued_by(self.cert)
        _, otherKey = tlsALPN01Certificate(
            "a.example", _KEY_AUTHORIZATION, _NOW.timestamp()
        )
        self.assertNotEqual(
            otherKey.public_key().public_bytes(_DER, _SPKI),
            self.key.public_key().public_bytes(_DER, _SPKI),
        )
        self.assertIsInstance(self.cert.signature_hash_algorithm, hashes.SHA256)

    def test_validity(self) -> None:
        """
        The certificate is valid from an hour before C{now} to a week
        after.
        """
        self.assertEqual(self.cert.not_valid_before_utc, _NOW - timedelta(hours=1))
        self.assertEqual(self.cert.not_valid_after_utc, _NOW + timedelta(days=7))

    def test_longName(self) -> None:
        """
        A name longer than a CN may be still gets a certificate.
        """
        name = ".".join(["a" * 63] * 3) + ".example"
        cert, _ = tlsALPN01Certificate(name, _KEY_AUTHORIZATION, _NOW.timestamp())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), [name])


class ChallengeStoreTests(SynchronousTestCase):
    """
    Tests for L{ChallengeStore}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(_NOW.timestamp())
        self.store = ChallengeStore(self.clock)

    def test_interface(self) -> None:
        """
        L{ChallengeStore} provides L{IChallengeResponder}.
        """
        self.assertTrue(verifyObject(IChallengeResponder, self.store))

    def test_published(self) -> None:
        """
        The store serves its answers itself: C{published} fires at once.
        """
        self.store.addHTTP01("tok", "tok.thumb")
        self.assertIsNone(self.successResultOf(self.store.published()))

    def test_http01(self) -> None:
        """
        An added token answers with its key authorization as bytes until it
        is removed; unknown tokens answer nothing, and removing one is
        harmless.
        """
        self.assertIsNone(self.store.http01("tok_EN-1"))
        self.store.addHTTP01("tok_EN-1", "tok_EN-1.thumb")
        self.store.addHTTP01("other", "other.thumb")
        self.assertEqual(self.store.http01("tok_EN-1"), b"tok_EN-1.thumb")
        self.assertIsNone(self.store.http01("TOK_EN-1"))
        self.store.removeHTTP01("tok_EN-1")
        self.store.removeHTTP01("tok_EN-1")
        self.assertIsNone(self.store.http01("tok_EN-1"))
        self.assertEqual(self.store.http01("other"), b"other.thumb")

    def test_http01InvalidToken(self) -> None:
        """
        A token with a character outside the base64url alphabet (padding,
        dots, slashes, percent escapes, non-ASCII, nothing at all) is
        refused and never answered.
        """
        for token in ("abc=", "a.b", "a/b", "a%2Fb", "..", "", "a b", "tökén", "a\n"):
            self.assertRaises(ValueError, self.store.addHTTP01, token, "x.y")
            self.assertIsNone(self.store.http01(token))

    def test_tlsALPN01(self) -> None:
        """
        An added name has its challenge certificate, built once, found
        without regard to case or a trailing dot, until it is removed.
        """
        self.assertIsNone(self.store.tlsALPN01("a.example"))
        self.store.addTLSALPN01("A.Example.", _KEY_AUTHORIZATION)
        answer = self.store.tlsALPN01("a.example")
        assert answer is not None
        cert, key = answer
        self.assertIs(self.store.tlsALPN01("A.EXAMPLE."), answer)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["a.example"])
        digest = hashlib.sha256(_KEY_AUTHORIZATION.encode("ascii")).digest()
        value = _acmeIdentifier(cert).value
        assert isinstance(value, x509.UnrecognizedExtension)
        self.assertEqual(value.value, b"\x04\x20" + digest)
        self.assertEqual(
            cert.public_key().public_bytes(_DER, _SPKI),
            key.public_key().public_bytes(_DER, _SPKI),
        )
        self.assertIsNone(self.store.tlsALPN01("b.example"))
        self.store.removeTLSALPN01("a.EXAMPLE")
        self.store.removeTLSALPN01("a.example")
        self.assertIsNone(self.store.tlsALPN01("a.example"))

    def test_tlsALPN01Clock(self) -> None:
        """
        The challenge certificate is dated by the store's clock, read when
        the challenge is added (never the system clock).
        """
        self.store.addTLSALPN01("a.example", _KEY_AUTHORIZATION)
        answer = self.store.tlsALPN01("a.example")
        assert answer is not None
        self.assertEqual(answer[0].not_valid_before_utc, _NOW - timedelta(hours=1))
        self.clock.advance(timedelta(days=2).total_seconds())
        self.store.addTLSALPN01("a.example", _KEY_AUTHORIZATION)
        answer = self.store.tlsALPN01("a.example")
        assert answer is not None
        self.assertEqual(
            answer[0].not_valid_before_utc, _NOW + timedelta(days=2, hours=-1)
        )

    def test_tlsALPN01Replaced(self) -> None:
        """
        Adding a name again replaces its certificate with one for the new
        key authorization.
        """
        self.store.addTLSALPN01("a.example", "first.thumb")
        self.store.addTLSALPN01("a.example", "second.thumb")
        answer = self.store.tlsALPN01("a.example")
        assert answer is not None
        value = _acmeIdentifier(answer[0]).value
        assert isinstance(value, x509.UnrecognizedExtension)
        self.assertEqual(
            value.value, b"\x04\x20" + hashlib.sha256(b"second.thumb").digest()
        )

    def test_tlsALPN01InvalidName(self) -> None:
        """
        A wildcard, an empty, a non-ASCII, an overlong name or an IP
        address is refused.
        """
        for name in (
            "*.example",
            "",
            ".",
            "bücher.example",
            "a..b",
            "a" * 254,
            "192.0.2.1",
            "::1",
        ):
            self.assertRaises(
                ValueError, self.store.addTLSALPN01, name, _KEY_AUTHORIZATION
            )
        self.assertIsNone(self.store.tlsALPN01("*.example"))
