# -*- test-case-name: tests.test_acme_challenges -*-
"""
The ACME challenge answers revproxy serves itself: http-01 (RFC 8555 8.3)
on the HTTP listeners, through L{revproxy.routing.Router}, and
tls-alpn-01 (RFC 8737) on the HTTPS listeners, through
L{revproxy.tls.SNIContextFactory}.

L{ChallengeStore} is what the issuer publishes answers to (an
L{IChallengeResponder}) and what those two read on their hot paths.  It
holds only what the issuer adds, until the issuer removes it; no reactor,
no I/O (the clock is only read for the challenge certificate's validity).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from revproxy.certificates import PrivateKey
from revproxy.interfaces import IChallengeResponder

#: The id-pe-acmeIdentifier extension (RFC 8737 6.1).
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

# RFC 8555 8.3: a token is base64url without padding.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# An A-label name, as SNI carries it: letters, digits, hyphens, underscores
# (let through as routing does) and dots.
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_MAX_NAME = 253

_VALID_BEFORE = timedelta(hours=1)
_VALID_AFTER = timedelta(days=7)


def _normalizeName(name: str) -> str:
    """
    C{name} as the SNI callback compares it: lowercase, without a trailing
    dot.
    """
    return name.lower().rstrip(".")


def _isIPAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def tlsALPN01Certificate(
    name: str, keyAuthorization: str, now: float
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    The RFC 8737 challenge certificate for C{name}: self-signed with a
    fresh P-256 key, C{name} as its only subject alternative name, and the
    critical acmeIdentifier extension holding the SHA-256 digest of
    C{keyAuthorization}.

    @param name: The DNS name being validated (an A-label name).
    @param keyAuthorization: The challenge's key authorization
        (C{token.thumbprint}).
    @param now: The current time in seconds since the epoch
        (C{clock.seconds()}), for the validity period (an hour back to a
        week ahead).
    @raise ValueError: C{name} is not an ASCII DNS name.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    when = datetime.fromtimestamp(now, UTC)
    # The subject is not looked at by validators; a short CN keeps it
    # non-empty (an empty subject would require a critical SAN) and within
    # the 64 characters a CN may have, whatever the name's length.
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "revproxy tls-alpn-01 challenge")]
    )
    # RFC 8737 3: the extension value is the DER encoding of an OCTET
    # STRING holding the 32-byte digest.
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(when - _VALID_BEFORE)
        .not_valid_after(when + _VALID_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@implementer(IChallengeResponder)
class ChallengeStore:
    """
    The pending ACME challenge answers: http-01 key authorizations by
    token, tls-alpn-01 certificates by name.

    The issuer adds and removes answers (L{IChallengeResponder}); the
    listeners look them up with L{http01} and L{tlsALPN01}.  Reactor
    thread only.
    """

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: Dates the challenge certificates (the reactor).
        """
        self._clock = clock
        self._http01: dict[str, bytes] = {}
        self._tlsALPN01: dict[str, tuple[x509.Certificate, PrivateKey]] = {}

    def addHTTP01(self, token: str, keyAuthorization: str) -> None:
        """
        See L{IChallengeResponder.addHTTP01}.

        @raise ValueError: C{token} has a character outside the base64url
            alphabet (RFC 8555 8.3: such a token is never answered), or
            C{keyAuthorization} is not ASCII.
        """
        if _TOKEN.fullmatch(token) is None:
            raise ValueError(f"invalid http-01 token {token!r}")
        self._http01[token] = keyAuthorization.encode("ascii")

    def removeHTTP01(self, token: str) -> None:
        """
        See L{IChallengeResponder.removeHTTP01}.
        """
        self._http01.pop(token, None)

    def addTLSALPN01(self, name: str, keyAuthorization: str) -> None:
        """
        See L{IChallengeResponder.addTLSALPN01}.  The certificate is made
        now, once, and served until L{removeTLSALPN01}.

        @raise ValueError: C{name} is not a DNS name as SNI carries it
            (ASCII, no wildcard, not an IP address: RFC 8738's reverse
            names are not supported), or C{keyAuthorization} is not ASCII.
        """
        normalized = _normalizeName(name)
        if (
            len(normalized) > _MAX_NAME
            or _NAME.fullmatch(normalized) is None
            or _isIPAddress(normalized)
        ):
            raise ValueError(f"invalid tls-alpn-01 name {name!r}")
        self._tlsALPN01[normalized] = tlsALPN01Certificate(
            normalized, keyAuthorization, self._clock.seconds()
        )

    def removeTLSALPN01(self, name: str) -> None:
        """
        See L{IChallengeResponder.removeTLSALPN01}.
        """
        self._tlsALPN01.pop(_normalizeName(name), None)

    def published(self) -> Deferred[None]:
        """
        See L{IChallengeResponder.published}: this store is where the
        answers are served, so at once.
        """
        return succeed(None)

    def http01(self, token: str) -> bytes | None:
        """
        The key authorization to answer for C{token}, or L{None} when no
        http-01 challenge is pending for it.
        """
        return self._http01.get(token)

    def tlsALPN01(self, name: str) -> tuple[x509.Certificate, PrivateKey] | None:
        """
        The challenge certificate and its key for the SNI name C{name}
        (compared without case or trailing dot), or L{None} when no
        tls-alpn-01 challenge is pending for it.
        """
        return self._tlsALPN01.get(_normalizeName(name))
