"""
Integration tests: TLS termination by a real C{twistd revproxy} process,
talked to by real TLS clients (Python's C{ssl} module, C{openssl s_client},
C{curl}, C{nghttp} and C{sslyze}), in front of in-process upstreams on
loopback that answer which one they are.

Certificates come from trustme CAs; the leaves are made here with
C{cryptography}, because trustme marks the subject alternative name
critical beside a non-empty subject, which strict verifiers (sslyze's) reject.

Blocking clients run off the reactor thread: C{ssl} sockets in
L{deferToThread}, programs through L{runCommand}.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.integration.support import (
    LOOPBACK_LISTEN,
    SMALL_BODY,
    START_TIMEOUT,
    CommandResult,
    IIntegrationReactor,
    ProxyProcess,
    RawResponse,
    Upstream,
    askAdmin,
    closedPort,
    connectRaw,
    getReactor,
    runCommand,
    spawnProxy,
    waitHTTPSPorts,
    whoamiBody,
    withTimeout,
    writeConfig,
)

T = TypeVar("T")

MiB = 1024 * 1024

#: How long a blocking socket operation may take before it fails.
SOCKET_TIMEOUT = 10.0

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)

#: The TLS 1.2 suites of Mozilla "intermediate", as sslyze names them.
_INTERMEDIATE_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


def tool(name: str) -> str:
    """
    The path of the program C{name}; fail (never skip) when it is missing.
    """
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not installed (make debian-deps installs the TLS clients)"
        )
    return path


def curlHTTP2(port: int, ca: str, *args: str) -> list[str]:
    """
    The command line of C{curl --http2 ARGS} resolving C{a.test} to the
    proxy's HTTPS C{port} on 127.0.0.1 and trusting the test CA C{ca}.
    """
    return [
        tool("curl"),
        "--http2",
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "20",
        "--resolve",
        f"a.test:{port}:127.0.0.1",
        "--cacert",
        ca,
        *args,
    ]


def sslyzePath() -> str:
    """
    The sslyze program named by C{$REVPROXY_SSLYZE}; fail when unset or
    missing.
    """
    path = os.environ.get("REVPROXY_SSLYZE", "")
    if not path:
        raise AssertionError(
            "REVPROXY_SSLYZE is not set: point it at the sslyze of "
            ".venv-sslyze (make unit does)"
        )
    if not os.access(path, os.X_OK):
        raise AssertionError(f"REVPROXY_SSLYZE={path!r} is not an executable")
    return path


async def inThread(f: Callable[..., T], *args: Any, what: str) -> T:
    """
    Run the blocking C{f(*args)} in the reactor's thread pool; fail naming
    C{what} if it takes too long (its sockets time out by themselves too).
    """
    result: T = await withTimeout(
        deferToThread(f, *args), SOCKET_TIMEOUT + 5, f"{what} (in a thread)"
    )
    return result


# -- certificates


def _isoTime(when: datetime) -> str:
    """
    C{when} as the admin socket writes times.
    """
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Leaf:
    """
    A server certificate: the chain (leaf first) and key as PEM.
    """

    def __init__(self, cert: x509.Certificate, chain: Sequence[bytes], key: bytes):
        self.cert = cert
        self.chainPEM = b"".join(chain)
        self.keyPEM = key

    @property
    def der(self) -> bytes:
        """
        The leaf certificate in DER, as a client receives it.
        """
        return self.cert.public_bytes(serialization.Encoding.DER)

    def write(self, directory: str, prefix: str) -> tuple[str, str]:
        """
        Write the chain to C{PREFIX.pem} and the key to C{PREFIX.key} in
        C{directory}, each replaced whole; return the two file names
        (relative to C{directory}, as a config next to them names them).
        """
        names = (f"{prefix}.pem", f"{prefix}.key")
        for name, data in zip(names, (self.chainPEM, self.keyPEM), strict=True):
            writeBytes(os.path.join(directory, name), data)
        return names


def writeBytes(path: str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data} atomically.
    """
    aside = path + ".new"
    with open(aside, "wb") as f:
        f.write(data)
    os.replace(aside, path)


class Authority:
    """
    A trustme root CA, and the CA that signs its leaves: the root itself,
    or an intermediate whose certificate then follows the leaf in chains.
    """

    def __init__(self, intermediate: bool = False, useRSA: bool = False) -> None:
        keyType = trustme.KeyType.RSA if useRSA else trustme.KeyType.ECDSA
        self.root = trustme.CA(key_type=keyType)
        self.signer = self.root.create_child_ca(keyType) if intermediate else self.root
        self.intermediates = (
            [self.signer.cert_pem.bytes()] if self.signer is not self.root else []
        )
        signerCert = x509.load_pem_x509_certificate(self.signer.cert_pem.bytes())
        self._issuerName = signerCert.subject
        self._signKey = serialization.load_pem_private_key(
            self.signer.private_key_pem.bytes(), password=None
        )

    @property
    def rootPEM(self) -> bytes:
        """
        The root certificate, for a client's trust store.
        """
        return self.root.cert_pem.bytes()

    def writeRoot(self, path: str) -> str:
        """
        Write the root certificate to C{path}; return C{path}.
        """
        writeBytes(path, self.rootPEM)
        return path

    def issue(
        self,
        *names: str,
        days: float = 90,
        notBefore: datetime | None = None,
        notAfter: datetime | None = None,
        useRSA: bool = False,
    ) -> Leaf:
        """
        A server certificate for C{names} (DNS names or IP addresses), valid
        from an hour ago for C{days} unless given C{notBefore}/C{notAfter}.
        The subject is C{CN=<first name>}, and the subject alternative name
        is not critical (as a public CA issues them).
        """
        now = datetime.now(UTC)
        notBefore = notBefore or now - timedelta(hours=1)
        notAfter = notAfter or now + timedelta(days=days)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(65537, 2048)
            if useRSA
            else ec.generate_private_key(ec.SECP256R1())
        )
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        signKey = cast(rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, self._signKey)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "revproxy tests"),
                        x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                    ]
                )
            )
            .issuer_name(self._issuerName)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore)
            .not_valid_after(notAfter)
            .add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    signKey.public_key()
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=useRSA,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .sign(signKey, hashes.SHA256())
        )
        keyPEM = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = [cert.public_bytes(serialization.Encoding.PEM), *self.intermediates]
        return Leaf(cert, chain, keyPEM)


def dnsNames(cert: x509.Certificate) -> list[str]:
    """
    The DNS subject alternative names of C{cert}.
    """
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(san.value.get_values_for_type(x509.DNSName))


# -- a blocking TLS client (Python's ssl module), for threads only


