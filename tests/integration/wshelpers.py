# -*- test-case-name: tests.integration.test_websocket -*-
"""
What the WebSocket tunnel tests (issue #15) share, on top of
L{tests.integration.support}:

  - L{EchoServer}: a real WebSocket upstream (the C{websockets} package's
    asyncio server, in a thread with its own event loop) that echoes,
    closes with a chosen code, or floods;
  - L{UpgradeAnswerUpstream}: a plain HTTP/1.1 upstream on the reactor that
    answers an upgrade request with an ordinary response (200, 400, 426) or
    with a 101 that lacks the requested C{Upgrade};
  - clients: L{openWebSocket} (C{websockets}' sync client, ws and wss over
    HTTP/1.1), L{RawTunnel} (a hand-made upgrade on a plain socket, cheap
    enough for a thousand at once), and L{H2WebSocket} (RFC 8441 extended
    CONNECT written with C{h2} and C{wsproto} over TLS with ALPN h2);
  - L{inThread}, which runs a blocking client off the reactor thread, and the
    config and access-log helpers.

Everything is on C{127.0.0.1}; every socket has a timeout and every loop a
bound.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)

from tests.integration.support import (
    LOOPBACK_LISTEN,
    IIntegrationReactor,
    configText,
    getReactor,
    replaceFile,
    withTimeout,
)

T = TypeVar("T")

KiB = 1024
MiB = 1024 * KiB

#: The message sizes the echo tests send, each as text and as binary.
MESSAGE_SIZES = (1, KiB, 64 * KiB, MiB, 16 * MiB)

#: The largest message any client or server here accepts.
MAX_MESSAGE = 32 * MiB

#: How long one blocking socket operation may take.
SOCKET_TIMEOUT = 20.0


def payload(size: int, text: bool, seed: int = 0) -> str | bytes:
    """
    A message of C{size} bytes in which a lost, repeated or moved piece
    shows: printable ASCII for text, every byte value for binary.
    """
    if text:
        block = "".join(chr(32 + (seed + i) % 95) for i in range(95))
        return (block * (size // len(block) + 1))[:size]
    raw = bytes((seed + i) % 256 for i in range(256))
    return (raw * (size // len(raw) + 1))[:size]


async def inThread(
    f: Callable[..., T], *args: Any, what: str, seconds: float = 60.0
) -> T:
    """
    Run the blocking C{f(*args)} in a thread of its own (not the reactor's
    pool, which a test with many clients could exhaust) and wait for its
    result; fail naming C{what} after C{seconds}.  The thread itself ends
    by its sockets' timeouts.
    """
    reactor = cast(IReactorFromThreads, getReactor())
    d: Deferred[T] = Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException as e:
            failure = Failure(e)
            reactor.callFromThread(d.errback, failure)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name=f"inThread: {what}", daemon=True).start()
    value: T = await withTimeout(d, seconds, what)
    return value


# -- the WebSocket upstream


class EchoServer:
    """
    A WebSocket server on C{127.0.0.1} (C{websockets}' asyncio server, run
    in a thread with its own event loop).  What a connection does depends
    on its path:

      - C{/close/CODE}: echoes the first message, then closes with CODE and
        the reason C{"bye"};
      - C{/flood/BYTES}: sends BYTES in binary messages of 1 MiB, as fast as
        the connection takes them (C{send} waits while its write buffer is
        full, so a stalled reader stalls it), then waits for the close;
      - anything else: echoes every text and binary message.

    It answers pings itself and never pings.

    @ivar port: its port, once L{start} returned.
    @ivar opened: how many WebSocket connections it accepted.
    @ivar open: how many are open now.
    @ivar ended: per ended connection, its path, the close code and
        reason it received (L{None} when there was no close frame).
    @ivar requests: the request headers of each handshake, names lowercase.
    @ivar flooded: per C{/flood} connection (by its sequence number), the
        bytes handed to C{send} so far.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.opened = 0
        self.open = 0
        self.ended: list[tuple[str, int | None, str | None]] = []
        self.requests: list[dict[str, str]] = []
        self.flooded: dict[int, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None

    def start(self, timeout: float = 10.0) -> int:
        """
        Start the loop's thread and listen; return the port.
        """
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(self._listen())
            except BaseException as e:
                failed.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="EchoServer", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the echo server did not start")
        if failed:
            raise failed[0]
        return self.port

    async def _listen(self) -> Server:
        server = await serve(
            self._handle,
            self.host,
            0,
            compression=None,
            max_size=MAX_MESSAGE,
            ping_interval=None,
            close_timeout=2,
        )
        self.port = int(next(iter(server.sockets)).getsockname()[1])
        return server

    def stop(self, timeout: float = 10.0) -> None:
        """
        Close every connection (code 1001), stop listening and end the
        thread.  Blocking: run it with L{inThread}.
        """
        loop, server = self._loop, self._server
        if loop is None or server is None or loop.is_closed():
            return

        async def close() -> None:
            server.close()
            await server.wait_closed()

        future = asyncio.run_coroutine_threadsafe(close(), loop)
        try:
            future.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout)

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        path = request.path if request is not None else ""
        with self._lock:
            self.opened += 1
            self.open += 1
            number = self.opened
            if request is not None:
                self.requests.append(
                    {k.lower(): v for k, v in request.headers.raw_items()}
                )
        try:
            if path.startswith("/close/"):
                code = int(path.rsplit("/", 1)[1])
                await ws.send(await ws.recv())
                await ws.close(code, "bye")
            elif path.startswith("/flood/"):
                await self._flood(ws, number, int(path.rsplit("/", 1)[1]))
            else:
                async for message in ws:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            with self._lock:
                self.open -= 1
                self.ended.append((path, ws.close_code, ws.close_reason))

    async def _flood(self, ws: ServerConnection, number: int, total: int) -> None:
        chunk = b"\xa5" * MiB
        self.flooded[number] = 0
        while self.flooded[number] < total:
            size = min(len(chunk), total - self.flooded[number])
            await ws.send(chunk[:size])
            self.flooded[number] += size
        await ws.wait_closed()


