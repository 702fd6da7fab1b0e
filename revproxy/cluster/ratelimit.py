# -*- test-case-name: tests.test_cluster -*-
"""
Rate limits shared by the fleet (#19): the GCRA bucket of each (site or
route, client) in Redis, one Lua script call per request, on Redis's own
clock; while Redis is down or slow, this process's own buckets with its
share of the limit, never failing a request because Redis is.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from revproxy.config import RateLimit
from revproxy.ratelimit import ALLOWED, Decision, RateLimiter, clientKey, shareLimit
from revproxy.throttle import LogThrottle

_log = Logger()

#: The bucket script: KEYS[1] the bucket, ARGV[1] the emission interval
#: and ARGV[2] the burst tolerance, in microseconds.  The key holds the
#: theoretical arrival time (TAT) and expires when the bucket would be full
#: again, so idle clients cost nothing.  Redis's clock (TIME) is every
#: node's clock.  Returns {allowed, microseconds until a token}.
GCRA = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local early = tat - now - tolerance
if early > 0 then
  return {0, early}
end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000))
return {1, 0}
"""

GCRA_SHA = hashlib.sha1(GCRA.encode("utf-8")).hexdigest()

#: The limiters' heartbeat: KEYS[1] the sorted set of the fleet's limiting
#: processes (score: when each stops counting, in ms of Redis's clock),
#: ARGV[1] this one, ARGV[2] how long it counts without another beat.
#: Returns how many count now.
HEARTBEAT = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""

HEARTBEAT_SHA = hashlib.sha1(HEARTBEAT.encode("utf-8")).hexdigest()

#: How often a limiting process says it is there, and how long it counts.
HEARTBEAT_SECS = 5.0
HEARTBEAT_TTL_MS = 15_000

#: One bucket as it is (admin C{ratelimit}): KEYS[1] the bucket; ARGV[1]
#: C{"reset"} to empty it first (refill it).  Returns {TAT or -1, now, how
#: many keys were deleted}, in microseconds of Redis's clock.
BUCKET = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deleted = 0
if ARGV[1] == 'reset' then
  deleted = redis.call('DEL', KEYS[1])