def _parseHead(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """
    The status code and headers of a response head.
    """
    statusLine, *lines = head.split(b"\r\n")
    code = int(statusLine.split(b" ", 2)[1])
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return code, headers


class BlockingTLSClient:
    """
    One TLS connection made with Python's C{ssl} module, which verifies the
    server against C{caFile} (and, with a C{serverName} and
    C{checkHostname}, the name).  Every method blocks: call them through
    L{inThread}.
    """

    def __init__(
        self,
        port: int,
        serverName: str | None,
        caFile: str | None,
        maxVersion: ssl.TLSVersion | None = None,
        checkHostname: bool = True,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if caFile is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.load_verify_locations(caFile)
            context.check_hostname = checkHostname and serverName is not None
        if maxVersion is not None:
            context.maximum_version = maxVersion
        context.set_alpn_protocols(["http/1.1"])
        self.context = context
        self.port = port
        self.serverName = serverName
        self.sock: ssl.SSLSocket | None = None

    def connect(self) -> None:
        """
        Connect and complete the handshake (raises L{ssl.SSLError} when it
        fails).
        """
        raw = socket.create_connection(("127.0.0.1", self.port), SOCKET_TIMEOUT)
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname=self.serverName)
        except BaseException:
            raw.close()
            raise

    def peerCertificate(self) -> x509.Certificate:
        """
        The certificate the server sent.
        """
        assert self.sock is not None
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def request(self, data: bytes) -> RawResponse:
        """
        Send C{data} (one request) and read one response framed by its
        C{Content-Length}.
        """
        sock = self.sock
        assert sock is not None
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {received!r}")
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        code, headers = _parseHead(head)
        lengths = [v for n, v in headers if n.lower() == b"content-length"]
        if not lengths:
            raise AssertionError(f"no Content-Length in {head!r}")
        length = int(lengths[0])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(body)} of {length} bytes")
            body += chunk
        if len(body) != length:
            raise AssertionError(f"{len(body) - length} bytes after the response")
        return RawResponse(code, headers, body)

    def close(self) -> None:
        """
        Close the connection (idempotent).
        """
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


def tlsExchange(
    port: int,
    serverName: str | None,
    caFile: str | None,
    request: bytes | None,
    checkHostname: bool = True,
) -> tuple[x509.Certificate, RawResponse | None]:
    """
    Blocking: connect, send C{request} if any, close; the server's
    certificate and the response.
    """
    client = BlockingTLSClient(port, serverName, caFile, checkHostname=checkHostname)
    try:
        client.connect()
        cert = client.peerCertificate()
        response = client.request(request) if request is not None else None
    finally:
        client.close()
    return cert, response


def handshakeFailure(
    port: int,
    serverName: str | None,
    caFile: str | None,
    maxVersion: ssl.TLSVersion | None = None,
) -> ssl.SSLError | x509.Certificate:
    """
    Blocking: the error a handshake fails with, or the server's
    certificate when it succeeds.
    """
    client = BlockingTLSClient(port, serverName, caFile, maxVersion)
    try:
        client.connect()
        return client.peerCertificate()
    except ssl.SSLError as e:
        return e
    finally:
        client.close()


def httpGet(path: str, host: str) -> bytes:
    """
    A keep-alive C{GET} request.
    """
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("ascii")