# -- a plain HTTP upstream that refuses upgrades


#: What L{UpgradeAnswerUpstream} answers to C{/answer/WHAT}.
ANSWERS: dict[bytes, bytes] = {
    b"200": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 13\r\n\r\nno upgrade ok"
    ),
    b"400": (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 11\r\n\r\nbad request"
    ),
    b"426": (
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 16\r\n\r\nupgrade required"
    ),
    # A 101 that does not say which protocol it switches to...
    b"101-no-upgrade": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
    # ...and one that switches to another than the one asked for.
    b"101-h2c": (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
        b"Upgrade: h2c\r\n\r\n"
    ),
}

#: What it writes after a 101: if the proxy tunnels it, the client sees it.
AFTER_101 = b"TUNNELLED-BYTES"

PLAIN_BODY = b"plain answer\n"


class _AnswerProtocol(Protocol):
    """
    Reads request heads (GETs, no bodies) and answers each by its path;
    closes after a 101.
    """

    def __init__(self, upstream: UpgradeAnswerUpstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.switched = False

    def connectionMade(self) -> None:
        self.upstream.connections.add(self)
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.switched:
            self.upstream.stray += data
            return
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and not self.switched:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.answer(head)

    def answer(self, head: bytes) -> None:
        self.upstream.heads.append(head)
        transport = self.transport
        assert transport is not None
        target = head.split(b"\r\n", 1)[0].split(b" ")[1]
        what = target.rsplit(b"/", 1)[1] if target.startswith(b"/answer/") else b""
        response = ANSWERS.get(what)
        if response is None:
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(PLAIN_BODY), PLAIN_BODY)
            )
        elif what.startswith(b"101"):
            self.switched = True
            self.upstream.stray += self.buffer
            transport.write(response + AFTER_101)
            transport.loseConnection()
        else:
            transport.write(response)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.upstream.connections.discard(self)
        self.closed.callback(None)


