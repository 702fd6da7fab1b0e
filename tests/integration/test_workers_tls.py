# -*- test-case-name: tests.integration.test_workers_tls -*-
"""
Integration tests: TLS termination, ACME and upstream health checks of a
real C{twistd revproxy} with C{[server] workers = 2} (issue #18).

The supervisor binds the listeners and owns ACME and the health checks; the
workers terminate TLS.  What one worker serves, the other must serve too:
certificates from files, the ACME challenge answers (pebble reaches
whichever worker its connection lands in), the issued certificates, the
upstreams' health.

The supervisor binds one socket per worker and listener, all on the same
address with C{SO_REUSEPORT}: the kernel gives a new connection to one of
them by a hash of its addresses and ports, so the connections of a test
spread over the workers at random, evenly, and no test can choose the
worker.  Instead each client connection is attributed, while it is open,
to the worker serving it: the connection's server side (local port the
proxy's, remote port the client's) is a socket inode in C{/proc/net/tcp},
and the worker is the process with that inode among its C{/proc/PID/fd}
(L{tests.integration.support.connectionOwner}; Linux only).  The checks
that must hold in each worker make connections until every worker has
served enough of them (L{_WorkersCase.eachWorker}); with the hash's even
split that takes a few connections more than the minimum, and a bound
turns bad luck into a failure that says how the connections fell.

pebble (see L{tests.integration.pebble}) validates http-01 on the proxy's
HTTP port and tls-alpn-01 on its HTTPS port, as in
L{tests.integration.test_acme}.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.integration.support import (
    ProxyProcess,
    RawResponse,
    Upstream,
    closedPort,
    configText,
    connectionOwner,
    connectionOwners,
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
    SOCKET_TIMEOUT,
    Authority,
    BlockingTLSClient,
    Leaf,
    curlHTTP2,
    httpGet,
    inThread,
)

#: How many worker processes the proxy runs.
WORKERS = 2

#: How long the workers may take to be all serving (at start, or after
#: one was killed and is started again).
SERVING_TIMEOUT = 15.0

#: At most this many connections, times the number each worker must serve,
#: times the number of workers, are made to reach every worker
#: (L{_WorkersCase.eachWorker}).
ATTEMPTS_FACTOR = 30


def attributedTLSExchange(
    port: int,
    serverName: str,
    caFile: str | None,
    request: bytes,
    pids: Sequence[int],
) -> tuple[int | None, x509.Certificate, RawResponse]:
    """
    Blocking: connect over TLS (verified against C{caFile} when given),
    find which of the workers C{pids} holds the connection, send
    C{request}, close; that worker (L{None} for none of them), the
    server's certificate and the response.
    """
    client = BlockingTLSClient(port, serverName, caFile)
    try:
        client.connect()
        assert client.sock is not None
        owner = connectionOwner(port, client.sock.getsockname()[1], pids)
        cert = client.peerCertificate()
        response = client.request(request)
    finally:
        client.close()
    return owner, cert, response


def attributedHTTP2Get(
    port: int, serverName: str, caFile: str, path: str, pids: Sequence[int]
) -> tuple[int | None, str | None, int, bytes]:
    """
    Blocking: connect over TLS offering only C{h2} in ALPN (verified
    against C{caFile}), find which of the workers C{pids} holds the
    connection, GET C{path} over HTTP/2 and close; that worker, the
    protocol ALPN chose, the response's status and body.
    """
    context = ssl.create_default_context(cafile=caFile)
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), SOCKET_TIMEOUT)
    with context.wrap_socket(raw, server_hostname=serverName) as sock:
        owner = connectionOwner(port, sock.getsockname()[1], pids)
        chosen = sock.selected_alpn_protocol()
        if chosen != "h2":
            return owner, chosen, 0, b""
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", serverName),
                (":path", path),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        status = 0
        body = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"HTTP/2: closed before the end: {body[:300]!r}")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(cast(Any, event.headers))
                    status = int(headers[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, 1)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"HTTP/2: stream reset: {event}")
                elif isinstance(event, h2.events.StreamEnded):
                    return owner, chosen, status, body
            sock.sendall(conn.data_to_send())


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
        if not os.path.exists("/proc/net/tcp"):
            raise SkipTest("needs Linux's /proc")
        await super().setUp()
        self.upstreamB = Upstream(self.reactor, "B")
        await self.upstreamB.start()
        self.addCleanup(self.upstreamB.stop)

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

    async def barrier(self) -> None:
        """
        Return once every worker has handled what the supervisor sent it
        so far: the admin C{stats} asks each one over its AMP pipe, which
        delivers in order, and waits for all the answers.
        """
        answer = await self.admin("stats")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(answer["workers"], WORKERS, answer)

    async def eachWorker(
        self,
        check: Callable[[Sequence[int]], Awaitable[int | None]],
        each: int,
        wanted: Sequence[int] | None = None,
    ) -> dict[int, int]:
        """
        Run C{check(pids)}, which makes one new connection, checks what it
        gets and returns which of the serving workers C{pids} served it,
        until each worker (each of the pids C{wanted}, when given) has
        served at least C{each} of them; fail if a connection was served by
        none of the workers, or if that takes more than L{ATTEMPTS_FACTOR}
        times C{each} times L{WORKERS} connections.  How many connections
        each worker served.
        """
        pids = [w["pid"] for w in await self.serving()]
        wanted = pids if wanted is None else wanted
        counts = dict.fromkeys(pids, 0)
        limit = ATTEMPTS_FACTOR * each * WORKERS
        for made in range(1, limit + 1):
            owner = await check(pids)
            if owner is None:
                raise AssertionError(
                    f"connection {made} is held by none of the workers {pids} "
                    f"(served so far: {counts})\n{self.outputs()}"
                )
            counts[owner] += 1
            if all(counts[pid] >= each for pid in wanted):
                return counts
        raise AssertionError(
            f"{limit} connections did not reach each of the workers {list(wanted)} "
            f"{each} times: connections served by pid: {counts}"
        )

    # -- clients

    async def exchange(
        self, serverName: str, caFile: str | None, pids: Sequence[int]
    ) -> tuple[int | None, x509.Certificate, RawResponse]:
        """
        GET C{/whoami} over a new TLS connection with C{serverName} in SNI
        (verified against C{caFile}, chain and name, when given): which of
        the workers C{pids} served it, the certificate and the response.
        """
        return await inThread(
            attributedTLSExchange,
            self.tlsPort,
            serverName,
            caFile,
            httpGet("/whoami", serverName),
            pids,
            what=f"GET /whoami over TLS to {serverName}",
        )

    async def plainWhoami(
        self, host: str, pids: Sequence[int]
    ) -> tuple[int | None, bytes]:
        """
        Which of the workers C{pids} served a new plain HTTP connection
        asking C{/whoami} for C{host}, and the first line of the answer
        (the name of the upstream that answered).
        """
        client = await connectRaw(self.reactor, self.httpPort)
        try:
            response = await client.request(httpGet("/whoami", host))
            assert client.transport is not None
            clientPort = int(cast(Any, client.transport).getHost().port)
            # The worker answered: it holds the connection.
            owner = connectionOwners(self.httpPort, [clientPort], pids)[clientPort]
        finally:
            await client.close()
        self.assertEqual(response.code, 200, response.body[:300])
        return owner, response.body.split(b"\n", 1)[0]

    async def assertIssuedEverywhere(
        self,
        site: str,
        names: Sequence[str],
        root: str,
        serial: int | None = None,
        each: int = 4,
    ) -> x509.Certificate:
        """
        New TLS connections, alternating between C{names}, until each worker
        has served C{each}: all get C{site}'s certificate from pebble
        (verified against pebble's C{root}; serial C{serial} when given,
        else the same for all) and the upstream's answer.  The certificate.
        """
        seen: list[x509.Certificate] = []

        async def check(pids: Sequence[int]) -> int | None:
            host = names[len(seen) % len(names)]
            owner, cert, response = await self.exchange(host, root, pids)
            self.assertFromPebble(cert, names)
            self.assertWhoami(response)
            seen.append(cert)
            return owner

        await self.eachWorker(check, each)
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
        New TLS connections, alternating between C{a.test} and C{b.test},
        until each worker has served eight: each gets its site's
        certificate (verified against its own CA) and its site's upstream.
        HTTP/2, chosen by ALPN, works (curl) and works in each worker.
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
        made = 0

        async def check(pids: Sequence[int]) -> int | None:
            nonlocal made
            name = "ab"[made % 2]
            made += 1
            owner, cert, response = await self.exchange(f"{name}.test", cas[name], pids)
            self.assertEqual(
                cert.public_bytes(serialization.Encoding.DER), leaves[name].der
            )
            self.assertEqual(response.code, 200, response.body[:300])
            self.assertEqual(response.body, whoamiBody(name.upper()))
            return owner

        await self.eachWorker(check, 8)

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

        async def http2(pids: Sequence[int]) -> int | None:
            owner, chosen, code, body = await inThread(
                attributedHTTP2Get,
                self.tlsPort,
                "a.test",
                caA,
                "/whoami",
                pids,
                what="GET /whoami over HTTP/2",
            )
            self.assertEqual((chosen, code), ("h2", 200), body[:300])
            self.assertEqual(body, whoamiBody("A"))
            return owner

        await self.eachWorker(http2, 2)
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
        C{challenge}; every worker serves it, and C{certs} shows it.  Then
        two forced renewals each succeed, and every worker serves each new
        certificate.

        Which worker pebble's validation connections reach is the kernel's
        C{SO_REUSEPORT} hash, which no test can steer, so this does not
        assert that a given worker answered a given validation.  It does
        not need to: the supervisor sends each challenge answer to every
        worker before it asks for the validation (unit-tested in
        L{tests.test_supervisor}), and a worker without the answer would
        fail whichever validation reached it, and with it the issuance or a
        renewal, and so this test.
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
        renewals = 2
        for renewal in range(1, renewals + 1):
            issued = len(self.logLines("ACME: site a: certificate issued for"))
            answer = await self.renew("a")
            self.assertEqual(
                answer["status"],
                "ok",
                f"renewal {renewal}: {answer}\n{self.outputs()}",
            )
            await self.waitIssued("a", issued + 1)
            await self.barrier()
            stored = self.storedChain("a")[0].serial_number
            self.assertNotIn(stored, serials)
            serials.add(stored)
            new = await self.assertIssuedEverywhere(
                "a", self.names, root, serial=stored, each=3
            )
            self.assertCertsEntry(await self.acmeCert("a"), self.names, new)
        self.assertEqual(len(serials), 1 + renewals)
        # The placeholder, once, at start: never again.
        self.assertEqual(len(self.logLines("placeholder", proxy)), 1, proxy.output)
        self.assertNoTraceback()

    async def test_http01(self) -> None:
        """
        http-01: pebble's HTTP validations are answered by whichever worker
        they reach.
        """
        await self.issuance("http-01")

    async def test_tlsalpn01(self) -> None:
        """
        tls-alpn-01: pebble's C{acme-tls/1} handshakes on the HTTPS port
        get the challenge certificate from whichever worker they reach.
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
        then, once issued, with its certificate from pebble by each.
        """
        proxy, root = await self.issuedProxy()
        siteA = self.site("a", ["a.test"])
        siteB = self.site("b", ["b.test"])
        self.writeConfig([siteA, siteB])
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", f"{answer}\n{self.outputs()}")

        async def atOnce(pids: Sequence[int]) -> int | None:
            owner, cert, response = await self.exchange("b.test", None, pids)
            self.assertWhoami(response)
            if commonName(cert) == placeholderName("b"):
                self.assertPlaceholder(cert, "b", ["b.test"])
            else:
                self.assertFromPebble(cert, ["b.test"])
            return owner

        await self.eachWorker(atOnce, 2)
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
        await self.assertIssuedEverywhere("a", ["a.test"], root, each=1)
        self.assertNoTraceback()

    async def test_restartedWorkerServesIssued(self) -> None:
        """
        A worker killed with SIGKILL is started again; as soon as admin
        C{status} shows it serving, its connections (attributed to its new
        pid) get the issued certificate (sent to it at boot), never a
        placeholder.
        """
        proxy, root = await self.issuedProxy()
        cert = await self.assertIssuedEverywhere("a", ["a.test"], root, each=2)
        placeholders = len(self.logLines("placeholder", proxy))
        workers = await self.serving()
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        await self.waitLog("exited (killed by signal 9)", seconds=SERVING_TIMEOUT)
        workers = await self.serving(restarts=1)
        reborn = next(w for w in workers if w["worker"] == victim["worker"])
        self.assertNotEqual(reborn["pid"], victim["pid"], workers)
        self.assertEqual(reborn["restarts"], 1, workers)

        async def check(pids: Sequence[int]) -> int | None:
            owner, served, response = await self.exchange("a.test", root, pids)
            self.assertWhoami(response)
            self.assertFromPebble(served, ["a.test"])
            self.assertEqual(served.serial_number, cert.serial_number)
            return owner

        counts = await self.eachWorker(check, 3, wanted=[reborn["pid"]])
        self.assertGreaterEqual(counts[reborn["pid"]], 3, counts)
        await self.assertIssuedEverywhere(
            "a", ["a.test"], root, serial=cert.serial_number, each=2
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
        second), every request, over new connections until each worker has
        served six, goes to B.
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
        pids = [w["pid"] for w in await self.serving()]

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
        answered = [(await self.plainWhoami("h.test", pids))[1] for _ in range(10)]
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

        after: list[tuple[int | None, bytes]] = []

        async def one(pids: Sequence[int]) -> int | None:
            owner, name = await self.plainWhoami("h.test", pids)
            after.append((owner, name))
            self.assertEqual(name, b"B", f"(worker, upstream) answers: {after}")
            return owner

        await self.eachWorker(one, 6)
        self.assertGreater(healthB.checks, 1)
        self.assertNoTraceback()
