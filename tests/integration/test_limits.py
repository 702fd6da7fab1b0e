"""
Integration tests: the connection layer's limits and slow-client deadlines
(L{revproxy.proxy.channel}) in a real C{twistd revproxy} process, end to end
over loopback: raw sockets for what curl cannot send (an oversized request
line, a trickled head), curl for a refused upload over HTTP/1.1 and HTTP/2
with TLS, 500 connections trickling their heads, and one run of
C{slowhttptest} in slowloris mode, during each of which a normal client is
answered promptly.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.integration.support import (
    EXIT_TIMEOUT,
    IIntegrationReactor,
    ProxyProcess,
    RawResponse,
    Upstream,
    connectRaw,
    getReactor,
    runCommand,
    spawnProxy,
    waitFor,
    withTimeout,
    writeConfig,
)
from tests.integration.test_tls import Authority, _TLSTestCase, tool, writeBytes

#: The test site's C{max_body_bytes}.
BODY_LIMIT = 1000

MiB = 1024 * 1024


class _Sink(Resource):
    """
    The upstream's C{/sink}: records every request that reaches it (method
    and body length) and answers C{ok}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, int]] = []

    def render(self, request: Request) -> bytes:
        content = request.content
        body = content.read() if content is not None else b""
        self.seen.append((request.method, len(body)))
        return b"ok\n"


def parseResponse(data: bytes) -> RawResponse:
    """
    The first response in C{data}, framed by its Content-Length.
    """
    end = data.index(b"\r\n\r\n")
    status, *lines = data[:end].split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    length = int(lengths[0]) if lengths else 0
    return RawResponse(
        int(status.split(b" ", 2)[1]), headers, data[end + 4 : end + 4 + length]
    )


class Talker(Protocol):
    """
    A raw client that writes what it is told, keeps every byte it reads,
    and records how and when its connection ended.
    """

    def __init__(self, reactor: IIntegrationReactor) -> None:
        self.reactor = reactor
        self.data = b""
        self.reason: Failure | None = None
        self.lostAt = 0.0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.madeAt = self.reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lostAt = self.reactor.seconds()
        self.lost.callback(None)

    def write(self, data: bytes) -> None:
        """
        Send C{data}, unless the connection is gone.
        """
        if self.transport is not None and self.reason is None:
            self.transport.write(data)

    async def closed(self, seconds: float = EXIT_TIMEOUT) -> RawResponse | None:
        """
        Wait until the server closes the connection; the response it sent
        first, if any.
        """
        try:
            await withTimeout(self.lost, seconds, "the proxy closing")
        except TimeoutError:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            await self.lost
            raise
        return parseResponse(self.data) if self.data else None


