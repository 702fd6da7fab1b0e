"""
Integration test: a request that is not idempotent is never delivered
twice, against a real C{twistd revproxy} and an upstream that processes a
POST and then closes its kept-alive connection without answering (a crash
after the commit, a worker recycled at the wrong moment).
"""

from __future__ import annotations

import os
from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    ProxyProcess,
    connectRaw,
    getReactor,
    spawnProxy,
    writeConfig,
)


class _CommitThenClose(Protocol):
    """
    An upstream connection: a GET is answered and the connection kept; a
    POST is applied (counted) and the connection closed with no answer.
    """

    def __init__(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        self.buffer = b""

    def connectionMade(self) -> None:
        self.upstream.connections += 1
        self.upstream.open.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.upstream.open.discard(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            method = head[0].split(b" ", 1)[0]
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            transport = cast(ITCPTransport, self.transport)
            if method == b"POST":
                self.upstream.applied.append(body)
                transport.loseConnection()
                return
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class _Upstream(Factory):
    """
    Counts connections and the POST bodies it applied.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.applied: list[bytes] = []
        self.open: set[_CommitThenClose] = set()

    def buildProtocol(self, addr: object) -> _CommitThenClose:
        return _CommitThenClose(self)


class NoReplayTests(TestCase):
    """
    A POST is applied once, whatever the upstream does after.
    """

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.upstream = _Upstream()
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.listening: IListeningPort = await endpoint.listen(self.upstream)
        self.addCleanup(self.listening.stopListening)
        port = cast(IPv4Address, self.listening.getHost()).port
        directory = os.path.abspath(self.mktemp())
        config = writeConfig(
            directory,
            [
                {
                    "name": "app",
                    "hosts": ["127.0.0.1"],
                    "upstreams": [f"http://127.0.0.1:{port}"],
                }
            ],
        )
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", config], directory
        )
        self.addCleanup(self._stop)

    async def _stop(self) -> None:
        code = await self.proxy.terminate()
        self.assertEqual(code, 0, self.proxy.output)
        for protocol in list(self.upstream.open):
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    async def test_postAppliedOnce(self) -> None:
        """
        A GET leaves a kept-alive upstream connection in the pool; the POST
        that reuses it is applied, then the upstream closes without an
        answer: the client gets a 502 and the upstream saw the POST once
        (the proxy used to send it again on a fresh connection, where it
        was applied a second time).
        """
        client = await connectRaw(self.reactor, self.port)
        first = await client.request(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(first.code, 200)
        self.assertEqual(self.upstream.connections, 1)
        answer = await client.request(
            b"POST /pay HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 9\r\n\r\namount=10"
        )
        await client.close()
        self.assertEqual(answer.code, 502)
        self.assertEqual(self.upstream.applied, [b"amount=10"])
        self.assertEqual(self.upstream.connections, 1)
