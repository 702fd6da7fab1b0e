"""
Tests for L{revproxy.workers.supervisor}: the supervisor's state machine
with fake worker processes, in memory (a fake C{spawnProcess} whose
children are AMP responders the test drives).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from typing import Any, cast

from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.acme.challenges import ChallengeStore
from revproxy.acme.renewal import placeholderCertificate
from revproxy.admin import AdminFactory, Operations, reloadAnswer
from revproxy.config import configFromBytes
from revproxy.interfaces import IChallengeResponder, IRevProxyReactor
from revproxy.reload import Reloader
from revproxy.runtime import RuntimeHolder, buildRuntime
from revproxy.upstreamhealth import HealthMonitor
from revproxy.workers import protocol
from revproxy.workers.child import Inherited
from revproxy.workers.supervisor import (
    EXIT_GRACE_SECS,
    MISSED_PINGS,
    PING_SECS,
    START_TIMEOUT_SECS,
    MirroredChallenges,
    WorkerCommands,
    Workers,
    WorkersFollower,
    collectMetrics,
)
from tests.fakes import FakeReactor

CONFIG = b"""\
[server]
listen_http = ["tcp:18080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""
workers = 2
shutdown_timeout_secs = 4

[[sites]]
name = "demo"
hosts = ["localhost"]
upstreams = ["http://127.0.0.1:9000"]
"""

PATH = "/etc/revproxy/config.toml"


class FakeChild(amp.AMP):
    """
    A worker's end of the pipes: records what it is sent and answers as
    the test says.

    @ivar applyError: when set, C{Apply} fails with it.
    @ivar holdApply: when set, C{Apply} answers only when the test fires
        the L{Deferred} kept in C{held}.
    @ivar answerPings: whether C{Ping} is answered.
    """

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.applyError: str | None = None
        self.holdApply = False
        self.held: list[Deferred[dict[str, Any]]] = []
        self.answerPings = True
        self.generation = 0
        self.answers: dict[str, Any] = {}
        self.exposition = b""

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def names(self) -> list[str]:
        return [name for name, _ in self.received]

    @protocol.Apply.responder
    def apply(self, path: str, config: bytes, static: bytes, generation: int) -> Any:
        self.received.append(
            (
                "Apply",
                {
                    "path": path,
                    "config": config,
                    "static": static,
                    "generation": generation,
                },
            )
        )
        if self.applyError is not None:
            raise protocol.ApplyFailed(self.applyError)
        if self.holdApply:
            d: Deferred[dict[str, Any]] = Deferred()
            self.held.append(d)
            return d
        self.generation = generation
        return {}

    @protocol.Certificates.responder
    def certificates(self, certificates: bytes) -> dict[str, Any]:
        self.received.append(("Certificates", {"certificates": certificates}))
        return {}

    @protocol.Challenge.responder
    def challenge(
        self, kind: str, key: str, authorization: str, present: bool
    ) -> dict[str, Any]:
        self.received.append(
            ("Challenge", {"kind": kind, "key": key, "present": present})
        )
        return {}

    @protocol.Health.responder
    def health(self, states: bytes) -> dict[str, Any]:
        self.received.append(("Health", {"states": json.loads(states)}))
        return {}

    @protocol.Admin.responder
    def admin(self, name: str, args: list[str]) -> dict[str, Any]:
        self.received.append(("Admin", {"name": name, "args": args}))
        return {"answer": json.dumps(self.answers[name]).encode()}

    @protocol.Metrics.responder
    def metrics(self) -> dict[str, Any]:
        return {"exposition": self.exposition}

    @protocol.Ping.responder
    def ping(self) -> Any:
        if not self.answerPings:
            return Deferred()
        return {"pid": self.pid, "generation": self.generation, "connections": 3}


class _ChildSide:
    """
    The child's transport: what it writes goes to the supervisor's
    descriptor 4.
    """

    def __init__(self, process: FakeProcess) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.toParent += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        pass


class FakeProcess:
    """
    A spawned worker: the supervisor's process transport, with the child's
    AMP end behind it.
    """

    def __init__(
        self,
        protocol: ProcessProtocol,
        pid: int,
        args: list[str],
        env: dict[str, str],
        childFDs: dict[int, Any],
    ) -> None:
        self.protocol = protocol
        self.pid = pid
        self.args = args
        self.env = env
        self.childFDs = childFDs
        self.signals: list[str] = []
        self.toChild = b""
        self.toParent = b""
        self.child = FakeChild(pid)
        self.child.makeConnection(_ChildSide(self))
        self.ended = False

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == 3
        self.toChild += data

    def closeChildFD(self, fd: int) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def flush(self) -> bool:
        moved = False
        while self.toChild or self.toParent:
            moved = True
            data, self.toChild = self.toChild, b""
            if data:
                self.child.dataReceived(data)
            data, self.toParent = self.toParent, b""
            if data and not self.ended:
                self.protocol.childDataReceived(4, data)
        return moved

    def end(self, reason: Failure | None = None) -> None:
        self.ended = True
        self.protocol.processEnded(reason or Failure(ProcessDone(0)))


class SpawningReactor(FakeReactor):
    """
    A fake reactor whose C{spawnProcess} makes L{FakeProcess}es.
    """

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str] | None = None,
        childFDs: dict[int, Any] | None = None,
        **kwargs: Any,
    ) -> FakeProcess:
        process = FakeProcess(
            processProtocol, 1000 + len(self.processes), args, env or {}, childFDs or {}
        )
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    def flush(self) -> None:
        while any(p.flush() for p in self.processes):
            pass


class FakeSockets:
    """
    The bound listeners, as a worker inherits them.
    """

    def inherited(self, index: int) -> tuple[dict[int, int], list[Inherited]]:
        return {5: 42}, [Inherited("http", 5, socket.AF_INET)]


class WorkersCase(SynchronousTestCase):
    """
    Two workers of the config L{CONFIG}, with fakes.
    """

    count = 2

    def setUp(self) -> None:
        self.reactor = SpawningReactor()
        self.config = configFromBytes(CONFIG, PATH)
        self.holder = RuntimeHolder(buildRuntime(self.config, self.reactor))
        self.fatal: list[str] = []
        self.states: list[tuple[str, str, bool]] = []
        self.certificate = placeholderCertificate("demo", ["demo.test"], time.time())
        self.challenges = MirroredChallenges(ChallengeStore(self.reactor))
        self.workers = Workers(
            cast(IRevProxyReactor, self.reactor),
            self.count,
            self.holder,
            self.config,
            FakeSockets(),  # type: ignore[arg-type]
            self.config.server.shutdown_timeout_secs,
            certificates=lambda: {"demo": self.certificate},
            challenges=self.challenges,
            health=lambda: list(self.states),
            fatal=self.fatal.append,
            executable="/usr/bin/python3",
        )
        self.challenges.workers = self.workers

    def start(self) -> None:
        self.workers.startService()
        self.reactor.flush()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.workers.running:
            d = self.workers.stopService()
            for process in self.reactor.processes:
                if not process.ended:
                    process.end()
            self.successResultOf(d)

    def process(self, index: int) -> FakeProcess:
        """
        The process now running in slot C{index} (1-based).
        """
        slot = self.workers.slots[index - 1]
        assert slot.process is not None
        return next(p for p in self.reactor.processes if p.protocol is slot.process)


class StartTests(WorkersCase):
    """
    Starting the workers.
    """

    def test_spawns(self) -> None:
        """
        Each worker runs the worker module, told how many share the
        sockets and where they are; the sockets are its descriptors from 5,
        the AMP pipes 3 and 4; it is not given systemd's socket.
        """
        self.patch(os, "environ", {"NOTIFY_SOCKET": "/run/notify", "HOME": "/root"})
        self.start()
        self.assertEqual(len(self.reactor.processes), 2)
        process = self.reactor.processes[0]
        self.assertEqual(
            process.args,
            [
                "/usr/bin/python3",
                "-m",
                "revproxy.workers.child",
                "--workers",
                "2",
                "--listen",
                f"http:5:{int(socket.AF_INET)}",
            ],
        )
        self.assertEqual(
            process.childFDs, {0: "w", 1: 1, 2: "r", 3: "w", 4: "r", 5: 42}
        )
        self.assertNotIn("NOTIFY_SOCKET", process.env)
        self.assertEqual(process.env["HOME"], "/root")
        import revproxy

        self.assertIn(
            os.path.dirname(os.path.dirname(revproxy.__file__)),
            process.env["PYTHONPATH"].split(os.pathsep),
        )

    def test_boot(self) -> None:
        """
        A new worker is sent the certificates, the pending challenges and
        the health states, then the config it serves, numbered as the
        supervisor's.
        """
        self.states = [("demo", "http://127.0.0.1:9000", False)]
        self.challenges.addHTTP01("tok", "tok.thumb")
        self.start()
        child = self.reactor.processes[0].child
        self.assertEqual(
            child.names(), ["Certificates", "Challenge", "Health", "Apply"]
        )
        apply = child.received[-1][1]
        self.assertEqual(apply["config"], CONFIG)
        self.assertEqual(apply["static"], b"")
        self.assertEqual(apply["path"], PATH)
        self.assertEqual(apply["generation"], 1)
        certificates = protocol.decodeCertificates(child.received[0][1]["certificates"])
        self.assertEqual(certificates["demo"].chain, self.certificate.chain)

    def test_servingOnceAll(self) -> None:
        """
        The supervisor serves once every worker answered its first config.
        """
        self.workers.startService()
        self.addCleanup(self.stop)
        self.reactor.processes[1].child.holdApply = True
        self.reactor.flush()
        serving = self.workers.whenServing()
        self.assertNoResult(serving)
        self.assertEqual([s.state for s in self.workers.slots], ["serving", "starting"])
        self.reactor.processes[1].child.held[0].callback({})
        self.reactor.flush()
        self.successResultOf(serving)
        self.successResultOf(self.workers.whenServing())

    def test_bootFailureIsFatal(self) -> None:
        """
        A worker that cannot serve its first config before the proxy ever
        served ends the supervisor, saying why.
        """
        self.workers.startService()
        self.addCleanup(self.stop)
        self.reactor.processes[0].child.applyError = "cannot read /etc/x.pem"
        self.reactor.flush()
        self.assertEqual(len(self.fatal), 1)
        self.assertIn("worker 1 (pid 1000)", self.fatal[0])
        self.assertIn("cannot read /etc/x.pem", self.fatal[0])

    def test_exitAtStartIsFatal(self) -> None:
        """
        A worker that exits before it ever served ends the supervisor.
        """
        self.workers.startService()
        self.addCleanup(self.stop)
        self.reactor.processes[0].end(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual(len(self.fatal), 1)
        self.assertIn("exited at start-up (exit status 1)", self.fatal[0])


class RestartTests(WorkersCase):
    """
    A worker that dies is started again.
    """

    def test_restartAtOnce(self) -> None:
        """
        A worker killed after it served is started again at once, sent
        what it serves; the other is not touched.
        """
        self.start()
        first = self.process(1)
        other = self.process(2)
        first.end(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(len(self.reactor.processes), 3)
        self.reactor.flush()
        slot = self.workers.slots[0]
        self.assertEqual(slot.state, "serving")
        self.assertEqual(slot.pid, 1002)
        self.assertEqual(slot.restarts, 1)
        self.assertEqual(other.signals, [])
        self.assertEqual(self.fatal, [])
        self.assertEqual(self.reactor.processes[2].child.names()[-1], "Apply")

    def test_backOff(self) -> None:
        """
        A worker that keeps dying young is started again after 2, 4, ...
        seconds, at most 30; one that lived long is started at once.
        """
        self.start()
        self.process(1).end(Failure(ProcessTerminated(signal=9)))
        self.reactor.flush()
        self.process(1).end(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(self.workers.slots[0].state, "restarting")
        count = len(self.reactor.processes)
        self.reactor.advance(1.9)
        self.assertEqual(len(self.reactor.processes), count)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.processes), count + 1)
        self.reactor.flush()
        self.process(1).end(Failure(ProcessTerminated(signal=9)))
        self.reactor.advance(3.9)
        self.assertEqual(len(self.reactor.processes), count + 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.processes), count + 2)
        self.reactor.flush()
        self.reactor.advance(60)
        self.reactor.flush()
        self.process(1).end(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(len(self.reactor.processes), count + 3)

    def test_describe(self) -> None:
        """
        Each worker's pid, state, uptime, generation and restarts.
        """
        self.start()
        self.reactor.advance(PING_SECS)
        self.reactor.flush()
        self.reactor.advance(7)
        described = self.workers.describe()
        self.assertEqual(
            described[0],
            {
                "worker": 1,
                "pid": 1000,
                "state": "serving",
                "uptime_secs": 12,
                "generation": 1,
                "connections": 3,
                "restarts": 0,
            },
        )


class TellingTests(WorkersCase):
    """
    What the supervisor tells the workers while they run.
    """

    def test_applyAll(self) -> None:
        """
        A reload's config goes to every worker; the failures come back by
        worker, and a worker that failed is stopped gracefully (it starts
        again on the new config).
        """
        self.start()
        runtime = buildRuntime(self.config, self.reactor, previous=self.holder.current)
        self.holder.current = runtime
        self.process(2).child.applyError = "cannot read cert.pem"
        d = self.workers.apply(runtime)
        self.reactor.flush()
        self.assertEqual(
            self.successResultOf(d), ["worker 2 (pid 1001): cannot read cert.pem"]
        )
        self.assertEqual(self.process(2).signals, ["TERM"])
        self.assertEqual(self.process(1).signals, [])
        self.assertEqual(self.workers.slots[0].generation, 2)
        self.assertEqual(self.process(1).child.names()[-2:], ["Certificates", "Apply"])

    def test_reloadWaits(self) -> None:
        """
        Through the reloader, the answer waits for every worker and names
        the one that failed.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(CONFIG.replace(b'"localhost"', b'"localhost", "demo.test"'))
        reloader = Reloader(
            path, self.holder, self.reactor, [WorkersFollower(self.workers)]
        )
        self.start()
        self.process(1).child.holdApply = True
        result = reloader.reload("test")
        self.reactor.flush()
        self.assertNoResult(result)
        self.process(1).child.held[0].callback({})
        self.reactor.flush()
        answer = reloadAnswer(self.successResultOf(result))
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["generation"], 2)

    def test_pingKillsSilent(self) -> None:
        """
        A worker that does not answer three heartbeats is killed.
        """
        self.start()
        self.process(1).child.answerPings = False
        for _ in range(MISSED_PINGS):
            self.reactor.advance(PING_SECS)
            self.reactor.flush()
        self.assertEqual(self.process(1).signals, [])
        self.reactor.advance(PING_SECS)
        self.assertEqual(self.process(1).signals, ["KILL"])
        self.assertEqual(self.process(2).signals, [])

    def test_startTimeout(self) -> None:
        """
        A worker that never answers its first config is killed after
        L{START_TIMEOUT_SECS}; when the proxy never served, its end stops
        the supervisor.
        """
        self.workers.startService()
        self.addCleanup(self.stop)
        self.reactor.processes[0].child.holdApply = True
        self.reactor.flush()
        self.reactor.advance(START_TIMEOUT_SECS - PING_SECS)
        self.assertEqual(self.reactor.processes[0].signals, [])
        self.reactor.advance(PING_SECS)
        self.assertEqual(self.reactor.processes[0].signals, ["KILL"])
        self.assertEqual(self.reactor.processes[1].signals, [])
        self.reactor.processes[0].end(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(len(self.fatal), 1)

    def test_healthSync(self) -> None:
        """
        Health states go to every worker when they change, not otherwise.
        """
        self.start()
        self.states = [("demo", "http://127.0.0.1:9000", True)]
        self.reactor.advance(1)
        self.reactor.flush()
        self.reactor.advance(1)
        self.reactor.flush()
        child = self.process(1).child
        self.assertEqual(child.names().count("Health"), 1)
        self.states = [("demo", "http://127.0.0.1:9000", False)]
        self.reactor.advance(1)
        self.reactor.flush()
        self.assertEqual(child.names().count("Health"), 2)
        self.assertEqual(
            child.received[-1][1]["states"], [["demo", "http://127.0.0.1:9000", False]]
        )

    def test_challenges(self) -> None:
        """
        Challenge answers go to the store and every worker, and are
        forgotten when removed.
        """
        self.start()
        self.challenges.addTLSALPN01("demo.test", "a.b")
        self.challenges.addHTTP01("tok", "tok.c")
        self.challenges.removeHTTP01("tok")
        self.reactor.flush()
        self.assertIsNotNone(self.challenges.store.tlsALPN01("demo.test"))
        self.assertIsNone(self.challenges.store.http01("tok"))
        self.assertEqual(list(self.challenges.pending), [("tls-alpn-01", "demo.test")])
        for index in (1, 2):
            told = [
                r for n, r in self.process(index).child.received if n == "Challenge"
            ]
            self.assertEqual(
                [(r["kind"], r["present"]) for r in told],
                [("tls-alpn-01", True), ("http-01", True), ("http-01", False)],
            )

    def test_challengesPublished(self) -> None:
        """
        L{MirroredChallenges} is an L{IChallengeResponder} whose
        C{published} fires at once: each add was flushed to the workers'
        pipes before it returned.
        """
        self.assertTrue(verifyObject(IChallengeResponder, self.challenges))
        self.start()
        self.challenges.addHTTP01("tok", "tok.c")
        self.assertIsNone(self.successResultOf(self.challenges.published()))

    def test_certificates(self) -> None:
        """
        Changed certificates go to every worker.
        """
        self.start()
        self.workers.sendCertificates()
        self.reactor.flush()
        for index in (1, 2):
            self.assertEqual(self.process(index).child.names().count("Certificates"), 2)


class StopTests(WorkersCase):
    """
    Stopping the workers.
    """

    def test_drains(self) -> None:
        """
        Each worker gets SIGTERM (it drains); stopping is over when all
        exited; none is started again.
        """
        self.start()
        d = self.workers.stopService()
        self.assertEqual(
            [p.signals for p in self.reactor.processes], [["TERM"], ["TERM"]]
        )
        self.process(1).end()
        self.assertNoResult(d)
        self.process(2).end()
        self.successResultOf(d)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual([s.state for s in self.workers.slots], ["stopped"] * 2)

    def test_killsLate(self) -> None:
        """
        A worker still running after the shutdown timeout and a grace is
        killed.
        """
        self.start()
        d = self.workers.stopService()
        self.reactor.advance(self.config.server.shutdown_timeout_secs + EXIT_GRACE_SECS)
        self.assertEqual(self.process(1).signals, ["TERM", "KILL"])
        for process in self.reactor.processes:
            process.end(Failure(ProcessTerminated(signal=9)))
        self.successResultOf(d)

    def test_noRestartWhileWaiting(self) -> None:
        """
        A restart waiting for its back-off is cancelled by the stop.
        """
        self.start()
        self.process(1).end(Failure(ProcessTerminated(signal=9)))
        self.reactor.flush()
        self.process(1).end(Failure(ProcessTerminated(signal=9)))
        d = self.workers.stopService()
        self.process(2).end()
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 3)


