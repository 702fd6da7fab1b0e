# -*- test-case-name: tests.test_cluster_secrets -*-
"""
Private keys sealed for Redis (#19): the ACME account key and the
certificates' keys are stored encrypted, AES-256-GCM under a key derived
(HKDF-SHA256) from C{[cluster] secret_file}, so a Redis dump alone gives
no private key.

A sealed value is one version byte (L{VERSION}), a random 12-byte nonce,
then the ciphertext and its 16-byte tag.  Its context (C{"account"},
C{"site:NAME"}) is the associated data: a value sealed for one site does
not open as another's.

Nodes compare L{secretFingerprint}s to find one configured with another
secret, without revealing it.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from revproxy.config import MIN_CLUSTER_SECRET_BYTES

#: The format of what L{SealedKeys.seal} writes: the first byte.
VERSION = 1
#: The bytes of each value's random nonce.
NONCE_BYTES = 12
#: The bytes of the GCM tag that ends each value.
TAG_BYTES = 16
#: The HKDF salt: a fixed label (the secret itself is the key material).
HKDF_SALT = b"revproxy cluster"
#: The HKDF C{info} of the key that seals private keys.
SEAL_INFO = b"revproxy cluster private keys v1"
#: The HKDF C{info} of the key whose hash is the secret's fingerprint:
#: another label, so the fingerprint says nothing about the sealing key.
FINGERPRINT_INFO = b"revproxy cluster secret fingerprint v1"
#: The hex digits of a fingerprint.
FINGERPRINT_HEX = 16
#: What every context's associated data starts with.
AAD_PREFIX = b"revproxy:"


class SealError(ValueError):
    """
    A sealed value does not open: another secret, another context, altered
    or truncated data, or a version this revproxy does not read.
    """


def _derive(secret: bytes, info: bytes) -> bytes:
    """
    The 32-byte key that HKDF-SHA256 derives from C{secret} for C{info}.

    @raise ValueError: C{secret} is shorter than
        L{MIN_CLUSTER_SECRET_BYTES}.
    """
    if len(secret) < MIN_CLUSTER_SECRET_BYTES:
        raise ValueError(
            f"the cluster secret has {len(secret)} bytes; it needs at least "
            f"{MIN_CLUSTER_SECRET_BYTES}"
        )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info)
    return hkdf.derive(secret)


def secretFingerprint(secret: bytes) -> str:
    """
    A short public name of C{secret}: nodes that publish the same one seal
    with the same key.  It is the first L{FINGERPRINT_HEX} hex digits of
    the SHA-256 of a key derived for L{FINGERPRINT_INFO}, neither the
    secret nor the sealing key.

    @raise ValueError: C{secret} is too short.
    """
    key = _derive(secret, FINGERPRINT_INFO)
    return hashlib.sha256(key).hexdigest()[:FINGERPRINT_HEX]


def _associatedData(context: str) -> bytes:
    """
    The GCM associated data of C{context}.

    @raise SealError: C{context} is empty.
    """
    if not context:
        raise SealError("a sealed value needs a context, such as 'site:NAME'")
    return AAD_PREFIX + context.encode("utf-8")


class SealedKeys:
    """
    Seals and opens private keys with one cluster secret.

    @ivar fingerprint: The secret's L{secretFingerprint}.
    """

    __slots__ = ("_aead", "fingerprint")

    def __init__(self, secret: bytes) -> None:
        """
        @param secret: The bytes of C{[cluster] secret_file}.

        @raise ValueError: C{secret} is shorter than
            L{MIN_CLUSTER_SECRET_BYTES}.
        """
        self._aead = AESGCM(_derive(secret, SEAL_INFO))
        self.fingerprint = secretFingerprint(secret)

    def __repr__(self) -> str:
        return f"<SealedKeys fingerprint={self.fingerprint}>"

    def seal(self, data: bytes, context: str) -> bytes:
        """
        C{data} encrypted for C{context}, with a new random nonce each time.

        @param context: What the value is, such as C{"account"} or
            C{"site:NAME"}; L{open} needs the same.

        @raise SealError: C{context} is empty.
        """
        aad = _associatedData(context)
        nonce = os.urandom(NONCE_BYTES)
        return bytes([VERSION]) + nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, sealed: bytes, context: str) -> bytes:
        """
        The data that L{seal} sealed for C{context}.

        @raise SealError: C{sealed} is empty, truncated, of another
            version, or does not open with this secret and C{context}.
        """
        aad = _associatedData(context)
        if not sealed:
            raise SealError(f"the sealed value for {context!r} is empty")
        if sealed[0] != VERSION:
            raise SealError(
                f"the sealed value for {context!r} has version {sealed[0]}; "
                f"this revproxy reads version {VERSION} (a newer node wrote "
                f"it, or it is not a sealed value)"
            )
        least = 1 + NONCE_BYTES + TAG_BYTES
        if len(sealed) < least:
            raise SealError(
                f"the sealed value for {context!r} is truncated: {len(sealed)} "
                f"bytes, at least {least} expected"
            )
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], aad)
        except InvalidTag:
            raise SealError(
                f"the sealed value for {context!r} does not open with this "
                f"node's secret (fingerprint {self.fingerprint}): a node with "
                f"another secret_file wrote it, it was sealed for another "
                f"context, or it was altered"
            ) from None
