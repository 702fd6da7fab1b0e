"""
Tests for L{revproxy.proxy.http2}: one class per section of RFC 9113 and
RFC 7541 with frames built by hand, then the connection's own rules (flow
control, request bodies, refusals, deadlines, limits, hostile clients).
"""

from __future__ import annotations

import struct
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.settings import SettingCodes
from hpack.exceptions import InvalidTableIndex
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.trial.unittest import SynchronousTestCase

from revproxy.private.h2 import forgetContentLength
from revproxy.proxy.http2 import (
    CLOSED_REMEMBERED,
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    PREFACE,
    RESET_BUDGET,
    STREAM_WINDOW,
    _errorCode,
    _goAwayFrame,
    _Head,
    _InboundFrames,
    _PeerGoAway,
    _Refusal,
    _SettingsAckWithPayload,
    _withErrorCode,
    readHead,
)
from revproxy.proxy.limits import ConnectionLimits
from tests.h2helpers import (
    GET,
    H2Peer,
    RecordingProducer,
    RecordingSink,
    frame,
    framesOf,
    parseFrames,
    post,
)


def settingsFrame() -> bytes:
    """
    An empty SETTINGS frame.
    """
    return bytes(SettingsFrame(0).serialize())


# -- RFC 9113 section 3: starting HTTP/2


class ConnectionPrefaceTests(SynchronousTestCase):
    """
    RFC 9113 section 3.4: the connection preface.
    """

    def test_serverSettingsAtOnce(self) -> None:
        """
        The server's SETTINGS (100 streams, the header list limit, 256 KiB
        stream windows) and a 1 MiB connection window are sent as soon as
        the connection is made, before the client says anything.
        """
        peer = H2Peer(
            self, limits=ConnectionLimits(max_headers_total_bytes=9000), preface=False
        )
        frames = peer.frames()
        settings = framesOf(SettingsFrame, frames)[0].settings
        self.assertEqual(settings[SettingCodes.MAX_CONCURRENT_STREAMS], 100)
        self.assertEqual(settings[SettingCodes.INITIAL_WINDOW_SIZE], STREAM_WINDOW)
        self.assertEqual(settings[SettingCodes.MAX_HEADER_LIST_SIZE], 9000)
        # RFC 8441: WebSocket over HTTP/2 is offered.
        self.assertEqual(settings[SettingCodes.ENABLE_CONNECT_PROTOCOL], 1)
        [update] = framesOf(WindowUpdateFrame, frames)
        self.assertEqual(update.stream_id, 0)
        self.assertEqual(update.window_increment, CONNECTION_WINDOW - 65535)
        self.assertEqual(peer.transport.producer, peer.server)
        self.assertTrue(peer.transport.streaming)

    def test_invalidPreface(self) -> None:
        """
        An invalid preface is answered GOAWAY PROTOCOL_ERROR and the
        connection closes.
        """
        peer = H2Peer(self, preface=False)
        peer.take()
        peer.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(peer.transport.disconnecting)
        self.assertIsNone(peer.transport.producer)

    def test_clientPrefaceAcknowledged(self) -> None:
        """
        The client's SETTINGS are acknowledged.
        """
        peer = H2Peer(self, preface=False)
        peer.take()
        peer.raw(PREFACE + settingsFrame())
        [ack] = framesOf(SettingsFrame, peer.frames())
        self.assertIn("ACK", ack.flags)


# -- RFC 9113 section 4: frames


class FrameSizeTests(SynchronousTestCase):
    """
    RFC 9113 section 4.2: frame size.
    """

    def test_maximumDataFrame(self) -> None:
        """
        A DATA frame of 16384 bytes is accepted.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        peer.raw(bytes(DataFrame(streamID, data=b"x" * 16384).serialize()))
        self.assertEqual(exchange.bodyBuffered, 16384)
        self.assertFalse(peer.transport.disconnecting)

    def test_overlongFrame(self) -> None:
        """
        A frame over SETTINGS_MAX_FRAME_SIZE is a connection error
        FRAME_SIZE_ERROR.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        peer.raw(frame(0, 0, streamID, b"x" * 16385))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)
        self.assertTrue(exchange.clientLeft)

    def test_headerBlockFragments(self) -> None:
        """
        A header block in a HEADERS and CONTINUATION frames is one request.
        """
        peer = H2Peer(self)
        block = peer.encoder.encode(GET)
        peer.raw(
            bytes(HeadersFrame(1, data=block[:3], flags=["END_STREAM"]).serialize())
            + frame(9, 0, 1, block[3:5])
            + frame(9, 4, 1, block[5:])
        )
        [exchange] = peer.handler.exchanges
        self.assertEqual(exchange.uri, b"/")


class HeaderCompressionTests(SynchronousTestCase):
    """
    RFC 9113 section 4.3 and RFC 7541: a header block that cannot be
    decoded is a connection error COMPRESSION_ERROR.
    """

    def assertCompressionError(self, block: bytes) -> None:
        peer = H2Peer(self)
        peer.raw(frame(1, 5, 1, block))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.COMPRESSION_ERROR)
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(peer.handler.exchanges, [])

    def test_indexZero(self) -> None:
        """
        Index 0 (RFC 7541 section 6.1).
        """
        self.assertCompressionError(b"\x80")

    def test_indexPastTables(self) -> None:
        """
        An index past the static and dynamic tables (RFC 7541 section 2.3.3).
        """
        self.assertCompressionError(b"\xbe")

    def test_literalNameIndexPastTables(self) -> None:
        """
        A literal whose name index is past the tables.
        """
        self.assertCompressionError(b"\x7f\x7f\x01a")

    def test_huffmanPaddingOver7Bits(self) -> None:
        """
        Huffman padding longer than 7 bits (RFC 7541 section 5.2).
        """
        self.assertCompressionError(b"\x82\x86\x84\x41\x01a\x00\x01a\x82\x1f\xff")

    def test_huffmanPaddingNotOnes(self) -> None:
        """
        Huffman padding that is not the EOS prefix.
        """
        self.assertCompressionError(b"\x82\x86\x84\x41\x01a\x00\x01a\x81\x18")

    def test_huffmanEOS(self) -> None:
        """
        A Huffman string holding EOS.
        """
        self.assertCompressionError(
            b"\x82\x86\x84\x41\x01a\x00\x01a\x84\xff\xff\xff\xff"
        )

    def test_tableSizeUpdateOverLimit(self) -> None:
        """
        A dynamic table size update above SETTINGS_HEADER_TABLE_SIZE (RFC
        7541 section 4.2).
        """
        self.assertCompressionError(b"\x3f\xe2\x1f\x82\x86\x84\x41\x01a")

    def test_tableSizeUpdateAfterField(self) -> None:
        """
        A dynamic table size update after a field (RFC 7541 section 4.2).
        """
        self.assertCompressionError(b"\x82\x20\x86\x84\x41\x01a")

    def test_truncatedLiteral(self) -> None:
        """
        A literal without its name.
        """
        self.assertCompressionError(b"\x40")

    def test_tableSizeUpdateAtStart(self) -> None:
        """
        A dynamic table size update within the limit at the start is fine.
        """
        peer = H2Peer(self)
        peer.raw(frame(1, 5, 1, b"\x3f\xe1\x1f\x82\x86\x84\x41\x01a"))
        self.assertEqual(len(peer.handler.exchanges), 1)

    def test_oversizedHeaderList(self) -> None:
        """
        A header list over SETTINGS_MAX_HEADER_LIST_SIZE is refused by the
        decoder: the setting is enforced, not only advertised.
        """
        peer = H2Peer(self, limits=ConnectionLimits(max_headers_total_bytes=1000))
        peer.raw(peer.headers(1, [*GET, (b"x-big", b"y" * 2000)]))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(peer.handler.exchanges, [])

    def test_errorCodeNamesHPACK(self) -> None:
        """
        L{_errorCode} maps h2's PROTOCOL_ERROR caused by an HPACK error to
        COMPRESSION_ERROR, and keeps the other codes.
        """
        error = ProtocolError("bad")
        error.__cause__ = InvalidTableIndex("x")
        self.assertEqual(_errorCode(error), ErrorCodes.COMPRESSION_ERROR)
        self.assertEqual(_errorCode(ProtocolError("x")), ErrorCodes.PROTOCOL_ERROR)
        calm = DenialOfServiceError("x")
        calm.__cause__ = InvalidTableIndex("y")
        self.assertEqual(_errorCode(calm), ErrorCodes.ENHANCE_YOUR_CALM)

    def test_withErrorCode(self) -> None:
        """
        L{_withErrorCode} rewrites the code of h2's trailing GOAWAY, or adds
        a GOAWAY when there is none.
        """
        ping = bytes(PingFrame(0, opaque_data=b"12345678").serialize())
        data = ping + _goAwayFrame(3, ErrorCodes.PROTOCOL_ERROR)
        frames = parseFrames(_withErrorCode(data, 3, ErrorCodes.COMPRESSION_ERROR))
        self.assertIsInstance(frames[0], PingFrame)
        [goaway] = framesOf(GoAwayFrame, frames)
        self.assertEqual(goaway.error_code, ErrorCodes.COMPRESSION_ERROR)
        self.assertEqual(goaway.last_stream_id, 3)
        [added] = framesOf(
            GoAwayFrame, parseFrames(_withErrorCode(b"", 0, ErrorCodes.PROTOCOL_ERROR))
        )
        self.assertEqual(added.error_code, ErrorCodes.PROTOCOL_ERROR)


