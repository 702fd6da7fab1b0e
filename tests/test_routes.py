"""
Tests for routes inside a site at request time: which route a request
meets, what each action does (proxy with a stripped prefix and another
Host, redirect, fixed answer), header rules, redirects written back under a
mount point, per-route limits and error pages; over in-memory connections
(the proxy as L{tests.test_forwarder.ProxyHarness} wires it).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.test_forwarder import ProxyHarness, readRequest

CONFIG = """
[server]

[[sites]]
name = "shop"
hosts = ["shop.example"]
upstreams = ["http://10.1.0.1:8000"]
request_headers = { set = { X-Site = "shop" } }
response_headers = { set = { X-Frame-Options = "DENY" }, remove = ["server"] }

[[sites.routes]]
path_prefix = "/api/"
strip_prefix = true
rewrite_redirects = true
upstreams = ["http://10.2.0.1:9000"]
upstream_host = "api.internal"
request_headers = { add = { X-Route = "api {path_suffix}", X-Route-Host = "{host}" } }

[[sites.routes]]
path_prefix = "/api/v2/"
upstreams = ["http://10.3.0.1:9000"]

[[sites.routes]]
path = "/api/health"
respond = { status = 200, body = "ok {host}{path}" }

[[sites.routes]]
path = "/old"
redirect = { to = "https://{host}/new?from={uri}", status = 301 }

[[sites.routes]]
path_prefix = "/upload/"
methods = ["POST"]
upstreams = ["http://10.4.0.1:9000"]
max_body_bytes = 10

[[sites.routes]]
path_prefix = "/limited/"
upstreams = ["http://10.1.0.1:8000"]
rate_limit = { requests_per_second = 1, burst = 1 }

