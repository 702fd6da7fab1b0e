# -*- test-case-name: tests.integration.test_hostile -*-
"""
Integration tests: hostile clients against a real C{twistd revproxy} over
TLS, in front of an in-process upstream on loopback (issue #13, "Hostile
clients").

The HTTP/2 clients are written here on raw frames (C{hyperframe} builds and
parses them, C{hpack} encodes and decodes header blocks) over Twisted's TLS
client with ALPN C{h2}: the point is to send what a well-behaved library
never would, windows opened wide and never read, bodies trickled a byte at a
time, streams opened and reset by the thousand.  The normal client that
must still be served meanwhile is C{curl --http2}.

Each attack is a coroutine returning its figures (L{hugeWindows},
L{trickledBodies}, L{rapidReset}, L{stalledHTTP11}); the tests assert on
them, and C{bench/hostile.py} runs the very same coroutines against another
checkout (the code before the issue) and prints them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from tests.integration.support import (
    EXIT_TIMEOUT,
    LOOPBACK_LISTEN,
    IIntegrationReactor,
    ProxyProcess,
    Upstream,
    getReactor,
    readRSS,
    runCommand,
    spawnProxy,
    waitHTTPSPorts,
    withTimeout,
    writeConfig,
)
from tests.integration.test_tls import Authority, tool

P = TypeVar("P", bound=IProtocol)

KiB = 1024
MiB = 1024 * KiB

#: The name the proxy's one site answers, resolved to 127.0.0.1.
HOST = "a.test"

#: What every HTTP/2 client sends first (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: The largest flow-control window (RFC 9113 section 6.9.1).
MAX_WINDOW = 2**31 - 1

#: RFC 9113 error codes the tests use.
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB


async def sleep(reactor: IIntegrationReactor, seconds: float) -> None:
    """
    Let C{seconds} pass on C{reactor}.
    """
    await deferLater(reactor, seconds, lambda: None)


# -- frames


def requestBlock(
    method: str, path: str, fields: Sequence[tuple[str, str]] = ()
) -> bytes:
    """
    The HPACK block of a request for C{path} on L{HOST}.  Every field is a
    never-indexed literal, so the block leaves the decoder's dynamic table
    alone and the same bytes can open any number of streams.
    """
    headers = [
        (":method", method),
        (":scheme", "https"),
        (":path", path),
        (":authority", HOST),
        *fields,
    ]
    encoded: bytes = Encoder().encode(
        [NeverIndexedHeaderTuple(name, value) for name, value in headers]
    )
    return encoded


def headersFrame(streamID: int, block: bytes, endStream: bool) -> bytes:
    """
    A HEADERS frame carrying the whole C{block}.
    """
    flags = ["END_HEADERS", "END_STREAM"] if endStream else ["END_HEADERS"]
    return bytes(HeadersFrame(streamID, data=block, flags=flags).serialize())


def dataFrame(streamID: int, data: bytes) -> bytes:
    """
    A DATA frame without END_STREAM.
    """
    return bytes(DataFrame(streamID, data=data).serialize())


def resetFrame(streamID: int, code: int) -> bytes:
    """
    An RST_STREAM frame.
    """
    return bytes(RstStreamFrame(streamID, error_code=code).serialize())


def clientPreamble(hugeWindows: bool) -> bytes:
    """
    The connection preface and the client's SETTINGS; with C{hugeWindows},
    an initial stream window of 2^31-1 and the connection's window opened
    to the same (the CVE-2019-9517 client that then reads nothing).
    """
    settings: dict[int, int] = {SettingsFrame.ENABLE_PUSH: 0}
    if hugeWindows:
        settings[SettingsFrame.INITIAL_WINDOW_SIZE] = MAX_WINDOW
    data = PREFACE + bytes(SettingsFrame(0, settings=settings).serialize())
    if hugeWindows:
        data += bytes(
            WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65535).serialize()
        )
    return data


# -- clients


@implementer(IHandshakeListener)
class H2Client(Protocol):
    """
    An HTTP/2 client on raw frames.  It writes L{clientPreamble} and
    C{opening} (frames opening its streams) at once, which TLS sends when
    its handshake is done; then it either reads and records what the
    server sends, or, without C{reading}, stops reading its socket for
    good as soon as the handshake completes.

    @ivar statuses: the C{:status} of each stream's response.
    @ivar resets: the error code of each stream the server reset.
    @ivar goAway: the last stream and error code of the server's GOAWAY.
    @ivar alpn: the protocol ALPN chose.
    @ivar handshake: fires with C{True} once the TLS handshake is done, or
        C{False} if the connection ends first.
    @ivar settings: fires with C{True} once the server's SETTINGS came, or
        C{False} if the connection ends first.
    """

    def __init__(
        self, opening: bytes = b"", hugeWindows: bool = False, reading: bool = True
    ) -> None:
        self.opening = opening
        self.hugeWindows = hugeWindows
        self.reading = reading
        self.alpn: bytes | None = None
        self.statuses: dict[int, int] = {}
        self.resets: dict[int, int] = {}
        self.goAway: tuple[int, int] | None = None
        self.disconnected = False
        self.handshake: Deferred[bool] = Deferred()
        self.settings: Deferred[bool] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._buffer = bytearray()
        self._decoder = Decoder()
        self._block = b""
        self._blockStream = 0

    def connectionMade(self) -> None:
        self.write(clientPreamble(self.hugeWindows) + self.opening)

    def handshakeCompleted(self) -> None:
        transport = self.transport
        assert transport is not None
        self.alpn = getattr(transport, "negotiatedProtocol", None)
        if not self.reading:
            cast(IPushProducer, transport).pauseProducing()
        self.handshake.callback(True)

    def write(self, data: bytes) -> None:
        """
        Send C{data} unless the connection is gone.
        """
        if not self.disconnected and self.transport is not None:
            self.transport.write(data)

    def cut(self, streamID: int) -> bool:
        """
        Whether the server answered or reset C{streamID}.
        """
        return streamID in self.statuses or streamID in self.resets

    def dataReceived(self, data: bytes) -> None:
        if not self.reading:
            return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9 : 9 + length]))
            del buffer[: 9 + length]
            self._frameReceived(frame)

    def _frameReceived(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.write(bytes(SettingsFrame(0, flags=["ACK"]).serialize()))
                if not self.settings.called:
                    self.settings.callback(True)
        elif isinstance(frame, HeadersFrame):
            self._block = bytes(frame.data)
            self._blockStream = frame.stream_id
            if "END_HEADERS" in frame.flags:
                self._headersEnded()
        elif isinstance(frame, ContinuationFrame):
            self._block += bytes(frame.data)
            if "END_HEADERS" in frame.flags:
                self._headersEnded()
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goAway = (frame.last_stream_id, frame.error_code)

    def _headersEnded(self) -> None:
        streamID = self._blockStream
        for name, value in self._decoder.decode(self._block, raw=True):
            if name == b":status" and streamID not in self.statuses:
                self.statuses[streamID] = int(value)
        self._block = b""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.disconnected = True
        for waiting in (self.handshake, self.settings):
            if not waiting.called:
                waiting.callback(False)
        self.lost.callback(None)

    async def close(self) -> None:
        """
        Abort the connection (if the server has not closed it) and wait
        until it is gone.
        """
        if not self.disconnected and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()
        await withTimeout(self.lost, EXIT_TIMEOUT, "an HTTP/2 client closing")


@implementer(IHandshakeListener)
class StalledHTTP11(Protocol):
    """
    An HTTP/1.1 client that sends one request and reads nothing: it stops
    reading its socket as soon as the TLS handshake is done (at once over
    plain TCP, when not C{tls}).

    @ivar handshake: fires with C{True} once the TLS handshake is done (or
        the TCP connection made), or C{False} if the connection ends first.
    """

    def __init__(self, request: bytes, tls: bool = True) -> None:
        self.request = request
        self.tls = tls
        self.alpn: bytes | None = None
        self.disconnected = False
        self.handshake: Deferred[bool] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(self.request)
        if not self.tls:
            cast(IPushProducer, transport).pauseProducing()
            self.handshake.callback(True)

    def handshakeCompleted(self) -> None:
        transport = self.transport
        assert transport is not None
        self.alpn = getattr(transport, "negotiatedProtocol", None)
        cast(IPushProducer, transport).pauseProducing()
        self.handshake.callback(True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.disconnected = True
        if not self.handshake.called:
            self.handshake.callback(False)
        self.lost.callback(None)

    async def close(self) -> None:
        """
        Abort the connection and wait until it is gone.
        """
        if not self.disconnected and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()
        await withTimeout(self.lost, EXIT_TIMEOUT, "an HTTP/1.1 client closing")


# -- the upstream and the proxy under attack


class _Counted(Resource):
    """
    A leaf resource that counts the requests it renders (the upstream has
    their whole head, and their body if any) under C{name}, then lets
    C{inner} answer.
    """

    isLeaf = True

    def __init__(self, inner: Resource, name: str, counts: Counter[str]) -> None:
        super().__init__()
        self.inner = inner
        self.name = name
        self.counts = counts

    def render(self, request: Request) -> bytes | int:
        self.counts[self.name] += 1
        result: bytes | int = self.inner.render(request)
        return result


class CountingUpstream(Upstream):
    """
    The integration tests' L{Upstream}, counting the requests of
    C{/stream}, C{/slow}, C{/small} and C{/count} (which answers as
    C{/small}) in L{requests}.
    """

    def __init__(self, reactor: IIntegrationReactor, name: str = "upstream") -> None:
        super().__init__(reactor, name)
        self.requests: Counter[str] = Counter()
        root = self.site.resource
        small = root.children[b"small"]
        root.putChild(b"count", _Counted(small, "count", self.requests))
        root.putChild(b"small", _Counted(small, "small", self.requests))
        for child in ("stream", "slow"):
            path = child.encode("ascii")
            root.putChild(path, _Counted(root.children[path], child, self.requests))


def descriptors(pid: int) -> list[str]:
    """
    What each open descriptor of process C{pid} is (the targets of
    C{/proc/PID/fd}: C{socket:[N]}, C{pipe:[N]}, a path...).
    """
    targets = []
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        try:
            targets.append(os.readlink(os.path.join(directory, name)))
        except FileNotFoundError:
            continue
    return targets


def isFile(target: str) -> bool:
    """
    Whether a descriptor's C{target} is a file (a path, or a deleted
    temporary file), not a socket, pipe or kernel object.
    """
    return target.startswith("/") or "(deleted)" in target


class Sampler:
    """
    Calls C{sample} every C{every} seconds from now until L{stop}, keeping
    every value; a sample that fails (the process is gone) is skipped.
    """

    def __init__(
        self, reactor: IIntegrationReactor, sample: Callable[[], int], every: float
    ) -> None:
        self.sample = sample
        self.values = [sample()]
        self._loop = LoopingCall(self._take)
        self._loop.clock = reactor
        self._done = self._loop.start(every, now=False)

    def _take(self) -> None:
        try:
            self.values.append(self.sample())
        except OSError:
            pass

    @property
    def first(self) -> int:
        """
        The value when sampling began.
        """
        return self.values[0]

    @property
    def growth(self) -> int:
        """
        The largest value so far, less the first.
        """
        return max(self.values) - self.values[0]

    async def stop(self) -> None:
        """
        Stop sampling (idempotent), with one last sample.
        """
        if self._loop.running:
            self._take()
            self._loop.stop()
            await self._done


async def waitUntil(
    reactor: IIntegrationReactor, predicate: Callable[[], bool], seconds: float
) -> bool:
    """
    Wait until C{predicate()} is true, for at most C{seconds}; whether it
    became true.  (The attacks report rather than fail.)
    """
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() >= deadline:
            return False
        await sleep(reactor, 0.05)
    return True


async def waitConnected(connected: Deferred[bool], what: str) -> None:
    """
    Wait (10 s at most) for C{connected}, which fires with C{False} when the
    connection ended before C{what}; fail then.
    """
    if not await withTimeout(connected, 10, what):
        raise ConnectionError(f"the connection ended before {what}")


class Target:
    """
    A running proxy to attack: its process, its HTTPS port, the CA file its
    certificate for L{HOST} chains to, the upstream behind it, and its
    plain HTTP port if needed.
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        pid: int,
        httpsPort: int,
        caFile: str,
        upstream: CountingUpstream,
        httpPort: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.pid = pid
        self.httpsPort = httpsPort
        self.httpPort = httpPort
        self.caFile = caFile
        self.upstream = upstream
        with open(caFile, "rb") as f:
            self._trustRoot = Certificate.loadPEM(f.read())

    def rss(self) -> int:
        """
        The proxy's resident set size, in bytes.
        """
        return readRSS(self.pid)

    def descriptors(self) -> list[str]:
        """
        The proxy's open descriptors (see L{descriptors}).
        """
        return descriptors(self.pid)

    async def connect(self, protocol: P, alpn: bytes) -> P:
        """
        Connect C{protocol} over TLS to the proxy, with SNI L{HOST},
        verifying its certificate and offering only C{alpn}.
        """
        creator = optionsForClientTLS(
            HOST, trustRoot=self._trustRoot, acceptableProtocols=[alpn]
        )
        endpoint = wrapClientTLS(
            creator,
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.httpsPort, timeout=5),
        )
        connected: P = await withTimeout(
            connectProtocol(endpoint, protocol), 10, "connecting to the proxy"
        )
        return connected

    async def connectPlain(self, protocol: P) -> P:
        """
        Connect C{protocol} to the proxy's plain HTTP port.
        """
        assert self.httpPort is not None
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.httpPort)
        connected: P = await withTimeout(
            connectProtocol(endpoint, protocol), 10, "connecting to the proxy"
        )
        return connected

    async def normalClient(self) -> tuple[str, float]:
        """
        A normal client's request: C{curl --http2} GETs C{/small} on a new
        connection; what it says (HTTP version and status, or its error)
        and its own total time in seconds (C{inf} when it failed).
        """
        argv = [
            tool("curl"),
            "--http2",
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "--resolve",
            f"{HOST}:{self.httpsPort}:127.0.0.1",
            "--cacert",
            self.caFile,
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_version} %{response_code} %{time_total}",
            f"https://{HOST}:{self.httpsPort}/small",
        ]
        try:
            result = await runCommand(self.reactor, argv, seconds=10)
        except AssertionError as e:
            return (f"curl hung: {e}", float("inf"))
        if result.code != 0:
            return (result.err.decode("utf-8", "replace").strip(), float("inf"))
        version, status, seconds = result.out.decode("ascii").split()
        return (f"{version} {status}", float(seconds))


