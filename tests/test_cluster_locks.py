"""
Tests for L{revproxy.cluster.locks}: the fleet's order locks, with a fake
Redis that plays the scripts on a dictionary and the test's clock (the
scripts themselves run against a real Redis in
L{tests.integration.test_cluster_locks}).
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.cluster.locks import (
    ACQUIRE,
    ACQUIRE_SHA,
    HOLDER,
    HOLDER_SHA,
    RELEASE,
    RELEASE_SHA,
    RENEW,
    RENEW_SHA,
    OrderLock,
)

LEASE_MS = 6_000
RENEW_SECS = 2.0
NAME = "example.com,www.example.com"
KEY = f"rp:lock:order:{NAME}"


class FakeRedis:
    """
    The lock scripts played on a dictionary of C{key: (value, expires)},
    expiring on C{clock}; every call answered at once, or failed while
    C{failing}; the calls recorded.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.up = True
        self.failing = False
        self.data: dict[str, tuple[str, float]] = {}
        self.calls: list[tuple[str, list[str], list[Any]]] = []

    def get(self, key: str) -> str | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock.seconds():
            del self.data[key]
            return None
        return entry[0]

    def expire(self, key: str, ms: int) -> None:
        self.data[key] = (self.data[key][0], self.clock.seconds() + ms / 1000)

    def evalsha(
        self, sha: str, script: str, keys: list[str], args: list[Any]
    ) -> Deferred[Any]:
        self.calls.append((sha, keys, args))
        if self.failing:
            return fail(ConnectionError("Not connected"))
        known = {
            ACQUIRE_SHA: ACQUIRE,
            RENEW_SHA: RENEW,
            RELEASE_SHA: RELEASE,
            HOLDER_SHA: HOLDER,
        }
        assert known[sha] == script
        key = keys[0]
        current = self.get(key)
        if sha == HOLDER_SHA:
            return succeed(current)
        owner = args[0]
        if sha == ACQUIRE_SHA:
            if current is None:
                self.data[key] = (owner, 0.0)
                self.expire(key, int(args[1]))
                return succeed(1)
            if current == owner:
                self.expire(key, int(args[1]))
                return succeed(1)
            return succeed(0)
        if current != owner:
            return succeed(0)
        if sha == RENEW_SHA:
            self.expire(key, int(args[1]))
        else:
            del self.data[key]
        return succeed(1)

    def count(self, sha: str) -> int:
        return sum(1 for call in self.calls if call[0] == sha)


def result(d: Deferred[Any], case: SynchronousTestCase) -> Any:
    return case.successResultOf(d)


