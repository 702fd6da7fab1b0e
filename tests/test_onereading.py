"""
Issue #13, "Exactly one reading of every request": one test per point of
its list, each driven end to end through the real front end (L{FrontEnd}
with L{HTTP1Connection} or L{HTTP2Connection}, the L{Router}, the
L{Forwarder} and its pool) with fake upstreams, as L{tests.test_forwarder}
does.  What a client sends is either read exactly one way (and reaches the
upstream as that reading) or refused without ever reaching an upstream,
without a traceback, and, over HTTP/1.1, with the connection closed so
that no second reading of the bytes that follow is possible.
"""

from __future__ import annotations

from typing import Any

import h2.events
from h2.errors import ErrorCodes
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from tests.test_forwarder import (
    A_KEY,
    HSTS_CONFIG,
    OK_HI,
    FakeClient,
    H2Client,
    HTTPResponse,
    ProxyHarness,
    ProxyTestCase,
    writeCertificate,
)

#: The head of a chunked upload to site C{a}.
CHUNKED = b"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"


class _LoggedTestCase(ProxyTestCase):
    """
    A proxy test that captures every log event, to prove that nothing
    logs a traceback.
    """

    def setUp(self) -> None:
        super().setUp()
        self.logged = EventLoggingObserver()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def eventsSince(self, start: int) -> list[dict[str, Any]]:
        """
        The log events emitted since C{start} events had been.
        """
        return [self.logged[i] for i in range(start, len(self.logged))]

    def assertNoFailureLogged(self) -> None:
        """
        No log event carries a failure (a traceback).
        """
        failures = [
            formatEvent(event)
            for event in self.eventsSince(0)
            if "log_failure" in event
        ]
        self.assertEqual(failures, [])

    def assertNothingUpstream(self) -> None:
        """
        No request reached an upstream: no connection was asked for, or
        every one asked for received no byte.
        """
        reactor = self.proxy.reactor
        for index in range(len(reactor.tcpClients)):
            upstream = self.proxy.upstream(index)
            if upstream.protocol is None:
                upstream.accept()
            self.assertEqual(upstream.transport.value(), b"")


