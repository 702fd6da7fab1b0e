"""
Tests for L{revproxy.proxy.http1}: the limits on request heads and
bodies, the slow-client deadlines and the lingering close of
L{HTTP1Connection}, driven in memory through L{FrontEnd.buildProtocol} with
a L{Clock} and a recording handler.
"""

from __future__ import annotations

import attrs
import h2.config
import h2.connection
import h2.events
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol, IPushProducer, ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

from revproxy.config import ServerConfig
from revproxy.proxy.exchange import Exchange
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.http1 import ABORT_TIMEOUT, HTTP1Connection
from revproxy.proxy.limits import DEFAULT_LIMITS, ConnectionLimits

LIMITS = ConnectionLimits(
    max_request_line_bytes=100,
    max_header_bytes=64,
    max_headers_total_bytes=200,
    max_header_fields=5,
    header_timeout_secs=10.0,
    body_timeout_secs=20.0,
    min_body_rate_bytes_per_sec=100,
    keepalive_timeout_secs=30.0,
    max_requests_per_connection=0,
    lingering_close_secs=5.0,
)

BODY_LIMIT = 1000

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def requestLine(length: int, method: bytes = b"GET") -> bytes:
    """
    A request line of exactly C{length} bytes (without its line end).
    """
    fixed = len(method) + len(b" / HTTP/1.1")
    return method + b" /" + b"a" * (length - fixed) + b" HTTP/1.1"


def field(length: int, name: bytes = b"X-Pad") -> bytes:
    """
    A header field line of exactly C{length} bytes (without its line end).
    """
    prefix = name + b": "
    return prefix + b"v" * (length - len(prefix))


class Response:
    """
    One response read back from the bytes a channel wrote.
    """

    def __init__(self, code: int, headers: list[tuple[bytes, bytes]], body: bytes):
        self.code = code
        self.headers = headers
        self.body = body

    def values(self, name: bytes) -> list[bytes]:
        """
        Every value of the header C{name}.
        """
        return [v for n, v in self.headers if n.lower() == name.lower()]


def readResponses(data: bytes, head: bool = False) -> list[Response]:
    """
    Split C{data} into responses framed by Content-Length (no body after an
    interim response, nor when C{head}).
    """
    responses = []
    while data:
        end = data.index(b"\r\n\r\n")
        status, *lines = data[:end].split(b"\r\n")
        code = int(status.split(b" ", 2)[1])
        headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
        lengths = [v for n, v in headers if n.lower() == b"content-length"]
        length = int(lengths[0]) if lengths and code >= 200 and not head else 0
        body = data[end + 4 : end + 4 + length]
        data = data[end + 4 + length :]
        responses.append(Response(code, headers, body))
    return responses


class _Transport(StringTransportWithDisconnection):
    """
    A TCP connection as the channel sees it: it can shut its write side
    down, and it records an abort.
    """

    writeClosed = False
    aborted = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class _Body:
    """
    Collects an exchange's body; tells the recorder when it is whole.
    """

    def __init__(self, recorder: Recorder, exchange: Exchange) -> None:
        self.recorder = recorder
        self.exchange = exchange
        self.data: list[bytes] = []
        self.gone = False

    def bodyReceived(self, data: bytes) -> None:
        self.data.append(data)

    def bodyDone(self) -> None:
        self.recorder.complete(self.exchange, b"".join(self.data))

    def clientGone(self) -> None:
        self.gone = True


class Recorder:
    """
    The handler: applies L{BODY_LIMIT}, records each request whose body is
    whole (C{requests}) and its body, and answers C{ok} then (or holds the
    request, when C{hold}).  C{heads} has every request handed over.
    """

    def __init__(self) -> None:
        self.heads: list[Exchange] = []
        self.requests: list[Exchange] = []
        self.bodies: list[bytes] = []
        self.hold = False
        self.limit: int | None = BODY_LIMIT

    def handle(self, exchange: Exchange) -> None:
        self.heads.append(exchange)
        if exchange.hasBody:
            if not exchange.limitBody(self.limit):
                return
            exchange.attach(_Body(self, exchange))
        else:
            self.complete(exchange, b"")

    def complete(self, exchange: Exchange, body: bytes) -> None:
        self.requests.append(exchange)
        self.bodies.append(body)
        if not self.hold:
            answer(exchange)


def answer(request: Exchange, body: bytes = b"ok\n") -> None:
    """
    Answer C{request} 200 with C{body}.
    """
    request.respond(200, b"OK", [(b"Content-Length", b"%d" % len(body))])
    request.write(body)
    request.finish()


class RecordingSite(FrontEnd):
    """
    A L{FrontEnd} that records its refusals.
    """

    def __init__(self, root: Recorder, clock: Clock, limits: ConnectionLimits):
        super().__init__(root, clock, limits, refused=self._record)
        self.refusals: list[tuple[int, Exchange | None, bool]] = []

    def _record(self, code: int, request: Exchange | None, secure: bool) -> None:
        self.refusals.append((code, request, secure))


