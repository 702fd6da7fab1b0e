# -*- test-case-name: tests.test_upstreamtls -*-
"""
TLS to https:// upstreams: how a site's upstream certificates are verified,
and the client connection creators that do it.

An L{UpstreamTLS} is part of the pool key of an https upstream, so two sites
that reach the same upstream with different trust settings never share a
connection.
"""

from __future__ import annotations

import hashlib
import ipaddress

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from revproxy.private.twisted import IOpenSSLTrustRoot

#: The upstream client speaks HTTP/1.1 only.
_PROTOCOLS = [b"http/1.1"]


@attrs.frozen
class UpstreamTLS:
    """
    How a site verifies its https:// upstreams.

    @ivar verify: Whether certificates are verified at all.
    @ivar caFile: The CA bundle trusted instead of the system store, or
        C{""}.
    @ivar caDigest: SHA-256 of the CA bundle's bytes: a CA file changed and
        reloaded makes a new pool key, so new connections use it.
    @ivar trustRoot: The loaded bundle, or L{None} for the system store.
    @ivar serverName: The name sent as SNI and verified instead of the
        upstream's own host (C{upstream_host}); C{""}: the upstream's host.
    """

    verify: bool = True
    caFile: str = ""
    caDigest: str = ""
    trustRoot: IOpenSSLTrustRoot | None = attrs.field(default=None, eq=False)
    serverName: str = ""


#: System trust store, verification on: the default.
SYSTEM_TRUST = UpstreamTLS()


def loadUpstreamTLS(caFile: str, verify: bool) -> UpstreamTLS:
    """
    Read a site's upstream TLS settings.

    @param caFile: A PEM bundle of one or more CA certificates, or C{""}.
    @raise ValueError: The file cannot be read or holds no certificate; the
        message names the file.
    """
    if not verify:
        return UpstreamTLS(verify=False)
    if not caFile:
        return SYSTEM_TRUST
    try:
        with open(caFile, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{caFile}: cannot read: {e.strerror or e}") from e
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{caFile}: no PEM certificate found") from e
    trustRoot = trustRootFromCertificates(
        [
            Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
            for c in certificates
        ]
    )
    return UpstreamTLS(
        verify=True,
        caFile=caFile,
        caDigest=hashlib.sha256(data).hexdigest(),
        trustRoot=trustRoot,
    )


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    TLS to an upstream without checking its certificate
    (C{upstream_tls_verify = false}); SNI is still sent for a host name.
    """

    def __init__(self, host: str) -> None:
        self._serverName = None if _isIP(host) else host.encode("idna")
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE)
        ctx.set_alpn_protos(_PROTOCOLS)
        self._context = ctx

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        connection.set_connect_state()
        connection.set_app_data(tlsProtocol)
        return connection


def _isIP(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ClientCreators:
    """
    One client connection creator per (host, settings), built on first use.

    Bounded: emptied when it would grow beyond C{limit} entries (reloads
    that change CA files make new entries).
    """

    def __init__(self, limit: int = 1024) -> None:
        self._cache: dict[tuple[str, UpstreamTLS], IOpenSSLClientConnectionCreator] = {}
        self._limit = limit

    def creatorFor(
        self, host: str, settings: UpstreamTLS
    ) -> IOpenSSLClientConnectionCreator:
        """
        The creator for connections to C{host} verified per C{settings}.
        """
        key = (host, settings)
        creator = self._cache.get(key)
        if creator is None:
            if not settings.verify:
                creator = _Unverified(host)
            else:
                creator = optionsForClientTLS(
                    host,
                    trustRoot=settings.trustRoot or platformTrust(),
                    acceptableProtocols=_PROTOCOLS,
                )
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = creator
        return creator