# -- the attacks, each returning its figures


class HugeWindowsFigures:
    """
    What L{hugeWindows} saw.

    @ivar reached: the streams whose request reached the upstream.
    @ivar rssGrowth: the proxy's largest RSS less its RSS before, bytes.
    @ivar probes: L{Target.normalClient}'s answers during the stall.
    @ivar clientOpen: whether the proxy kept the attacker's connection.
    @ivar capped: whether the stall stopped early at the RSS cap.
    """

    def __init__(self) -> None:
        self.alpn: bytes | None = None
        self.reached = 0
        self.rssBefore = 0
        self.rssGrowth = 0
        self.probes: list[tuple[str, float]] = []
        self.clientOpen = False
        self.capped = False
        self.seconds = 0.0


async def hugeWindows(
    target: Target,
    streams: int,
    size: int,
    stall: float,
    probes: int,
    rssCap: int = 1024 * MiB,
) -> HugeWindowsFigures:
    """
    One HTTP/2 connection opens huge windows, asks for C{streams} responses
    of C{size} bytes (C{/stream}) and never reads its socket; for
    C{stall} seconds from when every request has reached the upstream,
    the proxy's RSS is sampled and a normal client is served C{probes}
    times, evenly spread.  The stall ends early once the RSS grew by
    C{rssCap}.
    """
    reactor = target.reactor
    figures = HugeWindowsFigures()
    block = requestBlock("GET", f"/stream?bytes={size}")
    opening = b"".join(headersFrame(2 * i + 1, block, True) for i in range(streams))
    requests = target.upstream.requests
    counted = requests["stream"]
    rss = Sampler(reactor, target.rss, 0.1)
    figures.rssBefore = rss.first
    started = reactor.seconds()
    client = H2Client(opening, hugeWindows=True, reading=False)
    try:
        await target.connect(client, b"h2")
        await waitConnected(client.handshake, "the TLS handshake")
        figures.alpn = client.alpn

        def capped() -> bool:
            figures.capped = rss.growth > rssCap
            return figures.capped

        await waitUntil(
            reactor, lambda: requests["stream"] - counted >= streams or capped(), 15
        )
        figures.reached = requests["stream"] - counted
        for _ in range(probes):
            if await waitUntil(reactor, capped, stall / probes):
                break
            figures.probes.append(await target.normalClient())
        if not probes:
            await waitUntil(reactor, capped, stall)
        figures.clientOpen = not client.disconnected
    finally:
        await rss.stop()
        await client.close()
    figures.rssGrowth = rss.growth
    figures.seconds = reactor.seconds() - started
    return figures


