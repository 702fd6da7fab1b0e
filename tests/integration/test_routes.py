"""
Integration tests of routes inside a site (#16): a real C{twistd revproxy}
process on loopback, with three sites and ten routes in front of four
in-process upstreams that record every request they get.

The config (L{_RoutesTestCase.configText}):

  - C{shop.test}, to upstream C{main}, with site-level request and
    response header rules and a 502 error page, and routes: C{/healthz}
    (exact, C{respond} with placeholders), C{/maintenance} (exact,
    C{respond} with a C{file}), C{/app/} (prefix to C{app}, C{strip_prefix},
    C{rewrite_redirects}, C{upstream_host}), C{/app/static/} (a longer
    prefix inside it, to C{static}), C{/old/} (prefix, C{redirect} with
    placeholders), C{/submit} (exact, C{POST} only, to C{blog}) and
    C{/down/} (prefix, to a port nobody listens on);
  - C{www.shop.test}, without upstreams: every request redirected to
    C{https://shop.test{uri}};
  - C{blog.test}, to upstream C{blog}, with routes C{/static/} (to
    C{static}, or to C{app} in the second version), C{/feed} (a redirect,
    removed in the second version), C{/drafts/} (C{GET}/C{HEAD} only,
    C{respond}) and, in the second version only, C{/fresh}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.integration.support import (
    EXIT_TIMEOUT,
    LOOPBACK_LISTEN,
    IIntegrationReactor,
    ProxyCaseMixin,
    RawClient,
    RawResponse,
    Upstream,
    UpstreamSite,
    closedPort,
    connectRaw,
    getReactor,
    replaceFile,
    toml,
    withTimeout,
)

_log = Logger()

MAINTENANCE_PAGE = b"<!doctype html>\n<title>Maintenance</title>\n<p>Back soon.</p>\n"
ERROR_PAGE = b"<!doctype html>\n<title>Oops</title>\n<p>The shop is down.</p>\n"


class Seen:
    """
    One request as an upstream received it.

    @ivar method: the method.
    @ivar uri: the request target.
    @ivar headers: every header, by lowercase name, every value in order.
    @ivar body: the body.
    """

    def __init__(
        self, method: str, uri: str, headers: dict[str, list[str]], body: bytes
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body

    def header(self, name: str) -> list[str]:
        """
        Every value of the header C{name}.
        """
        return self.headers.get(name.lower(), [])

    def __repr__(self) -> str:
        return f"<Seen {self.method} {self.uri} {self.headers!r}>"


class _Recorder(Resource):
    """
    Every path: records the request, then answers C{"NAME METHOD URI"}
    with C{X-Powered-By} and C{X-Note} headers; a path ending in
    C{/to-login} answers a 302 to C{/login} with two cookies instead, and
    one ending in C{/to-elsewhere} a 303 to another host with a
    C{Content-Location} on C{shop.test} and a C{Refresh}, as an
    application that does not know it is mounted under a prefix.
    """

    isLeaf = True

    def __init__(self, name: str, seen: list[Seen]) -> None:
        super().__init__()
        self.name = name
        self.seen = seen

    def render(self, request: Request) -> bytes:
        content = request.content
        body = content.read() if content is not None else b""
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values
            )
        method = (request.method or b"").decode("latin-1")
        uri = (request.uri or b"").decode("latin-1")
        self.seen.append(Seen(method, uri, headers, body))
        if (request.path or b"").endswith(b"/to-login"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/login")
            request.responseHeaders.setRawHeaders(
                b"set-cookie",
                [b"sid=abc; Path=/; HttpOnly", b"theme=dark; Path=/prefs; Secure"],
            )
            return b""
        if (request.path or b"").endswith(b"/to-elsewhere"):
            request.setResponseCode(303)
            request.setHeader(b"location", b"https://other.example/login")
            request.setHeader(b"content-location", b"http://shop.test/done?x=1")
            request.setHeader(b"refresh", b"5; url=/next")
            return b""
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"x-powered-by", b"test-upstream")
        request.setHeader(b"x-note", b"upstream")
        return f"{self.name} {method} {uri}".encode("latin-1")


class RecordingUpstream(Upstream):
    """
    An upstream whose every path is a L{_Recorder}.

    @ivar seen: the requests it got, in order.
    """

    def __init__(self, reactor: IIntegrationReactor, name: str) -> None:
        super().__init__(reactor, name)
        self.seen: list[Seen] = []
        self.site = UpstreamSite(_Recorder(name, self.seen), reactor)

    @property
    def url(self) -> str:
        """
        Its URL, as an C{upstreams} entry.
        """
        return f"http://127.0.0.1:{self.port}"

    def answer(self, method: str, uri: str) -> bytes:
        """
        The body it answers to C{method} C{uri}.
        """
        return f"{self.name} {method} {uri}".encode("latin-1")


def _table(header: str, keys: Mapping[str, object]) -> list[str]:
    """
    The lines of a TOML table (or array-of-tables entry) C{header}.
    """
    return ["", header, *(f"{key} = {toml(value)}" for key, value in keys.items())]


def _request(
    host: str,
    target: str,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    close: bool = False,
) -> bytes:
    """
    A raw HTTP/1.1 request.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _RoutesTestCase(ProxyCaseMixin, TestCase):
    """
    Starts the four upstreams and a proxy on the first version of the
    config; stops them after the test, checking that SIGTERM made the
    proxy exit 0.

    Everything lives in a short directory under C{/tmp} (the admin socket's
    path must stay short).
    """

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.socketPath = os.path.join(self.directory, "admin.sock")
        self.configPath = os.path.join(self.directory, "revproxy.toml")
        with open(os.path.join(self.directory, "maintenance.html"), "wb") as f:
            f.write(MAINTENANCE_PAGE)
        with open(os.path.join(self.directory, "502.html"), "wb") as f:
            f.write(ERROR_PAGE)
        self.main = RecordingUpstream(self.reactor, "main")
        self.app = RecordingUpstream(self.reactor, "app")
        self.static = RecordingUpstream(self.reactor, "static")
        self.blog = RecordingUpstream(self.reactor, "blog")
        for upstream in (self.main, self.app, self.static, self.blog):
            await upstream.start()
            self.addCleanup(upstream.stop)
        self.downPort = closedPort()
        self.writeConfig(second=False)
        await self.startProxy()

    def configText(self, second: bool) -> str:
        """
        The config: the first version, or the C{second} (C{blog.test}'s
        C{/static/} moved from C{static} to C{app}, C{/feed} removed,
        C{/fresh} added).
        """
        lines = [
            *_table(
                "[server]",
                {
                    "listen_http": [LOOPBACK_LISTEN],
                    "listen_https": [],
                    "admin_socket_path": self.socketPath,
                    "ops_listen": "",
                    "state_dir": os.path.join(self.directory, "state"),
                    # The load test's keep-alive clients may exceed the
                    # default cap of requests per connection.
                    "max_requests_per_connection": 0,
                },
            ),
            *_table("[logging]", {"access_log": "-", "access_log_format": "combined"}),
            *_table(
                "[[sites]]",
                {
                    "name": "shop",
                    "hosts": ["shop.test"],
                    "upstreams": [self.main.url],
                    "request_headers": {
                        "set": {"X-Site": "shop", "X-Client": "{client_ip}"},
                        "add": {"X-Tag": "from-proxy"},
                        "remove": ["X-Secret"],
                    },
                    "response_headers": {
                        "set": {"X-Frame-Options": "DENY"},
                        "add": {"X-Note": "site"},
                        "remove": ["X-Powered-By"],
                    },
                    "error_pages": {"502": "502.html"},
                },
            ),
            *_table(
                "[[sites.routes]]",
                {
                    "path": "/healthz",
                    "respond": {"status": 200, "body": "ok {host}{path} q={query}\n"},
                },
            ),
            *_table(
                "[[sites.routes]]",
                {
                    "path": "/maintenance",
                    "respond": {"status": 503, "file": "maintenance.html"},
                },
            ),
            *_table(
                "[[sites.routes]]",
                {
                    "path_prefix": "/app/",
                    "upstreams": [self.app.url],
                    "strip_prefix": True,
                    "rewrite_redirects": True,
                    "upstream_host": "app.internal",
                },
            ),
            *_table(
                "[[sites.routes]]",
                {"path_prefix": "/app/static/", "upstreams": [self.static.url]},
            ),
            *_table(
                "[[sites.routes]]",
                {
                    "path_prefix": "/old/",
                    "redirect": {
                        "to": "{scheme}://{host}/new/{path_suffix}",
                        "status": 301,
                    },
                },
            ),
            *_table(
                "[[sites.routes]]",
                {"path": "/submit", "methods": ["POST"], "upstreams": [self.blog.url]},
            ),
            *_table(
                "[[sites.routes]]",
                {
                    "path_prefix": "/down/",
                    "upstreams": [f"http://127.0.0.1:{self.downPort}"],
                },
            ),
            *_table(
                "[[sites]]",
                {
                    "name": "www",
                    "hosts": ["www.shop.test"],
                    "redirect": {"to": "https://shop.test{uri}", "status": 301},
                },
            ),
            *_table(
                "[[sites]]",
                {"name": "blog", "hosts": ["blog.test"], "upstreams": [self.blog.url]},
            ),
            *_table(
                "[[sites.routes]]",
                {
                    "path_prefix": "/static/",
                    "upstreams": [(self.app if second else self.static).url],
                },
            ),
        ]
        if not second:
            lines += _table(
                "[[sites.routes]]",
                {"path": "/feed", "redirect": {"to": "/rss.xml", "status": 302}},
            )
        lines += _table(
            "[[sites.routes]]",
            {
                "path_prefix": "/drafts/",
                "methods": ["GET", "HEAD"],
                "respond": {"status": 403, "body": "drafts are private\n"},
            },
        )
        if second:
            lines += _table(
                "[[sites.routes]]",
                {"path": "/fresh", "respond": {"status": 200, "body": "fresh\n"}},
            )
        return "\n".join(lines) + "\n"

    def writeConfig(self, second: bool) -> None:
        """
        Replace the config file whole with the first or C{second} version.
        """
        replaceFile(self.configPath, self.configText(second))

    async def request(
        self,
        host: str,
        target: str,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> RawResponse:
        """
        One request on a new connection.
        """
        client = await connectRaw(self.reactor, self.port)
        try:
            return await client.request(
                _request(host, target, method, headers, body, close=True),
                noBody=method == "HEAD",
            )
        finally:
            await client.close()


class RouteMatchingTests(_RoutesTestCase):
    """
    Exact paths, prefixes and methods pick the rule; C{respond} and
    C{redirect} answer without an upstream.
    """

    async def test_exactRespond(self) -> None:
        """
        C{/healthz} is answered by revproxy with the body's placeholders
        filled in, as text, with the site's response header rules; no
        upstream sees it.  C{/healthz/} is not that exact path: it goes to
        the site's upstream.
        """
        response = await self.request("shop.test", "/healthz?full=1")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.body, b"ok shop.test/healthz q=full=1\n")
        self.assertEqual(
            response.header(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(response.header(b"x-frame-options"), [b"DENY"])
        self.assertEqual(response.header(b"x-note"), [b"site"])
        self.assertEqual(
            [s for u in (self.main, self.app, self.static, self.blog) for s in u.seen],
            [],
        )
        response = await self.request("shop.test", "/healthz/")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.body, self.main.answer("GET", "/healthz/"))
        await self.proxy.waitOutput('"GET /healthz?full=1 HTTP/1.1" 200 ', 5)

    async def test_respondFile(self) -> None:
        """
        C{/maintenance} answers the file's bytes with its status and an
        HTML content type.
        """
        response = await self.request("shop.test", "/maintenance")
        self.assertEqual(response.code, 503, response.body)
        self.assertEqual(response.body, MAINTENANCE_PAGE)
        self.assertEqual(
            response.header(b"content-type"), [b"text/html; charset=utf-8"]
        )
        self.assertEqual(self.main.seen, [])

    async def test_longestPrefix(self) -> None:
        """
        C{/app/static/...} goes to C{static} with its path whole (the
        longer prefix wins, and it does not strip); C{/app/...} goes to
        C{app}; C{/apps} matches no route and goes to C{main}.
        """
        response = await self.request("shop.test", "/app/static/logo.png?v=2")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            response.body, self.static.answer("GET", "/app/static/logo.png?v=2")
        )
        self.assertEqual(self.static.seen[-1].header("host"), ["shop.test"])
        self.assertEqual(self.static.seen[-1].header("x-forwarded-prefix"), [])

        response = await self.request("shop.test", "/app/static")
        self.assertEqual(response.body, self.app.answer("GET", "/static"))

        response = await self.request("shop.test", "/apps")
        self.assertEqual(response.body, self.main.answer("GET", "/apps"))

        response = await self.request("blog.test", "/static/site.css")
        self.assertEqual(response.body, self.static.answer("GET", "/static/site.css"))
        response = await self.request("blog.test", "/post/1")
        self.assertEqual(response.body, self.blog.answer("GET", "/post/1"))

    async def test_methods(self) -> None:
        """
        C{POST /submit} goes to C{blog} with its body; C{GET /submit} is
        not among the route's methods and goes to the site's C{main}.
        C{/drafts/} answers 403 to C{GET} and C{HEAD}, and forwards a
        C{DELETE} to the site's upstream.
        """
        response = await self.request(
            "shop.test", "/submit", "POST", [("Content-Type", "text/plain")], b"hello"
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.body, self.blog.answer("POST", "/submit"))
        self.assertEqual(self.blog.seen[-1].body, b"hello")
        response = await self.request("shop.test", "/submit")
        self.assertEqual(response.body, self.main.answer("GET", "/submit"))

        response = await self.request("blog.test", "/drafts/secret")
        self.assertEqual((response.code, response.body), (403, b"drafts are private\n"))
        response = await self.request("blog.test", "/drafts/secret", "HEAD")
        self.assertEqual((response.code, response.body), (403, b""))
        response = await self.request("blog.test", "/drafts/secret", "DELETE")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.body, self.blog.answer("DELETE", "/drafts/secret"))
        self.assertEqual([s.method for s in self.blog.seen], ["POST", "DELETE"])

    async def test_redirects(self) -> None:
        """
        C{/old/...} redirects (301) to C{/new/} and what followed the
        prefix, on the request's scheme and host; C{www.shop.test} (no
        upstreams) redirects every request, query included, to the apex
        over HTTPS; C{blog.test}'s C{/feed} to C{/rss.xml} with a 302.
        """
        response = await self.request("shop.test", "/old/docs/page.html?x=1")
        self.assertEqual(response.code, 301, response.body)
        self.assertEqual(
            response.header(b"location"), [b"http://shop.test/new/docs/page.html"]
        )
        # The site's response header rules apply to a redirect too.
        self.assertEqual(response.header(b"x-frame-options"), [b"DENY"])
        # A placeholder's bytes that a URL does not allow as they are are
        # percent-encoded; what is already encoded stays.
        response = await self.request("shop.test", '/old/a"b<c>%20d')
        self.assertEqual(response.code, 301, response.body)
        self.assertEqual(
            response.header(b"location"), [b"http://shop.test/new/a%22b%3Cc%3E%20d"]
        )

        for method, target in [
            ("GET", "/"),
            ("GET", "/cart?item=3&n=2"),
            ("POST", "/checkout"),
            ("HEAD", "/a/b"),
        ]:
            response = await self.request("www.shop.test", target, method)
            self.assertEqual(response.code, 301, (method, target, response.body))
            self.assertEqual(
                response.header(b"location"),
                [f"https://shop.test{target}".encode()],
                (method, target),
            )

        response = await self.request("blog.test", "/feed")
        self.assertEqual(response.code, 302, response.body)
        self.assertEqual(response.header(b"location"), [b"/rss.xml"])
        self.assertEqual(
            [s for u in (self.main, self.app, self.static, self.blog) for s in u.seen],
            [],
        )
        await self.proxy.waitOutput('"GET /old/docs/page.html?x=1 HTTP/1.1" 301 ', 5)