# -- RFC 9113 section 5: streams


class StreamStateTests(SynchronousTestCase):
    """
    RFC 9113 section 5.1: stream states and identifiers.
    """

    def test_dataOnIdleStream(self) -> None:
        """
        DATA on an idle stream is a connection error PROTOCOL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(0, 0, 1, b"x"))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_dataOnHalfClosedStream(self) -> None:
        """
        DATA after the client's END_STREAM is a stream error STREAM_CLOSED;
        the connection goes on.
        """
        peer = H2Peer(self)
        streamID, _exchange = peer.request()
        peer.raw(frame(0, 0, streamID, b"x"))
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(reset.error_code, ErrorCodes.STREAM_CLOSED)
        self.assertFalse(peer.transport.disconnecting)

    def test_dataOnClosedStream(self) -> None:
        """
        DATA on a stream both sides ended with END_STREAM (the response is
        whole) is a connection error STREAM_CLOSED (section 5.1, "closed"),
        not the stream error of a half-closed stream.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request()
        exchange.respond(200, b"", [(b"content-length", b"2")])
        exchange.write(b"ok")
        exchange.finish()
        peer.frames()
        peer.raw(frame(0, 1, streamID, b"test"))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.STREAM_CLOSED)

    def test_dataOnClosedStreamForgotten(self) -> None:
        """
        Only the last L{CLOSED_REMEMBERED} such streams are remembered; on
        an older one DATA is left to C{h2}, which ends the connection too
        (it remembers how the stream closed) or resets the stream.
        """
        peer = H2Peer(self)
        first, exchange = peer.request()
        exchange.respond(200, b"", [(b"content-length", b"0")])
        exchange.finish()
        connection: Any = peer.server
        for streamID in range(101, 101 + 2 * CLOSED_REMEMBERED, 2):
            connection._frames.streamClosed(streamID)
        self.assertNotIn(first, connection._frames.closed)
        self.assertEqual(len(connection._frames.closed), CLOSED_REMEMBERED)
        peer.frames()
        peer.raw(frame(0, 1, first, b"test"))
        errors = [
            f.error_code
            for f in peer.frames()
            if isinstance(f, GoAwayFrame | RstStreamFrame)
        ]
        self.assertEqual(errors, [ErrorCodes.STREAM_CLOSED])

    def test_decreasingStreamID(self) -> None:
        """
        A stream id lower than one already used is PROTOCOL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(peer.headers(5, GET) + peer.headers(3, GET))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_evenStreamID(self) -> None:
        """
        A client-initiated even stream id is PROTOCOL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(peer.headers(2, GET))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_concurrentStreamLimit(self) -> None:
        """
        Opening more streams than SETTINGS_MAX_CONCURRENT_STREAMS is an
        error, and the handler never sees the extra stream.
        """
        peer = H2Peer(self)
        data = b"".join(
            peer.headers(1 + 2 * i, post(), end=False)
            for i in range(MAX_CONCURRENT_STREAMS + 1)
        )
        peer.raw(data)
        frames = peer.frames()
        errors = [
            f.error_code for f in frames if isinstance(f, GoAwayFrame | RstStreamFrame)
        ]
        self.assertIn(errors[0], (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.REFUSED_STREAM))
        self.assertLessEqual(len(peer.handler.exchanges), MAX_CONCURRENT_STREAMS)