class TrickleFigures:
    """
    What L{trickledBodies} saw.

    @ivar statuses: how many streams got each response status.
    @ivar resets: how many streams were reset without a response.
    @ivar uncut: the streams neither answered nor reset at the end.
    @ivar cutAfter: seconds until the last stream was cut (C{None}: never).
    @ivar closedAfter: seconds until the proxy had closed every connection
        (C{None}: never).
    @ivar descriptorsBefore: the proxy's open descriptors before.
    @ivar descriptorsMost: the most it had open meanwhile.
    @ivar descriptorsAfter: how many it had open after the clients left.
    @ivar newFiles: files (not sockets or pipes) it had open meanwhile
        that it did not have before: temporary files of request bodies.
    """

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.resets = 0
        self.uncut = 0
        self.cutAfter: float | None = None
        self.closedAfter: float | None = None
        self.descriptorsBefore = 0
        self.descriptorsMost = 0
        self.descriptorsAfter = 0
        self.newFiles: set[str] = set()


async def trickledBodies(
    target: Target,
    connections: int,
    streams: int,
    every: float,
    limit: float,
) -> TrickleFigures:
    """
    C{connections} HTTP/2 connections each open C{streams} POST streams
    announcing a 1 MiB body (HEADERS without END_STREAM), then send
    one byte of DATA on every stream still open each C{every} seconds, for
    at most C{limit} seconds, until the proxy has cut every stream and
    closed every connection.  The proxy's descriptors are sampled
    meanwhile.
    """
    reactor = target.reactor
    figures = TrickleFigures()
    before = target.descriptors()
    knownFiles = {t for t in before if isFile(t)}
    figures.descriptorsBefore = len(before)

    def look() -> int:
        targets = target.descriptors()
        figures.newFiles.update(t for t in targets if isFile(t) and t not in knownFiles)
        return len(targets)

    block = requestBlock(
        "POST",
        "/echo",
        [("content-type", "application/octet-stream"), ("content-length", "1048576")],
    )
    ids = [2 * i + 1 for i in range(streams)]
    opening = b"".join(headersFrame(i, block, False) for i in ids)
    sampler = Sampler(reactor, look, 0.1)
    clients: list[H2Client] = []
    started = reactor.seconds()
    try:
        for _ in range(connections):
            clients.append(await target.connect(H2Client(opening), b"h2"))

        def allCut() -> bool:
            return all(c.cut(i) for c in clients for i in ids)

        while reactor.seconds() - started < limit:
            if await waitUntil(reactor, allCut, every):
                figures.cutAfter = reactor.seconds() - started
                break
            for c in clients:
                c.write(b"".join(dataFrame(i, b"x") for i in ids if not c.cut(i)))
        left = max(0.0, limit - (reactor.seconds() - started))
        if await waitUntil(reactor, lambda: all(c.disconnected for c in clients), left):
            figures.closedAfter = reactor.seconds() - started
    finally:
        for c in clients:
            await c.close()
        await sampler.stop()
    figures.descriptorsMost = max(sampler.values)
    for c in clients:
        figures.statuses.update(c.statuses.values())
        figures.resets += sum(1 for i in c.resets if i not in c.statuses)
        figures.uncut += sum(1 for i in ids if not c.cut(i))
    figures.descriptorsAfter = len(target.descriptors())
    return figures


