"""
Tests for L{revproxy.cluster.secrets}: private keys sealed for Redis.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.trial.unittest import SynchronousTestCase

from revproxy.cluster.secrets import (
    FINGERPRINT_INFO,
    HKDF_SALT,
    NONCE_BYTES,
    SEAL_INFO,
    TAG_BYTES,
    VERSION,
    SealedKeys,
    SealError,
    secretFingerprint,
)

SECRET = bytes(range(32)) + b"-the fleet's secret"
OTHER = b"another secret, long enough to be one!!"


def pemKey() -> bytes:
    """
    A new EC private key, as PEM, like the ones ACME storage keeps.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def derive(secret: bytes, info: bytes) -> bytes:
    """
    HKDF-SHA256 as the design says, computed here without the module.
    """
    return HKDF(hashes.SHA256(), 32, HKDF_SALT, info).derive(secret)


class SealTests(SynchronousTestCase):
    """
    L{SealedKeys.seal} and L{SealedKeys.open}.
    """

    def setUp(self) -> None:
        self.keys = SealedKeys(SECRET)

    def test_roundTrip(self) -> None:
        """
        What is sealed for a context opens for it, whatever its size.
        """
        for data in [b"", b"x", b"k" * 15, b"k" * 16, b"k" * 17, b"\0" * 100_000]:
            sealed = self.keys.seal(data, "site:example")
            self.assertEqual(len(sealed), 1 + NONCE_BYTES + len(data) + TAG_BYTES)
            self.assertEqual(self.keys.open(sealed, "site:example"), data)

    def test_pemKey(self) -> None:
        """
        A real PEM private key survives, and no line of it shows in the
        sealed value.
        """
        pem = pemKey()
        sealed = self.keys.seal(pem, "account")
        self.assertEqual(self.keys.open(sealed, "account"), pem)
        self.assertNotIn(b"PRIVATE KEY", sealed)
        for line in pem.splitlines():
            self.assertNotIn(line, sealed)

    def test_plaintextAbsent(self) -> None:
        """
        The sealed value does not contain the plaintext.
        """
        data = b"a recognisable secret key " * 4
        sealed = self.keys.seal(data, "site:example")
        self.assertNotIn(data, sealed)
        self.assertNotIn(data[:16], sealed)

    def test_anotherInstance(self) -> None:
        """
        Another node with the same secret opens what this one sealed.
        """
        sealed = self.keys.seal(b"key", "account")
        self.assertEqual(SealedKeys(SECRET).open(sealed, "account"), b"key")

    def test_nonceDiffers(self) -> None:
        """
        Each seal has a new nonce, so the same data seals differently.
        """
        sealed = [self.keys.seal(b"same key", "account") for _ in range(50)]
        nonces = {s[1 : 1 + NONCE_BYTES] for s in sealed}
        self.assertEqual(len(nonces), 50)
        self.assertEqual(len(set(sealed)), 50)

    def test_format(self) -> None:
        """
        A value is the version byte, the nonce, then AES-256-GCM under the
        HKDF key with C{b"revproxy:" + context} as associated data: a value
        built by hand to that description opens, and a sealed one opens by
        hand.
        """
        aead = AESGCM(derive(SECRET, SEAL_INFO))
        nonce = b"n" * NONCE_BYTES
        byHand = bytes([1]) + nonce + aead.encrypt(nonce, b"key", b"revproxy:account")
        self.assertEqual(self.keys.open(byHand, "account"), b"key")
        sealed = self.keys.seal(b"key", "site:a")
        self.assertEqual(sealed[0], VERSION)
        self.assertEqual(VERSION, 1)
        self.assertEqual(
            aead.decrypt(sealed[1:13], sealed[13:], b"revproxy:site:a"), b"key"
        )

    def test_wrongSecret(self) -> None:
        """
        A value sealed with another secret raises L{SealError} naming the
        context, the secret and this node's fingerprint.
        """
        sealed = SealedKeys(OTHER).seal(b"key", "account")
        error = self.assertRaises(SealError, self.keys.open, sealed, "account")
        message = str(error)
        self.assertIn("'account'", message)
        self.assertIn("secret", message)
        self.assertIn(secretFingerprint(SECRET), message)
        self.assertIsNone(error.__cause__)
        self.assertTrue(error.__suppress_context__)

    def test_wrongContext(self) -> None:
        """
        A value sealed for one site does not open as another's.
        """
        sealed = self.keys.seal(b"key", "site:a")
        error = self.assertRaises(SealError, self.keys.open, sealed, "site:b")
        self.assertIn("'site:b'", str(error))
        self.assertIn("another context", str(error))

    def test_flippedByte(self) -> None:
        """
        Any altered byte (nonce, ciphertext or tag) raises L{SealError}.
        """
        sealed = self.keys.seal(b"private key bytes", "account")
        for index in range(1, len(sealed)):
            altered = bytearray(sealed)
            altered[index] ^= 0x01
            error = self.assertRaises(
                SealError, self.keys.open, bytes(altered), "account"
            )
            self.assertIn("altered", str(error))

    def test_truncated(self) -> None:
        """
        A value too short to hold a nonce and a tag raises L{SealError}
        saying so; one cut inside the ciphertext fails its tag.
        """
        sealed = self.keys.seal(b"private key bytes", "account")
        for length in range(1, 1 + NONCE_BYTES + TAG_BYTES):
            error = self.assertRaises(
                SealError, self.keys.open, sealed[:length], "account"
            )
            self.assertIn("truncated", str(error))
        for length in range(1 + NONCE_BYTES + TAG_BYTES, len(sealed)):
            self.assertRaises(SealError, self.keys.open, sealed[:length], "account")

    def test_empty(self) -> None:
        """
        An empty value raises L{SealError}.
        """
        error = self.assertRaises(SealError, self.keys.open, b"", "account")
        self.assertIn("empty", str(error))

    def test_badVersion(self) -> None:
        """
        A value of another version raises L{SealError} naming it.
        """
        sealed = self.keys.seal(b"key", "account")
        for version in [0, 2, 255]:
            error = self.assertRaises(
                SealError, self.keys.open, bytes([version]) + sealed[1:], "account"
            )
            self.assertIn(f"version {version}", str(error))
            self.assertIn("reads version 1", str(error))

    def test_emptyContext(self) -> None:
        """
        Sealing or opening needs a context.
        """
        self.assertRaises(SealError, self.keys.seal, b"key", "")
        sealed = self.keys.seal(b"key", "account")
        self.assertRaises(SealError, self.keys.open, sealed, "")

    def test_sealErrorIsValueError(self) -> None:
        """
        L{SealError} is a L{ValueError}.
        """
        self.assertTrue(issubclass(SealError, ValueError))

    def test_shortSecret(self) -> None:
        """
        A secret under 32 bytes is refused.
        """
        error = self.assertRaises(ValueError, SealedKeys, b"s" * 31)
        self.assertIn("at least 32", str(error))
        SealedKeys(b"s" * 32)

    def test_repr(self) -> None:
        """
        The repr shows the fingerprint and nothing of the secret or key.
        """
        text = repr(self.keys)
        self.assertIn(secretFingerprint(SECRET), text)
        self.assertNotIn(SECRET.hex()[:8], text)
        self.assertNotIn(derive(SECRET, SEAL_INFO).hex()[:8], text)