class UpgradeAnswerUpstream(Factory):
    """
    A plain HTTP/1.1 upstream on the reactor: C{/answer/200}, C{/answer/400}
    and C{/answer/426} are ordinary responses to an upgrade request,
    C{/answer/101-no-upgrade} and C{/answer/101-h2c} are 101s without the
    requested C{Upgrade} (followed by L{AFTER_101}); any other path is a 200
    with L{PLAIN_BODY}.

    @ivar heads: every request head received, in order.
    @ivar stray: bytes received after a 101 (a tunnel's, which must not be).
    """

    def __init__(self, reactor: IIntegrationReactor) -> None:
        self.reactor = reactor
        self.heads: list[bytes] = []
        self.stray = b""
        self.connections: set[_AnswerProtocol] = set()
        self.port = 0
        self._listening: IListeningPort | None = None

    def buildProtocol(self, addr: object) -> _AnswerProtocol:
        return _AnswerProtocol(self)

    async def start(self) -> None:
        """
        Listen on a loopback port the kernel picks.
        """
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(self)
        self.port = cast(IPv4Address, self._listening.getHost()).port

    async def stop(self) -> None:
        """
        Stop listening and close what is still open.
        """
        if self._listening is not None:
            stopped = self._listening.stopListening()
            self._listening = None
            if stopped is not None:
                await stopped
        for connection in list(self.connections):
            transport = connection.transport
            if transport is not None:
                closed = connection.closed
                transport.abortConnection()  # type: ignore[attr-defined]
                await withTimeout(closed, 5, "an upstream connection closing")


# -- clients


def clientContext(caFile: str | None, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """
    A TLS client context that trusts C{caFile} (the test CA) only.
    """
    context = ssl.create_default_context(cafile=caFile)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def openWebSocket(
    port: int,
    path: str = "/",
    caFile: str | None = None,
    serverName: str = "localhost",
    host: str | None = None,
    timeout: float = SOCKET_TIMEOUT,
) -> ClientConnection:
    """
    A WebSocket connection to C{127.0.0.1:port} with C{websockets}' sync
    client: ws, or wss trusting C{caFile} with C{serverName} in SNI when
    C{caFile} is given.  No compression, no keepalive pings, messages up to
    L{MAX_MESSAGE}.  Blocking.

    @param host: the Host header, when not C{127.0.0.1:PORT}.
    """
    scheme = "wss" if caFile is not None else "ws"
    headers = {"Host": host} if host is not None else None
    return connect(
        f"{scheme}://127.0.0.1:{port}{path}",
        ssl=clientContext(caFile) if caFile is not None else None,
        server_hostname=serverName if caFile is not None else None,
        additional_headers=headers,
        compression=None,
        max_size=MAX_MESSAGE,
        open_timeout=timeout,
        close_timeout=timeout,
        ping_interval=None,
        proxy=None,
        legacy=True,
    )


def upgradeRequest(
    host: str = "127.0.0.1", path: str = "/", protocol: str = "websocket"
) -> bytes:
    """
    A raw HTTP/1.1 upgrade request for C{protocol}, with a fresh
    C{Sec-WebSocket-Key}.
    """
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), protocol.encode(), key)
    )


def messageEvent(message: str | bytes) -> TextMessage | BytesMessage:
    """
    The C{wsproto} event that sends C{message}: text for a C{str}.
    """
    if isinstance(message, str):
        return TextMessage(data=message)
    return BytesMessage(data=message)


def joinParts(parts: Sequence[str | bytes | bytearray]) -> str | bytes:
    """
    The message made of the pieces C{wsproto} gave (all text, or all bytes).
    """
    if parts and isinstance(parts[0], str):
        return "".join(cast(Sequence[str], parts))
    return b"".join(cast(Sequence[bytes], parts))


class UpgradeRefused(Exception):
    """
    The answer to an upgrade was not C{101} (HTTP/1.1) or C{200} (HTTP/2).

    @ivar status: the status code.
    @ivar head: the response head (HTTP/1.1), or the headers (HTTP/2).
    """

    def __init__(self, status: int, head: object) -> None:
        super().__init__(f"upgrade answered {status}: {head!r}")
        self.status = status
        self.head = head