class ResetFigures:
    """
    What L{rapidReset} saw.

    @ivar written: streams opened and reset before the connection ended.
    @ivar upstreamRequests: requests the upstream received meanwhile.
    @ivar goAway: the proxy's GOAWAY (last stream, error code), if any.
    @ivar closedAfter: seconds until the proxy closed the connection
        (C{None}: it did not).
    """

    def __init__(self) -> None:
        self.alpn: bytes | None = None
        self.written = 0
        self.upstreamRequests = 0
        self.goAway: tuple[int, int] | None = None
        self.closedAfter: float | None = None
        self.answered = 0


async def rapidReset(
    target: Target, total: int, batch: int, wait: float, resetAfter: float = 0.0
) -> ResetFigures:
    """
    One HTTP/2 connection opens C{total} streams and resets each (RST_STREAM
    CANCEL), in writes of C{batch} streams, until they are all sent or the
    proxy ends the connection; then waits up to C{wait} seconds for the
    proxy to close it.

    @param resetAfter: 0: each stream is C{GET /count} (answered at once)
        and its HEADERS and RST_STREAM go in the same write (the
        CVE-2023-44487 client); else each stream is C{GET /slow?delay=5}
        (never answered in time), and a batch's HEADERS go first and its
        RST_STREAMs this many seconds later, once the proxy has had time
        to forward them.  C{batch} is then at most the proxy's
        C{SETTINGS_MAX_CONCURRENT_STREAMS}.
    """
    reactor = target.reactor
    figures = ResetFigures()
    requests = target.upstream.requests
    counted = requests["count"] + requests["slow"]
    block = requestBlock("GET", "/slow?delay=5" if resetAfter else "/count")
    client = H2Client()
    try:
        await target.connect(client, b"h2")
        await waitConnected(client.settings, "the proxy's SETTINGS")
        figures.alpn = client.alpn
        started = reactor.seconds()
        while figures.written < total and not client.disconnected:
            first = figures.written
            count = min(batch, total - first)
            ids = range(2 * first + 1, 2 * (first + count), 2)
            if resetAfter:
                client.write(b"".join(headersFrame(i, block, True) for i in ids))
                await sleep(reactor, resetAfter)
                client.write(b"".join(resetFrame(i, CANCEL) for i in ids))
            else:
                client.write(
                    b"".join(
                        headersFrame(i, block, True) + resetFrame(i, CANCEL)
                        for i in ids
                    )
                )
            figures.written += count
            await sleep(reactor, 0)
        if await waitUntil(reactor, lambda: client.disconnected, wait):
            figures.closedAfter = reactor.seconds() - started
        # Requests the proxy sent just before the end still arrive.
        await sleep(reactor, 0.5)
    finally:
        await client.close()
    figures.goAway = client.goAway
    figures.answered = len(client.statuses)
    figures.upstreamRequests = requests["count"] + requests["slow"] - counted
    return figures