class ErrorHandlingTests(SynchronousTestCase):
    """
    RFC 9113 section 5.4: a connection error ends the connection after a
    GOAWAY; streams in flight are told.
    """

    def test_connectionErrorTellsStreams(self) -> None:
        """
        A connection error tells every stream in flight its client is gone,
        closes, and aborts if the connection lingers.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request(post(), end=False)
        sink = RecordingSink()
        exchange.attach(sink)
        peer.raw(frame(6, 0, 0, b"\x00" * 7))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)
        self.assertTrue(sink.gone)
        self.assertTrue(peer.transport.disconnecting)
        peer.clock.advance(15)
        self.assertTrue(peer.transport.disconnected)

    def test_bytesAfterErrorIgnored(self) -> None:
        """
        Nothing the client sends after a connection error is read.
        """
        peer = H2Peer(self)
        peer.raw(frame(6, 0, 0, b"\x00" * 7))
        peer.take()
        peer.raw(peer.headers(1, GET))
        self.assertEqual(peer.take(), b"")
        self.assertEqual(peer.handler.exchanges, [])


class ExtensionTests(SynchronousTestCase):
    """
    RFC 9113 section 5.5: unknown frame types are ignored, but not inside a
    header block.
    """

    def test_unknownFrameIgnored(self) -> None:
        """
        An unknown frame type is ignored.
        """
        peer = H2Peer(self)
        peer.raw(frame(0x20, 0, 0, b"x") + peer.headers(1, GET))
        self.assertEqual(len(peer.handler.exchanges), 1)

    def test_unknownFrameInHeaderBlock(self) -> None:
        """
        An unknown frame inside a header block is PROTOCOL_ERROR.
        """
        peer = H2Peer(self)
        block = peer.encoder.encode(GET)
        peer.raw(frame(1, 1, 1, block) + frame(0x20, 0, 1, b"x"))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)


# -- RFC 9113 section 6: frame definitions


class FrameDefinitionTests(SynchronousTestCase):
    """
    RFC 9113 section 6: each frame type's rules.
    """

    def test_settingsAckWithPayload(self) -> None:
        """
        A SETTINGS ACK with a payload is FRAME_SIZE_ERROR (section 6.5).
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 1, 0, b"\x00\x03\x00\x00\x00\x64"))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)
        self.assertTrue(peer.transport.disconnecting)

    def test_settingsLengthNotMultipleOf6(self) -> None:
        """
        A SETTINGS frame whose length is not a multiple of 6 is
        FRAME_SIZE_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 0, 0, b"\x00" * 5))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_settingsUnknownIdentifier(self) -> None:
        """
        An unknown setting is ignored and acknowledged.
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 0, 0, struct.pack(">HI", 0xFF, 1)))
        [ack] = framesOf(SettingsFrame, peer.frames())
        self.assertIn("ACK", ack.flags)

    def test_settingsWindowOverflow(self) -> None:
        """
        A SETTINGS_INITIAL_WINDOW_SIZE change that overflows a stream's
        window is FLOW_CONTROL_ERROR (section 6.9.2).
        """
        peer = H2Peer(self)
        streamID, _exchange = peer.request()
        peer.raw(
            frame(8, 0, streamID, struct.pack(">I", 2**31 - 1 - 65535))
            + frame(4, 0, 0, struct.pack(">HI", 4, 2**31 - 1))
        )
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_settingsInitialWindowTooLarge(self) -> None:
        """
        SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1 is FLOW_CONTROL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 0, 0, struct.pack(">HI", 4, 2**31)))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_pingAnswered(self) -> None:
        """
        A PING is answered with its payload and ACK (section 6.7).
        """
        peer = H2Peer(self)
        peer.raw(bytes(PingFrame(0, opaque_data=b"abcdefgh").serialize()))
        [pong] = framesOf(PingFrame, peer.frames())
        self.assertEqual(pong.opaque_data, b"abcdefgh")
        self.assertIn("ACK", pong.flags)

    def test_pingWrongLength(self) -> None:
        """
        A PING whose length is not 8 is FRAME_SIZE_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(6, 0, 0, b"\x00" * 7))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_pingOnStream(self) -> None:
        """
        A PING on a stream is PROTOCOL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(6, 0, 1, b"\x00" * 8))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_rstStreamWrongLength(self) -> None:
        """
        A RST_STREAM whose length is not 4 is FRAME_SIZE_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(peer.headers(1, post(), end=False) + frame(3, 0, 1, b"\x00" * 3))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_priorityWrongLength(self) -> None:
        """
        A PRIORITY whose length is not 5 is FRAME_SIZE_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(2, 0, 1, b"\x00" * 4))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_windowUpdateZero(self) -> None:
        """
        A WINDOW_UPDATE of 0 on the connection is PROTOCOL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(8, 0, 0, b"\x00" * 4))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_windowUpdateOverflow(self) -> None:
        """
        A WINDOW_UPDATE that takes the connection window past 2^31-1 is
        FLOW_CONTROL_ERROR.
        """
        peer = H2Peer(self)
        peer.raw(frame(8, 0, 0, struct.pack(">I", 2**31 - 1)))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_goAwayOnStream(self) -> None:
        """
        A GOAWAY on a stream is PROTOCOL_ERROR (section 6.8).
        """
        peer = H2Peer(self)
        peer.raw(frame(7, 0, 1, b"\x00" * 8))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_pushPromiseFromClient(self) -> None:
        """
        A PUSH_PROMISE from a client is PROTOCOL_ERROR (section 8.4).
        """
        peer = H2Peer(self)
        peer.raw(
            peer.headers(1, post(), end=False) + frame(5, 4, 1, b"\x00\x00\x00\x02\x82")
        )
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_continuationOfOtherStream(self) -> None:
        """
        A CONTINUATION of another stream inside a header block is
        PROTOCOL_ERROR (section 6.10).
        """
        peer = H2Peer(self)
        block = peer.encoder.encode(GET)
        peer.raw(frame(1, 1, 1, block) + frame(9, 4, 3, b""))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)


class GoAwayTests(SynchronousTestCase):
    """
    RFC 9113 section 6.8: a client's GOAWAY.
    """

    def test_inFlightFinishThenClose(self) -> None:
        """
        After a client's GOAWAY the streams in flight are answered, then the
        connection closes.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request()
        peer.raw(_goAwayFrame(0, ErrorCodes.NO_ERROR))
        self.assertFalse(peer.transport.disconnecting)
        exchange.respond(200, b"OK", [(b"content-length", b"2")])
        exchange.write(b"hi")
        exchange.finish()
        frames = peer.frames()
        self.assertEqual(
            [type(f) for f in frames],
            [HeadersFrame, DataFrame, DataFrame, GoAwayFrame],
        )
        self.assertIn("END_STREAM", frames[2].flags)
        self.assertTrue(peer.transport.disconnecting)

    def test_idleCloses(self) -> None:
        """
        A client's GOAWAY on an idle connection closes it at once.
        """
        peer = H2Peer(self)
        peer.raw(_goAwayFrame(0, ErrorCodes.NO_ERROR))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(peer.transport.disconnecting)

    def test_splitAcrossReads(self) -> None:
        """
        A GOAWAY whose header and payload come a byte at a time is still
        taken out before h2 sees it.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request()
        for byte in _goAwayFrame(0, ErrorCodes.NO_ERROR):
            peer.raw(bytes([byte]))
        exchange.respond(200, b"OK", [])
        exchange.finish()
        self.assertEqual(
            [type(f) for f in peer.frames()], [HeadersFrame, DataFrame, GoAwayFrame]
        )

    def test_newStreamsRefused(self) -> None:
        """
        A stream the client opens after its GOAWAY is refused.
        """
        peer = H2Peer(self)
        _streamID, _exchange = peer.request()
        peer.raw(_goAwayFrame(0, ErrorCodes.NO_ERROR) + peer.headers(3, GET))
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(
            (reset.stream_id, reset.error_code), (3, ErrorCodes.REFUSED_STREAM)
        )
        self.assertEqual(len(peer.handler.exchanges), 1)


class InboundFramesTests(SynchronousTestCase):
    """
    L{_InboundFrames}, which finds frame boundaries in what clients send.
    """

    def test_passesBytesUnchanged(self) -> None:
        """
        Without frames to take out, the bytes go on as they came, uncopied.
        """
        scanner = _InboundFrames()
        data = (
            PREFACE
            + settingsFrame()
            + frame(1, 5, 1, b"abc")
            + frame(0, 1, 1, b"x" * 10)
        )
        [piece] = scanner.split(data)
        self.assertIs(piece, data)
        self.assertEqual(scanner.split(b""), [])

    def test_byteByByte(self) -> None:
        """
        Bytes fed one at a time come out the same, GOAWAY taken out.
        """
        scanner = _InboundFrames()
        body = settingsFrame() + frame(1, 5, 1, b"abc")
        goaway = _goAwayFrame(1, 0)
        pieces = []
        for byte in PREFACE + body + goaway + body:
            pieces.extend(scanner.split(bytes([byte])))
        data = b"".join(p for p in pieces if isinstance(p, bytes))
        self.assertEqual(data, PREFACE + body + body)
        [peerGoAway] = [p for p in pieces if isinstance(p, _PeerGoAway)]
        self.assertEqual(peerGoAway.lastStreamID, 1)

    def test_goAwayInHeaderBlockPassed(self) -> None:
        """
        A GOAWAY inside a header block goes to h2 (which fails the
        connection).
        """
        scanner = _InboundFrames()
        data = PREFACE + frame(1, 0, 1, b"abc") + _goAwayFrame(0, 0)
        self.assertEqual(scanner.split(data), [data])

    def test_settingsAckWithPayload(self) -> None:
        """
        A SETTINGS ACK with a payload ends the pieces.
        """
        scanner = _InboundFrames()
        pieces = scanner.split(PREFACE + frame(4, 1, 0, b"\x00" * 6) + b"more")
        self.assertEqual(pieces[0], PREFACE)
        self.assertIsInstance(pieces[1], _SettingsAckWithPayload)
        self.assertEqual(len(pieces), 2)


