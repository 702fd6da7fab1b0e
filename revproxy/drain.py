# -*- test-case-name: tests.test_drain -*-
"""
Graceful shutdown: know every client connection, and at stop close the idle
ones at once, let those with a request in flight finish it, and abort what
is left when the deadline passes.
"""

from __future__ import annotations

from typing import Protocol, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from revproxy.listeners import ConnectionGate

_log = Logger()

#: After the shutdown deadline aborted what was left, how long their
#: connections get to be gone before the drain is over anyway.
ABORT_GRACE = 1.0

#: How often, while draining, connections that fell idle are closed.
SWEEP_INTERVAL = 0.25


class ClientConnection(Protocol):
    """
    What the tracker asks of a client connection's protocol
    (L{revproxy.proxy.http1.HTTP1Connection}, which hands an HTTP/2
    connection's questions on).
    """

    def busy(self) -> bool:
        """
        Whether a request is in flight (or being received).
        """

    def drain(self) -> None:
        """
        Close now if idle, else once the requests in flight are answered
        (HTTP/2: GOAWAY first).
        """


def _connectionOf(wrapper: ProtocolWrapper) -> ClientConnection | None:
    """
    The client-side protocol behind a tracked connection, if it is one.
    """
    protocol = wrapper.wrappedProtocol
    if hasattr(protocol, "busy") and hasattr(protocol, "drain"):
        return cast(ClientConnection, protocol)
    return None


@implementer(IHalfCloseableProtocol)
class _TrackedConnection(ProtocolWrapper):
    """
    A tracked client connection: its protocol learns that it is lost
    before the tracker forgets it, so that what waits for the last
    connection to go (the end of a graceful shutdown, then the access log's
    close) comes after everything the protocol does then (a tunnel cut by
    the shutdown writes its access-log line).  The end of what the client
    sends reaches a protocol that can use it (a tunnel's); for any other,
    the connection ends then, as it does without a wrapper.
    """

    def readConnectionLost(self) -> None:
        wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if wrapped is not None:
            wrapped.readConnectionLost()
        elif self.transport is not None:
            self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if wrapped is not None:
            wrapped.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self.wrappedProtocol.connectionLost(reason)
        finally:
            self.factory.unregisterProtocol(self)
            # As ProtocolWrapper: no reference cycle through the protocol.
            self.wrappedProtocol = None  # type: ignore[assignment]


class ConnectionTracker(WrappingFactory):
    """
    Wraps the L{Site} so that every client connection is known, and tells
    the connection cap (L{ConnectionGate}) of each that opens and closes.
    """

    noisy = False
    protocol = _TrackedConnection

    def __init__(
        self, wrappedFactory: IProtocolFactory, gate: ConnectionGate | None = None
    ) -> None:
        super().__init__(wrappedFactory)
        self._waiting: list[Deferred[None]] = []
        self.gate = gate

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        gate = self.gate
        if gate is not None:
            gate.opened()

    def logPrefix(self) -> str:
        # Twisted logs "<prefix> starting on <port>": keep the site's name.
        wrapped = self.wrappedFactory
        if ILoggingContext.providedBy(wrapped):
            prefix: str = ILoggingContext(wrapped).logPrefix()
            return prefix
        fallback: str = super().logPrefix()
        return fallback

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        gate = self.gate
        if gate is not None:
            gate.closed()
        if not self.protocols and self._waiting:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def closeIdle(self) -> int:
        """
        Close connections with no request in flight and make the busy ones
        close after their current response (HTTP/2: GOAWAY now, close when
        the streams in flight end).

        @return: how many connections are busy.
        """
        busy = 0
        for wrapper in list(self.protocols):
            connection = _connectionOf(wrapper)
            if connection is not None:
                if connection.busy():
                    busy += 1
                connection.drain()
            elif wrapper.transport is not None:
                wrapper.transport.loseConnection()
        return busy

    def whenEmpty(self) -> Deferred[None]:
        """
        Fires when no client connection is left.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def abortAll(self) -> int:
        """
        Abort every connection still open.

        @return: how many there were.
        """
        count = 0
        for wrapper in list(self.protocols):
            transport = wrapper.transport
            if transport is not None:
                count += 1
                transport.abortConnection()
        return count


class DrainService(MultiService):
    """
    At stop: close idle connections, wait for in-flight requests up to
    C{timeout} seconds, then abort the rest; then stop its children, the
    services that must keep running while it drains.  Its C{stopService}
    Deferred is what twistd waits for before the reactor stops.
    """

    def __init__(
        self, tracker: ConnectionTracker, timeout: float, clock: IReactorTime
    ) -> None:
        super().__init__()
        self.tracker = tracker
        self.timeout = timeout
        self._clock = clock
        #: Whether a graceful shutdown has begun (C{/healthz} answers 503).
        self.draining = False

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        stopped: Deferred[None] = Deferred()

        def stopChildren(_: object) -> None:
            children = [
                maybeDeferred(child.stopService) for child in reversed(list(self))
            ]
            DeferredList(children).addBoth(lambda _: stopped.callback(None))

        self._drain().addBoth(stopChildren)
        return stopped

    def _drain(self) -> Deferred[None]:
        self.draining = True
        busy = self.tracker.closeIdle()
        if not self.tracker.protocols:
            return succeed(None)
        _log.info(
            "Shutting down: waiting up to {timeout}s for {busy} request(s) in flight",
            timeout=self.timeout,
            busy=busy,
        )
        done: Deferred[None] = Deferred()
        deadline: IDelayedCall | None = None
        sweep: LoopingCall | None = None

        def expired() -> None:
            if sweep is not None and sweep.running:
                sweep.stop()
            aborted = self.tracker.abortAll()
            _log.warn(
                "Shutdown deadline ({timeout}s) passed: aborted {count} connection(s)",
                timeout=self.timeout,
                count=aborted,
            )
            # An aborted connection is lost on a later reactor turn: what
            # stops after the drain (the access log) must still see it end
            # (a tunnel's line is written then).  Bounded, in case one
            # never goes.
            grace.append(self._clock.callLater(ABORT_GRACE, finish))

        def finish() -> None:
            if not done.called:
                done.callback(None)

        def empty(_: object) -> None:
            if sweep is not None and sweep.running:
                sweep.stop()
            if deadline is not None and deadline.active():
                deadline.cancel()
            for call in grace:
                if call.active():
                    call.cancel()
            if not done.called:
                done.callback(None)

        grace: list[IDelayedCall] = []
        deadline = self._clock.callLater(self.timeout, expired)
        # A busy connection may start another request before it learns it
        # should close (HTTP/1.1 decides persistence per request): close
        # connections as they fall idle.
        sweep = LoopingCall(self.tracker.closeIdle)
        sweep.clock = self._clock
        sweep.start(SWEEP_INTERVAL, now=False)
        self.tracker.whenEmpty().addCallback(empty)
        return done
