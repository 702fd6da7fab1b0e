"""
Integration tests: a real C{twistd revproxy} process on loopback in front of
an in-process upstream, driven by treq and raw TCP clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from typing import Any, cast

from treq.client import HTTPClient
from treq.response import _Response
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import PotentialDataLoss

from tests.integration.support import (
    EXIT_TIMEOUT,
    LOOPBACK_LISTEN,
    SMALL_BODY,
    ChunkedBody,
    ProxyProcess,
    SlowReader,
    Upstream,
    closedPort,
    connectRaw,
    getReactor,
    readRSS,
    spawnProxy,
    waitFor,
    withTimeout,
    writeConfig,
)

MiB = 1024 * 1024


class _ProxyTestCase(TestCase):
    """
    Starts an upstream, then a proxy in front of it; stops both after the
    test and checks that SIGTERM made the proxy exit 0.

    @ivar port: the proxy's HTTP port.
    """

    timeout = 20

    def proxyArgs(self, directory: str) -> list[str]:
        """
        The arguments after C{twistd revproxy}: a config file by default.
        """
        up = f"http://127.0.0.1:{self.upstream.port}"
        path = writeConfig(
            directory,
            [
                {
                    "name": "main",
                    "hosts": ["127.0.0.1", "localhost"],
                    "upstreams": [up],
                },
                {
                    "name": "slow",
                    "hosts": ["slow.test"],
                    "upstreams": [up],
                    "response_timeout_secs": 1,
                },
                {
                    "name": "down",
                    "hosts": ["down.test"],
                    "upstreams": [f"http://127.0.0.1:{closedPort()}"],
                    "connect_timeout_secs": 5,
                },
            ],
        )
        return ["--config", path]

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.upstream = Upstream(self.reactor)
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        directory = os.path.abspath(str(self.mktemp()))
        os.makedirs(directory)
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, self.proxyArgs(directory), directory
        )
        self.addCleanup(self._stopProxy)
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(self.reactor, pool=pool))

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    def url(self, path: str) -> str:
        """
        The proxy's URL for C{path}.
        """
        return f"http://127.0.0.1:{self.port}{path}"

    async def get(self, path: str, **kwargs: Any) -> tuple[_Response, bytes]:
        """
        GET C{path} through the proxy; the response and its whole body.
        """
        return await self.request("GET", path, **kwargs)

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[_Response, bytes]:
        """
        Send a request through the proxy; the response and its whole body.
        """
        response: _Response = await withTimeout(
            self.http.request(method, self.url(path), **kwargs),
            EXIT_TIMEOUT,
            f"{method} {path}",
        )
        body: bytes = await withTimeout(response.content(), EXIT_TIMEOUT, "body")
        return response, body

    async def echo(self, method: str = "GET", **kwargs: Any) -> dict[str, Any]:
        """
        What the upstream's C{/echo} saw of a request sent through the proxy.
        """
        response, body = await self.request(method, "/echo", **kwargs)
        self.assertEqual(response.code, 200, body)
        answer: dict[str, Any] = json.loads(body)
        return answer


class ForwardingTests(_ProxyTestCase):
    """
    Requests and responses pass through the proxy intact.
    """

    async def test_small(self) -> None:
        """
        A GET of a 1 KiB body comes back 200, byte for byte, with the
        proxy's C{Via}.
        """
        response, body = await self.get("/small")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, SMALL_BODY)
        via = response.headers.getRawHeaders(b"via", [])
        self.assertTrue(any(b"revproxy" in v for v in via), via)

    async def test_forwardedHeaders(self) -> None:
        """
        The upstream sees the client's address in C{X-Forwarded-For} (a
        forged one from an untrusted client is replaced), the original
        C{Host}, the proxy in C{Via}, and no header the client's
        C{Connection} named.
        """
        seen = await self.echo(
            headers={
                b"X-Forwarded-For": [b"6.6.6.6"],
                b"Connection": [b"X-Secret"],
                b"X-Secret": [b"hop"],
            }
        )
        headers = seen["headers"]
        self.assertEqual(headers.get("x-forwarded-for"), ["127.0.0.1"])
        self.assertNotIn("x-secret", headers)
        self.assertEqual(headers.get("host"), [f"127.0.0.1:{self.port}"])
        self.assertIn("revproxy", " ".join(headers.get("via", [])))

    async def test_largeBody(self) -> None:
        """
        A 1 MiB POST body reaches the upstream whole.
        """
        data = os.urandom(MiB)
        seen = await self.echo("POST", data=data)
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["body_length"], len(data))
        self.assertEqual(seen["body_sha256"], hashlib.sha256(data).hexdigest())

    async def test_chunkedUpload(self) -> None:
        """
        A body of unknown length, sent chunked, reaches the upstream whole.
        """
        pieces = [os.urandom(n) for n in (1, 70000, 12345, 100000, 3)]
        data = b"".join(pieces)
        seen = await self.echo("PUT", data=ChunkedBody(self.reactor, pieces))
        self.assertEqual(seen["method"], "PUT")
        self.assertEqual(seen["body_length"], len(data))
        self.assertEqual(seen["body_sha256"], hashlib.sha256(data).hexdigest())

    async def test_setCookies(self) -> None:
        """
        Two C{Set-Cookie} headers both reach the client, in order.
        """
        response, _ = await self.get("/cookies")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"set-cookie"),
            [b"a=1; Path=/", b"b=2; Path=/; HttpOnly"],
        )

    async def test_head(self) -> None:
        """
        HEAD gets the headers of the GET and no body, and the next request
        after it is answered normally.
        """
        response, body = await self.request("HEAD", "/small")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(
            response.headers.getRawHeaders(b"content-length"),
            [b"%d" % len(SMALL_BODY)],
        )
        response, body = await self.get("/small")
        self.assertEqual((response.code, body), (200, SMALL_BODY))

    async def test_chunkedResponse(self) -> None:
        """
        A response without Content-Length, which the upstream sends chunked,
        reaches the client whole.
        """
        size = 3 * MiB + 17
        response, body = await self.get(f"/stream?bytes={size}&chunked=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"\xa5" * size)

    async def test_keepAlive(self) -> None:
        """
        Two requests, one after the other on one client connection, are
        both answered, and the connection stays open between them.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        request = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        first = await client.request(request)
        self.assertEqual((first.code, first.body), (200, SMALL_BODY))
        self.assertFalse(client.disconnected)
        second = await client.request(request)
        self.assertEqual((second.code, second.body), (200, SMALL_BODY))


