"""
Integration tests of fleet reloads (#19, L{revproxy.cluster.reloads}):
nodes in this process, each with its own L{RedisLink},
L{RedisSubscription}, L{Nodes} heartbeat and L{FleetReloads}, on one real
C{redis-server} (Debian's, on a loopback port with its own directory), on
the real reactor; each node's own reload is a fake that counts its calls.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from revproxy.cluster.nodes import BEAT_SECS, Nodes
from revproxy.cluster.redis import RedisLink, RedisSubscription
from revproxy.cluster.reloads import FleetReloads
from revproxy.interfaces import IRevProxyReactor
from tests.integration.support import (
    ProxyProcess,
    RedisServer,
    Upstream,
    askAdmin,
    clusterConfig,
    clusterSecret,
    configText,
    getReactor,
    replaceFile,
    sleep,
    spawnProxy,
    startRedis,
    stopService,
    waitFor,
)

#: How long a connection, a heartbeat or an answer is waited for at most.
WAIT_SECS = 10.0

#: How long a fleet reload waits for the answers here.
ANSWER_SECS = 1.5

OK: dict[str, Any] = {"status": "ok", "generation": 2}
REFUSED: dict[str, Any] = {
    "status": "error",
    "code": "config_invalid",
    "message": "sites[0].hosts: empty",
}


@attrs.define
class Node:
    """
    One node's parts, and what its own reload answers and how often it
    ran.
    """

    name: str
    link: RedisLink
    subscription: RedisSubscription
    nodes: Nodes
    fleet: FleetReloads | None
    answer: dict[str, Any] = attrs.Factory(lambda: dict(OK))
    reloads: int = 0

    def reloadHere(self) -> Deferred[dict[str, Any]]:
        self.reloads += 1
        return succeed(self.answer)


class FleetReloadTests(TestCase):
    """
    Two nodes with fleet reloads on one real Redis: a reload asked on one
    runs on the other and comes back with both answers; a failure there is
    named; a live node without fleet reloads is silent; while Redis is down
    the asking node answers alone at once, and once Redis is back the
    fleet answers again.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-reloads-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.redis.stop)
        self.cluster = clusterConfig(self.redis, self.directory, reload_channel=True)
        self.a = await self.node("node-a")
        self.b = await self.node("node-b")
        await self.allSeen([self.a, self.b])

    async def node(self, name: str, fleet: bool = True) -> Node:
        """
        A node's parts, started and connected (subscribed, with a
        heartbeat); all stopped at the end of the test.
        """
        reactor = cast(IRevProxyReactor, self.reactor)
        link = RedisLink(reactor, self.cluster)
        subscription = RedisSubscription(reactor, self.cluster)
        nodes = Nodes(self.reactor, link, "it:", name)
        node = Node(name, link, subscription, nodes, None)
        if fleet:
            node.fleet = FleetReloads(
                self.reactor,
                link,
                subscription,
                nodes,
                "it:",
                node.reloadHere,
                timeout=ANSWER_SECS,
            )
        link.startService()
        self.addCleanup(stopService, link)
        subscription.startService()
        self.addCleanup(stopService, subscription)
        if node.fleet is not None:
            self.addCleanup(node.fleet.stop)
        await waitFor(lambda: link.up, WAIT_SECS, f"{name}: the Redis connection")
        if fleet:
            await waitFor(
                lambda: subscription.subscribed, WAIT_SECS, f"{name}: the subscription"
            )
        nodes.start()
        self.addCleanup(nodes.stop)
        return node

    async def allSeen(self, nodes: list[Node]) -> None:
        """
        Beat until every node in C{nodes} sees them all live.
        """
        names = tuple(sorted(n.name for n in nodes))

        def seen() -> bool:
            for node in nodes:
                node.nodes.beat()
            return all(node.nodes.live == names for node in nodes)

        await waitFor(seen, WAIT_SECS, f"the heartbeats of {names}")

    async def reloadFleet(self, node: Node) -> tuple[dict[str, Any], float]:
        """
        A fleet reload asked on C{node} after its own reload; its answer
        and how long it took.
        """
        assert node.fleet is not None
        start = self.reactor.seconds()
        answer = await node.fleet.reloadFleet(await node.reloadHere())
        return answer, self.reactor.seconds() - start

    async def test_bothAnswer(self) -> None:
        """
        A reload asked on one node runs once on the other, and the answer,
        which comes as soon as the other answered, has both nodes'.
        """
        self.b.answer = dict(OK, generation=5)
        answer, took = await self.reloadFleet(self.a)
        self.assertLess(took, ANSWER_SECS)
        self.assertEqual(
            answer,
            dict(
                OK,
                nodes={"node-a": OK, "node-b": dict(OK, generation=5)},
                silent=[],
                failed_nodes=[],
                fleet="all 2 node(s) answered ok",
            ),
        )
        self.assertEqual((self.a.reloads, self.b.reloads), (1, 1))
        # And the other way round.
        answer, _ = await self.reloadFleet(self.b)
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(sorted(answer["nodes"]), ["node-a", "node-b"])
        self.assertEqual((self.a.reloads, self.b.reloads), (2, 2))

    async def test_otherFails(self) -> None:
        """
        The other node's failed reload makes the answer C{partially
        applied}, naming it, with its error.
        """
        self.b.answer = REFUSED
        answer, _ = await self.reloadFleet(self.a)
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["code"], "fleet_incomplete")
        self.assertEqual(answer["failed_nodes"], ["node-b"])
        self.assertEqual(answer["nodes"]["node-b"], REFUSED)

    async def test_silentNode(self) -> None:
        """
        A live node that does not take part in fleet reloads is named
        silent once the wait is over.
        """
        c = await self.node("node-c", fleet=False)
        await self.allSeen([self.a, self.b, c])
        answer, took = await self.reloadFleet(self.a)
        self.assertGreaterEqual(took, ANSWER_SECS - 0.1)
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["silent"], ["node-c"])
        self.assertEqual(sorted(answer["nodes"]), ["node-a", "node-b"])

    async def test_redisDownAndBack(self) -> None:
        """
        While Redis is down the asking node answers at once with its own
        answer, the other not told; once Redis is back (the subscriptions
        made again), the fleet answers again.
        """
        await self.redis.stop()
        await waitFor(
            lambda: not (self.a.link.up or self.b.link.up), WAIT_SECS, "Redis seen down"
        )
        answer, took = await self.reloadFleet(self.a)
        self.assertLess(took, 0.5)
        self.assertEqual(
            answer["fleet"], "Redis is down: the other nodes were not told to reload"
        )
        self.assertEqual(answer["silent"], ["node-b"])
        self.assertEqual(answer["nodes"], {"node-a": OK})
        self.assertEqual(self.b.reloads, 0)

        await self.redis.start()
        await waitFor(
            lambda: all(
                n.link.up and n.subscription.subscribed for n in (self.a, self.b)
            ),
            WAIT_SECS,
            "Redis seen back",
        )
        await self.allSeen([self.a, self.b])
        answer, _ = await self.reloadFleet(self.a)
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(self.b.reloads, 1)


