# -*- test-case-name: tests.test_eager -*-
"""
Writing to a plain TCP connection at once.

Twisted's TCP transport never sends in C{write}: it buffers, asks the
reactor to watch the socket for writability and sends when the reactor
next reports it writable.  Each response and each upstream request then
costs two more reactor events (and two C{epoll_ctl} calls) than it needs:
measured on revproxy's own proxy path, about 10 to 25 microseconds of CPU
per request, 10 to 20 % of a minimal Twisted proxy's.

L{sendNow} sends straight to the socket when the transport has nothing
buffered, and hands whatever the kernel did not take to the transport's
own C{write}, so that order, backpressure (the transport pauses its
producer as usual) and error handling (the next write attempt fails and
the connection is lost the usual way) stay Twisted's.  Whether a
transport has nothing buffered is only in private attributes of
C{twisted.internet.abstract.FileDescriptor} (C{_tempDataLen},
C{dataBuffer}, C{offset}, C{_writeDisconnected}): this module is the one
place that reads them, and C{tests.test_eager} names them on a real
Twisted TCP connection, so that a Twisted release that changes them fails
a test instead of a request.  Anything that is not exactly a plain
C{twisted.internet.tcp.Connection} (a test's string transport) gets no
such writer and is written to as usual.

Over TLS, the same holds one layer down: L{EagerTLSFactory}'s protocol
hands the TLS records it makes to the TCP connection through L{sendNow}.
And Twisted's TLS transport (L{BufferingTLSTransport}) holds every
write back until the next reactor iteration, to gather small writes into
one record: an HTTP/1.1 connection, which writes each response (head and
start of body) in one piece, skips that with L{writerFor}; an HTTP/2
connection, whose frames come in many small writes, keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from zope.interface import directlyProvides, providedBy


def plainTCP(transport: object) -> Connection | None:
    """
    The Twisted TCP connection a protocol's C{transport} writes to
    unchanged: the transport itself, or the one under protocol wrappers
    that only pass writes on (L{ProtocolWrapper}); L{None} for anything
    else (TLS in between, a test's transport).
    """
    for _ in range(4):
        if isinstance(transport, Connection):
            return transport
        if (
            not isinstance(transport, ProtocolWrapper)
            or type(transport).write is not ProtocolWrapper.write
        ):
            # Not a wrapper, or one that does something with what is
            # written.
            return None
        transport = transport.transport
    return None


def sendNow(connection: Any, data: bytes) -> None:
    """
    Write C{data} to C{connection}, a L{Connection} from L{plainTCP}: at
    once to its socket when nothing waits in its buffer, else (and for
    what the kernel did not take) through its own C{write}.
    """
    if (
        not connection._tempDataLen
        and connection.offset == len(connection.dataBuffer)
        and connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnected
    ):
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
      - for Twisted's TLS transport, under protocol wrappers that only pass
        writes on: its unbuffered C{write}, which makes the record now (and
        L{EagerTLS} sends it now), instead of
        L{BufferingTLSTransport}'s, which waits for the next reactor
        iteration.  Whoever writes with it must write nothing to
        C{transport} by another way, or the order of the two could change.
    """
    connection = plainTCP(transport)
    if connection is not None:
        return partial(sendNow, connection)
    for _ in range(4):
        if isinstance(transport, TLSMemoryBIOProtocol):
            return partial(TLSMemoryBIOProtocol.write, transport)
        if (
            not isinstance(transport, ProtocolWrapper)
            or type(transport).write is not ProtocolWrapper.write
        ):
            return None
        transport = transport.transport
    return None


class _EagerTCP:
    """
    What L{EagerTLS} writes its records to: its TCP connection, written to
    with L{sendNow}; everything else is the connection's own.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        directlyProvides(self, providedBy(connection))

    def write(self, data: bytes) -> None:
        sendNow(self._connection, data)

    def writeSequence(self, data: list[bytes]) -> None:
        sendNow(self._connection, b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class EagerTLS(BufferingTLSTransport):
    """
    Twisted's TLS transport, sending each record to a plain TCP connection
    at once (L{sendNow}) rather than at the reactor's next write event.
    """

    def makeConnection(self, transport: ITransport) -> None:
        connection = plainTCP(transport)
        if connection is not None:
            transport = _EagerTCP(connection)  # type: ignore[assignment]
        super().makeConnection(transport)


class EagerTLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} whose connections are L{EagerTLS}.
    """

    protocol = EagerTLS


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
