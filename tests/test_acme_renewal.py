"""
Tests for L{revproxy.acme.renewal}: with a fake issuer, an in-memory
storage and a L{Clock}.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme import AcmeBackoff, AcmeError
from revproxy.acme.renewal import (
    CHECK_INTERVAL,
    CLOCK_SKEW_SECS,
    AcmeManager,
    RenewalResult,
    loadRecord,
    placeholderCertificate,
)
from revproxy.acme.storage import BackoffRecord, CertificateRecord
from revproxy.config import AcmeConfig, SiteConfig, Upstream
from revproxy.interfaces import IIssuer
from tests.fakes import DAY, FakeChallengeResponder, FakeIssuer, signed

NOW = datetime(2027, 3, 1, tzinfo=UTC).timestamp()
UPSTREAM = Upstream("http://127.0.0.1:8000", "http", "127.0.0.1", 8000)


def record(
    names: Sequence[str], notBefore: float, lifetime: float = 90 * DAY
) -> CertificateRecord:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = signed(names, key, notBefore, lifetime)
    return CertificateRecord(
        names=tuple(names),
        chainPEM=b"".join(chain),
        keyPEM=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        notBefore=notBefore,
        notAfter=notBefore + lifetime,
        issuedAt=notBefore,
        directoryURL="https://ca.test/dir",
    )


class MemoryStorage:
    """
    The part of L{revproxy.acme.storage.AcmeStorage} the manager uses, in
    memory; C{broken} makes every write fail.
    """

    def __init__(self) -> None:
        self.certificates: dict[str, CertificateRecord] = {}
        self.backoffs: dict[str, BackoffRecord] = {}
        self.broken = False
        self.unreadable: set[str] = set()

    def loadCertificate(self, site: str) -> CertificateRecord | None:
        if site in self.unreadable:
            raise AcmeError(f"/state/certs/{site}/meta.json: not JSON")
        return self.certificates.get(site)

    def saveCertificate(self, site: str, rec: CertificateRecord) -> None:
        if self.broken:
            raise AcmeError(f"cannot write /state/certs/{site}: Read-only file system")
        self.certificates[site] = rec

    def loadBackoff(self, site: str) -> BackoffRecord | None:
        return self.backoffs.get(site)

    def saveBackoff(self, site: str, rec: BackoffRecord | None) -> None:
        if self.broken:
            raise AcmeError(f"cannot write /state/certs/{site}: Read-only file system")
        if rec is None:
            self.backoffs.pop(site, None)
        else:
            self.backoffs[site] = rec


def acmeSite(name: str, *hosts: str) -> SiteConfig:
    return SiteConfig(name=name, hosts=hosts, upstreams=(UPSTREAM,), tls="acme")


class ManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.storage = MemoryStorage()
        self.issuer = FakeIssuer(self.clock)
        self.factoryCalls = 0
        self.changes = 0
        self.config = AcmeConfig(email="ops@example.com")
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def issuerFactory(self) -> IIssuer:
        self.factoryCalls += 1
        return self.issuer

    def manager(self, *sites: SiteConfig, start: bool = True) -> AcmeManager:
        manager = AcmeManager(
            self.clock,
            self.storage,  # type: ignore[arg-type]
            self.issuerFactory,
            self.config,
            FakeChallengeResponder(),
            rng=random.Random(4),
        )

        def changed() -> None:
            self.changes += 1

        manager.onChange = changed
        manager.updateSites(sites)
        if start:
            manager.startService()
            self.addCleanup(manager.stopService)
        return manager

    def logged(self, text: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def test_firstStartOrders(self) -> None:
        """
        A site without a stored certificate is served a placeholder at once
        and ordered; when the order succeeds the certificate is stored,
        swapped in (onChange) and the reason logged.
        """
        manager = self.manager(acmeSite("app", "a.test", "www.a.test"))
        cert = manager.certificates()["app"]
        self.assertEqual(cert.source, "placeholder")
        self.assertEqual(cert.names, ("a.test", "www.a.test"))
        self.assertFalse(manager.isIssued("app"))
        self.assertTrue(self.logged("serving a self-signed placeholder"))
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.orders), 1)
        self.assertEqual(self.issuer.orders[0].names, ("a.test", "www.a.test"))
        before = self.changes
        self.issuer.grant()
        self.assertEqual(self.changes, before + 1)
        cert = manager.certificates()["app"]
        self.assertEqual(cert.source, "acme")
        self.assertTrue(manager.isIssued("app"))
        stored = self.storage.certificates["app"]
        self.assertEqual(stored.names, ("a.test", "www.a.test"))
        self.assertEqual(loadRecord(stored).chain, cert.chain)
        self.assertTrue(self.logged("certificate issued for a.test, www.a.test"))

    def test_orderedOnAMovingClock(self) -> None:
        """
        A site is ordered at start, and an issued certificate renewed when
        due, even when the clock moves between two readings (as a real
        one does).
        """

        class TickingClock(Clock):
            def seconds(self) -> float:
                self.rightNow += 0.001
                return self.rightNow

        self.clock = TickingClock()
        self.clock.advance(NOW)
        self.issuer = FakeIssuer(self.clock)
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.orders), 1)
        self.issuer.grant(lifetime=6 * DAY)
        self.assertTrue(manager.isIssued("app"))
        self.clock.advance(3 * DAY)
        self.assertEqual(len(self.issuer.orders), 2)

    def test_storedReusedWithoutOrder(self) -> None:
        """
        A valid stored certificate for the same names is served at start
        without a new order (no CA rate-limit lockouts from restarts).
        """
        self.storage.certificates["app"] = record(["a.test"], NOW - 10 * DAY)
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.assertEqual(self.issuer.orders, [])
        self.assertTrue(manager.isIssued("app"))
        # The CA's renewal window is asked for, at most every 6 hours.
        self.assertEqual(len(self.issuer.windows), 1)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.issuer.orders, [])
        self.assertEqual(len(self.issuer.windows), 1)
        self.clock.advance(5 * CHECK_INTERVAL)
        self.assertEqual(len(self.issuer.windows), 2)
        self.assertEqual(self.factoryCalls, 1)

    def test_renewedAtOneThirdLeft(self) -> None:
        """
        A 90-day certificate is renewed when about 30 days are left (a
        little earlier, with jitter), not before.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW)
        manager = self.manager(acmeSite("app", "a.test"))
        answer = manager.describeAll()[0]
        assert answer.nextRenewal is not None
        self.assertIn("1/3", answer.nextRenewalReason)
        due = answer.nextRenewal - NOW
        self.assertTrue(55 * DAY < due <= 60 * DAY, due / DAY)
        # Hourly checks until then order nothing.
        while self.clock.seconds() < NOW + due - CHECK_INTERVAL:
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.issuer.orders, [])
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.issuer.orders), 1)

    def test_expiredStoredOrdered(self) -> None:
        """
        An expired stored certificate is not served; the site gets a
        placeholder and an order.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW - 91 * DAY)
        manager = self.manager(acmeSite("app", "a.test"))
        self.assertEqual(manager.certificates()["app"].source, "placeholder")
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.orders), 1)

    def test_unreadableStoredOrdered(self) -> None:
        """
        A stored record that cannot be read is logged in one line and a new
        certificate ordered.
        """
        self.storage.unreadable.add("app")
        manager = self.manager(acmeSite("app", "a.test"))
        self.assertEqual(manager.certificates()["app"].source, "placeholder")
        self.assertTrue(self.logged("/state/certs/app/meta.json: not JSON"))
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.orders), 1)

    def test_failureBacksOffAndServes(self) -> None:
        """
        A failed order keeps the placeholder serving, is logged with the
        CA's reason, and is retried after a back-off that doubles, capped
        at a day; the back-off is stored.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.issuer.refuse(message="a.test: connection refused")
        self.assertEqual(manager.certificates()["app"].source, "placeholder")
        backoff = self.storage.backoffs["app"]
        self.assertEqual(backoff.failures, 1)
        self.assertEqual(backoff.lastError, "a.test: connection refused")
        self.assertTrue(30 <= backoff.retryAt - NOW <= 60)
        self.assertTrue(self.logged("order failed (1 in a row)"))
        answer = manager.describeAll()[0]
        self.assertEqual(answer.lastError, "a.test: connection refused")
        self.assertIn("back-off until", answer.nextRenewalReason)
        delays = []
        for failures in range(2, 14):
            last = self.clock.seconds()
            before = len(self.issuer.orders)
            self.clock.advance(self.storage.backoffs["app"].retryAt - last)
            self.assertEqual(len(self.issuer.orders), before + 1)
            delays.append(self.storage.backoffs["app"].retryAt - last)
            self.issuer.refuse()
            self.assertEqual(self.storage.backoffs["app"].failures, failures)
        final = self.storage.backoffs["app"].retryAt - self.clock.seconds()
        self.assertTrue(DAY / 2 <= final <= DAY, final)
        # Success clears the back-off.
        self.clock.advance(final)
        self.issuer.grant()
        self.assertNotIn("app", self.storage.backoffs)
        self.assertTrue(manager.isIssued("app"))

    def test_backoffSurvivesRestart(self) -> None:
        """
        A stored back-off is honoured by a new process: no order before
        its retry time.
        """
        self.storage.backoffs["app"] = BackoffRecord(
            failures=5, retryAt=NOW + 900, lastError="rate limited", lastErrorAt=NOW
        )
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(899)
        self.assertEqual(self.issuer.orders, [])
        self.clock.advance(1)
        self.assertEqual(len(self.issuer.orders), 1)
        self.issuer.refuse()
        self.assertEqual(self.storage.backoffs["app"].failures, 6)
        self.assertEqual(manager.describeAll()[0].ordering, False)

    def test_oneOrderAtATime(self) -> None:
        """
        Checks and reloads while an order is in progress start no second
        one.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        manager.updateSites([acmeSite("app", "a.test")])
        manager.updateSites([acmeSite("app", "a.test")])
        self.clock.advance(CHECK_INTERVAL * 3)
        self.assertEqual(len(self.issuer.orders), 1)
        self.assertTrue(manager.describeAll()[0].ordering)

    def test_hostsChangedDuringOrder(self) -> None:
        """
        When a reload changes a site's hosts during its order, the result
        is kept for the old names and a new order follows for the new ones.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        manager.updateSites([acmeSite("app", "a.test", "b.test")])
        self.issuer.grant(0)
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.orders), 2)
        self.assertEqual(self.issuer.orders[1].names, ("a.test", "b.test"))
        self.issuer.grant(1)
        self.assertEqual(manager.certificates()["app"].names, ("a.test", "b.test"))

    def test_reloadAddsAndRemoves(self) -> None:
        """
        Reloads add acme sites (ordered) and remove them (forgotten, the
        stored files kept); sites with other tls modes are ignored.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.issuer.grant()
        files = SiteConfig(
            name="files",
            hosts=("f.test",),
            upstreams=(UPSTREAM,),
            tls="files",
            cert_file="x",
            key_file="y",
        )
        manager.updateSites(
            [acmeSite("app", "a.test"), acmeSite("new", "n.test"), files]
        )
        self.assertEqual(sorted(manager.certificates()), ["app", "new"])
        self.clock.advance(0)
        self.assertEqual([o.names for o in self.issuer.orders][1:], [("n.test",)])
        manager.updateSites([acmeSite("new", "n.test")])
        self.assertEqual(sorted(manager.certificates()), ["new"])
        self.assertIn("app", self.storage.certificates)

    def test_removedDuringOrder(self) -> None:
        """
        A site removed while its order runs does not come back when the
        order ends.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        manager.updateSites([])
        self.issuer.grant()
        self.assertEqual(manager.certificates(), {})

    def test_forcedRenewal(self) -> None:
        """
        C{renew SITE} orders now, whatever the schedule, and answers when
        the order ends.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW)
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.assertEqual(self.issuer.orders, [])
        d = manager.renew("app")
        self.assertNoResult(d)
        self.issuer.grant()
        answer = self.successResultOf(d)
        self.assertIsNone(answer.error)
        assert answer.site is not None
        self.assertEqual(answer.site.source, "acme")
        self.assertEqual(len(self.issuer.orders), 1)

    def test_forcedRenewalFails(self) -> None:
        """
        A forced renewal that fails answers the error; the current
        certificate keeps serving.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW)
        manager = self.manager(acmeSite("app", "a.test"))
        d = manager.renew("app")
        self.issuer.refuse(message="rateLimited: too many certificates")
        answer = self.successResultOf(d)
        self.assertEqual(answer.error, "rateLimited: too many certificates")
        self.assertTrue(manager.isIssued("app"))

    def test_renewUnknownSite(self) -> None:
        """
        C{renew} of a site that is not an acme site is an error answer.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        answer = self.successResultOf(manager.renew("other"))
        self.assertEqual(answer, RenewalResult("no acme site named other", None))

    def test_issuerFactoryFails(self) -> None:
        """
        An issuer that cannot be built (unreadable account key, ...) fails
        the order with back-off; serving continues and it is retried.
        """

        def broken() -> IIssuer:
            raise AcmeError("cannot read /state/acme/account.key: Permission denied")

        manager = AcmeManager(
            self.clock,
            self.storage,  # type: ignore[arg-type]
            broken,
            self.config,
            FakeChallengeResponder(),
            rng=random.Random(1),
        )
        manager.updateSites([acmeSite("app", "a.test")])
        manager.startService()
        self.addCleanup(manager.stopService)
        self.clock.advance(0)
        self.assertEqual(
            self.storage.backoffs["app"].lastError,
            "cannot read /state/acme/account.key: Permission denied",
        )
        self.assertEqual(manager.certificates()["app"].source, "placeholder")
        # A forced renewal fails at once, with the same reason.
        answer = self.successResultOf(manager.renew("app"))
        self.assertEqual(
            answer.error, "cannot read /state/acme/account.key: Permission denied"
        )
        self.assertEqual(self.storage.backoffs["app"].failures, 2)

    def test_storageBrokenStillServes(self) -> None:
        """
        A certificate that cannot be stored is served anyway, and the
        problem logged.
        """
        self.storage.broken = True
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.issuer.grant()
        self.assertTrue(manager.isIssued("app"))
        self.assertTrue(self.logged("could not be stored"))

    def test_unexpectedErrorLogged(self) -> None:
        """
        An unexpected exception from the issuer is logged with its
        traceback and treated as a failed order, and checks go on.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.issuer.orders[0].result.errback(ZeroDivisionError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(manager.describeAll()[0].lastError, "internal error: boom")
        self.clock.advance(self.storage.backoffs["app"].retryAt - self.clock.seconds())
        self.assertEqual(len(self.issuer.orders), 2)

    def test_ariWindowWins(self) -> None:
        """
        When the CA offers a renewal window, the renewal falls inside it.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW)
        self.issuer.window = (NOW + 10 * DAY, NOW + 11 * DAY)
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.windows), 1)
        answer = manager.describeAll()[0]
        self.assertIn("ARI", answer.nextRenewalReason)
        self.clock.advance(11 * DAY)
        self.assertEqual(len(self.issuer.orders), 1)

    def test_stopCancelsTimer(self) -> None:
        """
        Stopping leaves no timer behind.
        """
        manager = self.manager(acmeSite("app", "a.test"), start=False)
        manager.startService()
        self.assertTrue(self.clock.getDelayedCalls())
        manager.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_placeholder(self) -> None:
        """
        The placeholder is self-signed for the site's names and valid now.
        """
        cert = placeholderCertificate("app", ["a.test", "b.test"], NOW)
        leaf = cert.chain[0]
        self.assertEqual(leaf.issuer, leaf.subject)
        self.assertTrue(leaf.not_valid_before_utc.timestamp() <= NOW < cert.not_after)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            san.value.get_values_for_type(x509.DNSName), ["a.test", "b.test"]
        )

    def test_failCheckNotFatal(self) -> None:
        """
        An exception inside a check is logged and the next check still
        comes.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.patch(manager, "_order", lambda state: 1 / 0)
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(self.clock.getDelayedCalls())


@attrs.define
class OrderCall:
    """
    One order a L{FakeOrders} was asked for; C{result} is answered by the
    test.
    """

    site: str
    names: tuple[str, ...]
    issue: Callable[[], Deferred[CertificateRecord]]
    wanted: Callable[[CertificateRecord], bool]
    forced: bool
    result: Deferred[tuple[CertificateRecord, str]]


class FakeOrders:
    """
    A L{revproxy.acme.renewal.Orders} (the fleet's, in the proxy) whose
    orders the test answers.
    """

    def __init__(self) -> None:
        self.calls: list[OrderCall] = []

    def order(
        self,
        site: str,
        names: tuple[str, ...],
        issue: Callable[[], Deferred[CertificateRecord]],
        wanted: Callable[[CertificateRecord], bool],
        forced: bool,
    ) -> Deferred[tuple[CertificateRecord, str]]:
        d: Deferred[tuple[CertificateRecord, str]] = Deferred()
        self.calls.append(OrderCall(site, names, issue, wanted, forced, d))
        return d


class FleetManagerTests(SynchronousTestCase):
    """
    L{AcmeManager} with C{orders} (the fleet's): certificates another node
    got are served (from an order, or offered by L{AcmeManager.adopt}),
    back-offs the fleet decided are waited out, forced renewals want a
    certificate issued since.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.storage = MemoryStorage()
        self.issuer = FakeIssuer(self.clock)
        self.factoryCalls = 0
        self.changes = 0
        self.orders = FakeOrders()
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.addCleanup(self.assertNoTimers)

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def issuerFactory(self) -> IIssuer:
        self.factoryCalls += 1
        return self.issuer

    def manager(self, *sites: SiteConfig) -> AcmeManager:
        manager = AcmeManager(
            self.clock,
            self.storage,  # type: ignore[arg-type]
            self.issuerFactory,
            AcmeConfig(email="ops@example.com"),
            FakeChallengeResponder(),
            rng=random.Random(4),
            orders=self.orders,
        )

        def changed() -> None:
            self.changes += 1

        manager.onChange = changed
        manager.updateSites(sites)
        manager.startService()
        self.addCleanup(manager.stopService)
        return manager

    def logged(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def test_fromTheFleet(self) -> None:
        """
        An order that the fleet answers with another node's certificate
        serves it without asking the CA, stores it locally, and logs where
        it comes from.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        [call] = self.orders.calls
        self.assertEqual(
            (call.site, call.names, call.forced), ("app", ("a.test",), False)
        )
        got = record(["a.test"], NOW - DAY)
        call.result.callback((got, "node node-b of the fleet"))
        self.assertTrue(manager.isIssued("app"))
        self.assertEqual(manager.certificates()["app"].chain, loadRecord(got).chain)
        self.assertEqual(self.storage.certificates["app"], got)
        self.assertEqual(self.changes, 2)
        self.assertEqual(self.issuer.orders, [])
        self.assertEqual(self.factoryCalls, 0)
        self.assertTrue(
            self.logged("certificate from node node-b of the fleet for a.test")
        )
        self.assertFalse(self.logged("certificate issued"))

    def test_issuedThroughTheFleet(self) -> None:
        """
        The fleet's C{issue} orders with the CA: a record for the site's
        names, issued now; served as issued.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        [call] = self.orders.calls
        issued = call.issue()
        self.assertEqual(len(self.issuer.orders), 1)
        self.clock.advance(3)
        self.issuer.grant()
        got = self.successResultOf(issued)
        self.assertEqual(got.names, ("a.test",))
        self.assertEqual(got.issuedAt, NOW + 3)
        self.assertEqual(got.directoryURL, AcmeConfig(email="x").directory_url)
        call.result.callback((got, ""))
        self.assertTrue(manager.isIssued("app"))
        self.assertTrue(self.logged("certificate issued for a.test"))

    def test_fleetBackoff(self) -> None:
        """
        An L{AcmeBackoff} not C{ordered} (another node's failure waited
        out) sets the fleet's back-off as it is (no failure added), stores
        it, logs why (without a failure count), and the site is ordered
        again at its C{retryAt}.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        backoff = BackoffRecord(
            failures=3, retryAt=NOW + 600, lastError="refused", lastErrorAt=NOW - 5
        )
        self.orders.calls[0].result.errback(
            AcmeBackoff("the fleet waits after node-b's failed order", backoff, False)
        )
        self.assertEqual(self.storage.backoffs["app"], backoff)
        answer = manager.describeAll()[0]
        self.assertEqual(answer.lastError, "refused")
        self.assertEqual(answer.nextRenewal, NOW + 600)
        # Another node's failures are not counted as this node's.
        self.assertTrue(
            self.logged("the fleet waits after node-b's failed order, retrying at")
        )
        self.assertFalse(self.logged("in a row"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.clock.advance(599)
        self.assertEqual(len(self.orders.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.orders.calls), 2)

    def test_orderedBackoff(self) -> None:
        """
        An L{AcmeBackoff} C{ordered} (this node's order failed, counted by
        the fleet) is logged as a failed order, with the fleet's count.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        backoff = BackoffRecord(
            failures=5, retryAt=NOW + 900, lastError="rateLimited", lastErrorAt=NOW
        )
        self.orders.calls[0].result.errback(AcmeBackoff("rateLimited", backoff, True))
        self.assertEqual(self.storage.backoffs["app"], backoff)
        self.assertTrue(self.logged("order failed (5 in a row)"))
        self.assertEqual(manager.describeAll()[0].nextRenewal, NOW + 900)

    def test_adopt(self) -> None:
        """
        L{AcmeManager.adopt} serves a newer certificate for the site's
        names, stores it, says so and logs where it comes from.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW - 10 * DAY)
        manager = self.manager(acmeSite("app", "a.test"))
        newer = record(["a.test"], NOW - DAY)
        before = self.changes
        self.assertTrue(manager.adopt("app", newer, "node node-b of the fleet"))
        self.assertEqual(manager.certificates()["app"].chain, loadRecord(newer).chain)
        self.assertEqual(self.storage.certificates["app"], newer)
        self.assertEqual(self.changes, before + 1)
        self.assertTrue(self.logged("certificate from node node-b of the fleet"))
        # Taken: not offered again.
        self.assertFalse(manager.adopt("app", newer, "node node-b of the fleet"))

    def test_adoptClearsBackoff(self) -> None:
        """
        A certificate adopted during a back-off ends it.
        """
        self.storage.backoffs["app"] = BackoffRecord(
            failures=2, retryAt=NOW + 900, lastError="refused", lastErrorAt=NOW
        )
        manager = self.manager(acmeSite("app", "a.test"))
        self.assertTrue(manager.adopt("app", record(["a.test"], NOW), "node b"))
        self.assertNotIn("app", self.storage.backoffs)
        self.assertIsNone(manager.describeAll()[0].lastError)

    def test_adoptRefused(self) -> None:
        """
        L{AcmeManager.adopt} refuses, serving what it served: a certificate
        not newer than the served one, for other names, expired, or for an
        unknown site.
        """
        current = record(["a.test"], NOW - 10 * DAY)
        self.storage.certificates["app"] = current
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        served = manager.certificates()["app"]
        for site, offered in [
            ("app", record(["a.test"], NOW - 11 * DAY)),
            ("app", record(["a.test"], NOW - 10 * DAY)),
            ("app", record(["a.test", "b.test"], NOW - DAY)),
            ("app", record(["a.test"], NOW - 2 * DAY, lifetime=DAY)),
            ("other", record(["a.test"], NOW - DAY)),
        ]:
            self.assertFalse(manager.adopt(site, offered, "node b"), offered)
            self.assertIs(manager.certificates()["app"], served)
        self.assertEqual(self.storage.certificates, {"app": current})

    def test_adoptDuringOrder(self) -> None:
        """
        While the site's own order runs, nothing is adopted (the order
        takes the fleet's certificate itself).
        """
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        self.assertFalse(manager.adopt("app", record(["a.test"], NOW), "node b"))
        self.assertFalse(manager.isIssued("app"))
        self.orders.calls[0].result.errback(AcmeError("stopping"))

    def test_adoptUnusable(self) -> None:
        """
        A certificate whose key does not match is refused without raising,
        logged, and neither served nor stored.
        """
        manager = self.manager(acmeSite("app", "a.test"))
        good = record(["a.test"], NOW)
        bad = attrs.evolve(good, keyPEM=record(["a.test"], NOW).keyPEM)
        self.assertFalse(manager.adopt("app", bad, "node node-b of the fleet"))
        self.assertFalse(manager.isIssued("app"))
        self.assertEqual(self.storage.certificates, {})
        self.assertTrue(
            self.logged("the certificate from node node-b of the fleet is unusable")
        )
        garbage = attrs.evolve(good, keyPEM=b"not a key")
        self.assertFalse(manager.adopt("app", garbage, "node b"))

    def test_wanted(self) -> None:
        """
        A scheduled order wants a valid certificate for the site's names
        issued after the served one.
        """
        current = record(["a.test"], NOW - 80 * DAY)
        self.storage.certificates["app"] = current
        self.manager(acmeSite("app", "a.test"))
        self.clock.advance(0)
        [call] = self.orders.calls
        self.assertFalse(call.forced)
        self.assertFalse(call.wanted(current))
        self.assertFalse(call.wanted(record(["a.test"], NOW - 81 * DAY)))
        self.assertTrue(call.wanted(record(["a.test"], NOW - 79 * DAY)))
        self.assertFalse(call.wanted(record(["b.test"], NOW)))
        self.assertFalse(call.wanted(record(["a.test"], NOW - 2 * DAY, lifetime=DAY)))
        call.result.errback(AcmeError("stopping"))

    def test_forcedWantsOtherThanServed(self) -> None:
        """
        A forced renewal just after an issuance (within the clock skew) does
        not take the certificate the node already serves: it wants a newer
        one.
        """
        served = record(["a.test"], NOW + 90)
        self.storage.certificates["app"] = served
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(100)
        manager.renew("app")
        [call] = self.orders.calls
        self.assertTrue(call.forced)
        self.assertFalse(call.wanted(served))
        self.assertTrue(call.wanted(record(["a.test"], NOW + 95)))
        call.result.errback(AcmeError("stopping"))

    def test_forcedWantsNew(self) -> None:
        """
        A forced renewal (C{renew}) is a forced order, and wants only a
        certificate issued since it was asked (give or take the nodes'
        clock skew, L{CLOCK_SKEW_SECS}); its answer follows the fleet's.
        """
        self.storage.certificates["app"] = record(["a.test"], NOW - 10 * DAY)
        manager = self.manager(acmeSite("app", "a.test"))
        self.clock.advance(100)
        d = manager.renew("app")
        [call] = self.orders.calls
        self.assertTrue(call.forced)
        self.assertFalse(
            call.wanted(record(["a.test"], NOW + 100 - CLOCK_SKEW_SECS - 1))
        )
        self.assertTrue(call.wanted(record(["a.test"], NOW + 100 - CLOCK_SKEW_SECS)))
        fresh = record(["a.test"], NOW + 100)
        self.assertTrue(call.wanted(fresh))
        call.result.callback((fresh, "node node-b of the fleet"))
        answer = self.successResultOf(d)
        self.assertIsNone(answer.error)
        self.assertEqual(self.storage.certificates["app"], fresh)

    def test_resetIssuer(self) -> None:
        """
        The issuer is built once; after L{AcmeManager.resetIssuer} (the
        fleet's account key replaced this node's) the next order builds it
        again.
        """
        manager = self.manager(acmeSite("app", "a.test"), acmeSite("api", "b.test"))
        self.clock.advance(0)
        first, second = self.orders.calls
        first.issue()
        second.issue()
        self.assertEqual(self.factoryCalls, 1)
        manager.resetIssuer()
        self.assertEqual(self.factoryCalls, 1)
        first.issue()
        self.assertEqual(self.factoryCalls, 2)
        for call in self.orders.calls:
            call.result.errback(AcmeError("stopping"))

    def test_acmeSites(self) -> None:
        """
        L{AcmeManager.acmeSites} names the acme sites.
        """
        manager = self.manager(acmeSite("app", "a.test"), acmeSite("api", "b.test"))
        self.assertEqual(sorted(manager.acmeSites()), ["api", "app"])
        for call in self.orders.calls:
            call.result.errback(AcmeError("stopping"))
