"""
Tests for L{revproxy.ratelimit}.
"""

from __future__ import annotations

import gc
import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import RateLimit
from revproxy.ratelimit import ALLOWED, Decision, RateLimiter

SITE = "example"
IP = "203.0.113.7"
MiB = 1024 * 1024


def drain(limiter: RateLimiter, limit: RateLimit, ip: str = IP) -> int:
    """
    Send requests until one is refused.

    @return: how many were admitted.
    """
    admitted = 0
    while limiter.allow(SITE, limit, ip).allowed:
        admitted += 1
        if admitted > 10_000:
            raise AssertionError("never refused")
    return admitted


def currentRSS() -> int:
    """
    The resident set size of this process now, in bytes (Linux).
    """
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class BucketTests(SynchronousTestCase):
    """
    L{RateLimiter.allow} is a token bucket.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock)

    def test_burstThenRefused(self) -> None:
        """
        A fresh client is admitted C{burst} times at once, then refused.
        """
        limit = RateLimit(1.0, 5)
        for _ in range(5):
            self.assertIs(self.limiter.allow(SITE, limit, IP), ALLOWED)
        decision = self.limiter.allow(SITE, limit, IP)
        self.assertFalse(decision.allowed)
        self.assertEqual(decision, Decision(False, 1))

    def test_refill(self) -> None:
        """
        Tokens come back at C{requests_per_second}, never beyond C{burst}.
        """
        limit = RateLimit(2.0, 4)
        self.assertEqual(drain(self.limiter, limit), 4)
        self.clock.advance(0.4)
        self.assertFalse(self.limiter.allow(SITE, limit, IP).allowed)
        self.clock.advance(0.1)
        self.assertEqual(drain(self.limiter, limit), 1)
        self.clock.advance(1.0)
        self.assertEqual(drain(self.limiter, limit), 2)
        self.clock.advance(3600)
        self.assertEqual(drain(self.limiter, limit), 4)

    def test_retryAfterExact(self) -> None:
        """
        C{retryAfter} is the ceiling of the seconds until one token is back,
        and at least 1.
        """
        cases = [
            # rate, burst, seconds advanced after draining, retryAfter
            (1.0, 1, 0.0, 1),
            (0.5, 1, 0.0, 2),
            (0.5, 3, 0.0, 2),
            (0.3, 2, 0.0, 4),
            (0.25, 1, 1.5, 3),
            (0.25, 1, 3.0, 1),
            (0.1, 1, 9.0, 1),
            (0.1, 1, 8.999, 2),
            (100.0, 10, 0.0, 1),
            (3.0, 3, 0.0, 1),
            # Exactly 2 s to go, 2.0000000000000164 in floats: still 2.
            (0.3, 19, 1 / 0.3 - 2, 2),
        ]
        for rate, burst, advance, expected in cases:
            clock = Clock()
            limiter = RateLimiter(clock)
            limit = RateLimit(rate, burst)
            for _ in range(burst):
                self.assertTrue(limiter.allow(SITE, limit, IP).allowed)
            clock.advance(advance)
            self.assertEqual(
                limiter.allow(SITE, limit, IP),
                Decision(False, expected),
                (rate, burst, advance),
            )

    def test_refusalTakesNoToken(self) -> None:
        """
        Refused requests do not push the refill further away.
        """
        limit = RateLimit(1.0, 1)
        self.limiter.allow(SITE, limit, IP)
        for _ in range(50):
            self.assertFalse(self.limiter.allow(SITE, limit, IP).allowed)
        self.clock.advance(1.0)
        self.assertTrue(self.limiter.allow(SITE, limit, IP).allowed)

    def test_offWhenZero(self) -> None:
        """
        A zero rate or a zero burst admits everything and tracks nothing.
        """
        for limit in (RateLimit(0.0, 0), RateLimit(0.0, 5), RateLimit(5.0, 0)):
            for _ in range(100):
                self.assertIs(self.limiter.allow(SITE, limit, IP), ALLOWED)
        self.assertEqual(len(self.limiter), 0)

    def test_clockBackwards(self) -> None:
        """
        A clock that jumps back leaves the bucket empty, not owing tokens
        for the time jumped.
        """
        clock = Clock()
        clock.advance(10_000)
        limiter = RateLimiter(clock)
        limit = RateLimit(1.0, 1)
        limiter.allow(SITE, limit, IP)
        clock.rightNow -= 3600
        self.assertEqual(limiter.allow(SITE, limit, IP), Decision(False, 1))
        clock.advance(1.0)
        self.assertTrue(limiter.allow(SITE, limit, IP).allowed)

    def test_invalidArguments(self) -> None:
        """
        The cap must be positive and the IPv6 prefix 0 to 128.
        """
        self.assertRaises(ValueError, RateLimiter, self.clock, 0)
        self.assertRaises(ValueError, RateLimiter, self.clock, ipv6Prefix=129)
        self.assertRaises(ValueError, RateLimiter, self.clock, ipv6Prefix=-1)


class KeyTests(SynchronousTestCase):
    """
    Buckets are per site and per client address, IPv6 by network.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock)
        self.limit = RateLimit(1.0, 2)

    def test_perSite(self) -> None:
        """
        The same client has a bucket on each site.
        """
        self.assertEqual(drain(self.limiter, self.limit), 2)
        self.assertTrue(self.limiter.allow("other", self.limit, IP).allowed)
        self.assertTrue(self.limiter.allow("other", self.limit, IP).allowed)
        self.assertFalse(self.limiter.allow("other", self.limit, IP).allowed)

    def test_perIP(self) -> None:
        """
        Each IPv4 address has its own bucket.
        """
        self.assertEqual(drain(self.limiter, self.limit, "192.0.2.1"), 2)
        self.assertEqual(drain(self.limiter, self.limit, "192.0.2.2"), 2)
        self.assertEqual(len(self.limiter), 2)

    def test_ipv6Slash64(self) -> None:
        """
        IPv6 clients in one /64 share a bucket; another /64 has its own.
        """
        self.assertTrue(self.limiter.allow(SITE, self.limit, "2001:db8::1").allowed)
        self.assertTrue(
            self.limiter.allow(SITE, self.limit, "2001:db8::ffff:1:2:3").allowed
        )
        self.assertFalse(
            self.limiter.allow(SITE, self.limit, "2001:db8:0:0:abcd::9").allowed
        )
        self.assertEqual(drain(self.limiter, self.limit, "2001:db8:0:1::1"), 2)
        self.assertEqual(
            self.limiter.bucket(SITE, "2001:db8::77"), (0.0, 2.0), "same /64"
        )

    def test_ipv6Prefix(self) -> None:
        """
        The IPv6 prefix length is configurable.
        """
        limiter = RateLimiter(self.clock, ipv6Prefix=48)
        self.assertEqual(drain(limiter, self.limit, "2001:db8:1:1::1"), 2)
        self.assertFalse(limiter.allow(SITE, self.limit, "2001:db8:1:2::1").allowed)
        self.assertEqual(drain(limiter, self.limit, "2001:db8:2::1"), 2)
        full = RateLimiter(self.clock, ipv6Prefix=128)
        self.assertEqual(drain(full, self.limit, "2001:db8::1"), 2)
        self.assertEqual(drain(full, self.limit, "2001:db8::2"), 2)

    def test_ipv6Zone(self) -> None:
        """
        A link-local address with a zone shares the bucket of its /64.
        """
        self.assertEqual(drain(self.limiter, self.limit, "fe80::1%eth0"), 2)
        self.assertFalse(self.limiter.allow(SITE, self.limit, "fe80::2").allowed)

    def test_ipv4Mapped(self) -> None:
        """
        An IPv4-mapped IPv6 address shares the bucket of its IPv4 address.
        """
        self.assertEqual(drain(self.limiter, self.limit, "::ffff:192.0.2.1"), 2)
        self.assertFalse(self.limiter.allow(SITE, self.limit, "192.0.2.1").allowed)
        self.assertTrue(self.limiter.allow(SITE, self.limit, "192.0.2.2").allowed)

    def test_unparsable(self) -> None:
        """
        A string that is not an address is a key of its own.
        """
        for ip in ("unknown", "bogus:addr", "2001:db8::1:80:zz"):
            self.assertEqual(drain(self.limiter, self.limit, ip), 2, ip)
        self.assertEqual(len(self.limiter), 3)
        self.assertIsNotNone(self.limiter.bucket(SITE, "bogus:addr"))


