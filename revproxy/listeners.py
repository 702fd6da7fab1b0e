# -*- test-case-name: tests.test_listeners -*-
"""
The proxy's listening ports, and the cap on connections
(C{[server] max_connections}).

The cap counts every connection of the process, the clients' and those to
upstreams, as nginx's C{worker_connections} does.  At the cap every listener
stops accepting (its port stops reading, so new clients wait in the
kernel's backlog) and starts again as soon as a connection closes.
Connections the kernel hands over in the same accept loop that reached the
cap are closed at once (Twisted accepts up to a hundred per loop).
Upstream connections are never refused by the cap (a request already
accepted must be forwarded); they only keep new clients out.  With the cap
at its default, 80 % of the descriptor limit, the rest stays for the
upstream connections of requests in flight beyond it, files and
listeners; should even that run out, a connect that fails with EMFILE is a
503 (L{revproxy.proxy.forwarder}), never a mark against the upstream.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.throttle import LogThrottle

_log = Logger()

#: The share of the descriptor limit client connections may take when
#: C{max_connections} is not set.
DEFAULT_SHARE = 0.8

#: At most one "limit reached" line per this many seconds.
LOG_INTERVAL = 60.0


def defaultMaxConnections(descriptors: int) -> int:
    """
    C{max_connections} when not set: 80 % of C{descriptors} (the soft
    C{RLIMIT_NOFILE}), at least 1.
    """
    return max(1, int(descriptors * DEFAULT_SHARE))


class ConnectionGate:
    """
    Counts open connections (client and upstream) and pauses the listening
    ports at C{limit}.

    @ivar limit: The most connections open at once.
    @ivar open: Connections open now, client and upstream.
    @ivar paused: Whether the listeners are paused now.
    @ivar pauses: How many times the listeners were paused.
    @ivar refused: Connections closed at accept because the cap was reached
        within one accept loop.
    """

    def __init__(self, limit: int, clock: IReactorTime) -> None:
        self.limit = limit
        self.open = 0
        self.paused = False
        self.pauses = 0
        self.refused = 0
        self._ports: list[IPushProducer] = []
        self._limitLog = LogThrottle(clock, LOG_INTERVAL)

    def full(self) -> bool:
        """
        Whether the cap is reached.
        """
        return self.open >= self.limit

    def addPort(self, port: IPushProducer) -> None:
        """
        Pause and resume C{port} with the others; paused now if the cap is
        reached.
        """
        self._ports.append(port)
        if self.paused:
            port.pauseProducing()

    def removePort(self, port: IPushProducer) -> None:
        """
        Forget C{port} (it stopped listening).
        """
        if port in self._ports:
            self._ports.remove(port)

    def opened(self) -> None:
        """
        A connection opened (or an upstream socket was made).
        """
        self.open += 1
        if self.open >= self.limit and not self.paused:
            self.paused = True
            self.pauses += 1
            for port in self._ports:
                port.pauseProducing()
            if self._limitLog.due() is not None:
                _log.warn(
                    "{open} connections (clients' and upstream ones): "
                    "max_connections reached, not accepting until one closes "
                    "(paused {pauses} time(s))",
                    open=self.open,
                    pauses=self.pauses,
                )

    def closed(self) -> None:
        """
        A connection closed.
        """
        self.open -= 1
        if self.paused and self.open < self.limit:
            self.paused = False
            for port in self._ports:
                port.resumeProducing()


class GatedFactory(Factory):
    """
    The factory a listening port sees: the real one, except that a
    connection accepted while the cap is reached is closed at once (the
    port returns it to nobody: Twisted closes a socket whose protocol is
    L{None}).
    """

    noisy = False

    def __init__(self, wrapped: IProtocolFactory, gate: ConnectionGate) -> None:
        self.wrapped = wrapped
        self.gate = gate

    def logPrefix(self) -> str:
        # Twisted logs "<prefix> starting on <port>": keep the real one's.
        prefix: str = getattr(self.wrapped, "logPrefix", lambda: "-")()
        return prefix

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> IProtocol | None:  # type: ignore[override]
        gate = self.gate
        if gate.full():
            gate.refused += 1
            return None
        return self.wrapped.buildProtocol(addr)


class Listener(Service):
    """
    Listens on C{endpoint} with C{factory} while running; a port that cannot
    be bound fails start-up at once (the error is raised from
    C{privilegedStartService}, as C{strports.service} does for twistd).
    With a C{gate}, the port pauses and resumes with it.

    @ivar port: The listening port, once listening.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        gate: ConnectionGate | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.gate = gate
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        factory: IProtocolFactory = self.factory
        gate = self.gate
        if gate is not None:
            factory = GatedFactory(factory, gate)
        listening = self.endpoint.listen(factory)
        self._listening = listening
        now = [True]
        failed: list[Failure] = []

        def listened(port: IListeningPort) -> IListeningPort:
            self.port = port
            producer = IPushProducer(port, None)
            if gate is not None and producer is not None:
                gate.addPort(producer)
            return port

        def error(reason: Failure) -> None:
            if reason.check(CancelledError):
                return
            if now[0]:
                failed.append(reason)
            else:
                _log.failure(
                    "Cannot listen on {endpoint}", reason, endpoint=self.endpoint
                )

        listening.addCallbacks(listened, error)
        now[0] = False
        if failed:
            self._listening = None
            failed[0].raiseException()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        if port is None:
            if listening is not None:
                listening.cancel()
            return succeed(None)
        producer = IPushProducer(port, None)
        if self.gate is not None and producer is not None:
            self.gate.removePort(producer)
        stopped = port.stopListening()
        return succeed(None) if stopped is None else stopped


#: The listen backlog of TCP listeners that do not set one, as nginx's on
#: Linux (Twisted's default is 50: a burst of new connections, such as 500
#: slow clients reconnecting at once, overflows it and a normal client's
#: SYN waits a whole second to be sent again).
DEFAULT_BACKLOG = 511


def withBacklog(description: str) -> str:
    """
    C{description}, a server endpoint string, with C{backlog=511} added
    when it is a TCP endpoint that does not set its own backlog.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description
