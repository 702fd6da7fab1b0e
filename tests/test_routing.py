"""
Tests for the pure part of L{revproxy.routing}.
"""

from __future__ import annotations

import idna
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from revproxy.routing import RoutingTable, normalizeHostHeader


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