class MountedRouteTests(_RoutesTestCase):
    """
    A route with C{strip_prefix}, C{rewrite_redirects} and
    C{upstream_host}, and the site's header rules on what it forwards.
    """

    async def test_stripPrefixAndUpstreamHost(self) -> None:
        """
        C{/app/account/settings?tab=1} reaches C{app} as
        C{/account/settings?tab=1}, with C{Host: app.internal}, the client's
        host in C{X-Forwarded-Host} and C{X-Forwarded-Prefix: /app} (not
        the one the client sent).  C{/app/} reaches it as C{/}.
        """
        response = await self.request(
            "shop.test",
            "/app/account/settings?tab=1",
            headers=[("X-Forwarded-Prefix", "/evil")],
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            response.body, self.app.answer("GET", "/account/settings?tab=1")
        )
        seen = self.app.seen[-1]
        self.assertEqual(seen.header("host"), ["app.internal"])
        self.assertEqual(seen.header("x-forwarded-host"), ["shop.test"])
        self.assertEqual(seen.header("x-forwarded-prefix"), ["/app"])
        self.assertEqual(seen.header("x-forwarded-proto"), ["http"])

        response = await self.request("shop.test", "/app/")
        self.assertEqual(response.body, self.app.answer("GET", "/"))

    async def test_rewriteRedirects(self) -> None:
        """
        The upstream's C{302 Location: /login} and C{Set-Cookie} paths come
        back to the client under C{/app}; the upstream's other attributes
        stay.  A C{Location} on another host stays as it is; a
        C{Content-Location} on the request's host and a C{Refresh} path go
        under C{/app}.
        """
        response = await self.request("shop.test", "/app/account/to-login")
        self.assertEqual(response.code, 302, response.body)
        self.assertEqual(self.app.seen[-1].uri, "/account/to-login")
        self.assertEqual(response.header(b"location"), [b"/app/login"])
        self.assertEqual(
            response.header(b"set-cookie"),
            [b"sid=abc; Path=/app/; HttpOnly", b"theme=dark; Path=/app/prefs; Secure"],
        )

        response = await self.request("shop.test", "/app/to-elsewhere")
        self.assertEqual(response.code, 303, response.body)
        self.assertEqual(response.header(b"location"), [b"https://other.example/login"])
        self.assertEqual(
            response.header(b"content-location"), [b"http://shop.test/app/done?x=1"]
        )
        self.assertEqual(response.header(b"refresh"), [b"5; url=/app/next"])

    async def test_siteHeaderRules(self) -> None:
        """
        The site's request rules apply to what its own upstream and its
        routes' get: C{X-Site} and C{X-Client} set (replacing the client's),
        C{X-Tag} added beside the client's, C{X-Secret} removed.  Its
        response rules apply to what comes back: C{X-Frame-Options} set,
        C{X-Note} added beside the upstream's, C{X-Powered-By} removed.
        """
        clientHeaders = [
            ("X-Site", "forged"),
            ("X-Tag", "from-client"),
            ("X-Secret", "hunter2"),
        ]
        for target, upstream, uri in [
            ("/cart", self.main, "/cart"),
            ("/app/cart", self.app, "/cart"),
        ]:
            response = await self.request("shop.test", target, headers=clientHeaders)
            self.assertEqual(response.code, 200, response.body)
            self.assertEqual(response.body, upstream.answer("GET", uri))
            seen = upstream.seen[-1]
            self.assertEqual(seen.header("x-site"), ["shop"], target)
            self.assertEqual(seen.header("x-client"), ["127.0.0.1"], target)
            self.assertEqual(
                sorted(seen.header("x-tag")), ["from-client", "from-proxy"], target
            )
            self.assertEqual(seen.header("x-secret"), [], target)
            self.assertEqual(response.header(b"x-frame-options"), [b"DENY"], target)
            self.assertEqual(
                sorted(response.header(b"x-note")), [b"site", b"upstream"], target
            )
            self.assertEqual(response.header(b"x-powered-by"), [], target)

        # blog.test has no header rules: all goes through as sent.
        response = await self.request("blog.test", "/x", headers=clientHeaders)
        seen = self.blog.seen[-1]
        self.assertEqual(seen.header("x-site"), ["forged"])
        self.assertEqual(seen.header("x-secret"), ["hunter2"])
        self.assertEqual(response.header(b"x-powered-by"), [b"test-upstream"])
        self.assertEqual(response.header(b"x-frame-options"), [])

    async def test_errorPage(self) -> None:
        """
        A route whose upstream refuses connections answers revproxy's 502
        as the site's HTML error page.
        """
        response = await self.request("shop.test", "/down/anything")
        self.assertEqual(response.code, 502, response.body)
        self.assertEqual(response.body, ERROR_PAGE)
        self.assertEqual(
            response.header(b"content-type"), [b"text/html; charset=utf-8"]
        )
        await self.proxy.waitOutput('"GET /down/anything HTTP/1.1" 502 ', 5)


