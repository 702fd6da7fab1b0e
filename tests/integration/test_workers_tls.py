# -*- test-case-name: tests.integration.test_workers_tls -*-
"""
Integration tests: TLS termination, ACME and upstream health checks of a
real C{twistd revproxy} with C{[server] workers = 2} (issue #18).

The supervisor binds the listeners and owns ACME and the health checks; the
two worker processes accept on the shared sockets and terminate TLS.  What
one worker serves, the other must serve too: certificates from files, the
ACME challenge answers (pebble reaches whichever worker accepts its
connection), the issued certificates, the upstreams' health.

The kernel hands a connection on a shared socket to whichever worker
accepts first, so a run of connections may all land in one worker.  To
reach each worker for certain, the tests stop the other with C{SIGSTOP}
for a moment (L{_WorkersCase.alone}): a stopped process accepts nothing,
so every connection made meanwhile is the running worker's.  Stops last
well under the supervisor's heartbeat limit (15 s), and every stopped
worker is continued before the proxy is stopped.

pebble (see L{tests.integration.pebble}) validates http-01 on the proxy's
HTTP port and tls-alpn-01 on its HTTPS port, as in
L{tests.integration.test_acme}.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.integration.support import (
    ProxyProcess,
    RawResponse,
    Upstream,
    closedPort,
    configText,
    connectRaw,
    replaceFile,
    runCommand,
    spawnProxy,
    waitHTTPSPorts,
    whoamiBody,
)
from tests.integration.test_acme import (
    EMAIL,
    _AcmeTestCase,
    commonName,
    placeholderName,
)
from tests.integration.test_tls import (
    Authority,
    Leaf,
    curlHTTP2,
    httpGet,
    inThread,
    tlsExchange,
)

#: How many worker processes the proxy runs.
WORKERS = 2

#: How long the workers may take to be all serving (at start, or after
#: one was killed and is started again).
SERVING_TIMEOUT = 15.0


class _Health(Resource):
    """
    C{/healthz} of an upstream: answers L{status}; counts the checks.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.checks = 0

    def render_GET(self, request: Request) -> bytes:
        self.checks += 1
        request.setResponseCode(self.status)
        return b"health\n"