end
local tat = tonumber(redis.call('GET', KEYS[1])) or -1
return {tat, now, deleted}
"""

BUCKET_SHA = hashlib.sha1(BUCKET.encode("utf-8")).hexdigest()

#: How long a request waits for Redis's decision before this process
#: decides alone.
DECISION_TIMEOUT_SECS = 0.05

#: Redis down or slow is logged at most this often.
FALLBACK_LOG_SECS = 60.0


class ScriptRunner(Protocol):
    """
    What the shared limiter needs of the Redis connection
    (L{revproxy.cluster.resp.RespLink} on the request path).
    """

    @property
    def up(self) -> bool:
        """
        Whether a connection is open now.
        """

    def evalsha(
        self, sha: str, script: str, keys: list[str], args: list[Any]
    ) -> Deferred[Any]:
        """
        Run C{script} by its C{sha}.
        """


def bucketArguments(limit: RateLimit) -> list[int]:
    """
    The GCRA arguments of C{limit}: the emission interval (one token's
    refill) and the burst tolerance ((burst - 1) intervals), in whole
    microseconds.
    """
    interval = max(1, round(1_000_000 / limit.requests_per_second))
    return [interval, interval * (limit.burst - 1)]


@attrs.frozen
class _Waiting:
    """
    A decision asked of Redis, and what deciding it alone needs.
    """

    deadline: float
    decided: Deferred[Decision]
    site: str
    limit: RateLimit
    clientIP: str


class SharedRateLimiter:
    """
    The fleet's rate limiter: a request's decision is Redis's, through
    L{GCRA}; this process's L{RateLimiter} decides, with its share, while
    Redis is down or when its answer takes longer than
    L{DECISION_TIMEOUT_SECS}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        redis: ScriptRunner,
        local: RateLimiter,
        prefix: str,
        member: str,
        ipv6Prefix: int = 64,
        timeout: float = DECISION_TIMEOUT_SECS,
    ) -> None:
        """
        @param local: decides when Redis does not.
        @param prefix: the cluster's key prefix.
        @param member: this process, among the fleet's limiting processes
            (C{node:pid}).
        """
        self._clock = clock
        self.redis = redis
        self.local = local
        self._prefix = prefix
        self._member = member
        #: How many processes of the fleet limited requests at the last
        #: heartbeat: while Redis is down, each enforces that share.
        self.processes = 1
        self._beats: LoopingCall | None = None
        self._ipv6Prefix = ipv6Prefix
        self._timeout = timeout
        self._logs = LogThrottle(clock, FALLBACK_LOG_SECS)
        self._warned = False
        self.fallbacks = 0
        self._waiting: deque[_Waiting] = deque()
        self._sweeper: IDelayedCall | None = None

    def start(self) -> None:
        """
        Say every L{HEARTBEAT_SECS} that this process limits requests, and
        learn how many do.
        """
        self._beats = LoopingCall(self.beat)
        self._beats.clock = self._clock
        self._beats.start(HEARTBEAT_SECS, now=True)

    def stop(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.active():
            sweeper.cancel()
        beats, self._beats = self._beats, None
        if beats is not None and beats.running:
            beats.stop()

    def beat(self) -> None:
        """
        One heartbeat (while Redis is up).
        """
        if not self.redis.up:
            return

        def counted(count: Any) -> None:
            try:
                self.processes = max(1, int(count))
            except (TypeError, ValueError):
                pass

        self.redis.evalsha(
            HEARTBEAT_SHA,
            HEARTBEAT,
            [f"{self._prefix}limiters"],
            [self._member, HEARTBEAT_TTL_MS],
        ).addCallbacks(counted, lambda _: None)

    def allow(
        self, site: str, limit: RateLimit, clientIP: str
    ) -> Decision | Deferred[Decision]:
        """
        Take a token from the shared bucket of C{clientIP} on C{site}.
        """
        if not limit.enabled:
            return ALLOWED
        if not self.redis.up:
            return self._alone(site, limit, clientIP, "Redis is down")
        key = f"{self._prefix}rl:{site}:{clientKey(clientIP, self._ipv6Prefix)}"
        decided: Deferred[Decision] = Deferred()
        # One timer for all the decisions waiting (the oldest one's
        # deadline), not one set and cancelled per request: measured, a
        # callLater and its cancel were a tenth of the Redis call's cost.
        self._waiting.append(
            _Waiting(
                self._clock.seconds() + self._timeout, decided, site, limit, clientIP
            )
        )
        if self._sweeper is None:
            self._sweeper = self._clock.callLater(self._timeout, self._sweep)

        def answered(reply: Any) -> None:
            if decided.called:
                return
            try:
                if not isinstance(reply, list | tuple) or len(reply) != 2:
                    raise ValueError(reply)
                allowed, wait = int(reply[0]), int(reply[1])
            except (TypeError, ValueError):
                decided.callback(
                    self._alone(site, limit, clientIP, f"bad answer {reply!r}")
                )
                self._answered()
                return
            if self._warned:
                self._warned = False
                _log.info("Rate limits: Redis answers again; the limits are shared")
            if allowed:
                decided.callback(ALLOWED)
            else:
                decided.callback(Decision(False, max(1, math.ceil(wait / 1_000_000))))
            self._answered()

        def failed(reason: Any) -> None:
            if not decided.called:
                decided.callback(
                    self._alone(site, limit, clientIP, reason.getErrorMessage())
                )
            self._answered()

        self.redis.evalsha(GCRA_SHA, GCRA, [key], bucketArguments(limit)).addCallbacks(
            answered, failed
        )
        return decided

    def _answered(self) -> None:
        """
        Forget the decisions made, from the oldest (Redis answers in
        order); with none left waiting, no timer either.
        """
        waiting = self._waiting
        while waiting and waiting[0].decided.called:
            waiting.popleft()
        if not waiting and self._sweeper is not None:
            if self._sweeper.active():
                self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """
        Decide alone every decision Redis did not answer in time; wait for
        the next one's deadline.
        """
        self._sweeper = None
        now = self._clock.seconds()
        waiting = self._waiting
        while waiting and (waiting[0].decided.called or waiting[0].deadline <= now):
            late = waiting.popleft()
            if not late.decided.called:
                late.decided.callback(
                    self._alone(
                        late.site,
                        late.limit,
                        late.clientIP,
                        "Redis did not answer in time",
                    )
                )
        if waiting:
            self._sweeper = self._clock.callLater(
                max(0.0, waiting[0].deadline - now), self._sweep
            )

    def bucket(
        self, site: str, limit: RateLimit, clientIP: str, reset: bool = False
    ) -> Deferred[tuple[float | None, bool]]:
        """
        The shared bucket of C{clientIP} on C{site} (admin C{ratelimit}):
        its tokens now (L{None} when Redis tracks none: a full bucket), and
        whether C{reset} emptied a tracked one.
        """
        interval = bucketArguments(limit)[0]

        def read(reply: Any) -> tuple[float | None, bool]:
            tat, now, deleted = (int(value) for value in reply)
            if tat < 0:
                return None, bool(deleted)
            tokens = limit.burst - max(0, tat - now) / interval
            return max(0.0, min(float(limit.burst), tokens)), bool(deleted)

        key = f"{self._prefix}rl:{site}:{clientKey(clientIP, self._ipv6Prefix)}"
        return self.redis.evalsha(
            BUCKET_SHA, BUCKET, [key], ["reset" if reset else "read"]
        ).addCallback(read)

    def _alone(self, site: str, limit: RateLimit, clientIP: str, why: str) -> Decision:
        """
        Decide with this process's buckets and share, and say so (at most
        once a minute).
        """
        self.fallbacks += 1
        processes = max(1, self.processes)
        held = self._logs.due()
        if held is not None:
            self._warned = True
            _log.warn(
                "Rate limits: {why}; each of {processes} process(es) limits "
                "alone, with its share, until Redis answers again ({held} more "
                "such decisions since the last line)",
                why=why,
                processes=processes,
                held=held,
            )
        return self.local.allow(site, shareLimit(limit, processes), clientIP)


class ClusterCollector:
    """
    The fleet's metrics of one process, for C{/metrics}: whether its Redis
    connection is up, how many processes of the fleet limit requests, and
    how many decisions it made alone (Redis down or slow).
    """

    def __init__(self, limiter: SharedRateLimiter) -> None:
        self.limiter = limiter

    def describe(self) -> list[Any]:
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        limiter = self.limiter
        yield GaugeMetricFamily(
            "revproxy_cluster_redis_up",
            "Whether the connection to the cluster's Redis is open (summed over "
            "worker processes)",
            value=1.0 if limiter.redis.up else 0.0,
        )
        yield GaugeMetricFamily(
            "revproxy_cluster_limiting_processes",
            "How many processes of the fleet limit requests, at the last "
            "heartbeat (each takes that share of a limit while Redis is down)",
            value=float(limiter.processes),
        )
        yield CounterMetricFamily(
            "revproxy_ratelimit_local_decisions",
            "Rate-limit decisions made by this process alone, Redis being down or slow",
            value=float(limiter.fallbacks),
        )