class AdminRouteTests(_RoutesTestCase):
    """
    Admin C{route HOST PATH METHOD} says which rule a request meets, why,
    what it rewrites and what it does.
    """

    async def test_exact(self) -> None:
        """
        C{/healthz}: the exact route 0, a fixed answer, with the site's
        response rules.
        """
        answer = await self.admin("route shop.test /healthz GET")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual((answer["site"], answer["method"]), ("shop", "GET"))
        self.assertEqual(
            answer["rule"],
            {
                "kind": "exact",
                "index": 0,
                "path": "/healthz",
                "why": "exact path /healthz",
            },
        )
        self.assertEqual(
            answer["action"],
            {
                "respond": {
                    "status": 200,
                    "content_type": "text/plain; charset=utf-8",
                    "file": None,
                }
            },
        )
        rewrites = [r.lower() for r in answer["rewrites"]]
        self.assertIn("response header x-frame-options set to deny", rewrites)
        self.assertIn("response header x-powered-by removed", rewrites)
        self.assertIsNone(answer["upstream"])

        answer = await self.admin("route shop.test /submit POST")
        self.assertEqual(answer["rule"]["kind"], "exact", answer)
        self.assertEqual(answer["rule"]["methods"], ["POST"])
        self.assertEqual(
            (answer["action"], answer["upstream"]), ("proxy", self.blog.url)
        )

    async def test_answeredRuleForwardsNothing(self) -> None:
        """
        A rule that revproxy answers itself (C{respond}, C{redirect})
        forwards nothing, so the site's request header rules do not apply
        to it: C{route} does not list them as its rewrites (a regression
        test: it did, for C{/healthz} and C{/old/x}).
        """
        for command in ["route shop.test /healthz GET", "route shop.test /old/x GET"]:
            answer = await self.admin(command)
            self.assertEqual(answer["status"], "ok", answer)
            self.assertEqual(
                [r for r in answer["rewrites"] if r.startswith("request header ")],
                [],
                command,
            )

    async def test_prefix(self) -> None:
        """
        C{/app/account}: the prefix route C{/app/} (route 2), which strips
        the prefix, rewrites redirects and sets the Host; C{/app/static/x}:
        the longer prefix (route 3).
        """
        answer = await self.admin("route shop.test /app/account GET")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(
            answer["rule"],
            {
                "kind": "prefix",
                "index": 2,
                "path_prefix": "/app/",
                "why": "longest matching prefix /app/",
            },
        )
        rewrites = answer["rewrites"]
        self.assertIn(
            "prefix /app/ stripped: /account sent upstream, with "
            "X-Forwarded-Prefix: /app",
            rewrites,
        )
        self.assertIn(
            "Location, Content-Location, Refresh and Set-Cookie Path from the "
            "upstream written back under the prefix",
            rewrites,
        )
        self.assertIn("Host set to app.internal", rewrites)
        self.assertIn("request header x-secret removed", [r.lower() for r in rewrites])
        self.assertEqual(answer["action"], "proxy")
        self.assertEqual(answer["upstream"], self.app.url)

        answer = await self.admin("route shop.test /app/static/x GET")
        self.assertEqual(
            (answer["rule"]["kind"], answer["rule"]["path_prefix"]),
            ("prefix", "/app/static/"),
            answer,
        )
        self.assertEqual(answer["rule"]["index"], 3)
        self.assertEqual(answer["upstream"], self.static.url)

    async def test_site(self) -> None:
        """
        C{GET /submit} (a method the route does not take) and C{/cart}: the
        site's own rules, to C{main}; C{www.shop.test}: its site's
        redirect.
        """
        for command in ["route shop.test /cart GET", "route shop.test /submit GET"]:
            answer = await self.admin(command)
            self.assertEqual(answer["status"], "ok", answer)
            self.assertEqual(
                answer["rule"],
                {
                    "kind": "site",
                    "why": "no route of the site matches: the site's own rules",
                },
                command,
            )
            self.assertEqual(answer["action"], "proxy", command)
            self.assertEqual(answer["upstream"], self.main.url, command)
            self.assertIn("request header X-Site set to shop", answer["rewrites"])

        answer = await self.admin("route www.shop.test /a GET")
        self.assertEqual(
            answer["rule"], {"kind": "site", "why": "the site has no routes"}, answer
        )
        self.assertEqual(
            answer["action"],
            {"redirect": {"to": "https://shop.test{uri}", "status": 301}},
        )
        self.assertIsNone(answer["upstream"])