class ResumingClient:
    """
    TLS connections of one protocol version made with Python's C{ssl}
    module (verified against C{caFile}), each offering the session of the
    one before.  Every method blocks: call them through L{inThread}.
    """

    def __init__(
        self, port: int, serverName: str, caFile: str, version: ssl.TLSVersion
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(caFile)
        context.minimum_version = context.maximum_version = version
        context.set_alpn_protocols(["http/1.1"])
        self.context = context
        self.port = port
        self.serverName = serverName
        #: The session the next connection offers.
        self.session: ssl.SSLSession | None = None

    def get(self) -> tuple[bool, RawResponse]:
        """
        Connect (offering L{session}), GET C{/whoami}, keep the connection's
        session for the next one, and close; whether the handshake resumed
        the session offered, and the response.
        """
        raw = socket.create_connection(("127.0.0.1", self.port), SOCKET_TIMEOUT)
        try:
            sock = self.context.wrap_socket(
                raw, server_hostname=self.serverName, session=self.session
            )
        except BaseException:
            raw.close()
            raise
        client = BlockingTLSClient(self.port, self.serverName, None)
        client.sock = sock
        try:
            response = client.request(httpGet("/whoami", self.serverName))
            # Read after a response: TLS 1.3 sends its tickets after the
            # handshake, and they come with the first application data.
            reused = bool(sock.session_reused)
            self.session = sock.session
        finally:
            client.close()
        return reused, response


# -- upstreams


class _Challenge(Resource):
    """
    C{/.well-known/acme-challenge/TOKEN} on an upstream: C{challenge TOKEN}.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        token = b"/".join(request.postpath or [])
        return b"challenge " + token


class TLSUpstream(Upstream):
    """
    An L{Upstream} served over TLS with C{leaf}.
    """

    def __init__(self, reactor: IIntegrationReactor, name: str, leaf: Leaf) -> None:
        super().__init__(reactor, name)
        self.leaf = leaf

    async def start(self) -> None:
        options = PrivateCertificate.loadPEM(
            (self.leaf.keyPEM + self.leaf.chainPEM).decode("ascii")
        ).options()
        endpoint = SSL4ServerEndpoint(
            cast(Any, self.reactor), 0, options, interface="127.0.0.1"
        )
        self._listening = await endpoint.listen(self.site)
        self.port = cast(IPv4Address, self._listening.getHost()).port


# -- the test case


class _TLSTestCase(TestCase):
    """
    Starts upstreams named by L{upstreamNames} and, through L{startProxy}, a
    proxy with one HTTPS listener; stops them after the test, checking that
    SIGTERM made the proxy exit 0.

    Everything lives in a short directory under C{/tmp} (an admin socket's
    path must stay under about 100 bytes).
    """

    timeout = 30
    upstreamNames: Sequence[str] = ("A", "B")

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-tls-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstreams: dict[str, Upstream] = {}
        for name in self.upstreamNames:
            upstream = Upstream(self.reactor, name)
            await upstream.start()
            self.addCleanup(upstream.stop)
            self.upstreams[name] = upstream

    def path(self, name: str) -> str:
        """
        The path of C{name} in the test's directory.
        """
        return os.path.join(self.directory, name)

    def site(
        self,
        name: str,
        hosts: Sequence[str],
        upstream: str,
        leaf: Leaf | None = None,
        **extra: object,
    ) -> dict[str, object]:
        """
        A site forwarding C{hosts} to the upstream called C{upstream}, with
        C{tls = "files"} and C{leaf} written as C{NAME.pem} and C{NAME.key}
        next to the config when given.
        """
        site: dict[str, object] = {
            "name": name,
            "hosts": list(hosts),
            "upstreams": [f"http://127.0.0.1:{self.upstreams[upstream].port}"],
        }
        if leaf is not None:
            certFile, keyFile = leaf.write(self.directory, name)
            site.update(tls="files", cert_file=certFile, key_file=keyFile)
        site.update(extra)
        return site

    def writeConfig(self, sites: Sequence[dict[str, object]], **server: object) -> str:
        """
        Write the config: an HTTP and an HTTPS listener on loopback, and
        C{server} keys on top; its path.
        """
        keys: dict[str, object] = {"listen_https": [LOOPBACK_LISTEN]}
        keys.update(server)
        return writeConfig(self.directory, sites, server=keys)

    async def startProxy(
        self, sites: Sequence[dict[str, object]], **server: object
    ) -> None:
        """
        Start a proxy on a config of C{sites}; sets L{proxy}, L{port} (HTTP)
        and L{httpsPort}.
        """
        self.configPath = self.writeConfig(sites, **server)
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        self.addCleanup(self._stopProxy)
        self.httpsPort = (await waitHTTPSPorts(self.proxy))[0]

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    async def fetch(
        self,
        serverName: str | None,
        caFile: str | None,
        path: str = "/whoami",
        host: str | None = None,
        checkHostname: bool = True,
    ) -> tuple[x509.Certificate, RawResponse]:
        """
        GET C{path} over a new TLS connection made by Python's C{ssl}
        module with C{serverName} in SNI, verified against C{caFile} (the
        chain, and the name unless not C{checkHostname}); the server's
        certificate and the response.
        """
        request = httpGet(path, host or serverName or "127.0.0.1")
        cert, response = await inThread(
            tlsExchange,
            self.httpsPort,
            serverName,
            caFile,
            request,
            checkHostname,
            what=f"GET {path} over TLS to {serverName}",
        )
        assert response is not None
        return cert, response

    async def certificateFor(
        self, serverName: str | None, caFile: str | None = None
    ) -> x509.Certificate:
        """
        The certificate a new handshake with C{serverName} gets.
        """
        cert, _ = await inThread(
            tlsExchange,
            self.httpsPort,
            serverName,
            caFile,
            None,
            what=f"a handshake for {serverName}",
        )
        return cert

    async def handshakeError(
        self,
        serverName: str | None,
        caFile: str | None = None,
        maxVersion: ssl.TLSVersion | None = None,
    ) -> ssl.SSLError:
        """
        The error a handshake with C{serverName} fails with; fail the test
        when it succeeds.
        """
        result = await inThread(
            handshakeFailure,
            self.httpsPort,
            serverName,
            caFile,
            maxVersion,
            what=f"a handshake for {serverName}",
        )
        if not isinstance(result, ssl.SSLError):
            self.fail(
                f"the handshake for {serverName!r} succeeded, with {result.subject}"
            )
        return result

    async def plainGet(self, path: str, host: str) -> RawResponse:
        """
        GET C{path} for C{host} over plain HTTP.
        """
        client = await connectRaw(self.reactor, self.port)
        try:
            return await client.request(httpGet(path, host))
        finally:
            await client.close()

    async def sClient(self, *args: str) -> CommandResult:
        """
        Run C{openssl s_client -connect 127.0.0.1:HTTPSPORT ARGS} with no
        input (it closes after the handshake).
        """
        argv = [
            tool("openssl"),
            "s_client",
            "-connect",
            f"127.0.0.1:{self.httpsPort}",
            *args,
        ]
        return await runCommand(self.reactor, argv)

    def assertWhoami(self, response: RawResponse, name: str) -> None:
        """
        C{response} is a whole C{/whoami} answer of the upstream C{name}.
        """
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertEqual(response.body, whoamiBody(name))

    def assertRefusedByServer(self, result: CommandResult, alert: int) -> None:
        """
        C{openssl s_client} failed because the server sent alert C{alert}.
        """
        output = result.out + result.err
        self.assertNotEqual(result.code, 0, output)
        self.assertIn(b"SSL alert number %d" % (alert,), output)
        self.assertIn(b"no peer certificate available", output)


class SNITests(_TLSTestCase):
    """
    Two sites on one HTTPS listener, each with its own certificate from its
    own CA, chosen by SNI; an unknown name or none is refused.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.authorityA = Authority(intermediate=True)
        self.authorityB = Authority(useRSA=True)
        self.caA = self.authorityA.writeRoot(self.path("ca-a.pem"))
        self.caB = self.authorityB.writeRoot(self.path("ca-b.pem"))
        self.leafA = self.authorityA.issue("a.test")
        self.leafB = self.authorityB.issue("b.test", useRSA=True)
        await self.startProxy(
            [
                self.site("a", ["a.test"], "A", self.leafA),
                self.site("b", ["b.test"], "B", self.leafB),
            ]
        )

    async def test_pythonClientGetsEachSitesCertificate(self) -> None:
        """
        Python's C{ssl} module with SNI C{a.test} verifies the certificate
        against A's CA (the intermediate comes from the server) and GETs
        through the proxy from upstream A; the same for C{b.test}, B's CA
        and upstream B.  A's certificate does not verify against B's CA.
        """
        cert, response = await self.fetch("a.test", self.caA)
        self.assertEqual(cert.public_bytes(serialization.Encoding.DER), self.leafA.der)
        self.assertWhoami(response, "A")
        cert, response = await self.fetch("b.test", self.caB)
        self.assertEqual(cert.public_bytes(serialization.Encoding.DER), self.leafB.der)
        self.assertWhoami(response, "B")
        error = await self.handshakeError("a.test", self.caB)
        self.assertIsInstance(error, ssl.SSLCertVerificationError)

    async def test_opensslClient(self) -> None:
        """
        C{openssl s_client -servername NAME -CAfile CA} verifies each site's
        certificate (return code 0) and shows its subject and names.
        """
        for name, ca, leaf in (
            ("a.test", self.caA, self.leafA),
            ("b.test", self.caB, self.leafB),
        ):
            result = await self.sClient("-servername", name, "-CAfile", ca)
            output = result.out + result.err
            self.assertEqual(result.code, 0, output)
            self.assertIn(b"Verify return code: 0 (ok)", result.out)
            self.assertIn(f"subject=O = revproxy tests, CN = {name}".encode(), output)
            match = _PEM_CERT.search(result.out)
            assert match is not None, output
            served = x509.load_pem_x509_certificate(match.group(0))
            self.assertEqual(dnsNames(served), [name])
            self.assertEqual(served.serial_number, leaf.cert.serial_number)

    async def test_unknownNameRefused(self) -> None:
        """
        An unknown SNI name, and no SNI at all, are refused with an
        C{unrecognized_name} alert (112), for Python's C{ssl} module and
        C{openssl s_client}; the proxy logs one line for all of them (rate
        limited), no traceback, and goes on serving the known names.
        """
        for serverName in ("c.test", None):
            error = await self.handshakeError(serverName)
            self.assertEqual(error.reason, "TLSV1_UNRECOGNIZED_NAME", repr(error))
            self.assertIn("unrecognized name", str(error))
        result = await self.sClient("-servername", "c.test")
        self.assertRefusedByServer(result, 112)
        self.assertIn(b"unrecognized name", result.out + result.err)
        result = await self.sClient("-noservername")
        self.assertRefusedByServer(result, 112)

        _, response = await self.fetch("a.test", self.caA)
        self.assertWhoami(response, "A")
        # A reload's log line comes after any line the refusals made.
        self.proxy.transport.signalProcess("HUP")
        await self.proxy.waitOutput("Reloaded (SIGHUP)")
        output = self.proxy.output
        self.assertEqual(output.count("Refused a TLS handshake"), 1, output)
        self.assertIn("Refused a TLS handshake for 'c.test'", output)
        self.assertNotIn("Traceback", output)


class DefaultSiteTests(_TLSTestCase):
    """
    With a C{default = true} site that has a certificate, an unknown SNI
    name or none gets that certificate.
    """

    upstreamNames = ("A", "D")

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.authority = Authority()
        self.ca = self.authority.writeRoot(self.path("ca.pem"))
        self.leafA = self.authority.issue("a.test")
        self.leafD = self.authority.issue("d.test")
        await self.startProxy(
            [
                self.site("a", ["a.test"], "A", self.leafA),
                self.site("d", ["d.test"], "D", self.leafD, default=True),
            ]
        )

    async def test_unknownNameGetsDefault(self) -> None:
        """
        SNI C{c.test} gets the default site's certificate (its chain
        verifies; its name is not c.test), and a request for C{c.test} goes
        to the default site's upstream.
        """
        cert, response = await self.fetch("c.test", self.ca, checkHostname=False)
        self.assertEqual(cert.public_bytes(serialization.Encoding.DER), self.leafD.der)
        self.assertWhoami(response, "D")

    async def test_noNameGetsDefault(self) -> None:
        """
        No SNI (Python's C{ssl} and C{openssl s_client -noservername}) gets
        the default site's certificate, still verified against the CA; a
        known name still gets its own.
        """
        cert, response = await self.fetch(None, self.ca, host="a.test")
        self.assertEqual(cert.public_bytes(serialization.Encoding.DER), self.leafD.der)
        # Routing follows Host, not the certificate.
        self.assertWhoami(response, "A")
        result = await self.sClient("-noservername", "-CAfile", self.ca)
        self.assertEqual(result.code, 0, result)
        self.assertIn(b"Verify return code: 0 (ok)", result.out)
        self.assertIn(b"CN = d.test", result.out)
        cert = await self.certificateFor("a.test", self.ca)
        self.assertEqual(cert.public_bytes(serialization.Encoding.DER), self.leafA.der)
        self.assertNotIn("Refused a TLS handshake", self.proxy.output)


class StrictSNIHostTests(_TLSTestCase):
    """
    C{strict_sni_host}: a request whose C{Host} belongs to another site
    than its connection's SNI name gets 421, over HTTP/1.1 and HTTP/2; a
    connection without SNI and a site with C{strict_sni_host = false} are
    served; a reload changes it.
    """

    upstreamNames = ("A", "B", "C")
    misdirected = (
        b"421 Misdirected Request: this host is not served on a connection for "
        b"that TLS server name (SNI)\n"
    )

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.socketPath = self.path("admin.sock")
        self.authority = Authority()
        self.ca = self.authority.writeRoot(self.path("ca.pem"))
        self.leaves = {n: self.authority.issue(f"{n}.test") for n in "abc"}
        await self.startProxy(
            self.sites(strictC=False), admin_socket_path=self.socketPath
        )

    def sites(self, strictC: bool) -> list[dict[str, object]]:
        """
        Sites C{a} (the default), C{b} and C{c} (strict if C{strictC}).
        """
        extra = {} if strictC else {"strict_sni_host": False}
        return [
            self.site("a", ["a.test"], "A", self.leaves["a"], default=True),
            self.site("b", ["b.test"], "B", self.leaves["b"]),
            self.site("c", ["c.test"], "C", self.leaves["c"], **extra),
        ]

    def assertMisdirected(self, response: RawResponse) -> None:
        """
        C{response} is the 421 of a host that is not the SNI name's site.
        """
        self.assertEqual(response.code, 421, response.body[:300])
        self.assertEqual(response.body, self.misdirected)

    async def test_otherSitesHostMisdirected(self) -> None:
        """
        Python's C{ssl} with SNI C{a.test} and C{Host: b.test} gets 421, and
        the other way round; each host on its own name is served.
        """
        _, response = await self.fetch("a.test", self.ca, host="b.test")
        self.assertMisdirected(response)
        _, response = await self.fetch("b.test", self.ca, host="a.test")
        self.assertMisdirected(response)
        for name in ("a", "b"):
            _, response = await self.fetch(f"{name}.test", self.ca)
            self.assertWhoami(response, name.upper())

    async def test_http2(self) -> None:
        """
        curl over HTTP/2 with SNI C{a.test} and C{:authority} C{b.test} (a
        coalesced connection) gets 421 on its stream.
        """
        result = await runCommand(
            self.reactor,
            curlHTTP2(
                self.httpsPort,
                self.ca,
                "--header",
                "Host: b.test",
                "--write-out",
                "\n%{http_version} %{response_code}",
                f"https://a.test:{self.httpsPort}/whoami",
            ),
            seconds=25,
        )
        self.assertEqual(result.code, 0, result)
        body, _, status = result.out.rpartition(b"\n")
        self.assertEqual(status, b"2 421", body[:300])
        self.assertEqual(body, self.misdirected)

    async def test_noSNIUnaffected(self) -> None:
        """
        A client that sends no SNI (it connected to an IP literal) reaches
        every site by its C{Host}.
        """
        for name in ("a", "b"):
            _, response = await self.fetch(None, self.ca, host=f"{name}.test")
            self.assertWhoami(response, name.upper())

    async def test_notStrict(self) -> None:
        """
        Site C{c}, with C{strict_sni_host = false}, is served on a
        connection for C{a.test}; once a reload makes it strict, it is not.
        """
        _, response = await self.fetch("a.test", self.ca, host="c.test")
        self.assertWhoami(response, "C")
        self.writeConfig(self.sites(strictC=True), admin_socket_path=self.socketPath)
        answer = await askAdmin(self.reactor, self.socketPath, "reload")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(answer["sites"]["changed"], ["c"], answer)
        _, response = await self.fetch("a.test", self.ca, host="c.test")
        self.assertMisdirected(response)


class SessionResumptionTests(_TLSTestCase):
    """
    Sessions resume from the server's session cache, in TLS 1.2 (by
    session id) and TLS 1.3 (by a stateful ticket, a reference into the
    cache): no session ticket key is used, and the cache outlives a reload.
    """

    upstreamNames = ("A",)

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.socketPath = self.path("admin.sock")
        authority = Authority()
        self.ca = authority.writeRoot(self.path("ca.pem"))
        await self.startProxy(
            [self.site("a", ["a.test"], "A", authority.issue("a.test"))],
            admin_socket_path=self.socketPath,
        )
        self.clients = {
            version: ResumingClient(self.httpsPort, "a.test", self.ca, version)
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
        }

    async def get(self, version: ssl.TLSVersion) -> bool:
        """
        A new connection of C{version}'s client; whether it resumed.

        The client closes without a TLS close_notify, as Python's C{ssl}
        and many clients do; another connection (a full handshake and a
        request) follows, so the proxy has seen the close before the
        session is offered again.
        """
        reused, response = await inThread(
            self.clients[version].get, what=f"a {version.name} connection"
        )
        self.assertWhoami(response, "A")
        _, response = await self.fetch("a.test", self.ca)
        self.assertWhoami(response, "A")
        return reused

    async def test_resumed(self) -> None:
        """
        A TLS 1.2 session carries no ticket and resumes by its id; a TLS 1.3
        one resumes with a ticket valid for a day.  Each new connection
        resumes the previous one's session, though that connection ended
        without a close_notify.
        """
        for version in self.clients:
            self.assertFalse(await self.get(version), version)
            for _ in range(2):
                self.assertTrue(await self.get(version), version)
        tls12 = self.clients[ssl.TLSVersion.TLSv1_2].session
        assert tls12 is not None
        self.assertFalse(tls12.has_ticket)
        tls13 = self.clients[ssl.TLSVersion.TLSv1_3].session
        assert tls13 is not None
        self.assertTrue(tls13.has_ticket)
        self.assertEqual(tls13.ticket_lifetime_hint, 86400)

    async def test_reloadKeepsSessions(self) -> None:
        """
        Sessions made before a reload resume after it.
        """
        for version in self.clients:
            await self.get(version)
        answer = await askAdmin(self.reactor, self.socketPath, "reload")
        self.assertEqual(answer["status"], "ok", answer)
        for version in self.clients:
            self.assertTrue(await self.get(version), version)


class CheckTests(_TLSTestCase):
    """
    C{twistd revproxy --config FILE --check} loads the certificates.
    """

    upstreamNames = ("A",)
    timeout = 45

    async def check(self, sites: Sequence[dict[str, object]]) -> ProxyProcess:
        """
        Run C{--check} on a config of C{sites} to its end.
        """
        path = self.writeConfig(sites)
        proxy = ProxyProcess(
            self.reactor, ["--config", path, "--check"], self.directory
        )
        self.addCleanup(proxy.waitExit)
        self.addCleanup(proxy.kill)
        await proxy.waitExit(START_TIMEOUT)
        return proxy

    async def test_checkCertificates(self) -> None:
        """
        Good certificates pass (exit 0); a key that is not the
        certificate's fails (exit 1) naming C{sites[1].key_file}; an
        expired certificate fails (exit 1) naming C{sites[0].cert_file}.
        """
        authority = Authority()
        good = [
            self.site("a", ["a.test"], "A", authority.issue("a.test")),
            self.site("b", ["b.test"], "A", authority.issue("b.test")),
        ]
        proxy = await self.check(good)
        self.assertEqual(proxy.protocol.exitCode, 0, proxy.output)
        self.assertIn(b"successful", proxy.protocol.stdout)

        # b.pem with another certificate's key.
        mismatched = self.site("b", ["b.test"], "A", authority.issue("b.test"))
        writeBytes(self.path("b.key"), authority.issue("b.test").keyPEM)
        proxy = await self.check([good[0], mismatched])
        self.assertEqual(proxy.protocol.exitCode, 1, proxy.output)
        stderr = "\n".join(proxy.stderrLines)
        self.assertIn("sites[1].key_file", stderr)
        self.assertIn("does not match", stderr)
        self.assertNotIn("sites[0]", stderr)
        self.assertNotIn("Traceback", proxy.output)

        now = datetime.now(UTC)
        expired = authority.issue(
            "a.test", notBefore=now - timedelta(days=30), notAfter=now - timedelta(1)
        )
        proxy = await self.check([self.site("a", ["a.test"], "A", expired)])
        self.assertEqual(proxy.protocol.exitCode, 1, proxy.output)
        stderr = "\n".join(proxy.stderrLines)
        self.assertIn("sites[0].cert_file", stderr)
        self.assertIn("expired", stderr)
        self.assertNotIn("Traceback", proxy.output)


class ReloadTests(_TLSTestCase):
    """
    A certificate replaced on disk is served after an admin C{reload} to
    new handshakes only; a broken one fails the reload and the old one
    keeps serving.
    """

    upstreamNames = ("A",)

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.socketPath = self.path("admin.sock")
        self.authority = Authority()
        self.ca = self.authority.writeRoot(self.path("ca.pem"))
        self.old = self.authority.issue("a.test", days=90)
        await self.startProxy(
            [self.site("a", ["a.test"], "A", self.old)],
            admin_socket_path=self.socketPath,
        )

    async def admin(self, command: str) -> dict[str, Any]:
        """
        The admin socket's answer to C{command}.
        """
        return await askAdmin(self.reactor, self.socketPath, command)

    async def certs(self) -> dict[str, Any]:
        """
        The one certificate the admin C{certs} command lists.
        """
        answer = await self.admin("certs")
        self.assertEqual(answer["status"], "ok", answer)
        certificates = answer["certificates"]
        self.assertEqual(len(certificates), 1, answer)
        entry: dict[str, Any] = certificates[0]
        self.assertEqual(entry["sites"], ["a"])
        self.assertEqual(entry["names"], ["a.test"])
        self.assertEqual(entry["source"], "files")
        self.assertEqual(entry["path"], self.path("a.pem"))
        return entry

    async def test_renewedCertificate(self) -> None:
        """
        After the files are replaced and reloaded, a keep-alive connection
        opened before goes on serving requests (same socket, old
        certificate), new handshakes get the new certificate, and C{certs}
        shows the new expiry.
        """
        entry = await self.certs()
        self.assertEqual(
            entry["not_after"], _isoTime(self.old.cert.not_valid_after_utc)
        )

        client = BlockingTLSClient(self.httpsPort, "a.test", self.ca)
        self.addCleanup(client.close)
        await inThread(client.connect, what="the keep-alive connection")
        response = await inThread(
            client.request, httpGet("/whoami", "a.test"), what="request 1"
        )
        self.assertWhoami(response, "A")
        sock = client.sock

        new = self.authority.issue("a.test", days=60)
        new.write(self.directory, "a")
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", answer)

        for i in range(2, 4):
            response = await inThread(
                client.request, httpGet("/whoami", "a.test"), what=f"request {i}"
            )
            self.assertWhoami(response, "A")
        self.assertIs(client.sock, sock)
        cert = await inThread(client.peerCertificate, what="the old connection")
        self.assertEqual(cert.serial_number, self.old.cert.serial_number)

        cert, response = await self.fetch("a.test", self.ca)
        self.assertWhoami(response, "A")
        self.assertEqual(cert.serial_number, new.cert.serial_number)
        self.assertEqual(cert.not_valid_after_utc, new.cert.not_valid_after_utc)
        self.assertNotEqual(cert.not_valid_after_utc, self.old.cert.not_valid_after_utc)

        entry = await self.certs()
        self.assertEqual(entry["not_after"], _isoTime(new.cert.not_valid_after_utc))
        self.assertNotIn("Traceback", self.proxy.output)

    async def test_brokenCertificate(self) -> None:
        """
        A reload with a certificate file that is not one fails with
        C{certificate_invalid} naming the file; new handshakes still get
        the old certificate, and C{certs} still lists it.
        """
        writeBytes(self.path("a.pem"), b"not a certificate\n")
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "error", answer)
        self.assertEqual(answer["code"], "certificate_invalid", answer)
        self.assertIn("sites[0].cert_file", " ".join(answer["errors"]))

        cert, response = await self.fetch("a.test", self.ca)
        self.assertWhoami(response, "A")
        self.assertEqual(cert.serial_number, self.old.cert.serial_number)
        entry = await self.certs()
        self.assertEqual(
            entry["not_after"], _isoTime(self.old.cert.not_valid_after_utc)
        )

        # The mistake fixed: the next reload serves the file again.
        fixed = self.authority.issue("a.test", days=30)
        fixed.write(self.directory, "a")
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", answer)
        cert = await self.certificateFor("a.test", self.ca)
        self.assertEqual(cert.serial_number, fixed.cert.serial_number)