class HTTP1ReadingTests(_LoggedTestCase):
    """
    HTTP/1.x: a request llhttp (strict) or revproxy refuses is answered
    with its code and C{Connection: close} at once (no clock advances:
    never a wait for bytes that would make it valid), the connection
    closes, nothing reaches an upstream and nothing logs a traceback.
    """

    def refused(self, request: bytes, code: int = 400) -> HTTPResponse:
        """
        Send C{request} on a new connection: it is refused with C{code}
        as described above.

        @return: The refusal.
        """
        client = self.proxy.client()
        client.send(request)
        response = self.onlyResponse(client)
        self.assertShortError(response, code)
        self.assertEqual(response.values(b"connection"), [b"close"])
        self.assertFalse(client.transport.connected, "the connection stays open")
        self.assertNothingUpstream()
        self.assertNoFailureLogged()
        return response

    def forwarded(self, request: bytes) -> tuple[FakeClient, bytes]:
        """
        Send C{request} on a new connection and answer it upstream with
        L{OK_HI}.

        @return: The client and the bytes the upstream received.
        """
        client = self.proxy.client()
        client.send(request)
        upstream = self.proxy.upstream()
        upstream.accept()
        sent = upstream.transport.value()
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).body, b"hi")
        self.assertNoFailureLogged()
        return client, sent

    # -- chunked framing: every line ends with CRLF

    def test_chunkSizeLineBareLF(self) -> None:
        """
        A chunk-size line ended by a bare LF is 400 and close.
        """
        self.refused(CHUNKED + b"3\nabc\r\n0\r\n\r\n")

    def test_chunkSizeLineBareCR(self) -> None:
        """
        A chunk-size line ended by a bare CR is 400 and close.
        """
        self.refused(CHUNKED + b"3\rabc\r\n0\r\n\r\n")

    def test_chunkDataEndBareLF(self) -> None:
        """
        Chunk data followed by a bare LF is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\n0\r\n\r\n")

    def test_chunkDataEndBareCR(self) -> None:
        """
        Chunk data followed by a bare CR is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r0\r\n\r\n")

    def test_chunkDataEndMissing(self) -> None:
        """
        Chunk data followed by anything but CRLF (here the next chunk at
        once) is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc0\r\n\r\n")

    def test_lastChunkLineBareLF(self) -> None:
        """
        The last chunk's size line ended by a bare LF is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r\n0\n\r\n")

    def test_lastChunkLineBareCR(self) -> None:
        """
        The last chunk's size line ended by a bare CR is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r\n0\r\r\n")

    def test_trailerLineBareLF(self) -> None:
        """
        A trailer field ended by a bare LF is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r\n0\r\nX-Sum: 1\n\r\n")

    def test_trailerLineBareCR(self) -> None:
        """
        A trailer field ended by a bare CR is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r\n0\r\nX-Sum: 1\rX-Other: 2\r\n\r\n")

    def test_chunkedEndBareLF(self) -> None:
        """
        The empty line that ends a chunked body (no trailer) as a bare LF is
        400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r\n0\r\n\n")

    def test_trailersEndBareLF(self) -> None:
        """
        The empty line that ends the trailers as a bare LF is 400 and close.
        """
        self.refused(CHUNKED + b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\n")

    def test_bareLFRefusedAtOnce(self) -> None:
        """
        Fed byte by byte after its head was handled, a chunked body is
        refused with 400 and close by the very byte (a bare LF ending a
        chunk's data) that makes it invalid: no more bytes, no clock.
        """
        client = self.proxy.client()
        client.send(CHUNKED)
        for byte in b"3\r\nabc":
            client.send(bytes([byte]))
        self.assertEqual(client.transport.value(), b"")
        client.send(b"\n")
        response = self.onlyResponse(client)
        self.assertShortError(response, 400)
        self.assertFalse(client.transport.connected)
        self.assertNothingUpstream()
        self.assertNoFailureLogged()

    def test_badChunkAfterBodyWentUpstream(self) -> None:
        """
        A bare LF in chunked framing after the head was handled and part of
        the body went upstream (chunked, since it was not all in): the
        client gets 400 and close at once, and the upstream connection is
        closed with its body unfinished (no last chunk), never pooled: the
        upstream never sees a whole request.
        """
        client = self.proxy.client()
        client.send(CHUNKED + b"3\r\nabc\r\n")
        upstream = self.proxy.upstream()
        upstream.accept()
        self.assertTrue(upstream.transport.value().endswith(b"3\r\nabc\r\n"))
        client.send(b"2\nde\r\n0\r\n\r\n")
        response = self.onlyResponse(client)
        self.assertShortError(response, 400)
        self.assertFalse(client.transport.connected)
        sent = upstream.transport.value()
        self.assertTrue(sent.endswith(b"3\r\nabc\r\n"), sent)
        self.assertFalse(upstream.transport.connected)
        self.assertEqual(self.proxy.pool.idleCount(A_KEY), 0)
        self.assertNoFailureLogged()

    # -- HTTP/1.0 and Transfer-Encoding

    def test_http10TransferEncoding(self) -> None:
        """
        An HTTP/1.0 request carrying Transfer-Encoding is 400 and close (RFC
        9112 section 6.1): not read as chunked, nor the body as the next
        request.
        """
        self.refused(
            b"POST / HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n"
        )

    # -- obsolete line folding

    def test_obsFoldSpace(self) -> None:
        """
        A field continued on a line starting with SP (obs-fold) is 400.
        """
        self.refused(b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\n c\r\n\r\n")

    def test_obsFoldTab(self) -> None:
        """
        A field continued on a line starting with HTAB (obs-fold) is 400.
        """
        self.refused(b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\n\tc\r\n\r\n")

    # -- control characters in field values

    def valueWith(self, value: bytes) -> bytes:
        return b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: " + value + b"\r\n\r\n"

    def test_controlCharacterInValue(self) -> None:
        """
        A control character (SOH) in a field value is 400.
        """
        self.refused(self.valueWith(b"a\x01b"))

    def test_escapeInValue(self) -> None:
        """
        ESC in a field value is 400.
        """
        self.refused(self.valueWith(b"a\x1bb"))

    def test_delInValue(self) -> None:
        """
        DEL in a field value is 400.
        """
        self.refused(self.valueWith(b"a\x7fb"))

    def test_nulInValue(self) -> None:
        """
        NUL in a field value is 400.
        """
        self.refused(self.valueWith(b"a\x00b"))

    def test_bareCRInValue(self) -> None:
        """
        A bare CR inside a field value is 400.
        """
        self.refused(self.valueWith(b"a\rb"))

    def test_tabInValueForwarded(self) -> None:
        """
        HTAB, the one control character a field value may hold, is kept:
        the value reaches the upstream as sent.
        """
        _, sent = self.forwarded(self.valueWith(b"a\tb"))
        self.assertIn(b"\r\nx-a: a\tb\r\n", sent)

    # -- * as the request-target

    def test_starTargetGet(self) -> None:
        """
        C{*} as the target of GET is 400.
        """
        self.refused(b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n")

    def test_starTargetPost(self) -> None:
        """
        C{*} as the target of a POST with a body is 400.
        """
        self.refused(
            b"POST * HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc"
        )

    def test_starTargetHead(self) -> None:
        """
        C{*} as the target of HEAD is 400 (with no body, as for any HEAD).
        """
        client = self.proxy.client()
        client.send(b"HEAD * HTTP/1.1\r\nHost: a.example\r\n\r\n")
        response = self.onlyResponse(client, head=True)
        self.assertEqual(response.code, 400)
        self.assertEqual(response.values(b"connection"), [b"close"])
        self.assertFalse(client.transport.connected)
        self.assertNothingUpstream()
        self.assertNoFailureLogged()

    def test_starTargetOptions(self) -> None:
        """
        C{*} as the target of OPTIONS is read as such and forwarded.
        """
        client, sent = self.forwarded(b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.assertTrue(sent.startswith(b"OPTIONS * HTTP/1.1\r\n"), sent)
        self.assertTrue(client.transport.connected)

    # -- Content-Length

    def contentLength(self, *values: bytes) -> bytes:
        fields = b"".join(b"Content-Length: " + value + b"\r\n" for value in values)
        return b"POST / HTTP/1.1\r\nHost: a.example\r\n" + fields + b"\r\nabc"

    def test_contentLengthLetters(self) -> None:
        """
        A Content-Length that is not a number is 400.
        """
        self.refused(self.contentLength(b"abc"))

    def test_contentLengthEmpty(self) -> None:
        """
        An empty Content-Length is 400.
        """
        self.refused(self.contentLength(b""))

    def test_contentLengthNegative(self) -> None:
        """
        A Content-Length with a minus sign is 400.
        """
        self.refused(self.contentLength(b"-3"))

    def test_contentLengthPlus(self) -> None:
        """
        A Content-Length with a plus sign is 400.
        """
        self.refused(self.contentLength(b"+3"))

    def test_contentLengthInnerSpace(self) -> None:
        """
        A Content-Length with a space between its digits is 400.
        """
        self.refused(self.contentLength(b"1 0"))

    def test_contentLengthHex(self) -> None:
        """
        A hexadecimal Content-Length is 400.
        """
        self.refused(self.contentLength(b"0x3"))

    def test_contentLengthDecimalPoint(self) -> None:
        """
        A Content-Length with a decimal point is 400.
        """
        self.refused(self.contentLength(b"3.0"))

    def test_contentLengthList(self) -> None:
        """
        A Content-Length holding a list (even of equal values) is 400.
        """
        self.refused(self.contentLength(b"3, 3"))

    def test_contentLengthOverflow(self) -> None:
        """
        A Content-Length past 64 bits is 400 (not a wrapped number).
        """
        self.refused(self.contentLength(b"18446744073709551619"))

    def test_contentLengthDuplicateEqual(self) -> None:
        """
        Two Content-Length fields, even equal, are 400.
        """
        self.refused(self.contentLength(b"3", b"3"))

    def test_contentLengthDuplicateDifferent(self) -> None:
        """
        Two different Content-Length fields are 400.
        """
        self.refused(self.contentLength(b"3", b"4"))

    def test_contentLengthAndTransferEncoding(self) -> None:
        """
        Content-Length beside Transfer-Encoding is 400, in either order.
        """
        self.refused(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )

    def test_transferEncodingAndContentLength(self) -> None:
        """
        Transfer-Encoding before Content-Length is 400 too.
        """
        self.refused(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )

    # -- transfer codings

    def test_unknownCodingThenChunked(self) -> None:
        """
        A transfer coding other than chunked, applied before chunked, is
        501 Not Implemented (RFC 9112 section 6.1), and close.
        """
        self.refused(
            b"POST / HTTP/1.1\r\nHost: a.example\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        )

    def test_unknownCodingInTwoFields(self) -> None:
        """
        The same, with the codings in two Transfer-Encoding fields: 501.
        """
        self.refused(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
        )

    def test_chunkedNotLast(self) -> None:
        """
        A Transfer-Encoding whose last coding is not chunked is 400 (RFC
        9112 section 6.3: the body's length cannot be known).
        """
        self.refused(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n\r\n"
        )

    # -- versions

    def test_version20(self) -> None:
        """
        HTTP/2.0 in a request line is 505.
        """
        self.refused(b"GET / HTTP/2.0\r\nHost: a.example\r\n\r\n", 505)

    def test_version09(self) -> None:
        """
        HTTP/0.9 in a request line is 505.
        """
        self.refused(b"GET / HTTP/0.9\r\nHost: a.example\r\n\r\n", 505)

    def test_version12(self) -> None:
        """
        HTTP/1.2 in a request line is 505 (RFC 9110 section 15.6.6: a
        major version served, a minor one not) or 400; never forwarded.
        """
        client = self.proxy.client()
        client.send(b"GET / HTTP/1.2\r\nHost: a.example\r\n\r\n")
        response = self.onlyResponse(client)
        self.assertIn(response.code, (400, 505))
        self.assertShortError(response, response.code)
        self.assertFalse(client.transport.connected)
        self.assertNothingUpstream()
        self.assertNoFailureLogged()

    # -- the request-target

    def test_nonASCIITargetUTF8(self) -> None:
        """
        A UTF-8 byte in the target is 400.
        """
        self.refused(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a.example\r\n\r\n")

    def test_nonASCIITargetHigh(self) -> None:
        """
        A byte 0xFF in the query is 400.
        """
        self.refused(b"GET /a?b=\xff HTTP/1.1\r\nHost: a.example\r\n\r\n")

    def test_delInTarget(self) -> None:
        """
        DEL in the target is 400.
        """
        self.refused(b"GET /a\x7fb HTTP/1.1\r\nHost: a.example\r\n\r\n")

    # -- every Connection field counts

    def test_secondConnectionFieldCloses(self) -> None:
        """
        Two Connection fields, the second saying C{close}: the answer says
        C{Connection: close} and the connection closes after it.
        """
        client, _ = self.forwarded(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive\r\n"
            b"Connection: close\r\n\r\n"
        )
        response = self.onlyResponse(client)
        self.assertEqual(response.values(b"connection"), [b"close"])
        self.assertFalse(client.transport.connected)

    def test_closeAfterKeepAliveInOneField(self) -> None:
        """
        C{Connection: keep-alive, close} closes after the answer.
        """
        client, _ = self.forwarded(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, close\r\n\r\n"
        )
        response = self.onlyResponse(client)
        self.assertEqual(response.values(b"connection"), [b"close"])
        self.assertFalse(client.transport.connected)

    def test_closeAnyCase(self) -> None:
        """
        C{Connection: Close} (any case, with spaces around) closes.
        """
        client, _ = self.forwarded(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: foo ,  CLOSE \r\n\r\n"
        )
        self.assertFalse(client.transport.connected)

    def test_http10KeepAliveListed(self) -> None:
        """
        HTTP/1.0 with C{Connection: foo, keep-alive} stays open, the answer
        saying C{Connection: keep-alive}; a second request on it is served.
        """
        client, _ = self.forwarded(
            b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: foo, keep-alive\r\n\r\n"
        )
        response = self.onlyResponse(client)
        self.assertEqual(response.values(b"connection"), [b"keep-alive"])
        self.assertTrue(client.transport.connected)
        client.transport.clear()
        client.send(b"GET /2 HTTP/1.0\r\nHost: a.example\r\n\r\n")
        upstream = self.proxy.upstream()
        upstream.respond(OK_HI)
        self.assertEqual(self.onlyResponse(client).values(b"connection"), [b"close"])
        self.assertFalse(client.transport.connected)

    def test_http10KeepAliveInSecondField(self) -> None:
        """
        HTTP/1.0 with C{keep-alive} in a second Connection field stays open.
        """
        client, _ = self.forwarded(
            b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: foo\r\n"
            b"Connection: keep-alive\r\n\r\n"
        )
        response = self.onlyResponse(client)
        self.assertEqual(response.values(b"connection"), [b"keep-alive"])
        self.assertTrue(client.transport.connected)

    def test_connectionListedNotForwarded(self) -> None:
        """
        Every name listed in any Connection field, in any case, is not
        forwarded, nor Connection itself; other fields are.
        """
        _, sent = self.forwarded(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: X-A, keep-alive\r\n"
            b"X-A: 1\r\nX-B: 2\r\nConnection: x-b\r\nX-C: 3\r\n\r\n"
        )
        head = sent.lower()
        self.assertNotIn(b"\r\nconnection:", head)
        self.assertNotIn(b"\r\nx-a:", head)
        self.assertNotIn(b"\r\nx-b:", head)
        self.assertIn(b"\r\nx-c: 3\r\n", head)


class HTTP2ReadingTests(_LoggedTestCase):
    """
    HTTP/2 to HTTP/1.1 (RFC 9113 section 8): what a stream's request
    becomes upstream, and the requests refused on it.  A refusal is a
    stream error or an error status on the stream, or a connection error
    (GOAWAY) where C{h2} 4.4.1 makes it one; never a forward, one log line,
    never a traceback.
    """

    def setUp(self) -> None:
        super().setUp()
        directory = writeCertificate(self, "hsts.example")
        self.proxy = ProxyHarness(self, HSTS_CONFIG, baseDir=directory)

    def client(self) -> H2Client:
        """
        An HTTP/2 client that sends what it is told, valid or not.
        """
        client = H2Client(self, self.proxy)
        config: Any = client.conn.config
        config._validate_outbound_headers = False
        config._normalize_outbound_headers = False
        config._split_outbound_cookies = False
        return client

    def request(
        self,
        client: H2Client,
        headers: list[tuple[bytes, bytes]],
        body: list[bytes] | None = None,
        streamID: int = 1,
    ) -> None:
        """
        Send C{headers} on C{streamID}, then C{body} in one DATA frame per
        piece, the last one ending the stream.
        """
        client.conn.send_headers(streamID, headers, end_stream=not body)
        for index, piece in enumerate(body or []):
            client.conn.send_data(
                streamID, piece, end_stream=index == len(body or []) - 1
            )
        client.pump()

    def head(
        self,
        method: bytes = b"GET",
        path: bytes | None = b"/",
        *rest: tuple[bytes, bytes],
    ) -> list[tuple[bytes, bytes]]:
        """
        A request head for site C{hsts}: C{rest} after the pseudo-fields.
        """
        fields = [(b":method", method), (b":scheme", b"https")]
        if path is not None:
            fields.append((b":path", path))
        fields.append((b":authority", b"hsts.example"))
        return fields + list(rest)

    def forwarded(
        self, headers: list[tuple[bytes, bytes]], body: list[bytes] | None = None
    ) -> bytes:
        """
        Send a request on stream 1, accept its upstream connection, answer
        it, and check the answer reached the stream.

        @return: The bytes the upstream received.
        """
        client = self.client()
        self.request(client, headers, body)
        upstream = self.proxy.upstream()
        upstream.accept()
        sent = bytes(upstream.transport.value())
        upstream.respond(OK_HI)
        client.pump()
        self.assertEqual(client.status(1), b"200")
        self.assertEqual(client.body(1), b"hi")
        self.assertNoFailureLogged()
        return sent

    def rejected(
        self, headers: list[tuple[bytes, bytes]], body: list[bytes] | None = None
    ) -> tuple[H2Client, str]:
        """
        Send a request on stream 1 that is refused: nothing reaches an
        upstream, one log line, no traceback.

        @return: The client and what the refusal was: C{"status 400"}
            (any status), C{"reset PROTOCOL_ERROR"} (a stream error) or
            C{"goaway PROTOCOL_ERROR"} (a connection error).
        """
        client = self.client()
        start = len(self.logged)
        self.request(client, headers, body)
        self.assertNothingUpstream()
        events = self.eventsSince(start)
        self.assertEqual(
            [formatEvent(e) for e in events if "log_failure" in e], [], "a traceback"
        )
        self.assertEqual(len(events), 1, [formatEvent(e) for e in events])
        terminated = [
            e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)
        ]
        resets = [
            e
            for e in client.events
            if isinstance(e, h2.events.StreamReset) and e.stream_id == 1
        ]
        status = client.status(1)
        if terminated:
            self.assertIsNone(status)
            return client, "goaway " + ErrorCodes(
                int(terminated[0].error_code or 0)
            ).name
        if status is not None:
            self.assertTrue(status.startswith(b"4"), status)
            return client, "status " + status.decode()
        self.assertEqual(len(resets), 1, client.events)
        return client, "reset " + ErrorCodes(int(resets[0].error_code or 0)).name

    # -- a body without content-length

    def test_bodyWithoutContentLengthAllIn(self) -> None:
        """
        A body without content-length, all in before the upstream
        connection is ready, is forwarded whole with a Content-Length.
        """
        sent = self.forwarded(self.head(b"POST"), [b"hello ", b"wor", b"ld"])
        head, _, body = sent.partition(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: 11", head)
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertEqual(body, b"hello world")

    def test_bodyWithoutContentLengthStreamed(self) -> None:
        """
        A body without content-length still coming when the upstream
        connection is ready is forwarded whole, chunked.
        """
        client = self.client()
        client.conn.send_headers(1, self.head(b"POST"))
        client.conn.send_data(1, b"hello ")
        client.pump()
        upstream = self.proxy.upstream()
        upstream.accept()
        client.conn.send_data(1, b"world", end_stream=True)
        client.pump()
        head, _, body = upstream.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nTransfer-Encoding: chunked", head)
        self.assertNotIn(b"content-length", head.lower())
        self.assertEqual(body, b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
        upstream.respond(OK_HI)
        client.pump()
        self.assertEqual(client.body(1), b"hi")
        self.assertNoFailureLogged()

    def test_bodyWithContentLength(self) -> None:
        """
        A body with content-length is forwarded with exactly that one
        Content-Length.
        """
        sent = self.forwarded(
            self.head(b"PUT", b"/", (b"content-length", b"5")), [b"he", b"llo"]
        )
        head, _, body = sent.partition(b"\r\n\r\n")
        self.assertEqual(head.lower().count(b"content-length"), 1)
        self.assertIn(b"\r\nContent-Length: 5", head)
        self.assertEqual(body, b"hello")

    # -- cookies

    def test_cookiesJoined(self) -> None:
        """
        Several cookie fields (here with another field between them)
        become one Cookie joined by C{"; "}, in order.
        """
        sent = self.forwarded(
            self.head(
                b"GET",
                b"/",
                (b"cookie", b"a=1"),
                (b"x-between", b"y"),
                (b"cookie", b"b=2"),
                (b"cookie", b"c=3"),
            )
        )
        lines = sent.split(b"\r\n\r\n")[0].split(b"\r\n")
        cookies = [line for line in lines if line.lower().startswith(b"cookie:")]
        self.assertEqual(cookies, [b"cookie: a=1; b=2; c=3"])
        self.assertIn(b"x-between: y", lines)

    # -- :authority and host

    def test_authorityAndEqualHost(self) -> None:
        """
        C{:authority} with an equal C{host} is fine: one Host upstream.
        """
        sent = self.forwarded(self.head(b"GET", b"/", (b"host", b"hsts.example")))
        lines = sent.split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(
            [line for line in lines if line.lower().startswith(b"host:")],
            [b"host: hsts.example"],
        )

    def test_authorityAndOtherHost(self) -> None:
        """
        C{:authority} with an unequal C{host} is an error: h2 4.4.1 makes it
        a connection error, GOAWAY PROTOCOL_ERROR.
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"host", b"other.example")))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")

    def test_authorityAndHostOtherCase(self) -> None:
        """
        C{:authority} and a C{host} that differs only in case: an error or
        a forward to the one site; never two readings (h2 4.4.1 compares
        exactly: a connection error).
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"host", b"HSTS.example")))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")

    # -- :method and :path

    def test_methodNotToken(self) -> None:
        """
        A C{:method} that is not a token is refused on its stream, 400.
        """
        _, outcome = self.rejected(self.head(b"GE T"))
        self.assertEqual(outcome, "status 400")

    def test_methodWithSeparator(self) -> None:
        """
        A C{:method} holding a separator (C{/}) is 400.
        """
        _, outcome = self.rejected(self.head(b"GET/1"))
        self.assertEqual(outcome, "status 400")

    def test_pathNotOriginForm(self) -> None:
        """
        A C{:path} that does not start with C{/} is 400.
        """
        _, outcome = self.rejected(self.head(b"GET", b"index.html"))
        self.assertEqual(outcome, "status 400")

    def test_pathAbsoluteForm(self) -> None:
        """
        An absolute-form C{:path} is 400 (RFC 9113 section 8.3.1).
        """
        _, outcome = self.rejected(self.head(b"GET", b"https://hsts.example/"))
        self.assertEqual(outcome, "status 400")

    def test_pathWithSpace(self) -> None:
        """
        A C{:path} holding a space (which would split the upstream's request
        line) is 400.
        """
        _, outcome = self.rejected(self.head(b"GET", b"/a b"))
        self.assertEqual(outcome, "status 400")

    def test_pathNonASCII(self) -> None:
        """
        A C{:path} holding a byte above 0x7E is 400.
        """
        _, outcome = self.rejected(self.head(b"GET", b"/caf\xc3\xa9"))
        self.assertEqual(outcome, "status 400")

    def test_starPathGet(self) -> None:
        """
        C{*} as the C{:path} of GET is 400.
        """
        _, outcome = self.rejected(self.head(b"GET", b"*"))
        self.assertEqual(outcome, "status 400")

    def test_starPathOptions(self) -> None:
        """
        C{*} as the C{:path} of OPTIONS is forwarded as C{OPTIONS *}.
        """
        sent = self.forwarded(self.head(b"OPTIONS", b"*"))
        self.assertTrue(sent.startswith(b"OPTIONS * HTTP/1.1\r\n"), sent)

    def test_connectWithoutPath(self) -> None:
        """
        CONNECT (without C{:path}, as RFC 9113 section 8.5 has it) is not
        served: refused on its stream (405).
        """
        _, outcome = self.rejected(
            [(b":method", b"CONNECT"), (b":authority", b"hsts.example:443")]
        )
        self.assertEqual(outcome, "status 405")

    # -- field names and connection-specific fields

    def assertBadName(self, name: bytes) -> None:
        """
        A field called C{name} (outside the token set) is an error, never a
        forward.
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (name, b"1")))
        self.assertIn(outcome, ("status 400", "reset PROTOCOL_ERROR"), name)

    def test_nameWithParenthesis(self) -> None:
        """
        A field name holding C{(} is refused.
        """
        self.assertBadName(b"x(y")

    def test_nameWithAt(self) -> None:
        """
        A field name holding C{@} is refused.
        """
        self.assertBadName(b"x@y")

    def test_nameWithSlash(self) -> None:
        """
        A field name holding C{/} is refused.
        """
        self.assertBadName(b"x/y")

    def test_nameWithQuote(self) -> None:
        """
        A field name holding C{"} is refused.
        """
        self.assertBadName(b'x"y')

    def test_nameWithBrace(self) -> None:
        """
        A field name holding C{{} is refused.
        """
        self.assertBadName(b"x{y")

    def test_nameWithComma(self) -> None:
        """
        A field name holding C{,} is refused.
        """
        self.assertBadName(b"x,y")

    def test_nameWithSpace(self) -> None:
        """
        A field name holding a space is an error (h2: connection error).
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"x y", b"1")))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")

    def test_nameWithColon(self) -> None:
        """
        A field name holding a colon is an error (h2: connection error).
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"x:y", b"1")))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")

    def test_nameUppercase(self) -> None:
        """
        An uppercase field name is an error (h2: connection error).
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"X-A", b"1")))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")

    def assertConnectionSpecific(self, name: bytes, value: bytes) -> None:
        _, outcome = self.rejected(self.head(b"GET", b"/", (name, value)))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")

    def test_connectionField(self) -> None:
        """
        A C{connection} field is an error (h2: connection error).
        """
        self.assertConnectionSpecific(b"connection", b"keep-alive")

    def test_keepAliveField(self) -> None:
        """
        A C{keep-alive} field is an error (h2: connection error).
        """
        self.assertConnectionSpecific(b"keep-alive", b"timeout=5")

    def test_proxyConnectionField(self) -> None:
        """
        A C{proxy-connection} field is an error (h2: connection error).
        """
        self.assertConnectionSpecific(b"proxy-connection", b"keep-alive")

    def test_transferEncodingField(self) -> None:
        """
        A C{transfer-encoding} field is an error (h2: connection error).
        """
        self.assertConnectionSpecific(b"transfer-encoding", b"chunked")

    def test_upgradeField(self) -> None:
        """
        An C{upgrade} field is an error (h2: connection error).
        """
        self.assertConnectionSpecific(b"upgrade", b"websocket")

    def test_teOtherThanTrailers(self) -> None:
        """
        C{te} other than C{trailers} is an error (h2: connection error).
        """
        self.assertConnectionSpecific(b"te", b"gzip")

    def test_teTrailers(self) -> None:
        """
        C{te: trailers} is fine, and not forwarded (hop-by-hop).
        """
        sent = self.forwarded(self.head(b"GET", b"/", (b"te", b"trailers")))
        self.assertNotIn(b"\r\nte:", sent.lower())

    # -- field values

    def test_controlCharacterInValue(self) -> None:
        """
        A control character other than HTAB in a field value (h2 refuses
        only NUL, CR and LF) is refused as over HTTP/1.1, never forwarded
        to an HTTP/1.1 upstream that must reject it.
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"x-a", b"a\x01b")))
        self.assertIn(outcome, ("status 400", "reset PROTOCOL_ERROR"))

    def test_delInValue(self) -> None:
        """
        DEL in a field value is refused, as over HTTP/1.1.
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"x-a", b"a\x7fb")))
        self.assertIn(outcome, ("status 400", "reset PROTOCOL_ERROR"))

    def test_nulInValue(self) -> None:
        """
        NUL in a field value is an error (h2: connection error).
        """
        _, outcome = self.rejected(self.head(b"GET", b"/", (b"x-a", b"a\x00b")))
        self.assertEqual(outcome, "goaway PROTOCOL_ERROR")
