# -*- test-case-name: tests.integration.test_eager -*-
"""
Writing to a plain TCP connection at once.

How it works: docs/internals.md, "Eager writes".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from revproxy.private.twisted import canSendNow


def plainTCP(transport: object) -> Connection | None:
    """
    The Twisted TCP connection a protocol's C{transport} writes to
    unchanged: the transport itself, or the one under protocol wrappers
    that only pass writes on (L{ProtocolWrapper}); L{None} for anything
    else (TLS in between, a test's transport).
    """
    for layer in _passingWrites(transport):
        if isinstance(layer, Connection):
            return layer
    return None


def _passingWrites(transport: object) -> Iterator[object]:
    """
    C{transport}, then the transports under it for as long as each layer
    is a protocol wrapper that passes writes on unchanged (a
    L{ProtocolWrapper} with its own C{write}), a few layers at most.
    """
    for _ in range(4):
        yield transport
        if (
            not isinstance(transport, ProtocolWrapper)
            or type(transport).write is not ProtocolWrapper.write
        ):
            # Not a wrapper, or one that does something with what is
            # written.
            return
        transport = transport.transport


def sendNow(connection: Connection, data: bytes) -> None:
    """
    Write C{data} to C{connection}, a L{Connection} from L{plainTCP}: at
    once to its socket when nothing waits in its buffer, else (and for
    what the kernel did not take) through its own C{write}.
    """
    if canSendNow(connection):
        try:
            sent = connection.socket.send(data)
        except OSError:
            # EAGAIN, or an error the transport's own write meets again and
            # ends the connection with, as usual.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    connection.write(data)


def writerFor(transport: object) -> Callable[[bytes], None] | None:
    """
    A function that writes to C{transport} at once when it can, or
    L{None} when it cannot do better than C{transport.write}:

      - for a plain TCP connection (L{plainTCP}): L{sendNow};
      - for an L{EagerTLS} under protocol wrappers that only pass writes
        on: its C{writeNow}, which encrypts and sends at once, where its
        C{write} waits for the next reactor iteration.
    """
    for layer in _passingWrites(transport):
        if isinstance(layer, Connection):
            return partial(sendNow, layer)
        if isinstance(layer, EagerTLS):
            return layer.writeNow
    return None


class _EagerTCP:
    """
    What L{EagerTLS} writes its records to: its TCP connection, written to
    with L{sendNow}, or gathered while L{EagerTLS.writeNow} makes the
    records of one write; everything else is the connection's own.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        #: The records of the write in progress, or L{None}.
        self.gathered: list[bytes] | None = None
        directlyProvides(self, providedBy(connection))

    def write(self, data: bytes) -> None:
        gathered = self.gathered
        if gathered is not None:
            gathered.append(data)
        else:
            sendNow(self.connection, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


class EagerTLS(TLSMemoryBIOProtocol):
    """
    Twisted's TLS transport, sending what it encrypts to a plain TCP
    connection at once (L{sendNow}), the records of one write in one
    system call, rather than at the reactor's next write event.

    L{writeNow} makes and sends records at once: for a writer that writes
    whole pieces (an HTTP/1.1 response's head and first bytes).  C{write}
    gathers writes until the next reactor iteration (at most
    L{GATHER_BYTES}), as Twisted's L{BufferingTLSTransport} does: for
    HTTP/2, whose frames come in many small writes from many streams.
    """

    #: Bytes gathered by C{write} before they are sent without waiting.
    GATHER_BYTES = 64_000

    _eager: _EagerTCP | None = None
    _flushCall: IDelayedCall | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        connection = plainTCP(transport)
        if connection is not None:
            self._eager = _EagerTCP(connection)
            transport = self._eager  # type: ignore[assignment]
        super().makeConnection(transport)

    def writeNow(self, data: bytes) -> None:
        """
        Encrypt C{data} and send it now, after whatever C{write} gathered.
        """
        if self._pending:
            self._flushPending()
        eager = self._eager
        if eager is None:
            TLSMemoryBIOProtocol.write(self, data)
            return
        gathered: list[bytes] = []
        eager.gathered = gathered
        try:
            TLSMemoryBIOProtocol.write(self, data)
        finally:
            # Whole records, even if making the next one failed.
            eager.gathered = None
            if gathered:
                sendNow(
                    eager.connection,
                    gathered[0] if len(gathered) == 1 else b"".join(gathered),
                )

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pendingBytes += len(data)
        if self._pendingBytes > self.GATHER_BYTES:
            self._flushPending()
        elif self._flushCall is None:
            factory = cast(EagerTLSFactory, self.factory)
            self._flushCall = factory.clock.callLater(0, self._flushPending)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def _flushPending(self) -> None:
        call = self._flushCall
        self._flushCall = None
        if call is not None and call.active():
            call.cancel()
        pending = self._pending
        if pending:
            self._pending = []
            self._pendingBytes = 0
            self.writeNow(b"".join(pending))

    def loseConnection(self) -> None:
        self._flushPending()
        super().loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        call = self._flushCall
        self._flushCall = None
        if call is not None and call.active():
            call.cancel()
        self._pending = []
        super().connectionLost(reason)


class EagerTLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} whose connections are L{EagerTLS}.
    """

    protocol = EagerTLS

    def __init__(
        self,
        contextFactory: IOpenSSLServerConnectionCreator,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        #: What C{write}'s gathering waits on.
        self.clock = clock


def noDelay(transport: object) -> None:
    """
    Turn Nagle's algorithm off on the TCP connection under C{transport}
    (through TLS and protocol wrappers, which hand the call on), as nginx's
    C{tcp_nodelay on}: a response's last short segment must not wait for
    the peer's delayed acknowledgement (40 ms on Linux), nor a request for
    the previous one's.  Nothing happens for a transport that is not TCP.
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
        except OSError:
            pass
