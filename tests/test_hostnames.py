"""
Tests for L{revproxy.hostnames}: the one place host names are matched.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from revproxy.hostnames import HostNames, claims, isWildcard, wildcardParent


class HostNamesTests(SynchronousTestCase):
    """
    Tests for L{HostNames}.
    """

    def test_exactThenWildcardThenDefault(self) -> None:
        """
        An exact name wins over a wildcard, a wildcard stands for exactly one
        label, and any other name gets the default.
        """
        names: HostNames[str] = HostNames()
        names.add("a.example", "exact")
        names.add("*.example", "wildcard")
        names.default = "default"
        self.assertEqual(names.match("a.example"), "exact")
        self.assertEqual(names.match("b.example"), "wildcard")
        self.assertEqual(names.match("x.b.example"), "default")
        self.assertEqual(names.match("example"), "default")
        self.assertEqual(names.match(None), "default")
        self.assertEqual(names.values(), ["exact", "wildcard"])

    def test_badWildcards(self) -> None:
        """
        A C{*} anywhere but as the whole first label is refused.
        """
        names: HostNames[str] = HostNames()
        for name in ("*.", "*.a.*", "a*.example", "a.*.example"):
            self.assertRaises(ValueError, names.add, name, "x")


class ClaimsTests(SynchronousTestCase):
    """
    Tests for L{claims}, L{isWildcard} and L{wildcardParent}.
    """

    def test_claims(self) -> None:
        """
        A name is claimed by itself or by the wildcard one label above it.
        """
        hosts = ("app.example", "*.app.example")
        self.assertTrue(claims(hosts, "app.example"))
        self.assertTrue(claims(hosts, "x.app.example"))
        self.assertFalse(claims(hosts, "x.y.app.example"))
        self.assertFalse(claims(hosts, "example"))

    def test_wildcardParent(self) -> None:
        """
        The parent of a name is what follows its first label; a name of one
        label has none.
        """
        self.assertEqual(wildcardParent("a.b.example"), "b.example")
        self.assertIsNone(wildcardParent("localhost"))
        self.assertTrue(isWildcard("*.example"))
        self.assertFalse(isWildcard("example"))