async def talk(reactor: IIntegrationReactor, port: int) -> Talker:
    """
    Connect a L{Talker} to C{127.0.0.1:port}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    talker: Talker = await connectProtocol(endpoint, Talker(reactor))
    return talker


class _LimitsTestCase(TestCase):
    """
    An upstream with a C{/sink}, and a proxy in front of it whose site
    C{main} (C{127.0.0.1}) has a body limit of L{BODY_LIMIT}; the proxy has
    the C{[server]} keys of L{server}.
    """

    timeout = 40
    server: dict[str, object] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.upstream = Upstream(self.reactor)
        self.sink = _Sink()
        self.upstream.site.resource.putChild(b"sink", self.sink)
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.directory = tempfile.mkdtemp(prefix="rpx-limits-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        path = writeConfig(
            self.directory,
            [
                {
                    "name": "main",
                    "hosts": ["127.0.0.1"],
                    "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
                    "max_body_bytes": BODY_LIMIT,
                }
            ],
            server=self.server,
        )
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", path], self.directory
        )
        self.addCleanup(self._stopProxy)

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    async def talk(self) -> Talker:
        """
        A new raw connection to the proxy.
        """
        talker = await talk(self.reactor, self.port)
        self.addCleanup(self._abort, talker)
        return talker

    async def _abort(self, talker: Talker) -> None:
        if talker.reason is None and talker.transport is not None:
            talker.transport.abortConnection()  # type: ignore[attr-defined]
        await talker.lost

    def assertRefusal(
        self, response: RawResponse | None, code: int, talker: Talker
    ) -> None:
        """
        C{response} is a whole early refusal with C{code}, after which the
        proxy closed the connection cleanly (no reset), and nothing reached
        the upstream.
        """
        assert response is not None, talker.data
        self.assertEqual(response.code, code, talker.data)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertEqual(response.header(b"cache-control"), [b"no-store"])
        self.assertEqual(
            response.header(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(len(response.header(b"date")), 1)
        self.assertTrue(response.body.startswith(b"%d " % code), response.body)
        self.assertTrue(response.body.endswith(b"\n"))
        assert talker.reason is not None
        self.assertTrue(talker.reason.check(ConnectionDone), talker.reason)
        self.assertEqual(self.sink.seen, [])

    async def get(self) -> float:
        """
        A normal client's GET on a new connection; how long it took to be
        answered.
        """
        started = self.reactor.seconds()
        client = await connectRaw(self.reactor, self.port)
        try:
            response = await client.request(
                b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
        finally:
            await client.close()
        self.assertEqual(response.code, 200)
        return self.reactor.seconds() - started


class LimitsTests(_LimitsTestCase):
    """
    Each early refusal end to end, with a short head deadline.
    """

    server = {"header_timeout_secs": 2, "lingering_close_secs": 2}

    async def test_contentLength(self) -> None:
        """
        A Content-Length over C{max_body_bytes} is answered 413 before the
        body is sent, and the upstream sees nothing; one at the limit gets
        through whole.
        """
        talker = await self.talk()
        talker.write(
            b"POST /sink HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: %d\r\n\r\n" % (BODY_LIMIT + 1)
        )
        response = await talker.closed()
        self.assertRefusal(response, 413, talker)
        assert response is not None
        self.assertEqual(
            response.body,
            b"413 Content Too Large: the request body is larger than "
            b"%d bytes\n" % BODY_LIMIT,
        )
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        ok = await client.request(
            b"POST /sink HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: %d\r\n\r\n" % BODY_LIMIT + b"b" * BODY_LIMIT
        )
        self.assertEqual(ok.code, 200)
        self.assertEqual(self.sink.seen, [(b"POST", BODY_LIMIT)])

    async def test_chunked(self) -> None:
        """
        A chunked body is answered 413 as soon as it passes the limit,
        before it ends; the upstream sees nothing.
        """
        talker = await self.talk()
        talker.write(
            b"POST /sink HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        talker.write(b"258\r\n" + b"c" * 600 + b"\r\n")
        await deferLater(self.reactor, 0.2, lambda: None)
        self.assertEqual(talker.data, b"")
        talker.write(b"258\r\n" + b"c" * 600 + b"\r\n")
        response = await talker.closed()
        self.assertRefusal(response, 413, talker)

    async def test_bigBodyRefused(self) -> None:
        """
        A client that sends a big body it was refused reads the 413 and sees
        the connection closed cleanly, not reset (the lingering close);
        curl too, without waiting for C{100 Continue}.
        """
        talker = await self.talk()
        talker.write(
            b"PUT /sink HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: %d\r\n\r\n" % (16 * MiB) + os.urandom(16 * MiB)
        )
        self.assertRefusal(await talker.closed(), 413, talker)
        upload = os.path.join(self.directory, "upload.bin")
        writeBytes(upload, os.urandom(8 * MiB))
        result = await runCommand(
            self.reactor,
            [
                tool("curl"),
                "--silent",
                "--show-error",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "--header",
                "Expect:",
                "--data-binary",
                f"@{upload}",
                "--output",
                "/dev/null",
                "--write-out",
                "%{response_code}",
                f"http://127.0.0.1:{self.port}/sink",
            ],
            seconds=15,
        )
        self.assertEqual((result.code, result.out), (0, b"413"), result)
        self.assertEqual(self.sink.seen, [])

    async def test_requestLine(self) -> None:
        """
        A request line over 8 KiB is answered 414, before its line end too.
        """
        talker = await self.talk()
        talker.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertRefusal(await talker.closed(), 414, talker)
        talker = await self.talk()
        talker.write(b"GET /" + b"a" * 9000)
        self.assertRefusal(await talker.closed(), 414, talker)

    async def test_headerFields(self) -> None:
        """
        A header field over 8 KiB, more than 100 fields, or more than 32 KiB
        of them in all is answered 431.
        """
        heads = [
            [b"X-Big: " + b"v" * 9000],
            [b"X-%d: 1" % i for i in range(101)],
            [b"X-%d: " % i + b"v" * 7000 for i in range(5)],
        ]
        for fields in heads:
            talker = await self.talk()
            talker.write(
                b"GET /sink HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + b"".join(f + b"\r\n" for f in fields)
                + b"\r\n"
            )
            self.assertRefusal(await talker.closed(), 431, talker)

    async def test_trickledHead(self) -> None:
        """
        A head trickled a byte every 0.2 s is answered 408 when the head
        deadline (2 s here) passes; a connection that sends nothing is
        closed then, without an answer.
        """
        talker = await self.talk()
        silent = await self.talk()
        head = b"GET /sink HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100
        sent = [0]

        def trickle() -> None:
            talker.write(head[sent[0] : sent[0] + 1])
            sent[0] += 1

        loop = LoopingCall(trickle)
        loop.clock = self.reactor
        loop.start(0.2)
        try:
            response = await talker.closed(5)
        finally:
            loop.stop()
        self.assertRefusal(response, 408, talker)
        self.assertGreater(talker.lostAt - talker.madeAt, 1.9)
        self.assertLess(talker.lostAt - talker.madeAt, 4)
        self.assertIsNone(await silent.closed(5))
        assert silent.reason is not None
        self.assertTrue(silent.reason.check(ConnectionDone))
        self.assertLess(silent.lostAt - silent.madeAt, 4)


class _Loris(Protocol):
    """
    One slowloris connection: sends the start of a head, then one byte of
    a never-ending header field each time it is told to.
    """

    def __init__(self, attack: _Slowloris) -> None:
        self.attack = attack
        self.data = b""

    def connectionMade(self) -> None:
        self.attack.connected.add(self)
        assert self.transport is not None
        self.transport.write(b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Loris: ")

    def trickle(self) -> None:
        if self.transport is not None:
            self.transport.write(b"x")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.attack.lost(self)


class _Slowloris:
    """
    Keeps C{count} connections trickling their heads a byte every
    C{interval} seconds, opening a new one whenever one is closed, until
    stopped.
    """

    def __init__(
        self, reactor: IIntegrationReactor, port: int, count: int, interval: float
    ) -> None:
        self.reactor = reactor
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        self.count = count
        self.interval = interval
        self.connected: set[_Loris] = set()
        self.connecting = 0
        self.stopped = False
        self.refusals: list[bytes] = []
        self.failedConnects = 0
        self.closedAll: Deferred[None] | None = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor

    def start(self) -> None:
        self._ticker.start(self.interval, now=True)

    def _tick(self) -> None:
        for loris in list(self.connected):
            loris.trickle()
        self._fill()

    def _fill(self) -> None:
        while not self.stopped and len(self.connected) + self.connecting < self.count:
            self.connecting += 1
            d = connectProtocol(self.endpoint, _Loris(self))
            d.addCallbacks(self._connected, self._failed)

    def _connected(self, loris: _Loris) -> None:
        self.connecting -= 1
        if self.stopped and loris.transport is not None:
            loris.transport.abortConnection()  # type: ignore[attr-defined]

    def _failed(self, reason: Failure) -> None:
        self.connecting -= 1
        self.failedConnects += 1

    def lost(self, loris: _Loris) -> None:
        self.connected.discard(loris)
        if loris.data:
            self.refusals.append(loris.data.split(b"\r\n", 1)[0])
        if self.stopped:
            if not self.connected and not self.connecting and self.closedAll:
                closedAll, self.closedAll = self.closedAll, None
                closedAll.callback(None)
        else:
            self._fill()

    async def stop(self) -> None:
        """
        Stop trickling and opening, abort every connection and wait until
        all are gone.
        """
        self.stopped = True
        if self._ticker.running:
            self._ticker.stop()
        for loris in list(self.connected):
            transport = loris.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]
        while self.connected or self.connecting:
            self.closedAll = Deferred()
            await withTimeout(self.closedAll, EXIT_TIMEOUT, "the attack ending")


class SlowClientTests(_LimitsTestCase):
    """
    Hundreds of connections trickling their heads do not keep a normal
    client from being answered promptly.
    """

    server = {"header_timeout_secs": 3, "lingering_close_secs": 1}

    async def test_slowloris(self) -> None:
        """
        While 500 connections trickle their heads a byte a second (each
        answered 408 at the head deadline and replaced by a new one), a
        normal client's requests on new connections are each answered
        within a second, several times over.
        """
        attack = _Slowloris(self.reactor, self.port, 500, 1.0)
        attack.start()
        self.addCleanup(attack.stop)
        await waitFor(
            lambda: len(attack.connected) >= 450, 5, "450 slowloris connections"
        )
        durations = []
        for _ in range(10):
            durations.append(await self.get())
            await deferLater(self.reactor, 0.5, lambda: None)
        await attack.stop()
        self.assertLess(max(durations), 1.0, durations)
        self.assertGreater(len(attack.refusals), 400)
        self.assertEqual(set(attack.refusals), {b"HTTP/1.1 408 Request Timeout"})
        self.assertEqual(attack.failedConnects, 0)

    async def test_slowhttptest(self) -> None:
        """
        slowhttptest in slowloris mode, 500 connections: its report says
        the service stayed available throughout, and a normal client is
        answered within a second all along.
        """
        durations: list[float] = []
        running = True

        async def normalClient() -> None:
            while running:
                durations.append(await self.get())
                await deferLater(self.reactor, 0.5, lambda: None)

        client = Deferred.fromCoroutine(normalClient())
        stats = os.path.join(self.directory, "slowhttptest")
        try:
            result = await runCommand(
                self.reactor,
                [
                    tool("slowhttptest"),
                    "-H",
                    "-c",
                    "500",
                    "-r",
                    "250",
                    "-i",
                    "1",
                    "-l",
                    "8",
                    "-p",
                    "2",
                    "-g",
                    "-o",
                    stats,
                    "-u",
                    f"http://127.0.0.1:{self.port}/small",
                ],
                seconds=30,
            )
        finally:
            running = False
            await withTimeout(client, EXIT_TIMEOUT, "the normal client")
        report = re.sub(rb"\x1b\[[0-9;]*[A-Za-z]", b"", result.out + result.err)
        self.assertEqual(result.code, 0, report)
        available = re.findall(rb"service available:\s*(\w+)", report)
        self.assertTrue(available, report)
        self.assertEqual(set(available), {b"YES"}, report)
        # Its statistics, a line a second: "Service Available" is 0 in a
        # second when its probe got no answer within 2 s.
        with open(stats + ".csv", newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertGreater(len(rows), 4, rows)
        self.assertNotIn("0", [row["Service Available"] for row in rows], rows)
        self.assertGreater(max(int(row["Connected"]) for row in rows), 450, rows)
        # The head deadline (3 s) closed them: the attack ran out of
        # connections before its 8 s.
        self.assertIn(b"No open connections left", report)
        self.assertGreater(len(durations), 5)
        self.assertLess(max(durations), 1.0, durations)


class TLSLimitsTests(_TLSTestCase):
    """
    Over TLS: the body limit over HTTP/2 (413 on the stream, the connection
    going on) and the lingering close of HTTP/1.1, with curl.
    """

    upstreamNames = ("A",)

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        authority = Authority()
        self.ca = authority.writeRoot(self.path("ca.pem"))
        await self.startProxy(
            [
                self.site(
                    "a",
                    ["a.test"],
                    "A",
                    authority.issue("a.test"),
                    max_body_bytes=BODY_LIMIT,
                )
            ],
            lingering_close_secs=2,
        )
        self.upload = self.path("upload.bin")
        writeBytes(self.upload, os.urandom(4 * MiB))

    async def curl(self, *args: str) -> Any:
        """
        Run curl against C{a.test} on the proxy's HTTPS port, trusting the
        test CA; its result.
        """
        return await runCommand(
            self.reactor,
            [
                tool("curl"),
                "--silent",
                "--show-error",
                "--noproxy",
                "*",
                "--max-time",
                "15",
                "--resolve",
                f"a.test:{self.httpsPort}:127.0.0.1",
                "--cacert",
                self.ca,
                *args,
            ],
            seconds=20,
        )

    def url(self, path: str) -> str:
        return f"https://a.test:{self.httpsPort}{path}"

    async def test_http2(self) -> None:
        """
        Over HTTP/2 a body over the limit is answered 413, with or without
        a content-length, and the next request on the same connection is
        served.
        """
        out = "%{http_version} %{response_code} %{num_connects}\n"
        result = await self.curl(
            "--http2",
            "--data-binary",
            f"@{self.upload}",
            "--output",
            "/dev/null",
            "--write-out",
            out,
            self.url("/echo"),
            "--next",
            "--http2",
            "--resolve",
            f"a.test:{self.httpsPort}:127.0.0.1",
            "--cacert",
            self.ca,
            "--output",
            "/dev/null",
            "--write-out",
            out,
            self.url("/whoami"),
        )
        self.assertEqual(result.code, 0, result)
        self.assertEqual(result.out, b"2 413 1\n2 200 0\n", result)
        result = await self.curl(
            "--http2",
            "--header",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{self.upload}",
            "--output",
            "/dev/null",
            "--write-out",
            out,
            self.url("/echo"),
        )
        self.assertEqual((result.code, result.out), (0, b"2 413 1\n"), result)

    async def test_http11LingeringClose(self) -> None:
        """
        Over TLS with HTTP/1.1, a client sending a body it was refused reads
        the 413 (the TLS layer closes, reading goes on).
        """
        result = await self.curl(
            "--http1.1",
            "--header",
            "Expect:",
            "--data-binary",
            f"@{self.upload}",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_version} %{response_code}",
            self.url("/echo"),
        )
        self.assertEqual((result.code, result.out), (0, b"1.1 413"), result)
