"""
Tests for L{revproxy.workers.protocol} and L{revproxy.workers.child}: the
AMP commands and a worker's side of them, in memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme.renewal import placeholderCertificate
from revproxy.config import RateLimit, configFromBytes
from revproxy.interfaces import IRevProxyReactor
from revproxy.ratelimit import shareLimit
from revproxy.workers import protocol
from revproxy.workers.child import (
    WORKER_COMMANDS,
    Inherited,
    RemoteCertificates,
    RemoteHealth,
    Worker,
    WorkerProtocol,
    shareLimits,
    workerConfig,
)
from tests.fakes import FakeReactor

CONFIG = b"""\
[server]
listen_http = ["tcp:18080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = "/run/x.sock"
ops_listen = "tcp:9901:interface=127.0.0.1"
workers = 2

[logging]
access_log = ""

[[sites]]
name = "demo"
hosts = ["localhost"]
upstreams = ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
rate_limit = { requests_per_second = 10, burst = 20 }
health_check = { path = "/health" }

[[sites.routes]]
path = "/api/"
upstreams = ["http://127.0.0.1:9003"]
rate_limit = { requests_per_second = 3, burst = 3 }

[[sites]]
name = "other"
hosts = ["other.test"]
upstreams = ["http://127.0.0.1:9002"]
"""

PATH = "/etc/revproxy/config.toml"


class _Big(amp.Command):
    arguments = [(b"data", protocol.BigBytes())]
    response = [(b"length", amp.Integer()), (b"data", protocol.BigBytes())]


class _Echo(amp.AMP):
    @_Big.responder
    def big(self, data: bytes) -> dict[str, Any]:
        return {"length": len(data), "data": data[::-1]}


def _pair(server: amp.AMP) -> tuple[amp.AMP, Any]:
    """
    An AMP client talking to C{server} in memory, and the pump between
    them.
    """
    client = amp.AMP()
    pump = connect(
        server,
        FakeTransport(server, isServer=True),
        client,
        FakeTransport(client, False),
    )
    return client, pump


def _result(testCase: SynchronousTestCase, d: Deferred[Any]) -> Any:
    return testCase.successResultOf(d)


class BigBytesTests(SynchronousTestCase):
    """
    L{protocol.BigBytes} carries values beyond AMP's 64 KiB.
    """

    def test_roundTrip(self) -> None:
        """
        Empty, small, exactly one chunk and several chunks all arrive
        whole, both ways.
        """
        client, pump = _pair(_Echo())
        for size in (0, 10, 0xFFFF, 0xFFFF + 1, 300_000):
            data = os.urandom(size)
            d = client.callRemote(_Big, data=data)
            pump.flush()
            answer = self.successResultOf(d)
            self.assertEqual(answer["length"], size)
            self.assertEqual(answer["data"], data[::-1])


class CertificatesCodecTests(SynchronousTestCase):
    """
    L{protocol.encodeCertificates} and L{protocol.decodeCertificates}.
    """

    def test_roundTrip(self) -> None:
        """
        Chains, keys and what is known of them come back the same.
        """
        cert = placeholderCertificate(
            "demo", ["demo.test", "www.demo.test"], time.time()
        )
        decoded = protocol.decodeCertificates(
            protocol.encodeCertificates({"demo": cert})
        )
        self.assertEqual(list(decoded), ["demo"])
        back = decoded["demo"]
        self.assertEqual(back.chain, cert.chain)
        self.assertEqual(back.names, cert.names)
        self.assertEqual(back.source, "placeholder")
        self.assertEqual(back.issuer, cert.issuer)
        self.assertEqual(int(back.not_after), int(cert.not_after))
        self.assertEqual(back.key.public_key(), cert.key.public_key())

    def test_garbage(self) -> None:
        """
        What is not an encoding raises L{ValueError}.
        """
        self.assertRaises(ValueError, protocol.decodeCertificates, b"not json")


class InheritedTests(SynchronousTestCase):
    """
    L{Inherited} on the command line.
    """

    def test_roundTrip(self) -> None:
        inherited = Inherited("https", 6, socket.AF_INET6)
        self.assertEqual(Inherited.parse(inherited.describe()), inherited)

    def test_unknownKind(self) -> None:
        self.assertRaises(ValueError, Inherited.parse, "ftp:5:2")


class ShareTests(SynchronousTestCase):
    """
    Each worker enforces its share of the rate limits.
    """

    def test_share(self) -> None:
        """
        The rate is divided, the burst divided down, at least 1.
        """
        limit = RateLimit(10.0, 20)
        self.assertEqual(shareLimit(limit, 1), limit)
        self.assertEqual(shareLimit(limit, 2), RateLimit(5.0, 10))
        self.assertEqual(shareLimit(limit, 3), RateLimit(10.0 / 3, 6))
        self.assertEqual(shareLimit(RateLimit(1.0, 1), 4), RateLimit(0.25, 1))
        self.assertEqual(shareLimit(RateLimit(0.0, 0), 4), RateLimit(0.0, 0))

    def test_bound(self) -> None:
        """
        N workers together admit at most burst + rate x window.
        """
        for n in range(1, 9):
            for burst in (n, 10, 37, 100):
                share = shareLimit(RateLimit(7.0, burst), n)
                self.assertLessEqual(n * share.burst, burst)
                self.assertAlmostEqual(n * share.requests_per_second, 7.0)

    def test_sitesAndRoutes(self) -> None:
        """
        Sites and their routes with a limit get the share; those without
        keep none.
        """
        config = shareLimits(configFromBytes(CONFIG, PATH), 2)
        demo, other = config.sites
        self.assertEqual(demo.rate_limit, RateLimit(5.0, 10))
        self.assertEqual(demo.routes[0].rate_limit, RateLimit(1.5, 1))
        self.assertFalse(other.rate_limit.enabled)


class WorkerConfigTests(SynchronousTestCase):
    """
    L{workerConfig}: what a worker serves of the bytes it is sent.
    """

    def test_noAdminNorOps(self) -> None:
        """
        A worker has neither the admin socket nor the ops listener: they
        are the supervisor's.
        """
        config = workerConfig(PATH, CONFIG, b"", 2)
        self.assertEqual(config.server.admin_socket_path, "")
        self.assertEqual(config.server.ops_listen, "")
        self.assertEqual(config.path, PATH)
        self.assertEqual(config.source, CONFIG)

    def test_static(self) -> None:
        """
        The static settings come from the file the supervisor started
        with, the rest from the new one.
        """
        changed = CONFIG.replace(b"tcp:18080", b"tcp:18099").replace(
            b'"other.test"', b'"changed.test"'
        )
        config = workerConfig(PATH, changed, CONFIG, 2)
        self.assertEqual(config.server.listen_http, ("tcp:18080:interface=127.0.0.1",))
        self.assertEqual(config.sites[1].hosts, ("changed.test",))

    def test_staticCluster(self) -> None:
        """
        C{[cluster]} is static too: a worker keeps the supervisor's
        (here: none) when the new file adds one.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "cluster.key"), "wb") as f:
            f.write(b"k" * 32)
        path = os.path.join(directory, "config.toml")
        changed = CONFIG + (
            b'\n[cluster]\nredis_url = "redis://127.0.0.1"\n'
            b'secret_file = "cluster.key"\n'
        )
        self.assertIsNotNone(workerConfig(path, changed, b"", 2).cluster)
        self.assertIsNone(workerConfig(path, changed, CONFIG, 2).cluster)


