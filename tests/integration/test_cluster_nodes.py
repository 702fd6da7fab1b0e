"""
Integration tests of the fleet's node heartbeat (#19,
L{revproxy.cluster.nodes}): L{Nodes} on their own L{RedisLink}s to one
real C{redis-server} (the C{BEAT} script as Redis runs it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import cast

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from revproxy.cluster.nodes import Nodes
from revproxy.cluster.redis import RedisLink
from revproxy.interfaces import IRevProxyReactor
from tests.integration.support import (
    clusterConfig,
    getReactor,
    startRedis,
    stopService,
    waitFor,
)

WAIT_SECS = 10.0


class HeartbeatTests(TestCase):
    """
    Nodes see each other live through Redis; two processes beating under
    one node_name are told apart and reported.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-nodes-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.redis = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.redis.stop)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def node(self, name: str) -> Nodes:
        link = RedisLink(
            cast(IRevProxyReactor, self.reactor),
            clusterConfig(self.redis, self.directory),
        )
        link.startService()
        self.addCleanup(stopService, link)
        await waitFor(lambda: link.up, WAIT_SECS, "the Redis connection")
        return Nodes(self.reactor, link, "it:", name)

    async def test_seeEachOther(self) -> None:
        """
        After a beat of each, both see both, sorted.
        """
        a = await self.node("node-a")
        b = await self.node("node-b")
        self.assertEqual(await a.refresh(), ("node-a",))
        self.assertEqual(await b.refresh(), ("node-a", "node-b"))
        self.assertEqual(await a.refresh(), ("node-a", "node-b"))
        self.assertEqual(b.others(), ("node-a",))

    async def test_twins(self) -> None:
        """
        Two processes beating for one name: the second beat of either
        reports the other.
        """
        first = await self.node("node-a")
        second = await self.node("node-a")
        await first.refresh()
        await second.refresh()
        await first.refresh()
        lines = [
            formatEvent(e)
            for e in self.events
            if "two nodes share a node_name" in formatEvent(e)
        ]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(second.process, lines[0])
