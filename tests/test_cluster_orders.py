"""
Tests for L{revproxy.cluster.orders}: the fleet's ACME orders, with a fake
Redis (L{tests.clusterfakes.FakeRedis}: the lock scripts and the commands),
a fake subscription, real order locks and shared state on them, a real
local L{AcmeStorage} in a temporary directory, and a L{Clock}.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme import AcmeBackoff, AcmeError
from revproxy.acme.storage import AcmeStorage, BackoffRecord, CertificateRecord
from revproxy.cluster.locks import ACQUIRE_SHA, LEASE_MS, RELEASE_SHA, OrderLock
from revproxy.cluster.nodes import BEAT_SECS
from revproxy.cluster.orders import (
    BACKOFF_MEMORY_SECS,
    POLL_SECS,
    REDIS_RETRY_SECS,
    REDIS_WAIT_SECS,
    RESYNC_SECS,
    SETTLE_SECS,
    WAIT_LIMIT_SECS,
    FleetOrders,
)
from revproxy.cluster.secrets import SealedKeys
from revproxy.cluster.storage import ForeignSecret, SharedAcmeState
from tests.clusterfakes import FakeRedis, FakeSubscription

SECRET = bytes(range(32)) + b"-the fleet's secret"
OTHER_SECRET = b"another secret, long enough to be one!!"
NOW = 1_800_000_000.0
DAY = 86400.0
SITE = "app"
NAMES = ("a.test", "www.a.test")
LOCK = f"rp:lock:order:{SITE}"
CHANNEL = "rp:certificates"
DIRECTORY = "https://acme.test/directory"


def pemKey() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate(issuedAt: float, names: tuple[str, ...] = NAMES) -> CertificateRecord:
    """
    A record as the manager keeps one (nothing here parses its chain).
    """
    return CertificateRecord(
        names=names,
        chainPEM=b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        keyPEM=pemKey(),
        notBefore=issuedAt - 3600,
        notAfter=issuedAt + 90 * DAY,
        issuedAt=issuedAt,
        directoryURL=DIRECTORY,
    )


def announcement(node: str, site: str = SITE, issuedAt: float = NOW) -> str:
    return json.dumps({"site": site, "node": node, "issuedAt": issuedAt})


class FakeManager:
    """
    The L{revproxy.cluster.orders.Manager} of a node: records what it is
    asked.
    """

    def __init__(self, *sites: str) -> None:
        self.sites = list(sites)
        self.adopted: list[tuple[str, CertificateRecord, str]] = []
        self.resets = 0

    def adopt(self, site: str, record: CertificateRecord, origin: str) -> bool:
        self.adopted.append((site, record, origin))
        return True

    def acmeSites(self) -> list[str]:
        return list(self.sites)

    def resetIssuer(self) -> None:
        self.resets += 1


class FleetOrdersCase(SynchronousTestCase):
    """
    This node (C{node-a}, lock owner C{node-a:1}) and another (C{node-b},
    C{node-b:2}) on one fake Redis.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        # Cleanups run last first: this one after every stop.
        self.addCleanup(self.assertNoTimers)
        self.redis = FakeRedis(self.clock)
        self.subscription = FakeSubscription()
        self.sealer = SealedKeys(SECRET)
        self.shared = SharedAcmeState(self.redis, "rp:", self.sealer, "node-a")
        self.lock = OrderLock(self.clock, self.redis, "rp:", "node-a:1")
        self.local = AcmeStorage(os.path.join(self.mktemp(), "state"))
        self.orders = FleetOrders(
            self.clock,
            self.redis,
            self.subscription,
            self.shared,
            self.lock,
            self.local,
            rng=random.Random(3),
        )
        self.addCleanup(self.orders.stop)
        self.manager = FakeManager(SITE)
        self.orders.manager = self.manager
        self.other = SharedAcmeState(self.redis, "rp:", self.sealer, "node-b")
        self.otherLock = OrderLock(self.clock, self.redis, "rp:", "node-b:2")
        self.addCleanup(self.otherLock.stop)
        self.issues: list[Deferred[CertificateRecord]] = []
        self.since = NOW
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def issue(self) -> Deferred[CertificateRecord]:
        """
        This node's order with the CA: waits for the test.
        """
        d: Deferred[CertificateRecord] = Deferred()
        self.issues.append(d)
        return d

    def wanted(self, record: CertificateRecord) -> bool:
        return record.names == NAMES and record.issuedAt >= self.since

    def order(self, forced: bool = False) -> Deferred[tuple[CertificateRecord, str]]:
        return self.orders.order(SITE, NAMES, self.issue, self.wanted, forced)

    def logged(self, text: str, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if text in formatEvent(e) and (level is None or e["log_level"] == level)
        ]

    def localKeyPEM(self) -> bytes:
        key, _ = self.local.accountKey()
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def result(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def stored(self) -> tuple[CertificateRecord, str] | None:
        return cast(
            "tuple[CertificateRecord, str] | None",
            self.result(Deferred.fromCoroutine(self.shared.loadCertificate(SITE))),
        )

    def storedBackoff(self) -> tuple[BackoffRecord, str] | None:
        return cast(
            "tuple[BackoffRecord, str] | None",
            self.result(Deferred.fromCoroutine(self.shared.loadBackoff(SITE))),
        )

    def otherSaves(self, record: CertificateRecord) -> None:
        self.result(Deferred.fromCoroutine(self.other.saveCertificate(SITE, record)))

    def otherBacksOff(self, record: BackoffRecord, now: float = NOW) -> None:
        self.result(
            Deferred.fromCoroutine(
                self.other.saveBackoff(SITE, record, now, keep=BACKOFF_MEMORY_SECS)
            )
        )


class FleetCertificateTests(FleetOrdersCase):
    """
    A certificate in Redis that the order wants is taken without ordering.
    """

    def test_adopted(self) -> None:
        """
        Redis holds a wanted certificate: it is the order's result, with the
        node that ordered it as its origin; the CA is not asked and the
        lock not taken.
        """
        record = certificate(NOW + 5)
        self.otherSaves(record)
        got = self.result(self.order())
        self.assertEqual(got, (record, "node node-b of the fleet"))
        self.assertEqual(self.issues, [])
        self.assertEqual(self.redis.count(ACQUIRE_SHA), 0)
        self.assertEqual(self.redis.waits, [REDIS_WAIT_SECS])

    def test_notWantedOrdered(self) -> None:
        """
        A certificate in Redis that the order does not want (older) does
        not stop the order.
        """
        self.otherSaves(certificate(NOW - DAY))
        d = self.order()
        self.assertNoResult(d)
        self.assertEqual(len(self.issues), 1)
        self.issues[0].callback(certificate(NOW))
        self.result(d)

    def test_foreignSecretNotOrderedOver(self) -> None:
        """
        A certificate in Redis sealed with another secret (a node with
        another C{secret_file}) fails the order, naming the secret, and is
        never ordered over: two such nodes would replace each other's
        certificates, each time with a new order from the CA.
        """
        stranger = SharedAcmeState(
            self.redis, "rp:", SealedKeys(OTHER_SECRET), "node-c"
        )
        self.result(
            Deferred.fromCoroutine(stranger.saveCertificate(SITE, certificate(NOW)))
        )
        failure = self.failureResultOf(self.order(), ForeignSecret)
        self.assertIn("secret", str(failure.value))
        self.assertEqual(self.issues, [])
        self.assertIsNone(self.redis.get(LOCK))

    def test_malformedOrderedOver(self) -> None:
        """
        A certificate in Redis that is not one (malformed JSON) is logged
        and ordered again: the new one replaces it.
        """
        self.redis.command("SET", "rp:cert:" + SITE, "{not json")
        d = self.order()
        self.assertEqual(len(self.issues), 1)
        self.assertTrue(self.logged("cannot use the fleet's certificate"))
        self.issues[0].callback(certificate(NOW))
        self.result(d)


class LockHeldTests(FleetOrdersCase):
    """
    The node that takes the lock orders, shares the certificate and
    announces it, or shares its back-off.
    """

    def test_ordered(self) -> None:
        """
        With the lock taken the CA is asked; the certificate is saved in
        Redis (by this node), announced on the channel, any back-off
        cleared, and the lock released.
        """
        d = self.order()
        self.assertNoResult(d)
        self.assertEqual(len(self.issues), 1)
        self.assertEqual(self.redis.get(LOCK), "node-a:1")
        record = certificate(NOW)
        self.issues[0].callback(record)
        self.assertEqual(self.result(d), (record, ""))
        self.assertEqual(self.stored(), (record, "node-a"))
        [(channel, message)] = self.redis.published
        self.assertEqual(channel, CHANNEL)
        self.assertEqual(
            json.loads(message), {"site": SITE, "node": "node-a", "issuedAt": NOW}
        )
        self.assertIn(("DEL", "rp:backoff:app"), self.redis.commands)
        self.assertIsNone(self.redis.get(LOCK))
        self.assertEqual(self.redis.count(RELEASE_SHA), 1)
        self.assertFalse(self.lock.held(SITE))

    def test_lookedAgainUnderLock(self) -> None:
        """
        A certificate that came between the first look and the lock is
        taken, not ordered again.
        """
        record = certificate(NOW)
        acquire = self.lock.acquire

        def racing(name: str) -> Deferred[bool]:
            self.otherSaves(record)
            return acquire(name)

        self.patch(self.lock, "acquire", racing)
        got = self.result(self.order())
        self.assertEqual(got, (record, "node node-b of the fleet"))
        self.assertEqual(self.issues, [])
        self.assertIsNone(self.redis.get(LOCK))

    def test_sharingFails(self) -> None:
        """
        A certificate that cannot be shared (Redis fails) is still the
        order's result; the failure is logged.
        """
        d = self.order()
        self.redis.failing = True
        record = certificate(NOW)
        self.issues[0].callback(record)
        self.assertEqual(self.result(d), (record, ""))
        self.assertTrue(self.logged("could not be shared", LogLevel.error))

    def test_failedFirst(self) -> None:
        """
        A failed order with no back-off in Redis is an L{AcmeBackoff}
        (C{ordered}) counting one failure, shared in Redis until
        L{BACKOFF_MEMORY_SECS} after it ends; the lock is released.
        """
        d = self.order()
        self.clock.advance(7)
        self.issues[0].errback(AcmeError("a.test: connection refused"))
        e = self.failureResultOf(d, AcmeBackoff).value
        self.assertTrue(e.ordered)
        backoff = e.backoff
        assert isinstance(backoff, BackoffRecord)
        self.assertEqual(backoff.failures, 1)
        self.assertEqual(backoff.lastError, "a.test: connection refused")
        self.assertEqual(backoff.lastErrorAt, NOW + 7)
        self.assertTrue(30 <= backoff.retryAt - (NOW + 7) <= 60, backoff)
        self.assertEqual(self.storedBackoff(), (backoff, "node-a"))
        self.assertAlmostEqual(
            self.redis.ttl("rp:backoff:app"),
            backoff.retryAt - (NOW + 7) + BACKOFF_MEMORY_SECS,
            places=2,
        )
        self.assertIsNone(self.redis.get(LOCK))

    def test_failuresCountOn(self) -> None:
        """
        A failed order after another node's (its back-off over, still
        remembered) counts on from the fleet's count.
        """
        self.otherBacksOff(
            BackoffRecord(
                failures=4, retryAt=NOW - 1, lastError="old", lastErrorAt=NOW - 500
            ),
            now=NOW - 500,
        )
        d = self.order()
        self.issues[0].errback(AcmeError("rateLimited"))
        e = self.failureResultOf(d, AcmeBackoff).value
        self.assertTrue(e.ordered)
        assert isinstance(e.backoff, BackoffRecord)
        self.assertEqual(e.backoff.failures, 5)
        stored = self.storedBackoff()
        assert stored is not None
        self.assertEqual(stored[0].failures, 5)
        self.assertEqual(stored[1], "node-a")

    def test_sharedBackoffWaited(self) -> None:
        """
        A back-off another node's failed order left, not over, is waited
        out: an L{AcmeBackoff} (not C{ordered}) with that back-off, naming
        that node; the CA is not asked and the lock is released.
        """
        backoff = BackoffRecord(
            failures=2, retryAt=NOW + 600, lastError="refused", lastErrorAt=NOW - 10
        )
        self.otherBacksOff(backoff)
        e = self.failureResultOf(self.order(), AcmeBackoff).value
        self.assertFalse(e.ordered)
        self.assertEqual(e.backoff, backoff)
        self.assertIn("node-b", str(e))
        self.assertEqual(self.issues, [])
        self.assertIsNone(self.redis.get(LOCK))
        self.assertEqual(self.storedBackoff(), (backoff, "node-b"))

    def test_forcedIgnoresBackoff(self) -> None:
        """
        A forced order ignores the fleet's back-off; if it fails it counts
        on from it.
        """
        self.otherBacksOff(
            BackoffRecord(
                failures=2, retryAt=NOW + 600, lastError="refused", lastErrorAt=NOW
            )
        )
        d = self.order(forced=True)
        self.assertEqual(len(self.issues), 1)
        self.issues[0].errback(AcmeError("still refused"))
        e = self.failureResultOf(d, AcmeBackoff).value
        assert isinstance(e.backoff, BackoffRecord)
        self.assertEqual(e.backoff.failures, 3)
        self.assertTrue(e.ordered)

    def test_forcedSucceeds(self) -> None:
        """
        A forced order that succeeds clears the fleet's back-off.
        """
        self.otherBacksOff(
            BackoffRecord(
                failures=2, retryAt=NOW + 600, lastError="refused", lastErrorAt=NOW
            )
        )
        d = self.order(forced=True)
        self.issues[0].callback(certificate(NOW))
        self.result(d)
        self.assertIsNone(self.storedBackoff())


class WaitingTests(FleetOrdersCase):
    """
    While another node holds the lock, this one waits for its certificate:
    woken by its announcement, polling every L{POLL_SECS}, for
    L{WAIT_LIMIT_SECS} at most.
    """

    def setUp(self) -> None:
        super().setUp()
        self.assertTrue(self.result(self.otherLock.acquire(SITE)))

    def test_waitsForHolder(self) -> None:
        """
        The order waits, naming the holder in the log; nothing is ordered.
        """
        d = self.order()
        self.assertNoResult(d)
        self.assertEqual(self.issues, [])
        self.assertTrue(self.logged("node-b:2 is ordering its certificate"))
        gets = len(self.redis.sent("GET"))
        self.clock.advance(POLL_SECS - 0.1)
        self.assertNoResult(d)
        self.assertEqual(len(self.redis.sent("GET")), gets)
        self.orders.stop()
        self.failureResultOf(d, AcmeError)

    def test_announcementWakes(self) -> None:
        """
        The holder's announcement wakes the waiting order at once, which
        takes its certificate; the poll timer is cancelled.
        """
        d = self.order()
        self.assertNoResult(d)
        record = certificate(NOW + 1)
        self.clock.advance(1)
        self.otherSaves(record)
        self.subscription.deliver(CHANNEL, announcement("node-b", issuedAt=NOW + 1))
        self.assertEqual(self.result(d), (record, "node node-b of the fleet"))
        self.assertEqual(self.issues, [])
        self.otherLock.stop()
        self.assertNoTimers()

    def test_otherSiteDoesNotWake(self) -> None:
        """
        An announcement for another site does not wake the order.
        """
        d = self.order()
        gets = len(self.redis.sent("GET"))
        self.subscription.deliver(CHANNEL, announcement("node-b", site="api"))
        self.assertNoResult(d)
        # Only the other site's certificate was read (to adopt it).
        self.assertEqual(self.redis.sent("GET")[gets:], [("GET", "rp:cert:api")])
        self.orders.stop()
        self.failureResultOf(d, AcmeError)

    def test_pollsThenOrders(self) -> None:
        """
        Without an announcement the order looks again after L{POLL_SECS};
        once the holder released the lock it takes it and orders.
        """
        d = self.order()
        self.assertEqual(self.redis.count(ACQUIRE_SHA), 2)
        self.clock.advance(POLL_SECS)
        self.assertEqual(self.redis.count(ACQUIRE_SHA), 3)
        self.assertEqual(self.issues, [])
        self.result(self.otherLock.release(SITE))
        self.clock.advance(POLL_SECS)
        self.assertEqual(len(self.issues), 1)
        self.assertEqual(self.redis.get(LOCK), "node-a:1")
        self.issues[0].callback(certificate(NOW))
        self.result(d)

    def test_pollFindsCertificate(self) -> None:
        """
        A certificate whose announcement was lost is found at the next
        poll.
        """
        d = self.order()
        record = certificate(NOW + 1)
        self.otherSaves(record)
        self.assertNoResult(d)
        self.clock.advance(POLL_SECS)
        self.assertEqual(self.result(d), (record, "node node-b of the fleet"))

    def test_holderFailed(self) -> None:
        """
        When the holder's order failed (its back-off shared, the lock
        released), the waiting order takes the lock and waits out that
        back-off: an L{AcmeBackoff} not C{ordered}, nothing asked of the CA.
        """
        d = self.order()
        backoff = BackoffRecord(
            failures=1, retryAt=NOW + 45, lastError="refused", lastErrorAt=NOW + 1
        )
        self.clock.advance(1)
        self.otherBacksOff(backoff, now=NOW + 1)
        self.result(self.otherLock.release(SITE))
        self.clock.advance(POLL_SECS)
        e = self.failureResultOf(d, AcmeBackoff).value
        self.assertFalse(e.ordered)
        self.assertEqual(e.backoff, backoff)
        self.assertEqual(self.issues, [])
        self.assertIsNone(self.redis.get(LOCK))

    def test_unwantedAnnouncement(self) -> None:
        """
        An announced certificate the order does not want (issued before a
        forced renewal was asked) wakes it but is not taken: it goes on
        waiting, and orders once the lock is free.
        """
        self.since = NOW + 10
        self.clock.advance(10)
        d = self.order(forced=True)
        self.otherSaves(certificate(NOW + 5))
        self.subscription.deliver(CHANNEL, announcement("node-b", issuedAt=NOW + 5))
        self.assertNoResult(d)
        self.result(self.otherLock.release(SITE))
        self.clock.advance(POLL_SECS)
        self.assertEqual(len(self.issues), 1)
        record = certificate(NOW + 15)
        self.issues[0].callback(record)
        self.assertEqual(self.result(d), (record, ""))

    def test_holderDied(self) -> None:
        """
        A holder that died (its lease not renewed) lets its lease expire:
        the waiting node then takes the lock and orders.
        """
        self.otherLock.stop()
        d = self.order()
        for _ in range(int(LEASE_MS / 1000 / POLL_SECS) - 1):
            self.clock.advance(POLL_SECS)
        self.assertEqual(self.issues, [])
        self.clock.advance(POLL_SECS)
        self.assertEqual(len(self.issues), 1)
        self.issues[0].callback(certificate(NOW))
        self.result(d)

    def test_givesUp(self) -> None:
        """
        After L{WAIT_LIMIT_SECS} without a certificate the order fails with
        an L{AcmeError} naming the holder; no timer is left.
        """
        d = self.order()
        steps = int(WAIT_LIMIT_SECS / POLL_SECS)
        for _ in range(steps - 1):
            self.clock.advance(POLL_SECS)
        self.assertNoResult(d)
        self.clock.advance(POLL_SECS)
        e = self.failureResultOf(d, AcmeError).value
        self.assertNotIsInstance(e, AcmeBackoff)
        self.assertIn("node-b:2", str(e))
        self.assertIn(f"{WAIT_LIMIT_SECS:.0f} s", str(e))
        self.assertEqual(self.issues, [])
        self.otherLock.stop()
        self.assertNoTimers()

    def test_stopFailsWaiters(self) -> None:
        """
        L{FleetOrders.stop} fails the waiting orders and cancels their
        timers.
        """
        self.result(self.otherLock.acquire("api"))
        d1 = self.order()
        d2 = self.orders.order("api", ("api.test",), self.issue, self.wanted, False)
        self.assertEqual(self.issues, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 4)
        self.orders.stop()
        self.failureResultOf(d1, AcmeError)
        self.failureResultOf(d2, AcmeError)
        self.otherLock.stop()
        self.assertNoTimers()


class RedisDownTests(FleetOrdersCase):
    """
    Without Redis nothing is ordered.
    """

    def test_down(self) -> None:
        """
        Redis down (L{whenUp} C{False} after L{REDIS_WAIT_SECS}): the order
        fails with an L{AcmeBackoff} not C{ordered}, one failure, retried
        after L{REDIS_RETRY_SECS} (not the growing back-off of a CA's
        refusal); nothing asked of Redis or the CA.
        """
        self.redis.up = False
        self.clock.advance(3)
        e = self.failureResultOf(self.order(), AcmeBackoff).value
        self.assertFalse(e.ordered)
        self.assertEqual(str(e), "the order waits for Redis")
        backoff = e.backoff
        assert isinstance(backoff, BackoffRecord)
        self.assertEqual(backoff.failures, 1)
        self.assertEqual(backoff.retryAt, NOW + 3 + REDIS_RETRY_SECS)
        self.assertEqual(backoff.lastErrorAt, NOW + 3)
        self.assertIn("Redis is down", backoff.lastError)
        self.assertEqual(self.redis.waits, [REDIS_WAIT_SECS])
        self.assertEqual(self.redis.commands, [])
        self.assertEqual(self.redis.calls, [])
        self.assertEqual(self.issues, [])

    def test_failsDuringOrder(self) -> None:
        """
        Redis failing after it was up (the connection lost with a command
        in flight) fails the order with an L{AcmeError}, as
        L{revproxy.acme.renewal.Orders.order} promises, not with the Redis
        client's exception (which the manager logs as an unexpected error,
        with a traceback); nothing is ordered.
        """
        self.redis.failing = True
        self.failureResultOf(self.order(), AcmeError)
        self.assertEqual(self.issues, [])

    def test_failsHoldingLock(self) -> None:
        """
        Redis failing while the lock is held (reading the fleet's back-off)
        fails the order with an L{AcmeError}; the lock is released and
        nothing ordered.
        """
        command = self.redis.command

        def flaky(*args: Any) -> Deferred[Any]:
            if args == ("GET", "rp:backoff:app"):
                return fail(ConnectionError("Lost connection"))
            return command(*args)

        self.patch(self.redis, "command", flaky)
        self.failureResultOf(self.order(), AcmeError)
        self.assertEqual(self.issues, [])
        self.assertIsNone(self.redis.get(LOCK))


class AccountTests(FleetOrdersCase):
    """
    The node orders with the fleet's account key.
    """

    def test_localBecomesFleets(self) -> None:
        """
        Without a fleet account, this node's key becomes it (C{HSETNX}),
        before the CA is asked; the issuer is not reset.
        """
        local = self.localKeyPEM()
        seen: list[Any] = []

        def issue() -> Deferred[CertificateRecord]:
            seen.append(self.result(Deferred.fromCoroutine(self.shared.loadAccount())))
            return succeed(certificate(NOW))

        self.result(self.orders.order(SITE, NAMES, issue, self.wanted, False))
        self.assertEqual(seen, [(local, {})])
        self.assertEqual(len(self.redis.sent("HSETNX")), 1)
        self.assertEqual(self.manager.resets, 0)
        self.assertEqual(self.localKeyPEM(), local)

    def test_fleetsReplacesLocal(self) -> None:
        """
        A fleet account other than this node's replaces the local key and
        account URIs (before the CA is asked) and resets the manager's
        issuer; the next order, with the same key, changes nothing.
        """
        self.local.saveAccountURI(DIRECTORY, "https://acme.test/acct/mine")
        self.localKeyPEM()
        fleet = pemKey()
        self.assertTrue(
            self.result(Deferred.fromCoroutine(self.other.createAccount(fleet)))
        )
        self.result(
            Deferred.fromCoroutine(
                self.other.saveAccountURI(DIRECTORY, "https://acme.test/acct/fleet")
            )
        )
        seen: list[bytes] = []

        def issue() -> Deferred[CertificateRecord]:
            seen.append(self.localKeyPEM())
            return succeed(certificate(self.clock.seconds()))

        self.result(self.orders.order(SITE, NAMES, issue, self.wanted, False))
        self.assertEqual(seen, [fleet])
        self.assertEqual(
            self.local.accounts(), {DIRECTORY: "https://acme.test/acct/fleet"}
        )
        self.assertEqual(self.manager.resets, 1)
        # Only the other node's.
        self.assertEqual(len(self.redis.sent("HSETNX")), 1)
        self.assertTrue(self.logged("using the fleet's account key"))

        self.clock.advance(1)
        self.since = self.clock.seconds()
        self.result(self.orders.order(SITE, NAMES, issue, self.wanted, True))
        self.assertEqual(seen, [fleet, fleet])
        self.assertEqual(self.manager.resets, 1)

    def test_anotherCameFirst(self) -> None:
        """
        When another node's key becomes the fleet's between the read and
        C{HSETNX}, that key is used.
        """
        fleet = pemKey()
        create = self.shared.createAccount

        async def racing(keyPEM: bytes) -> bool:
            await self.other.createAccount(fleet)
            return await create(keyPEM)

        self.patch(self.shared, "createAccount", racing)
        d = self.order()
        self.assertEqual(len(self.issues), 1)
        self.assertEqual(self.localKeyPEM(), fleet)
        self.assertEqual(self.manager.resets, 1)
        self.issues[0].callback(certificate(NOW))
        self.result(d)

    def test_fleetKeyUnreadable(self) -> None:
        """
        A fleet account key that does not open fails the order with an
        L{AcmeError}; the CA is not asked, the lock released, the local key
        kept.
        """
        local = self.localKeyPEM()
        stranger = SharedAcmeState(
            self.redis, "rp:", SealedKeys(OTHER_SECRET), "node-c"
        )
        self.result(Deferred.fromCoroutine(stranger.createAccount(pemKey())))
        e = self.failureResultOf(self.order(), AcmeError).value
        self.assertIn("account key", str(e))
        self.assertEqual(self.issues, [])
        self.assertIsNone(self.redis.get(LOCK))
        self.assertEqual(self.localKeyPEM(), local)


class AnnouncementTests(FleetOrdersCase):
    """
    Every node follows the announcements and the periodic resync: the
    fleet's newer certificates are offered to the manager.
    """

    def test_subscribed(self) -> None:
        """
        The orders listen on C{PREFIXcertificates} and resync when
        subscribed again.
        """
        self.assertEqual(list(self.subscription.handlers), [CHANNEL])
        self.assertEqual(self.subscription.resyncs, [self.orders.resync])

    def test_announcedAdopted(self) -> None:
        """
        Another node's announcement makes the manager adopt the site's
        certificate from Redis, naming that node.
        """
        record = certificate(NOW)
        self.otherSaves(record)
        self.subscription.deliver(CHANNEL, announcement("node-b"))
        self.assertEqual(
            self.manager.adopted, [(SITE, record, "node node-b of the fleet")]
        )

    def test_ownIgnored(self) -> None:
        """
        This node's own announcements are ignored: Redis is not even read.
        """
        self.result(
            Deferred.fromCoroutine(self.shared.saveCertificate(SITE, certificate(NOW)))
        )
        before = len(self.redis.commands)
        self.subscription.deliver(CHANNEL, announcement("node-a"))
        self.assertEqual(self.manager.adopted, [])
        self.assertEqual(len(self.redis.commands), before)

    def test_malformedIgnored(self) -> None:
        """
        Malformed announcements are logged (a warning) and ignored.
        """
        for message in ("not json", "[1, 2]", '"app"', "7", '{"site": "app"}'):
            self.subscription.deliver(CHANNEL, message)
        self.assertEqual(
            len(self.logged("malformed certificate announcement", LogLevel.warn)), 5
        )
        self.assertEqual(self.manager.adopted, [])
        self.assertEqual(self.redis.commands, [])

    def test_unreadableLogged(self) -> None:
        """
        A certificate that cannot be read after an announcement is logged
        (at most once a minute), and not adopted.
        """
        self.redis.data["rp:cert:app"] = ("{", float("inf"))
        self.subscription.deliver(CHANNEL, announcement("node-b"))
        self.subscription.deliver(CHANNEL, announcement("node-b"))
        self.assertEqual(self.manager.adopted, [])
        self.assertEqual(len(self.logged("cannot read the fleet's certificate")), 1)

    def test_resync(self) -> None:
        """
        L{FleetOrders.resync} offers every manager site's certificate in
        Redis to the manager; sites without one are skipped; nothing is
        read while Redis is down.
        """
        self.manager.sites = ["app", "api", "none"]
        app, api = certificate(NOW), certificate(NOW + 1, ("api.test",))
        self.otherSaves(app)
        self.result(Deferred.fromCoroutine(self.other.saveCertificate("api", api)))
        self.orders.resync()
        self.assertEqual(
            self.manager.adopted,
            [
                ("app", app, "node node-b of the fleet"),
                ("api", api, "node node-b of the fleet"),
            ],
        )
        self.redis.up = False
        sent = len(self.redis.commands)
        self.orders.resync()
        self.assertEqual(len(self.manager.adopted), 2)
        self.assertEqual(len(self.redis.commands), sent)

    def test_resyncWithoutManager(self) -> None:
        """
        Before the manager is set, resync reads nothing.
        """
        self.orders.manager = None
        self.orders.resync()
        self.assertEqual(self.redis.commands, [])

    def test_resyncEvery(self) -> None:
        """
        Once started, the orders resync every L{RESYNC_SECS}, until
        stopped.
        """
        self.otherSaves(certificate(NOW))
        self.orders.start()
        self.clock.advance(RESYNC_SECS - 1)
        self.assertEqual(self.manager.adopted, [])
        self.clock.advance(1)
        self.assertEqual(len(self.manager.adopted), 1)
        self.clock.advance(RESYNC_SECS)
        self.assertEqual(len(self.manager.adopted), 2)
        self.orders.stop()
        self.assertNoTimers()


class AccountURITests(FleetOrdersCase):
    """
    L{FleetOrders.saveAccountURI}: best effort.
    """

    def test_shared(self) -> None:
        """
        The account's URI is shared in the account hash.
        """
        self.orders.saveAccountURI(DIRECTORY, "https://acme.test/acct/1")
        self.assertEqual(
            self.redis.hashes["rp:account"],
            {f"uri:{DIRECTORY}": "https://acme.test/acct/1"},
        )

    def test_down(self) -> None:
        """
        While Redis is down nothing is sent; a failure is logged.
        """
        self.redis.up = False
        self.orders.saveAccountURI(DIRECTORY, "u")
        self.assertEqual(self.redis.commands, [])
        self.redis.up = True
        self.patch(self.redis, "command", lambda *a: fail(ConnectionError("lost")))
        self.orders.saveAccountURI(DIRECTORY, "u")
        self.assertTrue(self.logged("cannot share the account URI: lost"))


class SettleTests(FleetOrdersCase):
    """
    A node's first order waits until it has been in the fleet for
    L{SETTLE_SECS}: the nodes started with it have said they are there, so
    the order's challenges wait for their acknowledgements.
    """

    def setUp(self) -> None:
        super().setUp()
        self.joined: float | None = None
        self.orders._joined = lambda: self.joined

    def wait(self, seconds: float) -> None:
        """
        Let C{seconds} pass, a tenth of a second at a time (the node looks
        every half second).
        """
        for _ in range(round(seconds * 10)):
            self.clock.advance(0.1)

    def test_waitsToBeSeen(self) -> None:
        """
        Until its first heartbeat is answered, and for L{SETTLE_SECS} after
        it, the node holds the lock and does not order.
        """
        d = self.order()
        self.assertEqual(self.issues, [])
        self.wait(1.0)
        self.joined = self.clock.seconds()
        self.wait(SETTLE_SECS - 0.5)
        self.assertEqual(self.issues, [])
        self.wait(1.0)
        self.assertEqual(len(self.issues), 1)
        self.assertIsNotNone(self.redis.get(LOCK))
        self.issues[0].errback(AcmeError("stopping"))
        self.failureResultOf(d, AcmeError)

    def test_settledAlready(self) -> None:
        """
        A node in the fleet for long enough orders at once.
        """
        self.joined = self.clock.seconds() - SETTLE_SECS
        d = self.order()
        self.assertEqual(len(self.issues), 1)
        self.issues[0].errback(AcmeError("stopping"))
        self.failureResultOf(d, AcmeError)

    def test_boundedWait(self) -> None:
        """
        A node never seen in the fleet (its heartbeats unanswered) orders
        after L{SETTLE_SECS} and a heartbeat more, not never.
        """
        d = self.order()
        self.wait(SETTLE_SECS + BEAT_SECS - 0.5)
        self.assertEqual(self.issues, [])
        self.wait(1.0)
        self.assertEqual(len(self.issues), 1)
        self.issues[0].errback(AcmeError("stopping"))
        self.failureResultOf(d, AcmeError)