class RemoteStateTests(SynchronousTestCase):
    """
    L{RemoteHealth} and L{RemoteCertificates}.
    """

    def test_health(self) -> None:
        """
        The states the supervisor sent are attached to the checked sites'
        selectors, kept across updates; unchecked sites get none.
        """
        from revproxy.runtime import buildRuntime

        runtime = buildRuntime(configFromBytes(CONFIG, PATH), FakeReactor())
        health = RemoteHealth()
        health.set([("demo", "http://127.0.0.1:9001", False)])
        health.update(runtime.table.sites)
        demo, other = runtime.table.sites
        self.assertIsNone(other.selector.health)
        states = demo.selector.health
        assert states is not None
        byURL = {u.url: s.healthy for u, s in states.items()}
        self.assertEqual(
            byURL, {"http://127.0.0.1:9000": True, "http://127.0.0.1:9001": False}
        )
        health.set([("demo", "http://127.0.0.1:9001", True)])
        self.assertTrue(all(s.healthy for s in states.values()))
        self.assertIn(("demo", "http://127.0.0.1:9001", True), list(health.states()))

    def test_certificates(self) -> None:
        """
        New certificates replace the old and are announced; a site is
        issued only with a certificate from the CA.
        """
        changes: list[bool] = []
        certificates = RemoteCertificates()
        certificates.onChange = lambda: changes.append(True)
        placeholder = placeholderCertificate("demo", ["demo.test"], time.time())
        certificates.set({"demo": placeholder})
        self.assertEqual(changes, [True])
        self.assertFalse(certificates.isIssued("demo"))
        certificates.set({"demo": attrs.evolve(placeholder, source="acme")})
        self.assertTrue(certificates.isIssued("demo"))
        self.assertFalse(certificates.isIssued("nothing"))
        self.assertEqual(list(certificates.certificates()), ["demo"])


