"""
Tests for L{revproxy.proxy.upstream}: the upstream HTTP/1.1 client, driven
with a L{StringTransport}, a recording sink and a recording pool.
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy.proxy.pool import ConnectionPool
from revproxy.proxy.upstream import (
    MAX_RESPONSE_HEAD,
    PoolKey,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamProtocolError,
)

KEY: PoolKey = ("http", "upstream.example", 8080, None)
GET = b"GET / HTTP/1.1\r\nHost: upstream.example\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: upstream.example\r\n\r\n"


class RecordingSink:
    """
    An L{ResponseSink} that records what it is told, in order.
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.started: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self.body: list[bytes] = []
        self.failures: list[Exception] = []

    def responseStarted(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.events.append("started")
        self.started.append((code, reason, list(headers)))

    def responseBody(self, data: bytes) -> None:
        self.events.append("body")
        self.body.append(data)

    def responseDone(self) -> None:
        self.events.append("done")

    def responseFailed(self, reason: Exception) -> None:
        self.events.append("failed")
        self.failures.append(reason)


class RecordingPool:
    """
    The part of L{ConnectionPool} a connection calls, recording each call.
    """

    def __init__(self) -> None:
        self.made: list[UpstreamConnection] = []
        self.released: list[UpstreamConnection] = []
        self.lost: list[UpstreamConnection] = []

    def connectionMade(self, connection: UpstreamConnection) -> None:
        self.made.append(connection)

    def release(self, connection: UpstreamConnection) -> None:
        self.released.append(connection)

    def connectionLost(self, connection: UpstreamConnection) -> None:
        self.lost.append(connection)


class _Connector:
    """
    A connector that does nothing when disconnected.
    """

    def disconnect(self) -> None:
        pass


class _SendingWaiter:
    """
    A pool waiter that sends a request as soon as it gets a connection.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.sinks: list[RecordingSink] = []
        self.failures: list[Failure] = []

    def connectionReady(self, connection: UpstreamConnection) -> None:
        sink = RecordingSink()
        self.sinks.append(sink)
        connection.send(sink, self.request, False)

    def connectionFailed(self, reason: Failure) -> None:
        self.failures.append(reason)

    def connectionOpening(self) -> None:
        pass


class ClientTestMixin:
    """
    Build an L{UpstreamConnection} on a L{StringTransport} with a
    L{RecordingPool}.
    """

    def setUp(self) -> None:
        self.pool = RecordingPool()
        self.connection = UpstreamConnection(cast(ConnectionPool, self.pool), KEY)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def exchange(self, data: bytes = GET, isHead: bool = False) -> RecordingSink:
        """
        Start an exchange with a new L{RecordingSink} and return the sink.
        """
        sink = RecordingSink()
        self.connection.send(sink, data, isHead)
        return sink

    def feed(self, data: bytes, byteByByte: bool = False) -> None:
        """
        Deliver C{data} from the upstream, at once or one byte at a time.
        """
        if byteByByte:
            for i in range(len(data)):
                self.connection.dataReceived(data[i : i + 1])
        else:
            self.connection.dataReceived(data)

    def lose(self, reason: Failure) -> None:
        """
        Tell the connection its transport is gone.
        """
        self.connection.connectionLost(reason)


CONTENT_LENGTH_RESPONSE = (
    b"HTTP/1.1 200 OK Fine\r\n"
    b"Content-Type: text/plain\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Content-Length: 11\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Set-Cookie: c=3\r\n"
    b"\r\n"
    b"hello world"
)
CONTENT_LENGTH_HEADERS = [
    (b"Content-Type", b"text/plain"),
    (b"Set-Cookie", b"a=1"),
    (b"Content-Length", b"11"),
    (b"Set-Cookie", b"b=2"),
    (b"Set-Cookie", b"c=3"),
]


class ContentLengthResponseTests(ClientTestMixin, SynchronousTestCase):
    """
    Responses framed by C{Content-Length}.
    """

    def test_connectionMadeTellsPool(self) -> None:
        """
        A new connection reports itself to its pool and is marked connected.
        """
        self.assertEqual(self.pool.made, [self.connection])
        self.assertTrue(self.connection.connected)
        self.assertFalse(self.connection.reused)

    def test_requestWrittenExactly(self) -> None:
        """
        The bytes given to C{send} are written to the transport unchanged.
        """
        request = b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        self.exchange(request)
        self.assertEqual(self.transport.value(), request)

    def test_oneGo(self) -> None:
        """
        A whole response in one chunk gives its status, reason, headers in
        order, the body, and one C{responseDone}.
        """
        sink = self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE)
        self.assertEqual(sink.started, [(200, b"OK Fine", CONTENT_LENGTH_HEADERS)])
        self.assertEqual(b"".join(sink.body), b"hello world")
        self.assertEqual(sink.events[0], "started")
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(sink.events.count("done"), 1)
        self.assertEqual(sink.failures, [])

    def test_byteByByte(self) -> None:
        """
        A response fed one byte at a time gives the same code, headers and body,
        the body in pieces, and one C{responseDone}.
        """
        sink = self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE, byteByByte=True)
        self.assertEqual(len(sink.started), 1)
        code, _reason, headers = sink.started[0]
        self.assertEqual(code, 200)
        self.assertEqual(headers, CONTENT_LENGTH_HEADERS)
        self.assertEqual(b"".join(sink.body), b"hello world")
        self.assertEqual(len(sink.body), len(b"hello world"))
        self.assertEqual(sink.events.count("done"), 1)
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [self.connection])

    def test_reasonByteByByte(self) -> None:
        """
        A reason phrase that arrives one byte at a time is reported whole.
        """
        # Regression test for a fixed bug
        # (revproxy.proxy.upstream.UpstreamConnection.on_status): httptools calls
        # on_status once per piece of the reason phrase, and the client keeps
        # only the last piece (here b"" instead of b"OK Fine").
        sink = self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE, byteByByte=True)
        self.assertEqual(sink.started[0][1], b"OK Fine")

    def test_bodyInPieces(self) -> None:
        """
        A body split over several chunks is relayed piece by piece as it
        arrives, and the exchange ends only when the length is reached.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.assertEqual(sink.body, [b"abc"])
        self.feed(b"defg")
        self.assertEqual(sink.body, [b"abc", b"defg"])
        self.assertNotIn("done", sink.events)
        self.assertEqual(self.pool.released, [])
        self.feed(b"hij")
        self.assertEqual(sink.body, [b"abc", b"defg", b"hij"])
        self.assertEqual(sink.events.count("done"), 1)

    def test_keepAliveReleased(self) -> None:
        """
        A complete keep-alive response gives the connection back to the pool,
        open, and marks it reused.
        """
        self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE)
        self.assertEqual(self.pool.released, [self.connection])
        self.assertFalse(self.transport.disconnecting)
        self.assertTrue(self.connection.reused)

    def test_emptyBody(self) -> None:
        """
        C{Content-Length: 0} ends the exchange right after the headers, with
        no body call, and releases the connection.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(sink.events, ["started", "done"])
        self.assertEqual(self.pool.released, [self.connection])

    def test_connectionCloseNotReleased(self) -> None:
        """
        A response with C{Connection: close} is relayed whole, then the
        connection is closed gracefully and not given back to the pool.
        """
        sink = self.exchange()
        self.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
        self.assertEqual(sink.body, [b"hi"])
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)

    def test_http10KeepAliveWithLength(self) -> None:
        """
        An HTTP/1.0 response with C{Connection: keep-alive} and a length is
        released; without C{keep-alive} the connection is closed.
        """
        sink = self.exchange()
        self.feed(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [self.connection])
        sink = self.exchange()
        self.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [self.connection])
        self.assertTrue(self.transport.disconnecting)

    def test_emptyReasonNotInherited(self) -> None:
        """
        A status line without a reason phrase reports an empty reason, not
        the reason of the connection's previous response.
        """
        # Regression test for a fixed bug
        # (revproxy.proxy.upstream.UpstreamConnection.__init__ and send):
        # _reason is set in __init__ and by on_status only, never reset in
        # send(); httptools does not call on_status for an absent reason, so
        # the previous exchange's b"Not Found" is reported for this 200.
        self.exchange()
        self.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(sink.started, [(200, b"", [(b"Content-Length", b"0")])])


class ChunkedResponseTests(ClientTestMixin, SynchronousTestCase):
    """
    Responses framed by C{Transfer-Encoding: chunked}.
    """

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"5\r\nhello\r\n"
        b"6;ext=1\r\n world\r\n"
        b"0\r\n"
        b"X-Checksum: abc\r\n"
        b"\r\n"
    )

    def test_dechunked(self) -> None:
        """
        The body is relayed without the chunk framing, then the exchange ends
        once and the connection is released.
        """
        sink = self.exchange()
        self.feed(self.RESPONSE)
        self.assertEqual(
            sink.started, [(200, b"OK", [(b"Transfer-Encoding", b"chunked")])]
        )
        self.assertEqual(b"".join(sink.body), b"hello world")
        self.assertEqual(sink.events.count("done"), 1)
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [self.connection])

    def test_dechunkedByteByByte(self) -> None:
        """
        A chunked body fed one byte at a time is relayed without framing.
        """
        sink = self.exchange()
        self.feed(self.RESPONSE, byteByByte=True)
        self.assertEqual(b"".join(sink.body), b"hello world")
        self.assertEqual(sink.events.count("done"), 1)
        self.assertEqual(self.pool.released, [self.connection])

    def test_trailersIgnored(self) -> None:
        """
        Trailer fields reach neither the reported headers nor the body, and
        do not leak into the next exchange's headers.
        """
        sink = self.exchange()
        self.feed(self.RESPONSE)
        self.assertEqual(sink.started[0][2], [(b"Transfer-Encoding", b"chunked")])
        self.assertNotIn(b"X-Checksum", b"".join(sink.body))
        nextSink = self.exchange()
        self.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(nextSink.started, [(204, b"No Content", [])])

    def test_notDoneBeforeLastChunk(self) -> None:
        """
        The exchange is not complete until the zero-length chunk arrives.
        """
        sink = self.exchange()
        self.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        self.assertEqual(sink.body, [b"hello"])
        self.assertNotIn("done", sink.events)
        self.assertEqual(self.pool.released, [])
        self.feed(b"0\r\n\r\n")
        self.assertEqual(sink.events[-1], "done")

    def test_connectionClose(self) -> None:
        """
        A chunked response with C{Connection: close} is not released; the
        transport is closed gracefully.
        """
        sink = self.exchange()
        self.feed(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        )
        self.assertEqual(sink.body, [b"hi"])
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)


class CloseDelimitedResponseTests(ClientTestMixin, SynchronousTestCase):
    """
    Responses without a length, whose body ends with the connection.
    """

    def test_http10BodyUntilClose(self) -> None:
        """
        An HTTP/1.0 body without a length is relayed as it comes and ends with
        C{responseDone} when the connection closes cleanly.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
        self.feed(b"def")
        self.assertEqual(sink.body, [b"abc", b"def"])
        self.assertEqual(sink.events, ["started", "body", "body"])
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events, ["started", "body", "body", "done"])
        self.assertEqual(self.pool.released, [])
        self.assertEqual(self.pool.lost, [self.connection])

    def test_http11BodyUntilClose(self) -> None:
        """
        An HTTP/1.1 response without a length is read until a clean close and
        the connection is not released.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
        self.assertEqual(self.pool.released, [])
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.body, [b"abc"])
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [])

    def test_uncleanCloseFails(self) -> None:
        """
        A close-delimited body cut by an unclean close (C{ConnectionLost})
        fails with L{UpstreamClosed}, so a truncated body is not passed off
        as whole.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
        reason = Failure(ConnectionLost())
        self.lose(reason)
        self.assertEqual(sink.events, ["started", "body", "failed"])
        [failure] = sink.failures
        assert isinstance(failure, UpstreamClosed)
        self.assertTrue(failure.gotBytes)
        self.assertIs(failure.reason, reason)


