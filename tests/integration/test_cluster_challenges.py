"""
Integration tests of the fleet's challenge answers (#19,
L{revproxy.cluster.challenges}): nodes in this process, each with its own
L{RedisLink}, L{RedisSubscription}, L{Nodes} heartbeat and
L{ChallengeStore}, on one real C{redis-server} (Debian's, on a loopback
port with its own directory), on the real reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import cast

import attrs
from twisted.trial.unittest import TestCase

from revproxy.acme.challenges import ChallengeStore
from revproxy.cluster.challenges import PUBLISH_WAIT_SECS, SharedChallenges
from revproxy.cluster.nodes import Nodes
from revproxy.cluster.redis import RedisLink, RedisSubscription
from revproxy.interfaces import IRevProxyReactor
from tests.integration.support import (
    RedisServer,
    clusterConfig,
    getReactor,
    startRedis,
    stopService,
    waitFor,
)

#: How long a connection or an answer is waited for at most.
WAIT_SECS = 10.0


@attrs.define
class Node:
    link: RedisLink
    subscription: RedisSubscription
    nodes: Nodes
    store: ChallengeStore
    challenges: SharedChallenges


class SharedChallengesTests(TestCase):
    """
    One real Redis, two nodes (and a third that comes late): an answer one
    node adds is served by the others, C{published} fires once they
    acknowledged it, and a remove takes it away everywhere.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-chal-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.redis.stop)
        self.cluster = clusterConfig(self.redis, self.directory)
        self.a = await self.node("node-a")
        self.b = await self.node("node-b")
        await self.beat(self.a, self.b)

    async def node(self, name: str, settle: bool = True) -> Node:
        """
        A started node, connected and subscribed; stopped at the end of the
        test.

        @param settle: make one full read before returning.
        """
        reactor = cast(IRevProxyReactor, self.reactor)
        link = RedisLink(reactor, self.cluster)
        subscription = RedisSubscription(reactor, self.cluster)
        nodes = Nodes(self.reactor, link, "it:", name)
        store = ChallengeStore(self.reactor)
        challenges = SharedChallenges(
            self.reactor, link, subscription, nodes, "it:", store
        )
        link.startService()
        self.addCleanup(stopService, link)
        subscription.startService()
        self.addCleanup(stopService, subscription)
        challenges.start()
        self.addCleanup(challenges.stop)
        nodes.start()
        self.addCleanup(nodes.stop)
        await waitFor(lambda: link.up, WAIT_SECS, f"{name}'s Redis connection")
        await waitFor(
            lambda: subscription.subscribed, WAIT_SECS, f"{name}'s subscription"
        )
        if settle:
            # One full read now, so that none is left to come (from a
            # subscription made before the connection) while a test runs:
            # the answers must get there by the messages.
            await challenges.resync()
        return Node(link, subscription, nodes, store, challenges)

    async def beat(self, *nodes: Node) -> None:
        """
        Beat every node's heartbeat until each sees them all.
        """
        names = tuple(sorted(node.nodes.name for node in nodes))

        def allSeen() -> bool:
            for node in nodes:
                node.nodes.beat()
            return all(node.nodes.live == names for node in nodes)

        await waitFor(allSeen, WAIT_SECS, "the heartbeats")

    async def test_servedEverywhere(self) -> None:
        """
        Node A adds an http-01 and a tls-alpn-01 answer: its C{published}
        fires once node B acknowledged them (well before the 5 s limit),
        and B serves both then; A's removes take them away from B.
        """
        self.a.challenges.addHTTP01("tok_A-1", "tok_A-1.thumb")
        self.a.challenges.addTLSALPN01("shop.test", "shop.auth")
        self.assertIsNone(self.b.store.http01("tok_A-1"))
        start = self.reactor.seconds()
        await self.a.challenges.published()
        self.assertLess(self.reactor.seconds() - start, PUBLISH_WAIT_SECS / 2)
        self.assertEqual(self.b.store.http01("tok_A-1"), b"tok_A-1.thumb")
        self.assertIsNotNone(self.b.store.tlsALPN01("shop.test"))
        acks = await self.a.link.command(
            "SMEMBERS", "it:challenge-acks:http-01:tok_A-1"
        )
        self.assertEqual(set(acks), {"node-b"})

        self.a.challenges.removeHTTP01("tok_A-1")
        self.a.challenges.removeTLSALPN01("shop.test")
        self.assertIsNone(self.a.store.http01("tok_A-1"))
        await waitFor(
            lambda: (
                self.b.store.http01("tok_A-1") is None
                and self.b.store.tlsALPN01("shop.test") is None
            ),
            WAIT_SECS,
            "node B's answers removed",
        )
        self.assertEqual(await self.a.link.command("KEYS", "it:challenge*"), [])

    async def test_lateNodeResyncs(self) -> None:
        """
        A node that subscribes after an answer was added gets it from its
        full read, and acknowledges it.
        """
        self.a.challenges.addHTTP01("early", "early.thumb")
        await self.a.challenges.published()
        c = await self.node("node-c", settle=False)
        await waitFor(
            lambda: c.store.http01("early") == b"early.thumb",
            WAIT_SECS,
            "node C's answer",
        )
        await self.beat(self.a, self.b, c)
        start = self.reactor.seconds()
        await self.a.challenges.published()
        self.assertLess(self.reactor.seconds() - start, PUBLISH_WAIT_SECS / 2)
        acks = await self.a.link.command("SMEMBERS", "it:challenge-acks:http-01:early")
        self.assertEqual(set(acks), {"node-b", "node-c"})