class ComplianceTests(_TLSTestCase):
    """
    The TLS settings are Mozilla "intermediate": sslyze says so, and old
    protocols and ciphers are refused.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        # Leaves under a year, as Mozilla's profile requires.
        self.authorityA = Authority()
        self.authorityB = Authority(useRSA=True)
        self.caA = self.authorityA.writeRoot(self.path("ca-a.pem"))
        self.caB = self.authorityB.writeRoot(self.path("ca-b.pem"))
        writeBytes(
            self.path("ca-both.pem"), self.authorityA.rootPEM + self.authorityB.rootPEM
        )
        await self.startProxy(
            [
                self.site("a", ["a.test"], "A", self.authorityA.issue("a.test")),
                self.site(
                    "b", ["b.test"], "B", self.authorityB.issue("b.test", useRSA=True)
                ),
            ]
        )

    async def test_sslyzeMozillaIntermediate(self) -> None:
        """
        sslyze checks both sites (ECDSA and RSA certificates) against
        Mozilla's "intermediate" configuration: compliant, certificates
        trusted by the given CA file, nothing below TLS 1.2, only the
        profile's TLS 1.2 suites; TLS 1.2 sessions resume by session id,
        never by ticket.
        """
        sslyze = sslyzePath()
        jsonPath = self.path("sslyze.json")
        targets = [f"{n}:{self.httpsPort}{{127.0.0.1}}" for n in ("a.test", "b.test")]
        result = await runCommand(
            self.reactor,
            [
                sslyze,
                "--mozilla_config=intermediate",
                "--resum",
                "--certinfo_ca_file",
                self.path("ca-both.pem"),
                "--json_out",
                jsonPath,
                *targets,
            ],
            seconds=45,
        )
        text = (result.out + result.err).decode("utf-8", "replace")
        self.assertEqual(result.code, 0, f"sslyze says:\n{text}")
        for name in ("a.test", "b.test"):
            self.assertIn(f"{name}:{self.httpsPort}: OK - Compliant", text)
        with open(jsonPath, encoding="utf-8") as f:
            report = json.load(f)
        scans = report["server_scan_results"]
        self.assertEqual(len(scans), 2, text)
        for scan in scans:
            self.assertEqual(scan["scan_status"], "COMPLETED", text)
            results = scan["scan_result"]
            for old in (
                "ssl_2_0_cipher_suites",
                "ssl_3_0_cipher_suites",
                "tls_1_0_cipher_suites",
                "tls_1_1_cipher_suites",
            ):
                self.assertEqual(
                    results[old]["result"]["accepted_cipher_suites"], [], old
                )
            accepted = {
                s["cipher_suite"]["name"]
                for s in results["tls_1_2_cipher_suites"]["result"][
                    "accepted_cipher_suites"
                ]
            }
            self.assertTrue(accepted, text)
            self.assertLessEqual(accepted, _INTERMEDIATE_TLS12)
            resumption = results["session_resumption"]["result"]
            self.assertEqual(
                (
                    resumption["session_id_resumption_result"],
                    resumption["tls_ticket_resumption_result"],
                ),
                ("FULLY_SUPPORTED", "NOT_SUPPORTED"),
                text,
            )
            deployment = results["certificate_info"]["result"][
                "certificate_deployments"
            ][0]
            supplied = [
                p
                for p in deployment["path_validation_results"]
                if p["trust_store"]["name"] == "Supplied CA file"
            ]
            self.assertEqual(len(supplied), 1, text)
            self.assertIsNone(supplied[0]["validation_error"], text)

    async def test_oldProtocolsAndCiphersRefused(self) -> None:
        """
        A TLS 1.1 client gets a C{protocol_version} alert; a TLS 1.2 client
        offering only CBC or RSA key exchange suites a C{handshake_failure}
        alert; a TLS 1.2 client with an ECDHE AES-GCM suite succeeds.
        """
        # SECLEVEL=0: the client really offers TLS 1.1 and SHA-1 suites.
        result = await self.sClient(
            "-servername", "b.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"
        )
        self.assertRefusedByServer(result, 70)
        weak = (
            "AES128-SHA:AES256-SHA:AES128-SHA256:AES128-GCM-SHA256:"
            "AES256-GCM-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:"
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256@SECLEVEL=0"
        )
        for name in ("a.test", "b.test"):
            result = await self.sClient("-servername", name, "-tls1_2", "-cipher", weak)
            self.assertRefusedByServer(result, 40)
        for name, ca, suite in (
            ("a.test", self.caA, "ECDHE-ECDSA-AES128-GCM-SHA256"),
            ("b.test", self.caB, "ECDHE-RSA-AES128-GCM-SHA256"),
        ):
            result = await self.sClient(
                "-servername", name, "-CAfile", ca, "-tls1_2", "-cipher", suite
            )
            self.assertEqual(result.code, 0, result)
            self.assertIn(b"Verify return code: 0 (ok)", result.out)
            self.assertIn(b"Cipher is " + suite.encode("ascii"), result.out)


class TLS13OnlyTests(_TLSTestCase):
    """
    With C{tls_min_version = "1.3"}, TLS 1.2 clients are refused.
    """

    upstreamNames = ("A",)

    async def test_tls12Refused(self) -> None:
        """
        C{openssl s_client -tls1_2} and Python's C{ssl} limited to TLS 1.2
        get a C{protocol_version} alert; TLS 1.3 works.
        """
        authority = Authority()
        ca = authority.writeRoot(self.path("ca.pem"))
        await self.startProxy(
            [self.site("a", ["a.test"], "A", authority.issue("a.test"))],
            tls_min_version="1.3",
        )
        result = await self.sClient("-servername", "a.test", "-tls1_2")
        self.assertRefusedByServer(result, 70)
        error = await self.handshakeError("a.test", ca, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(error.reason, "TLSV1_ALERT_PROTOCOL_VERSION", repr(error))
        result = await self.sClient("-servername", "a.test", "-CAfile", ca, "-tls1_3")
        self.assertEqual(result.code, 0, result)
        self.assertIn(b"New, TLSv1.3", result.out)
        _, response = await self.fetch("a.test", ca)
        self.assertWhoami(response, "A")


class _HTTP2TestCase(_TLSTestCase):
    """
    A proxy with site C{a} and a default site C{d}, and curl.

    @ivar http2: the config's C{[server] http2}, if set.
    """

    upstreamNames = ("A", "D")
    http2: bool | None = None

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.authority = Authority()
        self.ca = self.authority.writeRoot(self.path("ca.pem"))
        server: dict[str, object] = {}
        if self.http2 is not None:
            server["http2"] = self.http2
        await self.startProxy(
            [
                self.site("a", ["a.test"], "A", self.authority.issue("a.test")),
                self.site(
                    "d", ["d.test"], "D", self.authority.issue("d.test"), default=True
                ),
            ],
            **server,
        )

    def url(self, path: str) -> str:
        """
        The proxy's https:// URL of C{path} on C{a.test}.
        """
        return f"https://a.test:{self.httpsPort}{path}"

    async def curl(self, *args: str) -> CommandResult:
        """
        Run C{curl --http2} resolving C{a.test} to the proxy and trusting
        the test CA; fail unless it exits 0.
        """
        argv = curlHTTP2(self.httpsPort, self.ca, *args)
        result = await runCommand(self.reactor, argv, seconds=25)
        self.assertEqual(result.code, 0, result)
        return result


class HTTP2Tests(_HTTP2TestCase):
    """
    HTTP/2 over TLS (ALPN C{h2}), with curl and nghttp.
    """

    async def test_get(self) -> None:
        """
        curl negotiates C{h2} and gets the upstream's body through the proxy.
        """
        output = self.path("whoami.out")
        result = await self.curl(
            "--verbose",
            "--output",
            output,
            "--write-out",
            "%{http_version} %{response_code}",
            self.url("/whoami"),
        )
        self.assertEqual(result.out, b"2 200", result)
        self.assertIn(b"ALPN: server accepted h2", result.err)
        with open(output, "rb") as f:
            self.assertEqual(f.read(), whoamiBody("A"))

    async def test_largePost(self) -> None:
        """
        A 1 MiB POST body over HTTP/2 reaches the upstream whole.
        """
        data = os.urandom(MiB)
        upload = self.path("upload.bin")
        writeBytes(upload, data)
        output = self.path("echo.out")
        result = await self.curl(
            "--data-binary",
            f"@{upload}",
            "--header",
            "Content-Type: application/octet-stream",
            "--output",
            output,
            "--write-out",
            "%{http_version} %{response_code}",
            self.url("/echo"),
        )
        self.assertEqual(result.out, b"2 200", result)
        with open(output, "rb") as f:
            seen = json.load(f)
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["body_length"], len(data))
        self.assertEqual(seen["body_sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual(seen["headers"].get("x-forwarded-proto"), ["https"])

    async def test_curlParallelStreams(self) -> None:
        """
        curl --parallel multiplexes four requests, two of them slow, on one
        HTTP/2 connection; each gets its own upstream body.
        """
        paths = ["/slow?delay=0.5", "/whoami", "/slow?delay=0.5", "/small"]
        args: list[str] = ["--parallel", "--parallel-max", "4"]
        outputs = []
        for i, path in enumerate(paths):
            outputs.append(self.path(f"parallel-{i}.out"))
            args += ["--output", outputs[-1], self.url(path)]
        result = await self.curl(
            *args, "--write-out", "%{http_version} %{response_code} %{num_connects}\n"
        )
        lines = result.out.decode("ascii").split()
        self.assertEqual(len(lines), 3 * len(paths), result)
        versions, codes, connects = lines[0::3], lines[1::3], lines[2::3]
        self.assertEqual(versions, ["2"] * len(paths), result)
        self.assertEqual(codes, ["200"] * len(paths), result)
        self.assertEqual(sum(int(c) for c in connects), 1, result)
        bodies = []
        for output in outputs:
            with open(output, "rb") as f:
                bodies.append(f.read())
        self.assertEqual(
            sorted(bodies),
            sorted([b"slow\n", b"slow\n", whoamiBody("A"), SMALL_BODY]),
        )

    async def test_nghttpConcurrentStreams(self) -> None:
        """
        nghttp, connecting to 127.0.0.1 (no SNI: the default site's
        certificate), negotiates C{h2} and sends three requests on its one
        connection before the first answer comes; all three are answered
        200.
        """
        base = f"https://127.0.0.1:{self.httpsPort}"
        result = await runCommand(
            self.reactor,
            [
                tool("nghttp"),
                "--verbose",
                "--null-out",
                "--timeout=10",
                # Different URIs: nghttp requests a URI once.
                f"{base}/slow?delay=0.3",
                f"{base}/slow?delay=0.4",
                f"{base}/whoami",
            ],
            seconds=20,
        )
        text = result.out.decode("utf-8", "replace")
        self.assertEqual(result.code, 0, text + result.err.decode("utf-8", "replace"))
        self.assertIn("The negotiated protocol: h2", text)
        sent = list(re.finditer(r"send HEADERS frame <[^>]*stream_id=(\d+)>", text))
        answered = re.findall(r"recv \(stream_id=(\d+)\) :status: (\d+)", text)
        self.assertEqual(len(sent), 3, text)
        self.assertEqual(
            sorted(answered), sorted((m.group(1), "200") for m in sent), text
        )
        firstAnswer = text.index("recv (stream_id=")
        self.assertLess(max(m.start() for m in sent), firstAnswer, text)
        self.assertEqual(text.count("Connected"), 1, text)


class HTTP2DisabledTests(_HTTP2TestCase):
    """
    With C{http2 = false}, ALPN offers only C{http/1.1}.
    """

    http2 = False

    async def test_get(self) -> None:
        """
        curl --http2 falls back to HTTP/1.1 and still gets the body.
        """
        output = self.path("whoami.out")
        result = await self.curl(
            "--verbose",
            "--output",
            output,
            "--write-out",
            "%{http_version} %{response_code}",
            self.url("/whoami"),
        )
        self.assertEqual(result.out, b"1.1 200", result)
        self.assertIn(b"ALPN: server accepted http/1.1", result.err)
        with open(output, "rb") as f:
            self.assertEqual(f.read(), whoamiBody("A"))


class HeaderTests(_TLSTestCase):
    """
    C{X-Forwarded-Proto} tells the upstream how the client came;
    C{Strict-Transport-Security} goes out over HTTPS only.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.authority = Authority()
        self.ca = self.authority.writeRoot(self.path("ca.pem"))
        await self.startProxy(
            [
                self.site(
                    "a",
                    ["a.test"],
                    "A",
                    self.authority.issue("a.test"),
                    hsts_max_age_secs=300,
                ),
                self.site("b", ["b.test"], "B", self.authority.issue("b.test")),
            ]
        )

    async def test_forwardedProto(self) -> None:
        """
        The upstream sees C{X-Forwarded-Proto: https} for a request over
        TLS and C{http} for one over plain HTTP, even when the client sent
        its own.
        """
        _, response = await self.fetch("a.test", self.ca, "/echo")
        self.assertEqual(response.code, 200, response.body)
        seen = json.loads(response.body)
        self.assertEqual(seen["headers"].get("x-forwarded-proto"), ["https"])
        response = await self.plainGet("/echo", "a.test")
        self.assertEqual(response.code, 200, response.body)
        seen = json.loads(response.body)
        self.assertEqual(seen["headers"].get("x-forwarded-proto"), ["http"])

    async def test_hsts(self) -> None:
        """
        A site with C{hsts_max_age_secs = 300} sends
        C{Strict-Transport-Security: max-age=300} over HTTPS, not over
        HTTP; a site without it never does.
        """
        _, response = await self.fetch("a.test", self.ca)
        self.assertWhoami(response, "A")
        self.assertEqual(
            response.header(b"strict-transport-security"), [b"max-age=300"]
        )
        response = await self.plainGet("/whoami", "a.test")
        self.assertWhoami(response, "A")
        self.assertEqual(response.header(b"strict-transport-security"), [])
        _, response = await self.fetch("b.test", self.ca)
        self.assertWhoami(response, "B")
        self.assertEqual(response.header(b"strict-transport-security"), [])


