"""
Tests for L{revproxy.proxy.headers}.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from revproxy.proxy.headers import (
    FORWARDING_HEADERS,
    HAS_DATE,
    HAS_HSTS,
    HAS_REQUEST_ID,
    HOP_BY_HOP,
    Headers,
    clientAddress,
    clientResponseHeaders,
    hopByHopNames,
    isHopByHop,
    isTrusted,
    relayResponseHeaders,
    upstreamRequestHeaders,
)

TRUSTED: list[IPv4Network | IPv6Network] = [
    ip_network("10.0.0.0/8"),
    ip_network("2001:db8:ffff::/48"),
]


def upstream(
    headers: Headers,
    *,
    clientIP: str = "203.0.113.7",
    peerTrusted: bool = False,
    scheme: bytes = b"https",
    host: bytes | None = b"example.com",
    bodyLength: int | None = None,
    requestID: bytes | None = None,
) -> Headers:
    """
    Call L{upstreamRequestHeaders} with defaults for what a test ignores.
    """
    return upstreamRequestHeaders(
        headers,
        clientIP=clientIP,
        peerTrusted=peerTrusted,
        scheme=scheme,
        host=host,
        bodyLength=bodyLength,
        requestID=requestID,
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    """
    The values of every header called C{name}, in any case, in order.
    """
    return [value for key, value in headers if key.lower() == name.lower()]


class HopByHopNamesTests(SynchronousTestCase):
    """
    Tests for L{hopByHopNames} and L{isHopByHop}.
    """

    def test_withoutConnection(self) -> None:
        """
        Without a C{Connection} header the names are those of L{HOP_BY_HOP}.
        """
        self.assertEqual(hopByHopNames([(b"Accept", b"*/*")]), HOP_BY_HOP)

    def test_connectionTokens(self) -> None:
        """
        Every token of every C{Connection} header is added, trimmed and
        lowercased, and empty list elements are ignored.
        """
        names = hopByHopNames(
            [
                (b"Connection", b"close, X-Foo ,"),
                (b"CONNECTION", b" keep-alive,X-Bar"),
            ]
        )
        self.assertEqual(names, HOP_BY_HOP | {b"close", b"x-foo", b"x-bar"})

    def test_proxyPrefix(self) -> None:
        """
        Every name that starts with C{proxy-} is hop-by-hop, others are not.
        """
        self.assertTrue(isHopByHop(b"proxy-authorization"))
        self.assertTrue(isHopByHop(b"te"))
        self.assertFalse(isHopByHop(b"x-proxy-id"))


class UpstreamRequestHeadersTests(SynchronousTestCase):
    """
    Tests for L{upstreamRequestHeaders}.
    """

    def test_dropsHopByHop(self) -> None:
        """
        Hop-by-hop headers, C{proxy-*} headers and C{TE} are not sent
        upstream; end-to-end ones are, in order.
        """
        result = upstream(
            [
                (b"Accept", b"*/*"),
                (b"Connection", b"keep-alive"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Proxy-Authorization", b"Basic eA=="),
                (b"Proxy-Connection", b"keep-alive"),
                (b"TE", b"trailers"),
                (b"Trailer", b"X-Sum"),
                (b"Upgrade", b"websocket"),
                (b"Cookie", b"a=1"),
            ]
        )
        self.assertEqual(
            result[:2],
            [(b"Accept", b"*/*"), (b"Cookie", b"a=1")],
        )
        self.assertEqual(
            [name for name, _ in result[2:]],
            [b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Via"],
        )

    def test_dropsConnectionListed(self) -> None:
        """
        A header that C{Connection} lists is dropped, in any case.
        """
        result = upstream(
            [
                (b"Connection", b"close, X-Foo"),
                (b"x-foo", b"secret"),
                (b"X-Bar", b"kept"),
            ]
        )
        self.assertEqual(values(result, b"x-foo"), [])
        self.assertEqual(values(result, b"connection"), [])
        self.assertEqual(values(result, b"x-bar"), [b"kept"])

    def test_underscoresDropped(self) -> None:
        """
        A header whose name has an underscore is dropped (nginx's
        C{underscores_in_headers off}): to CGI and WSGI, C{X_Forwarded_For}
        is C{X-Forwarded-For}.
        """
        result = upstream(
            [
                (b"X_Forwarded_For", b"1.2.3.4"),
                (b"X-Real_IP", b"1.2.3.4"),
                (b"_", b"x"),
                (b"X-Kept", b"yes"),
            ],
            peerTrusted=True,
        )
        self.assertEqual([n for n, _ in result if b"_" in n], [])
        self.assertEqual(values(result, b"x-kept"), [b"yes"])

    def test_addedHeadersNotStrippable(self) -> None:
        """
        C{Connection} cannot strip what revproxy adds: the request id, the
        C{X-Forwarded-*} headers, C{Via} and C{Content-Length}.
        """
        result = upstream(
            [
                (
                    b"Connection",
                    b"x-request-id, X-Forwarded-For, x-forwarded-proto, "
                    b"x-forwarded-host, via, content-length",
                ),
                (b"X-Request-ID", b"forged"),
            ],
            bodyLength=3,
            requestID=b"0123456789abcdef",
        )
        self.assertEqual(values(result, b"x-request-id"), [b"0123456789abcdef"])
        self.assertEqual(values(result, b"x-forwarded-for"), [b"203.0.113.7"])
        self.assertEqual(values(result, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(result, b"x-forwarded-host"), [b"example.com"])
        self.assertEqual(values(result, b"via"), [b"1.1 revproxy"])
        self.assertEqual(values(result, b"content-length"), [b"3"])

    def test_requestIDOnce(self) -> None:
        """
        Every incoming C{X-Request-ID} is replaced by C{requestID}, sent
        once, last; without one, none is sent.
        """
        incoming = [(b"X-Request-ID", b"a"), (b"x-request-id", b"b")]
        result = upstream(incoming, requestID=b"kept")
        self.assertEqual(values(result, b"x-request-id"), [b"kept"])
        self.assertEqual(result[-1], (b"X-Request-ID", b"kept"))
        self.assertEqual(values(upstream(incoming), b"x-request-id"), [])

    def test_forwardingHeadersOnlyFromTrusted(self) -> None:
        """
        The headers that tell an application who the client is or how it
        connected pass from a trusted peer and are dropped from any other.
        """
        names = [
            b"X-Forwarded-Port",
            b"X-Forwarded-Prefix",
            b"X-Forwarded-Ssl",
            b"X-Forwarded-Scheme",
            b"X-Forwarded-Server",
            b"True-Client-IP",
            b"X-Client-IP",
            b"CF-Connecting-IP",
            b"Forwarded",
            b"X-Real-IP",
        ]
        incoming = [(name, b"forged") for name in names]
        untrusted = upstream(incoming)
        for name in names:
            self.assertEqual(values(untrusted, name), [], name)
        trusted = upstream(incoming, peerTrusted=True)
        for name in names:
            self.assertEqual(values(trusted, name), [b"forged"], name)

    def test_hostFirstAndNeverDropped(self) -> None:
        """
        C{Host} is kept as it is and moved to the front, even when
        C{Connection} lists it.
        """
        result = upstream(
            [
                (b"Accept", b"*/*"),
                (b"Connection", b"Host"),
                (b"HOST", b"Example.COM:8443"),
            ]
        )
        self.assertEqual(result[0], (b"HOST", b"Example.COM:8443"))
        self.assertEqual(result[1], (b"Accept", b"*/*"))

    def test_expectDropped(self) -> None:
        """
        C{Expect} is not sent upstream.
        """
        result = upstream([(b"Expect", b"100-continue")], bodyLength=5)
        self.assertEqual(values(result, b"expect"), [])

    def test_contentLengthReplaced(self) -> None:
        """
        Incoming C{Content-Length} and C{Transfer-Encoding} headers give way to
        exactly one C{Content-Length} of C{bodyLength}.
        """
        result = upstream(
            [
                (b"Content-Length", b"10"),
                (b"Transfer-Encoding", b"chunked"),
                (b"content-length", b"12"),
            ],
            bodyLength=42,
        )
        self.assertEqual(values(result, b"content-length"), [b"42"])
        self.assertEqual(result[-1], (b"Content-Length", b"42"))
        self.assertEqual(values(result, b"transfer-encoding"), [])

    def test_zeroLengthBody(self) -> None:
        """
        A C{bodyLength} of zero is sent as C{Content-Length: 0}.
        """
        self.assertEqual(values(upstream([], bodyLength=0), b"content-length"), [b"0"])

    def test_noBodyNoLength(self) -> None:
        """
        Without a body, no C{Content-Length} or C{Transfer-Encoding} is sent.
        """
        result = upstream(
            [(b"Content-Length", b"10"), (b"Transfer-Encoding", b"chunked")]
        )
        self.assertEqual(values(result, b"content-length"), [])
        self.assertEqual(values(result, b"transfer-encoding"), [])

    def test_untrustedStartsFresh(self) -> None:
        """
        From an untrusted peer, incoming C{X-Forwarded-*}, C{Forwarded} and
        C{X-Real-IP} headers are dropped and the C{X-Forwarded-*} headers
        describe this hop alone.
        """
        result = upstream(
            [
                (b"X-Forwarded-For", b"1.2.3.4"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"evil.example"),
                (b"Forwarded", b"for=1.2.3.4"),
                (b"X-Real-IP", b"1.2.3.4"),
            ],
            clientIP="203.0.113.7",
            scheme=b"https",
            host=b"example.com",
        )
        self.assertEqual(
            result,
            [
                (b"X-Forwarded-For", b"203.0.113.7"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"example.com"),
                (b"Via", b"1.1 revproxy"),
            ],
        )

    def test_trustedAppends(self) -> None:
        """
        From a trusted peer, every incoming C{X-Forwarded-For} is joined in
        order and the peer appended; the incoming C{X-Forwarded-Proto} and
        C{X-Forwarded-Host} win; C{Forwarded} and C{X-Real-IP} pass through.
        """
        result = upstream(
            [
                (b"X-Forwarded-For", b"198.51.100.1, 10.0.0.2"),
                (b"Forwarded", b"for=198.51.100.1"),
                (b"x-forwarded-for", b"10.0.0.3"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"public.example"),
                (b"X-Real-IP", b"198.51.100.1"),
            ],
            clientIP="10.0.0.4",
            peerTrusted=True,
            scheme=b"http",
            host=b"internal.example",
        )
        self.assertEqual(
            result,
            [
                (b"Forwarded", b"for=198.51.100.1"),
                (b"X-Real-IP", b"198.51.100.1"),
                (b"X-Forwarded-For", b"198.51.100.1, 10.0.0.2, 10.0.0.3, 10.0.0.4"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"public.example"),
                (b"Via", b"1.1 revproxy"),
            ],
        )

    def test_trustedFirstProtoAndHostWin(self) -> None:
        """
        From a trusted peer, the first of several C{X-Forwarded-Proto} and
        C{X-Forwarded-Host} headers is sent, alone.
        """
        result = upstream(
            [
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"first.example"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"second.example"),
            ],
            peerTrusted=True,
        )
        self.assertEqual(values(result, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(result, b"x-forwarded-host"), [b"first.example"])

    def test_trustedWithoutIncoming(self) -> None:
        """
        From a trusted peer that sent no C{X-Forwarded-*}, they are generated
        as for an untrusted one.
        """
        result = upstream(
            [], clientIP="10.0.0.4", peerTrusted=True, scheme=b"http", host=b"h"
        )
        self.assertEqual(values(result, b"x-forwarded-for"), [b"10.0.0.4"])
        self.assertEqual(values(result, b"x-forwarded-proto"), [b"http"])
        self.assertEqual(values(result, b"x-forwarded-host"), [b"h"])

    def test_noHostNoForwardedHost(self) -> None:
        """
        Without a C{Host}, no C{X-Forwarded-Host} is sent.
        """
        self.assertEqual(values(upstream([], host=None), b"x-forwarded-host"), [])

    def test_viaAppended(self) -> None:
        """
        C{1.1 revproxy} is appended to the last incoming C{Via} in its place,
        and earlier ones are kept.
        """
        result = upstream(
            [
                (b"Via", b"1.0 first"),
                (b"Accept", b"*/*"),
                (b"via", b"1.1 second"),
                (b"Cookie", b"a=1"),
            ]
        )
        self.assertEqual(
            result[:4],
            [
                (b"Via", b"1.0 first"),
                (b"Accept", b"*/*"),
                (b"via", b"1.1 second, 1.1 revproxy"),
                (b"Cookie", b"a=1"),
            ],
        )
        self.assertEqual(len(values(result, b"via")), 2)

    def test_viaAppendedAfterHostMoved(self) -> None:
        """
        Moving C{Host} to the front does not misplace the C{Via} appended to.
        """
        result = upstream(
            [(b"Accept", b"*/*"), (b"Via", b"1.0 first"), (b"Host", b"h")]
        )
        self.assertEqual(
            result[:3],
            [
                (b"Host", b"h"),
                (b"Accept", b"*/*"),
                (b"Via", b"1.0 first, 1.1 revproxy"),
            ],
        )

    def test_customVia(self) -> None:
        """
        A C{via} argument is sent as a new C{Via} header when none came in.
        """
        result = upstreamRequestHeaders(
            [],
            clientIP="::1",
            peerTrusted=False,
            scheme=b"http",
            host=None,
            via=b"1.1 edge",
            bodyLength=None,
        )
        self.assertEqual(result[-1], (b"Via", b"1.1 edge"))
        self.assertEqual(values(result, b"x-forwarded-for"), [b"::1"])

    def test_inputUnchanged(self) -> None:
        """
        The incoming list is not modified.
        """
        headers = [(b"Via", b"1.0 first"), (b"Host", b"h"), (b"TE", b"trailers")]
        copy = list(headers)
        upstream(headers, bodyLength=1)
        self.assertEqual(headers, copy)


class ClientResponseHeadersTests(SynchronousTestCase):
    """
    Tests for L{clientResponseHeaders}.
    """

    def test_setCookieOrder(self) -> None:
        """
        Every C{Set-Cookie} is kept, in order, with the other end-to-end
        headers in their places.
        """
        headers = [
            (b"Set-Cookie", b"a=1"),
            (b"Content-Type", b"text/plain"),
            (b"Set-Cookie", b"b=2"),
            (b"set-cookie", b"c=3"),
        ]
        self.assertEqual(
            clientResponseHeaders(headers), [*headers, (b"Via", b"1.1 revproxy")]
        )

    def test_dropsHopByHop(self) -> None:
        """
        Hop-by-hop headers, C{proxy-*} headers and those C{Connection} lists
        are dropped; C{Content-Length} is kept.
        """
        result = clientResponseHeaders(
            [
                (b"Connection", b"close, X-Internal"),
                (b"Keep-Alive", b"timeout=5"),
                (b"X-Internal", b"1"),
                (b"Proxy-Authenticate", b"Basic"),
                (b"Upgrade", b"h2c"),
                (b"Content-Length", b"5"),
            ]
        )
        self.assertEqual(result, [(b"Content-Length", b"5"), (b"Via", b"1.1 revproxy")])

    def test_transferEncodingDropped(self) -> None:
        """
        C{Transfer-Encoding} is dropped, and with it any C{Content-Length}
        that came beside it.
        """
        result = clientResponseHeaders(
            [
                (b"Content-Length", b"5"),
                (b"Via", b"1.1 upstream"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Content-Type", b"text/plain"),
            ]
        )
        self.assertEqual(
            result,
            [
                (b"Via", b"1.1 upstream, 1.1 revproxy"),
                (b"Content-Type", b"text/plain"),
            ],
        )

    def test_viaAppended(self) -> None:
        """
        C{via} is appended to the last C{Via} in its place.
        """
        result = clientResponseHeaders(
            [(b"Via", b"1.0 a"), (b"Via", b"1.1 b"), (b"ETag", b'"x"')],
            via=b"1.1 edge",
        )
        self.assertEqual(
            result,
            [(b"Via", b"1.0 a"), (b"Via", b"1.1 b, 1.1 edge"), (b"ETag", b'"x"')],
        )


class ClientAddressTests(SynchronousTestCase):
    """
    Tests for L{clientAddress} and L{isTrusted}.
    """

    def test_noTrustedProxies(self) -> None:
        """
        With no trusted proxies, the peer is the client, whatever
        C{X-Forwarded-For} says.
        """
        headers = [(b"X-Forwarded-For", b"1.2.3.4")]
        self.assertEqual(clientAddress("10.0.0.1", headers, []), "10.0.0.1")

    def test_untrustedPeer(self) -> None:
        """
        An untrusted peer is the client, whatever C{X-Forwarded-For} says.
        """
        headers = [(b"X-Forwarded-For", b"1.2.3.4")]
        self.assertEqual(clientAddress("192.0.2.9", headers, TRUSTED), "192.0.2.9")

    def test_trustedPeerWithoutHeader(self) -> None:
        """
        A trusted peer that sent no C{X-Forwarded-For} is the client.
        """
        self.assertEqual(clientAddress("10.0.0.1", [], TRUSTED), "10.0.0.1")

    def test_rightmostUntrusted(self) -> None:
        """
        The right-most address that is not trusted is the client, across
        several C{X-Forwarded-For} headers; what is left of it is ignored.
        """
        headers = [
            (b"X-Forwarded-For", b"6.6.6.6, 198.51.100.1"),
            (b"x-forwarded-for", b"10.0.0.3 ,10.0.0.2"),
        ]
        self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "198.51.100.1")

    def test_allTrusted(self) -> None:
        """
        When every address is trusted, the left-most one is the client.
        """
        headers = [(b"X-Forwarded-For", b"10.0.0.3, 10.0.0.2")]
        self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "10.0.0.3")

    def test_garbageStopsTheWalk(self) -> None:
        """
        An entry that is not an address stops the walk: the last trusted
        address walked past is the client.
        """
        headers = [(b"X-Forwarded-For", b"198.51.100.1, unknown, 10.0.0.2")]
        self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "10.0.0.2")

    def test_garbageRightmost(self) -> None:
        """
        A right-most entry that is not an address leaves the peer as client.
        """
        for entry in [b"1.2.3.4:x", b"\xff", b"not an address", b"[1.2.3.4]:80"]:
            headers = [(b"X-Forwarded-For", b"198.51.100.1, " + entry)]
            self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "10.0.0.1")

    def test_entriesWithPorts(self) -> None:
        """
        An entry with a port (C{ip:port}, C{[ipv6]:port}, C{[ipv6]}) is
        read as its address, not taken for the end of the chain.
        """
        for chain, client in [
            (b"198.51.100.1:4711, 10.0.0.2:80", "198.51.100.1"),
            (b"[2001:db8::7]:443, 10.0.0.2", "2001:db8::7"),
            (b"[2001:db8::7], [2001:db8:ffff::1]:80", "2001:db8::7"),
            (b"6.6.6.6, 10.0.0.3:1, 10.0.0.2:2", "6.6.6.6"),
        ]:
            headers = [(b"X-Forwarded-For", chain)]
            self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), client, chain)

    def test_emptyElementsSkipped(self) -> None:
        """
        Empty list elements are skipped, not taken for garbage.
        """
        headers = [
            (b"X-Forwarded-For", b"198.51.100.1,, 10.0.0.2,"),
            (b"X-Forwarded-For", b""),
        ]
        self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "198.51.100.1")

    def test_ipv6(self) -> None:
        """
        IPv6 peers and entries are compared with IPv6 networks, and an entry
        is returned in canonical form.
        """
        headers = [(b"X-Forwarded-For", b"2001:DB8::0001, 2001:db8:ffff::2")]
        self.assertEqual(
            clientAddress("2001:db8:ffff::1", headers, TRUSTED), "2001:db8::1"
        )

    def test_mappedPeer(self) -> None:
        """
        An IPv4-mapped IPv6 peer counts as its IPv4 address.
        """
        headers = [(b"X-Forwarded-For", b"198.51.100.1")]
        self.assertEqual(
            clientAddress("::ffff:10.0.0.1", headers, TRUSTED), "198.51.100.1"
        )

    def test_mappedEntry(self) -> None:
        """
        An IPv4-mapped entry counts as, and is returned as, its IPv4 address.
        """
        headers = [(b"X-Forwarded-For", b"198.51.100.1, ::ffff:10.0.0.2")]
        self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "198.51.100.1")
        headers = [(b"X-Forwarded-For", b"::ffff:198.51.100.1")]
        self.assertEqual(clientAddress("10.0.0.1", headers, TRUSTED), "198.51.100.1")

    def test_isTrusted(self) -> None:
        """
        L{isTrusted} is true for addresses in the networks, mapped ones too,
        and false for others and for strings that are not addresses.
        """
        self.assertTrue(isTrusted("10.1.2.3", TRUSTED))
        self.assertTrue(isTrusted("::ffff:10.1.2.3", TRUSTED))
        self.assertTrue(isTrusted("2001:db8:ffff::9", TRUSTED))
        self.assertFalse(isTrusted("11.0.0.1", TRUSTED))
        self.assertFalse(isTrusted("2001:db8::9", TRUSTED))
        self.assertFalse(isTrusted("bogus", TRUSTED))
        self.assertFalse(isTrusted("10.1.2.3", []))


_NAMES = st.sampled_from(
    [
        b"Accept",
        b"Cookie",
        b"X-Foo",
        b"x-bar",
        b"Via",
        b"Host",
        b"Expect",
        b"Content-Length",
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Proxy-Authorization",
        b"Proxy-Connection",
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
        b"Forwarded",
        b"X-Real-IP",
    ]
) | st.binary(min_size=1, max_size=12)
_VALUES = st.sampled_from(
    [b"x-foo", b"X-Bar, cookie", b"close", b"", b"1"]
) | st.binary(max_size=12)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=20)
# Rewritten, not copied: their survival is what the example tests check.
_REWRITTEN = frozenset(
    [
        b"host",
        b"via",
        b"expect",
        b"content-length",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
    ]
)


class UpstreamRequestHeadersPropertyTests(SynchronousTestCase):
    """
    Properties of L{upstreamRequestHeaders} over random header lists.
    """

    @given(_HEADERS, st.booleans())
    def test_hopByHopGoneOthersKept(self, headers: Headers, trusted: bool) -> None:
        """
        No hop-by-hop name survives, and every other header that is not
        rewritten survives unchanged and in order.
        """
        drop = hopByHopNames(headers)
        result = upstream(headers, peerTrusted=trusted, bodyLength=3)
        for name, _ in result:
            lower = name.lower()
            if lower != b"host":
                self.assertFalse(isHopByHop(lower, drop), name)

        def copied(pairs: Headers) -> Headers:
            return [
                (name, value)
                for name, value in pairs
                if not isHopByHop(name.lower(), drop)
                and not name.lower().startswith(b"x-forwarded-")
                and name.lower() not in _REWRITTEN
                and name.lower() not in FORWARDING_HEADERS
                and b"_" not in name
            ]

        self.assertEqual(copied(result), copied(headers))
        self.assertEqual(values(result, b"content-length"), [b"3"])
        self.assertEqual(len(values(result, b"x-forwarded-for")), 1)


class RelayResponseHeadersTests(SynchronousTestCase):
    """
    Tests for L{relayResponseHeaders}: the client's fields and what they
    hold, in one pass.
    """

    def test_found(self) -> None:
        """
        C{Date}, C{X-Request-ID} and C{Strict-Transport-Security} are kept
        and reported, in any case; hop-by-hop fields are dropped.
        """
        out, found = relayResponseHeaders(
            [
                (b"DATE", b"d"),
                (b"Connection", b"x-request-id"),
                (b"X-Request-Id", b"i"),
                (b"strict-transport-security", b"max-age=1"),
            ]
        )
        self.assertEqual(found, HAS_DATE | HAS_HSTS)
        self.assertEqual(
            out,
            [
                (b"DATE", b"d"),
                (b"strict-transport-security", b"max-age=1"),
                (b"Via", b"1.1 revproxy"),
            ],
        )
        _, found = relayResponseHeaders([(b"x-request-id", b"i")])
        self.assertEqual(found, HAS_REQUEST_ID)

    def test_noBody(self) -> None:
        """
        With C{noBody} (a 204 or 304), C{Content-Length} is dropped.
        """
        headers = [(b"Content-Length", b"5"), (b"ETag", b"x")]
        self.assertEqual(
            relayResponseHeaders(headers, noBody=True)[0],
            [(b"ETag", b"x"), (b"Via", b"1.1 revproxy")],
        )
        self.assertIn((b"Content-Length", b"5"), relayResponseHeaders(headers)[0])

    def test_listedLater(self) -> None:
        """
        A field that C{Connection} lists is dropped wherever it stands, and
        a C{Via} after it is still the one extended.
        """
        out, found = relayResponseHeaders(
            [
                (b"Via", b"1.0 a"),
                (b"Date", b"d"),
                (b"X-Hop", b"1"),
                (b"Via", b"1.0 b"),
                (b"Connection", b"keep-alive, X-Hop, date"),
            ]
        )
        self.assertEqual(found, 0)
        self.assertEqual(out, [(b"Via", b"1.0 a"), (b"Via", b"1.0 b, 1.1 revproxy")])

    def test_closeField(self) -> None:
        """
        C{Connection: close} drops a field named C{close} (it is listed),
        and leaves every other field alone.
        """
        headers = [(b"Close", b"x"), (b"Date", b"d"), (b"Connection", b"close")]
        out, found = relayResponseHeaders(headers)
        self.assertEqual(out, [(b"Date", b"d"), (b"Via", b"1.1 revproxy")])
        self.assertEqual(found, HAS_DATE)
        out, _ = relayResponseHeaders([(b"Close", b"x"), (b"Date", b"d")])
        self.assertEqual(
            out, [(b"Close", b"x"), (b"Date", b"d"), (b"Via", b"1.1 revproxy")]
        )
