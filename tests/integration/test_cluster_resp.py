"""
Integration tests of the request path's lean Redis client
(L{revproxy.cluster.resp.RespLink}) against one real C{redis-server}
(Debian's, on a loopback port with its own directory), on the real
reactor: the GCRA script's decisions through L{SharedRateLimiter}, Redis
going away and coming back on the same port, AUTH and SELECT, TLS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, cast

import trustme
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import TestCase

from revproxy.cluster.ratelimit import (
    GCRA_SHA,
    HEARTBEAT,
    HEARTBEAT_SHA,
    HEARTBEAT_TTL_MS,
    SharedRateLimiter,
)
from revproxy.cluster.redis import RedisLink, RedisSubscription
from revproxy.cluster.resp import RedisReplyError, RespLink
from revproxy.config import ClusterConfig, RateLimit
from revproxy.interfaces import IRevProxyReactor
from revproxy.ratelimit import ALLOWED, Decision, RateLimiter
from tests.integration.support import (
    RedisServer,
    closedPorts,
    clusterConfig,
    getReactor,
    startRedis,
    stopService,
    waitFor,
)

#: How long a connection is waited for at most.
WAIT_SECS = 10.0

PASSWORD = "it-Pa55word"


class RespLinkTests(TestCase):
    """
    One real Redis: the script decides, a Redis that stops makes the link
    down at once and commands fail fast, one that starts again on the same
    port is found again.
    """

    password = ""

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-resp-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis"), self.password
        )
        self.addCleanup(self.stopRedis)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def stopRedis(self) -> None:
        if self.redis.running:
            await self.redis.stop()

    def cluster(self, password: str = "", db: int = 0) -> ClusterConfig:
        return clusterConfig(
            self.redis,
            self.directory,
            redis_url=f"redis://127.0.0.1:{self.redis.port}/{db}",
            redis_password=password,
            redis_db=db,
        )

    async def link(self, cluster: ClusterConfig, wait: bool = True) -> RespLink:
        """
        A started L{RespLink} (connected, if C{wait}), stopped at the end of
        the test.
        """
        link = RespLink(cast(IRevProxyReactor, self.reactor), cluster)
        link.startService()
        self.addCleanup(stopService, link)
        if wait:
            await waitFor(lambda: link.up, WAIT_SECS, "the Redis connection")
        return link

    async def test_gcra(self) -> None:
        """
        L{SharedRateLimiter} on a L{RespLink}: a burst of concurrent
        requests (pipelined on the one connection) gets exactly the
        bucket's tokens, then a wait; the script is loaded again (C{EVAL})
        after Redis forgot it; the bucket reads back.
        """
        link = await self.link(self.cluster())
        shared = SharedRateLimiter(
            self.reactor,
            link,
            RateLimiter(self.reactor),
            "it:",
            "node:1",
            timeout=2.0,
        )
        limit = RateLimit(1.0, 5)
        self.assertEqual(await link.command("SCRIPT", "FLUSH"), "OK")
        decisions = await gatherResults(
            [
                cast(Deferred[Decision], shared.allow("site", limit, "192.0.2.7"))
                for _ in range(8)
            ]
        )
        self.assertEqual(decisions[:5], [ALLOWED] * 5)
        self.assertEqual(decisions[5:], [Decision(False, 1)] * 3)
        self.assertEqual(shared.fallbacks, 0)
        self.assertEqual(await link.command("SCRIPT", "EXISTS", GCRA_SHA), [1])

        tokens, deleted = await shared.bucket("site", limit, "192.0.2.7")
        assert tokens is not None
        self.assertLess(tokens, 1.0)
        self.assertFalse(deleted)
        tokens, deleted = await shared.bucket("site", limit, "192.0.2.7", reset=True)
        self.assertTrue(deleted)
        self.assertEqual(
            await cast(Deferred[Decision], shared.allow("site", limit, "192.0.2.7")),
            ALLOWED,
        )
        # The heartbeat's script counts this process.
        count = await link.evalsha(
            HEARTBEAT_SHA, HEARTBEAT, ["it:limiters"], ["node:1", HEARTBEAT_TTL_MS]
        )
        self.assertEqual(count, 1)

    async def test_replies(self) -> None:
        """
        Replies as the request path's callers had them from txredisapi:
        strings as L{str}, integers as L{int}, nil as L{None}; an error
        reply fails with L{RedisReplyError}.
        """
        link = await self.link(self.cluster())
        self.assertEqual(await link.command("SET", "it:k", "välue", "PX", 10000), "OK")
        self.assertEqual(await link.command("GET", "it:k"), "välue")
        self.assertEqual(await link.command("INCR", "it:n"), 1)
        self.assertIsNone(await link.command("GET", "it:missing"))
        with self.assertRaises(RedisReplyError):
            await link.command("INCR", "it:k")

    async def test_redisDownAndBack(self) -> None:
        """
        Redis stopped: the link is down at once, and commands (and the
        limiter's decisions, made locally) do not wait; Redis started again
        on the same port: the link connects again and works.
        """
        link = await self.link(self.cluster())
        shared = SharedRateLimiter(
            self.reactor, link, RateLimiter(self.reactor), "it:", "node:1"
        )
        await self.redis.stop()
        await waitFor(lambda: not link.up, WAIT_SECS, "the link seeing Redis gone")
        d = link.command("PING")
        self.assertTrue(d.called)
        with self.assertRaises(ConnectionError):
            await d
        self.assertEqual(shared.allow("site", RateLimit(1.0, 5), "192.0.2.9"), ALLOWED)
        self.assertEqual(shared.fallbacks, 1)

        await self.redis.start()
        await waitFor(lambda: link.up, WAIT_SECS, "the link back")
        self.assertEqual(await link.command("PING"), "PONG")
        decision = await cast(
            Deferred[Decision], shared.allow("site", RateLimit(1.0, 5), "192.0.2.9")
        )
        self.assertEqual(decision, ALLOWED)
        self.assertEqual(shared.fallbacks, 1)

    async def test_select(self) -> None:
        """
        C{redis_db}: the link's keys are in that database.
        """
        five = await self.link(self.cluster(db=5))
        zero = await self.link(self.cluster())
        await five.command("SET", "it:where", "five")
        self.assertIsNone(await zero.command("GET", "it:where"))
        self.assertEqual(await five.command("GET", "it:where"), "five")


class RespLinkPasswordTests(RespLinkTests):
    """
    The same, against a Redis that requires a password; and a wrong
    password fails cleanly.
    """

    password = PASSWORD

    def cluster(self, password: str = PASSWORD, db: int = 0) -> ClusterConfig:
        return super().cluster(password, db)

    async def test_wrongPassword(self) -> None:
        """
        A wrong password: never up, one error logged (without the
        password), commands fail at once, and it keeps trying (it is up as
        soon as Redis accepts the password).
        """
        wrong = "not-" + PASSWORD
        link = await self.link(self.cluster(wrong), wait=False)
        self.assertFalse(await link.whenUp(1.5))
        self.assertFalse(link.up)
        with self.assertRaises(ConnectionError):
            await link.command("PING")
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1, [formatEvent(e) for e in errors])
        self.assertIn("WRONGPASS", formatEvent(errors[0]))
        for event in self.events:
            self.assertNotIn(wrong, formatEvent(event))

        # Redis's password becomes the link's: it gets in at a retry.
        right = await self.link(self.cluster())
        await right.command("CONFIG", "SET", "requirepass", wrong)
        self.assertTrue(await link.whenUp(WAIT_SECS))
        self.assertEqual(await link.command("PING"), "PONG")


class _TLSRedisServer(RedisServer):
    """
    A L{RedisServer} that also listens with TLS on C{tlsPort} (its
    certificate from C{directory}), the plain port staying for its PING.
    """

    def __init__(
        self, reactor: Any, directory: str, port: int, tlsPort: int, password: str
    ) -> None:
        super().__init__(reactor, directory, port, password)
        self.tlsPort = tlsPort

    @property
    def argv(self) -> list[str]:
        return [
            *super().argv,
            "--tls-port",
            str(self.tlsPort),
            "--tls-cert-file",
            os.path.join(self.directory, "cert.pem"),
            "--tls-key-file",
            os.path.join(self.directory, "key.pem"),
            "--tls-ca-cert-file",
            os.path.join(self.directory, "ca.pem"),
            "--tls-auth-clients",
            "no",
        ]


class RespLinkTLSTests(TestCase):
    """
    C{redis_tls}: the link verifies Redis's certificate against
    C{redis_ca_file}, authenticates and runs the script; a certificate of
    another CA is refused (never up).
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-resp-tls-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        redisDir = os.path.join(self.directory, "redis")
        os.makedirs(redisDir)
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        ca.cert_pem.write_to_path(os.path.join(redisDir, "ca.pem"))
        leaf.private_key_pem.write_to_path(os.path.join(redisDir, "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(os.path.join(redisDir, "cert.pem"))
        trustme.CA().cert_pem.write_to_path(os.path.join(self.directory, "other.pem"))
        port, tlsPort = closedPorts(2)
        self.redis = _TLSRedisServer(self.reactor, redisDir, port, tlsPort, PASSWORD)
        await self.redis.start()
        self.addCleanup(self.redis.stop)

    def cluster(self, caFile: str) -> ClusterConfig:
        return ClusterConfig(
            redis_url=f"rediss://localhost:{self.redis.tlsPort}/0",
            redis_host="localhost",
            redis_port=self.redis.tlsPort,
            redis_tls=True,
            redis_ca_file=caFile,
            redis_password=PASSWORD,
            key_prefix="it:",
            node_name="node",
            secret_file=os.path.join(self.directory, "cluster.key"),
            secret=b"k" * 32,
        )

    async def link(self, caFile: str) -> RespLink:
        link = RespLink(cast(IRevProxyReactor, self.reactor), self.cluster(caFile))
        link.startService()

        async def stop() -> None:
            stopped = link.stopService()
            if stopped is not None:
                await stopped

        self.addCleanup(stop)
        return link

    async def test_tls(self) -> None:
        """
        Over TLS with the cluster's CA: up, and the script decides.
        """
        link = await self.link(os.path.join(self.redis.directory, "ca.pem"))
        self.assertTrue(await link.whenUp(WAIT_SECS))
        shared = SharedRateLimiter(
            self.reactor, link, RateLimiter(self.reactor), "it:", "n:1", timeout=2.0
        )
        decision = await cast(
            Deferred[Decision], shared.allow("site", RateLimit(1.0, 1), "192.0.2.1")
        )
        self.assertEqual(decision, ALLOWED)
        self.assertEqual(shared.fallbacks, 0)

    async def test_otherCA(self) -> None:
        """
        A certificate the CA file does not vouch for: never up.
        """
        link = await self.link(os.path.join(self.directory, "other.pem"))
        self.assertFalse(await link.whenUp(1.5))
        with self.assertRaises(ConnectionError):
            await link.command("PING")

    async def test_tlsControlLink(self) -> None:
        """
        The fleet's own connections (txredisapi's L{RedisLink} and
        L{RedisSubscription}) over TLS with the cluster's CA: commands are
        answered, messages arrive, and both stop cleanly (the TLS endpoint
        gives the client the protocol it built, not the TLS layer, so its
        reconnecting service does not take a connection for a failure).
        """
        cluster = self.cluster(os.path.join(self.redis.directory, "ca.pem"))
        reactor = cast(IRevProxyReactor, self.reactor)
        link = RedisLink(reactor, cluster)
        subscription = RedisSubscription(reactor, cluster)
        received: list[str] = []
        subscription.listen("it:hello", received.append)
        link.startService()
        subscription.startService()
        try:
            self.assertTrue(await link.whenUp(WAIT_SECS))
            for _ in range(int(WAIT_SECS / 0.05)):
                if subscription.subscribed:
                    break
                await deferLater(self.reactor, 0.05, lambda: None)
            self.assertTrue(subscription.subscribed)
            self.assertEqual(await link.command("PING"), "PONG")
            await link.command("PUBLISH", "it:hello", "world")
            for _ in range(int(WAIT_SECS / 0.05)):
                if received:
                    break
                await deferLater(self.reactor, 0.05, lambda: None)
            self.assertEqual(received, ["world"])
        finally:
            for service in (link, subscription):
                stopped = service.stopService()
                if stopped is not None:
                    await stopped
        self.assertFalse(link.up)