class RedirectTests(_TLSTestCase):
    """
    C{redirect_http = true} sends plain HTTP to HTTPS, except ACME
    challenges.
    """

    upstreamNames = ("A",)

    async def test_redirect(self) -> None:
        """
        C{GET /p?q=1} over plain HTTP is answered 308 with the https:// URL
        on the HTTPS listener's port, which serves it; a challenge path
        reaches the upstream.
        """
        challenges = Resource()
        challenges.putChild(b"acme-challenge", _Challenge())
        root = cast(Resource, self.upstreams["A"].site.resource)
        root.putChild(b".well-known", challenges)
        authority = Authority()
        ca = authority.writeRoot(self.path("ca.pem"))
        httpsPort = closedPort()
        await self.startProxy(
            [
                self.site(
                    "a",
                    ["a.test"],
                    "A",
                    authority.issue("a.test"),
                    redirect_http=True,
                )
            ],
            listen_https=[f"tcp:{httpsPort}:interface=127.0.0.1"],
        )
        self.assertEqual(self.httpsPort, httpsPort)
        response = await self.plainGet("/p?q=1", "a.test")
        self.assertEqual(response.code, 308, response.body)
        location = f"https://a.test:{httpsPort}/p?q=1"
        self.assertEqual(response.header(b"location"), [location.encode("ascii")])

        response = await self.plainGet("/.well-known/acme-challenge/x", "a.test")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.body, b"challenge x")

        # Where the redirect points is served.
        _, response = await self.fetch("a.test", ca, "/whoami?q=1")
        self.assertWhoami(response, "A")


