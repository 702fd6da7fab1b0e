"""
Tests for access control at request time (L{revproxy.access},
L{revproxy.proxy.forwardauth} and the router): addresses allowed or denied,
basic auth, forward auth; over in-memory connections (the proxy as
L{tests.test_forwarder.ProxyHarness} wires it).
"""

from __future__ import annotations

import base64
import ipaddress
import os

import bcrypt
from twisted.trial.unittest import SynchronousTestCase

from revproxy.access import FailureLimit, addressAllowed, basicCredentials
from revproxy.config import AccessRules
from tests.test_forwarder import FakeClient, ProxyHarness, readRequest


def rules(
    allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), allowFirst: bool = True
) -> AccessRules:
    return AccessRules(
        allow=tuple(ipaddress.ip_network(a) for a in allow),
        deny=tuple(ipaddress.ip_network(d) for d in deny),
        allow_first=allowFirst,
    )


class AddressTests(SynchronousTestCase):
    """
    L{addressAllowed}: nginx's C{allow} and C{deny}.
    """

    def test_none(self) -> None:
        """
        Without lists, everyone is allowed.
        """
        self.assertTrue(addressAllowed(rules(), "192.0.2.1"))

    def test_allowOnly(self) -> None:
        """
        With an C{allow} list, only those it names.
        """
        allow = rules(allow=("10.0.0.0/8", "2001:db8::/32"))
        self.assertTrue(addressAllowed(allow, "10.1.2.3"))
        self.assertTrue(addressAllowed(allow, "2001:db8::1"))
        self.assertFalse(addressAllowed(allow, "192.0.2.1"))
        self.assertTrue(addressAllowed(allow, "::ffff:10.0.0.1"))
        self.assertFalse(addressAllowed(allow, "not an address"))

    def test_denyOnly(self) -> None:
        """
        With a C{deny} list only, everyone but those it names.
        """
        deny = rules(deny=("192.0.2.0/24",))
        self.assertFalse(addressAllowed(deny, "192.0.2.9"))
        self.assertTrue(addressAllowed(deny, "198.51.100.1"))

    def test_firstListDecides(self) -> None:
        """
        The list written first decides for an address both name.
        """
        self.assertTrue(
            addressAllowed(rules(("10.0.0.0/8",), ("10.1.0.0/16",)), "10.1.0.1")
        )
        self.assertFalse(
            addressAllowed(
                rules(("10.0.0.0/8",), ("10.1.0.0/16",), allowFirst=False), "10.1.0.1"
            )
        )


class CredentialsTests(SynchronousTestCase):
    """
    L{basicCredentials}.
    """

    def test_parse(self) -> None:
        token = base64.b64encode(b"al:ice:pw")
        self.assertEqual(basicCredentials(b"Basic " + token), ("al", b"ice:pw"))
        self.assertEqual(basicCredentials(b"basic  " + token), ("al", b"ice:pw"))
        self.assertIsNone(basicCredentials(None))
        self.assertIsNone(basicCredentials(b"Bearer x"))
        self.assertIsNone(basicCredentials(b"Basic !!!"))
        self.assertIsNone(basicCredentials(b"Basic " + base64.b64encode(b"nocolon")))


class FailureLimitTests(SynchronousTestCase):
    """
    L{FailureLimit}.
    """

    def test_window(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        limit = FailureLimit(clock, limit=2, window=10)
        limit.failed("a")
        self.assertIsNone(limit.blocked("a"))
        limit.failed("a")
        self.assertEqual(limit.blocked("a"), 10)
        self.assertIsNone(limit.blocked("b"))
        clock.advance(10)
        self.assertIsNone(limit.blocked("a"))
        limit.failed("a")
        limit.succeeded("a")
        self.assertIsNone(limit.blocked("a"))


BASE = """
[server]

[[sites]]
name = "a"
hosts = ["a.example"]
upstreams = ["http://10.1.0.1:8000"]
"""


class RouterAccessTests(SynchronousTestCase):
    """
    The router applies a site's access rules before forwarding.
    """

    def proxy(self, extra: str) -> ProxyHarness:
        base = self.mktemp()
        os.makedirs(base)
        hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
        with open(os.path.join(base, "htpasswd"), "w") as f:
            f.write(f"alice:{hashed}\n")
        return ProxyHarness(self, BASE + extra, baseDir=base)

    def get(
        self, proxy: ProxyHarness, headers: bytes = b"", ip: str = "203.0.113.9"
    ) -> FakeClient:
        client = proxy.client(ip)
        client.send(b"GET /x HTTP/1.1\r\nHost: a.example\r\n" + headers + b"\r\n")
        return client

    def test_denied(self) -> None:
        """
        An address the rules do not allow gets 403; nothing is forwarded.
        """
        proxy = self.proxy('allow = ["10.0.0.0/8"]\n')
        [response] = self.get(proxy).responses()
        self.assertEqual(response.code, 403)
        self.assertEqual(proxy.upstreamHosts(), [])
        self.get(proxy, ip="10.9.9.9")
        self.assertEqual(proxy.upstreamHosts(), ["10.1.0.1"])

    def test_basicMissing(self) -> None:
        """
        Without credentials: 401 with the realm.
        """
        proxy = self.proxy(
            'basic_auth = { realm = "staff", users_file = "htpasswd" }\n'
        )
        [response] = self.get(proxy).responses()
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.values(b"www-authenticate"),
            [b'Basic realm="staff", charset="UTF-8"'],
        )

    def test_basicRight(self) -> None:
        """
        The right password lets the request through, with the user name in
        C{X-Remote-User} (the client's own copy dropped) and without
        C{Authorization}.
        """
        proxy = self.proxy(
            'basic_auth = { realm = "staff", users_file = "htpasswd" }\n'
        )
        token = base64.b64encode(b"alice:secret")
        self.get(
            proxy, b"Authorization: Basic " + token + b"\r\nX-Remote-User: admin\r\n"
        )
        upstream = proxy.upstream()
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertEqual(request.values(b"x-remote-user"), [b"alice"])
        self.assertEqual(request.values(b"authorization"), [])

    def test_basicWrongThenBlocked(self) -> None:
        """
        A wrong password, or an unknown user, is 401; past the failure limit
        the client gets 429 even with the right one.
        """
        proxy = self.proxy(
            'basic_auth = { realm = "staff", users_file = "htpasswd" }\n'
        )
        wrong = b"Authorization: Basic " + base64.b64encode(b"alice:nope") + b"\r\n"
        for _ in range(10):
            [response] = self.get(proxy, wrong).responses()
            self.assertEqual(response.code, 401)
        right = b"Authorization: Basic " + base64.b64encode(b"alice:secret") + b"\r\n"
        [response] = self.get(proxy, right).responses()
        self.assertEqual(response.code, 429)
        self.assertEqual(proxy.upstreamHosts(), [])