class NoBodyResponseTests(ClientTestMixin, SynchronousTestCase):
    """
    Responses that have no body whatever their headers say.
    """

    def test_headWithContentLength(self) -> None:
        """
        A response to HEAD with C{Content-Length: 1000} is done right after
        its headers, with no body, and the connection is released.
        """
        sink = self.exchange(HEAD, isHead=True)
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.assertEqual(sink.started, [(200, b"OK", [(b"Content-Length", b"1000")])])
        self.assertEqual(sink.events, ["started", "done"])
        self.assertEqual(self.pool.released, [self.connection])
        self.assertFalse(self.transport.disconnecting)

    def test_headThenGet(self) -> None:
        """
        After a response to HEAD the connection carries a next exchange whose
        body is read normally.
        """
        self.exchange(HEAD, isHead=True)
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(sink.body, [b"abc"])
        self.assertEqual(sink.events[-1], "done")
        self.assertEqual(self.pool.released, [self.connection, self.connection])

    def test_noContent(self) -> None:
        """
        A 204 ends right after its headers and the connection is released.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")
        self.assertEqual(sink.started, [(204, b"No Content", [(b"X-A", b"b")])])
        self.assertEqual(sink.events, ["started", "done"])
        self.assertEqual(self.pool.released, [self.connection])

    def test_notModified(self) -> None:
        """
        A 304 with the C{Content-Length} of the full resource ends right after
        its headers and the connection is released.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n")
        self.assertEqual(sink.events, ["started", "done"])
        self.assertEqual(sink.started[0][0], 304)
        self.assertEqual(self.pool.released, [self.connection])

    def test_notModifiedWithoutLength(self) -> None:
        """
        A 304 without any length is complete too: it is not read until close.
        """
        sink = self.exchange()
        self.feed(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n')
        self.assertEqual(sink.events, ["started", "done"])
        self.assertEqual(self.pool.released, [self.connection])


class InterimResponseTests(ClientTestMixin, SynchronousTestCase):
    """
    1xx responses before the final one.
    """

    def test_continueAndEarlyHintsSkipped(self) -> None:
        """
        100 Continue and 103 Early Hints are not reported; only the final
        response, with only its own headers, is.
        """
        sink = self.exchange()
        self.feed(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(sink.started, [(200, b"OK", [(b"Content-Length", b"2")])])
        self.assertEqual(sink.body, [b"ok"])
        self.assertEqual(sink.events, ["started", "body", "done"])
        self.assertEqual(self.pool.released, [self.connection])

    def test_interimInSeparateChunks(self) -> None:
        """
        Interim responses in their own chunks report nothing until the final
        response arrives.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\n")
        self.assertEqual(sink.events, [])
        self.assertEqual(self.pool.released, [])
        self.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(sink.started, [(201, b"Created", [(b"Content-Length", b"0")])])
        self.assertEqual(sink.events, ["started", "done"])

    def test_finalReasonNotFromInterim(self) -> None:
        """
        A final status line without a reason phrase does not report the
        interim response's reason.
        """
        # Regression test for a fixed bug
        # (revproxy.proxy.upstream.UpstreamConnection.on_headers_complete):
        # _reason is not cleared when an interim response is skipped, so
        # this 200 is reported with the reason b"Continue".
        sink = self.exchange()
        self.feed(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(sink.started, [(200, b"", [(b"Content-Length", b"0")])])


class ProtocolErrorTests(ClientTestMixin, SynchronousTestCase):
    """
    Bytes that are not a valid HTTP/1.1 response.
    """

    def assertProtocolError(self, response: bytes) -> RecordingSink:
        """
        Feed C{response} and check that it fails the exchange with
        L{UpstreamProtocolError} once and aborts the connection.
        """
        sink = self.exchange()
        self.feed(response)
        self.assertEqual(sink.events[-1], "failed")
        self.assertEqual(sink.events.count("failed"), 1)
        self.assertNotIn("done", sink.events)
        [failure] = sink.failures
        self.assertIsInstance(failure, UpstreamProtocolError)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.pool.released, [])
        return sink

    def test_malformedStatusLine(self) -> None:
        """
        A status line that is not HTTP fails the exchange and aborts the
        connection.
        """
        sink = self.assertProtocolError(b"HTTX/1.1 200 OK\r\n\r\n")
        self.assertEqual(sink.events, ["failed"])

    def test_garbage(self) -> None:
        """
        Binary garbage instead of a response fails the exchange.
        """
        self.assertProtocolError(b"\x16\x03\x01\x00\xa5\x01\x00\x00")

    def test_endlessHead(self) -> None:
        """
        A response head that goes on past L{MAX_RESPONSE_HEAD} bytes, fed
        in pieces, fails the exchange instead of being buffered.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        for _ in range(MAX_RESPONSE_HEAD // len(line) + 1):
            self.feed(line)
        [failure] = sink.failures
        self.assertIsInstance(failure, UpstreamProtocolError)
        self.assertTrue(self.transport.disconnected)

    def test_largeHeadAccepted(self) -> None:
        """
        A head a little under the limit (big cookies) is accepted.
        """
        sink = self.exchange()
        cookie = b"Set-Cookie: c=" + b"b" * 4000 + b"\r\n"
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + cookie * 15 + b"\r\n")
        self.assertEqual(sink.failures, [])
        self.assertIn("done", sink.events)

    def test_invalidHeader(self) -> None:
        """
        A header name with a space in it fails the exchange.
        """
        self.assertProtocolError(b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n")

    def test_conflictingContentLength(self) -> None:
        """
        Two different C{Content-Length} values fail the exchange rather than
        guessing where the body ends.
        """
        self.assertProtocolError(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
        )

    def test_contentLengthWithChunked(self) -> None:
        """
        C{Content-Length} together with chunked encoding fails the exchange.
        """
        self.assertProtocolError(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )

    def test_badChunkSize(self) -> None:
        """
        A malformed chunk size mid-body fails the exchange after it started.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertEqual(sink.events, ["started", "failed"])
        self.assertIsInstance(sink.failures[0], UpstreamProtocolError)
        self.assertTrue(self.transport.disconnected)

    def test_lossAfterErrorNotReported(self) -> None:
        """
        The connection loss that follows the abort is not reported again.
        """
        sink = self.assertProtocolError(b"HTTX/1.1 200 OK\r\n\r\n")
        self.lose(Failure(ConnectionLost()))
        self.assertEqual(sink.events, ["failed"])
        self.assertEqual(self.pool.lost, [self.connection])


class ConnectionLossTests(ClientTestMixin, SynchronousTestCase):
    """
    The upstream closing the connection before the response is complete.
    """

    def test_beforeAnyByte(self) -> None:
        """
        A loss before any response byte fails with L{UpstreamClosed} whose
        C{gotBytes} is false, and the pool is told.
        """
        sink = self.exchange()
        reason = Failure(ConnectionDone())
        self.lose(reason)
        self.assertEqual(sink.events, ["failed"])
        [failure] = sink.failures
        assert isinstance(failure, UpstreamClosed)
        self.assertFalse(failure.gotBytes)
        self.assertIs(failure.reason, reason)
        self.assertEqual(self.pool.lost, [self.connection])
        self.assertFalse(self.connection.connected)

    def test_afterSomeBytes(self) -> None:
        """
        A loss after part of the status line fails with C{gotBytes} true.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 2")
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events, ["failed"])
        [failure] = sink.failures
        assert isinstance(failure, UpstreamClosed)
        self.assertTrue(failure.gotBytes)

    def test_afterInterimResponse(self) -> None:
        """
        A loss after a 100 Continue counts as after some bytes.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.lose(Failure(ConnectionLost()))
        [failure] = sink.failures
        assert isinstance(failure, UpstreamClosed)
        self.assertTrue(failure.gotBytes)

    def test_midContentLengthBody(self) -> None:
        """
        A clean close before C{Content-Length} bytes arrived fails the
        exchange instead of completing it.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events, ["started", "body", "failed"])
        [failure] = sink.failures
        assert isinstance(failure, UpstreamClosed)
        self.assertTrue(failure.gotBytes)
        self.assertEqual(self.pool.released, [])

    def test_midChunkedBody(self) -> None:
        """
        A clean close before the last chunk fails the exchange.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events, ["started", "body", "failed"])
        self.assertIsInstance(sink.failures[0], UpstreamClosed)

    def test_headWithoutBodyThenClose(self) -> None:
        """
        A loss after a response to HEAD ended reports nothing more.
        """
        sink = self.exchange(HEAD, isHead=True)
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events, ["started", "done"])

    def test_lossWhileIdle(self) -> None:
        """
        A loss while no exchange is in progress tells the pool and reports
        nothing to the previous sink.
        """
        sink = self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE)
        events = list(sink.events)
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events, events)
        self.assertEqual(self.pool.lost, [self.connection])
        self.assertFalse(self.connection.connected)

    def test_lossAfterCloseDelimitedDone(self) -> None:
        """
        A clean close ends a close-delimited body exactly once.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
        self.lose(Failure(ConnectionDone()))
        self.lose(Failure(ConnectionDone()))
        self.assertEqual(sink.events.count("done"), 1)
        self.assertEqual(sink.failures, [])


class UnexpectedBytesTests(ClientTestMixin, SynchronousTestCase):
    """
    Bytes from the upstream that belong to no exchange.
    """

    def test_beforeFirstExchange(self) -> None:
        """
        Bytes on a connection that has not sent a request abort it.
        """
        self.feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.pool.released, [])

    def test_whileIdle(self) -> None:
        """
        Bytes after an exchange ended abort the connection and report nothing.
        """
        sink = self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE)
        events = list(sink.events)
        self.assertFalse(self.transport.disconnected)
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(sink.events, events)
        self.assertEqual(self.pool.released, [self.connection])

    def test_excessBodyInSameChunk(self) -> None:
        """
        Bytes beyond C{Content-Length} in the same chunk abort the connection
        and the exchange is still reported done once.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello")
        self.assertEqual(sink.body, [b"he"])
        self.assertEqual(sink.events, ["started", "body", "done"])
        self.assertTrue(self.transport.disconnected)

    def test_excessNeverReachesNextExchange(self) -> None:
        """
        A response smuggled after the end of a response, in the same chunk,
        never reaches the waiter the pool hands the connection to next.
        """
        # Regression test for a fixed bug
        # (revproxy.proxy.upstream.UpstreamConnection._finish, called from
        # on_message_complete inside parser.feed_data in dataReceived): the
        # connection is released to the pool while the rest of the chunk is
        # still being parsed.  The pool hands it to the next waiter at once,
        # whose send() swaps in its sink and parser; the old parser then
        # parses the excess bytes as a response and reports it (status 0,
        # b"Evil", body b"evil") to the next client: response-queue
        # poisoning.  The excess should abort the connection instead.
        factories: list[ClientFactory] = []

        def connect(key: PoolKey, factory: ClientFactory, timeout: float) -> IConnector:
            factories.append(factory)
            return cast(IConnector, _Connector())

        pool = ConnectionPool(Clock(), connect, maxConnections=1)
        first = _SendingWaiter(GET)
        second = _SendingWaiter(GET)
        pool.acquire(KEY, first, 5.0)
        pool.acquire(KEY, second, 5.0)
        connection = factories[0].buildProtocol(None)
        assert isinstance(connection, UpstreamConnection)
        transport = StringTransport()
        connection.makeConnection(transport)
        self.assertEqual(len(first.sinks), 1)
        connection.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
            b"HTTP/1.1 201 Evil\r\nContent-Length: 4\r\n\r\nevil"
        )
        self.assertEqual(first.sinks[0].body, [b"hi"])
        self.assertEqual(first.sinks[0].events, ["started", "body", "done"])
        for sink in second.sinks:
            self.assertEqual(sink.started, [])
            self.assertEqual(sink.body, [])
            self.assertNotIn("done", sink.events)
        self.assertTrue(transport.disconnected)


class ExchangeSequenceTests(ClientTestMixin, SynchronousTestCase):
    """
    Several exchanges on one connection, and exchanges cut short.
    """

    def test_twoExchanges(self) -> None:
        """
        A released connection carries a second exchange, reported to the
        second sink only, and is released again.
        """
        self.assertFalse(self.connection.reused)
        first = self.exchange(b"GET /1 HTTP/1.1\r\n\r\n")
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        self.assertTrue(self.connection.reused)
        self.transport.clear()
        second = self.exchange(b"GET /2 HTTP/1.1\r\n\r\n")
        self.assertEqual(self.transport.value(), b"GET /2 HTTP/1.1\r\n\r\n")
        self.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
        self.assertEqual(first.started, [(200, b"OK", [(b"Content-Length", b"1")])])
        self.assertEqual(first.body, [b"1"])
        self.assertEqual(first.events, ["started", "body", "done"])
        self.assertEqual(
            second.started, [(404, b"Not Found", [(b"Content-Length", b"2")])]
        )
        self.assertEqual(second.body, [b"no"])
        self.assertEqual(second.events, ["started", "body", "done"])
        self.assertEqual(self.pool.released, [self.connection, self.connection])
        self.assertTrue(self.connection.reused)

    def test_secondExchangeLossBeforeBytes(self) -> None:
        """
        A loss before any byte of the second exchange reports C{gotBytes}
        false even though the first exchange got bytes.
        """
        self.exchange()
        self.feed(CONTENT_LENGTH_RESPONSE)
        sink = self.exchange()
        self.lose(Failure(ConnectionDone()))
        [failure] = sink.failures
        assert isinstance(failure, UpstreamClosed)
        self.assertFalse(failure.gotBytes)
        self.assertTrue(self.connection.reused)

    def test_bodyPendingNotReleased(self) -> None:
        """
        A response that completes while the request body is still being sent
        ends the exchange, but the connection is closed, not released.
        """
        sink = self.exchange()
        self.connection.bodyPending = True
        self.feed(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(sink.events, ["started", "done"])
        self.assertEqual(self.pool.released, [])
        self.assertTrue(self.transport.disconnecting)

    def test_bodySentReleased(self) -> None:
        """
        Once the request body is all sent, a complete response releases the
        connection.
        """
        self.exchange()
        self.connection.bodyPending = True
        self.connection.bodyPending = False
        self.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.pool.released, [self.connection])

    def test_sendResetsBodyPending(self) -> None:
        """
        A new exchange starts with no request body pending.
        """
        self.connection.bodyPending = True
        self.exchange()
        self.assertFalse(self.connection.bodyPending)

    def test_abandon(self) -> None:
        """
        Abandoning an exchange aborts the connection and reports nothing,
        neither for later bytes nor for the loss.
        """
        sink = self.exchange()
        self.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.connection.abandon()
        self.assertTrue(self.transport.disconnected)
        self.feed(b"defghij")
        self.lose(Failure(ConnectionLost()))
        self.assertEqual(sink.events, ["started", "body"])
        self.assertEqual(self.pool.released, [])
        self.assertEqual(self.pool.lost, [self.connection])


class _SocketTransport(StringTransport):
    """
    A string transport over a real socket, as C{getHandle} gives it.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


