"""
Issue #13: "any request split into arbitrary chunks produces the same bytes
upstream as the unsplit request".  Property tests, end to end through the
real front end (L{FrontEnd}, L{HTTP1Connection} or L{HTTP2Connection}, the
router, the forwarder and its pool) with fake upstreams: the same bytes
delivered in one read or in any number of reads (down to one byte each)
give every upstream connection exactly the same bytes, and the client
exactly the same answers.

Each request carries an C{X-Request-ID} from a trusted proxy address
(L{TRUSTED_IP}), so that it is kept rather than made up at random.  All of
a client's bytes come before any upstream connection is accepted, so that
a body's framing upstream (a Content-Length when the whole body is in
before the connection is ready, else chunked) does not depend on timing.
"""

from __future__ import annotations

import itertools
import string
from typing import Any

import h2.config
import h2.connection
import h2.events
import httptools
from attrs import frozen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from revproxy.proxy.http2 import HTTP2Connection
from tests.test_forwarder import (
    BASE_CONFIG,
    HSTS_CONFIG,
    TRUSTED_IP,
    ProxyHarness,
    writeCertificate,
)
from tests.tlshelpers import TLSTransport

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD"]
_PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%"
_NAME_CHARS = string.ascii_lowercase + string.digits + "-"
_VALUE_CHARS = (
    string.ascii_letters + string.digits + " \t!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~"
)


@frozen
class Request:
    """
    One generated request: its bytes as a client sends them over HTTP/1.1,
    and its parts for HTTP/2.
    """

    method: bytes
    path: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes
    wire: bytes
    #: Where the body's framing starts in L{wire}.
    headSize: int = 0


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    """
    An origin-form target, maybe with a query.
    """
    path = "/" + draw(st.text(_PATH_CHARS, max_size=16))
    if draw(st.booleans()):
        path += "?" + draw(st.text(_PATH_CHARS + "?", max_size=12))
    return path.encode("ascii")


@st.composite
def fields(draw: st.DrawFn) -> tuple[tuple[bytes, bytes], ...]:
    """
    A handful of end-to-end fields: names that no proxy rewrites, values
    with inner spaces and tabs (not at their ends: HTTP/1.1 strips those).
    """
    count = draw(st.integers(0, 5))
    out = []
    for index in range(count):
        name = f"x-t{index}-" + draw(st.text(_NAME_CHARS, min_size=1, max_size=8))
        value = draw(st.text(_VALUE_CHARS, max_size=20)).strip(" \t")
        out.append((name.encode("ascii"), value.encode("ascii")))
    return tuple(out)


@st.composite
def chunks(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """
    C{body} cut into pieces (no empty ones) at random points.
    """
    if not body:
        return []
    cuts = draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=8))
    points = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def requests(draw: st.DrawFn, index: int) -> Request:
    """
    One HTTP/1.1 request to site C{a}, numbered C{index} on its
    connection: no body, a body framed by Content-Length, or a chunked
    body with random chunk sizes (maybe with chunk extensions, uppercase
    hexadecimal and trailers).
    """
    method = draw(st.sampled_from(METHODS))
    path = draw(paths())
    extra = draw(fields())
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=300))
    head = [
        method + b" " + path + b" HTTP/1.1\r\n",
        b"Host: a.example\r\n",
        b"X-Request-ID: req-%d\r\n" % index,
    ]
    head += [name + b": " + value + b"\r\n" for name, value in extra]
    if framing == "length":
        head.append(b"Content-Length: %d\r\n" % len(body))
        wire = b"".join(head) + b"\r\n" + body
        headSize = len(wire) - len(body)
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked\r\n")
        framed = []
        for piece in draw(chunks(body)):
            size = b"%x" % len(piece)
            if draw(st.booleans()):
                size = size.upper()
            if draw(st.integers(0, 4)) == 0:
                size += b";ext=1"
            framed.append(size + b"\r\n" + piece + b"\r\n")
        framed.append(b"0\r\n")
        if draw(st.integers(0, 4)) == 0:
            framed.append(b"X-Trailer: t\r\n")
        framed.append(b"\r\n")
        wire = b"".join(head) + b"\r\n" + b"".join(framed)
        headSize = len(wire) - sum(map(len, framed))
    else:
        wire = b"".join(head) + b"\r\n"
        headSize = len(wire)
    return Request(method, path, extra, body, wire, headSize)


@st.composite
def pipelines(draw: st.DrawFn) -> list[Request]:
    """
    One to three requests sent back to back on one connection.
    """
    count = draw(st.sampled_from([1, 2, 2, 3, 3]))
    return [draw(requests(index)) for index in range(count)]