class FingerprintTests(SynchronousTestCase):
    """
    L{secretFingerprint}.
    """

    def test_stable(self) -> None:
        """
        The same secret has the same fingerprint: 16 hex digits, pinned
        here so that nodes of different versions agree.
        """
        fingerprint = secretFingerprint(SECRET)
        self.assertEqual(fingerprint, secretFingerprint(bytes(SECRET)))
        self.assertRegex(fingerprint, r"^[0-9a-f]{16}$")
        self.assertEqual(
            fingerprint,
            hashlib.sha256(derive(SECRET, FINGERPRINT_INFO)).hexdigest()[:16],
        )
        self.assertEqual(SealedKeys(SECRET).fingerprint, fingerprint)
        self.assertEqual(secretFingerprint(b"s" * 32), PINNED_FINGERPRINT)

    def test_differs(self) -> None:
        """
        Different secrets, even by one byte, have different fingerprints.
        """
        flipped = bytes([SECRET[0] ^ 1]) + SECRET[1:]
        prints = {secretFingerprint(s) for s in [SECRET, OTHER, flipped]}
        self.assertEqual(len(prints), 3)

    def test_revealsNothing(self) -> None:
        """
        The fingerprint is no part of the secret's hex, the sealing key's,
        or their SHA-256 hashes.
        """
        fingerprint = secretFingerprint(SECRET)
        sealKey = derive(SECRET, SEAL_INFO)
        for revealing in [
            SECRET.hex(),
            sealKey.hex(),
            hashlib.sha256(SECRET).hexdigest(),
            hashlib.sha256(sealKey).hexdigest(),
        ]:
            self.assertNotIn(fingerprint, revealing)
            self.assertNotIn(fingerprint[:8], revealing)

    def test_shortSecret(self) -> None:
        """
        A secret under 32 bytes has no fingerprint.
        """
        self.assertRaises(ValueError, secretFingerprint, b"s" * 31)


#: The fingerprint of C{b"s" * 32}; a change here means nodes of different
#: versions would no longer agree.
PINNED_FINGERPRINT = "2b56fa5911103909"
