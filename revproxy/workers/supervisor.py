# -*- test-case-name: tests.test_supervisor -*-
"""
The supervisor (C{workers = N}, N > 1): the twistd process binds every
listener once and runs N worker processes on those sockets
(L{revproxy.workers.child}); it keeps what is one per proxy (the admin
socket, signals, reloads, ACME, upstream health checks, C{/metrics},
systemd) and tells the workers over AMP (L{revproxy.workers.protocol}).

A worker that dies is started again (at once, then with back-off when it
keeps dying young); one that stops answering its heartbeat is killed and
started again.  Its in-flight requests are lost, as with nginx; the other
workers are not touched.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError, ProcessDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IPushProducer,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

import revproxy
from revproxy.acme.challenges import ChallengeStore
from revproxy.acme.renewal import AcmeManager
from revproxy.acme.wiring import acmeManager
from revproxy.admin import (
    AdminFactory,
    AdminSocket,
    Answer,
    Operations,
    renderUpstreamHealth,
)
from revproxy.certificates import LoadedCertificate
from revproxy.cluster.fleet import Fleet, FleetCollector, buildFleet
from revproxy.config import Config
from revproxy.descriptors import DescriptorLimit
from revproxy.interfaces import IChallengeResponder, IRevProxyReactor
from revproxy.opslistener import opsSite
from revproxy.private.twisted import (
    flushToChild,
    tcpBacklog,
    tcpInterface,
    tcpPort,
)
from revproxy.reload import Reloader, ReloadFollower, configWarnings
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime
from revproxy.sdnotify import Notifier, servingStatus
from revproxy.service import (
    HealthFollower,
    RevProxyService,
    SystemdFollower,
    SystemdNotice,
    listenEndpoints,
    reportFatal,
    servedTLS,
    signals,
)
from revproxy.tls import TLSFiles
from revproxy.upstreamhealth import HealthMonitor
from revproxy.workers import protocol
from revproxy.workers.aggregate import mergeExpositions, mergeStats, mergeTunnels
from revproxy.workers.child import Inherited

_log = Logger()

#: A worker that dies this soon after it started is restarted with back-off.
YOUNG_SECS = 10.0
#: The longest back-off between restarts.
MAX_BACKOFF_SECS = 30.0
#: Heartbeats are this far apart; three unanswered ones kill the worker.
PING_SECS = 5.0
MISSED_PINGS = 3
#: A worker that has not served its first config this long after it was
#: started is killed (and started again, or, before the proxy ever served,
#: the supervisor exits).
START_TIMEOUT_SECS = 60.0
#: How often the upstream health states are compared and sent on.
HEALTH_SYNC_SECS = 1.0
#: After the shutdown timeout, how long the workers get to exit before
#: they are killed.
EXIT_GRACE_SECS = 5.0
#: The first descriptor of the listening sockets in a worker (0-2 are
#: standard I/O, 3-4 the AMP pipes).
FIRST_LISTENER_FD = 5


class _Refuse(Factory):
    """
    The factory of the supervisor's own ports, which never accept: the
    workers do.
    """

    noisy = False

    def logPrefix(self) -> str:
        return "Listener for the workers"

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        return None


def _family(address: IAddress) -> int:
    if isinstance(address, IPv6Address):
        return socket.AF_INET6
    if isinstance(address, IPv4Address):
        return socket.AF_INET
    if isinstance(address, UNIXAddress):
        return socket.AF_UNIX
    raise ValueError(f"cannot pass a listener on {address!r} to a worker")


class _ReusePort(tcp.Port):
    """
    A TCP port whose socket has C{SO_REUSEPORT}: one per worker on the
    same address, among which the kernel spreads new connections.
    """

    def createInternetSocket(self) -> socket.socket:
        s: socket.socket = super().createInternetSocket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


def _unclaimed(interface: str, number: int) -> int:
    """
    Check that no socket has the port C{number} on C{interface}, by
    binding it without C{SO_REUSEPORT}: another program's, or another
    revproxy's own C{SO_REUSEPORT} sockets, would otherwise silently
    share its connections.

    @return: the port (the one the kernel picked, for 0).
    @raise CannotListenError: the port is taken.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, number))
        except OSError as e:
            raise CannotListenError(interface, number, e) from None
        port: int = probe.getsockname()[1]
        return port