@st.composite
def splits(draw: st.DrawFn, size: int, body: int = 0) -> list[int]:
    """
    Where to cut C{size} bytes into reads: every byte on its own, one cut
    in the body of the last request (whose framing starts at C{body}, if
    not 0), or random points, few or many.
    """
    if size < 2:
        return []
    mode = draw(st.integers(0, 6))
    if mode == 0:
        return list(range(1, size))
    if mode <= 2 and 0 < body < size:
        # One read holds the requests before the last one, the last one's
        # head and maybe part of its body, the next read the rest: what
        # pipelining must get right when a request waits for its turn.
        return [draw(st.integers(body, size - 1))]
    most = 2 if mode < 4 else 12
    cuts = draw(st.lists(st.integers(1, size - 1), min_size=1, max_size=most))
    return sorted(set(cuts))


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """
    C{data} cut at C{points}.
    """
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class _Counter:
    """
    httptools callbacks counting whole requests.
    """

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def completeRequests(data: bytes) -> int:
    """
    How many whole requests C{data} (what an upstream received) holds.
    """
    counter = _Counter()
    parser = httptools.HttpRequestParser(counter)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return counter.complete


def serveUpstreams(proxy: ProxyHarness, heads: list[bool]) -> int:
    """
    Accept every upstream connection asked for and answer every whole
    request on it, until nothing more comes: the answer to the C{n}th
    request answered is C{resp-n} (no body for a C{HEAD}, C{heads[n]}).

    @return: How many requests were answered.
    """
    answered: dict[int, int] = {}
    total = 0
    for _ in range(20):
        moved = False
        for index in range(len(proxy.reactor.tcpClients)):
            upstream = proxy.upstream(index)
            if upstream.protocol is None:
                upstream.accept()
                moved = True
            if not upstream.transport.connected:
                continue
            done = completeRequests(upstream.transport.value())
            while answered.get(index, 0) < done:
                answered[index] = answered.get(index, 0) + 1
                body = b"resp-%d" % total
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                isHead = total < len(heads) and heads[total]
                total += 1
                upstream.respond(head if isHead else head + body)
                moved = True
        if not moved:
            break
    return total


@frozen
class Outcome:
    """
    What came of one connection's bytes: what every upstream connection
    received, in order, and what the client received.
    """

    upstreams: tuple[bytes, ...]
    client: bytes
    open: bool
    answered: int


