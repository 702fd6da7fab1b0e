"""
Tests for L{revproxy.cluster}: the fleet's shared rate limiter, with a
fake Redis (the scripts themselves run against a real Redis in
L{tests.integration.test_cluster}).
"""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.cluster.ratelimit import (
    BUCKET_SHA,
    DECISION_TIMEOUT_SECS,
    FALLBACK_LOG_SECS,
    GCRA,
    GCRA_SHA,
    HEARTBEAT_SECS,
    HEARTBEAT_SHA,
    ClusterCollector,
    SharedRateLimiter,
    bucketArguments,
)
from revproxy.config import RateLimit
from revproxy.ratelimit import ALLOWED, Decision, RateLimiter, shareLimit

LIMIT = RateLimit(10.0, 4)


class FakeRedis:
    """
    Records the scripts run; each answer is a L{Deferred} the test fires.
    """

    def __init__(self) -> None:
        self.up = True
        self.calls: list[tuple[str, list[str], list[Any], Deferred[Any]]] = []

    def evalsha(
        self, sha: str, script: str, keys: list[str], args: list[Any]
    ) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((sha, keys, args, d))
        return d


class SharedRateLimiterTests(SynchronousTestCase):
    """
    L{SharedRateLimiter}: Redis decides; this process decides alone, with
    its share, when Redis is down or slow.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.local = RateLimiter(self.clock)
        self.limiter = SharedRateLimiter(
            self.clock, self.redis, self.local, "rp:", "node-a:42"
        )

    def decide(self, ip: str = "192.0.2.7") -> Decision | Deferred[Decision]:
        return self.limiter.allow("site", LIMIT, ip)

    def later(self) -> Deferred[Decision]:
        """
        A decision Redis is asked for.
        """
        d = self.decide()
        assert isinstance(d, Deferred)
        return d

    def test_arguments(self) -> None:
        """
        The emission interval and the burst tolerance, in microseconds.
        """
        self.assertEqual(bucketArguments(RateLimit(10.0, 20)), [100_000, 1_900_000])
        self.assertEqual(bucketArguments(RateLimit(3.0, 1)), [333_333, 0])

    def test_redisDecides(self) -> None:
        """
        One script call per request, on the client's bucket; its answer is
        the decision, the wait rounded up to whole seconds.
        """
        d = self.decide()
        assert isinstance(d, Deferred)
        sha, keys, args, answer = self.redis.calls[0]
        self.assertEqual(sha, GCRA_SHA)
        self.assertEqual(keys, ["rp:rl:site:192.0.2.7"])
        self.assertEqual(args, bucketArguments(LIMIT))
        self.assertNoResult(d)
        answer.callback([1, 0])
        self.assertEqual(self.successResultOf(d), ALLOWED)
        refused = self.decide()
        assert isinstance(refused, Deferred)
        self.redis.calls[1][3].callback([0, 2_500_000])
        self.assertEqual(self.successResultOf(refused), Decision(False, 3))
        self.assertEqual(self.limiter.fallbacks, 0)

    def test_ipv6Network(self) -> None:
        """
        IPv6 clients share the bucket of their /64, as locally.
        """
        self.decide("2001:db8:1:2::5")
        self.assertEqual(self.redis.calls[0][1], ["rp:rl:site:2001:db8:1:2::/64"])

    def test_unlimited(self) -> None:
        """
        A site without a limit asks nobody.
        """
        self.assertEqual(
            self.limiter.allow("site", RateLimit(0.0, 0), "192.0.2.7"), ALLOWED
        )
        self.assertEqual(self.redis.calls, [])

    def test_downDecidesAloneWithShare(self) -> None:
        """
        While Redis is down, the local buckets decide at once, with this
        process's share of the limit.
        """
        self.redis.up = False
        self.limiter.processes = 2
        decisions = [self.decide() for _ in range(3)]
        self.assertEqual(decisions, [ALLOWED, ALLOWED, Decision(False, 1)])
        self.assertEqual(self.redis.calls, [])
        self.assertEqual(self.limiter.fallbacks, 3)
        self.assertEqual(shareLimit(LIMIT, 2), RateLimit(5.0, 2))

    def test_slowDecidesAlone(self) -> None:
        """
        An answer that takes longer than the deadline is not waited for;
        when it comes, it is ignored.
        """
        d = self.later()
        self.clock.advance(DECISION_TIMEOUT_SECS)
        self.assertEqual(self.successResultOf(d), ALLOWED)
        self.redis.calls[0][3].callback([0, 1_000_000])
        self.assertEqual(self.limiter.fallbacks, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTimerForAllWaiting(self) -> None:
        """
        The decisions waiting for Redis share one timer, armed for the
        oldest one's deadline: each one Redis has not answered in time is
        decided alone at its own deadline, the answered ones are Redis's,
        and no timer is left once none waits.
        """
        first = self.later()
        self.clock.advance(0.02)
        second = self.later()
        self.clock.advance(0.02)
        third = self.later()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(DECISION_TIMEOUT_SECS - 0.04)
        self.assertEqual(self.successResultOf(first), ALLOWED)
        self.assertEqual(self.limiter.fallbacks, 1)
        self.assertNoResult(second)
        self.redis.calls[1][3].callback([0, 2_000_000])
        self.assertEqual(self.successResultOf(second), Decision(False, 2))
        self.assertNoResult(third)
        self.clock.advance(0.04)
        self.assertEqual(self.successResultOf(third), ALLOWED)
        self.assertEqual(self.limiter.fallbacks, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failureDecidesAlone(self) -> None:
        """
        A failed call, or an answer that makes no sense, leaves the
        decision to the local buckets; no timer is left.
        """
        d = self.later()
        self.redis.calls[0][3].errback(ConnectionError("gone"))
        self.assertEqual(self.successResultOf(d), ALLOWED)
        d = self.later()
        self.redis.calls[1][3].callback(b"nonsense")
        self.assertEqual(self.successResultOf(d), ALLOWED)
        self.assertEqual(self.limiter.fallbacks, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fallbackLoggedOncePerMinute(self) -> None:
        """
        Deciding alone is logged once a minute at most, with how many
        decisions were made alone meanwhile.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.redis.up = False
        for _ in range(5):
            self.decide()
        self.clock.advance(FALLBACK_LOG_SECS)
        self.decide()
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[1]["held"], 4)

    def test_backLoggedOnce(self) -> None:
        """
        The first decision Redis makes after this process warned that it
        decided alone is logged once (the limits are shared again); not
        after a fallback that was not logged.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.redis.up = False
        self.decide()
        self.redis.up = True
        for index in range(2):
            self.decide()
            self.redis.calls[index][3].callback([1, 0])
        again = [e for e in events if "answers again;" in e.get("log_format", "")]
        self.assertEqual(len(again), 1)

    def test_heartbeat(self) -> None:
        """
        Every few seconds the process says it limits requests, and learns
        how many do (its share while Redis is down); not while Redis is
        down.
        """
        self.limiter.start()
        self.addCleanup(self.limiter.stop)
        sha, keys, args, answer = self.redis.calls[0]
        self.assertEqual(
            (sha, keys, args[0]), (HEARTBEAT_SHA, ["rp:limiters"], "node-a:42")
        )
        answer.callback(3)
        self.assertEqual(self.limiter.processes, 3)
        self.redis.up = False
        self.clock.advance(HEARTBEAT_SECS)
        self.assertEqual(len(self.redis.calls), 1)
        self.assertEqual(self.limiter.processes, 3)

    def test_scriptUsesRedisClock(self) -> None:
        """
        The bucket script reads Redis's own clock: every node's decisions
        are on one clock.
        """
        self.assertIn("redis.call('TIME')", GCRA)


class BucketTests(SynchronousTestCase):
    """
    L{SharedRateLimiter.bucket}: a shared bucket as admin C{ratelimit}
    shows it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.limiter = SharedRateLimiter(
            self.clock, self.redis, RateLimiter(self.clock), "rp:", "n:1"
        )

    def test_tokens(self) -> None:
        """
        The tokens left: the burst less what the theoretical arrival time
        is ahead of now, in intervals.
        """
        d = self.limiter.bucket("site", LIMIT, "192.0.2.7")
        sha, keys, args, answer = self.redis.calls[0]
        self.assertEqual(
            (sha, keys, args), (BUCKET_SHA, ["rp:rl:site:192.0.2.7"], ["read"])
        )
        now = 1_000_000_000
        answer.callback([now + 250_000, now, 0])
        self.assertEqual(self.successResultOf(d), (1.5, False))

    def test_untracked(self) -> None:
        """
        No key: a full bucket, L{None}.
        """
        d = self.limiter.bucket("site", LIMIT, "192.0.2.7")
        self.redis.calls[0][3].callback([-1, 5, 0])
        self.assertEqual(self.successResultOf(d), (None, False))

    def test_reset(self) -> None:
        """
        C{reset} deletes the key first, and says whether there was one.
        """
        d = self.limiter.bucket("site", LIMIT, "192.0.2.7", reset=True)
        self.assertEqual(self.redis.calls[0][2], ["reset"])
        self.redis.calls[0][3].callback([-1, 5, 1])
        self.assertEqual(self.successResultOf(d), (None, True))


class ClusterCollectorTests(SynchronousTestCase):
    """
    L{ClusterCollector}: the fleet's metrics of one process.
    """

    def test_metrics(self) -> None:
        """
        Redis up or down, the fleet's limiting processes, the decisions
        made alone.
        """
        clock = Clock()
        redis = FakeRedis()
        limiter = SharedRateLimiter(clock, redis, RateLimiter(clock), "rp:", "n:1")
        limiter.processes = 3
        redis.up = False
        limiter.allow("site", LIMIT, "192.0.2.7")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ClusterCollector(limiter))
        text = generate_latest(registry).decode()
        self.assertIn("revproxy_cluster_redis_up 0.0", text)
        self.assertIn("revproxy_cluster_limiting_processes 3.0", text)
        self.assertIn("revproxy_ratelimit_local_decisions_total 1.0", text)
        redis.up = True
        self.assertIn(
            "revproxy_cluster_redis_up 1.0", generate_latest(registry).decode()
        )