def _worker(reactor: FakeReactor) -> Worker:
    """
    A worker whose inherited socket is a memory reactor's port.
    """

    def endpoint(r: Any, fd: int, family: int) -> IStreamServerEndpoint:
        return TCP4ServerEndpoint(reactor, 18080, interface="127.0.0.1")

    return Worker(
        cast(IRevProxyReactor, reactor),
        2,
        [Inherited("http", 5, socket.AF_INET)],
        endpoint=endpoint,
    )


class WorkerTests(SynchronousTestCase):
    """
    L{Worker} applies what the supervisor sends.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.worker = _worker(self.reactor)
        self.addCleanup(self.worker.stop)

    def test_firstApplyServes(self) -> None:
        """
        The first config starts the request path on the inherited socket,
        as the generation it is told, with its share of the limits.
        """
        self.worker.apply(PATH, CONFIG, b"", 7)
        path = self.worker.path
        assert path is not None
        self.assertEqual(path.holder.current.generation, 7)
        self.assertEqual([p[0] for p in self.reactor.tcpServers], [18080])
        self.assertEqual(
            path.holder.current.config.sites[0].rate_limit, RateLimit(5.0, 10)
        )

    def test_laterApplySwaps(self) -> None:
        """
        A later config is swapped in, numbered as told; the listeners stay.
        """
        self.worker.apply(PATH, CONFIG, b"", 1)
        changed = CONFIG.replace(b'"other.test"', b'"changed.test"')
        self.worker.apply(PATH, changed, CONFIG, 2)
        path = self.worker.path
        assert path is not None
        self.assertEqual(path.holder.current.generation, 2)
        self.assertEqual(path.holder.current.config.sites[1].hosts, ("changed.test",))
        self.assertEqual(len(self.reactor.tcpServers), 1)

    def test_brokenApplyKeepsServing(self) -> None:
        """
        A config that cannot be served raises L{protocol.ApplyFailed}
        saying why, and the one before keeps serving.
        """
        self.worker.apply(PATH, CONFIG, b"", 1)
        e = self.assertRaises(
            protocol.ApplyFailed,
            self.worker.apply,
            PATH,
            CONFIG.replace(b"[[sites]]", b"[[sites]]\nbogus = 1", 1),
            CONFIG,
            2,
        )
        self.assertIn("bogus", str(e))
        path = self.worker.path
        assert path is not None
        self.assertEqual(path.holder.current.generation, 1)

    def test_brokenFirstApply(self) -> None:
        """
        A first config that cannot be served leaves the worker not serving.
        """
        self.assertRaises(
            protocol.ApplyFailed, self.worker.apply, PATH, b"not toml [", b"", 1
        )
        self.assertIsNone(self.worker.path)
        self.assertEqual(self.reactor.tcpServers, [])

    def test_answers(self) -> None:
        """
        The worker answers the request-path commands, not the others.
        """
        self.worker.apply(PATH, CONFIG, b"", 3)
        stats = self.successResultOf(self.worker.answer("stats", []))
        self.assertEqual(stats["status"], "ok")
        self.assertEqual(stats["generation"], 3)
        self.assertIn("demo", stats["sites"])
        refused = self.successResultOf(self.worker.answer("reload", []))
        self.assertEqual(refused["status"], "error")
        self.assertNotIn("reload", WORKER_COMMANDS)

    def test_exposition(self) -> None:
        """
        The worker's metrics, in the text format; none before it serves.
        """
        self.assertEqual(self.worker.exposition(), b"")
        self.worker.apply(PATH, CONFIG, b"", 4)
        self.assertIn(b"revproxy_config_generation 4.0", self.worker.exposition())

    def test_stop(self) -> None:
        """
        Stopping stops listening (the drain); a second stop does nothing.
        """
        self.worker.apply(PATH, CONFIG, b"", 1)
        self.successResultOf(self.worker.stop())
        self.assertIsNone(self.worker.tree)
        self.successResultOf(self.worker.stop())


class WorkerProtocolTests(SynchronousTestCase):
    """
    L{WorkerProtocol}: the commands, over AMP in memory.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.worker = _worker(self.reactor)
        self.addCleanup(self.worker.stop)
        self.gone: list[bool] = []
        self.client, self.pump = _pair(
            WorkerProtocol(self.worker, lambda: self.gone.append(True))
        )

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """
        Send C{command}; its outcome, once the pipes are flushed (AMP wants
        an errback on every call before the answer comes).
        """
        outcome: list[Any] = []
        self.client.callRemote(command, **arguments).addBoth(outcome.append)
        self.pump.flush()
        if isinstance(outcome[0], Failure):
            return fail(outcome[0])
        return succeed(outcome[0])

    def test_apply(self) -> None:
        """
        C{Apply} serves the config; a bad one fails with C{APPLY_FAILED}.
        """
        self.successResultOf(
            self.call(
                protocol.Apply, path=PATH, config=CONFIG, static=b"", generation=5
            )
        )
        failure = self.failureResultOf(
            self.call(protocol.Apply, path=PATH, config=b"[", static=b"", generation=6)
        )
        failure.trap(protocol.ApplyFailed)
        answer = self.successResultOf(self.call(protocol.Ping))
        self.assertEqual(answer["generation"], 5)
        self.assertEqual(answer["pid"], os.getpid())
        self.assertEqual(answer["connections"], 0)

    def test_certificates(self) -> None:
        """
        C{Certificates} replaces the ACME certificates.
        """
        cert = placeholderCertificate("demo", ["demo.test"], time.time())
        self.successResultOf(
            self.call(
                protocol.Certificates,
                certificates=protocol.encodeCertificates({"demo": cert}),
            )
        )
        self.assertEqual(
            self.worker.certificates.certificates()["demo"].chain, cert.chain
        )

    def test_challenges(self) -> None:
        """
        C{Challenge} adds and removes http-01 and tls-alpn-01 answers; an
        unknown kind fails.
        """
        store = self.worker.challenges
        self.successResultOf(
            self.call(
                protocol.Challenge,
                kind="http-01",
                key="tok_1",
                authorization="tok_1.thumb",
                present=True,
            )
        )
        self.assertEqual(store.http01("tok_1"), b"tok_1.thumb")
        self.successResultOf(
            self.call(
                protocol.Challenge,
                kind="tls-alpn-01",
                key="demo.test",
                authorization="x.y",
                present=True,
            )
        )
        self.assertIsNotNone(store.tlsALPN01("demo.test"))
        for kind, key in (("http-01", "tok_1"), ("tls-alpn-01", "demo.test")):
            self.successResultOf(
                self.call(
                    protocol.Challenge,
                    kind=kind,
                    key=key,
                    authorization="",
                    present=False,
                )
            )
        self.assertIsNone(store.http01("tok_1"))
        self.assertIsNone(store.tlsALPN01("demo.test"))
        self.failureResultOf(
            self.call(
                protocol.Challenge,
                kind="dns-01",
                key="k",
                authorization="",
                present=True,
            )
        )

    def test_health(self) -> None:
        """
        C{Health} sets the upstreams' states.
        """
        states = [["demo", "http://127.0.0.1:9000", False]]
        self.successResultOf(
            self.call(protocol.Health, states=json.dumps(states).encode())
        )
        self.assertEqual(
            list(self.worker.health.states()),
            [("demo", "http://127.0.0.1:9000", False)],
        )

    def test_adminAndMetrics(self) -> None:
        """
        C{Admin} answers a worker's command as JSON; C{Metrics} the
        exposition.
        """
        self.call(protocol.Apply, path=PATH, config=CONFIG, static=b"", generation=2)
        answer = self.successResultOf(
            self.call(protocol.Admin, name="tunnels", args=[])
        )
        self.assertEqual(json.loads(answer["answer"])["total"], 0)
        metrics = self.successResultOf(self.call(protocol.Metrics))
        self.assertIn(b"revproxy_config_generation 2.0", metrics["exposition"])

    def test_supervisorGone(self) -> None:
        """
        When the supervisor's end closes, the worker is told to stop.
        """
        transport = self.client.transport
        assert transport is not None
        transport.loseConnection()
        self.pump.flush()
        self.assertEqual(self.gone, [True])
