# -*- test-case-name: tests.test_cluster_nodes -*-
"""
The fleet's nodes: each node says every few seconds that it is there
(C{{prefix}nodes}, a sorted set scored by when each stops counting, on
Redis's clock), and learns which nodes are: for the challenge
acknowledgements, the admin C{status} and the logs.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from revproxy.cluster.ratelimit import ScriptRunner

_log = Logger()

#: KEYS[1] the sorted set of nodes, ARGV[1] this node, ARGV[2] how long it
#: counts without another beat (ms).  Returns the live nodes, sorted.
BEAT = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

BEAT_SHA = hashlib.sha1(BEAT.encode("utf-8")).hexdigest()

#: How often a node beats, and how long a beat counts.
BEAT_SECS = 5.0
BEAT_TTL_MS = 15_000


class LiveNodes(Protocol):
    """
    What the fleet's parts need of L{Nodes}.
    """

    @property
    def name(self) -> str:
        """
        This node.
        """

    @property
    def live(self) -> tuple[str, ...]:
        """
        The live nodes, this one included.
        """

    def refresh(self) -> Deferred[tuple[str, ...]]:
        """
        The live nodes as Redis has them now (after a heartbeat of this
        one).
        """


class Nodes:
    """
    This node's heartbeat, and the live nodes as last seen.

    @ivar name: this node (C{[cluster] node_name}).
    @ivar live: the nodes whose heartbeat counts, this one included once
        Redis answered, sorted; C{()} before the first answer.
    @ivar firstSeenAt: when Redis first answered a heartbeat of this node
        (this node in the fleet since), or L{None}.
    """

    def __init__(
        self, clock: IReactorTime, redis: ScriptRunner, prefix: str, name: str
    ) -> None:
        self._clock = clock
        self.redis = redis
        self.key = f"{prefix}nodes"
        self.name = name
        self.live: tuple[str, ...] = ()
        self.firstSeenAt: float | None = None
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        loop = self._loop = LoopingCall(self.beat)
        loop.clock = self._clock
        loop.start(BEAT_SECS, now=True)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def others(self) -> tuple[str, ...]:
        """
        The live nodes other than this one.
        """
        return tuple(n for n in self.live if n != self.name)

    def beat(self) -> None:
        """
        One heartbeat (while Redis is up; the last list is kept while it is
        down).
        """
        self.refresh()

    def refresh(self) -> Deferred[tuple[str, ...]]:
        """
        One heartbeat, and the live nodes it answers; the last ones seen
        while Redis is down or when it fails.
        """
        if not self.redis.up:
            return succeed(self.live)

        def seen(reply: Any) -> tuple[str, ...]:
            if not isinstance(reply, list):
                return self.live
            live = tuple(
                sorted(
                    (m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m))
                    for m in reply
                )
            )
            if live != self.live:
                joined = sorted(set(live) - set(self.live))
                if joined and self.live:
                    _log.info(
                        "cluster: node(s) {nodes} joined the fleet",
                        nodes=", ".join(joined),
                    )
                left = sorted(set(self.live) - set(live))
                if left:
                    _log.info(
                        "cluster: node(s) {nodes} left the fleet (no heartbeat "
                        "for {secs} s)",
                        nodes=", ".join(left),
                        secs=BEAT_TTL_MS // 1000,
                    )
            self.live = live
            if self.firstSeenAt is None:
                self.firstSeenAt = self._clock.seconds()
            return live

        d: Deferred[Any] = self.redis.evalsha(
            BEAT_SHA, BEAT, [self.key], [self.name, BEAT_TTL_MS]
        )
        return d.addCallbacks(seen, lambda _: self.live)
