"""
Integration tests of the fleet's order locks (#19,
L{revproxy.cluster.locks}): two L{OrderLock}s in this process, each on its
own L{RedisLink} to one real C{redis-server} (Debian's, on a loopback port
with its own directory), on the real reactor, with short leases.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import cast

from twisted.trial.unittest import TestCase

from revproxy.cluster.locks import OrderLock
from revproxy.cluster.redis import RedisLink
from revproxy.interfaces import IRevProxyReactor
from tests.integration.support import (
    RedisServer,
    clusterConfig,
    getReactor,
    sleep,
    startRedis,
    stopService,
    waitFor,
)

LEASE_MS = 1500
RENEW_SECS = 0.5
NAME = "shop.test,www.shop.test"

#: How long a connection or a lock is waited for at most.
WAIT_SECS = 10.0


class OrderLockTests(TestCase):
    """
    One real Redis, two nodes' locks: one holder at a time, renewals keep a
    lease, and a holder that dies lets the other take it once the lease is
    over.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-locks-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.redis.stop)
        self.cluster = clusterConfig(self.redis, self.directory)
        self.linkA, self.a = await self.node("node-a:1")
        self.linkB, self.b = await self.node("node-b:2")

    async def node(self, owner: str) -> tuple[RedisLink, OrderLock]:
        """
        A started L{RedisLink}, connected, and an L{OrderLock} on it; both
        stopped at the end of the test.
        """
        link = RedisLink(cast(IRevProxyReactor, self.reactor), self.cluster)
        link.startService()
        self.addCleanup(stopService, link)
        lock = OrderLock(
            self.reactor,
            link,
            "it:",
            owner,
            lease_ms=LEASE_MS,
            renew_secs=RENEW_SECS,
        )
        self.addCleanup(lock.stop)
        await waitFor(lambda: link.up, WAIT_SECS, "the Redis connection")
        return link, lock

    async def test_oneHolder(self) -> None:
        """
        One node takes the lock, the other cannot (and sees who holds it);
        after the holder releases it, the other can.
        """
        self.assertTrue(await self.a.acquire(NAME))
        self.assertTrue(self.a.held(NAME))
        self.assertFalse(await self.b.acquire(NAME))
        self.assertFalse(self.b.held(NAME))
        self.assertEqual(await self.b.holder(NAME), "node-a:1")
        # A lock of other names is free.
        self.assertTrue(await self.b.acquire("other.test"))

        await self.a.release(NAME)
        self.assertFalse(self.a.held(NAME))
        self.assertIsNone(await self.b.holder(NAME))
        self.assertTrue(await self.b.acquire(NAME))
        self.assertEqual(await self.a.holder(NAME), "node-b:2")
        # A release by a node that no longer holds it leaves the lock alone.
        await self.a.release(NAME)
        self.assertEqual(await self.a.holder(NAME), "node-b:2")
        await self.b.release(NAME)
        await self.b.release("other.test")

    async def test_holderDies(self) -> None:
        """
        A holder that dies (no more renewals, its connection gone, no
        release) keeps the lock until its lease is over; then the other
        node takes it.
        """
        self.assertTrue(await self.a.acquire(NAME))
        await sleep(RENEW_SECS * 2.5)
        self.assertFalse(await self.b.acquire(NAME))

        self.a.stop()
        await stopService(self.linkA)
        died = self.reactor.seconds()
        self.assertEqual(await self.b.holder(NAME), "node-a:1")

        taken = False
        while not taken:
            self.assertLess(
                self.reactor.seconds() - died, WAIT_SECS, "the lease did not expire"
            )
            await sleep(0.1)
            taken = await self.b.acquire(NAME)
        waited = self.reactor.seconds() - died
        # The last renewal was at most RENEW_SECS before it died.
        self.assertGreaterEqual(waited, LEASE_MS / 1000 - RENEW_SECS - 0.2)
        self.assertLessEqual(waited, LEASE_MS / 1000 + 1.0)
        self.assertTrue(self.b.held(NAME))
        self.assertEqual(await self.b.holder(NAME), "node-b:2")
        await self.b.release(NAME)

    async def test_renewalsKeepTheLease(self) -> None:
        """
        A held lease is renewed: well past its first length it is still
        held, and the other node still cannot take it.
        """
        self.assertTrue(await self.a.acquire(NAME))
        await sleep(LEASE_MS / 1000 * 2.5)
        self.assertTrue(self.a.held(NAME))
        self.assertFalse(await self.b.acquire(NAME))
        self.assertEqual(await self.b.holder(NAME), "node-a:1")
        await self.a.release(NAME)
        self.assertIsNone(await self.b.holder(NAME))