class Client:
    """
    One client connection to the site, in memory.
    """

    def __init__(self, site: FrontEnd, transport: _Transport | None = None) -> None:
        address = IPv4Address("TCP", "10.0.0.1", 40000)
        protocol = site.buildProtocol(address)
        assert protocol is not None
        self.protocol: IProtocol = protocol
        self.transport = transport if transport is not None else _Transport()
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} to the channel as if it came from the network.
        """
        self.protocol.dataReceived(data)

    def responses(self, head: bool = False) -> list[Response]:
        """
        Every response written so far.
        """
        return readResponses(self.transport.value(), head)

    @property
    def open(self) -> bool:
        """
        Whether the connection is still open (neither closed nor closing).
        """
        return self.transport.connected and not self.transport.disconnecting

    def close(self) -> None:
        """
        Close the connection from the client's side, if still open.
        """
        if self.transport.connected:
            self.transport.loseConnection()


class ChannelTestCase(SynchronousTestCase):
    """
    A site with L{LIMITS}, a body limit of L{BODY_LIMIT} and a recording
    root resource; every test ends with every connection closed and no
    timer left.
    """

    limits = LIMITS

    def setUp(self) -> None:
        self.clock = Clock()
        self.root = Recorder()
        self.site = RecordingSite(self.root, self.clock, self.limits)
        self.addCleanup(self.assertNoTimers)

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def client(self, transport: _Transport | None = None) -> Client:
        """
        A new client connection, closed at the end of the test.
        """
        client = Client(self.site, transport)
        self.addCleanup(client.close)
        return client

    def assertRefused(self, client: Client, code: int, head: bool = False) -> Response:
        """
        C{client} got exactly one response, a complete early refusal with
        C{code}; the resource saw nothing, the site was told once, and the
        connection is in its lingering close.
        """
        [response] = client.responses(head)
        self.assertEqual(response.code, code)
        self.assertEqual(response.values(b"connection"), [b"close"])
        self.assertEqual(response.values(b"cache-control"), [b"no-store"])
        self.assertEqual(
            response.values(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(len(response.values(b"date")), 1)
        [length] = response.values(b"content-length")
        if not head:
            self.assertEqual(int(length), len(response.body))
            self.assertTrue(response.body.startswith(b"%d " % code), response.body)
            self.assertEqual(response.body.count(b"\n"), 1)
            self.assertTrue(response.body.endswith(b"\n"))
        self.assertEqual(self.root.requests, [])
        self.assertEqual([c for c, _, _ in self.site.refusals], [code])
        self.assertTrue(client.transport.writeClosed)
        return response

    def assertAnswered(self, client: Client, count: int = 1) -> None:
        """
        C{client} got C{count} 200 responses and the resource saw as many
        requests.
        """
        self.assertEqual([r.code for r in client.responses()], [200] * count)
        self.assertEqual(len(self.root.requests), count)
        self.assertEqual(self.site.refusals, [])


class LimitsTests(SynchronousTestCase):
    """
    Tests for L{ConnectionLimits}.
    """

    def test_defaultsAreServerDefaults(self) -> None:
        """
        The defaults are those of C{[server]}.
        """
        self.assertEqual(
            ConnectionLimits(), ConnectionLimits.fromServer(ServerConfig())
        )
        self.assertEqual(DEFAULT_LIMITS, ConnectionLimits())

    def test_fromServer(self) -> None:
        """
        Every field comes from the C{[server]} key of the same name.
        """
        server = ServerConfig(
            max_request_line_bytes=1,
            max_header_bytes=2,
            max_headers_total_bytes=3,
            max_header_fields=4,
            header_timeout_secs=5,
            body_timeout_secs=6,
            min_body_rate_bytes_per_sec=7,
            keepalive_timeout_secs=8,
            send_timeout_secs=9,
            max_requests_per_connection=10,
            lingering_close_secs=11,
        )
        self.assertEqual(
            ConnectionLimits.fromServer(server),
            ConnectionLimits(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
        )

    def test_siteDefaults(self) -> None:
        """
        A front end built without limits has the defaults, a C{refused} that
        does nothing, and serves each connection with an L{HTTP1Connection}.
        """
        site = FrontEnd(Recorder(), Clock())
        self.assertIs(site.limits, DEFAULT_LIMITS)
        site.refused(400, None, False)
        protocol = site.buildProtocol(None)
        self.assertIsInstance(protocol, HTTP1Connection)
        self.assertIs(protocol.factory, site)


class HeadLimitsTests(ChannelTestCase):
    """
    The request line and header fields: at the limit they pass, one byte
    over they are refused.
    """

    def test_requestLineAtLimit(self) -> None:
        """
        A request line of C{max_request_line_bytes} is served.
        """
        client = self.client()
        client.send(requestLine(100) + b"\r\nHost: a\r\n\r\n")
        self.assertAnswered(client)

    def test_requestLineOver(self) -> None:
        """
        A request line one byte longer is answered 414 and never processed.
        """
        client = self.client()
        client.send(requestLine(101) + b"\r\nHost: a\r\n\r\n")
        response = self.assertRefused(client, 414)
        self.assertEqual(
            response.body,
            b"414 URI Too Long: the request line is longer than 100 bytes\n",
        )

    def test_requestLineWithoutEnd(self) -> None:
        """
        A request line that grows past the limit is answered 414 before its
        line end comes.
        """
        client = self.client()
        client.send(b"GET /" + b"a" * 80)
        self.assertEqual(client.transport.value(), b"")
        client.send(b"a" * 20)
        self.assertRefused(client, 414)
        [(_, request, secure)] = self.site.refusals
        assert request is not None
        self.assertEqual(request.uri, b"")
        self.assertFalse(secure)

    def test_fieldAtLimit(self) -> None:
        """
        A header field of C{max_header_bytes} is served.
        """
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + field(64) + b"\r\n\r\n")
        self.assertAnswered(client)

    def test_fieldOver(self) -> None:
        """
        A header field one byte longer is answered 431, and the site is told
        of the request that was refused, as far as it was read.
        """
        client = self.client()
        client.send(b"POST /x?y HTTP/1.1\r\nHost: a\r\n" + field(65) + b"\r\n\r\n")
        response = self.assertRefused(client, 431)
        self.assertEqual(
            response.body,
            b"431 Request Header Fields Too Large: a header field is longer "
            b"than 64 bytes\n",
        )
        [(_, request, _)] = self.site.refusals
        assert request is not None
        self.assertEqual(
            (request.method, request.uri, request.clientproto),
            (b"POST", b"/x?y", b"HTTP/1.1"),
        )
        self.assertEqual(request.refusal, 431)

    def test_fieldWithoutEnd(self) -> None:
        """
        A header field that grows past the limit is answered 431 before its
        line end comes.
        """
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\n" + field(200))
        self.assertRefused(client, 431)

    def test_foldedField(self) -> None:
        """
        A field folded over several lines (obs-fold) is answered 400 (RFC
        9112 section 5.2 lets a server reject it; folding is a classic way
        to make two parsers disagree).
        """
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + field(40) + b"\r\n w\r\n\r\n")
        self.assertRefused(client, 400)

    def test_totalAtLimit(self) -> None:
        """
        Header fields of C{max_headers_total_bytes} in all are served.
        """
        client = self.client()
        fields = [b"Host: ab"] + [field(64, b"X-%d" % i) for i in range(3)]
        self.assertEqual(sum(map(len, fields)), 200)
        client.send(b"GET / HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n")
        self.assertAnswered(client)

    def test_totalOver(self) -> None:
        """
        One byte more in all is answered 431.
        """
        client = self.client()
        fields = [b"Host: abc"] + [field(64, b"X-%d" % i) for i in range(3)]
        client.send(b"GET / HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n")
        response = self.assertRefused(client, 431)
        self.assertIn(b"200 bytes in all", response.body)

    def test_countAtLimit(self) -> None:
        """
        C{max_header_fields} fields are served.
        """
        client = self.client()
        fields = [b"Host: a"] + [b"X-%d: 1" % i for i in range(4)]
        client.send(b"GET / HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n")
        self.assertAnswered(client)

    def test_countOver(self) -> None:
        """
        One field more is answered 431.
        """
        client = self.client()
        fields = [b"Host: a"] + [b"X-%d: 1" % i for i in range(5)]
        client.send(b"GET / HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n")
        response = self.assertRefused(client, 431)
        self.assertIn(b"more than 5 header fields", response.body)

    def test_limitsPerRequest(self) -> None:
        """
        The limits count each request of a kept-alive connection afresh.
        """
        client = self.client()
        fields = [b"Host: ab"] + [field(64, b"X-%d" % i) for i in range(3)]
        request = b"GET / HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n"
        client.send(request * 3)
        self.assertAnswered(client, 3)

    def test_headRefusalHasNoBody(self) -> None:
        """
        The refusal of a HEAD request has no body, but its Content-Length.
        """
        client = self.client()
        client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n" + field(65) + b"\r\n\r\n")
        response = self.assertRefused(client, 431, head=True)
        self.assertTrue(client.transport.value().endswith(b"\r\n\r\n"))
        self.assertEqual(response.body, b"")


class MalformedTests(ChannelTestCase):
    """
    Twisted's own checks still answer 400, now a whole response with a
    lingering close.
    """

    def check(self, data: bytes) -> None:
        client = self.client()
        client.send(data)
        response = self.assertRefused(client, 400)
        self.assertEqual(response.body, b"400 Bad Request: the request is malformed\n")

    def test_badRequestLine(self) -> None:
        """
        A request line that is not one; the site is told of a request
        with no method, target or version.
        """
        self.check(b"NONSENSE\r\n\r\n")
        [(_, request, _)] = self.site.refusals
        assert request is not None
        self.assertEqual((request.method, request.uri, request.clientproto), (b"",) * 3)

    def test_contentLengthAndTransferEncoding(self) -> None:
        """
        A Content-Length beside a Transfer-Encoding.
        """
        self.check(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )

    def test_badContentLength(self) -> None:
        """
        A Content-Length that is not a number.
        """
        self.check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n12345")

    def test_nulInValue(self) -> None:
        """
        A NUL in a header value.
        """
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n")

    def test_badHeaderNotLast(self) -> None:
        """
        A malformed field followed by more fields: Twisted notices it one
        line late, and nothing after it is parsed.
        """
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\nX-A: 1\r\n\r\n")

    def test_badChunk(self) -> None:
        """
        A malformed chunked body.
        """
        self.check(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n"
        )


class LingeringCloseTests(ChannelTestCase):
    """
    After an early refusal: stop parsing, answer, shut the write side down,
    drop what comes, and abort at the deadline.
    """

    def refuse(self, client: Client) -> None:
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + field(65) + b"\r\n")

    def test_readsAndDrops(self) -> None:
        """
        What the client sends after the refusal is read and dropped: no
        second answer, nothing processed, the connection still open.
        """
        client = self.client()
        self.refuse(client)
        written = client.transport.value()
        client.send(b"\r\n" + GET * 10)
        client.send(b"x" * 100000)
        self.assertEqual(client.transport.value(), written)
        self.assertTrue(client.transport.connected)
        self.assertFalse(client.transport.aborted)
        self.assertEqual(self.root.requests, [])
        self.assertEqual(len(self.site.refusals), 1)

    def test_deadlineAborts(self) -> None:
        """
        A client still there after C{lingering_close_secs} is aborted.
        """
        client = self.client()
        self.refuse(client)
        self.clock.advance(4.9)
        client.send(b"more")
        self.assertTrue(client.transport.connected)
        self.clock.advance(0.1)
        self.assertTrue(client.transport.aborted)
        self.assertFalse(client.transport.connected)

    def test_clientLeaves(self) -> None:
        """
        A client that closes its side ends it, and no timer is left.
        """
        client = self.client()
        self.refuse(client)
        client.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(client.transport.aborted)

    def test_noLingering(self) -> None:
        """
        With C{lingering_close_secs = 0} the connection is closed at once.
        """
        self.site.limits = ConnectionLimits(max_header_bytes=64, lingering_close_secs=0)
        client = self.client()
        self.refuse(client)
        self.assertFalse(client.transport.writeClosed)
        self.assertFalse(client.transport.connected)
        self.assertFalse(client.transport.aborted)
        self.assertEqual(client.responses()[0].code, 431)

    def test_noHalfClose(self) -> None:
        """
        A transport that cannot shut only its write side is closed, and
        what it still delivers is dropped.
        """
        transport = StringTransport()
        client = self.client(transport)  # type: ignore[arg-type]
        self.refuse(client)
        self.assertTrue(transport.disconnecting)
        client.send(GET)
        self.assertEqual(len(client.responses()), 1)
        self.clock.advance(5)
        self.assertTrue(transport.disconnected)
        client.protocol.connectionLost(None)  # type: ignore[arg-type]

    def test_overTLS(self) -> None:
        """
        Over TLS the TCP write side is not shut (that would cut the TLS
        stream): the TLS layer is closed (its close_notify), reading goes on
        and the deadline still applies.
        """
        transport = _Transport()
        directlyProvides(transport, ISSLTransport)
        transport.connected = True
        client = self.client(transport)
        lost: list[bool] = []
        transport.loseConnection = lambda: lost.append(True)  # type: ignore[method-assign]
        self.refuse(client)
        self.assertEqual(lost, [True])
        self.assertFalse(transport.writeClosed)
        [(code, _, secure)] = self.site.refusals
        self.assertEqual(code, 431)
        self.assertTrue(secure)
        client.send(GET)
        self.assertEqual(len(client.responses()), 1)
        self.clock.advance(5)
        self.assertTrue(transport.aborted)
        client.protocol.connectionLost(None)  # type: ignore[arg-type]

    def test_refusedOnce(self) -> None:
        """
        A refusal during a lingering close (a timer, a bad chunk) changes
        nothing: the site is told once.
        """
        client = self.client()
        self.refuse(client)
        channel = client.protocol
        assert isinstance(channel, HTTP1Connection)
        channel.refuse(None, 408, "late")
        channel.refuse(None, 400, "the request is malformed")
        self.assertEqual(len(client.responses()), 1)
        self.assertEqual(len(self.site.refusals), 1)

    def test_refusedHookFails(self) -> None:
        """
        A failing C{refused} is logged; the refusal goes on.
        """

        def refused(code: int, request: object, secure: bool) -> None:
            raise RuntimeError("metrics down")

        self.site.refused = refused
        client = self.client()
        self.refuse(client)
        self.assertEqual(client.responses()[0].code, 431)
        self.assertTrue(client.transport.writeClosed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HeadDeadlineTests(ChannelTestCase):
    """
    The request head must be whole C{header_timeout_secs} after the
    connection opened or the request began.
    """

    def test_trickledHead(self) -> None:
        """
        A head trickled one byte a second is answered 408 ten seconds after
        the connection opened, however many bytes came.
        """
        client = self.client()
        for byte in GET[:9]:
            client.send(bytes([byte]))
            self.clock.advance(1)
        self.assertEqual(client.transport.value(), b"")
        client.send(GET[9:10])
        self.clock.advance(1)
        response = self.assertRefused(client, 408)
        self.assertEqual(
            response.body,
            b"408 Request Timeout: the request head did not arrive within 10 s\n",
        )
        self.assertEqual(self.clock.seconds(), 10)

    def test_trickledHeadWithRequestLine(self) -> None:
        """
        Once the request line is in, the site is told of its request.
        """
        client = self.client()
        client.send(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-A: ")
        self.clock.advance(10)
        self.assertRefused(client, 408)
        [(_, request, _)] = self.site.refusals
        assert request is not None
        self.assertEqual(request.uri, b"/slow")

    def test_headInTime(self) -> None:
        """
        A head whole just before the deadline is served, and the deadline is
        gone while the request is with the resource.
        """
        self.root.hold = True
        client = self.client()
        client.send(GET[:-1])
        self.clock.advance(9.9)
        client.send(GET[-1:])
        [request] = self.root.requests
        self.clock.advance(1000)
        self.assertTrue(client.open)
        answer(request)
        self.assertAnswered(client)

    def test_oneTimer(self) -> None:
        """
        A connection has one timer at most, the same one from request to
        request; while its request is with the handler, the timer firing
        changes nothing.
        """
        self.root.hold = True
        client = self.client()
        [timer] = self.clock.getDelayedCalls()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        client.send(b"abc")
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.clock.advance(LIMITS.body_timeout_secs)
        self.assertTrue(client.open)
        self.assertEqual(client.responses(), [])
        answer(self.root.requests[0])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        [timer] = self.clock.getDelayedCalls()
        client.send(b"GET")
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        client.send(b" / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer(self.root.requests[1])
        self.assertEqual(self.clock.getDelayedCalls(), [timer])

    def test_silentConnection(self) -> None:
        """
        A new connection that sent nothing is closed quietly at the
        deadline: no answer, no refusal.
        """
        client = self.client()
        self.clock.advance(9.9)
        self.assertTrue(client.open)
        self.clock.advance(0.1)
        self.assertFalse(client.transport.connected)
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(self.site.refusals, [])

    def test_emptyLinesOnly(self) -> None:
        """
        The one empty line Twisted tolerates before a request is no request.
        """
        client = self.client()
        client.send(b"\r\n")
        self.clock.advance(10)
        self.assertFalse(client.transport.connected)
        self.assertEqual(client.transport.value(), b"")

    def test_keptAliveHeadFromFirstByte(self) -> None:
        """
        On a kept-alive connection the head deadline counts from the next
        request's first byte, not from the previous response.
        """
        client = self.client()
        client.send(GET)
        self.clock.advance(25)
        client.send(b"G")
        self.clock.advance(9.9)
        self.assertEqual(len(client.responses()), 1)
        self.clock.advance(0.1)
        self.assertEqual([r.code for r in client.responses()], [200, 408])
        self.assertEqual([c for c, _, _ in self.site.refusals], [408])

    def test_pipelinedHeadDeadline(self) -> None:
        """
        The start of a pipelined request that came with the previous one
        starts its head deadline when the previous response ends.
        """
        client = self.client()
        client.send(GET + b"GET / HT")
        self.clock.advance(10)
        self.assertEqual([r.code for r in client.responses()], [200, 408])

    def test_pipelinedAfterHeldRequest(self) -> None:
        """
        Requests pipelined behind one the resource holds are served in turn
        once it is answered.
        """
        self.root.hold = True
        client = self.client()
        client.send(GET * 3)
        self.clock.advance(100)
        [first] = self.root.requests
        self.root.hold = False
        answer(first)
        self.assertAnswered(client, 3)


class KeepAliveTests(ChannelTestCase):
    """
    Idle kept-alive connections, and the cap on requests per connection.
    """

    def test_idleClosed(self) -> None:
        """
        No byte of a new request for C{keepalive_timeout_secs} after a
        response ended closes the connection quietly.
        """
        client = self.client()
        client.send(GET)
        self.clock.advance(29.9)
        self.assertTrue(client.open)
        self.clock.advance(0.1)
        self.assertFalse(client.transport.connected)
        self.assertAnswered(client)

    def test_idleAfterHeldResponse(self) -> None:
        """
        The keep-alive deadline counts from the end of the response, however
        long it took.
        """
        self.root.hold = True
        client = self.client()
        client.send(GET)
        self.clock.advance(100)
        answer(self.root.requests[0])
        self.clock.advance(29.9)
        self.assertTrue(client.open)
        client.send(GET)
        self.assertEqual(len(self.root.requests), 2)

    def test_maxRequests(self) -> None:
        """
        The response to the last request a connection may make says
        C{Connection: close} and the connection closes after it; the ones
        before do not.
        """
        self.site.limits = ConnectionLimits(max_requests_per_connection=3)
        client = self.client()
        client.send(GET * 2)
        self.assertTrue(client.open)
        client.send(GET)
        responses = client.responses()
        self.assertEqual([r.code for r in responses], [200] * 3)
        self.assertEqual(
            [r.values(b"connection") for r in responses], [[], [], [b"close"]]
        )
        self.assertFalse(client.transport.connected)

    def test_noCap(self) -> None:
        """
        With C{max_requests_per_connection = 0} there is no cap.
        """
        client = self.client()
        client.send(GET * 50)
        self.assertAnswered(client, 50)
        self.assertTrue(client.open)

    def test_closingConnectionAborted(self) -> None:
        """
        A connection closing after its last response is aborted if it has
        not gone after Twisted's C{abortTimeout}.
        """
        transport = StringTransport()
        client = self.client(transport)  # type: ignore[arg-type]
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(ABORT_TIMEOUT)
        self.assertTrue(transport.disconnected)
        client.protocol.connectionLost(None)  # type: ignore[arg-type]


class BodyTests(ChannelTestCase):
    """
    The body limit, the body idle deadline and the minimum body rate.
    """

    def test_contentLengthAtLimit(self) -> None:
        """
        A body of exactly the limit is served whole.
        """
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        client.send(b"b" * 1000)
        self.assertAnswered(client)
        self.assertEqual(self.root.bodies, [b"b" * 1000])

    def test_contentLengthOver(self) -> None:
        """
        A Content-Length one byte over the limit is answered 413 when the
        head ends, before any body byte.
        """
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
        response = self.assertRefused(client, 413)
        self.assertEqual(
            response.body,
            b"413 Content Too Large: the request body is larger than 1000 bytes\n",
        )
        client.send(b"b" * 1001)
        self.assertEqual(len(client.responses()), 1)

    def test_contentLengthOverWithExpect(self) -> None:
        """
        A client that waits for C{100 Continue} gets the 413 instead.
        """
        client = self.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5000\r\n\r\n"
        )
        self.assertRefused(client, 413)
        self.assertNotIn(b"100 Continue", client.transport.value())

    def test_expectWithinLimit(self) -> None:
        """
        A body within the limit is still invited with C{100 Continue}.
        """
        client = self.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 10\r\n\r\n"
        )
        self.assertEqual(client.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        client.send(b"0123456789")
        self.assertEqual([r.code for r in client.responses()], [100, 200])

    def test_noLimit(self) -> None:
        """
        A site whose limit is L{None} takes any body; it is asked with the
        request's method and target known.
        """
        self.root.limit = None
        client = self.client()
        client.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        client.send(b"b" * 5000)
        self.assertAnswered(client)
        self.assertEqual(self.root.bodies, [b"b" * 5000])

    def test_noBodyNoLimitAsked(self) -> None:
        """
        A request without a body has none to limit.
        """
        client = self.client()
        client.send(GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertAnswered(client, 2)

    def chunked(self, client: Client) -> None:
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")

    def test_chunkedAtLimit(self) -> None:
        """
        A chunked body of exactly the limit is served whole.
        """
        client = self.client()
        self.chunked(client)
        client.send(b"1f4\r\n" + b"c" * 500 + b"\r\n")
        client.send(b"1f4\r\n" + b"c" * 500 + b"\r\n0\r\n\r\n")
        self.assertAnswered(client)
        self.assertEqual(self.root.bodies, [b"c" * 1000])

    def test_chunkedOver(self) -> None:
        """
        A chunked body is answered 413 as soon as its count passes the
        limit, before it ends.
        """
        client = self.client()
        self.chunked(client)
        client.send(b"3e8\r\n" + b"c" * 1000 + b"\r\n")
        self.assertEqual(client.transport.value(), b"")
        client.send(b"1\r\nc")
        self.assertRefused(client, 413)
        client.send(b"\r\n0\r\n\r\n" + GET)
        self.assertEqual(len(client.responses()), 1)

    def test_chunkedOverInOneRead(self) -> None:
        """
        A whole chunked body over the limit, in one read with the next
        request, is refused and neither is processed.
        """
        client = self.client()
        self.chunked(client)
        client.send(b"3e8\r\n" + b"c" * 1000 + b"\r\n2\r\ncc\r\n0\r\n\r\n" + GET)
        self.assertRefused(client, 413)

    def test_bodyIdle(self) -> None:
        """
        No body byte for C{body_timeout_secs} is answered 408.
        """
        self.site.limits = ConnectionLimits(
            body_timeout_secs=20, min_body_rate_bytes_per_sec=0
        )
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        self.clock.advance(15)
        client.send(b"b" * 10)
        self.clock.advance(19.9)
        self.assertEqual(client.transport.value(), b"")
        self.clock.advance(0.1)
        response = self.assertRefused(client, 408)
        self.assertEqual(
            response.body,
            b"408 Request Timeout: no byte of the request body came for 20 s\n",
        )

    def test_bodySlow(self) -> None:
        """
        A body that came slower than the minimum on average is answered 408
        once C{body_timeout_secs} have passed since it began.
        """
        self.root.limit = None
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(19):
            self.clock.advance(1)
            client.send(b"b" * 90)
        self.clock.advance(1)
        response = self.assertRefused(client, 408)
        self.assertEqual(
            response.body,
            b"408 Request Timeout: the request body came slower than 100 bytes/s\n",
        )
        self.assertEqual(self.clock.seconds(), 20)

    def test_bodySlowLater(self) -> None:
        """
        A body whose average falls below the minimum later on is answered
        408 then.
        """
        self.root.limit = None
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        client.send(b"b" * 3000)
        for _ in range(30):
            self.clock.advance(1)
            self.assertEqual(client.transport.value(), b"")
            client.send(b"b")
        # 3030 bytes: the average falls below 100 bytes/s at about 30.3 s.
        self.clock.advance(1)
        self.assertRefused(client, 408)
        self.assertLess(self.clock.seconds(), 32)

    def test_bodyFastEnough(self) -> None:
        """
        A long body at more than the minimum rate is served.
        """
        self.root.limit = None
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13200\r\n\r\n")
        for _ in range(120):
            self.clock.advance(1)
            client.send(b"b" * 110)
        self.assertAnswered(client)

    def test_bodyRateOff(self) -> None:
        """
        With C{min_body_rate_bytes_per_sec = 0} only the idle deadline
        applies.
        """
        self.site.limits = ConnectionLimits(min_body_rate_bytes_per_sec=0)
        client = self.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        for _ in range(9):
            self.clock.advance(59)
            client.send(b"b")
        self.clock.advance(59)
        client.send(b"b")
        self.assertAnswered(client)


class TLSServerNameTests(ChannelTestCase):
    """
    L{Exchange.serverName}: the SNI name the TLS layer recorded on
    the connection, found from an HTTP/1.1 request and from an HTTP/2
    stream's request.
    """

    def test_http1(self) -> None:
        """
        Every request of an HTTP/1.1 connection finds its connection's
        name; a connection without one (plain HTTP, or TLS without SNI)
        gives L{None}.
        """
        self.root.hold = True
        transport = _Transport()
        directlyProvides(transport, ISSLTransport)
        transport.serverName = "a.example"  # type: ignore[attr-defined]
        client = self.client(transport)
        names = []
        for _ in range(2):
            client.send(GET)
            request = self.root.requests[-1]
            names.append(request.serverName)
            answer(request)
        self.assertEqual(names, ["a.example"] * 2)
        self.assertAnswered(client, 2)
        plain = self.client()
        plain.send(GET)
        request = self.root.requests[-1]
        self.assertIsNone(request.serverName)
        answer(request)


@implementer(IPushProducer)
class _Producer:
    """
    A response producer (an upstream connection, to the client side).
    """

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


class SendTimeoutTests(ChannelTestCase):
    """
    C{send_timeout_secs}: a client that takes no byte of a response for
    that long is cut; one that drains in time is not.  The response's
    producer follows the client's pace.
    """

    limits = attrs.evolve(LIMITS, send_timeout_secs=40.0)

    def start(self) -> tuple[Client, Exchange, _Producer]:
        self.root.hold = True
        client = self.client()
        client.send(GET)
        [exchange] = self.root.requests
        exchange.respond(200, b"OK", [(b"Content-Length", b"100")])
        producer = _Producer()
        exchange.registerProducer(producer)
        exchange.write(b"x" * 100)
        return client, exchange, producer

    def test_stalledClientCut(self) -> None:
        """
        A client whose connection stays full (its transport paused the
        connection) for C{send_timeout_secs} is aborted, and the exchange
        told the client is gone.
        """
        client, exchange, producer = self.start()
        client.transport.producer.pauseProducing()  # type: ignore[union-attr]
        self.assertEqual(producer.paused, 1)
        self.clock.advance(39.9)
        self.assertFalse(client.transport.aborted)
        self.clock.advance(0.1)
        self.assertTrue(client.transport.aborted)
        client.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertTrue(exchange.clientLeft)

    def test_drainingClientKept(self) -> None:
        """
        A client that drains before the deadline is not cut, and the
        producer is resumed; the deadline starts again at the next stall.
        """
        client, exchange, producer = self.start()
        transportProducer = client.transport.producer
        assert transportProducer is not None
        transportProducer.pauseProducing()
        self.clock.advance(30)
        transportProducer.resumeProducing()
        self.assertEqual(producer.resumed, 1)
        transportProducer.pauseProducing()
        self.clock.advance(30)
        self.assertFalse(client.transport.aborted)
        transportProducer.resumeProducing()
        exchange.unregisterProducer()
        exchange.finish()
        self.assertEqual([r.code for r in client.responses()], [200])

    def test_producerPausedAtOnce(self) -> None:
        """
        A producer registered while the client takes nothing is paused at
        once.
        """
        self.root.hold = True
        client = self.client()
        client.send(GET)
        [exchange] = self.root.requests
        client.transport.producer.pauseProducing()  # type: ignore[union-attr]
        producer = _Producer()
        exchange.respond(200, b"OK", [(b"Content-Length", b"0")])
        exchange.registerProducer(producer)
        self.assertEqual(producer.paused, 1)
        client.transport.producer.resumeProducing()  # type: ignore[union-attr]
        self.assertEqual(producer.resumed, 1)
        exchange.finish()


class PipeliningTests(ChannelTestCase):
    """
    Pipelined requests: answered in order, one at a time, with what is
    read ahead bounded.
    """

    def test_inOrder(self) -> None:
        """
        Requests sent together are handed over one at a time, each once the
        previous response ended, and answered in order.
        """
        self.root.hold = True
        client = self.client()
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
            b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual([e.uri for e in self.root.heads], [b"/1"])
        answer(self.root.requests[0], b"one")
        self.assertEqual([e.uri for e in self.root.heads], [b"/1", b"/2"])
        self.assertEqual(self.root.bodies[1], b"hi")
        answer(self.root.requests[1], b"two")
        answer(self.root.requests[2], b"three")
        self.assertEqual(
            [r.body for r in client.responses()], [b"one", b"two", b"three"]
        )

    def test_aheadBounded(self) -> None:
        """
        While a request is in flight, what comes is kept unparsed and
        reading pauses past 64 KiB; it resumes and is parsed once the
        response ends.
        """
        self.root.hold = True
        client = self.client()
        client.send(GET)
        self.assertEqual(client.transport.producerState, "producing")
        client.send(GET * 3000)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(len(self.root.heads), 1)
        answer(self.root.requests[0])
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(len(self.root.heads), 2)

    def test_manyInOneRead(self) -> None:
        """
        A read holding many requests is parsed in slices: no more than a
        bounded number wait parsed, the rest unparsed; all are answered in
        order.
        """
        client = self.client()
        self.root.hold = True
        requests = b"".join(
            b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(2000)
        )
        client.send(requests)
        protocol = client.protocol
        assert isinstance(protocol, HTTP1Connection)
        self.assertLessEqual(len(protocol._queue), 16 + 16 * 1024 // 26)
        self.root.hold = False
        while len(self.root.requests) < 2000:
            before = len(self.root.requests)
            answer(self.root.requests[-1])
            self.assertGreater(len(self.root.requests), before)
        self.assertEqual([e.uri for e in self.root.requests[:3]], [b"/0", b"/1", b"/2"])
        self.assertEqual(len(client.responses()), 2000)


class ExpectTests(ChannelTestCase):
    """
    C{Expect: 100-continue}.
    """

    def test_notForRefusedBody(self) -> None:
        """
        A body refused from its Content-Length gets no C{100 Continue},
        only the 413.
        """
        client = self.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5000\r\n\r\n"
        )
        self.assertNotIn(b"100 Continue", client.transport.value())
        self.assertEqual([r.code for r in client.responses()], [413])

    def test_onlyHTTP11(self) -> None:
        """
        An HTTP/1.0 request's C{Expect} gets no interim answer.
        """
        client = self.client()
        client.send(
            b"POST / HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\n\r\n"
        )
        self.assertEqual(client.transport.value(), b"")
        client.send(b"hi")
        self.assertEqual([r.code for r in client.responses()], [200])


class HTTP2SwitchTests(ChannelTestCase):
    """
    A connection whose TLS handshake chose C{h2} is handed to
    L{HTTP2Connection}.
    """

    def test_switch(self) -> None:
        """
        The HTTP/2 connection serves the requests; the HTTP/1.1 deadline no
        longer applies and every later byte and the end go to it.
        """
        from revproxy.proxy.http2 import HTTP2Connection

        transport = _Transport()
        directlyProvides(transport, ISSLTransport)
        transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
        client = self.client(transport)
        h2client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        h2client.initiate_connection()
        h2client.send_headers(
            1,
            [
                (b":method", b"GET"),
                (b":path", b"/"),
                (b":scheme", b"https"),
                (b":authority", b"a"),
            ],
            end_stream=True,
        )
        client.send(h2client.data_to_send())
        protocol = client.protocol
        assert isinstance(protocol, HTTP1Connection)
        self.assertIsInstance(protocol._h2, HTTP2Connection)
        self.assertIs(transport.producer, protocol._h2)
        self.assertEqual(len(self.root.requests), 1)
        self.assertEqual(self.root.requests[0].clientproto, b"HTTP/2")
        events = h2client.receive_data(transport.value())
        self.assertTrue(
            any(isinstance(e, h2.events.ResponseReceived) for e in events), events
        )
        self.assertTrue(protocol.busy() is False)
        client.close()
