# -*- test-case-name: tests.integration.test_cluster -*-
"""
Integration tests of the fleet (#19): real C{twistd revproxy} nodes sharing
one real C{redis-server} (Debian's), each test with its own Redis on a
loopback port and its own directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    ProxyProcess,
    RawResponse,
    RedisServer,
    Upstream,
    askAdmin,
    clusterSecret,
    configText,
    connectRaw,
    getReactor,
    replaceFile,
    sleep,
    spawnProxy,
    startRedis,
)

RATE = 5.0
BURST = 10


async def _all(awaitables: Iterable[Any]) -> list[Any]:
    results: list[Any] = await gatherResults(
        [ensureDeferred(a) for a in awaitables], consumeErrors=True
    )
    return results


class _TwoNodes(TestCase):
    """
    Two nodes (C{a}, C{b}) with one Redis, one rate-limited site; each node
    runs L{workers} worker processes.
    """

    workers = 1

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-cluster-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor, "U")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.redis.stop)
        self.secret = clusterSecret(self.directory)
        self.nodes: list[tuple[ProxyProcess, int]] = []
        for name in ("a", "b"):
            self.nodes.append(await self.startNode(name))

    async def startNode(self, name: str) -> tuple[ProxyProcess, int]:
        directory = os.path.join(self.directory, name)
        os.makedirs(directory)
        path = os.path.join(directory, "revproxy.toml")
        site: dict[str, object] = {
            "name": "main",
            "hosts": ["main.test"],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
            "rate_limit": {"requests_per_second": RATE, "burst": BURST},
        }
        text = configText(
            [site],
            os.path.join(directory, "state"),
            server={
                "admin_socket_path": os.path.join(directory, "admin.sock"),
                "workers": self.workers,
            },
        )
        text += (
            "\n[cluster]\n"
            f'redis_url = "redis://127.0.0.1:{self.redis.port}/0"\n'
            f'secret_file = "{self.secret}"\n'
            f'node_name = "node-{name}"\n'
        )
        replaceFile(path, text)
        proxy, port = await spawnProxy(self.reactor, ["--config", path], directory)
        self.addCleanup(self.stopNode, proxy)
        return proxy, port

    async def stopNode(self, proxy: ProxyProcess) -> None:
        running = proxy.running
        code = await proxy.terminate()
        if running:
            self.assertEqual(code, 0, proxy.output)
        self.assertNotIn("Traceback", proxy.output, proxy.output)

    async def get(self, port: int) -> RawResponse:
        client = await connectRaw(self.reactor, port)
        try:
            return await client.request(
                b"GET /whoami HTTP/1.1\r\nHost: main.test\r\nConnection: close\r\n\r\n"
            )
        finally:
            await client.close()

    async def burst(self, window: float) -> tuple[dict[int, int], float]:
        """
        Requests as fast as four loops can send them for C{window}
        seconds, alternating the nodes; the answers' codes counted.
        """
        codes: dict[int, int] = {}
        start = self.reactor.seconds()

        async def loop(first: int) -> None:
            turn = first
            while self.reactor.seconds() - start < window:
                response = await self.get(self.nodes[turn % len(self.nodes)][1])
                codes[response.code] = codes.get(response.code, 0) + 1
                turn += 1

        await _all([loop(n) for n in range(4)])
        return codes, self.reactor.seconds() - start

    async def admin(self, node: str, command: str) -> dict[str, Any]:
        answer: dict[str, Any] = await askAdmin(
            self.reactor, os.path.join(self.directory, node, "admin.sock"), command
        )
        return answer

    def assertShared(self, codes: dict[int, int], elapsed: float) -> None:
        """
        Both nodes together admitted no more than one bucket allows, and
        at least its burst.
        """
        admitted = codes.get(200, 0)
        self.assertEqual(set(codes) - {200, 429}, set(), codes)
        bound = (BURST + RATE * elapsed) * 1.05
        self.assertLessEqual(admitted, bound, f"{codes} in {elapsed:.2f} s")
        self.assertGreaterEqual(admitted, BURST, f"{codes} in {elapsed:.2f} s")


class SharedRateLimitTests(_TwoNodes):
    """
    Two nodes with one Redis hold a client to the site's limit, whichever
    node it reaches; with Redis gone they keep serving, each with its
    share, and share again once it is back.
    """

    async def test_sharedAcrossNodes(self) -> None:
        """
        A client alternating two nodes is held to the site's limit: the
        burst plus the rate over the window (5 % slack), where two nodes
        counting alone would admit twice that.
        """
        codes, elapsed = await self.burst(3.0)
        self.assertShared(codes, elapsed)
        for proxy, _ in self.nodes:
            self.assertNotIn("Rate limits: Redis", proxy.output)
        # Either node's admin socket shows the one shared bucket; a reset
        # on one refills it for both.
        answers = [await self.admin(name, "ratelimit main 127.0.0.1") for name in "ab"]
        for answer in answers:
            self.assertEqual(answer["status"], "ok", answer)
            self.assertTrue(answer["shared"], answer)
            self.assertTrue(answer["tracked"], answer)
            self.assertLess(answer["tokens"], 2, answer)
        reset = await self.admin("a", "ratelimit reset main 127.0.0.1")
        self.assertTrue(reset["reset"], reset)
        after = await self.admin("b", "ratelimit main 127.0.0.1")
        self.assertEqual(
            (after["tracked"], after["tokens"]), (False, float(BURST)), after
        )
        self.assertEqual((await self.get(self.nodes[1][1])).code, 200)

    async def test_redisDownThenBack(self) -> None:
        """
        Redis stopped: every node keeps answering (each limits alone with
        its share, and says so once); Redis back on the same port: the
        limit is shared again, without a restart.
        """
        await sleep(1.0)
        await self.redis.stop()
        codes, elapsed = await self.burst(2.0)
        self.assertEqual(set(codes) - {200, 429}, set(), codes)
        self.assertGreater(codes.get(200, 0), 0, codes)
        for proxy, _ in self.nodes:
            warned = [
                line
                for line in proxy.output.splitlines()
                if "Rate limits: Redis is down" in line
            ]
            self.assertEqual(len(warned), 1, proxy.output)
        await self.redis.start()
        # txredisapi reconnects with back-off (1 s, then e times more).
        await sleep(4.0)
        await sleep(BURST / RATE)
        codes, elapsed = await self.burst(3.0)
        self.assertShared(codes, elapsed)


class WorkersInFleetTests(_TwoNodes):
    """
    Nodes with workers take part in the fleet once each (the supervisor's
    heartbeat), and every worker's requests count in the one shared bucket.
    """

    workers = 2

    async def test_sharedAcrossWorkers(self) -> None:
        """
        A client alternating two nodes of two workers each is held to the
        site's limit (four processes counting alone, or each with its
        share of a node, would admit more); each node's C{status} shows
        the fleet of two nodes, not four processes.
        """
        seen: list[dict[str, Any]] = []
        for _ in range(int(3 * 5.0 / 0.2)):
            seen = [
                (await self.admin(name, "status")).get("cluster") or {} for name in "ab"
            ]
            if all(part.get("nodes") == ["node-a", "node-b"] for part in seen):
                break
            await sleep(0.2)
        self.assertEqual(
            [part["nodes"] for part in seen], [["node-a", "node-b"]] * 2, seen
        )
        self.assertEqual([part["redis"] for part in seen], ["up", "up"], seen)
        codes, elapsed = await self.burst(3.0)
        self.assertShared(codes, elapsed)