class ReloadUnderLoadTests(_RoutesTestCase):
    """
    Reloads that change routes do not fail requests in flight, and the new
    routes answer after them.
    """

    CLIENTS = 3
    RELOADS = 7
    INTERVAL = 0.3

    def expected(self) -> dict[tuple[str, str], dict[str, set[tuple[int, bytes]]]]:
        """
        Each request of the load, and the answers (status, body or
        C{Location}) each version of the config gives it.
        """
        return {
            ("shop.test", "/healthz"): {
                "both": {(200, b"ok shop.test/healthz q=\n")},
            },
            ("shop.test", "/app/items"): {
                "both": {(200, self.app.answer("GET", "/items"))},
            },
            ("www.shop.test", "/p?q=1"): {
                "both": {(301, b"https://shop.test/p?q=1")},
            },
            ("blog.test", "/static/s.css"): {
                "first": {(200, self.static.answer("GET", "/static/s.css"))},
                "second": {(200, self.app.answer("GET", "/static/s.css"))},
            },
            ("blog.test", "/feed"): {
                "first": {(302, b"/rss.xml")},
                "second": {(200, self.blog.answer("GET", "/feed"))},
            },
            ("blog.test", "/fresh"): {
                "first": {(200, self.blog.answer("GET", "/fresh"))},
                "second": {(200, b"fresh\n")},
            },
        }

    async def test_reloadsUnderLoad(self) -> None:
        """
        Three keep-alive clients loop over six requests (routes that stay,
        one that moves to another upstream, one removed, one added) while
        the config alternates between its two versions over seven admin
        reloads; no request fails or gets an answer of neither version, no
        connection closes, every reload answers ok, and both versions were
        seen for each route that changes.  After the last reload (the
        second version) its routes answer.
        """
        expected = self.expected()
        targets = list(expected)
        served: dict[tuple[tuple[str, str], str], int] = {}
        failures: list[str] = []
        stopping = False

        def verdict(key: tuple[str, str], response: RawResponse) -> str | None:
            location = response.header(b"location")
            got = (
                response.code,
                location[0] if location and response.code != 200 else response.body,
            )
            for version, answers in expected[key].items():
                if got in answers:
                    return version
            return None

        async def load(client: RawClient, offset: int) -> None:
            i = offset
            while not stopping:
                key = targets[i % len(targets)]
                i += 1
                try:
                    response = await client.request(_request(*key))
                except Exception as e:
                    failures.append(f"{key}: {type(e).__name__}: {e}")
                    return
                version = verdict(key, response)
                if version is None:
                    failures.append(f"{key}: {response.code} {response.body[:200]!r}")
                else:
                    served[key, version] = served.get((key, version), 0) + 1

        clients = []
        for _ in range(self.CLIENTS):
            client = await connectRaw(self.reactor, self.port)
            self.addCleanup(client.close)
            clients.append(client)
        started = self.reactor.seconds()
        loops = [
            Deferred.fromCoroutine(load(client, n)) for n, client in enumerate(clients)
        ]
        answers: list[dict[str, Any]] = []
        try:
            await deferLater(self.reactor, self.INTERVAL, lambda: None)
            for i in range(self.RELOADS):
                self.writeConfig(second=i % 2 == 0)
                answers.append(await self.admin("reload"))
                await deferLater(self.reactor, self.INTERVAL, lambda: None)
        finally:
            stopping = True
            await withTimeout(DeferredList(loops), EXIT_TIMEOUT, "the load stopping")
        elapsed = self.reactor.seconds() - started
        total = sum(served.values())
        _log.info(
            "Routes reload under load: {total} requests in {elapsed:.1f} s on "
            "{clients} keep-alive connections, {failed} failed, {reloads} reloads",
            total=total,
            elapsed=elapsed,
            clients=self.CLIENTS,
            failed=len(failures),
            reloads=len(answers),
        )
        self.assertEqual(failures, [])
        self.assertEqual([c for c in clients if c.disconnected], [])
        self.assertEqual(
            [(a.get("status"), a.get("generation")) for a in answers],
            [("ok", g) for g in range(2, self.RELOADS + 2)],
            answers,
        )
        self.assertEqual(
            [a["sites"]["changed"] for a in answers], [["blog"]] * self.RELOADS
        )
        # Each route that changes answered in both versions under load.
        for key, versions in expected.items():
            for version in versions:
                self.assertGreater(served.get((key, version), 0), 0, (key, version))
        self.assertGreater(total, 100)

        # The last reload applied the second version.
        response = await self.request("blog.test", "/fresh")
        self.assertEqual((response.code, response.body), (200, b"fresh\n"))
        response = await self.request("blog.test", "/feed")
        self.assertEqual(response.body, self.blog.answer("GET", "/feed"))
        response = await self.request("blog.test", "/static/s.css")
        self.assertEqual(response.body, self.app.answer("GET", "/static/s.css"))
        answer = await self.admin("route blog.test /fresh GET")
        self.assertEqual(answer["rule"]["kind"], "exact", answer)
        self.assertEqual(answer["rule"]["index"], 2)
        self.assertNoTraceback()