class ShutdownTests(_ProxyTestCase):
    """
    SIGTERM and SIGINT stop the proxy gracefully, with exit status 0.
    """

    async def test_sigterm(self) -> None:
        """
        SIGTERM stops the proxy with exit status 0 (not twistd's 143).
        """
        code = await self.proxy.terminate()
        self.assertEqual(code, 0, self.proxy.output)
        self.assertNotIn("Traceback", self.proxy.output)

    async def test_sigint(self) -> None:
        """
        SIGINT (Ctrl-C) stops the proxy with exit status 0.
        """
        self.proxy.transport.signalProcess("INT")
        code = await self.proxy.waitExit()
        self.assertEqual(code, 0, self.proxy.output)
        self.assertNotIn("Traceback", self.proxy.output)

    async def test_repeatedSigterms(self) -> None:
        """
        SIGTERM sent again and again until the proxy is gone (an impatient
        operator, a supervisor that repeats itself) is handled by revproxy
        throughout shutdown: the reactor's own handler never gets one, so no
        "Received SIGTERM" and no traceback in the log.

        The exit status is not asserted: once the main loop is over, Python's
        finalization resets signal handlers to SIG_DFL, so a SIGTERM landing
        then ends the process by the signal whatever the handler was.
        """
        pid = self.proxy.pid
        gone = threading.Event()

        def ended(result: object) -> object:
            gone.set()
            return result

        self.proxy.protocol.ended.addBoth(ended)

        def storm() -> int:
            sent = 0
            deadline = time.monotonic() + EXIT_TIMEOUT
            while not gone.is_set() and time.monotonic() < deadline:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
                sent += 1
                time.sleep(0.0002)
            return sent

        sent = await deferToThread(storm)
        await self.proxy.waitExit()
        self.assertGreater(sent, 1)
        # Regression test for a fixed bug
        # (revproxy.service.SignalRelay.stopService): it runs at
        # the start of shutdown ("before shutdown") and puts the reactor's
        # own SIGTERM handler back; a SIGTERM during the rest of shutdown
        # goes to it, which logs "Received SIGTERM", calls reactor.stop()
        # again (a critical ReactorNotRunning traceback) and sets
        # _exitSignal, so twistd re-raises SIGTERM on itself: exit -15 (143
        # in a shell) instead of 0, even before Python's finalization.
        self.assertNotIn("Received SIGTERM", self.proxy.output)
        self.assertNotIn("Traceback", self.proxy.output)

    async def test_requestInFlight(self) -> None:
        """
        SIGTERM with a request waiting on a slow upstream is graceful: the
        request is answered whole, then the proxy exits with status 0.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        answer = client.request(
            b"GET /slow?delay=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        await waitFor(lambda: bool(self.upstream.site.channels), 5, "the upstream hit")
        started = self.reactor.seconds()
        code = await self.proxy.terminate()
        response = await answer
        self.assertEqual(response.code, 200)
        self.assertEqual(code, 0, self.proxy.output)
        self.assertLess(self.reactor.seconds() - started, 6.0)
        self.assertNotIn("Traceback", self.proxy.output)


class HostTests(_ProxyTestCase):
    """
    Requests are routed by C{Host}.
    """

    async def test_unknownHost(self) -> None:
        """
        A Host no site claims, with no default site, is answered 421.
        """
        response, body = await self.get(
            "/small", headers={b"Host": [b"nowhere.example"]}
        )
        self.assertEqual(response.code, 421, body)

    async def test_missingHost(self) -> None:
        """
        An HTTP/1.1 request without Host is answered 400.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        response = await client.request(b"GET /small HTTP/1.1\r\n\r\n")
        self.assertEqual(response.code, 400, response.body)