class StalledFigures:
    """
    What L{stalledHTTP11} saw.
    """

    def __init__(self) -> None:
        self.alpn: set[bytes | None] = set()
        self.reached = 0
        self.rssBefore = 0
        self.rssGrowth = 0
        self.clientsOpen = 0


async def stalledHTTP11(
    target: Target, clients: int, size: int, stall: float, tls: bool = True
) -> StalledFigures:
    """
    C{clients} HTTP/1.1 connections over TLS (or over plain TCP to
    L{Target.httpPort}, when not C{tls}) each GET C{size} bytes
    (C{/stream}) and read nothing; the proxy's RSS is sampled for C{stall}
    seconds from when every request has reached the upstream.
    """
    reactor = target.reactor
    figures = StalledFigures()
    requests = target.upstream.requests
    counted = requests["stream"]
    request = f"GET /stream?bytes={size} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(
        "ascii"
    )
    rss = Sampler(reactor, target.rss, 0.1)
    figures.rssBefore = rss.first
    stalled: list[StalledHTTP11] = []
    try:
        for _ in range(clients):
            if tls:
                client = await target.connect(StalledHTTP11(request), b"http/1.1")
            else:
                client = await target.connectPlain(StalledHTTP11(request, tls=False))
            stalled.append(client)
            await waitConnected(client.handshake, "the TLS handshake")
            figures.alpn.add(client.alpn)
        await waitUntil(reactor, lambda: requests["stream"] - counted >= clients, 10)
        figures.reached = requests["stream"] - counted
        await sleep(reactor, stall)
        figures.clientsOpen = sum(1 for c in stalled if not c.disconnected)
    finally:
        await rss.stop()
        for c in stalled:
            await c.close()
    figures.rssGrowth = rss.growth
    return figures


