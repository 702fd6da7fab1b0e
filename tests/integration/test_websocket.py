"""
Integration tests of issue #15: WebSocket and other C{Upgrade} connections
through a real C{twistd revproxy} as byte tunnels, with real clients and a
real WebSocket server (the C{websockets} package; an RFC 8441 client made of
C{h2} and C{wsproto} for HTTP/2): echo over ws, wss and HTTP/2 extended
CONNECT, close codes, reloads that keep tunnels or remove their site,
upstreams that refuse the upgrade, the per-site limits, the access log and
the admin socket's C{tunnels}, and the memory a tunnel costs.

The blocking clients run in threads of their own (L{inThread}); the proxy,
the admin socket and the refusing upstream are on the reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.integration.support import (
    ProxyProcess,
    askAdmin,
    connectRaw,
    getReactor,
    readRSS,
    spawnProxy,
    waitFor,
    waitHTTPSPorts,
)
from tests.integration.test_tls import Authority
from tests.integration.wshelpers import (
    AFTER_101,
    ANSWERS,
    MESSAGE_SIZES,
    PLAIN_BODY,
    EchoServer,
    H2WebSocket,
    KiB,
    MiB,
    RawTunnel,
    UpgradeAnswerUpstream,
    UpgradeRefused,
    inThread,
    openRawTunnels,
    openWebSocket,
    payload,
    readAccessLog,
    upgradeRequest,
    writeWSConfig,
)


def _sameMessage(got: str | bytes, sent: str | bytes) -> str | None:
    """
    L{None} when C{got} is C{sent}; else a short description (a 16 MiB
    message must not end up in a failure message).
    """
    if type(got) is type(sent) and got == sent:
        return None
    return (
        f"sent {type(sent).__name__} of {len(sent)}, "
        f"got {type(got).__name__} of {len(got)}"
    )


def echoEverySize(
    send: Callable[[str | bytes], None], recv: Callable[[], str | bytes]
) -> list[str]:
    """
    Send each of L{MESSAGE_SIZES} as text and as binary and read its echo;
    the problems found (none: C{[]}).
    """
    problems = []
    for size in MESSAGE_SIZES:
        for text in (True, False):
            message = payload(size, text, seed=size)
            send(message)
            problem = _sameMessage(recv(), message)
            if problem is not None:
                problems.append(f"{size} bytes, text={text}: {problem}")
    return problems


class _TunnelTestCase(TestCase):
    """
    Starts a WebSocket echo upstream (L{EchoServer}) and an upstream that
    refuses upgrades (L{UpgradeAnswerUpstream}), and a proxy with an admin
    socket and a JSON access log whose sites are L{sites}: C{app}
    (C{127.0.0.1} and C{localhost}, on the echo server, over TLS too when
    L{https}) and C{refuse} (C{refuse.test}); stops them after the test,
    checking that SIGTERM made the proxy exit 0.

    Everything lives in a short directory under C{/tmp} (the admin socket's
    path must stay under about 100 bytes).
    """

    timeout = 60
    #: An HTTPS listener, and C{app} with a certificate (C{tls = "files"}).
    https = False
    #: More C{[server]} keys.
    extraServer: dict[str, object] = {}
    #: More keys of the C{app} site.
    appExtra: dict[str, object] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-ws-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.socketPath = os.path.join(self.directory, "admin.sock")
        self.accessLog = os.path.join(self.directory, "access.log")
        self.echo = EchoServer()
        await inThread(self.echo.start, what="starting the echo server")
        self.addCleanup(inThread, self.echo.stop, what="stopping the echo server")
        self.answers = UpgradeAnswerUpstream(self.reactor)
        await self.answers.start()
        self.addCleanup(self.answers.stop)
        self.caFile: str | None = None
        self.tlsFiles: dict[str, object] = {}
        if self.https:
            authority = Authority()
            self.caFile = authority.writeRoot(os.path.join(self.directory, "ca.pem"))
            cert, key = authority.issue("localhost", "127.0.0.1").write(
                self.directory, "app"
            )
            self.tlsFiles = {"tls": "files", "cert_file": cert, "key_file": key}
        self.configPath = self.writeConfig(self.sites())
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        self.addCleanup(self._stopProxy)
        self.httpsPort = 0
        if self.https:
            self.httpsPort = (await waitHTTPSPorts(self.proxy))[0]

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    def echoURL(self) -> str:
        """
        The echo server's URL, as a site's upstream.
        """
        return f"http://127.0.0.1:{self.echo.port}"

    def appSite(self, **extra: object) -> dict[str, object]:
        """
        The C{app} site: C{127.0.0.1} and C{localhost} on the echo server.
        """
        site: dict[str, object] = {
            "name": "app",
            "hosts": ["127.0.0.1", "localhost"],
            "upstreams": [self.echoURL()],
            "default": True,
        }
        site.update(self.tlsFiles)
        site.update(self.appExtra)
        site.update(extra)
        return site

    def sites(self) -> list[dict[str, object]]:
        """
        The sites of the config the proxy starts with.
        """
        return [
            self.appSite(),
            {
                "name": "refuse",
                "hosts": ["refuse.test"],
                "upstreams": [f"http://127.0.0.1:{self.answers.port}"],
            },
        ]

    def writeConfig(self, sites: Sequence[dict[str, object]]) -> str:
        """
        Write the config with C{sites}; its path.
        """
        server: dict[str, object] = {
            "admin_socket_path": self.socketPath,
            "http2": True,
        }
        server.update(self.extraServer)
        return writeWSConfig(sites, self.directory, self.accessLog, server, self.https)

    async def admin(self, command: str) -> dict[str, Any]:
        """
        The admin socket's answer to C{command}.
        """
        return await askAdmin(self.reactor, self.socketPath, command)

    async def reload(self, sites: Sequence[dict[str, object]]) -> dict[str, Any]:
        """
        Write C{sites} and reload over the admin socket; the answer, which
        must be ok.
        """
        self.writeConfig(sites)
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", answer)
        return answer

    async def logLines(
        self, predicate: Callable[[dict[str, Any]], bool], count: int = 1
    ) -> list[dict[str, Any]]:
        """
        The access log's lines for which C{predicate} holds, once there are
        C{count} of them.
        """
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            found[:] = [r for r in readAccessLog(self.accessLog) if predicate(r)]
            return len(found) >= count

        await waitFor(enough, 10, f"{count} access-log lines")
        return found

    async def sleep(self, seconds: float) -> None:
        """
        Let the reactor run for C{seconds}.
        """
        await deferLater(self.reactor, seconds, lambda: None)


def _websocketEcho(ws: ClientConnection) -> list[str]:
    """
    Every size both ways, then a ping, then a normal close, on C{ws}.
    """
    try:
        problems = echoEverySize(ws.send, lambda: ws.recv(timeout=30))
        if not ws.ping(b"are you there").wait(10):
            problems.append("no pong")
    finally:
        ws.close()
    return problems


class EchoTests(_TunnelTestCase):
    """
    Messages of every size, pings and close codes through ws, wss over
    HTTP/1.1, and wss over HTTP/2 extended CONNECT.
    """

    https = True

    async def test_echoWS(self) -> None:
        """
        ws:// over HTTP/1.1: text and binary messages of 1 B to 16 MiB come
        back whole; a ping gets its pong.  The upstream saw the upgrade
        request with the client's address and a request id.
        """
        problems = await inThread(
            lambda: _websocketEcho(openWebSocket(self.port, "/ws")), what="ws echo"
        )
        self.assertEqual(problems, [])
        request = self.echo.requests[-1]
        self.assertEqual(request.get("upgrade", "").lower(), "websocket")
        self.assertEqual(request.get("x-forwarded-for"), "127.0.0.1")
        self.assertIn("x-request-id", request)

    async def test_echoWSS(self) -> None:
        """
        wss:// over HTTP/1.1 (TLS from the client to the proxy): the same.
        """
        problems = await inThread(
            lambda: _websocketEcho(
                openWebSocket(self.httpsPort, "/wss", caFile=self.caFile)
            ),
            what="wss echo",
        )
        self.assertEqual(problems, [])

    async def test_echoHTTP2(self) -> None:
        """
        wss over HTTP/2 (RFC 8441): the proxy offers
        C{SETTINGS_ENABLE_CONNECT_PROTOCOL}, answers the extended CONNECT
        200, and carries messages of every size and a ping; a normal close
        is answered.
        """
        assert self.caFile is not None
        caFile = self.caFile

        def exchange() -> tuple[list[str], int | None]:
            ws = H2WebSocket(self.httpsPort, caFile, "/h2")
            try:
                problems = echoEverySize(ws.send, ws.recv)
                ws.ping(b"h2 ping")
            except BaseException:
                ws.abort()
                raise
            return problems, ws.close(1000)

        problems, code = await inThread(exchange, what="HTTP/2 echo")
        self.assertEqual(problems, [])
        self.assertEqual(code, 1000)
        await waitFor(
            lambda: ("/h2", 1000, "") in self.echo.ended, 5, "the upstream's close"
        )

    async def test_upstreamCloseCode(self) -> None:
        """
        A close code the upstream sends (4001, "bye") reaches the client,
        over HTTP/1.1 and over HTTP/2.
        """

        def overHTTP1() -> tuple[int | None, str | None]:
            ws = openWebSocket(self.port, "/close/4001")
            ws.send("hello")
            ws.recv(timeout=10)
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, None)
            finally:
                ws.close()
            return (None, "still open")

        self.assertEqual(await inThread(overHTTP1, what="close code"), (4001, "bye"))
        assert self.caFile is not None
        caFile = self.caFile

        def overHTTP2() -> int | None:
            ws = H2WebSocket(self.httpsPort, caFile, "/close/4001")
            try:
                ws.send("hello")
                ws.recv()
                return ws.waitClose()
            finally:
                ws.abort()

        self.assertEqual(await inThread(overHTTP2, what="HTTP/2 close code"), 4001)

    async def test_clientCloseCode(self) -> None:
        """
        A close code the client sends reaches the upstream (4002 over
        HTTP/1.1, 4003 over HTTP/2).
        """

        def overHTTP1() -> None:
            ws = openWebSocket(self.port, "/client-close")
            ws.send("x")
            ws.recv(timeout=10)
            ws.close(4002, "client says bye")

        await inThread(overHTTP1, what="client close")
        await waitFor(
            lambda: ("/client-close", 4002, "client says bye") in self.echo.ended,
            5,
            f"close code 4002 at the upstream: {self.echo.ended}",
        )
        assert self.caFile is not None
        caFile = self.caFile

        def overHTTP2() -> int | None:
            ws = H2WebSocket(self.httpsPort, caFile, "/client-close-h2")
            ws.send("x")
            ws.recv()
            return ws.close(4003)

        self.assertEqual(await inThread(overHTTP2, what="HTTP/2 client close"), 4003)
        await waitFor(
            lambda: any(e[:2] == ("/client-close-h2", 4003) for e in self.echo.ended),
            5,
            f"close code 4003 at the upstream: {self.echo.ended}",
        )

    async def test_accessLog(self) -> None:
        """
        A tunnel's access-log line is written when it ends: status 101 over
        HTTP/1.1 and 200 over HTTP/2, C{upstream_status} 101, its duration,
        the bytes each way (C{bytes_sent} to the client, C{bytes_received}
        from it) and why it ended; an ordinary request's C{close_reason} is
        null.
        """

        def tunnel() -> tuple[int, int]:
            raw = RawTunnel.open(self.port, path="/logged")
            message = payload(100 * KiB, False)
            raw.send(message)
            if raw.recv() != message:
                raise AssertionError("the echo differs")
            time.sleep(0.2)
            # The client ends the tunnel: a WebSocket close handshake would
            # end with the server closing the TCP connection first.
            raw.sock.close()
            return raw.sent, raw.received

        sent, received = await inThread(tunnel, what="a logged tunnel")
        [line] = await self.logLines(lambda r: r.get("path") == "/logged")
        self.assertEqual(
            (line["status"], line["upstream_status"], line["close_reason"]),
            (101, 101, "client closed"),
            line,
        )
        self.assertGreaterEqual(line["duration_ms"], 200, line)
        # The tunnel's bytes each way, after the heads.
        self.assertEqual(
            (line["bytes_received"], line["bytes_sent"]), (sent, received), line
        )

        def upstreamCloses() -> None:
            raw = RawTunnel.open(self.port, path="/close/4001")
            raw.send("bye?")
            raw.recv()
            raw.close(4001)

        await inThread(upstreamCloses, what="a tunnel the upstream closes")
        [line] = await self.logLines(lambda r: r.get("path") == "/close/4001")
        self.assertEqual(line["close_reason"], "upstream closed", line)

        assert self.caFile is not None
        caFile = self.caFile

        def overHTTP2() -> None:
            ws = H2WebSocket(self.httpsPort, caFile, "/logged-h2")
            ws.send(b"x" * 1000)
            ws.recv()
            time.sleep(0.1)
            # The client ends the stream (a close handshake would end with
            # the upstream closing first).
            ws.cancel()

        await inThread(overHTTP2, what="an HTTP/2 tunnel")
        [line] = await self.logLines(lambda r: r.get("path") == "/logged-h2")
        self.assertEqual((line["status"], line["upstream_status"]), (200, 101), line)
        self.assertGreaterEqual(line["bytes_received"], 1000, line)
        self.assertGreaterEqual(line["bytes_sent"], 1000, line)
        self.assertEqual(line["close_reason"], "client closed", line)

        client = await connectRaw(self.reactor, self.port)
        response = await client.request(
            b"GET /plain HTTP/1.1\r\nHost: refuse.test\r\n\r\n"
        )
        await client.close()
        self.assertEqual(response.code, 200)
        [line] = await self.logLines(lambda r: r.get("path") == "/plain")
        self.assertIn("close_reason", line)
        self.assertIsNone(line["close_reason"])

    async def test_adminTunnels(self) -> None:
        """
        Admin C{tunnels} counts the open tunnels per site and per config
        generation, with the oldest's age and the bytes each way; C{tunnels
        app} the same for one site.
        """
        tunnels = await inThread(
            openRawTunnels, self.port, 3, what="three tunnels", seconds=20
        )
        try:

            def echoEach() -> None:
                for tunnel in tunnels:
                    tunnel.send("abc")
                    tunnel.recv()

            await inThread(echoEach, what="an echo on each")
            await self.sleep(1.1)
            answer = await self.admin("tunnels")
            self.assertEqual(
                (answer["status"], answer["generation"], answer["total"]),
                ("ok", 1, 3),
                answer,
            )
            app = answer["sites"]["app"]
            self.assertEqual((app["open"], app["by_generation"]), (3, {"1": 3}), app)
            self.assertGreaterEqual(app["oldest_secs"], 1.0, app)
            self.assertGreater(app["bytes_up"], 0, app)
            self.assertGreater(app["bytes_down"], 0, app)
            await self.reload(
                [*self.sites()[:1], self.sites()[1] | {"hosts": ["x.test"]}]
            )
            tunnels += await inThread(
                openRawTunnels, self.port, 1, what="a fourth tunnel", seconds=20
            )
            one = await self.admin("tunnels app")
            self.assertEqual(one["status"], "ok", one)
            self.assertEqual(list(one["sites"]), ["app"], one)
            self.assertEqual(
                one["sites"]["app"]["by_generation"], {"1": 3, "2": 1}, one
            )
        finally:
            for tunnel in tunnels:
                tunnel.sock.close()

        async def total() -> int:
            return int((await self.admin("tunnels"))["total"])

        for _ in range(50):
            if await total() == 0:
                break
            await self.sleep(0.1)
        self.assertEqual(await total(), 0)


class RefusedUpgradeTests(_TunnelTestCase):
    """
    An upstream that answers an upgrade request with anything but a 101
    with the requested C{Upgrade}.
    """

    async def test_ordinaryAnswers(self) -> None:
        """
        200, 400 and 426 to an upgrade request reach the client as ordinary
        responses, the client's connection then carries a next ordinary
        request, and nothing is tunnelled.  The upstream got the request
        with its C{Upgrade}.
        """
        client = await connectRaw(self.reactor, self.port)
        try:
            for code in (200, 400, 426):
                request = upgradeRequest("refuse.test", f"/answer/{code}")
                response = await client.request(request)
                self.assertEqual(response.code, code, response.body)
                expected = ANSWERS[str(code).encode()].split(b"\r\n\r\n", 1)[1]
                self.assertEqual(response.body, expected)
                head = self.answers.heads[-1]
                self.assertIn(b"\r\nupgrade: websocket", head.lower())
                response = await client.request(
                    b"GET /plain HTTP/1.1\r\nHost: refuse.test\r\n\r\n"
                )
                self.assertEqual((response.code, response.body), (200, PLAIN_BODY))
                self.assertTrue(self.answers.heads[-1].startswith(b"GET /plain "))
        finally:
            await client.close()
        self.assertEqual(self.answers.stray, b"")
        self.assertEqual((await self.admin("tunnels"))["total"], 0)

    async def test_unlistedProtocolsStripped(self) -> None:
        """
        An upgrade to C{h2c}, or to a protocol the site does not list, goes
        to the upstream as an ordinary request without C{Upgrade}, and its
        answer comes back as an ordinary response.
        """
        client = await connectRaw(self.reactor, self.port)
        try:
            for protocol in ("h2c", "foo"):
                response = await client.request(
                    upgradeRequest("refuse.test", "/plain", protocol=protocol)
                )
                self.assertEqual((response.code, response.body), (200, PLAIN_BODY))
                lines = self.answers.heads[-1].lower().split(b"\r\n")
                self.assertEqual(
                    [line for line in lines if line.startswith(b"upgrade:")], []
                )
                connection = [x for x in lines if x.startswith(b"connection:")]
                self.assertNotIn(b"upgrade", b"".join(connection), protocol)
        finally:
            await client.close()
        self.assertEqual((await self.admin("tunnels"))["total"], 0)

    async def test_101WithoutUpgrade(self) -> None:
        """
        A 101 without an C{Upgrade} header, or with another protocol than
        the one asked for, is a 502 to the client, and the bytes the
        upstream sends after it never reach the client.
        """
        for what in ("101-no-upgrade", "101-h2c"):
            client = await connectRaw(self.reactor, self.port)
            try:
                response = await client.request(
                    upgradeRequest("refuse.test", f"/answer/{what}")
                )
                self.assertEqual(response.code, 502, (what, response.body))
                await self.sleep(0.2)
                self.assertNotIn(AFTER_101, response.body + client.data)
            finally:
                await client.close()


class ReloadTests(_TunnelTestCase):
    """
    Tunnels across reloads: those whose site stays keep running, whatever
    else changed; those whose site is removed are closed after
    C{tunnel_drain_secs}.
    """

    timeout = 90
    drain = 1.0

    def sites(self, version: int = 0, doomed: bool = True) -> list[dict[str, object]]:
        """
        C{app} and C{refuse} as always, C{doomed} (C{doomed.test}, on the
        echo server, C{tunnel_drain_secs} of L{drain}) unless not
        C{doomed}, and sites that differ in each C{version}: one whose
        upstream changes, and one added or removed.
        """
        refuse = f"http://127.0.0.1:{self.answers.port}"
        sites = [
            *super().sites(),
            {
                "name": "changing",
                "hosts": ["changing.test", f"v{version}.changing.test"],
                "upstreams": [refuse if version % 2 else self.echoURL()],
                "max_body_bytes": 1000 + version,
            },
        ]
        if version % 2:
            sites.append(
                {
                    "name": f"extra{version}",
                    "hosts": ["extra.test"],
                    "upstreams": [refuse],
                }
            )
        if doomed:
            sites.append(
                {
                    "name": "doomed",
                    "hosts": ["doomed.test"],
                    "upstreams": [self.echoURL()],
                    "tunnel_drain_secs": self.drain,
                }
            )
        return sites

    async def test_tunnelsSurviveReloads(self) -> None:
        """
        50 tunnels exchange messages while 20 reloads change other sites:
        none is closed, no message is lost, and the admin socket still
        counts all 50 on generation 1 at generation 21.
        """
        stop = threading.Event()
        tunnels = await inThread(
            openRawTunnels, self.port, 50, what="50 tunnels", seconds=30
        )

        def exchange() -> tuple[int, list[str]]:
            rounds = 0
            problems: list[str] = []
            try:
                while not stop.is_set() and rounds < 10_000:
                    for index, tunnel in enumerate(tunnels):
                        tunnel.send(f"{index}:{rounds}")
                    for index, tunnel in enumerate(tunnels):
                        got = tunnel.recv()
                        if got != f"{index}:{rounds}":
                            problems.append(f"tunnel {index} round {rounds}: {got!r}")
                    rounds += 1
            except Exception as e:
                problems.append(f"round {rounds}: {e!r}")
            return rounds, problems

        exchanging = Deferred.fromCoroutine(
            inThread(exchange, what="messages during reloads", seconds=80)
        )
        try:
            for version in range(1, 21):
                answer = await self.reload(self.sites(version))
                self.assertEqual(answer["generation"], version + 1)
                await self.sleep(0.05)
            await self.sleep(0.3)
            counted = await self.admin("tunnels")
        finally:
            stop.set()
            rounds, problems = await exchanging
            for tunnel in tunnels:
                tunnel.sock.close()
        self.assertEqual(problems, [])
        self.assertGreaterEqual(rounds, 20)
        self.assertEqual((counted["generation"], counted["total"]), (21, 50), counted)
        self.assertEqual(counted["sites"]["app"]["by_generation"], {"1": 50}, counted)
        print(f"\n50 tunnels across 20 reloads: {rounds} rounds, {rounds * 50} echoes")

    async def test_siteRemoved(self) -> None:
        """
        A reload that removes the tunnel's site leaves it
        C{tunnel_drain_secs} (it still echoes meanwhile), then closes it
        within a second more; the access log says why.
        """
        tunnel = await inThread(
            RawTunnel.open, self.port, "doomed.test", "/doomed", what="a tunnel"
        )

        def echoThenWait() -> float:
            tunnel.send("still here")
            if tunnel.recv() != "still here":
                raise AssertionError("the echo differs")
            tunnel.waitClosed(self.drain + 5)
            return time.monotonic()

        reloaded = time.monotonic()
        await self.reload(self.sites(doomed=False))
        closed = await inThread(echoThenWait, what="the drained tunnel", seconds=20)
        elapsed = closed - reloaded
        print(f"\nsite removed: tunnel closed {elapsed:.2f} s after the reload")
        self.assertGreaterEqual(elapsed, self.drain - 0.2)
        self.assertLessEqual(elapsed, self.drain + 1)
        [line] = await self.logLines(lambda r: r.get("path") == "/doomed")
        self.assertEqual(line["close_reason"], "site removed", line)


class LimitTests(_TunnelTestCase):
    """
    C{max_tunnels}, C{tunnel_idle_timeout_secs}, and tunnels at shutdown.
    """

    extraServer = {"shutdown_timeout_secs": 1}

    def sites(self) -> list[dict[str, object]]:
        return [
            *super().sites(),
            {
                "name": "capped",
                "hosts": ["capped.test"],
                "upstreams": [self.echoURL()],
                "max_tunnels": 2,
            },
            {
                "name": "idle",
                "hosts": ["idle.test"],
                "upstreams": [self.echoURL()],
                "tunnel_idle_timeout_secs": 1,
            },
        ]

    async def test_maxTunnels(self) -> None:
        """
        With C{max_tunnels = 2}, the third upgrade gets 503; once one of
        the two closes, an upgrade gets through again.
        """
        tunnels = await inThread(
            openRawTunnels, self.port, 2, "capped.test", what="two tunnels"
        )
        try:
            with self.assertRaises(UpgradeRefused) as refused:
                await inThread(RawTunnel.open, self.port, "capped.test", what="a third")
            self.assertEqual(refused.exception.status, 503)
            await inThread(tunnels.pop().close, what="closing one")
            for _ in range(20):
                try:
                    tunnels.append(
                        await inThread(
                            RawTunnel.open, self.port, "capped.test", what="again"
                        )
                    )
                    break
                except UpgradeRefused:
                    await self.sleep(0.1)
            self.assertEqual(len(tunnels), 2)
        finally:
            for tunnel in tunnels:
                tunnel.sock.close()

    async def test_idleTimeout(self) -> None:
        """
        With C{tunnel_idle_timeout_secs = 1}, a tunnel that carries a
        message every 0.4 s stays open for 2.5 s; an idle one is closed
        after about 1 s, logged as an idle timeout.
        """

        def busy() -> None:
            tunnel = RawTunnel.open(self.port, "idle.test", "/busy")
            for index in range(7):
                tunnel.send(str(index))
                if tunnel.recv() != str(index):
                    raise AssertionError("the echo differs")
                time.sleep(0.4)
            tunnel.close()

        await inThread(busy, what="a busy tunnel")

        def idle() -> float:
            tunnel = RawTunnel.open(self.port, "idle.test", "/idle")
            return tunnel.waitClosed(5)

        elapsed = await inThread(idle, what="an idle tunnel")
        print(f"\nidle tunnel closed after {elapsed:.2f} s")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLessEqual(elapsed, 2.5)
        [line] = await self.logLines(lambda r: r.get("path") == "/idle")
        self.assertEqual(line["close_reason"], "idle timeout", line)

    async def test_shutdown(self) -> None:
        """
        On SIGTERM, an open tunnel gets C{shutdown_timeout_secs} and is then
        closed; the proxy exits 0 and logs the tunnel as closed by the
        shutdown.
        """
        tunnel = await inThread(
            RawTunnel.open, self.port, "127.0.0.1", "/shutdown", what="a tunnel"
        )
        started = time.monotonic()
        code = await self.proxy.terminate()
        closed = await inThread(tunnel.waitClosed, 5.0, what="the tunnel closing")
        self.assertEqual(code, 0, self.proxy.output)
        self.assertLessEqual(time.monotonic() - started, 1 + 3)
        self.assertGreater(closed, -1)
        [line] = await self.logLines(lambda r: r.get("path") == "/shutdown")
        self.assertEqual(line["close_reason"], "shutdown", line)


def _stalledFor(samples: list[int], count: int) -> bool:
    """
    Whether the last C{count} samples are all the same.
    """
    return len(samples) >= count and len(set(samples[-count:])) == 1


class MemoryTests(_TunnelTestCase):
    """
    What tunnels cost the proxy: memory per idle tunnel, and memory while
    a client stops reading a flood (backpressure).
    """

    timeout = 90

    async def test_idleTunnels(self) -> None:
        """
        1,000 idle tunnels cost under 20 KiB of the proxy's RSS each (the
        figure is printed).
        """
        warm = await inThread(openRawTunnels, self.port, 50, what="warm-up tunnels")
        await inThread(lambda: [t.close() for t in warm], what="closing them")
        await self.sleep(0.5)
        before = readRSS(self.proxy.pid)
        tunnels = await inThread(
            openRawTunnels, self.port, 1000, what="1,000 tunnels", seconds=60
        )
        try:
            await waitFor(lambda: self.echo.open >= 1000, 20, "1,000 at the upstream")
            await self.sleep(1.0)
            after = readRSS(self.proxy.pid)
            counted = (await self.admin("tunnels"))["total"]
        finally:
            for tunnel in tunnels:
                tunnel.sock.close()
        perTunnel = (after - before) / 1000 / KiB
        print(
            f"\n1,000 idle tunnels: proxy RSS {before / MiB:.1f} -> "
            f"{after / MiB:.1f} MiB, {perTunnel:.1f} KiB per tunnel"
        )
        self.assertEqual(counted, 1000)
        self.assertLess(perTunnel, 20)

    async def test_stalledReader(self) -> None:
        """
        A client that stops reading while the upstream sends 100 MiB: the
        upstream is paused (it sent far less than 100 MiB) and the proxy's
        RSS grows by less than 5 MiB.
        """
        total = 100 * MiB
        tunnel = await inThread(
            RawTunnel.open,
            self.port,
            "127.0.0.1",
            f"/flood/{total}",
            64 * KiB,
            what="a flooded tunnel",
        )
        try:
            before = readRSS(self.proxy.pid)
            samples: list[int] = []
            for _ in range(120):
                await self.sleep(0.25)
                samples.append(sum(self.echo.flooded.values()))
                if samples[-1] >= total or _stalledFor(samples, 6):
                    break
            after = readRSS(self.proxy.pid)
        finally:
            tunnel.sock.close()
        sent = samples[-1]
        print(
            f"\nstalled reader: upstream sent {sent / MiB:.1f} MiB of 100, "
            f"proxy RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB"
        )
        self.assertLess(sent, 50 * MiB)
        self.assertLess(after - before, 5 * MiB)