class UpstreamFailureTests(_ProxyTestCase):
    """
    Upstream failures are answered with the right status, or abort the
    client connection once the response has begun.
    """

    async def test_upstreamDown(self) -> None:
        """
        An upstream whose port is closed gives 502 at once.
        """
        started = self.reactor.seconds()
        response, body = await self.get("/small", headers={b"Host": [b"down.test"]})
        elapsed = self.reactor.seconds() - started
        self.assertEqual(response.code, 502, body)
        self.assertLess(elapsed, 3.0)

    async def test_responseTimeout(self) -> None:
        """
        An upstream slower than the site's response_timeout_secs = 1 gives
        504 after about a second.
        """
        started = self.reactor.seconds()
        response, body = await self.get(
            "/slow?delay=5", headers={b"Host": [b"slow.test"]}
        )
        elapsed = self.reactor.seconds() - started
        self.assertEqual(response.code, 504, body)
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 4.0)

    async def test_closeMidBody(self) -> None:
        """
        An upstream that closes after 10 of 1000 promised bytes makes the
        client's response fail: the short body is never passed off as whole.
        """
        try:
            response, body = await self.get("/close-mid-body")
        except (ResponseFailed, ResponseNeverReceived, PotentialDataLoss):
            return
        self.fail(f"got a complete response: {response.code} {body!r}")

    async def test_closeMidBodyRaw(self) -> None:
        """
        On the wire, the client gets fewer bytes than the Content-Length it
        was promised, then the connection closes, and no end of a chunked
        body.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        client.transport.write(  # type: ignore[union-attr]
            b"GET /close-mid-body HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n"
        )
        await withTimeout(client.lost, EXIT_TIMEOUT, "proxy closing the client")
        head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertNotIn(b"transfer-encoding", head.lower())
        if head:
            self.assertIn(b"content-length: 1000", head.lower())
            self.assertLess(len(body), 1000)


class BackpressureTests(_ProxyTestCase):
    """
    A slow client holds the proxy back instead of filling its memory.
    """

    async def test_slowClient(self) -> None:
        """
        200 MiB streamed to a client reading about 60 MiB/s all arrive, and
        the proxy's RSS grows by less than 50 MiB meanwhile.
        """
        size = 200 * MiB
        warm, _ = await self.get("/small")
        self.assertEqual(warm.code, 200)
        pid = self.proxy.pid
        before = readRSS(pid)
        samples = [before]
        sampler = LoopingCall(lambda: samples.append(readRSS(pid)))
        sampler.clock = self.reactor
        sampling = sampler.start(0.2)
        reader = SlowReader(
            self.reactor,
            b"GET /stream?bytes=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n" % size,
            rate=60 * MiB,
        )
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port)
        started = self.reactor.seconds()
        await connectProtocol(endpoint, reader)
        try:
            received = await withTimeout(reader.done, 15, "the 200 MiB body")
        finally:
            sampler.stop()
            await sampling
            if reader.transport is not None:
                reader.transport.loseConnection()
            await withTimeout(reader.lost, EXIT_TIMEOUT, "slow client close")
        elapsed = self.reactor.seconds() - started
        self.assertEqual(reader.code, 200)
        self.assertEqual(received, size)
        self.assertGreater(reader.pauses, 0)
        self.assertGreater(elapsed, 2.0, "the client did not read slowly")
        growth = max(samples) - before
        self.assertLess(
            growth,
            50 * MiB,
            f"RSS grew by {growth / MiB:.1f} MiB (samples: {len(samples)})",
        )


class ClientGoneTests(_ProxyTestCase):
    """
    A client that leaves takes its upstream connection with it.
    """

    async def test_clientLeaves(self) -> None:
        """
        A client that closes its connection in the middle of a large
        response makes the proxy close the upstream connection too, so the
        upstream stops sending.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        assert client.transport is not None
        client.transport.write(
            b"GET /stream?bytes=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (200 * MiB)
        )
        await waitFor(lambda: len(client.data) > MiB, 5, "the first MiB")
        self.assertEqual(len(self.upstream.site.channels), 1)
        cast(ITCPTransport, client.transport).abortConnection()
        await waitFor(
            lambda: not self.upstream.site.channels, 5, "the upstream connection closed"
        )

    async def test_clientLeavesBeforeResponse(self) -> None:
        """
        A client that closes its connection while the upstream is still
        thinking makes the proxy close the upstream connection, rather than
        wait for an answer nobody will read.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        assert client.transport is not None
        client.transport.write(b"GET /slow?delay=8 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await waitFor(lambda: bool(self.upstream.site.channels), 5, "the upstream hit")
        self.assertEqual(len(self.upstream.site.channels), 1)
        cast(ITCPTransport, client.transport).abortConnection()
        await waitFor(
            lambda: not self.upstream.site.channels, 3, "the upstream connection closed"
        )
        # Closed well before the upstream's answer (8 seconds away), and the
        # client was sent nothing.
        self.assertEqual(client.data, b"")


class QuickModeTests(_ProxyTestCase):
    """
    C{--listen ENDPOINT --to URL} proxies every Host to one upstream.
    """

    def proxyArgs(self, directory: str) -> list[str]:
        return [
            "--listen",
            LOOPBACK_LISTEN,
            "--to",
            f"http://127.0.0.1:{self.upstream.port}",
        ]

    async def test_anyHost(self) -> None:
        """
        Requests for any Host, or none in HTTP/1.0, reach the upstream.
        """
        for host in (b"anything.example", b"127.0.0.1", b"other.test:8080"):
            response, body = await self.get("/small", headers={b"Host": [host]})
            self.assertEqual((response.code, body), (200, SMALL_BODY), host)
        seen = await self.echo(headers={b"Host": [b"anything.example"]})
        self.assertEqual(seen["headers"]["host"], ["anything.example"])
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        response10 = await client.request(b"GET /small HTTP/1.0\r\n\r\n")
        self.assertEqual((response10.code, response10.body), (200, SMALL_BODY))
