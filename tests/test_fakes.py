"""
The fakes of L{tests.fakes} provide the interfaces they stand in for, so a
test that passes with a fake says something about the real thing's callers.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.acme import AcmeError
from revproxy.certificates import LoadedCertificate
from revproxy.config import parseConfig
from revproxy.interfaces import (
    ICertificateStore,
    IChallengeResponder,
    IIssuer,
    IRevProxyReactor,
)
from revproxy.reload import Applied, IReloadFollower, SiteChanges
from revproxy.runtime import buildRuntime
from tests.fakes import (
    FakeCertificateStore,
    FakeChallengeResponder,
    FakeIssuer,
    FakeReactor,
    FakeReloadFollower,
)


def _certificate(name: str) -> LoadedCertificate:
    """
    A stand-in certificate for C{name}: only its identity matters here.
    """
    return LoadedCertificate(
        chain=[],
        key=ec.generate_private_key(ec.SECP256R1()),
        names=(name,),
        not_after=0.0,
        issuer="CN=Test CA",
        source="files",
        path=f"/{name}.pem",
    )


class FakeReactorTests(SynchronousTestCase):
    """
    L{FakeReactor} is an L{IRevProxyReactor}.
    """

    def test_provides(self) -> None:
        """
        It provides L{IRevProxyReactor} and each of the reactor interfaces
        that make it up.
        """
        self.assertTrue(verifyObject(IRevProxyReactor, FakeReactor()))

    def test_callFromThreadKept(self) -> None:
        """
        A call from another thread is kept, not run, until the test runs it.
        """
        reactor = FakeReactor()
        calls: list[int] = []
        reactor.callFromThread(calls.append, 1)
        self.assertEqual(calls, [])
        [kept] = reactor.fromThreads
        kept()
        self.assertEqual(calls, [1])


class FakeCertificateStoreTests(SynchronousTestCase):
    """
    L{FakeCertificateStore} is an L{ICertificateStore}.
    """

    def test_provides(self) -> None:
        """
        It provides L{ICertificateStore}.
        """
        self.assertTrue(verifyObject(ICertificateStore, FakeCertificateStore({})))

    def test_lookup(self) -> None:
        """
        An exact name gets its certificate, any other name (or none) the
        default; every lookup is recorded.
        """
        a, fallback = _certificate("a.test"), _certificate("fallback.test")
        store = FakeCertificateStore({"a.test": a}, fallback)
        self.assertIs(store.lookup("a.test"), a)
        self.assertIs(store.lookup("b.test"), fallback)
        self.assertIs(store.lookup(None), fallback)
        self.assertEqual(store.lookups, ["a.test", "b.test", None])
        self.assertIsNone(FakeCertificateStore({}).lookup("a.test"))

    def test_allEachOnce(self) -> None:
        """
        L{FakeCertificateStore.all} has each certificate once, however many
        names it has.
        """
        a, b = _certificate("a.test"), _certificate("b.test")
        store = FakeCertificateStore({"a.test": a, "www.a.test": a}, b)
        self.assertEqual(store.all(), [a, b])


class FakeChallengeResponderTests(SynchronousTestCase):
    """
    L{FakeChallengeResponder} is an L{IChallengeResponder}.
    """

    def test_provides(self) -> None:
        """
        It provides L{IChallengeResponder}.
        """
        self.assertTrue(verifyObject(IChallengeResponder, FakeChallengeResponder()))

    def test_published(self) -> None:
        """
        C{published} is logged (not among L{calls}) and fires at once, or
        returns C{publishing} when a test set it.
        """
        responder = FakeChallengeResponder()
        responder.addHTTP01("token", "token.thumb")
        self.assertIsNone(self.successResultOf(responder.published()))
        held: Deferred[None] = Deferred()
        responder.publishing = held
        self.assertIs(responder.published(), held)
        self.assertEqual(responder.log[1:], [("published",), ("published",)])
        self.assertEqual(responder.calls, [("addHTTP01", "token")])

    def test_publishedAndLogged(self) -> None:
        """
        Adds publish an answer and removes take it away; every call is in
        the shared log, after what others logged there, and in L{calls}
        without them.
        """
        log: list[tuple[object, ...]] = [("newOrder",)]
        responder = FakeChallengeResponder(log)
        responder.addHTTP01("token", "token.thumb")
        responder.addTLSALPN01("a.test", "auth")
        self.assertEqual(responder.http01, {"token": "token.thumb"})
        self.assertEqual(responder.tlsalpn01, {"a.test": "auth"})
        responder.removeHTTP01("token")
        responder.removeTLSALPN01("a.test")
        self.assertEqual((responder.http01, responder.tlsalpn01), ({}, {}))
        self.assertEqual(
            log,
            [
                ("newOrder",),
                ("addHTTP01", "token", "token.thumb"),
                ("addTLSALPN01", "a.test", "auth"),
                ("removeHTTP01", "token"),
                ("removeTLSALPN01", "a.test"),
            ],
        )
        self.assertEqual(
            [method for method, _ in responder.calls],
            ["addHTTP01", "addTLSALPN01", "removeHTTP01", "removeTLSALPN01"],
        )
        self.assertEqual(responder.offThread, [])

    def test_failRemove(self) -> None:
        """
        With C{failRemove}, a remove takes the answer away, then raises.
        """
        responder = FakeChallengeResponder()
        responder.addHTTP01("token", "token.thumb")
        responder.failRemove = True
        self.assertRaises(RuntimeError, responder.removeHTTP01, "token")
        self.assertEqual(responder.http01, {})


class FakeIssuerTests(SynchronousTestCase):
    """
    L{FakeIssuer} is an L{IIssuer}.
    """

    def test_provides(self) -> None:
        """
        It provides L{IIssuer}.
        """
        self.assertTrue(verifyObject(IIssuer, FakeIssuer(Clock())))

    def test_grantAndRefuse(self) -> None:
        """
        An order waits until the test grants it (a chain for its names,
        valid from now) or refuses it (an L{AcmeError}).
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        issuer = FakeIssuer(clock)
        key = ec.generate_private_key(ec.SECP256R1())
        granted = issuer.issue(["a.test"], key, FakeChallengeResponder())
        refused = issuer.issue(["b.test"], key, FakeChallengeResponder())
        self.assertNoResult(granted)
        issuer.grant(0)
        leafPEM, _ = self.successResultOf(granted)
        leaf = x509.load_pem_x509_certificate(leafPEM)
        self.assertEqual(
            leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName),
            ["a.test"],
        )
        self.assertEqual(leaf.not_valid_before_utc.timestamp(), clock.seconds())
        issuer.refuse(1, "no")
        self.failureResultOf(refused, AcmeError)

    def test_renewalWindow(self) -> None:
        """
        L{FakeIssuer.renewalWindow} answers its C{window} at once and
        records the leaf asked about.
        """
        issuer = FakeIssuer(Clock())
        issuer.window = (1.0, 2.0)
        self.assertEqual(
            self.successResultOf(issuer.renewalWindow(b"leaf")), (1.0, 2.0)
        )
        self.assertEqual(issuer.windows, [b"leaf"])


class FakeReloadFollowerTests(SynchronousTestCase):
    """
    L{FakeReloadFollower}.
    """

    def test_provides(self) -> None:
        """
        It provides L{IReloadFollower}.
        """
        self.assertTrue(verifyObject(IReloadFollower, FakeReloadFollower("f", [])))

    def test_records(self) -> None:
        """
        Each step is recorded with what identifies it; C{failFollow} makes
        C{follow} raise after recording.
        """
        steps: list[tuple[str, object]] = []
        follower = FakeReloadFollower("f", steps, failFollow=True)
        runtime = buildRuntime(parseConfig(_CONFIG), Clock())
        follower.reloadStarting("admin")
        follower.prepare(runtime)
        self.assertRaises(RuntimeError, follower.follow, runtime)
        follower.reloadEnded(
            Applied(1, "", SiteChanges((), (), (), 1), (), (), failed=("f",))
        )
        self.assertEqual(
            steps,
            [
                ("f starting", "admin"),
                ("f prepare", 1),
                ("f follow", 1),
                ("f ended", False),
            ],
        )


_CONFIG = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "a"
hosts = ["a.example"]
upstreams = ["http://127.0.0.1:9001"]
"""
