"""
Integration tests: reloading a real C{twistd revproxy} process (SIGHUP, the
admin socket, C{nc}, C{socat}, C{revproxy-admin}), the admin socket's life,
and graceful shutdown, with two in-process upstreams on loopback that answer
which one they are.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    EXIT_TIMEOUT,
    CommandResult,
    ProxyProcess,
    RawClient,
    RawResponse,
    Upstream,
    askAdmin,
    connectRaw,
    getReactor,
    parseAdminAnswer,
    patternBody,
    replaceFile,
    runCommand,
    spawnProxy,
    waitFor,
    whoamiBody,
    withTimeout,
    writeConfig,
)

_log = Logger()

KiB = 1024

#: The sites diff from L{_ReloadTestCase.version}C{(A)} to C{(B, extra=True)}.
_EXTRA_DIFF = {
    "added": ["extra"],
    "removed": ["old"],
    "changed": ["main"],
    "unchanged": 1,
}


def _site(name: str, hosts: Sequence[str], upstream: Upstream) -> dict[str, object]:
    """
    A site forwarding C{hosts} to C{upstream}.
    """
    return {
        "name": name,
        "hosts": list(hosts),
        "upstreams": [f"http://127.0.0.1:{upstream.port}"],
    }


def _whoamiRequest(host: str = "127.0.0.1", close: bool = False) -> bytes:
    """
    A raw C{GET /whoami} for C{host}, keep-alive unless C{close}.
    """
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"GET /whoami HTTP/1.1\r\nHost: "
        + host.encode("ascii")
        + b"\r\n"
        + connection
        + b"\r\n"
    )


class _ReloadTestCase(TestCase):
    """
    Starts upstreams C{A} and C{B}, writes a config whose C{main} site
    (C{127.0.0.1}) goes to C{A}, and starts a proxy on it; stops them after
    the test, checking that SIGTERM made the proxy exit 0.

    Everything lives in a short directory under C{/tmp}: a Unix socket path
    must stay under about 100 bytes, which trial's own temporary paths
    exceed.

    @ivar adminSocket: whether the config has an C{admin_socket_path}.
    @ivar shutdownTimeout: the config's C{shutdown_timeout_secs}, if set.
    """

    timeout = 30
    adminSocket = True
    shutdownTimeout: float | None = None
    #: More C{[server]} keys of the config.
    extraServer: dict[str, object] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        # A directory that does not exist yet: the proxy creates it.
        self.socketPath = os.path.join(self.directory, "run", "admin.sock")
        self.upstreamA = Upstream(self.reactor, "A")
        self.upstreamB = Upstream(self.reactor, "B")
        for upstream in (self.upstreamA, self.upstreamB):
            await upstream.start()
            self.addCleanup(upstream.stop)
        self.configPath = self.writeConfig(self.version(self.upstreamA))
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        self.addCleanup(self._stopProxy)

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    def version(
        self, main: Upstream, extra: bool = False, broken: bool = False
    ) -> list[dict[str, object]]:
        """
        The sites of one version of the config: C{main} behind C{127.0.0.1}
        and C{localhost}, C{stable.test} on C{A} always, and either
        C{old.test} on C{A} or (C{extra}) C{extra.test} on C{B}.  A
        C{broken} version adds a site with an C{ftp://} upstream (its key
        path is C{sites[3].upstreams[0]}).
        """
        sites = [
            _site("main", ["127.0.0.1", "localhost"], main),
            _site("stable", ["stable.test"], self.upstreamA),
            (
                _site("extra", ["extra.test"], self.upstreamB)
                if extra
                else _site("old", ["old.test"], self.upstreamA)
            ),
        ]
        if broken:
            sites.append(
                {"name": "bad", "hosts": ["bad.test"], "upstreams": ["ftp://127.0.0.1"]}
            )
        return sites

    def writeConfig(self, sites: list[dict[str, object]]) -> str:
        """
        Write the config file with C{sites} (replacing it whole); its path.
        """
        server: dict[str, object] = {}
        if self.adminSocket:
            server["admin_socket_path"] = self.socketPath
        if self.shutdownTimeout is not None:
            server["shutdown_timeout_secs"] = self.shutdownTimeout
        server.update(self.extraServer)
        return writeConfig(self.directory, sites, server=server)

    async def whoami(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """
        GET C{/whoami} for C{host} on a new connection; the name of the
        upstream that answered, after checking the whole body.
        """
        client = await connectRaw(self.reactor, port or self.port)
        try:
            response = await client.request(_whoamiRequest(host, close=True))
        finally:
            await client.close()
        self.assertEqual(response.code, 200, response.body)
        name = response.body.split(b"\n", 1)[0].decode("ascii", "replace")
        self.assertEqual(response.body, whoamiBody(name))
        return name

    async def statusCode(self, host: str) -> int:
        """
        The status code of C{GET /whoami} for C{host}.
        """
        client = await connectRaw(self.reactor, self.port)
        try:
            response = await client.request(_whoamiRequest(host, close=True))
        finally:
            await client.close()
        return response.code

    async def admin(self, command: str) -> dict[str, Any]:
        """
        The answer of the admin socket to C{command}.
        """
        return await askAdmin(self.reactor, self.socketPath, command)

    async def shell(self, script: str, *args: str) -> CommandResult:
        """
        Run C{/bin/sh -c SCRIPT sh ARGS...}, as an operator would type it.
        """
        return await runCommand(self.reactor, ["/bin/sh", "-c", script, "sh", *args])

    def assertNoTraceback(self) -> None:
        """
        The proxy logged no traceback so far.
        """
        self.assertNotIn("Traceback", self.proxy.output)


class SighupTests(_ReloadTestCase):
    """
    SIGHUP reloads the config file (C{systemctl reload}).
    """

    adminSocket = False

    async def test_sighupSwitchesUpstream(self) -> None:
        """
        After the file is edited to send C{main} to B and the proxy gets
        SIGHUP, it logs generation 2 and new requests reach B.
        """
        self.assertEqual(await self.whoami(), "A")
        self.writeConfig(self.version(self.upstreamB))
        self.assertEqual(await self.whoami(), "A", "applied before any reload")
        self.proxy.transport.signalProcess("HUP")
        await self.proxy.waitOutput("Reloaded (SIGHUP): generation 2", EXIT_TIMEOUT)
        self.assertEqual(await self.whoami(), "B")
        self.assertEqual(await self.whoami("localhost"), "B")
        self.assertEqual(await self.whoami("stable.test"), "A")
        self.assertNoTraceback()


class AdminSocketTests(_ReloadTestCase):
    """
    The admin socket answers C{status}, C{reload} and C{check}, to Twisted's
    UNIX client, C{nc -U}, C{socat} and C{revproxy-admin}.
    """

    async def test_status(self) -> None:
        """
        C{status} answers ok with the uptime, the number of sites, the
        generation and the proxy's pid.
        """
        answer = await self.admin("status")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertIsInstance(answer["uptime_secs"], int)
        self.assertGreaterEqual(answer["uptime_secs"], 0)
        self.assertLess(answer["uptime_secs"], 60)
        self.assertEqual(answer["sites"], 3)
        self.assertEqual(answer["generation"], 1)
        self.assertEqual(answer["pid"], self.proxy.pid)

    async def test_thousandClientsAtOnce(self) -> None:
        """
        1,000 clients connected at the same time, with a reload among them,
        all get their answer.
        """

        commands = ["status"] * 999 + ["reload"]
        answers = await gatherResults(
            [
                ensureDeferred(askAdmin(self.reactor, self.socketPath, command, 30))
                for command in commands
            ]
        )
        self.assertEqual(len(answers), 1000)
        self.assertEqual([a["status"] for a in answers].count("ok"), 1000, answers[:3])
        self.assertEqual(answers[-1]["generation"], 2)

    async def test_reload(self) -> None:
        """
        C{reload} after an edit answers ok, generation 2 and which sites
        were added, removed, changed and left alone; new requests follow
        the new routing.
        """
        self.writeConfig(self.version(self.upstreamB, extra=True))
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(answer["generation"], 2)
        self.assertEqual(
            answer["sites"],
            _EXTRA_DIFF,
        )
        self.assertEqual(answer["restart_required"], [])
        self.assertEqual(await self.whoami(), "B")
        self.assertEqual(await self.whoami("extra.test"), "B")
        self.assertEqual(await self.whoami("stable.test"), "A")
        self.assertEqual(await self.statusCode("old.test"), 421)
        status = await self.admin("status")
        self.assertEqual((status["generation"], status["sites"]), (2, 3))
        self.assertIn("Reloaded (admin): generation 2", self.proxy.output)

    async def test_brokenFile(self) -> None:
        """
        C{reload} of an invalid file, or of one that is not TOML, answers
        C{config_invalid} with the key path, and the proxy keeps routing
        to the old upstream on generation 1; fixing the file and reloading
        then works.
        """
        self.writeConfig(self.version(self.upstreamB, broken=True))
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "error", answer)
        self.assertEqual(answer["code"], "config_invalid")
        self.assertIn("sites[3].upstreams[0]", answer["message"])
        self.assertEqual(await self.whoami(), "A")

        replaceFile(self.configPath, "[server\nthis is not TOML\n")
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "error", answer)
        self.assertEqual(answer["code"], "config_invalid")
        self.assertEqual(await self.whoami(), "A")
        self.assertEqual((await self.admin("status"))["generation"], 1)
        self.assertIn("nothing was applied", self.proxy.output)

        self.writeConfig(self.version(self.upstreamB))
        answer = await self.admin("reload")
        self.assertEqual((answer["status"], answer["generation"]), ("ok", 2), answer)
        self.assertEqual(await self.whoami(), "B")
        self.assertNoTraceback()

    async def test_check(self) -> None:
        """
        C{check} answers the diff a reload would apply, and applies
        nothing: requests still reach A, the generation stays 1.
        """
        self.writeConfig(self.version(self.upstreamB, extra=True))
        answer = await self.admin("check")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(
            answer["sites"],
            _EXTRA_DIFF,
        )
        self.assertEqual(answer["generation"], 1)
        self.assertEqual(await self.whoami(), "A")
        self.assertEqual(await self.statusCode("extra.test"), 421)
        self.assertEqual((await self.admin("status"))["generation"], 1)

        self.writeConfig(self.version(self.upstreamB, broken=True))
        answer = await self.admin("check")
        self.assertEqual(
            (answer["status"], answer["code"]), ("error", "config_invalid")
        )
        self.assertEqual(await self.whoami(), "A")

    async def test_netcat(self) -> None:
        """
        C{echo status | nc -U PATH} (netcat-openbsd) prints one JSON line,
        status ok, and exits 0.
        """
        result = await self.shell('echo status | nc -U "$1"', self.socketPath)
        self.assertEqual((result.code, result.err), (0, b""), result)
        answer = parseAdminAnswer(result.out)
        self.assertEqual((answer["status"], answer["generation"]), ("ok", 1), answer)
        self.assertEqual(answer["pid"], self.proxy.pid)

    async def test_socat(self) -> None:
        """
        C{echo reload | socat - UNIX-CONNECT:PATH}, which half-closes after
        the command, gets the reload's answer and the reload happens.
        """
        self.writeConfig(self.version(self.upstreamB))
        result = await self.shell(
            'echo reload | socat - UNIX-CONNECT:"$1"', self.socketPath
        )
        self.assertEqual((result.code, result.err), (0, b""), result)
        answer = parseAdminAnswer(result.out)
        self.assertEqual((answer["status"], answer["generation"]), ("ok", 2), answer)
        self.assertEqual(answer["sites"]["changed"], ["main"])
        self.assertEqual(await self.whoami(), "B")

    async def test_adminClient(self) -> None:
        """
        C{revproxy-admin reload} prints the answer and exits 0 on ok, and 1
        on a bad config, which is not applied.
        """
        argv = [
            sys.executable,
            "-m",
            "revproxy.admin_client",
            "--socket",
            self.socketPath,
            "reload",
        ]
        self.writeConfig(self.version(self.upstreamB))
        result = await runCommand(self.reactor, argv)
        self.assertEqual(result.code, 0, result)
        answer = parseAdminAnswer(result.out)
        self.assertEqual((answer["status"], answer["generation"]), ("ok", 2), answer)
        self.assertEqual(await self.whoami(), "B")

        self.writeConfig(self.version(self.upstreamA, broken=True))
        result = await runCommand(self.reactor, argv)
        self.assertEqual(result.code, 1, result)
        answer = parseAdminAnswer(result.out)
        self.assertEqual(
            (answer["status"], answer["code"]), ("error", "config_invalid"), answer
        )
        self.assertEqual(await self.whoami(), "B")

    async def test_socketLifecycle(self) -> None:
        """
        The socket is created, with its missing directory, as a socket of
        mode 0660, and it and its lock file are gone after SIGTERM.
        """
        mode = os.stat(self.socketPath).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o660, oct(mode))
        code = await self.proxy.terminate()
        self.assertEqual(code, 0, self.proxy.output)
        self.assertFalse(os.path.lexists(self.socketPath))
        self.assertFalse(os.path.lexists(self.socketPath + ".lock"))


class SecondProcessTests(_ReloadTestCase):
    """
    A second proxy on the same admin socket path does without it.
    """

    async def test_secondProxy(self) -> None:
        """
        A second proxy started on the same config (same admin socket path)
        logs a warning, runs without the socket and proxies on its own
        port; the first one's socket keeps answering, also after the second
        has stopped.
        """
        second, port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        try:
            await second.waitOutput("Running without the admin socket", EXIT_TIMEOUT)
            warnings = [
                line
                for line in second.output.splitlines()
                if "Running without the admin socket" in line
            ]
            self.assertEqual(len(warnings), 1, second.output)
            self.assertIn("#warn]", warnings[0])
            self.assertIn(self.socketPath, warnings[0])
            self.assertNotEqual(port, self.port)
            self.assertEqual(await self.whoami(port=port), "A")
            answer = await self.admin("status")
            self.assertEqual(answer["pid"], self.proxy.pid, answer)
        finally:
            code = await second.terminate()
        self.assertEqual(code, 0, second.output)
        self.assertNotIn("Traceback", second.output)
        answer = await self.admin("status")
        self.assertEqual((answer["status"], answer["pid"]), ("ok", self.proxy.pid))
        self.assertEqual(await self.whoami(), "A")

    async def test_staleSocket(self) -> None:
        """
        The socket and lock file a killed proxy left behind are replaced by
        the next proxy started on the same path, which answers on it.
        """
        self.proxy.kill()
        self.assertEqual(await self.proxy.waitExit(), -9)
        self.assertTrue(os.path.lexists(self.socketPath), "no stale socket")
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        answer = await self.admin("status")
        self.assertEqual((answer["status"], answer["pid"]), ("ok", self.proxy.pid))
        self.assertNotIn("Running without the admin socket", self.proxy.output)


class _ShutdownTestCase(_ReloadTestCase):
    """
    A proxy without an admin socket, and a throttled download through it.
    """

    adminSocket = False

    async def startDownload(
        self, size: int, seconds: float
    ) -> tuple[RawClient, Deferred[RawResponse]]:
        """
        Start a keep-alive GET of a C{size}-byte body that the upstream
        sends over C{seconds}; return the client and its response once the
        first body bytes have arrived.
        """
        client = await connectRaw(self.reactor, self.port)
        self.addCleanup(client.close)
        response = client.request(
            b"GET /throttled?bytes=%d&secs=%g HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            % (size, seconds)
        )
        await waitFor(
            lambda: (
                not client.data.endswith(b"\r\n\r\n") and b"\r\n\r\n" in client.data
            ),
            5,
            "the download's first bytes",
        )
        return client, response

    async def waitRefused(self, seconds: float) -> None:
        """
        Wait until a connection to the proxy's port is refused.
        """
        deadline = self.reactor.seconds() + seconds
        while True:
            try:
                client = await connectRaw(self.reactor, self.port)
            except ConnectionRefusedError:
                return
            await client.close()
            if self.reactor.seconds() > deadline:
                self.fail(f"connections still accepted {seconds} s after SIGTERM")
            await deferLater(self.reactor, 0.05, lambda: None)


class GracefulShutdownTests(_ShutdownTestCase):
    """
    SIGTERM lets a download in flight finish while refusing new
    connections.
    """

    async def test_downloadCompletes(self) -> None:
        """
        A 500 KiB download spread over 5 s and started before SIGTERM
        arrives whole, then the proxy closes the connection, while a
        connection attempt after SIGTERM is refused and an idle keep-alive
        connection is closed at once; the exit status is 0.
        """
        size = 500 * KiB
        idle = await connectRaw(self.reactor, self.port)
        self.addCleanup(idle.close)
        first = await idle.request(_whoamiRequest())
        self.assertEqual(first.body, whoamiBody("A"))
        started = self.reactor.seconds()
        client, response = await self.startDownload(size, 5)
        self.proxy.transport.signalProcess("TERM")
        await withTimeout(idle.lost, 2, "the idle keep-alive connection closing")
        await self.waitRefused(3)
        self.assertFalse(response.called, "the download ended before the refusal")
        self.assertTrue(self.proxy.running)
        result = await response
        self.assertEqual(result.code, 200)
        self.assertEqual(len(result.body), size)
        self.assertEqual(result.body, patternBody(size))
        self.assertGreater(self.reactor.seconds() - started, 4.0, "not throttled")
        await withTimeout(client.lost, 5, "the proxy closing the connection")
        self.assertEqual(client.data, b"", "bytes after the response")
        code = await self.proxy.waitExit()
        self.assertEqual(code, 0, self.proxy.output)
        self.assertNoTraceback()


class ShutdownDeadlineTests(_ShutdownTestCase):
    """
    C{shutdown_timeout_secs} bounds how long SIGTERM waits for requests.
    """

    shutdownTimeout = 1

    async def test_deadlineCutsDownload(self) -> None:
        """
        With C{shutdown_timeout_secs = 1}, a download that needs 8 s more
        is cut about a second after SIGTERM, and the proxy exits 0 within
        about 2 s.
        """
        size = 500 * KiB
        client, response = await self.startDownload(size, 8)
        sent = self.reactor.seconds()
        self.proxy.transport.signalProcess("TERM")
        await withTimeout(client.lost, 5, "the proxy cutting the download")
        cut = self.reactor.seconds() - sent
        with self.assertRaises(ConnectionError):
            await response
        code = await self.proxy.waitExit()
        exited = self.reactor.seconds() - sent
        _log.info(
            "Shutdown deadline 1 s: download cut after {cut:.2f} s, "
            "exit after {exited:.2f} s",
            cut=cut,
            exited=exited,
        )
        self.assertEqual(code, 0, self.proxy.output)
        self.assertGreater(cut, 0.8)
        self.assertLess(cut, 2.0)
        self.assertLess(exited, 2.5)
        self.assertNoTraceback()


class ReloadUnderLoadTests(_ReloadTestCase):
    """
    Reloads do not fail or drop requests in flight.
    """

    CLIENTS = 4
    RELOADS = 20
    INTERVAL = 0.4
    # The clients make more requests per connection than the default cap
    # (1000, after which a response says "Connection: close"); this test is
    # about reloads, not the cap.
    extraServer = {"max_requests_per_connection": 0}

    async def test_reloadsUnderLoad(self) -> None:
        """
        Four keep-alive clients looping GETs for about 9 s see no failed
        request and no closed connection across 20 reloads (the file
        alternating between upstreams A and B), which all answer ok with
        generations 2 to 21.
        """
        bodies = {whoamiBody(u.name): u.name for u in (self.upstreamA, self.upstreamB)}
        served = {"A": 0, "B": 0}
        failures: list[str] = []
        stopping = False

        async def load(client: RawClient) -> None:
            while not stopping:
                try:
                    response = await client.request(_whoamiRequest())
                except Exception as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    return
                name = bodies.get(response.body)
                if response.code != 200 or name is None:
                    failures.append(f"{response.code}: {response.body[:100]!r}")
                else:
                    served[name] += 1

        clients = []
        for _ in range(self.CLIENTS):
            client = await connectRaw(self.reactor, self.port)
            self.addCleanup(client.close)
            clients.append(client)
        started = self.reactor.seconds()
        loops = [Deferred.fromCoroutine(load(client)) for client in clients]
        answers: list[dict[str, Any]] = []
        try:
            await deferLater(self.reactor, 0.5, lambda: None)
            for i in range(self.RELOADS):
                target = self.upstreamB if i % 2 == 0 else self.upstreamA
                self.writeConfig(self.version(target))
                answers.append(await self.admin("reload"))
                await deferLater(self.reactor, self.INTERVAL, lambda: None)
            await deferLater(self.reactor, 0.5, lambda: None)
        finally:
            stopping = True
            await withTimeout(DeferredList(loops), EXIT_TIMEOUT, "the load stopping")
        elapsed = self.reactor.seconds() - started
        requests = served["A"] + served["B"]
        okReloads = [a for a in answers if a.get("status") == "ok"]
        _log.info(
            "Reload under load: {requests} requests ({a} to A, {b} to B) in "
            "{elapsed:.1f} s on {clients} keep-alive connections, {failed} failed; "
            "{ok} of {reloads} reloads ok",
            requests=requests,
            a=served["A"],
            b=served["B"],
            elapsed=elapsed,
            clients=self.CLIENTS,
            failed=len(failures),
            ok=len(okReloads),
            reloads=self.RELOADS,
        )
        self.assertEqual(failures, [])
        self.assertEqual([c for c in clients if c.disconnected], [])
        self.assertEqual(len(okReloads), self.RELOADS, answers)
        self.assertEqual(
            [a["generation"] for a in answers], list(range(2, self.RELOADS + 2))
        )
        self.assertEqual(
            [a["sites"]["changed"] for a in answers], [["main"]] * self.RELOADS
        )
        self.assertGreater(served["A"], 100)
        self.assertGreater(served["B"], 100)
        self.assertEqual(await self.whoami(), "A")
        self.assertNoTraceback()
