# -*- test-case-name: tests.test_tls -*-
"""
What a certificate is to revproxy, as values: a private key of a kind it
serves (L{PrivateKey}) and a certificate chain ready to serve
(L{LoadedCertificate}).  Loading them from files and serving them is
L{revproxy.tls}'s; these values are what the interfaces, the ACME manager and
the admin socket pass around.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@attrs.frozen(eq=False)
class LoadedCertificate:
    """
    A certificate chain and its private key, ready to serve.

    Compared by identity: the connection creator caches one context per
    object.

    @ivar chain: The certificates, leaf first.
    @ivar key: The leaf's private key.
    @ivar names: The leaf's DNS subject alternative names, lowercase.
    @ivar not_after: The leaf's expiry, in seconds since the epoch.
    @ivar issuer: The leaf's issuer, as an RFC 4514 string.
    @ivar source: Where it came from: C{"files"}, later C{"acme"} or
        C{"placeholder"}.
    @ivar path: The certificate file it was read from.
    """

    chain: list[x509.Certificate]
    key: PrivateKey
    names: tuple[str, ...]
    not_after: float
    issuer: str
    source: str
    path: str
