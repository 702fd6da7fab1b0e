# -*- test-case-name: tests.test_tls -*-
"""
TLS termination building blocks: certificates loaded from PEM files, a
certificate store that maps server names to certificates, and an SNI
connection creator with Mozilla "intermediate" defaults.

L{loadCertificateFiles} is pure except for reading its two files: the time
it checks expiry against is passed in (C{clock.seconds()}).
L{CertificateStore} is pure.  L{SNIContextFactory} builds pyOpenSSL
contexts; it is what a C{TLSMemoryBIOFactory} wraps around the site, with a
L{HandshakeDeadline} in between.  It also answers ACME tls-alpn-01
challenges (RFC 8737) from L{ChallengeCertificates}, and the deadline
wrapper closes those connections after their handshake.  L{loadTLSFiles} reads every file a config
names, at start-up, C{--check} and every reload.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable, Mapping
from itertools import pairwise
from types import TracebackType
from typing import Protocol, cast

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from revproxy.certificates import LoadedCertificate, PrivateKey
from revproxy.config import Config, ConfigError, SiteConfig, allUpstreams
from revproxy.formatting import isoTime
from revproxy.hostnames import HostNames, isWildcard, nameCovers, normalizeServerName
from revproxy.interfaces import ICertificateStore
from revproxy.private.pyopenssl import NoOverlappingProtocols, setCurvesList
from revproxy.proxy.upstreamtls import UpstreamTLS, loadUpstreamTLS

_log = Logger()

EXPIRY_WARNING_SECS = 7 * 86400

# Mozilla "intermediate" (server side TLS 5.7): TLS 1.2 suites with ECDHE and
# AES-GCM or ChaCha20 only; TLS 1.3 suites are all acceptable.
INTERMEDIATE_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
INTERMEDIATE_TLS13_SUITES = (
    b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)
INTERMEDIATE_GROUPS = b"X25519:P-256:P-384"

#: The ALPN protocol of ACME tls-alpn-01 validators (RFC 8737 6.2).
ACME_TLS_ALPN = b"acme-tls/1"

_SESSION_ID_CONTEXT = b"revproxy"

#: How long a TLS session may be resumed (its entry in the session cache).
SESSION_TIMEOUT_SECS = 86400
_Contexts = dict[int, tuple["LoadedCertificate", SSL.Context]]
_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class CertificateError(Exception):
    """
    A certificate or key file cannot be used; the message names the file
    and the problem.

    @ivar key: The config key of the file at fault: C{"cert_file"} or
        C{"key_file"}.
    """

    def __init__(self, message: str, key: str = "cert_file") -> None:
        super().__init__(message)
        self.key = key


def _readFile(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"{path}: cannot read: {e.strerror or e}") from e


def _subjectAltNames(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """
    The DNS names (lowercase) and IP addresses (as text) of C{cert}'s
    subject alternative name extension.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        )
    except x509.ExtensionNotFound:
        return [], []
    san = ext.value
    assert isinstance(san, x509.SubjectAlternativeName)
    dns = [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def _normalizeIP(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def keyMatches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    """
    Whether C{key} is the private key of C{certificate}.
    """
    return certificate.public_key().public_bytes(
        _DER, _SPKI
    ) == key.public_key().public_bytes(_DER, _SPKI)


def loadCertificateFiles(
    certFile: str, keyFile: str, hosts: Iterable[str], now: float
) -> tuple[LoadedCertificate, list[str]]:
    """
    Read and check a PEM certificate chain and its private key.

    @param certFile: The chain, leaf first.
    @param keyFile: The leaf's unencrypted RSA, EC or Ed25519 key.
    @param hosts: The site's normalized host names, which the certificate
        should cover.
    @param now: The current time (C{clock.seconds()}).
    @return: The certificate, and warnings: expiring within 7 days, not yet
        valid, names that do not cover every host, a chain out of order.
    @raise CertificateError: A file cannot be read or parsed, the key does
        not match the leaf, or the leaf has expired.
    """
    certData = _readFile(certFile)
    try:
        keyData = _readFile(keyFile)
    except CertificateError as e:
        raise CertificateError(str(e), "key_file") from e
    try:
        chain = x509.load_pem_x509_certificates(certData)
    except ValueError as e:
        if b"-----BEGIN CERTIFICATE-----" not in certData:
            raise CertificateError(f"{certFile}: no PEM certificate found") from e
        raise CertificateError(f"{certFile}: bad PEM certificate: {e}") from e
    if not chain:
        raise CertificateError(f"{certFile}: no PEM certificate found")
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except TypeError as e:
        raise CertificateError(
            f"{keyFile}: private key is encrypted; revproxy needs an unencrypted key",
            "key_file",
        ) from e
    except ValueError as e:
        raise CertificateError(
            f"{keyFile}: no usable PEM private key found", "key_file"
        ) from e
    except UnsupportedAlgorithm as e:
        raise CertificateError(
            f"{keyFile}: cannot load private key: {e}", "key_file"
        ) from e
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CertificateError(
            f"{keyFile}: unsupported key type {type(key).__name__}; "
            "use RSA, EC or Ed25519",
            "key_file",
        )
    leaf = chain[0]
    if not keyMatches(leaf, key):
        raise CertificateError(
            f"{keyFile} does not match the certificate in {certFile}", "key_file"
        )
    notAfter = leaf.not_valid_after_utc
    notAfterSecs = notAfter.timestamp()
    if notAfterSecs <= now:
        raise CertificateError(
            f"{certFile}: certificate expired {isoTime(notAfterSecs)}"
        )

    warnings: list[str] = []
    if notAfterSecs - now < EXPIRY_WARNING_SECS:
        warnings.append(f"{certFile}: certificate expires {isoTime(notAfterSecs)}")
    notBefore = leaf.not_valid_before_utc
    if notBefore.timestamp() > now:
        warnings.append(
            f"{certFile}: certificate not valid before {isoTime(notBefore.timestamp())}"
        )
    dnsNames, ipNames = _subjectAltNames(leaf)
    uncovered = [
        host
        for host in hosts
        if _normalizeIP(host) not in ipNames
        and not any(nameCovers(name, host) for name in dnsNames)
    ]
    if uncovered:
        warnings.append(
            f"{certFile}: certificate names ({', '.join(dnsNames + ipNames) or 'none'})"
            f" do not cover {', '.join(uncovered)}"
        )
    for i, (cert, issuer) in enumerate(pairwise(chain)):
        if cert.issuer != issuer.subject:
            warnings.append(
                f"{certFile}: certificate {i + 1} of the chain is not issued "
                f"by certificate {i + 2}; the chain must be leaf first, in order"
            )
            break
    loaded = LoadedCertificate(
        chain=chain,
        key=key,
        names=tuple(dnsNames),
        not_after=notAfterSecs,
        issuer=leaf.issuer.rfc4514_string(),
        source="files",
        path=certFile,
    )
    return loaded, warnings


class _SiteLike(Protocol):
    """
    What L{CertificateStore.fromSites} reads of a site (L{SiteConfig}).
    """

    @property
    def hosts(self) -> tuple[str, ...]: ...

    @property
    def default(self) -> bool: ...


@implementer(ICertificateStore)
class CertificateStore:
    """
    An immutable L{ICertificateStore}: exact names, then C{*.suffix}
    wildcards (one label), then the default certificate.
    """

    def __init__(
        self,
        byName: Mapping[str, LoadedCertificate],
        default: LoadedCertificate | None = None,
    ) -> None:
        """
        @param byName: Host names (normalized, as in L{SiteConfig.hosts}) or
            C{*.suffix} wildcards to their certificates.
        @param default: The certificate for no SNI or an unknown name: the
            default site's, if it has one.
        @raise ValueError: A name has a C{*} other than as a whole first
            label.
        """
        self._names: HostNames[LoadedCertificate] = HostNames()
        self._names.default = default
        for name, cert in byName.items():
            name = name.lower().rstrip(".")
            if not name or ("*" in name and not isWildcard(name)):
                raise ValueError(f"bad name {name!r}")
            self._names.add(name, cert)

    @classmethod
    def fromSites(
        cls, sites: Iterable[tuple[_SiteLike, LoadedCertificate]]
    ) -> CertificateStore:
        """
        A store serving each site's certificate for the site's hosts, with
        the default site's certificate as the default.
        """
        byName: dict[str, LoadedCertificate] = {}
        default = None
        for site, cert in sites:
            for host in site.hosts:
                byName[host] = cert
            if site.default:
                default = cert
        return cls(byName, default)

    def lookup(self, serverName: str | None) -> LoadedCertificate | None:
        """
        See L{ICertificateStore.lookup}.
        """
        name = serverName.lower().rstrip(".") if serverName is not None else None
        return self._names.match(name)

    def all(self) -> list[LoadedCertificate]:
        """
        See L{ICertificateStore.all}.
        """
        seen: dict[int, LoadedCertificate] = {}
        for cert in self._names.values():
            seen.setdefault(id(cert), cert)
        default = self._names.default
        if default is not None:
            seen.setdefault(id(default), default)
        return list(seen.values())


class ChallengeCertificates(Protocol):
    """
    What L{SNIContextFactory} reads of the pending tls-alpn-01 challenges
    (L{revproxy.acme.challenges.ChallengeStore} has it).
    """

    def tlsALPN01(self, name: str) -> tuple[x509.Certificate, PrivateKey] | None:
        """
        The challenge certificate and its key for the SNI name C{name}, or
        L{None} when no challenge is pending for it.
        """


class UnknownServerName(Exception):
    """
    Raised inside the SNI callback to refuse a handshake: no certificate for
    the name and no default.  OpenSSL then sends an C{unrecognized_name}
    alert.

    Raising is pyOpenSSL's only way to fail the SNI callback, and pyOpenSSL
    first passes the exception to C{sys.excepthook} (a traceback on stderr
    by default).
    """


def _setGroups(context: SSL.Context, groups: bytes) -> None:
    """
    Restrict the key exchange groups of C{context}.

    pyOpenSSL 26.4 has no C{set_groups}, and C{set_tmp_ecdh} allows a
    single curve (no X25519 then), so this calls
    C{SSL_CTX_set1_curves_list} through the OpenSSL binding pyOpenSSL itself
    uses (L{setCurvesList}).
    """
    if not setCurvesList(context, groups):
        raise ValueError(f"OpenSSL rejected the groups {groups!r}")


@implementer(IOpenSSLServerConnectionCreator)
class SNIContextFactory:
    """
    Server TLS connections that pick their certificate by SNI from a
    replaceable L{ICertificateStore}.

    One base context carries the settings and the SNI callback; each
    certificate gets its own context (same settings, plus the chain and
    key), built once, and the callback switches the connection to it with
    C{Connection.set_context}.  A per-certificate context, rather than
    C{Connection.use_certificate}, because pyOpenSSL has no per-connection
    way to add the intermediate certificates, and it loads and checks the
    key once rather than on every handshake.  The session cache stays with
    the base context (OpenSSL's C{session_ctx}), so resumption works
    whichever certificate was chosen.  There are no session tickets
    encrypted with a key of ours (see L{_newContext}).

    Assigning L{store} affects new handshakes only: connections keep the
    context they were switched to.

    ACME tls-alpn-01: a TLS 1.3 client that offers ALPN C{acme-tls/1} for a
    name with a pending challenge in L{challenges} gets the challenge
    certificate (alone, on a context without any certificate of its own)
    and C{acme-tls/1}; every other client of that name gets what it would
    get without the challenge.  A name with a pending challenge but no
    certificate (and no default) is not refused in the SNI callback, so
    that the validator can be answered; other clients of it still fail the
    handshake, for want of a certificate.  Only TLS 1.3: in TLS 1.2
    OpenSSL chooses the certificate before calling the ALPN callback, so
    C{acme-tls/1} is never selected there (validators speak TLS 1.3).

    @ivar challenges: The pending tls-alpn-01 challenges, or L{None};
        may be assigned at any time.
    """

    def __init__(
        self,
        store: ICertificateStore,
        *,
        minVersion: str = "1.2",
        http2: bool = False,
        groups: bytes = INTERMEDIATE_GROUPS,
        challenges: ChallengeCertificates | None = None,
    ) -> None:
        """
        @param store: The certificates.
        @param minVersion: C{"1.2"} (Mozilla intermediate) or C{"1.3"}.
        @param http2: Whether to offer C{h2} in ALPN before C{http/1.1}.
        @param groups: The key exchange groups, as an OpenSSL list.
        @param challenges: The pending tls-alpn-01 challenges.
        @raise ValueError: An unknown C{minVersion}, or groups OpenSSL
            rejects.
        @raise SSL.Error: A certificate's key does not match it.
        """
        if minVersion not in _MIN_VERSIONS:
            raise ValueError(f"minVersion must be one of {sorted(_MIN_VERSIONS)}")
        self._minVersion = _MIN_VERSIONS[minVersion]
        self._protocols: tuple[bytes, ...] = (
            (b"h2", b"http/1.1") if http2 else (b"http/1.1",)
        )
        self._groups = groups
        self._baseContext = self._newContext()
        self._baseContext.set_tlsext_servername_callback(self._serverNameSelected)
        # No certificate: the one of a tls-alpn-01 answer is set on the
        # connection, and no site's intermediates must go along with it.
        self._challengeContext = self._newContext()
        self.challenges = challenges
        self._current: tuple[ICertificateStore, _Contexts] = (
            store,
            self._contextsFor(store, {}),
        )

    @property
    def store(self) -> ICertificateStore:
        """
        The certificates new handshakes choose from.
        """
        return self._current[0]

    @store.setter
    def store(self, store: ICertificateStore) -> None:
        self._current = (store, self._contextsFor(store, self._current[1]))

    def _contextsFor(self, store: ICertificateStore, previous: _Contexts) -> _Contexts:
        """
        One context per certificate of C{store}, keyed by the certificate's
        identity, reusing those of C{previous} for the same objects.  Each
        entry holds its certificate, so an C{id} is never reused while its
        entry exists.
        """
        contexts: _Contexts = {}
        for cert in store.all():
            entry = previous.get(id(cert))
            if entry is None or entry[0] is not cert:
                ctx = self._newContext()
                ctx.use_certificate(cert.chain[0])
                for extra in cert.chain[1:]:
                    ctx.add_extra_chain_cert(extra)
                ctx.use_privatekey(cert.key)
                ctx.check_privatekey()
                entry = (cert, ctx)
            contexts[id(cert)] = entry
        return contexts

    def _newContext(self) -> SSL.Context:
        """
        A server context with the Mozilla intermediate settings.
        """
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(self._minVersion)
        ctx.set_max_proto_version(0)
        # No session tickets, as Mozilla's profile says: pyOpenSSL cannot
        # rotate a ticket key, and one that lives as long as the process
        # undoes forward secrecy.  Sessions resume from the session cache
        # instead (TLS 1.2 by id; TLS 1.3 by stateful tickets, references
        # into the cache).  OpenSSL drops from that cache the session of a
        # connection that failed, and counts a client's close without
        # close_notify (what Python's ssl and many clients do) as a
        # failure; as nginx does, such a close counts as a clean one, so
        # the client can still resume.  HTTP frames its own messages, so a
        # cut-off request is still seen as one.
        options = ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_NO_TICKET
            | SSL.OP_IGNORE_UNEXPECTED_EOF
        )
        # Mozilla intermediate leaves the cipher order to the client.
        # pyOpenSSL has no Context.clear_options; OpenSSL does not set it.
        assert not options & SSL.OP_CIPHER_SERVER_PREFERENCE
        # An idle connection gives its record buffers back (about 34 KiB
        # each), as nginx does: kept-alive and stalled clients cost less.
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.set_cipher_list(INTERMEDIATE_CIPHERS)
        ctx.set_tls13_ciphersuites(INTERMEDIATE_TLS13_SUITES)
        _setGroups(ctx, self._groups)
        ctx.set_session_id(_SESSION_ID_CONTEXT)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_timeout(SESSION_TIMEOUT_SECS)
        ctx.set_alpn_select_callback(self._selectProtocol)
        return ctx

    def _serverNameSelected(self, connection: SSL.Connection) -> None:
        """
        The SNI callback (also called without SNI): switch C{connection} to
        the context of its certificate, else to the certificate-less
        challenge context if a tls-alpn-01 challenge is pending for the
        name, else refuse the handshake.
        """
        store, contexts = self._current
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw is not None else None
        cert = store.lookup(name)
        entry = contexts.get(id(cert)) if cert is not None else None
        if entry is None:
            if name is not None and self._challengeFor(connection, name) is not None:
                # A name being validated before it has a certificate: the
                # ALPN callback gives the validator its certificate; any
                # other client fails the handshake, having none.
                connection.set_context(self._challengeContext)
                return
            raise UnknownServerName(name)
        connection.set_context(entry[1])

    def _challengeFor(
        self, connection: SSL.Connection, name: str
    ) -> tuple[x509.Certificate, PrivateKey] | None:
        """
        The tls-alpn-01 certificate to answer C{connection} for C{name}
        with, if a challenge is pending and the handshake is TLS 1.3.
        """
        challenges = self.challenges
        if challenges is None:
            return None
        # In TLS 1.2, OpenSSL calls the ALPN callback after it has chosen
        # the certificate: switching the context then would free the
        # choice under it.  In TLS 1.3, SNI and ALPN are both handled
        # before.
        if connection.get_protocol_version() != SSL.TLS1_3_VERSION:
            return None
        return challenges.tlsALPN01(name)

    def _selectProtocol(
        self, connection: SSL.Connection, offered: list[bytes]
    ) -> bytes | NoOverlappingProtocols:
        """
        The ALPN callback: C{acme-tls/1} with the challenge certificate
        when the client offers it for a name with a pending tls-alpn-01
        challenge, else our first protocol the client offers, else no ALPN
        at all.
        """
        if ACME_TLS_ALPN in offered:
            raw = connection.get_servername()
            answer = (
                self._challengeFor(connection, raw.decode("ascii", "replace"))
                if raw is not None
                else None
            )
            if answer is not None:
                certificate, key = answer
                connection.set_context(self._challengeContext)
                connection.use_certificate(certificate)
                connection.use_privatekey(key)
                return ACME_TLS_ALPN
        for protocol in self._protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """
        See L{IOpenSSLServerConnectionCreator.serverConnectionForTLS}.
        """
        connection = SSL.Connection(self._baseContext, None)
        connection.set_app_data(tlsProtocol)
        return connection


@attrs.frozen
class TLSFiles:
    """
    The certificates and CA files one config names, read and checked.

    @ivar certificates: The sites' certificates (C{tls = "files"}) by name.
    @ivar sites: Each certificate's site names, for the admin socket.
    @ivar upstreamTLS: How each site verifies its https:// upstreams, by
        site name.
    @ivar warnings: Problems worth an operator's attention that do not stop
        serving (expiring soon, names not covering the hosts).
    @ivar pairs: Each C{tls = "files"} site with its certificate, to build
        a store together with certificates from other sources (ACME).
    """

    certificates: CertificateStore
    sites: Mapping[int, tuple[str, ...]]
    upstreamTLS: Mapping[str, UpstreamTLS]
    warnings: tuple[str, ...]
    pairs: tuple[tuple[SiteConfig, LoadedCertificate], ...] = ()

    def withCertificates(
        self, more: Iterable[tuple[SiteConfig, LoadedCertificate]]
    ) -> TLSFiles:
        """
        These files' certificates plus C{more} (the ACME sites'), as one
        store and site map.
        """
        pairs = (*self.pairs, *more)
        sites: dict[int, tuple[str, ...]] = {}
        for site, cert in pairs:
            sites[id(cert)] = (*sites.get(id(cert), ()), site.name)
        return attrs.evolve(
            self,
            certificates=CertificateStore.fromSites(pairs),
            sites=sites,
            pairs=pairs,
        )

    def withWarnings(
        self, upstreamTLS: Mapping[str, UpstreamTLS], warnings: tuple[str, ...]
    ) -> TLSFiles:
        """
        The same certificates with these upstream settings and warnings.
        """
        return attrs.evolve(self, upstreamTLS=upstreamTLS, warnings=warnings)

    def sitesOf(self, cert: LoadedCertificate) -> tuple[str, ...]:
        """
        The names of the sites C{cert} serves.
        """
        return self.sites.get(id(cert), ())


NO_TLS_FILES = TLSFiles(CertificateStore({}), {}, {}, ())


def loadTLSFiles(config: Config, now: float) -> TLSFiles:
    """
    Read every certificate, key and upstream CA file of C{config}.

    @param now: The current time, for expiry checks.
    @raise ConfigError: One C{"sites[N].key: problem"} per file that cannot
        be used.
    """
    errors: list[str] = []
    warnings: list[str] = []
    pairs: list[tuple[SiteConfig, LoadedCertificate]] = []
    upstreamTLS: dict[str, UpstreamTLS] = {}
    loaded: dict[tuple[str, str], LoadedCertificate] = {}
    for index, site in enumerate(config.sites):
        where = f"sites[{index}]"
        if site.tls == "files":
            try:
                cert, problems = loadCertificateFiles(
                    site.cert_file, site.key_file, site.hosts, now
                )
            except CertificateError as e:
                errors.append(f"{where}.{e.key}: {e}")
            else:
                # Sites that share files share one certificate (one context,
                # one entry in the admin's certs).
                files = (site.cert_file, site.key_file)
                earlier = loaded.get(files)
                if earlier is not None and earlier.chain == cert.chain:
                    cert = earlier
                loaded[files] = cert
                pairs.append((site, cert))
                warnings += [f"{where}.cert_file: {p}" for p in problems]
        if any(u.scheme == "https" for u in allUpstreams(site)):
            try:
                upstreamTLS[site.name] = loadUpstreamTLS(
                    site.upstream_ca_file, site.upstream_tls_verify
                )
            except ValueError as e:
                errors.append(f"{where}.upstream_ca_file: {e}")
    if errors:
        raise ConfigError(errors)
    return NO_TLS_FILES.withCertificates(pairs).withWarnings(
        upstreamTLS, tuple(warnings)
    )


class RefusalLog:
    """
    Turns the refused handshakes that pyOpenSSL reports through
    C{sys.excepthook} (see L{UnknownServerName}) into log lines: at most one
    per C{interval} seconds, with a count of the others, so that a scanner
    sending unknown names cannot flood the log.  Every other exception goes
    to the previous hook.

    @ivar refused: How many handshakes were refused in all.
    """

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self._clock = clock
        self._interval = interval
        self._previous: Callable[..., object] | None = None
        self._lastLogged: float | None = None
        self._unlogged = 0
        self.refused = 0

    def install(self) -> None:
        """
        Become C{sys.excepthook}.
        """
        if self._previous is None:
            self._previous = sys.excepthook
            sys.excepthook = self

    def uninstall(self) -> None:
        """
        Put the previous C{sys.excepthook} back.
        """
        if self._previous is not None:
            if sys.excepthook is self:
                sys.excepthook = self._previous
            self._previous = None

    def __call__(
        self,
        kind: type[BaseException],
        value: BaseException,
        tb: TracebackType | None,
    ) -> None:
        if not isinstance(value, UnknownServerName):
            previous = self._previous or sys.__excepthook__
            previous(kind, value, tb)
            return
        self.refused += 1
        now = self._clock.seconds()
        if self._lastLogged is not None and now - self._lastLogged < self._interval:
            self._unlogged += 1
            return
        more = (
            f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        )
        name = value.args[0] if value.args else None
        _log.info(
            "Refused a TLS handshake for {name}: no certificate for that name and "
            "no default site with a certificate{more}",
            name="no server name (SNI)" if name is None else repr(name),
            more=more,
        )
        self._lastLogged = now
        self._unlogged = 0


#: How long a client has to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0


@implementer(IHandshakeListener)
class _HandshakeDeadline(ProtocolWrapper):
    """
    Aborts the connection unless the TLS handshake completes in time,
    closes a tls-alpn-01 validator's connection after its handshake, and
    records the handshake's SNI name for the request path
    (the exchanges of its connection read it as their C{serverName}).

    @ivar challenge: Whether the handshake negotiated C{acme-tls/1}; the
        site's protocol then never gets any data.
    """

    factory: HandshakeDeadline
    _timer: IDelayedCall | None = None
    challenge = False
    #: The handshake's SNI name (L{normalizeServerName}), or L{None}
    #: without SNI; read once, when the handshake completes.
    serverName: str | None = None

    def makeConnection(self, transport: ITCPTransport) -> None:
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._expired)
        super().makeConnection(transport)

    def handshakeCompleted(self) -> None:
        tls = cast(TLSMemoryBIOProtocol, self.transport)
        raw = tls.getHandle().get_servername()
        if raw is not None:
            self.serverName = normalizeServerName(raw)
        if getattr(self.transport, "negotiatedProtocol", None) == ACME_TLS_ALPN:
            # The validator only needs the handshake (RFC 8737 3).  The
            # deadline stays: it aborts a peer that does not close in turn.
            self.challenge = True
            transport = cast(ITCPTransport, self.transport)
            transport.loseConnection()
            return
        self._cancel()

    def dataReceived(self, data: bytes) -> None:
        if self.challenge:
            return
        super().dataReceived(data)

    def _expired(self) -> None:
        self._timer = None
        # The TLS protocol, which can abort.
        transport = cast(ITCPTransport | None, self.transport)
        if transport is not None:
            transport.abortConnection()

    def _cancel(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel()
        super().connectionLost(reason)


class HandshakeDeadline(WrappingFactory):
    """
    Sits between C{TLSMemoryBIOFactory} and the site: a client that has not
    completed the handshake C{timeout} seconds after connecting is
    disconnected.
    """

    protocol = _HandshakeDeadline
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        return str(prefix()) if prefix is not None else "TLS"
