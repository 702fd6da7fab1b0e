"""
Helpers for the tests of L{revproxy.proxy.http2}: a recording handler, body
sink and producer, and L{H2Peer}, an L{HTTP2Connection} on a
L{StringTransport} with a L{Clock}, driven by hand-built frames or by a
client-side C{h2} connection.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import Event
from hpack import Encoder
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
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from revproxy.proxy.exchange import Exchange
from revproxy.proxy.frontend import FrontEnd
from revproxy.proxy.http2 import PREFACE, HTTP2Connection
from revproxy.proxy.limits import DEFAULT_LIMITS, ConnectionLimits

#: A request head as h2spec sends one.
GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/"),
    (b":authority", b"example.com"),
]


def post(path: bytes = b"/upload") -> list[tuple[bytes, bytes]]:
    """
    A POST head without content-length.
    """
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", b"example.com"),
    ]


def frame(kind: int, flags: int, streamID: int, payload: bytes) -> bytes:
    """
    A frame built byte by byte, for frames hyperframe refuses to build.
    """
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", streamID)
        + payload
    )


def parseFrames(data: bytes) -> list[Frame]:
    """
    The frames in C{data}, the server's bytes.
    """
    frames = []
    while data:
        parsed, length = Frame.parse_frame_header(memoryview(data[:9]))
        parsed.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(parsed)
        data = data[9 + length :]
    return frames


class RecordingHandler:
    """
    An C{RequestHandler} that keeps every exchange it is given.
    """

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        #: The stream id of each exchange, as the connection knew it then.
        self.streamIDs: list[int] = []

    def handle(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        channel: Any = exchange.channel
        self.streamIDs.append(channel._ofExchange[exchange].id)


class RecordingSink:
    """
    An C{BodySink} that keeps what it is given.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.done = False
        self.gone = False

    def bodyReceived(self, data: bytes) -> None:
        self.data.append(data)

    def bodyDone(self) -> None:
        self.done = True

    def clientGone(self) -> None:
        self.gone = True

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


@implementer(IPushProducer)
class RecordingProducer:
    """
    A response producer that records whether it is paused.
    """

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        pass


class H2Peer:
    """
    An L{HTTP2Connection} on a L{StringTransport}, and a client for it.

    @ivar client: A client-side C{h2} connection whose bytes go to the
        server with L{send}.
    @ivar encoder: The HPACK encoder of hand-built header blocks (L{headers}).
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        preface: bool = True,
    ) -> None:
        self.testCase = testCase
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.refusals: list[tuple[int, Exchange | None, bool]] = []
        self.front = FrontEnd(
            self.handler,
            self.clock,
            limits,
            refused=lambda code, exchange, secure: self.refusals.append(
                (code, exchange, secure)
            ),
        )
        self.transport = StringTransport()
        self.server = HTTP2Connection(self.front)
        self.server.makeConnection(self.transport)
        self.client = H2Connection(
            H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.encoder = Encoder()
        self.lost = False
        if preface:
            self.send()
            self.clientEvents()
        testCase.addCleanup(self.cleanUp)

    # -- to the server

    def send(self, data: bytes = b"") -> None:
        """
        Give the server the client's pending bytes, then C{data}.
        """
        self.server.dataReceived(self.client.data_to_send() + data)

    def raw(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def request(
        self,
        headers: list[tuple[bytes, bytes]] = GET,
        end: bool = True,
    ) -> tuple[int, Exchange]:
        """
        Open a stream with C{headers} (ended unless C{end} is false).

        @return: Its id and the exchange the handler got.
        """
        streamID = self.client.get_next_available_stream_id()
        self.client.send_headers(streamID, headers, end_stream=end)
        before = len(self.handler.exchanges)
        self.send()
        self.testCase.assertEqual(len(self.handler.exchanges), before + 1)
        return streamID, self.handler.exchanges[-1]

    def headers(
        self, streamID: int, headers: list[tuple[bytes, bytes]], end: bool = True
    ) -> bytes:
        """
        A hand-built HEADERS frame (END_HEADERS, and END_STREAM if C{end}).
        """
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        return bytes(
            HeadersFrame(
                streamID, data=self.encoder.encode(headers), flags=flags
            ).serialize()
        )

    # -- from the server

    def take(self) -> bytes:
        """
        What the server wrote since last asked.
        """
        data: bytes = self.transport.value()
        self.transport.clear()
        return data

    def frames(self) -> list[Frame]:
        """
        The frames the server wrote since last asked.
        """
        return parseFrames(self.take())

    def clientEvents(self) -> list[Event]:
        """
        What the server wrote since last asked, read by the client.
        """
        return list(self.client.receive_data(self.take()))

    def goAway(self) -> GoAwayFrame:
        """
        The one GOAWAY the server wrote since last asked.
        """
        goaways = [f for f in self.frames() if isinstance(f, GoAwayFrame)]
        self.testCase.assertEqual(len(goaways), 1, goaways)
        return goaways[0]

    def cleanUp(self) -> None:
        """
        End the connection: no timer may outlive it.
        """
        if not self.lost:
            self.loseConnection()
        self.testCase.assertEqual(self.clock.getDelayedCalls(), [])

    def loseConnection(self) -> None:
        self.lost = True
        self.server.connectionLost(Failure(ConnectionDone()))


def framesOf(kind: type[Frame], frames: list[Frame]) -> list[Any]:
    """
    The frames of C{kind} in C{frames}.
    """
    return [f for f in frames if isinstance(f, kind)]


__all__ = [
    "GET",
    "PREFACE",
    "ContinuationFrame",
    "DataFrame",
    "H2Peer",
    "RecordingHandler",
    "RecordingProducer",
    "RecordingSink",
    "RstStreamFrame",
    "SettingsFrame",
    "WindowUpdateFrame",
    "frame",
    "framesOf",
    "parseFrames",
    "post",
]
