"""
Tests for L{revproxy.hostnames}' host normalization and routing table, and
for L{revproxy.routing}'s L{Router} over HTTP and HTTPS (421 for a site
without a certificate, 308 redirects to HTTPS) on runtimes from
L{revproxy.runtime.buildRuntime}, whose own tests are in
L{tests.test_runtime}.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Network, IPv6Network
from typing import cast

import idna
import trustme
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme.challenges import ChallengeStore
from revproxy.config import parseConfig
from revproxy.hostnames import RoutingTable, normalizeHostHeader, normalizeServerName
from revproxy.proxy.exchange import Exchange
from revproxy.proxy.forwarder import Forwarder
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.responses import httpDate, simpleResponse
from revproxy.routing import Router, httpsLocation, newRequestID
from revproxy.runtime import Runtime, RuntimeHolder, SiteRoute, buildRuntime
from tests.tlshelpers import TLSTransport


@frozen
class FakeSite:
    """
    A site with just what routing reads.
    """

    name: str
    hosts: tuple[str, ...]
    default: bool = False


APP = FakeSite("app", ("example.com", "*.example.com"))
API = FakeSite("api", ("api.example.com",))
BOOKS = FakeSite("books", ("xn--bcher-kva.example",))
LOOPBACK = FakeSite("loopback", ("::1", "127.0.0.1"))
FALLBACK = FakeSite("fallback", ("fallback.example",), default=True)


class NormalizeHostHeaderTests(SynchronousTestCase):
    """
    Tests for L{normalizeHostHeader}.
    """

    def test_plain(self) -> None:
        """
        A lowercase name without a port is the name itself.
        """
        self.assertEqual(normalizeHostHeader(b"example.com"), "example.com")

    def test_portRemoved(self) -> None:
        """
        A port is removed, and an empty one is allowed.
        """
        self.assertEqual(normalizeHostHeader(b"example.com:8080"), "example.com")
        self.assertEqual(normalizeHostHeader(b"example.com:"), "example.com")

    def test_lowercased(self) -> None:
        """
        The name is lowercased.
        """
        self.assertEqual(normalizeHostHeader(b"WWW.Example.COM:443"), "www.example.com")

    def test_trailingDot(self) -> None:
        """
        One trailing dot is removed.
        """
        self.assertEqual(normalizeHostHeader(b"example.com."), "example.com")
        self.assertEqual(normalizeHostHeader(b"example.com.:80"), "example.com")

    def test_idn(self) -> None:
        """
        An internationalized name in UTF-8 becomes its A-labels, mapped by
        UTS 46.
        """
        for value in [
            "bücher.example".encode(),
            "BÜCHER.example.:8443".encode(),
            "bücher\u3002example".encode(),
        ]:
            self.assertEqual(normalizeHostHeader(value), "xn--bcher-kva.example")

    def test_aLabels(self) -> None:
        """
        Valid A-labels pass, in any case; bogus ones are refused.
        """
        self.assertEqual(
            normalizeHostHeader(b"XN--BCHER-KVA.example:80"), "xn--bcher-kva.example"
        )
        self.assertIsNone(normalizeHostHeader(b"xn--abc.example"))

    def test_ipv4(self) -> None:
        """
        An IPv4 literal, with or without a port, is kept.
        """
        self.assertEqual(normalizeHostHeader(b"127.0.0.1:8080"), "127.0.0.1")
        self.assertEqual(normalizeHostHeader(b"127.0.0.1"), "127.0.0.1")

    def test_ipv6(self) -> None:
        """
        An IPv6 literal loses its brackets and port and is compressed.
        """
        self.assertEqual(normalizeHostHeader(b"[::1]:8080"), "::1")
        self.assertEqual(normalizeHostHeader(b"[::1]"), "::1")
        self.assertEqual(
            normalizeHostHeader(b"[2001:DB8:0:0::0001]:443"), "2001:db8::1"
        )

    def test_invalid(self) -> None:
        """
        Values that are not a host are refused.
        """
        for value in [
            b"",
            b".",
            b":80",
            b"example.com:99999",
            b"example.com:123456",
            b"example.com:8o",
            b"example.com:80:80",
            b"exa mple.com",
            b" example.com",
            b"example..com",
            b"example.com..",
            b"-example.com",
            b"example-.com",
            b"exa/mple.com",
            b"user@example.com",
            b"a" * 64 + b".com",
            b"a." * 127 + b"a",
            b"::1",
            b"[::1",
            b"[::1]x",
            b"[::g]",
            b"[fe80::1%25eth0]",
            b"[v1.x]",
            b"[1.2.3.4]",
            b"b\xc3.example",
            "bücher.example:8x".encode(),
            "a\u200db.example".encode(),
            "bü cher.example".encode(),
            "bücher.example".encode() * 200,
        ]:
            self.assertIsNone(normalizeHostHeader(value), value)

    def test_longValueRefused(self) -> None:
        """
        A non-ASCII value too long for any host name is refused before IDNA
        maps it, even when the mapping would shorten it to a valid name.
        """
        self.assertEqual(normalizeHostHeader("b\u00ad.example".encode()), "b.example")
        self.assertIsNone(
            normalizeHostHeader(("b" + "\u00ad" * 600 + ".example").encode())
        )

    def test_longestName(self) -> None:
        """
        A name of 253 characters is allowed, and one longer is not.
        """
        name = b".".join([b"a" * 63] * 3 + [b"a" * 61])
        self.assertEqual(len(name), 253)
        self.assertEqual(normalizeHostHeader(name + b".:65535"), name.decode())
        self.assertIsNone(normalizeHostHeader(b"a" + name))

    @given(st.binary(max_size=40) | st.text(max_size=20).map(str.encode))
    def test_neverRaisesAndIdempotent(self, value: bytes) -> None:
        """
        Any bytes give a name or L{None}, never an exception, and a name
        normalizes to itself.
        """
        host = normalizeHostHeader(value)
        if host is not None:
            header = f"[{host}]" if ":" in host else host
            self.assertEqual(normalizeHostHeader(header.encode()), host)

    @given(
        st.lists(
            st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
            min_size=1,
            max_size=4,
        )
    )
    def test_asciiAgreesWithIDNA(self, labels: list[str]) -> None:
        """
        An ASCII name that IDNA accepts is normalized, without IDNA, to what
        IDNA makes of it.
        """
        name = ".".join(labels)
        try:
            expected = idna.encode(name, uts46=True).decode()
        except idna.IDNAError:
            return
        self.assertEqual(normalizeHostHeader(name.upper().encode()), expected)


class NormalizeServerNameTests(SynchronousTestCase):
    """
    Tests for L{normalizeServerName}.
    """

    def test_asHost(self) -> None:
        """
        An SNI name is normalized as a C{Host} is: lowercased, one trailing
        dot removed, A-labels checked.
        """
        for raw, name in [
            (b"a.example", "a.example"),
            (b"WWW.Example.COM", "www.example.com"),
            (b"a.example.", "a.example"),
            (b"XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ]:
            self.assertEqual(normalizeServerName(raw), name)

    def test_invalid(self) -> None:
        """
        A name that is not a valid host name becomes C{""}, which no site
        has: a port (SNI has none), an IP literal in brackets, spaces, a
        bogus A-label, nothing at all.
        """
        for raw in (
            b"a.example:443",
            b"[::1]",
            b"a example",
            b"xn--abc.example",
            b"",
            b"\xff.example",
        ):
            self.assertEqual(normalizeServerName(raw), "", raw)


class RoutingTableTests(SynchronousTestCase):
    """
    Tests for L{RoutingTable}.
    """

    def setUp(self) -> None:
        self.table = RoutingTable([APP, API, BOOKS, LOOPBACK])

    def test_sites(self) -> None:
        """
        L{RoutingTable.sites} are the sites in the order given.
        """
        self.assertEqual(self.table.sites, (APP, API, BOOKS, LOOPBACK))

    def test_exact(self) -> None:
        """
        A host is matched exactly.
        """
        self.assertIs(self.table.match("example.com"), APP)
        self.assertIs(self.table.lookupHeader(b"example.com"), APP)
        self.assertIs(self.table.lookupHeader(b"127.0.0.1:8080"), LOOPBACK)

    def test_caseInsensitive(self) -> None:
        """
        The header's case does not matter.
        """
        self.assertIs(self.table.lookupHeader(b"API.Example.Com"), API)

    def test_portIgnored(self) -> None:
        """
        The header's port does not matter.
        """
        self.assertIs(self.table.lookupHeader(b"api.example.com:8443"), API)

    def test_trailingDot(self) -> None:
        """
        A trailing dot in the header does not matter.
        """
        self.assertIs(self.table.lookupHeader(b"api.example.com."), API)

    def test_wildcardOneLabel(self) -> None:
        """
        C{*.example.com} matches names of exactly one more label.
        """
        self.assertIs(self.table.lookupHeader(b"www.example.com"), APP)
        self.assertIsNone(self.table.lookupHeader(b"a.b.example.com"))
        self.assertIsNone(self.table.lookupHeader(b"notexample.com"))
        self.assertIsNone(self.table.match(".example.com"))
        wildcardOnly = RoutingTable([FakeSite("w", ("*.example.com",))])
        self.assertIsNone(wildcardOnly.lookupHeader(b"example.com"))

    def test_exactBeatsWildcard(self) -> None:
        """
        An exact name wins over a wildcard that also matches, in any order.
        """
        self.assertIs(self.table.lookupHeader(b"api.example.com"), API)
        swapped = RoutingTable([API, APP])
        self.assertIs(swapped.lookupHeader(b"api.example.com"), API)

    def test_idn(self) -> None:
        """
        A UTF-8 internationalized header matches a site configured with its
        A-labels.
        """
        self.assertIs(self.table.lookupHeader("bücher.example".encode()), BOOKS)
        self.assertIs(self.table.lookupHeader(b"xn--bcher-kva.example"), BOOKS)

    def test_ipv6(self) -> None:
        """
        An IPv6 literal matches, with or without a port.
        """
        self.assertIs(self.table.lookupHeader(b"[::1]"), LOOPBACK)
        self.assertIs(self.table.lookupHeader(b"[::1]:8080"), LOOPBACK)
        self.assertIs(self.table.lookupHeader(b"[0:0::1]:8080"), LOOPBACK)

    def test_noMatchNoDefault(self) -> None:
        """
        Without a default site, an unknown, invalid or missing host matches
        nothing.
        """
        self.assertIsNone(self.table.lookupHeader(b"other.example"))
        self.assertIsNone(self.table.lookupHeader(b"bad host"))
        self.assertIsNone(self.table.lookupHeader(None))
        self.assertIsNone(self.table.match(None))

    def test_defaultFallback(self) -> None:
        """
        The default site gets unknown, invalid and missing hosts, and its own.
        """
        table = RoutingTable([APP, FALLBACK])
        self.assertIs(table.lookupHeader(b"example.com"), APP)
        self.assertIs(table.lookupHeader(b"fallback.example"), FALLBACK)
        self.assertIs(table.lookupHeader(b"other.example"), FALLBACK)
        self.assertIs(table.lookupHeader(b"bad host"), FALLBACK)
        self.assertIs(table.lookupHeader(None), FALLBACK)
        self.assertIs(table.match(None), FALLBACK)

    def test_cacheBounded(self) -> None:
        """
        The cache never holds more than 4096 answers, and answers stay right
        after it is emptied.
        """
        for index in range(5000):
            value = b"h%d.example.com" % (index,)
            self.assertIs(self.table.lookupHeader(value), APP)
            self.assertIn(value, self.table._cache)
            self.assertLessEqual(len(self.table._cache), 4096)
        self.assertGreater(len(self.table._cache), 0)
        self.assertIs(self.table.lookupHeader(b"api.example.com"), API)
        self.assertIs(self.table.lookupHeader(b"api.example.com"), API)
        self.assertIsNone(self.table.lookupHeader(b"a.b.example.com"))
        self.assertIsNone(self.table.lookupHeader(b"a.b.example.com"))

    def test_duplicateHost(self) -> None:
        """
        Two sites claiming one host are refused, naming both.
        """
        error = self.assertRaises(
            ValueError, RoutingTable, [APP, FakeSite("other", ("example.com",))]
        )
        self.assertIn("'app'", str(error))
        self.assertIn("'other'", str(error))

    def test_twoDefaults(self) -> None:
        """
        Two default sites are refused.
        """
        self.assertRaises(
            ValueError,
            RoutingTable,
            [FALLBACK, FakeSite("second", (), default=True)],
        )

    def test_badWildcard(self) -> None:
        """
        A C{*} anywhere but as a whole first label is refused.
        """
        for host in ["*", "*.", "a.*.example", "*example.com", "*.*.example"]:
            self.assertRaises(ValueError, RoutingTable, [FakeSite("w", (host,))])


_CA = trustme.CA()


def _writeCertificate(case: SynchronousTestCase, *names: str) -> str:
    """
    Write a certificate for C{names} and its key as C{cert.pem} and
    C{key.pem} in a new temporary directory of C{case}.

    @return: The directory.
    """
    directory: str = case.mktemp()
    os.mkdir(directory)
    leaf = _CA.issue_cert(*names)
    with open(os.path.join(directory, "cert.pem"), "wb") as f:
        f.write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    with open(os.path.join(directory, "key.pem"), "wb") as f:
        f.write(leaf.private_key_pem.bytes())
    return directory


_FILES = 'tls = "files"\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'

TLS_CONFIG = f"""
[server]
listen_http = ["tcp:8080"]
listen_https = ["tcp:8443:interface=127.0.0.1", "tcp:9443"]