class CommandsTests(WorkersCase):
    """
    The admin commands answered from the workers' answers.
    """

    def setUp(self) -> None:
        super().setUp()
        reloader = Reloader(PATH, self.holder, self.reactor)
        self.factory = AdminFactory(
            reloader,
            self.reactor,
            operations=Operations(health=HealthMonitor(self.reactor)),
        )
        WorkerCommands(self.factory, self.workers, HealthMonitor(self.reactor))
        self.start()

    def command(self, line: str) -> Any:
        name, *args = line.split()
        d = self.factory.run(name, args)
        self.reactor.flush()
        return self.successResultOf(d)

    def test_status(self) -> None:
        """
        C{status} lists the workers.
        """
        answer = self.command("status")
        self.assertEqual([w["pid"] for w in answer["workers"]], [1000, 1001])

    def test_stats(self) -> None:
        """
        C{stats} sums the workers' counts.
        """
        site = {"status": {"2xx": 3}, "in_flight": 1}
        for index, count in ((1, 3), (2, 4)):
            self.process(index).child.answers["stats"] = {
                "status": "ok",
                "generation": 1,
                "sites": {"demo": dict(site, status={"2xx": count})},
            }
        answer = self.command("stats")
        self.assertEqual(answer["sites"]["demo"]["status"]["2xx"], 7)
        self.assertEqual(answer["sites"]["demo"]["in_flight"], 2)
        self.assertEqual(answer["workers"], 2)

    def test_ratelimit(self) -> None:
        """
        C{ratelimit} shows each worker's own bucket.
        """
        for index in (1, 2):
            self.process(index).child.answers["ratelimit"] = {
                "status": "ok",
                "site": "demo",
                "client_ip": "192.0.2.1",
                "tokens": float(index),
                "capacity": 5.0,
            }
        answer = self.command("ratelimit demo 192.0.2.1")
        self.assertEqual(answer["site"], "demo")
        self.assertNotIn("tokens", answer)
        self.assertEqual(
            [(w["worker"], w["tokens"]) for w in answer["workers"]],
            [(1, 1.0), (2, 2.0)],
        )

    def test_reopenLogs(self) -> None:
        """
        C{reopen-logs} is ok when every worker reopened, else names those
        that could not.
        """
        self.process(1).child.answers["reopen-logs"] = {"status": "ok"}
        self.process(2).child.answers["reopen-logs"] = {
            "status": "error",
            "message": "reopen failed: denied",
        }
        answer = self.command("reopen-logs")
        self.assertEqual(answer["status"], "error")
        self.assertIn("worker 2: reopen failed: denied", answer["message"])

    def test_metrics(self) -> None:
        """
        One registry: the workers' metrics summed, and the supervisor's.
        """
        self.process(1).child.exposition = (
            b"# HELP revproxy_x_total x\n# TYPE revproxy_x_total counter\n"
            b"revproxy_x_total 2.0\n"
        )
        self.process(2).child.exposition = (
            b"# HELP revproxy_x_total x\n# TYPE revproxy_x_total counter\n"
            b"revproxy_x_total 3.0\n"
        )
        d = collectMetrics(self.workers)
        self.reactor.flush()
        text = generate_latest(self.successResultOf(d)).decode()
        self.assertIn("revproxy_x_total 5.0", text)
        self.assertIn('revproxy_workers{state="serving"} 2.0', text)
        self.assertIn('revproxy_worker_restarts_total{worker="1"} 0.0', text)
