# -*- test-case-name: tests.test_cluster_nodes -*-
"""
The fleet's nodes: each node says every few seconds that it is there
(C{{prefix}nodes}, a sorted set scored by when each stops counting, on
Redis's clock), and learns which nodes are: for the challenge
acknowledgements, the admin C{status} and the logs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from revproxy.cluster.ratelimit import ScriptRunner
from revproxy.throttle import LogThrottle

_log = Logger()

#: KEYS[1] the sorted set of nodes, KEYS[2] the hash of each node's
#: process; ARGV[1] this node, ARGV[2] how long it counts without another
#: beat (ms), ARGV[3] this process (an id made at start).  Returns {the
#: live nodes, sorted; the process that beat for this node before, or
#: false}: another process beating under the same name is a second node
#: with this node_name.
BEAT = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
local before = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
return {redis.call('ZRANGE', KEYS[1], 0, -1), before}
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
        self.processesKey = f"{prefix}node-processes"
        self.name = name
        #: This process, as it beats (a second process beating for the
        #: same name is another node with this node_name).
        self.process = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._beaten = False
        self._twins = LogThrottle(clock, 60.0)
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

    def _twin(self, before: Any) -> None:
        """
        Say (once a minute) that another process beats for this node's
        name, once this one has beaten before (at start, the one before is
        this node's previous process).
        """
        if isinstance(before, bytes):
            before = before.decode("utf-8", "replace")
        beaten, self._beaten = self._beaten, True
        if (
            beaten
            and isinstance(before, str)
            and before != self.process
            and self._twins.due() is not None
        ):
            _log.error(
                "cluster: another process beats for node_name {name} ({other}, "
                "this one is {this}): two nodes share a node_name; the fleet "
                "sees them as one (challenges, reloads and announcements go "
                "wrong): give each node its own [cluster] node_name",
                name=self.name,
                other=before,
                this=self.process,
            )

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
            if not isinstance(reply, list) or len(reply) != 2:
                return self.live
            members, before = reply
            if not isinstance(members, list):
                return self.live
            self._twin(before)
            live = tuple(
                sorted(
                    (m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m))
                    for m in members
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
            BEAT_SHA,
            BEAT,
            [self.key, self.processesKey],
            [self.name, BEAT_TTL_MS, self.process],
        )
        return d.addCallbacks(seen, lambda _: self.live)