[[sites]]
name = "www"
hosts = ["www.shop.example"]
redirect = { to = "https://shop.example{uri}", status = 308 }
"""


class RoutesTests(SynchronousTestCase):
    """
    A request meets the exact route, else the longest prefix, else its
    site's own rules.
    """

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, CONFIG)

    def get(self, path: bytes, host: bytes = b"shop.example", method: bytes = b"GET"):  # type: ignore[no-untyped-def]
        client = self.proxy.client()
        client.send(method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        return client

    def test_longestPrefix(self) -> None:
        """
        C{/api/v2/x} meets the longer C{/api/v2/} prefix, C{/api/x} the
        shorter one, anything else the site's own upstreams.
        """
        self.get(b"/api/v2/x")
        self.get(b"/api/x")
        self.get(b"/other")
        self.assertEqual(
            self.proxy.upstreamHosts(), ["10.3.0.1", "10.2.0.1", "10.1.0.1"]
        )

    def test_exactBeatsPrefix(self) -> None:
        """
        An exact path beats a longer-matching prefix; its fixed answer has
        its placeholders filled in and the site's response header rules.
        """
        client = self.get(b"/api/health")
        [response] = client.responses()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"ok shop.example/api/health")
        self.assertEqual(response.values(b"x-frame-options"), [b"DENY"])
        self.assertEqual(self.proxy.upstreamHosts(), [])

    def test_methods(self) -> None:
        """
        A route with C{methods} is met only by those; others go on to the
        next rule (here the site's own).
        """
        self.get(b"/upload/a", method=b"GET")
        self.assertEqual(self.proxy.upstreamHosts(), ["10.1.0.1"])

    def test_stripPrefixAndHost(self) -> None:
        """
        A mounted route sends the path without its prefix, with
        C{X-Forwarded-Prefix}, the route's C{Host}, the client's in
        C{X-Forwarded-Host}, and the site's then the route's header rules.
        """
        self.get(b"/api/users?page=2")
        upstream = self.proxy.upstream()
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertEqual(request.line, b"GET /users?page=2 HTTP/1.1")
        self.assertEqual(request.values(b"host"), [b"api.internal"])
        self.assertEqual(request.values(b"x-forwarded-host"), [b"shop.example"])
        self.assertEqual(request.values(b"x-forwarded-prefix"), [b"/api"])
        self.assertEqual(request.values(b"x-site"), [b"shop"])
        self.assertEqual(request.values(b"x-route"), [b"api users"])

    def test_hostPlaceholder(self) -> None:
        """
        C{{host}} in a header rule is the host the request was routed by:
        normalized, without its port.
        """
        self.get(b"/api/x", host=b"SHOP.example:8080")
        upstream = self.proxy.upstream()
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertEqual(request.values(b"x-route-host"), [b"shop.example"])

    def test_rewriteRedirects(self) -> None:
        """
        The mounted upstream's redirect and cookie path come back under the
        prefix; the site's response header rules apply.
        """
        client = self.get(b"/api/")
        upstream = self.proxy.upstream()
        upstream.accept()
        upstream.respond(
            b"HTTP/1.1 302 Found\r\nLocation: /login\r\nServer: app\r\n"
            b"Set-Cookie: s=1; Path=/; HttpOnly\r\nContent-Length: 0\r\n\r\n"
        )
        [response] = client.responses()
        self.assertEqual(response.values(b"location"), [b"/api/login"])
        self.assertEqual(response.values(b"set-cookie"), [b"s=1; Path=/api/; HttpOnly"])
        self.assertEqual(response.values(b"server"), [])
        self.assertEqual(response.values(b"x-frame-options"), [b"DENY"])

    def test_redirect(self) -> None:
        """
        A redirect route answers with its status and its C{to}, the
        request's values in it, escaped for a Location.
        """
        client = self.get(b"/old")
        [response] = client.responses()
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.values(b"location"), [b"https://shop.example/new?from=/old"]
        )

    def test_siteRedirect(self) -> None:
        """
        A site without upstreams answers everything with its redirect.
        """
        client = self.get(b"/a/b?c=d", host=b"www.shop.example")
        [response] = client.responses()
        self.assertEqual(response.code, 308)
        self.assertEqual(
            response.values(b"location"), [b"https://shop.example/a/b?c=d"]
        )

    def test_routeBodyLimit(self) -> None:
        """
        A route's C{max_body_bytes} is the request's limit: 413 from its
        Content-Length.
        """
        client = self.proxy.client()
        client.send(
            b"POST /upload/x HTTP/1.1\r\nHost: shop.example\r\n"
            b"Content-Length: 11\r\n\r\n"
        )
        [response] = client.responses()
        self.assertEqual(response.code, 413)

    def test_routeRateLimit(self) -> None:
        """
        A route with its own rate limit has its own buckets: the site's
        requests do not spend them.
        """
        from revproxy.ratelimit import RateLimiter

        limiter = RateLimiter(self.proxy.reactor)
        self.proxy.site.handler.limiter = limiter  # type: ignore[attr-defined]
        for _ in range(3):
            self.get(b"/other")
        first = self.get(b"/limited/a")
        second = self.get(b"/limited/b")
        self.assertEqual(first.responses(), [])
        [refused] = second.responses()
        self.assertEqual(refused.code, 429)


class ErrorPagesTests(SynchronousTestCase):
    """
    A site's C{error_pages} replace revproxy's own short answers.
    """

    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(base)
        for code in (413, 502):
            with open(os.path.join(base, f"{code}.html"), "w") as f:
                f.write(f"<h1>{code} page</h1>")
        self.proxy = ProxyHarness(
            self,
            """
[server]

[[sites]]
name = "a"
hosts = ["a.example"]
upstreams = ["http://10.1.0.1:8000"]
max_body_bytes = 5
error_pages = { 413 = "413.html", 502 = "502.html" }
""",
            baseDir=base,
        )

    def test_502(self) -> None:
        """
        An upstream that cannot be reached gets the site's 502 page, as
        HTML, with its status.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.proxy.upstream().refuse()
        [response] = client.responses()
        self.assertEqual(response.code, 502)
        self.assertEqual(response.body, b"<h1>502 page</h1>")
        self.assertEqual(
            response.values(b"content-type"), [b"text/html; charset=utf-8"]
        )

    def test_413(self) -> None:
        """
        A body over the limit gets the site's 413 page.
        """
        client = self.proxy.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\n\r\n")
        [response] = client.responses()
        self.assertEqual(response.code, 413)
        self.assertEqual(response.body, b"<h1>413 page</h1>")


MATCHING = """
[server]

[[sites]]
name = "s"
hosts = ["s.example"]
upstreams = ["http://10.0.0.1:80"]

[[sites.routes]]
path_prefix = "/api"
respond = { status = 200, body = "0" }

[[sites.routes]]
path_prefix = "/api/"
respond = { status = 200, body = "1" }

[[sites.routes]]
path_prefix = "/api/v2/"
respond = { status = 200, body = "2" }

[[sites.routes]]
path_prefix = "/api/v2/"
methods = ["POST"]
respond = { status = 200, body = "3" }

[[sites.routes]]
path = "/api/v2/exact"
respond = { status = 200, body = "4" }

[[sites.routes]]
path_prefix = "/"
methods = ["DELETE"]
respond = { status = 200, body = "5" }
"""


class MatchingTests(SynchronousTestCase):
    """
    L{revproxy.runtime.SiteRoute.match}: exact, else the longest prefix
    (whether it ends a path segment or not), else the site; among equals
    the first written that allows the method.
    """

    def index(self, method: bytes, path: bytes) -> int | None:
        from twisted.internet.task import Clock

        from revproxy.config import parseConfig
        from revproxy.runtime import buildRuntime

        runtime = buildRuntime(parseConfig(MATCHING), Clock())
        [site] = runtime.table.sites
        rule = site.match(method, path).rule
        return None if rule is None else rule.index

    def test_order(self) -> None:
        """
        Each path meets the rule nginx's order gives it.
        """
        cases = [
            (b"GET", b"/api/v2/exact", 4),
            (b"GET", b"/api/v2/other", 2),
            (b"POST", b"/api/v2/other", 2),
            (b"GET", b"/api/v1", 1),
            (b"GET", b"/api/", 1),
            (b"GET", b"/api", 0),
            (b"GET", b"/apix/y", 0),
            (b"GET", b"/other", None),
            (b"DELETE", b"/other", 5),
            (b"DELETE", b"/api/x", 1),
        ]
        for method, path, expected in cases:
            self.assertEqual(self.index(method, path), expected, (method, path))