class _WrappingTransport(StringTransport):
    """
    A transport wrapping another (as TLS wraps TCP): its own handle is not a
    socket.
    """

    def __init__(self, transport: object) -> None:
        super().__init__()
        self.transport = transport

    def getHandle(self) -> object:
        return object()


class VerifiedTests(SynchronousTestCase):
    """
    L{UpstreamConnection.verified}: whether an idle connection may carry a
    request that must not be sent twice.
    """

    def connection(
        self, wrap: bool = False
    ) -> tuple[UpstreamConnection, socket.socket]:
        """
        A connected L{UpstreamConnection} over one end of a socket pair;
        the other end is returned, for the test to play the upstream.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        connection = UpstreamConnection(cast(ConnectionPool, RecordingPool()), KEY)
        transport: StringTransport = _SocketTransport(ours)
        if wrap:
            transport = _WrappingTransport(transport)
        connection.makeConnection(transport)
        return connection, theirs

    def test_quiet(self) -> None:
        """
        Nothing waiting on the socket: verified, and nothing was read.
        """
        connection, theirs = self.connection()
        self.assertTrue(connection.verified())
        theirs.sendall(b"x")
        self.assertFalse(connection.verified())
        # Peeked, not read: the byte is still there for the reactor.
        self.assertFalse(connection.verified())

    def test_peerClosed(self) -> None:
        """
        The upstream's FIN waiting unread: not verified.
        """
        connection, theirs = self.connection()
        theirs.close()
        self.assertFalse(connection.verified())

    def test_peerReset(self) -> None:
        """
        A reset from the upstream: not verified.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        connection = UpstreamConnection(cast(ConnectionPool, RecordingPool()), KEY)
        connection.makeConnection(_SocketTransport(ours))
        ours.shutdown(socket.SHUT_RDWR)
        theirs.close()
        self.assertFalse(connection.verified())

    def test_throughWrapper(self) -> None:
        """
        Under a wrapping transport (TLS over TCP) the socket of the wrapped
        one is looked at.
        """
        connection, theirs = self.connection(wrap=True)
        self.assertTrue(connection.verified())
        theirs.close()
        self.assertFalse(connection.verified())

    def test_disconnected(self) -> None:
        """
        A connection that is no longer connected is not verified.
        """
        connection, _ = self.connection()
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(connection.verified())

    def test_noSocket(self) -> None:
        """
        A connected transport without a socket (a test's) is taken as it
        says.
        """
        connection = UpstreamConnection(cast(ConnectionPool, RecordingPool()), KEY)
        connection.makeConnection(StringTransport())
        self.assertTrue(connection.verified())