class OrderLockTests(SynchronousTestCase):
    """
    L{OrderLock}: one holder per name, renewed while held, released by its
    owner only, lost when Redis says so, never taken while Redis is down.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        # Cleanups run last first: this one after the locks' stop.
        self.addCleanup(self.assertNoTimers)
        self.redis = FakeRedis(self.clock)
        self.a = self.lock("node-a:1")
        self.b = self.lock("node-b:2")
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lock(self, owner: str) -> OrderLock:
        lock = OrderLock(
            self.clock,
            self.redis,
            "rp:",
            owner,
            lease_ms=LEASE_MS,
            renew_secs=RENEW_SECS,
        )
        self.addCleanup(lock.stop)
        return lock

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") == LogLevel.error]

    def test_acquireAndRelease(self) -> None:
        """
        The first owner takes the lease (C{SET NX PX} with its name and the
        lease); the second does not; after release the second does.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.assertEqual(
            self.redis.calls[0], (ACQUIRE_SHA, [KEY], ["node-a:1", LEASE_MS])
        )
        self.assertTrue(self.a.held(NAME))
        self.assertEqual(self.redis.data[KEY], ("node-a:1", LEASE_MS / 1000))
        self.assertFalse(result(self.b.acquire(NAME), self))
        self.assertFalse(self.b.held(NAME))
        self.assertEqual(result(self.b.holder(NAME), self), "node-a:1")

        self.assertIsNone(result(self.a.release(NAME), self))
        self.assertFalse(self.a.held(NAME))
        self.assertNotIn(KEY, self.redis.data)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(result(self.a.holder(NAME), self))
        self.assertTrue(result(self.b.acquire(NAME), self))
        self.assertEqual(result(self.a.holder(NAME), self), "node-b:2")

    def test_acquireTwice(self) -> None:
        """
        Acquiring a lease this process holds is C{True} without asking Redis
        again, and keeps one renewal loop.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.assertEqual(self.redis.count(ACQUIRE_SHA), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_otherNamesIndependent(self) -> None:
        """
        Each name has its own lock.
        """
        self.assertTrue(result(self.a.acquire("one"), self))
        self.assertTrue(result(self.b.acquire("two"), self))
        self.assertFalse(result(self.b.acquire("one"), self))

    def test_renewals(self) -> None:
        """
        While held, the lease is renewed every C{renew_secs}
        (compare-and-set), so it outlives its first lease; after release
        there are no more renewals.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        for _ in range(10):
            self.clock.advance(RENEW_SECS)
        # 20 s: well past the 6 s lease.
        self.assertEqual(self.redis.count(RENEW_SHA), 10)
        self.assertEqual(self.redis.get(KEY), "node-a:1")
        self.assertEqual(self.redis.data[KEY][1], 20 + LEASE_MS / 1000)
        self.assertTrue(self.a.held(NAME))
        self.assertFalse(result(self.b.acquire(NAME), self))
        result(self.a.release(NAME), self)
        self.clock.advance(RENEW_SECS * 5)
        self.assertEqual(self.redis.count(RENEW_SHA), 10)
        self.assertEqual(self.errors(), [])

    def test_lostToAnother(self) -> None:
        """
        A renewal that finds the lock another owner's logs an error and
        marks the lease lost: not held, no more renewals, and the other's
        lock untouched by a later release.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.redis.data[KEY] = ("node-b:2", 100.0)
        self.clock.advance(RENEW_SECS)
        self.assertFalse(self.a.held(NAME))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        [error] = self.errors()
        self.assertIn("lease lost", error["log_format"])
        self.assertEqual(error["name"], NAME)
        result(self.a.release(NAME), self)
        self.assertEqual(self.redis.get(KEY), "node-b:2")

    def test_lostExpired(self) -> None:
        """
        A renewal that finds the lock gone marks the lease lost.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        del self.redis.data[KEY]
        self.clock.advance(RENEW_SECS)
        self.assertFalse(self.a.held(NAME))
        self.assertEqual(len(self.errors()), 1)

    def test_lostWhileRedisDown(self) -> None:
        """
        While Redis is down renewals are skipped; once the lease would have
        expired with no renewal it is lost, even before Redis is back.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.redis.up = False
        self.clock.advance(RENEW_SECS)
        self.clock.advance(RENEW_SECS)
        self.assertTrue(self.a.held(NAME))
        self.assertEqual(self.redis.count(RENEW_SHA), 0)
        self.clock.advance(RENEW_SECS)
        # 6 s: the lease is over.
        self.assertFalse(self.a.held(NAME))
        self.assertEqual(len(self.errors()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_renewalFailsThenSucceeds(self) -> None:
        """
        A renewal that fails (Redis errs) is tried again at the next tick;
        the lease is kept when one succeeds in time.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.redis.failing = True
        self.clock.advance(RENEW_SECS)
        self.assertEqual(self.redis.count(RENEW_SHA), 1)
        self.redis.failing = False
        self.clock.advance(RENEW_SECS)
        self.assertEqual(self.redis.count(RENEW_SHA), 2)
        # Renewed at 4 s: past the first lease's end (6 s) it is held.
        for _ in range(3):
            self.clock.advance(RENEW_SECS)
        self.assertTrue(self.a.held(NAME))
        self.assertEqual(self.errors(), [])

    def test_pendingRenewalNotRepeated(self) -> None:
        """
        A renewal still waiting for its answer is not sent again at the next
        tick; its late answer still counts.
        """
        answers: list[Deferred[Any]] = []
        self.assertTrue(result(self.a.acquire(NAME), self))

        def slow(
            sha: str, script: str, keys: list[str], args: list[Any]
        ) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            answers.append(d)
            return d

        self.redis.evalsha = slow  # type: ignore[method-assign]
        self.clock.advance(RENEW_SECS)
        self.clock.advance(RENEW_SECS)
        self.assertEqual(len(answers), 1)
        answers[0].callback(1)
        self.clock.advance(RENEW_SECS)
        self.assertEqual(len(answers), 2)
        answers[1].callback(0)
        self.assertFalse(self.a.held(NAME))

    def test_redisDown(self) -> None:
        """
        While Redis is down, L{OrderLock.acquire} is C{False} at once, without
        asking; L{OrderLock.holder} fails at once.
        """
        self.redis.up = False
        self.assertFalse(result(self.a.acquire(NAME), self))
        self.assertEqual(self.redis.calls, [])
        self.assertFalse(self.a.held(NAME))
        self.failureResultOf(self.a.holder(NAME), ConnectionError)

    def test_redisFails(self) -> None:
        """
        An acquire that Redis fails is C{False}; a release that Redis fails
        still stops the renewals and fires.
        """
        self.redis.failing = True
        self.assertFalse(result(self.a.acquire(NAME), self))
        self.redis.failing = False
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.redis.failing = True
        self.assertIsNone(result(self.a.release(NAME), self))
        self.assertFalse(self.a.held(NAME))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_releaseNotHeld(self) -> None:
        """
        Releasing another owner's lock leaves it alone.
        """
        self.assertTrue(result(self.b.acquire(NAME), self))
        result(self.a.release(NAME), self)
        self.assertEqual(self.redis.get(KEY), "node-b:2")

    def test_releaseWhileDown(self) -> None:
        """
        A release while Redis is down stops the renewals without asking.
        """
        self.assertTrue(result(self.a.acquire(NAME), self))
        self.redis.up = False
        self.assertIsNone(result(self.a.release(NAME), self))
        self.assertEqual(self.redis.count(RELEASE_SHA), 0)
        self.assertFalse(self.a.held(NAME))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """
        L{OrderLock.stop} cancels every renewal without releasing: the
        leases expire by themselves; a later acquire is C{False}.
        """
        self.assertTrue(result(self.a.acquire("one"), self))
        self.assertTrue(result(self.a.acquire("two"), self))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.a.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.a.held("one"))
        self.assertEqual(self.redis.count(RELEASE_SHA), 0)
        self.assertEqual(self.redis.get("rp:lock:order:one"), "node-a:1")
        self.assertFalse(result(self.a.acquire("three"), self))
        self.clock.advance(LEASE_MS / 1000)
        self.assertIsNone(self.redis.get("rp:lock:order:one"))
        self.assertTrue(result(self.b.acquire("one"), self))

    def test_stopWhileAcquiring(self) -> None:
        """
        An acquire answered after L{OrderLock.stop} is C{False} and starts no
        renewals.
        """
        answers: list[Deferred[Any]] = []

        def slow(
            sha: str, script: str, keys: list[str], args: list[Any]
        ) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            answers.append(d)
            return d

        self.redis.evalsha = slow  # type: ignore[method-assign]
        d = self.a.acquire(NAME)
        self.a.stop()
        answers[0].callback(1)
        self.assertFalse(result(d, self))
        self.assertEqual(self.clock.getDelayedCalls(), [])