class _WorkersCase(_AcmeTestCase):
    """
    L{_AcmeTestCase} (an upstream C{A}, pebble on demand, the proxy's HTTP
    and HTTPS ports) with a proxy of L{WORKERS} worker processes, and a
    second upstream C{B}.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.upstreamB = Upstream(self.reactor, "B")
        await self.upstreamB.start()
        self.addCleanup(self.upstreamB.stop)
        self.paused: set[int] = set()

    def writeConfig(  # type: ignore[override]
        self,
        sites: Sequence[dict[str, object]],
        *,
        challenge: str | None = "http-01",
    ) -> None:
        """
        Write the config: C{sites}, the HTTP and HTTPS listeners on
        L{httpPort} and L{tlsPort}, the admin socket, C{workers = 2} and,
        with a C{challenge}, C{[acme]} pointing at the pebble.
        """
        server = {
            "listen_https": [f"tcp:{self.tlsPort}:interface=127.0.0.1"],
            "admin_socket_path": self.socketPath,
            "workers": WORKERS,
        }
        listen = [f"tcp:{self.httpPort}:interface=127.0.0.1"]
        text = configText(sites, self.stateDir, listen, server)
        if challenge is not None:
            pebble = self.pebble
            assert pebble is not None
            text += (
                "\n[acme]\n"
                f'email = "{EMAIL}"\n'
                f'directory_url = "{pebble.directoryURL}"\n'
                f'ca_file = "{pebble.caFile}"\n'
                f'challenge = "{challenge}"\n'
            )
        replaceFile(self.configPath, text)

    async def startProxy(self) -> ProxyProcess:
        """
        Start the proxy; return it once both workers serve.
        """
        proxy, port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        self.proxy = proxy
        self.addCleanup(self.stopProxy, proxy)
        self.assertEqual(port, self.httpPort, proxy.output)
        await self.serving()
        # Each worker logs the HTTPS listener it adopted.
        ports = await waitHTTPSPorts(proxy, WORKERS)
        self.assertEqual(ports, [self.tlsPort] * WORKERS, proxy.output)
        return proxy

    async def stopProxy(self, proxy: ProxyProcess) -> None:
        """
        Continue every stopped worker, then stop the proxy (exit 0).
        """
        self.resume(list(self.paused))
        await super().stopProxy(proxy)

    # -- the workers

    async def serving(
        self, seconds: float = SERVING_TIMEOUT, restarts: int | None = None
    ) -> list[dict[str, Any]]:
        """
        The admin C{status} of each worker once all L{WORKERS} serve (and,
        when given, have been restarted C{restarts} times in all).
        """
        deadline = self.reactor.seconds() + seconds
        while True:
            answer = await self.admin("status")
            self.assertEqual(answer["status"], "ok", answer)
            workers: list[dict[str, Any]] = answer["workers"]
            if (
                len(workers) == WORKERS
                and all(w["state"] == "serving" and w["pid"] for w in workers)
                and (
                    restarts is None or sum(w["restarts"] for w in workers) == restarts
                )
            ):
                return workers
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"the workers do not all serve after {seconds} s: "
                    f"{workers}\n{self.outputs()}"
                )
            await self.sleep(0.1)

    async def sleep(self, seconds: float) -> None:
        """
        Let C{seconds} pass on the reactor.
        """
        await deferLater(self.reactor, seconds, lambda: None)

    def pause(self, pids: Sequence[int]) -> None:
        """
        SIGSTOP the workers C{pids}: they accept nothing until resumed.
        """
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            self.paused.add(pid)

    def resume(self, pids: Sequence[int]) -> None:
        """
        SIGCONT the workers C{pids}.
        """
        for pid in pids:
            self.paused.discard(pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    async def barrier(self) -> None:
        """
        Return once every worker has handled what the supervisor sent it
        so far: the admin C{stats} asks each one over its AMP pipe, which
        delivers in order, and waits for all the answers.
        """
        answer = await self.admin("stats")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(answer["workers"], WORKERS, answer)

    async def alone(self, check: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """
        For each worker in turn, run C{check(worker)} with every other
        worker stopped, so that every connection C{check} makes is that
        worker's; then wait until all have caught up (L{barrier}).
        """
        workers = await self.serving()
        for worker in workers:
            others = [w["pid"] for w in workers if w is not worker]
            self.pause(others)
            try:
                await check(worker)
            finally:
                self.resume(others)
        await self.barrier()

    # -- clients

    async def exchange(
        self, serverName: str, caFile: str | None
    ) -> tuple[x509.Certificate, RawResponse]:
        """
        GET C{/whoami} over a new TLS connection with C{serverName} in SNI
        (verified against C{caFile}, chain and name, when given).
        """
        cert, response = await inThread(
            tlsExchange,
            self.tlsPort,
            serverName,
            caFile,
            httpGet("/whoami", serverName),
            what=f"GET /whoami over TLS to {serverName}",
        )
        assert response is not None
        return cert, response

    async def plainWhoami(self, host: str) -> bytes:
        """
        The first line of C{/whoami} for C{host}, over a new plain HTTP
        connection (the name of the upstream that answered).
        """
        client = await connectRaw(self.reactor, self.httpPort)
        try:
            response = await client.request(httpGet("/whoami", host))
        finally:
            await client.close()
        self.assertEqual(response.code, 200, response.body[:300])
        return response.body.split(b"\n", 1)[0]

    async def assertIssuedEverywhere(
        self,
        site: str,
        names: Sequence[str],
        root: str,
        serial: int | None = None,
        count: int = 10,
        each: int = 4,
    ) -> x509.Certificate:
        """
        C{count} new TLS connections (both workers running), then C{each}
        new ones to each worker alone, all get C{site}'s certificate from
        pebble (verified against pebble's C{root}; serial C{serial} when
        given, else the same for all) and the upstream's answer.  The
        certificate.
        """
        seen: list[x509.Certificate] = []

        async def check(host: str) -> None:
            cert, response = await self.exchange(host, root)
            self.assertFromPebble(cert, names)
            self.assertWhoami(response)
            seen.append(cert)

        for i in range(count):
            await check(names[i % len(names)])

        async def one(worker: dict[str, Any]) -> None:
            for i in range(each):
                await check(names[i % len(names)])

        await self.alone(one)
        serials = {c.serial_number for c in seen}
        self.assertEqual(len(serials), 1, f"{site}: several certificates {serials}")
        if serial is not None:
            self.assertEqual(serials, {serial})
        return seen[0]

    def assertNoTraceback(self) -> None:
        """
        The proxy (supervisor and workers) logged no traceback.
        """
        assert self.proxy is not None
        self.assertNotIn("Traceback", self.proxy.output)


class FilesTests(_WorkersCase):
    """
    Two sites with certificates from files, behind two workers.
    """

    async def test_sniAndALPN(self) -> None:
        """
        Twenty new TLS connections, alternating between C{a.test} and
        C{b.test}, each get their site's certificate (verified against its
        own CA) and their site's upstream; so do new connections to each
        worker alone.  HTTP/2, chosen by ALPN, works in each worker.
        """
        authorityA = Authority(intermediate=True)
        authorityB = Authority(useRSA=True)
        caA = authorityA.writeRoot(self.path("ca-a.pem"))
        caB = authorityB.writeRoot(self.path("ca-b.pem"))
        leaves = {
            "a": authorityA.issue("a.test"),
            "b": authorityB.issue("b.test", useRSA=True),
        }
        cas = {"a": caA, "b": caB}
        upstreams = {"a": self.upstream, "b": self.upstreamB}

        def site(name: str, leaf: Leaf) -> dict[str, object]:
            certFile, keyFile = leaf.write(self.directory, name)
            return {
                "name": name,
                "hosts": [f"{name}.test"],
                "upstreams": [f"http://127.0.0.1:{upstreams[name].port}"],
                "tls": "files",
                "cert_file": certFile,
                "key_file": keyFile,
            }

        self.writeConfig(
            [site("a", leaves["a"]), site("b", leaves["b"])], challenge=None
        )
        await self.startProxy()

        async def check(name: str) -> None:
            cert, response = await self.exchange(f"{name}.test", cas[name])
            self.assertEqual(
                cert.public_bytes(serialization.Encoding.DER), leaves[name].der
            )
            self.assertEqual(response.code, 200, response.body[:300])
            self.assertEqual(response.body, whoamiBody(name.upper()))

        for i in range(20):
            await check("ab"[i % 2])

        async def http2() -> None:
            result = await runCommand(
                self.reactor,
                curlHTTP2(
                    self.tlsPort,
                    caA,
                    "--write-out",
                    "\n%{http_version} %{response_code}",
                    f"https://a.test:{self.tlsPort}/whoami",
                ),
                seconds=25,
            )
            self.assertEqual(result.code, 0, result)
            body, _, status = result.out.rpartition(b"\n")
            self.assertEqual(status, b"2 200", body[:300])
            self.assertEqual(body, whoamiBody("A"))

        await http2()

        async def one(worker: dict[str, Any]) -> None:
            for name in "abab":
                await check(name)
            await http2()

        await self.alone(one)
        self.assertNoTraceback()


class AcmeIssuanceTests(_WorkersCase):
    """
    A site with C{tls = "acme"} gets its certificate from pebble, whichever
    worker pebble's validation reaches, and every worker serves it.
    """

    names = ["a.test", "www.a.test"]

    async def issuance(self, challenge: str) -> None:
        """
        The proxy orders site C{a}'s certificate at start and gets it over
        C{challenge}; new connections to both workers get it, and C{certs}
        shows it.  Then, for each worker, a renewal forced while the other
        is stopped (so pebble's validation can only reach that one)
        succeeds, and both workers serve the new certificate.
        """
        if challenge == "http-01":
            await self.startPebble()
        else:
            await self.startPebble(httpPort=closedPort())
        self.writeConfig([self.site("a", self.names)], challenge=challenge)
        proxy = await self.startProxy()
        await self.expectOwnOrder("a")
        await self.waitIssued("a")
        await self.barrier()
        root = await self.writeRoot()
        cert = await self.assertIssuedEverywhere("a", self.names, root)
        self.assertCertsEntry(await self.acmeCert("a"), self.names, cert)
        self.assertEqual(self.storedChain("a")[0].serial_number, cert.serial_number)

        serials = {cert.serial_number}
        workers = await self.serving()
        for worker in workers:
            others = [w["pid"] for w in workers if w is not worker]
            issued = len(self.logLines("ACME: site a: certificate issued for"))
            self.pause(others)
            try:
                answer = await self.renew("a")
            finally:
                self.resume(others)
            self.assertEqual(
                answer["status"],
                "ok",
                f"renewal answered by worker {worker['worker']} alone: "
                f"{answer}\n{self.outputs()}",
            )
            await self.waitIssued("a", issued + 1)
            await self.barrier()
            stored = self.storedChain("a")[0].serial_number
            self.assertNotIn(stored, serials)
            serials.add(stored)
            new = await self.assertIssuedEverywhere(
                "a", self.names, root, serial=stored, count=4, each=3
            )
            self.assertCertsEntry(await self.acmeCert("a"), self.names, new)
        self.assertEqual(len(serials), 1 + WORKERS)
        # The placeholder, once, at start: never again.
        self.assertEqual(len(self.logLines("placeholder", proxy)), 1, proxy.output)
        self.assertNoTraceback()

    async def test_http01(self) -> None:
        """
        http-01: pebble's HTTP validations are answered by either worker.
        """
        await self.issuance("http-01")

    async def test_tlsalpn01(self) -> None:
        """
        tls-alpn-01: pebble's C{acme-tls/1} handshakes on the HTTPS port
        get the challenge certificate from either worker.
        """
        await self.issuance("tls-alpn-01")


class AcmeReloadTests(_WorkersCase):
    """
    An acme site added by a reload, and a worker started again.
    """

    async def issuedProxy(self) -> tuple[ProxyProcess, str]:
        """
        A proxy whose site C{a} (C{a.test}) has its certificate from
        pebble; the proxy and pebble's root.
        """
        await self.startPebble()
        self.writeConfig([self.site("a", ["a.test"])])
        proxy = await self.startProxy()
        await self.waitIssued("a")
        await self.barrier()
        return proxy, await self.writeRoot()

    async def test_reloadAddsSite(self) -> None:
        """
        Site C{b} added by a reload is served at once by each worker (with
        its placeholder, unless pebble already issued its certificate),
        then, once issued, with its certificate from pebble by both.
        """
        proxy, root = await self.issuedProxy()
        siteA = self.site("a", ["a.test"])
        siteB = self.site("b", ["b.test"])
        self.writeConfig([siteA, siteB])
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", f"{answer}\n{self.outputs()}")

        async def atOnce(worker: dict[str, Any]) -> None:
            for _ in range(2):
                cert, response = await self.exchange("b.test", None)
                self.assertWhoami(response)
                if commonName(cert) == placeholderName("b"):
                    self.assertPlaceholder(cert, "b", ["b.test"])
                else:
                    self.assertFromPebble(cert, ["b.test"])

        await self.alone(atOnce)
        self.assertEqual(
            len(
                self.logLines("ACME: site b: no certificate yet; serving a self-signed")
            ),
            1,
            proxy.output,
        )
        await self.waitIssued("b")
        await self.barrier()
        cert = await self.assertIssuedEverywhere("b", ["b.test"], root)
        self.assertCertsEntry(await self.acmeCert("b"), ["b.test"], cert)
        await self.assertIssuedEverywhere("a", ["a.test"], root, count=2, each=1)
        self.assertNoTraceback()

    async def test_restartedWorkerServesIssued(self) -> None:
        """
        A worker killed with SIGKILL is started again; as soon as admin
        C{status} shows it serving, its connections get the issued
        certificate (sent to it at boot), never a placeholder.
        """
        proxy, root = await self.issuedProxy()
        cert = await self.assertIssuedEverywhere("a", ["a.test"], root, count=4, each=2)
        placeholders = len(self.logLines("placeholder", proxy))
        workers = await self.serving()
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        await self.waitLog("exited (killed by signal 9)", seconds=SERVING_TIMEOUT)
        workers = await self.serving(restarts=1)
        reborn = next(w for w in workers if w["worker"] == victim["worker"])
        self.assertNotEqual(reborn["pid"], victim["pid"], workers)
        self.assertEqual(reborn["restarts"], 1, workers)
        others = [w["pid"] for w in workers if w is not reborn]
        self.pause(others)
        try:
            for _ in range(5):
                served, response = await self.exchange("a.test", root)
                self.assertWhoami(response)
                self.assertFromPebble(served, ["a.test"])
                self.assertEqual(served.serial_number, cert.serial_number)
        finally:
            self.resume(others)
        await self.assertIssuedEverywhere(
            "a", ["a.test"], root, serial=cert.serial_number, count=10, each=2
        )
        self.assertEqual(len(self.logLines("placeholder", proxy)), placeholders)
        self.assertNoTraceback()


class HealthTests(_WorkersCase):
    """
    The supervisor's upstream health checks steer both workers' requests.
    """

    async def test_unhealthyUpstreamSkipped(self) -> None:
        """
        Site C{h} with upstreams A and B, both checked every second: while
        both pass, requests reach both; once A answers 500 to its checks,
        the admin C{sites} and C{stats} show A unhealthy and, within a
        second more (the supervisor sends the states to the workers every
        second), every request, over new connections to each worker, goes
        to B.
        """
        healthA, healthB = _Health(), _Health()
        self.upstream.site.resource.putChild(b"healthz", healthA)
        self.upstreamB.site.resource.putChild(b"healthz", healthB)
        urlA = f"http://127.0.0.1:{self.upstream.port}"
        urlB = f"http://127.0.0.1:{self.upstreamB.port}"
        self.writeConfig(
            [
                {
                    "name": "h",
                    "hosts": ["h.test"],
                    "upstreams": [urlA, urlB],
                    "health_check": {
                        "path": "/healthz",
                        "interval_secs": 1,
                        "timeout_secs": 1,
                        "fails": 1,
                        "passes": 1,
                    },
                }
            ],
            challenge=None,
        )
        await self.startProxy()

        async def health(command: str) -> dict[str, Any]:
            answer = await self.admin(command)
            self.assertEqual(answer["status"], "ok", answer)
            sites = answer["sites"]
            upstreams = (
                sites[0]["upstreams"]
                if isinstance(sites, list)
                else sites["h"]["upstreams"]
            )
            return {u["url"]: u.get("health") for u in upstreams}

        deadline = self.reactor.seconds() + 5
        while True:
            states = await health("sites")
            if all(s and s["passes"] >= 1 for s in states.values()):
                break
            self.assertLess(self.reactor.seconds(), deadline, states)
            await self.sleep(0.2)
        answered = [await self.plainWhoami("h.test") for _ in range(10)]
        self.assertEqual(set(answered), {b"A", b"B"}, answered)

        healthA.status = 500
        deadline = self.reactor.seconds() + 5
        while True:
            states = await health("sites")
            if not states[urlA]["healthy"]:
                break
            self.assertLess(self.reactor.seconds(), deadline, states)
            await self.sleep(0.2)
        self.assertEqual(states[urlA]["last_status"], 500, states)
        self.assertTrue(states[urlB]["healthy"], states)
        stats = await health("stats")
        self.assertFalse(stats[urlA]["healthy"], stats)
        self.assertTrue(stats[urlB]["healthy"], stats)
        # The supervisor sends changed states every second.
        await self.sleep(1.5)

        answered = [await self.plainWhoami("h.test") for _ in range(10)]

        async def one(worker: dict[str, Any]) -> None:
            for _ in range(6):
                answered.append(await self.plainWhoami("h.test"))

        await self.alone(one)
        self.assertEqual(set(answered), {b"B"}, answered)
        self.assertGreater(healthB.checks, 1)
        self.assertNoTraceback()