class DeadlineTests(SynchronousTestCase):
    """
    L{UpstreamConnection.watch}, C{touch} and C{unwatch}: one timer per
    connection, kept from one exchange to the next.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connection = UpstreamConnection(
            cast(ConnectionPool, RecordingPool()), KEY, self.clock
        )
        self.connection.makeConnection(StringTransport())
        self.timeouts: list[str] = []

    def test_timeout(self) -> None:
        """
        With no L{touch}, the callback runs after the seconds given; each
        touch moves the deadline to that many seconds from then.
        """
        self.connection.watch(10, lambda: self.timeouts.append("a"))
        self.clock.advance(6)
        self.connection.touch()
        self.clock.advance(9.9)
        self.assertEqual(self.timeouts, [])
        self.clock.advance(0.1)
        self.assertEqual(self.timeouts, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unwatchKeepsTimer(self) -> None:
        """
        After L{unwatch} the timer stays, does nothing when it comes due,
        and a later L{watch} makes a new one; while it is pending, a later
        L{watch} moves it instead.
        """
        self.connection.watch(10, lambda: self.timeouts.append("a"))
        self.connection.unwatch()
        [timer] = self.clock.getDelayedCalls()
        self.connection.watch(5, lambda: self.timeouts.append("b"))
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.clock.advance(5)
        self.assertEqual(self.timeouts, ["b"])
        self.connection.watch(10, lambda: self.timeouts.append("c"))
        self.connection.unwatch()
        self.clock.advance(10)
        self.assertEqual(self.timeouts, ["b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.connection.touch()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.connection.watch(1, lambda: self.timeouts.append("d"))
        self.clock.advance(1)
        self.assertEqual(self.timeouts, ["b", "d"])

    def test_lostCancels(self) -> None:
        """
        The timer goes with the connection.
        """
        self.connection.watch(10, lambda: self.timeouts.append("a"))
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.timeouts, [])