class HTTPSUpstreamTests(_TLSTestCase):
    """
    Sites whose upstream is served over TLS (https://127.0.0.1:PORT, a
    certificate for that address from a private CA).
    """

    upstreamNames = ()

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        authority = Authority()
        authority.writeRoot(self.path("upstream-ca.pem"))
        self.upstream = TLSUpstream(
            self.reactor, "secure", authority.issue("127.0.0.1", "localhost")
        )
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        url = f"https://127.0.0.1:{self.upstream.port}"

        def site(name: str, **extra: object) -> dict[str, object]:
            return {
                "name": name,
                "hosts": [f"{name}.test"],
                "upstreams": [url],
                "connect_timeout_secs": 5,
                **extra,
            }

        await self.startProxy(
            [
                site("trusted", upstream_ca_file="upstream-ca.pem"),
                site("system"),
                site("unverified", upstream_tls_verify=False),
            ],
        )

    async def test_trustedCA(self) -> None:
        """
        With C{upstream_ca_file} naming the upstream's CA, the proxy
        verifies it and answers 200 with its body.
        """
        response = await self.plainGet("/whoami", "trusted.test")
        self.assertWhoami(response, "secure")

    async def test_systemTrust(self) -> None:
        """
        Without it, the system trust store does not know the CA: 502.
        """
        response = await self.plainGet("/whoami", "system.test")
        self.assertEqual(response.code, 502, response.body)
        self.assertNotIn("Traceback", self.proxy.output)

    async def test_unverified(self) -> None:
        """
        With C{upstream_tls_verify = false}, any certificate is accepted
        (200), and the proxy warned about it at start-up.
        """
        response = await self.plainGet("/whoami", "unverified.test")
        self.assertWhoami(response, "secure")
        self.assertIn("sites[2].upstream_tls_verify: false", self.proxy.output)
        self.assertIn("are not verified", self.proxy.output)