# -- the tests


class _HostileTestCase(TestCase):
    """
    Starts a L{CountingUpstream} and a proxy with one HTTPS listener and
    one site, L{HOST}, forwarding to it (C{server} are extra C{[server]}
    keys); a normal client is served twice before the test begins, so the
    proxy's code and memory are warm.  SIGTERM must make the proxy exit 0
    after the test.
    """

    timeout = 60
    server: dict[str, object] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-hostile-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = CountingUpstream(self.reactor, "A")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        authority = Authority()
        caFile = authority.writeRoot(os.path.join(self.directory, "ca.pem"))
        certFile, keyFile = authority.issue(HOST).write(self.directory, "a")
        site: dict[str, object] = {
            "name": "a",
            "hosts": [HOST],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
            "tls": "files",
            "cert_file": certFile,
            "key_file": keyFile,
        }
        keys: dict[str, object] = {"listen_https": [LOOPBACK_LISTEN]}
        keys.update(self.server)
        config = writeConfig(self.directory, [site], server=keys)
        self.proxy: ProxyProcess
        self.proxy, _ = await spawnProxy(
            self.reactor, ["--config", config], self.directory
        )
        self.addCleanup(self._stopProxy)
        httpsPort = (await waitHTTPSPorts(self.proxy))[0]
        self.target = Target(
            self.reactor, self.proxy.pid, httpsPort, caFile, self.upstream
        )
        for _ in range(2):
            answer, _seconds = await self.target.normalClient()
            self.assertEqual(answer, "2 200", self.proxy.output)

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    def assertServedQuickly(self, probes: Sequence[tuple[str, float]]) -> None:
        """
        Every probe of a normal client was answered 200 over HTTP/2 within
        a second.
        """
        for answer, seconds in probes:
            self.assertEqual(answer, "2 200", probes)
            self.assertLess(seconds, 1.0, probes)