def readHead(sock: socket.socket, limit: int = 64 * KiB) -> tuple[bytes, bytes]:
    """
    Read a response head from C{sock}; the head and what followed it.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > limit:
            raise AssertionError(f"no end of head in {data[:200]!r}")
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed after {data!r}")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


class RawTunnel:
    """
    A WebSocket tunnel through the proxy opened by hand on a plain socket:
    one request, the 101, then frames written by a C{wsproto} client.  Cheap
    enough for a thousand at once (no thread per connection); also exact
    about the bytes each way, which the access-log test compares.

    @ivar sent: tunnel bytes written (after the request head).
    @ivar received: tunnel bytes read (after the response head).
    """

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sent = 0
        self.received = len(leftover)
        if leftover:
            self.ws.receive_data(leftover)

    @classmethod
    def open(
        cls,
        port: int,
        host: str = "127.0.0.1",
        path: str = "/",
        receiveBuffer: int | None = None,
        timeout: float = SOCKET_TIMEOUT,
    ) -> RawTunnel:
        """
        Connect and upgrade; raise L{UpgradeRefused} for anything but 101.

        @param receiveBuffer: C{SO_RCVBUF} to set before connecting.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            if receiveBuffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
            sock.connect(("127.0.0.1", port))
            sock.sendall(upgradeRequest(host, path))
            head, rest = readHead(sock)
        except BaseException:
            sock.close()
            raise
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            sock.close()
            raise UpgradeRefused(status, head)
        return cls(sock, rest)

    def _write(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def send(self, message: str | bytes) -> None:
        """
        Send one message (a masked frame).
        """
        self._write(self.ws.send(messageEvent(message)))

    def recv(self) -> str | bytes:
        """
        The next whole message; pings are answered on the way.
        """
        parts: list[str | bytes | bytearray] = []
        for _ in range(1_000_000):
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self._write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise ConnectionError(f"closed: {event.code} {event.reason}")
                elif isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        return joinParts(parts)
            data = self.sock.recv(256 * KiB)
            if not data:
                raise ConnectionError("the tunnel closed")
            self.received += len(data)
            self.ws.receive_data(data)
        raise AssertionError("no whole message")

    def close(self, code: int = 1000) -> int | None:
        """
        Send a close frame, read until the server's close and the end of
        the connection; the server's close code (L{None} when the
        connection ended without one).
        """
        answer: int | None = None
        try:
            self._write(self.ws.send(CloseConnection(code=code)))
            for _ in range(100_000):
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        answer = event.code
                data = self.sock.recv(256 * KiB)
                if not data:
                    break
                self.received += len(data)
                self.ws.receive_data(data)
        finally:
            self.sock.close()
        return answer

    def waitClosed(self, timeout: float) -> float:
        """
        Read (and drop) until the proxy closes the connection; how long it
        took.  Fails if it stays open for C{timeout}.
        """
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            for _ in range(1_000_000):
                data = self.sock.recv(256 * KiB)
                if not data:
                    return time.monotonic() - start
                self.received += len(data)
        except ConnectionResetError:
            return time.monotonic() - start
        finally:
            self.sock.close()
        raise AssertionError("the tunnel kept sending")


def openRawTunnels(
    port: int, count: int, host: str = "127.0.0.1", path: str = "/", batch: int = 50
) -> list[RawTunnel]:
    """
    Open C{count} L{RawTunnel}s, C{batch} handshakes in flight at a time.
    """
    tunnels: list[RawTunnel] = []
    try:
        while len(tunnels) < count:
            socks = []
            for _ in range(min(batch, count - len(tunnels))):
                sock = socket.create_connection(("127.0.0.1", port), SOCKET_TIMEOUT)
                socks.append(sock)
                sock.sendall(upgradeRequest(host, path))
            for sock in socks:
                head, rest = readHead(sock)
                status = int(head.split(b" ", 2)[1])
                if status != 101:
                    raise UpgradeRefused(status, head)
                tunnels.append(RawTunnel(sock, rest))
    except BaseException:
        for tunnel in tunnels:
            tunnel.sock.close()
        raise
    return tunnels


class H2Closed(Exception):
    """
    The WebSocket over an HTTP/2 stream ended.

    @ivar code: the close code received, L{None} when the stream ended
        without a close frame.
    """

    def __init__(self, code: int | None, why: str) -> None:
        super().__init__(f"closed ({code}): {why}")
        self.code = code


class H2WebSocket:
    """
    A WebSocket over HTTP/2 (RFC 8441) through a blocking TLS socket: the
    connection's preface, the server's SETTINGS with
    C{SETTINGS_ENABLE_CONNECT_PROTOCOL = 1}, an extended CONNECT on stream
    1, a 200, then WebSocket frames (from a C{wsproto} client connection
    whose handshake is taken as done) in DATA frames, sent within the
    peer's flow-control windows and acknowledged as they are read.

    @ivar status: the status the CONNECT got.
    @ivar responseHeaders: its headers.
    @ivar closeCode: the close code the server sent, once it did.
    """

    #: Our stream and connection windows: bigger than the default 64 KiB so
    #: a 16 MiB message does not wait for a round trip per 64 KiB.
    WINDOW = 4 * MiB

    def __init__(
        self,
        port: int,
        caFile: str,
        path: str = "/",
        authority: str = "localhost",
        serverName: str = "localhost",
        timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        context = clientContext(caFile, alpn=["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=serverName)
        self.timeout = timeout
        self.streamID = 1
        self.status = 0
        self.responseHeaders: list[tuple[bytes, bytes]] = []
        self.closeCode: int | None = None
        self.streamEnded = False
        self._messages: list[str | bytes] = []
        self._parts: list[str | bytes | bytearray] = []
        self._pongs: list[bytes] = []
        try:
            alpn = self.sock.selected_alpn_protocol()
            if alpn != "h2":
                raise AssertionError(f"ALPN chose {alpn!r}, not h2")
            self.h2 = H2Connection(H2Configuration(client_side=True))
            self.h2.initiate_connection()
            self.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: self.WINDOW})
            self.h2.increment_flow_control_window(self.WINDOW)
            self._flush()
            self._pumpUntil(
                lambda: self.h2.remote_settings.enable_connect_protocol == 1,
                "SETTINGS with ENABLE_CONNECT_PROTOCOL = 1",
            )
            self.h2.send_headers(
                self.streamID,
                [
                    (":method", "CONNECT"),
                    (":protocol", "websocket"),
                    (":scheme", "https"),
                    (":path", path),
                    (":authority", authority),
                    ("sec-websocket-version", "13"),
                ],
                end_stream=False,
            )
            self._flush()
            self._pumpUntil(lambda: self.status != 0, "the CONNECT's response")
        except BaseException:
            self.sock.close()
            raise
        if self.status != 200:
            self.sock.close()
            raise UpgradeRefused(self.status, self.responseHeaders)
        self.ws = WSConnection(ConnectionType.CLIENT)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pumpOnce(self) -> None:
        """
        Read once from the socket and handle what came.
        """
        data = self.sock.recv(256 * KiB)
        if not data:
            raise H2Closed(self.closeCode, "the connection closed")
        for event in self.h2.receive_data(data):
            if isinstance(event, ResponseReceived):
                headers = [(bytes(k), bytes(v)) for k, v in event.headers or []]
                self.responseHeaders = headers
                self.status = int(dict(headers)[b":status"])
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                if event.data and hasattr(self, "ws"):
                    self.ws.receive_data(event.data)
                    self._wsEvents()
            elif isinstance(event, StreamEnded):
                self.streamEnded = True
            elif isinstance(event, StreamReset):
                self.streamEnded = True
                raise H2Closed(self.closeCode, f"stream reset {event.error_code}")
            elif isinstance(event, ConnectionTerminated):
                raise H2Closed(self.closeCode, f"GOAWAY {event.error_code}")
            elif isinstance(event, RemoteSettingsChanged | WindowUpdated):
                pass
        self._flush()

    def _wsEvents(self) -> None:
        for event in self.ws.events():
            if isinstance(event, Ping):
                self._sendData(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self._pongs.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                self.closeCode = event.code
                if self.ws.state.name == "REMOTE_CLOSING":
                    self._sendData(self.ws.send(event.response()), end=True)
            elif isinstance(event, TextMessage | BytesMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self._messages.append(joinParts(self._parts))
                    self._parts = []

    def _pumpUntil(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 3 * self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"HTTP/2: no {what} after {3 * self.timeout} s")
            self._pumpOnce()

    def _sendData(self, data: bytes, end: bool = False) -> None:
        """
        Send C{data} on the stream in DATA frames as the windows allow,
        reading (and acknowledging) while they are shut.
        """
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            window = min(
                self.h2.local_flow_control_window(self.streamID),
                self.h2.max_outbound_frame_size,
            )
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"HTTP/2: the send window stayed shut for {self.timeout} s"
                    )
                self._pumpOnce()
                continue
            deadline = time.monotonic() + self.timeout
            self.h2.send_data(self.streamID, bytes(view[:window]))
            view = view[window:]
            self._flush()
        if end:
            self.h2.end_stream(self.streamID)
            self._flush()

    def send(self, message: str | bytes) -> None:
        """
        Send one message.
        """
        self._sendData(self.ws.send(messageEvent(message)))

    def recv(self) -> str | bytes:
        """
        The next whole message.
        """
        self._pumpUntil(lambda: bool(self._messages), "message")
        return self._messages.pop(0)

    def ping(self, data: bytes) -> None:
        """
        Send a ping and wait for its pong.
        """
        self._sendData(self.ws.send(Ping(payload=data)))
        self._pumpUntil(lambda: data in self._pongs, "pong")

    def waitClose(self) -> int | None:
        """
        Read until the server's close frame; its code.
        """
        self._pumpUntil(lambda: self.closeCode is not None, "close frame")
        return self.closeCode

    def close(self, code: int = 1000) -> int | None:
        """
        Send a close frame (and the end of the stream after the server's
        answer); the code the server answered, or L{None}.
        """
        try:
            self._sendData(self.ws.send(CloseConnection(code=code)))
            self._pumpUntil(lambda: self.closeCode is not None, "close frame")
            self.h2.end_stream(self.streamID)
            self._flush()
        except H2Closed:
            pass
        finally:
            self.sock.close()
        return self.closeCode

    def cancel(self) -> None:
        """
        Reset the stream (C{RST_STREAM CANCEL}) without a close frame, then
        close the connection.
        """
        try:
            self.h2.reset_stream(self.streamID, ErrorCodes.CANCEL)
            self._flush()
            time.sleep(0.05)
        finally:
            self.sock.close()

    def abort(self) -> None:
        """
        Close the socket at once.
        """
        self.sock.close()


# -- config and logs


def wsConfigText(
    sites: Sequence[Mapping[str, object]],
    directory: str,
    accessLog: str,
    server: Mapping[str, object] | None = None,
    https: bool = False,
) -> str:
    """
    A config for the tunnel tests: an HTTP listener (and an HTTPS one when
    C{https}) on loopback, the access log as JSON in C{accessLog}, and
    C{server} keys on top.
    """
    keys: dict[str, object] = {}
    if https:
        keys["listen_https"] = [LOOPBACK_LISTEN]
    keys.update(server or {})
    text = configText(
        [dict(site) for site in sites], os.path.join(directory, "state"), server=keys
    )
    return text.replace(
        'access_log = "-"\naccess_log_format = "combined"',
        f'access_log = {json.dumps(accessLog)}\naccess_log_format = "json"',
    )


def writeWSConfig(
    sites: Sequence[Mapping[str, object]],
    directory: str,
    accessLog: str,
    server: Mapping[str, object] | None = None,
    https: bool = False,
) -> str:
    """
    Write L{wsConfigText} as C{revproxy.toml} in C{directory}; its path.
    """
    path = os.path.join(directory, "revproxy.toml")
    replaceFile(path, wsConfigText(sites, directory, accessLog, server, https))
    return path


def readAccessLog(path: str) -> list[dict[str, Any]]:
    """
    The access log's JSON lines so far.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
