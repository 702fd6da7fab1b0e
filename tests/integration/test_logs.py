"""
Integration test: what a client sends cannot end, split or forge a line of
revproxy's logs, neither of the access log nor of its own log as journald
reads it (the C{revproxy} command's formatter, one priority prefix per
line).
"""

from __future__ import annotations

import json
import os
import re

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    EXIT_TIMEOUT,
    ProxyProcess,
    closedPort,
    configText,
    getReactor,
    replaceFile,
    spawnProxy,
    waitFor,
    withTimeout,
)

#: Each character some reader takes for a line end, or another control
#: character, as bytes on the wire (the Unicode ones in UTF-8, and NEL
#: also as the single Latin-1 byte a client may send).
SEPARATORS = [
    b"\x0b",
    b"\x0c",
    b"\x1c",
    b"\x1d",
    b"\x1e",
    b"\x85",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xe2\x80\xa9",
    b"\x1b",
    b"\x7f",
]


class _OneShot(Protocol):
    """
    Writes one request and collects the answer until the server closes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data)


class LogLineTests(TestCase):
    """
    Requests carrying each separator in the target, User-Agent, Referer,
    Host and X-Request-ID, to a site whose upstream is down: every request
    is one access-log line and at most one error line, and no line of the
    journal output lacks its priority prefix.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.accessLog = os.path.join(directory, "access.log")
        text = configText(
            [
                {
                    "name": "app",
                    "hosts": ["127.0.0.1"],
                    "upstreams": [f"http://127.0.0.1:{closedPort()}"],
                }
            ],
            os.path.join(directory, "state"),
        ).replace(
            'access_log = "-"\naccess_log_format = "combined"',
            f'access_log = "{self.accessLog}"\naccess_log_format = "json"',
        )
        path = os.path.join(directory, "revproxy.toml")
        replaceFile(path, text)
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor,
            ["--config", path],
            directory,
            options=["--logger=revproxy.cli.journalLogObserver"],
        )
        self.addCleanup(self._stop)

    async def _stop(self) -> None:
        code = await self.proxy.terminate()
        self.assertEqual(code, 0, self.proxy.output)

    async def send(self, request: bytes) -> bytes:
        """
        Send C{request} on a connection of its own; the answer.
        """
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port)
        client = await connectProtocol(endpoint, _OneShot(request))
        answer: bytes = await withTimeout(client.done, EXIT_TIMEOUT, "answer")
        return answer

    async def test_oneLineEach(self) -> None:
        """
        Each separator, in each place a client controls, gives one
        access-log line for its request (found by its marker) and splits
        no line of revproxy's own log.
        """
        markers: list[str] = []
        for index, separator in enumerate(SEPARATORS):
            value = b"a" + separator + b"b"
            for place in ("target", "agent", "referer", "host", "id"):
                marker = f"m{index}{place}"
                markers.append(marker)
                target = b"/" + marker.encode()
                headers = [b"Host: 127.0.0.1", b"Connection: close"]
                if place == "target":
                    target += value
                elif place == "agent":
                    headers.append(b"User-Agent: " + value)
                elif place == "referer":
                    headers.append(b"Referer: " + value)
                elif place == "host":
                    headers[0] = b"Host: " + value
                else:
                    headers.append(b"X-Request-ID: " + value)
                request = b"GET " + target + b" HTTP/1.1\r\n"
                request += b"".join(h + b"\r\n" for h in headers) + b"\r\n"
                answer = await self.send(request)
                self.assertRegex(answer, rb"^HTTP/1\.1 (400|421|502) ", request)
                if place == "target":
                    self.assertRegex(answer, rb"^HTTP/1\.1 400 ", request)

        def logged() -> bool:
            try:
                with open(self.accessLog, "rb") as f:
                    return f.read().count(b"\n") >= len(markers)
            except FileNotFoundError:
                return False

        await waitFor(logged, 10, "the access log lines")
        with open(self.accessLog, "rb") as f:
            access = f.read()
        text = access.decode("ascii")
        # One line per request (and one for the start-up probe): whatever
        # splits them, newlines alone do.
        self.assertEqual(len(text.splitlines()), text.count("\n"), text)
        self.assertEqual(text.count("\n"), len(markers) + 1, text)
        for line in text.splitlines():
            json.loads(line)
        for marker in markers:
            # A 400 refused before its target was read is logged without it.
            self.assertLessEqual(text.count(marker), 1, marker)
        journal = self.proxy.protocol.stdout.decode("utf-8", "surrogateescape")
        lines = journal.split("\n")
        self.assertEqual(lines[-1], "")
        for line in lines[:-1]:
            self.assertRegex(line, r"^<[0-7]>", line)
        self.assertEqual(len(journal.splitlines()), len(lines) - 1, journal)
        # A target carrying a separator never reaches an upstream (llhttp
        # answers 400); the error line of a request whose headers carried
        # one is one journal line, whole: it ends as revproxy wrote it.
        self.assertEqual(
            [line for line in lines if re.search(r"GET /m\d+target", line)], []
        )
        failed = [
            line for line in lines if re.search(r"GET /m\d+(agent|referer|id)", line)
        ]
        self.assertGreater(len(failed), 0, journal)
        for line in failed:
            self.assertRegex(line, r"failed: .*\(request_id [0-9a-f]{32}\)$")
