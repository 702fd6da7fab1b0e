# -*- test-case-name: tests.integration.test_cluster_acme -*-
"""
Integration tests of the fleet's ACME sharing (#19): three real C{twistd
revproxy} nodes with C{[cluster]} on one real C{redis-server}, one pebble,
and a real HAProxy in TCP mode in front of them, as a fleet runs behind an
L4 balancer.

Each node has its own C{state_dir}, admin socket, HTTP and HTTPS ports and
the same sites (C{tls = "acme"}).  pebble validates http-01 and tls-alpn-01
on HAProxy's fronts (its DNS answers 127.0.0.1 for every name), which hand
the connections to the nodes' HTTP (HTTPS) ports in turn: pebble makes
three validation connections per challenge, at once, so each challenge
reaches every node of three, the one that ordered and two that did not.
A node that did not receive the challenge's answer through Redis fails its
validation, and with it the order.

What pebble logs counts the orders (C{Added order}, once per new order)
and the certificates (C{Issued certificate serial}); what HAProxy logs
(one line per connection) says which node each validation reached.

The backends of HAProxy are not checked by default: a node that refuses a
connection (not started yet, or stopped) is skipped at once (HAProxy
redispatches to the next one).  Where a node dies mid-test (the lock
holder, killed), HAProxy checks the nodes' HTTP ports every 300 ms, so
that the dead node leaves the rotation at once: a validation handed to it
would fail the survivor's order, which is not what that test is about.

That test needs its holder to die in the middle of an order, every time:
pebble's own delays before validating (C{PEBBLE_VA_SLEEPTIME}) are random
(0 to N-1 s per validation), so instead pebble validates through a L{Gate}
that holds its connections until the test opens it.  The holder has the
lock and has asked pebble to validate (a connection waits at the gate)
when it is killed; its order cannot have finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.integration.pebble import Pebble, startPebble
from tests.integration.support import (
    EXIT_TIMEOUT,
    HAProxy,
    IIntegrationReactor,
    ProxyProcess,
    RawResponse,
    RedisServer,
    Upstream,
    askAdmin,
    closedPort,
    closedPorts,
    clusterSecret,
    configText,
    connectRaw,
    getReactor,
    replaceFile,
    runCommand,
    spawnProxy,
    startHAProxy,
    startRedis,
    waitFor,
    waitHTTPSPorts,
    whoamiBody,
)
from tests.integration.test_tls import httpGet, inThread, tlsExchange

#: The fleet's node names.
NODES = ("a", "b", "c")

#: The sites every node serves: name and host names.
SITES: dict[str, list[str]] = {"a": ["a.test", "www.a.test"], "b": ["b.test"]}

#: Every node serves a new certificate at most this long after the first
#: one serves it (the issue's acceptance point).
SPREAD = 5.0

#: How long an order across the fleet may take, from the nodes' start (or
#: the renewal's request) to the first node serving the certificate.
ISSUE_TIMEOUT = 30.0

#: The order lock's lease, and what a surviving node may take beyond it to
#: notice that the lease is over and complete the order.
LEASE = 30.0
TAKEOVER_MARGIN = 15.0

#: How often HAProxy checks the nodes where one of them dies mid-test.
CHECK_INTERVAL = 0.3

KEY_PREFIX = "fleet:"
EMAIL = "ops@revproxy.example"

#: pebble's log, once per new order and once per certificate.
ORDER_LINE = "Added order"
ISSUED = re.compile(r"Issued certificate serial ([0-9a-fA-F]+) for order")


async def _all(awaitables: Iterable[Any]) -> list[Any]:
    results: list[Any] = await gatherResults(
        [ensureDeferred(a) for a in awaitables], consumeErrors=True
    )
    return results


def fromPebble(cert: x509.Certificate) -> bool:
    """
    Whether C{cert} was issued by pebble (not a placeholder).
    """
    return "Pebble Intermediate CA" in cert.issuer.rfc4514_string()


def dnsNames(cert: x509.Certificate) -> list[str]:
    """
    The DNS subject alternative names of C{cert}, sorted.
    """
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sorted(san.value.get_values_for_type(x509.DNSName))


# -- a gate: holds connections until it is opened


class _GateClient(Protocol):
    """
    The gate's side of a connection it forwards: relays what comes back.
    """

    def __init__(self, server: _GateServer) -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.peerConnected(self)

    def dataReceived(self, data: bytes) -> None:
        transport = self.server.transport
        if transport is not None:
            transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        transport = self.server.transport
        if transport is not None:
            transport.loseConnection()


class _GateServer(Protocol):
    """
    A connection to the gate: kept waiting while the gate is shut (what it
    sends is kept), forwarded once it is open.
    """

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.pending: list[bytes] = []
        self.peer: _GateClient | None = None
        self.closed = False

    def connectionMade(self) -> None:
        self.gate.arrived(self)

    def forward(self) -> None:
        """
        Connect to the gate's target and relay both ways.
        """
        endpoint = TCP4ClientEndpoint(
            self.gate.reactor, "127.0.0.1", self.gate.target, timeout=5
        )
        d = endpoint.connect(Factory.forProtocol(lambda: _GateClient(self)))

        def failed(reason: Failure) -> None:
            if self.transport is not None:
                self.transport.loseConnection()

        d.addErrback(failed)

    def peerConnected(self, peer: _GateClient) -> None:
        self.peer = peer
        assert peer.transport is not None
        if self.closed:
            peer.transport.loseConnection()
            return
        for data in self.pending:
            peer.transport.write(data)
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class Gate:
    """
    A TCP relay on a free loopback port to C{127.0.0.1:target}, shut at
    first: the connections it gets wait (accepted, what they send kept)
    until L{open}, then go on to the target like every later one.  pebble
    validating through a shut gate cannot finish: the order that waits for
    it stays in progress for as long as the test wants.

    @ivar held: how many connections waited at the gate.
    """

    def __init__(self, reactor: IIntegrationReactor, target: int) -> None:
        self.reactor = reactor
        self.target = target
        self.isOpen = False
        self.held = 0
        self._waiting: list[_GateServer] = []
        self._port: IListeningPort | None = None

    @property
    def port(self) -> int:
        assert self._port is not None
        return int(self._port.getHost().port)  # type: ignore[attr-defined]

    async def start(self) -> None:
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._port = await endpoint.listen(
            Factory.forProtocol(lambda: _GateServer(self))
        )

    async def stop(self) -> None:
        """
        Stop listening, and close every connection still waiting.
        """
        for server in self._waiting:
            if server.transport is not None:
                server.transport.abortConnection()  # type: ignore[attr-defined]
        if self._port is not None:
            stopped = self._port.stopListening()
            if stopped is not None:
                await stopped

    def arrived(self, server: _GateServer) -> None:
        if self.isOpen:
            server.forward()
        else:
            self.held += 1
            self._waiting.append(server)

    def open(self) -> None:
        self.isOpen = True
        waiting, self._waiting = self._waiting, []
        for server in waiting:
            if not server.closed:
                server.forward()


# -- the fleet


class Node:
    """
    One node of the fleet: its directory, ports and (while it runs)
    process.
    """

    def __init__(self, name: str, directory: str, httpPort: int, tlsPort: int):
        self.name = name
        self.directory = directory
        self.httpPort = httpPort
        self.tlsPort = tlsPort
        self.configPath = os.path.join(directory, "revproxy.toml")
        self.socketPath = os.path.join(directory, "admin.sock")
        self.stateDir = os.path.join(directory, "state")
        self.proxy: ProxyProcess | None = None
        #: Every process this node ran, for the output.
        self.processes: list[ProxyProcess] = []

    @property
    def running(self) -> bool:
        return self.proxy is not None and self.proxy.running

    @property
    def output(self) -> str:
        return "\n".join(
            f"=== node {self.name}, process {n}:\n{p.output}"
            for n, p in enumerate(self.processes, 1)
        )

    def logLines(self, text: str) -> list[str]:
        """
        The lines of all this node's processes containing C{text}.
        """
        lines = []
        for proxy in self.processes:
            output = (proxy.protocol.stdout + proxy.protocol.stderr).decode(
                "utf-8", "replace"
            )
            lines += [line for line in output.splitlines() if text in line]
        return lines


class Served:
    """
    What a node served for a name: when it was first seen, and the
    certificate.
    """

    def __init__(self, node: str, when: float, cert: x509.Certificate) -> None:
        self.node = node
        self.when = when
        self.cert = cert

    def __repr__(self) -> str:
        return f"<{self.node} at {self.when:.2f}: serial {self.cert.serial_number:x}>"


class _FleetCase(TestCase):
    """
    An upstream C{A}, a Redis, a cluster secret, and three nodes'
    directories and ports (not started); HAProxy, pebble and the nodes are
    started by each test.
    """

    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.started = self.reactor.seconds()
        self.directory = tempfile.mkdtemp(prefix="rpx-fleet-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor, "A")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.redis: RedisServer = await startRedis(
            self.reactor, os.path.join(self.directory, "redis")
        )
        self.addCleanup(self.stopRedis)
        self.secret = clusterSecret(self.directory)
        ports = closedPorts(2 * len(NODES))
        self.nodes: dict[str, Node] = {}
        for index, name in enumerate(NODES):
            directory = os.path.join(self.directory, name)
            os.makedirs(directory)
            self.nodes[name] = Node(
                name, directory, ports[2 * index], ports[2 * index + 1]
            )
        self.balancer: HAProxy | None = None
        self.pebble: Pebble | None = None
        self.root = os.path.join(self.directory, "pebble-root.pem")

    async def stopRedis(self) -> None:
        if self.redis.running:
            await self.redis.stop()

    def log(self, message: str) -> None:
        """
        A timing line in the test log (C{_trial_temp/test.log}).
        """
        from twisted.python import log

        elapsed = self.reactor.seconds() - self.started
        log.msg(f"fleet test, {elapsed:.2f} s: {message}")

    # -- the parts

    async def startBalancer(self, checkInterval: float | None = None) -> HAProxy:
        """
        HAProxy with a front C{http} to the nodes' HTTP ports and a front
        C{https} to their HTTPS ports.
        """
        nodes = list(self.nodes.values())
        self.balancer = await startHAProxy(
            self.reactor,
            os.path.join(self.directory, "haproxy"),
            {
                "http": [n.httpPort for n in nodes],
                "https": [n.tlsPort for n in nodes],
            },
            checkInterval,
        )
        self.addCleanup(self.balancer.stop)
        return self.balancer

    async def startPebble(
        self, httpPort: int, tlsPort: int, environment: dict[str, str] | None = None
    ) -> Pebble:
        self.pebble = await startPebble(
            self, httpPort, tlsPort, environment=environment
        )
        return self.pebble

    async def writeRoot(self) -> str:
        assert self.pebble is not None
        with open(self.root, "wb") as f:
            f.write(await self.pebble.root())
        return self.root

    def writeConfig(
        self,
        node: Node,
        challenge: str,
        sites: dict[str, list[str]] = SITES,
        plain: dict[str, list[str]] | None = None,
    ) -> None:
        """
        The node's config: the sites (acme; the C{plain} ones without
        TLS), its listeners, its admin socket and state, C{[acme]} on
        pebble and C{[cluster]} on the Redis.
        """
        assert self.pebble is not None
        upstreams = [f"http://127.0.0.1:{self.upstream.port}"]
        siteTables: list[dict[str, object]] = []
        for name, hosts in sites.items():
            siteTables.append(
                {"name": name, "hosts": hosts, "upstreams": upstreams, "tls": "acme"}
            )
        for name, hosts in (plain or {}).items():
            siteTables.append({"name": name, "hosts": hosts, "upstreams": upstreams})
        text = configText(
            siteTables,
            node.stateDir,
            [f"tcp:{node.httpPort}:interface=127.0.0.1"],
            {
                "listen_https": [f"tcp:{node.tlsPort}:interface=127.0.0.1"],
                "admin_socket_path": node.socketPath,
            },
        )
        text += "\n[acme]\n" + "".join(
            f"{key} = {json.dumps(value)}\n"
            for key, value in (
                ("email", EMAIL),
                ("directory_url", self.pebble.directoryURL),
                ("ca_file", self.pebble.caFile),
                ("challenge", challenge),
            )
        )
        text += "\n[cluster]\n" + "".join(
            f"{key} = {json.dumps(value)}\n"
            for key, value in (
                ("redis_url", f"redis://127.0.0.1:{self.redis.port}/0"),
                ("key_prefix", KEY_PREFIX),
                ("secret_file", self.secret),
                ("node_name", node.name),
            )
        )
        replaceFile(node.configPath, text)

    async def startNode(self, node: Node) -> ProxyProcess:
        """
        Start C{node} on its config; return once it serves HTTP and HTTPS.
        It is stopped at the end of the test (and must exit 0 then).
        """
        proxy, port = await spawnProxy(
            self.reactor, ["--config", node.configPath], node.directory
        )
        node.proxy = proxy
        node.processes.append(proxy)
        self.addCleanup(self.stopProcess, node, proxy)
        self.assertEqual(port, node.httpPort, proxy.output)
        self.assertEqual(await waitHTTPSPorts(proxy), [node.tlsPort], proxy.output)
        return proxy

    async def startNodes(self, names: Sequence[str] = NODES) -> None:
        """
        Start the nodes C{names} all at once.
        """
        await _all(self.startNode(self.nodes[n]) for n in names)

    async def stopProcess(self, node: Node, proxy: ProxyProcess) -> None:
        """
        SIGTERM one process of C{node}: it must exit 0 if it ran, and have
        logged no traceback.
        """
        running = proxy.running
        code = await proxy.terminate()
        if running:
            self.assertEqual(
                code, 0, f"node {node.name}: SIGTERM gave {code}\n{proxy.output}"
            )
        self.assertNotIn(
            "Traceback", proxy.output, f"node {node.name}:\n{proxy.output}"
        )

    async def stopNode(self, node: Node) -> None:
        assert node.proxy is not None
        await self.stopProcess(node, node.proxy)

    def outputs(self) -> str:
        """
        Every process's output, for failure messages.
        """
        parts = [n.output for n in self.nodes.values()]
        if self.pebble is not None:
            parts.append(self.pebble.output)
        if self.balancer is not None:
            parts.append("--- haproxy:\n" + self.balancer.output)
        return "\n".join(parts)

    def assertNoTraceback(self) -> None:
        for node in self.nodes.values():
            self.assertNotIn("Traceback", node.output, node.output)

    # -- pebble's counts

    def pebbleCount(self, text: str) -> int:
        assert self.pebble is not None
        return self.pebble.output.count(text)

    def issuedSerials(self) -> list[int]:
        """
        The serials of the certificates pebble issued, in order.
        """
        assert self.pebble is not None
        return [int(m.group(1), 16) for m in ISSUED.finditer(self.pebble.output)]

    # -- clients

    async def handshake(self, node: Node, host: str) -> x509.Certificate:
        """
        The certificate a new handshake with C{node} for C{host} gets
        (nothing verified).
        """
        cert, _ = await inThread(
            tlsExchange,
            node.tlsPort,
            host,
            None,
            None,
            what=f"a handshake with node {node.name} for {host}",
        )
        return cert

    async def fetch(
        self, node: Node, host: str, caFile: str
    ) -> tuple[x509.Certificate, RawResponse]:
        """
        GET C{/whoami} from C{node} over TLS for C{host}, the chain and
        name verified against C{caFile}.
        """
        cert, response = await inThread(
            tlsExchange,
            node.tlsPort,
            host,
            caFile,
            httpGet("/whoami", host),
            what=f"GET /whoami over TLS from node {node.name} for {host}",
        )
        assert response is not None
        return cert, response

    async def plainGet(self, node: Node, host: str) -> RawResponse:
        client = await connectRaw(self.reactor, node.httpPort)
        try:
            return await client.request(httpGet("/whoami", host))
        finally:
            await client.close()

    async def redisCommand(self, *args: str) -> str:
        """
        The output of C{redis-cli} (Debian's) asking the test's Redis.
        """
        result = await runCommand(
            self.reactor,
            [
                "/usr/bin/redis-cli",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.redis.port),
                *args,
            ],
        )
        self.assertEqual(result.code, 0, result)
        return result.out.decode("utf-8", "replace").strip()

    async def waitFleet(self, seconds: float = 20.0) -> float:
        """
        Wait until every running node's admin C{status} shows Redis up and
        every running node live; how long that took.
        """
        started = self.reactor.seconds()
        running = [n for n in self.nodes.values() if n.running]
        names = {n.name for n in running}
        answers: dict[str, Any] = {}

        async def ready(node: Node) -> bool:
            answer = await askAdmin(self.reactor, node.socketPath, "status")
            cluster = answer.get("cluster") or {}
            answers[node.name] = cluster
            return cluster.get("redis") == "up" and names <= set(
                cluster.get("nodes", [])
            )

        while not all(await _all(ready(n) for n in running)):
            if self.reactor.seconds() - started > seconds:
                raise AssertionError(
                    f"the fleet is not whole after {seconds} s: {answers}\n"
                    f"{self.outputs()}"
                )
            await deferLater(self.reactor, 0.2, lambda: None)
        return self.reactor.seconds() - started

    # -- the fleet serving

    async def waitServed(
        self,
        host: str,
        nodes: Sequence[Node],
        old: set[int] = frozenset(),  # type: ignore[assignment]
        seconds: float = ISSUE_TIMEOUT,
    ) -> dict[str, Served]:
        """
        Handshakes with each of C{nodes} for C{host}, every 0.2 s, until
        each serves a certificate from pebble that none of C{old} serials
        is; when each node first did and with which certificate.  Fail
        after C{seconds} with what pebble counted.
        """
        seen: dict[str, Served] = {}
        deadline = self.reactor.seconds() + seconds

        async def probe(node: Node) -> None:
            cert = await self.handshake(node, host)
            if fromPebble(cert) and cert.serial_number not in old:
                seen[node.name] = Served(node.name, self.reactor.seconds(), cert)

        while True:
            await _all(probe(n) for n in nodes if n.name not in seen)
            if len(seen) == len(nodes):
                return seen
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"{host}: after {seconds} s only {sorted(seen)} of "
                    f"{[n.name for n in nodes]} serve a new certificate from "
                    f"pebble ({seen}); pebble added {self.pebbleCount(ORDER_LINE)} "
                    f"orders and issued {self.issuedSerials()}\n{self.outputs()}"
                )
            await deferLater(self.reactor, 0.2, lambda: None)

    async def assertFleetServes(
        self,
        nodes: Sequence[Node],
        old: set[int] = frozenset(),  # type: ignore[assignment]
        seconds: float = ISSUE_TIMEOUT,
        sites: dict[str, list[str]] = SITES,
    ) -> dict[str, x509.Certificate]:
        """
        Each site's new certificate reaches every one of C{nodes}, all
        within L{SPREAD} of the first; then each node, for each host name,
        gets it with a verified chain to pebble's root, and the upstream's
        answer.  The certificate of each site.
        """
        root = await self.writeRoot()
        certificates = {}
        everything = await _all(
            self.waitServed(hosts[0], nodes, old, seconds) for hosts in sites.values()
        )
        for (site, hosts), served in zip(sites.items(), everything, strict=True):
            serials = {s.cert.serial_number for s in served.values()}
            self.assertEqual(len(serials), 1, f"site {site}: {served}")
            times = [s.when for s in served.values()]
            spread = max(times) - min(times)
            self.log(f"site {site}: served by {served}, spread {spread:.2f} s")
            self.assertLessEqual(
                spread, SPREAD, f"site {site}: {served}\n{self.outputs()}"
            )
            cert = next(iter(served.values())).cert
            self.assertEqual(dnsNames(cert), sorted(hosts))
            certificates[site] = cert
            for node in nodes:
                for host in hosts:
                    got, response = await self.fetch(node, host, root)
                    self.assertEqual(got.serial_number, cert.serial_number, node.name)
                    self.assertEqual(response.code, 200, response.body[:300])
                    self.assertEqual(response.body, whoamiBody("A"))
        return certificates

    def assertOrderedOnce(
        self, certificates: dict[str, x509.Certificate], orders: int
    ) -> None:
        """
        pebble added C{orders} orders and issued C{orders} certificates in
        all, the served ones among them; no challenge failed.
        """
        assert self.pebble is not None
        issued = self.issuedSerials()
        self.assertEqual(
            (self.pebbleCount(ORDER_LINE), len(issued)),
            (orders, orders),
            f"orders and certificates\n{self.outputs()}",
        )
        for site, cert in certificates.items():
            self.assertIn(cert.serial_number, issued, site)
        self.assertEqual(self.pebbleCount("set INVALID"), 0, self.pebble.output)

    def validationNodes(self, front: str, since: int = 0) -> dict[str, int]:
        """
        How many of pebble's validation connections (through HAProxy's
        C{front}; from the C{since}th on) each node got; none may have been
        left without a node.
        """
        assert self.balancer is not None
        byPort = {
            getattr(n, "httpPort" if front == "http" else "tlsPort"): n.name
            for n in self.nodes.values()
        }
        counts: dict[str, int] = {}
        for connection in self.balancer.connections(front)[since:]:
            self.assertIsNotNone(connection.port, self.balancer.output)
            name = byPort[connection.port]
            counts[name] = counts.get(name, 0) + 1
        return counts

    async def issuance(self, challenge: str) -> dict[str, x509.Certificate]:
        """
        HAProxy, pebble validating C{challenge} through it, the three nodes
        started at once: each site ordered once, and served by all three.
        """
        balancer = await self.startBalancer()
        if challenge == "http-01":
            await self.startPebble(balancer.port("http"), closedPort())
        else:
            await self.startPebble(closedPort(), balancer.port("https"))
        for node in self.nodes.values():
            self.writeConfig(node, challenge)
        await self.startNodes()
        self.log("nodes started")
        certificates = await self.assertFleetServes(list(self.nodes.values()))
        self.assertOrderedOnce(certificates, len(SITES))
        self.assertNoTraceback()
        return certificates


class BalancerTests(TestCase):
    """
    The test harness's HAProxy alone, in front of in-process upstreams.
    """

    async def test_roundRobin(self) -> None:
        """
        One front, three backends, one of them down: the connections go
        to the live ones in turn, none fails, and the log says which
        backend each reached.
        """
        reactor = getReactor()
        directory = tempfile.mkdtemp(prefix="rpx-haproxy-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        upstreams = [Upstream(reactor, name) for name in ("X", "Y")]
        for upstream in upstreams:
            await upstream.start()
            self.addCleanup(upstream.stop)
        dead = closedPort()
        ports = [upstreams[0].port, dead, upstreams[1].port]
        balancer = await startHAProxy(reactor, directory, {"web": ports})
        self.addCleanup(balancer.stop)
        answers = []
        for _ in range(6):
            client = await connectRaw(reactor, balancer.port("web"))
            try:
                response = await client.request(httpGet("/whoami", "web.test"))
            finally:
                await client.close()
            self.assertEqual(response.code, 200, balancer.output)
            answers.append(response.body.split(b"\n", 1)[0])
        self.assertEqual(set(answers), {b"X", b"Y"}, answers)
        await waitFor(
            lambda: len(balancer.connections("web")) == 6, EXIT_TIMEOUT, "the log"
        )
        reached = [c.port for c in balancer.connections("web")]
        self.assertNotIn(dead, reached, balancer.output)
        self.assertEqual(set(reached), {upstreams[0].port, upstreams[1].port})
        self.assertEqual(await balancer.stop(), 0, balancer.output)


class IssuanceTests(_FleetCase):
    """
    Three nodes started together: each name is ordered once for the whole
    fleet, every node serves the certificate, whichever node pebble's
    validations reach.
    """

    async def test_http01(self) -> None:
        """
        http-01 through HAProxy's HTTP front: pebble's validations reach
        every node, and all succeed.
        """
        await self.issuance("http-01")
        reached = self.validationNodes("http")
        self.log(f"http-01 validations by node: {reached}")
        self.assertGreater(len(reached), 1, reached)

    async def test_tlsalpn01(self) -> None:
        """
        tls-alpn-01 through HAProxy's HTTPS front: each node answers the
        C{acme-tls/1} handshakes of a challenge it may not have started.
        """
        await self.issuance("tls-alpn-01")
        reached = self.validationNodes("https")
        self.log(f"tls-alpn-01 validations by node: {reached}")
        self.assertGreater(len(reached), 1, reached)


class WholeFleetTests(_FleetCase):
    """
    A site added to a fleet whose nodes all run and know each other.
    """

    async def test_tlsalpn01SiteAdded(self) -> None:
        """
        The nodes start with a plain site only, and see each other in the
        fleet; then an acme site is added to each node's file and each
        reloads (all at once): the site is ordered once, over
        tls-alpn-01, its validations answered by several nodes, and every
        node serves its certificate.
        """
        balancer = await self.startBalancer()
        await self.startPebble(closedPort(), balancer.port("https"))
        plain = {"plain": ["plain.test"]}
        for node in self.nodes.values():
            self.writeConfig(node, "tls-alpn-01", {}, plain)
        await self.startNodes()
        took = await self.waitFleet()
        self.log(f"the fleet is whole after {took:.2f} s")
        sites = {"a": SITES["a"]}
        for node in self.nodes.values():
            self.writeConfig(node, "tls-alpn-01", sites, plain)
        answers = await _all(
            askAdmin(self.reactor, n.socketPath, "reload") for n in self.nodes.values()
        )
        for answer in answers:
            self.assertEqual(answer["status"], "ok", answer)
        certificates = await self.assertFleetServes(
            list(self.nodes.values()), sites=sites
        )
        self.assertOrderedOnce(certificates, 1)
        reached = self.validationNodes("https")
        self.log(f"tls-alpn-01 validations by node: {reached}")
        self.assertGreater(len(reached), 1, reached)
        self.assertNoTraceback()


class RenewalTests(_FleetCase):
    """
    A forced renewal on one node reaches all.
    """

    async def test_forcedRenewal(self) -> None:
        """
        The admin C{renew a} on node C{b}: a new serial, ordered once more,
        served by all three within L{SPREAD} of the first; site C{b} is
        left alone.
        """
        first = await self.issuance("http-01")
        node = self.nodes["b"]
        started = self.reactor.seconds()
        answer = await askAdmin(self.reactor, node.socketPath, "renew a", ISSUE_TIMEOUT)
        self.log(
            f"renew a on node b answered after {self.reactor.seconds() - started:.2f} s"
        )
        self.assertEqual(answer["status"], "ok", f"{answer}\n{self.outputs()}")
        # The admin renew answers once the new certificate is in place on
        # the node asked.
        served = await self.handshake(node, "a.test")
        self.assertNotEqual(
            served.serial_number,
            first["a"].serial_number,
            f"renew a on node b answered {answer} and node b still serves "
            f"the certificate of before\n{self.outputs()}",
        )
        renewed = await self.assertFleetServes(
            list(self.nodes.values()),
            old={first["a"].serial_number},
            sites={"a": SITES["a"]},
        )
        # Another order anywhere would show by now.
        await deferLater(self.reactor, 1.0, lambda: None)
        self.assertOrderedOnce({**first, **renewed}, len(SITES) + 1)
        for node in self.nodes.values():
            cert = await self.handshake(node, "b.test")
            self.assertEqual(cert.serial_number, first["b"].serial_number)
        self.assertNoTraceback()


class RedisDownTests(_FleetCase):
    """
    The fleet without its Redis: every node serves on, and a node started
    again serves from its local copy.
    """

    timeout = 120

    async def test_redisDownThenBack(self) -> None:
        """
        Redis stopped after issuance: each node keeps serving each site's
        certificate over TLS, and HTTP; each node in turn stopped and
        started again serves the same certificates from its first
        handshake, and orders nothing.  Redis back on the same port: a
        forced renewal on one node reaches all three again, with no
        restart.
        """
        certificates = await self.issuance("http-01")
        root = await self.writeRoot()
        orders = self.pebbleCount(ORDER_LINE)
        await self.redis.stop()
        self.log("redis stopped")
        await deferLater(self.reactor, 1.0, lambda: None)

        async def servesIssued(node: Node) -> None:
            for site, hosts in SITES.items():
                for host in hosts:
                    cert, response = await self.fetch(node, host, root)
                    self.assertEqual(
                        cert.serial_number,
                        certificates[site].serial_number,
                        f"node {node.name}, {host}\n{node.output}",
                    )
                    self.assertEqual(response.body, whoamiBody("A"))
                response = await self.plainGet(node, hosts[0])
                self.assertEqual(response.code, 200, response.body[:300])
                self.assertEqual(response.body, whoamiBody("A"))

        for node in self.nodes.values():
            self.assertTrue(node.running, node.output)
            await servesIssued(node)
        for node in self.nodes.values():
            await self.stopNode(node)
            await self.startNode(node)
            await servesIssued(node)
            assert node.proxy is not None
            self.assertNotIn("placeholder", node.proxy.output)
        self.log("every node restarted while redis is down")
        await deferLater(self.reactor, 1.0, lambda: None)
        self.assertEqual(self.pebbleCount(ORDER_LINE), orders, self.outputs())

        await self.redis.start()
        self.log("redis started again")
        # Each node reconnects with its own back-off (txredisapi's: 1 s,
        # then e times more each time).  An order placed before every node
        # is back would have its validations reach a node that cannot
        # answer them yet: wait until all are.
        took = await self.waitFleet()
        self.log(f"every node back on redis after {took:.2f} s")
        for node in self.nodes.values():
            await servesIssued(node)
        assert self.balancer is not None
        validations = len(self.balancer.connections("http"))
        answer = await askAdmin(
            self.reactor, self.nodes["c"].socketPath, "renew a", ISSUE_TIMEOUT
        )
        self.assertEqual(answer["status"], "ok", f"{answer}\n{self.outputs()}")
        await self.assertFleetServes(
            list(self.nodes.values()),
            old={certificates["a"].serial_number},
            sites={"a": SITES["a"]},
        )
        self.assertEqual(self.pebbleCount(ORDER_LINE), orders + 1, self.outputs())
        # Every node was in the fleet: the validations of c's order reached
        # the others too, which answered them.
        reached = self.validationNodes("http", validations)
        self.log(f"the renewal's validations by node: {reached}")
        self.assertGreater(len(reached), 1, reached)
        self.assertNoTraceback()


class LockHolderKilledTests(_FleetCase):
    """
    The node holding an order's lock dies mid-order: its lease expires,
    and another node completes the order.
    """

    timeout = 120

    async def test_holderKilled(self) -> None:
        """
        Node C{a} alone takes the order lock of site C{a} and asks pebble
        to validate, through a gate that holds the validation: the order
        cannot finish.  C{a} is killed (SIGKILL) there; C{b} and C{c}
        start, the gate opens (HAProxy has taken C{a} out of its
        rotation).  Within the lease and a margin one of them orders the
        certificate, pebble issues it (once: C{a}'s order never finished),
        and both serve it.
        """
        sites = {"a": ["a.test"]}
        balancer = await self.startBalancer(CHECK_INTERVAL)
        gate = Gate(self.reactor, balancer.port("http"))
        await gate.start()
        self.addCleanup(gate.stop)
        await self.startPebble(gate.port, closedPort())
        for node in self.nodes.values():
            self.writeConfig(node, "http-01", sites)
        holder = self.nodes["a"]
        await self.startNode(holder)
        pattern = f"{KEY_PREFIX}lock:order:*"
        keys: list[str] = []

        async def lockKeys() -> list[str]:
            out = await self.redisCommand("--scan", "--pattern", pattern)
            return [k for k in out.splitlines() if k]

        deadline = self.reactor.seconds() + ISSUE_TIMEOUT
        while not keys:
            keys = await lockKeys()
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"no {pattern} key in Redis after {ISSUE_TIMEOUT} s\n"
                    f"{self.outputs()}"
                )
            await deferLater(self.reactor, 0.05, lambda: None)
        owner = await self.redisCommand("GET", keys[0])
        self.log(f"lock {keys} held by {owner!r}")
        try:
            await waitFor(lambda: gate.held > 0, ISSUE_TIMEOUT, "a validation")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.outputs()}") from None
        self.log(f"node a mid-order: {gate.held} validation(s) held at the gate")
        assert holder.proxy is not None
        downLine = f"Server http/port{holder.httpPort} is DOWN"
        downs = balancer.output.count(downLine)
        holder.proxy.kill()
        killed = self.reactor.seconds()
        code = await holder.proxy.waitExit()
        self.assertEqual(code, -9, holder.output)
        self.assertEqual(await self.redisCommand("EXISTS", keys[0]), "1")
        await self.startNodes(["b", "c"])
        # HAProxy takes the dead node out of the rotation.
        try:
            await waitFor(
                lambda: balancer.output.count(downLine) > downs, 5.0, "haproxy"
            )
        except AssertionError:
            self.log(f"haproxy did not log {downLine!r}: {balancer.output}")
        gate.open()
        self.log("gate open")
        survivors = [self.nodes["b"], self.nodes["c"]]
        certificates = await self.assertFleetServes(
            survivors, seconds=LEASE + TAKEOVER_MARGIN, sites=sites
        )
        took = self.reactor.seconds() - killed
        self.log(f"served by b and c {took:.2f} s after node a was killed")
        self.assertLessEqual(took, LEASE + TAKEOVER_MARGIN, self.outputs())
        self.assertEqual(
            self.issuedSerials(), [certificates["a"].serial_number], self.outputs()
        )
        self.assertEqual(holder.logLines("certificate issued"), [], holder.output)
        orderedBy = [
            n.name for n in survivors if n.logLines("ACME: site a: certificate issued")
        ]
        self.assertNotEqual(orderedBy, [], self.outputs())
        self.assertNoTraceback()