class HugeWindowsTests(_HostileTestCase):
    """
    A client that opens huge windows and never reads (CVE-2019-9517)
    costs the proxy a bounded buffer per stream, not its responses.
    """

    async def test_hundredStreamsNeverRead(self) -> None:
        """
        100 streams of a 64 MiB response to a client that opened its
        windows to 2^31-1 and never reads its socket: the proxy's RSS grows
        by less than 64 MiB (not 6.4 GiB), it keeps the connection, and a
        normal client is served within a second three times meanwhile.
        """
        figures = await hugeWindows(
            self.target, streams=100, size=64 * MiB, stall=6.0, probes=3
        )
        self.assertEqual(figures.alpn, b"h2")
        self.assertEqual(figures.reached, 100, self.proxy.output)
        self.assertFalse(figures.capped)
        self.assertTrue(figures.clientOpen)
        self.assertEqual(len(figures.probes), 3)
        self.assertServedQuickly(figures.probes)
        self.assertLess(
            figures.rssGrowth,
            64 * MiB,
            f"RSS grew by {figures.rssGrowth / MiB:.1f} MiB",
        )


class TrickledBodyTests(_HostileTestCase):
    """
    Request bodies trickled over HTTP/2 are cut by the body deadlines,
    without temporary files and with a bounded number of descriptors.
    """

    server = {
        "header_timeout_secs": 2,
        "body_timeout_secs": 2,
        "min_body_rate_bytes_per_sec": 1000,
        "keepalive_timeout_secs": 2,
        "lingering_close_secs": 1,
        "upstream_max_connections": 100,
    }

    async def test_thousandTrickledBodies(self) -> None:
        """
        10 connections x 100 POST streams that announce a 1 MiB body and
        send one byte a second (never long enough without a byte for the
        idle deadline): every stream is answered 408 by the minimum rate
        soon after C{body_timeout_secs}, the proxy then closes every
        connection once C{keepalive_timeout_secs} pass, it never opens a
        file meanwhile (no request body goes to a temporary file), and its
        descriptors stay within the clients' and the upstream's cap.
        """
        figures = await trickledBodies(
            self.target, connections=10, streams=100, every=1.0, limit=15.0
        )
        self.assertEqual(dict(figures.statuses), {408: 1000}, self.proxy.output)
        self.assertEqual(figures.uncut, 0)
        assert figures.cutAfter is not None
        # body_timeout_secs, then the rate is checked at most a second late.
        self.assertLess(figures.cutAfter, 8.0)
        self.assertIsNotNone(figures.closedAfter, "a connection was left open")
        self.assertEqual(figures.newFiles, set())
        self.assertLessEqual(
            figures.descriptorsMost, figures.descriptorsBefore + 10 + 100
        )
        self.assertLessEqual(figures.descriptorsAfter, figures.descriptorsBefore + 5)