class RealNodesTests(TestCase):
    """
    Two real C{twistd revproxy} nodes with C{reload_channel = true} and
    one real Redis: an admin C{reload} on one makes the other re-read its
    own file, and answers with both results.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-reloads-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor, "U")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.redis.stop)
        self.secret = clusterSecret(self.directory)
        for name in ("a", "b"):
            self.writeConfig(name, [])
            await self.startNode(name)
        await self.bothSeen()

    async def bothSeen(self) -> None:
        """
        Wait until each node sees the other live: as admin C{status} says
        (its C{cluster} part), else as long as two heartbeats take (a
        node's first beat may come before Redis is connected, and before
        the other node's first).
        """
        start = self.reactor.seconds()
        while self.reactor.seconds() - start < 2 * BEAT_SECS + 1.0:
            seen = [(await self.admin(name, "status")).get("cluster") for name in "ab"]
            if all(
                isinstance(part, dict)
                and sorted(part.get("nodes") or ()) == ["node-a", "node-b"]
                for part in seen
            ):
                return
            await sleep(0.2)

    def writeConfig(self, name: str, extra: list[dict[str, object]]) -> None:
        """
        Node C{name}'s config: one site, and C{extra} ones.
        """
        directory = os.path.join(self.directory, name)
        os.makedirs(directory, exist_ok=True)
        site: dict[str, object] = {
            "name": "main",
            "hosts": ["main.test"],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
        }
        text = configText(
            [site, *extra],
            os.path.join(directory, "state"),
            server={"admin_socket_path": os.path.join(directory, "admin.sock")},
        )
        text += (
            "\n[cluster]\n"
            f'redis_url = "redis://127.0.0.1:{self.redis.port}/0"\n'
            f'secret_file = "{self.secret}"\n'
            f'node_name = "node-{name}"\n'
            "reload_channel = true\n"
        )
        replaceFile(os.path.join(directory, "revproxy.toml"), text)

    async def startNode(self, name: str) -> None:
        directory = os.path.join(self.directory, name)
        path = os.path.join(directory, "revproxy.toml")
        proxy, _ = await spawnProxy(self.reactor, ["--config", path], directory)
        self.addCleanup(self.stopNode, proxy)

    async def stopNode(self, proxy: ProxyProcess) -> None:
        running = proxy.running
        code = await proxy.terminate()
        if running:
            self.assertEqual(code, 0, proxy.output)
        self.assertNotIn("Traceback", proxy.output, proxy.output)

    async def admin(self, node: str, command: str) -> dict[str, Any]:
        answer: dict[str, Any] = await askAdmin(
            self.reactor,
            os.path.join(self.directory, node, "admin.sock"),
            command,
            seconds=WAIT_SECS + 5,
        )
        return answer

    async def test_reloadTellsTheOther(self) -> None:
        """
        A reload on node a applies node b's own new file there, and the
        answer has both nodes' results; a file that node b cannot use is
        named, and b keeps serving its last config.
        """
        extra: dict[str, object] = {
            "name": "extra",
            "hosts": ["extra.test"],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
        }
        self.writeConfig("b", [extra])
        answer = await self.admin("a", "reload")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(sorted(answer["nodes"]), ["node-a", "node-b"])
        self.assertEqual(answer["nodes"]["node-a"]["sites"]["added"], [])
        self.assertEqual(answer["nodes"]["node-b"]["sites"]["added"], ["extra"])
        self.assertEqual(answer["silent"], [])
        status = await self.admin("b", "status")
        self.assertEqual((status["generation"], status["sites"]), (2, 2))

        self.writeConfig("b", [dict(extra, hosts=[])])
        answer = await self.admin("a", "reload")
        self.assertEqual(answer["status"], "partially applied", answer)
        self.assertEqual(answer["failed_nodes"], ["node-b"])
        self.assertEqual(answer["nodes"]["node-b"]["code"], "config_invalid")
        status = await self.admin("b", "status")
        self.assertEqual((status["generation"], status["sites"]), (2, 2))