class HTTP1SplittingTests(SynchronousTestCase):
    """
    HTTP/1.1: a connection's bytes read in any pieces give the same result
    as read at once.
    """

    def run1(self, data: bytes, points: list[int], heads: list[bool]) -> Outcome:
        """
        Send C{data} cut at C{points} from L{TRUSTED_IP} to a new proxy, then
        serve the upstreams.
        """
        proxy = ProxyHarness(self, BASE_CONFIG)
        client = proxy.client(ip=TRUSTED_IP)
        for piece in cut(data, points):
            client.send(piece)
        answered = serveUpstreams(proxy, heads)
        upstreams = tuple(
            proxy.upstream(index).transport.value()
            for index in range(len(proxy.reactor.tcpClients))
        )
        return Outcome(
            upstreams, client.transport.value(), client.transport.connected, answered
        )

    @SETTINGS
    @given(st.data())
    def test_splitAnywhere(self, data: st.DataObject) -> None:
        """
        One to three pipelined requests, each with or without a body
        (Content-Length, or chunked with random chunk sizes), read in one
        piece or in arbitrary pieces (down to single bytes): every upstream
        connection receives exactly the same bytes, the client exactly the
        same answers, and every request is answered.
        """
        pipeline = data.draw(pipelines(), label="requests")
        wire = b"".join(request.wire for request in pipeline)
        heads = [request.method == b"HEAD" for request in pipeline]
        final = pipeline[-1]
        body = len(wire) - len(final.wire) + final.headSize
        points = data.draw(splits(len(wire), body), label="cuts")
        whole = self.run1(wire, [], heads)
        self.assertEqual(whole.answered, len(pipeline), whole)
        self.assertEqual(whole.client.count(b"HTTP/1.1 200 OK\r\n"), len(pipeline))
        self.assertTrue(whole.open)
        split = self.run1(wire, points, heads)
        self.assertEqual(
            split,
            whole,
            f"\nreads: {cut(wire, points)!r}\nsplit: {split!r}\nwhole: {whole!r}",
        )

    def test_pipelinedBodyInLaterRead(self) -> None:
        """
        The smallest case the property found: two pipelined requests, the
        first read holding the first one whole and the second one's head
        and part of its body, the next read the rest of that body.  Read
        at once, both are answered; split so, the second one's body must
        still reach the upstream whole and the second one be answered.
        """
        first = b"GET /1 HTTP/1.1\r\nHost: a.example\r\nX-Request-ID: req-0\r\n\r\n"
        second = (
            b"POST /2 HTTP/1.1\r\nHost: a.example\r\nX-Request-ID: req-1\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        wire = first + second
        whole = self.run1(wire, [], [False, False])
        self.assertEqual(whole.answered, 2)
        split = self.run1(wire, [len(wire) - 3], [False, False])
        self.assertEqual(split.upstreams, whole.upstreams)
        self.assertEqual(split.answered, 2)
        self.assertEqual(split.client, whole.client)


def h2Head(request: Request, contentLength: bool) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 head of C{request} for site C{hsts} (a POST or PUT: HTTP/2
    carries a body on any method, and these two always have one).
    """
    headers = [
        (b":method", request.method),
        (b":scheme", b"https"),
        (b":path", request.path),
        (b":authority", b"hsts.example"),
        (b"x-request-id", b"req-h2"),
    ]
    headers += list(request.fields)
    if contentLength:
        headers.append((b"content-length", b"%d" % len(request.body)))
    return headers


@st.composite
def h2Requests(draw: st.DrawFn) -> tuple[Request, bool, list[bytes]]:
    """
    A POST or PUT with a body, maybe with content-length, and its body cut
    into DATA frames (maybe empty ones).
    """
    method = draw(st.sampled_from([b"POST", b"PUT"]))
    body = draw(st.binary(min_size=1, max_size=2000))
    frames = draw(chunks(body))
    if draw(st.integers(0, 3)) == 0:
        frames.insert(draw(st.integers(0, len(frames))), b"")
    request = Request(method, draw(paths()), draw(fields()), body, b"")
    return request, draw(st.booleans()), frames


class HTTP2SplittingTests(SynchronousTestCase):
    """
    HTTP/2: a request's body in any DATA frames, and the connection's bytes
    in any reads, give the upstream the same bytes.
    """

    def setUp(self) -> None:
        self.directory = writeCertificate(self, "hsts.example")

    def clientBytes(
        self, request: Request, contentLength: bool, frames: list[bytes]
    ) -> bytes:
        """
        What an h2 client sends for C{request} with its body in C{frames}:
        preface, SETTINGS, HEADERS, one DATA per frame (the last one ending
        the stream).
        """
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        conn.send_headers(1, h2Head(request, contentLength))
        for index, piece in enumerate(frames):
            conn.send_data(1, piece, end_stream=index == len(frames) - 1)
        return bytes(conn.data_to_send())

    def run2(self, data: bytes, points: list[int]) -> tuple[bytes, bytes, Any]:
        """
        Give C{data} cut at C{points} to a new proxy's HTTP/2 connection
        from L{TRUSTED_IP}, then accept the upstream connection and answer.

        @return: What the upstream received, the response body the client
            read, and its status.
        """
        proxy = ProxyHarness(self, HSTS_CONFIG, baseDir=self.directory)
        transport = TLSTransport(peerAddress=IPv4Address("TCP", TRUSTED_IP, 40000))
        server = HTTP2Connection(proxy.site)
        transport.protocol = server
        server.makeConnection(transport)
        self.addCleanup(transport.loseConnection)
        for piece in cut(data, points):
            server.dataReceived(piece)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        upstream = proxy.upstream()
        upstream.accept()
        sent = upstream.transport.value()
        upstream.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nresp")
        proxy.reactor.advance(0)
        reader = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        reader.initiate_connection()
        # Stream 1 opened on the reading side too, so that it takes the
        # answer; what it would send is dropped.
        reader.send_headers(
            1,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":path", b"/"),
                (b":authority", b"hsts.example"),
            ],
            end_stream=True,
        )
        reader.clear_outbound_data_buffer()
        status = None
        body = b""
        for event in reader.receive_data(transport.value()):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers or []).get(b":status")
            elif isinstance(event, h2.events.DataReceived):
                body += event.data or b""
        return sent, body, status

    @SETTINGS
    @given(st.data())
    def test_dataFramesAndReads(self, data: st.DataObject) -> None:
        """
        A request body sent in one DATA frame, or in arbitrary DATA frames
        (empty ones too) and read in arbitrary pieces (down to single
        bytes), reaches the upstream as exactly the same bytes, and the
        answer reaches the client.
        """
        request, contentLength, frames = data.draw(h2Requests(), label="request")
        whole = self.run2(self.clientBytes(request, contentLength, [request.body]), [])
        self.assertTrue(whole[0].endswith(b"\r\n\r\n" + request.body), whole[0])
        self.assertEqual(whole[1:], (b"resp", b"200"))
        wire = self.clientBytes(request, contentLength, frames)
        points = data.draw(splits(len(wire)), label="cuts")
        self.assertEqual(self.run2(wire, points), whole)