class BoundSockets(Service):
    """
    Every listener of the config, bound at start (a port that cannot be
    had ends start-up, as in one process) and never read here: the
    workers accept on them.

    A TCP listener is one socket per worker, each with C{SO_REUSEPORT} on
    the same address: the kernel spreads new connections evenly among
    them by their addresses and ports.  (One socket shared by every
    worker, tried first, went to whichever worker woke first: on this
    2-core machine 20 connections opened together all went to one of two
    workers in 1 run of 10, even with one accept per wake-up.)  The
    supervisor keeps every socket open: a worker that dies leaves its
    queue of connections to its replacement, which takes the same socket,
    so they wait (about a second) instead of being reset.  A UNIX socket
    listener is one socket, shared.

    @ivar ports: for each listener, C{(kind, ports)}: one port per worker,
        or a single shared one.
    """

    name = "sockets"

    def __init__(
        self,
        reactor: IRevProxyReactor,
        http: Sequence[str],
        https: Sequence[str],
        workers: int = 1,
    ) -> None:
        self._reactor = reactor
        self._http = tuple(http)
        self._https = tuple(https)
        self._workers = workers
        self.ports: list[tuple[str, list[IListeningPort]]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for kind, descriptions in (("http", self._http), ("https", self._https)):
            for endpoint in listenEndpoints(self._reactor, descriptions):
                if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
                    ports = self._reusePorts(endpoint)
                else:
                    ports = [self._shared(endpoint)]
                for port in ports:
                    IPushProducer(port).pauseProducing()
                self.ports.append((kind, ports))

    def _reusePorts(
        self, endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint
    ) -> list[IListeningPort]:
        """
        One listening port per worker on C{endpoint}'s address (port 0:
        the one the kernel picked for the first).
        """
        ports: list[IListeningPort] = []
        number = _unclaimed(tcpInterface(endpoint), tcpPort(endpoint, 0))
        for _ in range(self._workers):
            port = _ReusePort(
                number,
                _Refuse(),
                tcpBacklog(endpoint),
                tcpInterface(endpoint),
                self._reactor,
            )
            port.startListening()
            ports.append(port)
            number = port.getHost().port
        return ports

    def _shared(self, endpoint: IStreamServerEndpoint) -> IListeningPort:
        bound: list[IListeningPort] = []
        failed: list[Failure] = []
        endpoint.listen(_Refuse()).addCallbacks(bound.append, failed.append)
        if failed:
            failed[0].raiseException()
        return bound[0]

    def inherited(self, index: int) -> tuple[dict[int, int], list[Inherited]]:
        """
        The child descriptors worker C{index} (1 to N) gets its sockets
        on, and how it finds them.
        """
        fds: dict[int, int] = {}
        listeners: list[Inherited] = []
        for offset, (kind, ports) in enumerate(self.ports):
            port = ports[(index - 1) % len(ports)]
            fd = FIRST_LISTENER_FD + offset
            fds[fd] = port.fileno()  # type: ignore[attr-defined]
            listeners.append(Inherited(kind, fd, _family(port.getHost())))
        return fds, listeners

    def stopService(self) -> Deferred[None]:
        super().stopService()
        ports, self.ports = self.ports, []
        stopped = [port.stopListening() for _, each in ports for port in each]
        return DeferredList([d for d in stopped if d is not None]).addCallback(
            lambda _: None
        )


@implementer(IChallengeResponder)
class MirroredChallenges:
    """
    The ACME challenge answers, told to every worker (whichever the CA
    reaches answers) and to each worker that starts while they are
    pending.
    """

    def __init__(self, store: ChallengeStore) -> None:
        self.store = store
        self.pending: dict[tuple[str, str], str] = {}
        self.workers: Workers | None = None

    def _tell(self, kind: str, key: str, authorization: str, present: bool) -> None:
        if present:
            self.pending[(kind, key)] = authorization
        else:
            self.pending.pop((kind, key), None)
        if self.workers is not None:
            self.workers.broadcast(
                protocol.Challenge,
                kind=kind,
                key=key,
                authorization=authorization,
                present=present,
            )
            # The issuer tells the CA to validate from a thread as soon as
            # this returns, while the reactor thread may not have written
            # the command to the pipes yet: a worker the CA reached first
            # answered 404.  In the pipe before the CA hears of it, it is
            # read no later than the CA's connection is accepted.
            self.workers.flush()

    def addHTTP01(self, token: str, keyAuthorization: str) -> None:
        self.store.addHTTP01(token, keyAuthorization)
        self._tell("http-01", token, keyAuthorization, True)

    def removeHTTP01(self, token: str) -> None:
        self.store.removeHTTP01(token)
        self._tell("http-01", token, "", False)

    def addTLSALPN01(self, name: str, keyAuthorization: str) -> None:
        self.store.addTLSALPN01(name, keyAuthorization)
        self._tell("tls-alpn-01", name, keyAuthorization, True)

    def removeTLSALPN01(self, name: str) -> None:
        self.store.removeTLSALPN01(name)
        self._tell("tls-alpn-01", name, "", False)

    def published(self) -> Deferred[None]:
        """
        See L{IChallengeResponder.published}: each add or remove is flushed
        to the workers' pipes before it returns, so at once.
        """
        return succeed(None)


class _SupervisorAMP(amp.AMP):
    """
    The supervisor's end of one worker's AMP pipes (without AMP's log
    lines at every connect).
    """

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        amp.BinaryBoxProtocol.connectionLost(self, reason)


class _ChildPipe:
    """
    The transport of a worker's AMP: writes go to its descriptor 3.
    """

    def __init__(self, process: IProcessTransport) -> None:
        self._process = process
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self._process.writeToChild(3, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def flush(self) -> None:
        """
        Write what is buffered for the worker now, not when the reactor
        next finds its pipe writable.
        """
        flushToChild(self._process, 3)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._process.closeChildFD(3)


@attrs.define(eq=False)
class WorkerSlot:
    """
    One of the N workers, across its restarts.

    @ivar index: 1 to N.
    @ivar state: C{"starting"}, C{"serving"}, C{"restarting"} (waiting for
        its back-off), C{"stopping"} or C{"stopped"}.
    """

    index: int
    state: str = "stopped"
    process: WorkerProcess | None = None
    pid: int | None = None
    started: float = 0.0
    generation: int = 0
    connections: int = 0
    restarts: int = 0
    young: int = 0
    pingSent: float | None = None
    restart: IDelayedCall | None = None

    @property
    def name(self) -> str:
        return f"worker {self.index}" + (
            "" if self.pid is None else f" (pid {self.pid})"
        )


class WorkerProcess(ProcessProtocol):
    """
    One run of a worker process: its AMP pipes, its log lines, its end.
    """

    def __init__(self, workers: Workers, slot: WorkerSlot) -> None:
        self.workers = workers
        self.slot = slot
        self.amp = _SupervisorAMP()
        self._logBuffer = b""
        self._ampLost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.amp.makeConnection(_ChildPipe(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 4:
            self.amp.dataReceived(data)
        elif childFD == 2:
            self._logBuffer += data
            *lines, self._logBuffer = self._logBuffer.split(b"\n")
            for line in lines:
                self._log(line)

    def _log(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        level = LogLevel.error
        try:
            event = json.loads(text)
            text = str(event["text"])
            level = LogLevel.levelWithName(str(event["level"]))
        except (ValueError, KeyError, TypeError, InvalidLogLevelError):
            pass
        if text.strip():
            _log.emit(level, "{worker}: {text}", worker=self.slot.name, text=text)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 4 and not self._ampLost:
            self._ampLost = True
            self.amp.connectionLost(Failure(ProcessDone(0)))

    def processEnded(self, reason: Failure) -> None:
        if self._logBuffer:
            self._log(self._logBuffer)
            self._logBuffer = b""
        # The slot hears of the end first: what was still asked of the
        # process fails next, as a lost worker rather than an answer.
        self.workers.ended(self.slot, self, reason)
        if not self._ampLost:
            self._ampLost = True
            self.amp.connectionLost(reason)

    def signal(self, name: str) -> None:
        """
        Send the signal C{name} (C{"TERM"}, C{"KILL"}) if it still runs.
        """
        try:
            if self.transport is not None:
                self.transport.signalProcess(name)
        except Exception:
            pass


def _workerEnvironment() -> dict[str, str]:
    """
    The environment of a worker: ours, with revproxy importable, without
    systemd's notification socket (only the supervisor tells systemd).
    """
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    home = os.path.dirname(os.path.dirname(os.path.abspath(revproxy.__file__)))
    paths = [home] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class Workers(Service):
    """
    The N worker processes (named C{"workers"}): started with the
    supervisor, restarted when they die, told of every config,
    certificate, challenge and health change; stopped gracefully (SIGTERM:
    each drains) when the supervisor stops.
    """

    name = "workers"

    def __init__(
        self,
        reactor: IRevProxyReactor,
        count: int,
        holder: RuntimeHolder,
        startup: Config,
        sockets: BoundSockets,
        shutdownTimeout: float,
        certificates: Callable[[], dict[str, LoadedCertificate]] | None = None,
        challenges: MirroredChallenges | None = None,
        health: Callable[[], Iterable[tuple[str, str, bool]]] = lambda: (),
        fatal: Callable[[str], None] | None = None,
        executable: str = sys.executable,
    ) -> None:
        """
        @param startup: the config the supervisor started with (its static
            settings are every worker's).
        @param fatal: called when a worker cannot start at all before the
            proxy served: the supervisor must exit.
        """
        self._reactor = reactor
        self.slots = [WorkerSlot(index) for index in range(1, count + 1)]
        self.holder = holder
        self.startup = startup
        self.sockets = sockets
        self.shutdownTimeout = shutdownTimeout
        self.certificates = certificates
        self.challenges = challenges
        self.health = health
        self._fatal = fatal
        self._executable = executable
        self.stopping = False
        self.served = False
        self._serving: list[Deferred[None]] = []
        self._stopped: list[Deferred[None]] = []
        self._lastHealth: list[tuple[str, str, bool]] | None = None
        self._pings = LoopingCall(self._ping)
        self._pings.clock = reactor
        self._healthSync = LoopingCall(self._syncHealth)
        self._healthSync.clock = reactor
        self._kill: IDelayedCall | None = None

    # -- starting and restarting

    def startService(self) -> None:
        super().startService()
        for slot in self.slots:
            self._spawn(slot)
        self._pings.start(PING_SECS, now=False)
        self._healthSync.start(HEALTH_SYNC_SECS, now=False)

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.restart = None
        if self.stopping:
            return
        fds, listeners = self.sockets.inherited(slot.index)
        process = WorkerProcess(self, slot)
        childFDs: dict[int, int | str] = {0: "w", 1: 1, 2: "r", 3: "w", 4: "r"}
        childFDs.update(fds)
        args = [self._executable, "-m", "revproxy.workers.child"]
        args += ["--workers", str(len(self.slots))]
        for inherited in listeners:
            args += ["--listen", inherited.describe()]
        transport = self._reactor.spawnProcess(  # type: ignore[attr-defined]
            process,
            self._executable,
            args,
            env=_workerEnvironment(),
            childFDs=childFDs,
        )
        slot.process = process
        slot.pid = transport.pid
        slot.started = self._reactor.seconds()
        slot.state = "starting"
        slot.pingSent = None
        self._boot(slot, process)

    def _boot(self, slot: WorkerSlot, process: WorkerProcess) -> None:
        """
        Send a new worker what it serves: certificates, pending
        challenges, health, then the config (answered once it serves).
        """
        call = process.amp.callRemote
        if self.certificates is not None:
            call(
                protocol.Certificates,
                certificates=protocol.encodeCertificates(self.certificates()),
            ).addErrback(lambda _: None)
        if self.challenges is not None:
            for (kind, key), authorization in list(self.challenges.pending.items()):
                call(
                    protocol.Challenge,
                    kind=kind,
                    key=key,
                    authorization=authorization,
                    present=True,
                ).addErrback(lambda _: None)
        states = list(self.health())
        if states:
            call(protocol.Health, states=json.dumps(states).encode()).addErrback(
                lambda _: None
            )
        runtime = self.holder.current

        def serving(_: object) -> None:
            if slot.process is not process:
                return
            slot.state = "serving"
            slot.generation = runtime.generation
            _log.info(
                "{worker} serves generation {generation}",
                worker=slot.name,
                generation=runtime.generation,
            )
            self._checkServing()

        def failed(reason: Failure) -> None:
            if slot.process is not process:
                return
            message = _why(reason)
            _log.error("{worker} cannot start: {why}", worker=slot.name, why=message)
            if not self.served and self._fatal is not None:
                self._fatal(f"revproxy: cannot start {slot.name}: {message}")
                return
            process.signal("KILL")

        self._apply(process, runtime).addCallbacks(serving, failed)

    def _apply(self, process: WorkerProcess, runtime: Runtime) -> Deferred[Any]:
        sent: Deferred[Any] = process.amp.callRemote(
            protocol.Apply,
            path=runtime.config.path,
            config=runtime.config.source,
            static=(
                b""
                if runtime.config.source == self.startup.source
                else self.startup.source
            ),
            generation=runtime.generation,
        )
        return sent

    def _checkServing(self) -> None:
        if all(slot.state == "serving" for slot in self.slots) and not self.served:
            self.served = True
            waiting, self._serving = self._serving, []
            for d in waiting:
                d.callback(None)

    def whenServing(self) -> Deferred[None]:
        """
        Fires once every worker served (the first time).
        """
        if self.served:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._serving.append(d)
        return d

    def ended(self, slot: WorkerSlot, process: WorkerProcess, reason: Failure) -> None:
        """
        A worker process ended: start another, unless stopping.
        """
        if slot.process is not process:
            return
        slot.process = None
        how = _exitDescription(reason)
        if self.stopping:
            slot.state = "stopped"
            _log.info("{worker} exited ({how})", worker=slot.name, how=how)
            self._checkStopped()
            return
        now = self._reactor.seconds()
        if now - slot.started < YOUNG_SECS:
            slot.young += 1
        else:
            slot.young = 0
        if not self.served and slot.state != "serving" and self._fatal is not None:
            self._fatal(f"revproxy: {slot.name} exited at start-up ({how})")
            return
        delay = (
            0.0 if slot.young <= 1 else min(MAX_BACKOFF_SECS, 2.0 ** (slot.young - 1))
        )
        _log.warn(
            "{worker} exited ({how}); its requests in flight are lost; starting "
            "it again{when}",
            worker=slot.name,
            how=how,
            when=f" in {delay:g} s" if delay else "",
        )
        slot.restarts += 1
        slot.state = "restarting"
        slot.pid = None
        if delay:
            slot.restart = self._reactor.callLater(delay, self._spawn, slot)
        else:
            self._spawn(slot)

    # -- telling them

    def live(self) -> list[WorkerSlot]:
        """
        The workers running now (starting or serving).
        """
        return [
            s
            for s in self.slots
            if s.process is not None and s.state in ("starting", "serving")
        ]

    def broadcast(self, command: type[amp.Command], **arguments: Any) -> None:
        """
        Send C{command} to every running worker; a failure is logged.
        """
        for slot in self.live():
            assert slot.process is not None
            slot.process.amp.callRemote(command, **arguments).addErrback(
                self._failedTo, slot, command
            )

    def flush(self) -> None:
        """
        Write the commands buffered for every running worker now.
        """
        for slot in self.live():
            assert slot.process is not None
            transport = slot.process.amp.transport
            if isinstance(transport, _ChildPipe):
                transport.flush()

    def _failedTo(
        self, reason: Failure, slot: WorkerSlot, command: type[amp.Command]
    ) -> None:
        if slot.process is not None:
            _log.warn(
                "{worker}: {command} failed: {why}",
                worker=slot.name,
                command=command.__name__,
                why=_why(reason),
            )

    def ask(
        self, command: type[amp.Command], **arguments: Any
    ) -> Deferred[list[tuple[WorkerSlot, dict[str, Any]]]]:
        """
        Send C{command} to every serving worker; the answers of those that
        answered, in worker order.
        """
        slots = [s for s in self.live() if s.state == "serving"]
        asked = [
            s.process.amp.callRemote(command, **arguments)  # type: ignore[union-attr]
            for s in slots
        ]

        def answered(
            results: list[tuple[bool, Any]],
        ) -> list[tuple[WorkerSlot, dict[str, Any]]]:
            return [
                (slot, value)
                for slot, (ok, value) in zip(slots, results, strict=True)
                if ok
            ]

        return DeferredList(asked, consumeErrors=True).addCallback(answered)

    def sendCertificates(self) -> None:
        """
        The ACME certificates changed: send them all to every worker.
        """
        if self.certificates is not None:
            self.broadcast(
                protocol.Certificates,
                certificates=protocol.encodeCertificates(self.certificates()),
            )

    def apply(self, runtime: Runtime) -> Deferred[Sequence[str]]:
        """
        Send C{runtime}'s config to every running worker.

        @return: fires with the workers that failed, described; those are
            stopped gracefully and start again on the new config.
        """
        self.sendCertificates()
        slots = self.live()
        sent = [self._apply(s.process, runtime) for s in slots]  # type: ignore[arg-type]

        def answered(results: list[tuple[bool, Any]]) -> Sequence[str]:
            failed = []
            for slot, (ok, value) in zip(slots, results, strict=True):
                if ok:
                    slot.generation = runtime.generation
                    continue
                why = _why(value)
                _log.error(
                    "{worker} could not apply generation {generation}: {why}; "
                    "restarting it",
                    worker=slot.name,
                    generation=runtime.generation,
                    why=why,
                )
                failed.append(f"{slot.name}: {why}")
                if slot.process is not None:
                    slot.process.signal("TERM")
            return failed

        return DeferredList(sent, consumeErrors=True).addCallback(answered)

    # -- watching them

    def _ping(self) -> None:
        now = self._reactor.seconds()
        for slot in self.live():
            process = slot.process
            assert process is not None
            if slot.pingSent is not None:
                if now - slot.pingSent >= PING_SECS * MISSED_PINGS:
                    _log.error(
                        "{worker} did not answer for {secs:g} s: killing it",
                        worker=slot.name,
                        secs=now - slot.pingSent,
                    )
                    slot.pingSent = None
                    process.signal("KILL")
                continue
            if slot.state == "starting" and now - slot.started >= START_TIMEOUT_SECS:
                _log.error(
                    "{worker} did not start serving within {secs:g} s: killing it",
                    worker=slot.name,
                    secs=now - slot.started,
                )
                process.signal("KILL")
                continue
            if slot.state != "serving":
                continue
            slot.pingSent = now

            def answered(answer: dict[str, Any], slot: WorkerSlot = slot) -> None:
                slot.pingSent = None
                slot.generation = answer["generation"]
                slot.connections = answer["connections"]

            process.amp.callRemote(protocol.Ping).addCallbacks(answered, lambda _: None)

    def _syncHealth(self) -> None:
        states = sorted(self.health())
        if states != self._lastHealth:
            self._lastHealth = states
            self.broadcast(protocol.Health, states=json.dumps(states).encode())

    def describe(self) -> list[Answer]:
        """
        Each worker, for admin C{status}.
        """
        now = self._reactor.seconds()
        return [
            {
                "worker": slot.index,
                "pid": slot.pid,
                "state": slot.state,
                "uptime_secs": (
                    max(0, int(now - slot.started)) if slot.process else None
                ),
                "generation": slot.generation,
                "connections": slot.connections,
                "restarts": slot.restarts,
            }
            for slot in self.slots
        ]

    # -- stopping

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopping = True
        for loop in (self._pings, self._healthSync):
            if loop.running:
                loop.stop()
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
            if slot.process is None:
                slot.state = "stopped"
            else:
                slot.state = "stopping"
                slot.process.signal("TERM")
        if all(slot.process is None for slot in self.slots):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopped.append(d)
        self._kill = self._reactor.callLater(
            self.shutdownTimeout + EXIT_GRACE_SECS, self._killAll
        )
        return d

    def _killAll(self) -> None:
        self._kill = None
        for slot in self.slots:
            if slot.process is not None:
                _log.error("{worker} did not exit: killing it", worker=slot.name)
                slot.process.signal("KILL")

    def _checkStopped(self) -> None:
        if any(slot.process is not None for slot in self.slots):
            return
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        waiting, self._stopped = self._stopped, []
        for d in waiting:
            d.callback(None)


def _why(reason: Failure) -> str:
    """
    A failed AMP call, in a few words.
    """
    value = reason.value
    if isinstance(value, amp.RemoteAmpError):
        return str(value.description) if hasattr(value, "description") else str(value)
    if isinstance(value, protocol.ApplyFailed):
        return str(value)
    return f"{type(value).__name__}: {value}"


def _exitDescription(reason: Failure) -> str:
    value = reason.value
    signal_ = getattr(value, "signal", None)
    if signal_:
        return f"killed by signal {signal_}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


class WorkersFollower(ReloadFollower):
    """
    Sends each reload's config to the workers; the answer waits for them.
    """

    part = "worker processes"

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def follow(self, runtime: Runtime) -> Deferred[Sequence[str]]:
        return self.workers.apply(runtime)


class _AcmeFollower(ReloadFollower):
    """
    Obtains and renews the certificates of each new config's ACME sites.
    """

    part = "ACME certificates"

    def __init__(self, manager: AcmeManager) -> None:
        self.manager = manager

    def follow(self, runtime: Runtime) -> None:
        self.manager.updateSites(runtime.config.sites)


class WorkerCommands:
    """
    The admin commands that read the request path, answered from the
    workers' answers (summed where they count).
    """

    def __init__(
        self, factory: AdminFactory, workers: Workers, health: HealthMonitor
    ) -> None:
        self.factory = factory
        self.workers = workers
        self.health = health
        self._status = factory.commands["status"]
        factory.commands.update(
            status=self.status,
            stats=self.stats,
            tunnels=self.tunnels,
            ratelimit=self.ratelimit,
        )
        factory.commands["reopen-logs"] = self.reopenLogs
        factory.descriptions["status"] += "; each worker's pid, uptime and generation"

    def _answers(
        self, name: str, args: list[str]
    ) -> Deferred[list[tuple[int, Answer]]]:
        def decode(
            results: list[tuple[WorkerSlot, dict[str, Any]]],
        ) -> list[tuple[int, Answer]]:
            return [
                (slot.index, json.loads(result["answer"])) for slot, result in results
            ]

        return self.workers.ask(protocol.Admin, name=name, args=args).addCallback(
            decode
        )

    def status(self, args: list[str]) -> Any:
        answer = self._status(args)
        if isinstance(answer, dict) and answer.get("status") == "ok":
            answer["workers"] = self.workers.describe()
        return answer

    def stats(self, args: list[str]) -> Deferred[Answer]:
        def merged(answers: list[tuple[int, Answer]]) -> Answer:
            answer = mergeStats([a for _, a in answers])
            for name, site in (answer.get("sites") or {}).items():
                if not isinstance(site, dict):
                    continue
                checked = {d.url: d for d in self.health.describe(name)}
                for upstream in site.get("upstreams") or ():
                    state = checked.get(upstream.get("url"))
                    if state is not None:
                        upstream["health"] = renderUpstreamHealth(state)
            answer["workers"] = len(answers)
            return answer

        return self._answers("stats", args).addCallback(merged)

    def tunnels(self, args: list[str]) -> Deferred[Answer]:
        return self._answers("tunnels", args).addCallback(
            lambda answers: mergeTunnels([a for _, a in answers])
        )

    def ratelimit(self, args: list[str]) -> Deferred[Answer]:
        def merged(answers: list[tuple[int, Answer]]) -> Answer:
            if not answers:
                return {"status": "error", "message": "no worker answered"}
            first = dict(answers[0][1])
            if first.get("status") != "ok":
                return first
            # The site, client and limit are the same in every answer; the
            # bucket is each worker's own.
            first["workers"] = [
                {"worker": index}
                | {key: answer[key] for key in _PER_WORKER if key in answer}
                for index, answer in answers
            ]
            for key in _PER_WORKER:
                first.pop(key, None)
            return first

        return self._answers("ratelimit", args).addCallback(merged)

    def reopenLogs(self, args: list[str]) -> Deferred[Answer]:
        def merged(answers: list[tuple[int, Answer]]) -> Answer:
            failed = [
                f"worker {index}: {a.get('message')}"
                for index, a in answers
                if a.get("status") != "ok"
            ]
            if failed:
                return {"status": "error", "message": "; ".join(failed)}
            return {"status": "ok", "workers": len(answers)}

        return self._answers("reopen-logs", args).addCallback(merged)


#: The fields of a C{ratelimit} answer that are each worker's own bucket.
_PER_WORKER = ("tokens", "capacity", "tracked", "wait_secs", "full_in_secs", "reset")


class _SupervisorCollector:
    """
    The supervisor's own metrics: its workers.
    """

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(
            "revproxy_workers", "Worker processes by state", labels=["state"]
        )
        states: dict[str, int] = {}
        for slot in self.workers.slots:
            states[slot.state] = states.get(slot.state, 0) + 1
        for state in ("starting", "serving", "restarting", "stopping", "stopped"):
            up.add_metric([state], states.get(state, 0))
        yield up
        restarts = CounterMetricFamily(
            "revproxy_worker_restarts",
            "Worker processes started again after they died",
            labels=["worker"],
        )
        for slot in self.workers.slots:
            restarts.add_metric([str(slot.index)], slot.restarts)
        yield restarts


def collectMetrics(workers: Workers, fleet: Fleet | None = None) -> Deferred[Any]:
    """
    One registry: every serving worker's metrics merged, and the
    supervisor's (and its fleet's, with C{[cluster]}).
    """

    def merged(results: list[tuple[WorkerSlot, dict[str, Any]]]) -> Any:
        registry = mergeExpositions(
            [
                (str(slot.index), r["exposition"].decode("utf-8", "replace"))
                for slot, r in results
            ]
        )
        registry.register(_SupervisorCollector(workers))
        if fleet is not None:
            registry.register(FleetCollector(fleet))
        return registry

    return workers.ask(protocol.Metrics).addCallback(merged)


def buildSupervisor(
    config: Config,
    configPath: str,
    reactor: IRevProxyReactor,
    tls: TLSFiles | None = None,
    notifier: Notifier | None = None,
    descriptors: DescriptorLimit | None = None,
) -> RevProxyService:
    """
    The supervisor's service tree for C{config} (C{server.workers} > 1).
    """
    top = RevProxyService(descriptors)
    holder = RuntimeHolder(buildRuntime(config, reactor, tls=tls))
    health = HealthMonitor(reactor)
    health.update(holder.current.table.sites)
    challenges = MirroredChallenges(ChallengeStore(reactor))
    sockets = BoundSockets(
        reactor,
        config.server.listen_http,
        config.server.listen_https,
        config.server.workers,
    )
    sockets.setServiceParent(top)
    manager: AcmeManager | None = None
    workers = Workers(
        reactor,
        config.server.workers,
        holder,
        config,
        sockets,
        config.server.shutdown_timeout_secs,
        certificates=(lambda: manager.certificates() if manager is not None else {}),
        challenges=challenges,
        health=health.states,
        fatal=lambda message: _exitAfterStop(reactor, message),
    )
    challenges.workers = workers
    fleet = buildFleet(config, reactor)
    if fleet is not None:
        fleet.setServiceParent(top)
    if config.server.listen_https:
        manager = acmeManager(
            config,
            reactor,
            challenges if fleet is None else fleet.shareChallenges(challenges),
            workers.sendCertificates,
            None if fleet is None else fleet.orders,
        )
        manager.updateSites(config.sites)
        manager.setName("acme")
        manager.setServiceParent(top)
    for warning in configWarnings(config) + list(holder.current.tls.warnings):
        _log.warn("{problem}", problem=warning)
    health.setName("health")
    health.setServiceParent(top)
    workers.setServiceParent(top)
    notifier = Notifier() if notifier is None else notifier
    reloader = Reloader(
        configPath,
        holder,
        reactor,
        [HealthFollower(health)]
        + ([] if manager is None else [_AcmeFollower(manager)])
        + [WorkersFollower(workers), SystemdFollower(notifier, holder)],
    )
    reloader.setName("reloader")
    reloader.setServiceParent(top)
    operations = MultiService()
    operations.setName("operations")
    operations.setServiceParent(top)
    if config.server.admin_socket_path:
        factory = AdminFactory(
            reloader,
            reactor,
            reactor.seconds(),
            certificates=manager,
            servedTLS=(
                None if manager is None else lambda: servedTLS(manager, holder.current)
            ),
            operations=Operations(
                health=health,
                fleet=None if fleet is None else fleet.enableReloads(reloader),
                cluster=None if fleet is None else fleet.status,
            ),
        )
        WorkerCommands(factory, workers, health)
        admin = AdminSocket(config.server.admin_socket_path, factory, reactor)
        admin.setName("admin")
        admin.setServiceParent(operations)
    if config.server.ops_listen:
        from twisted.application.strports import service as listener

        ops = listener(
            config.server.ops_listen,
            opsSite(
                None,
                lambda: workers.stopping,
                reactor,
                collect=lambda: collectMetrics(workers, fleet),
            ),
            reactor=reactor,
        )
        ops.setName("ops")
        ops.setServiceParent(operations)

    def reopen() -> None:
        _log.info("SIGUSR1: the workers reopen the access log")
        workers.broadcast(protocol.Admin, name="reopen-logs", args=[])

    signals(reactor, reloader, reopen).setServiceParent(top)
    notice = SystemdNotice(
        notifier,
        reactor,
        lambda: (
            servingStatus(len(holder.current.config.sites), holder.current.generation)
            + f", {len(workers.slots)} workers"
        ),
        config.server.shutdown_timeout_secs,
        whenServing=workers.whenServing,
    )
    notice.setName("systemd-notify")
    notice.setServiceParent(top)
    return top


def _exitAfterStop(reactor: Any, message: str) -> None:
    """
    End the supervisor with status 1 and C{message}: a worker could not
    start, so the proxy cannot serve.
    """
    reportFatal(message)
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    reactor.stop()