class FlowControlTests(SynchronousTestCase):
    """
    RFC 9113 section 6.9: the response follows the client's windows.
    """

    def test_windowOfOne(self) -> None:
        """
        With SETTINGS_INITIAL_WINDOW_SIZE 1, one byte of DATA goes, then the
        rest as the window opens.
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 0, 0, struct.pack(">HI", 4, 1)))
        streamID, exchange = peer.request()
        peer.take()
        exchange.respond(200, b"OK", [])
        exchange.write(b"hello")
        frames = peer.frames()
        data = framesOf(DataFrame, frames)
        self.assertEqual([f.data for f in data], [b"h"])
        peer.raw(frame(8, 0, streamID, struct.pack(">I", 10)))
        self.assertEqual(
            [f.data for f in framesOf(DataFrame, peer.frames())], [b"ello"]
        )

    def test_endStreamAtWindowZero(self) -> None:
        """
        END_STREAM goes when the buffer is empty, even at window 0.
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 0, 0, struct.pack(">HI", 4, 0)))
        _streamID, exchange = peer.request()
        peer.take()
        exchange.respond(200, b"OK", [])
        exchange.finish()
        [end] = framesOf(DataFrame, peer.frames())
        self.assertIn("END_STREAM", end.flags)
        self.assertFalse(peer.server.busy())

    def test_windowZeroPausesProducer(self) -> None:
        """
        A stream whose window is shut pauses its producer once 64 KiB wait,
        and resumes it once they drained under 16 KiB.
        """
        peer = H2Peer(self)
        peer.raw(frame(4, 0, 0, struct.pack(">HI", 4, 0)))
        streamID, exchange = peer.request()
        producer = RecordingProducer()
        exchange.registerProducer(producer)
        exchange.respond(200, b"OK", [])
        exchange.write(b"x" * 60000)
        self.assertFalse(producer.paused)
        exchange.write(b"x" * 10000)
        self.assertTrue(producer.paused)
        peer.take()
        peer.raw(frame(8, 0, streamID, struct.pack(">I", 60000)))
        self.assertFalse(producer.paused)
        self.assertEqual(producer.resumes, 1)

    def test_transportPausePausesEveryProducer(self) -> None:
        """
        When the transport pauses the connection, the pump stops and every
        stream's producer is paused; what waits stays bounded by the
        producers; resuming sends it and resumes them.
        """
        peer = H2Peer(self)
        peer.raw(
            frame(4, 0, 0, struct.pack(">HI", 4, 2**31 - 1))
            + frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))
        )
        producers = []
        for _ in range(3):
            _streamID, exchange = peer.request()
            producer = RecordingProducer()
            exchange.registerProducer(producer)
            exchange.respond(200, b"OK", [])
            producers.append((exchange, producer))
        peer.take()
        peer.server.pauseProducing()
        self.assertTrue(all(p.paused for _, p in producers))
        for exchange, producer in producers:
            # A producer that honours pauseProducing writes no more.
            if not producer.paused:
                exchange.write(b"x" * 16384)
        exchange.write(b"x" * 1000)
        self.assertEqual(peer.take(), b"")
        peer.server.resumeProducing()
        self.assertEqual(
            sum(len(f.data) for f in framesOf(DataFrame, peer.frames())), 1000
        )
        self.assertFalse(any(p.paused for _, p in producers))

    def test_producerRegisteredWhilePaused(self) -> None:
        """
        A producer registered while the transport is paused is paused at
        once.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request()
        peer.server.pauseProducing()
        producer = RecordingProducer()
        exchange.registerProducer(producer)
        self.assertTrue(producer.paused)
        peer.server.resumeProducing()
        self.assertFalse(producer.paused)

    def test_hugeWindowClientNotReading(self) -> None:
        """
        A client with huge windows that stops reading: the transport pauses
        the connection, producers pause, and the bytes queued stay bounded
        (64 KiB per flush at most past the pause).
        """
        peer = H2Peer(self)
        peer.raw(
            frame(4, 0, 0, struct.pack(">HI", 4, 2**31 - 1))
            + frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))
        )
        _streamID, exchange = peer.request()
        producer = RecordingProducer()
        exchange.registerProducer(producer)
        exchange.respond(200, b"OK", [])
        written = []
        original = peer.transport.write

        def write(data: bytes) -> None:
            original(data)
            written.append(len(data))
            if sum(written) > 64 * 1024:
                peer.server.pauseProducing()

        peer.transport.write = write  # type: ignore[method-assign]
        # The upstream writes until paused.
        while not producer.paused:
            exchange.write(b"x" * 16384)
        self.assertLess(len(peer.transport.value()), 200 * 1024)


# -- RFC 9113 section 8: HTTP semantics


class RequestHeadTests(SynchronousTestCase):
    """
    RFC 9113 section 8.2 and 8.3: the request head, as the handler gets it.
    """

    def test_exchange(self) -> None:
        """
        The exchange has the method, target, version, fields (no pseudo
        fields, :authority as host first) and transport facts.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request([*GET, (b"accept", b"*/*")])
        self.assertEqual(exchange.method, b"GET")
        self.assertEqual(exchange.uri, b"/")
        self.assertEqual(exchange.clientproto, b"HTTP/2")
        self.assertEqual(
            exchange.headers, [(b"host", b"example.com"), (b"accept", b"*/*")]
        )
        self.assertEqual(exchange.bodyLength, 0)
        self.assertIs(exchange.channel, peer.server)
        self.assertEqual(exchange.peer, peer.transport.getPeer())
        self.assertFalse(exchange.secure)

    def test_cookiesJoined(self) -> None:
        """
        Several cookie fields become one, joined by "; " (section 8.2.3);
        h2 joins them (last), as would L{readHead}.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request(
            [*GET, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")]
        )
        self.assertEqual(
            exchange.headers,
            [(b"host", b"example.com"), (b"x", b"y"), (b"cookie", b"a=1; b=2")],
        )

    def test_hostEqualAuthority(self) -> None:
        """
        A host equal to :authority is kept, not doubled.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request([*GET, (b"host", b"example.com")])
        self.assertEqual(exchange.headers, [(b"host", b"example.com")])

    def test_hostOnly(self) -> None:
        """
        A host without :authority is the host.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request([*GET[:3], (b"host", b"a.example")])
        self.assertEqual(exchange.headers, [(b"host", b"a.example")])

    def test_contentLength(self) -> None:
        """
        The body length is the content-length; unknown without one; 0 when
        the HEADERS frame ended the stream.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request(
            [*post(), (b"content-length", b"5")], end=False
        )
        self.assertEqual(exchange.bodyLength, 5)
        _streamID, exchange = peer.request(post(), end=False)
        self.assertIsNone(exchange.bodyLength)
        _streamID, exchange = peer.request(post())
        self.assertEqual(exchange.bodyLength, 0)

    def test_optionsAsterisk(self) -> None:
        """
        OPTIONS * is allowed.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request(
            [
                (b":method", b"OPTIONS"),
                (b":scheme", b"https"),
                (b":path", b"*"),
                (b":authority", b"a"),
            ]
        )
        self.assertEqual(exchange.uri, b"*")


class RequestRefusalTests(SynchronousTestCase):
    """
    RFC 9113 section 8.3: heads h2 accepts but a proxy to HTTP/1.1 must
    refuse, on the stream.
    """

    def assertRefused(
        self,
        headers: list[tuple[bytes, bytes]],
        code: int,
        limits: ConnectionLimits | None = None,
    ) -> H2Peer:
        peer = H2Peer(self, limits or ConnectionLimits())
        streamID = peer.client.get_next_available_stream_id()
        peer.client.send_headers(streamID, headers, end_stream=True)
        peer.send()
        self.assertEqual(peer.handler.exchanges, [])
        events = peer.clientEvents()
        [response] = [e for e in events if isinstance(e, ResponseReceived)]
        self.assertEqual(dict(response.headers)[b":status"], b"%d" % code)
        self.assertTrue([e for e in events if isinstance(e, StreamEnded)])
        [(refused, exchange, _secure)] = peer.refusals
        self.assertEqual(refused, code)
        assert exchange is not None
        self.assertEqual(exchange.refusal, code)
        self.assertFalse(peer.transport.disconnecting)
        return peer

    def test_pathNotOriginForm(self) -> None:
        """
        A :path not starting with / is 400.
        """
        self.assertRefused([GET[0], GET[1], (b":path", b"http://a/"), GET[3]], 400)

    def test_asteriskNotOptions(self) -> None:
        """
        * as the :path of anything but OPTIONS is 400.
        """
        self.assertRefused([GET[0], GET[1], (b":path", b"*"), GET[3]], 400)

    def test_pathWithSpace(self) -> None:
        """
        A :path with a space (it could not be forwarded) is 400.
        """
        self.assertRefused([GET[0], GET[1], (b":path", b"/a b"), GET[3]], 400)

    def test_methodNotToken(self) -> None:
        """
        A :method that is not a token is 400.
        """
        self.assertRefused([(b":method", b"G(T"), *GET[1:]], 400)

    def test_scheme(self) -> None:
        """
        A :scheme other than https or http is 400.
        """
        self.assertRefused([GET[0], (b":scheme", b"ftp"), *GET[2:]], 400)

    def test_connect(self) -> None:
        """
        CONNECT is 405.
        """
        self.assertRefused([(b":method", b"CONNECT"), (b":authority", b"a:443")], 405)

    def test_extendedConnectOtherProtocol(self) -> None:
        """
        An extended CONNECT (RFC 8441) for anything but websocket is 501.
        """
        self.assertRefused(
            [(b":method", b"CONNECT"), (b":protocol", b"webtransport"), *GET[1:]], 501
        )

    def test_extendedConnectHandled(self) -> None:
        """
        An extended CONNECT for websocket reaches the handler as a CONNECT
        with its :protocol, its :path as target, and no end to its body.
        """
        peer = H2Peer(self)
        peer.request(
            [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *GET[1:]],
            end=False,
        )
        [exchange] = peer.handler.exchanges
        self.assertEqual(
            (exchange.method, exchange.protocol, exchange.uri),
            (b"CONNECT", b"websocket", b"/"),
        )
        self.assertFalse(exchange.bodyComplete)

    def test_tooManyFields(self) -> None:
        """
        More than max_header_fields fields is 431.
        """
        self.assertRefused(
            GET + [(b"x-%d" % i, b"v") for i in range(11)],
            431,
            ConnectionLimits(max_header_fields=10),
        )

    def test_longPath(self) -> None:
        """
        A :path over max_request_line_bytes is 414.
        """
        self.assertRefused(
            [GET[0], GET[1], (b":path", b"/" + b"a" * 100), GET[3]],
            414,
            ConnectionLimits(max_request_line_bytes=64),
        )

    def test_headRefusalHasNoBody(self) -> None:
        """
        A refused HEAD gets its head, but no body.
        """
        peer = H2Peer(self)
        peer.raw(
            peer.headers(1, [(b":method", b"HEAD"), GET[1], (b":path", b"x"), GET[3]])
        )
        frames = peer.frames()
        self.assertEqual([f.data for f in framesOf(DataFrame, frames)], [b""])
        self.assertEqual([code for code, _, _ in peer.refusals], [400])

    def test_readHeadKeepsMethod(self) -> None:
        """
        L{readHead} fills in the method and target before refusing, for the
        log.
        """
        head = _Head()
        with self.assertRaises(_Refusal):
            readHead([(b":method", b"GET"), (b":path", b"x")], head, 100, 100)
        self.assertEqual((head.method, head.path), (b"GET", b"x"))


class ReadHeadTests(SynchronousTestCase):
    """
    L{readHead}'s own checks of host and :authority, which h2 4.4.1 makes
    first (as connection errors, see L{ConnectionSpecificTests}).
    """

    def assertRefusal(self, headers: list[tuple[bytes, bytes]], code: int) -> None:
        with self.assertRaises(_Refusal) as caught:
            readHead(headers, _Head(), 100, 100)
        self.assertEqual(caught.exception.code, code)

    def test_hostDiffersFromAuthority(self) -> None:
        """
        A host unlike :authority is 400; case does not count.
        """
        self.assertRefusal([*GET, (b"host", b"other.example")], 400)
        head = _Head()
        readHead([*GET, (b"host", b"Example.COM")], head, 100, 100)
        self.assertEqual(head.fields, [(b"host", b"Example.COM")])

    def test_noAuthority(self) -> None:
        """
        Neither :authority nor host is 400.
        """
        self.assertRefusal(GET[:3], 400)

    def test_twoHosts(self) -> None:
        """
        Two host fields are 400.
        """
        self.assertRefusal([*GET[:3], (b"host", b"a"), (b"host", b"a")], 400)

    def test_userinfo(self) -> None:
        """
        An :authority with userinfo is 400 (RFC 9113 section 8.3.1).
        """
        self.assertRefusal([*GET[:3], (b":authority", b"u@a")], 400)

    def test_cookiesJoined(self) -> None:
        """
        Several cookie fields become one where the first was.
        """
        head = _Head()
        readHead(
            [*GET, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")],
            head,
            100,
            100,
        )
        self.assertEqual(
            head.fields,
            [(b"host", b"example.com"), (b"cookie", b"a=1; b=2"), (b"x", b"y")],
        )

    def test_badContentLength(self) -> None:
        """
        A content-length that is not a number is 400.
        """
        self.assertRefusal([*GET, (b"content-length", b"x")], 400)


class ConnectionSpecificTests(SynchronousTestCase):
    """
    RFC 9113 section 8.2: malformed requests h2 rejects itself.
    """

    def assertMalformed(self, headers: list[tuple[bytes, bytes]]) -> None:
        peer = H2Peer(self)
        peer.raw(peer.headers(1, headers))
        frames = peer.frames()
        errors = [
            f.error_code for f in frames if isinstance(f, GoAwayFrame | RstStreamFrame)
        ]
        self.assertEqual(errors, [ErrorCodes.PROTOCOL_ERROR])
        self.assertEqual(peer.handler.exchanges, [])

    def test_uppercase(self) -> None:
        """
        An uppercase field name.
        """
        self.assertMalformed([*GET, (b"X-A", b"b")])

    def test_connection(self) -> None:
        """
        A connection field.
        """
        self.assertMalformed([*GET, (b"connection", b"keep-alive")])

    def test_hostDiffersFromAuthority(self) -> None:
        """
        A host unlike :authority (h2 fails the connection).
        """
        self.assertMalformed([*GET, (b"host", b"other.example")])

    def test_noAuthority(self) -> None:
        """
        Neither :authority nor host.
        """
        self.assertMalformed(GET[:3])

    def test_teNotTrailers(self) -> None:
        """
        te other than trailers.
        """
        self.assertMalformed([*GET, (b"te", b"gzip")])

    def test_pseudoAfterRegular(self) -> None:
        """
        A pseudo field after a regular one.
        """
        self.assertMalformed([*GET[:3], (b"x", b"y"), GET[3]])

    def test_emptyPath(self) -> None:
        """
        An empty :path.
        """
        self.assertMalformed([GET[0], GET[1], (b":path", b""), GET[3]])

    def test_contentLengthMismatch(self) -> None:
        """
        DATA unlike the content-length.
        """
        peer = H2Peer(self)
        peer.raw(peer.headers(1, [*post(), (b"content-length", b"1")], end=False))
        peer.raw(frame(0, 1, 1, b"ab"))
        self.assertEqual(peer.goAway().error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(peer.handler.exchanges[0].clientLeft)


# -- the connection's own rules


class ResponseTests(SynchronousTestCase):
    """
    The response side of L{ExchangeChannel}.
    """

    def test_response(self) -> None:
        """
        The head (lowercased, connection-specific fields dropped), the body
        and its end reach the client.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request()
        peer.take()
        exchange.respond(
            200,
            b"OK",
            [
                (b"Content-Type", b"text/plain"),
                (b"Connection", b"close"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Keep-Alive", b"5"),
                (b"Content-Length", b"5"),
            ],
        )
        exchange.write(b"hello")
        exchange.finish()
        events = peer.clientEvents()
        [response] = [e for e in events if isinstance(e, ResponseReceived)]
        self.assertEqual(
            response.headers,
            [
                (b":status", b"200"),
                (b"content-type", b"text/plain"),
                (b"content-length", b"5"),
            ],
        )
        self.assertEqual(
            b"".join(e.data for e in events if isinstance(e, DataReceived)), b"hello"
        )
        self.assertTrue([e for e in events if isinstance(e, StreamEnded)])
        self.assertFalse(peer.server.busy())

    def test_headGetsNoData(self) -> None:
        """
        DATA is dropped for HEAD; the content-length stays.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request([(b":method", b"HEAD"), *GET[1:]])
        peer.take()
        exchange.respond(200, b"OK", [(b"content-length", b"5")])
        exchange.write(b"hello")
        exchange.finish()
        frames = peer.frames()
        self.assertEqual([f.data for f in framesOf(DataFrame, frames)], [b""])

    def test_abortResetsStream(self) -> None:
        """
        An abort resets its stream INTERNAL_ERROR, tells the exchange on the
        next turn, and other streams go on.
        """
        peer = H2Peer(self)
        first, one = peer.request()
        _second, two = peer.request()
        peer.take()
        one.respond(200, b"OK", [])
        one.abort()
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(
            (reset.stream_id, reset.error_code), (first, ErrorCodes.INTERNAL_ERROR)
        )
        self.assertFalse(one.clientLeft)
        peer.clock.advance(0)
        self.assertTrue(one.clientLeft)
        two.respond(204, b"No Content", [])
        two.finish()
        self.assertEqual(len(framesOf(HeadersFrame, peer.frames())), 1)

    def test_earlyResponseResetsNoError(self) -> None:
        """
        A response finished before the request body ended is followed by
        RST_STREAM NO_ERROR (section 8.1) once more of the body comes after
        the lingering time.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        peer.take()
        exchange.respond(200, b"OK", [])
        exchange.finish()
        self.assertEqual(framesOf(RstStreamFrame, peer.frames()), [])
        peer.clock.advance(peer.server.limits.lingering_close_secs)
        peer.client.send_data(streamID, b"more")
        peer.send()
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(reset.error_code, ErrorCodes.NO_ERROR)
        self.assertFalse(peer.server.busy())

    def test_clientResetTellsExchange(self) -> None:
        """
        A client's RST_STREAM tells the exchange (and its sink) the client
        is gone.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        sink = RecordingSink()
        exchange.attach(sink)
        peer.client.reset_stream(streamID, ErrorCodes.CANCEL)
        peer.send()
        self.assertTrue(exchange.clientLeft)
        self.assertTrue(sink.gone)
        self.assertFalse(peer.server.busy())

    def test_connectionLostTellsExchanges(self) -> None:
        """
        Losing the connection tells every unfinished exchange.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request()
        peer.loseConnection()
        self.assertTrue(exchange.clientLeft)

    def test_sendAfterClientResetInSameRead(self) -> None:
        """
        A handler answering a stream that the same read reset loses it
        quietly.
        """
        peer = H2Peer(self)

        class Answering:
            def handle(self, exchange):  # type: ignore[no-untyped-def]
                exchange.respond(200, b"OK", [])
                exchange.write(b"x")
                exchange.finish()

        peer.front.handler = Answering()
        peer.raw(peer.headers(1, GET) + frame(3, 0, 1, struct.pack(">I", 8)))
        self.assertFalse(peer.server.busy())
        self.assertFalse(peer.transport.disconnecting)


class RequestBodyTests(SynchronousTestCase):
    """
    Request bodies: streamed to the exchange, acknowledged as consumed.
    """

    def windowUpdates(self, peer: H2Peer) -> dict[int, int]:
        updates: dict[int, int] = {}
        for f in framesOf(WindowUpdateFrame, peer.frames()):
            updates[f.stream_id] = updates.get(f.stream_id, 0) + f.window_increment
        return updates

    def test_bodyWithoutContentLength(self) -> None:
        """
        A body without content-length reaches the sink, then its end.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        sink = RecordingSink()
        exchange.attach(sink)
        peer.client.send_data(streamID, b"abc")
        peer.client.send_data(streamID, b"def", end_stream=True)
        peer.send()
        self.assertEqual(sink.body, b"abcdef")
        self.assertTrue(sink.done)

    def test_bodyBeforeAttachWaits(self) -> None:
        """
        Body bytes that come before the sink waits in the exchange and are
        replayed when it attaches.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        peer.client.send_data(streamID, b"abc", end_stream=True)
        peer.send()
        sink = RecordingSink()
        exchange.attach(sink)
        self.assertEqual(sink.body, b"abc")
        self.assertTrue(sink.done)

    def test_unattachedBodyBounded(self) -> None:
        """
        Past 64 KiB waiting for a sink nothing is acknowledged: the stream's
        window closes; attaching acknowledges the rest.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        peer.take()
        chunk = b"x" * 16384
        for _ in range(8):
            peer.raw(bytes(DataFrame(streamID, data=chunk).serialize()))
        acked = self.windowUpdates(peer).get(streamID, 0)
        self.assertLessEqual(acked, 80 * 1024)
        sink = RecordingSink()
        exchange.attach(sink)
        self.assertEqual(len(sink.body), 8 * 16384)
        self.assertEqual(acked + self.windowUpdates(peer).get(streamID, 0), 8 * 16384)

    def test_pauseStopsAcks(self) -> None:
        """
        A paused body is not acknowledged; resuming acknowledges what came.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        sink = RecordingSink()
        exchange.attach(sink)
        exchange.pauseBody()
        peer.take()
        for _ in range(10):
            peer.raw(bytes(DataFrame(streamID, data=b"y" * 16384).serialize()))
        self.assertEqual(self.windowUpdates(peer), {})
        self.assertEqual(len(sink.body), 10 * 16384)
        exchange.resumeBody()
        self.assertEqual(self.windowUpdates(peer)[streamID], 10 * 16384)

    def test_resetAcknowledgesRest(self) -> None:
        """
        Reset streams' unacknowledged bytes go back to the connection
        window (h2 sends the WINDOW_UPDATE once half of it was used).
        """
        peer = H2Peer(self)
        streamIDs = []
        for _ in range(3):
            streamID, exchange = peer.request(post(), end=False)
            exchange.attach(RecordingSink())
            exchange.pauseBody()
            for _ in range(15):
                peer.raw(bytes(DataFrame(streamID, data=b"y" * 16384).serialize()))
            streamIDs.append(streamID)
        self.assertEqual(self.windowUpdates(peer), {})
        peer.raw(b"".join(frame(3, 0, s, struct.pack(">I", 8)) for s in streamIDs))
        self.assertEqual(self.windowUpdates(peer), {0: 45 * 16384})

    def test_continueOnAttach(self) -> None:
        """
        expect: 100-continue is answered when the sink attaches, and the
        field is not given to the handler.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request(
            [*post(), (b"expect", b"100-continue")], end=False
        )
        self.assertIsNone(exchange.header(b"expect"))
        self.assertEqual(framesOf(HeadersFrame, peer.frames()), [])
        exchange.attach(RecordingSink())
        [info] = [
            e
            for e in peer.clientEvents()
            if isinstance(e, InformationalResponseReceived)
        ]
        self.assertEqual(info.headers, [(b":status", b"100")])


class RefuseTests(SynchronousTestCase):
    """
    L{HTTP2Connection.refuse}.
    """

    def test_bodyTooLarge(self) -> None:
        """
        A body over the exchange's limit is answered 413 and END_STREAM;
        the refusal is told, the sink told; DATA the client still sends is
        acknowledged and dropped for C{lingering_close_secs}, then answered
        RST_STREAM NO_ERROR (curl takes an earlier reset for a failed
        stream).
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        exchange.bodyLimit = 10
        sink = RecordingSink()
        exchange.attach(sink)
        peer.take()
        peer.client.send_data(streamID, b"x" * 20)
        peer.send()
        frames: list[Any] = [
            f for f in peer.frames() if not isinstance(f, WindowUpdateFrame)
        ]
        self.assertEqual([type(f) for f in frames], [HeadersFrame, DataFrame])
        self.assertIn(
            (b":status", b"413"), peer.client.decoder.decode(frames[0].data, raw=True)
        )
        self.assertTrue(frames[1].data.startswith(b"413 Content Too Large: "))
        self.assertIn("END_STREAM", frames[1].flags)
        peer.client.send_data(streamID, b"y" * 5)
        peer.send()
        later = peer.frames()
        self.assertEqual(framesOf(RstStreamFrame, later), [])
        peer.clock.advance(peer.server.limits.lingering_close_secs)
        peer.client.send_data(streamID, b"y" * 5)
        peer.send()
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(reset.error_code, ErrorCodes.NO_ERROR)
        self.assertEqual([code for code, _, _ in peer.refusals], [413])
        self.assertEqual(exchange.refusal, 413)
        self.assertTrue(sink.gone)
        self.assertFalse(peer.server.busy())

    def test_refuseAfterHeadAborts(self) -> None:
        """
        A refusal after the response head began resets the stream.
        """
        peer = H2Peer(self)
        _streamID, exchange = peer.request(post(), end=False)
        exchange.respond(200, b"OK", [])
        peer.take()
        peer.server.refuse(exchange, 413, "too large")
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(reset.error_code, ErrorCodes.INTERNAL_ERROR)
        self.assertTrue(exchange.clientLeft)
        peer.clock.advance(0)


class DeadlineTests(SynchronousTestCase):
    """
    The connection's deadlines, on one timer.
    """

    limits = ConnectionLimits(
        header_timeout_secs=10,
        body_timeout_secs=30,
        min_body_rate_bytes_per_sec=100,
        keepalive_timeout_secs=60,
        send_timeout_secs=20,
    )

    def test_noRequest(self) -> None:
        """
        A connection with no request head within header_timeout_secs is
        closed with GOAWAY.
        """
        peer = H2Peer(self, limits=self.limits)
        peer.clock.advance(9.9)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(0.1)
        self.assertEqual(peer.goAway().error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(peer.transport.disconnecting)

    def test_unfinishedHeaderBlock(self) -> None:
        """
        A header block never finished does not keep the connection.
        """
        peer = H2Peer(self, limits=self.limits)
        peer.raw(frame(1, 1, 1, peer.encoder.encode(GET)))
        peer.clock.advance(10)
        self.assertTrue(peer.transport.disconnecting)

    def test_keepAlive(self) -> None:
        """
        No open stream for keepalive_timeout_secs: GOAWAY NO_ERROR and close.
        """
        peer = H2Peer(self, limits=self.limits)
        streamID, exchange = peer.request()
        peer.clock.advance(100)
        self.assertFalse(peer.transport.disconnecting)
        exchange.respond(204, b"No Content", [])
        exchange.finish()
        peer.take()
        peer.clock.advance(59)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(1)
        goaway = peer.goAway()
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (0, streamID))
        self.assertTrue(peer.transport.disconnecting)

    def test_pingsDoNotKeepAlive(self) -> None:
        """
        PINGs do not keep an idle connection.
        """
        peer = H2Peer(self, limits=self.limits)
        _streamID, exchange = peer.request()
        exchange.respond(204, b"No Content", [])
        exchange.finish()
        for _ in range(6):
            peer.clock.advance(10)
            peer.raw(bytes(PingFrame(0).serialize()))
        self.assertTrue(peer.transport.disconnecting)

    def test_bodyIdle(self) -> None:
        """
        No DATA for body_timeout_secs on a stream reading its body: 408.
        """
        peer = H2Peer(
            self,
            limits=ConnectionLimits(
                body_timeout_secs=30, min_body_rate_bytes_per_sec=0
            ),
        )
        _streamID, exchange = peer.request(post(), end=False)
        sink = RecordingSink()
        exchange.attach(sink)
        peer.clock.advance(29)
        self.assertEqual(peer.refusals, [])
        peer.clock.advance(1)
        self.assertEqual([code for code, _, _ in peer.refusals], [408])
        self.assertTrue(sink.gone)
        self.assertFalse(peer.transport.disconnecting)

    def test_bodyTooSlow(self) -> None:
        """
        A body coming slower than the minimum rate once body_timeout_secs
        passed: 408.
        """
        peer = H2Peer(self, limits=self.limits)
        streamID, exchange = peer.request(post(), end=False)
        exchange.attach(RecordingSink())
        for _ in range(40):
            peer.clock.advance(1)
            peer.raw(bytes(DataFrame(streamID, data=b"x" * 10).serialize()))
        self.assertEqual([code for code, _, _ in peer.refusals], [408])

    def test_pausedBodyHasNoDeadline(self) -> None:
        """
        A body we paused is not the client's fault: no 408; the clock
        starts over on resume.
        """
        peer = H2Peer(self, limits=self.limits)
        _streamID, exchange = peer.request(post(), end=False)
        exchange.attach(RecordingSink())
        exchange.pauseBody()
        peer.clock.advance(100)
        self.assertEqual(peer.refusals, [])
        exchange.resumeBody()
        peer.clock.advance(29)
        self.assertEqual(peer.refusals, [])
        peer.clock.advance(1)
        self.assertEqual([code for code, _, _ in peer.refusals], [408])

    def test_sendStalled(self) -> None:
        """
        A stream whose window stays shut with bytes waiting for
        send_timeout_secs is reset and its exchange told.
        """
        peer = H2Peer(self, limits=self.limits)
        peer.raw(frame(4, 0, 0, struct.pack(">HI", 4, 0)))
        _streamID, exchange = peer.request()
        exchange.respond(200, b"OK", [])
        exchange.write(b"x" * 10)
        peer.take()
        peer.clock.advance(19)
        self.assertFalse(exchange.clientLeft)
        peer.clock.advance(1)
        self.assertTrue(exchange.clientLeft)
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(reset.error_code, ErrorCodes.INTERNAL_ERROR)

    def test_transportPausedTooLong(self) -> None:
        """
        A transport paused for send_timeout_secs aborts the connection.
        """
        peer = H2Peer(self, limits=self.limits)
        _streamID, _exchange = peer.request()
        peer.server.pauseProducing()
        peer.clock.advance(19)
        self.assertFalse(peer.transport.disconnected)
        peer.clock.advance(1)
        self.assertTrue(peer.transport.disconnected)

    def test_resumedTransportNoAbort(self) -> None:
        """
        A transport that resumed in time is not aborted.
        """
        peer = H2Peer(self, limits=self.limits)
        _streamID, _exchange = peer.request()
        peer.server.pauseProducing()
        peer.clock.advance(10)
        peer.server.resumeProducing()
        peer.clock.advance(30)
        self.assertFalse(peer.transport.disconnected)

    def test_noTimerAfterConnectionLost(self) -> None:
        """
        Losing the connection cancels the timer (L{H2Peer.cleanUp} checks
        every test).
        """
        peer = H2Peer(self, limits=self.limits)
        peer.request(post(), end=False)
        self.assertEqual(len(peer.clock.getDelayedCalls()), 1)
        peer.loseConnection()
        self.assertEqual(peer.clock.getDelayedCalls(), [])


class LimitTests(SynchronousTestCase):
    """
    Requests per connection and graceful drain.
    """

    def test_maxRequests(self) -> None:
        """
        The stream that reaches max_requests_per_connection is answered and
        named last by a GOAWAY; later streams are refused; the connection
        closes once it is done.
        """
        peer = H2Peer(self, limits=ConnectionLimits(max_requests_per_connection=2))
        _first, one = peer.request()
        second, two = peer.request()
        goaway = peer.goAway()
        self.assertEqual((goaway.last_stream_id, goaway.error_code), (second, 0))
        peer.raw(peer.headers(5, GET))
        [reset] = framesOf(RstStreamFrame, peer.frames())
        self.assertEqual(
            (reset.stream_id, reset.error_code), (5, ErrorCodes.REFUSED_STREAM)
        )
        self.assertEqual(len(peer.handler.exchanges), 2)
        one.respond(204, b"", [])
        one.finish()
        self.assertFalse(peer.transport.disconnecting)
        two.respond(204, b"", [])
        two.finish()
        self.assertTrue(peer.transport.disconnecting)

    def test_drain(self) -> None:
        """
        drain(): SETTINGS_MAX_CONCURRENT_STREAMS 0 and GOAWAY naming the
        highest stream; the stream in flight finishes; then close.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request()
        peer.take()
        self.assertTrue(peer.server.busy())
        peer.server.drain()
        frames = peer.frames()
        [settings] = framesOf(SettingsFrame, frames)
        self.assertEqual(settings.settings, {SettingCodes.MAX_CONCURRENT_STREAMS: 0})
        [goaway] = framesOf(GoAwayFrame, frames)
        self.assertEqual(goaway.last_stream_id, streamID)
        self.assertFalse(peer.transport.disconnecting)
        exchange.respond(200, b"OK", [])
        exchange.write(b"done")
        exchange.finish()
        self.assertTrue(peer.transport.disconnecting)
        self.assertFalse(peer.server.busy())

    def test_drainIdle(self) -> None:
        """
        drain() on an idle connection closes it at once.
        """
        peer = H2Peer(self)
        self.assertFalse(peer.server.busy())
        peer.server.drain()
        self.assertTrue(peer.transport.disconnecting)


class HostileClientTests(SynchronousTestCase):
    """
    Rapid reset and control-frame floods.
    """

    def test_rapidReset(self) -> None:
        """
        10,000 streams opened and reset reach the handler as at most
        RESET_BUDGET exchanges, and the connection ends with GOAWAY
        ENHANCE_YOUR_CALM.
        """
        peer = H2Peer(self)
        peer.take()
        for batch in range(100):
            data = b"".join(
                peer.headers(1 + 2 * (batch * 100 + i), GET, end=False)
                + frame(3, 0, 1 + 2 * (batch * 100 + i), struct.pack(">I", 8))
                for i in range(100)
            )
            peer.raw(data)
        self.assertLessEqual(len(peer.handler.exchanges), RESET_BUDGET)
        goAway = peer.goAway()
        self.assertEqual(goAway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        # It names the last stream taken, not the last one h2 parsed in
        # that read: the client may send the others again elsewhere.
        self.assertEqual(goAway.last_stream_id, max(peer.handler.streamIDs))
        self.assertTrue(peer.transport.disconnecting)

    def test_answeredStreamsGiveCreditBack(self) -> None:
        """
        Streams answered in full give reset credits back: a client that
        resets some of many answered streams keeps its connection.
        """
        peer = H2Peer(self)
        for _ in range(3 * RESET_BUDGET):
            streamID, exchange = peer.request()
            exchange.respond(204, b"", [])
            exchange.finish()
            streamID, exchange = peer.request()
            peer.client.reset_stream(streamID)
            peer.send()
            peer.clientEvents()
        self.assertFalse(peer.transport.disconnecting)

    def test_pingFloodWhilePaused(self) -> None:
        """
        PINGs while the client does not read: the connection is aborted
        once the answers queued pass the bound.
        """
        peer = H2Peer(self)
        peer.server.pauseProducing()
        ping = bytes(PingFrame(0).serialize())
        for _ in range(50):
            peer.raw(ping * 100)
        self.assertTrue(peer.transport.disconnected)
        self.assertLess(len(peer.transport.value()), 80 * 1024)


class EventsTests(SynchronousTestCase):
    """
    Stray events do not break the connection.
    """

    def test_trailersIgnored(self) -> None:
        """
        Request trailers end the body; they are not forwarded.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(post(), end=False)
        sink = RecordingSink()
        exchange.attach(sink)
        peer.client.send_data(streamID, b"ab")
        peer.client.send_headers(streamID, [(b"x-t", b"1")], end_stream=True)
        peer.send()
        self.assertEqual(sink.body, b"ab")
        self.assertTrue(sink.done)

    def test_resetUnknownStreamAfterFinish(self) -> None:
        """
        A RST_STREAM for a stream already answered is ignored.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request()
        exchange.respond(204, b"", [])
        exchange.finish()
        peer.raw(frame(3, 0, streamID, struct.pack(">I", 8)))
        self.assertFalse(peer.transport.disconnecting)
        self.assertEqual(
            [e for e in peer.clientEvents() if isinstance(e, StreamReset)], []
        )


class H2PrivateNamesTests(SynchronousTestCase):
    """
    The one private name of C{h2} revproxy uses, on C{h2}'s real objects:
    L{forgetContentLength}, which reads and writes an C{h2} stream's
    C{_expected_content_length}.
    """

    def test_expectedContentLength(self) -> None:
        """
        An C{h2} stream of a request with a content-length keeps it in
        C{_expected_content_length}; L{forgetContentLength} clears it.
        """
        peer = H2Peer(self)
        streamID, _exchange = peer.request(
            [*post(), (b"content-length", b"100")], end=False
        )
        conn: Any = peer.server._conn
        stream = conn.streams[streamID]
        self.assertEqual(stream._expected_content_length, 100)
        forgetContentLength(conn, streamID)
        self.assertIsNone(stream._expected_content_length)
        forgetContentLength(conn, streamID + 2)

    def test_answeredEarlyEndsShort(self) -> None:
        """
        A client answered 413 from its content-length that stops sending
        and ends its stream short of that length keeps its connection: the
        next stream is served.
        """
        peer = H2Peer(self)
        streamID, exchange = peer.request(
            [*post(), (b"content-length", b"100")], end=False
        )
        self.assertFalse(exchange.limitBody(10))
        peer.take()
        peer.client.send_data(streamID, b"x" * 5, end_stream=True)
        peer.send()
        self.assertEqual(framesOf(GoAwayFrame, peer.frames()), [])
        _, second = peer.request()
        second.respond(200, b"OK", [(b"content-length", b"0")])
        second.finish()
        self.assertEqual(framesOf(GoAwayFrame, peer.frames()), [])