[acme]
email = "ops@example.com"

[[sites]]
name = "secure"
hosts = ["secure.example", "bücher.example", "*.secure.example"]
upstreams = ["http://10.0.0.1:8000"]
{_FILES}redirect_http = true

[[sites]]
name = "numeric"
hosts = ["2001:db8::1", "192.0.2.1"]
upstreams = ["http://10.0.0.2:8000"]
{_FILES}redirect_http = true

[[sites]]
name = "wild"
hosts = ["*.wild.example", "wild.example"]
default = true
upstreams = ["http://10.0.0.3:8000"]
{_FILES}redirect_http = true

[[sites]]
name = "both"
hosts = ["both.example"]
upstreams = ["http://10.0.0.4:8000"]
{_FILES}
[[sites]]
name = "plain"
hosts = ["plain.example"]
upstreams = ["http://10.0.0.5:8000"]

[[sites]]
name = "pending"
hosts = ["pending.example"]
upstreams = ["http://10.0.0.6:8000"]
tls = "acme"
redirect_http = true
"""

_NAMES = (
    "secure.example",
    "xn--bcher-kva.example",
    "*.secure.example",
    "2001:db8::1",
    "192.0.2.1",
    "*.wild.example",
    "wild.example",
    "both.example",
)


class _RecordingForwarder:
    """
    Records what would be forwarded, and answers 200 at once.
    """

    trustedProxies: tuple[IPv4Network | IPv6Network, ...] = ()

    def __init__(self, clock: Clock | None = None) -> None:
        self.forwarded: list[tuple[str, bytes, bool]] = []
        self.clock = Clock() if clock is None else clock

    def forward(self, request: Exchange, route: SiteRoute, target: bytes) -> None:
        self.forwarded.append((route.name, target, request.isSecure()))
        simpleResponse(request, 200, "200 forwarded", httpDate(self.clock.seconds()))


@frozen
class _Response:
    code: int
    headers: dict[bytes, list[bytes]]
    body: bytes


class _RouterCase(SynchronousTestCase):
    """
    L{Router} on a real L{FrontEnd} connection with a recording
    forwarder, for C{configText}.
    """

    configText = TLS_CONFIG
    challenges: ChallengeStore | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = _writeCertificate(self, *_NAMES)
        self.forwarder = _RecordingForwarder()
        self.useConfig(self.configText)

    def useConfig(self, text: str) -> None:
        """
        Serve C{text} from now on.
        """
        self.runtime: Runtime = buildRuntime(
            parseConfig(text, baseDir=self.directory), self.clock
        )
        self.root = Router(
            RuntimeHolder(self.runtime),
            cast(Forwarder, self.forwarder),
            challenges=self.challenges,
        )
        self.site = FrontEnd(self.root, self.clock)

    def request(
        self, data: bytes, secure: bool = False, serverName: str | None = None
    ) -> _Response:
        """
        Send C{data} on a new connection (over TLS if C{secure}, whose SNI
        name, normalized, is C{serverName}) and parse the one response.
        """
        address = IPv4Address("TCP", "203.0.113.9", 40000)
        channel = cast(IProtocol, self.site.buildProtocol(address))
        factory = TLSTransport if secure else StringTransportWithDisconnection
        transport = factory(peerAddress=address)
        if serverName is not None:
            # What the TLS layer (tls.HandshakeDeadline) records once per
            # connection, as the site sees it through its transport.
            transport.serverName = serverName  # type: ignore[attr-defined]
        transport.protocol = channel
        channel.makeConnection(transport)

        def close() -> None:
            if transport.connected:
                transport.loseConnection()

        self.addCleanup(close)
        channel.dataReceived(data)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.lower(), []).append(value.strip())
        return _Response(int(lines[0].split()[1]), headers, body)

    def get(
        self,
        host: bytes | None,
        target: bytes = b"/",
        secure: bool = False,
        serverName: str | None = None,
    ) -> _Response:
        """
        A GET of C{target} with C{Host: host} (none if L{None}).
        """
        hostLine = b"Host: " + host + b"\r\n" if host is not None else b""
        return self.request(
            b"GET " + target + b" HTTP/1.1\r\n" + hostLine + b"\r\n",
            secure,
            serverName,
        )

    def assertRedirect(self, response: _Response, location: bytes) -> None:
        """
        C{response} is a 308 to C{location}, and nothing was forwarded.
        """
        self.assertEqual(response.code, 308)
        self.assertEqual(response.headers[b"location"], [location])
        self.assertEqual(response.body, b"308 Permanent Redirect: " + location + b"\n")
        self.assertEqual(response.headers[b"cache-control"], [b"no-store"])
        self.assertEqual(self.forwarder.forwarded, [])


class HTTPSRoutingTests(_RouterCase):
    """
    L{Router} over HTTPS and over plain HTTP.
    """

    def test_httpsWithoutCertificateMisdirected(self) -> None:
        """
        Over HTTPS, a site without a certificate (C{tls = "none"}) answers
        421 and nothing is forwarded.
        """
        response = self.get(b"plain.example", secure=True)
        self.assertEqual(response.code, 421)
        self.assertEqual(
            response.body,
            b"421 Misdirected Request: this site is not served over HTTPS\n",
        )
        self.assertEqual(self.forwarder.forwarded, [])

    def test_httpsForwarded(self) -> None:
        """
        Over HTTPS, a secured site is forwarded, as a secure request, with
        or without C{redirect_http}.
        """
        self.assertEqual(self.get(b"secure.example", b"/a?b", secure=True).code, 200)
        self.assertEqual(self.get(b"both.example", secure=True).code, 200)
        self.assertEqual(
            self.forwarder.forwarded,
            [("secure", b"/a?b", True), ("both", b"/", True)],
        )

    def test_httpRedirected(self) -> None:
        """
        Over HTTP, a secured site with C{redirect_http} answers 308 to the
        same path and query on the first HTTPS port.
        """
        self.assertRedirect(
            self.get(b"secure.example", b"/path/x?q=1&r=%20"),
            b"https://secure.example:8443/path/x?q=1&r=%20",
        )
        # An ACME site is not redirected to a self-signed placeholder: only
        # once its certificate is issued.
        self.get(b"pending.example", b"/x")
        self.assertEqual(self.forwarder.forwarded[-1], ("pending", b"/x", False))
        issued: list[str] = []
        self.root.issued = lambda name: name in issued
        self.get(b"pending.example", b"/y")
        self.assertEqual(self.forwarder.forwarded[-1], ("pending", b"/y", False))
        issued.append("pending")
        del self.forwarder.forwarded[:]
        self.assertRedirect(
            self.get(b"pending.example", b"/x"), b"https://pending.example:8443/x"
        )

    def test_redirectAnyMethod(self) -> None:
        """
        A POST is redirected too, with a 308 so that it stays a POST.
        """
        response = self.request(
            b"POST /form HTTP/1.1\r\nHost: secure.example\r\n"
            b"Content-Length: 3\r\n\r\na=1"
        )
        self.assertRedirect(response, b"https://secure.example:8443/form")

    def test_redirectHostNormalized(self) -> None:
        """
        The redirect names the host as routed: lowercased, without the
        request's port or trailing dot, IDN as A-labels, a wildcard match
        as requested.
        """
        for host, location in [
            (b"SECURE.Example.:8080", b"https://secure.example:8443/"),
            ("bücher.example".encode(), b"https://xn--bcher-kva.example:8443/"),
            (b"www.secure.example", b"https://www.secure.example:8443/"),
        ]:
            self.assertRedirect(self.get(host), location)

    def test_redirectIPAddress(self) -> None:
        """
        An IPv6 host is bracketed in the redirect; an IPv4 one is not.
        """
        self.assertRedirect(
            self.get(b"[2001:DB8:0::1]:8080", b"/x"), b"https://[2001:db8::1]:8443/x"
        )
        self.assertRedirect(self.get(b"192.0.2.1", b"/x"), b"https://192.0.2.1:8443/x")

    def test_redirectWithoutHost(self) -> None:
        """
        An HTTP/1.0 request without C{Host}, routed to the default site, is
        redirected to the site's first host that is not a wildcard.
        """
        response = self.request(b"GET /old HTTP/1.0\r\n\r\n")
        self.assertRedirect(response, b"https://wild.example:8443/old")

    def test_redirectAbsoluteForm(self) -> None:
        """
        An absolute-form target is redirected by its authority, with its
        path and query.
        """
        self.assertRedirect(
            self.request(
                b"GET http://Secure.Example:80/x?y HTTP/1.1\r\nHost: other\r\n\r\n"
            ),
            b"https://secure.example:8443/x?y",
        )

    def test_acmeChallengeForwarded(self) -> None:
        """
        Over HTTP, an ACME HTTP-01 challenge of a redirecting site is
        forwarded, not redirected; other C{/.well-known/} paths are.
        """
        target = b"/.well-known/acme-challenge/abc-123"
        self.assertEqual(self.get(b"secure.example", target).code, 200)
        self.assertEqual(self.forwarder.forwarded, [("secure", target, False)])
        self.forwarder.forwarded.clear()
        for other in (b"/.well-known/acme-challenge", b"/.well-known/other/x"):
            self.assertRedirect(
                self.get(b"secure.example", other),
                b"https://secure.example:8443" + other,
            )

    def test_httpNotRedirected(self) -> None:
        """
        Over HTTP, a site is forwarded when it has no C{redirect_http} or
        no HTTPS at all.
        """
        for host in (b"both.example", b"plain.example"):
            self.assertEqual(self.get(host).code, 200)
        self.assertEqual(
            [name for name, _, _ in self.forwarder.forwarded], ["both", "plain"]
        )
        self.assertFalse(any(secure for _, _, secure in self.forwarder.forwarded))

    def test_asteriskFormNotRedirected(self) -> None:
        """
        C{OPTIONS *} has no path to redirect to, so it is forwarded.
        """
        response = self.request(b"OPTIONS * HTTP/1.1\r\nHost: secure.example\r\n\r\n")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.forwarder.forwarded, [("secure", b"*", False)])


class HTTPSDefaultPortRoutingTests(HTTPSRoutingTests):
    """
    The same, with HTTPS on port 443, which redirects leave out.
    """

    configText = TLS_CONFIG.replace(
        '"tcp:8443:interface=127.0.0.1", "tcp:9443"', '"tcp:443"'
    )

    def assertRedirect(self, response: _Response, location: bytes) -> None:
        super().assertRedirect(response, location.replace(b":8443/", b"/"))

    def test_portLeftOut(self) -> None:
        """
        The redirect has no port.
        """
        response = self.get(b"secure.example", b"/x")
        self.assertEqual(response.headers[b"location"], [b"https://secure.example/x"])


#: The site "secure" with strict_sni_host = false.
_LENIENT_CONFIG = TLS_CONFIG.replace(
    'redirect_http = true\n\n[[sites]]\nname = "numeric"',
    'redirect_http = true\nstrict_sni_host = false\n\n[[sites]]\nname = "numeric"',
)

_MISDIRECTED_BY_SNI = (
    b"421 Misdirected Request: this host is not served on a connection for "
    b"that TLS server name (SNI)\n"
)


class StrictSNIHostTests(_RouterCase):
    """
    Over HTTPS, a request whose C{Host} belongs to another site than its
    connection's SNI name is answered 421 when its site has
    C{strict_sni_host} (the default with TLS).
    """

    def assertMisdirected(self, response: _Response, site: str = "") -> None:
        """
        C{response} is the 421 of a host/SNI mismatch; nothing was forwarded.
        """
        self.assertEqual(response.code, 421)
        self.assertEqual(response.body, _MISDIRECTED_BY_SNI)
        self.assertEqual(self.forwarder.forwarded, [])

    def test_otherSiteMisdirected(self) -> None:
        """
        SNI C{both.example} with C{Host: secure.example} is answered 421,
        and the other way round too.
        """
        self.assertMisdirected(
            self.get(b"secure.example", secure=True, serverName="both.example")
        )
        self.assertMisdirected(
            self.get(b"both.example", secure=True, serverName="secure.example")
        )

    def test_sameSiteForwarded(self) -> None:
        """
        An SNI name of the same site passes: the same name, another of the
        site's names, a name its wildcard covers, the A-labels of an IDN
        C{Host}, a C{Host} with a port or in another case.
        """
        for host, serverName in [
            (b"secure.example", "secure.example"),
            (b"secure.example", "www.secure.example"),
            (b"a.secure.example", "secure.example"),
            ("bücher.example".encode(), "xn--bcher-kva.example"),
            (b"SECURE.Example.:8443", "secure.example"),
        ]:
            response = self.get(host, secure=True, serverName=serverName)
            self.assertEqual(response.code, 200, (host, serverName))
        self.assertEqual(len(self.forwarder.forwarded), 5)

    def test_noSNIUnaffected(self) -> None:
        """
        A connection without SNI (the client connected to an IP literal)
        reaches every site by its C{Host}.
        """
        for host in (b"secure.example", b"both.example", b"192.0.2.1"):
            self.assertEqual(self.get(host, secure=True).code, 200, host)

    def test_unknownNameIsTheDefaultSite(self) -> None:
        """
        An SNI name no site claims belongs to the default site, as its
        certificate did: a C{Host} of the default site passes, another
        site's is misdirected.  So does an invalid name (recorded as
        C{""}).
        """
        for serverName in ("unknown.example", ""):
            self.assertEqual(
                self.get(b"wild.example", secure=True, serverName=serverName).code,
                200,
            )
            self.assertEqual(
                self.get(b"a.wild.example", secure=True, serverName=serverName).code,
                200,
            )
        self.forwarder.forwarded.clear()
        self.assertMisdirected(
            self.get(b"secure.example", secure=True, serverName="unknown.example")
        )

    def test_nameOfNoSite(self) -> None:
        """
        Without a default site, an SNI name no site claims (a site a reload
        removed) misdirects every strict site.
        """
        self.useConfig(_NO_DEFAULT_CONFIG)
        self.assertMisdirected(
            self.get(b"secure.example", secure=True, serverName="gone.example")
        )

    def test_notStrict(self) -> None:
        """
        A site with C{strict_sni_host = false} is served whatever the SNI
        name; a strict site is still protected from its connections.
        """
        self.useConfig(_LENIENT_CONFIG)
        self.assertEqual(
            self.get(b"secure.example", secure=True, serverName="both.example").code,
            200,
        )
        self.assertEqual(self.forwarder.forwarded, [("secure", b"/", True)])
        self.forwarder.forwarded.clear()
        self.assertMisdirected(
            self.get(b"both.example", secure=True, serverName="secure.example")
        )

    def test_plainHTTPUnaffected(self) -> None:
        """
        Over plain HTTP there is no SNI; nothing changes.
        """
        self.assertEqual(self.get(b"both.example").code, 200)


_TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
_KEY_AUTHORIZATION = _TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
_CHALLENGE = b"/.well-known/acme-challenge/"
_TARGET = _CHALLENGE + _TOKEN.encode()
#: No default site: a request for an unknown host is misdirected.
_NO_DEFAULT_CONFIG = TLS_CONFIG.replace("default = true\n", "")


class HTTP01Tests(_RouterCase):
    """
    ACME http-01 challenges answered by L{Router} itself.
    """

    def setUp(self) -> None:
        self.store = ChallengeStore(Clock())
        self.store.addHTTP01(_TOKEN, _KEY_AUTHORIZATION)
        self.challenges = self.store
        super().setUp()

    def assertAnswered(self, response: _Response, head: bool = False) -> None:
        """
        C{response} is the key authorization (without the body if C{head}),
        and nothing was forwarded.
        """
        self.assertEqual(
            (response.code, response.body),
            (200, b"" if head else _KEY_AUTHORIZATION.encode()),
        )
        self.assertEqual(
            response.headers[b"content-type"], [b"application/octet-stream"]
        )
        self.assertEqual(
            response.headers[b"content-length"], [b"%d" % len(_KEY_AUTHORIZATION)]
        )
        self.assertEqual(response.headers[b"cache-control"], [b"no-store"])
        self.assertEqual(response.headers[b"date"], [b"Thu, 01 Jan 1970 00:00:00 GMT"])
        self.assertNotIn(b"location", response.headers)
        self.assertEqual(self.forwarder.forwarded, [])

    def test_answered(self) -> None:
        """
        A GET of a pending token is answered with its key authorization
        as C{application/octet-stream}, on a site that redirects HTTP to
        HTTPS too (no 308).
        """
        self.assertAnswered(self.get(b"secure.example", _TARGET))

    def test_anyHost(self) -> None:
        """
        A pending token is answered for a host no site has, even without a
        default site, without C{Host} over HTTP/1.0, and in absolute form.
        """
        self.useConfig(_NO_DEFAULT_CONFIG)
        self.assertAnswered(self.get(b"new.example", _TARGET))
        self.assertAnswered(self.request(b"GET " + _TARGET + b" HTTP/1.0\r\n\r\n"))
        self.assertAnswered(
            self.request(
                b"GET http://new.example" + _TARGET + b" HTTP/1.1\r\n"
                b"Host: new.example\r\n\r\n"
            )
        )

    def test_overHTTPS(self) -> None:
        """
        Over HTTPS the token is answered too, even for a site not served
        over HTTPS (which would answer 421).
        """
        self.assertAnswered(self.get(b"secure.example", _TARGET, secure=True))
        self.assertAnswered(self.get(b"plain.example", _TARGET, secure=True))

    def test_head(self) -> None:
        """
        A HEAD of a pending token has the GET's headers and no body.
        """
        self.assertAnswered(
            self.request(b"HEAD " + _TARGET + b" HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            head=True,
        )

    def test_unknownTokenRoutedAsBefore(self) -> None:
        """
        A token that is not pending is forwarded to the host's site (not
        redirected), or misdirected when no site has the host.
        """
        other = _CHALLENGE + b"someOtherToken"
        self.assertEqual(self.get(b"secure.example", other).code, 200)
        self.assertEqual(self.forwarder.forwarded, [("secure", other, False)])
        self.useConfig(_NO_DEFAULT_CONFIG)
        response = self.get(b"new.example", other)
        self.assertEqual(response.code, 421)
        self.assertEqual(len(self.forwarder.forwarded), 1)

    def test_onlyTheExactTarget(self) -> None:
        """
        A target that is not exactly the challenge path of a pending token
        (a query, a trailing slash, a percent escape, another case, a
        prefix of the token, the token with more after it) is forwarded.
        """
        targets = [
            _TARGET + b"?x=1",
            _TARGET + b"/",
            _TARGET[:-1] + b"%%%02X" % _TARGET[-1],
            _CHALLENGE + _TOKEN.lower().encode(),
            _TARGET[:-1],
            _TARGET + b"A",
            _CHALLENGE,
            _CHALLENGE + b"/" + _TOKEN.encode(),
        ]
        for target in targets:
            response = self.get(b"secure.example", target)
            self.assertEqual(response.body, b"200 forwarded\n", target)
        self.assertEqual(
            self.forwarder.forwarded, [("secure", t, False) for t in targets]
        )

    def test_invalidTokenNeverAnswered(self) -> None:
        """
        A token with characters outside the base64url alphabet cannot be
        made pending, so its path is forwarded.
        """
        for token in ("a.b", "abc=", "a%2Fb"):
            self.assertRaises(ValueError, self.store.addHTTP01, token, "x.y")
            target = _CHALLENGE + token.encode()
            self.assertEqual(self.get(b"secure.example", target).code, 200)
            self.assertEqual(self.forwarder.forwarded[-1], ("secure", target, False))

    def test_otherMethodsForwarded(self) -> None:
        """
        Only GET and HEAD are answered; a POST or a PUT of the path is
        forwarded.
        """
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            response = self.request(
                method + b" " + _TARGET + b" HTTP/1.1\r\nHost: secure.example\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )
            self.assertEqual(response.body, b"200 forwarded\n")
        self.assertEqual(self.forwarder.forwarded, [("secure", _TARGET, False)] * 4)

    def test_removedOrNoStore(self) -> None:
        """
        A removed token is forwarded again, as every token is without a
        store; a store assigned after construction is used.
        """
        self.store.removeHTTP01(_TOKEN)
        self.assertEqual(self.get(b"secure.example", _TARGET).code, 200)
        self.store.addHTTP01(_TOKEN, _KEY_AUTHORIZATION)
        self.root.challenges = None
        self.assertEqual(self.get(b"secure.example", _TARGET).code, 200)
        self.assertEqual(self.forwarder.forwarded, [("secure", _TARGET, False)] * 2)
        self.forwarder.forwarded.clear()
        self.root.challenges = self.store
        self.assertAnswered(self.get(b"secure.example", _TARGET))


class HTTPSLocationTests(SynchronousTestCase):
    """
    Tests for L{httpsLocation}.
    """

    def test_defaultPort(self) -> None:
        """
        Port 443 is left out.
        """
        self.assertEqual(
            httpsLocation("example.com", 443, b"/a?b=c"), b"https://example.com/a?b=c"
        )

    def test_otherPort(self) -> None:
        """
        Another port is kept.
        """
        self.assertEqual(
            httpsLocation("example.com", 8443, b"/"), b"https://example.com:8443/"
        )

    def test_ipv6(self) -> None:
        """
        An IPv6 address is bracketed, with or without a port.
        """
        self.assertEqual(httpsLocation("::1", 443, b"/x"), b"https://[::1]/x")
        self.assertEqual(
            httpsLocation("2001:db8::1", 8443, b"/x"), b"https://[2001:db8::1]:8443/x"
        )

    def test_targetAsReceived(self) -> None:
        """
        The target is appended as received, escapes and all.
        """
        self.assertEqual(
            httpsLocation("a.test", 443, b"/%7Euser/?q=%2F&x"),
            b"https://a.test/%7Euser/?q=%2F&x",
        )


def _snapshotConfig(site: str, maxBody: int) -> str:
    """
    A config whose one site C{site} takes C{app.example}, with a body limit
    of C{maxBody} bytes.
    """
    return (
        "[server]\nlisten_https = []\n"
        f'[[sites]]\nname = "{site}"\nhosts = ["app.example"]\n'
        f'upstreams = ["http://10.0.0.1:80"]\nmax_body_bytes = {maxBody}\n'
    )


class _HoldingForwarder:
    """
    Records what would be forwarded, with the body limit and generation the
    request was given, and answers only when told.
    """

    trustedProxies: tuple[IPv4Network | IPv6Network, ...] = ()

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.forwarded: list[tuple[str, int | None, int]] = []
        self.held: list[Exchange] = []

    def forward(self, request: Exchange, route: SiteRoute, target: bytes) -> None:
        self.forwarded.append((route.name, request.bodyLimit, request.generation))
        self.held.append(request)


class SnapshotTests(SynchronousTestCase):
    """
    A request is answered by the runtime it came in under: the front end
    takes the snapshot when the request's head is read, and its route and
    its body limit both come from it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.holder = RuntimeHolder(
            buildRuntime(parseConfig(_snapshotConfig("old", 1000)), self.clock)
        )
        self.forwarder = _HoldingForwarder(self.clock)
        root = Router(self.holder, cast(Forwarder, self.forwarder))
        self.site = FrontEnd(root, self.clock, snapshot=root.snapshot)
        address = IPv4Address("TCP", "203.0.113.9", 40000)
        self.channel = cast(IProtocol, self.site.buildProtocol(address))
        self.transport = StringTransportWithDisconnection(peerAddress=address)
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.transport.loseConnection)

    def reload(self) -> None:
        """
        Swap in the next generation: the host belongs to site C{new} now,
        whose body limit is 10 bytes.
        """
        self.holder.current = buildRuntime(
            parseConfig(_snapshotConfig("new", 10)),
            self.clock,
            previous=self.holder.current,
        )

    def test_bodyAcrossReload(self) -> None:
        """
        A pipelined upload whose head was read before a reload, and whose
        body comes and is handled after it, is routed and limited by the
        generation its head came under: the same one for both.
        """
        self.channel.dataReceived(
            b"GET /first HTTP/1.1\r\nHost: app.example\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: app.example\r\n"
            b"Content-Length: 20\r\n\r\n0123456789"
        )
        self.assertEqual(self.forwarder.forwarded, [("old", None, 1)])
        self.reload()
        self.channel.dataReceived(b"0123456789")
        first = self.forwarder.held[0]
        simpleResponse(first, 200, "200 forwarded", httpDate(self.clock.seconds()))
        self.assertEqual(self.forwarder.forwarded, [("old", None, 1), ("old", 1000, 1)])
        self.assertNotIn(b" 413 ", self.transport.value())

    def test_newRequestAfterReload(self) -> None:
        """
        A request whose head is read after a reload is answered by the new
        generation.
        """
        self.reload()
        self.channel.dataReceived(
            b"POST /upload HTTP/1.1\r\nHost: app.example\r\n"
            b"Content-Length: 20\r\n\r\n0123456789"
        )
        self.assertEqual(self.forwarder.forwarded, [])
        self.assertIn(b"HTTP/1.1 413 ", self.transport.value())


class RequestIDTests(SynchronousTestCase):
    """
    Tests for L{newRequestID}.
    """

    def test_randomHex(self) -> None:
        """
        A request id is 32 lower-case hex digits, and two ids differ.
        """
        first, second = newRequestID(), newRequestID()
        self.assertRegex(first, "^[0-9a-f]{32}$")
        self.assertNotEqual(first, second)
