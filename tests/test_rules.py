"""
Tests for L{revproxy.proxy.rules}: prefixes stripped, redirects written back
under a mount point, header rules.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import HeaderRules
from revproxy.placeholders import parseTemplate
from revproxy.proxy.rules import (
    applyHeaderRules,
    mountPoint,
    rewriteRedirects,
    stripPrefix,
)


class StripPrefixTests(SynchronousTestCase):
    """
    L{stripPrefix} and L{mountPoint}.
    """

    def test_strip(self) -> None:
        """
        The prefix goes; the rest keeps its query and starts with C{/}.
        """
        self.assertEqual(stripPrefix(b"/api/users?x=1", b"/api/"), b"/users?x=1")
        self.assertEqual(stripPrefix(b"/api/", b"/api/"), b"/")
        self.assertEqual(stripPrefix(b"/api", b"/api"), b"/")
        self.assertEqual(stripPrefix(b"/apix", b"/api"), b"/x")

    def test_mountPoint(self) -> None:
        """
        The mount point is the prefix without its trailing C{/}.
        """
        self.assertEqual(mountPoint(b"/api/"), b"/api")
        self.assertEqual(mountPoint(b"/app"), b"/app")


class RewriteRedirectsTests(SynchronousTestCase):
    """
    L{rewriteRedirects}: what the upstream sends the client to, put back
    under the mount point.
    """

    def rewrite(self, name: bytes, value: bytes) -> bytes:
        [(_, out)] = rewriteRedirects(
            [(name, value)], b"/app", [b"example.com", b"app.internal"]
        )
        return out

    def test_location(self) -> None:
        """
        An absolute path, or an absolute URL to the request's or upstream's
        host, goes under the mount point; one already under it stays.
        """
        self.assertEqual(self.rewrite(b"Location", b"/login?next=/"), b"/app/login?next=/")
        self.assertEqual(
            self.rewrite(b"Location", b"https://example.com/login#x"),
            b"https://example.com/app/login#x",
        )
        self.assertEqual(
            self.rewrite(b"location", b"http://app.internal:8080/a"),
            b"http://app.internal:8080/app/a",
        )
        self.assertEqual(self.rewrite(b"Location", b"/app/x"), b"/app/x")
        self.assertEqual(self.rewrite(b"Location", b"/"), b"/app/")

    def test_elsewhere(self) -> None:
        """
        A URL to another host, a relative path and a protocol-relative URL
        stay as they are.
        """
        for value in (
            b"https://other.example/login",
            b"login",
            b"//cdn.example/x",
            b"mailto:x@example.com",
        ):
            self.assertEqual(self.rewrite(b"Location", value), value)

    def test_contentLocationAndRefresh(self) -> None:
        """
        C{Content-Location} and the URL of C{Refresh} are rewritten too.
        """
        self.assertEqual(self.rewrite(b"Content-Location", b"/doc"), b"/app/doc")
        self.assertEqual(self.rewrite(b"Refresh", b"5; url=/next"), b"5; url=/app/next")
        self.assertEqual(self.rewrite(b"Refresh", b"5"), b"5")

    def test_setCookie(self) -> None:
        """
        A cookie's C{Path} goes under the mount point; its other attributes
        stay, and a cookie without C{Path} is untouched.
        """
        self.assertEqual(
            self.rewrite(
                b"Set-Cookie", b"sid=abc; Path=/; HttpOnly; Secure; SameSite=Lax"
            ),
            b"sid=abc; Path=/app/; HttpOnly; Secure; SameSite=Lax",
        )
        self.assertEqual(
            self.rewrite(b"Set-Cookie", b"a=1; Max-Age=60; path=/account"),
            b"a=1; Max-Age=60; path=/app/account",
        )
        self.assertEqual(self.rewrite(b"Set-Cookie", b"a=1; Secure"), b"a=1; Secure")

    def test_others(self) -> None:
        """
        Other fields are not touched.
        """
        self.assertEqual(self.rewrite(b"Link", b"</x>; rel=next"), b"</x>; rel=next")


class HeaderRulesTests(SynchronousTestCase):
    """
    L{applyHeaderRules}.
    """

    def test_order(self) -> None:
        """
        Each rule removes, then sets (replacing every field of the name),
        then adds; later rules see what earlier ones did.
        """
        site = HeaderRules(
            set=(("X-Frame-Options", parseTemplate("DENY")),),
            remove=("server",),
        )
        route = HeaderRules(
            set=(("x-frame-options", parseTemplate("SAMEORIGIN")),),
            add=(("Link", parseTemplate("</{path}>; rel=self")),),
        )
        out = applyHeaderRules(
            [
                (b"Server", b"upstream"),
                (b"X-Frame-Options", b"ALLOW"),
                (b"Link", b"</a>"),
            ],
            [site, route],
            {"path": "/p\r\nInjected: yes"},
        )
        self.assertEqual(
            out,
            [
                (b"Link", b"</a>"),
                (b"x-frame-options", b"SAMEORIGIN"),
                (b"Link", b"</p  Injected: yes>; rel=self"),
            ],
        )