class ForwardAuthTests(SynchronousTestCase):
    """
    A site behind forward auth asks the auth service first.
    """

    def setUp(self) -> None:
        self.proxy = ProxyHarness(
            self,
            BASE
            + 'forward_auth = { url = "http://127.0.0.1:9091/api/verify?rd=x", '
            + 'copy_headers = ["Remote-User", "Remote-Groups"], timeout_secs = 2 }\n',
        )

    def ask(self) -> FakeClient:
        client = self.proxy.client()
        client.send(
            b"GET /page?q=1 HTTP/1.1\r\nHost: a.example\r\nCookie: s=1\r\n"
            b"Remote-User: spoofed\r\n\r\n"
        )
        return client

    def test_asked(self) -> None:
        """
        The service gets a GET of its URL with what the request is and the
        client's cookie.
        """
        self.ask()
        auth = self.proxy.upstream(0)
        auth.accept()
        request = readRequest(auth.transport.value())
        self.assertEqual(request.line, b"GET /api/verify?rd=x HTTP/1.1")
        self.assertEqual(request.values(b"x-forwarded-method"), [b"GET"])
        self.assertEqual(request.values(b"x-forwarded-uri"), [b"/page?q=1"])
        self.assertEqual(request.values(b"x-forwarded-host"), [b"a.example"])
        self.assertEqual(request.values(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(request.values(b"x-forwarded-for"), [b"203.0.113.9"])
        self.assertEqual(request.values(b"cookie"), [b"s=1"])

    def test_allowed(self) -> None:
        """
        A 2xx lets the request through with the listed headers copied from
        the answer, the client's own copies removed.
        """
        self.ask()
        auth = self.proxy.upstream(0)
        auth.accept()
        auth.respond(
            b"HTTP/1.1 200 OK\r\nRemote-User: alice\r\nRemote-Groups: admins\r\n"
            b"Other: x\r\nContent-Length: 0\r\n\r\n"
        )
        upstream = self.proxy.upstream(1)
        self.assertEqual(upstream.host, "10.1.0.1")
        upstream.accept()
        request = readRequest(upstream.transport.value())
        self.assertEqual(request.values(b"remote-user"), [b"alice"])
        self.assertEqual(request.values(b"remote-groups"), [b"admins"])
        self.assertEqual(request.values(b"other"), [])

    def test_refused(self) -> None:
        """
        Any other answer goes to the client as the service sent it.
        """
        client = self.ask()
        auth = self.proxy.upstream(0)
        auth.accept()
        auth.respond(
            b"HTTP/1.1 302 Found\r\nLocation: https://auth.example/login\r\n"
            b"Content-Length: 5\r\n\r\nlogin"
        )
        [response] = client.responses()
        self.assertEqual(response.code, 302)
        self.assertEqual(response.values(b"location"), [b"https://auth.example/login"])
        self.assertEqual(response.body, b"login")
        self.assertEqual(self.proxy.upstreamHosts(), ["127.0.0.1"])

    def test_serviceDown(self) -> None:
        """
        An auth service that cannot be reached: 502, nothing forwarded.
        """
        client = self.ask()
        self.proxy.upstream(0).refuse()
        [response] = client.responses()
        self.assertEqual(response.code, 502)

    def test_timeout(self) -> None:
        """
        An auth service that does not answer in time: 504.
        """
        client = self.ask()
        self.proxy.upstream(0).accept()
        self.proxy.reactor.advance(2)
        [response] = client.responses()
        self.assertEqual(response.code, 504)


class BusyTests(SynchronousTestCase):
    """
    Too many password checks waiting: a login is answered 503.
    """

    def test_busy(self) -> None:
        from twisted.internet.defer import fail

        from revproxy.access import ChecksBusy

        base = self.mktemp()
        os.makedirs(base)
        with open(os.path.join(base, "htpasswd"), "w") as f:
            f.write("alice:" + bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode() + "\n")
        proxy = ProxyHarness(
            self,
            BASE + 'basic_auth = { realm = "r", users_file = "htpasswd" }\n',
            baseDir=base,
        )
        router = proxy.site.handler
        router.passwords._inThread = lambda check: fail(ChecksBusy())  # type: ignore[attr-defined]
        client = proxy.client()
        client.send(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nAuthorization: Basic "
            + base64.b64encode(b"alice:x")
            + b"\r\n\r\n"
        )
        [response] = client.responses()
        self.assertEqual(response.code, 503)
        self.assertEqual(response.values(b"retry-after"), [b"2"])