class RapidResetTests(_HostileTestCase):
    """
    Streams opened and reset at once (CVE-2023-44487) hardly reach the
    upstream, and the connection that does it is ended.
    """

    async def test_tenThousandResets(self) -> None:
        """
        10,000 streams opened and reset at once on one connection (HEADERS
        and RST_STREAM CANCEL together, in writes of 1,000) reach the
        upstream as at most 100 requests, and the proxy ends the connection
        with GOAWAY ENHANCE_YOUR_CALM; a normal client is served right
        after.
        """
        figures = await rapidReset(self.target, total=10_000, batch=1_000, wait=10.0)
        self.assertEqual(figures.alpn, b"h2")
        assert figures.goAway is not None, "no GOAWAY"
        self.assertEqual(figures.goAway[1], ENHANCE_YOUR_CALM)
        self.assertIsNotNone(figures.closedAfter, "the connection was left open")
        self.assertLessEqual(figures.upstreamRequests, 100)
        self.assertServedQuickly([await self.target.normalClient()])

    async def test_resetsAfterForwarding(self) -> None:
        """
        Streams reset only once the proxy had time to forward them (100
        slow requests, their resets 50 ms later, batch after batch) cost
        the upstream at most the reset budget, 100 requests, before the
        proxy ends the connection with GOAWAY ENHANCE_YOUR_CALM.
        """
        figures = await rapidReset(
            self.target, total=10_000, batch=100, wait=10.0, resetAfter=0.05
        )
        assert figures.goAway is not None, "no GOAWAY"
        self.assertEqual(figures.goAway[1], ENHANCE_YOUR_CALM)
        self.assertIsNotNone(figures.closedAfter, "the connection was left open")
        self.assertLessEqual(figures.written, 200)
        self.assertLessEqual(figures.upstreamRequests, 100)


class StalledClientTests(_HostileTestCase):
    """
    Clients that ask for large responses and read nothing cost the proxy
    almost no memory: it stops reading from the upstream instead.

    The upstream client reads at most 128 KiB at a time
    (C{revproxy/proxy/upstream.py}, C{_READ_SIZE}) and hands each read on
    whole, so a stalled response holds up to one read (HTTP/1.1, in its
    transport) or 64 KiB plus one read (HTTP/2, in its stream's buffer,
    whose producer is paused past 64 KiB): 20 of them hold at most 2.5 to
    3.75 MiB, beside TLS's copies.  (With 256 KiB reads, as before, they
    grew by 7-9 MiB over TLS.)
    """

    async def test_http11(self) -> None:
        """
        20 HTTP/1.1 clients over TLS, stalled on 8 MiB responses: the
        proxy's RSS grows by at most 5 MiB.
        """
        figures = await stalledHTTP11(self.target, clients=20, size=8 * MiB, stall=3.0)
        self.assertEqual(figures.alpn, {b"http/1.1"})
        self.assertEqual(figures.reached, 20)
        self.assertEqual(figures.clientsOpen, 20)
        self.assertLessEqual(
            figures.rssGrowth, 5 * MiB, f"RSS grew by {figures.rssGrowth / MiB:.2f} MiB"
        )

    async def test_http2(self) -> None:
        """
        20 HTTP/2 streams of 8 MiB responses on a connection with huge
        windows that reads nothing: the proxy's RSS grows by at most 5 MiB,
        and a normal client is served within a second meanwhile.
        """
        figures = await hugeWindows(
            self.target, streams=20, size=8 * MiB, stall=3.0, probes=1
        )
        self.assertEqual(figures.alpn, b"h2")
        self.assertEqual(figures.reached, 20)
        self.assertTrue(figures.clientOpen)
        self.assertServedQuickly(figures.probes)
        self.assertLessEqual(
            figures.rssGrowth, 5 * MiB, f"RSS grew by {figures.rssGrowth / MiB:.2f} MiB"
        )