class MemoryTests(SynchronousTestCase):
    """
    The number of buckets is bounded.
    """

    def test_lruEviction(self) -> None:
        """
        Beyond C{maxTrackedClients}, the least recently used bucket goes.
        """
        clock = Clock()
        limiter = RateLimiter(clock, maxTrackedClients=2)
        limit = RateLimit(1.0, 1)
        limiter.allow(SITE, limit, "192.0.2.1")
        limiter.allow(SITE, limit, "192.0.2.2")
        # Touch .1, even by a refusal: .2 is now the least recently used.
        self.assertFalse(limiter.allow(SITE, limit, "192.0.2.1").allowed)
        limiter.allow(SITE, limit, "192.0.2.3")
        self.assertEqual(len(limiter), 2)
        self.assertIsNone(limiter.bucket(SITE, "192.0.2.2"))
        self.assertEqual(limiter.bucket(SITE, "192.0.2.1"), (0.0, 1.0))
        self.assertEqual(limiter.bucket(SITE, "192.0.2.3"), (0.0, 1.0))
        # Evicted means full again.
        self.assertTrue(limiter.allow(SITE, limit, "192.0.2.2").allowed)

    def test_idleFullBucketsDropped(self) -> None:
        """
        Buckets that have refilled to full are dropped as traffic goes on.
        """
        clock = Clock()
        limiter = RateLimiter(clock)
        limit = RateLimit(10.0, 5)
        for i in range(100):
            limiter.allow(SITE, limit, f"192.0.2.{i}")
        self.assertEqual(len(limiter), 100)
        clock.advance(0.09)
        limiter.allow(SITE, limit, IP)
        self.assertEqual(len(limiter), 101, "not full yet")
        clock.advance(0.02)
        for _ in range(60):
            limiter.allow(SITE, limit, IP)
        self.assertEqual(len(limiter), 1)

    def test_millionClients(self) -> None:
        """
        Measurement: one million distinct client addresses (half IPv4, half
        IPv6 /64s; no time passes, so no bucket is ever idle) through a
        limiter with the default cap keep it at the cap, and the process's
        resident memory grows by less than 100 MiB (the figure is printed).
        """
        # Linux only, like revproxy's Debian package.
        self.assertTrue(os.path.exists("/proc/self/statm"), "no /proc/self/statm")
        clock = Clock()
        limiter = RateLimiter(clock)
        limit = RateLimit(1.0, 10)
        allow = limiter.allow
        gc.collect()
        before = currentRSS()
        started = time.monotonic()
        for i in range(500_000):
            allow(SITE, limit, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
            allow(SITE, limit, f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1")
        elapsed = time.monotonic() - started
        growth = currentRSS() - before
        self.assertEqual(len(limiter), 100_000)
        print(
            f"\n1M clients: {len(limiter)} buckets, RSS +{growth / MiB:.1f} MiB,"
            f" {elapsed:.1f} s"
        )
        self.assertLess(growth, 100 * MiB)


class AdminTests(SynchronousTestCase):
    """
    L{RateLimiter.bucket} and L{RateLimiter.reset}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock)
        self.limit = RateLimit(2.0, 10)

    def test_bucketView(self) -> None:
        """
        L{RateLimiter.bucket} shows the tokens now and the capacity; a
        client without a bucket, or whose bucket refilled, has none.
        """
        self.assertIsNone(self.limiter.bucket(SITE, IP))
        for _ in range(4):
            self.limiter.allow(SITE, self.limit, IP)
        self.assertEqual(self.limiter.bucket(SITE, IP), (6.0, 10.0))
        self.clock.advance(0.5)
        self.assertEqual(self.limiter.bucket(SITE, IP), (7.0, 10.0))
        self.assertIsNone(self.limiter.bucket("other", IP))
        self.clock.advance(1.5)
        self.assertIsNone(self.limiter.bucket(SITE, IP))
        self.assertEqual(len(self.limiter), 0)

    def test_reset(self) -> None:
        """
        L{RateLimiter.reset} refills a client's bucket and says whether it
        had one below capacity.
        """
        drain(self.limiter, self.limit)
        self.assertTrue(self.limiter.reset(SITE, IP))
        self.assertIsNone(self.limiter.bucket(SITE, IP))
        self.assertEqual(drain(self.limiter, self.limit), 10)
        self.assertFalse(self.limiter.reset(SITE, "192.0.2.99"))
        self.assertFalse(self.limiter.reset("other", IP))
        self.clock.advance(60)
        self.assertFalse(self.limiter.reset(SITE, IP), "already full")

    def test_resetIPv6(self) -> None:
        """
        Resetting any address of an IPv6 /64 resets its bucket.
        """
        drain(self.limiter, self.limit, "2001:db8::1")
        self.assertTrue(self.limiter.reset(SITE, "2001:db8::2"))
        self.assertEqual(drain(self.limiter, self.limit, "2001:db8::1"), 10)


class RetainTests(SynchronousTestCase):
    """
    L{RateLimiter.retain} carries buckets over a reload.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock)
        self.limits = {
            "same": RateLimit(1.0, 2),
            "changed": RateLimit(1.0, 2),
            "gone": RateLimit(1.0, 2),
            "disabled": RateLimit(1.0, 2),
        }
        for site, limit in self.limits.items():
            for _ in range(2):
                self.limiter.allow(site, limit, IP)

    def test_retain(self) -> None:
        """
        Buckets of unchanged sites survive (an equal new limit counts as
        unchanged); those of sites gone, changed or now off are dropped.
        """
        newLimits = {
            "same": RateLimit(1.0, 2),
            "changed": RateLimit(1.0, 3),
            "disabled": RateLimit(0.0, 0),
            "new": RateLimit(1.0, 2),
        }
        self.limiter.retain(newLimits)
        self.assertEqual(self.limiter.bucket("same", IP), (0.0, 2.0))
        self.assertFalse(self.limiter.allow("same", newLimits["same"], IP).allowed)
        for site in ("changed", "gone", "disabled"):
            self.assertIsNone(self.limiter.bucket(site, IP), site)
        self.assertEqual(len(self.limiter), 1)
        self.assertTrue(self.limiter.allow("changed", newLimits["changed"], IP).allowed)

    def test_retainUnchanged(self) -> None:
        """
        With the same limits, every bucket survives.
        """
        self.limiter.retain(dict(self.limits))
        self.assertEqual(len(self.limiter), 4)
        for site in self.limits:
            self.assertEqual(self.limiter.bucket(site, IP), (0.0, 2.0), site)


_RATES = st.floats(min_value=0.05, max_value=50.0, allow_nan=False)
_BURSTS = st.integers(min_value=1, max_value=20)
_GAPS = st.lists(
    st.one_of(
        st.just(0.0),
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
        st.sampled_from([0.1, 0.25, 0.5, 1.0, 1 / 3]),
    ),
    min_size=1,
    max_size=150,
)


class PropertyTests(SynchronousTestCase):
    """
    Properties of the bucket over generated arrivals.
    """

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(_RATES, _BURSTS, _GAPS)
    def test_windowBound(self, rate: float, burst: int, gaps: list[float]) -> None:
        """
        In any window C{[t, t + w]}, at most C{burst + rate * w} requests are
        admitted.
        """
        clock = Clock()
        limiter = RateLimiter(clock)
        limit = RateLimit(rate, burst)
        admitted: list[float] = []
        for gap in gaps:
            clock.advance(gap)
            if limiter.allow(SITE, limit, IP).allowed:
                admitted.append(clock.seconds())
        for i, start in enumerate(admitted):
            for j in range(i, len(admitted)):
                count = j - i + 1
                window = admitted[j] - start
                self.assertLessEqual(count, burst + rate * window + 1e-6)

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(_RATES, _BURSTS, _GAPS)
    def test_fullAfterIdle(self, rate: float, burst: int, gaps: list[float]) -> None:
        """
        Whatever came before, after C{burst / rate} idle seconds exactly
        C{burst} requests are admitted at once, and a refusal's
        C{retryAfter} is exact: a second earlier is still refused, and then
        one more request is admitted.
        """
        clock = Clock()
        limiter = RateLimiter(clock)
        limit = RateLimit(rate, burst)
        for gap in gaps:
            clock.advance(gap)
            limiter.allow(SITE, limit, IP)
        clock.advance(burst / rate)
        self.assertEqual(drain(limiter, limit), burst)
        decision = limiter.allow(SITE, limit, IP)
        self.assertFalse(decision.allowed)
        self.assertGreaterEqual(decision.retryAfter, 1)
        clock.advance(decision.retryAfter - 1)
        self.assertFalse(limiter.allow(SITE, limit, IP).allowed)
        clock.advance(1)
        self.assertTrue(limiter.allow(SITE, limit, IP).allowed)
